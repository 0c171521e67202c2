//! The randomized checker's short run, part of `make test` (see
//! `signalgate_tests::fault_checker`): Envoy with the wasm filter, three sidecars,
//! a Redis Cluster behind fault proxies and a real kube-apiserver; one fixed
//! seed, 40 s of workload (about 270 deliveries, 750 signals, a dozen
//! storms), about a minute in all. `CHECKER_SEED`, `CHECKER_SECONDS` and
//! `CHECKER_FAULTS` override the seed, the duration and the menu.
//!
//! Its fault menu is every fault the checker has: sidecars SIGTERMed,
//! SIGKILLed and SIGSTOPped; a Redis node's replies dropped after the call
//! ran, slowed, delayed past the store timeout, blackholed, or its data
//! flushed; the API server stopped, slowed or blackholed. Before it held
//! all of them (issue 19), the menu left out `stop`, `redis-drop`,
//! `redis-delay`, `redis-blackhole`, `redis-flush` and `api-down`; with
//! all of them, seeds 19 (three runs), 1, 2, 3, 4 and 5 ran clean.
//! What is known not to hold under overlapping faults is in
//! `docs/operating.md` (failure modes).

use signalgate_tests::fault_checker::{run, Config};

/// The short run's seed (`CHECKER_SEED` overrides it).
const SEED: u64 = 19;

/// Every fault (see above).
const MENU: &str = "all";

#[test]
fn fault_checker_short() {
    let config = Config::from_env(Some(SEED), 40, MENU);
    run(&config).assert_clean();
}
