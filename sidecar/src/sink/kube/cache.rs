//! The kube sink's own view of the RemediationRequests: a LIST of all of
//! them, then a WATCH from that list's resourceVersion, kept in memory so
//! that a lookup needs no API call. Only what lookups need is kept (a
//! [`Found`] per resource, indexed by the namespace whose incident it is and
//! its fingerprint), never the spec's label and annotation maps.
//!
//! The watch is re-opened from the last resourceVersion seen when it ends
//! (the API server closes it after a timeout); when that version is too old
//! (410 Gone) the whole list is read again and replaces the view. Errors
//! back off (capped, jittered) and are retried for as long as the sink
//! lives; the task stops when the [`WatchCache`] is dropped.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::jitter::jitter;
use crate::sink::{found, Found};
use signalgate_resource::{RemediationRequest, LABEL_ORIGINAL_NAMESPACE};

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Resources per page of the (re-)LIST.
const PAGE: u32 = 500;
/// How long the API server keeps one watch open.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A watch that ends sooner than this without an event counts as a failure
/// (backs off), so that a server closing watches at once is not hammered.
const SHORT_WATCH: Duration = Duration::from_secs(1);

/// The view, and the task keeping it up to date (stopped on drop).
pub struct WatchCache {
    view: Arc<View>,
    synced: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
}

impl Drop for WatchCache {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl WatchCache {
    /// Starts listing and watching every RemediationRequest through `api`
    /// (on the current tokio runtime; without one, the view never syncs and
    /// lookups read the API server).
    pub fn start(api: Api<RemediationRequest>, fallback_namespace: &str) -> WatchCache {
        let view = Arc::new(View {
            fallback_namespace: fallback_namespace.to_string(),
            index: RwLock::new(Index::default()),
        });
        let (tx, synced) = watch::channel(false);
        let task = tokio::runtime::Handle::try_current()
            .ok()
            .map(|rt| rt.spawn(run(api, view.clone(), tx)));
        WatchCache { view, synced, task }
    }

    /// Whether the first LIST has completed (the view then stays in use,
    /// also while the watch is re-opened).
    pub fn synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until [`synced`](Self::synced), for at most `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut synced = self.synced.clone();
        let waited = tokio::time::timeout(timeout, synced.wait_for(|s| *s)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// For each of `fingerprints`, the latest resource (by first seen) of
    /// `namespace`'s incident; `None` while the view has not synced.
    pub fn latest(&self, namespace: &str, fingerprints: &[String]) -> Option<Vec<Option<Found>>> {
        if !self.synced() {
            return None;
        }
        let index = self
            .view
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Some(
            fingerprints
                .iter()
                .map(|fp| index.latest(namespace, fp))
                .collect(),
        )
    }
}

struct View {
    fallback_namespace: String,
    index: RwLock<Index>,
}

/// (namespace whose incident it is, fingerprint).
type Key = (String, String);

#[derive(Default)]
struct Index {
    /// The resources of each incident.
    incidents: HashMap<Key, Vec<Found>>,
    /// (namespace, name) of each resource → its incident.
    objects: HashMap<(String, String), Key>,
}

impl Index {
    fn latest(&self, namespace: &str, fingerprint: &str) -> Option<Found> {
        self.incidents
            .get(&(namespace.to_string(), fingerprint.to_string()))?
            .iter()
            .max_by_key(|f| (f.first_seen_ms, f.last_seen_ms))
            .cloned()
    }

    fn upsert(&mut self, fallback_namespace: &str, rr: &RemediationRequest) {
        let Some(f) = found(rr) else {
            if let (Some(ns), Some(name)) = (&rr.metadata.namespace, &rr.metadata.name) {
                self.remove(ns, name);
            }
            return;
        };
        let object = (f.location.namespace.clone(), f.location.name.clone());
        // Whose incident it is: as `KubeSink::list_places` finds it.
        let owner = match &rr.metadata.labels {
            Some(labels) if object.0 == fallback_namespace => labels
                .get(LABEL_ORIGINAL_NAMESPACE)
                .cloned()
                .unwrap_or_else(|| object.0.clone()),
            _ => object.0.clone(),
        };
        let key = (owner, rr.spec.signal_fingerprint.clone());
        if self.objects.get(&object).is_some_and(|k| *k != key) {
            self.remove(&object.0, &object.1);
        }
        let entries = self.incidents.entry(key.clone()).or_default();
        match entries.iter_mut().find(|e| e.location == f.location) {
            Some(e) => *e = f,
            None => entries.push(f),
        }
        self.objects.insert(object, key);
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(key) = self
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
        else {
            return;
        };
        if let Some(entries) = self.incidents.get_mut(&key) {
            entries.retain(|e| e.location.namespace != namespace || e.location.name != name);
            if entries.is_empty() {
                self.incidents.remove(&key);
            }
        }
    }
}

/// Why a watch stopped.
enum Stopped {
    /// Re-open it from the last version seen (`quietly`: it ran normally).
    Rewatch { quietly: bool },
    /// The version is too old (410 Gone): list again.
    Relist,
}

async fn run(api: Api<RemediationRequest>, view: Arc<View>, synced: watch::Sender<bool>) {
    let mut delay = BACKOFF_BASE;
    let mut failures = 0u32;
    loop {
        let mut version = match relist(&api, &view).await {
            Ok((version, count)) => {
                if !*synced.borrow() {
                    tracing::info!(resources = count, "kube sink cache synced");
                    synced.send_replace(true);
                } else {
                    tracing::info!(resources = count, "kube sink cache listed again");
                }
                failures = 0;
                delay = BACKOFF_BASE;
                version
            }
            Err(e) => {
                log_failure(&mut failures, &format!("listing RemediationRequests: {e}"));
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(BACKOFF_CAP);
                continue;
            }
        };
        loop {
            match watch_from(&api, &view, &mut version).await {
                Ok(Stopped::Relist) => break,
                Ok(Stopped::Rewatch { quietly: true }) => {
                    failures = 0;
                    delay = BACKOFF_BASE;
                }
                Ok(Stopped::Rewatch { quietly: false }) => {
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(BACKOFF_CAP);
                }
                Err(e) => {
                    log_failure(&mut failures, &format!("watching RemediationRequests: {e}"));
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(BACKOFF_CAP);
                }
            }
        }
    }
}

/// The first failure in a row warns; the next ones log at debug.
fn log_failure(failures: &mut u32, what: &str) {
    if *failures == 0 {
        tracing::warn!(error = %what, "kube sink cache: retrying (lookups read the API server until it has synced once)");
    } else {
        tracing::debug!(error = %what, "kube sink cache: retrying");
    }
    *failures += 1;
}

/// Lists every resource (in pages) and replaces the view with them:
/// returns the list's resourceVersion and how many there were.
async fn relist(
    api: &Api<RemediationRequest>,
    view: &View,
) -> Result<(String, usize), kube::Error> {
    let mut fresh = Index::default();
    let mut params = ListParams::default().limit(PAGE);
    let version = loop {
        let page = api.list(&params).await?;
        for rr in &page.items {
            fresh.upsert(&view.fallback_namespace, rr);
        }
        match page.metadata.continue_.as_deref() {
            Some(token) if !token.is_empty() => params = params.continue_token(token),
            _ => break page.metadata.resource_version.unwrap_or_default(),
        }
    };
    let count = fresh.objects.len();
    *view.index.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    Ok((version, count))
}

/// Applies one watch's events to the view until it ends; `version` follows
/// the last version seen.
async fn watch_from(
    api: &Api<RemediationRequest>,
    view: &View,
    version: &mut String,
) -> Result<Stopped, kube::Error> {
    let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    let opened = tokio::time::Instant::now();
    let stream = match api.watch(&params, version).await {
        Ok(stream) => stream,
        Err(kube::Error::Api(s)) if s.code == 410 => return Ok(Stopped::Relist),
        Err(e) => return Err(e),
    };
    let mut stream = std::pin::pin!(stream);
    let mut events = 0u64;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(error = %e, "kube sink cache: watch broke; re-opening it");
                return Ok(Stopped::Rewatch { quietly: false });
            }
        };
        events += 1;
        let index = || view.index.write().unwrap_or_else(PoisonError::into_inner);
        let seen = match event {
            WatchEvent::Added(rr) | WatchEvent::Modified(rr) => {
                index().upsert(&view.fallback_namespace, &rr);
                rr.metadata.resource_version
            }
            WatchEvent::Deleted(rr) => {
                if let (Some(ns), Some(name)) = (&rr.metadata.namespace, &rr.metadata.name) {
                    index().remove(ns, name);
                }
                rr.metadata.resource_version
            }
            WatchEvent::Bookmark(b) => Some(b.metadata.resource_version),
            WatchEvent::Error(s) if s.code == 410 => return Ok(Stopped::Relist),
            WatchEvent::Error(s) => {
                tracing::debug!(code = s.code, message = %s.message, "kube sink cache: watch error; re-opening it");
                return Ok(Stopped::Rewatch { quietly: false });
            }
        };
        if let Some(seen) = seen.filter(|v| !v.is_empty()) {
            *version = seen;
        }
    }
    Ok(Stopped::Rewatch {
        quietly: events > 0 || opened.elapsed() >= SHORT_WATCH,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(
        namespace: &str,
        name: &str,
        fingerprint: &str,
        first: &str,
        original: Option<&str>,
    ) -> RemediationRequest {
        let mut labels = serde_json::json!({});
        if let Some(ns) = original {
            labels[LABEL_ORIGINAL_NAMESPACE] = ns.into();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "signalgate.io/v1alpha1",
            "kind": "RemediationRequest",
            "metadata": { "name": name, "namespace": namespace, "labels": labels },
            "spec": {
                "signalFingerprint": fingerprint, "signalName": "A", "signalType": "prometheus",
                "severity": "warning",
                "targetResource": { "kind": "Pod", "name": "p" },
                "source": "s", "firingTime": first, "receivedTime": first,
                "deduplication": { "firstSeen": first, "lastSeen": first, "occurrenceCount": 1 }
            }
        }))
        .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn name(f: Option<Found>) -> Option<String> {
        f.map(|f| format!("{}/{}", f.location.namespace, f.location.name))
    }

    #[test]
    fn resources_are_indexed_by_the_namespace_whose_incident_they_are() {
        let mut index = Index::default();
        let fb = "signalgate-system";
        index.upsert(fb, &rr("shop", "rr-1", "f", "2026-11-27T10:00:00Z", None));
        index.upsert(
            fb,
            &rr(fb, "rr-2", "f", "2026-11-27T10:01:00Z", Some("shop")),
        );
        index.upsert(fb, &rr(fb, "rr-3", "f", "2026-11-27T10:02:00Z", None));
        index.upsert(fb, &rr("other", "rr-4", "f", "2026-11-27T10:03:00Z", None));
        assert_eq!(name(index.latest("shop", "f")), Some(format!("{fb}/rr-2")));
        assert_eq!(name(index.latest(fb, "f")), Some(format!("{fb}/rr-3")));
        assert_eq!(name(index.latest("other", "f")), Some("other/rr-4".into()));
        assert_eq!(index.latest("shop", "g"), None);

        // Modified, then deleted.
        let mut later = rr(fb, "rr-2", "f", "2026-11-27T10:01:00Z", Some("shop"));
        later.spec.deduplication.occurrence_count = 7;
        index.upsert(fb, &later);
        assert_eq!(
            index.latest("shop", "f").map(|f| f.occurrence_count),
            Some(7)
        );
        assert_eq!(index.objects.len(), 4);
        index.remove(fb, "rr-2");
        assert_eq!(name(index.latest("shop", "f")), Some("shop/rr-1".into()));
        index.remove("shop", "rr-1");
        assert_eq!(index.latest("shop", "f"), None);
        assert!(!index.incidents.contains_key(&("shop".into(), "f".into())));
        // A resource whose times became unreadable leaves the view.
        let mut broken = rr("other", "rr-4", "f", "2026-11-27T10:03:00Z", None);
        broken.spec.deduplication.first_seen = "never".into();
        index.upsert(fb, &broken);
        assert_eq!(index.latest("other", "f"), None);
        assert_eq!(index.objects.len(), 1);
    }
}
