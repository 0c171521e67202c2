//! RFC 9457 problem details (`application/problem+json`), the body of every
//! error signalgate answers, at the edge and in the sidecar.

use serde::Serialize;

use crate::invalid::{Invalid, InvalidKind};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Base of the `type` URIs; each problem type is documented in docs/reference.md.
pub const TYPE_BASE: &str = "https://signalgate.io/problems/";

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// JSON pointer to the offending field, where one field is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    /// A problem of type `TYPE_BASE + slug`.
    pub fn new(status: u16, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("{TYPE_BASE}{slug}"),
            title: title.to_string(),
            status,
            detail: detail.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: Option<String>) -> Self {
        self.field = field;
        self
    }

    /// The JSON body. Serialising this struct cannot fail; the fallback keeps
    /// the no-panic rule without an `unwrap`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                "{{\"type\":\"{TYPE_BASE}internal\",\"title\":\"Internal error\",\"status\":{}}}",
                self.status
            )
        })
    }
}

impl From<&Invalid> for Problem {
    fn from(invalid: &Invalid) -> Self {
        let (slug, title) = match invalid.kind {
            InvalidKind::NotJson => ("invalid-json", "Body is not valid JSON"),
            InvalidKind::Field => ("invalid-signal", "Invalid signal payload"),
        };
        Problem::new(400, slug, title, invalid.detail.clone()).with_field(invalid.field.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_field_becomes_a_400_naming_the_field() {
        let p = Problem::from(&Invalid::field("/alerts/0/status", "bad"));
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["status"], 400);
        assert_eq!(v["field"], "/alerts/0/status");
        assert_eq!(v["type"], "https://signalgate.io/problems/invalid-signal");
        assert_eq!(v["detail"], "bad");
    }

    #[test]
    fn field_is_omitted_when_no_field_is_at_fault() {
        let p = Problem::new(429, "rate-limited", "Too many requests", "slow down");
        assert!(!p.to_json().contains("\"field\""));
    }
}
