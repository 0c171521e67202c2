//! Which endpoint a request is for: a signal path, POST only.

use signalgate_model::problem::Problem;
use signalgate_model::SignalType;

use crate::outcome::Outcome;
use crate::reply::{shorten, Reply};

/// The signal type of a `POST` to a signal path; 404 for other paths, 405
/// for other methods.
pub fn route(method: &str, path: &str) -> Result<SignalType, Reply> {
    let Some(signal_type) = SignalType::from_path(path) else {
        let detail = format!(
            "no endpoint at {}: POST signals to {} or {}",
            shorten(path),
            SignalType::Prometheus.path(),
            SignalType::KubernetesEvent.path()
        );
        let problem = Problem::new(404, "not-found", "Not found", detail.clone());
        return Err(Reply::new(
            Outcome::NotFound,
            problem,
            format!("refused 404: {detail}"),
        ));
    };
    if method != "POST" {
        let detail = format!(
            "{} is not allowed on {}: use POST",
            shorten(method),
            signal_type.path()
        );
        let problem = Problem::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            detail.clone(),
        );
        return Err(Reply::new(
            Outcome::MethodNotAllowed,
            problem,
            format!("refused 405: {detail}"),
        )
        .with_header("allow", "POST".into()));
    }
    Ok(signal_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROM: &str = "/api/v1/signals/prometheus";

    #[test]
    fn replies_are_problem_json() {
        let r = route("GET", PROM).err();
        let h = r.as_ref().map(|r| r.all_headers()).unwrap_or_default();
        assert_eq!(
            h.first(),
            Some(&("content-type", "application/problem+json"))
        );
        let long = "/x".repeat(500);
        let r = route("POST", &long).err();
        assert!(r.is_some_and(|r| r.body.len() < 600));
    }
}
