//! Label sets and the Prometheus label rules.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::text::Text;

/// A label or annotation set as sent: string names, string values, in
/// document order. A list rather than a map: the sets are small, a lookup is
/// a short scan, and reading one costs a single allocation (this is on the
/// edge filter's hot path). A name sent twice keeps its last value, as a map
/// would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels<'a>(Vec<(Text<'a>, Text<'a>)>);

impl<'a> Labels<'a> {
    /// The value of `name`, if present (the last one sent).
    pub fn get(&self, name: &str) -> Option<&Text<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v)
    }

    /// Names and values in document order (repeated names included).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Text<'a>, &Text<'a>)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Names in document order.
    pub fn keys(&self) -> impl Iterator<Item = &Text<'a>> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = Labels<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut list = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some(entry) = map.next_entry::<Text<'de>, Text<'de>>()? {
                    list.push(entry);
                }
                Ok(Labels(list))
            }
        }
        deserializer.deserialize_map(LabelsVisitor)
    }
}

/// A classic Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_order_and_the_last_repeat_wins() {
        let l: Labels<'_> = serde_json::from_str(r#"{"b": "1", "a": "2", "b": "3"}"#).unwrap();
        assert_eq!(l.get("b").map(|v| v.as_str()), Some("3"));
        assert_eq!(l.get("a").map(|v| v.as_str()), Some("2"));
        assert_eq!(l.get("c"), None);
        let names: Vec<&str> = l.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["b", "a", "b"]);
        assert!(serde_json::from_str::<Labels<'_>>(r#"{"a": 1}"#).is_err());
        assert!(serde_json::from_str::<Labels<'_>>(r#"["a"]"#).is_err());
    }

    #[test]
    fn accepts_classic_label_names() {
        for ok in ["alertname", "_x", "a1", "A_B_9", "__name__"] {
            assert!(is_valid_label_name(ok), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_label_names() {
        for bad in ["", "1a", "a-b", "a.b", "é", "a b", "a/b"] {
            assert!(!is_valid_label_name(bad), "{bad}");
        }
    }
}
