//! The randomized checker's long run (`make faults-long`): every fault of
//! the menu, for `CHECKER_SECONDS` (default 300) of workload per seed,
//! `CHECKER_RUNS` seeds (default 1; `CHECKER_SEED` fixes the first, each
//! next one is the one before plus 1). It prints a summary of every run and
//! fails when an invariant broke; each run's full report, with the history
//! of every violation, is in `target/randomized-checker/seed-<seed>-<faults>.txt`.
//! See `signalgate_tests::fault_checker` for the settings.

use signalgate_tests::fault_checker::{run, Config};

#[test]
#[ignore = "minutes long: make faults-long"]
fn fault_checker_long() {
    let first = Config::from_env(None, 300, "all");
    let runs: u64 = std::env::var("CHECKER_RUNS")
        .ok()
        .map_or(1, |v| v.trim().parse().expect("CHECKER_RUNS is a number"));
    let reports: Vec<_> = (0..runs)
        .map(|n| {
            run(&Config {
                seed: first.seed.wrapping_add(n),
                ..first.clone()
            })
        })
        .collect();
    eprintln!("[checker] ==== long run: {} run(s) ====", reports.len());
    for r in &reports {
        eprint!("{}", r.summary());
    }
    for r in &reports {
        r.assert_clean();
    }
}
