//! What to do with a request: the whole edge policy, with no proxy-wasm in
//! sight. The host layer gathers a [`RequestHead`], calls [`on_headers`],
//! then feeds body progress to [`on_body`] and the complete body to
//! [`validate_body`], and carries out what they return.
//!
//! Order of the checks at the headers: route (404/405), tenant (401, not
//! counted), rate limit (429/503: every authenticated request on a signal
//! path counts, valid or not), `Content-Type` (415), `Content-Length` (413).
//! Then the body: 413 as soon as the buffered size passes the limit, and at
//! the end 400 unless it is a valid payload for its path.

use signalgate_model::problem::{Problem, CONTENT_TYPE};
use signalgate_model::{alertmanager, kube_event, Invalid, SignalType};

use crate::config::Config;
use crate::ratelimit::{Decision, Limit};
use crate::source;
use crate::table::{self, Seed, SharedStore};

/// Header carrying the request's source to the sidecar.
pub const SOURCE_HEADER: &str = "x-signalgate-source";
/// Header carrying the signal type to the sidecar.
pub const SIGNAL_TYPE_HEADER: &str = "x-signalgate-signal-type";
/// Name of the quota policy in the `RateLimit-Policy`/`RateLimit` headers.
pub const POLICY_NAME: &str = "per-source";

/// What happened to a request; each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    RateLimited,
    Unauthorized,
    Invalid,
    TooLarge,
    UnsupportedMediaType,
    NotFound,
    MethodNotAllowed,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Accepted,
        Outcome::RateLimited,
        Outcome::Unauthorized,
        Outcome::Invalid,
        Outcome::TooLarge,
        Outcome::UnsupportedMediaType,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Invalid => "invalid",
            Outcome::TooLarge => "too_large",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// Position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

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

/// A local answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub outcome: Outcome,
    pub status: u16,
    /// Extra headers besides `content-type`.
    pub headers: Vec<(&'static str, String)>,
    /// The `application/problem+json` body.
    pub body: String,
    /// Why, for the debug log.
    pub reason: String,
}

impl Reply {
    fn new(outcome: Outcome, problem: Problem, reason: String) -> Reply {
        Reply {
            outcome,
            status: problem.status,
            headers: Vec::new(),
            body: problem.to_json(),
            reason,
        }
    }

    fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// All response headers, `content-type` first.
    pub fn all_headers(&self) -> Vec<(&str, &str)> {
        let mut h = vec![("content-type", CONTENT_TYPE)];
        h.extend(self.headers.iter().map(|(n, v)| (*n, v.as_str())));
        h
    }
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
    /// The headers to set on the forwarded request.
    pub fn forward_headers(&self) -> [(&'static str, &str); 2] {
        [
            (SOURCE_HEADER, self.source.as_str()),
            (SIGNAL_TYPE_HEADER, self.signal_type.as_str()),
        ]
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

fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

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

    let (source, bucket_key, limit) = match &cfg.tenants {
        Some(tenants) => match tenants.authenticate(head.authorization) {
            Ok(t) => (t.name.clone(), format!("t:{}", t.name), t.limit),
            Err(e) => {
                let problem = Problem::new(401, "unauthorized", "Unauthorized", e.detail());
                let reply = Reply::new(
                    Outcome::Unauthorized,
                    problem,
                    format!("refused 401: {}", e.detail()),
                )
                .with_header("www-authenticate", "Bearer realm=\"signalgate\"".into());
                return Err(reply);
            }
        },
        None => {
            let s = source::resolve(&cfg.source, head.remote_address, head.source_header);
            let key = format!("s:{s}");
            (s, key, cfg.limit)
        }
    };

    let policy = policy_header(limit);
    let mut response_headers = Vec::new();
    let mut limit_error = None;
    match table::take(store, seed, &bucket_key, limit, now_ns) {
        Ok(Decision::Allowed {
            remaining,
            full_in_secs,
        }) => {
            response_headers.push(("ratelimit-policy", policy));
            response_headers.push(("ratelimit", ratelimit_header(remaining, full_in_secs)));
        }
        Ok(Decision::Limited { retry_after_secs }) => {
            let detail = format!(
                "{source} is over its limit of {} requests per minute (burst {}); retry in {retry_after_secs} s",
                limit.per_minute, limit.burst
            );
            let problem = Problem::new(
                cfg.over_limit_status,
                "rate-limited",
                "Too many requests",
                detail.clone(),
            );
            let reply = Reply::new(
                Outcome::RateLimited,
                problem,
                format!("refused {}: {detail}", cfg.over_limit_status),
            )
            .with_header("retry-after", retry_after_secs.to_string())
            .with_header("ratelimit-policy", policy)
            .with_header("ratelimit", ratelimit_header(0, retry_after_secs));
            return Err(reply);
        }
        Err(e) => limit_error = Some(format!("rate limit for {source} not checked: {e}")),
    }

    check_content_type(head.content_type)?;
    if let Some(len) = head
        .content_length
        .and_then(|l| l.trim().parse::<u64>().ok())
    {
        if len > cfg.max_body_bytes {
            return Err(too_large(format!(
                "Content-Length {len} is over the limit of {} bytes",
                cfg.max_body_bytes
            )));
        }
    }
    Ok(Admitted {
        source,
        signal_type,
        response_headers,
        limit_error,
    })
}

/// 404 for paths that are not a signal endpoint, 405 for other methods.
pub fn route(method: &str, path: &str) -> Result<SignalType, Reply> {
    let Some(signal_type) = SignalType::from_path(path) else {
        let detail = format!(
            "no endpoint at {}: POST signals to {} or {}",
            shorten(path),
            SignalType::Prometheus.path(),
            SignalType::KubernetesEvent.path()
        );
        let problem = Problem::new(404, "not-found", "Not found", detail.clone());
        return Err(Reply::new(
            Outcome::NotFound,
            problem,
            format!("refused 404: {detail}"),
        ));
    };
    if method != "POST" {
        let detail = format!(
            "{} is not allowed on {}: use POST",
            shorten(method),
            signal_type.path()
        );
        let problem = Problem::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            detail.clone(),
        );
        return Err(Reply::new(
            Outcome::MethodNotAllowed,
            problem,
            format!("refused 405: {detail}"),
        )
        .with_header("allow", "POST".into()));
    }
    Ok(signal_type)
}

/// `application/json`, with any parameters (`charset=utf-8`), else 415.
pub fn check_content_type(content_type: Option<&str>) -> Result<(), Reply> {
    let media_type = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if media_type.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    let detail = match content_type {
        Some(c) => format!(
            "Content-Type {:?} is not supported: send application/json",
            shorten(c)
        ),
        None => "a Content-Type of application/json is required".to_string(),
    };
    let problem = Problem::new(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        detail.clone(),
    );
    Err(Reply::new(
        Outcome::UnsupportedMediaType,
        problem,
        format!("refused 415: {detail}"),
    )
    .with_header("accept-post", "application/json".into()))
}

fn too_large(detail: String) -> Reply {
    let problem = Problem::new(
        413,
        "payload-too-large",
        "Payload too large",
        detail.clone(),
    );
    Reply::new(Outcome::TooLarge, problem, format!("refused 413: {detail}"))
}

/// Body progress: `buffered` bytes so far (Envoy's running total).
pub fn on_body(cfg: &Config, buffered: usize, end_of_stream: bool) -> BodyAction {
    let buffered = u64::try_from(buffered).unwrap_or(u64::MAX);
    if buffered > cfg.max_body_bytes {
        return BodyAction::Refuse(too_large(format!(
            "the body is over the limit of {} bytes",
            cfg.max_body_bytes
        )));
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
mod tests {
    use super::*;
    use crate::config;
    use crate::source::SourceMode;
    use crate::tenants::{Tenant, Tenants};
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};
    use std::cell::RefCell;
    use std::collections::HashMap;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    /// Shared data without concurrency (CAS conflicts are tested in `table`).
    #[derive(Default)]
    struct Store(RefCell<HashMap<String, (Vec<u8>, u32)>>);

    impl SharedStore for Store {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), table::StoreError> {
            Ok(match self.0.borrow().get(key) {
                Some((v, c)) => (Some(v.clone()), Some(*c)),
                None => (None, None),
            })
        }
        fn set(&self, key: &str, value: &[u8], _: Option<u32>) -> Result<(), table::StoreError> {
            let mut m = self.0.borrow_mut();
            let cas = m.get(key).map_or(1, |(_, c)| c + 1);
            m.insert(key.into(), (value.to_vec(), cas));
            Ok(())
        }
    }

    /// A store that always fails.
    struct Broken;

    impl SharedStore for Broken {
        fn get(&self, _: &str) -> Result<(Option<Vec<u8>>, Option<u32>), table::StoreError> {
            Err(table::StoreError::Host("down".into()))
        }
        fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), table::StoreError> {
            Err(table::StoreError::Host("down".into()))
        }
    }

    fn head<'a>(path: &'a str) -> RequestHead<'a> {
        RequestHead {
            method: "POST",
            path,
            content_type: Some("application/json"),
            content_length: Some("100"),
            authorization: None,
            remote_address: Some("127.0.0.1:40000"),
            source_header: None,
        }
    }

    const PROM: &str = "/api/v1/signals/prometheus";
    const KUBE: &str = "/api/v1/signals/kubernetes-event";

    fn refused(action: HeadersAction) -> Option<Reply> {
        match action {
            HeadersAction::Refuse(r) => Some(r),
            HeadersAction::ReadBody(_) => None,
        }
    }

    fn admitted(action: HeadersAction) -> Option<Admitted> {
        match action {
            HeadersAction::ReadBody(a) => Some(a),
            HeadersAction::Refuse(_) => None,
        }
    }

    fn problem(reply: &Reply) -> Value {
        serde_json::from_str(&reply.body).unwrap_or_default()
    }

    fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn signal_paths_are_routed() {
        let cfg = Config::default();
        let store = Store::default();
        let a = admitted(on_headers(&cfg, &head(PROM), &store, &Seed::default(), T0));
        assert_eq!(
            a.as_ref().map(|a| a.signal_type),
            Some(SignalType::Prometheus)
        );
        assert_eq!(a.as_ref().map(|a| a.source.as_str()), Some("127.0.0.1"));
        let a = admitted(on_headers(
            &cfg,
            &head("/api/v1/signals/kubernetes-event?x=1"),
            &store,
            &Seed::default(),
            T0,
        ));
        assert_eq!(a.map(|a| a.signal_type), Some(SignalType::KubernetesEvent));
    }

    #[test]
    fn other_paths_get_404_and_other_methods_405() {
        let cfg = Config::default();
        let store = Store::default();
        for path in [
            "/",
            "/api/v1/signals/",
            "/api/v1/signals/prometheus/x",
            "/API/v1/signals/prometheus",
        ] {
            let r = refused(on_headers(&cfg, &head(path), &store, &Seed::default(), T0));
            assert_eq!(r.as_ref().map(|r| r.status), Some(404), "{path}");
            assert_eq!(r.as_ref().map(|r| r.outcome), Some(Outcome::NotFound));
            let p = r.as_ref().map(problem).unwrap_or_default();
            assert_eq!(p["type"], "https://signalgate.io/problems/not-found");
            assert_eq!(p["status"], 404);
        }
        for method in ["GET", "PUT", "HEAD", "post"] {
            let h = RequestHead {
                method,
                ..head(KUBE)
            };
            let r = refused(on_headers(&cfg, &h, &store, &Seed::default(), T0));
            assert_eq!(r.as_ref().map(|r| r.status), Some(405), "{method}");
            assert_eq!(r.as_ref().and_then(|r| header(r, "allow")), Some("POST"));
        }
        // Neither counts against the source.
        assert!(store.0.borrow().is_empty());
    }

    #[test]
    fn the_rate_limit_refuses_with_retry_after_and_ratelimit_headers() {
        let cfg = config::parse(Some(br#"{"requests_per_minute": 20}"#)).unwrap_or_default();
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
        let r = last.unwrap_or_else(|| too_large(String::new()));
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
        let cfg =
            config::parse(Some(br#"{"requests_per_minute": 60, "burst": 10}"#)).unwrap_or_default();
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
        let cfg = config::parse(Some(
            br#"{"requests_per_minute": 1, "over_limit_status": 503}"#,
        ))
        .unwrap_or_default();
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

    #[test]
    fn the_source_follows_the_configured_mode() {
        let cfg = Config {
            source: SourceMode::Header("x-team".into()),
            ..Config::default()
        };
        let store = Store::default();
        let h = RequestHead {
            source_header: Some("payments"),
            ..head(PROM)
        };
        let a = admitted(on_headers(&cfg, &h, &store, &Seed::default(), T0));
        assert_eq!(a.map(|a| a.source), Some("payments".to_string()));
    }

    fn tenant_cfg() -> Config {
        let sha = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
        Config {
            tenants: Some(Tenants::new(vec![
                Tenant {
                    name: "team-a".into(),
                    token_sha256: sha("token-a"),
                    limit: Limit {
                        per_minute: 2,
                        burst: 2,
                    },
                },
                Tenant {
                    name: "team-b".into(),
                    token_sha256: sha("token-b"),
                    limit: Limit {
                        per_minute: 100,
                        burst: 100,
                    },
                },
            ])),
            ..Config::default()
        }
    }

    #[test]
    fn tenants_authenticate_name_the_source_and_have_their_own_limit() {
        let cfg = tenant_cfg();
        let store = Store::default();
        let with = |auth: Option<&'static str>| RequestHead {
            authorization: auth,
            ..head(PROM)
        };
        let a = admitted(on_headers(
            &cfg,
            &with(Some("Bearer token-a")),
            &store,
            &Seed::default(),
            T0,
        ));
        assert_eq!(a.map(|a| a.source), Some("team-a".to_string()));
        assert!(admitted(on_headers(
            &cfg,
            &with(Some("Bearer token-a")),
            &store,
            &Seed::default(),
            T0
        ))
        .is_some());
        let r = refused(on_headers(
            &cfg,
            &with(Some("Bearer token-a")),
            &store,
            &Seed::default(),
            T0,
        ));
        assert_eq!(r.map(|r| r.status), Some(429));
        // team-b, from the same address, is not affected.
        assert!(admitted(on_headers(
            &cfg,
            &with(Some("Bearer token-b")),
            &store,
            &Seed::default(),
            T0
        ))
        .is_some());
    }

    #[test]
    fn missing_or_wrong_tokens_get_401_and_are_not_counted() {
        let cfg = tenant_cfg();
        let store = Store::default();
        for auth in [None, Some("Bearer nope"), Some("Basic dG9rZW4tYQ==")] {
            let h = RequestHead {
                authorization: auth,
                ..head(PROM)
            };
            for _ in 0..5 {
                let r = refused(on_headers(&cfg, &h, &store, &Seed::default(), T0));
                assert_eq!(r.as_ref().map(|r| r.status), Some(401), "{auth:?}");
                assert_eq!(r.as_ref().map(|r| r.outcome), Some(Outcome::Unauthorized));
                assert!(r
                    .as_ref()
                    .and_then(|r| header(r, "www-authenticate"))
                    .is_some());
            }
        }
        assert!(store.0.borrow().is_empty(), "401s are not counted");
        // Unknown paths are 404 even without a token.
        let r = refused(on_headers(&cfg, &head("/x"), &store, &Seed::default(), T0));
        assert_eq!(r.map(|r| r.status), Some(404));
    }

    #[test]
    fn content_type_must_be_json() {
        let cfg = Config::default();
        let store = Store::default();
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
        ] {
            let h = RequestHead {
                content_type: Some(ct),
                ..head(PROM)
            };
            assert!(
                admitted(on_headers(&cfg, &h, &store, &Seed::default(), T0)).is_some(),
                "{ct}"
            );
        }
        for ct in [
            Some("text/plain"),
            Some("application/jsonx"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let h = RequestHead {
                content_type: ct,
                ..head(PROM)
            };
            let r = refused(on_headers(&cfg, &h, &store, &Seed::default(), T0));
            assert_eq!(r.as_ref().map(|r| r.status), Some(415), "{ct:?}");
            assert_eq!(r.map(|r| r.outcome), Some(Outcome::UnsupportedMediaType));
        }
    }

    #[test]
    fn content_length_over_the_limit_is_413_at_the_headers() {
        let cfg = config::parse(Some(br#"{"max_body_bytes": 1000}"#)).unwrap_or_default();
        let store = Store::default();
        let h = RequestHead {
            content_length: Some("1001"),
            ..head(PROM)
        };
        let r = refused(on_headers(&cfg, &h, &store, &Seed::default(), T0));
        assert_eq!(r.as_ref().map(|r| r.status), Some(413));
        assert_eq!(r.map(|r| r.outcome), Some(Outcome::TooLarge));
        for len in [Some("1000"), Some("0"), None, Some("junk")] {
            let h = RequestHead {
                content_length: len,
                ..head(PROM)
            };
            assert!(
                admitted(on_headers(&cfg, &h, &store, &Seed::default(), T0)).is_some(),
                "{len:?}"
            );
        }
    }

    #[test]
    fn streamed_bodies_are_cut_at_the_limit() {
        let cfg = config::parse(Some(br#"{"max_body_bytes": 1000}"#)).unwrap_or_default();
        assert_eq!(on_body(&cfg, 500, false), BodyAction::Wait);
        assert_eq!(on_body(&cfg, 1000, true), BodyAction::Validate);
        assert_eq!(on_body(&cfg, 0, true), BodyAction::Validate);
        let r = match on_body(&cfg, 1001, false) {
            BodyAction::Refuse(r) => Some(r),
            _ => None,
        };
        assert_eq!(r.as_ref().map(|r| r.status), Some(413));
        assert_eq!(
            r.map(|r| problem(&r)["type"].clone()),
            Some(json!("https://signalgate.io/problems/payload-too-large"))
        );
    }

    fn webhook() -> Value {
        json!({
            "version": "4", "status": "firing", "receiver": "r", "groupKey": "g",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "Down", "severity": "critical"},
                "annotations": {},
                "startsAt": "2026-01-01T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z"
            }]
        })
    }

    fn event() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "x.1", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "name": "cart-1", "namespace": "shop"},
            "reason": "BackOff", "message": "restarting", "type": "Warning"
        })
    }

    fn invalid_field(t: SignalType, v: &Value) -> Option<String> {
        let cfg = config::parse(Some(br#"{"max_alerts_per_request": 2}"#)).unwrap_or_default();
        let body = serde_json::to_vec(v).unwrap_or_default();
        validate_body(&cfg, t, &body).map(|r| {
            assert_eq!(r.status, 400);
            assert_eq!(r.outcome, Outcome::Invalid);
            problem(&r)["field"]
                .as_str()
                .unwrap_or("<none>")
                .to_string()
        })
    }

    #[test]
    fn valid_payloads_pass() {
        assert_eq!(invalid_field(SignalType::Prometheus, &webhook()), None);
        assert_eq!(invalid_field(SignalType::KubernetesEvent, &event()), None);
        let mut v1 = event();
        v1["regarding"] = v1["involvedObject"].take();
        assert_eq!(invalid_field(SignalType::KubernetesEvent, &v1), None);
    }

    /// A change that breaks one rule of a valid payload.
    type Change = Box<dyn Fn(&mut Value)>;

    #[test]
    fn each_alertmanager_rule_names_its_field() {
        let p = SignalType::Prometheus;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|v| v["version"] = json!("3")), "/version"),
            (Box::new(|v| v["alerts"] = json!([])), "/alerts"),
            (
                Box::new(|v| {
                    let a = v["alerts"][0].clone();
                    v["alerts"] = json!([a.clone(), a.clone(), a]);
                }),
                "/alerts",
            ),
            (
                Box::new(|v| v["alerts"][0]["status"] = json!("pending")),
                "/alerts/0/status",
            ),
            (
                Box::new(|v| v["alerts"][0]["labels"]["alertname"] = json!("")),
                "/alerts/0/labels/alertname",
            ),
            (
                Box::new(|v| v["alerts"][0]["labels"]["bad-name"] = json!("x")),
                "/alerts/0/labels/bad-name",
            ),
            (
                Box::new(|v| v["alerts"][0]["labels"]["n"] = json!(1)),
                "/alerts/0/labels/n",
            ),
            (
                Box::new(|v| v["alerts"][0]["startsAt"] = json!("yesterday")),
                "/alerts/0/startsAt",
            ),
        ];
        for (change, field) in cases {
            let mut v = webhook();
            change(&mut v);
            assert_eq!(invalid_field(p, &v).as_deref(), Some(field));
        }
    }

    #[test]
    fn each_event_rule_names_its_field() {
        let k = SignalType::KubernetesEvent;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|v| {
                    v.as_object_mut().map(|o| o.remove("involvedObject"));
                }),
                "/involvedObject",
            ),
            (
                Box::new(|v| v["involvedObject"]["kind"] = json!("")),
                "/involvedObject/kind",
            ),
            (
                Box::new(|v| {
                    v["involvedObject"]
                        .as_object_mut()
                        .map(|o| o.remove("name"));
                }),
                "/involvedObject/name",
            ),
            (Box::new(|v| v["reason"] = json!(" ")), "/reason"),
            (Box::new(|v| v["type"] = json!("Error")), "/type"),
        ];
        for (change, field) in cases {
            let mut v = event();
            change(&mut v);
            assert_eq!(invalid_field(k, &v).as_deref(), Some(field));
        }
    }

    #[test]
    fn not_json_is_400_without_a_field() {
        let cfg = Config::default();
        for body in [&b"not json"[..], b"", b"{\"version\":"] {
            let r = validate_body(&cfg, SignalType::Prometheus, body);
            assert_eq!(r.as_ref().map(|r| r.status), Some(400));
            let p = r.as_ref().map(problem).unwrap_or_default();
            assert_eq!(p["type"], "https://signalgate.io/problems/invalid-json");
            assert!(p.get("field").is_none());
        }
    }

    #[test]
    fn forwarded_headers_and_outcome_names() {
        let a = Admitted {
            source: "127.0.0.1".into(),
            signal_type: SignalType::KubernetesEvent,
            response_headers: vec![],
            limit_error: None,
        };
        assert_eq!(
            a.forward_headers(),
            [
                ("x-signalgate-source", "127.0.0.1"),
                ("x-signalgate-signal-type", "kubernetes-event")
            ]
        );
        let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(
            names,
            [
                "accepted",
                "rate_limited",
                "unauthorized",
                "invalid",
                "too_large",
                "unsupported_media_type",
                "not_found",
                "method_not_allowed"
            ]
        );
        assert!(Outcome::ALL.iter().enumerate().all(|(i, o)| o.index() == i));
    }

    #[test]
    fn replies_are_problem_json() {
        let r = route("GET", PROM).err();
        let h = r.as_ref().map(|r| r.all_headers()).unwrap_or_default();
        assert_eq!(
            h.first(),
            Some(&("content-type", "application/problem+json"))
        );
        let long = "/x".repeat(500);
        let r = route("POST", &long).err();
        assert!(r.is_some_and(|r| r.body.len() < 600));
    }
}
