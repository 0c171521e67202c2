//! Where resources are written: a directory (the embedded default) or the
//! Kubernetes API. Both write the same [`RemediationRequest`] objects.

use crate::resource::{Progress, RemediationRequest};

pub mod dir;
pub mod kube;

/// Where a created resource ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A failed write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying later (unreachable, timeout, 429, 5xx): answered 503.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// Refused for good (forbidden, invalid): answered 500, logged as an error.
    #[error("sink refused the write: {0}")]
    Rejected(String),
    /// The resource to update does not exist (deleted since).
    #[error("resource not found: {0}")]
    NotFound(String),
}

#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Creates the resource. Idempotent: if a resource of that name already
    /// exists (a retried create), that is success, and it is left as it is.
    async fn create(&self, rr: &RemediationRequest) -> Result<Location, SinkError>;
    /// Writes the latest counters into an existing resource.
    async fn update(
        &self,
        namespace: &str,
        name: &str,
        progress: &Progress,
    ) -> Result<(), SinkError>;
    /// Readiness: writes can succeed.
    async fn ready(&self) -> Result<(), SinkError>;
}
