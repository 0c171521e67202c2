//! What the edge filter and the sidecar agree on at the HTTP level: the
//! header the edge passes the source on in, and which `Content-Type` is
//! JSON.

/// The header the edge sets to the request's source (or tenant) on every
/// request it forwards, replacing any copy the client sent; the sidecar
/// reads it.
pub const SOURCE_HEADER: &str = "x-signalgate-source";

/// Whether a `Content-Type` value is `application/json` (any case, with any
/// parameters such as `charset=utf-8`).
pub fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json(" application/json ;charset=UTF-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
        assert!(!is_json("application/jsonx"));
        assert!(!is_json("application/problem+json"));
        assert!(!is_json("application/json, text/plain"));
    }
}
