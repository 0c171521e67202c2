//! The invariants, checked against the RemediationRequests the API server
//! holds once the system is quiet, and the answers every delivery got.
//!
//! What an acknowledged answer says is what the sender was promised: a
//! firing signal answered 2xx is counted in the resource the answer names
//! (`resource`). So, exactly:
//!
//! - (a) one resource per incident: every answer to an incident's firing
//!   signals and resolves names the same resource, and the API server holds
//!   no other resource of that incident (one of its own: same namespace,
//!   alertname, pod and `firingTime` = `startsAt`); an answer never names
//!   another incident's own resource; every resource of the API server is
//!   one of an incident sent.
//! - (b) every acknowledged firing signal's answer names a resource, and the
//!   API server holds it.
//! - (c) each resource's `occurrenceCount` is the number of acknowledged
//!   deliveries whose answer counted a signal in it (a delivery retried
//!   counts once: only its acknowledged attempt counts; an HA pair's two
//!   deliveries count twice).
//! - (d) each storm resource's `alertCount` is the number of distinct
//!   fingerprints an acknowledged answer counted in it, and its
//!   `affectedResources` are exactly their pods.
//! - (e) nothing acknowledged is lost: the (c) and (d) figures are not
//!   below the acknowledged ones, and an acknowledged `resolved` is on the
//!   resource (`spec.resolution`; a storm's `resolvedCount` counts at least
//!   its members acknowledged as resolved).
//!
//! A count above the acknowledged one breaks (c) or (d) only; one below
//! breaks (e) too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde_json::Value;
use signalgate_model::rfc3339::unix_millis;

use super::history::{delivery_lines, span, Delivery, History};
use super::plan::{Incident, Plan, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Inv {
    A,
    B,
    C,
    D,
    E,
}

impl Inv {
    pub const ALL: [Inv; 5] = [Inv::A, Inv::B, Inv::C, Inv::D, Inv::E];

    pub fn label(self) -> &'static str {
        match self {
            Inv::A => "(a) one resource per incident",
            Inv::B => "(b) every acknowledged signal's incident has a resource",
            Inv::C => "(c) occurrenceCount = distinct acknowledged deliveries",
            Inv::D => "(d) storm membership = distinct acknowledged members",
            Inv::E => "(e) nothing acknowledged is lost",
        }
    }
}

pub struct Violation {
    pub inv: Inv,
    pub what: String,
    /// The history of what broke it: deliveries, attempts, answers, faults.
    pub story: String,
}

impl Violation {
    /// The kinds of the faults its story lists (those within 3 s of its
    /// deliveries): a hint at what broke it, no proof.
    pub fn near_faults(&self) -> BTreeSet<&str> {
        self.story
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("fault F"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect()
    }
}

/// One RemediationRequest as the checks see it.
struct Res {
    key: String,
    storm: bool,
    namespace: String,
    signal_name: String,
    pod: String,
    firing_ms: Option<i64>,
    count: u64,
    alert_count: u64,
    affected: BTreeSet<String>,
    /// `affectedResourcesOverflow`: affected resources past the list's cap.
    overflow: u64,
    resolved_count: u64,
    resolution: bool,
}

impl Res {
    fn parse(rr: &Value) -> Res {
        let spec = &rr["spec"];
        let namespace = rr["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let storm = rr["metadata"]["labels"]["signalgate.io/storm"] == "true";
        Res {
            key: format!(
                "{namespace}/{}",
                rr["metadata"]["name"].as_str().unwrap_or("?")
            ),
            storm,
            signal_name: spec["signalName"].as_str().unwrap_or("").to_string(),
            pod: spec["targetResource"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            firing_ms: spec["firingTime"].as_str().and_then(unix_millis),
            count: spec["deduplication"]["occurrenceCount"]
                .as_u64()
                .unwrap_or(0),
            alert_count: spec["storm"]["alertCount"].as_u64().unwrap_or(0),
            affected: spec["storm"]["affectedResources"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            overflow: spec["storm"]["affectedResourcesOverflow"]
                .as_u64()
                .unwrap_or(0),
            resolved_count: spec["storm"]["resolvedCount"].as_u64().unwrap_or(0),
            resolution: spec["resolution"].is_object(),
            namespace,
        }
    }

    fn summary(&self) -> String {
        if self.storm {
            format!(
                "{} (storm): occurrenceCount {}, alertCount {}, resolvedCount {}, resolved {}, \
                 affected {:?}",
                self.key,
                self.count,
                self.alert_count,
                self.resolved_count,
                self.resolution,
                self.affected
            )
        } else {
            format!(
                "{} ({} on {}): occurrenceCount {}, resolved {}",
                self.key, self.signal_name, self.pod, self.count, self.resolution
            )
        }
    }
}

/// What the acknowledged answers promised, gathered once.
#[derive(Default)]
struct Promised {
    /// Resource → acknowledged (delivery, alert) pairs counted in it.
    counted: BTreeMap<String, Vec<(usize, usize)>>,
    /// Resource → distinct fingerprints counted in it, with an incident each.
    members: BTreeMap<String, BTreeMap<String, usize>>,
    /// Resource → fingerprints acknowledged as resolved in it (with the
    /// incident resolved), less those a later incident of the same
    /// fingerprint fired again in it: a storm member firing again after its
    /// resolve reopens it (`resolvedCount` − 1, docs/reference.md).
    resolved: BTreeMap<String, BTreeMap<String, usize>>,
    /// Incident → resources its answers named.
    named: BTreeMap<usize, BTreeSet<String>>,
}

pub fn check(plan: &Plan, history: &History, items: &[Value]) -> Vec<Violation> {
    let resources: BTreeMap<String, Res> = items
        .iter()
        .map(Res::parse)
        .map(|r| (r.key.clone(), r))
        .collect();
    let mut out = Vec::new();
    let ds = &history.deliveries;
    let mut p = Promised::default();
    // In the order the answers came back: a resolve and a later firing of
    // the same fingerprint leave it firing.
    let mut order: Vec<usize> = (0..ds.len()).collect();
    order.sort_by_key(|&n| ds[n].ack().map_or(u64::MAX, |a| a.at_ms + a.took_ms));
    for n in order {
        let d = &ds[n];
        if d.ack().is_none() {
            continue;
        }
        for (k, (incident, status)) in d.alerts.iter().enumerate() {
            let Some(s) = d.acked_signal(k) else {
                out.push(Violation {
                    inv: Inv::B,
                    what: format!("{}: the 2xx answer has no signal for alert {k}", d.id()),
                    story: delivery_lines(d, None),
                });
                continue;
            };
            let Some(r) = &s.resource else {
                if *status == Status::Firing {
                    out.push(Violation {
                        inv: Inv::B,
                        what: format!(
                            "{}: firing I{incident} acknowledged ({}) without a resource",
                            d.id(),
                            s.outcome
                        ),
                        story: incident_story(plan, history, &resources, *incident),
                    });
                }
                continue;
            };
            p.named.entry(*incident).or_default().insert(r.clone());
            match status {
                Status::Firing => {
                    if let Some(resolved) = p.resolved.get_mut(r) {
                        if resolved.get(&s.fingerprint).is_some_and(|i| i != incident) {
                            resolved.remove(&s.fingerprint);
                        }
                    }
                    p.counted.entry(r.clone()).or_default().push((n, k));
                    p.members
                        .entry(r.clone())
                        .or_default()
                        .entry(s.fingerprint.clone())
                        .or_insert(*incident);
                }
                Status::Resolved if s.outcome == "resolved" => {
                    p.resolved
                        .entry(r.clone())
                        .or_default()
                        .insert(s.fingerprint.clone(), *incident);
                }
                Status::Resolved => {}
            }
        }
    }

    // (a) and (b), incident by incident.
    let own = own_resources(plan, &resources, &mut out);
    for incident in &plan.incidents {
        let mut all: BTreeSet<String> = p.named.get(&incident.id).cloned().unwrap_or_default();
        all.extend(own.get(&incident.id).cloned().unwrap_or_default());
        let story = || incident_story(plan, history, &resources, incident.id);
        if all.len() > 1 {
            out.push(Violation {
                inv: Inv::A,
                what: format!("{incident} is in {} resources: {all:?}", all.len()),
                story: story(),
            });
        }
        for r in p.named.get(&incident.id).into_iter().flatten() {
            match resources.get(r) {
                None => out.push(Violation {
                    inv: Inv::B,
                    what: format!("{incident}: acknowledged in {r}, which does not exist"),
                    story: story(),
                }),
                Some(res) if !res.storm && !is_own(res, incident) => out.push(Violation {
                    inv: Inv::A,
                    what: format!(
                        "{incident}: answered with {r}, the resource of {} on {}",
                        res.signal_name, res.pod
                    ),
                    story: story(),
                }),
                Some(_) => {}
            }
        }
    }

    // (c), (d), (e), resource by resource.
    for res in resources.values() {
        let counted = p.counted.get(&res.key).map_or(&[][..], Vec::as_slice);
        let expected = counted.len() as u64;
        let story = || resource_story(plan, history, res, &p);
        if res.count != expected {
            let what = format!(
                "{}: occurrenceCount {}, acknowledged deliveries {expected} ({})",
                res.key,
                res.count,
                if res.count > expected {
                    "over"
                } else {
                    "under"
                }
            );
            if res.count < expected {
                out.push(Violation {
                    inv: Inv::E,
                    what: format!("{what}: acknowledged sightings lost"),
                    story: story(),
                });
            }
            out.push(Violation {
                inv: Inv::C,
                what,
                story: story(),
            });
        }
        let members = p.members.get(&res.key).cloned().unwrap_or_default();
        if res.storm {
            let pods: BTreeSet<String> = members
                .values()
                .map(|i| format!("Pod/{}", plan.incidents[*i].pod))
                .collect();
            let acked = members.len() as u64;
            // Past SIGNALGATE_STORM_MAX_AFFECTED, members' pods are counted
            // in affectedResourcesOverflow instead of listed.
            let missing: Vec<&String> = pods.difference(&res.affected).collect();
            let extra: Vec<&String> = res.affected.difference(&pods).collect();
            let unlisted = missing.len() as u64;
            if res.alert_count != acked || !extra.is_empty() || unlisted != res.overflow {
                let what = format!(
                    "{}: alertCount {}, acknowledged members {acked}; affected not acknowledged \
                     {extra:?}, acknowledged not affected {missing:?} (overflow {})",
                    res.key, res.alert_count, res.overflow
                );
                if res.alert_count < acked || unlisted > res.overflow {
                    out.push(Violation {
                        inv: Inv::E,
                        what: format!("{what}: acknowledged members lost"),
                        story: story(),
                    });
                }
                out.push(Violation {
                    inv: Inv::D,
                    what,
                    story: story(),
                });
            }
        }
        let resolved = p.resolved.get(&res.key).map_or(0, BTreeMap::len) as u64;
        let lost = if res.storm {
            res.resolved_count < resolved
        } else {
            resolved > 0 && !res.resolution
        };
        if lost {
            out.push(Violation {
                inv: Inv::E,
                what: format!(
                    "{}: {resolved} acknowledged resolved, resource has resolvedCount {} and \
                     resolution {}",
                    res.key, res.resolved_count, res.resolution
                ),
                story: story(),
            });
        }
    }
    out.sort_by_key(|v| v.inv);
    out
}

/// Whether `res` is `incident`'s own resource.
fn is_own(res: &Res, incident: &Incident) -> bool {
    !res.storm
        && res.namespace == incident.namespace
        && res.signal_name == incident.alertname
        && res.pod == incident.pod
        && res.firing_ms == Some(incident.starts_ms)
}

/// Each incident's own resources; a resource of no incident is an (a).
fn own_resources(
    plan: &Plan,
    resources: &BTreeMap<String, Res>,
    out: &mut Vec<Violation>,
) -> HashMap<usize, BTreeSet<String>> {
    let by_identity: HashMap<(&str, &str, &str, i64), usize> = plan
        .incidents
        .iter()
        .map(|i| {
            (
                (i.namespace, i.alertname, i.pod.as_str(), i.starts_ms),
                i.id,
            )
        })
        .collect();
    let mut own: HashMap<usize, BTreeSet<String>> = HashMap::new();
    for res in resources.values().filter(|r| !r.storm) {
        let key = (
            res.namespace.as_str(),
            res.signal_name.as_str(),
            res.pod.as_str(),
            res.firing_ms.unwrap_or(0),
        );
        match by_identity.get(&key) {
            Some(i) => {
                own.entry(*i).or_default().insert(res.key.clone());
            }
            None => out.push(Violation {
                inv: Inv::A,
                what: format!("{} is the resource of no incident sent", res.key),
                story: format!("    {}\n", res.summary()),
            }),
        }
    }
    own
}

fn incident_story(
    plan: &Plan,
    history: &History,
    resources: &BTreeMap<String, Res>,
    incident: usize,
) -> String {
    let i = &plan.incidents[incident];
    let mut out = history.incident_story(i);
    for r in resources.values().filter(|r| is_own(r, i)) {
        let _ = writeln!(out, "    its own resource: {}", r.summary());
    }
    out
}

/// A resource's history: the deliveries of every incident counted in it
/// (a storm's: those retried or not acknowledged in full, the others
/// counted), and the faults around them.
fn resource_story(plan: &Plan, history: &History, res: &Res, p: &Promised) -> String {
    let mut incidents: BTreeSet<usize> = p
        .members
        .get(&res.key)
        .map(|m| m.values().copied().collect())
        .unwrap_or_default();
    incidents.extend(
        plan.incidents
            .iter()
            .filter(|i| is_own(res, i))
            .map(|i| i.id),
    );
    for (i, named) in &p.named {
        if named.contains(&res.key) {
            incidents.insert(*i);
        }
    }
    let ds: Vec<&Delivery> = history
        .deliveries
        .iter()
        .filter(|d| d.alerts.iter().any(|(i, _)| incidents.contains(i)))
        .collect();
    let mut ds = ds;
    ds.sort_by_key(|d| d.started_ms());
    let mut out = format!("  {}\n", res.summary());
    let names: Vec<String> = incidents
        .iter()
        .map(|i| plan.incidents[*i].to_string())
        .collect();
    let _ = writeln!(out, "  incidents: {}", names.join("; "));
    // A storm's deliveries in full only when retried, not acknowledged, or
    // sent while a fault was on (give or take a second).
    let brief = res.storm && ds.len() > 12;
    let near_fault = |d: &Delivery| {
        history
            .faults
            .iter()
            .any(|f| f.end_ms + 1000 >= d.started_ms() && f.start_ms <= d.ended_ms() + 1000)
    };
    let mut plain = Vec::new();
    for d in &ds {
        if brief && d.attempts.len() == 1 && d.ack().is_some() && !near_fault(d) {
            plain.push(d.id());
            continue;
        }
        let shown = if res.storm {
            None
        } else {
            incidents.iter().next().copied()
        };
        out.push_str(&delivery_lines(d, shown));
    }
    if !plain.is_empty() {
        let _ = writeln!(
            out,
            "    (and {} deliveries acknowledged at the first attempt, away from faults: {})",
            plain.len(),
            plain.join(" ")
        );
    }
    let (from, to) = span(&ds);
    for f in history.faults_between(from, to) {
        let _ = writeln!(out, "    fault {f}");
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::history::{Attempt, AttemptResult, Delivery, SignalAnswer};
    use super::super::plan::BASE_MS;
    use super::*;

    const STORM: &str = "chk-a/storm-1";

    fn incident(id: usize, pod: &str, at_ms: i64) -> Incident {
        Incident {
            id,
            lane: 0,
            namespace: "chk-a",
            alertname: "KubePodNotReady",
            pod: pod.to_string(),
            starts_ms: BASE_MS + at_ms,
            ends_ms: None,
        }
    }

    /// A delivery of `alerts` acknowledged at `at_ms`, every signal answered
    /// with `outcome` in the storm.
    fn delivery(
        step: usize,
        at_ms: u64,
        alerts: &[(usize, Status, &str)],
        outcome: &str,
    ) -> Delivery {
        let signals = alerts
            .iter()
            .map(|(_, _, fp)| SignalAnswer {
                fingerprint: fp.to_string(),
                outcome: outcome.to_string(),
                resource: Some(STORM.to_string()),
            })
            .collect();
        Delivery {
            lane: 0,
            step,
            replica: 'a',
            what: "test",
            alerts: alerts.iter().map(|(i, s, _)| (*i, *s)).collect(),
            attempts: vec![Attempt {
                at_ms,
                took_ms: 1,
                result: AttemptResult::Answer {
                    status: 202,
                    upstream: None,
                    signals,
                    problem: None,
                },
            }],
        }
    }

    fn storm(count: u64, resolved_count: u64) -> Value {
        listing(count, resolved_count, &["Pod/pod-a", "Pod/pod-b"], 0)
    }

    /// The storm resource with `affected` listed and `overflow` more.
    fn listing(count: u64, resolved_count: u64, affected: &[&str], overflow: u64) -> Value {
        json!({
            "metadata": {"namespace": "chk-a", "name": "storm-1",
                         "labels": {"signalgate.io/storm": "true"}},
            "spec": {
                "signalName": "KubePodNotReady",
                "deduplication": {"occurrenceCount": count},
                "storm": {"alertCount": 2, "affectedResources": affected,
                          "affectedResourcesOverflow": overflow,
                          "resolvedCount": resolved_count}
            }
        })
    }

    /// Pod a fires (I0) with pod b, is resolved, then fires again (I2, a new
    /// instance of the same fingerprint) into the same storm; b stays firing.
    fn refired() -> (Plan, History) {
        let plan = Plan {
            incidents: vec![
                incident(0, "pod-a", 0),
                incident(1, "pod-b", 0),
                incident(2, "pod-a", 5000),
            ],
            lanes: vec![Vec::new()],
            faults: Vec::new(),
        };
        let history = History {
            deliveries: vec![
                delivery(
                    0,
                    100,
                    &[(0, Status::Firing, "fa"), (1, Status::Firing, "fb")],
                    "storm_aggregated",
                ),
                delivery(1, 2000, &[(0, Status::Resolved, "fa")], "resolved"),
                delivery(2, 6000, &[(2, Status::Firing, "fa")], "storm_aggregated"),
            ],
            faults: Vec::new(),
        };
        (plan, history)
    }

    fn lost(plan: &Plan, history: &History, items: &[Value]) -> Vec<String> {
        check(plan, history, items)
            .into_iter()
            .filter(|v| v.inv == Inv::E)
            .map(|v| v.what)
            .collect()
    }

    #[test]
    fn a_storm_member_firing_again_after_its_resolve_is_no_longer_expected_resolved() {
        let (plan, history) = refired();
        assert_eq!(lost(&plan, &history, &[storm(3, 0)]), Vec::<String>::new());
    }

    #[test]
    fn a_storm_missing_an_acknowledged_resolve_is_a_loss() {
        let (plan, mut history) = refired();
        history.deliveries.pop(); // pod a stays resolved
        let lost = lost(&plan, &history, &[storm(2, 0)]);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].contains("1 acknowledged resolved"), "{lost:?}");
    }

    #[test]
    fn members_past_the_listing_cap_count_in_the_overflow() {
        let (plan, history) = refired();
        let capped = listing(3, 0, &["Pod/pod-a"], 1);
        assert_eq!(check(&plan, &history, &[capped]).len(), 0);
        let dropped = listing(3, 0, &["Pod/pod-a"], 0);
        let lost = lost(&plan, &history, &[dropped]);
        assert_eq!(lost.len(), 1, "{lost:?}");
    }
}
