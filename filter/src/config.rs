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

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::ratelimit::{Limit, MAX_RATE};
use crate::source::SourceMode;
use crate::tenants::{parse_sha256_hex, Tenant, Tenants};

pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 100;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 256 * 1024;
pub const DEFAULT_MAX_ALERTS: usize = 1000;
pub const DEFAULT_OVER_LIMIT_STATUS: u16 = 429;
pub const MAX_TRUSTED_HOPS: u64 = 64;
pub const MAX_BODY_BYTES_LIMIT: u64 = 1 << 30;
pub const MAX_ALERTS_LIMIT: u64 = 1_000_000;
pub const MAX_TENANT_NAME_LEN: usize = 128;

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

/// A configuration error: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key at fault (`tenants[1].token_sha256` for nested ones; empty
    /// when the whole configuration is at fault).
    pub key: String,
    pub detail: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, detail: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid plugin configuration: {}", self.detail)
        } else {
            write!(
                f,
                "invalid plugin configuration: key \"{}\": {}",
                self.key, self.detail
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A JSON value that keeps every member of an object, in order, so that
/// repeated keys can be refused (serde_json's `Value` keeps only the last).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Number(_) => "a number",
            Node::String(_) => "a string",
            Node::Array(_) => "an array",
            Node::Object(_) => "an object",
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        serde_json::Number::from_f64(v)
            .map(Node::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Node>()? {
            members.push(member);
        }
        Ok(Node::Object(members))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// The members of an object, refusing repeated keys (`at` prefixes key names).
fn members<'n>(node: &'n Node, at: &str, what: &str) -> Result<&'n [(String, Node)], ConfigError> {
    let Node::Object(members) = node else {
        return Err(ConfigError::new(
            at,
            format!("{what} must be a JSON object, not {}", node.kind()),
        ));
    };
    for (i, (key, _)) in members.iter().enumerate() {
        if members.iter().take(i).any(|(k, _)| k == key) {
            return Err(ConfigError::new(join(at, key), "given more than once"));
        }
    }
    Ok(members)
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn integer(key: &str, node: &Node, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n = match node {
        Node::Number(n) => n.as_u64(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            key,
            format!(
                "expected a whole number from {min} to {max}, got {}",
                describe(node)
            ),
        )),
    }
}

fn rate(key: &str, node: &Node) -> Result<u32, ConfigError> {
    let n = integer(key, node, 1, u64::from(MAX_RATE))?;
    u32::try_from(n).map_err(|_| ConfigError::new(key, "out of range"))
}

fn string<'n>(key: &str, node: &'n Node) -> Result<&'n str, ConfigError> {
    match node {
        Node::String(s) => Ok(s),
        other => Err(ConfigError::new(
            key,
            format!("expected a string, got {}", describe(other)),
        )),
    }
}

/// A short description of a value for error messages.
fn describe(node: &Node) -> String {
    match node {
        Node::Number(n) => format!("{n}"),
        Node::String(s) => format!("the string {s:?}"),
        Node::Bool(b) => format!("{b}"),
        other => other.kind().to_string(),
    }
}

/// Whether `name` is a header name Envoy hands to filters (an RFC 9110
/// token, lower case; pseudo-headers excluded).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn parse_source(node: &Node) -> Result<SourceMode, ConfigError> {
    let s = string("source", node)?;
    match s {
        "remote_address" => Ok(SourceMode::RemoteAddress),
        "x-forwarded-for" => Ok(SourceMode::ForwardedFor { trusted_hops: 0 }),
        _ => match s.strip_prefix("header:") {
            Some(name) => {
                let name = name.trim().to_ascii_lowercase();
                if is_header_name(&name) {
                    Ok(SourceMode::Header(name))
                } else {
                    Err(ConfigError::new(
                        "source",
                        format!("{s:?} does not name a valid request header"),
                    ))
                }
            }
            None => Err(ConfigError::new(
                "source",
                format!(
                    "expected \"remote_address\", \"x-forwarded-for\" or \"header:<name>\", got {s:?}"
                ),
            )),
        },
    }
}

/// The raw tenant before the global limit is known.
struct RawTenant {
    name: String,
    token_sha256: [u8; 32],
    per_minute: Option<u32>,
}

fn parse_tenants(node: &Node) -> Result<Vec<RawTenant>, ConfigError> {
    let Node::Array(items) = node else {
        return Err(ConfigError::new(
            "tenants",
            format!("expected an array of tenants, got {}", describe(node)),
        ));
    };
    if items.is_empty() {
        return Err(ConfigError::new(
            "tenants",
            "empty: list at least one tenant, or leave tenants out",
        ));
    }
    let mut out: Vec<RawTenant> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("tenants[{i}]");
        let (mut name, mut token, mut per_minute) = (None, None, None);
        for (key, value) in members(item, &at, "a tenant")? {
            let k = join(&at, key);
            match key.as_str() {
                "name" => {
                    let n = string(&k, value)?.trim();
                    let valid = n.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
                    if n.is_empty() || n.len() > MAX_TENANT_NAME_LEN || !valid {
                        return Err(ConfigError::new(
                            k,
                            format!(
                                "a tenant name is 1 to {MAX_TENANT_NAME_LEN} printable ASCII characters"
                            ),
                        ));
                    }
                    if out.iter().any(|t| t.name == n) {
                        return Err(ConfigError::new(k, format!("tenant {n:?} is listed twice")));
                    }
                    name = Some(n.to_string());
                }
                "token_sha256" => {
                    let hex = string(&k, value)?;
                    let digest = parse_sha256_hex(hex.trim()).ok_or_else(|| {
                        ConfigError::new(&k, "expected 64 hex digits (the SHA-256 of the token)")
                    })?;
                    if out.iter().any(|t| t.token_sha256 == digest) {
                        return Err(ConfigError::new(k, "two tenants have the same token"));
                    }
                    token = Some(digest);
                }
                "requests_per_minute" => per_minute = Some(rate(&k, value)?),
                _ => {
                    return Err(ConfigError::new(
                        k,
                        "unknown key: a tenant has name, token_sha256 and requests_per_minute",
                    ))
                }
            }
        }
        let name = name.ok_or_else(|| ConfigError::new(join(&at, "name"), "missing"))?;
        let token_sha256 =
            token.ok_or_else(|| ConfigError::new(join(&at, "token_sha256"), "missing"))?;
        out.push(RawTenant {
            name,
            token_sha256,
            per_minute,
        });
    }
    Ok(out)
}

/// Parses the plugin configuration; no configuration (or only whitespace)
/// means all defaults.
pub fn parse(bytes: Option<&[u8]>) -> Result<Config, ConfigError> {
    let bytes = bytes.unwrap_or_default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Config::default());
    }
    let root: Node = serde_json::from_slice(bytes).map_err(|e| {
        ConfigError::new(
            "",
            format!("the plugin configuration is not valid JSON: {e}"),
        )
    })?;
    let mut cfg = Config::default();
    let (mut per_minute, mut burst, mut hops, mut source) = (None, None, None, None);
    let mut tenants = None;
    for (key, value) in members(&root, "", "the plugin configuration")? {
        match key.as_str() {
            "requests_per_minute" => per_minute = Some(rate(key, value)?),
            "burst" => burst = Some(rate(key, value)?),
            "source" => source = Some(parse_source(value)?),
            "trusted_hops" => hops = Some(integer(key, value, 0, MAX_TRUSTED_HOPS)?),
            "over_limit_status" => {
                cfg.over_limit_status = match integer(key, value, 0, u64::from(u16::MAX)) {
                    Ok(429) => 429,
                    Ok(503) => 503,
                    _ => {
                        return Err(ConfigError::new(
                            key,
                            format!("expected 429 or 503, got {}", describe(value)),
                        ))
                    }
                }
            }
            "max_body_bytes" => {
                cfg.max_body_bytes = integer(key, value, 1, MAX_BODY_BYTES_LIMIT)?;
            }
            "max_alerts_per_request" => {
                let n = integer(key, value, 1, MAX_ALERTS_LIMIT)?;
                cfg.max_alerts_per_request = usize::try_from(n).unwrap_or(DEFAULT_MAX_ALERTS);
            }
            "tenants" => tenants = Some(parse_tenants(value)?),
            _ => {
                return Err(ConfigError::new(
                    key,
                    "unknown key: the knobs are requests_per_minute, burst, source, trusted_hops, \
                     over_limit_status, max_body_bytes, max_alerts_per_request and tenants",
                ))
            }
        }
    }
    let per_minute = per_minute.unwrap_or(DEFAULT_REQUESTS_PER_MINUTE);
    cfg.limit = Limit {
        per_minute,
        burst: burst.unwrap_or(per_minute),
    };
    cfg.source = source.unwrap_or(SourceMode::RemoteAddress);
    if let Some(h) = hops {
        match &mut cfg.source {
            SourceMode::ForwardedFor { trusted_hops } => {
                *trusted_hops = u32::try_from(h).unwrap_or(0);
            }
            _ if h == 0 => {}
            _ => {
                return Err(ConfigError::new(
                    "trusted_hops",
                    "only meaningful with \"source\": \"x-forwarded-for\"",
                ))
            }
        }
    }
    cfg.tenants = tenants.map(|list| {
        Tenants::new(
            list.into_iter()
                .map(|t| Tenant {
                    name: t.name,
                    token_sha256: t.token_sha256,
                    limit: match t.per_minute {
                        Some(n) => Limit {
                            per_minute: n,
                            burst: n,
                        },
                        None => cfg.limit,
                    },
                })
                .collect(),
        )
    });
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const HASH_B: &str = "60303AE22B998861BCE3B28F33EEC1BE758A213C86C93C076DBE9F558C11C752";

    fn parse_str(s: &str) -> Result<Config, ConfigError> {
        parse(Some(s.as_bytes()))
    }

    fn err_key(s: &str) -> String {
        parse_str(s).err().map(|e| e.key).unwrap_or_default()
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
        let c = c.unwrap_or_default();
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
        let c = parse_str(r#"{"requests_per_minute": 20}"#).unwrap_or_default();
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
}
