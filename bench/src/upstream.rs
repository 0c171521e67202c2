//! The edge benchmark's upstream: stands in for the sidecar and, like it,
//! reads every request body to the end before it answers `200` with a small
//! JSON body. (A `direct_response` route on the Envoy under test would answer
//! before the body is read and flatter any filter that buffers it.)

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const ANSWER: &[u8] = br#"{"status":"accepted"}"#;

/// Serves until the process is killed. Prints `listening <addr>` once bound.
pub async fn serve(listen: &str) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("upstream: cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {local}");
    let bytes_read = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let bytes_read = bytes_read.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let bytes_read = bytes_read.clone();
                async move {
                    let status = match req.into_body().collect().await {
                        Ok(body) => {
                            bytes_read.fetch_add(body.to_bytes().len() as u64, Ordering::Relaxed);
                            StatusCode::OK
                        }
                        Err(_) => StatusCode::BAD_REQUEST,
                    };
                    let mut resp = Response::new(Full::new(Bytes::from_static(ANSWER)));
                    *resp.status_mut() = status;
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
