//! Why a signal request failed, and what each failure is counted as.

use std::time::Duration;

use signalgate_model::Invalid;

use crate::sink::SinkError;
use crate::store::StoreError;

/// Why a request failed; every failure but `Invalid` is retryable.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Invalid(Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Waiting for a claim (or the sink) took longer than the request deadline.
    #[error("{what} not done within the request deadline")]
    Deadline { what: String, retry_after: Duration },
    /// The request named more new namespaces than it may cost the sink
    /// work in: the rest of it is done, these signals are left to the
    /// sender's retry (see [`crate::recovery`]).
    #[error(
        "{signals} signals in {namespaces} namespaces beyond the request's budget of new namespaces \
         (SIGNALGATE_MAX_NEW_NAMESPACES_PER_REQUEST) were not decided; the others were"
    )]
    NewNamespaces { signals: usize, namespaces: usize },
}

impl Failure {
    /// The metric `kind` of this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Invalid(_) => "invalid",
            Failure::Store(_) => "store",
            Failure::Sink(_) => "sink",
            Failure::Deadline { .. } => "deadline",
            Failure::NewNamespaces { .. } => "new_namespaces",
        }
    }
}
