//! The running sidecar: its store, sink, pipeline and lifecycle state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::coalesce::Coalescer;
use crate::config::knobs::{REDIS_URL, SINK};
use crate::config::{Config, SinkConfig};
use crate::metrics::Metrics;
use crate::pipeline::{Limits, Pipeline};
use crate::sink::dir::DirSink;
use crate::sink::kube::KubeSink;
use crate::sink::Sink;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::Store;

pub struct App {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub pipeline: Pipeline,
    pub coalescer: Arc<Coalescer>,
    /// One permit per signal request being served (`max_in_flight`).
    pub in_flight: Semaphore,
    /// SIGTERM came: readiness is false, signals are still served.
    draining: AtomicBool,
    /// The shutdown delay is over: new signal requests are refused.
    shutting_down: AtomicBool,
}

impl App {
    /// Opens the store and the sink the configuration names.
    pub async fn build(config: Config) -> Result<App, String> {
        let store: Arc<dyn Store> = match &config.redis_url {
            None => Arc::new(MemoryStore::new(config.store.clone())),
            Some(url) => Arc::new(
                RedisStore::connect(url, config.store.clone(), config.redis_timeout)
                    .await
                    .map_err(|e| format!("{}: {e}", REDIS_URL.env()))?,
            ),
        };
        let sink: Arc<dyn Sink> = match &config.sink {
            SinkConfig::Dir(path) => Arc::new(
                DirSink::new(path)
                    .map_err(|e| format!("{}: {e}", SINK.env()))?
                    .with_max_affected(config.store.storm_max_affected as usize),
            ),
            SinkConfig::Kube => Arc::new(
                KubeSink::connect(&config.fallback_namespace, config.kube_lookup_reads)
                    .await
                    .map_err(|e| format!("{}=kube: {e}", SINK.env()))?
                    .with_max_affected(config.store.storm_max_affected as usize),
            ),
        };
        Ok(App::over(config, store, sink))
    }

    /// The app around an opened store and sink: its pipeline, coalescer and
    /// metrics.
    fn over(config: Config, store: Arc<dyn Store>, sink: Arc<dyn Sink>) -> App {
        let metrics = Arc::new(Metrics::new());
        let coalescer = Arc::new(Coalescer::new(
            store.clone(),
            sink.clone(),
            metrics.clone(),
            config.store.storm_max_affected as usize,
        ));
        let pipeline = Pipeline {
            store,
            sink,
            coalescer: coalescer.clone(),
            metrics: metrics.clone(),
            limits: Limits {
                fallback_namespace: config.fallback_namespace.clone(),
                max_alerts: config.max_alerts,
                request_deadline: config.request_deadline,
                store_timeout: config.redis_timeout,
                lifecycle: config.lifecycle.clone(),
                max_new_namespaces: config.max_new_namespaces,
                delivery_window: config.delivery_window,
            },
        };
        App {
            in_flight: Semaphore::new(in_flight_places(&config)),
            config,
            metrics,
            pipeline,
            coalescer,
            draining: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Signal requests being served now (places of `max_in_flight` taken).
    pub fn requests_in_flight(&self) -> usize {
        in_flight_places(&self.config).saturating_sub(self.in_flight.available_permits())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Readiness turns false for good (the pod is going away); signals are
    /// still served until [`App::begin_shutdown`].
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// New signal requests are refused (503) from now on.
    pub fn begin_shutdown(&self) {
        self.begin_drain();
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Ready: not shutting down, the store answers, the sink can write.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        let timeout = self.config.redis_timeout;
        match tokio::time::timeout(timeout, self.pipeline.store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("store: {e}")),
            Err(_) => return Err(format!("store: no answer within {timeout:?}")),
        }
        match tokio::time::timeout(timeout, self.pipeline.sink.ready()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("sink: {e}")),
            Err(_) => Err(format!("sink: no answer within {timeout:?}")),
        }
    }
}

/// Places in the in-flight semaphore: `max_in_flight`, within its bound.
fn in_flight_places(config: &Config) -> usize {
    config.max_in_flight.min(Semaphore::MAX_PERMITS)
}
