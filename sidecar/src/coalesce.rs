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
//!
//! The dirty set lives in this process; a sidecar killed before its next
//! flush (SIGKILL, OOM, node loss) would take the counts it acknowledged
//! with it. So the store keeps its own index of unwritten changes, made in
//! the same atomic step as each count ([`Store::unwritten`]): every flush
//! reports what it wrote (with the counters written, so a change made since
//! stays), and every [`unwritten_after`] each sidecar asks the store for
//! changes older than that, and writes them as its own; not while its own
//! writes fail (the sink is down for everyone: piling every replica's
//! retries on it would only slow its recovery). A resource two sidecars both
//! write is harmless: neither writes it backwards. A record in the index
//! does not expire before it is written ([`Store::written`]), so its
//! counters wait for the sink however long it is down. So does an update
//! the sink refuses (403, 422): an API server answers 403 for a moment
//! after it restarts; one refused for good is retried until its record's
//! TTL (the longer of the dedup window and the incident TTL) runs out.
//!
//! The store itself may lose the counters before a flush writes them
//! (Redis flushed or restarted empty, a failover to a replica without them):
//! so each dirty resource also keeps the latest counters this sidecar
//! acknowledged ([`Coalescer::counted`]), and a flush that finds the store
//! no longer holding a resource writes those instead of dropping them. The
//! store's lookup after the loss then finds them in the sink.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::metrics::Metrics;
use signalgate_resource::Progress;

use crate::resource;
use crate::sink::{Sink, SinkError};
use crate::store::{ClaimKey, Snapshot, Store, Written};

/// How many resource updates one flush sends at once.
const WRITE_CONCURRENCY: usize = 16;

/// How old a change in the store's index of unwritten changes must be
/// before this sidecar takes it for one that its sidecar left unwritten
/// (that sidecar died, or could not write it), and how often it looks: five
/// flush intervals, at least 2 s. A sidecar that is alive writes its own
/// changes within a flush interval and a write; taking one over early only
/// costs a write that finds nothing to do.
pub fn unwritten_after(flush_interval: Duration) -> Duration {
    (flush_interval * 5).max(Duration::from_secs(2))
}

pub struct Coalescer {
    /// Resources to write, each with the latest counters this sidecar
    /// acknowledged of it, if any: written if the store lost its own.
    dirty: Mutex<HashMap<ClaimKey, Option<Snapshot>>>,
    /// How many of a storm's affected resources those counters keep.
    max_affected: usize,
    /// What this sidecar last wrote, for the check on the next flush.
    written: Mutex<HashMap<ClaimKey, Progress>>,
    /// Resources taken from the store's index (another sidecar's changes,
    /// maybe expired since): gone is no loss of this sidecar's.
    taken: Mutex<HashSet<ClaimKey>>,
    /// The last flush that wrote or failed found the sink unavailable.
    sink_failing: AtomicBool,
    store: Arc<dyn Store>,
    sink: Arc<dyn Sink>,
    metrics: Arc<Metrics>,
    stop: Notify,
}

impl Coalescer {
    /// A coalescer writing `store`'s counters to `sink`; a storm's affected
    /// resources this sidecar acknowledged are kept up to `max_affected`
    /// (the store's `storm_max_affected`).
    pub fn new(
        store: Arc<dyn Store>,
        sink: Arc<dyn Sink>,
        metrics: Arc<Metrics>,
        max_affected: usize,
    ) -> Coalescer {
        Coalescer {
            max_affected,
            dirty: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            taken: Mutex::new(HashSet::new()),
            sink_failing: AtomicBool::new(false),
            store,
            sink,
            metrics,
            stop: Notify::new(),
        }
    }

    /// Marks a resource as needing its counters written.
    pub fn mark(&self, key: ClaimKey) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.entry(key).or_default();
        self.metrics.pending_updates.set(dirty.len() as i64);
    }

    /// Marks a resource whose counters this sidecar acknowledged as
    /// `snapshot` (a signal counted in it) as needing them written; the
    /// latest (most occurrences) is kept, in case the store loses them. A
    /// storm's keep every affected resource acknowledged in it (a decision
    /// carries only its own member's; the sink keeps what the resource
    /// lists already), up to `max_affected`.
    pub fn counted(&self, key: ClaimKey, snapshot: Snapshot) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let kept = dirty.entry(key).or_default();
        let other = match kept {
            Some(k) if k.occurrence_count > snapshot.occurrence_count => Some(snapshot),
            _ => kept.replace(snapshot),
        };
        let storms = (
            kept.as_mut().and_then(|k| k.storm.as_mut()),
            other.and_then(|o| o.storm),
        );
        if let (Some(keep), Some(mut other)) = storms {
            // Into the longer list (sorted): a decision brings one member.
            if keep.affected.len() < other.affected.len() {
                std::mem::swap(&mut keep.affected, &mut other.affected);
            }
            for a in other.affected {
                if let Err(at) = keep.affected.binary_search(&a) {
                    if keep.affected.len() < self.max_affected {
                        keep.affected.insert(at, a);
                    }
                }
            }
        }
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

    /// Flushes every `interval` until [`Coalescer::stop`], then once more;
    /// from the start and every [`unwritten_after`] it first takes on the
    /// changes the store holds unwritten for longer than that.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let after = unwritten_after(interval);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut looked: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if looked.is_none_or(|at| at.elapsed() >= after) {
                        looked = Some(Instant::now());
                        self.take_unwritten(after).await;
                    }
                    self.flush().await
                }
                _ = self.stop.notified() => break,
            }
        }
        self.flush().await;
    }

    /// Marks dirty what the store holds unwritten for longer than `after`
    /// (not while this sidecar's own writes find the sink unavailable).
    pub async fn take_unwritten(&self, after: Duration) {
        if self.sink_failing.load(Ordering::Relaxed) {
            return;
        }
        match self.store.unwritten(after).await {
            Ok(keys) => {
                if !keys.is_empty() {
                    tracing::info!(
                        resources = keys.len(),
                        "the store holds changes no sidecar wrote; writing them"
                    );
                    self.metrics
                        .unwritten_taken
                        .inc_by(u64::try_from(keys.len()).unwrap_or(u64::MAX));
                }
                let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
                for key in keys {
                    taken.insert(key.clone());
                    self.mark(key);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's unwritten changes; will retry");
                self.metrics.errors.with_label_values(&["store"]).inc();
            }
        }
    }

    /// Ends [`Coalescer::run`] after a final flush.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Writes every dirty resource once, and re-checks the ones written by
    /// the previous flush. Failed writes stay dirty.
    pub async fn flush(&self) {
        let mut acknowledged: HashMap<ClaimKey, Option<Snapshot>> =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        let mut keys: Vec<ClaimKey> = acknowledged.keys().cloned().collect();
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
                    match acknowledged.remove(&k).flatten() {
                        Some(snapshot) => self.counted(k, snapshot),
                        None => self.mark(k),
                    }
                }
                return;
            }
        };
        // What is written, for the store's index: with the counters
        // written (`None`: found gone).
        let mut done: Vec<(ClaimKey, Option<Written>)> = Vec::new();
        let taken = std::mem::take(&mut *self.taken.lock().unwrap_or_else(|e| e.into_inner()));
        let work: Vec<(ClaimKey, Snapshot, Progress)> = keys
            .into_iter()
            .zip(snapshots)
            .filter_map(|(k, s)| {
                let s = match (s, acknowledged.remove(&k).flatten()) {
                    (Some(s), _) => s,
                    (None, Some(ours)) => {
                        // The store lost them (or they expired): what this
                        // sidecar acknowledged still goes to the resource.
                        tracing::warn!(resource = %ours.resource, count = ours.occurrence_count,
                            "the store no longer holds these counters; writing the ones this sidecar acknowledged");
                        done.push((k.clone(), None));
                        let progress = resource::progress(&ours);
                        return Some((k, ours, progress));
                    }
                    (None, None) => {
                        // Expired in the store (a dedup window after its
                        // last sighting) before its counters could be
                        // written.
                        if !checks.contains_key(&k) && !taken.contains(&k) {
                            tracing::warn!(resource = ?k, "the store no longer holds these counters; not written");
                            self.metrics.errors.with_label_values(&["sink"]).inc();
                        }
                        done.push((k, None));
                        return None;
                    }
                };
                if s.pending {
                    // Not made yet: its creator (or whoever takes its claim
                    // over) makes it with these counters, and checks them
                    // once more on its next flush. Out of the index.
                    if s.unwritten {
                        done.push((k, Some(Written::of(&s))));
                    }
                    return None;
                }
                let progress = resource::progress(&s);
                // A re-check that finds what we wrote: done with this resource.
                if checks.get(&k) == Some(&progress) {
                    if s.unwritten {
                        done.push((k, Some(Written::of(&s))));
                    }
                    return None;
                }
                Some((k, s, progress))
            })
            .collect();
        let (mut wrote, mut unavailable) = (false, false);
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
                        wrote = true;
                        if snap.unwritten {
                            done.push((key.clone(), Some(Written::of(snap))));
                        }
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
                            Ok(true) => {
                                done.push((key.clone(), None));
                                tracing::warn!(resource = %snap.resource, %what,
                                "resource deleted from the sink; the incident's next sighting creates a new one");
                            }
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
                        // (with the counters: the store may lose them meanwhile)
                        self.counted(key.clone(), (*snap).clone());
                        // Refused (403, 422) stays in the index too: an API
                        // server refuses with 403 for a moment after it
                        // restarts, before its authorizer has synced.
                        if matches!(e, SinkError::Unavailable(_)) {
                            unavailable = true;
                        }
                    }
                }
            }
        }
        if wrote || unavailable {
            self.sink_failing.store(unavailable, Ordering::Relaxed);
        }
        if !done.is_empty() {
            if let Err(e) = self.store.written(&done).await {
                // They stay in the index: written again by whoever finds them.
                tracing::warn!(error = %e, resources = done.len(), "cannot tell the store what was written");
                self.metrics.errors.with_label_values(&["store"]).inc();
            }
        }
        self.metrics.pending_updates.set(self.pending() as i64);
    }
}
