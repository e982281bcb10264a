//! The orchestrator: deploys functions into the store, keeps a pool of warm instances,
//! cold-starts new ones from snapshots (REAP by default: the first cold start records
//! the working set, later ones prefetch it), and serves it all over HTTP.

#![warn(missing_docs)]

pub mod api;
pub mod budget;
pub mod client;
mod failure;
pub mod metrics;
pub mod oci;
pub mod pool;
pub mod store;

pub use self::failure::FailureKind;

pub(crate) use reap_error::chain as error_chain;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use self::budget::{BudgetError, Charge, INSTANCE_OVERHEAD_MIB, MemoryBudget};
use self::metrics::{ErrorLabels, FunctionLabels, Metrics, ModeLabels, StartLabels};
use self::pool::{Pool, PoolError};
use self::store::{Deployed, FunctionStore, StoreError};
use reap_pager::ServeOptions;
use reap_vmm::instance::{ColdStart, Invocation, MemoryMode};
use reap_worker::{Fault, RemoteInstance, WorkerConfig, WorkerError, Workers};

/// How many instances each function may have, how long they stay warm, and the
/// time limits of an invocation.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// How long an idle instance stays warm.
    pub keep_alive: Duration,
    /// Most instances (idle and busy) of one function.
    pub max_instances: usize,
    /// Limit on one invocation (cold start included).
    pub invoke_timeout: Duration,
    /// How long an invocation waits for a free instance slot.
    pub queue_timeout: Duration,
    /// A prefetching cold start that serves more lazy faults than this fraction of
    /// the working set's pages drops the WS file, so the next cold start re-records.
    pub rerecord_fraction: f64,
    /// The memory of all instances together, in MiB: an instance is charged its
    /// guest memory plus [`INSTANCE_OVERHEAD_MIB`]; `None` means no limit.
    pub memory_budget_mib: Option<u64>,
    /// How instance processes are started and jailed.
    pub workers: WorkerConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(60),
            max_instances: 8,
            invoke_timeout: Duration::from_secs(60),
            queue_timeout: Duration::from_secs(30),
            rerecord_fraction: 0.25,
            memory_budget_mib: None,
            // This program, run as `reap worker`; none started ahead until asked.
            workers: WorkerConfig {
                prestart: 0,
                ..WorkerConfig::new(
                    std::env::current_exe().unwrap_or_else(|_| std::path::PathBuf::from("reap")),
                )
            },
        }
    }
}

/// How one invocation may start its instance.
#[derive(Debug, Clone, Copy)]
pub struct InvokeOptions {
    /// Start a new instance even if a warm one is idle.
    pub force_cold: bool,
    /// How a cold start fills guest memory.
    pub memory: MemoryMode,
}

impl Default for InvokeOptions {
    fn default() -> Self {
        Self {
            force_cold: false,
            memory: MemoryMode::Reap,
        }
    }
}

/// Why an invocation got no answer.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The store could not give the function: an invalid or unknown name, a damaged or
    /// unreadable version.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request is not one JSON value.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The function's instances were all busy for the whole queue timeout.
    #[error("function {name:?} is at its limit of {limit} instances and none became free in time")]
    Busy {
        /// The function.
        name: String,
        /// Its instance limit.
        limit: usize,
    },
    /// A new instance's memory did not fit in the budget, even after evicting the idle
    /// instances, for the whole queue timeout (or can never fit).
    #[error("not enough memory for function {name:?}")]
    NoMemory {
        /// The function.
        name: String,
        /// The figures.
        #[source]
        source: BudgetError,
    },
    /// The orchestrator is shutting down and takes no more invocations.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The function crashed, timed out, exited or answered wrongly.
    #[error("function {name:?} failed")]
    Function {
        /// The function.
        name: String,
        /// What it did.
        #[source]
        source: WorkerError,
    },
    /// The runtime could not restore or run an instance, through no fault of the
    /// function.
    #[error("cannot run function {name:?}")]
    Runtime {
        /// The function.
        name: String,
        /// What failed.
        #[source]
        source: WorkerError,
    },
}

impl InvokeError {
    /// What kind of failure this is: its metric label and HTTP status.
    pub fn kind(&self) -> FailureKind {
        match self {
            InvokeError::Store(e) => e.kind(),
            InvokeError::BadRequest(_) => FailureKind::BadRequest,
            InvokeError::Busy { .. } | InvokeError::NoMemory { .. } | InvokeError::ShuttingDown => {
                FailureKind::Busy
            }
            InvokeError::Function { source, .. } => match source.fault() {
                Fault::Timeout => FailureKind::Timeout,
                Fault::Crash => FailureKind::Crash,
                // No answer, several lines, too much, or gone before its ready point.
                Fault::BadResponse => FailureKind::BadResponse,
                Fault::Runtime => FailureKind::Runtime,
                Fault::Damaged => FailureKind::Store,
            },
            InvokeError::Runtime { source, .. } if source.fault() == Fault::Damaged => {
                FailureKind::Store
            }
            InvokeError::Runtime { .. } => FailureKind::Runtime,
        }
    }
}

/// How an invocation started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// On a new instance restored from the snapshot.
    Cold,
    /// On an idle instance of an earlier invocation.
    Warm,
}

impl Start {
    /// `cold` or `warm`, as in the `x-reap-start` header and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::Warm => "warm",
        }
    }
}

/// An answered invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The function's response line, without its newline.
    #[serde(skip)]
    pub response: Vec<u8>,
    /// Whether the invocation ran on a new or an idle instance.
    pub start: Start,
    /// The cold start's breakdown (cold starts only).
    pub cold_start: Option<ColdStart>,
    /// The invocation inside the instance: its time and lazy faults.
    pub invocation: Invocation,
    /// Wall time of the whole invocation, cold start included.
    pub total_us: u64,
    /// This cold start dropped the working set for re-recording.
    pub rerecord: bool,
}

/// The orchestrator: the store, a pool of instances per function, and the metrics.
pub struct Orchestrator {
    /// Where the functions are deployed.
    pub store: FunctionStore,
    /// The pool settings and time limits.
    pub config: PoolConfig,
    /// What `GET /metrics` shows.
    pub metrics: Metrics,
    /// The memory budget of all instances together, if limited.
    budget: Option<Arc<MemoryBudget>>,
    pools: Mutex<Pools>,
    /// The instance processes (of restores, and of the store's deploys).
    workers: Arc<Workers>,
}

/// An instance with the memory charged for it: the charge is released when the
/// instance is gone (fields drop in order).
pub struct Charged {
    instance: RemoteInstance,
    _charge: Option<Charge>,
}

/// The pool of each function invoked so far.
#[derive(Default)]
struct Pools {
    by_name: HashMap<String, Arc<Pool<Charged>>>,
    shutting_down: bool,
}

impl Orchestrator {
    /// An orchestrator over `store`, with a thread that expires idle instances while
    /// it lives.
    ///
    /// Fails if the threads that start and end instance processes cannot be started.
    pub fn new(store: FunctionStore, config: PoolConfig) -> std::io::Result<Arc<Self>> {
        let metrics = Metrics::default();
        let budget = config.memory_budget_mib.map(|mib| {
            metrics.memory_budget.set(mib_to_bytes(mib));
            let charged = metrics.memory_charged.clone();
            Arc::new(MemoryBudget::new(mib).on_change(move |mib| {
                charged.set(mib_to_bytes(mib));
            }))
        });
        let workers = Arc::new(Workers::new(config.workers.clone())?);
        let store = store.with_workers(Arc::clone(&workers));
        let orchestrator = Arc::new(Self {
            store,
            config,
            metrics,
            budget,
            pools: Mutex::new(Pools::default()),
            workers,
        });
        spawn_reaper(Arc::downgrade(&orchestrator));
        Ok(orchestrator)
    }

    fn pools(&self) -> MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool of `name`, created on first use; an error once shutting down.
    fn pool(&self, name: &str) -> Result<Arc<Pool<Charged>>, InvokeError> {
        let mut pools = self.pools();
        if pools.shutting_down {
            return Err(InvokeError::ShuttingDown);
        }
        if let Some(pool) = pools.by_name.get(name) {
            return Ok(Arc::clone(pool));
        }
        let gauge = self
            .metrics
            .instances
            .get_or_create(&FunctionLabels {
                function: name.into(),
            })
            .clone();
        let pool = Arc::new(
            Pool::new(self.config.max_instances, self.config.keep_alive).on_live_change(
                move |live| {
                    gauge.set(live as i64);
                },
            ),
        );
        pools.by_name.insert(name.to_owned(), Arc::clone(&pool));
        Ok(pool)
    }

    /// Invokes `name` with `request` (one JSON value): on an idle warm instance if
    /// there is one, else on a new instance cold-started from the snapshot.
    pub fn invoke(
        &self,
        name: &str,
        request: &[u8],
        options: InvokeOptions,
    ) -> Result<Answer, InvokeError> {
        let request = normalize_request(request)?;
        let deployed = self.store.get(name)?;
        let started = Instant::now();
        let pool = self.pool(name)?;
        let mut lease = pool
            .acquire(
                &deployed.manifest.version,
                options.force_cold,
                self.config.queue_timeout,
            )
            .map_err(|e| match e {
                PoolError::Busy { limit } => InvokeError::Busy {
                    name: name.into(),
                    limit,
                },
                PoolError::ShutDown => InvokeError::ShuttingDown,
            })?;
        // Declared after the lease, so dropped before it (on a panic too): an instance
        // is gone before its slot is handed on.
        let (mut instance, start) = match lease.take_warm() {
            Some(instance) => (instance, Start::Warm),
            None => match self
                .admit(name, deployed.manifest.mem_mib)
                .and_then(|charge| {
                    self.workers
                        .restore(
                            &deployed.snapshot(),
                            options.memory,
                            ServeOptions::default(),
                            self.store.log_sink(name),
                            self.config.invoke_timeout.saturating_sub(started.elapsed()),
                        )
                        .map(|instance| Charged {
                            instance,
                            _charge: charge,
                        })
                        .map_err(|source| InvokeError::Runtime {
                            name: name.into(),
                            source,
                        })
                }) {
                Ok(instance) => {
                    self.metrics
                        .cold_starts
                        .get_or_create(&ModeLabels {
                            function: name.into(),
                            mode: options.memory.name().into(),
                        })
                        .inc();
                    (instance, Start::Cold)
                }
                Err(err) => {
                    drop(lease);
                    self.mark_if_damaged(name, &deployed, &err);
                    self.mark_if_damaged(name, &deployed, &err);
                    self.count_error(name, err.kind());
                    if matches!(err, InvokeError::NoMemory { .. }) {
                        tracing::warn!(
                            function = name,
                            error = error_chain(&err),
                            "invocation refused"
                        );
                    }
                    return Err(err);
                }
            },
        };
        let remaining = self
            .config
            .invoke_timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let result = instance.instance.invoke(&request, remaining);
        self.metrics
            .count_unknown_syscalls(name, &instance.instance.take_unsupported_syscalls());
        match result {
            Ok((mut response, invocation)) => {
                response.pop_if(|b| *b == b'\n');
                let cold_start = instance
                    .instance
                    .cold_start()
                    .filter(|_| start == Start::Cold)
                    .cloned();
                let rerecord =
                    self.check_working_set(name, &deployed, cold_start.as_ref(), &invocation);
                lease.release(instance);
                if let Some(budget) = &self.budget {
                    budget.instance_went_idle();
                }
                let total = started.elapsed();
                let labels = StartLabels {
                    function: name.into(),
                    start: start.name().into(),
                };
                self.metrics.invocations.get_or_create(&labels).inc();
                self.metrics
                    .latency
                    .get_or_create(&labels)
                    .observe(total.as_secs_f64());
                self.metrics
                    .lazy_faults
                    .get_or_create(&FunctionLabels {
                        function: name.into(),
                    })
                    .inc_by(invocation.lazy_faults);
                tracing::info!(
                    function = name,
                    start = start.name(),
                    total_us = total.as_micros() as u64,
                    invoke_us = invocation.invoke_us,
                    lazy_faults = invocation.lazy_faults,
                    "invocation"
                );
                Ok(Answer {
                    response,
                    start,
                    cold_start,
                    invocation,
                    total_us: total.as_micros() as u64,
                    rerecord,
                })
            }
            Err(source) => {
                drop(instance);
                drop(lease);
                let function_fault = source.fault().is_function_fault();
                let err = if function_fault {
                    InvokeError::Function {
                        name: name.into(),
                        source,
                    }
                } else {
                    InvokeError::Runtime {
                        name: name.into(),
                        source,
                    }
                };
                self.mark_if_damaged(name, &deployed, &err);
                self.count_error(name, err.kind());
                tracing::warn!(
                    function = name,
                    error = error_chain(&err),
                    "invocation failed"
                );
                Err(err)
            }
        }
    }

    /// The memory charge of a new instance of `name` with `mem_mib` of guest memory
    /// (`None` without a budget); evicts idle instances of any function, least
    /// recently used first, to make room, then waits up to the queue timeout.
    fn admit(&self, name: &str, mem_mib: u64) -> Result<Option<Charge>, InvokeError> {
        let Some(budget) = &self.budget else {
            return Ok(None);
        };
        budget
            .admit(
                mem_mib.saturating_add(INSTANCE_OVERHEAD_MIB),
                self.config.queue_timeout,
                || self.evict_least_recently_used(),
            )
            .map(Some)
            .map_err(|source| InvokeError::NoMemory {
                name: name.into(),
                source,
            })
    }

    /// Drops the least recently used idle instance of any function. Returns whether
    /// there was one.
    fn evict_least_recently_used(&self) -> bool {
        let pools: Vec<_> = self.pools().by_name.values().cloned().collect();
        let oldest = pools
            .iter()
            .filter_map(|p| p.oldest_idle_since().map(|since| (since, p)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, pool)) => {
                // Another acquirer may have taken it meanwhile: then try the next.
                pool.evict_oldest() || pools.iter().any(|p| p.evict_oldest())
            }
            None => false,
        }
    }

    /// MiB charged to the memory budget now (0 without a budget).
    pub fn memory_charged_mib(&self) -> u64 {
        self.budget.as_ref().map_or(0, |b| b.charged_mib())
    }

    /// Marks the deployed version damaged if `err` says its snapshot is: later
    /// invocations are refused at once, until a new deploy.
    fn mark_if_damaged(&self, name: &str, deployed: &Deployed, err: &InvokeError) {
        let (InvokeError::Function { source, .. } | InvokeError::Runtime { source, .. }) = err
        else {
            return;
        };
        if source.fault() != Fault::Damaged {
            return;
        }
        match self.store.mark_damaged(deployed, &source.to_string()) {
            Ok(()) => tracing::error!(
                function = name,
                version = deployed.manifest.version,
                error = error_chain(err),
                "the function's snapshot is damaged: it is refused until deployed again"
            ),
            Err(e) => tracing::error!(function = name, "cannot mark the function damaged: {e}"),
        }
    }

    fn count_error(&self, name: &str, kind: FailureKind) {
        self.metrics
            .errors
            .get_or_create(&ErrorLabels {
                function: name.into(),
                kind: kind.label().into(),
            })
            .inc();
    }

    /// After a prefetching cold start: drops the WS file when it was unusable or the
    /// invocation needed many pages it did not hold, so the next cold start records
    /// a fresh one. Returns whether it did.
    fn check_working_set(
        &self,
        name: &str,
        deployed: &Deployed,
        cold: Option<&ColdStart>,
        inv: &Invocation,
    ) -> bool {
        let Some(cold) = cold.filter(|c| c.mode == MemoryMode::Reap && !c.recording) else {
            return false;
        };
        let labels = FunctionLabels {
            function: name.into(),
        };
        self.metrics
            .ws_bytes
            .get_or_create(&labels)
            .set((cold.prefetched_pages * 4096) as i64);
        let too_many = inv.lazy_faults as f64
            > self.config.rerecord_fraction * cold.prefetched_pages.max(1) as f64;
        if !(cold.ws_fell_back || too_many) {
            return false;
        }
        let dropped = deployed.snapshot().drop_working_set().unwrap_or_else(|e| {
            tracing::warn!(function = name, "{}", error_chain(&e));
            false
        });
        if dropped {
            self.metrics.rerecords.get_or_create(&labels).inc();
            tracing::info!(
                function = name,
                lazy_faults = inv.lazy_faults,
                ws_pages = cold.prefetched_pages,
                fell_back = cold.ws_fell_back,
                "working set dropped: the next cold start re-records"
            );
        }
        true
    }

    /// Tears down instances idle for the keep-alive or longer. Returns how many.
    pub fn expire_idle(&self) -> usize {
        let pools: Vec<_> = self.pools().by_name.values().cloned().collect();
        pools.iter().map(|p| p.expire_idle()).sum()
    }

    /// Drops `name`'s idle instances (after it was removed or redeployed); its busy
    /// instances are dropped when their invocations end.
    pub fn forget(&self, name: &str) {
        let pool = self.pools().by_name.get(name).cloned();
        if let Some(pool) = pool {
            pool.retire();
        }
    }

    /// Idle instances of `name` now.
    pub fn idle_instances(&self, name: &str) -> usize {
        let pool = self.pools().by_name.get(name).cloned();
        pool.map_or(0, |p| p.idle())
    }

    /// Refuses new invocations and tears down the idle instances; busy instances are
    /// torn down when their invocations end.
    pub fn shutdown(&self) {
        let pools: Vec<_> = {
            let mut pools = self.pools();
            pools.shutting_down = true;
            pools.by_name.values().cloned().collect()
        };
        for pool in pools {
            pool.shut_down();
        }
    }

    fn is_shutting_down(&self) -> bool {
        self.pools().shutting_down
    }
}

fn mib_to_bytes(mib: u64) -> i64 {
    i64::try_from(mib.saturating_mul(1 << 20)).unwrap_or(i64::MAX)
}

/// Checks that a request is one JSON value and returns it as one compact line.
pub fn normalize_request(request: &[u8]) -> Result<Vec<u8>, InvokeError> {
    let value: serde_json::Value = serde_json::from_slice(request)
        .map_err(|e| InvokeError::BadRequest(format!("the body is not JSON: {e}")))?;
    Ok(serde_json::to_vec(&value).expect("a JSON value serializes"))
}

/// Expires idle instances once a second while the orchestrator lives.
fn spawn_reaper(orchestrator: Weak<Orchestrator>) {
    let spawned = std::thread::Builder::new()
        .name("reap-keepalive".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(o) = orchestrator.upgrade() else {
                    return;
                };
                if o.is_shutting_down() {
                    return;
                }
                o.expire_idle();
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the keep-alive thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_normalized_to_one_compact_line() {
        assert_eq!(
            normalize_request(b"{\n  \"a\": [1, 2]\n}\n").unwrap(),
            b"{\"a\":[1,2]}"
        );
        assert_eq!(normalize_request(b" 42 ").unwrap(), b"42");
        assert!(matches!(
            normalize_request(b"{oops"),
            Err(InvokeError::BadRequest(_))
        ));
        assert!(matches!(
            normalize_request(b""),
            Err(InvokeError::BadRequest(_))
        ));
    }

    fn function_error(source: WorkerError) -> InvokeError {
        InvokeError::Function {
            name: "f".into(),
            source,
        }
    }

    fn instance_error(fault: Fault) -> InvokeError {
        function_error(WorkerError::Instance {
            fault,
            message: "m".into(),
        })
    }

    #[test]
    fn invoke_errors_have_the_kinds_of_their_causes() {
        let cases = [
            (
                InvokeError::Store(StoreError::NotFound("f".into())),
                FailureKind::NotFound,
            ),
            (
                InvokeError::Store(StoreError::BadName("F".into())),
                FailureKind::BadRequest,
            ),
            (
                InvokeError::Store(StoreError::Damaged {
                    name: "f".into(),
                    why: "no manifest".into(),
                }),
                FailureKind::Store,
            ),
            (InvokeError::BadRequest("x".into()), FailureKind::BadRequest),
            (
                InvokeError::Busy {
                    name: "f".into(),
                    limit: 8,
                },
                FailureKind::Busy,
            ),
            (InvokeError::ShuttingDown, FailureKind::Busy),
            (instance_error(Fault::Timeout), FailureKind::Timeout),
            (instance_error(Fault::Crash), FailureKind::Crash),
            (instance_error(Fault::BadResponse), FailureKind::BadResponse),
            (
                function_error(WorkerError::Died {
                    how: "was killed by signal 9 (SIGKILL)".into(),
                }),
                FailureKind::Crash,
            ),
            (
                function_error(WorkerError::Protocol("garbage".into())),
                FailureKind::Crash,
            ),
            (
                function_error(WorkerError::Unresponsive(Duration::from_secs(1))),
                FailureKind::Timeout,
            ),
            (
                InvokeError::Runtime {
                    name: "f".into(),
                    source: WorkerError::Start("no process".into()),
                },
                FailureKind::Runtime,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{}", error_chain(&err));
        }
    }

    #[test]
    fn invoking_a_bad_name_is_a_bad_request() {
        let root = std::env::temp_dir().join(format!("reap-orch-names-{}", std::process::id()));
        let (store, _) = FunctionStore::open(&root).unwrap();
        let o = Orchestrator::new(store, PoolConfig::default()).unwrap();
        for name in ["../..", "Hello", &"x".repeat(65)] {
            let err = o.invoke(name, b"{}", InvokeOptions::default()).unwrap_err();
            assert_eq!(err.kind(), FailureKind::BadRequest, "{name}");
        }
        let err = o
            .invoke("nothing", b"{}", InvokeOptions::default())
            .unwrap_err();
        assert_eq!(err.kind(), FailureKind::NotFound);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failed_cold_start_frees_its_instance_slot() {
        let root = std::env::temp_dir().join(format!("reap-orch-slots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (store, _) = FunctionStore::open(&root).unwrap();
        // A version whose manifest reads but whose snapshot is missing: every cold
        // start fails in the runtime.
        let version = root.join("functions/f/versions/v1");
        std::fs::create_dir_all(&version).unwrap();
        let manifest = store::Manifest {
            format: 1,
            name: "f".into(),
            version: "v1".into(),
            binary_sha256: String::new(),
            binary_bytes: 0,
            mem_mib: 64,
            env: Vec::new(),
            created_unix: 0,
            init_ms: 0.0,
            snapshot_data_bytes: 0,
            image: None,
        };
        std::fs::write(
            version.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink("versions/v1", root.join("functions/f/current")).unwrap();
        let config = PoolConfig {
            max_instances: 1,
            queue_timeout: Duration::ZERO,
            ..PoolConfig::default()
        };
        let o = Orchestrator::new(store, config).unwrap();
        for _ in 0..5 {
            let err = o.invoke("f", b"{}", InvokeOptions::default()).unwrap_err();
            assert_eq!(err.kind(), FailureKind::Runtime, "{}", error_chain(&err));
        }
        assert_eq!(o.pool("f").unwrap().live(), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn instances_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<RemoteInstance>();
    }
}
