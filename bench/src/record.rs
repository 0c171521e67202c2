//! One measured figure set: what it is (labels), the numbers (metrics), and
//! free-form details (info). The benchmark appends one JSON line per run to a
//! results file; the report groups them by labels (less `run`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub info: BTreeMap<String, String>,
}

impl Record {
    /// A record from label and metric pairs, for tests.
    #[cfg(test)]
    pub fn of(labels: &[(&str, &str)], metrics: &[(&str, f64)]) -> Record {
        Record {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            info: BTreeMap::new(),
        }
    }

    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }

    pub fn append_to(&self, path: &Path) -> Result<(), String> {
        let line = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn read_all(path: &Path) -> Result<Vec<Record>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))
            })
            .collect()
    }
}

/// Splits `k=v` into its two sides.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_file() {
        let dir = std::env::temp_dir().join(format!("sg-bench-rec-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("r.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut r = Record::default();
        r.labels.insert("part".into(), "edge".into());
        r.metrics.insert("rps".into(), 12.5);
        r.info.insert("note".into(), "x".into());
        assert!(r.append_to(&path).is_ok());
        assert!(r.append_to(&path).is_ok());
        let back = Record::read_all(&path).unwrap_or_default();
        assert_eq!(back, vec![r.clone(), r]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
