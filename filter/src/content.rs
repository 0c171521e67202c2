//! What a request's content may be: JSON (else 415) within the size limit
//! (else 413), told by its headers first and by the body as it comes.

use signalgate_model::http::is_json;
use signalgate_model::problem::Problem;

use crate::outcome::Outcome;
use crate::reply::{shorten, Reply};

/// `application/json`, with any parameters (`charset=utf-8`), else 415.
pub fn check_content_type(content_type: Option<&str>) -> Result<(), Reply> {
    if content_type.is_some_and(is_json) {
        return Ok(());
    }
    let detail = match content_type {
        Some(c) => format!(
            "Content-Type {:?} is not supported: send application/json",
            shorten(c)
        ),
        None => "a Content-Type of application/json is required".to_string(),
    };
    let problem = Problem::new(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        detail.clone(),
    );
    Err(Reply::new(
        Outcome::UnsupportedMediaType,
        problem,
        format!("refused 415: {detail}"),
    )
    .with_header("accept-post", "application/json".into()))
}

/// 413 when a `Content-Length` (if it is a number) is over `max_body_bytes`.
pub fn check_content_length(
    content_length: Option<&str>,
    max_body_bytes: u64,
) -> Result<(), Reply> {
    match content_length.and_then(|l| l.trim().parse::<u64>().ok()) {
        Some(len) if len > max_body_bytes => Err(too_large(format!(
            "Content-Length {len} is over the limit of {max_body_bytes} bytes"
        ))),
        _ => Ok(()),
    }
}

/// 413 once the body buffered so far is over `max_body_bytes`.
pub fn check_buffered(buffered: usize, max_body_bytes: u64) -> Result<(), Reply> {
    let buffered = u64::try_from(buffered).unwrap_or(u64::MAX);
    if buffered > max_body_bytes {
        return Err(too_large(format!(
            "the body is over the limit of {max_body_bytes} bytes"
        )));
    }
    Ok(())
}

fn too_large(detail: String) -> Reply {
    let problem = Problem::new(
        413,
        "payload-too-large",
        "Payload too large",
        detail.clone(),
    );
    Reply::new(Outcome::TooLarge, problem, format!("refused 413: {detail}"))
}
