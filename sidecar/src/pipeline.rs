//! One request, start to end: parse → signals → ONE store round trip for
//! all of them → (in a cold namespace, lookups in the sink: [`crate::recovery`])
//! → create the resources this request owns → wait for claims other requests
//! own → answer. See the claim protocol in [`crate::store`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use signalgate_model::alertmanager::{self, Webhook};
use signalgate_model::signal::{self, Context, Identity};
use signalgate_model::{kube_event, Signal, SignalType};

use crate::coalesce::Coalescer;
use crate::delivery;
use crate::failure::Failure;
use crate::lifecycle::Policy;
use crate::metrics::Metrics;
use crate::recovery::Recovery;
use crate::resource;
use crate::sink::{Created, Location, Sink};
use crate::store::{
    Claim, ClaimKey, ClaimState, Decision, Outcome, Owner, Snapshot, Store, StoreError, Write,
};
use crate::store_call;
use signalgate_resource::builder;

/// How often a request waiting on another request's claim looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

#[derive(Debug, Clone)]
pub struct Limits {
    pub fallback_namespace: String,
    pub max_alerts: usize,
    /// Total time for one request.
    pub request_deadline: Duration,
    /// One store call.
    pub store_timeout: Duration,
    /// What the fingerprint's latest resource makes of a firing the store
    /// does not know.
    pub lifecycle: Policy,
    /// Namespaces one request may cost the sink's backend work in
    /// ([`crate::recovery`]).
    pub max_new_namespaces: usize,
    /// The same source's same body within this window is one delivery.
    pub delivery_window: Duration,
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
    pub outcome: SignalOutcome,
    /// `namespace/name` of the resource the signal counts in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// A signal's outcome, as the answer and the metrics name it: the store's
/// decision, or what a lookup in the sink made of it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignalOutcome {
    /// First sighting in the dedup window: a new resource.
    Created,
    /// Known fingerprint: counted in its resource (or its storm's).
    Duplicate,
    /// This signal started a storm: one new storm resource.
    StormStarted,
    /// A new fingerprint counted in the namespace's running storm.
    StormAggregated,
    /// A new firing counted in the resource its controller still works on.
    Absorbed,
    /// A resolution recorded in its incident's resource.
    Resolved,
    /// A resolution of an incident signalgate does not know: nothing changed.
    ResolvedUnknown,
}

impl SignalOutcome {
    /// The name in the answer's JSON and the `outcome` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalOutcome::Created => "created",
            SignalOutcome::Duplicate => "duplicate",
            SignalOutcome::StormStarted => "storm_started",
            SignalOutcome::StormAggregated => "storm_aggregated",
            SignalOutcome::Absorbed => "absorbed",
            SignalOutcome::Resolved => "resolved",
            SignalOutcome::ResolvedUnknown => "resolved_unknown",
        }
    }
}

impl From<Outcome> for SignalOutcome {
    fn from(outcome: Outcome) -> SignalOutcome {
        match outcome {
            Outcome::Created => SignalOutcome::Created,
            Outcome::Duplicate => SignalOutcome::Duplicate,
            Outcome::StormStarted => SignalOutcome::StormStarted,
            Outcome::StormAggregated => SignalOutcome::StormAggregated,
            Outcome::Absorbed => SignalOutcome::Absorbed,
            Outcome::Resolved => SignalOutcome::Resolved,
            Outcome::ResolvedUnknown => SignalOutcome::ResolvedUnknown,
        }
    }
}

/// A successful answer: 201 (something created), 202 (signals counted or
/// resolutions recorded in existing resources) or 200 (nothing changed:
/// only resolutions of unknown incidents).
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    #[serde(skip)]
    pub status: u16,
    pub signals: Vec<SignalResult>,
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
        // This request's token: the owner of every claim it takes.
        let owner = Owner::next();
        let parsed = self.parse(signal_type, source, body)?;
        let delivery = delivery::of(
            signal_type,
            source,
            body,
            received_ms,
            self.limits.delivery_window,
        );
        let identities = &parsed.identities;
        let fingerprints: Vec<String> = identities.iter().map(Identity::fingerprint).collect();
        tracing::Span::current().record(
            "fingerprints",
            tracing::field::display(Joined(&fingerprints)),
        );

        let results: Vec<SignalResult> = fingerprints
            .iter()
            .map(|fp| SignalResult {
                fingerprint: fp.clone(),
                outcome: SignalOutcome::ResolvedUnknown,
                resource: None,
            })
            .collect();
        let claims: Vec<Claim> = identities
            .iter()
            .zip(&fingerprints)
            .map(|(id, fp)| Claim {
                owner,
                delivery,
                namespace: id.namespace.clone(),
                fingerprint: fp.clone(),
                affected: builder::affected_name(&id.target),
                instance_ms: id.instance_ms,
                // A resolution without a time is dated when it arrived.
                resolved_ms: id.resolved_ms.map(|t| if t > 0 { t } else { received_ms }),
                absent: false,
            })
            .collect();

        let answer = self
            .decide_and_write(owner, &claims, &parsed, results, received_ms, deadline)
            .await;
        match &answer {
            Ok(accepted) => {
                for r in &accepted.signals {
                    self.metrics
                        .signals
                        .with_label_values(&[signal_type.as_str(), r.outcome.as_str()])
                        .inc();
                }
            }
            // Not acknowledged: the sender retries this delivery, so what
            // it counted is taken back (see `Store::uncount`).
            Err(_) => self.uncount(owner, &claims).await,
        }
        answer
    }

    /// The store's decisions for `claims`, the lookups, creates and waits
    /// they ask for, and the answer.
    async fn decide_and_write(
        &self,
        owner: Owner,
        claims: &[Claim],
        parsed: &Parsed<'_>,
        mut results: Vec<SignalResult>,
        received_ms: i64,
        deadline: Instant,
    ) -> Result<Accepted, Failure> {
        let mut decisions = if claims.is_empty() {
            Vec::new()
        } else {
            self.timed("decide", self.store.decide(claims)).await?
        };
        let lookups = self
            .recovery()
            .resolve_lookups(claims, &mut decisions, received_ms, deadline)
            .await;
        // Signals beyond the request's budget of new namespaces: left Skip.
        let put_off = match lookups {
            Ok(put_off) => put_off,
            Err(e) => {
                // Claims this request took for its other signals: give them
                // back, so the sender's retry takes them at once.
                let taken: Vec<ClaimKey> = decisions
                    .iter()
                    .filter(|d| d.write == Write::Create)
                    .map(|d| d.key.clone())
                    .collect();
                self.release(owner, &taken).await;
                return Err(e);
            }
        };

        let mut counted_any = false;
        let mut creates = Vec::new();
        let mut awaits = Vec::new();
        // Counters this request counted in resources it did not create,
        // handed to the coalescer as acknowledged once the request succeeds
        // (a failed one's counts are taken back).
        let mut acknowledged = Vec::new();
        for (index, decision) in decisions.into_iter().enumerate() {
            let result = &mut results[index];
            result.outcome = decision.outcome.into();
            if decision.write == Write::Skip {
                continue;
            }
            counted_any = true;
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
                // (A failed request's counts are taken back; one the store
                // could not take back waits in its index of unwritten changes.)
                if let Some(claim) = claims.get(index) {
                    acknowledged.push((decision.key, decision.snapshot, claim.affected.as_str()));
                }
                continue;
            }
            // Always there: one identity per alert (or the one event), in order.
            let Some(signal) = parsed.signal(index) else {
                continue;
            };
            let plan = Plan {
                signal,
                index,
                decision,
            };
            // A claim this request holds is created once: its repeats in the
            // same request (the store answers them Create too: the lease is
            // the request's own) wait for that create.
            let first = |p: &Plan| p.decision.key == plan.decision.key;
            match plan.decision.write {
                Write::Create if !creates.iter().any(first) => creates.push(plan),
                _ => awaits.push(plan),
            }
        }

        let mut created_any = false;
        let written = self
            .create_all(owner, &creates, received_ms, deadline)
            .await?;
        for (plan, w) in creates.iter().zip(written) {
            record(&mut results[plan.index], &w, &mut created_any);
        }
        for plan in &awaits {
            match self.await_claim(owner, plan, received_ms, deadline).await? {
                Awaited::Committed(at) => {
                    results[plan.index].resource = Some(at.to_string());
                    if let Some(claim) = claims.get(plan.index) {
                        let d = &plan.decision;
                        acknowledged.push((
                            d.key.clone(),
                            d.snapshot.clone(),
                            claim.affected.as_str(),
                        ));
                    }
                }
                Awaited::Created(at) => record(&mut results[plan.index], &at, &mut created_any),
            }
        }
        if let Some(failure) = put_off.failure() {
            return Err(failure);
        }
        for (key, snapshot, affected) in acknowledged {
            self.counted(key, snapshot, affected);
        }

        let status = if created_any {
            201
        } else if counted_any {
            202
        } else {
            200
        };
        Ok(Accepted {
            status,
            signals: results,
        })
    }

    /// Takes back what a failed request counted (best effort: if the store
    /// cannot be reached, the retry counts those signals a second time).
    async fn uncount(&self, owner: Owner, claims: &[Claim]) {
        let signals: Vec<(String, String)> = claims
            .iter()
            .map(|c| (c.namespace.clone(), c.fingerprint.clone()))
            .collect();
        if signals.is_empty() {
            return;
        }
        if let Err(e) = self
            .timed("uncount", self.store.uncount(owner, &signals))
            .await
        {
            tracing::warn!(error = %e, "cannot take back the counts of a failed request; its retry counts them again");
        }
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
        owner: Owner,
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
                    (key.clone(), c.location.moved_to(key.namespace()))
                })
                .collect();
            let committed = self.timed("commit", self.store.commit(owner, &keys)).await;
            if let Err(e) = committed {
                self.release(owner, &failed).await;
                return Err(e.into());
            }
        }
        for (p, c) in &done {
            if c.existed {
                // Left as a retried create had written it: write the counters.
                self.counted(
                    p.decision.key.clone(),
                    p.decision.snapshot.clone(),
                    &builder::affected_name(&p.signal.target),
                );
            } else {
                // Counters may have moved while we created: the next flush checks.
                let progress = resource::progress(&p.decision.snapshot);
                self.coalescer.created(p.decision.key.clone(), progress);
            }
        }
        if let Some(e) = failure {
            self.release(owner, &failed).await;
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
                &builder::affected_name(&signal.target),
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

    /// Marks resource `key` for the next flush, with the counters this
    /// signal was acknowledged with (`snapshot`), in case the store loses its own:
    /// a storm's with this member's `affected` resource (a decision lists
    /// none of the storm's).
    fn counted(&self, key: ClaimKey, mut snapshot: Snapshot, affected: &str) {
        if let Some(storm) = snapshot.storm.as_mut() {
            storm.affected = vec![affected.to_string()];
        }
        self.coalescer.counted(key, snapshot);
    }

    /// Gives leases back after a failure, so the sender's retry takes them at
    /// once; if the store is down too, they simply expire.
    async fn release(&self, owner: Owner, keys: &[ClaimKey]) {
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.timed("release", self.store.release(owner, keys)).await {
            tracing::warn!(error = %e, "cannot release claims; they expire with their lease");
        }
    }

    /// Waits for a claim another request holds.
    async fn await_claim(
        &self,
        owner: Owner,
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
            match self.timed("poll", self.store.poll(owner, key)).await? {
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
                    let created = self
                        .create_all(owner, &single, received_ms, deadline)
                        .await?;
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

    /// The lookups of a cold namespace ([`Write::Lookup`]) this pipeline runs.
    fn recovery(&self) -> Recovery<'_> {
        Recovery {
            store: self.store.as_ref(),
            sink: self.sink.as_ref(),
            metrics: &self.metrics,
            store_timeout: self.limits.store_timeout,
            lifecycle: &self.limits.lifecycle,
            new_namespaces: self.limits.max_new_namespaces,
        }
    }

    /// A store call with the store timeout and its latency recorded.
    async fn timed<T>(
        &self,
        op: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        store_call::timed(&self.metrics, self.limits.store_timeout, op, call).await
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_written_as_before() {
        let all = [
            (SignalOutcome::Created, "created"),
            (SignalOutcome::Duplicate, "duplicate"),
            (SignalOutcome::StormStarted, "storm_started"),
            (SignalOutcome::StormAggregated, "storm_aggregated"),
            (SignalOutcome::Absorbed, "absorbed"),
            (SignalOutcome::Resolved, "resolved"),
            (SignalOutcome::ResolvedUnknown, "resolved_unknown"),
        ];
        for (outcome, name) in all {
            assert_eq!(outcome.as_str(), name);
            assert_eq!(serde_json::to_value(outcome).unwrap(), name);
        }
        let answer = Accepted {
            status: 201,
            signals: vec![SignalResult {
                fingerprint: "f".into(),
                outcome: Outcome::StormStarted.into(),
                resource: Some("shop/storm-1".into()),
            }],
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"signals":[{"fingerprint":"f","outcome":"storm_started","resource":"shop/storm-1"}]}"#
        );
    }
}
