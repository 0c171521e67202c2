//! The HTTP glue: the signal API (behind Envoy) and the admin endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use signalgate_model::http::{is_json, SOURCE_HEADER};
use signalgate_model::problem::{self, Problem};
use signalgate_model::SignalType;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::app::App;
use crate::checker_page;
use crate::config::knobs::MAX_IN_FLIGHT;
use crate::failure::Failure;
use crate::sink::SinkError;

pub type Body = Full<Bytes>;

/// Serves `handler` on `listener` until `stop` turns true, then lets
/// in-flight requests finish for up to `grace`.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "in-flight requests still running after the grace period"
        );
    }
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// `POST /api/v1/signals/{prometheus,kubernetes-event}`.
pub async fn signal_api(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("sg-{}", REQUEST_SEQ.fetch_add(1, Ordering::Relaxed)));
    let span = tracing::info_span!(
        "request",
        id = %request_id,
        path = %req.uri().path(),
        fingerprints = tracing::field::Empty
    );
    let response = signal_request(&app, req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    app.metrics
        .request_duration
        .with_label_values(&[status_label(status)])
        .observe(started.elapsed().as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answered"
        )
    });
    response
}

async fn signal_request(app: &App, req: Request<Incoming>) -> Response<Body> {
    let Some(signal_type) = SignalType::from_path(req.uri().path()) else {
        return problem(Problem::new(
            404,
            "not-found",
            "Not found",
            format!(
                "no signal endpoint at {}: use POST {} or POST {}",
                req.uri().path(),
                SignalType::Prometheus.path(),
                SignalType::KubernetesEvent.path()
            ),
        ));
    };
    if req.method() != Method::POST {
        let mut r = problem(Problem::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            format!("{} takes POST, not {}", signal_type.path(), req.method()),
        ));
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if app.is_shutting_down() {
        return retry_later(
            Problem::new(
                503,
                "shutting-down",
                "Shutting down",
                "this sidecar is shutting down; retry",
            ),
            1,
        );
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(content_type) {
        return problem(
            Problem::new(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                format!("Content-Type must be application/json, not {content_type:?}"),
            )
            .with_field(Some("/headers/content-type".into())),
        );
    }
    let max = app.config.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(max);
    }
    let source = req
        .headers()
        .get(SOURCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("unknown")
        .to_string();
    // Held until the answer is built: one of the `max_in_flight` places.
    let Ok(_in_flight) = app.in_flight.try_acquire() else {
        return overloaded(app);
    };
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(max),
        Err(e) => {
            return problem(Problem::new(
                400,
                "bad-request",
                "Bad request",
                format!("cannot read the body: {e}"),
            ))
        }
    };
    match app.pipeline.handle(signal_type, &source, &body).await {
        Ok(accepted) => {
            let json = serde_json::to_vec(&accepted).unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(json)));
            *r.status_mut() = StatusCode::from_u16(accepted.status).unwrap_or(StatusCode::OK);
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(failure) => failure_response(app, &failure),
    }
}

/// 503 for a request over `max_in_flight`, sent before its body is read.
fn overloaded(app: &App) -> Response<Body> {
    app.metrics.errors.with_label_values(&["overloaded"]).inc();
    let max = app.config.max_in_flight;
    tracing::debug!(
        max_in_flight = max,
        "too many requests in flight; answered 503"
    );
    retry_later(
        Problem::new(
            503,
            "overloaded",
            "Overloaded",
            format!(
                "this sidecar is already serving {max} requests ({}); retry",
                MAX_IN_FLIGHT.env()
            ),
        ),
        1,
    )
}

fn failure_response(app: &App, failure: &Failure) -> Response<Body> {
    app.metrics
        .errors
        .with_label_values(&[failure.kind()])
        .inc();
    match failure {
        Failure::Invalid(invalid) => {
            tracing::debug!(%invalid, "invalid signal");
            problem(Problem::from(invalid))
        }
        Failure::Store(e) => {
            tracing::warn!(error = %e, "store unavailable; answered 503");
            retry_later(
                Problem::new(503, "store-unavailable", "Store unavailable", e.to_string()),
                1,
            )
        }
        Failure::Sink(SinkError::Unavailable(e)) => {
            tracing::warn!(error = %e, "sink unavailable; answered 503");
            retry_later(
                Problem::new(
                    503,
                    "sink-unavailable",
                    "Resource sink unavailable",
                    e.clone(),
                ),
                2,
            )
        }
        Failure::Sink(e) => {
            tracing::error!(error = %e, "sink refused the write; answered 500");
            retry_later(
                Problem::new(
                    500,
                    "sink-rejected",
                    "Resource sink refused the write",
                    e.to_string(),
                ),
                5,
            )
        }
        Failure::Deadline { what, retry_after } => {
            tracing::warn!(%what, "request deadline passed; answered 503");
            retry_later(
                Problem::new(
                    503,
                    "deadline-exceeded",
                    "Not done in time",
                    format!("{what}; retry"),
                ),
                retry_after.as_secs().max(1),
            )
        }
        Failure::NewNamespaces { .. } => {
            tracing::info!(%failure, "answered 503");
            retry_later(
                Problem::new(
                    503,
                    "too-many-new-namespaces",
                    "Too many new namespaces",
                    format!("{failure}; retry"),
                ),
                1,
            )
        }
    }
}

/// Admin port: `/metrics`, `/healthz`, `/readyz`, and the payload checker at `/check`.
pub async fn admin_api(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    if checker_page::is_page(req.uri().path()) {
        let dir = app.config.checker_dir.as_deref();
        return checker_page::answer(dir, req.method(), req.uri().path()).await;
    }
    match req.uri().path() {
        "/metrics" => {
            app.metrics
                .requests_in_flight
                .set(app.requests_in_flight() as i64);
            let mut r = Response::new(Full::new(Bytes::from(app.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(200, "ok\n"),
        "/readyz" => match app.readiness().await {
            Ok(()) => text(200, "ready\n"),
            Err(why) => text(503, &format!("not ready: {why}\n")),
        },
        _ => text(404, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

fn text(status: u16, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn too_large(max: usize) -> Response<Body> {
    problem(Problem::new(
        413,
        "payload-too-large",
        "Payload too large",
        format!("the body is larger than {max} bytes"),
    ))
}

fn problem(p: Problem) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(p.to_json())));
    *r.status_mut() = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(problem::CONTENT_TYPE),
    );
    r
}

fn retry_later(p: Problem, seconds: u64) -> Response<Body> {
    let mut r = problem(p);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    r
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        400 => "400",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}
