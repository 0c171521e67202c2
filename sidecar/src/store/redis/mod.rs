//! [`RedisStore`]: the dedup/storm state in Redis, standalone or Cluster.
//!
//! # URLs
//!
//! - `redis://[user:password@]host:port[/db]` and `rediss://...` (TLS): one
//!   standalone server (or a proxy in front of one).
//! - `redis+cluster://[user:password@]host:port[,host:port...]` and
//!   `rediss+cluster://...` (TLS): a Redis Cluster; the listed nodes are only
//!   the seeds from which the slot map is read (credentials, if any, are
//!   written once, before the first node, and apply to every node).
//!
//! # Scripts
//!
//! Every step is one Lua script call: `decide.lua` (one per namespace of a
//! batch, deciding its signals in order, at most 64 a call),
//! `claim.lua` (commit, release, poll, adopt, forget) and `snapshot.lua`, each with
//! `common.lua` (the key layout and shared helpers) prepended. They run by
//! SHA (`EVALSHA` via [`redis::Script`]); a `NOSCRIPT` answer (a restarted,
//! flushed or failed-over server, a new cluster node) makes the store send
//! `SCRIPT LOAD` (to every node on a cluster) and resend exactly the calls
//! that answered `NOSCRIPT` (a call that ran is never run twice). Scripts
//! rather than Redis Functions: the script cache needs no deployment step
//! and no persistence (a server restarted empty without persistence loses
//! functions too), it is filled lazily on every node a call reaches, and two
//! sidecar versions with different scripts can share one Redis during a
//! rolling upgrade (each script has its own SHA, while a function library
//! has one name that both versions would keep replacing).
//!
//! Every key a script touches is passed in `KEYS` and carries the hash tag
//! `{namespace}` (`sg:{ns}:...`), so each call runs in one slot and the
//! scripts run unchanged on Redis Cluster. Time is Redis `TIME` inside the
//! scripts, so every sidecar uses the same clock.
//!
//! # Round trips
//!
//! On a standalone server `decide` hands its claims to the store's batching
//! task (`store/batch.rs`), which sends the claims of the requests that
//! queued up together (a lone request goes out at once); on a cluster each
//! request is sent alone, so that a slow node only holds up the requests
//! with signals on it (a batch would wait for its slowest node; once a node
//! stops answering, the crate's refresh of the slot map can still hold up
//! the others for up to the timeout). Either way the claims go as one `EVALSHA`
//! per namespace, at most 64 signals a call, all in one pipeline (one round
//! trip). One call for several signals decides each of them exactly as
//! separate calls would, in order, but Redis does its per-call work (script
//! dispatch, `TIME`, the warm marker) once, and a fingerprint repeated within
//! the call is read once and written once (its duplicates are answered in a
//! 4-field short form that the parser completes from the earlier answer). On
//! the duplicate path this cut Redis CPU per signal by more than half (see
//! CHANGELOG.md, Performance). `GETEX` (the warm marker) needs Redis 6.2 or newer.
//!
//! Errors are per call: a script error part-way fails every signal of its
//! call (the counts of the fingerprints it had read are not written; records
//! it created stay, pending, and wait out their lease like those of a call
//! that timed out, below), and a failed pipeline or node fails every call
//! it carried. A request with a failed signal is answered with the error and
//! the claims its other signals took are released right after, so its retry
//! takes them at once; a request none of whose calls failed is answered
//! normally, even when it shared a batch with one that failed.
//!
//! The cluster client of the `redis` crate routes a pipeline by its
//! first command and rejects pipelines spanning several slots, so on a
//! cluster the claims are grouped by slot (= by namespace hash tag), one
//! pipeline per slot, and the groups are sent concurrently; pipelines for
//! the same node share that node's multiplexed connection. Redirects
//! (`MOVED`, `ASK`) and slot map refreshes are left to the crate.
//!
//! # Connections, timeouts, recovery
//!
//! Standalone: one [`ConnectionManager`](redis::aio::ConnectionManager) (a
//! multiplexed connection shared by every concurrent request, reconnecting
//! in the background after errors).
//! Cluster: one multiplexed async cluster connection. Both connect lazily, so
//! the sidecar starts (not ready) while Redis is down and recovers without a
//! restart when it comes back. Every call, retries included, is bounded by
//! the constructor's timeout ([`StoreError::Timeout`]), and so is a
//! request's whole `decide`, its wait for a batch included; connection and
//! server errors are [`StoreError::Unavailable`]. A call that timed out may
//! still have run in Redis: claims it took then stay pending until their
//! lease expires, when a retry (or a poller) takes them over, so nothing is
//! lost or created twice.
//!
//! # Modules
//!
//! # The index of unwritten changes
//!
//! Every script step that changes a resource's counters adds it to its
//! namespace's index (`sg:{ns}:d`, see `common.lua`), and a sidecar that
//! wrote a snapshot removes it unless it changed since (`index.lua`). To find
//! what a dead sidecar left there without scanning the keyspace, a sidecar
//! stamps each namespace it decides in (`sg:namespaces`) before its first
//! decide there, and again every [`REGISTER_EVERY`]; [`Store::unwritten`]
//! walks that hash, a bounded part a call, and drops namespaces whose index
//! is empty and whose stamp is older than [`PRUNE_AFTER`] (any sidecar that
//! added to the index since would have stamped it again).
//!
//! # Modules
//!
//! - `transport`: the connection, pipelines per slot, `NOSCRIPT`, timeouts.
//! - `wire`: the scripts' keys and arguments.
//! - `decode`: their replies read back into decisions, snapshots, claim
//!   states and index entries.
//! - this module: what each [`Store`] call sends and what it answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::batch::{self, Batcher, DecideEach};
use super::{
    Adopted, Claim, ClaimKey, ClaimState, Decision, Owner, Settings, Snapshot, Store, StoreError,
    Written,
};

mod decode;
mod transport;
mod wire;

use transport::Transport;
use wire::{Call, Scripts};

/// The Redis store. Cheap to clone; clones share the connection and the
/// batching of `decide` (see `store/batch.rs`).
#[derive(Clone)]
pub struct RedisStore {
    core: Arc<Core>,
    /// Standalone only: on a cluster a batch would wait for its slowest
    /// node, so a failing node would hold up requests that never touch it.
    batcher: Option<Batcher>,
}

/// How often a sidecar stamps a namespace it decides in again.
const REGISTER_EVERY: Duration = Duration::from_secs(300);
/// A namespace whose index is empty and whose stamp is older than this
/// leaves the hash of namespaces. Far longer than [`REGISTER_EVERY`]: a
/// sidecar adding to an index has stamped its namespace within that.
const PRUNE_AFTER: Duration = Duration::from_secs(3600);
/// After a stamp failed (the node holding the hash unreachable), how long
/// until a decide in its namespaces tries again; decides go on meanwhile.
const STAMP_RETRY: Duration = Duration::from_secs(10);
/// Namespaces looked at by one [`Store::unwritten`] call.
const SCAN_COUNT: usize = 64;
/// Resources of one namespace found by one [`Store::unwritten`] call (so
/// at most 4 096 a call).
const OLD_PER_NAMESPACE: usize = 64;

/// The connection, the settings and the scripts: every store call but the
/// batching.
struct Core {
    transport: Transport,
    settings: Settings,
    scripts: Scripts,
    /// Namespaces this sidecar stamped, and when.
    stamped: Mutex<HashMap<String, Instant>>,
    /// Held while stamping: requests arriving together in a namespace not
    /// stamped yet send one stamp, not one each.
    stamping: tokio::sync::Mutex<()>,
    /// Where the walk of the hash of namespaces goes on (`"0"`: a new pass).
    cursor: Mutex<String>,
}

impl RedisStore {
    /// A store on `url` (see the module docs for the forms). Connects lazily:
    /// only a malformed URL fails here; an unreachable Redis fails the calls
    /// (and [`Store::ping`]) until it answers. `timeout` bounds every call.
    pub async fn connect(
        url: &str,
        settings: Settings,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let core = Arc::new(Core {
            transport: Transport::connect(url, timeout)?,
            settings,
            scripts: Scripts::new(),
            stamped: Mutex::new(HashMap::new()),
            stamping: tokio::sync::Mutex::new(()),
            cursor: Mutex::new("0".to_string()),
        });
        let batcher = (!core.transport.is_cluster()).then(|| Batcher::start(core.clone()));
        Ok(RedisStore { core, batcher })
    }

    pub fn settings(&self) -> &Settings {
        &self.core.settings
    }

    pub fn is_cluster(&self) -> bool {
        self.core.transport.is_cluster()
    }
}

impl Core {
    /// One `decide.lua` call per namespace group of `claims`, all in one
    /// round trip; a call that failed fails the claims it carried.
    async fn decide_calls(&self, claims: &[Claim]) -> Vec<Result<Decision, StoreError>> {
        let groups = wire::namespace_groups(claims);
        let calls: Vec<Call> = groups
            .iter()
            .map(|group| {
                let of_group: Vec<&Claim> = group.iter().map(|&i| &claims[i]).collect();
                Call::decide(&self.settings, &of_group)
            })
            .collect();
        let replies = self.transport.eval_all(&self.scripts.decide, &calls).await;
        let mut slots: Vec<Option<Result<Decision, StoreError>>> =
            (0..claims.len()).map(|_| None).collect();
        for (group, reply) in groups.iter().zip(replies) {
            let parsed = reply.and_then(|v| {
                decode::parse_decisions(claims, group, &v)
                    .ok_or_else(|| decode::unexpected("decide", &v))
            });
            match parsed {
                Ok(ds) => {
                    for (&i, d) in group.iter().zip(ds) {
                        slots[i] = Some(Ok(d));
                    }
                }
                Err(e) => {
                    for &i in group {
                        slots[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        slots
            .into_iter()
            .map(|slot| slot.unwrap_or_else(|| Err(StoreError::Unavailable("no reply".into()))))
            .collect()
    }

    /// One `claim.lua` call, its reply read by `parse` (`None`: unexpected).
    async fn claim_script<T>(
        &self,
        call: Call,
        parse: impl FnOnce(&redis::Value) -> Option<T>,
    ) -> Result<T, StoreError> {
        self.one(&self.scripts.claim, "claim", call, parse).await
    }

    /// One call of `script` (named `what` in errors), its reply read by
    /// `parse` (`None`: unexpected).
    async fn one<T>(
        &self,
        script: &redis::Script,
        what: &str,
        call: Call,
        parse: impl FnOnce(&redis::Value) -> Option<T>,
    ) -> Result<T, StoreError> {
        let calls = [call];
        self.transport
            .bounded(async {
                let reply = self
                    .transport
                    .eval_all(script, &calls)
                    .await
                    .pop()
                    .unwrap_or(Err(StoreError::Unavailable("no reply".into())))?;
                parse(&reply).ok_or_else(|| decode::unexpected(what, &reply))
            })
            .await
    }

    /// Runs `claim.lua` calls whose reply is only success (commits,
    /// releases); all in one round trip.
    async fn claim_all(&self, calls: Vec<Call>) -> Result<(), StoreError> {
        self.all(&self.scripts.claim, calls).await
    }

    /// Runs calls of `script` whose reply is only success; all in one
    /// round trip.
    async fn all(&self, script: &redis::Script, calls: Vec<Call>) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        self.transport
            .bounded(async {
                for reply in self.transport.eval_all(script, &calls).await {
                    reply?;
                }
                Ok(())
            })
            .await
    }

    async fn commit(
        &self,
        owner: Owner,
        done: &[(ClaimKey, Option<String>)],
    ) -> Result<(), StoreError> {
        let calls = done
            .iter()
            .map(|(key, moved_to)| Call::commit(&self.settings, owner, key, moved_to.as_deref()))
            .collect();
        self.claim_all(calls).await
    }

    /// Gives the leases of `held` (each claim with its owner) back; all in
    /// one round trip.
    async fn release_all(&self, held: &[(Owner, ClaimKey)]) -> Result<(), StoreError> {
        let calls = held
            .iter()
            .map(|(owner, key)| Call::claim(&self.settings, "release", key, *owner))
            .collect();
        self.claim_all(calls).await
    }

    async fn adopt(
        &self,
        claim: &Claim,
        existing: &Snapshot,
        absorb: bool,
    ) -> Result<Option<Adopted>, StoreError> {
        let call = Call::adopt(&self.settings, claim, existing, absorb);
        self.claim_script(call, decode::parse_adopted).await
    }

    async fn adopt_storm(&self, namespace: &str, existing: &Snapshot) -> Result<bool, StoreError> {
        let Some(call) = Call::adopt_storm(&self.settings, namespace, existing) else {
            return Ok(false);
        };
        self.claim_script(call, decode::parse_storm_adopted).await
    }

    async fn adopt_member(
        &self,
        claim: &Claim,
        storm: &Snapshot,
    ) -> Result<Option<Decision>, StoreError> {
        let Some(call) = Call::adopt_member(&self.settings, claim, storm) else {
            return Ok(None);
        };
        self.claim_script(call, |reply| decode::parse_member(claim, reply))
            .await
    }

    async fn forget(&self, key: &ClaimKey, resource: &str) -> Result<bool, StoreError> {
        let call = Call::forget(&self.settings, key, resource);
        self.claim_script(call, decode::parse_forgot).await
    }

    async fn poll(&self, owner: Owner, key: &ClaimKey) -> Result<ClaimState, StoreError> {
        let call = Call::claim(&self.settings, "poll", key, owner);
        self.claim_script(call, decode::parse_claim_state).await
    }

    /// Stamps the namespaces of `claims` this sidecar has not stamped for
    /// [`REGISTER_EVERY`], before their decide can add to their index. A
    /// failed stamp does not fail the decide (the hash lives on one node of
    /// a cluster; the others must go on): it is tried again after
    /// [`STAMP_RETRY`], and a change made meanwhile is found once any
    /// sidecar stamps its namespace.
    async fn stamp(&self, claims: &[Claim]) {
        if let Err(e) = self.try_stamp(claims).await {
            tracing::warn!(error = %e, "cannot stamp namespaces in the store's hash of namespaces; deciding anyway, retrying in 10 s");
        }
    }

    async fn try_stamp(&self, claims: &[Claim]) -> Result<(), StoreError> {
        let due = || -> Vec<&str> {
            let now = Instant::now();
            let stamped = self.stamped.lock().unwrap_or_else(|e| e.into_inner());
            let mut due: Vec<&str> = claims
                .iter()
                .map(|c| c.namespace.as_str())
                .filter(|ns| {
                    stamped
                        .get(*ns)
                        .is_none_or(|at| now.duration_since(*at) >= REGISTER_EVERY)
                })
                .collect();
            due.sort_unstable();
            due.dedup();
            due
        };
        if due().is_empty() {
            return Ok(());
        }
        let _stamping = self
            .transport
            .bounded(async { Ok(self.stamping.lock().await) })
            .await?;
        // (another request may have stamped them meanwhile)
        let due = due();
        if due.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let result = self
            .all(&self.scripts.index, vec![Call::register(&due)])
            .await;
        // On failure, due again after STAMP_RETRY rather than at once.
        let at = match &result {
            Ok(()) => now,
            Err(_) => now.checked_sub(REGISTER_EVERY - STAMP_RETRY).unwrap_or(now),
        };
        let mut stamped = self.stamped.lock().unwrap_or_else(|e| e.into_inner());
        stamped.retain(|_, t| now.duration_since(*t) < REGISTER_EVERY);
        for ns in due {
            stamped.insert(ns.to_string(), at);
        }
        result
    }

    async fn unwritten(&self, older_than: Duration) -> Result<Vec<ClaimKey>, StoreError> {
        let cursor = self
            .cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (next, namespaces) = self
            .one(
                &self.scripts.index,
                "index",
                Call::scan(&cursor, SCAN_COUNT),
                decode::parse_scan,
            )
            .await?;
        let calls: Vec<Call> = namespaces
            .iter()
            .map(|(ns, _)| Call::old(ns, older_than, OLD_PER_NAMESPACE))
            .collect();
        let replies = self
            .transport
            .bounded(async { Ok(self.transport.eval_all(&self.scripts.index, &calls).await) })
            .await?;
        // Candidates for pruning by this host's clock; the script decides
        // by the store's.
        let stale = crate::clock::now_ms() - crate::clock::ms(PRUNE_AFTER);
        // A namespace whose node fails is left for the next pass; the
        // others are found all the same.
        let mut found = Vec::new();
        let mut prunes = Vec::new();
        for ((ns, stamp), reply) in namespaces.iter().zip(replies) {
            let parsed = reply.and_then(|reply| {
                decode::parse_old(ns, &reply).ok_or_else(|| decode::unexpected("index", &reply))
            });
            match parsed {
                Ok((held, keys)) => {
                    if held == 0 && *stamp < stale {
                        prunes.push(Call::prune(ns, PRUNE_AFTER));
                    }
                    found.extend(keys);
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "cannot read a namespace's unwritten changes; next pass")
                }
            }
        }
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = next;
        if let Err(e) = self.all(&self.scripts.index, prunes).await {
            tracing::debug!(error = %e, "cannot prune the hash of namespaces; next pass");
        }
        Ok(found)
    }

    async fn written(&self, done: &[(ClaimKey, Option<Written>)]) -> Result<(), StoreError> {
        let calls = done
            .iter()
            .map(|(key, written)| Call::written(&self.settings, key, *written))
            .collect();
        self.all(&self.scripts.index, calls).await
    }

    async fn snapshot(&self, keys: &[ClaimKey]) -> Result<Vec<Option<Snapshot>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let calls: Vec<Call> = keys.iter().map(Call::snapshot).collect();
        self.transport
            .bounded(async {
                let replies = self
                    .transport
                    .eval_all(&self.scripts.snapshot, &calls)
                    .await;
                keys.iter()
                    .zip(replies)
                    .map(|(key, reply)| {
                        let v = reply?;
                        decode::parse_snapshot(key.is_storm(), &v)
                            .ok_or_else(|| decode::unexpected("snapshot", &v))
                    })
                    .collect()
            })
            .await
    }
}

#[async_trait::async_trait]
impl DecideEach for Core {
    async fn decide_each(&self, claims: &[Claim]) -> Vec<Result<Decision, StoreError>> {
        self.decide_calls(claims).await
    }

    async fn release(&self, held: &[(Owner, ClaimKey)]) -> Result<(), StoreError> {
        self.release_all(held).await
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn decide(&self, claims: &[Claim]) -> Result<Vec<Decision>, StoreError> {
        self.core.stamp(claims).await;
        match &self.batcher {
            Some(batcher) => self.core.transport.bounded(batcher.decide(claims)).await,
            None => batch::decide_alone(self.core.as_ref(), claims).await,
        }
    }

    async fn commit(
        &self,
        owner: Owner,
        done: &[(ClaimKey, Option<String>)],
    ) -> Result<(), StoreError> {
        self.core.commit(owner, done).await
    }

    async fn release(&self, owner: Owner, keys: &[ClaimKey]) -> Result<(), StoreError> {
        let held: Vec<(Owner, ClaimKey)> = keys.iter().map(|k| (owner, k.clone())).collect();
        self.core.release_all(&held).await
    }

    async fn adopt(
        &self,
        claim: &Claim,
        existing: &Snapshot,
        absorb: bool,
    ) -> Result<Option<Adopted>, StoreError> {
        self.core.adopt(claim, existing, absorb).await
    }

    async fn adopt_storm(&self, namespace: &str, existing: &Snapshot) -> Result<bool, StoreError> {
        self.core.adopt_storm(namespace, existing).await
    }

    async fn adopt_member(
        &self,
        claim: &Claim,
        storm: &Snapshot,
    ) -> Result<Option<Decision>, StoreError> {
        self.core.adopt_member(claim, storm).await
    }

    async fn forget(&self, key: &ClaimKey, resource: &str) -> Result<bool, StoreError> {
        self.core.forget(key, resource).await
    }

    async fn uncount(&self, owner: Owner, signals: &[(String, String)]) -> Result<(), StoreError> {
        let calls = signals
            .iter()
            .map(|(ns, fp)| Call::uncount(&self.core.settings, owner, ns, fp))
            .collect();
        self.core.claim_all(calls).await
    }

    async fn poll(&self, owner: Owner, key: &ClaimKey) -> Result<ClaimState, StoreError> {
        self.core.poll(owner, key).await
    }

    async fn snapshot(&self, keys: &[ClaimKey]) -> Result<Vec<Option<Snapshot>>, StoreError> {
        self.core.snapshot(keys).await
    }

    async fn unwritten(&self, older_than: Duration) -> Result<Vec<ClaimKey>, StoreError> {
        self.core.unwritten(older_than).await
    }

    async fn written(&self, done: &[(ClaimKey, Option<Written>)]) -> Result<(), StoreError> {
        self.core.written(done).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.batcher.as_ref().is_some_and(|b| !b.is_running()) {
            return Err(StoreError::Unavailable(
                "the store's batching task stopped".into(),
            ));
        }
        self.core.transport.ping().await
    }
}
