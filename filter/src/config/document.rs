//! The shape of the configuration document, as serde-derived types: every
//! key is a field, so serde refuses unknown and repeated keys at every level
//! (the document and each tenant), and the values check themselves
//! ([`super::value`]). What relates two keys is checked once it is read
//! (`config::parse`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::value::{
    MaxAlerts, MaxBodyBytes, OverLimitStatus, Rate, Source, TenantName, TokenSha256, TrustedHops,
};

/// The plugin configuration as written: `None` for a key left out.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default, deserialize_with = "given")]
    pub requests_per_minute: Option<Rate>,
    #[serde(default, deserialize_with = "given")]
    pub burst: Option<Rate>,
    #[serde(default, deserialize_with = "given")]
    pub source: Option<Source>,
    #[serde(default, deserialize_with = "given")]
    pub trusted_hops: Option<TrustedHops>,
    #[serde(default, deserialize_with = "given")]
    pub over_limit_status: Option<OverLimitStatus>,
    #[serde(default, deserialize_with = "given")]
    pub max_body_bytes: Option<MaxBodyBytes>,
    #[serde(default, deserialize_with = "given")]
    pub max_alerts_per_request: Option<MaxAlerts>,
    #[serde(default, deserialize_with = "given")]
    pub tenants: Option<TenantList>,
}

/// One entry of `tenants`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    pub name: TenantName,
    pub token_sha256: TokenSha256,
    #[serde(default, deserialize_with = "given")]
    pub requests_per_minute: Option<Rate>,
}

/// A key that is there, read as `T`: `null` is a wrong value, not a key
/// left out (serde would read it as `None`).
fn given<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// What an object is, for "... must be a JSON object".
pub trait Described {
    const WHAT: &'static str;
}

impl Described for Document {
    const WHAT: &'static str = "the plugin configuration";
}

impl Described for TenantEntry {
    const WHAT: &'static str = "a tenant";
}

/// `T` read from a JSON object and nothing else (serde's derived structs
/// also take an array of their fields in order).
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de> + Described> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjectVisitor(PhantomData))
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<T: Described> ObjectVisitor<T> {
    fn not_an_object<E: de::Error>(kind: &str) -> E {
        E::custom(format!("{} must be a JSON object, not {kind}", T::WHAT))
    }
}

impl<'de, T: Deserialize<'de> + Described> Visitor<'de> for ObjectVisitor<T> {
    type Value = Object<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as a JSON object", T::WHAT)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Object)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Object<T>, A::Error> {
        Err(Self::not_an_object("an array"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Object<T>, E> {
        Err(Self::not_an_object("null"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Object<T>, E> {
        Err(Self::not_an_object("a boolean"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Object<T>, E> {
        Err(Self::not_an_object("a number"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Object<T>, E> {
        Err(Self::not_an_object("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Object<T>, E> {
        Err(Self::not_an_object("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Object<T>, E> {
        Err(Self::not_an_object("a string"))
    }
}

/// `tenants`: a non-empty array of tenant objects.
#[derive(Debug)]
pub struct TenantList(pub Vec<TenantEntry>);

impl<'de> Deserialize<'de> for TenantList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TenantListVisitor)
    }
}

struct TenantListVisitor;

impl TenantListVisitor {
    fn not_a_list<E: de::Error>(got: &str) -> E {
        E::custom(format!("expected an array of tenants, got {got}"))
    }
}

impl<'de> Visitor<'de> for TenantListVisitor {
    type Value = TenantList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tenants")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TenantList, A::Error> {
        let mut list = Vec::new();
        while let Some(Object(entry)) = seq.next_element::<Object<TenantEntry>>()? {
            list.push(entry);
        }
        if list.is_empty() {
            return Err(de::Error::custom(
                "empty: list at least one tenant, or leave tenants out",
            ));
        }
        Ok(TenantList(list))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<TenantList, A::Error> {
        Err(Self::not_a_list("an object"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<TenantList, E> {
        Err(Self::not_a_list("null"))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<TenantList, E> {
        Err(Self::not_a_list(&v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<TenantList, E> {
        Err(Self::not_a_list(&v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<TenantList, E> {
        Err(Self::not_a_list(&v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<TenantList, E> {
        Err(Self::not_a_list(&v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<TenantList, E> {
        Err(Self::not_a_list(&format!("the string {v:?}")))
    }
}
