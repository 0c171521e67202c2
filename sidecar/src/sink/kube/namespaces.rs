//! What the kube sink has learnt of namespaces from its own calls: which
//! exist (a create landed there, a lookup found resources there) and which
//! cannot take a resource (a create was refused: the namespace does not
//! exist, or is being deleted). No call of its own, and no RBAC on
//! namespaces: it only remembers answers.
//!
//! - A namespace known to be missing sends the next create straight to the
//!   fallback namespace (one POST instead of a refused one first), for
//!   [`MISSING_FOR`]: a namespace created meanwhile gets its resources
//!   again after that (until then they go to the fallback namespace,
//!   labelled with it, where lookups find them).
//! - A namespace known to exist is what [`crate::sink::Sink::knows_namespace`]
//!   answers: creates there do not count against a request's budget of new
//!   namespaces. Only a matter of cost, never of correctness: kept
//!   [`EXISTS_FOR`].
//!
//! Bounded: at most [`MAX`] namespaces; when full, the entries that are out
//! of date go, and if none is, all of them (each then costs at most one
//! refused create, or one more count against a budget).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a refused create keeps its namespace known as missing.
pub const MISSING_FOR: Duration = Duration::from_secs(30);
/// How long a namespace stays known to exist after it was seen to.
pub const EXISTS_FOR: Duration = Duration::from_secs(3600);
/// Namespaces remembered at most (a few dozen bytes each).
pub const MAX: usize = 4096;

/// The namespaces the sink knows, each with whether it exists and until when that holds.
#[derive(Default)]
pub struct Namespaces {
    known: Mutex<HashMap<String, (bool, Instant)>>,
}

impl Namespaces {
    /// `namespace` exists (`true`) or cannot take a resource (`false`), as of `now`.
    pub fn learn(&self, namespace: &str, exists: bool, now: Instant) {
        let until = now + if exists { EXISTS_FOR } else { MISSING_FOR };
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= MAX && !known.contains_key(namespace) {
            known.retain(|_, (_, u)| *u > now);
            if known.len() >= MAX {
                known.clear();
            }
        }
        known.insert(namespace.to_string(), (exists, until));
    }

    /// What is known of `namespace` at `now`: `Some(true)` it exists,
    /// `Some(false)` it cannot take a resource, `None` not known.
    pub fn state(&self, namespace: &str, now: Instant) -> Option<bool> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known
            .get(namespace)
            .filter(|(_, until)| *until > now)
            .map(|(exists, _)| *exists)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_known_missing_briefly_and_existing_for_long() {
        let ns = Namespaces::default();
        let t = Instant::now();
        assert_eq!(ns.state("shop", t), None);
        ns.learn("gone", false, t);
        ns.learn("shop", true, t);
        assert_eq!(ns.state("gone", t + MISSING_FOR / 2), Some(false));
        assert_eq!(ns.state("gone", t + MISSING_FOR), None);
        assert_eq!(ns.state("shop", t + MISSING_FOR), Some(true));
        assert_eq!(ns.state("shop", t + EXISTS_FOR), None);
        // The latest answer wins: created meanwhile, or deleted.
        ns.learn("gone", true, t);
        assert_eq!(ns.state("gone", t), Some(true));
        ns.learn("shop", false, t);
        assert_eq!(ns.state("shop", t), Some(false));
    }

    #[test]
    fn it_never_holds_more_than_its_maximum() {
        let ns = Namespaces::default();
        let t = Instant::now();
        for i in 0..MAX {
            ns.learn(&format!("gone-{i}"), false, t);
        }
        ns.learn("shop", true, t);
        assert_eq!(ns.len(), 1, "none out of date: all forgotten");
        assert_eq!(ns.state("shop", t), Some(true));
        for i in 1..MAX {
            ns.learn(&format!("gone-{i}"), false, t);
        }
        // Once the missing ones are out of date, only they go.
        let later = t + MISSING_FOR;
        ns.learn("other", true, later);
        assert_eq!(ns.len(), 2);
        assert_eq!(ns.state("shop", later), Some(true));
        assert_eq!(ns.state("other", later), Some(true));
    }
}
