//! The store behaviour suite: every case runs against `MemoryStore`,
//! `RedisStore` on a private standalone Redis, and `RedisStore` on a private
//! 3-master Redis Cluster (modules `memory`, `standalone`, `cluster`), plus
//! Redis-only cases (outage and recovery, round trips, NOSCRIPT, two stores
//! racing, cluster routing) at the end.
//!
//! The generic cases share one standalone server and one cluster per test
//! process and isolate themselves by namespace; the Redis-only cases that
//! stop servers or read server-wide counters start their own.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signalgate_sidecar::clock::now_ms;
use signalgate_sidecar::store::memory::MemoryStore;
use signalgate_sidecar::store::naming::base36;
use signalgate_sidecar::store::redis::RedisStore;
use signalgate_sidecar::store::{
    Claim, ClaimKey, ClaimState, Decision, Outcome, Settings, Snapshot, Store, StoreError,
    StormSnapshot, Write, WARM_MARKER_TTL,
};
use signalgate_tests::redis::{parse_info, RedisCluster, RedisServer};

/// Per-call timeout of the Redis stores in the generic cases.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Memory,
    Standalone,
    Cluster,
}

/// A store under test and what the case needs to look behind it.
struct Fixture {
    backend: Backend,
    store: Arc<dyn Store>,
    memory: Option<Arc<MemoryStore>>,
}

impl Backend {
    async fn store(self, settings: Settings) -> Fixture {
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
        }
    }
}

async fn redis_store(url: &str, settings: Settings) -> RedisStore {
    RedisStore::connect(url, settings, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("RedisStore::connect({url}): {e}"))
}

impl Fixture {
    async fn decide(&self, claims: &[Claim]) -> Vec<Decision> {
        let d = self
            .store
            .decide(claims)
            .await
            .unwrap_or_else(|e| panic!("{:?}: decide: {e}", self.backend));
        assert_eq!(d.len(), claims.len());
        d
    }

    async fn one(&self, claim: &Claim) -> Decision {
        self.decide(std::slice::from_ref(claim))
            .await
            .pop()
            .expect("one decision")
    }

    async fn commit(&self, key: &ClaimKey) {
        self.commit_moved(key, None).await;
    }

    /// Commits `key`, its resource written to namespace `moved_to` if given.
    async fn commit_moved(&self, key: &ClaimKey, moved_to: Option<&str>) {
        self.store
            .commit(&[(key.clone(), moved_to.map(str::to_string))])
            .await
            .unwrap_or_else(|e| panic!("{:?}: commit: {e}", self.backend));
    }

    async fn release(&self, key: &ClaimKey) {
        self.store
            .release(std::slice::from_ref(key))
            .await
            .unwrap_or_else(|e| panic!("{:?}: release: {e}", self.backend));
    }

    async fn poll(&self, key: &ClaimKey) -> ClaimState {
        self.store
            .poll(key)
            .await
            .unwrap_or_else(|e| panic!("{:?}: poll: {e}", self.backend))
    }

    async fn snapshot(&self, key: &ClaimKey) -> Option<signalgate_sidecar::store::Snapshot> {
        self.store
            .snapshot(std::slice::from_ref(key))
            .await
            .unwrap_or_else(|e| panic!("{:?}: snapshot: {e}", self.backend))
            .pop()
            .expect("one snapshot")
    }

    /// Decides every claim in its own concurrent `decide` call.
    async fn concurrently(&self, claims: Vec<Claim>) -> Vec<Decision> {
        let tasks: Vec<_> = claims
            .into_iter()
            .map(|c| {
                let store = self.store.clone();
                tokio::spawn(async move { store.decide(&[c]).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            let mut d = t
                .await
                .expect("task")
                .unwrap_or_else(|e| panic!("{:?}: decide: {e}", self.backend));
            out.push(d.pop().expect("one decision"));
        }
        out
    }

    /// The store's keys of namespace `ns` with their PTTL (Redis), or the
    /// memory store's live entry count as that many `("entry", 1)`.
    fn keys(&self, ns: &str) -> Vec<(String, i64)> {
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
}

impl Fixture {
    /// Members of the namespace's storm window (Redis only).
    fn window_size(&self, ns: &str) -> Option<usize> {
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

/// Generous defaults: no storm, long windows, unless a case says otherwise.
fn settings() -> Settings {
    Settings {
        dedup_ttl: Duration::from_secs(60),
        storm_threshold: 1_000,
        storm_window: Duration::from_secs(60),
        storm_max_duration: Duration::from_secs(300),
        storm_max_affected: 100,
        claim_lease: Duration::from_secs(15),
    }
}

/// A namespace no other case (or run) uses.
/// Settings with a dedup window of `ttl` (and a shorter claim lease), for
/// tests that watch records expire.
fn short_window(ttl: Duration) -> Settings {
    Settings {
        dedup_ttl: ttl,
        claim_lease: Duration::from_millis(300),
        ..settings()
    }
}

fn namespace(case: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{case}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A 64-hex fingerprint derived from `seed` (distinct seeds, distinct prefixes).
fn fingerprint(seed: &str) -> String {
    (0..4u8)
        .map(|i| {
            let mut h = DefaultHasher::new();
            (seed, i).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

fn claim(ns: &str, seed: &str) -> Claim {
    claim_on(ns, seed, &format!("Pod/{seed}"))
}

/// A claim as the pipeline sends it once the sink was searched (`absent`):
/// decided as new even in a namespace the store has just started to
/// remember. The cases about lookups clear `absent`.
fn claim_on(ns: &str, seed: &str, affected: &str) -> Claim {
    Claim {
        namespace: ns.to_string(),
        fingerprint: fingerprint(&format!("{ns}/{seed}")),
        affected: affected.to_string(),
        absent: true,
    }
}

/// The same claim, not looked up yet.
fn unchecked(c: &Claim) -> Claim {
    Claim {
        absent: false,
        ..c.clone()
    }
}

fn fp_key(c: &Claim) -> ClaimKey {
    ClaimKey::Fingerprint {
        namespace: c.namespace.clone(),
        fingerprint: c.fingerprint.clone(),
    }
}

/// A decision for `c`'s own resource, with its documented name.
fn assert_own(d: &Decision, c: &Claim, outcome: Outcome, write: Write) {
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
fn assert_storm(d: &Decision, outcome: Outcome, write: Write) -> String {
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

fn count(ds: &[Decision], outcome: Outcome) -> usize {
    ds.iter().filter(|d| d.outcome == outcome).count()
}

macro_rules! behaviour {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Memory).await
                }
            )*
        }
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Standalone).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Cluster).await
                }
            )*
        }
    };
}

behaviour!(
    created_then_duplicate,
    ttl_refreshed_on_every_duplicate,
    concurrent_identical_claims_create_once,
    concurrent_distinct_claims_start_one_storm,
    storm_of_ten_thousand_signals,
    storm_ends_and_the_next_storm_is_a_new_resource,
    storm_max_duration_caps_extension,
    namespaces_never_share_a_storm,
    affected_list_is_deduplicated_and_capped,
    one_batch_mixes_every_outcome,
    await_until_committed,
    expired_lease_is_owned_by_exactly_one_poller,
    release_lets_the_next_decide_create_at_once,
    killed_owner_is_replaced_with_the_same_resource,
    storm_claims_follow_the_protocol,
    every_key_expires,
    adopting_an_existing_resource_keeps_its_name_and_count,
    new_fingerprints_are_looked_up_while_the_namespace_is_cold,
    repeats_within_one_decide_count_in_order,
    a_resource_deleted_from_the_sink_is_forgotten,
    a_running_storm_found_in_the_sink_is_adopted,
    where_a_resource_went_is_remembered_with_it,
    an_adoption_finding_a_claim_made_meanwhile_settles_it_as_a_duplicate_would,
);

async fn created_then_duplicate(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("dup");
    let a = claim(&ns, "a");
    let first = f.one(&a).await;
    assert_own(&first, &a, Outcome::Created, Write::Create);
    assert_eq!(first.snapshot.occurrence_count, 1);
    assert_eq!(first.snapshot.first_seen_ms, first.snapshot.last_seen_ms);
    f.commit(&first.key).await;

    let again = f.one(&a).await;
    assert_own(&again, &a, Outcome::Duplicate, Write::Update);
    assert_eq!(again.snapshot.resource, first.snapshot.resource);
    assert_eq!(again.snapshot.occurrence_count, 2);
    assert_eq!(again.snapshot.first_seen_ms, first.snapshot.first_seen_ms);
    assert!(again.snapshot.last_seen_ms >= first.snapshot.last_seen_ms);

    let other = claim(&ns, "b");
    let b2 = f.one(&other).await;
    assert_own(&b2, &other, Outcome::Created, Write::Create);
    assert_ne!(b2.snapshot.resource, first.snapshot.resource);

    let snap = f.snapshot(&first.key).await.expect("snapshot");
    assert_eq!(snap.occurrence_count, 2);
    assert_eq!(snap.resource, first.snapshot.resource);
    let gone = fp_key(&claim(&ns, "never-seen"));
    assert_eq!(f.snapshot(&gone).await, None);
    assert_eq!(f.poll(&gone).await, ClaimState::Gone);
}

async fn ttl_refreshed_on_every_duplicate(b: Backend) {
    let ttl = Duration::from_millis(800);
    let f = b.store(short_window(ttl)).await;
    let ns = namespace("ttl");
    let a = claim(&ns, "a");
    let first = f.one(&a).await;
    assert_own(&first, &a, Outcome::Created, Write::Create);
    f.commit(&first.key).await;

    // Repeats every 200 ms keep it alive for three times the TTL.
    let started = Instant::now();
    let mut n = 1;
    while started.elapsed() < ttl * 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let d = f.one(&a).await;
        n += 1;
        assert_own(&d, &a, Outcome::Duplicate, Write::Update);
        assert_eq!(d.snapshot.resource, first.snapshot.resource);
        assert_eq!(d.snapshot.occurrence_count, n);
    }
    assert!(n >= 10, "only {n} repeats");

    // Silence longer than the TTL: a new resource with a new name.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let fresh = f.one(&a).await;
    assert_own(&fresh, &a, Outcome::Created, Write::Create);
    assert_eq!(fresh.snapshot.occurrence_count, 1);
    assert_ne!(fresh.snapshot.resource, first.snapshot.resource);
}

async fn concurrent_identical_claims_create_once(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("same100");
    let a = claim(&ns, "a");
    let ds = f.concurrently(vec![a.clone(); 100]).await;
    let creates: Vec<&Decision> = ds.iter().filter(|d| d.write == Write::Create).collect();
    assert_eq!(creates.len(), 1, "{ds:?}");
    assert_eq!(creates[0].outcome, Outcome::Created);
    assert_eq!(count(&ds, Outcome::Created), 1);
    assert_eq!(count(&ds, Outcome::Duplicate), 99);
    assert!(ds
        .iter()
        .filter(|d| d.outcome == Outcome::Duplicate)
        .all(|d| d.write == Write::Await));
    let names: BTreeSet<&str> = ds.iter().map(|d| d.snapshot.resource.as_str()).collect();
    assert_eq!(names.len(), 1);
    let counts: BTreeSet<u64> = ds.iter().map(|d| d.snapshot.occurrence_count).collect();
    assert_eq!(counts, (1..=100).collect());
    let snap = f.snapshot(&fp_key(&a)).await.expect("snapshot");
    assert_eq!(snap.occurrence_count, 100);
}

async fn concurrent_distinct_claims_start_one_storm(b: Backend) {
    let f = b
        .store(Settings {
            storm_threshold: 3,
            ..settings()
        })
        .await;
    let ns = namespace("storm15");
    let claims: Vec<Claim> = (0..15).map(|i| claim(&ns, &format!("s{i}"))).collect();
    let ds = f.concurrently(claims).await;
    assert_eq!(count(&ds, Outcome::Created), 3, "{ds:?}");
    assert_eq!(count(&ds, Outcome::StormStarted), 1, "{ds:?}");
    assert_eq!(count(&ds, Outcome::StormAggregated), 11, "{ds:?}");
    let started = ds
        .iter()
        .find(|d| d.outcome == Outcome::StormStarted)
        .expect("storm");
    let name = assert_storm(started, Outcome::StormStarted, Write::Create);
    for d in ds.iter().filter(|d| d.outcome == Outcome::StormAggregated) {
        assert_eq!(
            assert_storm(d, Outcome::StormAggregated, Write::Await),
            name
        );
    }
    let snap = f.snapshot(&started.key).await.expect("storm snapshot");
    let storm = snap.storm.expect("storm counters");
    assert_eq!(storm.alert_count, 12);
    assert_eq!(snap.occurrence_count, 12);
    assert_eq!(storm.affected.len(), 12);
    assert!(storm.affected.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert_eq!(storm.affected_overflow, 0);
}

async fn storm_of_ten_thousand_signals(b: Backend) {
    let f = b
        .store(Settings {
            storm_threshold: 10,
            ..settings()
        })
        .await;
    let ns = namespace("storm10k");
    let started = Instant::now();
    // 100 concurrent decide calls of 100 distinct signals each.
    let tasks: Vec<_> = (0..100)
        .map(|batch| {
            let store = f.store.clone();
            let claims: Vec<Claim> = (0..100)
                .map(|i| claim(&ns, &format!("p{batch}-{i}")))
                .collect();
            tokio::spawn(async move { store.decide(&claims).await })
        })
        .collect();
    let mut ds = Vec::new();
    for t in tasks {
        ds.extend(t.await.expect("task").expect("decide"));
    }
    let elapsed = started.elapsed();
    eprintln!("{b:?}: 10 000 signals in 100 concurrent batches: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
    assert_eq!(count(&ds, Outcome::Created), 10);
    assert_eq!(count(&ds, Outcome::StormStarted), 1);
    assert_eq!(count(&ds, Outcome::StormAggregated), 9_989);
    let storms: BTreeSet<&ClaimKey> = ds
        .iter()
        .filter(|d| d.outcome != Outcome::Created)
        .map(|d| &d.key)
        .collect();
    assert_eq!(storms.len(), 1);
    let key = storms.into_iter().next().expect("storm").clone();
    let snap = f.snapshot(&key).await.expect("storm snapshot");
    let storm = snap.storm.expect("storm counters");
    assert_eq!(storm.alert_count, 9_990);
    assert_eq!(snap.occurrence_count, 9_990);
    assert_eq!(storm.affected.len(), 100);
    assert_eq!(storm.affected_overflow, 9_890);
    // Every key has a TTL (on Redis: 9 990 members, 10 own, 6 namespace keys).
    let keys = f.keys(&ns);
    assert!(keys.iter().all(|(_, ttl)| *ttl > 0));
    if b != Backend::Memory {
        assert_eq!(keys.len(), 10_006);
        // The window never holds more than the threshold needs.
        assert_eq!(f.window_size(&ns), Some(10));
    }
}

async fn storm_ends_and_the_next_storm_is_a_new_resource(b: Backend) {
    let window = Duration::from_millis(700);
    let f = b
        .store(Settings {
            storm_threshold: 2,
            storm_window: window,
            ..settings()
        })
        .await;
    let ns = namespace("stormend");
    let c = |s: &str| claim(&ns, s);
    let ds = f.decide(&[c("a"), c("b"), c("c"), c("d")]).await;
    assert_own(&ds[0], &c("a"), Outcome::Created, Write::Create);
    assert_own(&ds[1], &c("b"), Outcome::Created, Write::Create);
    let first = assert_storm(&ds[2], Outcome::StormStarted, Write::Create);
    assert_eq!(
        assert_storm(&ds[3], Outcome::StormAggregated, Write::Await),
        first
    );
    f.commit(&ds[2].key).await;

    // No new member for a full window: the storm is over, the window empty.
    tokio::time::sleep(window + Duration::from_millis(300)).await;
    let ds2 = f.decide(&[c("e"), c("f"), c("g"), c("h")]).await;
    assert_own(&ds2[0], &c("e"), Outcome::Created, Write::Create);
    assert_own(&ds2[1], &c("f"), Outcome::Created, Write::Create);
    let second = assert_storm(&ds2[2], Outcome::StormStarted, Write::Create);
    assert_ne!(second, first);
    assert_eq!(
        assert_storm(&ds2[3], Outcome::StormAggregated, Write::Await),
        second
    );

    // Members of the first storm still repeat into the first storm's resource.
    let old = f.one(&c("d")).await;
    assert_eq!(assert_storm(&old, Outcome::Duplicate, Write::Update), first);
    assert_eq!(old.snapshot.occurrence_count, 3);
    assert_eq!(old.snapshot.storm.as_ref().map(|s| s.alert_count), Some(2));
    let snap = f.snapshot(&ds2[2].key).await.expect("second storm");
    assert_eq!(snap.storm.map(|s| s.alert_count), Some(2));
}

async fn storm_max_duration_caps_extension(b: Backend) {
    let window = Duration::from_millis(1_000);
    let max = Duration::from_millis(2_000);
    let f = b
        .store(Settings {
            storm_threshold: 1,
            storm_window: window,
            storm_max_duration: max,
            ..settings()
        })
        .await;
    let ns = namespace("stormmax");
    let ds = f.decide(&[claim(&ns, "a"), claim(&ns, "b")]).await;
    assert_eq!(ds[0].outcome, Outcome::Created);
    let name = assert_storm(&ds[1], Outcome::StormStarted, Write::Create);
    let started_ms = ds[1].snapshot.storm.as_ref().expect("storm").started_ms;
    let cap = started_ms + max.as_millis() as i64;

    // A new member every 100 ms extends the storm by a full window each
    // time (each comes well within the window of the one before): only the
    // cap ends it.
    let mut last_aggregated = started_ms;
    let mut i = 0;
    let after = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        i += 1;
        let d = f.one(&claim(&ns, &format!("m{i}"))).await;
        let at = d.snapshot.last_seen_ms;
        assert!(
            at - last_aggregated < window.as_millis() as i64,
            "a gap of {} ms: the test machine stalled longer than the window",
            at - last_aggregated
        );
        if d.outcome != Outcome::StormAggregated {
            break d;
        }
        assert_eq!(
            assert_storm(&d, Outcome::StormAggregated, Write::Await),
            name
        );
        last_aggregated = at;
        assert!(i < 100, "the storm never ended");
    };
    assert!(last_aggregated < cap, "aggregated after the cap");
    assert!(
        last_aggregated > started_ms + window.as_millis() as i64,
        "never extended"
    );
    // After the cap the namespace counts afresh: created, then a new storm.
    assert_eq!(after.outcome, Outcome::Created, "{after:?}");
    assert!(after.snapshot.first_seen_ms >= cap);
    let next = f.one(&claim(&ns, "next")).await;
    assert_ne!(
        assert_storm(&next, Outcome::StormStarted, Write::Create),
        name
    );
}

async fn namespaces_never_share_a_storm(b: Backend) {
    let f = b
        .store(Settings {
            storm_threshold: 3,
            ..settings()
        })
        .await;
    let one = namespace("nsone");
    let two = namespace("nstwo");
    let mut claims = Vec::new();
    for i in 0..15 {
        claims.push(claim(&one, &format!("x{i}")));
        claims.push(claim(&two, &format!("x{i}")));
    }
    let ds = f.concurrently(claims.clone()).await;
    let mut storms = BTreeSet::new();
    for ns in [&one, &two] {
        let mine: Vec<Decision> = claims
            .iter()
            .zip(&ds)
            .filter(|(c, _)| &c.namespace == ns)
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(count(&mine, Outcome::Created), 3, "{ns}: {mine:?}");
        assert_eq!(count(&mine, Outcome::StormStarted), 1, "{ns}");
        assert_eq!(count(&mine, Outcome::StormAggregated), 11, "{ns}");
        let keys: BTreeSet<&ClaimKey> = mine
            .iter()
            .filter(|d| d.outcome != Outcome::Created)
            .map(|d| &d.key)
            .collect();
        assert_eq!(keys.len(), 1);
        let key = keys.into_iter().next().expect("storm");
        assert_eq!(key.namespace(), ns.as_str());
        storms.insert(key.clone());
        let snap = f.snapshot(key).await.expect("storm");
        assert_eq!(snap.storm.map(|s| s.alert_count), Some(12));
    }
    assert_eq!(storms.len(), 2);
}

async fn affected_list_is_deduplicated_and_capped(b: Backend) {
    let f = b
        .store(Settings {
            storm_threshold: 1,
            storm_max_affected: 3,
            ..settings()
        })
        .await;
    let ns = namespace("affected");
    let c = |s: &str, target: &str| claim_on(&ns, s, target);
    let batch = [
        c("a", "Pod/x"), // created on its own
        c("b", "Pod/c"), // starts the storm
        c("c", "Pod/a"), // listed
        c("d", "Pod/c"), // same target: listed once
        c("e", "Pod/b"), // listed (the list is full now)
        c("f", "Pod/d"), // beyond the cap: overflow 1
        c("g", "Pod/a"), // already listed: no overflow
        c("h", "Pod/e"), // overflow 2
        c("i", ""),      // no target: counted, not listed
        c("j", "Pod/d"), // another member beyond the cap: overflow 3
        c("f", "Pod/d"), // a repeat of member f: a duplicate, no overflow
    ];
    let ds = f.decide(&batch).await;
    assert_eq!(ds[0].outcome, Outcome::Created);
    assert_eq!(ds[1].outcome, Outcome::StormStarted);
    assert!(ds[2..10]
        .iter()
        .all(|d| d.outcome == Outcome::StormAggregated));
    assert_eq!(ds[10].outcome, Outcome::Duplicate);
    let overflow: Vec<u64> = ds[1..]
        .iter()
        .map(|d| d.snapshot.storm.as_ref().expect("storm").affected_overflow)
        .collect();
    assert_eq!(overflow, [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]);
    let snap = f.snapshot(&ds[1].key).await.expect("storm");
    let storm = snap.storm.expect("storm counters");
    assert_eq!(storm.affected, ["Pod/a", "Pod/b", "Pod/c"]);
    assert_eq!(storm.affected_overflow, 3);
    assert_eq!(storm.alert_count, 9);
    assert_eq!(snap.occurrence_count, 10);
}

async fn one_batch_mixes_every_outcome(b: Backend) {
    let f = b
        .store(Settings {
            storm_threshold: 3,
            ..settings()
        })
        .await;
    let ns = namespace("mixed");
    let other = namespace("mixedother");
    let c = |s: &str| claim(&ns, s);
    let known = f.one(&c("known")).await;
    f.commit(&known.key).await;

    let batch = [
        c("known"),         // duplicate of a committed resource
        c("q"),             // created
        c("r"),             // created (3rd in the window with "known")
        c("s"),             // starts a storm
        c("t"),             // aggregated
        c("q"),             // duplicate of a claim pending in this very batch
        c("t"),             // duplicate of a storm member
        claim(&other, "q"), // another namespace: its own window
    ];
    let ds = f.decide(&batch).await;
    assert_own(&ds[0], &c("known"), Outcome::Duplicate, Write::Update);
    assert_eq!(ds[0].snapshot.resource, known.snapshot.resource);
    assert_own(&ds[1], &c("q"), Outcome::Created, Write::Create);
    assert_own(&ds[2], &c("r"), Outcome::Created, Write::Create);
    let storm = assert_storm(&ds[3], Outcome::StormStarted, Write::Create);
    assert_eq!(
        assert_storm(&ds[4], Outcome::StormAggregated, Write::Await),
        storm
    );
    assert_own(&ds[5], &c("q"), Outcome::Duplicate, Write::Await);
    assert_eq!(ds[5].snapshot.resource, ds[1].snapshot.resource);
    assert_eq!(ds[5].snapshot.occurrence_count, 2);
    assert_eq!(
        assert_storm(&ds[6], Outcome::Duplicate, Write::Await),
        storm
    );
    assert_eq!(ds[6].snapshot.occurrence_count, 3);
    assert_own(&ds[7], &batch[7], Outcome::Created, Write::Create);
}

async fn await_until_committed(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("await");
    let a = claim(&ns, "a");
    let owner = f.one(&a).await;
    assert_own(&owner, &a, Outcome::Created, Write::Create);
    let waiter = f.one(&a).await;
    assert_own(&waiter, &a, Outcome::Duplicate, Write::Await);
    assert_eq!(f.poll(&waiter.key).await, ClaimState::Pending);
    f.commit(&owner.key).await;
    assert_eq!(
        f.poll(&waiter.key).await,
        ClaimState::Committed { moved_to: None }
    );
    f.commit(&owner.key).await; // idempotent
    let later = f.one(&a).await;
    assert_own(&later, &a, Outcome::Duplicate, Write::Update);
    assert_eq!(later.snapshot.occurrence_count, 3);
}

/// A store whose claims hold `lease`, and claim `a` of a fresh namespace
/// made by its first sighting (its owner).
async fn a_claim_made(b: Backend, lease: Duration, case: &str) -> (Fixture, Claim, Decision) {
    let f = b
        .store(Settings {
            claim_lease: lease,
            ..settings()
        })
        .await;
    let a = claim(&namespace(case), "a");
    let owner = f.one(&a).await;
    assert_own(&owner, &a, Outcome::Created, Write::Create);
    (f, a, owner)
}

async fn expired_lease_is_owned_by_exactly_one_poller(b: Backend) {
    let lease = Duration::from_millis(400);
    let (f, a, owner) = a_claim_made(b, lease, "lease").await;
    let waiter = f.one(&a).await;
    assert_eq!(waiter.write, Write::Await);
    assert_eq!(f.poll(&waiter.key).await, ClaimState::Pending);

    // The owner never commits; after its lease, ten pollers race.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let polls: Vec<_> = (0..10)
        .map(|_| {
            let store = f.store.clone();
            let key = waiter.key.clone();
            tokio::spawn(async move { store.poll(&key).await })
        })
        .collect();
    let mut states = Vec::new();
    for p in polls {
        states.push(p.await.expect("task").expect("poll"));
    }
    let owned = states.iter().filter(|s| **s == ClaimState::Owned).count();
    let pending = states.iter().filter(|s| **s == ClaimState::Pending).count();
    assert_eq!((owned, pending), (1, 9), "{states:?}");
    f.commit(&waiter.key).await;
    assert_eq!(
        f.poll(&waiter.key).await,
        ClaimState::Committed { moved_to: None }
    );
    let snap = f.snapshot(&waiter.key).await.expect("snapshot");
    assert_eq!(snap.resource, owner.snapshot.resource);
}

async fn release_lets_the_next_decide_create_at_once(b: Backend) {
    let f = b.store(settings()).await; // a 15 s lease
    let ns = namespace("release");
    let a = claim(&ns, "a");
    let owner = f.one(&a).await;
    assert_own(&owner, &a, Outcome::Created, Write::Create);
    assert!(!owner.retakes_claim());
    assert_eq!(f.one(&a).await.write, Write::Await);
    f.release(&owner.key).await;
    let retry = f.one(&a).await;
    assert_own(&retry, &a, Outcome::Duplicate, Write::Create);
    assert!(retry.retakes_claim(), "the owner may have written it");
    assert_eq!(retry.snapshot.resource, owner.snapshot.resource);
    // The retry holds a fresh lease: the others wait again.
    assert_eq!(f.one(&a).await.write, Write::Await);
    assert_eq!(f.poll(&owner.key).await, ClaimState::Pending);
    // A released claim can also be taken by a poller.
    f.release(&retry.key).await;
    assert_eq!(f.poll(&owner.key).await, ClaimState::Owned);
}

async fn killed_owner_is_replaced_with_the_same_resource(b: Backend) {
    let lease = Duration::from_millis(500);
    // The owner is "killed" between claim and create: it never commits.
    let (f, a, owner) = a_claim_made(b, lease, "killed").await;
    let during = f.one(&a).await;
    assert_own(&during, &a, Outcome::Duplicate, Write::Await);
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let retry = f.one(&a).await;
    assert_own(&retry, &a, Outcome::Duplicate, Write::Create);
    assert_eq!(retry.snapshot.resource, owner.snapshot.resource);
    f.commit(&retry.key).await;
    let after = f.one(&a).await;
    assert_own(&after, &a, Outcome::Duplicate, Write::Update);
    assert_eq!(after.snapshot.occurrence_count, 4);
}

async fn adopting_an_existing_resource_keeps_its_name_and_count(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("adopt");
    let a = claim(&ns, "a");
    // The store does not know the namespace: look in the sink first.
    let lookup = f.one(&unchecked(&a)).await;
    assert_eq!(lookup.write, Write::Lookup, "{lookup:?}");
    assert_eq!(f.snapshot(&lookup.key).await, None, "nothing recorded");
    // The sink has the incident's resource: adopt it.
    let name = format!("rr-{}-{}", &a.fingerprint[..16], base36(1_000));
    let existing = signalgate_sidecar::store::Snapshot {
        resource: name.clone(),
        first_seen_ms: 1_000,
        last_seen_ms: 2_000,
        occurrence_count: 5,
        storm: None,
        moved_to: None,
    };
    let adopted = f
        .store
        .adopt(&a.namespace, &a.fingerprint, &existing)
        .await
        .expect("adopt")
        .expect("a fingerprint claim");
    assert_eq!(adopted.write, Write::Update);
    let adopted = adopted.snapshot;
    assert_eq!(adopted.resource, name);
    assert_eq!(adopted.first_seen_ms, 1_000);
    assert_eq!(adopted.occurrence_count, 6);
    // Adopted means committed: repeats are plain duplicates of that resource.
    let again = f.one(&unchecked(&a)).await;
    assert_own(&again, &a, Outcome::Duplicate, Write::Update);
    assert_eq!(again.snapshot.resource, name);
    assert_eq!(again.snapshot.occurrence_count, 7);
    assert_eq!(
        f.poll(&lookup.key).await,
        ClaimState::Committed { moved_to: None }
    );
    // A second request that found it too: counted in what the store holds.
    let twice = f
        .store
        .adopt(&a.namespace, &a.fingerprint, &existing)
        .await
        .expect("adopt")
        .expect("a fingerprint claim");
    assert_eq!(twice.write, Write::Update);
    assert_eq!(twice.snapshot.resource, name);
    assert_eq!(twice.snapshot.occurrence_count, 8);
}

/// A fingerprint repeated within one decide (Redis: one script call, which
/// writes a repeated record once, at the end) is counted signal by signal,
/// exactly as separate decides would count it, and every repeat keeps the
/// record alive for the full window.
async fn repeats_within_one_decide_count_in_order(b: Backend) {
    let ttl = Duration::from_millis(800);
    let f = b.store(short_window(ttl)).await;
    let ns = namespace("repeat");
    let (a, c) = (claim(&ns, "a"), claim(&ns, "c"));
    let ds = f
        .decide(&[a.clone(), a.clone(), c.clone(), a.clone(), c.clone()])
        .await;
    assert_own(&ds[0], &a, Outcome::Created, Write::Create);
    assert_own(&ds[1], &a, Outcome::Duplicate, Write::Await);
    assert_own(&ds[2], &c, Outcome::Created, Write::Create);
    assert_own(&ds[3], &a, Outcome::Duplicate, Write::Await);
    assert_own(&ds[4], &c, Outcome::Duplicate, Write::Await);
    let counts: Vec<u64> = ds.iter().map(|d| d.snapshot.occurrence_count).collect();
    assert_eq!(counts, [1, 2, 1, 3, 2]);
    for (d, first) in [(&ds[1], &ds[0]), (&ds[3], &ds[0]), (&ds[4], &ds[2])] {
        assert_eq!(d.snapshot.resource, first.snapshot.resource);
        assert_eq!(d.snapshot.first_seen_ms, first.snapshot.first_seen_ms);
    }
    f.commit(&ds[0].key).await;
    f.commit(&ds[2].key).await;
    assert_eq!(f.snapshot(&ds[0].key).await.expect("a").occurrence_count, 3);

    // Known records repeated: counted on from what the store held, and kept
    // alive by repeats every 200 ms for three times the TTL.
    let started = Instant::now();
    let mut n = 3;
    while started.elapsed() < ttl * 3 {
        let ds = f.decide(&[a.clone(), c.clone(), a.clone()]).await;
        for d in &ds {
            assert_eq!(d.outcome, Outcome::Duplicate, "{d:?}");
            assert_eq!(d.write, Write::Update, "{d:?}");
        }
        assert_eq!(ds[0].snapshot.occurrence_count, n + 1);
        assert_eq!(ds[2].snapshot.occurrence_count, n + 2);
        assert_eq!(ds[2].snapshot.resource, ds[0].snapshot.resource);
        assert_eq!(ds[2].snapshot.last_seen_ms, ds[0].snapshot.last_seen_ms);
        n += 2;
        let held = f.snapshot(&ds[0].key).await.expect("still known");
        assert_eq!(held.occurrence_count, n);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(n >= 13, "only {n} sightings");
}

async fn new_fingerprints_are_looked_up_while_the_namespace_is_cold(b: Backend) {
    let ttl = Duration::from_millis(600);
    let f = b
        .store(Settings {
            dedup_ttl: ttl,
            storm_threshold: 1,
            storm_window: ttl,
            ..settings()
        })
        .await;
    let ns = namespace("cold");
    let (a, c, d) = (claim(&ns, "a"), claim(&ns, "c"), claim(&ns, "d"));
    // Nothing known of the namespace: every new fingerprint is looked up,
    // and lookups count nowhere, so re-sent live incidents never look like
    // a storm (the threshold here is 1).
    let ds = f
        .decide(&[unchecked(&a), unchecked(&c), unchecked(&d)])
        .await;
    for d in &ds {
        assert_eq!(d.write, Write::Lookup, "{d:?}");
    }
    let other = f
        .one(&unchecked(&claim(&namespace("cold-other"), "a")))
        .await;
    assert_eq!(
        other.write,
        Write::Lookup,
        "each namespace has its own memory"
    );
    let existing = |c: &Claim| signalgate_sidecar::store::Snapshot {
        resource: format!("rr-{}-{}", &c.fingerprint[..16], base36(1_000)),
        first_seen_ms: 1_000,
        last_seen_ms: 2_000,
        occurrence_count: 1,
        storm: None,
        moved_to: None,
    };
    f.store
        .adopt(&a.namespace, &a.fingerprint, &existing(&a))
        .await
        .expect("adopt a");
    f.store
        .adopt(&c.namespace, &c.fingerprint, &existing(&c))
        .await
        .expect("adopt c");
    // d has no resource: decided as absent, it is the window's first new one.
    let created = f.one(&d).await;
    assert_own(&created, &d, Outcome::Created, Write::Create);
    f.commit(&created.key).await;
    let started = Instant::now();
    // Known fingerprints are never looked up.
    let known = f.one(&unchecked(&a)).await;
    assert_own(&known, &a, Outcome::Duplicate, Write::Update);
    // Keep it busy for a whole window: then it knows every live incident.
    while started.elapsed() < ttl + Duration::from_millis(100) {
        f.one(&unchecked(&a)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = claim(&ns, "e");
    assert_own(
        &f.one(&unchecked(&e)).await,
        &e,
        Outcome::Created,
        Write::Create,
    );
    // Quiet for longer than a window: the store still knows it (its memory
    // is intact), so no lookup.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let g = claim(&ns, "g");
    let quiet = f.one(&unchecked(&g)).await;
    assert_eq!(quiet.write, Write::Create, "{quiet:?}");
}

async fn a_resource_deleted_from_the_sink_is_forgotten(b: Backend) {
    let f = b
        .store(Settings {
            storm_threshold: 2,
            ..settings()
        })
        .await;
    let ns = namespace("forget");
    let forget = |key: ClaimKey, name: String| {
        let store = f.store.clone();
        async move { store.forget(&key, &name).await.expect("forget") }
    };
    let a = claim(&ns, "a");
    let first = f.one(&a).await;
    // Pending: someone is creating it, nothing to forget.
    assert!(!forget(first.key.clone(), first.snapshot.resource.clone()).await);
    f.commit(&first.key).await;
    // Another resource's name: left alone.
    assert!(!forget(first.key.clone(), "rr-other".into()).await);
    assert_own(&f.one(&a).await, &a, Outcome::Duplicate, Write::Update);
    assert!(forget(first.key.clone(), first.snapshot.resource.clone()).await);
    assert_eq!(f.snapshot(&first.key).await, None);
    // The next sighting is a new incident, with a claim to create.
    let again = f.one(&a).await;
    assert_own(&again, &a, Outcome::Created, Write::Create);
    assert_eq!(again.snapshot.occurrence_count, 1);

    // A storm resource deleted: its members are new signals again.
    let ds = f.decide(&[claim(&ns, "b"), claim(&ns, "c")]).await;
    let storm = assert_storm(&ds[1], Outcome::StormStarted, Write::Create);
    f.commit(&ds[1].key).await;
    assert_eq!(f.one(&claim(&ns, "c")).await.outcome, Outcome::Duplicate);
    assert!(forget(ds[1].key.clone(), storm.clone()).await);
    assert_eq!(f.snapshot(&ds[1].key).await, None);
    let member = f.one(&claim(&ns, "c")).await;
    assert_ne!(member.outcome, Outcome::Duplicate, "{member:?}");
}

async fn a_running_storm_found_in_the_sink_is_adopted(b: Backend) {
    let window = Duration::from_millis(300);
    let f = b
        .store(Settings {
            storm_threshold: 2,
            storm_window: window,
            ..settings()
        })
        .await;
    let now = now_ms();
    let found = |name: &str, started_ms: i64, ends_ms: i64| Snapshot {
        resource: name.to_string(),
        first_seen_ms: started_ms,
        last_seen_ms: now - 100,
        occurrence_count: 50,
        storm: Some(StormSnapshot {
            alert_count: 40,
            affected: vec!["Pod/a".into(), "Pod/b".into()],
            affected_overflow: 3,
            started_ms,
            ends_ms,
        }),
        moved_to: None,
    };
    let adopt = |ns: &str, existing: Snapshot| {
        let store = f.store.clone();
        let ns = ns.to_string();
        async move { store.adopt_storm(&ns, &existing).await.expect("adopt") }
    };

    // A storm past its end is not adopted, however recently it was seen
    // (its members' repeats do not extend it).
    let ns = namespace("adopt-storm");
    let ended = found("storm-0123456789ab-old", now - 120_000, now - 1_000);
    assert!(!adopt(&ns, ended).await);
    // A running one is; new signals then join it, counted on from its counters.
    let name = "storm-0123456789ab-run";
    let running = found(name, now - 10_000, now + 60_000);
    assert!(adopt(&ns, running.clone()).await);
    let ds = f
        .decide(&[claim_on(&ns, "x", "Pod/b"), claim_on(&ns, "y", "Pod/c")])
        .await;
    for d in &ds {
        assert_eq!(
            (d.outcome, d.write),
            (Outcome::StormAggregated, Write::Update),
            "{d:?}"
        );
        assert_eq!(d.snapshot.resource, name);
    }
    let snap = f.snapshot(&ds[1].key).await.expect("storm snapshot");
    assert_eq!(snap.occurrence_count, 52);
    assert_eq!(snap.first_seen_ms, now - 10_000);
    let storm = snap.storm.expect("storm counters");
    assert_eq!(storm.alert_count, 42);
    assert_eq!(storm.affected, vec!["Pod/a", "Pod/b", "Pod/c"]);
    assert_eq!(storm.affected_overflow, 3);
    assert_eq!(storm.ends_ms, now + 60_000);
    // While it runs, another storm resource found in the sink is not
    // adopted; the same one again is merged (nothing moves back).
    let other = found("storm-0123456789ab-two", now - 5_000, now + 60_000);
    assert!(!adopt(&ns, other).await);
    assert!(adopt(&ns, running).await);
    let again = f.snapshot(&ds[1].key).await.expect("storm snapshot");
    assert_eq!(again.occurrence_count, 52);
    assert_eq!(again.storm.map(|s| s.alert_count), Some(42));

    // A storm the store holds in an older state (restored from a snapshot:
    // ended for the store, running in the sink) is merged, not refused.
    let ns = namespace("adopt-stale");
    let ds = f
        .decide(&[claim(&ns, "a"), claim(&ns, "b"), claim(&ns, "c")])
        .await;
    let stale = assert_storm(&ds[2], Outcome::StormStarted, Write::Create);
    f.commit(&ds[2].key).await;
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let now = now_ms();
    let mut newer = found(&stale, now - 5_000, now + 60_000);
    newer.last_seen_ms = now;
    assert!(adopt(&ns, newer).await);
    let d = f.one(&claim_on(&ns, "d", "Pod/d")).await;
    assert_eq!(
        (d.outcome, d.write),
        (Outcome::StormAggregated, Write::Update),
        "{d:?}"
    );
    assert_eq!(d.snapshot.resource, stale);
    assert_eq!(d.snapshot.storm.map(|s| s.alert_count), Some(41));
    // Merged, not overwritten: the store's start and its affected value
    // (Pod/c, of the member that started it) are kept.
    let snap = f.snapshot(&d.key).await.expect("storm snapshot");
    assert_eq!(snap.first_seen_ms, ds[2].snapshot.first_seen_ms);
    assert_eq!(
        snap.storm.map(|s| s.affected),
        Some(vec![
            "Pod/a".into(),
            "Pod/b".into(),
            "Pod/c".into(),
            "Pod/d".into()
        ])
    );
}

async fn storm_claims_follow_the_protocol(b: Backend) {
    let lease = Duration::from_millis(400);
    let f = b
        .store(Settings {
            storm_threshold: 1,
            claim_lease: lease,
            ..settings()
        })
        .await;
    let ns = namespace("stormclaim");
    let c = |s: &str| claim(&ns, s);
    let ds = f.decide(&[c("a"), c("b"), c("c")]).await;
    let name = assert_storm(&ds[1], Outcome::StormStarted, Write::Create);
    assert!(!ds[1].retakes_claim());
    assert_storm(&ds[2], Outcome::StormAggregated, Write::Await);
    let key = ds[1].key.clone();
    assert_eq!(f.poll(&key).await, ClaimState::Pending);

    // The storm's owner gives up: the next member takes the claim at once.
    f.release(&key).await;
    let d = f.one(&c("d")).await;
    assert_eq!(
        assert_storm(&d, Outcome::StormAggregated, Write::Create),
        name
    );
    assert!(d.retakes_claim(), "the owner may have written it");
    // ... and never commits: after the lease a poller owns it.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert_eq!(f.poll(&key).await, ClaimState::Owned);
    assert_eq!(f.poll(&key).await, ClaimState::Pending);
    f.commit(&key).await;
    assert_eq!(f.poll(&key).await, ClaimState::Committed { moved_to: None });
    let e = f.one(&c("e")).await;
    assert_eq!(
        assert_storm(&e, Outcome::StormAggregated, Write::Update),
        name
    );
    let again = f.one(&c("c")).await;
    assert_eq!(
        assert_storm(&again, Outcome::Duplicate, Write::Update),
        name
    );
    let snap = f.snapshot(&key).await.expect("storm");
    assert_eq!(snap.storm.map(|s| s.alert_count), Some(4));
    assert_eq!(snap.occurrence_count, 5);
    assert_eq!(
        f.poll(&ClaimKey::Storm {
            namespace: ns.clone(),
            name: "storm-000000000000-0".into()
        })
        .await,
        ClaimState::Gone
    );
}

async fn every_key_expires(b: Backend) {
    let f = b
        .store(Settings {
            dedup_ttl: Duration::from_millis(600),
            storm_threshold: 2,
            storm_window: Duration::from_millis(500),
            storm_max_duration: Duration::from_millis(800),
            claim_lease: Duration::from_millis(300),
            storm_max_affected: 4,
        })
        .await;
    let ns = namespace("expire");
    let claims: Vec<Claim> = (0..10).map(|i| claim(&ns, &format!("k{i}"))).collect();
    let ds = f.decide(&claims).await;
    assert_eq!(count(&ds, Outcome::StormAggregated), 7);
    let done: Vec<(ClaimKey, Option<String>)> = ds.iter().map(|d| (d.key.clone(), None)).collect();
    f.store.commit(&done).await.expect("commit");
    let live = f.keys(&ns);
    assert!(!live.is_empty());
    // Every key has a TTL.
    assert!(live.iter().all(|(_, ttl)| *ttl > 0), "{live:?}");
    if b != Backend::Memory {
        // 10 fingerprints + window + storms + affected + expiry index + warm
        // marker and its origin.
        assert_eq!(live.len(), 16, "{live:?}");
        assert_eq!(f.window_size(&ns), Some(2));
    }
    // The warm marker and its origin live for WARM_MARKER_TTL (two small
    // keys a namespace).
    let marker = format!("sg:{{{ns}}}:m");
    let origin = format!("sg:{{{ns}}}:o");
    for (_, ttl) in live.iter().filter(|(k, _)| *k == marker || *k == origin) {
        assert!(
            *ttl > 600_000 && *ttl <= WARM_MARKER_TTL.as_millis() as i64,
            "{ttl}"
        );
    }
    // Nothing else outlives the longest window (storm end, dedup, lease).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live: Vec<_> = f
            .keys(&ns)
            .into_iter()
            .filter(|(k, _)| *k != marker && *k != origin)
            .collect();
        if live.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still there: {live:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Redis only.

/// A store with a short timeout on a private server that this test stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_recovers_without_a_new_store() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(500);
    let store = RedisStore::connect(&server.url(), settings(), timeout)
        .await
        .expect("connect");
    let ns = namespace("outage");
    let d = store.decide(&[claim(&ns, "a")]).await.expect("decide");
    assert_eq!(d[0].outcome, Outcome::Created);
    store.ping().await.expect("ping");

    // A server that does not answer: a timeout, within the timeout.
    server.cli(&["CLIENT", "PAUSE", "1500", "ALL"]);
    let t = Instant::now();
    let r = store.decide(&[claim(&ns, "paused")]).await;
    let waited = t.elapsed();
    assert!(matches!(r, Err(StoreError::Timeout(_))), "{r:?}");
    assert!(waited < timeout + Duration::from_millis(400), "{waited:?}");
    server.cli(&["CLIENT", "UNPAUSE"]);

    // A server that is gone: an error, quickly.
    server.stop();
    for _ in 0..3 {
        let t = Instant::now();
        let r = store.decide(&[claim(&ns, "b")]).await;
        let waited = t.elapsed();
        assert!(r.is_err(), "{r:?}");
        assert!(waited < timeout + Duration::from_millis(400), "{waited:?}");
        assert!(store.ping().await.is_err());
    }

    // Back (empty, script cache gone): the same store recovers on its own.
    server.start_again();
    let t = Instant::now();
    let d = loop {
        match store.decide(&[claim(&ns, "a")]).await {
            Ok(d) => break d,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(15), "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!("recovered {:?} after the restart", t.elapsed());
    assert_eq!(d[0].outcome, Outcome::Created, "Redis came back empty");
    store.ping().await.expect("ping");
}

/// Two stores (two connections, like two sidecar processes) race.
async fn two_stores_race(url: &str) {
    let one = Arc::new(redis_store(url, settings()).await);
    let two = Arc::new(redis_store(url, settings()).await);
    let ns = namespace("race");
    let claims: Vec<Claim> = (0..100).map(|i| claim(&ns, &format!("r{i}"))).collect();
    let mut tasks = Vec::new();
    for c in &claims {
        for store in [&one, &two] {
            let store = store.clone();
            let c = c.clone();
            tasks.push(tokio::spawn(async move { store.decide(&[c]).await }));
        }
    }
    let mut by_fp: HashMap<String, Vec<Decision>> = HashMap::new();
    for t in tasks {
        let d = t.await.expect("task").expect("decide").remove(0);
        let ClaimKey::Fingerprint { fingerprint, .. } = &d.key else {
            panic!("{d:?}");
        };
        by_fp.entry(fingerprint.clone()).or_default().push(d);
    }
    assert_eq!(by_fp.len(), 100);
    for ds in by_fp.values() {
        assert_eq!(ds.iter().filter(|d| d.write == Write::Create).count(), 1);
        assert_eq!(count(ds, Outcome::Created), 1);
        assert_eq!(count(ds, Outcome::Duplicate), 1);
    }

    // The same signal, 50 times from each store.
    let same = claim(&ns, "same");
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            let c = same.clone();
            tokio::spawn(async move { store.decide(&[c]).await })
        })
        .collect();
    let mut ds = Vec::new();
    for t in tasks {
        ds.push(t.await.expect("task").expect("decide").remove(0));
    }
    assert_eq!(ds.iter().filter(|d| d.write == Write::Create).count(), 1);
    assert_eq!(count(&ds, Outcome::Duplicate), 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_race_on_standalone() {
    two_stores_race(&RedisServer::shared().url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_race_on_cluster() {
    two_stores_race(&RedisCluster::shared().url()).await;
}

fn cmdstat_calls(info: &str, command: &str) -> u64 {
    parse_info(info)
        .into_iter()
        .find(|(k, _)| k == &format!("cmdstat_{command}"))
        .and_then(|(_, v)| {
            v.split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A private Redis and a store on it that has connected and loaded the
/// decide script, so the commands a test counts are its own.
async fn private_warm_store() -> (RedisServer, RedisStore) {
    let server = RedisServer::start();
    let store = redis_store(&server.url(), settings()).await;
    store
        .decide(&[claim(&namespace("warm"), "w")])
        .await
        .expect("warm-up");
    (server, store)
}

/// One `decide` = one EVALSHA per namespace (at most 64 signals a call),
/// nothing else, in one pipeline; replies come back in claim order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_decide_is_one_pipeline_of_script_calls() {
    let (server, store) = private_warm_store().await;
    // 100 claims of one namespace (two calls: 64 + 36) interleaved with 30
    // of another (one call).
    let (ns, other) = (namespace("trip"), namespace("trip-other"));
    let claims: Vec<Claim> = (0..130)
        .map(|i| {
            if i % 13 < 10 {
                claim(&ns, &format!("t{i}"))
            } else {
                claim(&other, &format!("t{i}"))
            }
        })
        .collect();

    // Socket reads and writes on the server: one INFO call costs some of
    // its own, measured first without a decide in between.
    let measure = |server: &RedisServer| {
        let info = parse_info(&server.cli(&["INFO", "stats"]));
        let field = |name: &str| -> i64 {
            info.iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(|| panic!("INFO stats has no {name}"))
        };
        (
            field("total_reads_processed"),
            field("total_writes_processed"),
        )
    };
    let (r0, w0) = measure(&server);
    let (r1, w1) = measure(&server);
    let (noise_r, noise_w) = (r1 - r0, w1 - w0);
    let before = server.cli(&["INFO", "commandstats"]);
    let (r2, w2) = measure(&server);
    let ds = store.decide(&claims).await.expect("decide");
    let (r3, w3) = measure(&server);
    let after = server.cli(&["INFO", "commandstats"]);
    assert_eq!(count(&ds, Outcome::Created), 130);
    // The resource name comes from the script: it proves the reply matched.
    for (d, c) in ds.iter().zip(&claims) {
        assert_own(d, c, Outcome::Created, Write::Create);
    }
    let calls = cmdstat_calls(&after, "evalsha") - cmdstat_calls(&before, "evalsha");
    assert_eq!(calls, 3, "EVALSHA calls");
    // Unpipelined calls would need a read and a write each on the server.
    let reads = (r3 - r2) - noise_r;
    let writes = (w3 - w2) - noise_w;
    eprintln!("decide of 130 claims: {reads} socket reads, {writes} writes on the server");
    assert!(reads <= 4, "{reads} reads: not one pipeline");
    assert!(writes <= 4, "{writes} writes: not one pipeline");

    // Every command a client sends for another 50 (script-internal ones
    // show `lua` as their client in MONITOR).
    let ns = namespace("trip2");
    let claims: Vec<Claim> = (0..50).map(|i| claim(&ns, &format!("t{i}"))).collect();
    let monitor = server.monitor();
    server.cli(&["ECHO", "trip-start"]);
    let ds = store.decide(&claims).await.expect("decide");
    server.cli(&["ECHO", "trip-end"]);
    assert_eq!(count(&ds, Outcome::Created), 50);
    let again = store.decide(&claims).await.expect("decide");
    assert!(again.iter().all(|d| d.outcome == Outcome::Duplicate));
    let lines = monitor.wait_for_line("trip-end");
    let start = lines
        .iter()
        .position(|l| l.contains("trip-start"))
        .expect("start marker");
    let sent: Vec<&String> = lines[start + 1..lines.len() - 1]
        .iter()
        .filter(|l| !l.contains(" lua]"))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert!(sent.iter().all(|l| l.contains("\"EVALSHA\"")), "{sent:#?}");
}

/// Concurrent decides share script calls (the store batches them): 100
/// requests (one claim each, every tenth with a second one) cost a handful of
/// EVALSHA, and each still gets its own decision: one creator per
/// fingerprint, every sighting counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decides_share_script_calls() {
    let (server, store) = private_warm_store().await;
    let ns = namespace("share");
    let (a, other) = (claim(&ns, "a"), claim(&namespace("share-other"), "b"));
    let before = server.cli(&["INFO", "commandstats"]);
    let requests: Vec<Vec<Claim>> = (0..100)
        .map(|i| {
            if i % 10 == 9 {
                vec![other.clone(), a.clone()]
            } else {
                vec![a.clone()]
            }
        })
        .collect();
    let answers =
        futures::future::join_all(requests.iter().map(|claims| store.decide(claims))).await;
    let after = server.cli(&["INFO", "commandstats"]);
    let mut creates = 0;
    let mut counts_of_a = std::collections::BTreeSet::new();
    for (claims, answer) in requests.iter().zip(answers) {
        let ds = answer.expect("decide");
        assert_eq!(ds.len(), claims.len());
        for (d, c) in ds.iter().zip(claims) {
            assert_eq!(d.key, fp_key(c), "{d:?}");
            creates += usize::from(d.write == Write::Create);
            if *c == a {
                counts_of_a.insert(d.snapshot.occurrence_count);
            }
        }
    }
    assert_eq!(creates, 2, "one creator per fingerprint");
    assert_eq!(
        counts_of_a,
        (1..=100).collect(),
        "each sighting counted once"
    );
    let snap = store
        .snapshot(&[fp_key(&a)])
        .await
        .expect("snapshot")
        .pop()
        .flatten()
        .expect("a is known");
    assert_eq!(snap.occurrence_count, 100);
    let calls = cmdstat_calls(&after, "evalsha") - cmdstat_calls(&before, "evalsha");
    eprintln!("100 concurrent decides: {calls} EVALSHA");
    // Typically 6 or 7; a loaded machine splits the batches further, and
    // unbatched would be 100 or more.
    assert!(
        (2..=20).contains(&calls),
        "{calls} EVALSHA for 100 requests"
    );
}

/// On a cluster requests are not batched together: with one master not
/// answering, a request for a namespace on another master is answered at
/// once, while those with a signal on the silent one fail within the timeout
/// (and all recover when it answers again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_cluster_node_holds_up_only_its_own_requests() {
    let cluster = RedisCluster::start(3);
    let timeout = Duration::from_millis(500);
    let store = RedisStore::connect(&cluster.url(), settings(), timeout)
        .await
        .expect("connect");
    // Two namespaces whose keys live on different masters.
    let node_of = |ns: &str| cluster.master_port_for_key(&format!("sg:{{{ns}}}:w"));
    let slow = namespace("slow-node");
    let fast = (0..100)
        .map(|i| namespace(&format!("fast-node-{i}")))
        .find(|ns| node_of(ns) != node_of(&slow))
        .expect("a namespace on another master");
    for ns in [&slow, &fast] {
        store.decide(&[claim(ns, "warm")]).await.expect("warm-up");
    }
    let paused = cluster
        .ports()
        .iter()
        .position(|p| *p == node_of(&slow))
        .expect("node");
    cluster.cli(paused, &["CLIENT", "PAUSE", "3000", "ALL"]);

    let on_fast = claim(&fast, "f");
    let only_slow = [claim(&slow, "s")];
    let both = [on_fast.clone(), claim(&slow, "s2")];
    let only_fast = [claim(&fast, "g")];
    let started = Instant::now();
    let (held, mixed, free) = tokio::join!(store.decide(&only_slow), store.decide(&both), async {
        let r = store.decide(&only_fast).await;
        (r, started.elapsed())
    });
    let (free, free_took) = free;
    let free = free.expect("a request on the other master");
    assert_eq!(free[0].outcome, Outcome::Created);
    assert!(free_took < timeout / 2, "held up for {free_took:?}");
    assert!(held.is_err(), "{held:?}");
    assert!(mixed.is_err(), "{mixed:?}");
    assert!(started.elapsed() < timeout * 3, "{:?}", started.elapsed());

    cluster.cli(paused, &["CLIENT", "UNPAUSE"]);
    let t = Instant::now();
    let back = loop {
        match store.decide(&[claim(&slow, "after")]).await {
            Ok(d) => break d,
            Err(e) => assert!(t.elapsed() < Duration::from_secs(15), "no recovery: {e}"),
        }
    };
    assert_eq!(back[0].outcome, Outcome::Created);
}

/// A namespace the store has known for a dedup window, on `store`.
async fn warm_namespace(store: &RedisStore, case: &str, ttl: Duration) -> String {
    let ns = namespace(case);
    store.decide(&[claim(&ns, "first")]).await.expect("decide");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let d = store
        .decide(&[unchecked(&claim(&ns, "warm"))])
        .await
        .expect("decide");
    assert_eq!(d[0].write, Write::Create, "warm: {d:?}");
    ns
}

/// Data restored from an older snapshot (or a promoted replica that lagged)
/// brings back the warm marker with the origin of a server, or of data, that
/// is gone: the namespace is cold again, so new fingerprints are looked up in
/// the sink. The origin is checked lazily, within a call too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_marker_from_another_origin_makes_the_namespace_cold_again() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(300);
    let store = redis_store(&server.url(), short_window(ttl)).await;
    let origin = |ns: &str| server.cli(&["GET", &format!("sg:{{{ns}}}:o")]);
    let here = format!(
        "{}:{}",
        server.info("server", "run_id").expect("run_id"),
        server
            .info("replication", "master_replid")
            .expect("master_replid")
    );

    // Another server's origin: a duplicate is decided as usual, then the
    // call's first new fingerprint finds the origin foreign, and the
    // namespace is cold for the rest of the call and after.
    let ns = warm_namespace(&store, "restored", ttl).await;
    assert_eq!(origin(&ns).trim(), here);
    server.cli(&[
        "SET",
        &format!("sg:{{{ns}}}:o",),
        "0123abcd:4567ef",
        "PX",
        "600000",
    ]);
    let warm = claim(&ns, "warm");
    let d = store
        .decide(&[
            unchecked(&warm),
            unchecked(&claim(&ns, "after-1")),
            unchecked(&claim(&ns, "after-2")),
        ])
        .await
        .expect("decide");
    assert_eq!(d[0].outcome, Outcome::Duplicate, "{d:?}");
    assert_eq!(
        [d[1].write, d[2].write],
        [Write::Lookup, Write::Lookup],
        "{d:?}"
    );
    assert_eq!(origin(&ns).trim(), here, "the memory began again here");

    // An origin-less marker (written by an older sidecar): the same. A
    // signal the sink was searched for is decided without the check; the
    // next one in the call is checked.
    let ns = warm_namespace(&store, "origin-less", ttl).await;
    server.cli(&["DEL", &format!("sg:{{{ns}}}:o")]);
    let d = store
        .decide(&[claim(&ns, "searched"), unchecked(&claim(&ns, "next"))])
        .await
        .expect("decide");
    assert_eq!(d[0].write, Write::Create, "{d:?}");
    assert_eq!(d[1].write, Write::Lookup, "{d:?}");
    assert_eq!(origin(&ns).trim(), here);
}

/// Where INFO is not allowed (renamed away), markers are not checked
/// against the server: a warm namespace stays warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_info_a_warm_namespace_decides_as_before() {
    let server = RedisServer::start_with(&["--rename-command", "INFO", ""]);
    let ttl = Duration::from_millis(300);
    let store = redis_store(&server.url(), short_window(ttl)).await;
    store.ping().await.expect("ready without INFO");
    let ns = warm_namespace(&store, "no-info", ttl).await;
    let d = store
        .decide(&[unchecked(&claim(&ns, "next"))])
        .await
        .expect("decide");
    assert_eq!(d[0].write, Write::Create, "{d:?}");
}

/// A Redis without GETEX (as before 6.2; here the command is renamed away)
/// is never ready, and says why; nothing is decided on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_getex_is_refused_with_the_version_it_needs() {
    let server = RedisServer::start_with(&["--rename-command", "GETEX", ""]);
    let store = redis_store(&server.url(), settings()).await;
    let err = store
        .ping()
        .await
        .expect_err("ready on a Redis without GETEX");
    assert!(err.to_string().contains("Redis 6.2 or newer"), "{err}");
    let ns = namespace("old-redis");
    assert!(store.decide(&[claim(&ns, "a")]).await.is_err());
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "0", "nothing written");

    // The same store code on a current Redis is ready.
    let current = RedisServer::start();
    let store = redis_store(&current.url(), settings()).await;
    store.ping().await.expect("ready");
}

/// A flushed script cache: every call runs exactly once, then on reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noscript_reloads_and_runs_every_call_once() {
    let server = RedisServer::start();
    let store = redis_store(&server.url(), settings()).await;
    let ns = namespace("noscript");
    let claims: Vec<Claim> = (0..20).map(|i| claim(&ns, &format!("n{i}"))).collect();
    for round in 1..=3u64 {
        server.cli(&["SCRIPT", "FLUSH"]);
        let ds = store.decide(&claims).await.expect("decide");
        assert!(
            ds.iter().all(|d| d.snapshot.occurrence_count == round),
            "{ds:?}"
        );
    }
    let keys: Vec<ClaimKey> = claims.iter().map(fp_key).collect();
    server.cli(&["SCRIPT", "FLUSH"]);
    let snaps = store.snapshot(&keys).await.expect("snapshot");
    assert!(snaps
        .iter()
        .all(|s| s.as_ref().map(|s| s.occurrence_count) == Some(3)));
    server.cli(&["SCRIPT", "FLUSH"]);
    let done: Vec<(ClaimKey, Option<String>)> = keys.iter().map(|k| (k.clone(), None)).collect();
    store.commit(&done).await.expect("commit");
    server.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(
        store.poll(&keys[0]).await.expect("poll"),
        ClaimState::Committed { moved_to: None }
    );
}

/// On a cluster, a batch spanning namespaces on several masters goes to
/// each master (one pipeline per slot), one script call per namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_batches_are_routed_by_slot() {
    let cluster = RedisCluster::start(3);
    let store = redis_store(&cluster.url(), settings()).await;
    assert!(store.is_cluster());
    let ports = cluster.ports();
    // Three namespaces on three different masters.
    let mut namespaces: Vec<(String, u16)> = Vec::new();
    let mut i = 0;
    while namespaces.len() < 3 {
        let ns = namespace(&format!("route{i}"));
        i += 1;
        let port = cluster.master_port_for_key(&format!("sg:{{{ns}}}:w"));
        if namespaces.iter().all(|(_, p)| *p != port) {
            namespaces.push((ns, port));
        }
        assert!(i < 500);
    }
    let mut claims = Vec::new();
    for n in 0..10 {
        for (ns, _) in &namespaces {
            claims.push(claim(ns, &format!("c{n}")));
        }
    }
    let stats = |i: usize| cmdstat_calls(&cluster.cli(i, &["INFO", "commandstats"]), "evalsha");
    // Load the script everywhere first, so the counts below are exact.
    store
        .decide(
            &namespaces
                .iter()
                .map(|(ns, _)| claim(ns, "warm"))
                .collect::<Vec<_>>(),
        )
        .await
        .expect("warm-up");
    let before: Vec<u64> = (0..ports.len()).map(stats).collect();
    let ds = store.decide(&claims).await.expect("decide");
    let after: Vec<u64> = (0..ports.len()).map(stats).collect();
    assert_eq!(count(&ds, Outcome::Created), 30);
    for (d, c) in ds.iter().zip(&claims) {
        assert_eq!(d.key, fp_key(c), "replies are in claim order");
    }
    for (i, port) in ports.iter().enumerate() {
        assert_eq!(
            after[i] - before[i],
            1,
            "EVALSHA on the master at port {port}"
        );
    }
    let again = store.decide(&claims).await.expect("decide");
    assert!(again.iter().all(|d| d.outcome == Outcome::Duplicate));
}

/// A resource written outside its namespace (the sink's fallback namespace)
/// is remembered there: every later decision and snapshot names the place,
/// whether the store learnt it from a commit or from an adoption.
async fn where_a_resource_went_is_remembered_with_it(b: Backend) {
    let f = b
        .store(Settings {
            storm_threshold: 1,
            ..settings()
        })
        .await;
    let ns = namespace("moved");
    let c = |s: &str| claim(&ns, s);
    let moved = |d: &Decision| d.snapshot.moved_to.clone();
    let here = Some("elsewhere".to_string());

    // Its own resource, committed where it went.
    let a = f.one(&c("a")).await;
    assert_own(&a, &c("a"), Outcome::Created, Write::Create);
    assert_eq!(moved(&a), None);
    let waiter = f.one(&c("a")).await;
    assert_eq!((waiter.write, moved(&waiter)), (Write::Await, None));
    f.commit_moved(&a.key, here.as_deref()).await;
    assert_eq!(
        f.poll(&waiter.key).await,
        ClaimState::Committed {
            moved_to: here.clone()
        },
        "a waiter learns where it went"
    );
    if b == Backend::Standalone {
        // What a sidecar of the previous version sharing the store reads:
        // the bare name, and a claim that is not pending.
        let key = format!("sg:{{{ns}}}:f:{}", c("a").fingerprint);
        let server = RedisServer::shared();
        assert_eq!(server.cli(&["HGET", &key, "r"]).trim(), a.snapshot.resource);
        assert_eq!(server.cli(&["HGET", &key, "p"]).trim(), "@elsewhere");
    }
    let ds = f.decide(&[c("a"), c("a")]).await;
    assert!(ds.iter().all(|d| moved(d) == here), "{ds:?}");
    let snap = f.snapshot(&a.key).await.expect("held");
    assert_eq!(snap.moved_to, here);
    let forgot = f
        .store
        .forget(&a.key, &snap.resource)
        .await
        .expect("forget");
    assert!(forgot, "deleted from where it went: forgotten by its name");

    // A storm resource likewise: its members' decisions name the place.
    let ds = f.decide(&[c("b"), c("c")]).await;
    assert_storm(&ds[0], Outcome::StormStarted, Write::Create);
    f.commit_moved(&ds[0].key, here.as_deref()).await;
    assert_eq!(
        f.poll(&ds[1].key).await,
        ClaimState::Committed {
            moved_to: here.clone()
        }
    );
    let d = f.one(&c("d")).await;
    assert_storm(&d, Outcome::StormAggregated, Write::Update);
    assert_eq!(moved(&d), here);
    assert_eq!(f.snapshot(&d.key).await.expect("held").moved_to, here);
    // A storm committed in its own namespace names none.
    let other = namespace("moved");
    let ds = f.decide(&[claim(&other, "a"), claim(&other, "b")]).await;
    f.commit(&ds[1].key).await;
    assert_eq!(moved(&f.one(&claim(&other, "c")).await), None);

    // Adopted from the sink where it is.
    let cold = namespace("moved");
    let e = claim(&cold, "e");
    let existing = signalgate_sidecar::store::Snapshot {
        resource: format!("rr-{}-{}", &e.fingerprint[..16], base36(1_000)),
        first_seen_ms: 1_000,
        last_seen_ms: 2_000,
        occurrence_count: 2,
        storm: None,
        moved_to: here.clone(),
    };
    let adopted = f
        .store
        .adopt(&cold, &e.fingerprint, &existing)
        .await
        .expect("adopt");
    assert_eq!(adopted.and_then(|a| a.snapshot.moved_to), here);
    assert_eq!(moved(&f.one(&e).await), here);
    let now = now_ms();
    let storm = Snapshot {
        resource: "storm-0123456789ab-moved".to_string(),
        first_seen_ms: now - 1_000,
        last_seen_ms: now - 100,
        occurrence_count: 9,
        storm: Some(StormSnapshot {
            alert_count: 9,
            affected: Vec::new(),
            affected_overflow: 0,
            started_ms: now - 1_000,
            ends_ms: now + 60_000,
        }),
        moved_to: here.clone(),
    };
    let key = ClaimKey::Storm {
        namespace: cold.clone(),
        name: storm.resource.clone(),
    };
    let adopted = f.store.adopt_storm(&cold, &storm).await.expect("adopt");
    assert!(adopted);
    let joined = f.one(&claim(&cold, "f")).await;
    assert_eq!(
        (joined.outcome, joined.write, &joined.key),
        (Outcome::StormAggregated, Write::Update, &key)
    );
    assert_eq!(moved(&joined), here);
}

/// Another request claimed the incident between a lookup and its adoption:
/// the store's claim wins, and the adopting signal settles it as a
/// duplicate of it would (wait for it while its lease runs, then take it
/// over), rather than count in a resource that may never be made.
async fn an_adoption_finding_a_claim_made_meanwhile_settles_it_as_a_duplicate_would(b: Backend) {
    let lease = Duration::from_millis(400);
    let (f, a, owner) = a_claim_made(b, lease, "adoptclaimed").await;
    let found = Snapshot {
        resource: format!("rr-{}-{}", &a.fingerprint[..16], base36(1_000)),
        first_seen_ms: 1_000,
        last_seen_ms: 2_000,
        occurrence_count: 5,
        storm: None,
        moved_to: None,
    };
    let adopt = || {
        let store = f.store.clone();
        let (a, found) = (a.clone(), found.clone());
        async move {
            store
                .adopt(&a.namespace, &a.fingerprint, &found)
                .await
                .expect("adopt")
                .expect("its own resource")
        }
    };
    let waits = adopt().await;
    assert_eq!(waits.write, Write::Await);
    assert_eq!(waits.snapshot.resource, owner.snapshot.resource);
    assert_eq!(waits.snapshot.occurrence_count, 2);
    assert_eq!(f.poll(&owner.key).await, ClaimState::Pending);

    // The owner never commits: after its lease, the adoption takes the claim.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let takes = adopt().await;
    assert_eq!(takes.write, Write::Create);
    assert_eq!(takes.snapshot.occurrence_count, 3);
    assert_eq!(
        f.poll(&owner.key).await,
        ClaimState::Pending,
        "its lease now"
    );
    f.commit(&owner.key).await;
    let after = adopt().await;
    assert_eq!(after.write, Write::Update);
    assert_eq!(after.snapshot.resource, owner.snapshot.resource);
    assert_eq!(after.snapshot.occurrence_count, 4);
}
