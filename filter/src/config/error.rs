//! A configuration error names the key at fault: serde's error for the
//! document, turned into the key's path (`tenants[1].token_sha256`) and what
//! is wrong with it.

use std::fmt;

/// A configuration error: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key at fault (`tenants[1].token_sha256` for nested ones; empty
    /// when the whole configuration is at fault).
    pub key: String,
    pub detail: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, detail: impl Into<String>) -> Self {
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

/// `key` under `parent` (`parent.key`, or `key` at the top).
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The document is not JSON (or has more after it).
pub fn not_json(e: &serde_json::Error) -> ConfigError {
    ConfigError::new(
        "",
        format!("the plugin configuration is not valid JSON: {e}"),
    )
}

/// The error of reading the document. The path is where serde was; for a
/// key missing or given twice that is the object holding it, and serde's
/// message names the key.
pub fn from_serde(e: &serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let inner = e.inner();
    if !inner.is_data() {
        return not_json(inner);
    }
    let at = match e.path().iter().next() {
        Some(_) => e.path().to_string(),
        None => String::new(),
    };
    let message = inner.to_string();
    let position = format!(" at line {} column {}", inner.line(), inner.column());
    let message = message.strip_suffix(&position).unwrap_or(&message);
    if let Some(key) = quoted(message, "duplicate field `") {
        return ConfigError::new(join(&at, key), "given more than once");
    }
    if let Some(key) = quoted(message, "missing field `") {
        return ConfigError::new(join(&at, key), "missing");
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // The path already ends with the unknown key; a key may hold a
        // backtick, so the list of known ones is found from the end.
        let known = rest
            .rsplit_once("`, expected ")
            .map_or("none", |(_, known)| known);
        return ConfigError::new(at, format!("unknown key: expected {known}"));
    }
    ConfigError::new(at, message)
}

/// The text between `prefix` and the closing backtick that ends `message`.
fn quoted<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.strip_suffix('`')
}
