//! A request's headers as the host hands them over (name, value bytes), and
//! what the filter reads from them. Values are bytes: Envoy lets through
//! header values that are not UTF-8, and they must not trap the VM.

use std::borrow::Cow;

use crate::source::SourceMode;

/// The request headers, in the order Envoy has them (names lower case).
pub struct RequestHeaders(pub Vec<(String, Vec<u8>)>);

impl RequestHeaders {
    /// The first value of `name` (lower case), as text.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v))
    }

    /// The last value of `name`: of a header a trusted proxy appends, the
    /// copy it wrote rather than one the client sent.
    pub fn last(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v))
    }

    /// Every value of `name` joined with `,` (a list header sent as several lines).
    pub fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<Cow<'_, str>> = self
            .0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The value of the source header `mode` reads, if any: every
    /// `x-forwarded-for` value, not just the first one; of a named header,
    /// the last copy.
    pub fn source_header(&self, mode: &SourceMode) -> Option<String> {
        match mode {
            SourceMode::RemoteAddress => None,
            SourceMode::ForwardedFor { .. } => self.joined("x-forwarded-for"),
            SourceMode::Header(name) => self.last(name).map(Cow::into_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &[u8])]) -> RequestHeaders {
        RequestHeaders(
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn first_last_and_joined_values() {
        let h = headers(&[
            (":path", b"/x"),
            ("x-team", b"forged"),
            ("x-forwarded-for", b"203.0.113.7"),
            ("x-team", b"payments"),
            ("x-forwarded-for", b"10.0.0.1, 10.0.0.2"),
        ]);
        assert_eq!(h.get("x-team").as_deref(), Some("forged"));
        assert_eq!(h.last("x-team").as_deref(), Some("payments"));
        assert_eq!(
            h.joined("x-forwarded-for").as_deref(),
            Some("203.0.113.7,10.0.0.1, 10.0.0.2")
        );
        assert_eq!(h.get("content-type"), None);
        assert_eq!(h.joined("content-type"), None);
    }

    #[test]
    fn the_source_header_follows_the_mode() {
        let h = headers(&[
            ("x-team", b"forged"),
            ("x-team", b"payments"),
            ("x-forwarded-for", b"a"),
            ("x-forwarded-for", b"b"),
        ]);
        assert_eq!(h.source_header(&SourceMode::RemoteAddress), None);
        assert_eq!(
            h.source_header(&SourceMode::ForwardedFor { trusted_hops: 1 }),
            Some("a,b".to_string())
        );
        assert_eq!(
            h.source_header(&SourceMode::Header("x-team".into())),
            Some("payments".to_string())
        );
        assert_eq!(h.source_header(&SourceMode::Header("x-other".into())), None);
    }

    #[test]
    fn values_that_are_not_utf8_are_read_lossily() {
        let h = headers(&[("x-team", b"caf\xe9-team")]);
        assert_eq!(h.get("x-team").as_deref(), Some("caf\u{fffd}-team"));
        assert_eq!(
            h.source_header(&SourceMode::Header("x-team".into())),
            Some("caf\u{fffd}-team".to_string())
        );
    }
}
