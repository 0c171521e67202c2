//! Who a request comes from: the key of its rate-limit bucket and the value
//! of `x-signalgate-source` (unless tenants are configured: then the tenant).

/// Longest source kept (longer ones are cut): it becomes a header value.
pub const MAX_SOURCE_LEN: usize = 128;

/// The source of a request whose address cannot be told (should not happen:
/// Envoy always knows the downstream address).
pub const UNKNOWN: &str = "unknown";

/// Where the source comes from (the `source` and `trusted_hops` knobs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMode {
    /// The downstream connection's address, without the port.
    RemoteAddress,
    /// The `x-forwarded-for` entry `trusted_hops` places from the right
    /// (0: the last one, written by the proxy right in front of Envoy).
    ForwardedFor { trusted_hops: u32 },
    /// The value of a request header (lower-case name).
    Header(String),
}

impl SourceMode {
    /// The request header the mode reads, if any.
    pub fn header_name(&self) -> Option<&str> {
        match self {
            SourceMode::RemoteAddress => None,
            SourceMode::ForwardedFor { .. } => Some("x-forwarded-for"),
            SourceMode::Header(name) => Some(name),
        }
    }
}

/// The host part of an Envoy address: `1.2.3.4:5678` → `1.2.3.4`,
/// `[::1]:5678` → `::1`; anything else is kept as is.
pub fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        // One colon: IPv4 (or a name) with a port. More: a bare IPv6 address.
        Some((host, port))
            if !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => address,
    }
}

/// Keeps visible ASCII (and inner spaces), at most [`MAX_SOURCE_LEN`] bytes.
fn clean(value: &str) -> String {
    value
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_SOURCE_LEN)
        .collect()
}

/// The entry of an `x-forwarded-for` list (all its header values joined with
/// `,`) that `trusted_hops` designates, or `None` when the list is too short.
pub fn forwarded_for(list: &str, trusted_hops: u32) -> Option<&str> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    let hops = usize::try_from(trusted_hops).ok()?;
    let index = entries.len().checked_sub(hops.checked_add(1)?)?;
    entries.get(index).copied().filter(|e| !e.is_empty())
}

/// The request's source. `remote` is Envoy's `source.address`; `header` is
/// the value of [`SourceMode::header_name`] (for `x-forwarded-for`, all of
/// its values joined with `,`). When the configured header is missing, empty
/// or too short, the source falls back to the remote address, so every
/// request is still counted against some bucket.
pub fn resolve(mode: &SourceMode, remote: Option<&str>, header: Option<&str>) -> String {
    let from_header = match mode {
        SourceMode::RemoteAddress => None,
        SourceMode::ForwardedFor { trusted_hops } => header
            .and_then(|h| forwarded_for(h, *trusted_hops))
            .map(host_of),
        SourceMode::Header(_) => header,
    }
    .map(clean)
    .filter(|s| !s.is_empty());
    from_header
        .or_else(|| remote.map(|r| clean(host_of(r))).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| UNKNOWN.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_ports_and_brackets() {
        assert_eq!(host_of("127.0.0.2:54321"), "127.0.0.2");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("[fe80::1%eth0]:1"), "fe80::1%eth0");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("2001:db8::7"), "2001:db8::7");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
        assert_eq!(host_of("host:"), "host:");
        assert_eq!(host_of(""), "");
    }

    #[test]
    fn remote_address_mode_uses_the_connection() {
        let m = SourceMode::RemoteAddress;
        assert_eq!(resolve(&m, Some("127.0.0.2:4000"), None), "127.0.0.2");
        assert_eq!(
            resolve(&m, Some("127.0.0.2:4000"), Some("9.9.9.9")),
            "127.0.0.2"
        );
        assert_eq!(resolve(&m, None, None), UNKNOWN);
        assert_eq!(m.header_name(), None);
    }

    #[test]
    fn forwarded_for_counts_trusted_hops_from_the_right() {
        let list = "203.0.113.9, 10.0.0.1, 10.0.0.2";
        assert_eq!(forwarded_for(list, 0), Some("10.0.0.2"));
        assert_eq!(forwarded_for(list, 1), Some("10.0.0.1"));
        assert_eq!(forwarded_for(list, 2), Some("203.0.113.9"));
        assert_eq!(forwarded_for(list, 3), None);
        assert_eq!(forwarded_for(list, u32::MAX), None);
        assert_eq!(forwarded_for("a,,b", 1), None);
        assert_eq!(forwarded_for("", 0), None);

        let m = SourceMode::ForwardedFor { trusted_hops: 1 };
        assert_eq!(m.header_name(), Some("x-forwarded-for"));
        assert_eq!(
            resolve(
                &m,
                Some("127.0.0.1:1"),
                Some("spoofed, 198.51.100.7, 10.1.1.1")
            ),
            "198.51.100.7"
        );
        // Entries may carry a port.
        assert_eq!(
            resolve(&m, Some("127.0.0.1:1"), Some("198.51.100.7:555, 10.1.1.1")),
            "198.51.100.7"
        );
        // Too short or missing: the connection's address.
        assert_eq!(
            resolve(&m, Some("127.0.0.1:1"), Some("10.1.1.1")),
            "127.0.0.1"
        );
        assert_eq!(resolve(&m, Some("127.0.0.1:1"), None), "127.0.0.1");
    }

    #[test]
    fn header_mode_uses_the_value_cleaned_and_bounded() {
        let m = SourceMode::Header("x-team".into());
        assert_eq!(m.header_name(), Some("x-team"));
        assert_eq!(
            resolve(&m, Some("1.1.1.1:1"), Some("  payments ")),
            "payments"
        );
        assert_eq!(resolve(&m, Some("1.1.1.1:1"), Some("")), "1.1.1.1");
        assert_eq!(resolve(&m, Some("1.1.1.1:1"), None), "1.1.1.1");
        assert_eq!(resolve(&m, None, Some("\u{7f}\u{e9}")), UNKNOWN);
        let long = "x".repeat(1000);
        assert_eq!(resolve(&m, None, Some(&long)).len(), MAX_SOURCE_LEN);
        assert_eq!(resolve(&m, None, Some("a\u{e9}b")), "ab");
    }
}
