//! Prometheus metrics of the orchestrator (`GET /metrics`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

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

/// Labels of the unsupported system call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyscallLabels {
    /// The function's name.
    pub function: String,
    /// The system call number, or `other`: numbers of [`MAX_SYSCALL_NR_LABEL`] and up,
    /// and those past the first [`MAX_SYSCALL_LABELS`] distinct numbers of a function.
    pub nr: String,
}

/// Most distinct `nr` labels of `reap_unknown_syscalls_total` per function.
pub const MAX_SYSCALL_LABELS: usize = 16;
/// System call numbers from this one up are counted as `nr="other"`.
pub const MAX_SYSCALL_NR_LABEL: u64 = 1024;

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
    /// `reap_unknown_syscalls_total`: system calls the VMM does not support (or
    /// refuses), by number; see [`count_unknown_syscalls`](Self::count_unknown_syscalls).
    pub unknown_syscalls: Family<SyscallLabels, Counter>,
    /// `reap_memory_budget_bytes`: the memory budget of all instances together (0
    /// without a budget).
    pub memory_budget: Gauge,
    /// `reap_memory_charged_bytes`: the memory charged to the budget by live
    /// instances.
    pub memory_charged: Gauge,
    /// The numbers labelled so far, per function.
    syscall_labels: Mutex<HashMap<String, BTreeSet<u64>>>,
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
        let unknown_syscalls = Family::<SyscallLabels, Counter>::default();
        registry.register(
            "unknown_syscalls",
            "Guest system calls the VMM does not support, by number",
            unknown_syscalls.clone(),
        );
        let memory_budget = Gauge::default();
        registry.register(
            "memory_budget_bytes",
            "Memory budget of all instances together (0: no budget)",
            memory_budget.clone(),
        );
        let memory_charged = Gauge::default();
        registry.register(
            "memory_charged_bytes",
            "Memory charged to the budget by live instances: guest memory plus overhead",
            memory_charged.clone(),
        );
        Self {
            registry,
            memory_budget,
            memory_charged,
            unknown_syscalls,
            syscall_labels: Mutex::default(),
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
    /// Adds one instance's unsupported system calls to `reap_unknown_syscalls_total`.
    /// A function gets a label of its own for each of its first
    /// [`MAX_SYSCALL_LABELS`] distinct numbers below [`MAX_SYSCALL_NR_LABEL`]; the
    /// rest are counted under `nr="other"`.
    pub fn count_unknown_syscalls(
        &self,
        function: &str,
        calls: &reap_vmm::guest_os::UnsupportedCalls,
    ) {
        if calls.is_empty() {
            return;
        }
        let mut other = calls.other;
        let mut counts = Vec::new();
        {
            let mut labels = self
                .syscall_labels
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let seen = labels.entry(function.to_owned()).or_default();
            for (&nr, &n) in &calls.by_nr {
                let labelled = nr < MAX_SYSCALL_NR_LABEL
                    && (seen.contains(&nr) || seen.len() < MAX_SYSCALL_LABELS);
                if labelled {
                    seen.insert(nr);
                    counts.push((nr.to_string(), n));
                } else {
                    other += n;
                }
            }
        }
        if other > 0 {
            counts.push(("other".to_owned(), other));
        }
        for (nr, n) in counts {
            self.unknown_syscalls
                .get_or_create(&SyscallLabels {
                    function: function.to_owned(),
                    nr,
                })
                .inc_by(n);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reap_vmm::guest_os::UnsupportedCalls;

    #[test]
    fn unknown_syscall_labels_are_bounded_per_function() {
        let metrics = Metrics::default();
        for round in 0..5u64 {
            let calls = UnsupportedCalls {
                by_nr: (0..10)
                    .map(|i| (round * 10 + i + 400, 1))
                    .chain([(5000, 2)])
                    .collect(),
                other: 3,
            };
            metrics.count_unknown_syscalls("f", &calls);
            metrics.count_unknown_syscalls("g", &calls);
        }
        let text = metrics.encode();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("reap_unknown_syscalls_total{function=\"f\""))
            .collect();
        assert_eq!(lines.len(), MAX_SYSCALL_LABELS + 1, "{text}");
        // 5 rounds of 10 numbers, 16 labelled; the rest, 5000 and `other` go to other.
        let other = 5 * (10 + 2 + 3) - MAX_SYSCALL_LABELS;
        assert!(
            lines.contains(
                &format!("reap_unknown_syscalls_total{{function=\"f\",nr=\"other\"}} {other}")
                    .as_str()
            ),
            "{text}"
        );
        assert!(lines.iter().any(|l| l.contains("nr=\"400\"} 1")), "{text}");
    }
}
