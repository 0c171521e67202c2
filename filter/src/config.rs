//! The plugin configuration: a JSON object with exactly these keys (all
//! optional):
//!
//! | key | type | default |
//! | --- | --- | --- |
//! | `requests_per_minute` | integer 1..=100 000 000 | 100 |
//! | `burst` | integer 1..=100 000 000 | `requests_per_minute` |
//! | `source` | `"remote_address"`, `"x-forwarded-for"` or `"header:<name>"` | `"remote_address"` |
//! | `trusted_hops` | integer 0..=64 (only with `x-forwarded-for`) | 0 |
//! | `over_limit_status` | 429 or 503 | 429 |
//! | `max_body_bytes` | integer 1..=1 GiB | 262 144 |
//! | `max_alerts_per_request` | integer 1..=1 000 000 | 1000 |
//! | `tenants` | non-empty array of `{"name", "token_sha256", "requests_per_minute"?}` | none |
//!
//! A tenant's bucket refills at its own `requests_per_minute` and holds as
//! many tokens (its burst); without one it uses the global rate and burst.
//! Unknown or repeated keys, wrong types and out-of-range values are errors
//! naming the key, so Envoy refuses the configuration instead of running
//! with a limit nobody asked for.
//!
//! [`document`] is the document's shape (serde-derived), [`value`] checks
//! each value, [`error`] names the key at fault; [`parse`] reads the document
//! and checks what relates two keys.

use crate::ratelimit::Limit;
use crate::source::SourceMode;
use crate::tenants::{Tenant, Tenants};

pub mod document;
pub mod error;
pub mod value;

use document::{Document, Object, TenantEntry};
use error::ConfigError;

pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 100;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 256 * 1024;
pub const DEFAULT_MAX_ALERTS: usize = 1000;
pub const DEFAULT_OVER_LIMIT_STATUS: u16 = 429;

/// The filter's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Per-source limit (and tenants' default).
    pub limit: Limit,
    pub source: SourceMode,
    pub over_limit_status: u16,
    pub max_body_bytes: u64,
    pub max_alerts_per_request: usize,
    pub tenants: Option<Tenants>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limit: Limit {
                per_minute: DEFAULT_REQUESTS_PER_MINUTE,
                burst: DEFAULT_REQUESTS_PER_MINUTE,
            },
            source: SourceMode::RemoteAddress,
            over_limit_status: DEFAULT_OVER_LIMIT_STATUS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_alerts_per_request: DEFAULT_MAX_ALERTS,
            tenants: None,
        }
    }
}

impl Config {
    /// One line saying what the filter runs with, for the log.
    pub fn summary(&self) -> String {
        format!(
            "{} requests/min, burst {}, source {:?}, over-limit status {}, \
             max body {} bytes, max alerts {}, {} tenants",
            self.limit.per_minute,
            self.limit.burst,
            self.source,
            self.over_limit_status,
            self.max_body_bytes,
            self.max_alerts_per_request,
            self.tenants.as_ref().map_or(0, |t| t.list().len())
        )
    }
}

/// Parses the plugin configuration; no configuration (or only whitespace)
/// means all defaults.
pub fn parse(bytes: Option<&[u8]>) -> Result<Config, ConfigError> {
    let bytes = bytes.unwrap_or_default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Config::default());
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let Object(doc): Object<Document> =
        serde_path_to_error::deserialize(&mut json).map_err(|e| error::from_serde(&e))?;
    json.end().map_err(|e| error::not_json(&e))?;
    build(doc)
}

/// The configuration a well-formed document gives, once what relates two
/// keys is checked.
fn build(doc: Document) -> Result<Config, ConfigError> {
    let defaults = Config::default();
    let per_minute = doc
        .requests_per_minute
        .map_or(DEFAULT_REQUESTS_PER_MINUTE, |r| r.per_minute());
    let limit = Limit {
        per_minute,
        burst: doc.burst.map_or(per_minute, |r| r.per_minute()),
    };
    let mut source = doc.source.map_or(SourceMode::RemoteAddress, |s| s.0);
    match (&mut source, doc.trusted_hops) {
        (SourceMode::ForwardedFor { trusted_hops }, Some(hops)) => {
            *trusted_hops = u32::try_from(hops.0).unwrap_or(0);
        }
        (_, None) => {}
        (_, Some(hops)) if hops.0 == 0 => {}
        (_, Some(_)) => {
            return Err(ConfigError::new(
                "trusted_hops",
                "only meaningful with \"source\": \"x-forwarded-for\"",
            ))
        }
    }
    let tenants = match doc.tenants {
        Some(list) => Some(tenants(list.0, limit)?),
        None => None,
    };
    Ok(Config {
        limit,
        source,
        over_limit_status: doc
            .over_limit_status
            .map_or(defaults.over_limit_status, |s| s.0),
        max_body_bytes: doc.max_body_bytes.map_or(defaults.max_body_bytes, |n| n.0),
        max_alerts_per_request: doc
            .max_alerts_per_request
            .map_or(defaults.max_alerts_per_request, |n| {
                usize::try_from(n.0).unwrap_or(DEFAULT_MAX_ALERTS)
            }),
        tenants,
    })
}

/// The tenants, each name and each token once; a tenant without its own
/// rate has the global `limit`.
fn tenants(entries: Vec<TenantEntry>, limit: Limit) -> Result<Tenants, ConfigError> {
    let mut list: Vec<Tenant> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let name = entry.name.0;
        if list.iter().any(|t| t.name == name) {
            return Err(ConfigError::new(
                format!("tenants[{i}].name"),
                format!("tenant {name:?} is listed twice"),
            ));
        }
        let token_sha256 = entry.token_sha256.0;
        if list.iter().any(|t| t.token_sha256 == token_sha256) {
            return Err(ConfigError::new(
                format!("tenants[{i}].token_sha256"),
                "two tenants have the same token",
            ));
        }
        let limit = match entry.requests_per_minute {
            Some(rate) => Limit {
                per_minute: rate.per_minute(),
                burst: rate.per_minute(),
            },
            None => limit,
        };
        list.push(Tenant {
            name,
            token_sha256,
            limit,
        });
    }
    Ok(Tenants::new(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::parse_sha256_hex;

    const HASH_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const HASH_B: &str = "60303AE22B998861BCE3B28F33EEC1BE758A213C86C93C076DBE9F558C11C752";

    fn parse_str(s: &str) -> Result<Config, ConfigError> {
        parse(Some(s.as_bytes()))
    }

    /// The configuration `s` gives; a fixture that does not parse fails the
    /// test with the parse error.
    fn parsed(s: &str) -> Config {
        parse_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err_key(s: &str) -> String {
        match parse_str(s) {
            Err(e) => e.key,
            Ok(c) => panic!("{s} was accepted: {c:?}"),
        }
    }

    #[test]
    fn no_configuration_means_defaults() {
        for empty in [None, Some(&b""[..]), Some(b"  \n"), Some(b"{}")] {
            assert_eq!(parse(empty), Ok(Config::default()));
        }
        let c = Config::default();
        assert_eq!(c.limit.per_minute, 100);
        assert_eq!(c.limit.burst, 100);
        assert_eq!(c.over_limit_status, 429);
        assert_eq!(c.max_body_bytes, 262_144);
        assert_eq!(c.max_alerts_per_request, 1000);
        assert_eq!(c.source, SourceMode::RemoteAddress);
        assert!(c.tenants.is_none());
    }

    #[test]
    fn every_knob_is_read() {
        let c = parse_str(&format!(
            r#"{{"requests_per_minute": 20, "burst": 5, "source": "x-forwarded-for",
                "trusted_hops": 2, "over_limit_status": 503, "max_body_bytes": 1024,
                "max_alerts_per_request": 7,
                "tenants": [{{"name": "team-a", "token_sha256": "{HASH_A}", "requests_per_minute": 3}},
                            {{"name": "team-b", "token_sha256": "{HASH_B}"}}]}}"#
        ));
        assert!(c.is_ok(), "{c:?}");
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.limit,
            Limit {
                per_minute: 20,
                burst: 5
            }
        );
        assert_eq!(c.source, SourceMode::ForwardedFor { trusted_hops: 2 });
        assert_eq!(c.over_limit_status, 503);
        assert_eq!(c.max_body_bytes, 1024);
        assert_eq!(c.max_alerts_per_request, 7);
        let tenants = c.tenants.map(|t| t.list().to_vec()).unwrap_or_default();
        assert_eq!(tenants.len(), 2);
        assert_eq!(tenants[0].name, "team-a");
        assert_eq!(
            tenants[0].limit,
            Limit {
                per_minute: 3,
                burst: 3
            }
        );
        assert_eq!(tenants[1].limit, c.limit);
        assert_eq!(parse_sha256_hex(HASH_B), Some(tenants[1].token_sha256));
    }

    #[test]
    fn burst_defaults_to_the_rate() {
        let c = parsed(r#"{"requests_per_minute": 20}"#);
        assert_eq!(c.limit.burst, 20);
    }

    #[test]
    fn source_forms() {
        let src = |s: &str| parse_str(&format!(r#"{{"source": {s}}}"#)).map(|c| c.source);
        assert_eq!(src(r#""remote_address""#), Ok(SourceMode::RemoteAddress));
        assert_eq!(
            src(r#""header:X-Team-Id""#),
            Ok(SourceMode::Header("x-team-id".into()))
        );
        for bad in [
            r#""header:""#,
            r#""header:a b""#,
            r#""header::path""#,
            r#""ip""#,
            "1",
        ] {
            assert_eq!(
                src(bad).err().map(|e| e.key).as_deref(),
                Some("source"),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse_str(r#"{"requests_per_minute": 5, "rate": 5}"#).err();
        assert_eq!(e.as_ref().map(|e| e.key.as_str()), Some("rate"));
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("key \"rate\""), "{msg}");
        assert!(msg.contains("unknown key"), "{msg}");
        assert_eq!(
            err_key(&format!(
                r#"{{"tenants": [{{"name": "a", "token_sha256": "{HASH_A}", "token": "x"}}]}}"#
            )),
            "tenants[0].token"
        );
    }

    #[test]
    fn wrong_types_and_ranges_are_named() {
        for (json, key) in [
            (r#"{"requests_per_minute": "20"}"#, "requests_per_minute"),
            (r#"{"requests_per_minute": 0}"#, "requests_per_minute"),
            (r#"{"requests_per_minute": -5}"#, "requests_per_minute"),
            (r#"{"requests_per_minute": 2.5}"#, "requests_per_minute"),
            (
                r#"{"requests_per_minute": 100000001}"#,
                "requests_per_minute",
            ),
            (r#"{"burst": null}"#, "burst"),
            (r#"{"over_limit_status": 500}"#, "over_limit_status"),
            (r#"{"over_limit_status": "429"}"#, "over_limit_status"),
            (r#"{"max_body_bytes": 0}"#, "max_body_bytes"),
            (r#"{"max_body_bytes": true}"#, "max_body_bytes"),
            (
                r#"{"max_alerts_per_request": []}"#,
                "max_alerts_per_request",
            ),
            (
                r#"{"source": "x-forwarded-for", "trusted_hops": 65}"#,
                "trusted_hops",
            ),
            (r#"{"trusted_hops": 1}"#, "trusted_hops"),
            (r#"{"tenants": {}}"#, "tenants"),
            (r#"{"tenants": []}"#, "tenants"),
            (r#"{"tenants": [1]}"#, "tenants[0]"),
            (r#"{"tenants": [{"name": "a"}]}"#, "tenants[0].token_sha256"),
            (
                r#"{"tenants": [{"name": "a", "token_sha256": "abc"}]}"#,
                "tenants[0].token_sha256",
            ),
            (r#"{"tenants": [{"name": 1}]}"#, "tenants[0].name"),
            (r#"{"tenants": [{"name": ""}]}"#, "tenants[0].name"),
            (
                r#"{"requests_per_minute": 1, "requests_per_minute": 2}"#,
                "requests_per_minute",
            ),
        ] {
            assert_eq!(err_key(json), key, "{json}");
        }
        // trusted_hops 0 is harmless with any source.
        assert!(parse_str(r#"{"trusted_hops": 0}"#).is_ok());
        let e = parse_str(r#"{"burst": "x"}"#).err().map(|e| e.detail);
        assert_eq!(
            e.as_deref(),
            Some("expected a whole number from 1 to 100000000, got the string \"x\"")
        );
    }

    #[test]
    fn tenants_must_be_distinct() {
        let twice_name = format!(
            r#"{{"tenants": [{{"name": "a", "token_sha256": "{HASH_A}"}}, {{"name": "a", "token_sha256": "{HASH_B}"}}]}}"#
        );
        assert_eq!(err_key(&twice_name), "tenants[1].name");
        let twice_token = format!(
            r#"{{"tenants": [{{"name": "a", "token_sha256": "{HASH_A}"}}, {{"name": "b", "token_sha256": "{}"}}]}}"#,
            HASH_A.to_uppercase()
        );
        assert_eq!(err_key(&twice_token), "tenants[1].token_sha256");
        let no_name = format!(r#"{{"tenants": [{{"token_sha256": "{HASH_A}"}}]}}"#);
        assert_eq!(err_key(&no_name), "tenants[0].name");
    }

    #[test]
    fn not_json_or_not_an_object_is_refused() {
        for bad in ["{", "[1]", "\"x\"", "{\"burst\": 1} x", "nul"] {
            let e = parse_str(bad);
            assert!(e.is_err(), "{bad}");
            assert_eq!(err_key(bad), "", "{bad}");
        }
        let msg = parse_str("[1]")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("must be a JSON object"), "{msg}");
    }

    #[test]
    fn repeated_keys_are_refused_at_every_level() {
        let tenant = format!(r#"{{"name": "a", "token_sha256": "{HASH_A}"}}"#);
        for (json, key) in [
            (r#"{"burst": 5, "burst": 5}"#.to_string(), "burst"),
            // Also when the first copy is out of range or of another type.
            (r#"{"burst": 5, "burst": "x"}"#.to_string(), "burst"),
            (
                format!(r#"{{"tenants": [{tenant}], "tenants": [{tenant}]}}"#),
                "tenants",
            ),
            (
                format!(
                    r#"{{"tenants": [{{"name": "a", "name": "b", "token_sha256": "{HASH_A}"}}]}}"#
                ),
                "tenants[0].name",
            ),
            (
                format!(
                    r#"{{"tenants": [{tenant}, {{"name": "b", "token_sha256": "{HASH_B}",
                        "requests_per_minute": 1, "requests_per_minute": 1}}]}}"#
                ),
                "tenants[1].requests_per_minute",
            ),
        ] {
            let e = parse_str(&json).err();
            assert_eq!(e.as_ref().map(|e| e.key.as_str()), Some(key), "{json}");
            assert_eq!(
                e.map(|e| e.detail).as_deref(),
                Some("given more than once"),
                "{json}"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let detail = |json: &str| match parse_str(json) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("{json} was accepted: {c:?}"),
        };
        assert_eq!(
            detail(r#"{"rate": 5}"#),
            "invalid plugin configuration: key \"rate\": unknown key: expected one of \
             `requests_per_minute`, `burst`, `source`, `trusted_hops`, `over_limit_status`, \
             `max_body_bytes`, `max_alerts_per_request`, `tenants`"
        );
        assert_eq!(
            detail(r#"{"tenants": [{"name": "a"}]}"#),
            "invalid plugin configuration: key \"tenants[0].token_sha256\": missing"
        );
        assert_eq!(
            detail(r#"{"tenants": [[]]}"#),
            "invalid plugin configuration: key \"tenants[0]\": a tenant must be a JSON object, \
             not an array"
        );
        assert_eq!(
            detail(r#"{"tenants": {}}"#),
            "invalid plugin configuration: key \"tenants\": expected an array of tenants, \
             got an object"
        );
        assert_eq!(
            detail(r#"{"over_limit_status": 500}"#),
            "invalid plugin configuration: key \"over_limit_status\": expected 429 or 503, got 500"
        );
        assert!(detail("{\"burst\": 1} x").contains("is not valid JSON"));
        // A key that holds a backtick is still named whole.
        assert_eq!(err_key(r#"{"a`, expected b": 1}"#), "a`, expected b");
    }

    #[test]
    fn tenants_without_a_rate_share_the_global_limit() {
        let c = parsed(&format!(
            r#"{{"requests_per_minute": 7, "burst": 9,
                "tenants": [{{"name": " team a ", "token_sha256": "{HASH_A}"}}]}}"#
        ));
        let tenants = c.tenants.as_ref().map(|t| t.list().to_vec());
        let tenant = tenants.as_ref().and_then(|t| t.first());
        assert_eq!(tenant.map(|t| t.name.as_str()), Some("team a"));
        assert_eq!(tenant.map(|t| t.limit), Some(c.limit));
        assert_eq!(
            c.summary(),
            "7 requests/min, burst 9, source RemoteAddress, over-limit status 429, \
             max body 262144 bytes, max alerts 1000, 1 tenants"
        );
    }
}
