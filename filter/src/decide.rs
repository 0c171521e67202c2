//! What to do with a request: the whole edge policy, with no proxy-wasm in
//! sight. The host layer gathers a [`RequestHead`], calls [`on_headers`],
//! then feeds body progress to [`on_body`] and the complete body to
//! [`validate_body`], and carries out what they return.
//!
//! Order of the checks at the headers: route (404/405, [`crate::route`]),
//! tenant (401, not counted), rate limit (429/503, [`crate::quota`]: every
//! authenticated request on a signal path counts, valid or not),
//! `Content-Type` (415), `Content-Length` (413) ([`crate::content`]). Then
//! the body: 413 as soon as the buffered size passes the limit, and at the
//! end 400 unless it is a valid payload for its path.

use signalgate_model::http::SOURCE_HEADER;
use signalgate_model::problem::Problem;
use signalgate_model::{alertmanager, kube_event, Invalid, SignalType};

use crate::config::Config;
use crate::content;
use crate::outcome::Outcome;
use crate::quota::{self, Caller};
use crate::ratelimit::Limit;
use crate::reply::Reply;
use crate::route::route;
use crate::source;
use crate::table::{Seed, SharedStore};

/// Headers only the edge may set on a forwarded request: a copy the client
/// sent is removed. `x-signalgate-signal-type` is no longer set (the sidecar
/// takes the type from the path) but is still removed, so nothing upstream
/// sees one the client made up.
pub const STRIPPED_HEADERS: [&str; 1] = ["x-signalgate-signal-type"];

/// What the headers phase needs from a request.
#[derive(Debug, Clone, Default)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub content_length: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// Envoy's `source.address` (`ip:port`).
    pub remote_address: Option<&'a str>,
    /// The value of the configured source header, if the mode reads one
    /// (`x-forwarded-for`: all its values joined with `,`).
    pub source_header: Option<&'a str>,
}

/// A request that passed the headers phase: its body is to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub source: String,
    pub signal_type: SignalType,
    /// `RateLimit-Policy`/`RateLimit`, for the response.
    pub response_headers: Vec<(&'static str, String)>,
    /// The rate limit could not be checked (the request is let through).
    pub limit_error: Option<String>,
}

impl Admitted {
    /// The headers to set on the forwarded request (replacing every copy
    /// the client sent).
    pub fn forward_headers(&self) -> [(&'static str, &str); 1] {
        [(SOURCE_HEADER, self.source.as_str())]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadersAction {
    Refuse(Reply),
    ReadBody(Admitted),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAction {
    /// Keep buffering.
    Wait,
    Refuse(Reply),
    /// The whole body is there and within the limit: validate it.
    Validate,
}

/// The headers phase. `store` and `seed` are the bucket table's.
pub fn on_headers(
    cfg: &Config,
    head: &RequestHead<'_>,
    store: &dyn SharedStore,
    seed: &Seed,
    now_ns: u64,
) -> HeadersAction {
    match admit(cfg, head, store, seed, now_ns) {
        Ok(a) => HeadersAction::ReadBody(a),
        Err(r) => HeadersAction::Refuse(r),
    }
}

fn admit(
    cfg: &Config,
    head: &RequestHead<'_>,
    store: &dyn SharedStore,
    seed: &Seed,
    now_ns: u64,
) -> Result<Admitted, Reply> {
    let signal_type = route(head.method, head.path)?;
    let (source, bucket_key, limit) = identify(cfg, head)?;
    let caller = Caller {
        source: &source,
        bucket_key: &bucket_key,
        limit,
    };
    let charged = quota::charge(&caller, cfg.over_limit_status, store, seed, now_ns)?;
    content::check_content_type(head.content_type)?;
    content::check_content_length(head.content_length, cfg.max_body_bytes)?;
    Ok(Admitted {
        source,
        signal_type,
        response_headers: charged.response_headers,
        limit_error: charged.limit_error,
    })
}

/// Who the request is from, its bucket and its limit: the tenant its token
/// names (401 without one), or without tenants its source.
fn identify(cfg: &Config, head: &RequestHead<'_>) -> Result<(String, String, Limit), Reply> {
    match &cfg.tenants {
        Some(tenants) => match tenants.authenticate(head.authorization) {
            Ok(t) => Ok((t.name.clone(), format!("t:{}", t.name), t.limit)),
            Err(e) => {
                let problem = Problem::new(401, "unauthorized", "Unauthorized", e.detail());
                Err(Reply::new(
                    Outcome::Unauthorized,
                    problem,
                    format!("refused 401: {}", e.detail()),
                )
                .with_header("www-authenticate", "Bearer realm=\"signalgate\"".into()))
            }
        },
        None => {
            let s = source::resolve(&cfg.source, head.remote_address, head.source_header);
            let key = format!("s:{s}");
            Ok((s, key, cfg.limit))
        }
    }
}

/// Body progress: `buffered` bytes so far (Envoy's running total).
pub fn on_body(cfg: &Config, buffered: usize, end_of_stream: bool) -> BodyAction {
    if let Err(reply) = content::check_buffered(buffered, cfg.max_body_bytes) {
        return BodyAction::Refuse(reply);
    }
    if end_of_stream {
        BodyAction::Validate
    } else {
        BodyAction::Wait
    }
}

/// Validates the complete body for its signal type: `None` when it is fine.
pub fn validate_body(cfg: &Config, signal_type: SignalType, body: &[u8]) -> Option<Reply> {
    let result: Result<(), Invalid> = match signal_type {
        SignalType::Prometheus => alertmanager::parse(body, cfg.max_alerts_per_request).map(|_| ()),
        SignalType::KubernetesEvent => kube_event::parse(body).map(|_| ()),
    };
    result.err().map(|invalid| {
        let problem = Problem::from(&invalid);
        let reason = format!("refused 400 ({}): {invalid}", signal_type.as_str());
        Reply::new(Outcome::Invalid, problem, reason)
    })
}

#[cfg(test)]
mod tests;
