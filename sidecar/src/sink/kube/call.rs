//! One Kubernetes API call of the kube sink: how its errors are sorted
//! (retry or fail) and how it is retried (capped, jittered exponential
//! backoff), shared by lookups, creates and updates.

use std::time::Duration;

use super::jitter::jitter;
use crate::sink::SinkError;

/// The field manager signalgate writes as.
pub const FIELD_MANAGER: &str = "signalgate";

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Lookup LISTs and updates are retried this long: then a lookup fails its
/// request (503) and an update is left for the next flush. Creates are
/// bounded by their request's deadline instead.
pub(super) const LIST_AND_UPDATE_RETRY_FOR: Duration = Duration::from_secs(5);

/// What one try of a call came to.
pub(super) enum Attempt<T> {
    Done(T),
    Retry(String),
    Fail(SinkError),
}

/// Sorts an error into retry (transient) or fail (for good).
pub(super) fn classify<T>(e: kube::Error, what: &str) -> Attempt<T> {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            Attempt::Fail(SinkError::NotFound(format!("{what}: {}", s.message)))
        }
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => {
            Attempt::Retry(format!("{what}: {} {}", s.code, s.message))
        }
        kube::Error::Api(s) => Attempt::Fail(SinkError::Rejected(format!(
            "{what}: {} {} {}",
            s.code, s.reason, s.message
        ))),
        other => Attempt::Retry(format!("{what}: {other}")),
    }
}

/// Retries `attempt` with capped, jittered exponential backoff while it says
/// `Retry`, for at most `limit` (if given; else until the caller's timeout).
pub(super) async fn with_retries<T, F, Fut>(
    limit: Option<Duration>,
    mut attempt: F,
) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Attempt<T>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = BACKOFF_BASE;
    loop {
        match attempt().await {
            Attempt::Done(v) => return Ok(v),
            Attempt::Fail(e) => return Err(e),
            Attempt::Retry(why) => {
                if limit.is_some_and(|l| started.elapsed() + delay > l) {
                    return Err(SinkError::Unavailable(why));
                }
                tracing::debug!(%why, ?delay, "Kubernetes API write failed; retrying");
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(BACKOFF_CAP);
            }
        }
    }
}
