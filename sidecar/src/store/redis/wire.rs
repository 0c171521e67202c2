//! The scripts' wire format: the Lua sources and the keys and arguments of
//! each script call (their replies: `decode.rs`). The scripts
//! themselves (`common.lua`, `decide.lua`, `claim.lua`, `snapshot.lua`,
//! `index.lua`) stay beside the store's other files in `store/`.

use std::collections::HashMap;
use std::time::Duration;

use redis::cluster_routing::Slot;
use redis::Script;

use crate::clock::ms;
use crate::store::{
    Claim, ClaimKey, Delivery, Owner, Resolution, Settings, Snapshot, Written, WARM_MARKER_TTL,
};
use signalgate_resource::naming::storm_prefix;

const COMMON: &str = include_str!("../common.lua");
const DECIDE: &str = include_str!("../decide.lua");
const CLAIM: &str = include_str!("../claim.lua");
const SNAPSHOT: &str = include_str!("../snapshot.lua");
const INDEX: &str = include_str!("../index.lua");

/// The hash of namespaces whose index of unwritten changes may hold
/// entries (see `common.lua`).
const NAMESPACES: &str = "sg:namespaces";

/// Signals of one namespace decided by one `decide.lua` call; a bigger batch
/// is split, so one script never holds Redis for long (about 5 µs a signal).
const MAX_SIGNALS_PER_CALL: usize = 64;
// A repeat's reply packs the index of a signal of its call in 7 bits.
const _: () = assert!(MAX_SIGNALS_PER_CALL < 128);

/// The scripts, each with `common.lua` prepended.
pub(super) struct Scripts {
    pub decide: Script,
    pub claim: Script,
    pub snapshot: Script,
    pub index: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        Scripts {
            decide: script(DECIDE),
            claim: script(CLAIM),
            snapshot: script(SNAPSHOT),
            index: script(INDEX),
        }
    }
}

/// One script call: its keys (all in one slot) and arguments.
pub(super) struct Call {
    pub keys: Vec<String>,
    pub args: Vec<Vec<u8>>,
}

impl Call {
    /// The slot every key of the call lives in.
    pub fn slot(&self) -> Slot {
        Slot::for_key(self.keys.first().map(String::as_str).unwrap_or(""))
    }

    /// A `claim.lua` call: `op` on the claim `key`, by `owner`.
    pub fn claim(settings: &Settings, op: &str, key: &ClaimKey, owner: Owner) -> Call {
        Call::claim_as(settings, op, key, owner.0.to_string().into_bytes())
    }

    /// A `claim.lua` call that counts `claim`'s signal: `op` on the claim
    /// `key`, by `claim`'s owner, with its delivery's tokens
    /// (`<owner>:<current>:<previous>`).
    fn counting(settings: &Settings, op: &str, key: &ClaimKey, claim: &Claim) -> Call {
        let d = claim.delivery;
        let caller = format!("{}:{}:{}", claim.owner.0, d.current, d.previous);
        Call::claim_as(settings, op, key, caller.into_bytes())
    }

    /// A `claim.lua` call: `op` on the claim `key`, by the caller token
    /// `caller` (ARGV[7]).
    fn claim_as(settings: &Settings, op: &str, key: &ClaimKey, caller: Vec<u8>) -> Call {
        let (keys, kind, name) = claim_keys(key);
        Call {
            keys,
            args: vec![
                op.as_bytes().to_vec(),
                kind.as_bytes().to_vec(),
                name.as_bytes().to_vec(),
                ms(settings.claim_lease).to_string().into_bytes(),
                ms(settings.dedup_ttl).to_string().into_bytes(),
                ms(settings.incident_ttl).to_string().into_bytes(),
                caller,
            ],
        }
    }

    /// Commits `owner`'s claim `key`, its resource in namespace `moved_to` if not its own.
    pub fn commit(
        settings: &Settings,
        owner: Owner,
        key: &ClaimKey,
        moved_to: Option<&str>,
    ) -> Call {
        let mut call = Call::claim(settings, "commit", key, owner);
        call.args.push(moved_to_arg(moved_to));
        call
    }

    /// Adopts `existing` as the resource of `claim`'s fingerprint
    /// (`absorb`: counting the claim's firing as a new firing of it).
    pub fn adopt(settings: &Settings, claim: &Claim, existing: &Snapshot, absorb: bool) -> Call {
        let key = ClaimKey::Fingerprint {
            namespace: claim.namespace.clone(),
            fingerprint: claim.fingerprint.clone(),
        };
        let mut call = Call::counting(settings, "adopt", &key, claim);
        call.keys.push(Keys(&claim.namespace).unwritten());
        call.args.push(existing.resource.as_bytes().to_vec());
        call.args
            .push(existing.first_seen_ms.to_string().into_bytes());
        call.args
            .push(existing.occurrence_count.to_string().into_bytes());
        call.args.push(moved_to_arg(existing.moved_to.as_deref()));
        let (resolved, received) = resolution_args(existing.resolution);
        let numbers = [
            existing.instance_ms,
            i64::try_from(existing.firings).unwrap_or(i64::MAX),
            resolved,
            received,
            claim.instance_ms,
        ];
        call.args
            .extend(numbers.iter().map(|n| n.to_string().into_bytes()));
        call.args
            .push(if absorb { b"1".to_vec() } else { b"0".to_vec() });
        call
    }

    /// Adopts `existing` as the running storm of `namespace`; `None` if it
    /// has no storm counters.
    pub fn adopt_storm(settings: &Settings, namespace: &str, existing: &Snapshot) -> Option<Call> {
        Call::storm_found(settings, "adopt", namespace, existing, None)
    }

    /// Records `claim`'s fingerprint as a member of the ended storm
    /// `existing` (see `claim.lua`, member); `None` if it has no storm counters.
    pub fn adopt_member(settings: &Settings, claim: &Claim, existing: &Snapshot) -> Option<Call> {
        Call::storm_found(settings, "member", &claim.namespace, existing, Some(claim))
    }

    /// A `claim.lua` call about the storm resource `existing` found in the
    /// sink: `adopt`, or `member` for `member`'s fingerprint.
    fn storm_found(
        settings: &Settings,
        op: &str,
        namespace: &str,
        existing: &Snapshot,
        member: Option<&Claim>,
    ) -> Option<Call> {
        let storm = existing.storm.as_ref()?;
        let key = ClaimKey::Storm {
            namespace: namespace.to_string(),
            name: existing.resource.clone(),
        };
        let mut call = match member {
            Some(m) => Call::counting(settings, op, &key, m),
            None => Call::claim(settings, op, &key, Owner::default()),
        };
        if let Some(m) = member {
            call.keys.push(Keys(namespace).fingerprint(&m.fingerprint));
            call.keys.push(Keys(namespace).unwritten());
        }
        let numbers = [
            storm.started_ms,
            existing.last_seen_ms,
            i64::try_from(existing.occurrence_count).unwrap_or(i64::MAX),
            i64::try_from(storm.alert_count).unwrap_or(i64::MAX),
            i64::try_from(storm.affected_overflow).unwrap_or(i64::MAX),
            storm.ends_ms,
            i64::from(settings.storm_max_affected),
        ];
        call.args
            .extend(numbers.iter().map(|n| n.to_string().into_bytes()));
        call.args.push(moved_to_arg(existing.moved_to.as_deref()));
        call.args
            .push(storm.resolved_count.to_string().into_bytes());
        call.args
            .push(storm.previous.as_deref().unwrap_or("").as_bytes().to_vec());
        if let Some(m) = member {
            call.args.push(m.instance_ms.to_string().into_bytes());
        }
        call.args.extend(
            storm
                .affected
                .iter()
                .take(settings.storm_max_affected as usize)
                .map(|a| a.as_bytes().to_vec()),
        );
        Some(call)
    }

    /// Takes back the count `owner`'s request made on the record of
    /// `fingerprint` (its own resource, or its storm's: the storm hash is
    /// the second key, the index of unwritten changes the third).
    pub fn uncount(settings: &Settings, owner: Owner, namespace: &str, fingerprint: &str) -> Call {
        let key = ClaimKey::Fingerprint {
            namespace: namespace.to_string(),
            fingerprint: fingerprint.to_string(),
        };
        let mut call = Call::claim(settings, "uncount", &key, owner);
        call.keys.push(Keys(namespace).storms());
        call.keys.push(Keys(namespace).unwritten());
        call
    }

    /// Forgets `key` if its committed resource is `resource`.
    pub fn forget(settings: &Settings, key: &ClaimKey, resource: &str) -> Call {
        let mut call = Call::claim(settings, "forget", key, Owner::default());
        call.args.push(resource.as_bytes().to_vec());
        call
    }

    /// A `snapshot.lua` call for `key`.
    pub fn snapshot(key: &ClaimKey) -> Call {
        let (mut keys, kind, name) = claim_keys(key);
        keys.truncate(2);
        if kind == "f" {
            keys.truncate(1);
        }
        keys.push(Keys(key.namespace()).unwritten());
        Call {
            keys,
            args: vec![kind.as_bytes().to_vec(), name.as_bytes().to_vec()],
        }
    }

    /// An `index.lua` call stamping `namespaces` in the hash of namespaces.
    pub fn register(namespaces: &[&str]) -> Call {
        let mut args = vec![b"register".to_vec()];
        args.extend(namespaces.iter().map(|ns| ns.as_bytes().to_vec()));
        Call {
            keys: vec![NAMESPACES.to_string()],
            args,
        }
    }

    /// An `index.lua` call for the next `count` namespaces of the hash from `cursor`.
    pub fn scan(cursor: &str, count: usize) -> Call {
        Call {
            keys: vec![NAMESPACES.to_string()],
            args: vec![
                b"scan".to_vec(),
                cursor.as_bytes().to_vec(),
                count.to_string().into_bytes(),
            ],
        }
    }

    /// An `index.lua` call for at most `limit` entries of `namespace`'s
    /// index whose latest change is older than `age`.
    pub fn old(namespace: &str, age: Duration, limit: usize) -> Call {
        Call {
            keys: vec![Keys(namespace).unwritten()],
            args: vec![
                b"old".to_vec(),
                ms(age).to_string().into_bytes(),
                limit.to_string().into_bytes(),
            ],
        }
    }

    /// An `index.lua` call: `key` was written with the counters `written`
    /// (`None`: the flush found the resource gone).
    pub fn written(settings: &Settings, key: &ClaimKey, written: Option<Written>) -> Call {
        let k = Keys(key.namespace());
        let (record, kind, member) = match key {
            ClaimKey::Fingerprint { fingerprint, .. } => {
                let f = k.fingerprint(fingerprint);
                (f.clone(), "f", f)
            }
            ClaimKey::Storm { name, .. } => (k.storms(), "s", name.clone()),
        };
        Call {
            keys: vec![k.unwritten(), record],
            args: vec![
                b"written".to_vec(),
                kind.as_bytes().to_vec(),
                member.into_bytes(),
                written
                    .map(|w| w.occurrence_count.to_string())
                    .unwrap_or_default()
                    .into_bytes(),
                written
                    .map_or(0, |w| w.resolved_count)
                    .to_string()
                    .into_bytes(),
                if written.is_some_and(|w| w.resolved) {
                    b"1".to_vec()
                } else {
                    b"0".to_vec()
                },
                ms(settings.dedup_ttl).to_string().into_bytes(),
                ms(settings.incident_ttl).to_string().into_bytes(),
            ],
        }
    }

    /// An `index.lua` call removing `namespace` from the hash of namespaces
    /// if its stamp is older than `age`.
    pub fn prune(namespace: &str, age: Duration) -> Call {
        Call {
            keys: vec![NAMESPACES.to_string()],
            args: vec![
                b"prune".to_vec(),
                namespace.as_bytes().to_vec(),
                ms(age).to_string().into_bytes(),
            ],
        }
    }

    /// One `decide.lua` call for `claims` (all of one namespace, in order).
    pub fn decide(settings: &Settings, claims: &[&Claim]) -> Call {
        let s = settings;
        let Some(first) = claims.first() else {
            return Call {
                keys: Vec::new(),
                args: Vec::new(),
            };
        };
        let k = Keys(&first.namespace);
        let mut keys = Vec::with_capacity(7 + claims.len());
        keys.extend([
            k.window(),
            k.storms(),
            k.affected(),
            k.expiry(),
            k.marker(),
            k.marker_owner(),
            k.unwritten(),
        ]);
        // The requests whose signals these are, each once (its token and its
        // delivery's), and the records they count in, each once; a signal
        // names both by index (from 1). Linear searches: a call holds at
        // most MAX_SIGNALS_PER_CALL signals.
        let mut requests: Vec<(Owner, Delivery)> = Vec::new();
        let mut records: Vec<(&str, &str)> = Vec::new();
        let mut signals: Vec<(usize, usize)> = Vec::with_capacity(claims.len());
        for c in claims {
            let r = position_or_push(&mut requests, (c.owner, c.delivery), |(o, _)| *o == c.owner);
            let record = (c.fingerprint.as_str(), c.affected.as_str());
            let j = position_or_push(&mut records, record, |x| *x == record);
            signals.push((j, r));
        }
        keys.extend(records.iter().map(|(fp, _)| k.fingerprint(fp)));
        let mut args =
            Vec::with_capacity(10 + 3 * requests.len() + records.len() + 4 * claims.len());
        args.extend([
            storm_prefix(&first.namespace).into_bytes(),
            ms(s.dedup_ttl).to_string().into_bytes(),
            s.storm_threshold.to_string().into_bytes(),
            ms(s.storm_window).to_string().into_bytes(),
            ms(s.storm_max_duration).to_string().into_bytes(),
            s.storm_max_affected.to_string().into_bytes(),
            ms(s.claim_lease).to_string().into_bytes(),
            ms(s.dedup_ttl.max(WARM_MARKER_TTL))
                .to_string()
                .into_bytes(),
            ms(s.incident_ttl).to_string().into_bytes(),
            requests.len().to_string().into_bytes(),
        ]);
        for (owner, delivery) in &requests {
            args.push(owner.0.to_string().into_bytes());
            args.push(delivery.current.to_string().into_bytes());
            args.push(delivery.previous.to_string().into_bytes());
        }
        args.extend(
            records
                .iter()
                .map(|(_, affected)| affected.as_bytes().to_vec()),
        );
        for (c, (j, r)) in claims.iter().zip(signals) {
            args.push(j.to_string().into_bytes());
            args.push(r.to_string().into_bytes());
            args.push(c.instance_ms.to_string().into_bytes());
            args.push(match c.resolved_ms {
                Some(t) => t.to_string().into_bytes(),
                None if c.absent => b"-".to_vec(),
                None => Vec::new(),
            });
        }
        Call { keys, args }
    }
}

/// The index (from 1) of the first item of `items` that `is` picks, pushing
/// `item` if none is.
fn position_or_push<T>(items: &mut Vec<T>, item: T, is: impl Fn(&T) -> bool) -> usize {
    match items.iter().position(is) {
        Some(i) => i + 1,
        None => {
            items.push(item);
            items.len()
        }
    }
}

/// The keys of one namespace (see `common.lua` for what each holds), all
/// `sg:{<namespace>}:...`. An empty namespace is written `_` (no Kubernetes
/// namespace is): an empty hash tag would hash each whole key to its own slot.
pub(super) struct Keys<'a>(pub &'a str);

impl Keys<'_> {
    pub fn key(&self, rest: &str) -> String {
        let tag = if self.0.is_empty() { "_" } else { self.0 };
        format!("sg:{{{tag}}}:{rest}")
    }
    fn fingerprint(&self, fingerprint: &str) -> String {
        self.key(&format!("f:{fingerprint}"))
    }
    fn window(&self) -> String {
        self.key("w")
    }
    fn storms(&self) -> String {
        self.key("s")
    }
    fn affected(&self) -> String {
        self.key("a")
    }
    fn expiry(&self) -> String {
        self.key("x")
    }
    fn marker(&self) -> String {
        self.key("m")
    }
    fn marker_owner(&self) -> String {
        self.key("o")
    }
    fn unwritten(&self) -> String {
        self.key("d")
    }
}

/// The `claim.lua` argument naming where a resource is when not in its
/// namespace (`''` when it is).
fn moved_to_arg(moved_to: Option<&str>) -> Vec<u8> {
    moved_to.unwrap_or("").as_bytes().to_vec()
}

/// A resolution as the scripts take it: resolved ms, received ms (0 0: open).
fn resolution_args(resolution: Option<Resolution>) -> (i64, i64) {
    resolution.map_or((0, 0), |r| (r.resolved_ms, r.received_ms))
}

/// The keys, kind and storm name `claim.lua`/`snapshot.lua` take for `key`.
fn claim_keys(key: &ClaimKey) -> (Vec<String>, &'static str, &str) {
    match key {
        ClaimKey::Fingerprint {
            namespace,
            fingerprint,
        } => (vec![Keys(namespace).fingerprint(fingerprint)], "f", ""),
        ClaimKey::Storm { namespace, name } => {
            let k = Keys(namespace);
            (vec![k.storms(), k.affected(), k.expiry()], "s", name)
        }
    }
}

/// The claims of a batch grouped by namespace, in order, at most
/// [`MAX_SIGNALS_PER_CALL`] a group: the indices of each `decide.lua` call.
pub(super) fn namespace_groups(claims: &[Claim]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    for (i, claim) in claims.iter().enumerate() {
        let ns = claim.namespace.as_str();
        match open.get(ns) {
            Some(&g) if groups[g].len() < MAX_SIGNALS_PER_CALL => groups[g].push(i),
            _ => {
                open.insert(ns, groups.len());
                groups.push(vec![i]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_namespace_slot() {
        for ns in ["payments", "", "a}b"] {
            let k = Keys(ns);
            let slot = Slot::for_key(k.window());
            for key in [
                k.fingerprint("ab"),
                k.storms(),
                k.affected(),
                k.expiry(),
                k.unwritten(),
            ] {
                assert_eq!(Slot::for_key(key), slot, "{ns:?}");
            }
        }
        assert_eq!(Keys("payments").fingerprint("ab"), "sg:{payments}:f:ab");
    }
}
