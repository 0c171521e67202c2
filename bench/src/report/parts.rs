//! The records of one benchmark run, grouped by part: the run's parameters
//! (`meta`) and the groups of each measured part.

use std::collections::BTreeMap;

use crate::record::Record;
use crate::stats::{groups, Group};

pub struct Parts {
    /// The run's parameters (machine, versions, durations).
    pub meta: BTreeMap<String, String>,
    /// Part 1: the edge, one group per Envoy configuration.
    pub edge: Vec<Group>,
    /// Part 1: Envoy's memory while distinct sources are rate-limited.
    pub memory: Vec<Group>,
    /// Part 2: the sidecar alone.
    pub sidecar: Vec<Group>,
    /// Part 2: `redis-benchmark` on the same redis-server.
    pub redis_bench: Vec<Group>,
    /// Part 3: Alertmanager's own ingestion.
    pub peer: Vec<Group>,
    /// Part 4: the full chain.
    pub chain: Vec<Group>,
}

impl Parts {
    pub fn of(records: &[Record]) -> Parts {
        Parts {
            meta: records
                .iter()
                .filter(|r| r.label("part") == "meta")
                .flat_map(|r| r.info.clone())
                .collect(),
            edge: groups(records, "edge"),
            memory: groups(records, "edge_memory"),
            sidecar: groups(records, "sidecar"),
            redis_bench: groups(records, "redis_benchmark"),
            peer: groups(records, "peer"),
            chain: groups(records, "chain"),
        }
    }

    /// The run parameter `key`, `?` when it was not recorded.
    pub fn meta(&self, key: &str) -> String {
        self.meta.get(key).cloned().unwrap_or_else(|| "?".into())
    }
}
