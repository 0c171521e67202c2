//! Request bodies: Alertmanager webhooks (what Alertmanager sends to
//! signalgate) and the same alerts as Alertmanager's own `POST /api/v2/alerts`
//! body, either identical for every request or distinct per request.
//!
//! A body is built once as a template; in distinct mode every alert's `pod`
//! label carries a fixed-width request counter, so each request costs one
//! copy of the template and every alert of every request is a new incident
//! (a new fingerprint for the sidecar, a new alert for Alertmanager), while
//! the size stays exactly the same.

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

/// Width of the per-request counter in distinct mode.
const COUNTER_WIDTH: usize = 12;
/// Stands for the counter in the template (never appears in a real body).
const MARKER: &str = "@@@@@@@@@@@@";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Alertmanager webhook, version "4" (what signalgate receives).
    Webhook,
    /// A JSON array of alerts for Alertmanager's `POST /api/v2/alerts`.
    AlertmanagerV2,
    /// No body at all.
    Empty,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "webhook" => Some(Kind::Webhook),
            "am-v2" => Some(Kind::AlertmanagerV2),
            "empty" => Some(Kind::Empty),
            _ => None,
        }
    }
}

/// The bodies one load run sends.
#[derive(Debug, Clone)]
pub struct BodyGen {
    /// The template cut at each counter position (one part more than counters).
    parts: Vec<Bytes>,
    distinct: bool,
    /// Alerts in one body.
    pub alerts: usize,
    /// Size of every body in bytes.
    pub len: usize,
    /// The identical body (distinct mode: the body of counter 0).
    fixed: Bytes,
}

impl BodyGen {
    /// Bodies of `kind`: `size` bytes (webhook: exactly, when `size` is at
    /// least one alert; am-v2: the same alerts as the webhook of that size),
    /// or `alerts` alerts when given. `starts_at` is the RFC 3339 firing time.
    pub fn new(
        kind: Kind,
        size: usize,
        alerts: Option<usize>,
        distinct: bool,
        starts_at: &str,
    ) -> BodyGen {
        if kind == Kind::Empty {
            return BodyGen {
                parts: vec![Bytes::new()],
                distinct: false,
                alerts: 0,
                len: 0,
                fixed: Bytes::new(),
            };
        }
        let (count, pad) = match alerts {
            Some(n) => (n.max(1), 0),
            None => plan(size, starts_at),
        };
        let template = match kind {
            Kind::Webhook => webhook(count, pad, starts_at),
            _ => alertmanager_v2(count, pad, starts_at),
        };
        let parts: Vec<Bytes> = template
            .split(MARKER)
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        let mut gen = BodyGen {
            parts,
            distinct,
            alerts: count,
            len: 0,
            fixed: Bytes::new(),
        };
        gen.fixed = gen.fill(0);
        gen.len = gen.fixed.len();
        gen
    }

    fn fill(&self, counter: u64) -> Bytes {
        let digits = format!("{:0width$}", counter % 10u64.pow(12), width = COUNTER_WIDTH);
        let total: usize = self.parts.iter().map(Bytes::len).sum::<usize>()
            + (self.parts.len().saturating_sub(1)) * COUNTER_WIDTH;
        let mut out = BytesMut::with_capacity(total);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(digits.as_bytes());
            }
            out.extend_from_slice(part);
        }
        out.freeze()
    }

    /// The body of request number `n`.
    pub fn body(&self, n: u64) -> Bytes {
        if self.distinct {
            self.fill(n)
        } else {
            self.fixed.clone()
        }
    }
}

/// Alerts and padding for a webhook of exactly `size` bytes.
fn plan(size: usize, starts_at: &str) -> (usize, usize) {
    let mut count = 1;
    let mut len = webhook(1, 0, starts_at).len();
    loop {
        let next = webhook(count + 1, 0, starts_at).len();
        if next > size {
            break;
        }
        count += 1;
        len = next;
    }
    (count, size.saturating_sub(len))
}

fn labels(i: usize) -> Map<String, Value> {
    let mut l = Map::new();
    l.insert("alertname".into(), json!("KubePodCrashLooping"));
    l.insert("namespace".into(), json!("shop"));
    l.insert("pod".into(), json!(format!("cart-{i}-{MARKER}")));
    l.insert("container".into(), json!("cart"));
    l.insert("severity".into(), json!("critical"));
    l.insert("job".into(), json!("kube-state-metrics"));
    l.insert("instance".into(), json!("10.244.1.17:8080"));
    l.insert("prometheus".into(), json!("monitoring/k8s"));
    l
}

fn annotations(i: usize, pad: usize) -> Map<String, Value> {
    let mut a = Map::new();
    a.insert(
        "summary".into(),
        json!(format!("Pod shop/cart-{i} is crash looping")),
    );
    let mut description =
        format!("Pod shop/cart-{i} (cart) is in waiting state (reason: CrashLoopBackOff).");
    // Padding: more of the same kind of text, ASCII only (one byte a char).
    let want = description.len() + pad;
    let filler = " The container keeps restarting after its liveness probe fails.";
    while description.len() < want {
        description.push_str(filler);
    }
    description.truncate(want);
    a.insert("description".into(), json!(description));
    a.insert(
        "runbook_url".into(),
        json!("https://runbooks.example.com/KubePodCrashLooping"),
    );
    a
}

const GENERATOR_URL: &str =
    "http://prometheus.monitoring:9090/graph?g0.expr=kube_pod_container_status_restarts_total";

/// A webhook with `count` alerts; the first alert's description is `pad` bytes longer.
fn webhook(count: usize, pad: usize, starts_at: &str) -> String {
    let alerts: Vec<Value> = (0..count)
        .map(|i| {
            json!({
                "status": "firing",
                "labels": labels(i),
                "annotations": annotations(i, if i == 0 { pad } else { 0 }),
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": GENERATOR_URL,
                "fingerprint": format!("{:016x}", 0x5ca1_ab1e_0000_u64 + i as u64),
            })
        })
        .collect();
    json!({
        "version": "4",
        "receiver": "signalgate",
        "status": "firing",
        "groupKey": "{}:{alertname=\"KubePodCrashLooping\"}",
        "truncatedAlerts": 0,
        "groupLabels": {"alertname": "KubePodCrashLooping"},
        "commonLabels": {"alertname": "KubePodCrashLooping", "namespace": "shop", "severity": "critical"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager-main.monitoring.svc:9093",
        "alerts": alerts,
    })
    .to_string()
}

/// The same alerts as [`webhook`], as Alertmanager's API takes them.
fn alertmanager_v2(count: usize, pad: usize, starts_at: &str) -> String {
    let alerts: Vec<Value> = (0..count)
        .map(|i| {
            json!({
                "labels": labels(i),
                "annotations": annotations(i, if i == 0 { pad } else { 0 }),
                "startsAt": starts_at,
                "generatorURL": GENERATOR_URL,
            })
        })
        .collect();
    Value::Array(alerts).to_string()
}

/// `t` (seconds since the Unix epoch) as RFC 3339 UTC, e.g. `2025-01-02T03:04:05Z`.
pub fn rfc3339(t: u64) -> String {
    signalgate_model::rfc3339::format_unix_seconds(t as i64)
}

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2025-06-01T12:00:00Z";

    #[test]
    fn webhooks_have_the_asked_size() {
        for size in [1024, 4096, 65536] {
            let gen = BodyGen::new(Kind::Webhook, size, None, false, T);
            assert_eq!(gen.len, size, "size {size}");
            assert_eq!(gen.body(7).len(), size);
            let v: Value = serde_json::from_slice(&gen.body(0)).unwrap_or(Value::Null);
            assert_eq!(v["version"], "4");
            assert_eq!(v["alerts"].as_array().map(Vec::len), Some(gen.alerts));
        }
        assert_eq!(BodyGen::new(Kind::Webhook, 1024, None, false, T).alerts, 1);
        assert!(BodyGen::new(Kind::Webhook, 65536, None, false, T).alerts > 50);
    }

    #[test]
    fn distinct_bodies_differ_identical_do_not() {
        let d = BodyGen::new(Kind::Webhook, 4096, None, true, T);
        assert_ne!(d.body(1), d.body(2));
        assert_eq!(d.body(1).len(), d.body(123_456_789).len());
        let i = BodyGen::new(Kind::Webhook, 4096, None, false, T);
        assert_eq!(i.body(1), i.body(2));
        assert!(!String::from_utf8_lossy(&d.body(5)).contains('@'));
    }

    #[test]
    fn alertmanager_bodies_carry_the_same_alerts() {
        let w = BodyGen::new(Kind::Webhook, 4096, None, false, T);
        let a = BodyGen::new(Kind::AlertmanagerV2, 4096, None, false, T);
        let wv: Value = serde_json::from_slice(&w.body(0)).unwrap_or(Value::Null);
        let av: Value = serde_json::from_slice(&a.body(0)).unwrap_or(Value::Null);
        assert_eq!(a.alerts, w.alerts);
        assert_eq!(av[0]["labels"], wv["alerts"][0]["labels"]);
        assert_eq!(av[0]["annotations"], wv["alerts"][0]["annotations"]);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_748_779_200), "2025-06-01T12:00:00Z");
    }
}
