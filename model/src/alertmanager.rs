//! The Alertmanager webhook payload (version "4") and its validation.

use std::cell::Cell;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use crate::alert_labels::LabelView;
use crate::invalid::{pointer, Invalid};
use crate::labels::{is_valid_label_name, Labels};
use crate::namespace::{is_namespace_name, not_a_namespace};
use crate::text::Text;
use crate::{json, rfc3339};

/// The webhook body. Every field is optional at the serde level so that
/// [`parse`] can name what is missing; unknown fields are ignored (newer
/// Alertmanagers add some).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Webhook<'a> {
    #[serde(borrow)]
    pub version: Option<Text<'a>>,
    #[serde(borrow)]
    pub receiver: Option<Text<'a>>,
    #[serde(borrow)]
    pub status: Option<Text<'a>>,
    /// At most the `max_alerts + 1` first (see [`parse`]).
    #[serde(borrow, default, deserialize_with = "bounded_alerts")]
    pub alerts: Option<Vec<Alert<'a>>>,
    #[serde(borrow)]
    pub group_labels: Option<Labels<'a>>,
    #[serde(borrow)]
    pub common_labels: Option<Labels<'a>>,
    #[serde(borrow)]
    pub common_annotations: Option<Labels<'a>>,
    #[serde(borrow, rename = "externalURL")]
    pub external_url: Option<Text<'a>>,
    #[serde(borrow)]
    pub group_key: Option<Text<'a>>,
    pub truncated_alerts: Option<u64>,
}

/// One alert of the webhook.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Alert<'a> {
    #[serde(borrow)]
    pub status: Option<Text<'a>>,
    #[serde(borrow)]
    pub labels: Option<Labels<'a>>,
    #[serde(borrow)]
    pub annotations: Option<Labels<'a>>,
    #[serde(borrow)]
    pub starts_at: Option<Text<'a>>,
    #[serde(borrow)]
    pub ends_at: Option<Text<'a>>,
    #[serde(borrow, rename = "generatorURL")]
    pub generator_url: Option<Text<'a>>,
    #[serde(borrow)]
    pub fingerprint: Option<Text<'a>>,
}

impl<'a> Alert<'a> {
    /// The alert's own label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.as_ref()?.get(name).map(|v| v.as_str())
    }
}

/// Parses and validates a webhook body. `max_alerts` bounds `alerts`: the
/// alerts past the first `max_alerts + 1` are only checked to be JSON, never
/// built, so a body of many tiny alerts costs no more memory than the limit
/// allows (this runs in Envoy's Wasm VM, whose memory never shrinks).
pub fn parse(body: &[u8], max_alerts: usize) -> Result<Webhook<'_>, Invalid> {
    ALERTS_KEPT.with(|k| k.set(max_alerts.saturating_add(1)));
    let parsed = json::parse::<Webhook<'_>>(body);
    ALERTS_KEPT.with(|k| k.set(usize::MAX));
    let webhook = parsed?;
    validate(&webhook, max_alerts)?;
    Ok(webhook)
}

thread_local! {
    /// How many alerts [`bounded_alerts`] builds: set by [`parse`] around its
    /// one synchronous deserialization (a serde field cannot take arguments).
    static ALERTS_KEPT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// `alerts`, building at most [`ALERTS_KEPT`] of them.
fn bounded_alerts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Alert<'de>>>, D::Error> {
    struct Bounded<'a>(Vec<Alert<'a>>);

    impl<'de> Deserialize<'de> for Bounded<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct List;
            impl<'de> Visitor<'de> for List {
                type Value = Bounded<'de>;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a list of alerts")
                }

                fn visit_seq<A: SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Bounded<'de>, A::Error> {
                    let keep = ALERTS_KEPT.with(Cell::get);
                    let mut alerts = Vec::new();
                    while alerts.len() < keep {
                        match seq.next_element()? {
                            Some(alert) => alerts.push(alert),
                            None => return Ok(Bounded(alerts)),
                        }
                    }
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Bounded(alerts))
                }
            }
            d.deserialize_seq(List)
        }
    }

    Ok(Option::<Bounded<'de>>::deserialize(d)?.map(|b| b.0))
}

/// The rules a webhook must meet; the first broken one is reported.
pub fn validate(w: &Webhook<'_>, max_alerts: usize) -> Result<(), Invalid> {
    match w.version.as_deref() {
        Some("4") => {}
        Some(v) => {
            return Err(Invalid::field(
                "/version",
                format!("unsupported webhook version {v:?}: only \"4\" is accepted"),
            ))
        }
        None => return Err(Invalid::field("/version", "missing: expected \"4\"")),
    }
    let alerts = match &w.alerts {
        None => {
            return Err(Invalid::field(
                "/alerts",
                "missing: expected a list of alerts",
            ))
        }
        Some(a) if a.is_empty() => {
            return Err(Invalid::field(
                "/alerts",
                "empty: at least one alert is required",
            ))
        }
        Some(a) if a.len() > max_alerts => {
            return Err(Invalid::field(
                "/alerts",
                format!("more than the {max_alerts} alerts allowed in one request"),
            ))
        }
        Some(a) => a,
    };
    for (name, set) in [
        ("groupLabels", &w.group_labels),
        ("commonLabels", &w.common_labels),
    ] {
        if let Some(bad) = set.as_ref().and_then(invalid_label_name) {
            return Err(label_name_error(&[name], bad));
        }
    }
    for (i, alert) in alerts.iter().enumerate() {
        validate_alert(i, alert, w.common_labels.as_ref())?;
    }
    Ok(())
}

fn validate_alert(i: usize, a: &Alert<'_>, common: Option<&Labels<'_>>) -> Result<(), Invalid> {
    // The alert's index as text, built only for an error.
    let idx = || i.to_string();
    let at = |field: &str| pointer(["alerts", &idx(), field]);
    match a.status.as_deref() {
        Some("firing" | "resolved") => {}
        Some(s) => {
            return Err(Invalid::field(
                at("status"),
                format!("{s:?} is not a status: expected \"firing\" or \"resolved\""),
            ))
        }
        None => {
            return Err(Invalid::field(
                at("status"),
                "missing: expected \"firing\" or \"resolved\"",
            ))
        }
    }
    let Some(labels) = &a.labels else {
        return Err(Invalid::field(
            at("labels"),
            "missing: an alert needs labels",
        ));
    };
    match a.label("alertname") {
        Some(name) if !name.trim().is_empty() => {}
        Some(_) => {
            return Err(Invalid::field(
                pointer(["alerts", &idx(), "labels", "alertname"]),
                "empty: alertname must be a non-empty string",
            ))
        }
        None => {
            return Err(Invalid::field(
                pointer(["alerts", &idx(), "labels", "alertname"]),
                "missing: every alert needs an alertname label",
            ))
        }
    }
    if let Some(bad) = invalid_label_name(labels) {
        return Err(label_name_error(&["alerts", &idx(), "labels"], bad));
    }
    if let Some(ns) = LabelView::new(Some(labels), common).namespace() {
        if !is_namespace_name(ns.value) {
            let field = if ns.own {
                pointer(["alerts", &idx(), "labels", ns.label])
            } else {
                pointer(["commonLabels", ns.label])
            };
            return Err(Invalid::field(field, not_a_namespace(ns.value)));
        }
    }
    match a.starts_at.as_deref() {
        Some(t) if rfc3339::parse(t).is_some() => {}
        Some(t) => {
            return Err(Invalid::field(
                at("startsAt"),
                format!("{t:?} is not an RFC 3339 timestamp"),
            ))
        }
        None => {
            return Err(Invalid::field(
                at("startsAt"),
                "missing: expected an RFC 3339 timestamp",
            ))
        }
    }
    if let Some(t) = a.ends_at.as_deref() {
        if rfc3339::parse(t).is_none() {
            return Err(Invalid::field(
                at("endsAt"),
                format!("{t:?} is not an RFC 3339 timestamp"),
            ));
        }
    }
    Ok(())
}

/// The first name in `labels` that is not a valid Prometheus label name.
fn invalid_label_name<'l>(labels: &'l Labels<'_>) -> Option<&'l str> {
    labels
        .keys()
        .map(|name| name.as_str())
        .find(|name| !is_valid_label_name(name))
}

/// The error for `name`, a label of the set at `path`.
fn label_name_error(path: &[&str], name: &str) -> Invalid {
    Invalid::field(
        pointer(path.iter().copied().chain([name])),
        format!("{name:?} is not a valid Prometheus label name"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalid::InvalidKind;
    use serde_json::{json, Value};

    fn webhook() -> Value {
        json!({
            "version": "4",
            "receiver": "signalgate",
            "status": "firing",
            "groupKey": "{}:{alertname=\"KubePodCrashLooping\"}",
            "truncatedAlerts": 0,
            "groupLabels": {"alertname": "KubePodCrashLooping"},
            "commonLabels": {"alertname": "KubePodCrashLooping", "namespace": "shop"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "KubePodCrashLooping", "namespace": "shop", "pod": "cart-1", "severity": "critical"},
                "annotations": {"summary": "cart-1 is crash looping"},
                "startsAt": "2026-11-26T20:57:15.123Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus/graph",
                "fingerprint": "0123456789abcdef"
            }]
        })
    }

    fn check(v: &Value) -> Result<(), Invalid> {
        let body = serde_json::to_vec(v).unwrap_or_default();
        parse(&body, 1000).map(|_| ())
    }

    fn field_of(v: &Value) -> Option<String> {
        check(v).err().and_then(|e| e.field)
    }

    #[test]
    fn accepts_a_real_webhook_and_borrows_strings() {
        let body = serde_json::to_vec(&webhook()).unwrap_or_default();
        let w = parse(&body, 1000);
        assert!(w.is_ok(), "{w:?}");
        let w = w.unwrap_or_default();
        let alert = &w.alerts.as_deref().unwrap_or_default()[0];
        assert_eq!(alert.label("pod"), Some("cart-1"));
        assert!(matches!(
            alert
                .labels
                .as_ref()
                .and_then(|l| l.keys().next())
                .map(|k| &k.0),
            Some(std::borrow::Cow::Borrowed(_))
        ));
    }

    #[test]
    fn not_json_is_reported_as_such() {
        for body in [&b"{"[..], b"nope", b"{\"version\":\"4\"} trailing", b""] {
            let e = parse(body, 10).err();
            assert_eq!(e.map(|e| e.kind), Some(InvalidKind::NotJson));
        }
    }

    #[test]
    fn a_non_object_body_names_the_document() {
        let e = parse(b"[1,2]", 10).err();
        assert_eq!(e.as_ref().and_then(|e| e.field.as_deref()), Some(""));
    }

    #[test]
    fn version_must_be_4() {
        let mut v = webhook();
        v["version"] = json!("3");
        assert_eq!(field_of(&v).as_deref(), Some("/version"));
        v.as_object_mut().map(|o| o.remove("version"));
        assert_eq!(field_of(&v).as_deref(), Some("/version"));
        v["version"] = json!(4);
        assert_eq!(field_of(&v).as_deref(), Some("/version"));
    }

    #[test]
    fn alerts_must_be_a_non_empty_bounded_list() {
        let mut v = webhook();
        v["alerts"] = json!([]);
        assert_eq!(field_of(&v).as_deref(), Some("/alerts"));
        v["alerts"] = json!("x");
        assert_eq!(field_of(&v).as_deref(), Some("/alerts"));
        v.as_object_mut().map(|o| o.remove("alerts"));
        assert_eq!(field_of(&v).as_deref(), Some("/alerts"));
        let mut v = webhook();
        let one = v["alerts"][0].clone();
        v["alerts"] = Value::Array(vec![one; 3]);
        let body = serde_json::to_vec(&v).unwrap_or_default();
        assert!(parse(&body, 3).is_ok());
        let e = parse(&body, 2).err();
        assert_eq!(e.and_then(|e| e.field).as_deref(), Some("/alerts"));
    }

    #[test]
    fn alerts_past_the_limit_are_not_built_only_checked_to_be_json() {
        let mut v = webhook();
        let one = v["alerts"][0].clone();
        let mut alerts = vec![one; 3];
        // Past the limit (2) and the one more that tells it was passed.
        alerts.extend(std::iter::repeat_n(json!({"status": 5}), 100));
        v["alerts"] = Value::Array(alerts);
        let body = serde_json::to_vec(&v).unwrap_or_default();
        let e = parse(&body, 2).err();
        // The count is refused, not the wrong type in alert 3, never built.
        assert_eq!(e.as_ref().and_then(|e| e.field.as_deref()), Some("/alerts"));
        assert!(
            e.is_some_and(|e| e.detail.contains("more than the 2 alerts")),
            "detail"
        );
        // Within a larger limit, the same body is read in full.
        let e = parse(&body, 1000).err();
        assert_eq!(e.and_then(|e| e.field).as_deref(), Some("/alerts/3/status"));
        // Not JSON past the limit is still not JSON.
        let mut text = String::from_utf8(body).unwrap_or_default();
        text.truncate(text.len() - 40);
        let e = parse(text.as_bytes(), 2).err();
        assert_eq!(
            e.map(|e| e.kind),
            Some(crate::invalid::InvalidKind::NotJson)
        );
    }

    #[test]
    fn alert_status_must_be_firing_or_resolved() {
        let mut v = webhook();
        v["alerts"][0]["status"] = json!("pending");
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/0/status"));
        v["alerts"][0]["status"] = json!("resolved");
        assert!(check(&v).is_ok());
    }

    #[test]
    fn alertname_must_be_a_non_empty_string() {
        let mut v = webhook();
        v["alerts"][0]["labels"]["alertname"] = json!("");
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/0/labels/alertname"));
        v["alerts"][0]["labels"]["alertname"] = json!(7);
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/0/labels/alertname"));
        v["alerts"][0]["labels"]
            .as_object_mut()
            .map(|o| o.remove("alertname"));
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/0/labels/alertname"));
    }

    #[test]
    fn a_repeated_key_is_named_in_the_detail() {
        let e = parse(br#"{"version":"4","version":"4","alerts":[]}"#, 10).err();
        let e = e.expect("refused");
        assert_eq!(e.field.as_deref(), Some(""));
        assert!(
            e.detail.contains("duplicate field `version`"),
            "{}",
            e.detail
        );
        assert!(!e.detail.contains("must be a JSON object"), "{}", e.detail);
    }

    #[test]
    fn the_namespace_an_alert_is_filed_under_must_be_a_namespace_name() {
        for bad in [
            "../escaped",
            "/etc",
            "Shop",
            "a\u{0}b",
            "-shop",
            "shop-",
            "a b",
            &"x".repeat(64),
        ] {
            let mut v = webhook();
            v["alerts"][0]["labels"]["namespace"] = json!(bad);
            assert_eq!(
                field_of(&v).as_deref(),
                Some("/alerts/0/labels/namespace"),
                "{bad:?}"
            );
        }
        // Read from the common labels when the alert has none of its own.
        let mut v = webhook();
        v["alerts"][0]["labels"]
            .as_object_mut()
            .map(|o| o.remove("namespace"));
        v["commonLabels"]["namespace"] = json!("../x");
        assert_eq!(field_of(&v).as_deref(), Some("/commonLabels/namespace"));
        // exported_namespace counts only when namespace is absent or empty.
        let mut v = webhook();
        v["alerts"][0]["labels"]["exported_namespace"] = json!("../x");
        assert!(check(&v).is_ok());
        v["alerts"][0]["labels"]["namespace"] = json!("");
        assert_eq!(
            field_of(&v).as_deref(),
            Some("/alerts/0/labels/exported_namespace")
        );
        // The longest valid name, and no namespace at all (the fallback), pass.
        let mut v = webhook();
        v["alerts"][0]["labels"]["namespace"] = json!(format!("a{}9", "-".repeat(61)));
        assert!(check(&v).is_ok());
        v["alerts"][0]["labels"]
            .as_object_mut()
            .map(|o| o.remove("namespace"));
        v["commonLabels"]
            .as_object_mut()
            .map(|o| o.remove("namespace"));
        assert!(check(&v).is_ok());
    }

    #[test]
    fn label_names_and_values_are_checked() {
        let mut v = webhook();
        v["alerts"][0]["labels"]["bad-name"] = json!("x");
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/0/labels/bad-name"));
        // A later alert is named by its own index.
        let mut v = webhook();
        let second = v["alerts"][0].clone();
        if let Some(alerts) = v["alerts"].as_array_mut() {
            alerts.push(second);
        }
        v["alerts"][1]["labels"]["bad name"] = json!("x");
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/1/labels/bad name"));
        let mut v = webhook();
        v["alerts"][0]["labels"]["replicas"] = json!(3);
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/0/labels/replicas"));
        let mut v = webhook();
        v["commonLabels"]["a/b"] = json!("x");
        assert_eq!(field_of(&v).as_deref(), Some("/commonLabels/a~1b"));
        let mut v = webhook();
        v["alerts"][0]["annotations"]["summary"] = json!(["x"]);
        assert_eq!(
            field_of(&v).as_deref(),
            Some("/alerts/0/annotations/summary")
        );
    }

    #[test]
    fn starts_at_must_be_rfc3339() {
        let mut v = webhook();
        v["alerts"][0]["startsAt"] = json!("yesterday");
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/0/startsAt"));
        v["alerts"][0].as_object_mut().map(|o| o.remove("startsAt"));
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/0/startsAt"));
        let mut v = webhook();
        v["alerts"][0]["endsAt"] = json!("soon");
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/0/endsAt"));
    }

    #[test]
    fn the_failing_alert_is_named_by_index() {
        let mut v = webhook();
        let mut second = v["alerts"][0].clone();
        second["status"] = json!(1);
        v["alerts"] = json!([v["alerts"][0].clone(), second]);
        assert_eq!(field_of(&v).as_deref(), Some("/alerts/1/status"));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut v = webhook();
        v["notification_reason"] = json!("new");
        v["alerts"][0]["extra"] = json!({"x": [1]});
        assert!(check(&v).is_ok());
    }
}
