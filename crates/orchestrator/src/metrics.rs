//! Prometheus metrics of the orchestrator (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the invocation counter and latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    /// The function's name.
    pub function: String,
    /// `cold` or `warm`.
    pub start: String,
}

/// Labels of the cold start counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// The function's name.
    pub function: String,
    /// `file`, `lazy` or `reap`.
    pub mode: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The function's name.
    pub function: String,
    /// What went wrong: a [`FailureKind`](crate::FailureKind) label (`crash`,
    /// `timeout`, `bad_response` or `runtime`).
    pub kind: String,
}

/// Labels of the per-function metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    /// The function's name.
    pub function: String,
}

/// The orchestrator's metrics, registered under the `reap_` prefix.
pub struct Metrics {
    registry: Registry,
    /// `reap_invocations_total`: invocations answered.
    pub invocations: Family<StartLabels, Counter>,
    /// `reap_invocation_errors_total`: invocations whose instance failed to start or
    /// to answer.
    pub errors: Family<ErrorLabels, Counter>,
    /// `reap_cold_starts_total`: instances restored from a snapshot.
    pub cold_starts: Family<ModeLabels, Counter>,
    /// `reap_invocation_duration_seconds`: latency, cold start included.
    pub latency: Family<StartLabels, Histogram>,
    /// `reap_lazy_faults_total`: page faults served lazily.
    pub lazy_faults: Family<FunctionLabels, Counter>,
    /// `reap_working_set_bytes`: the last prefetched working set.
    pub ws_bytes: Family<FunctionLabels, Gauge>,
    /// `reap_rerecords_total`: working sets dropped for re-recording.
    pub rerecords: Family<FunctionLabels, Counter>,
    /// `reap_instances`: live instances, idle and busy.
    pub instances: Family<FunctionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("reap");
        let invocations = Family::<StartLabels, Counter>::default();
        registry.register(
            "invocations",
            "Invocations answered, by cold or warm start",
            invocations.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "invocation_errors",
            "Invocations that failed, by cause",
            errors.clone(),
        );
        let cold_starts = Family::<ModeLabels, Counter>::default();
        registry.register(
            "cold_starts",
            "Cold starts from a snapshot, by memory mode",
            cold_starts.clone(),
        );
        let latency = Family::<StartLabels, Histogram>::new_with_constructor(|| {
            // 50 us .. ~26 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register(
            "invocation_duration_seconds",
            "Invocation latency, cold start included",
            latency.clone(),
        );
        let lazy_faults = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "lazy_faults",
            "Guest page faults served lazily by the page server",
            lazy_faults.clone(),
        );
        let ws_bytes = Family::<FunctionLabels, Gauge>::default();
        registry.register(
            "working_set_bytes",
            "Size of the last prefetched working set",
            ws_bytes.clone(),
        );
        let rerecords = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "rerecords",
            "Working sets dropped for re-recording",
            rerecords.clone(),
        );
        let instances = Family::<FunctionLabels, Gauge>::default();
        registry.register(
            "instances",
            "Live instances (idle and busy)",
            instances.clone(),
        );
        Self {
            registry,
            invocations,
            errors,
            cold_starts,
            latency,
            lazy_faults,
            ws_bytes,
            rerecords,
            instances,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
