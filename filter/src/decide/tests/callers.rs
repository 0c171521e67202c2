//! Who a request is from: the configured source, or a tenant by its token.

use sha2::{Digest, Sha256};

use super::*;
use crate::ratelimit::Limit;
use crate::source::SourceMode;
use crate::tenants::{Tenant, Tenants};

#[test]
fn the_source_follows_the_configured_mode() {
    let cfg = Config {
        source: SourceMode::Header("x-team".into()),
        ..Config::default()
    };
    let store = Store::default();
    let h = RequestHead {
        source_header: Some("payments"),
        ..head(PROM)
    };
    let a = admitted(on_headers(&cfg, &h, &store, &Seed::default(), T0));
    assert_eq!(a.map(|a| a.source), Some("payments".to_string()));
}

fn tenant_cfg() -> Config {
    let sha = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
    Config {
        tenants: Some(Tenants::new(vec![
            Tenant {
                name: "team-a".into(),
                token_sha256: sha("token-a"),
                limit: Limit {
                    per_minute: 2,
                    burst: 2,
                },
            },
            Tenant {
                name: "team-b".into(),
                token_sha256: sha("token-b"),
                limit: Limit {
                    per_minute: 100,
                    burst: 100,
                },
            },
        ])),
        ..Config::default()
    }
}

#[test]
fn tenants_authenticate_name_the_source_and_have_their_own_limit() {
    let cfg = tenant_cfg();
    let store = Store::default();
    let with = |auth: Option<&'static str>| RequestHead {
        authorization: auth,
        ..head(PROM)
    };
    let a = admitted(on_headers(
        &cfg,
        &with(Some("Bearer token-a")),
        &store,
        &Seed::default(),
        T0,
    ));
    assert_eq!(a.map(|a| a.source), Some("team-a".to_string()));
    assert!(admitted(on_headers(
        &cfg,
        &with(Some("Bearer token-a")),
        &store,
        &Seed::default(),
        T0
    ))
    .is_some());
    let r = refused(on_headers(
        &cfg,
        &with(Some("Bearer token-a")),
        &store,
        &Seed::default(),
        T0,
    ));
    assert_eq!(r.map(|r| r.status), Some(429));
    // team-b, from the same address, is not affected.
    assert!(admitted(on_headers(
        &cfg,
        &with(Some("Bearer token-b")),
        &store,
        &Seed::default(),
        T0
    ))
    .is_some());
}

#[test]
fn missing_or_wrong_tokens_get_401_and_are_not_counted() {
    let cfg = tenant_cfg();
    let store = Store::default();
    for auth in [None, Some("Bearer nope"), Some("Basic dG9rZW4tYQ==")] {
        let h = RequestHead {
            authorization: auth,
            ..head(PROM)
        };
        for _ in 0..5 {
            let r = refused(on_headers(&cfg, &h, &store, &Seed::default(), T0));
            assert_eq!(r.as_ref().map(|r| r.status), Some(401), "{auth:?}");
            assert_eq!(r.as_ref().map(|r| r.outcome), Some(Outcome::Unauthorized));
            assert!(r
                .as_ref()
                .and_then(|r| header(r, "www-authenticate"))
                .is_some());
        }
    }
    assert!(store.0.borrow().is_empty(), "401s are not counted");
    // Unknown paths are 404 even without a token.
    let r = refused(on_headers(&cfg, &head("/x"), &store, &Seed::default(), T0));
    assert_eq!(r.map(|r| r.status), Some(404));
}
