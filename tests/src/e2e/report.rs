//! The line each scenario prints (run with `--nocapture` to see them).

use std::time::Instant;

pub fn report(
    scenario: &str,
    sent: usize,
    expected: usize,
    found: usize,
    started: Instant,
    more: &str,
) {
    report_as(
        scenario,
        "alerts sent",
        sent,
        expected,
        found,
        started,
        more,
    );
}

pub fn report_as(
    scenario: &str,
    what: &str,
    sent: usize,
    expected: usize,
    found: usize,
    started: Instant,
    more: &str,
) {
    eprintln!(
        "[e2e] {scenario}: {what} {sent}, resources expected {expected}, found {found}, \
         time {:.1}s{more}",
        started.elapsed().as_secs_f64()
    );
}
