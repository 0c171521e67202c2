//! The host's wall clock in milliseconds: what the pipeline stamps a request
//! with and what the memory store decides by (the Redis store uses Redis
//! `TIME` instead).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on the host's clock: 0 for a clock set
/// before the epoch, `i64::MAX` for one past what an `i64` holds (it never
/// wraps to a negative time).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0)
}

/// A duration in whole milliseconds, `i64::MAX` if it holds more.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_saturate_instead_of_wrapping() {
        assert_eq!(ms(Duration::from_millis(1_500)), 1_500);
        assert_eq!(ms(Duration::from_micros(999)), 0);
        assert_eq!(ms(Duration::MAX), i64::MAX);
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        // 2024-01-01T00:00:00Z: a clock reading earlier is not the host's.
        assert!(now_ms() > 1_704_067_200_000);
    }
}
