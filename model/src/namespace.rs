//! Kubernetes namespaces: the name rule a signal's namespace must meet, and
//! where a signal's namespace came from.

use serde::{Deserialize, Serialize};

/// Where a signal's namespace came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceFrom {
    /// The alert's `namespace` label.
    Label,
    /// The alert's `exported_namespace` label.
    ExportedLabel,
    /// The event's object (or the event's own metadata).
    Object,
    /// None was given: the configured fallback namespace.
    Fallback,
}

/// A Kubernetes namespace name (an RFC 1123 label): what a signal's
/// namespace must be, since it names a directory of the directory sink and a
/// path segment of the Kubernetes API.
pub fn is_namespace_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The error detail for a namespace that is not [`is_namespace_name`].
pub(crate) fn not_a_namespace(v: &str) -> String {
    const RULE: &str = "a Kubernetes namespace name is at most 63 lower-case letters, \
                        digits and '-', starting and ending with a letter or digit";
    if v.len() > 63 {
        format!("{} bytes is too long: {RULE}", v.len())
    } else {
        format!("{v:?} is not a namespace name: {RULE}")
    }
}
