//! In-process test rig for the pipeline and the coalescer: the memory store
//! and a sink held in memory that can fail on demand.

#![allow(dead_code)] // Each test file uses part of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use signalgate_model::SignalType;
use signalgate_resource::{Progress, RemediationRequest};
use signalgate_sidecar::coalesce::Coalescer;
use signalgate_sidecar::failure::Failure;
use signalgate_sidecar::lifecycle::Policy;
use signalgate_sidecar::metrics::Metrics;
use signalgate_sidecar::pipeline::{Accepted, Limits, Pipeline};
use signalgate_sidecar::sink::{
    latest, recent_storms, Created, Found, FoundStorm, Location, Read, Sink, SinkError,
};
use signalgate_sidecar::store::memory::MemoryStore;
use signalgate_sidecar::store::{Settings, Store};

/// A sink holding resources in a map. `fail_creates`/`fail_updates`: that
/// many of the next calls fail as unavailable; `reject_updates`: refused
/// for good.
#[derive(Default)]
pub struct FakeSink {
    /// (namespace, name) → resource.
    pub resources: Mutex<BTreeMap<(String, String), RemediationRequest>>,
    /// Every successful update, in order: namespace, name, counters.
    pub updates: Mutex<Vec<(String, String, Progress)>>,
    pub fail_creates: AtomicUsize,
    pub fail_updates: AtomicUsize,
    pub reject_updates: AtomicUsize,
    /// Calls to `create`, failed ones included.
    pub create_calls: AtomicUsize,
}

impl FakeSink {
    pub fn count(&self) -> usize {
        self.resources.lock().unwrap().len()
    }

    pub fn names(&self) -> Vec<String> {
        let resources = self.resources.lock().unwrap();
        resources
            .keys()
            .map(|(ns, n)| format!("{ns}/{n}"))
            .collect()
    }

    pub fn updates(&self) -> Vec<(String, String, Progress)> {
        self.updates.lock().unwrap().clone()
    }

    /// Sets the resource's status as a remediation controller would:
    /// `phase`, and `completion_time` (RFC 3339).
    pub fn set_status(
        &self,
        namespace: &str,
        name: &str,
        phase: &str,
        completion_time: Option<&str>,
    ) {
        let mut resources = self.resources.lock().unwrap();
        let rr = resources
            .get_mut(&(namespace.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no resource {namespace}/{name}"));
        let status = rr.status.get_or_insert_with(Default::default);
        status.phase = Some(phase.to_string());
        status.completion_time = completion_time.map(str::to_string);
    }

    fn in_namespace(&self, namespace: &str) -> Vec<RemediationRequest> {
        let resources = self.resources.lock().unwrap();
        resources
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, rr)| rr.clone())
            .collect()
    }
}

/// Takes one of `n` planned failures, if any is left.
fn take_failure(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
        left.checked_sub(1)
    })
    .is_ok()
}

#[async_trait::async_trait]
impl Sink for FakeSink {
    /// Both reads see every resource held.
    async fn find_latest(
        &self,
        namespace: &str,
        fingerprints: &[String],
        _read: Read,
    ) -> Result<Vec<Option<Found>>, SinkError> {
        let here = self.in_namespace(namespace);
        Ok(fingerprints.iter().map(|fp| latest(&here, fp)).collect())
    }

    async fn find_recent_storms(&self, namespace: &str) -> Result<Vec<FoundStorm>, SinkError> {
        Ok(recent_storms(&self.in_namespace(namespace), namespace))
    }

    async fn create(&self, rr: &RemediationRequest, _retake: bool) -> Result<Created, SinkError> {
        self.create_calls.fetch_add(1, Ordering::SeqCst);
        if take_failure(&self.fail_creates) {
            return Err(SinkError::Unavailable("create failed on purpose".into()));
        }
        let location = Location {
            namespace: rr.metadata.namespace.clone().unwrap(),
            name: rr.metadata.name.clone().unwrap(),
        };
        let key = (location.namespace.clone(), location.name.clone());
        let mut resources = self.resources.lock().unwrap();
        let existed = resources.contains_key(&key);
        resources.entry(key).or_insert_with(|| rr.clone());
        Ok(Created { location, existed })
    }

    async fn update(
        &self,
        namespace: &str,
        name: &str,
        progress: &Progress,
    ) -> Result<(), SinkError> {
        if take_failure(&self.fail_updates) {
            return Err(SinkError::Unavailable("update failed on purpose".into()));
        }
        if take_failure(&self.reject_updates) {
            return Err(SinkError::Rejected("update refused on purpose".into()));
        }
        let key = (namespace.to_string(), name.to_string());
        let mut resources = self.resources.lock().unwrap();
        let Some(rr) = resources.get_mut(&key) else {
            return Err(SinkError::NotFound(format!("{namespace}/{name}")));
        };
        progress.apply(&mut rr.spec);
        self.updates
            .lock()
            .unwrap()
            .push((key.0, key.1, progress.clone()));
        Ok(())
    }

    async fn ready(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A pipeline over `store` and `sink`, with a request deadline of `deadline`.
pub fn pipeline(store: Arc<MemoryStore>, sink: Arc<FakeSink>, deadline: Duration) -> Pipeline {
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn Store> = store;
    let sink: Arc<dyn Sink> = sink;
    let coalescer = Arc::new(Coalescer::new(
        store.clone(),
        sink.clone(),
        metrics.clone(),
        100,
    ));
    Pipeline {
        store,
        sink,
        coalescer,
        metrics,
        limits: Limits {
            fallback_namespace: "default".into(),
            max_alerts: 100,
            request_deadline: deadline,
            store_timeout: Duration::from_secs(1),
            lifecycle: Policy::default(),
            max_new_namespaces: 16,
            delivery_window: Duration::from_secs(300),
        },
    }
}

/// A memory store with the default settings but this claim lease.
pub fn store_with_lease(claim_lease: Duration) -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(Settings {
        claim_lease,
        ..Settings::default()
    }))
}

/// An Alertmanager webhook of one alert `name` about `pod` in `namespace`.
pub fn alert(status: &str, name: &str, namespace: &str, pod: &str) -> Vec<u8> {
    let alert: Value = json!({
        "status": status,
        "labels": {"alertname": name, "namespace": namespace, "pod": pod, "severity": "critical"},
        "annotations": {"summary": format!("{name} on {namespace}/{pod}")},
        "startsAt": "2026-11-26T20:57:15.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "0123456789abcdef"
    });
    serde_json::to_vec(&json!({
        "version": "4",
        "receiver": "signalgate",
        "status": status,
        "groupKey": "{}:{alertname=\"test\"}",
        "truncatedAlerts": 0,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert]
    }))
    .unwrap()
}

/// Sends `body` as Alertmanager alerts, a delivery of its own: each call
/// comes from a source of its own, so the same body again is not a retry.
pub async fn send(pipeline: &Pipeline, body: &[u8]) -> Result<Accepted, Failure> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SENT: AtomicU64 = AtomicU64::new(0);
    let source = format!("test-{}", SENT.fetch_add(1, Ordering::Relaxed));
    pipeline.handle(SignalType::Prometheus, &source, body).await
}

/// The one signal's outcome and resource in an answer.
pub fn only(answer: &Accepted) -> (&'static str, Option<String>) {
    assert_eq!(answer.signals.len(), 1, "{answer:?}");
    let s = &answer.signals[0];
    (s.outcome.as_str(), s.resource.clone())
}
