//! Headless Chromium driven through chromedriver's W3C WebDriver HTTP API:
//! one private browser per test, with a fresh profile.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::process::{free_port, temp_dir, wait_for, wait_for_port, Proc};
use crate::workspace;

/// How long a page may take to reach a state the test waits for.
pub const WAIT: Duration = Duration::from_secs(30);

/// Chromium's flags for this machine: no sandbox (root, no user namespaces),
/// no GPU, nothing fetched in the background.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
];

pub struct Browser {
    base: String,
    session: String,
    http: ureq::Agent,
    // Dropped after the session is closed (see `Drop`).
    driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start() -> Browser {
        let chromium = workspace::installed_binary("CHROMIUM_BIN", "chromium", "chromium");
        let chromedriver =
            workspace::installed_binary("CHROMEDRIVER_BIN", "chromedriver", "chromium-driver");
        let profile = temp_dir("chromium");
        let port = free_port();
        let mut cmd = Command::new(chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1");
        let driver = Proc::spawn("chromedriver", cmd, profile.path());
        wait_for_port(([127, 0, 0, 1], port).into(), WAIT);
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let mut args: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let created = call(
            &http,
            "POST",
            &format!("{base}/session"),
            Some(&capabilities),
        )
        .unwrap_or_else(|e| panic!("{e}; chromedriver log:\n{}", driver.log_tail(30)));
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session in {created}"))
            .to_string();
        Browser {
            base,
            session,
            http,
            driver,
            _profile: profile,
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        call(&self.http, method, &url, body)
            .unwrap_or_else(|e| panic!("{e}; chromedriver log:\n{}", self.driver.log_tail(30)))
    }

    /// Loads `url`.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns its value.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Polls `script` until it returns something other than null or false.
    pub fn wait(&self, what: &str, script: &str) -> Value {
        wait_for(what, WAIT, || {
            let v = self.execute(script, &[]);
            (!v.is_null() && v != Value::Bool(false)).then_some(v)
        })
    }

    /// Writes a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.command("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("the screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the screenshot's directory");
        }
        std::fs::write(path, bytes).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium; chromedriver itself dies with its Proc.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = call(&self.http, "DELETE", &url, None);
    }
}

/// One WebDriver command: its `value`, or the WebDriver error.
fn call(
    http: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let answer = match (method, body) {
        ("GET", _) => http.get(url).call(),
        ("DELETE", _) => http.delete(url).call(),
        (_, body) => http
            .post(url)
            .header("content-type", "application/json")
            .send(body.unwrap_or(&json!({})).to_string()),
    };
    let mut r = answer.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = r.status().as_u16();
    let text = r
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("{method} {url}: {e}: {text}"))?;
    if status != 200 {
        return Err(format!("{method} {url}: {status}: {}", v["value"]));
    }
    Ok(v["value"].clone())
}
