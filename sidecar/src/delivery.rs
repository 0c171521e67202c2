//! Which delivery a request is: the same sender's same body within a
//! delivery window is one delivery, however often it is retried. Senders
//! retry a failed or timed-out request with the same body (Alertmanager
//! until its group interval, 5 minutes by default, ends); a request whose
//! reply was lost may have counted its signals already, and the retry must
//! not count them again.
//!
//! The identity is a 64-bit xxh3 digest of (signal type, source, body),
//! folded with the index of the window the request arrived in. A request
//! carries the tokens of its window and the window before
//! ([`Delivery`]), so a retry just across a window's end still matches the
//! count its first attempt made: every retry within one window of its
//! first attempt matches, and none after two.

use std::time::Duration;

use signalgate_model::signal::SignalType;
use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

use crate::store::Delivery;

/// The delivery of a request of `signal_type` from `source` with `body`,
/// received at `now_ms`; no delivery (tokens 0) when `window` is zero.
pub fn of(
    signal_type: SignalType,
    source: &str,
    body: &[u8],
    now_ms: i64,
    window: Duration,
) -> Delivery {
    let window_ms = window.as_millis() as i64;
    if window_ms <= 0 {
        return Delivery::default();
    }
    let mut h = Xxh3::new();
    h.update(signal_type.as_str().as_bytes());
    h.update(&[0]);
    h.update(source.as_bytes());
    h.update(&[0]);
    h.update(body);
    let digest = h.digest();
    let index = now_ms.div_euclid(window_ms);
    Delivery {
        current: token(digest, index),
        previous: token(digest, index - 1),
    }
}

/// The token of `digest` in window `index`: never 0 (no delivery's).
fn token(digest: u64, index: i64) -> u64 {
    xxh3_64_with_seed(&index.to_le_bytes(), digest).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(300);

    #[test]
    fn a_retry_within_a_window_of_its_first_attempt_is_the_same_delivery() {
        let first = of(SignalType::Prometheus, "am", b"{}", 299_000, W);
        let same_window = of(SignalType::Prometheus, "am", b"{}", 10_000, W);
        let next_window = of(SignalType::Prometheus, "am", b"{}", 599_000, W);
        assert_eq!(first, same_window);
        assert!(next_window.is(first.current));
        let two_later = of(SignalType::Prometheus, "am", b"{}", 600_000, W);
        assert!(!two_later.is(first.current));
    }

    #[test]
    fn another_body_source_or_type_is_another_delivery() {
        let d = of(SignalType::Prometheus, "am", b"{}", 0, W);
        for other in [
            of(SignalType::Prometheus, "am", b"{ }", 0, W),
            of(SignalType::Prometheus, "am-2", b"{}", 0, W),
            of(SignalType::KubernetesEvent, "am", b"{}", 0, W),
        ] {
            assert!(!other.is(d.current) && !other.is(d.previous));
        }
    }

    #[test]
    fn a_zero_window_identifies_no_delivery() {
        let d = of(SignalType::Prometheus, "am", b"{}", 0, Duration::ZERO);
        assert_eq!(d, Delivery::default());
        assert!(!d.is(0));
    }
}
