//! Coalesced updates: occurrence counts and storm members are written at
//! most once per resource per flush interval, whatever the signal rate. A
//! request only marks its resource dirty; the flusher reads the current
//! counters from the store (one round trip for all dirty resources) and
//! writes each resource once. Pending updates are flushed on shutdown.
//!
//! Several sidecars may flush the same resource, and one of them can read
//! the counters just before another and write just after it (a stopping
//! replica's final flush, above all). The sinks never write a resource
//! backwards: an update whose counters are older than what the resource
//! holds ([`Progress::is_behind`]) is not written, and counts as done; the
//! kube sink decides that on the resource's current state and makes the
//! write conditional on it (its resourceVersion), so a concurrent write
//! cannot slip in between. Every sighting marks its resource dirty on the
//! sidecar that counted it, whose next flush reads counters at least that
//! recent: the resource thus ends up holding the final counters, whichever
//! write lands last.
//!
//! Each written resource is still checked once more on the next flush: if
//! the store's counters differ from what this sidecar wrote, it writes
//! again; if not, it forgets the resource. That covers what the sinks
//! cannot order: a kube sink whose RBAC may not read its resources, and the
//! instant between the directory sink's check of a file and its rename.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::metrics::Metrics;
use signalgate_resource::Progress;

use crate::resource;
use crate::sink::{Sink, SinkError};
use crate::store::{ClaimKey, Snapshot, Store};

/// How many resource updates one flush sends at once.
const WRITE_CONCURRENCY: usize = 16;

pub struct Coalescer {
    dirty: Mutex<HashSet<ClaimKey>>,
    /// What this sidecar last wrote, for the check on the next flush.
    written: Mutex<HashMap<ClaimKey, Progress>>,
    store: Arc<dyn Store>,
    sink: Arc<dyn Sink>,
    metrics: Arc<Metrics>,
    stop: Notify,
}

impl Coalescer {
    pub fn new(store: Arc<dyn Store>, sink: Arc<dyn Sink>, metrics: Arc<Metrics>) -> Coalescer {
        Coalescer {
            dirty: Mutex::new(HashSet::new()),
            written: Mutex::new(HashMap::new()),
            store,
            sink,
            metrics,
            stop: Notify::new(),
        }
    }

    /// Marks a resource as needing its counters written.
    pub fn mark(&self, key: ClaimKey) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.insert(key);
        self.metrics.pending_updates.set(dirty.len() as i64);
    }

    /// Records what a create just wrote: the next flush checks it against the
    /// store and writes only if the counters moved meanwhile.
    pub fn created(&self, key: ClaimKey, progress: Progress) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, progress);
    }

    /// How many resources wait for a write.
    pub fn pending(&self) -> usize {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Flushes every `interval` until [`Coalescer::stop`], then once more.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush().await,
                _ = self.stop.notified() => break,
            }
        }
        self.flush().await;
    }

    /// Ends [`Coalescer::run`] after a final flush.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Writes every dirty resource once, and re-checks the ones written by
    /// the previous flush. Failed writes stay dirty.
    pub async fn flush(&self) {
        let mut keys: Vec<ClaimKey> = {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            dirty.drain().collect()
        };
        let mut checks: HashMap<ClaimKey, Progress> =
            std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()));
        for k in &keys {
            checks.remove(k);
        }
        keys.extend(checks.keys().cloned());
        if keys.is_empty() {
            return;
        }
        let timer = self
            .metrics
            .store_duration
            .with_label_values(&["snapshot"])
            .start_timer();
        let snapshots = self.store.snapshot(&keys).await;
        timer.observe_duration();
        let snapshots = match snapshots {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, resources = keys.len(), "cannot read counters; will retry");
                self.metrics.errors.with_label_values(&["store"]).inc();
                for k in keys {
                    self.mark(k);
                }
                return;
            }
        };
        let work: Vec<(ClaimKey, Snapshot, Progress)> = keys
            .into_iter()
            .zip(snapshots)
            .filter_map(|(k, s)| {
                let Some(s) = s else {
                    // Expired in the store (a dedup window after its last
                    // sighting) before its counters could be written.
                    if !checks.contains_key(&k) {
                        tracing::warn!(resource = ?k, "the store no longer holds these counters; not written");
                        self.metrics.errors.with_label_values(&["sink"]).inc();
                    }
                    return None;
                };
                let progress = resource::progress(&s);
                // A re-check that finds what we wrote: done with this resource.
                (checks.get(&k) != Some(&progress)).then_some((k, s, progress))
            })
            .collect();
        for chunk in work.chunks(WRITE_CONCURRENCY) {
            let writes = chunk.iter().map(|(key, snap, progress)| async move {
                let result = self
                    .sink
                    .update(snap.namespace(key.namespace()), &snap.resource, progress)
                    .await;
                (key, snap, progress, result)
            });
            for (key, snap, progress, result) in futures::future::join_all(writes).await {
                match result {
                    Ok(()) => {
                        self.written
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key.clone(), progress.clone());
                        self.metrics
                            .resources_written
                            .with_label_values(&["update", "ok"])
                            .inc();
                    }
                    Err(SinkError::NotFound(what)) => {
                        self.metrics
                            .resources_written
                            .with_label_values(&["update", "error"])
                            .inc();
                        // Deleted from the sink: forget the incident, so its
                        // next sighting makes a new resource.
                        match self.store.forget(key, &snap.resource).await {
                            Ok(true) => tracing::warn!(resource = %snap.resource, %what,
                                "resource deleted from the sink; the incident's next sighting creates a new one"),
                            // A claim pending on it, or the store holds another resource by now.
                            Ok(false) => tracing::warn!(resource = %snap.resource, %what,
                                "resource deleted from the sink; the store has moved on from it"),
                            Err(e) => {
                                tracing::warn!(resource = %snap.resource, error = %e, "resource deleted from the sink, but the store cannot forget it yet; will retry");
                                self.metrics.errors.with_label_values(&["store"]).inc();
                                self.mark(key.clone());
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(resource = %snap.resource, error = %e, "update failed; will retry");
                        self.metrics
                            .resources_written
                            .with_label_values(&["update", "error"])
                            .inc();
                        self.metrics.errors.with_label_values(&["sink"]).inc();
                        self.mark(key.clone());
                    }
                }
            }
        }
        self.metrics.pending_updates.set(self.pending() as i64);
    }
}
