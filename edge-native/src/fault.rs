//! Fault injection for tests, compiled only with the `fault-injection`
//! feature (never in `make native`'s module): the request header
//! `x-signalgate-fault: panic-in-headers` (or `panic-in-body`) makes that
//! hook panic, so the tests can see a real panic caught at the boundary;
//! and the environment variable `SIGNALGATE_FAULT_BUILT_FOR=1.38` makes the
//! module believe it was built for that Envoy release, so the tests can see
//! it refuse the installed one.

/// The header naming the fault.
pub const HEADER: &str = "x-signalgate-fault";

/// Where to panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    PanicInHeaders,
    PanicInBody,
}

impl Fault {
    pub fn parse(value: Option<&str>) -> Option<Fault> {
        match value? {
            "panic-in-headers" => Some(Fault::PanicInHeaders),
            "panic-in-body" => Some(Fault::PanicInBody),
            _ => None,
        }
    }

    /// Panics if this is the fault for `hook`.
    #[allow(clippy::panic)]
    pub fn trigger(fault: Option<Fault>, hook: Fault) {
        if fault == Some(hook) {
            panic!("fault injected: {hook:?}");
        }
    }
}

/// The Envoy release (major, minor) the module is to believe it was built
/// for, from `SIGNALGATE_FAULT_BUILT_FOR`.
pub fn built_for() -> Option<(u32, u32)> {
    let value = std::env::var("SIGNALGATE_FAULT_BUILT_FOR").ok()?;
    let (major, minor) = value.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
