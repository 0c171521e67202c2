//! Prometheus metrics, served on the admin port at `/metrics`.

use crate::config::knobs::MAX_IN_FLIGHT;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the sidecar exports (docs/reference.md lists them).
pub struct Metrics {
    registry: Registry,
    /// `signalgate_signals_total{type, outcome}`: outcome is created,
    /// duplicate, storm_started, storm_aggregated, absorbed, resolved or
    /// resolved_unknown (see `SignalOutcome`).
    pub signals: IntCounterVec,
    /// `signalgate_storms_total`: storms started.
    pub storms: IntCounter,
    /// `signalgate_resources_written_total{op, result}`: op create|update, result ok|error.
    pub resources_written: IntCounterVec,
    /// `signalgate_store_duration_seconds{op}`: one store round trip.
    pub store_duration: HistogramVec,
    /// `signalgate_request_duration_seconds{status}`.
    pub request_duration: HistogramVec,
    /// `signalgate_errors_total{kind}`: invalid, store, sink, deadline,
    /// overloaded, new_namespaces.
    pub errors: IntCounterVec,
    /// `signalgate_requests_in_flight`: signal requests being served (set
    /// from the in-flight semaphore when `/metrics` is read).
    pub requests_in_flight: IntGauge,
    /// `signalgate_pending_updates`: resources waiting for the next coalesced write.
    pub pending_updates: IntGauge,
    /// `signalgate_unwritten_taken_total`: resources found in the store's
    /// index of unwritten changes, left there by a sidecar that died or
    /// could not write them, and taken on by this one.
    pub unwritten_taken: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let signals = IntCounterVec::new(
            Opts::new(
                "signalgate_signals_total",
                "Signals processed, by type and outcome",
            ),
            &["type", "outcome"],
        )
        .expect("valid metric");
        let storms =
            IntCounter::new("signalgate_storms_total", "Storms started").expect("valid metric");
        let resources_written = IntCounterVec::new(
            Opts::new(
                "signalgate_resources_written_total",
                "RemediationRequest writes, by operation and result",
            ),
            &["op", "result"],
        )
        .expect("valid metric");
        let store_duration = HistogramVec::new(
            HistogramOpts::new(
                "signalgate_store_duration_seconds",
                "Latency of one store round trip, by operation",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "signalgate_request_duration_seconds",
                "Latency of signal requests, by HTTP status",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["status"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("signalgate_errors_total", "Errors, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let requests_in_flight = IntGauge::new(
            "signalgate_requests_in_flight",
            format!(
                "Signal requests being served (at most {})",
                MAX_IN_FLIGHT.env()
            ),
        )
        .expect("valid metric");
        let pending_updates = IntGauge::new(
            "signalgate_pending_updates",
            "Resources waiting for their next coalesced update",
        )
        .expect("valid metric");
        let unwritten_taken = IntCounter::new(
            "signalgate_unwritten_taken_total",
            "Resources whose counters the store held unwritten for too long, taken on by this sidecar",
        )
        .expect("valid metric");
        for c in [
            Box::new(signals.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(storms.clone()),
            Box::new(resources_written.clone()),
            Box::new(store_duration.clone()),
            Box::new(request_duration.clone()),
            Box::new(errors.clone()),
            Box::new(requests_in_flight.clone()),
            Box::new(pending_updates.clone()),
            Box::new(unwritten_taken.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            signals,
            storms,
            resources_written,
            store_duration,
            request_duration,
            errors,
            requests_in_flight,
            pending_updates,
            unwritten_taken,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
