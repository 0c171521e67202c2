//! The rate limit: refusals with their headers, the quota left, the
//! over-limit status, and a table that cannot be read.

use serde_json::json;

use super::*;

#[test]
fn the_rate_limit_refuses_with_retry_after_and_ratelimit_headers() {
    let cfg = config(r#"{"requests_per_minute": 20}"#);
    let store = Store::default();
    let mut ok = 0;
    let mut last = None;
    for _ in 0..30 {
        match on_headers(&cfg, &head(PROM), &store, &Seed::default(), T0) {
            HeadersAction::ReadBody(a) => {
                ok += 1;
                assert_eq!(
                    a.response_headers.first(),
                    Some(&("ratelimit-policy", "\"per-source\";q=20;w=60".to_string()))
                );
            }
            HeadersAction::Refuse(r) => last = Some(r),
        }
    }
    assert_eq!(ok, 20);
    assert!(last.is_some(), "nothing refused");
    let r = last.unwrap_or_else(|| panic!("nothing refused"));
    assert_eq!(r.status, 429);
    assert_eq!(r.outcome, Outcome::RateLimited);
    assert_eq!(header(&r, "retry-after"), Some("3"));
    assert_eq!(header(&r, "ratelimit"), Some("\"per-source\";r=0;t=3"));
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some("\"per-source\";q=20;w=60")
    );
    assert_eq!(
        problem(&r)["type"],
        "https://signalgate.io/problems/rate-limited"
    );
    // Another source is not affected.
    let other = RequestHead {
        remote_address: Some("127.0.0.2:1"),
        ..head(PROM)
    };
    assert!(admitted(on_headers(&cfg, &other, &store, &Seed::default(), T0)).is_some());
}

#[test]
fn allowed_requests_carry_the_remaining_quota() {
    let cfg = config(r#"{"requests_per_minute": 60, "burst": 10}"#);
    let store = Store::default();
    let a = admitted(on_headers(&cfg, &head(PROM), &store, &Seed::default(), T0));
    let h = a.map(|a| a.response_headers).unwrap_or_default();
    assert_eq!(
        h,
        vec![
            ("ratelimit-policy", "\"per-source\";q=10;w=10".to_string()),
            ("ratelimit", "\"per-source\";r=9;t=1".to_string())
        ]
    );
}

#[test]
fn over_limit_status_503() {
    let cfg = config(r#"{"requests_per_minute": 1, "over_limit_status": 503}"#);
    let store = Store::default();
    assert!(admitted(on_headers(&cfg, &head(PROM), &store, &Seed::default(), T0)).is_some());
    let r = refused(on_headers(&cfg, &head(PROM), &store, &Seed::default(), T0));
    assert_eq!(r.as_ref().map(|r| r.status), Some(503));
    assert_eq!(
        r.as_ref().and_then(|r| header(r, "retry-after")),
        Some("60")
    );
    assert_eq!(r.map(|r| problem(&r)["status"].clone()), Some(json!(503)));
}

#[test]
fn a_broken_store_lets_requests_through_and_says_so() {
    let cfg = Config::default();
    let a = admitted(on_headers(&cfg, &head(PROM), &Broken, &Seed::default(), T0));
    assert!(a.as_ref().and_then(|a| a.limit_error.as_ref()).is_some());
    assert!(a.is_some_and(|a| a.response_headers.is_empty()));
}
