//! One request, start to end: parse → signals → ONE store round trip for
//! all of them → create the resources this request owns → wait for claims
//! other requests own → answer. See the claim protocol in [`crate::store`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use signalgate_model::alertmanager::{self, Webhook};
use signalgate_model::signal::{self, Context, Identity};
use signalgate_model::{kube_event, Invalid, Signal, SignalType, Status};

use crate::coalesce::Coalescer;
use crate::metrics::Metrics;
use crate::resource::{self, Progress};
use crate::sink::{Created, Location, Sink, SinkError};
use crate::store::{Claim, ClaimKey, ClaimState, Decision, Outcome, Store, StoreError, Write};

/// How often a request waiting on another request's claim looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Namespaces a request looks up in the sink at once (see [`Write::Lookup`]).
const LOOKUPS_AT_ONCE: usize = 8;

#[derive(Debug, Clone)]
pub struct Limits {
    pub fallback_namespace: String,
    pub max_alerts: usize,
    /// Total time for one request.
    pub request_deadline: Duration,
    /// One store call.
    pub store_timeout: Duration,
    /// The dedup window: a resource last seen within it is the live incident's.
    pub dedup_ttl: Duration,
}

pub struct Pipeline {
    pub store: Arc<dyn Store>,
    pub sink: Arc<dyn Sink>,
    pub coalescer: Arc<Coalescer>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

/// What happened to one signal of the request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SignalResult {
    pub fingerprint: String,
    /// created, duplicate, storm_started, storm_aggregated or resolved.
    pub outcome: &'static str,
    /// `namespace/name` of the resource the signal counts in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// A successful answer: 201 (something created), 202 (all duplicates or
/// aggregated) or 200 (nothing needed action).
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    #[serde(skip)]
    pub status: u16,
    pub signals: Vec<SignalResult>,
}

/// Why a request failed; every failure but `Invalid` is retryable.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Invalid(Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Waiting for a claim (or the sink) took longer than the request deadline.
    #[error("{what} not done within the request deadline")]
    Deadline { what: String, retry_after: Duration },
}

impl Failure {
    /// The metric `kind` of this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Invalid(_) => "invalid",
            Failure::Store(_) => "store",
            Failure::Sink(_) => "sink",
            Failure::Deadline { .. } => "deadline",
        }
    }
}

/// A signal whose resource this request writes or waits for.
struct Plan {
    signal: Signal,
    index: usize,
    decision: Decision,
}

/// A parsed body: the identity of every signal, and the whole signal built
/// on demand. Most signals are duplicates, which need only their identity;
/// the label and annotation sets are copied for the few whose resource is
/// written.
struct Parsed<'b> {
    identities: Vec<Identity>,
    payload: Payload<'b>,
    ctx: Context<'b>,
}

enum Payload<'b> {
    Alerts(Webhook<'b>),
    /// One event: its signal, already whole.
    Event(Signal),
}

impl Parsed<'_> {
    /// The whole signal `i`.
    fn signal(&self, i: usize) -> Option<Signal> {
        match &self.payload {
            Payload::Alerts(w) => signal::alert_signal(w, i, &self.ctx),
            Payload::Event(s) => (i == 0).then(|| s.clone()),
        }
    }
}

impl Pipeline {
    /// Handles one accepted body of `signal_type` from `source`.
    pub async fn handle(
        &self,
        signal_type: SignalType,
        source: &str,
        body: &[u8],
    ) -> Result<Accepted, Failure> {
        let started = Instant::now();
        let deadline = started + self.limits.request_deadline;
        let received_ms = crate::clock::now_ms();
        let parsed = self.parse(signal_type, source, body)?;
        let identities = &parsed.identities;
        let fingerprints: Vec<String> = identities.iter().map(Identity::fingerprint).collect();
        tracing::Span::current().record(
            "fingerprints",
            tracing::field::display(Joined(&fingerprints)),
        );

        let mut results: Vec<SignalResult> = fingerprints
            .iter()
            .map(|fp| SignalResult {
                fingerprint: fp.clone(),
                outcome: "resolved",
                resource: None,
            })
            .collect();
        let firing: Vec<usize> = (0..identities.len())
            .filter(|&i| identities[i].status == Status::Firing)
            .collect();
        let claims: Vec<Claim> = firing
            .iter()
            .map(|&i| Claim {
                namespace: identities[i].namespace.clone(),
                fingerprint: fingerprints[i].clone(),
                affected: resource::affected_name(&identities[i].target),
                absent: false,
            })
            .collect();

        let mut decisions = if claims.is_empty() {
            Vec::new()
        } else {
            self.timed("decide", self.store.decide(&claims)).await?
        };
        if let Err(e) = self
            .resolve_lookups(&claims, &mut decisions, received_ms, deadline)
            .await
        {
            // Claims this request took for its other signals: give them
            // back, so the sender's retry takes them at once.
            let taken: Vec<ClaimKey> = decisions
                .iter()
                .filter(|d| d.write == Write::Create)
                .map(|d| d.key.clone())
                .collect();
            self.release(&taken).await;
            return Err(e);
        }

        let mut creates = Vec::new();
        let mut awaits = Vec::new();
        for (&index, decision) in firing.iter().zip(decisions) {
            let result = &mut results[index];
            result.outcome = decision.outcome.as_str();
            let snapshot = &decision.snapshot;
            result.resource = Some(format!(
                "{}/{}",
                snapshot.namespace(decision.key.namespace()),
                snapshot.resource
            ));
            if decision.outcome == Outcome::StormStarted {
                self.metrics.storms.inc();
            }
            if decision.write == Write::Update {
                self.coalescer.mark(decision.key.clone());
                continue;
            }
            // Always there: `firing` indexes `parsed.identities`, one per
            // alert (or the one event), in order.
            let Some(signal) = parsed.signal(index) else {
                continue;
            };
            let plan = Plan {
                signal,
                index,
                decision,
            };
            match plan.decision.write {
                Write::Create => creates.push(plan),
                _ => awaits.push(plan),
            }
        }

        let mut created_any = false;
        let written = self.create_all(&creates, received_ms, deadline).await?;
        for (plan, w) in creates.iter().zip(written) {
            record(&mut results[plan.index], &w, &mut created_any);
        }
        for plan in &awaits {
            match self.await_claim(plan, received_ms, deadline).await? {
                Awaited::Committed(at) => results[plan.index].resource = Some(at.to_string()),
                Awaited::Created(at) => record(&mut results[plan.index], &at, &mut created_any),
            }
        }

        for r in &results {
            self.metrics
                .signals
                .with_label_values(&[signal_type.as_str(), r.outcome])
                .inc();
        }
        let status = if created_any {
            201
        } else if !firing.is_empty() {
            202
        } else {
            200
        };
        Ok(Accepted {
            status,
            signals: results,
        })
    }

    fn parse<'b>(
        &'b self,
        signal_type: SignalType,
        source: &'b str,
        body: &'b [u8],
    ) -> Result<Parsed<'b>, Failure> {
        let ctx = Context {
            source,
            fallback_namespace: &self.limits.fallback_namespace,
        };
        let (identities, payload) = match signal_type {
            SignalType::Prometheus => {
                let webhook =
                    alertmanager::parse(body, self.limits.max_alerts).map_err(Failure::Invalid)?;
                (
                    signal::alert_identities(&webhook, &ctx),
                    Payload::Alerts(webhook),
                )
            }
            SignalType::KubernetesEvent => {
                let event = kube_event::parse(body).map_err(Failure::Invalid)?;
                let signal = signal::from_kube_event(&event, &ctx);
                (vec![signal.identity()], Payload::Event(signal))
            }
        };
        Ok(Parsed {
            identities,
            payload,
            ctx,
        })
    }

    /// Creates the resources this request owns and commits their claims in
    /// one round trip. If a create failed, the request fails, but the claims
    /// whose resources were created are still committed (only the failed ones
    /// are released), so the sender's retry finds them done.
    async fn create_all(
        &self,
        plans: &[Plan],
        received_ms: i64,
        deadline: Instant,
    ) -> Result<Vec<Location>, Failure> {
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let writes = plans
            .iter()
            .map(|p| self.create_one(&p.signal, &p.decision, received_ms, deadline));
        let results = futures::future::join_all(writes).await;
        let mut done: Vec<(&Plan, Created)> = Vec::with_capacity(results.len());
        let mut failed: Vec<ClaimKey> = Vec::new();
        let mut failure = None;
        for (p, r) in plans.iter().zip(results) {
            match r {
                Ok(c) => done.push((p, c)),
                Err(e) => {
                    failed.push(p.decision.key.clone());
                    failure = Some(e);
                }
            }
        }
        if !done.is_empty() {
            let keys: Vec<(ClaimKey, Option<String>)> = done
                .iter()
                .map(|(p, c)| {
                    let key = &p.decision.key;
                    (key.clone(), c.location.moved_from(key.namespace()))
                })
                .collect();
            let committed = self.timed("commit", self.store.commit(&keys)).await;
            if let Err(e) = committed {
                self.release(&failed).await;
                return Err(e.into());
            }
        }
        for (p, c) in &done {
            if c.existed {
                // Left as a retried create had written it: write the counters.
                self.coalescer.mark(p.decision.key.clone());
            } else {
                // Counters may have moved while we created: the next flush checks.
                let progress = Progress::from_snapshot(&p.decision.snapshot);
                self.coalescer.created(p.decision.key.clone(), progress);
            }
        }
        if let Some(e) = failure {
            self.release(&failed).await;
            return Err(e);
        }
        Ok(done.into_iter().map(|(_, c)| c.location).collect())
    }

    async fn create_one(
        &self,
        signal: &Signal,
        decision: &Decision,
        received_ms: i64,
        deadline: Instant,
    ) -> Result<Created, Failure> {
        let rr = match &decision.key {
            ClaimKey::Fingerprint { fingerprint, .. } => {
                resource::for_signal(signal, fingerprint, &decision.snapshot, received_ms)
            }
            ClaimKey::Storm { .. } => resource::for_storm(
                signal,
                &resource::affected_name(&signal.target),
                &decision.snapshot,
                received_ms,
            ),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result =
            tokio::time::timeout(remaining, self.sink.create(&rr, decision.retakes_claim())).await;
        let outcome = match result {
            Ok(Ok(location)) => Ok(location),
            Ok(Err(e)) => Err(Failure::Sink(e)),
            Err(_) => Err(Failure::Deadline {
                what: format!("creating {}", decision.snapshot.resource),
                retry_after: Duration::from_secs(1),
            }),
        };
        let label = if outcome.is_ok() { "ok" } else { "error" };
        self.metrics
            .resources_written
            .with_label_values(&["create", label])
            .inc();
        outcome
    }

    /// Gives leases back after a failure, so the sender's retry takes them at
    /// once; if the store is down too, they simply expire.
    async fn release(&self, keys: &[ClaimKey]) {
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.timed("release", self.store.release(keys)).await {
            tracing::warn!(error = %e, "cannot release claims; they expire with their lease");
        }
    }

    /// The new fingerprints the store may have lost ([`Write::Lookup`]): a
    /// live resource of the incident found in the sink is adopted (the
    /// signal is its duplicate), the rest are decided again as absent. One
    /// more store round trip, only while a namespace is cold.
    async fn resolve_lookups(
        &self,
        claims: &[Claim],
        decisions: &mut [Decision],
        received_ms: i64,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let lookups: Vec<usize> = (0..decisions.len())
            .filter(|&j| decisions[j].write == Write::Lookup)
            .collect();
        if lookups.is_empty() {
            return Ok(());
        }
        let past_deadline = || Failure::Deadline {
            what: "looking in the sink for live resources".into(),
            retry_after: Duration::from_secs(1),
        };
        let since = received_ms - self.limits.dedup_ttl.as_millis() as i64;
        // One sink call per namespace for all of its fingerprints (the kube
        // sink LISTs the namespace and the fallback namespace by label), a
        // few namespaces at a time.
        let mut by_namespace: Vec<(&str, Vec<usize>)> = Vec::new();
        for &j in &lookups {
            let ns = claims[j].namespace.as_str();
            match by_namespace.iter_mut().find(|(n, _)| *n == ns) {
                Some((_, js)) => js.push(j),
                None => by_namespace.push((ns, vec![j])),
            }
        }
        let finds: Vec<_> = by_namespace
            .iter()
            .map(|(ns, js)| {
                let fingerprints: Vec<String> =
                    js.iter().map(|&j| claims[j].fingerprint.clone()).collect();
                async move { self.sink.find_recent(ns, &fingerprints, since).await }
            })
            .collect();
        let found = a_few_at_a_time(finds, deadline)
            .await
            .ok_or_else(past_deadline)?;

        let mut again = Vec::new();
        let mut adopts = Vec::new();
        for ((_, js), found) in by_namespace.iter().zip(found) {
            let found = found?;
            if found.len() != js.len() {
                return Err(Failure::Sink(SinkError::Unavailable(
                    "the sink did not answer one lookup per fingerprint".into(),
                )));
            }
            for (&j, found) in js.iter().zip(found) {
                match found {
                    Some(found) => adopts.push((j, found)),
                    None => again.push(j),
                }
            }
        }
        let adopted_all = futures::future::join_all(adopts.iter().map(|(j, found)| {
            let claim = &claims[*j];
            let existing = crate::store::Snapshot {
                resource: found.location.name.clone(),
                first_seen_ms: found.first_seen_ms,
                last_seen_ms: found.last_seen_ms,
                occurrence_count: found.occurrence_count,
                storm: None,
                moved_to: found.location.moved_from(&claim.namespace),
            };
            let (namespace, fingerprint) = (&claim.namespace, &claim.fingerprint);
            async move {
                let adopt = self.store.adopt(namespace, fingerprint, &existing);
                self.timed("adopt", adopt).await
            }
        }))
        .await;
        // Every adoption that succeeded is recorded before a failed one is
        // answered: one may have handed this request a claim (Create),
        // which the caller gives back on failure only if it sees it.
        let mut failed = None;
        for ((j, found), result) in adopts.into_iter().zip(adopted_all) {
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
            tracing::info!(resource = %found.location, "the store did not know this live incident; adopted its resource");
            // The store's resource: the one found, or another if another
            // request claimed the incident first (then wait for its claim,
            // or take it over).
            let key = decisions[j].key.clone();
            decisions[j] = Decision {
                outcome: Outcome::Duplicate,
                write: adopted.write,
                key,
                snapshot: adopted.snapshot,
            };
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        if !again.is_empty() {
            self.adopt_running_storms(claims, &again, received_ms, deadline)
                .await?;
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

    /// Waits for a claim another request holds.
    async fn await_claim(
        &self,
        plan: &Plan,
        received_ms: i64,
        deadline: Instant,
    ) -> Result<Awaited, Failure> {
        let key = &plan.decision.key;
        let committed = |moved_to: Option<String>| {
            Awaited::Committed(Location {
                namespace: moved_to.unwrap_or_else(|| key.namespace().to_string()),
                name: plan.decision.snapshot.resource.clone(),
            })
        };
        loop {
            match self.timed("poll", self.store.poll(key)).await? {
                ClaimState::Committed { moved_to } => {
                    self.coalescer.mark(key.clone());
                    return Ok(committed(moved_to));
                }
                ClaimState::Owned => {
                    // Retaken from the request that held it.
                    let mut decision = plan.decision.clone();
                    decision.write = Write::Create;
                    let single = [Plan {
                        signal: plan.signal.clone(),
                        index: plan.index,
                        decision,
                    }];
                    let created = self.create_all(&single, received_ms, deadline).await?;
                    return Ok(match created.into_iter().next() {
                        Some(at) => Awaited::Created(at),
                        // Not reached: one plan, one location or an error.
                        None => committed(None),
                    });
                }
                ClaimState::Gone => {
                    return Err(Failure::Deadline {
                        what: format!(
                            "claim {} expired while waiting",
                            plan.decision.snapshot.resource
                        ),
                        retry_after: Duration::from_secs(1),
                    })
                }
                ClaimState::Pending => {
                    if Instant::now() + POLL_INTERVAL >= deadline {
                        return Err(Failure::Deadline {
                            what: format!(
                                "waiting for {} to be created",
                                plan.decision.snapshot.resource
                            ),
                            retry_after: Duration::from_secs(1),
                        });
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
    }

    /// A store call with the store timeout and its latency recorded.
    async fn timed<T>(
        &self,
        op: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let timer = self
            .metrics
            .store_duration
            .with_label_values(&[op])
            .start_timer();
        let result = tokio::time::timeout(self.limits.store_timeout, call).await;
        timer.observe_duration();
        match result {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.limits.store_timeout)),
        }
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

/// A list written `a,b,c` in logs: the request span's `fingerprints`. Its
/// text is made for every request (the log layer formats a span's fields when
/// they are recorded), so it is plain text rather than a quoted `Debug` list.
struct Joined<'a>(&'a [String]);

impl std::fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(item)?;
        }
        Ok(())
    }
}

/// How a wait on another request's claim ended.
enum Awaited {
    /// The other request created the resource: here.
    Committed(Location),
    /// Its lease ran out: this request created the resource (or found it).
    Created(Location),
}

/// Fills in a signal's result from the resource this request created for it.
fn record(result: &mut SignalResult, created: &Location, created_any: &mut bool) {
    result.resource = Some(created.to_string());
    *created_any = true;
}
