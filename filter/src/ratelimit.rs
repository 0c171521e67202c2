//! Token-bucket arithmetic: pure, integer-only, with the clock passed in.
//!
//! A bucket holds up to `burst` tokens and refills continuously at
//! `per_minute` tokens per minute; each request takes one token. Tokens are
//! kept in fixed-point *units*, [`UNITS_PER_TOKEN`] to a token, chosen so that
//! one nanosecond refills exactly `per_minute` units: no rounding ever
//! accumulates, however often the bucket is looked at.

/// Units in one token: 60 s in nanoseconds, so refilling `per_minute` tokens a
/// minute adds `per_minute` units a nanosecond.
pub const UNITS_PER_TOKEN: u64 = 60_000_000_000;

/// Largest `per_minute` and `burst` accepted: keeps `burst * UNITS_PER_TOKEN`
/// (6e18) inside a `u64`.
pub const MAX_RATE: u32 = 100_000_000;

/// How far the clock may step back before the bucket re-anchors its refill
/// reference on the new time. Smaller steps are the normal jitter between
/// Envoy workers reading the clock concurrently: they refill nothing and leave
/// the reference where it was (so no interval is ever credited twice). Larger
/// steps are a real clock change: they refill nothing either, but refilling
/// resumes from the new time instead of waiting for the clock to catch up.
pub const BACKWARDS_TOLERANCE_NS: u64 = 1_000_000_000;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A rate limit: `per_minute` tokens a minute, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub per_minute: u32,
    pub burst: u32,
}

impl Limit {
    /// Capacity in units.
    pub fn capacity(self) -> u64 {
        u64::from(self.burst).saturating_mul(UNITS_PER_TOKEN)
    }

    /// Seconds a bucket needs to refill from empty to full (rounded up): the
    /// window `w` of the `RateLimit-Policy` header.
    pub fn window_secs(self) -> u64 {
        secs_to_refill(self.capacity(), self.per_minute)
    }
}

/// One source's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens left, in units (never above the capacity once refilled).
    pub units: u64,
    /// The clock reading (ns) the refill was last computed at.
    pub last_ns: u64,
}

impl Bucket {
    /// A full bucket, as a source that was never seen gets.
    pub fn full(limit: Limit, now_ns: u64) -> Bucket {
        Bucket {
            units: limit.capacity(),
            last_ns: now_ns,
        }
    }

    /// The bucket refilled up to `now_ns`.
    pub fn refilled(self, limit: Limit, now_ns: u64) -> Bucket {
        let cap = limit.capacity();
        if now_ns >= self.last_ns {
            let elapsed = u128::from(now_ns - self.last_ns);
            let added = elapsed.saturating_mul(u128::from(limit.per_minute));
            let units = (u128::from(self.units) + added).min(u128::from(cap));
            Bucket {
                units: u64::try_from(units).unwrap_or(cap),
                last_ns: now_ns,
            }
        } else {
            // The clock went backwards: no refill.
            let last_ns = if self.last_ns - now_ns > BACKWARDS_TOLERANCE_NS {
                now_ns
            } else {
                self.last_ns
            };
            Bucket {
                units: self.units.min(cap),
                last_ns,
            }
        }
    }

    /// Whether the bucket, refilled to `now_ns`, is full (forgetting it loses nothing).
    pub fn is_full_at(self, limit: Limit, now_ns: u64) -> bool {
        self.refilled(limit, now_ns).units >= limit.capacity()
    }

    /// Whole tokens left.
    pub fn tokens(self) -> u64 {
        self.units / UNITS_PER_TOKEN
    }
}

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A token was taken. `remaining` whole tokens are left; the bucket is
    /// full again in `full_in_secs` seconds (rounded up).
    Allowed { remaining: u64, full_in_secs: u64 },
    /// No token: one is back in `retry_after_secs` whole seconds (rounded
    /// up, at least 1).
    Limited { retry_after_secs: u64 },
}

/// Takes one token from `bucket` (a full one when `None`) at `now_ns`:
/// returns the bucket to store and the decision.
pub fn take(bucket: Option<Bucket>, limit: Limit, now_ns: u64) -> (Bucket, Decision) {
    let cap = limit.capacity();
    let b = bucket
        .unwrap_or_else(|| Bucket::full(limit, now_ns))
        .refilled(limit, now_ns);
    if b.units >= UNITS_PER_TOKEN {
        let after = Bucket {
            units: b.units - UNITS_PER_TOKEN,
            last_ns: b.last_ns,
        };
        let decision = Decision::Allowed {
            remaining: after.tokens(),
            full_in_secs: secs_to_refill(cap.saturating_sub(after.units), limit.per_minute),
        };
        (after, decision)
    } else {
        let missing = UNITS_PER_TOKEN - b.units;
        let decision = Decision::Limited {
            retry_after_secs: secs_to_refill(missing, limit.per_minute).max(1),
        };
        (b, decision)
    }
}

/// Whole seconds (rounded up) to refill `units` at `per_minute`.
pub fn secs_to_refill(units: u64, per_minute: u32) -> u64 {
    if units == 0 {
        return 0;
    }
    let per_ns = u64::from(per_minute.max(1));
    units.div_ceil(per_ns).div_ceil(NANOS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;
    const T0: u64 = 1_700_000_000 * SEC;

    fn limit(per_minute: u32, burst: u32) -> Limit {
        Limit { per_minute, burst }
    }

    /// Takes `n` tokens at `now`, returning how many were allowed and the last decision.
    fn take_n(b: &mut Option<Bucket>, l: Limit, now: u64, n: u32) -> (u32, Option<Decision>) {
        let mut allowed = 0;
        let mut last = None;
        for _ in 0..n {
            let (nb, d) = take(*b, l, now);
            *b = Some(nb);
            if matches!(d, Decision::Allowed { .. }) {
                allowed += 1;
            }
            last = Some(d);
        }
        (allowed, last)
    }

    #[test]
    fn a_new_source_gets_the_full_burst_then_is_limited() {
        let l = limit(20, 20);
        let mut b = None;
        let (allowed, last) = take_n(&mut b, l, T0, 30);
        assert_eq!(allowed, 20);
        // 20/min: one token every 3 s.
        assert_eq!(
            last,
            Some(Decision::Limited {
                retry_after_secs: 3
            })
        );
    }

    #[test]
    fn burst_can_differ_from_the_rate() {
        let l = limit(60, 5);
        let mut b = None;
        assert_eq!(take_n(&mut b, l, T0, 10).0, 5);
        // After 10 s at 1/s, 5 tokens (capped at burst), not 10.
        assert_eq!(take_n(&mut b, l, T0 + 10 * SEC, 10).0, 5);
    }

    #[test]
    fn refill_is_continuous_and_exact() {
        let l = limit(20, 20);
        let mut b = None;
        take_n(&mut b, l, T0, 20);
        // 2.999 s after: still nothing.
        let (_, d) = take(b, l, T0 + 3 * SEC - 1_000_000);
        assert_eq!(
            d,
            Decision::Limited {
                retry_after_secs: 1
            }
        );
        // 3 s: exactly one token.
        assert_eq!(take_n(&mut b, l, T0 + 3 * SEC, 2).0, 1);
        // Many tiny steps add up to the same as one big one (no rounding loss).
        let l = limit(7, 7);
        let mut small = Some(Bucket {
            units: 0,
            last_ns: T0,
        });
        for i in 1..=1000u64 {
            small = small.map(|s| s.refilled(l, T0 + i * 8_571_429));
        }
        let big = Bucket {
            units: 0,
            last_ns: T0,
        }
        .refilled(l, T0 + 1000 * 8_571_429);
        assert_eq!(small, Some(big));
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let l = limit(100, 10);
        let b = Bucket {
            units: 0,
            last_ns: T0,
        }
        .refilled(l, T0 + 3600 * SEC);
        assert_eq!(b.units, l.capacity());
        assert_eq!(b.tokens(), 10);
        // Even after centuries (no overflow).
        let b = b.refilled(l, u64::MAX);
        assert_eq!(b.units, l.capacity());
        let huge = limit(MAX_RATE, MAX_RATE);
        let b = Bucket {
            units: 0,
            last_ns: 0,
        }
        .refilled(huge, u64::MAX);
        assert_eq!(b.units, huge.capacity());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        // 100/min: a token every 0.6 s → 1 s.
        let l = limit(100, 1);
        let (b, _) = take(None, l, T0);
        assert_eq!(
            take(Some(b), l, T0).1,
            Decision::Limited {
                retry_after_secs: 1
            }
        );
        // 1/min: 60 s; 0.5 s later, 59.5 s → 60.
        let l = limit(1, 1);
        let (b, _) = take(None, l, T0);
        assert_eq!(
            take(Some(b), l, T0 + SEC / 2).1,
            Decision::Limited {
                retry_after_secs: 60
            }
        );
        // 59 s later: exactly 1 s left → 1, and 59.999999999 s → still 1.
        assert_eq!(
            take(Some(b), l, T0 + 59 * SEC).1,
            Decision::Limited {
                retry_after_secs: 1
            }
        );
        assert_eq!(
            take(Some(b), l, T0 + 60 * SEC - 1).1,
            Decision::Limited {
                retry_after_secs: 1
            }
        );
        // 7/min: 8.571… s → 9.
        let l = limit(7, 1);
        let (b, _) = take(None, l, T0);
        assert_eq!(
            take(Some(b), l, T0).1,
            Decision::Limited {
                retry_after_secs: 9
            }
        );
        assert_eq!(secs_to_refill(0, 5), 0);
        assert_eq!(secs_to_refill(1, 5), 1);
    }

    #[test]
    fn allowed_reports_remaining_and_time_to_full() {
        let l = limit(60, 10);
        let (b, d) = take(None, l, T0);
        assert_eq!(
            d,
            Decision::Allowed {
                remaining: 9,
                full_in_secs: 1
            }
        );
        let (_, d) = take(Some(b), l, T0);
        assert_eq!(
            d,
            Decision::Allowed {
                remaining: 8,
                full_in_secs: 2
            }
        );
        assert_eq!(l.window_secs(), 10);
        assert_eq!(limit(20, 20).window_secs(), 60);
        assert_eq!(limit(7, 1).window_secs(), 9);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let l = limit(60, 2);
        let mut b = None;
        take_n(&mut b, l, T0, 2);
        // Small step back (worker jitter): no refill, reference kept.
        let (nb, d) = take(b, l, T0 - SEC / 2);
        assert!(matches!(d, Decision::Limited { .. }));
        assert_eq!(nb.last_ns, T0);
        // And the interval is not credited twice when time moves on.
        assert_eq!(take_n(&mut Some(nb), l, T0 + SEC, 2).0, 1);
    }

    #[test]
    fn a_big_clock_step_back_reanchors_instead_of_freezing() {
        let l = limit(60, 2);
        let mut b = None;
        take_n(&mut b, l, T0, 2);
        let back = T0 - 3600 * SEC;
        let (nb, d) = take(b, l, back);
        assert!(matches!(d, Decision::Limited { .. }));
        assert_eq!(nb.last_ns, back);
        assert_eq!(nb.units, 0);
        // Refill resumes from the new time: one token a second later.
        assert_eq!(take_n(&mut Some(nb), l, back + SEC, 2).0, 1);
    }

    #[test]
    fn a_smaller_limit_caps_an_existing_bucket() {
        let big = limit(100, 100);
        let small = limit(10, 3);
        let b = Bucket::full(big, T0);
        assert_eq!(b.refilled(small, T0).tokens(), 3);
        assert_eq!(b.refilled(small, T0 - 1).tokens(), 3);
        assert!(b.is_full_at(small, T0));
    }

    #[test]
    fn is_full_at_projects_the_refill() {
        let l = limit(60, 1);
        let (b, _) = take(None, l, T0);
        assert!(!b.is_full_at(l, T0 + SEC - 1));
        assert!(b.is_full_at(l, T0 + SEC));
    }
}
