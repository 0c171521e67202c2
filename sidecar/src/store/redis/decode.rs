//! How the scripts' replies read back into decisions, snapshots, claim
//! states and index entries (the calls: `wire.rs`).

use redis::Value;

use crate::store::{
    Adopted, Claim, ClaimKey, ClaimState, Decision, Outcome, Resolution, Snapshot, StoreError,
    StormSnapshot, Write,
};

/// An error for a reply the `what` script should not have given.
pub(super) fn unexpected(what: &str, value: &Value) -> StoreError {
    StoreError::Unavailable(format!(
        "unexpected reply from the {what} script: {value:?}"
    ))
}

/// The reply of one `decide.lua` call: one decision per claim of `group`.
pub(super) fn parse_decisions(
    claims: &[Claim],
    group: &[usize],
    value: &Value,
) -> Option<Vec<Decision>> {
    let Value::Array(v) = value else {
        return None;
    };
    if v.len() != group.len() {
        return None;
    }
    let mut decisions: Vec<Decision> = Vec::with_capacity(v.len());
    for (&i, reply) in group.iter().zip(v) {
        let decision = match reply {
            Value::Int(packed) => repeat_decision(&claims[i], &decisions, *packed)?,
            Value::Array(fields) => parse_decision(&claims[i], fields)?,
            _ => return None,
        };
        decisions.push(decision);
    }
    Some(decisions)
}

/// A duplicate of a fingerprint answered in full earlier in the same call,
/// packed in one integer: `(occurrence count × 128 + 1-based index of that
/// answer) × 8 + write`.
fn repeat_decision(claim: &Claim, earlier: &[Decision], packed: i64) -> Option<Decision> {
    let packed = u64::try_from(packed).ok()?;
    let first = usize::try_from(packed / 8 % 128).ok()?.checked_sub(1)?;
    let mut decision = earlier.get(first)?.clone();
    let same = matches!(&decision.key, ClaimKey::Fingerprint { fingerprint, .. }
        if *fingerprint == claim.fingerprint);
    if !same {
        return None;
    }
    decision.outcome = Outcome::Duplicate;
    decision.write = write_code((packed % 8) as i64)?;
    decision.snapshot.occurrence_count = packed / 1024;
    Some(decision)
}

/// A reply in full: 11 fields for a signal's own resource (or no resource:
/// a lookup, a review, a skip), 15 for a storm.
fn parse_decision(claim: &Claim, v: &[Value]) -> Option<Decision> {
    let outcome = match int(v.first()?)? {
        1 => Outcome::Created,
        2 => Outcome::Duplicate,
        3 => Outcome::StormStarted,
        4 => Outcome::StormAggregated,
        5 => Outcome::Resolved,
        6 => Outcome::ResolvedUnknown,
        _ => return None,
    };
    let write = write_code(int(v.get(1)?)?)?;
    let storm = int(v.get(2)?)? == 1;
    if v.len() != if storm { 15 } else { 11 } {
        return None;
    }
    let (moved_to, resource) = split_ref(text(&v[3])?);
    let key = if storm {
        ClaimKey::Storm {
            namespace: claim.namespace.clone(),
            name: resource.clone(),
        }
    } else {
        ClaimKey::Fingerprint {
            namespace: claim.namespace.clone(),
            fingerprint: claim.fingerprint.clone(),
        }
    };
    let snapshot = snapshot_from(resource, moved_to, &v[4..], storm, Vec::new())?;
    Some(Decision {
        outcome,
        write,
        key,
        snapshot,
    })
}

fn write_code(code: i64) -> Option<Write> {
    match code {
        1 => Some(Write::Create),
        2 => Some(Write::Update),
        3 => Some(Write::Await),
        4 => Some(Write::Lookup),
        5 => Some(Write::Review),
        6 => Some(Write::Skip),
        _ => None,
    }
}

/// The reply of a `snapshot.lua` call (`Some(None)`: the claim is gone).
pub(super) fn parse_snapshot(storm: bool, value: &Value) -> Option<Option<Snapshot>> {
    let Value::Array(v) = value else {
        return None;
    };
    if v.is_empty() {
        return Some(None);
    }
    // The counters, the two flags (in the index, pending), then (a storm)
    // its affected values.
    let len = if storm { 12 } else { 8 };
    if v.len() < len + 2 || (!storm && v.len() != len + 2) {
        return None;
    }
    let affected = v[len + 2..]
        .iter()
        .map(text)
        .collect::<Option<Vec<String>>>()?;
    let (moved_to, resource) = split_ref(text(&v[0])?);
    let mut snapshot = snapshot_from(resource, moved_to, &v[1..len], storm, affected)?;
    snapshot.unwritten = int(&v[len])? == 1;
    snapshot.pending = int(&v[len + 1])? == 1;
    Some(Some(snapshot))
}

/// The reply of a `scan`: the next cursor and the namespaces seen.
pub(super) fn parse_scan(reply: &Value) -> Option<(String, Vec<(String, i64)>)> {
    let Value::Array(v) = reply else {
        return None;
    };
    let cursor = text(v.first()?)?;
    let namespaces = v[1..]
        .chunks(2)
        .map(|pair| match pair {
            [ns, stamp] => Some((text(ns)?, int(stamp)?)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((cursor, namespaces))
}

/// The reply of an `old` call for `namespace`: how many entries its index
/// holds, and the resources of the old ones.
pub(super) fn parse_old(namespace: &str, reply: &Value) -> Option<(u64, Vec<ClaimKey>)> {
    let Value::Array(v) = reply else {
        return None;
    };
    let held = count(v.first()?)?;
    let keys = v[1..]
        .iter()
        .map(|m| {
            let member = text(m)?;
            Some(match member.rsplit_once(":f:") {
                Some((_, fingerprint)) if member.starts_with("sg:") => ClaimKey::Fingerprint {
                    namespace: namespace.to_string(),
                    fingerprint: fingerprint.to_string(),
                },
                _ => ClaimKey::Storm {
                    namespace: namespace.to_string(),
                    name: member,
                },
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((held, keys))
}

/// The reply of an adoption of a signal's own resource: the counters held
/// and the caller's write (`Some(None)`: the fingerprint joined a storm).
pub(super) fn parse_adopted(reply: &Value) -> Option<Option<Adopted>> {
    match reply {
        Value::Array(v) if v.len() == 9 => {
            let (moved_to, r) = split_ref(text(&v[0])?);
            let fields = [&v[1..4], &v[5..9]].concat();
            Some(Some(Adopted {
                snapshot: snapshot_from(r, moved_to, &fields, false, Vec::new())?,
                write: write_code(int(&v[4])?)?,
            }))
        }
        _ if int(reply) == Some(0) => Some(None),
        _ => None,
    }
}

/// The reply of a storm adoption: whether the storm was adopted.
/// A `member` reply: decide's for a duplicate of a storm member, or 0 (the
/// fingerprint is known by now: `None`).
pub(super) fn parse_member(claim: &Claim, reply: &Value) -> Option<Option<Decision>> {
    match reply {
        Value::Array(fields) => parse_decision(claim, fields).map(Some),
        other => (int(other)? == 0).then_some(None),
    }
}

pub(super) fn parse_storm_adopted(reply: &Value) -> Option<bool> {
    match int(reply) {
        Some(1) => Some(true),
        Some(0) => Some(false),
        _ => None,
    }
}

/// The reply of a forget: whether the claim was forgotten.
pub(super) fn parse_forgot(reply: &Value) -> Option<bool> {
    int(reply).map(|n| n == 1)
}

/// The reply of a poll.
pub(super) fn parse_claim_state(reply: &Value) -> Option<ClaimState> {
    match reply {
        Value::Array(v) if v.len() == 2 && int(&v[0]) == Some(1) => Some(ClaimState::Committed {
            moved_to: Some(text(&v[1])?).filter(|ns| !ns.is_empty()),
        }),
        _ => match int(reply) {
            Some(0) => Some(ClaimState::Gone),
            Some(2) => Some(ClaimState::Pending),
            Some(3) => Some(ClaimState::Owned),
            _ => None,
        },
    }
}

/// A resource as the scripts answer it (`resource_ref` in `common.lua`):
/// its name, or `<namespace>/<name>` when it went to another namespace.
fn split_ref(resource: String) -> (Option<String>, String) {
    match resource.split_once('/') {
        Some((namespace, name)) => (Some(namespace.to_string()), name.to_string()),
        None => (None, resource),
    }
}

/// A [`Snapshot`] from the fields every script reply lays out alike: first
/// seen ms, last seen ms, occurrence count, then for a signal's own
/// resource instance ms, firings, resolved ms, resolution received ms (0 0
/// open); for a storm alert count, affected overflow, started ms, ends ms,
/// resolved count, resolved ms, resolution received ms, the storm it
/// continues (`''` none).
fn snapshot_from(
    resource: String,
    moved_to: Option<String>,
    fields: &[Value],
    storm: bool,
    affected: Vec<String>,
) -> Option<Snapshot> {
    let field = |i: usize| fields.get(i);
    let resolution = |at: usize| -> Option<Option<Resolution>> {
        let resolved_ms = int(field(at)?)?;
        let received_ms = int(field(at + 1)?)?;
        Some((resolved_ms != 0).then_some(Resolution {
            resolved_ms,
            received_ms,
        }))
    };
    let mut snapshot = Snapshot {
        resource,
        first_seen_ms: int(field(0)?)?,
        last_seen_ms: int(field(1)?)?,
        occurrence_count: count(field(2)?)?,
        moved_to,
        ..Snapshot::default()
    };
    if storm {
        snapshot.storm = Some(StormSnapshot {
            alert_count: count(field(3)?)?,
            affected,
            affected_overflow: count(field(4)?)?,
            started_ms: int(field(5)?)?,
            ends_ms: int(field(6)?)?,
            resolved_count: count(field(7)?)?,
            previous: Some(text(field(10)?)?).filter(|p| !p.is_empty()),
        });
        // As the memory store: a storm counts as one firing.
        snapshot.firings = 1;
        snapshot.resolution = resolution(8)?;
    } else {
        snapshot.instance_ms = int(field(3)?)?;
        snapshot.firings = count(field(4)?)?;
        snapshot.resolution = resolution(5)?;
    }
    Some(snapshot)
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn count(value: &Value) -> Option<u64> {
    int(value).and_then(|n| u64::try_from(n).ok())
}
