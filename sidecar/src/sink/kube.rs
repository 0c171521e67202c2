//! The Kubernetes sink: `RemediationRequest`s through the API server.
//!
//! - Create is idempotent: `AlreadyExists` for our deterministic name is success.
//! - A namespace that does not exist sends the resource to the fallback
//!   namespace, labelled with the original one. A create that retakes a
//!   claim looks there first: the earlier holder may have put it there.
//!   The sink remembers the namespaces its calls found missing (briefly:
//!   their next creates go straight to the fallback namespace) or existing
//!   ([`namespaces`]; [`Sink::knows_namespace`]).
//! - Counters are written with a JSON merge patch of `spec.deduplication`,
//!   `spec.resolution` (null clears it) and `spec.storm`: the status is
//!   never touched. Never backwards: the patch is conditional on the
//!   resourceVersion of the state it was decided on, and is not sent when
//!   that state is later than the counters (see `update.rs`).
//! - 429, 5xx and transport errors are retried with capped, jittered
//!   exponential backoff; the caller bounds the total time.
//! - Cached lookups read the sink's own view of its resources ([`cache`]),
//!   kept by a LIST and a WATCH of them: no API call per signal.

pub mod cache;
mod call;
mod jitter;
mod namespaces;
mod update;

use std::time::Instant;

use k8s_openapi::apimachinery::pkg::version::Info;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;

use super::{latest, recent_storms, Created, Found, FoundStorm, Location, Read, Sink, SinkError};
use crate::config::knobs::KUBE_LOOKUP_READS;
use crate::config::LookupReads;
use cache::WatchCache;
use call::{classify, with_retries, Attempt, FIELD_MANAGER, LIST_AND_UPDATE_RETRY_FOR};
use namespaces::Namespaces;
use signalgate_resource::{
    Progress, RemediationRequest, LABEL_FINGERPRINT, LABEL_ORIGINAL_NAMESPACE, LABEL_STORM,
};
use update::Updates;

/// Fingerprints looked up by one label-selector LIST (`in (…)`): about 3 KB
/// of selector in the URL at most.
const FINGERPRINTS_PER_LIST: usize = 50;

pub struct KubeSink {
    client: Client,
    fallback_namespace: String,
    /// How lookups read. The lookup that asks the API server's version
    /// holds the lock, so that the others wait for its answer.
    reads: tokio::sync::Mutex<Reads>,
    /// The sink's own view of its resources, for [`Read::Cached`].
    cache: WatchCache,
    /// Which namespaces its calls found to exist, or to be missing.
    namespaces: Namespaces,
    /// Counter updates, never backwards ([`update`]).
    updates: Updates,
}

/// How lookups read, as far as known.
enum Reads {
    /// Settled: consistently (`true`) or from the watch cache.
    Known(bool),
    /// `Auto`, not asked yet.
    Unasked,
    /// `Auto`, and asking failed (later transient failures log at debug).
    ProbeFailed,
}

impl KubeSink {
    /// The resources matching `selector` that belong to `namespace`: in it,
    /// and moved from it to the fallback namespace. A lookup decides whether
    /// a resource gets made, so where it is cheap it is a consistent read:
    /// it then sees every resource written before it, including one written
    /// a moment before the store lost its record, which the API server's
    /// watch cache (resourceVersion 0) may not hold yet. See
    /// [`LookupReads`].
    async fn list_places(
        &self,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<RemediationRequest>, SinkError> {
        let places = if namespace == self.fallback_namespace {
            // Not the ones moved here from other namespaces.
            vec![(
                namespace.to_string(),
                format!("{selector},!{LABEL_ORIGINAL_NAMESPACE}"),
            )]
        } else {
            vec![
                (namespace.to_string(), selector.to_string()),
                (
                    self.fallback_namespace.clone(),
                    format!("{selector},{LABEL_ORIGINAL_NAMESPACE}={namespace}"),
                ),
            ]
        };
        let consistent = self.consistent_lookups().await;
        let mut found = Vec::new();
        for (ns, selector) in places {
            let params = ListParams::default().labels(&selector);
            let params = if consistent {
                params
            } else {
                params.match_any()
            };
            let list = with_retries(Some(LIST_AND_UPDATE_RETRY_FOR), || {
                let (api, params, ns) = (self.api(&ns), &params, &ns);
                async move {
                    match api.list(params).await {
                        Ok(list) => Attempt::Done(list.items),
                        Err(e) => classify(e, &format!("list {ns}")),
                    }
                }
            })
            .await?;
            if ns != self.fallback_namespace && !list.is_empty() {
                // Resources in it: it exists.
                self.namespaces.learn(&ns, true, Instant::now());
            }
            found.extend(list);
        }
        Ok(found)
    }

    /// Whether lookups read consistently: as configured, or (`Auto`) as the
    /// API server's version says. Asked once per process (a control plane
    /// upgraded to 1.31 is noticed at the sidecar's next restart), by one
    /// lookup while the others wait; a probe that fails never fails the
    /// lookup: it reads the cache, as before 1.31, and unless the answer
    /// was a lasting refusal the next lookup asks again.
    async fn consistent_lookups(&self) -> bool {
        let mut reads = self.reads.lock().await;
        if let Reads::Known(consistent) = *reads {
            return consistent;
        }
        let info = match self.client.apiserver_version().await {
            Ok(info) => info,
            Err(e) => {
                let lasting =
                    matches!(&e, kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404 | 405));
                if lasting || matches!(*reads, Reads::Unasked) {
                    tracing::warn!(
                        error = %e,
                        "kube lookups read the API server's watch cache: its version is unknown \
                         ({}=consistent or cache decides without asking)",
                        KUBE_LOOKUP_READS.env()
                    );
                } else {
                    tracing::debug!(error = %e, "the API server's version is still unknown");
                }
                *reads = if lasting {
                    Reads::Known(false)
                } else {
                    Reads::ProbeFailed
                };
                return false;
            }
        };
        let consistent = version_of(&info).is_some_and(consistent_lists_are_cheap);
        if consistent {
            tracing::info!(version = %info.git_version, "kube lookups read consistently");
        } else {
            tracing::warn!(
                version = %info.git_version,
                "kube lookups read the API server's watch cache: before Kubernetes 1.31 a \
                 consistent LIST reads etcd; a resource written a moment before Redis lost its \
                 record may be missed ({}=consistent trades etcd load for that)",
                KUBE_LOOKUP_READS.env()
            );
        }
        *reads = Reads::Known(consistent);
        consistent
    }

    /// In-cluster configuration, else `KUBECONFIG` / `~/.kube/config`.
    pub async fn connect(
        fallback_namespace: &str,
        lookup_reads: LookupReads,
    ) -> Result<KubeSink, SinkError> {
        let client = Client::try_default()
            .await
            .map_err(|e| SinkError::Rejected(format!("no Kubernetes configuration: {e}")))?;
        Ok(KubeSink::new(client, fallback_namespace, lookup_reads))
    }

    /// With the kubeconfig at `path` (its current context).
    pub async fn from_kubeconfig(
        path: &std::path::Path,
        fallback_namespace: &str,
        lookup_reads: LookupReads,
    ) -> Result<KubeSink, SinkError> {
        let refused = |e: &dyn std::fmt::Display| {
            SinkError::Rejected(format!("kubeconfig {}: {e}", path.display()))
        };
        let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| refused(&e))?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| refused(&e))?;
        let client = Client::try_from(config).map_err(|e| refused(&e))?;
        Ok(KubeSink::new(client, fallback_namespace, lookup_reads))
    }

    /// Starts the sink's cache of its resources on the current tokio
    /// runtime (it stops when the sink is dropped).
    pub fn new(client: Client, fallback_namespace: &str, lookup_reads: LookupReads) -> KubeSink {
        KubeSink {
            cache: WatchCache::start(Api::all(client.clone()), fallback_namespace),
            client,
            fallback_namespace: fallback_namespace.to_string(),
            namespaces: Namespaces::default(),
            updates: Updates::default(),
            reads: tokio::sync::Mutex::new(match lookup_reads {
                LookupReads::Consistent => Reads::Known(true),
                LookupReads::Cache => Reads::Known(false),
                LookupReads::Auto => Reads::Unasked,
            }),
        }
    }

    /// With the store's cap on a storm's affected resources
    /// (`SIGNALGATE_STORM_MAX_AFFECTED`), which an update keeps to.
    pub fn with_max_affected(mut self, max_affected: usize) -> KubeSink {
        self.updates.max_affected = max_affected;
        self
    }

    /// The sink's cache of its resources.
    pub fn cache(&self) -> &WatchCache {
        &self.cache
    }

    fn api(&self, namespace: &str) -> Api<RemediationRequest> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn create_in(&self, rr: &RemediationRequest) -> Attempt<Created> {
        let namespace = rr.metadata.namespace.clone().unwrap_or_default();
        let name = rr.metadata.name.clone().unwrap_or_default();
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        let created = |existed| {
            Attempt::Done(Created {
                location: Location {
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
                existed,
            })
        };
        match self.api(&namespace).create(&params, rr).await {
            Ok(_) => created(false),
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                created(true)
            }
            Err(e) => classify(e, &format!("create {namespace}/{name}")),
        }
    }

    /// `rr` as an earlier holder of its claim wrote it to the fallback
    /// namespace, if it did: its namespace could not take it then, and may
    /// by now (a create there would make a second resource).
    async fn moved_earlier(&self, rr: &RemediationRequest) -> Attempt<Option<Created>> {
        let namespace = rr.metadata.namespace.as_deref().unwrap_or_default();
        let name = rr.metadata.name.as_deref().unwrap_or_default();
        let fallback = &self.fallback_namespace;
        match self.api(fallback).get_metadata_opt(name).await {
            Ok(Some(found))
                if found
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_ORIGINAL_NAMESPACE))
                    .is_some_and(|ns| ns == namespace) =>
            {
                Attempt::Done(Some(Created {
                    location: Location {
                        namespace: fallback.clone(),
                        name: name.to_string(),
                    },
                    existed: true,
                }))
            }
            Ok(_) => Attempt::Done(None),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                tracing::warn!(%fallback, %name, "may not get resources (RBAC lacks 'get' on remediationrequests): cannot look for one an earlier holder of the claim moved");
                Attempt::Done(None)
            }
            Err(e) => classify(e, &format!("get {fallback}/{name}")),
        }
    }
}

/// The API server's (major, minor): the version it emulates where it says
/// (1.33 and later can emulate an older one), else its own; from
/// `gitVersion` (`v1.20.2`) when the numbers are empty. Managed clusters
/// report minors like `31+`.
fn version_of(info: &Info) -> Option<(u32, u32)> {
    let number = |s: &str| {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    };
    let pair = |major: &str, minor: &str| Some((number(major)?, number(minor)?));
    if let (Some(major), Some(minor)) = (&info.emulation_major, &info.emulation_minor) {
        if let Some(v) = pair(major, minor) {
            return Some(v);
        }
    }
    pair(&info.major, &info.minor).or_else(|| {
        let mut parts = info.git_version.trim_start_matches('v').split('.');
        pair(parts.next()?, parts.next()?)
    })
}

/// Whether an API server of this version normally serves consistent LISTs
/// from its watch cache (Kubernetes 1.31 and later: ConsistentListFromCache,
/// unless its feature gate is off), so that they cost no more than cached
/// ones.
fn consistent_lists_are_cheap((major, minor): (u32, u32)) -> bool {
    major > 1 || (major == 1 && minor >= 31)
}

/// The namespace cannot take the resource: it does not exist, or it is
/// being deleted (the API server then refuses every new object in it).
fn namespace_unusable(e: &SinkError) -> bool {
    match e {
        SinkError::NotFound(msg) => msg.contains("namespaces \""),
        SinkError::Rejected(msg) => msg.contains("because it is being terminated"),
        SinkError::Unavailable(_) => false,
    }
}

#[async_trait::async_trait]
impl Sink for KubeSink {
    async fn find_latest(
        &self,
        namespace: &str,
        fingerprints: &[String],
        read: Read,
    ) -> Result<Vec<Option<Found>>, SinkError> {
        if read == Read::Cached {
            if let Some(found) = self.cache.latest(namespace, fingerprints) {
                return Ok(found);
            }
        }
        let mut candidates = Vec::new();
        // One LIST per place for up to FINGERPRINTS_PER_LIST fingerprints.
        for chunk in fingerprints.chunks(FINGERPRINTS_PER_LIST) {
            let values: Vec<&str> = chunk.iter().map(|fp| fp.get(..63).unwrap_or(fp)).collect();
            let selector = format!("{LABEL_FINGERPRINT} in ({})", values.join(","));
            candidates.extend(self.list_places(namespace, &selector).await?);
        }
        Ok(fingerprints
            .iter()
            .map(|fp| latest(&candidates, fp))
            .collect())
    }

    async fn find_recent_storms(&self, namespace: &str) -> Result<Vec<FoundStorm>, SinkError> {
        let storms = self
            .list_places(namespace, &format!("{LABEL_STORM}=true"))
            .await?;
        Ok(recent_storms(&storms, namespace))
    }

    async fn create(&self, rr: &RemediationRequest, retake: bool) -> Result<Created, SinkError> {
        let namespace = rr.metadata.namespace.clone().unwrap_or_default();
        let own = namespace != self.fallback_namespace;
        if retake && own {
            if let Some(moved) = with_retries(None, || self.moved_earlier(rr)).await? {
                return Ok(moved);
            }
        }
        // A namespace found missing a moment ago is not asked again.
        if !own || self.namespaces.state(&namespace, Instant::now()) != Some(false) {
            match with_retries(None, || self.create_in(rr)).await {
                Err(e) if own && namespace_unusable(&e) => {
                    self.namespaces.learn(&namespace, false, Instant::now());
                    tracing::warn!(
                        %namespace,
                        fallback = %self.fallback_namespace,
                        error = %e,
                        "namespace missing or being deleted; writing the resource to the fallback namespace"
                    );
                }
                Err(SinkError::NotFound(msg)) => {
                    return Err(SinkError::Rejected(format!(
                        "{msg} (is the RemediationRequest CRD installed?)"
                    )))
                }
                Ok(created) if own => {
                    self.namespaces.learn(&namespace, true, Instant::now());
                    return Ok(created);
                }
                other => return other,
            }
        } else {
            tracing::debug!(%namespace, "namespace missing a moment ago; writing the resource to the fallback namespace");
        }
        let mut moved = rr.clone();
        moved.metadata.namespace = Some(self.fallback_namespace.clone());
        moved
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_ORIGINAL_NAMESPACE.to_string(), namespace);
        with_retries(None, || self.create_in(&moved)).await
    }

    async fn update(
        &self,
        namespace: &str,
        name: &str,
        progress: &Progress,
    ) -> Result<(), SinkError> {
        match self
            .updates
            .write(&self.client, namespace, name, progress)
            .await
        {
            // Asked for its own namespace, it may be in the fallback one:
            // store records written before the store kept where a resource
            // went do not say.
            Err(SinkError::NotFound(_)) if namespace != self.fallback_namespace => {
                self.updates
                    .write(&self.client, &self.fallback_namespace, name, progress)
                    .await
            }
            other => other,
        }
    }

    fn reads_locally(&self, read: Read) -> bool {
        read == Read::Cached && self.cache.synced()
    }

    fn knows_namespace(&self, namespace: &str) -> bool {
        namespace == self.fallback_namespace
            || self.namespaces.state(namespace, Instant::now()) == Some(true)
    }

    async fn ready(&self) -> Result<(), SinkError> {
        match self
            .api(&self.fallback_namespace)
            .list_metadata(&ListParams::default().limit(1))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(SinkError::Unavailable(format!("Kubernetes API: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_lists_are_cheap_from_kubernetes_1_31() {
        let info = |major: &str, minor: &str, git: &str| Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Info::default()
        };
        for (i, cheap) in [
            (info("1", "20", "v1.20.2"), false),
            (info("1", "30+", "v1.30.4-eks"), false),
            (info("1", "31", "v1.31.0"), true),
            (info("1", "33+", "v1.33.1-gke.1"), true),
            (info("2", "0", "v2.0.0"), true),
            (info("", "", "v1.32.3"), true),
            (info("", "", "v1.29.0"), false),
            (info("", "", "junk"), false),
            (info("1", "x", ""), false),
            (
                Info {
                    emulation_major: Some(String::new()),
                    emulation_minor: Some(String::new()),
                    ..info("1", "31", "v1.31.2")
                },
                true,
            ),
            (
                Info {
                    emulation_major: Some("1".into()),
                    emulation_minor: Some("30".into()),
                    ..info("1", "33", "v1.33.0")
                },
                false,
            ),
        ] {
            let got = version_of(&i).is_some_and(consistent_lists_are_cheap);
            assert_eq!(got, cheap, "{i:?}");
        }
    }
}
