//! Prometheus label rules.

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
