//! The per-request decision, driven as the host drives it, by subject:
//! routing and content checks, the rate limit, who a request is from, and
//! the body.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::Value;

use super::*;
use crate::config;
use crate::table;

mod body;
mod callers;
mod limits;
mod routing;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SEC;

const PROM: &str = "/api/v1/signals/prometheus";
const KUBE: &str = "/api/v1/signals/kubernetes-event";

/// The configuration `json` gives; a fixture that does not parse fails the
/// test with the parse error.
fn config(json: &str) -> Config {
    config::parse(Some(json.as_bytes())).unwrap_or_else(|e| panic!("fixture {json}: {e}"))
}

/// Shared data without concurrency (CAS conflicts are tested in `table`).
#[derive(Default)]
struct Store(RefCell<HashMap<String, (Vec<u8>, u32)>>);

impl SharedStore for Store {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), table::StoreError> {
        Ok(match self.0.borrow().get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        })
    }
    fn set(&self, key: &str, value: &[u8], _: Option<u32>) -> Result<(), table::StoreError> {
        let mut m = self.0.borrow_mut();
        let cas = m.get(key).map_or(1, |(_, c)| c + 1);
        m.insert(key.into(), (value.to_vec(), cas));
        Ok(())
    }
}

/// A store that always fails.
struct Broken;

impl SharedStore for Broken {
    fn get(&self, _: &str) -> Result<(Option<Vec<u8>>, Option<u32>), table::StoreError> {
        Err(table::StoreError::Host("down".into()))
    }
    fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), table::StoreError> {
        Err(table::StoreError::Host("down".into()))
    }
}

fn head<'a>(path: &'a str) -> RequestHead<'a> {
    RequestHead {
        method: "POST",
        path,
        content_type: Some("application/json"),
        content_length: Some("100"),
        authorization: None,
        remote_address: Some("127.0.0.1:40000"),
        source_header: None,
    }
}

fn refused(action: HeadersAction) -> Option<Reply> {
    match action {
        HeadersAction::Refuse(r) => Some(r),
        HeadersAction::ReadBody(_) => None,
    }
}

fn admitted(action: HeadersAction) -> Option<Admitted> {
    match action {
        HeadersAction::ReadBody(a) => Some(a),
        HeadersAction::Refuse(_) => None,
    }
}

fn problem(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("the reply body is not JSON ({e}): {}", reply.body))
}

fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
    reply
        .headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}
