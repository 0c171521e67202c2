//! The connection to Redis, standalone or Cluster: connecting (lazily),
//! sending pipelines of script calls (one per slot on a cluster, the slots
//! concurrently), reloading scripts a server answered `NOSCRIPT` for,
//! bounding everything by the store's timeout, and the readiness check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{RedisError, Script, ServerErrorKind, Value};

use super::wire::{Call, Keys};
use crate::store::StoreError;

/// How often a call whose script was missing is resent after `SCRIPT LOAD`.
const NOSCRIPT_ATTEMPTS: usize = 3;

/// A connection to Redis and the timeout bounding every call on it.
pub(super) struct Transport {
    conn: Conn,
    timeout: Duration,
    /// Whether the first ping has asked if Redis allows `INFO` (see ping).
    info_checked: AtomicBool,
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Transport {
    /// A connection to `url` (see the store's module docs for the forms),
    /// made lazily: only a malformed URL fails here.
    pub fn connect(url: &str, timeout: Duration) -> Result<Transport, StoreError> {
        let bad = |e: RedisError| StoreError::Unavailable(format!("invalid Redis URL: {e}"));
        let conn = match cluster_nodes(url) {
            Some(nodes) => {
                let nodes = nodes
                    .map_err(|e| StoreError::Unavailable(format!("invalid Redis URL: {e}")))?;
                let client = ClusterClient::builder(nodes)
                    .retries(3)
                    .min_retry_wait(20)
                    .max_retry_wait(500)
                    .build()
                    .map_err(bad)?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Conn::Cluster(client.get_pending_async_connection_with_config(config))
            }
            None => {
                let client = redis::Client::open(url).map_err(bad)?;
                // A failed reconnect gives up fast (the call fails within its
                // timeout); the next call starts a new attempt.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Conn::Standalone(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?,
                )
            }
        };
        Ok(Transport {
            conn,
            timeout,
            info_checked: AtomicBool::new(false),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    fn error(&self, e: RedisError) -> StoreError {
        if e.is_timeout() {
            StoreError::Timeout(self.timeout)
        } else {
            StoreError::Unavailable(e.to_string())
        }
    }

    /// Bounds `fut` by the store's timeout.
    pub async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    /// Runs every call of `script` (pipelined, one round trip per slot
    /// group, groups concurrently) and returns each call's reply, or its
    /// error: a server error, or the failure of the connection (on a
    /// cluster, of the node) it went to. `NOSCRIPT` calls are resent after
    /// `SCRIPT LOAD`. All of it within the store's timeout: a pipeline
    /// still unanswered then fails its calls with [`StoreError::Timeout`],
    /// the answers of the others are kept.
    pub async fn eval_all(
        &self,
        script: &Script,
        calls: &[Call],
    ) -> Vec<Result<Value, StoreError>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut replies: Vec<Option<Result<Value, StoreError>>> =
            (0..calls.len()).map(|_| None).collect();
        let mut todo: Vec<usize> = (0..calls.len()).collect();
        for _ in 0..NOSCRIPT_ATTEMPTS {
            let answers = self.send(script, calls, &todo, deadline).await;
            let mut again = Vec::new();
            for (&i, answer) in todo.iter().zip(answers) {
                match answer {
                    Ok(Value::ServerError(e)) if e.kind() == Some(ServerErrorKind::NoScript) => {
                        again.push(i)
                    }
                    Ok(Value::ServerError(e)) => {
                        replies[i] = Some(Err(StoreError::Unavailable(format!("Redis error: {e}"))))
                    }
                    answer => replies[i] = Some(answer),
                }
            }
            if again.is_empty() {
                break;
            }
            let loaded = tokio::time::timeout_at(deadline, self.load(script))
                .await
                .unwrap_or(Err(StoreError::Timeout(self.timeout)));
            if let Err(e) = loaded {
                for i in again {
                    replies[i] = Some(Err(e.clone()));
                }
                break;
            }
            todo = again;
        }
        replies
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "script still unknown to Redis after SCRIPT LOAD".into(),
                    ))
                })
            })
            .collect()
    }

    /// Sends the calls `idx` of `calls`: one pipeline on a standalone
    /// server; one pipeline per slot, concurrently, on a cluster. Returns
    /// one result per index, in order: a pipeline that failed fails its calls.
    async fn send(
        &self,
        script: &Script,
        calls: &[Call],
        idx: &[usize],
        deadline: tokio::time::Instant,
    ) -> Vec<Result<Value, StoreError>> {
        let pipeline = |group: &[usize]| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in group {
                let mut inv = script.prepare_invoke();
                for key in &calls[i].keys {
                    inv.key(key);
                }
                for arg in &calls[i].args {
                    inv.arg(&arg[..]);
                }
                pipe.invoke_script(&inv);
            }
            pipe
        };
        // One result per call of a pipeline (`None`: no answer by the deadline).
        let each = |answer: Option<Result<Vec<Value>, RedisError>>, want: usize| {
            let failed = |e: StoreError| (0..want).map(|_| Err(e.clone())).collect();
            match answer {
                Some(Ok(values)) if values.len() == want => values.into_iter().map(Ok).collect(),
                Some(Ok(values)) => failed(StoreError::Unavailable(format!(
                    "Redis answered {} replies to a pipeline of {want}",
                    values.len()
                ))),
                Some(Err(e)) => failed(self.error(e)),
                None => failed(StoreError::Timeout(self.timeout)),
            }
        };
        match &self.conn {
            Conn::Standalone(cm) => {
                let (pipe, mut conn) = (pipeline(idx), cm.clone());
                let query = pipe.query_async(&mut conn);
                let answer = tokio::time::timeout_at(deadline, query).await.ok();
                each(answer, idx.len())
            }
            Conn::Cluster(cc) => {
                let mut groups: HashMap<Slot, Vec<usize>> = HashMap::new();
                for &i in idx {
                    groups.entry(calls[i].slot()).or_default().push(i);
                }
                let mut tasks = tokio::task::JoinSet::new();
                let mut slots: Vec<Vec<usize>> = Vec::with_capacity(groups.len());
                for (n, (_, group)) in groups.into_iter().enumerate() {
                    let pipe = pipeline(&group);
                    let mut conn = cc.clone();
                    tasks.spawn(async move {
                        let query = pipe.query_async::<Vec<Value>>(&mut conn);
                        (n, tokio::time::timeout_at(deadline, query).await.ok())
                    });
                    slots.push(group);
                }
                let mut by_call: HashMap<usize, Result<Value, StoreError>> =
                    HashMap::with_capacity(idx.len());
                while let Some(joined) = tasks.join_next().await {
                    // A task only fails by panicking; its calls then get no reply.
                    let Ok((n, answer)) = joined else { continue };
                    by_call.extend(slots[n].iter().copied().zip(each(answer, slots[n].len())));
                }
                idx.iter()
                    .map(|i| {
                        by_call.remove(i).unwrap_or_else(|| {
                            Err(StoreError::Unavailable(
                                "missing pipeline reply".to_string(),
                            ))
                        })
                    })
                    .collect()
            }
        }
    }

    /// `SCRIPT LOAD` (on a cluster, the crate sends it to every node).
    async fn load(&self, script: &Script) -> Result<(), StoreError> {
        let inv = script.prepare_invoke();
        let loaded = match &self.conn {
            Conn::Standalone(cm) => inv.load_async(&mut cm.clone()).await,
            Conn::Cluster(cc) => inv.load_async(&mut cc.clone()).await,
        };
        loaded.map(|_| ()).map_err(|e| self.error(e))
    }

    /// One command on the standalone or cluster connection.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        match &self.conn {
            Conn::Standalone(cm) => cmd.query_async(&mut cm.clone()).await,
            Conn::Cluster(cc) => cmd.query_async(&mut cc.clone()).await,
        }
    }

    /// `GETEX` of a key nobody writes rather than `PING`: it answers like a
    /// ping and also proves the server runs the newest command the scripts
    /// use (Redis 6.2), so an older Redis keeps the sidecar unready with a
    /// message saying so instead of failing every signal.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut cmd = redis::cmd("GETEX");
            cmd.arg(Keys("").key("ping"));
            let pong: Result<Option<String>, RedisError> = self.query(&cmd).await;
            pong.map(|_| ()).map_err(|e| {
                if e.to_string()
                    .to_ascii_lowercase()
                    .contains("unknown command")
                {
                    StoreError::Unavailable(format!(
                        "Redis does not know GETEX ({e}): signalgate needs Redis 6.2 or newer"
                    ))
                } else {
                    self.error(e)
                }
            })?;
            self.check_info_once().await;
            Ok(())
        })
        .await
    }

    /// Warns once if Redis refuses `INFO` (renamed, or denied by an ACL):
    /// decide.lua then cannot tell a restored snapshot or a promoted replica
    /// from the data its warm markers were written with.
    async fn check_info_once(&self) {
        if self.info_checked.load(Ordering::Relaxed) {
            return;
        }
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        // Any answer: a text from a server, a map of every node's from a
        // cluster (only a refusal is an error reply).
        let info: Result<Value, RedisError> = self.query(&cmd).await;
        match info {
            Ok(_) => {}
            // Not an answer about INFO (connection lost): ask again next time.
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => return,
            Err(e) => {
                tracing::warn!(error = %e, "Redis refuses INFO: after a restore from an older \
                    snapshot or a failover to a replica that lagged, an incident created since \
                    may get a second resource; allow INFO for signalgate's Redis user");
            }
        }
        self.info_checked.store(true, Ordering::Relaxed);
    }
}

/// For a cluster URL, the seed node URLs.
fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return None;
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{auth}{h}"))
        .collect();
    if nodes.is_empty() {
        return Some(Err(format!("no node in {url:?}")));
    }
    Some(Ok(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls() {
        assert!(cluster_nodes("redis://127.0.0.1:1").is_none());
        assert_eq!(
            cluster_nodes("redis+cluster://127.0.0.1:1,127.0.0.1:2"),
            Some(Ok(vec![
                "redis://127.0.0.1:1".to_string(),
                "redis://127.0.0.1:2".to_string()
            ]))
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://u:p@a:1,b:2/"),
            Some(Ok(vec![
                "rediss://u:p@a:1".to_string(),
                "rediss://u:p@b:2".to_string()
            ]))
        );
        assert!(matches!(cluster_nodes("redis+cluster://"), Some(Err(_))));
    }
}
