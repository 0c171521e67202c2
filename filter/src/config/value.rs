//! The configuration's values, each checked as it is read: its type, its
//! range, and an error that says what was expected and what came instead.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::ratelimit::MAX_RATE;
use crate::source::SourceMode;
use crate::tenants::parse_sha256_hex;

pub const MAX_TRUSTED_HOPS: u64 = 64;
pub const MAX_BODY_BYTES_LIMIT: u64 = 1 << 30;
pub const MAX_ALERTS_LIMIT: u64 = 1_000_000;
pub const MAX_TENANT_NAME_LEN: usize = 128;

/// A JSON value, as much of it as a value check or its error needs (the
/// members of arrays and objects are skipped).
enum Scalar {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array,
    Object,
}

impl Scalar {
    fn as_u64(&self) -> Option<u64> {
        match self {
            Scalar::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// A short description for error messages.
    fn describe(&self) -> String {
        match self {
            Scalar::Null => "null".to_string(),
            Scalar::Bool(b) => format!("{b}"),
            Scalar::Number(n) => format!("{n}"),
            Scalar::String(s) => format!("the string {s:?}"),
            Scalar::Array => "an array".to_string(),
            Scalar::Object => "an object".to_string(),
        }
    }

    fn into_string<E: de::Error>(self) -> Result<String, E> {
        match self {
            Scalar::String(s) => Ok(s),
            other => Err(E::custom(format!(
                "expected a string, got {}",
                other.describe()
            ))),
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        serde_json::Number::from_f64(v)
            .map(Scalar::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A whole number from `MIN` to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Whole<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Scalar::deserialize(d)?;
        match value.as_u64() {
            Some(n) if (MIN..=MAX).contains(&n) => Ok(Whole(n)),
            _ => Err(de::Error::custom(format!(
                "expected a whole number from {MIN} to {MAX}, got {}",
                value.describe()
            ))),
        }
    }
}

/// `requests_per_minute` and `burst`.
pub type Rate = Whole<1, { MAX_RATE as u64 }>;
pub type TrustedHops = Whole<0, MAX_TRUSTED_HOPS>;
pub type MaxBodyBytes = Whole<1, MAX_BODY_BYTES_LIMIT>;
pub type MaxAlerts = Whole<1, MAX_ALERTS_LIMIT>;

impl Rate {
    pub fn per_minute(self) -> u32 {
        // In range by construction (`MAX_RATE` is a u32).
        u32::try_from(self.0).unwrap_or(MAX_RATE)
    }
}

/// `over_limit_status`: 429 or 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimitStatus(pub u16);

impl<'de> Deserialize<'de> for OverLimitStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Scalar::deserialize(d)?;
        match value.as_u64() {
            Some(429) => Ok(OverLimitStatus(429)),
            Some(503) => Ok(OverLimitStatus(503)),
            _ => Err(de::Error::custom(format!(
                "expected 429 or 503, got {}",
                value.describe()
            ))),
        }
    }
}

/// `source`: `"remote_address"`, `"x-forwarded-for"` (its `trusted_hops`
/// set later) or `"header:<name>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source(pub SourceMode);

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Scalar::deserialize(d)?.into_string()?;
        source_mode(&s).map(Source).map_err(de::Error::custom)
    }
}

fn source_mode(s: &str) -> Result<SourceMode, String> {
    match s {
        "remote_address" => Ok(SourceMode::RemoteAddress),
        "x-forwarded-for" => Ok(SourceMode::ForwardedFor { trusted_hops: 0 }),
        _ => match s.strip_prefix("header:") {
            Some(name) => {
                let name = name.trim().to_ascii_lowercase();
                if is_header_name(&name) {
                    Ok(SourceMode::Header(name))
                } else {
                    Err(format!("{s:?} does not name a valid request header"))
                }
            }
            None => Err(format!(
                "expected \"remote_address\", \"x-forwarded-for\" or \"header:<name>\", got {s:?}"
            )),
        },
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

/// A tenant's `name`: 1 to [`MAX_TENANT_NAME_LEN`] printable ASCII
/// characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantName(pub String);

impl<'de> Deserialize<'de> for TenantName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Scalar::deserialize(d)?.into_string()?;
        let name = s.trim();
        let printable = name.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if name.is_empty() || name.len() > MAX_TENANT_NAME_LEN || !printable {
            return Err(de::Error::custom(format!(
                "a tenant name is 1 to {MAX_TENANT_NAME_LEN} printable ASCII characters"
            )));
        }
        Ok(TenantName(name.to_string()))
    }
}

/// A tenant's `token_sha256`: 64 hex digits, either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSha256(pub [u8; 32]);

impl<'de> Deserialize<'de> for TokenSha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Scalar::deserialize(d)?.into_string()?;
        parse_sha256_hex(s.trim())
            .map(TokenSha256)
            .ok_or_else(|| de::Error::custom("expected 64 hex digits (the SHA-256 of the token)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<T: for<'de> Deserialize<'de>>(json: &str) -> Result<T, String> {
        let mut de = serde_json::Deserializer::from_str(json);
        T::deserialize(&mut de).map_err(|e| {
            let message = e.to_string();
            let at = format!(" at line {} column {}", e.line(), e.column());
            message.strip_suffix(&at).unwrap_or(&message).to_string()
        })
    }

    #[test]
    fn whole_numbers_are_checked_against_their_range() {
        assert_eq!(read::<Rate>("1"), Ok(Whole(1)));
        assert_eq!(
            read::<Rate>("100000000").map(Rate::per_minute),
            Ok(MAX_RATE)
        );
        assert_eq!(read::<TrustedHops>("0"), Ok(Whole(0)));
        for (json, got) in [
            ("0", "0"),
            ("100000001", "100000001"),
            ("-5", "-5"),
            ("2.5", "2.5"),
            ("20.0", "20.0"),
            ("1e300", "1e+300"),
            ("null", "null"),
            ("true", "true"),
            ("\"7\"", "the string \"7\""),
            ("[1]", "an array"),
            ("{\"a\": 1}", "an object"),
        ] {
            assert_eq!(
                read::<Rate>(json),
                Err(format!(
                    "expected a whole number from 1 to 100000000, got {got}"
                )),
                "{json}"
            );
        }
    }

    #[test]
    fn over_limit_status_is_429_or_503() {
        assert_eq!(read::<OverLimitStatus>("429"), Ok(OverLimitStatus(429)));
        assert_eq!(read::<OverLimitStatus>("503"), Ok(OverLimitStatus(503)));
        for bad in ["500", "\"429\"", "429.0", "70000", "-429"] {
            assert!(read::<OverLimitStatus>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_and_tenant_values() {
        assert_eq!(
            read::<Source>("\"header:a b\""),
            Err("\"header:a b\" does not name a valid request header".to_string())
        );
        assert_eq!(
            read::<Source>("\"header: X-Team\""),
            Ok(Source(SourceMode::Header("x-team".into())))
        );
        assert_eq!(
            read::<Source>("1"),
            Err("expected a string, got 1".to_string())
        );
        assert_eq!(
            read::<TenantName>("\" team a \""),
            Ok(TenantName("team a".into()))
        );
        let long = format!("\"{}\"", "n".repeat(MAX_TENANT_NAME_LEN + 1));
        for bad in [long.as_str(), "\"caf\u{e9}\"", "\"a\\tb\"", "\"  \""] {
            assert!(read::<TenantName>(bad).is_err(), "{bad}");
        }
        let hex = format!("\" {} \"", "Ab".repeat(32));
        assert_eq!(read::<TokenSha256>(&hex), Ok(TokenSha256([0xab; 32])));
        assert!(read::<TokenSha256>("\"abc\"").is_err());
    }
}
