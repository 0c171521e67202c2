//! One filter configuration as this module keeps it: the parsed
//! [`Config`], the counters defined for it, and the process's bucket-table
//! seed. Made by `on_http_filter_config_new`, shared by every stream of
//! every worker.

use std::hash::{BuildHasher, Hasher};

use signalgate_filter::config::{self, Config};
use signalgate_filter::outcome::Outcome;
use signalgate_filter::table::{self, Seed};

use crate::envoy::{self, ConfigHandle, Level, Stream};
use crate::store;

/// The counters, as the wasm filter has them (`<namespace>.<outcome>`,
/// `<namespace>.rate_limit_errors`), plus `panics`: hooks that panicked
/// (answered 500). The namespace is the bootstrap's `metrics_namespace`.
#[derive(Debug, Default)]
pub struct Counters {
    outcomes: Vec<Option<usize>>,
    limit_errors: Option<usize>,
    panics: Option<usize>,
}

impl Counters {
    fn define(handle: &ConfigHandle) -> Counters {
        Counters {
            outcomes: Outcome::ALL
                .iter()
                .map(|o| handle.define_counter(o.name()))
                .collect(),
            limit_errors: handle.define_counter("rate_limit_errors"),
            panics: handle.define_counter("panics"),
        }
    }

    pub fn count(&self, stream: &Stream, outcome: Outcome) {
        if let Some(Some(id)) = self.outcomes.get(outcome.index()) {
            stream.increment(*id);
        }
    }

    pub fn count_limit_error(&self, stream: &Stream) {
        if let Some(id) = self.limit_errors {
            stream.increment(id);
        }
    }

    pub fn count_panic(&self, stream: &Stream) {
        if let Some(id) = self.panics {
            stream.increment(id);
        }
    }
}

#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    pub counters: Counters,
    /// The bucket table's hash seed, the same for every configuration of
    /// the process.
    pub seed: Seed,
}

/// Random bytes for a seed: the standard library's hash-map keys, freshly
/// drawn from the OS for each `RandomState`.
fn random_seed() -> Seed {
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    Seed(bytes)
}

impl Settings {
    /// Parses the filter configuration (`None`: refused, logged with the
    /// key at fault), defines the counters, makes the table.
    pub fn new(handle: &ConfigHandle, bytes: &[u8]) -> Option<Settings> {
        let config = match config::parse(Some(bytes)) {
            Ok(c) => c,
            Err(e) => {
                envoy::log(Level::Error, &e.to_string());
                return None;
            }
        };
        let store = store::process();
        if let Err(e) = table::init(store) {
            envoy::log(
                Level::Error,
                &format!("cannot create the rate-limit table: {e:?}"),
            );
            return None;
        }
        let seed = match table::seed(store, random_seed()) {
            Ok(s) => s,
            Err(e) => {
                envoy::log(Level::Error, &format!("cannot store the hash seed: {e:?}"));
                return None;
            }
        };
        envoy::log(
            Level::Info,
            &format!(
                "configured: {} requests/min, burst {}, source {:?}, over-limit status {}, \
                 max body {} bytes, max alerts {}, {} tenants",
                config.limit.per_minute,
                config.limit.burst,
                config.source,
                config.over_limit_status,
                config.max_body_bytes,
                config.max_alerts_per_request,
                config.tenants.as_ref().map_or(0, |t| t.list().len())
            ),
        );
        Some(Settings {
            config,
            counters: Counters::define(handle),
            seed,
        })
    }
}
