//! Optional tenants: each request carries `Authorization: Bearer <token>`;
//! tokens are configured only as SHA-256 hex and compared in constant time.

use sha2::{Digest, Sha256};

use crate::ratelimit::Limit;

/// One tenant: its name becomes the request's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub token_sha256: [u8; 32],
    pub limit: Limit,
}

/// Why a request was not attributed to a tenant (always 401, never counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`.
    Malformed,
    /// A bearer token no tenant has.
    Unknown,
}

impl AuthError {
    pub fn detail(self) -> &'static str {
        match self {
            AuthError::Missing => "an Authorization: Bearer <token> header is required",
            AuthError::Malformed => "the Authorization header is not a Bearer token",
            AuthError::Unknown => "the bearer token is not valid",
        }
    }
}

/// The configured tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenants {
    list: Vec<Tenant>,
}

impl Tenants {
    pub fn new(list: Vec<Tenant>) -> Tenants {
        Tenants { list }
    }

    pub fn list(&self) -> &[Tenant] {
        &self.list
    }

    /// The tenant whose token the `Authorization` header carries. The
    /// token's digest is compared with every tenant's, each comparison in
    /// constant time, so neither which byte differs nor which tenant matched
    /// changes how long the check takes.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&Tenant, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header).ok_or(AuthError::Malformed)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for tenant in &self.list {
            let equal = constant_time_eq(&digest, &tenant.token_sha256);
            if equal && found.is_none() {
                found = Some(tenant);
            }
        }
        found.ok_or(AuthError::Unknown)
    }
}

/// The token of a `Bearer` credential (scheme case-insensitive, RFC 6750).
pub fn bearer_token(header: &str) -> Option<&str> {
    let header = header.trim();
    let (scheme, token) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_start();
    let token68 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    (!token.is_empty() && token.bytes().all(token68)).then_some(token)
}

/// Byte-wise equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Parses 64 hex digits (either case) into a digest.
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = hex_digit(*pair.first()?)?;
        let lo = hex_digit(*pair.get(1)?)?;
        *o = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    fn tenants() -> Tenants {
        let limit = Limit {
            per_minute: 10,
            burst: 10,
        };
        Tenants::new(vec![
            Tenant {
                name: "team-a".into(),
                token_sha256: sha("secret-a"),
                limit,
            },
            Tenant {
                name: "team-b".into(),
                token_sha256: sha("secret-b"),
                limit,
            },
        ])
    }

    #[test]
    fn the_right_token_names_the_tenant() {
        let t = tenants();
        assert_eq!(
            t.authenticate(Some("Bearer secret-b"))
                .map(|t| t.name.as_str()),
            Ok("team-b")
        );
        assert_eq!(
            t.authenticate(Some("bearer   secret-a"))
                .map(|t| t.name.as_str()),
            Ok("team-a")
        );
    }

    #[test]
    fn wrong_missing_and_malformed_tokens_are_refused() {
        let t = tenants();
        assert_eq!(t.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            t.authenticate(Some("Bearer secret-c")),
            Err(AuthError::Unknown)
        );
        for bad in [
            "Basic c2VjcmV0LWE=",
            "Bearer",
            "Bearer ",
            "secret-a",
            "Bearer a b",
        ] {
            assert_eq!(
                t.authenticate(Some(bad)),
                Err(AuthError::Malformed),
                "{bad}"
            );
        }
        // The hash itself is not a token.
        let hex: String = sha("secret-a").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            t.authenticate(Some(&format!("Bearer {hex}"))),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn sha256_hex_parsing() {
        let hex: String = sha("x").iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_sha256_hex(&hex), Some(sha("x")));
        assert_eq!(parse_sha256_hex(&hex.to_lowercase()), Some(sha("x")));
        assert_eq!(parse_sha256_hex(&hex[..62]), None);
        assert_eq!(parse_sha256_hex(&format!("{}zz", &hex[..62])), None);
        assert_eq!(parse_sha256_hex(""), None);
        assert_eq!(parse_sha256_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let a = sha("a");
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!constant_time_eq(&a, &b));
    }
}
