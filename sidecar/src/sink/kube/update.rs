//! The kube sink's updates: coalesced counters written into a resource,
//! never backwards ([`Progress::is_behind`]), and in one PATCH while nobody
//! else writes the resource.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use super::call::{classify, with_retries, Attempt, FIELD_MANAGER, LIST_AND_UPDATE_RETRY_FOR};
use crate::sink::SinkError;
use crate::store::Settings;
use signalgate_resource::{Progress, RemediationRequest};

/// Resources whose [`Held`] state the sink keeps; past that it forgets them
/// all (each then costs one GET more at its next update). A few hundred
/// bytes each.
const HELD_MAX: usize = 4096;
/// Rounds of read, decide and write an update makes while other clients
/// keep changing the resource (a 409 each); then it is left for the next
/// flush.
const UPDATE_ROUNDS: usize = 5;

/// A resource as the sink last read or wrote it: where its next update
/// starts from.
#[derive(Clone)]
struct Held {
    /// Its `metadata.resourceVersion` then: the next write's precondition.
    version: Option<String>,
    /// The counters it held then.
    progress: Progress,
    /// Another client wrote it between two updates of this sink: the next
    /// update reads it first, rather than send a PATCH bound to fail (409).
    contended: bool,
}

impl Held {
    fn of(rr: &RemediationRequest, contended: bool) -> Held {
        Held {
            version: rr.metadata.resource_version.clone(),
            progress: Progress::of(&rr.spec),
            contended,
        }
    }
}

/// The kube sink's updates, and each resource as it last read or wrote it
/// (by namespace and name).
pub(super) struct Updates {
    held: Mutex<HashMap<(String, String), Held>>,
    /// The store's cap on a storm's affected resources ([`Progress::over`]).
    pub(super) max_affected: usize,
}

impl Default for Updates {
    fn default() -> Updates {
        Updates {
            held: Mutex::default(),
            max_affected: Settings::default().storm_max_affected as usize,
        }
    }
}

impl Updates {
    /// Writes `progress` into `namespace/name` (through `client`), unless the resource holds a
    /// later state of the incident ([`Progress::is_behind`]: a flush that
    /// read the store before another replica wrote) or these very counters.
    /// Deciding and writing are one step: the merge patch carries the
    /// resourceVersion the decision was made on, so a resource changed
    /// meanwhile is refused (409 Conflict), then read again and decided
    /// again. The decision starts from the resource as this sink last wrote
    /// it: while nobody else writes it, an update costs one PATCH. A
    /// resource this sink does not know, or that others write too, is read
    /// first (GET + PATCH); a 409 costs a GET and another PATCH. A skip is
    /// only ever decided on a fresh read.
    pub(super) async fn write(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
        progress: &Progress,
    ) -> Result<(), SinkError> {
        let api: Api<RemediationRequest> = Api::namespaced(client.clone(), namespace);
        let api = &api;
        let key = (namespace.to_string(), name.to_string());
        let known = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        let mut hint = known.clone().filter(|h| !h.contended);
        let mut contended = false;
        for _ in 0..UPDATE_ROUNDS {
            let (held, fresh) = match hint.take() {
                Some(held) => (held, false),
                None => match read(api, namespace, name).await {
                    Ok(Some(held)) => {
                        contended |= known.as_ref().is_some_and(|k| k.version != held.version);
                        (held, true)
                    }
                    Ok(None) => return patch_unchecked(api, namespace, name, progress).await,
                    Err(e) => return Err(self.forget_if_gone(&key, e)),
                },
            };
            let progress = &progress.over(&held.progress, self.max_affected);
            let behind = progress.is_behind(&held.progress);
            if behind || !progress.changes(&held.progress) {
                if !fresh {
                    // Decided on what this sink wrote last: read to be sure.
                    continue;
                }
                tracing::debug!(%namespace, %name, behind,
                    "the resource holds these counters or later ones; not written");
                self.remember(key, Held { contended, ..held });
                return Ok(());
            }
            match patch(api, namespace, name, progress, held.version.as_deref()).await {
                Ok(Some(written)) => {
                    self.remember(key, Held::of(&written, contended));
                    return Ok(());
                }
                // Changed since that version: read it and decide again.
                Ok(None) => contended = true,
                Err(e) => return Err(self.forget_if_gone(&key, e)),
            }
        }
        Err(SinkError::Unavailable(format!(
            "{namespace}/{name} kept changing while its counters were written"
        )))
    }

    fn remember(&self, key: (String, String), held: Held) {
        let mut known = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= HELD_MAX && !known.contains_key(&key) {
            known.clear();
        }
        known.insert(key, held);
    }

    /// Passes `e` on, forgetting the resource if it is gone.
    fn forget_if_gone(&self, key: &(String, String), e: SinkError) -> SinkError {
        if matches!(e, SinkError::NotFound(_)) {
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(key);
        }
        e
    }
}

/// The resource as it is now; `None` if this sink may not read it.
async fn read(
    api: &Api<RemediationRequest>,
    namespace: &str,
    name: &str,
) -> Result<Option<Held>, SinkError> {
    with_retries(Some(LIST_AND_UPDATE_RETRY_FOR), || async move {
        match api.get(name).await {
            Ok(rr) => Attempt::Done(Some(Held::of(&rr, false))),
            Err(kube::Error::Api(s)) if s.code == 403 => Attempt::Done(None),
            Err(e) => classify(e, &format!("get {namespace}/{name}")),
        }
    })
    .await
}

/// Merge-patches the counters into the resource, if it is still at
/// `version` (when given): what it holds then, or `None` if it had changed
/// (409 Conflict).
async fn patch(
    api: &Api<RemediationRequest>,
    namespace: &str,
    name: &str,
    progress: &Progress,
    version: Option<&str>,
) -> Result<Option<RemediationRequest>, SinkError> {
    let patch = Patch::Merge(counters_patch(progress, version));
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    with_retries(Some(LIST_AND_UPDATE_RETRY_FOR), || {
        let (patch, params) = (&patch, &params);
        async move {
            match api.patch(name, params, patch).await {
                Ok(rr) => Attempt::Done(Some(rr)),
                Err(kube::Error::Api(s)) if s.code == 409 && version.is_some() => {
                    Attempt::Done(None)
                }
                Err(e) => classify(e, &format!("patch {namespace}/{name}")),
            }
        }
    })
    .await
}

/// An update where the sink may not read its resources (an RBAC from
/// before updates read them): the counters are written without knowing
/// whether the resource holds later ones, as before.
async fn patch_unchecked(
    api: &Api<RemediationRequest>,
    namespace: &str,
    name: &str,
    progress: &Progress,
) -> Result<(), SinkError> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(%namespace, %name, "may not get resources (RBAC lacks 'get' on remediationrequests): counters are written without checking that the resource holds no later ones");
    }
    patch(api, namespace, name, progress, None).await.map(drop)
}

/// The merge patch writing `progress` as `Progress::apply` does: the whole
/// deduplication (a field it does not hold is removed) and resolution (null
/// removes it), the storm if it has one; conditional on `version` if given
/// (the API server refuses it with 409 Conflict once the resource has
/// another resourceVersion).
fn counters_patch(progress: &Progress, version: Option<&str>) -> serde_json::Value {
    let mut spec = json!({
        "deduplication": progress.deduplication,
        "resolution": progress.resolution,
    });
    if progress.deduplication.last_firing_time.is_none() {
        spec["deduplication"]["lastFiringTime"] = serde_json::Value::Null;
    }
    if let Some(storm) = &progress.storm {
        spec["storm"] = json!(storm);
    }
    match version {
        Some(v) => json!({ "metadata": { "resourceVersion": v }, "spec": spec }),
        None => json!({ "spec": spec }),
    }
}
