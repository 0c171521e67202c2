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
//! `claim.lua` (commit, release, poll) and `snapshot.lua`, each with
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
//! the call is read once and written once (its repeats are answered in a
//! 4-field short form that the parser completes from the earlier answer). On
//! the duplicate path this cut Redis CPU per signal by more than half (see
//! README, Performance). `GETEX` (the warm marker) needs Redis 6.2 or newer.
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
//! Standalone: one [`ConnectionManager`] (a multiplexed connection shared by
//! every concurrent request, reconnecting in the background after errors).
//! Cluster: one multiplexed async cluster connection. Both connect lazily, so
//! the sidecar starts (not ready) while Redis is down and recovers without a
//! restart when it comes back. Every call, retries included, is bounded by
//! the constructor's timeout ([`StoreError::Timeout`]), and so is a
//! request's whole `decide`, its wait for a batch included; connection and
//! server errors are [`StoreError::Unavailable`]. A call that timed out may
//! still have run in Redis: claims it took then stay pending until their
//! lease expires, when a retry (or a poller) takes them over, so nothing is
//! lost or created twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{RedisError, Script, ServerErrorKind, Value};

use crate::clock::ms;

use super::batch::{self, Batcher, DecideEach};
use super::naming::storm_prefix;
use super::{
    Adopted, Claim, ClaimKey, ClaimState, Decision, Outcome, Settings, Snapshot, Store, StoreError,
    StormSnapshot, Write, WARM_MARKER_TTL,
};

const COMMON: &str = include_str!("common.lua");
const DECIDE: &str = include_str!("decide.lua");
const CLAIM: &str = include_str!("claim.lua");
const SNAPSHOT: &str = include_str!("snapshot.lua");

/// How often a call whose script was missing is resent after `SCRIPT LOAD`.
const NOSCRIPT_ATTEMPTS: usize = 3;

/// Signals of one namespace decided by one `decide.lua` call; a bigger batch
/// is split, so one script never holds Redis for long (about 5 µs a signal).
const MAX_SIGNALS_PER_CALL: usize = 64;

/// The Redis store. Cheap to clone; clones share the connection and the
/// batching of `decide` (see `store/batch.rs`).
#[derive(Clone)]
pub struct RedisStore {
    core: Arc<Core>,
    /// Standalone only: on a cluster a batch would wait for its slowest
    /// node, so a failing node would hold up requests that never touch it.
    batcher: Option<Batcher>,
}

/// The connection and scripts; every store call but the batching.
struct Core {
    conn: Conn,
    settings: Settings,
    timeout: Duration,
    scripts: Scripts,
    /// Whether the first ping has asked if Redis allows `INFO` (see ping).
    info_checked: AtomicBool,
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Scripts {
    decide: Script,
    claim: Script,
    snapshot: Script,
}

/// One script call: its keys (all in one slot) and arguments.
struct Call {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Call {
    fn slot(&self) -> Slot {
        Slot::for_key(self.keys.first().map(String::as_str).unwrap_or(""))
    }
}

/// The keys of one namespace (see `common.lua` for what each holds), all
/// `sg:{<namespace>}:...`. An empty namespace is written `_` (no Kubernetes
/// namespace is): an empty hash tag would hash each whole key to its own slot.
struct Keys<'a>(&'a str);

impl Keys<'_> {
    fn key(&self, rest: &str) -> String {
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
        let bad = |e: RedisError| StoreError::Unavailable(format!("invalid Redis URL: {e}"));
        let conn = match cluster_nodes(url) {
            Some(nodes) => {
                let nodes = nodes
                    .map_err(|e| StoreError::Unavailable(format!("invalid Redis URL: {e}")))?;
                let client = ClusterClient::builder(nodes)
                    .retries(3)
                    .min_retry_wait(20)
                    .max_retry_wait(500)
                    .build()
                    .map_err(bad)?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Conn::Cluster(client.get_pending_async_connection_with_config(config))
            }
            None => {
                let client = redis::Client::open(url).map_err(bad)?;
                // A failed reconnect gives up fast (the call fails within its
                // timeout); the next call starts a new attempt.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Conn::Standalone(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?,
                )
            }
        };
        let script = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        let core = Arc::new(Core {
            conn,
            settings,
            timeout,
            scripts: Scripts {
                decide: script(DECIDE),
                claim: script(CLAIM),
                snapshot: script(SNAPSHOT),
            },
            info_checked: AtomicBool::new(false),
        });
        let batcher = match core.conn {
            Conn::Standalone(_) => Some(Batcher::start(core.clone())),
            Conn::Cluster(_) => None,
        };
        Ok(RedisStore { core, batcher })
    }

    pub fn settings(&self) -> &Settings {
        &self.core.settings
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.core.conn, Conn::Cluster(_))
    }
}

impl Core {
    fn error(&self, e: RedisError) -> StoreError {
        if e.is_timeout() {
            StoreError::Timeout(self.timeout)
        } else {
            StoreError::Unavailable(e.to_string())
        }
    }

    /// Bounds `fut` by the store's timeout.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    /// Runs every call of `script` (pipelined, one round trip per slot
    /// group, groups concurrently) and returns each call's reply, or its
    /// error: a server error, or the failure of the connection (on a
    /// cluster, of the node) it went to. `NOSCRIPT` calls are resent after
    /// `SCRIPT LOAD`. All of it within the store's timeout: a pipeline
    /// still unanswered then fails its calls with [`StoreError::Timeout`],
    /// the answers of the others are kept.
    async fn eval_all(&self, script: &Script, calls: &[Call]) -> Vec<Result<Value, StoreError>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut replies: Vec<Option<Result<Value, StoreError>>> =
            (0..calls.len()).map(|_| None).collect();
        let mut todo: Vec<usize> = (0..calls.len()).collect();
        for _ in 0..NOSCRIPT_ATTEMPTS {
            let answers = self.send(script, calls, &todo, deadline).await;
            let mut again = Vec::new();
            for (&i, answer) in todo.iter().zip(answers) {
                match answer {
                    Ok(Value::ServerError(e)) if e.kind() == Some(ServerErrorKind::NoScript) => {
                        again.push(i)
                    }
                    Ok(Value::ServerError(e)) => {
                        replies[i] = Some(Err(StoreError::Unavailable(format!("Redis error: {e}"))))
                    }
                    answer => replies[i] = Some(answer),
                }
            }
            if again.is_empty() {
                break;
            }
            let loaded = tokio::time::timeout_at(deadline, self.load(script))
                .await
                .unwrap_or(Err(StoreError::Timeout(self.timeout)));
            if let Err(e) = loaded {
                for i in again {
                    replies[i] = Some(Err(e.clone()));
                }
                break;
            }
            todo = again;
        }
        replies
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "script still unknown to Redis after SCRIPT LOAD".into(),
                    ))
                })
            })
            .collect()
    }

    /// Sends the calls `idx` of `calls`: one pipeline on a standalone
    /// server; one pipeline per slot, concurrently, on a cluster. Returns
    /// one result per index, in order: a pipeline that failed fails its calls.
    async fn send(
        &self,
        script: &Script,
        calls: &[Call],
        idx: &[usize],
        deadline: tokio::time::Instant,
    ) -> Vec<Result<Value, StoreError>> {
        let pipeline = |group: &[usize]| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in group {
                let mut inv = script.prepare_invoke();
                for key in &calls[i].keys {
                    inv.key(key);
                }
                for arg in &calls[i].args {
                    inv.arg(&arg[..]);
                }
                pipe.invoke_script(&inv);
            }
            pipe
        };
        // One result per call of a pipeline (`None`: no answer by the deadline).
        let each = |answer: Option<Result<Vec<Value>, RedisError>>, want: usize| {
            let failed = |e: StoreError| (0..want).map(|_| Err(e.clone())).collect();
            match answer {
                Some(Ok(values)) if values.len() == want => values.into_iter().map(Ok).collect(),
                Some(Ok(values)) => failed(StoreError::Unavailable(format!(
                    "Redis answered {} replies to a pipeline of {want}",
                    values.len()
                ))),
                Some(Err(e)) => failed(self.error(e)),
                None => failed(StoreError::Timeout(self.timeout)),
            }
        };
        match &self.conn {
            Conn::Standalone(cm) => {
                let (pipe, mut conn) = (pipeline(idx), cm.clone());
                let query = pipe.query_async(&mut conn);
                let answer = tokio::time::timeout_at(deadline, query).await.ok();
                each(answer, idx.len())
            }
            Conn::Cluster(cc) => {
                let mut groups: HashMap<Slot, Vec<usize>> = HashMap::new();
                for &i in idx {
                    groups.entry(calls[i].slot()).or_default().push(i);
                }
                let mut tasks = tokio::task::JoinSet::new();
                let mut slots: Vec<Vec<usize>> = Vec::with_capacity(groups.len());
                for (n, (_, group)) in groups.into_iter().enumerate() {
                    let pipe = pipeline(&group);
                    let mut conn = cc.clone();
                    tasks.spawn(async move {
                        let query = pipe.query_async::<Vec<Value>>(&mut conn);
                        (n, tokio::time::timeout_at(deadline, query).await.ok())
                    });
                    slots.push(group);
                }
                let mut by_call: HashMap<usize, Result<Value, StoreError>> =
                    HashMap::with_capacity(idx.len());
                while let Some(joined) = tasks.join_next().await {
                    // A task only fails by panicking; its calls then get no reply.
                    let Ok((n, answer)) = joined else { continue };
                    by_call.extend(slots[n].iter().copied().zip(each(answer, slots[n].len())));
                }
                idx.iter()
                    .map(|i| {
                        by_call.remove(i).unwrap_or_else(|| {
                            Err(StoreError::Unavailable(
                                "missing pipeline reply".to_string(),
                            ))
                        })
                    })
                    .collect()
            }
        }
    }

    /// `SCRIPT LOAD` (on a cluster, the crate sends it to every node).
    async fn load(&self, script: &Script) -> Result<(), StoreError> {
        let inv = script.prepare_invoke();
        let loaded = match &self.conn {
            Conn::Standalone(cm) => inv.load_async(&mut cm.clone()).await,
            Conn::Cluster(cc) => inv.load_async(&mut cc.clone()).await,
        };
        loaded.map(|_| ()).map_err(|e| self.error(e))
    }

    /// One `decide.lua` call for `claims` (all of one namespace, in order).
    fn decide_call(&self, claims: &[&Claim]) -> Call {
        let s = &self.settings;
        let Some(first) = claims.first() else {
            return Call {
                keys: Vec::new(),
                args: Vec::new(),
            };
        };
        let k = Keys(&first.namespace);
        let mut keys = Vec::with_capacity(6 + claims.len());
        keys.extend([
            k.window(),
            k.storms(),
            k.affected(),
            k.expiry(),
            k.marker(),
            k.marker_owner(),
        ]);
        keys.extend(claims.iter().map(|c| k.fingerprint(&c.fingerprint)));
        let mut args = Vec::with_capacity(8 + 3 * claims.len());
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
        ]);
        for c in claims {
            args.push(c.fingerprint.as_bytes().to_vec());
            args.push(c.affected.as_bytes().to_vec());
            args.push(if c.absent {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            });
        }
        Call { keys, args }
    }

    fn claim_call(&self, op: &str, key: &ClaimKey) -> Call {
        let s = &self.settings;
        let (keys, kind, name) = claim_keys(key);
        Call {
            keys,
            args: vec![
                op.as_bytes().to_vec(),
                kind.as_bytes().to_vec(),
                name.as_bytes().to_vec(),
                ms(s.claim_lease).to_string().into_bytes(),
                ms(s.dedup_ttl).to_string().into_bytes(),
            ],
        }
    }

    /// Gives the leases of `keys` back; all in one round trip.
    async fn release_all(&self, keys: &[ClaimKey]) -> Result<(), StoreError> {
        let calls = keys.iter().map(|k| self.claim_call("release", k)).collect();
        self.claim_all(calls).await
    }

    /// Runs `claim.lua` calls whose reply is only success (commits,
    /// releases); all in one round trip.
    async fn claim_all(&self, calls: Vec<Call>) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        self.bounded(async {
            for reply in self.eval_all(&self.scripts.claim, &calls).await {
                reply?;
            }
            Ok(())
        })
        .await
    }
}

/// The `claim.lua` argument naming where a resource is when not in its
/// namespace (`''` when it is).
fn moved_to_arg(moved_to: Option<&str>) -> Vec<u8> {
    moved_to.unwrap_or("").as_bytes().to_vec()
}

/// For a cluster URL, the seed node URLs.
fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return None;
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{auth}{h}"))
        .collect();
    if nodes.is_empty() {
        return Some(Err(format!("no node in {url:?}")));
    }
    Some(Ok(nodes))
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

fn unexpected(what: &str, value: &Value) -> StoreError {
    StoreError::Unavailable(format!(
        "unexpected reply from the {what} script: {value:?}"
    ))
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn count(value: &Value) -> Option<u64> {
    int(value).and_then(|n| u64::try_from(n).ok())
}

/// The claims of a batch grouped by namespace, in order, at most
/// [`MAX_SIGNALS_PER_CALL`] a group: the indices of each `decide.lua` call.
fn namespace_groups(claims: &[Claim]) -> Vec<Vec<usize>> {
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

/// The reply of one `decide.lua` call: one decision per claim of `group`.
fn parse_decisions(claims: &[Claim], group: &[usize], value: &Value) -> Option<Vec<Decision>> {
    let Value::Array(v) = value else {
        return None;
    };
    if v.len() != group.len() {
        return None;
    }
    let mut decisions: Vec<Decision> = Vec::with_capacity(v.len());
    for (&i, reply) in group.iter().zip(v) {
        let Value::Array(fields) = reply else {
            return None;
        };
        let decision = match fields.len() {
            4 => repeat_decision(&claims[i], &decisions, fields)?,
            _ => parse_decision(&claims[i], fields)?,
        };
        decisions.push(decision);
    }
    Some(decisions)
}

/// A repeat of a fingerprint answered in full earlier in the same call:
/// `{ 2, write, occurrence count, 1-based index of that answer }`.
fn repeat_decision(claim: &Claim, earlier: &[Decision], v: &[Value]) -> Option<Decision> {
    let first = usize::try_from(int(&v[3])?).ok()?.checked_sub(1)?;
    let mut decision = earlier.get(first)?.clone();
    let same = matches!(&decision.key, ClaimKey::Fingerprint { fingerprint, .. }
        if *fingerprint == claim.fingerprint);
    if int(&v[0])? != 2 || !same {
        return None;
    }
    decision.outcome = Outcome::Duplicate;
    decision.write = write_code(int(&v[1])?)?;
    decision.snapshot.occurrence_count = count(&v[2])?;
    Some(decision)
}

fn write_code(code: i64) -> Option<Write> {
    match code {
        1 => Some(Write::Create),
        2 => Some(Write::Update),
        3 => Some(Write::Await),
        4 => Some(Write::Lookup),
        _ => None,
    }
}

/// A reply in full: 7 fields for a signal's own resource (or a lookup), 11 for a storm.
fn parse_decision(claim: &Claim, v: &[Value]) -> Option<Decision> {
    let outcome = match int(v.first()?)? {
        1 => Outcome::Created,
        2 => Outcome::Duplicate,
        3 => Outcome::StormStarted,
        4 => Outcome::StormAggregated,
        _ => return None,
    };
    let write = write_code(int(v.get(1)?)?)?;
    let storm = int(v.get(2)?)? == 1;
    if v.len() != if storm { 11 } else { 7 } {
        return None;
    }
    let (moved_to, resource) = split_ref(text(&v[3])?);
    let key = if storm {
        ClaimKey::Storm {
            namespace: claim.namespace.clone(),
            name: resource.clone(),
        }
    } else {
        ClaimKey::Fingerprint {
            namespace: claim.namespace.clone(),
            fingerprint: claim.fingerprint.clone(),
        }
    };
    let snapshot = snapshot_from(resource, moved_to, &v[4..], storm, Vec::new())?;
    Some(Decision {
        outcome,
        write,
        key,
        snapshot,
    })
}

fn parse_snapshot(storm: bool, value: &Value) -> Option<Option<Snapshot>> {
    let Value::Array(v) = value else {
        return None;
    };
    if v.is_empty() {
        return Some(None);
    }
    if v.len() < 8 {
        return None;
    }
    let affected = v[8..].iter().map(text).collect::<Option<Vec<String>>>()?;
    let (moved_to, resource) = split_ref(text(&v[0])?);
    snapshot_from(resource, moved_to, &v[1..8], storm, affected).map(Some)
}

/// A resource as the scripts answer it (`resource_ref` in `common.lua`):
/// its name, or `<namespace>/<name>` when it went to another namespace.
fn split_ref(resource: String) -> (Option<String>, String) {
    match resource.split_once('/') {
        Some((namespace, name)) => (Some(namespace.to_string()), name.to_string()),
        None => (None, resource),
    }
}

/// A [`Snapshot`] from the fields every script reply lays out alike: first
/// seen ms, last seen ms, occurrence count, then (read for a storm only)
/// alert count, affected overflow, started ms, ends ms.
fn snapshot_from(
    resource: String,
    moved_to: Option<String>,
    fields: &[Value],
    storm: bool,
    affected: Vec<String>,
) -> Option<Snapshot> {
    let field = |i: usize| fields.get(i);
    Some(Snapshot {
        resource,
        first_seen_ms: int(field(0)?)?,
        last_seen_ms: int(field(1)?)?,
        occurrence_count: count(field(2)?)?,
        storm: if storm {
            Some(StormSnapshot {
                alert_count: count(field(3)?)?,
                affected,
                affected_overflow: count(field(4)?)?,
                started_ms: int(field(5)?)?,
                ends_ms: int(field(6)?)?,
            })
        } else {
            None
        },
        moved_to,
    })
}

impl Core {
    /// One `decide.lua` call per namespace group of `claims`, all in one
    /// round trip; a call that failed fails the claims it carried.
    async fn decide_calls(&self, claims: &[Claim]) -> Vec<Result<Decision, StoreError>> {
        let groups = namespace_groups(claims);
        let calls: Vec<Call> = groups
            .iter()
            .map(|group| self.decide_call(&group.iter().map(|&i| &claims[i]).collect::<Vec<_>>()))
            .collect();
        let replies = self.eval_all(&self.scripts.decide, &calls).await;
        let mut slots: Vec<Option<Result<Decision, StoreError>>> =
            (0..claims.len()).map(|_| None).collect();
        for (group, reply) in groups.iter().zip(replies) {
            let parsed = reply.and_then(|v| {
                parse_decisions(claims, group, &v).ok_or_else(|| unexpected("decide", &v))
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
        parse: impl FnOnce(&Value) -> Option<T>,
    ) -> Result<T, StoreError> {
        let calls = [call];
        self.bounded(async {
            let reply = self
                .eval_all(&self.scripts.claim, &calls)
                .await
                .pop()
                .unwrap_or(Err(StoreError::Unavailable("no reply".into())))?;
            parse(&reply).ok_or_else(|| unexpected("claim", &reply))
        })
        .await
    }

    async fn adopt(
        &self,
        namespace: &str,
        fingerprint: &str,
        existing: &Snapshot,
    ) -> Result<Option<Adopted>, StoreError> {
        let key = ClaimKey::Fingerprint {
            namespace: namespace.to_string(),
            fingerprint: fingerprint.to_string(),
        };
        let mut call = self.claim_call("adopt", &key);
        call.args.push(existing.resource.as_bytes().to_vec());
        call.args
            .push(existing.first_seen_ms.to_string().into_bytes());
        call.args
            .push(existing.occurrence_count.to_string().into_bytes());
        call.args.push(moved_to_arg(existing.moved_to.as_deref()));
        self.claim_script(call, |reply| match reply {
            redis::Value::Array(v) if v.len() == 5 => {
                let (moved_to, r) = split_ref(text(&v[0])?);
                Some(Some(Adopted {
                    snapshot: snapshot_from(r, moved_to, &v[1..4], false, Vec::new())?,
                    write: write_code(int(&v[4])?)?,
                }))
            }
            _ if int(reply) == Some(0) => Some(None),
            _ => None,
        })
        .await
    }

    async fn adopt_storm(&self, namespace: &str, existing: &Snapshot) -> Result<bool, StoreError> {
        let Some(storm) = &existing.storm else {
            return Ok(false);
        };
        let key = ClaimKey::Storm {
            namespace: namespace.to_string(),
            name: existing.resource.clone(),
        };
        let mut call = self.claim_call("adopt", &key);
        let s = &self.settings;
        let numbers = [
            storm.started_ms,
            existing.last_seen_ms,
            i64::try_from(existing.occurrence_count).unwrap_or(i64::MAX),
            i64::try_from(storm.alert_count).unwrap_or(i64::MAX),
            i64::try_from(storm.affected_overflow).unwrap_or(i64::MAX),
            storm.ends_ms,
            i64::from(s.storm_max_affected),
        ];
        call.args
            .extend(numbers.iter().map(|n| n.to_string().into_bytes()));
        call.args.push(moved_to_arg(existing.moved_to.as_deref()));
        call.args.extend(
            storm
                .affected
                .iter()
                .take(s.storm_max_affected as usize)
                .map(|a| a.as_bytes().to_vec()),
        );
        self.claim_script(call, |reply| match int(reply) {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        })
        .await
    }

    async fn forget(&self, key: &ClaimKey, resource: &str) -> Result<bool, StoreError> {
        let mut call = self.claim_call("forget", key);
        call.args.push(resource.as_bytes().to_vec());
        self.claim_script(call, |reply| int(reply).map(|n| n == 1))
            .await
    }

    async fn poll(&self, key: &ClaimKey) -> Result<ClaimState, StoreError> {
        self.claim_script(self.claim_call("poll", key), |reply| match reply {
            Value::Array(v) if v.len() == 2 && int(&v[0]) == Some(1) => {
                Some(ClaimState::Committed {
                    moved_to: Some(text(&v[1])?).filter(|ns| !ns.is_empty()),
                })
            }
            _ => match int(reply) {
                Some(0) => Some(ClaimState::Gone),
                Some(2) => Some(ClaimState::Pending),
                Some(3) => Some(ClaimState::Owned),
                _ => None,
            },
        })
        .await
    }

    async fn snapshot(&self, keys: &[ClaimKey]) -> Result<Vec<Option<Snapshot>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let calls: Vec<Call> = keys
            .iter()
            .map(|key| {
                let (keys, kind, name) = claim_keys(key);
                let keys = if kind == "s" {
                    keys[..2].to_vec()
                } else {
                    keys
                };
                Call {
                    keys,
                    args: vec![kind.as_bytes().to_vec(), name.as_bytes().to_vec()],
                }
            })
            .collect();
        self.bounded(async {
            let replies = self.eval_all(&self.scripts.snapshot, &calls).await;
            keys.iter()
                .zip(replies)
                .map(|(key, reply)| {
                    let v = reply?;
                    let storm = key.is_storm();
                    parse_snapshot(storm, &v).ok_or_else(|| unexpected("snapshot", &v))
                })
                .collect()
        })
        .await
    }

    /// One command on the standalone or cluster connection.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        match &self.conn {
            Conn::Standalone(cm) => cmd.query_async(&mut cm.clone()).await,
            Conn::Cluster(cc) => cmd.query_async(&mut cc.clone()).await,
        }
    }

    /// `GETEX` of a key nobody writes rather than `PING`: it answers like a
    /// ping and also proves the server runs the newest command the scripts
    /// use (Redis 6.2), so an older Redis keeps the sidecar unready with a
    /// message saying so instead of failing every signal.
    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut cmd = redis::cmd("GETEX");
            cmd.arg(Keys("").key("ping"));
            let pong: Result<Option<String>, RedisError> = self.query(&cmd).await;
            pong.map(|_| ()).map_err(|e| {
                if e.to_string()
                    .to_ascii_lowercase()
                    .contains("unknown command")
                {
                    StoreError::Unavailable(format!(
                        "Redis does not know GETEX ({e}): signalgate needs Redis 6.2 or newer"
                    ))
                } else {
                    self.error(e)
                }
            })?;
            self.check_info_once().await;
            Ok(())
        })
        .await
    }

    /// Warns once if Redis refuses `INFO` (renamed, or denied by an ACL):
    /// decide.lua then cannot tell a restored snapshot or a promoted replica
    /// from the data its warm markers were written with.
    async fn check_info_once(&self) {
        if self.info_checked.load(Ordering::Relaxed) {
            return;
        }
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        let info: Result<String, RedisError> = self.query(&cmd).await;
        match info {
            Ok(_) => {}
            // Not an answer about INFO (connection lost): ask again next time.
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => return,
            Err(e) => {
                tracing::warn!(error = %e, "Redis refuses INFO: after a restore from an older \
                    snapshot or a failover to a replica that lagged, an incident created since \
                    may get a second resource; allow INFO for signalgate's Redis user");
            }
        }
        self.info_checked.store(true, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl DecideEach for Core {
    async fn decide_each(&self, claims: &[Claim]) -> Vec<Result<Decision, StoreError>> {
        self.decide_calls(claims).await
    }

    async fn release(&self, keys: &[ClaimKey]) -> Result<(), StoreError> {
        self.release_all(keys).await
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn decide(&self, claims: &[Claim]) -> Result<Vec<Decision>, StoreError> {
        match &self.batcher {
            Some(batcher) => self.core.bounded(batcher.decide(claims)).await,
            None => batch::decide_alone(self.core.as_ref(), claims).await,
        }
    }

    async fn commit(&self, done: &[(ClaimKey, Option<String>)]) -> Result<(), StoreError> {
        let calls = done
            .iter()
            .map(|(k, moved_to)| {
                let mut call = self.core.claim_call("commit", k);
                call.args.push(moved_to_arg(moved_to.as_deref()));
                call
            })
            .collect();
        self.core.claim_all(calls).await
    }

    async fn release(&self, keys: &[ClaimKey]) -> Result<(), StoreError> {
        self.core.release_all(keys).await
    }

    async fn adopt(
        &self,
        namespace: &str,
        fingerprint: &str,
        existing: &Snapshot,
    ) -> Result<Option<Adopted>, StoreError> {
        self.core.adopt(namespace, fingerprint, existing).await
    }

    async fn adopt_storm(&self, namespace: &str, existing: &Snapshot) -> Result<bool, StoreError> {
        self.core.adopt_storm(namespace, existing).await
    }

    async fn forget(&self, key: &ClaimKey, resource: &str) -> Result<bool, StoreError> {
        self.core.forget(key, resource).await
    }

    async fn poll(&self, key: &ClaimKey) -> Result<ClaimState, StoreError> {
        self.core.poll(key).await
    }

    async fn snapshot(&self, keys: &[ClaimKey]) -> Result<Vec<Option<Snapshot>>, StoreError> {
        self.core.snapshot(keys).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.batcher.as_ref().is_some_and(|b| !b.is_running()) {
            return Err(StoreError::Unavailable(
                "the store's batching task stopped".into(),
            ));
        }
        self.core.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls() {
        assert!(cluster_nodes("redis://127.0.0.1:1").is_none());
        assert_eq!(
            cluster_nodes("redis+cluster://127.0.0.1:1,127.0.0.1:2"),
            Some(Ok(vec![
                "redis://127.0.0.1:1".to_string(),
                "redis://127.0.0.1:2".to_string()
            ]))
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://u:p@a:1,b:2/"),
            Some(Ok(vec![
                "rediss://u:p@a:1".to_string(),
                "rediss://u:p@b:2".to_string()
            ]))
        );
        assert!(matches!(cluster_nodes("redis+cluster://"), Some(Err(_))));
    }

    #[test]
    fn keys_share_the_namespace_slot() {
        for ns in ["payments", "", "a}b"] {
            let k = Keys(ns);
            let slot = Slot::for_key(k.window());
            for key in [k.fingerprint("ab"), k.storms(), k.affected(), k.expiry()] {
                assert_eq!(Slot::for_key(key), slot, "{ns:?}");
            }
        }
        assert_eq!(Keys("payments").fingerprint("ab"), "sg:{payments}:f:ab");
    }
}
