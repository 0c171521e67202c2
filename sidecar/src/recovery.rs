//! When the store does not know a firing, the sink is asked before a
//! resource is made: [`Write::Lookup`] in a cold namespace, or for a firing
//! that began before the store's memory of its namespace did (the store may
//! have lost its record of a live incident: Redis restarted empty, a
//! failover, a restart on the memory store; read consistently), and
//! [`Write::Review`] for a firing instance the store does not hold (a new
//! firing, or one it forgot after the incident TTL; read from the sink's
//! own view: no API call). The fingerprint's latest resource, and its
//! controller's status, decide ([`Policy::verdict`]): the same incident is
//! adopted, one being remediated absorbs the firing, else the signal is
//! decided again as new. After a lookup a running storm found is adopted
//! too, so that new signals join it; and the firings that were members of a
//! storm, running or ended, count in it again.
//!
//! A request costs the sink's backend work in a bounded number of
//! namespaces, whatever it names ([`Budget`]): lookups that are not read
//! from the sink's own view, and creates in namespaces the sink does not
//! know to exist, count; the signals of namespaces beyond
//! [`Recovery::new_namespaces`] are put off (the request fails once the
//! rest is done, and the sender's retry goes on with them).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::failure::Failure;
use crate::lifecycle::{Policy, Verdict};
use crate::metrics::Metrics;
use crate::sink::{Found, FoundStorm, Read, Sink, SinkError};
use crate::store::{Claim, ClaimKey, Decision, Outcome, Snapshot, Store, StoreError, Write};
use crate::store_call;

/// Namespaces a request looks up in the sink at once.
const LOOKUPS_AT_ONCE: usize = 8;

/// What the lookups of one request use.
pub struct Recovery<'a> {
    pub store: &'a dyn Store,
    pub sink: &'a dyn Sink,
    pub metrics: &'a Metrics,
    /// One store call.
    pub store_timeout: Duration,
    /// What a found resource makes of a firing.
    pub lifecycle: &'a Policy,
    /// Namespaces one request may cost the sink's backend work in
    /// (`SIGNALGATE_MAX_NEW_NAMESPACES_PER_REQUEST`).
    pub new_namespaces: usize,
}

/// Signals a request left undecided: their namespaces were beyond its
/// budget of new namespaces.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PutOff {
    pub signals: usize,
    pub namespaces: usize,
}

impl PutOff {
    /// How the request is answered once the rest of it is done, if it put
    /// signals off: 503, so that the sender retries them.
    pub fn failure(&self) -> Option<Failure> {
        (self.signals > 0).then_some(Failure::NewNamespaces {
            signals: self.signals,
            namespaces: self.namespaces,
        })
    }
}

/// The namespaces one request may cost the sink's backend work in: a
/// lookup the sink cannot answer from its own view (in a cold namespace: a
/// consistent read; the kube sink: two LISTs per 50 fingerprints, and two
/// for a storm), or a create in a namespace the sink does not know to
/// exist (the kube sink: maybe a refused POST, then a resource in the
/// fallback namespace). Each namespace counts once, in the order the
/// request first needs it; past the budget, its signals are put off.
/// What costs no more than it did before (duplicates, counting in running
/// storms, creates in namespaces the sink knows) is never put off, so a
/// retry goes on where the last attempt stopped: what that one created is
/// known to the store by then.
struct Budget<'c> {
    left: usize,
    charged: Vec<&'c str>,
    put_off: HashSet<&'c str>,
    signals: usize,
}

impl<'c> Budget<'c> {
    fn new(namespaces: usize) -> Budget<'c> {
        Budget {
            left: namespaces,
            charged: Vec::new(),
            put_off: HashSet::new(),
            signals: 0,
        }
    }

    /// Whether this request may spend sink work on `namespace`.
    fn charge(&mut self, namespace: &'c str) -> bool {
        if self.charged.contains(&namespace) {
            return true;
        }
        if self.left == 0 {
            self.put_off.insert(namespace);
            return false;
        }
        self.left -= 1;
        self.charged.push(namespace);
        true
    }

    fn put_off(&self) -> PutOff {
        PutOff {
            signals: self.signals,
            namespaces: self.put_off.len(),
        }
    }
}

/// A found resource as the store records it when it adopts it.
fn adopted_snapshot(found: &Found, namespace: &str) -> Snapshot {
    Snapshot {
        resource: found.location.name.clone(),
        first_seen_ms: found.first_seen_ms,
        last_seen_ms: found.last_seen_ms,
        occurrence_count: found.occurrence_count,
        storm: None,
        moved_to: found.location.moved_to(namespace),
        instance_ms: found.instance_ms,
        firings: found.firings,
        resolution: found.resolution,
        unwritten: false,
        pending: false,
    }
}

impl Recovery<'_> {
    /// The firings the store asked to look up ([`Write::Lookup`],
    /// [`Write::Review`]): each is adopted, absorbed or decided again as
    /// new (`absent`). One more store round trip, only for firings the store
    /// does not know. Then the creates the decisions ask for, within the
    /// request's budget of new namespaces ([`Budget`]). A signal put off is
    /// left [`Write::Skip`] (a claim it took given back), and counted in
    /// the [`PutOff`] returned.
    pub async fn resolve_lookups(
        &self,
        claims: &[Claim],
        decisions: &mut [Decision],
        received_ms: i64,
        deadline: Instant,
    ) -> Result<PutOff, Failure> {
        let mut budget = Budget::new(self.new_namespaces);
        self.look_up(claims, decisions, received_ms, deadline, &mut budget)
            .await?;
        self.limit_creates(claims, decisions, &mut budget).await;
        Ok(budget.put_off())
    }

    async fn look_up<'c>(
        &self,
        claims: &'c [Claim],
        decisions: &mut [Decision],
        received_ms: i64,
        deadline: Instant,
        budget: &mut Budget<'c>,
    ) -> Result<(), Failure> {
        let lookups: Vec<usize> = (0..decisions.len())
            .filter(|&j| matches!(decisions[j].write, Write::Lookup | Write::Review))
            .collect();
        if lookups.is_empty() {
            return Ok(());
        }
        let past_deadline = || Failure::Deadline {
            what: "looking in the sink for live resources".into(),
            retry_after: Duration::from_secs(1),
        };
        // One sink call per namespace and kind of read for all of its
        // fingerprints (the kube sink LISTs the namespace and the fallback
        // namespace by label, or reads its watch cache), a few at a time.
        let mut groups: Vec<(&str, Read, Vec<usize>)> = Vec::new();
        for &j in &lookups {
            let ns = claims[j].namespace.as_str();
            let read = match decisions[j].write {
                Write::Lookup => Read::Consistent,
                _ => Read::Cached,
            };
            match groups.iter_mut().find(|(n, r, _)| *n == ns && *r == read) {
                Some((_, _, js)) => js.push(j),
                None => groups.push((ns, read, vec![j])),
            }
        }
        groups.retain(|(ns, read, js)| {
            if self.sink.reads_locally(*read) || budget.charge(ns) {
                return true;
            }
            for &j in js {
                decisions[j].write = Write::Skip;
            }
            budget.signals += js.len();
            false
        });
        let finds: Vec<_> = groups
            .iter()
            .map(|(ns, read, js)| {
                let fingerprints: Vec<String> =
                    js.iter().map(|&j| claims[j].fingerprint.clone()).collect();
                async move { self.sink.find_latest(ns, &fingerprints, *read).await }
            })
            .collect();
        let found = a_few_at_a_time(finds, deadline)
            .await
            .ok_or_else(past_deadline)?;

        let mut again = Vec::new();
        let mut adopts = Vec::new();
        for ((_, _, js), found) in groups.iter().zip(found) {
            let found = found?;
            if found.len() != js.len() {
                return Err(Failure::Sink(SinkError::Unavailable(
                    "the sink did not answer one lookup per fingerprint".into(),
                )));
            }
            for (&j, found) in js.iter().zip(found) {
                let verdict =
                    self.lifecycle
                        .verdict(found.as_ref(), claims[j].instance_ms, received_ms);
                match (verdict, found) {
                    (Verdict::Adopt, Some(found)) => adopts.push((j, found, false)),
                    (Verdict::Absorb, Some(found)) => adopts.push((j, found, true)),
                    _ => again.push(j),
                }
            }
        }
        let adopted_all = futures::future::join_all(adopts.iter().map(|(j, found, absorb)| {
            let claim = &claims[*j];
            let existing = adopted_snapshot(found, &claim.namespace);
            async move {
                let adopt = self.store.adopt(claim, &existing, *absorb);
                self.timed("adopt", adopt).await
            }
        }))
        .await;
        // Every adoption that succeeded is recorded before a failed one is
        // answered: one may have handed this request a claim (Create),
        // which the caller gives back on failure only if it sees it.
        let mut failed = None;
        for ((j, found, absorb), result) in adopts.into_iter().zip(adopted_all) {
            let adopted = match result {
                Ok(Some(adopted)) => adopted,
                Ok(None) => {
                    // It joined a storm meanwhile: decide it again.
                    again.push(j);
                    continue;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            if absorb {
                tracing::info!(resource = %found.location, phase = ?found.phase, "a new firing of an incident being remediated; absorbed into its resource");
            } else {
                tracing::info!(resource = %found.location, "the store did not know this firing; adopted its resource");
            }
            // The store's resource: the one found, or another if another
            // request claimed the incident first (then wait for its claim,
            // or take it over).
            let key = decisions[j].key.clone();
            decisions[j] = Decision {
                outcome: if absorb {
                    Outcome::Absorbed
                } else {
                    Outcome::Duplicate
                },
                write: adopted.write,
                key,
                snapshot: adopted.snapshot,
            };
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        if !again.is_empty() {
            // A storm the store lost can only be behind a lookup.
            let cold: Vec<usize> = again
                .iter()
                .copied()
                .filter(|&j| decisions[j].write == Write::Lookup)
                .collect();
            if !cold.is_empty() {
                let members = self
                    .adopt_lost_storms(claims, &cold, decisions, received_ms, deadline)
                    .await?;
                again.retain(|j| !members.contains(j));
            }
            if Instant::now() >= deadline {
                return Err(past_deadline());
            }
            again.sort_unstable();
            let absent: Vec<Claim> = again
                .iter()
                .map(|&j| Claim {
                    absent: true,
                    ..claims[j].clone()
                })
                .collect();
            let redecided = self.timed("decide", self.store.decide(&absent)).await?;
            for (&j, d) in again.iter().zip(redecided) {
                decisions[j] = d;
            }
        }
        Ok(())
    }

    /// The creates `decisions` ask for in namespaces the sink does not know
    /// to exist, beyond the budget: their claims are given back (so that
    /// the sender's retry takes them at once) and their signals put off.
    async fn limit_creates<'c>(
        &self,
        claims: &'c [Claim],
        decisions: &mut [Decision],
        budget: &mut Budget<'c>,
    ) {
        let mut given_back: HashSet<ClaimKey> = HashSet::new();
        for (claim, decision) in claims.iter().zip(decisions.iter_mut()) {
            if decision.write != Write::Create {
                continue;
            }
            let ns = claim.namespace.as_str();
            if self.sink.knows_namespace(ns) || budget.charge(ns) {
                continue;
            }
            given_back.insert(decision.key.clone());
            decision.write = Write::Skip;
            budget.signals += 1;
        }
        let Some(owner) = claims.first().map(|c| c.owner) else {
            return;
        };
        if given_back.is_empty() {
            return;
        }
        let given_back: Vec<ClaimKey> = given_back.into_iter().collect();
        if let Err(e) = self
            .timed("release", self.store.release(owner, &given_back))
            .await
        {
            tracing::warn!(error = %e, "cannot give back the claims of signals put off; they expire with their lease");
        }
    }

    /// Signals `again` found no resource of their own in the sink: before
    /// they are decided as new, the namespace's storm resources are looked
    /// at. The latest, if the sink shows it still running, is adopted (the
    /// store ignores it if it has a running storm of its own), so that new
    /// signals join it instead of starting another. A firing that was a
    /// storm's member ([`storm_of`]) counts in that storm again, running or
    /// ended, rather than getting a resource of its own or joining another
    /// storm as a new member. Returns those signals (their decisions set).
    async fn adopt_lost_storms(
        &self,
        claims: &[Claim],
        again: &[usize],
        decisions: &mut [Decision],
        received_ms: i64,
        deadline: Instant,
    ) -> Result<Vec<usize>, Failure> {
        let mut namespaces: Vec<&str> = again
            .iter()
            .map(|&j| claims[j].namespace.as_str())
            .collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let finds: Vec<_> = namespaces
            .iter()
            .map(|ns| async move { self.sink.find_recent_storms(ns).await })
            .collect();
        let found = a_few_at_a_time(finds, deadline)
            .await
            .ok_or_else(|| Failure::Deadline {
                what: "looking in the sink for a running storm".into(),
                retry_after: Duration::from_secs(1),
            })?;
        let mut members = Vec::new();
        for (ns, found) in namespaces.iter().zip(found) {
            let storms = found?;
            let Some(latest) = storms.first() else {
                continue;
            };
            let running = latest
                .snapshot
                .storm
                .as_ref()
                .is_some_and(|s| s.ends_ms > received_ms);
            if running
                && self
                    .timed("adopt", self.store.adopt_storm(ns, &latest.snapshot))
                    .await?
            {
                tracing::info!(resource = %latest.location, "the store did not know this running storm; adopted its resource");
            }
            let candidates: Vec<(usize, &FoundStorm)> = again
                .iter()
                .filter(|&&j| claims[j].namespace == *ns && claims[j].resolved_ms.is_none())
                .filter_map(|&j| {
                    Some((
                        j,
                        storm_of(self.lifecycle, &storms, &claims[j], received_ms)?,
                    ))
                })
                .collect();
            // One store call each, all at once (as adoptions are).
            let adopted = futures::future::join_all(candidates.iter().map(|(j, storm)| {
                let adopt = self.store.adopt_member(&claims[*j], &storm.snapshot);
                self.timed("adopt", adopt)
            }))
            .await;
            for ((j, storm), result) in candidates.into_iter().zip(adopted) {
                if let Some(decision) = result? {
                    tracing::info!(resource = %storm.location, fingerprint = %claims[j].fingerprint,
                        "the store did not know this member of a storm; counted in it again");
                    decisions[j] = decision;
                    members.push(j);
                }
            }
        }
        Ok(members)
    }

    /// A store call with the store timeout and its latency recorded.
    async fn timed<T>(
        &self,
        op: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        store_call::timed(self.metrics, self.store_timeout, op, call).await
    }
}

/// Of `storms` (latest started first), the one `claim`'s firing was a
/// member of: the latest that lists its target and was last seen after the
/// firing began, less than a member's lifetime ago
/// ([`Policy::was_storm_member`]). A storm whose list is full (overflow)
/// may hold members it does not list, and a signal without a target is
/// listed nowhere: for those the times alone decide.
fn storm_of<'s>(
    lifecycle: &Policy,
    storms: &'s [FoundStorm],
    claim: &Claim,
    received_ms: i64,
) -> Option<&'s FoundStorm> {
    storms.iter().find(|found| {
        let Some(storm) = found.snapshot.storm.as_ref() else {
            return false;
        };
        let listed = claim.affected.is_empty()
            || storm.affected_overflow > 0
            || storm.affected.contains(&claim.affected);
        listed && lifecycle.was_storm_member(&found.snapshot, claim.instance_ms, received_ms)
    })
}

/// Runs `calls` (sink lookups, one per namespace) [`LOOKUPS_AT_ONCE`] at a
/// time; their results in order, or `None` if `deadline` passed first.
async fn a_few_at_a_time<F: std::future::Future>(
    calls: Vec<F>,
    deadline: Instant,
) -> Option<Vec<F::Output>> {
    use futures::StreamExt;
    let all = futures::stream::iter(calls)
        .buffered(LOOKUPS_AT_ONCE)
        .collect::<Vec<_>>();
    let remaining = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(remaining, all).await.ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::sink::{Created, FoundStorm};
    use crate::store::memory::MemoryStore;
    use crate::store::{Owner, Settings};
    use signalgate_resource::{Progress, RemediationRequest};

    /// A sink that finds nothing, whose consistent reads reach its backend,
    /// and that knows the namespaces `known` exist.
    struct Probe {
        known: Vec<&'static str>,
        looked_up: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Sink for Probe {
        async fn find_latest(
            &self,
            namespace: &str,
            fingerprints: &[String],
            _read: Read,
        ) -> Result<Vec<Option<Found>>, SinkError> {
            let mut looked_up = self.looked_up.lock().unwrap_or_else(|e| e.into_inner());
            looked_up.push(namespace.to_string());
            Ok(vec![None; fingerprints.len()])
        }
        async fn find_recent_storms(&self, _namespace: &str) -> Result<Vec<FoundStorm>, SinkError> {
            Ok(Vec::new())
        }
        async fn create(&self, _: &RemediationRequest, _: bool) -> Result<Created, SinkError> {
            Err(SinkError::Rejected("not here".into()))
        }
        async fn update(&self, _: &str, _: &str, _: &Progress) -> Result<(), SinkError> {
            Ok(())
        }
        async fn ready(&self) -> Result<(), SinkError> {
            Ok(())
        }
        fn reads_locally(&self, read: Read) -> bool {
            read == Read::Cached
        }
        fn knows_namespace(&self, namespace: &str) -> bool {
            self.known.contains(&namespace)
        }
    }

    fn claim(owner: Owner, namespace: &str, fingerprint: &str) -> Claim {
        Claim {
            owner,
            namespace: namespace.into(),
            fingerprint: fingerprint.into(),
            affected: format!("Pod/{fingerprint}"),
            ..Claim::default()
        }
    }

    /// Decides `claims` and resolves them with a budget of `budget` namespaces.
    async fn resolve(
        store: &MemoryStore,
        sink: &Probe,
        claims: &[Claim],
        budget: usize,
    ) -> (Vec<Decision>, PutOff) {
        let metrics = Metrics::new();
        let policy = Policy::default();
        let recovery = Recovery {
            store,
            sink,
            metrics: &metrics,
            store_timeout: Duration::from_secs(1),
            lifecycle: &policy,
            new_namespaces: budget,
        };
        let mut decisions = store.decide(claims).await.unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(5);
        let put_off = recovery
            .resolve_lookups(claims, &mut decisions, 0, deadline)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (decisions, put_off)
    }

    fn writes(decisions: &[Decision]) -> Vec<Write> {
        decisions.iter().map(|d| d.write).collect()
    }

    #[tokio::test]
    async fn a_request_looks_up_at_most_its_budget_of_cold_namespaces() {
        let store = MemoryStore::new(Settings::default());
        let sink = Probe {
            known: vec!["a", "b", "c", "d"],
            looked_up: Mutex::default(),
        };
        let owner = Owner::next();
        // All cold (new to the store); the namespace of the first two twice.
        let claims: Vec<Claim> = [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("d", "5")]
            .iter()
            .map(|(ns, fp)| claim(owner, ns, fp))
            .collect();
        let (decisions, put_off) = resolve(&store, &sink, &claims, 2).await;
        let looked_up = sink.looked_up.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(looked_up, ["a", "b"]);
        assert_eq!(
            writes(&decisions),
            [
                Write::Create,
                Write::Create,
                Write::Create,
                Write::Skip,
                Write::Skip
            ]
        );
        assert_eq!(
            put_off,
            PutOff {
                signals: 2,
                namespaces: 2
            }
        );
        assert!(put_off.failure().is_some());

        // The sender's retry: a and b are known now, c and d looked up.
        let retry = Owner::next();
        let claims: Vec<Claim> = claims
            .iter()
            .map(|c| Claim {
                owner: retry,
                ..c.clone()
            })
            .collect();
        let (decisions, put_off) = resolve(&store, &sink, &claims, 2).await;
        assert_eq!(put_off, PutOff::default());
        assert_eq!(put_off.failure().map(|f| f.kind()), None);
        assert_eq!(decisions[3].write, Write::Create);
        let looked_up = sink.looked_up.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(looked_up, ["a", "b", "c", "d"]);
    }

    #[tokio::test]
    async fn creates_in_namespaces_the_sink_does_not_know_count_against_the_budget() {
        // Warm namespaces: new signals without a firing instance are
        // claimed at once, without a lookup.
        let store = MemoryStore::new(Settings {
            dedup_ttl: Duration::from_millis(1),
            ..Settings::default()
        });
        let sink = Probe {
            known: vec!["shop"],
            looked_up: Mutex::default(),
        };
        let namespaces = ["shop", "gone-1", "gone-2", "gone-3"];
        let prime: Vec<Claim> = namespaces
            .iter()
            .map(|ns| claim(Owner::next(), ns, "prime"))
            .collect();
        let _ = store.decide(&prime).await;
        tokio::time::sleep(Duration::from_millis(5)).await;

        let owner = Owner::next();
        let claims: Vec<Claim> = [
            ("gone-1", "1"),
            ("shop", "2"),
            ("gone-2", "3"),
            ("gone-3", "4"),
            ("shop", "5"),
            ("gone-3", "4"),
        ]
        .iter()
        .map(|(ns, fp)| claim(owner, ns, fp))
        .collect();
        let (decisions, put_off) = resolve(&store, &sink, &claims, 1).await;
        assert!(sink.looked_up.lock().map(|l| l.is_empty()).unwrap_or(false));
        // gone-1 takes the budget; shop is known; gone-2 and gone-3 (twice) wait.
        assert_eq!(
            writes(&decisions),
            [
                Write::Create,
                Write::Create,
                Write::Skip,
                Write::Skip,
                Write::Create,
                Write::Skip
            ]
        );
        assert_eq!(
            put_off,
            PutOff {
                signals: 3,
                namespaces: 2
            }
        );
        // Their claims were given back: the retry takes them at once.
        let retry = Owner::next();
        let again = store
            .decide(&[claim(retry, "gone-2", "3"), claim(retry, "gone-3", "4")])
            .await
            .unwrap_or_default();
        assert_eq!(writes(&again), [Write::Create, Write::Create]);
    }
}
