//! The statistics of the report: the runs of one configuration grouped
//! together, each metric as its median with min and max, and ratios between
//! configurations (paired run by run where the runs pair up).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::record::Record;

/// Median, min and max of one metric over the runs of a group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    pub fn json(&self) -> Value {
        json!({"median": round(self.median), "min": round(self.min), "max": round(self.max), "runs": self.n})
    }
}

/// A figure rounded for report.json: one decimal from 100 up, four below.
pub fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        (x * 10.0).round() / 10.0
    } else {
        (x * 10_000.0).round() / 10_000.0
    }
}

/// The runs of one configuration (same labels but `run`).
#[derive(Debug, Clone)]
pub struct Group {
    pub labels: BTreeMap<String, String>,
    pub runs: Vec<Record>,
}

impl Group {
    pub fn stat(&self, metric: &str) -> Option<Stat> {
        let values: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.metrics.get(metric).copied())
            .collect();
        Stat::of(&values)
    }

    pub fn median(&self, metric: &str) -> Option<f64> {
        self.stat(metric).map(|s| s.median)
    }

    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }

    fn run_value(&self, run: &str, metric: &str) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.label("run") == run)
            .and_then(|r| r.metrics.get(metric).copied())
    }

    pub fn json(&self) -> Value {
        let mut names: Vec<&String> = self.runs.iter().flat_map(|r| r.metrics.keys()).collect();
        names.sort();
        names.dedup();
        let metrics: Map<String, Value> = names
            .into_iter()
            .filter_map(|n| self.stat(n).map(|s| (n.clone(), s.json())))
            .collect();
        let mut labels: Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        labels.remove("part");
        let mut info = Map::new();
        if let Some(last) = self.runs.last() {
            for (k, v) in &last.info {
                info.insert(k.clone(), json!(v));
            }
        }
        json!({"labels": labels, "metrics": metrics, "info": info})
    }
}

/// `a / b` run by run (same `run` label), then median/min/max of those
/// ratios; the ratio of the medians when the runs do not pair up.
pub fn paired_ratio(a: &Group, b: &Group, metric: &str) -> Option<Stat> {
    let ratios: Vec<f64> = a
        .runs
        .iter()
        .filter_map(|r| {
            let x = r.metrics.get(metric).copied()?;
            let y = b.run_value(r.label("run"), metric)?;
            (y > 0.0).then_some(x / y)
        })
        .collect();
    match Stat::of(&ratios) {
        Some(s) => Some(s),
        None => {
            let (x, y) = (a.median(metric)?, b.median(metric)?);
            (y > 0.0).then(|| Stat {
                median: x / y,
                min: x / y,
                max: x / y,
                n: 1,
            })
        }
    }
}

/// Groups the records of `part` by their labels less `run`, in first-seen order.
pub fn groups(records: &[Record], part: &str) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for r in records.iter().filter(|r| r.label("part") == part) {
        let mut labels = r.labels.clone();
        labels.remove("run");
        match out.iter_mut().find(|g| g.labels == labels) {
            Some(g) => g.runs.push(r.clone()),
            None => out.push(Group {
                labels,
                runs: vec![r.clone()],
            }),
        }
    }
    out
}

/// The first group whose labels include every pair of `want`.
pub fn find<'a>(groups: &'a [Group], want: &[(&str, &str)]) -> Option<&'a Group> {
    groups
        .iter()
        .find(|g| want.iter().all(|(k, v)| g.label(k) == *v))
}

/// Ratio of the medians of two groups measured in different steps.
pub fn ratio_of_medians(a: &Group, b: &Group, metric: &str) -> Option<Stat> {
    let (sa, sb) = (a.stat(metric)?, b.stat(metric)?);
    if sb.median <= 0.0 || sb.min <= 0.0 || sb.max <= 0.0 {
        return None;
    }
    Some(Stat {
        median: sa.median / sb.median,
        min: sa.min / sb.max,
        max: sa.max / sb.min,
        n: sa.n.max(sb.n),
    })
}

/// The values of label `key` over the groups, in first-seen order.
pub fn distinct_values(groups: &[Group], key: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for g in groups {
        let x = g.label(key).to_string();
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_paired_ratios() {
        assert_eq!(Stat::of(&[3.0, 1.0, 2.0]).map(|s| s.median), Some(2.0));
        assert_eq!(Stat::of(&[4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert_eq!(Stat::of(&[]), None);
        let mut recs = Vec::new();
        for (run, a, b) in [("1", 90.0, 100.0), ("2", 80.0, 100.0), ("3", 50.0, 40.0)] {
            recs.push(Record::of(
                &[("part", "edge"), ("config", "filter"), ("run", run)],
                &[("rps", a)],
            ));
            recs.push(Record::of(
                &[("part", "edge"), ("config", "native"), ("run", run)],
                &[("rps", b)],
            ));
        }
        let g = groups(&recs, "edge");
        assert_eq!(g.len(), 2);
        let r = paired_ratio(&g[0], &g[1], "rps");
        assert_eq!(r.map(|s| (s.median, s.min, s.max)), Some((0.9, 0.8, 1.25)));
    }
}
