//! How resources are named: deterministic names fixed when a claim is made,
//! so that a retried create finds what an earlier try wrote. `decide.lua`
//! builds the same names from the storm prefix it is given.

use sha2::{Digest, Sha256};

/// Lower-case base 36 (`0-9a-z`), as resource names write times; `"0"` for
/// zero and below.
pub fn base36(mut n: i64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n <= 0 {
        return "0".to_string();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A signal's own resource:
/// `rr-<first 16 hex of fingerprint>-<first_seen_ms in base 36>`.
pub fn fingerprint_resource(fingerprint: &str, first_seen_ms: i64) -> String {
    let short: String = fingerprint.chars().take(16).collect();
    format!("rr-{short}-{}", base36(first_seen_ms))
}

/// `storm-<first 12 hex of sha256(namespace)>-`: a storm name without its start.
pub fn storm_prefix(namespace: &str) -> String {
    let digest = Sha256::digest(namespace.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("storm-{hex}-")
}

/// A storm resource: [`storm_prefix`] then `started_ms` in base 36.
pub fn storm_resource(namespace: &str, started_ms: i64) -> String {
    format!("{}{}", storm_prefix(namespace), base36(started_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(1_700_000_000_000), "loyw3v28");
        assert_eq!(
            fingerprint_resource("0123456789abcdef0123", 36),
            "rr-0123456789abcdef-10"
        );
        let prefix = storm_prefix("default");
        assert!(prefix.starts_with("storm-") && prefix.len() == "storm-".len() + 13);
        assert_eq!(storm_resource("default", 36), format!("{prefix}10"));
    }
}
