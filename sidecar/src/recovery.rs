//! When the store does not know a firing, the sink is asked before a
//! resource is made: [`Write::Lookup`] in a cold namespace (the store may
//! have lost its record of a live incident: Redis restarted empty, a
//! failover, a restart on the memory store; read consistently), and
//! [`Write::Review`] for a firing instance the store does not hold (a new
//! firing, or one it forgot after the incident TTL; read from the sink's
//! own view: no API call). The fingerprint's latest resource, and its
//! controller's status, decide ([`Policy::verdict`]): the same incident is
//! adopted, one being remediated absorbs the firing, else the signal is
//! decided again as new. In a cold namespace a running storm found is
//! adopted too, so that new signals join it.

use std::time::{Duration, Instant};

use crate::failure::Failure;
use crate::lifecycle::{Policy, Verdict};
use crate::metrics::Metrics;
use crate::sink::{Found, Read, Sink, SinkError};
use crate::store::{Claim, Decision, Outcome, Snapshot, Store, StoreError, Write};
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
    }
}

impl Recovery<'_> {
    /// The firings the store asked to look up ([`Write::Lookup`],
    /// [`Write::Review`]): each is adopted, absorbed or decided again as
    /// new (`absent`). One more store round trip, only for firings the store
    /// does not know.
    pub async fn resolve_lookups(
        &self,
        claims: &[Claim],
        decisions: &mut [Decision],
        received_ms: i64,
        deadline: Instant,
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
            // A storm the store lost can only be behind a cold lookup.
            let cold: Vec<usize> = again
                .iter()
                .copied()
                .filter(|&j| decisions[j].write == Write::Lookup)
                .collect();
            if !cold.is_empty() {
                self.adopt_running_storms(claims, &cold, received_ms, deadline)
                    .await?;
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

    /// Signals `again` found no resource of their own in the sink: before
    /// they are decided as new, a storm of their namespace that the store
    /// lost but the sink shows still running is adopted, so they join it
    /// instead of starting another (the store ignores it if it has a
    /// running storm of its own).
    async fn adopt_running_storms(
        &self,
        claims: &[Claim],
        again: &[usize],
        received_ms: i64,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let mut namespaces: Vec<&str> = again
            .iter()
            .map(|&j| claims[j].namespace.as_str())
            .collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let finds: Vec<_> = namespaces
            .iter()
            .map(|ns| async move { self.sink.find_recent_storm(ns, received_ms).await })
            .collect();
        let found = a_few_at_a_time(finds, deadline)
            .await
            .ok_or_else(|| Failure::Deadline {
                what: "looking in the sink for a running storm".into(),
                retry_after: Duration::from_secs(1),
            })?;
        for (ns, found) in namespaces.iter().zip(found) {
            let Some(storm) = found? else {
                continue;
            };
            if self
                .timed("adopt", self.store.adopt_storm(ns, &storm.snapshot))
                .await?
            {
                tracing::info!(resource = %storm.location, "the store did not know this running storm; adopted its resource");
            }
        }
        Ok(())
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
