//! The dedup/storm state: a [`Store`] decides, in one atomic step per signal,
//! whether it is new, a duplicate or part of a storm, and runs the claim
//! protocol; see `docs/design.md`, "The claim protocol", for how and why.

use std::time::Duration;

mod batch;
pub mod memory;
pub mod redis;

/// Tunables of the decision, shared by every store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long a fingerprint stays known after its LAST sighting (every
    /// duplicate refreshes it to the full window), when its signals carry no
    /// firing instance, or after its incident resolved. Default 5 min.
    pub dedup_ttl: Duration,
    /// How long an open incident with a firing instance stays known after
    /// its last signal (`SIGNALGATE_INCIDENT_TTL`). Default 24 h.
    pub incident_ttl: Duration,
    /// Distinct new fingerprints per namespace within `storm_window` that
    /// are still created individually; the next one starts a storm. Default 10.
    pub storm_threshold: u32,
    /// Window for counting distinct new fingerprints, and how long each storm
    /// member extends the storm. Default 1 min.
    pub storm_window: Duration,
    /// A storm never lasts longer than this after it started. Default 5 min.
    pub storm_max_duration: Duration,
    /// Cap on the de-duplicated affected-resource list of a storm; members
    /// beyond it are only counted (`overflow`). Default 100.
    pub storm_max_affected: u32,
    /// Lease of a pending claim: how long other callers wait for its owner to
    /// create the resource before taking the claim over. Default 15 s.
    pub claim_lease: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dedup_ttl: Duration::from_secs(300),
            incident_ttl: Duration::from_secs(24 * 3600),
            storm_threshold: 10,
            storm_window: Duration::from_secs(60),
            storm_max_duration: Duration::from_secs(300),
            storm_max_affected: 100,
            claim_lease: Duration::from_secs(15),
        }
    }
}

/// Who holds a claim: one token per request, made at random
/// ([`Owner::next`]). A pending claim records its owner; commit and release
/// act only on a claim their caller owns, and a claim found pending under
/// the caller's own token (its decide call was resent after a lost reply)
/// is the caller's to create, not another request's to wait for. Token 0
/// (the default) is no request's: it holds no claim as its own and always
/// counts (stores used without requests, as in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Owner(pub u64);

impl Owner {
    /// A fresh token: SipHash of a process-wide counter under this process's
    /// random keys, so tokens differ across requests and (with 64 bits)
    /// across replicas. Never 0.
    pub fn next() -> Owner {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let mut h = KEYS
            .get_or_init(std::collections::hash_map::RandomState::new)
            .build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        Owner(h.finish().max(1))
    }

    /// Whether this request is the one holding a claim whose owner is
    /// `holder` (token 0, no request's, holds nothing).
    pub fn holds(self, holder: Owner) -> bool {
        self.0 != 0 && self == holder
    }
}

/// The delivery a signal came in, as tokens of its window and the window
/// before (see [`crate::delivery`]): every attempt of one delivery (the
/// sender's retries, a call resent by the client) carries the same tokens
/// within a window, so it counts once. 0 is no delivery's: nothing matches
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Delivery {
    pub current: u64,
    pub previous: u64,
}

impl Delivery {
    /// Whether a count made with delivery token `token` was this delivery's.
    pub fn is(self, token: u64) -> bool {
        token != 0 && (token == self.current || token == self.previous)
    }
}

/// One count on a record: the request that made it, which may take it back
/// ([`Store::uncount`]) while no other attempt of its delivery relied on it
/// (then 0), and its delivery (its token of the window it counted in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    pub by: Owner,
    pub delivery: u64,
}

/// The last two counts on a record, the latest first. Two, so that the
/// attempts of two deliveries failing side by side on one record (a
/// highly available sender's twin notifications while the sink is down)
/// can each take back their own count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counted {
    recent: [Count; 2],
}

impl Counted {
    /// A record's first count, by request `owner` of delivery `delivery`.
    pub fn first(owner: Owner, delivery: Delivery) -> Counted {
        Counted {
            recent: [
                Count {
                    by: owner,
                    delivery: delivery.current,
                },
                Count::default(),
            ],
        }
    }

    /// Whether a signal of request `owner`, delivery `delivery`, counts in
    /// the record, updating it. Not if one of the recent counts was this
    /// request's (its decide ran again after a lost reply, or it repeats
    /// the signal), nor another attempt's of the same delivery: that count
    /// then becomes this attempt's too, so neither may take it back (one of
    /// them may have been acknowledged). Token 0 (no request's) always
    /// counts.
    pub fn count(&mut self, owner: Owner, delivery: Delivery) -> bool {
        if owner.0 != 0 {
            if self.recent.iter().any(|c| c.by == owner) {
                return false;
            }
            if let Some(c) = self.recent.iter_mut().find(|c| delivery.is(c.delivery)) {
                c.by = Owner::default();
                return false;
            }
        }
        self.recent = [
            Count {
                by: owner,
                delivery: delivery.current,
            },
            self.recent[0],
        ];
        true
    }

    /// Whether request `owner` may take back a recent count (it made it and
    /// no other attempt relied on it); if so, the record forgets it.
    pub fn take_back(&mut self, owner: Owner) -> bool {
        match self.recent.iter().position(|c| owner.holds(c.by)) {
            Some(0) => self.recent = [self.recent[1], Count::default()],
            Some(_) => self.recent[1] = Count::default(),
            None => return false,
        }
        true
    }
}

/// One signal to decide on: a firing, or a resolution (`resolved_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claim {
    /// The request deciding it: the owner of any claim this decide takes.
    pub owner: Owner,
    /// The delivery it came in: counted once however often it is retried.
    pub delivery: Delivery,
    /// The namespace the resource goes to (the hash tag of every key).
    pub namespace: String,
    /// SHA-256 hex of the signal ([`signalgate_model::signal::Identity::fingerprint`]).
    pub fingerprint: String,
    /// How a storm lists this signal's target, e.g. `Pod/cart-1`.
    pub affected: String,
    /// The firing instance (ms): when this firing started (an alert's
    /// `startsAt`, an event series' first timestamp); 0 if unknown. An
    /// incident is its fingerprint and its firing instance.
    pub instance_ms: i64,
    /// Set for a resolved signal: when it resolved (ms; its `endsAt`, or when
    /// it was received).
    pub resolved_ms: Option<i64>,
    /// The sink was searched for a live resource of this fingerprint (after
    /// a [`Write::Lookup`]) and has none: decide it as new.
    pub absent: bool,
}

/// The outcome reported to the sender and counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// First sighting in the dedup window: a new resource.
    Created,
    /// Known fingerprint (its own resource, or the storm it was aggregated into).
    Duplicate,
    /// This signal started a storm: ONE new storm resource.
    StormStarted,
    /// A new fingerprint aggregated into the namespace's running storm.
    StormAggregated,
    /// A new firing of an incident whose resource the remediation controller
    /// still holds: counted in that resource (set by the lookup, never by decide).
    Absorbed,
    /// A resolution recorded for its open incident (or storm member).
    Resolved,
    /// A resolution of an incident the store does not know: nothing changed.
    ResolvedUnknown,
}

/// Which claim a resource belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClaimKey {
    /// A signal's own resource.
    Fingerprint {
        namespace: String,
        fingerprint: String,
    },
    /// A storm resource, by its resource name.
    Storm { namespace: String, name: String },
}

impl ClaimKey {
    pub fn is_storm(&self) -> bool {
        matches!(self, ClaimKey::Storm { .. })
    }

    pub fn namespace(&self) -> &str {
        match self {
            ClaimKey::Fingerprint { namespace, .. } | ClaimKey::Storm { namespace, .. } => {
                namespace
            }
        }
    }
}

/// What the caller must do with the sink for this signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The caller owns the claim: create the resource, then `commit` (or `release` on failure).
    Create,
    /// The resource exists: update its counts (coalesced).
    Update,
    /// Another caller holds a live lease: `poll` until committed or owned.
    /// (A live lease the caller itself holds is [`Write::Create`]: its
    /// decide ran twice, the first reply lost.)
    Await,
    /// A new fingerprint in a namespace the store has remembered for less
    /// than a dedup window (new to the store, or its data was lost), or
    /// whose firing began before the store's memory of the namespace did
    /// (the data was lost since): its incident may have a live resource, or
    /// be a storm's member, from before. Nothing was recorded:
    /// look in the sink, then [`Store::adopt`] what is there, or decide the
    /// claim again with [`Claim::absent`] set.
    Lookup,
    /// A firing instance the store does not hold for a fingerprint (a new
    /// firing, or one forgotten after the incident TTL) in a warm namespace:
    /// nothing was recorded; as [`Write::Lookup`], but from the sink's own
    /// view (its latest resource and the controller's status decide).
    Review,
    /// Nothing to write: a resolution of an unknown incident, or one already recorded.
    Skip,
}

/// The store's answer for one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub write: Write,
    /// The claim of the resource this signal counts in (its own, or the storm's).
    pub key: ClaimKey,
    /// The state of that resource right after this step (empty for a lookup).
    pub snapshot: Snapshot,
}

/// What [`Store::adopt`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// The counters the store now holds.
    pub snapshot: Snapshot,
    /// What the caller must do with the claim: [`Write::Update`], unless
    /// another request claimed the incident first ([`Write::Await`], or
    /// [`Write::Create`] if that request's lease expired).
    pub write: Write,
}

impl Decision {
    /// The caller owns a claim another request held before (its lease
    /// expired, or it gave the claim back after a failure). That request
    /// may have written the resource before it failed to commit: the create
    /// must find it wherever it went (the sink's fallback namespace too).
    pub fn retakes_claim(&self) -> bool {
        self.write == Write::Create
            && !matches!(self.outcome, Outcome::Created | Outcome::StormStarted)
    }
}

/// How long the store remembers that it knows a namespace (the warm marker,
/// refreshed by every decide; at least the dedup window). While that memory
/// is younger than a dedup window, new fingerprints get [`Write::Lookup`]:
/// the store may have lost the data (Redis restarted empty, a failover
/// without the data, a restart on the memory store), or never had it. Once it
/// spans a window, it knows every incident whose firing began since; one
/// that began before (re-sent after the loss, later than a window) is looked
/// up too. Long, so that a namespace quiet for a while is not looked up
/// again.
pub const WARM_MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// When an incident resolved (`endsAt`) and when that was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub resolved_ms: i64,
    pub received_ms: i64,
}

/// The counters of one resource, as the store holds them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Deterministic resource name, fixed when the claim was made:
    /// `rr-<first 16 hex of fingerprint>-<first_seen_ms in base 36>`, or
    /// `storm-<first 12 hex of sha256(namespace)>-<started_ms in base 36>`.
    pub resource: String,
    /// Store-clock milliseconds since the Unix epoch.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Signals counted in this resource (for a storm: members and their repeats).
    pub occurrence_count: u64,
    /// Present for storm resources.
    pub storm: Option<StormSnapshot>,
    /// The namespace the resource was written to, when not the claim's own
    /// (the sink's fallback namespace: its own did not exist or was being
    /// deleted). Recorded by [`Store::commit`], [`Store::adopt`] and [`Store::adopt_storm`].
    pub moved_to: Option<String>,
    /// The latest firing instance counted (ms; 0 unknown). Not for storms.
    pub instance_ms: i64,
    /// Firing instances counted in the resource (1 at creation). Not for storms.
    pub firings: u64,
    /// The incident's resolution (a storm's: once every member it knows resolved).
    pub resolution: Option<Resolution>,
    /// The resource is in the store's index of unwritten changes: a change
    /// to its counters has not been reported written yet
    /// ([`Store::written`]). Only filled by [`Store::snapshot`].
    pub unwritten: bool,
    /// Its claim is still pending: the resource may not exist yet (its
    /// creator commits it, then whoever counted meanwhile writes the
    /// counters). Only filled by [`Store::snapshot`].
    pub pending: bool,
}

impl Snapshot {
    /// The namespace the resource is in, for a claim of `namespace`.
    pub fn namespace<'a>(&'a self, namespace: &'a str) -> &'a str {
        self.moved_to.as_deref().unwrap_or(namespace)
    }
}

/// What a flush wrote of a resource, for [`Store::written`]: the counters
/// every change that needs writing moves (a count, a count taken back, a
/// member, a resolution, a reopening).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub occurrence_count: u64,
    /// A storm's resolved members (0 for a signal's own resource).
    pub resolved_count: u64,
    pub resolved: bool,
}

impl Written {
    pub fn of(s: &Snapshot) -> Written {
        Written {
            occurrence_count: s.occurrence_count,
            resolved_count: s.storm.as_ref().map_or(0, |st| st.resolved_count),
            resolved: s.resolution.is_some(),
        }
    }
}

/// Storm counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StormSnapshot {
    /// Distinct fingerprints aggregated (the one that started it included).
    pub alert_count: u64,
    /// De-duplicated `Claim::affected` values, at most `storm_max_affected`,
    /// sorted. Only filled by [`Store::snapshot`]; empty in [`Decision`]s.
    pub affected: Vec<String>,
    /// Members whose affected value did not fit in the full list: a listed
    /// value is never counted, an unlisted one once per member fingerprint
    /// carrying it (counting distinct values beyond the cap exactly would
    /// need memory growing with the storm).
    pub affected_overflow: u64,
    pub started_ms: i64,
    /// Until when the storm runs (exclusive): each new member moves it on,
    /// up to the maximum duration; repeats of members do not.
    pub ends_ms: i64,
    /// Members whose resolution was received.
    pub resolved_count: u64,
    /// The storm this one continues (it reached its maximum duration while
    /// the namespace was still storming).
    pub previous: Option<String>,
}

/// The state of a claim, as seen by a caller waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimState {
    /// The resource exists (in `moved_to` if not in its own namespace).
    Committed { moved_to: Option<String> },
    /// Someone else holds a live lease.
    Pending,
    /// The lease had expired: the caller now owns the claim and must create.
    Owned,
    /// The claim is gone (expired): the caller should treat its signal as new.
    Gone,
}

/// A store failure: the request is answered 503 with `Retry-After`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store timed out after {0:?}")]
    Timeout(Duration),
}

/// Dedup and storm state. Implementations: [`memory::MemoryStore`] (single
/// process, the embedded default) and [`redis::RedisStore`] (standalone or
/// cluster). Both pass the same behaviour suite (`tests/tests/store_*.rs`, run
/// against each backend by `tests/src/store_suite.rs`).
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Decides every claim, in order, each atomically; all in one round trip.
    async fn decide(&self, claims: &[Claim]) -> Result<Vec<Decision>, StoreError>;
    /// Marks `owner`'s claims committed (their resources exist), each with
    /// the namespace its resource went to if not its own. Idempotent. A claim
    /// another request took over meanwhile (the lease ran out) is left to
    /// its new owner, which creates the same resource (found, or made) and
    /// commits it where it is.
    async fn commit(
        &self,
        owner: Owner,
        done: &[(ClaimKey, Option<String>)],
    ) -> Result<(), StoreError>;
    /// Gives up `owner`'s leases after a failed create, so the next try
    /// takes them at once. A claim another request took over is left alone.
    async fn release(&self, owner: Owner, keys: &[ClaimKey]) -> Result<(), StoreError>;
    /// After a [`Write::Lookup`] or [`Write::Review`] of `claim` that found
    /// its fingerprint's resource `existing` in the sink (name, first
    /// sighting, count, firings, instance, resolution, where it went):
    /// records it as the fingerprint's committed resource and counts this
    /// signal in it. `absorb`: the resource holds another incident that its
    /// controller is still working on; this firing is counted as a new
    /// firing instance of it (firings + 1, the claim's instance, reopened).
    /// If the store holds the claim's incident by now (another request
    /// adopted or created it first), the signal is counted as a duplicate of
    /// what the store holds, and its claim settled as [`Store::decide`]
    /// would: if another request holds it still, the caller must wait
    /// ([`Write::Await`]) or, its lease having expired, create
    /// ([`Write::Create`]). Returns the counters now held and that write
    /// (`None` if the fingerprint joined a storm).
    async fn adopt(
        &self,
        claim: &Claim,
        existing: &Snapshot,
        absorb: bool,
    ) -> Result<Option<Adopted>, StoreError>;
    /// Lookups in a cold `namespace` found no resource of their own but the
    /// namespace's storm resource `existing` (with its storm counters),
    /// still running (its `ends_ms` is ahead). Records it, with its counters
    /// and affected list, as the namespace's running storm, so the new
    /// signals join it instead of starting another; what the store still
    /// holds of it is merged (each counter and its end: the larger).
    /// Returns whether it adopted: not if `existing` has no storm counters,
    /// has ended, or the namespace runs another storm.
    async fn adopt_storm(&self, namespace: &str, existing: &Snapshot) -> Result<bool, StoreError>;
    /// Lookups in a cold namespace found no resource of `claim`'s own, but
    /// the namespace's latest storm resource `storm` (with its storm
    /// counters), ended while its members still fire: the firing was one of
    /// its members when the store lost them. Records the storm as
    /// [`Store::adopt_storm`] does (the running storm only if none runs)
    /// and the fingerprint as its member, counting this signal in it
    /// (a duplicate; its member count is the storm's, unchanged). `None` if
    /// the store knows the fingerprint by now (decide it again).
    async fn adopt_member(
        &self,
        claim: &Claim,
        storm: &Snapshot,
    ) -> Result<Option<Decision>, StoreError>;
    /// The committed resource `resource` of `key` is gone from the sink
    /// (deleted, say by whoever acted on it): forgets the incident (a storm:
    /// the storm), so that its next sighting claims and creates a new
    /// resource instead of counting into nothing. Does nothing if the claim
    /// is pending or names another resource. Returns whether it forgot.
    async fn forget(&self, key: &ClaimKey, resource: &str) -> Result<bool, StoreError>;
    /// `owner`'s request failed after its decide: the signals it counted
    /// (in their own resource or their storm) are counted no more, so that
    /// the sender's retry of the delivery counts them once. Only where one
    /// of the last two counts on the fingerprint's record was `owner`'s and
    /// no other attempt of its delivery found it ([`Counted::take_back`]).
    async fn uncount(&self, owner: Owner, signals: &[(String, String)]) -> Result<(), StoreError>;
    /// For `Write::Await`: the claim's state now (may hand the claim to
    /// `owner`, whose token it then records).
    async fn poll(&self, owner: Owner, key: &ClaimKey) -> Result<ClaimState, StoreError>;
    /// The current counters of the resources (storm lists filled), `None`
    /// where gone, each with its [`Snapshot::unwritten`] mark.
    async fn snapshot(&self, keys: &[ClaimKey]) -> Result<Vec<Option<Snapshot>>, StoreError>;
    /// Resources put in the store's index of unwritten changes more than
    /// `older_than` ago and still there: every step that changes a
    /// resource's counters (a count, a resolution, a member, a count taken
    /// back) puts it there, in the same atomic step, unless it is there
    /// already. The sidecar that made a change writes it on its next flush
    /// and takes it out ([`Store::written`]); one that died first (SIGKILL,
    /// OOM, node loss) or could not write leaves it there, for any sidecar
    /// to find and write. At most a bounded batch a call: a store with more
    /// resumes where the last call stopped.
    async fn unwritten(&self, older_than: Duration) -> Result<Vec<ClaimKey>, StoreError>;
    /// The resources were written with these counters (`None`: the flush
    /// found the resource gone). Each leaves the index if the store's
    /// counters are still those (or it is gone); one counted since stays,
    /// as if put there now (a live sidecar is writing it). A record in the
    /// index does not expire before it leaves it (it lives at least the
    /// longer of the dedup window and the incident TTL: however long the
    /// sink is away, its counters wait); leaving, it gets its own TTL back.
    async fn written(&self, done: &[(ClaimKey, Option<Written>)]) -> Result<(), StoreError>;
    /// Readiness: the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
