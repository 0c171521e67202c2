//! What the end state of a scenario must be: one resource per incident, or
//! a storm's individual resources and its one storm resource.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::wait::Wait;
use crate::alertmanager::firing;
use crate::k8s::ApiServer;
use crate::remediation::{is_storm, name_of, try_list};

/// One incident: what one resource stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Incident {
    pub namespace: String,
    pub name: String,
    pub pod: String,
}

impl std::fmt::Display for Incident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.pod, self.name)
    }
}

/// The incidents `alerts` stand for, sorted; an alert without a namespace,
/// name or pod label is a panic.
pub fn incidents(alerts: &[Value]) -> Vec<Incident> {
    let label = |a: &Value, name: &str| -> String {
        a["labels"][name]
            .as_str()
            .unwrap_or_else(|| panic!("alert without a {name} label: {a}"))
            .to_string()
    };
    let mut v: Vec<Incident> = alerts
        .iter()
        .map(|a| Incident {
            namespace: label(a, "namespace"),
            name: label(a, "alertname"),
            pod: label(a, "pod"),
        })
        .collect();
    v.sort();
    v
}

/// `n` firing alerts `name` about pods `<prefix>-<i>` in `namespace`.
pub fn alerts(name: &str, namespace: &str, prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| firing(name, namespace, &format!("{prefix}-{i:02}")))
        .collect()
}

/// Every resource in the namespaces of `expected`, if each incident has
/// exactly one (non-storm) resource and there is no other non-storm
/// resource; else what is missing, doubled or unexpected.
pub fn one_each(k: &ApiServer, expected: &[Incident]) -> Result<Vec<Value>, Wait> {
    one_each_listed(|ns| try_list(k, ns), expected)
}

/// [`one_each`], with the resources of a namespace from `list`.
pub fn one_each_listed(
    list: impl Fn(&str) -> Result<Vec<Value>, String>,
    expected: &[Incident],
) -> Result<Vec<Value>, Wait> {
    let namespaces: BTreeSet<&str> = expected.iter().map(|i| i.namespace.as_str()).collect();
    let mut found: BTreeMap<Incident, Vec<String>> = BTreeMap::new();
    let mut all = Vec::new();
    for ns in namespaces {
        for rr in list(ns)? {
            if !is_storm(&rr) {
                let incident = Incident {
                    namespace: ns.to_string(),
                    name: rr["spec"]["signalName"].as_str().unwrap_or("").to_string(),
                    pod: rr["spec"]["targetResource"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                };
                found.entry(incident).or_default().push(name_of(&rr));
            }
            all.push(rr);
        }
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|i| !found.contains_key(i))
        .map(ToString::to_string)
        .collect();
    let doubled: Vec<String> = found
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(i, names)| format!("{i} x{} {names:?}", names.len()))
        .collect();
    let unexpected: Vec<String> = found
        .keys()
        .filter(|i| !expected.contains(i))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() && doubled.is_empty() && unexpected.is_empty() {
        return Ok(all);
    }
    // A resource too many never goes away: no point in waiting.
    let wait = if doubled.is_empty() && unexpected.is_empty() {
        Wait::Retry
    } else {
        Wait::Fail
    };
    Err(wait(format!(
        "{} of {} incidents have their resource; missing ({}): {missing:?}; \
         more than one resource ({}): {doubled:?}; unexpected ({}): {unexpected:?}",
        expected.len() - missing.len(),
        expected.len(),
        missing.len(),
        doubled.len(),
        unexpected.len()
    )))
}

/// The non-storm resources of `all`.
pub fn individual(all: &[Value]) -> Vec<&Value> {
    all.iter().filter(|r| !is_storm(r)).collect()
}

/// A storm namespace's end state: `threshold` individual resources, ONE
/// storm resource, and together they cover exactly `pods` (each once).
pub fn storm_state(
    k: &ApiServer,
    ns: &str,
    pods: &[String],
    threshold: usize,
) -> Result<(Vec<Value>, Value), Wait> {
    let all = try_list(k, ns)?;
    let (storms, singles): (Vec<Value>, Vec<Value>) = all.into_iter().partition(is_storm);
    let single_pods: Vec<String> = singles
        .iter()
        .map(|r| {
            r["spec"]["targetResource"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    if storms.len() != 1 || singles.len() != threshold {
        let wait = if storms.len() > 1 || singles.len() > threshold {
            Wait::Fail
        } else {
            Wait::Retry
        };
        return Err(wait(format!(
            "{ns}: {} individual resources (expected {threshold}) and {} storm resources \
             (expected 1); individual pods: {single_pods:?}",
            singles.len(),
            storms.len()
        )));
    }
    let storm = storms.into_iter().next().expect("one storm");
    let affected: Vec<String> = storm["spec"]["storm"]["affectedResources"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.strip_prefix("Pod/").unwrap_or(s).to_string())
                .collect()
        })
        .unwrap_or_default();
    let alert_count = storm["spec"]["storm"]["alertCount"].as_u64().unwrap_or(0);
    let expected_members = pods.len() - threshold;
    let mut covered: Vec<String> = single_pods.iter().chain(&affected).cloned().collect();
    covered.sort();
    let mut want = pods.to_vec();
    want.sort();
    if alert_count != expected_members as u64 || affected.len() != expected_members {
        let wait = if alert_count > expected_members as u64 {
            Wait::Fail
        } else {
            Wait::Retry
        };
        return Err(wait(format!(
            "{ns}: storm {} has alertCount {alert_count} and {} affected resources, \
             expected {expected_members} of each: {affected:?}",
            name_of(&storm),
            affected.len()
        )));
    }
    if covered != want {
        let missing: Vec<&String> = want.iter().filter(|p| !covered.contains(p)).collect();
        return Err(Wait::Fail(format!(
            "{ns}: individual + storm-affected pods do not match what was sent \
             (each once): missing {missing:?}; covered {covered:?}"
        )));
    }
    Ok((singles, storm))
}
