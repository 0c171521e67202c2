//! Kubernetes Events: core/v1 `Event`, events.k8s.io/v1 `Event`, and the
//! kubernetes-event-exporter shape (core/v1 plus `clusterName` and the
//! involved object's labels and annotations), and their validation.

use serde::Deserialize;

use crate::invalid::Invalid;
use crate::json;
use crate::labels::Labels;
use crate::namespace::{is_namespace_name, not_a_namespace};
use crate::text::Text;

/// One event, in any of the accepted shapes. All fields are optional at the
/// serde level so that [`parse`] can name what is missing.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct KubeEvent<'a> {
    #[serde(borrow)]
    pub api_version: Option<Text<'a>>,
    #[serde(borrow)]
    pub metadata: Option<Metadata<'a>>,
    /// core/v1 and the exporter.
    #[serde(borrow)]
    pub involved_object: Option<ObjectRef<'a>>,
    /// events.k8s.io/v1.
    #[serde(borrow)]
    pub regarding: Option<ObjectRef<'a>>,
    #[serde(borrow)]
    pub reason: Option<Text<'a>>,
    /// core/v1 message.
    #[serde(borrow)]
    pub message: Option<Text<'a>>,
    /// events.k8s.io/v1 message.
    #[serde(borrow)]
    pub note: Option<Text<'a>>,
    #[serde(borrow, rename = "type")]
    pub event_type: Option<Text<'a>>,
    pub count: Option<i64>,
    pub deprecated_count: Option<i64>,
    #[serde(borrow)]
    pub first_timestamp: Option<Text<'a>>,
    #[serde(borrow)]
    pub last_timestamp: Option<Text<'a>>,
    #[serde(borrow)]
    pub event_time: Option<Text<'a>>,
    #[serde(borrow)]
    pub deprecated_first_timestamp: Option<Text<'a>>,
    #[serde(borrow)]
    pub deprecated_last_timestamp: Option<Text<'a>>,
    #[serde(borrow)]
    pub series: Option<Series<'a>>,
    #[serde(borrow)]
    pub source: Option<EventSource<'a>>,
    #[serde(borrow)]
    pub reporting_component: Option<Text<'a>>,
    #[serde(borrow)]
    pub reporting_controller: Option<Text<'a>>,
    #[serde(borrow)]
    pub cluster_name: Option<Text<'a>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Metadata<'a> {
    #[serde(borrow)]
    pub name: Option<Text<'a>>,
    #[serde(borrow)]
    pub namespace: Option<Text<'a>>,
}

/// The object an event is about.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef<'a> {
    #[serde(borrow)]
    pub kind: Option<Text<'a>>,
    #[serde(borrow)]
    pub name: Option<Text<'a>>,
    #[serde(borrow)]
    pub namespace: Option<Text<'a>>,
    #[serde(borrow)]
    pub uid: Option<Text<'a>>,
    #[serde(borrow)]
    pub api_version: Option<Text<'a>>,
    #[serde(borrow)]
    pub field_path: Option<Text<'a>>,
    /// Added by kubernetes-event-exporter.
    #[serde(borrow)]
    pub labels: Option<Labels<'a>>,
    /// Added by kubernetes-event-exporter.
    #[serde(borrow)]
    pub annotations: Option<Labels<'a>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Series<'a> {
    pub count: Option<i64>,
    #[serde(borrow)]
    pub last_observed_time: Option<Text<'a>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventSource<'a> {
    #[serde(borrow)]
    pub component: Option<Text<'a>>,
    #[serde(borrow)]
    pub host: Option<Text<'a>>,
}

impl<'a> KubeEvent<'a> {
    /// The object the event is about, and the JSON field it came from.
    pub fn object(&self) -> Option<(&'static str, &ObjectRef<'a>)> {
        match (&self.involved_object, &self.regarding) {
            (Some(o), _) => Some(("involvedObject", o)),
            (None, Some(o)) => Some(("regarding", o)),
            (None, None) => None,
        }
    }

    /// The namespace the event is filed under, and the JSON pointer it was
    /// read from: the object's, else the event's own (`None`: neither is set).
    pub fn namespace(&self) -> Option<(String, &str)> {
        if let Some((field, object)) = self.object() {
            if let Some(ns) = non_empty(object.namespace.as_ref()) {
                return Some((format!("/{field}/namespace"), ns));
            }
        }
        let own = non_empty(self.metadata.as_ref().and_then(|m| m.namespace.as_ref()))?;
        Some(("/metadata/namespace".to_string(), own))
    }

    /// The event's message (`message`, else events.k8s.io's `note`).
    pub fn text(&self) -> Option<&str> {
        self.message.as_deref().or(self.note.as_deref())
    }

    /// How many times the event was seen, in whichever field the shape uses.
    pub fn occurrences(&self) -> Option<i64> {
        self.series
            .as_ref()
            .and_then(|s| s.count)
            .or(self.count)
            .or(self.deprecated_count)
    }

    /// When the event's series began: `firstTimestamp`, else the
    /// deprecated copy, else `eventTime` (events.k8s.io: the first
    /// observation). It stays the same while the series is re-posted with a
    /// growing count: the incident's firing instance.
    pub fn first_seen(&self) -> Option<&str> {
        self.first_timestamp
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(self.deprecated_first_timestamp.as_deref())
            .filter(|t| !t.is_empty())
            .or(self.event_time.as_deref())
            .filter(|t| !t.is_empty())
    }

    /// When the event was last seen: the most specific timestamp present.
    pub fn last_seen(&self) -> Option<&str> {
        let series = self
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_deref());
        series
            .or(self.last_timestamp.as_deref())
            .or(self.event_time.as_deref())
            .or(self.deprecated_last_timestamp.as_deref())
            .or(self.first_timestamp.as_deref())
            .or(self.deprecated_first_timestamp.as_deref())
            .filter(|t| !t.is_empty())
    }
}

fn non_empty<'t>(t: Option<&'t Text<'_>>) -> Option<&'t str> {
    t.map(|t| t.as_str()).filter(|v| !v.is_empty())
}

/// Parses and validates an event body.
pub fn parse(body: &[u8]) -> Result<KubeEvent<'_>, Invalid> {
    let event: KubeEvent<'_> = json::parse(body)?;
    validate(&event)?;
    Ok(event)
}

/// The rules an event must meet; the first broken one is reported.
pub fn validate(e: &KubeEvent<'_>) -> Result<(), Invalid> {
    let Some((field, object)) = e.object() else {
        return Err(Invalid::field(
            "/involvedObject",
            "missing: an event needs involvedObject (core/v1) or regarding (events.k8s.io/v1)",
        ));
    };
    for (name, value) in [("kind", &object.kind), ("name", &object.name)] {
        if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
            return Err(Invalid::field(
                format!("/{field}/{name}"),
                format!("missing or empty: the {field} needs a {name}"),
            ));
        }
    }
    if let Some((field, ns)) = e.namespace() {
        if !is_namespace_name(ns) {
            return Err(Invalid::field(field, not_a_namespace(ns)));
        }
    }
    if e.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(Invalid::field(
            "/reason",
            "missing or empty: an event needs a reason",
        ));
    }
    match e.event_type.as_deref() {
        Some("Normal" | "Warning") => Ok(()),
        Some(t) => Err(Invalid::field(
            "/type",
            format!("{t:?} is not an event type: expected \"Normal\" or \"Warning\""),
        )),
        None => Err(Invalid::field(
            "/type",
            "missing: expected \"Normal\" or \"Warning\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    pub(crate) fn core_event() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "cart-1.17b2", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "cart-1", "uid": "u-1", "apiVersion": "v1", "fieldPath": "spec.containers{cart}"},
            "reason": "BackOff",
            "message": "Back-off restarting failed container",
            "type": "Warning",
            "count": 7,
            "firstTimestamp": "2026-11-26T20:00:00Z",
            "lastTimestamp": "2026-11-26T20:57:00Z",
            "source": {"component": "kubelet", "host": "node-1"}
        })
    }

    fn field_of(v: &Value) -> Option<String> {
        let body = serde_json::to_vec(v).unwrap();
        parse(&body).err().and_then(|e| e.field)
    }

    #[test]
    fn the_namespace_an_event_is_filed_under_must_be_a_namespace_name() {
        let mut v = core_event();
        v["involvedObject"]["namespace"] = json!("../escaped");
        assert_eq!(field_of(&v).as_deref(), Some("/involvedObject/namespace"));
        // The event's own namespace counts when the object has none.
        let mut v = core_event();
        v["involvedObject"]["namespace"] = json!("");
        v["metadata"]["namespace"] = json!("Not Valid");
        assert_eq!(field_of(&v).as_deref(), Some("/metadata/namespace"));
        v["metadata"]["namespace"] = json!("kube-system");
        let body = serde_json::to_vec(&v).unwrap();
        let e = parse(&body).unwrap();
        assert_eq!(
            e.namespace(),
            Some(("/metadata/namespace".to_string(), "kube-system"))
        );
    }

    #[test]
    fn accepts_core_v1() {
        let body = serde_json::to_vec(&core_event()).unwrap();
        let e = parse(&body).unwrap();
        assert_eq!(e.object().map(|(f, _)| f), Some("involvedObject"));
        assert_eq!(e.occurrences(), Some(7));
        assert_eq!(e.last_seen(), Some("2026-11-26T20:57:00Z"));
    }

    #[test]
    fn accepts_events_k8s_io_v1() {
        let v = json!({
            "apiVersion": "events.k8s.io/v1",
            "regarding": {"kind": "Deployment", "namespace": "shop", "name": "cart"},
            "reason": "ScalingReplicaSet",
            "note": "Scaled up",
            "type": "Normal",
            "eventTime": "2026-11-26T20:57:00.000001Z",
            "series": {"count": 3, "lastObservedTime": "2026-11-26T20:58:00.000001Z"},
            "reportingController": "deployment-controller"
        });
        let body = serde_json::to_vec(&v).unwrap();
        let e = parse(&body).unwrap();
        assert_eq!(e.object().map(|(f, _)| f), Some("regarding"));
        assert_eq!(e.text(), Some("Scaled up"));
        assert_eq!(e.occurrences(), Some(3));
        assert_eq!(e.last_seen(), Some("2026-11-26T20:58:00.000001Z"));
    }

    #[test]
    fn accepts_the_exporter_shape() {
        let mut v = core_event();
        v["clusterName"] = json!("prod-eu");
        v["involvedObject"]["labels"] = json!({"app": "cart"});
        v["involvedObject"]["annotations"] = json!({"team": "shop"});
        let body = serde_json::to_vec(&v).unwrap();
        let e = parse(&body).unwrap();
        assert_eq!(e.cluster_name.as_deref(), Some("prod-eu"));
    }

    #[test]
    fn needs_an_object_with_kind_and_name() {
        let mut v = core_event();
        v.as_object_mut().unwrap().remove("involvedObject");
        assert_eq!(field_of(&v).as_deref(), Some("/involvedObject"));
        let mut v = core_event();
        v["involvedObject"]["kind"] = json!("");
        assert_eq!(field_of(&v).as_deref(), Some("/involvedObject/kind"));
        let mut v = core_event();
        v["involvedObject"].as_object_mut().unwrap().remove("name");
        assert_eq!(field_of(&v).as_deref(), Some("/involvedObject/name"));
        let mut v = core_event();
        v["involvedObject"]["name"] = json!(5);
        assert_eq!(field_of(&v).as_deref(), Some("/involvedObject/name"));
    }

    #[test]
    fn needs_a_reason_and_a_known_type() {
        let mut v = core_event();
        v.as_object_mut().unwrap().remove("reason");
        assert_eq!(field_of(&v).as_deref(), Some("/reason"));
        let mut v = core_event();
        v["type"] = json!("Error");
        assert_eq!(field_of(&v).as_deref(), Some("/type"));
        v.as_object_mut().unwrap().remove("type");
        assert_eq!(field_of(&v).as_deref(), Some("/type"));
    }
}
