//! The directory sink: `<dir>/<namespace>/<name>.json`, one complete
//! `RemediationRequest` object per file (what `kubectl apply -f` takes).
//! Files are replaced atomically (write to a temporary file, then rename),
//! so a reader never sees half an object. Next to them,
//! `<namespace>/.by-fingerprint/<fingerprint>` is a symbolic link to the
//! latest resource of each incident, so finding one is a single lookup
//! (`kubectl apply -f <dir>/<namespace>` skips the hidden directory).
//! Storm resources are found by their file names (the namespace's storm
//! prefix).

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{latest, recent_storms, Created, Found, FoundStorm, Location, Read, Sink, SinkError};
use crate::store::Settings;
use signalgate_resource::naming::storm_prefix;
use signalgate_resource::{Progress, RemediationRequest};

pub struct DirSink {
    root: PathBuf,
    /// The store's cap on a storm's affected resources ([`Progress::over`]).
    max_affected: usize,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// When this process started (ns since the epoch), for temporary names.
static PROCESS_STARTED_NS: std::sync::LazyLock<u128> = std::sync::LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
});

impl DirSink {
    pub fn new(root: impl Into<PathBuf>) -> Result<DirSink, SinkError> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| SinkError::Rejected(format!("cannot create {}: {e}", root.display())))?;
        Ok(DirSink {
            root,
            max_affected: Settings::default().storm_max_affected as usize,
        })
    }

    /// With the store's cap on a storm's affected resources
    /// (`SIGNALGATE_STORM_MAX_AFFECTED`), which an update keeps to.
    pub fn with_max_affected(mut self, max_affected: usize) -> DirSink {
        self.max_affected = max_affected;
        self
    }

    pub fn path_of(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join(namespace).join(format!("{name}.json"))
    }

    fn link_of(&self, namespace: &str, fingerprint: &str) -> PathBuf {
        self.root
            .join(namespace)
            .join(".by-fingerprint")
            .join(fingerprint)
    }

    /// Points the incident's link at `name` (atomically: a new link renamed over the old).
    fn link(&self, namespace: &str, fingerprint: &str, name: &str) -> std::io::Result<()> {
        let link = self.link_of(namespace, fingerprint);
        let dir = link.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let tmp = Self::temp_path(&dir);
        std::os::unix::fs::symlink(format!("../{name}.json"), &tmp)?;
        std::fs::rename(&tmp, &link).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// A temporary name in `dir`, unique to this process (the start time
    /// tells apart processes of the same pid, e.g. PID 1 of two containers
    /// sharing the volume). Files are created with `create_new`.
    fn temp_path(dir: &Path) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        dir.join(format!(
            ".tmp-{}-{}-{n}",
            std::process::id(),
            *PROCESS_STARTED_NS
        ))
    }

    fn write_temp(dir: &Path, rr: &RemediationRequest) -> Result<PathBuf, SinkError> {
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let tmp = Self::temp_path(dir);
        let mut json = serde_json::to_vec_pretty(rr)
            .map_err(|e| SinkError::Rejected(format!("cannot serialise resource: {e}")))?;
        json.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_error)?;
        let written = f.write_all(&json).and_then(|()| f.sync_data());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error(e));
        }
        Ok(tmp)
    }

    fn create_blocking(&self, rr: &RemediationRequest) -> Result<Created, SinkError> {
        let namespace = rr.metadata.namespace.clone().unwrap_or_default();
        let name = rr.metadata.name.clone().unwrap_or_default();
        let path = self.path_of(&namespace, &name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let tmp = Self::write_temp(&dir, rr)?;
        // hard_link fails if the target exists: create-if-absent, atomically.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        let existed = match linked {
            Ok(()) => false,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => true,
            Err(e) => return Err(io_error(e)),
        };
        // Also when it existed: a create that failed between the two steps
        // left the file without its link, which lookups need.
        self.link(&namespace, &rr.spec.signal_fingerprint, &name)
            .map_err(io_error)?;
        Ok(Created {
            location: Location { namespace, name },
            existed,
        })
    }

    /// Writes `progress` into the file, leaving the rest (the controller's
    /// `status` above all) as it is; not if the file holds a later state of
    /// the incident ([`Progress::is_behind`]: another sidecar sharing the
    /// directory wrote newer counters) or these very counters. The
    /// controller, or another sidecar, may rewrite the file at any time, so
    /// the new version is only renamed over a file that still holds what it
    /// was made from; else it is decided and made again from the new one.
    /// (What remains is the instant between that check and the rename.)
    fn update_blocking(
        &self,
        namespace: &str,
        name: &str,
        progress: &Progress,
    ) -> Result<(), SinkError> {
        const ATTEMPTS: usize = 5;
        let path = self.path_of(namespace, name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let read = || match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(SinkError::NotFound(path.display().to_string()))
            }
            Err(e) => Err(io_error(e)),
        };
        let mut bytes = read()?;
        for _ in 0..ATTEMPTS {
            let mut rr: RemediationRequest = serde_json::from_slice(&bytes).map_err(|e| {
                SinkError::Rejected(format!(
                    "{} is not a RemediationRequest: {e}",
                    path.display()
                ))
            })?;
            let held = Progress::of(&rr.spec);
            let progress = progress.over(&held, self.max_affected);
            let behind = progress.is_behind(&held);
            if behind || !progress.changes(&held) {
                tracing::debug!(file = %path.display(), behind,
                    "the resource holds these counters or later ones; not written");
                return Ok(());
            }
            progress.apply(&mut rr.spec);
            let tmp = Self::write_temp(&dir, &rr)?;
            let now = read().inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            if now != bytes {
                // Rewritten meanwhile (the controller wrote its status).
                let _ = std::fs::remove_file(&tmp);
                bytes = now;
                continue;
            }
            return std::fs::rename(&tmp, &path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io_error(e)
            });
        }
        Err(SinkError::Unavailable(format!(
            "{} kept changing while its counters were written",
            path.display()
        )))
    }
}

/// The storm resources of `namespace` in its directory `dir` (their file
/// names start with its storm prefix; unreadable ones are skipped).
fn read_storms(dir: &Path, namespace: &str) -> Result<Vec<RemediationRequest>, SinkError> {
    let prefix = storm_prefix(namespace);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(e)),
    };
    let mut storms = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error)?.path();
        let is_storm = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".json"));
        if is_storm {
            storms.extend(read_linked(&path)?);
        }
    }
    Ok(storms)
}

/// The resource a link points at: `None` if there is no link (or it
/// dangles), or what it points at is not a RemediationRequest.
fn read_linked(link: &Path) -> Result<Option<RemediationRequest>, SinkError> {
    match std::fs::read(link) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

fn io_error(e: std::io::Error) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

fn join_error(e: tokio::task::JoinError) -> SinkError {
    SinkError::Unavailable(format!("write task failed: {e}"))
}

#[async_trait::async_trait]
impl Sink for DirSink {
    /// The files are the sink's own view and as consistent as it gets:
    /// both reads read them (the incident's link points at its latest).
    async fn find_latest(
        &self,
        namespace: &str,
        fingerprints: &[String],
        _read: Read,
    ) -> Result<Vec<Option<Found>>, SinkError> {
        let links: Vec<(PathBuf, String)> = fingerprints
            .iter()
            .map(|fp| (self.link_of(namespace, fp), fp.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            links
                .iter()
                .map(|(link, fingerprint)| Ok(latest(&read_linked(link)?, fingerprint)))
                .collect()
        })
        .await
        .map_err(join_error)?
    }

    async fn find_recent_storms(&self, namespace: &str) -> Result<Vec<FoundStorm>, SinkError> {
        let dir = self.root.join(namespace);
        let namespace = namespace.to_string();
        tokio::task::spawn_blocking(move || {
            Ok(recent_storms(&read_storms(&dir, &namespace)?, &namespace))
        })
        .await
        .map_err(join_error)?
    }

    /// Every namespace takes its resources here, so a retaken claim's
    /// resource is where the name says: `retake` changes nothing.
    async fn create(&self, rr: &RemediationRequest, _retake: bool) -> Result<Created, SinkError> {
        let this = DirSink {
            root: self.root.clone(),
            max_affected: self.max_affected,
        };
        let rr = rr.clone();
        tokio::task::spawn_blocking(move || this.create_blocking(&rr))
            .await
            .map_err(join_error)?
    }

    async fn update(
        &self,
        namespace: &str,
        name: &str,
        progress: &Progress,
    ) -> Result<(), SinkError> {
        let this = DirSink {
            root: self.root.clone(),
            max_affected: self.max_affected,
        };
        let (namespace, name, progress) =
            (namespace.to_string(), name.to_string(), progress.clone());
        tokio::task::spawn_blocking(move || this.update_blocking(&namespace, &name, &progress))
            .await
            .map_err(join_error)?
    }

    async fn ready(&self) -> Result<(), SinkError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let probe = DirSink::temp_path(&root);
            std::fs::write(&probe, b"").and_then(|_| std::fs::remove_file(&probe))
        })
        .await
        .map_err(join_error)?
        .map_err(io_error)
    }
}
