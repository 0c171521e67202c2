//! Why a payload was refused.

use std::fmt;

/// What kind of refusal: the body is not JSON at all, or one field is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKind {
    /// The body is not well-formed JSON (or has trailing data).
    NotJson,
    /// The JSON is well-formed but a field is missing, of the wrong type or out of range.
    Field,
}

/// A refused payload: always answered 400 with a problem+json body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub kind: InvalidKind,
    /// JSON pointer (RFC 6901) to the offending field; `""` is the whole document.
    pub field: Option<String>,
    /// Human-readable reason.
    pub detail: String,
}

impl Invalid {
    pub fn not_json(detail: impl Into<String>) -> Self {
        Invalid {
            kind: InvalidKind::NotJson,
            field: None,
            detail: detail.into(),
        }
    }

    pub fn field(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Invalid {
            kind: InvalidKind::Field,
            field: Some(pointer.into()),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

impl std::error::Error for Invalid {}

/// Appends one reference token to a JSON pointer, escaping `~` and `/`.
pub fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// Builds a JSON pointer from reference tokens.
pub fn pointer<'t>(tokens: impl IntoIterator<Item = &'t str>) -> String {
    let mut p = String::new();
    for t in tokens {
        push_token(&mut p, t);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_escapes_tilde_and_slash() {
        assert_eq!(pointer(["labels", "a/b~c"]), "/labels/a~1b~0c");
        assert_eq!(pointer([]), "");
    }
}
