//! One store call as the request path makes it: bounded by the store
//! timeout, its latency recorded by operation.

use std::future::Future;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::StoreError;

/// Runs `call` (store operation `op`) for at most `timeout`, recording its
/// latency in `signalgate_store_duration_seconds{op}`.
pub async fn timed<T>(
    metrics: &Metrics,
    timeout: Duration,
    op: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let timer = metrics
        .store_duration
        .with_label_values(&[op])
        .start_timer();
    let result = tokio::time::timeout(timeout, call).await;
    timer.observe_duration();
    match result {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}
