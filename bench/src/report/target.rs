//! The targets, each stated as met or not.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// One target of the issue.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

impl Target {
    pub fn json(&self) -> Value {
        json!({"name": self.name, "goal": self.goal, "measured": self.measured, "met": self.met})
    }
}

/// The report's `## Targets` table.
pub fn table(targets: &[Target]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | goal | measured | met |");
    let _ = writeln!(md, "|---|---|---|---|");
    for t in targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            t.measured,
            match t.met {
                Some(true) => "**met**",
                Some(false) => "**not met**",
                None => "n/a",
            }
        );
    }
    md
}
