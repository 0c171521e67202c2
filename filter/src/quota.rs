//! The rate-limit step: take a token from the caller's bucket, and say so in
//! the `RateLimit-Policy` / `RateLimit` headers, or refuse with 429 (or 503)
//! and `Retry-After`.

use signalgate_model::problem::Problem;

use crate::outcome::Outcome;
use crate::ratelimit::{Decision, Limit};
use crate::reply::Reply;
use crate::table::{self, Seed, SharedStore};

/// Name of the quota policy in the `RateLimit-Policy`/`RateLimit` headers.
pub const POLICY_NAME: &str = "per-source";

/// The `RateLimit-Policy` value for `limit`.
pub fn policy_header(limit: Limit) -> String {
    format!(
        "\"{POLICY_NAME}\";q={};w={}",
        limit.burst,
        limit.window_secs()
    )
}

/// The `RateLimit` value: `r` whole units left, `t` seconds until the quota
/// is back (full when allowed; the next unit when limited, = `Retry-After`).
pub fn ratelimit_header(remaining: u64, secs: u64) -> String {
    format!("\"{POLICY_NAME}\";r={remaining};t={secs}")
}

/// Whose bucket a request is charged to.
pub struct Caller<'a> {
    /// The source (or tenant) name, for messages.
    pub source: &'a str,
    /// The bucket's key in the table.
    pub bucket_key: &'a str,
    pub limit: Limit,
}

/// A request let through by the rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charged {
    /// `RateLimit-Policy`/`RateLimit`, for the response (none when the
    /// limit could not be checked).
    pub response_headers: Vec<(&'static str, String)>,
    /// The rate limit could not be checked (the request is let through).
    pub limit_error: Option<String>,
}

/// Takes one token from `caller`'s bucket; refuses with `over_limit_status`
/// when there is none. A table that cannot be read lets the request through.
pub fn charge(
    caller: &Caller<'_>,
    over_limit_status: u16,
    store: &dyn SharedStore,
    seed: &Seed,
    now_ns: u64,
) -> Result<Charged, Reply> {
    let limit = caller.limit;
    match table::take(store, seed, caller.bucket_key, limit, now_ns) {
        Ok(Decision::Allowed {
            remaining,
            full_in_secs,
        }) => Ok(Charged {
            response_headers: vec![
                ("ratelimit-policy", policy_header(limit)),
                ("ratelimit", ratelimit_header(remaining, full_in_secs)),
            ],
            limit_error: None,
        }),
        Ok(Decision::Limited { retry_after_secs }) => {
            let detail = format!(
                "{} is over its limit of {} requests per minute (burst {}); retry in {retry_after_secs} s",
                caller.source, limit.per_minute, limit.burst
            );
            let problem = Problem::new(
                over_limit_status,
                "rate-limited",
                "Too many requests",
                detail.clone(),
            );
            Err(Reply::new(
                Outcome::RateLimited,
                problem,
                format!("refused {over_limit_status}: {detail}"),
            )
            .with_header("retry-after", retry_after_secs.to_string())
            .with_header("ratelimit-policy", policy_header(limit))
            .with_header("ratelimit", ratelimit_header(0, retry_after_secs)))
        }
        Err(e) => Ok(Charged {
            response_headers: Vec::new(),
            limit_error: Some(format!("rate limit for {} not checked: {e}", caller.source)),
        }),
    }
}
