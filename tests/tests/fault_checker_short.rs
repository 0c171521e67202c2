//! The randomized checker's short run, part of `make test` (see
//! `signalgate_tests::fault_checker`): Envoy with the wasm filter, three sidecars,
//! a Redis Cluster behind fault proxies and a real kube-apiserver; one fixed
//! seed, 40 s of workload (about 270 deliveries, 750 signals, a dozen
//! storms), about a minute in all. `CHECKER_SEED`, `CHECKER_SECONDS` and
//! `CHECKER_FAULTS` override the seed, the duration and the menu.
//!
//! Its fault menu holds the faults under which every invariant holds today:
//! `term` (a sidecar SIGTERMed, restarted), `kill` (a sidecar SIGKILLed,
//! restarted: what it acknowledged and had not written yet is written by
//! another, from the store's index of unwritten changes; seeds 2, 3 and 4
//! with 34 kills in all, clean), `redis-slow` (a Redis node's
//! requests delayed 20-100 ms, under the 500 ms store timeout), `api-slow`
//! (the API server's requests delayed 50-400 ms) and `api-blackhole` (the
//! API server unreachable up to 5 s: creates outlast the 4 s request
//! deadline, the request's counts are taken back, the retry counts once).
//!
//! Left out, each because runs broke an invariant under it (issue 19's
//! findings; `target/randomized-checker/` keeps each run's report):
//!
//! - `stop` — finding 5: an attempt sent to a SIGSTOPped sidecar outlasts
//!   the sender's 8 s attempt timeout, the retry is counted by another
//!   sidecar, and the stopped one counts the first attempt too when it
//!   resumes (1 run in 8 of 40 s: a storm's occurrenceCount 2 over: (c)).
//! - `redis-drop` — finding 4: the cluster client resends a store call whose
//!   reply was lost, and a duplicate is counted twice (seed 1: (c)).
//! - `redis-delay`, `redis-blackhole` — finding 5: a store call that timed
//!   out (503 `store-unavailable`) still runs when the delay or the
//!   partition ends, after the failed request tried to take its counts
//!   back; the retry counts them again (seed 1, menu `redis-delay`: (c), 3
//!   resources 1 over; `redis-blackhole`: 1 run in 5 of 40 s).
//! - `redis-flush` — finding 1: a node's data lost: storm members are
//!   counted in a second storm, members joining an adopted storm are
//!   answered `duplicate` and never counted in its alertCount (a, d, e).
//! - `api-down` — requests that counted and then answered 503
//!   (`deadline-exceeded`, the create failing) are counted again by their
//!   retries when their counts could not be taken back (finding 5: seed 1,
//!   menu `api-down`: (c) 2; its (e), resolves lost while the API server's
//!   graceful stop held a flush past the dedup window, and 403s right after
//!   its restart, are fixed: a record waits in the store until written).

use signalgate_tests::fault_checker::{run, Config};

/// The short run's seed (`CHECKER_SEED` overrides it).
const SEED: u64 = 19;

/// The faults whose invariants hold today (see above).
const MENU: &str = "term,kill,redis-slow,api-slow,api-blackhole";

#[test]
fn fault_checker_short() {
    let config = Config::from_env(Some(SEED), 40, MENU);
    run(&config).assert_clean();
}
