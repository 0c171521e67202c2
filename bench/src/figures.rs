//! How figures are written in the report's tables and on the chart.

use crate::stats::Stat;

/// A number for a table: few digits, thousands kept whole.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `median (min–max)`, or just the value for one run.
pub fn cell(s: Option<Stat>) -> String {
    match s {
        None => "n/a".into(),
        Some(s) if s.n <= 1 || (s.max - s.min).abs() < f64::EPSILON => num(s.median),
        Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
    }
}

/// A ratio as `0.84x (min–max)`, or just the value for one run.
pub fn ratio_cell(s: Option<Stat>) -> String {
    match s {
        None => "n/a".into(),
        Some(s) if s.n <= 1 => format!("{:.2}x", s.median),
        Some(s) => format!("{:.2}x ({:.2}–{:.2})", s.median, s.min, s.max),
    }
}
