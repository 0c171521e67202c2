//! The store behaviour suite's machinery: every generic case runs against
//! `MemoryStore`, `RedisStore` on a standalone Redis and `RedisStore` on a
//! 3-master Redis Cluster. A test file lists its cases in
//! [`behaviour!`](crate::behaviour), which makes one test per case and
//! backend (modules `memory`, `standalone`, `cluster`).
//!
//! The generic cases share one standalone server and one cluster per test
//! process ([`RedisServer::shared`], [`RedisCluster::shared`]) and isolate
//! themselves by namespace ([`namespace`]).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signalgate_resource::naming::base36;
use signalgate_sidecar::store::memory::MemoryStore;
use signalgate_sidecar::store::redis::RedisStore;
use signalgate_sidecar::store::{
    Claim, ClaimKey, ClaimState, Decision, Outcome, Owner, Settings, Snapshot, Store, Write,
};

use crate::redis::{RedisCluster, RedisServer};

/// Per-call timeout of the Redis stores in the generic cases.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Makes one test per case and backend: `$case(Backend)` run on the memory
/// store, on standalone Redis and on Redis Cluster.
#[macro_export]
macro_rules! behaviour {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::store_suite::Backend::Memory).await
                }
            )*
        }
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::store_suite::Backend::Standalone).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::store_suite::Backend::Cluster).await
                }
            )*
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Standalone,
    Cluster,
}

/// A store under test and what the case needs to look behind it.
pub struct Fixture {
    pub backend: Backend,
    pub store: Arc<dyn Store>,
    memory: Option<Arc<MemoryStore>>,
    /// Which request holds each claim a decide or poll of this fixture
    /// took (every claim that sets no token is a request of its own, and
    /// so is every poll), so that commit and release act for the holder.
    holders: Mutex<HashMap<ClaimKey, Owner>>,
}

impl Backend {
    pub async fn store(self, settings: impl Into<Settings>) -> Fixture {
        let settings = settings.into();
        let (store, memory): (Arc<dyn Store>, _) = match self {
            Backend::Memory => {
                let m = Arc::new(MemoryStore::new(settings));
                (m.clone(), Some(m))
            }
            Backend::Standalone => (
                Arc::new(redis_store(&RedisServer::shared().url(), settings).await),
                None,
            ),
            Backend::Cluster => (
                Arc::new(redis_store(&RedisCluster::shared().url(), settings).await),
                None,
            ),
        };
        Fixture {
            backend: self,
            store,
            memory,
            holders: Mutex::default(),
        }
    }
}

/// A Redis store on `url` with the generic cases' timeout.
pub async fn redis_store(url: &str, settings: impl Into<Settings>) -> RedisStore {
    RedisStore::connect(url, settings.into(), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("RedisStore::connect({url}): {e}"))
}

impl Fixture {
    /// Decides `claims` in one call; each claim that names no token of its
    /// own is a request of its own (so repeats count, and wait on each
    /// other's claims, as concurrent requests batched together do).
    pub async fn decide(&self, claims: &[Claim]) -> Vec<Decision> {
        let claims: Vec<Claim> = claims
            .iter()
            .flat_map(|c| with_owner(std::slice::from_ref(c), Owner::next()))
            .collect();
        let d = self
            .store
            .decide(&claims)
            .await
            .unwrap_or_else(|e| panic!("{:?}: decide: {e}", self.backend));
        assert_eq!(d.len(), claims.len());
        for (c, d) in claims.iter().zip(&d) {
            self.took(c.owner, d);
        }
        d
    }

    /// Records who holds a claim `d` handed to `owner`.
    fn took(&self, owner: Owner, d: &Decision) {
        if d.write == Write::Create {
            self.holders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(d.key.clone(), owner);
        }
    }

    /// The token of the call of this fixture that holds `key` last.
    pub fn holder(&self, key: &ClaimKey) -> Owner {
        self.holders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    pub async fn one(&self, claim: &Claim) -> Decision {
        self.decide(std::slice::from_ref(claim))
            .await
            .pop()
            .expect("one decision")
    }

    pub async fn commit(&self, key: &ClaimKey) {
        self.commit_moved(key, None).await;
    }

    /// Commits `key`, its resource written to namespace `moved_to` if given.
    pub async fn commit_moved(&self, key: &ClaimKey, moved_to: Option<&str>) {
        self.store
            .commit(
                self.holder(key),
                &[(key.clone(), moved_to.map(str::to_string))],
            )
            .await
            .unwrap_or_else(|e| panic!("{:?}: commit: {e}", self.backend));
    }

    pub async fn release(&self, key: &ClaimKey) {
        self.store
            .release(self.holder(key), std::slice::from_ref(key))
            .await
            .unwrap_or_else(|e| panic!("{:?}: release: {e}", self.backend));
    }

    /// A poll by a call of its own (which then holds the claim if Owned).
    pub async fn poll(&self, key: &ClaimKey) -> ClaimState {
        let owner = Owner::next();
        let state = self
            .store
            .poll(owner, key)
            .await
            .unwrap_or_else(|e| panic!("{:?}: poll: {e}", self.backend));
        if state == ClaimState::Owned {
            self.holders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), owner);
        }
        state
    }

    pub async fn snapshot(&self, key: &ClaimKey) -> Option<Snapshot> {
        self.store
            .snapshot(std::slice::from_ref(key))
            .await
            .unwrap_or_else(|e| panic!("{:?}: snapshot: {e}", self.backend))
            .pop()
            .expect("one snapshot")
    }

    /// Decides every claim in its own concurrent `decide` call.
    pub async fn concurrently(&self, claims: Vec<Claim>) -> Vec<Decision> {
        let tasks: Vec<_> = claims
            .into_iter()
            .map(|c| {
                let store = self.store.clone();
                let c = with_owner(std::slice::from_ref(&c), Owner::next());
                let owner = c[0].owner;
                (owner, tokio::spawn(async move { store.decide(&c).await }))
            })
            .collect();
        let mut out = Vec::new();
        for (owner, t) in tasks {
            let mut d = t
                .await
                .expect("task")
                .unwrap_or_else(|e| panic!("{:?}: decide: {e}", self.backend));
            let d = d.pop().expect("one decision");
            self.took(owner, &d);
            out.push(d);
        }
        out
    }

    /// The store's keys of namespace `ns` with their PTTL (Redis), or the
    /// memory store's live entry count as that many `("entry", 1)`.
    pub fn keys(&self, ns: &str) -> Vec<(String, i64)> {
        let pattern = format!("sg:{{{ns}}}:*");
        type Batch<'a> = Box<dyn Fn(&[String]) -> Vec<String> + 'a>;
        let (scan, pttl): (Vec<String>, Batch) = match self.backend {
            Backend::Memory => {
                let n = self.memory.as_ref().expect("memory store").entry_count();
                return (0..n).map(|_| ("entry".to_string(), 1)).collect();
            }
            Backend::Standalone => {
                let s = RedisServer::shared();
                (
                    lines(&s.cli(&["--scan", "--pattern", &pattern])),
                    Box::new(move |cmds| s.cli_batch(cmds)),
                )
            }
            Backend::Cluster => {
                let c = RedisCluster::shared();
                let port = c.master_port_for_key(&format!("sg:{{{ns}}}:w"));
                let i = c.ports().iter().position(|p| *p == port).expect("node");
                (
                    lines(&c.cli(i, &["--scan", "--pattern", &pattern])),
                    Box::new(move |cmds| c.cli_batch(i, cmds)),
                )
            }
        };
        if scan.is_empty() {
            return Vec::new();
        }
        let commands: Vec<String> = scan.iter().map(|k| format!("PTTL {k}")).collect();
        let ttls = pttl(&commands);
        assert_eq!(ttls.len(), scan.len(), "{ttls:?}");
        scan.into_iter()
            .zip(ttls)
            .map(|(k, t)| (k, t.trim().parse().unwrap_or(-3)))
            .collect()
    }

    /// Members of the namespace's storm window (Redis only).
    pub fn window_size(&self, ns: &str) -> Option<usize> {
        let key = format!("sg:{{{ns}}}:w");
        let out = match self.backend {
            Backend::Memory => return None,
            Backend::Standalone => RedisServer::shared().cli(&["ZCARD", &key]),
            Backend::Cluster => {
                let c = RedisCluster::shared();
                let port = c.master_port_for_key(&key);
                let i = c.ports().iter().position(|p| *p == port).expect("node");
                c.cli(i, &["ZCARD", &key])
            }
        };
        out.trim().parse().ok()
    }
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The settings of a case: [`settings`] with the knobs the case changes.
#[derive(Debug, Clone)]
pub struct SettingsBuilder(Settings);

/// Generous defaults: no storm, long windows, unless a case says otherwise.
pub fn settings() -> SettingsBuilder {
    SettingsBuilder(Settings {
        dedup_ttl: Duration::from_secs(60),
        incident_ttl: Duration::from_secs(120),
        storm_threshold: 1_000,
        storm_window: Duration::from_secs(60),
        storm_max_duration: Duration::from_secs(300),
        storm_max_affected: 100,
        claim_lease: Duration::from_secs(15),
    })
}

/// Settings with a dedup window (and incident TTL) of `ttl` and a shorter
/// claim lease, for tests that watch records expire.
pub fn short_window(ttl: Duration) -> SettingsBuilder {
    settings()
        .dedup_ttl(ttl)
        .incident_ttl(ttl)
        .claim_lease(Duration::from_millis(300))
}

impl SettingsBuilder {
    pub fn dedup_ttl(mut self, ttl: Duration) -> Self {
        self.0.dedup_ttl = ttl;
        self
    }

    pub fn incident_ttl(mut self, ttl: Duration) -> Self {
        self.0.incident_ttl = ttl;
        self
    }

    pub fn storm_threshold(mut self, n: u32) -> Self {
        self.0.storm_threshold = n;
        self
    }

    pub fn storm_window(mut self, window: Duration) -> Self {
        self.0.storm_window = window;
        self
    }

    pub fn storm_max_duration(mut self, max: Duration) -> Self {
        self.0.storm_max_duration = max;
        self
    }

    pub fn storm_max_affected(mut self, n: u32) -> Self {
        self.0.storm_max_affected = n;
        self
    }

    pub fn claim_lease(mut self, lease: Duration) -> Self {
        self.0.claim_lease = lease;
        self
    }
}

impl From<SettingsBuilder> for Settings {
    fn from(b: SettingsBuilder) -> Settings {
        b.0
    }
}

/// A namespace no other case (or run) uses.
pub fn namespace(case: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{case}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A 64-hex fingerprint derived from `seed` (distinct seeds, distinct prefixes).
pub fn fingerprint(seed: &str) -> String {
    (0..4u8)
        .map(|i| {
            let mut h = DefaultHasher::new();
            (seed, i).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

pub fn claim(ns: &str, seed: &str) -> Claim {
    claim_on(ns, seed, &format!("Pod/{seed}"))
}

/// A claim as the pipeline sends it once the sink was searched (`absent`):
/// decided as new even in a namespace the store has just started to
/// remember. The cases about lookups clear `absent`.
pub fn claim_on(ns: &str, seed: &str, affected: &str) -> Claim {
    Claim {
        namespace: ns.to_string(),
        fingerprint: fingerprint(&format!("{ns}/{seed}")),
        affected: affected.to_string(),
        absent: true,
        ..Claim::default()
    }
}

/// The same claim, not looked up yet.
pub fn unchecked(c: &Claim) -> Claim {
    Claim {
        absent: false,
        ..c.clone()
    }
}

pub fn fp_key(c: &Claim) -> ClaimKey {
    ClaimKey::Fingerprint {
        namespace: c.namespace.clone(),
        fingerprint: c.fingerprint.clone(),
    }
}

/// The resource of `c`'s incident as a lookup finds it in the sink: named
/// as a claim at 1 000 ms names it, first seen then, last seen at 2 000 ms,
/// counted `count` times, in its own namespace.
pub fn found_in_sink(c: &Claim, count: u64) -> Snapshot {
    Snapshot {
        resource: format!("rr-{}-{}", &c.fingerprint[..16], base36(1_000)),
        first_seen_ms: 1_000,
        last_seen_ms: 2_000,
        occurrence_count: count,
        firings: 1,
        ..Snapshot::default()
    }
}

/// A decision for `c`'s own resource, with its documented name.
pub fn assert_own(d: &Decision, c: &Claim, outcome: Outcome, write: Write) {
    assert_eq!((d.outcome, d.write), (outcome, write), "{d:?}");
    assert_eq!(d.key, fp_key(c), "{d:?}");
    assert_eq!(
        d.snapshot.resource,
        format!(
            "rr-{}-{}",
            &c.fingerprint[..16],
            base36(d.snapshot.first_seen_ms)
        )
    );
    assert!(d.snapshot.storm.is_none());
}

/// A decision counted in a storm resource with its documented name.
pub fn assert_storm(d: &Decision, outcome: Outcome, write: Write) -> String {
    assert_eq!((d.outcome, d.write), (outcome, write), "{d:?}");
    let ClaimKey::Storm { name, .. } = &d.key else {
        panic!("not a storm decision: {d:?}");
    };
    let storm = d.snapshot.storm.as_ref().expect("storm snapshot");
    assert_eq!(&d.snapshot.resource, name);
    let hash = name
        .strip_prefix("storm-")
        .and_then(|r| r.split_once('-'))
        .map(|(h, _)| h)
        .unwrap_or_default();
    assert!(
        hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    assert_eq!(
        name,
        &format!("storm-{hash}-{}", base36(storm.started_ms)),
        "{d:?}"
    );
    name.clone()
}

pub fn count(ds: &[Decision], outcome: Outcome) -> usize {
    ds.iter().filter(|d| d.outcome == outcome).count()
}

/// `claims` as one request of token `owner` sends them (a claim that
/// names its own token keeps it).
pub fn with_owner(claims: &[Claim], owner: Owner) -> Vec<Claim> {
    claims
        .iter()
        .map(|c| Claim {
            owner: if c.owner == Owner::default() {
                owner
            } else {
                c.owner
            },
            ..c.clone()
        })
        .collect()
}

/// A store whose claims hold `lease`, and claim `a` of a fresh namespace
/// made by its first sighting (its owner).
pub async fn a_claim_made(b: Backend, lease: Duration, case: &str) -> (Fixture, Claim, Decision) {
    let f = b.store(settings().claim_lease(lease)).await;
    let a = claim(&namespace(case), "a");
    let owner = f.one(&a).await;
    assert_own(&owner, &a, Outcome::Created, Write::Create);
    (f, a, owner)
}
