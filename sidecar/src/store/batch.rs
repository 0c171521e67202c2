//! Group commit for [`Store::decide`](super::Store::decide): the claims of
//! concurrent requests share store calls.
//!
//! Requests hand their claims to one batching task through a bounded queue.
//! The task sends whatever has queued up (at most [`MAX_BATCH_CLAIMS`]
//! claims unless one request alone has more, in arrival order, each
//! request's claims kept together and in order) as one
//! [`DecideEach::decide_each`], and keeps at most [`IN_FLIGHT`] of those
//! running at once. A lone request goes out at once, so a quiet sidecar adds
//! no wait; under load the requests that arrive while calls run are decided
//! together, so the store's per-call work (and, on Redis, the work for a
//! fingerprint repeated by several requests) is paid once per batch instead
//! of once per request.
//!
//! Batching changes which store calls carry a claim, never the rules: each
//! claim is decided, in its request's order, exactly as it would be in a
//! call of its own. Each request gets its own answer: if any of its claims
//! failed it gets the error, and the claims it took are released right after
//! (so its retry takes them over at once); a request none of whose claims
//! failed is answered normally. A request that gave up (its deadline passed)
//! before its batch was sent is skipped; one that gave up while its batch
//! ran has the claims it took released, as if it had failed.
//!
//! [`decide_alone`] is the same without the batching (one request, one call),
//! for stores where requests must not wait on each other.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Claim, ClaimKey, Decision, Owner, StoreError, Write};

/// Claims sent in one batch at most (a request with more goes alone).
const MAX_BATCH_CLAIMS: usize = 256;

/// Batches running at once: while they run, new requests queue up and form
/// the next batch.
const IN_FLIGHT: usize = 2;

/// Requests waiting for a batch at most; a full queue makes callers wait
/// (within their deadline) rather than grow memory.
const QUEUE: usize = 4096;

/// What the batching task needs from a store.
#[async_trait::async_trait]
pub trait DecideEach: Send + Sync + 'static {
    /// Decides every claim, in order, each atomically; one result per claim
    /// (a failure fails only the claims it touched).
    async fn decide_each(&self, claims: &[Claim]) -> Vec<Result<Decision, StoreError>>;
    /// Gives up claims taken for requests that will never create them
    /// (each with the request that holds it).
    async fn release(&self, held: &[(Owner, ClaimKey)]) -> Result<(), StoreError>;
}

/// One request's claims and where its answer goes.
struct Job {
    claims: Vec<Claim>,
    answer: oneshot::Sender<Result<Vec<Decision>, StoreError>>,
}

/// The handle requests use; cheap to clone. The batching task ends when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the batching task on the current tokio runtime.
    pub fn start(store: Arc<dyn DecideEach>) -> Batcher {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, queue));
        Batcher { jobs }
    }

    /// Whether the batching task still runs (it only stops with the runtime).
    pub fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Decides `claims` in the next batch; the caller bounds the wait.
    pub async fn decide(&self, claims: &[Claim]) -> Result<Vec<Decision>, StoreError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let stopped = || StoreError::Unavailable("the store's batching task stopped".into());
        let (answer, answered) = oneshot::channel();
        let job = Job {
            claims: claims.to_vec(),
            answer,
        };
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn run(store: Arc<dyn DecideEach>, mut queue: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A job that did not fit in the previous batch opens the next one.
    let mut carried: Option<Job> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut claims = first.claims.len();
        let mut jobs = vec![first];
        while claims < MAX_BATCH_CLAIMS {
            let Ok(job) = queue.try_recv() else {
                break;
            };
            if claims + job.claims.len() > MAX_BATCH_CLAIMS {
                carried = Some(job);
                break;
            }
            claims += job.claims.len();
            jobs.push(job);
        }
        jobs.retain(|job| !job.answer.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let store = store.clone();
        tokio::spawn(async move {
            let unclaimed = decide_batch(store.as_ref(), jobs).await;
            // The next batch need not wait for the releases.
            drop(slot);
            release(store.as_ref(), &unclaimed).await;
        });
    }
}

/// Decides `claims` for one request in a call of its own: failed claims fail
/// the request, and the claims it took are then released.
pub async fn decide_alone(
    store: &dyn DecideEach,
    claims: &[Claim],
) -> Result<Vec<Decision>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let (outcome, taken) = settle(store.decide_each(claims).await, claims.len());
    release(store, &held_by(claims, taken)).await;
    outcome
}

async fn release(store: &dyn DecideEach, keys: &[(Owner, ClaimKey)]) {
    if keys.is_empty() {
        return;
    }
    if let Err(e) = store.release(keys).await {
        tracing::warn!(error = %e, claims = keys.len(),
            "could not release claims of failed requests; they wait out their lease");
    }
}

/// Decides the claims of `jobs` in one call and answers each job; returns
/// the claims taken for jobs that failed or whose caller gave up.
async fn decide_batch(store: &dyn DecideEach, jobs: Vec<Job>) -> Vec<(Owner, ClaimKey)> {
    let mut claims = Vec::with_capacity(jobs.iter().map(|j| j.claims.len()).sum());
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        let owner = job.claims.first().map(|c| c.owner).unwrap_or_default();
        answers.push((job.claims.len(), owner, job.answer));
        claims.extend(job.claims);
    }
    let mut results = store.decide_each(&claims).await.into_iter();
    let mut unclaimed = Vec::new();
    for (len, owner, answer) in answers {
        let (outcome, taken) = settle(results.by_ref().take(len).collect(), len);
        unclaimed.extend(taken.into_iter().map(|k| (owner, k)));
        if let Err(Ok(decisions)) = answer.send(outcome) {
            // The request gave up while its batch ran: nobody will create.
            unclaimed.extend(created(decisions).into_iter().map(|k| (owner, k)));
        }
    }
    unclaimed
}

/// One request's answer from its claims' results, and the claims to release
/// because the request fails.
fn settle(
    results: Vec<Result<Decision, StoreError>>,
    len: usize,
) -> (Result<Vec<Decision>, StoreError>, Vec<ClaimKey>) {
    let mut decisions = Vec::with_capacity(len);
    let mut failure = (results.len() != len)
        .then(|| StoreError::Unavailable("the store answered fewer claims than asked".into()));
    for result in results {
        match result {
            Ok(d) => decisions.push(d),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        None => (Ok(decisions), Vec::new()),
        Some(e) => (Err(e), created(decisions)),
    }
}

/// `keys` taken for one request's `claims`, with the request's token.
fn held_by(claims: &[Claim], keys: Vec<ClaimKey>) -> Vec<(Owner, ClaimKey)> {
    let owner = claims.first().map(|c| c.owner).unwrap_or_default();
    keys.into_iter().map(|k| (owner, k)).collect()
}

fn created(decisions: Vec<Decision>) -> Vec<ClaimKey> {
    decisions
        .into_iter()
        .filter(|d| d.write == Write::Create)
        .map(|d| d.key)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;
    use crate::store::{Outcome, Snapshot};

    /// A store that creates every claim, fails those whose fingerprint
    /// starts with `bad`, and can hold its calls until `gate` opens.
    #[derive(Default)]
    struct Stub {
        calls: Mutex<Vec<usize>>,
        released: Mutex<Vec<ClaimKey>>,
        entered: Notify,
        gate: Option<Notify>,
    }

    fn key(c: &Claim) -> ClaimKey {
        ClaimKey::Fingerprint {
            namespace: c.namespace.clone(),
            fingerprint: c.fingerprint.clone(),
        }
    }

    fn claim(fingerprint: &str) -> Claim {
        Claim {
            namespace: "ns".into(),
            fingerprint: fingerprint.into(),
            affected: String::new(),
            owner: Owner(7),
            ..Claim::default()
        }
    }

    #[async_trait::async_trait]
    impl DecideEach for Stub {
        async fn decide_each(&self, claims: &[Claim]) -> Vec<Result<Decision, StoreError>> {
            self.calls.lock().unwrap().push(claims.len());
            self.entered.notify_one();
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            claims
                .iter()
                .map(|c| {
                    if c.fingerprint.starts_with("bad") {
                        return Err(StoreError::Unavailable("refused".into()));
                    }
                    Ok(Decision {
                        outcome: Outcome::Created,
                        write: Write::Create,
                        key: key(c),
                        snapshot: Snapshot::default(),
                    })
                })
                .collect()
        }

        async fn release(&self, held: &[(Owner, ClaimKey)]) -> Result<(), StoreError> {
            for (owner, key) in held {
                // Every claim is released with its request's token.
                assert_eq!(*owner, Owner(7), "{key:?}");
            }
            let keys = held.iter().map(|(_, k)| k.clone());
            self.released.lock().unwrap().extend(keys);
            Ok(())
        }
    }

    #[tokio::test]
    async fn requests_queued_together_share_one_call_and_keep_their_own_answers() {
        let stub = Arc::new(Stub::default());
        let batcher = Batcher::start(stub.clone());
        let (a, b, c) = ([claim("a1"), claim("a2")], [claim("b1")], [claim("c1")]);
        let (ra, rb, rc) = tokio::join!(batcher.decide(&a), batcher.decide(&b), batcher.decide(&c));
        let keys = |r: Result<Vec<Decision>, StoreError>| -> Vec<ClaimKey> {
            r.expect("decided").into_iter().map(|d| d.key).collect()
        };
        assert_eq!(keys(ra), a.iter().map(key).collect::<Vec<_>>());
        assert_eq!(keys(rb), vec![key(&b[0])]);
        assert_eq!(keys(rc), vec![key(&c[0])]);
        assert_eq!(*stub.calls.lock().unwrap(), vec![4]);
        assert!(stub.released.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_claim_fails_only_its_request_and_releases_what_it_took() {
        let stub = Arc::new(Stub::default());
        let batcher = Batcher::start(stub.clone());
        let (failing, fine) = ([claim("good"), claim("bad")], [claim("other")]);
        let (rf, rok) = tokio::join!(batcher.decide(&failing), batcher.decide(&fine));
        assert!(rf.is_err());
        assert_eq!(rok.expect("unaffected").len(), 1);
        assert_eq!(*stub.calls.lock().unwrap(), vec![3]);
        assert_eq!(*stub.released.lock().unwrap(), vec![key(&failing[0])]);
    }

    #[tokio::test]
    async fn a_request_that_gave_up_while_its_batch_ran_has_its_claims_released() {
        let stub = Arc::new(Stub {
            gate: Some(Notify::new()),
            ..Stub::default()
        });
        let batcher = Batcher::start(stub.clone());
        let waiting = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.decide(&[claim("gave-up")]).await })
        };
        stub.entered.notified().await;
        waiting.abort();
        assert!(waiting.await.is_err(), "aborted");
        stub.gate.as_ref().expect("gate").notify_one();
        while stub.released.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(*stub.released.lock().unwrap(), vec![key(&claim("gave-up"))]);
    }

    #[tokio::test]
    async fn a_bigger_queue_is_split_into_batches_of_at_most_the_cap() {
        let stub = Arc::new(Stub::default());
        let batcher = Batcher::start(stub.clone());
        let requests: Vec<Vec<Claim>> = (0..MAX_BATCH_CLAIMS / 10 + 5)
            .map(|i| (0..10).map(|j| claim(&format!("f{i}-{j}"))).collect())
            .collect();
        let answers = futures::future::join_all(requests.iter().map(|r| batcher.decide(r))).await;
        assert!(answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|d| d.len() == 10)));
        let calls = stub.calls.lock().unwrap().clone();
        assert!(calls.len() >= 2, "{calls:?}");
        assert!(calls.iter().all(|&n| n <= MAX_BATCH_CLAIMS), "{calls:?}");
        assert_eq!(calls.iter().sum::<usize>(), requests.len() * 10);
    }

    #[tokio::test]
    async fn a_request_bigger_than_the_cap_goes_alone() {
        let stub = Arc::new(Stub::default());
        let batcher = Batcher::start(stub.clone());
        let small = [claim("small")];
        let big: Vec<Claim> = (0..MAX_BATCH_CLAIMS + 1)
            .map(|i| claim(&format!("big{i}")))
            .collect();
        let (a, b, c) = tokio::join!(
            batcher.decide(&small),
            batcher.decide(&big),
            batcher.decide(&small)
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(
            *stub.calls.lock().unwrap(),
            vec![1, MAX_BATCH_CLAIMS + 1, 1]
        );
    }

    #[tokio::test]
    async fn a_lone_request_with_a_failed_claim_releases_the_others() {
        let stub = Stub::default();
        let claims = [claim("good"), claim("bad"), claim("fine")];
        assert!(decide_alone(&stub, &claims).await.is_err());
        assert_eq!(
            *stub.released.lock().unwrap(),
            vec![key(&claims[0]), key(&claims[2])]
        );
        let ok = decide_alone(&stub, &claims[..1]).await.expect("decided");
        assert_eq!(ok.len(), 1);
    }
}
