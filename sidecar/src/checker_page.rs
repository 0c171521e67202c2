//! The payload checker page (docs/checker.md) on the admin port: its static
//! files, read from the directory `make checker` fills
//! (`SIGNALGATE_CHECKER_DIR`), served read-only under `/check/`. Only the
//! files listed here are served; nothing from the request names a path.

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, LOCATION};
use hyper::{Method, Response, StatusCode};

/// The page's URL path.
pub const PATH: &str = "/check/";

/// Request path (under [`PATH`]), file in the directory, content type.
const FILES: &[(&str, &str, &str)] = &[
    ("", "index.html", "text/html; charset=utf-8"),
    ("index.html", "index.html", "text/html; charset=utf-8"),
    ("checker.js", "checker.js", "text/javascript"),
    ("checker.css", "checker.css", "text/css"),
    (
        "pkg/signalgate_checker.js",
        "pkg/signalgate_checker.js",
        "text/javascript",
    ),
    (
        "pkg/signalgate_checker_bg.wasm",
        "pkg/signalgate_checker_bg.wasm",
        "application/wasm",
    ),
];

/// The page loads its own files and nothing else: it makes no other requests.
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'";

/// Whether `path` is the checker's (`/check` or under `/check/`).
pub fn is_page(path: &str) -> bool {
    path == "/check" || path.starts_with(PATH)
}

/// The answer to `method path` for a checker path, from `dir` (`None`: the
/// page is not installed).
pub async fn answer(dir: Option<&Path>, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the checker is read-only: GET it\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/check" {
        // Its files are named relative to the directory.
        let mut r = plain(StatusCode::MOVED_PERMANENTLY, "see /check/\n");
        r.headers_mut()
            .insert(LOCATION, HeaderValue::from_static(PATH));
        return r;
    }
    let Some(dir) = dir else {
        return plain(
            StatusCode::NOT_FOUND,
            "the payload checker is not served here: build it with `make checker` and set \
             SIGNALGATE_CHECKER_DIR (docs/checker.md)\n",
        );
    };
    let wanted = &path[PATH.len()..];
    let Some(&(_, file, content_type)) = FILES.iter().find(|(p, _, _)| *p == wanted) else {
        return plain(StatusCode::NOT_FOUND, "not a file of the payload checker\n");
    };
    match tokio::fs::read(dir.join(file)).await {
        Ok(bytes) => {
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from(bytes)
            };
            let mut r = Response::new(Full::new(body));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            h.insert("content-security-policy", HeaderValue::from_static(CSP));
            h.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            h.insert("cache-control", HeaderValue::from_static("no-cache"));
            r
        }
        Err(e) => {
            tracing::warn!(file = %dir.join(file).display(), error = %e, "cannot read a checker file");
            plain(
                StatusCode::NOT_FOUND,
                &format!(
                    "{file} is missing from {}: run `make checker`\n",
                    dir.display()
                ),
            )
        }
    }
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn serves_only_its_files_read_only() {
        let dir = tempdir();
        std::fs::write(dir.join("index.html"), "<p>page</p>").unwrap();
        let get = |p: &'static str| answer(Some(&dir), &Method::GET, p);
        let r = get("/check/").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'"));
        assert_eq!(body(r).await, "<p>page</p>");
        assert_eq!(get("/check").await.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            get("/check/../Cargo.toml").await.status(),
            StatusCode::NOT_FOUND
        );
        let missing = get("/check/checker.js").await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(body(missing).await.contains("make checker"));
        let post = answer(Some(&dir), &Method::POST, "/check/").await;
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        let unset = answer(None, &Method::GET, "/check/").await;
        assert!(body(unset).await.contains("SIGNALGATE_CHECKER_DIR"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("signalgate-checker-page-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
