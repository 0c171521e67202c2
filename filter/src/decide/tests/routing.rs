//! Routing (404/405), `Content-Type` (415), `Content-Length` (413) and
//! the headers a forwarded request carries.

use super::*;

#[test]
fn signal_paths_are_routed() {
    let cfg = Config::default();
    let store = Store::default();
    let a = admitted(on_headers(&cfg, &head(PROM), &store, &Seed::default(), T0));
    assert_eq!(
        a.as_ref().map(|a| a.signal_type),
        Some(SignalType::Prometheus)
    );
    assert_eq!(a.as_ref().map(|a| a.source.as_str()), Some("127.0.0.1"));
    let a = admitted(on_headers(
        &cfg,
        &head("/api/v1/signals/kubernetes-event?x=1"),
        &store,
        &Seed::default(),
        T0,
    ));
    assert_eq!(a.map(|a| a.signal_type), Some(SignalType::KubernetesEvent));
}

#[test]
fn other_paths_get_404_and_other_methods_405() {
    let cfg = Config::default();
    let store = Store::default();
    for path in [
        "/",
        "/api/v1/signals/",
        "/api/v1/signals/prometheus/x",
        "/API/v1/signals/prometheus",
    ] {
        let r = refused(on_headers(&cfg, &head(path), &store, &Seed::default(), T0));
        assert_eq!(r.as_ref().map(|r| r.status), Some(404), "{path}");
        assert_eq!(r.as_ref().map(|r| r.outcome), Some(Outcome::NotFound));
        let p = r.as_ref().map(problem).unwrap_or_default();
        assert_eq!(p["type"], "https://signalgate.io/problems/not-found");
        assert_eq!(p["status"], 404);
    }
    for method in ["GET", "PUT", "HEAD", "post"] {
        let h = RequestHead {
            method,
            ..head(KUBE)
        };
        let r = refused(on_headers(&cfg, &h, &store, &Seed::default(), T0));
        assert_eq!(r.as_ref().map(|r| r.status), Some(405), "{method}");
        assert_eq!(r.as_ref().and_then(|r| header(r, "allow")), Some("POST"));
    }
    // Neither counts against the source.
    assert!(store.0.borrow().is_empty());
}

#[test]
fn content_type_must_be_json() {
    let cfg = Config::default();
    let store = Store::default();
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
    ] {
        let h = RequestHead {
            content_type: Some(ct),
            ..head(PROM)
        };
        assert!(
            admitted(on_headers(&cfg, &h, &store, &Seed::default(), T0)).is_some(),
            "{ct}"
        );
    }
    for ct in [
        Some("text/plain"),
        Some("application/jsonx"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let h = RequestHead {
            content_type: ct,
            ..head(PROM)
        };
        let r = refused(on_headers(&cfg, &h, &store, &Seed::default(), T0));
        assert_eq!(r.as_ref().map(|r| r.status), Some(415), "{ct:?}");
        assert_eq!(r.map(|r| r.outcome), Some(Outcome::UnsupportedMediaType));
    }
}

#[test]
fn content_length_over_the_limit_is_413_at_the_headers() {
    let cfg = config(r#"{"max_body_bytes": 1000}"#);
    let store = Store::default();
    let h = RequestHead {
        content_length: Some("1001"),
        ..head(PROM)
    };
    let r = refused(on_headers(&cfg, &h, &store, &Seed::default(), T0));
    assert_eq!(r.as_ref().map(|r| r.status), Some(413));
    assert_eq!(r.map(|r| r.outcome), Some(Outcome::TooLarge));
    for len in [Some("1000"), Some("0"), None, Some("junk")] {
        let h = RequestHead {
            content_length: len,
            ..head(PROM)
        };
        assert!(
            admitted(on_headers(&cfg, &h, &store, &Seed::default(), T0)).is_some(),
            "{len:?}"
        );
    }
}

#[test]
fn forwarded_headers() {
    let a = Admitted {
        source: "127.0.0.1".into(),
        signal_type: SignalType::KubernetesEvent,
        response_headers: vec![],
        limit_error: None,
    };
    // The source only: the sidecar takes the signal type from the path.
    assert_eq!(a.forward_headers(), [("x-signalgate-source", "127.0.0.1")]);
    // A signal type a client sends is still removed.
    assert_eq!(STRIPPED_HEADERS, ["x-signalgate-signal-type"]);
}
