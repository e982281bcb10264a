//! The results of a run: per-function summaries, the figures across functions, the
//! table printed at the end, and the JSON, CSV and Markdown files.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::disk::DiskResult;
use super::run::{ColdSample, FunctionRun, SweepBatch, Techniques, WarmSample};
use super::stats::{self, Summary};
use reap_pager::Holes;
use reap_vmm::instance::MemoryMode;

/// Version of the JSON layout below.
pub const SCHEMA_VERSION: u32 = 1;

/// Where and when a run was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environment {
    /// `git rev-parse HEAD` in the current directory, if it is a git work tree.
    pub git_revision: Option<String>,
    /// Whether tracked files differ from that revision.
    pub git_dirty: Option<bool>,
    /// Start of the run, UTC, ISO 8601.
    pub date: String,
    /// The host name (`/proc/sys/kernel/hostname`), or `unknown`.
    pub host: String,
    /// The kernel release (`/proc/sys/kernel/osrelease`), or `unknown`.
    pub kernel: String,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// CPUs this process may use (`available_parallelism`), 1 if that is unknown.
    pub cpus: usize,
    /// `kvm_pvm` when the host's KVM is the software-assisted one, else `kvm_intel` /
    /// `kvm_amd` / `kvm`.
    pub kvm_module: Option<String>,
    /// reap's version (the workspace's package version) at build time.
    pub reap_version: String,
}

impl Environment {
    /// Reads the environment now; `started` is the start of the run, written as `date`.
    pub fn detect(started: SystemTime) -> Environment {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        let git_revision = git(&["rev-parse", "HEAD"]).filter(|r| !r.is_empty());
        let git_dirty = git_revision
            .as_ref()
            .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
            .map(|s| !s.is_empty());
        let cpu_model = read("/proc/cpuinfo").and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
        let kvm_module = ["kvm_pvm", "kvm_intel", "kvm_amd", "kvm"]
            .into_iter()
            .find(|m| Path::new("/sys/module").join(m).exists())
            .map(str::to_owned);
        Environment {
            git_revision,
            git_dirty,
            date: iso8601_utc(unix_secs(started)),
            host: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kvm_module,
            reap_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Whole seconds from the Unix epoch to `t` (0 for earlier times).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Civil date (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn utc_parts(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    (y, m, d, s / 3600, s / 60 % 60, s % 60)
}

/// `2024-05-01T12:34:56Z`.
pub fn iso8601_utc(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc_parts(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// `20240501-123456`: the default output directory's name.
pub fn compact_utc(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc_parts(secs);
    format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}")
}

/// The run's parameters, as resolved from the command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// `--quick` was given.
    pub quick: bool,
    /// The functions measured, in order.
    pub functions: Vec<String>,
    /// Measured cold starts per mode, and warm invocations, per function.
    pub iterations: usize,
    /// Unmeasured rounds (one cold start per mode) before the measured ones.
    pub warmup: usize,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Function of the concurrency sweep (`None` without a sweep).
    pub sweep_function: Option<String>,
    /// Concurrency levels of the sweep (empty without a sweep).
    pub sweep_levels: Vec<usize>,
    /// Size of the disk probe file in MiB (0: no disk measurement).
    pub disk_probe_mib: u64,
    /// What the page server did with the memory file's holes in the lazy and reap
    /// cold starts (`kernel` unless `--served-holes`).
    #[serde(default)]
    pub holes: Holes,
    /// Decoded state files were reused across cold starts (off with
    /// `--no-state-cache`).
    #[serde(default = "yes")]
    pub state_cache: bool,
    /// The techniques of the measured cold starts.
    #[serde(default = "all_techniques")]
    pub techniques: Techniques,
    /// The ablation ran (`--ablation`).
    #[serde(default)]
    pub ablation: bool,
}

/// The ablation variant with every technique on.
const ALL_ON: &str = "all on";
/// How the ablation's recording variants start.
const RECORDING: &str = "recording";
/// The recording variant with the default, background write.
const RECORDING_BACKGROUND: &str = "recording, background write";

fn all_techniques() -> Techniques {
    Techniques::ALL
}

fn yes() -> bool {
    true
}

/// Medians of one mode's cold starts (times in ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeSummary {
    /// Latency, restore plus the first invocation: median, p90 and range.
    pub latency_ms: Summary,
    /// Restoring the VM, fetch and install excluded.
    pub restore_ms: f64,
    /// Reading and checking the WS file.
    pub fetch_ms: f64,
    /// Installing the working set into guest memory.
    pub install_ms: f64,
    /// The first invocation as the instance measures it.
    pub invoke_ms: f64,
    /// Faults the page server served during the invocation.
    pub lazy_faults: f64,
    /// Of those, faults served with a zero page.
    pub lazy_faults_zero: f64,
    /// Faults the page server served during the restore, before the guest ran.
    #[serde(default)]
    pub restore_lazy_faults: f64,
    /// Pages installed from the WS file before the guest ran.
    pub prefetched_pages: f64,
    /// Minor page faults the host kernel counted on the vCPU thread.
    pub host_minor_faults: f64,
    /// Major page faults the host kernel counted on the vCPU thread.
    pub host_major_faults: f64,
}

impl ModeSummary {
    /// Summarizes `samples`, all of one mode; `None` for no samples.
    pub fn of(samples: &[&ColdSample]) -> Option<ModeSummary> {
        let med = |f: fn(&ColdSample) -> u64| {
            stats::median(&samples.iter().map(|s| f(s) as f64).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        let ms = |f: fn(&ColdSample) -> u64| med(f) / 1e3;
        Some(ModeSummary {
            latency_ms: Summary::of_us_as_ms(
                &samples.iter().map(|s| s.latency_us).collect::<Vec<_>>(),
            )?,
            restore_ms: ms(|s| s.restore_us),
            fetch_ms: ms(|s| s.fetch_us),
            install_ms: ms(|s| s.install_us),
            invoke_ms: ms(|s| s.invoke_us),
            lazy_faults: med(|s| s.lazy_faults),
            lazy_faults_zero: med(|s| s.lazy_faults_zero),
            restore_lazy_faults: med(|s| s.restore_lazy_faults),
            prefetched_pages: med(|s| s.prefetched_pages),
            host_minor_faults: med(|s| s.host_minor_faults),
            host_major_faults: med(|s| s.host_major_faults),
        })
    }
}

/// How far a reap cold start is from the floor the disk allows: a warm invocation
/// plus reading the WS file at the sequential bandwidth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Floor {
    /// Median warm latency + WS file bytes / sequential read bandwidth, ms.
    pub floor_ms: f64,
    /// reap median / floor.
    pub reap_over_floor: f64,
    /// reap median − floor, ms.
    pub reap_minus_floor_ms: f64,
}

/// One function's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionSummary {
    /// The file-mode cold starts.
    pub file: ModeSummary,
    /// The lazy-mode cold starts.
    pub lazy: ModeSummary,
    /// The reap-mode (prefetching) cold starts.
    pub reap: ModeSummary,
    /// Latency of the warm invocations, ms.
    pub warm_ms: Summary,
    /// file median / reap median.
    pub speedup_file_to_reap: f64,
    /// lazy median / reap median.
    pub speedup_lazy_to_reap: f64,
    /// reap median / warm median: how many times a warm invocation a reap cold start
    /// takes.
    pub reap_over_warm: f64,
    /// 1 − reap lazy faults / lazy-mode lazy faults (medians), % (`None` when the
    /// lazy mode had no faults).
    pub fault_reduction_pct: Option<f64>,
    /// Distance to the disk floor (`None` without a disk measurement).
    pub floor: Option<Floor>,
}

impl FunctionSummary {
    /// Summarizes `run`, with the floor when `disk` is given and measured a bandwidth;
    /// `None` if a mode or the warm invocations have no samples.
    pub fn of(run: &FunctionRun, disk: Option<&DiskResult>) -> Option<FunctionSummary> {
        let mode = |m: MemoryMode| {
            ModeSummary::of(&run.cold.iter().filter(|s| s.mode == m).collect::<Vec<_>>())
        };
        let file = mode(MemoryMode::File)?;
        let lazy = mode(MemoryMode::Lazy)?;
        let reap = mode(MemoryMode::Reap)?;
        let warm_ms =
            Summary::of_us_as_ms(&run.warm.iter().map(|w| w.latency_us).collect::<Vec<_>>())?;
        let reap_ms = reap.latency_ms.median;
        let floor = disk.filter(|d| d.seq_read_mb_s > 0.0).map(|d| {
            let floor_ms = warm_ms.median + d.seq_read_secs(run.ws.file_bytes) * 1e3;
            Floor {
                floor_ms,
                reap_over_floor: reap_ms / floor_ms,
                reap_minus_floor_ms: reap_ms - floor_ms,
            }
        });
        Some(FunctionSummary {
            speedup_file_to_reap: file.latency_ms.median / reap_ms,
            speedup_lazy_to_reap: lazy.latency_ms.median / reap_ms,
            reap_over_warm: reap_ms / warm_ms.median,
            fault_reduction_pct: (lazy.lazy_faults > 0.0)
                .then(|| (1.0 - reap.lazy_faults / lazy.lazy_faults) * 100.0),
            file,
            lazy,
            reap,
            warm_ms,
            floor,
        })
    }
}

/// A function's raw results and their summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionReport {
    /// The raw results (its fields are this object's in JSON).
    #[serde(flatten)]
    pub run: FunctionRun,
    /// Their summary.
    pub summary: FunctionSummary,
}

/// Lazily served faults of all functions: lazy mode against reap's prefetching
/// cold starts (sums of the per-function medians).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultReduction {
    /// Sum over the functions of the lazy mode's median lazily served faults.
    pub lazy_mode_faults: f64,
    /// Sum over the functions of the reap mode's median lazily served faults.
    pub reap_mode_faults: f64,
    /// 1 − reap / lazy, %.
    pub reduction_pct: Option<f64>,
    /// Host kernel page faults of the vCPU thread, file mode against reap.
    pub file_mode_host_faults: f64,
    /// Sum over the functions of the reap mode's median host page faults (minor +
    /// major).
    pub reap_mode_host_faults: f64,
}

/// One concurrency level of the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepLevel {
    /// How many cold starts ran at once.
    pub concurrency: usize,
    /// Latency of this level's file-mode cold starts, all repetitions, ms.
    pub file_ms: Summary,
    /// Latency of this level's reap-mode cold starts, all repetitions, ms.
    pub reap_ms: Summary,
    /// file median / reap median.
    pub speedup_file_to_reap: f64,
}

/// The concurrency sweep: its raw samples and a summary per level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    /// The function of the sweep.
    pub function: String,
    /// Repetitions of each level, each one batch per mode (file and reap); also the
    /// number of measured warm invocations.
    pub repetitions: usize,
    /// Latency of the warm invocations, ms (`None` if there were none).
    pub warm_ms: Option<Summary>,
    /// One summary per concurrency level, in the order they ran.
    pub levels: Vec<SweepLevel>,
    /// Every batch, in the order they ran.
    pub batches: Vec<SweepBatch>,
    /// The measured warm invocations, in the order they ran.
    pub warm: Vec<WarmSample>,
}

impl SweepReport {
    /// Summarizes the sweep of `function`: one level per concurrency of `batches` (in
    /// their order) that has both file and reap cold starts.
    pub fn new(
        function: String,
        repetitions: usize,
        batches: Vec<SweepBatch>,
        warm: Vec<WarmSample>,
    ) -> SweepReport {
        let mut concurrency: Vec<usize> = batches.iter().map(|b| b.concurrency).collect();
        concurrency.dedup();
        let levels = concurrency
            .into_iter()
            .filter_map(|k| {
                let lat = |m: MemoryMode| {
                    Summary::of_us_as_ms(
                        &batches
                            .iter()
                            .filter(|b| b.concurrency == k && b.mode == m)
                            .flat_map(|b| b.samples.iter().map(|s| s.latency_us))
                            .collect::<Vec<_>>(),
                    )
                };
                let file_ms = lat(MemoryMode::File)?;
                let reap_ms = lat(MemoryMode::Reap)?;
                Some(SweepLevel {
                    concurrency: k,
                    speedup_file_to_reap: file_ms.median / reap_ms.median,
                    file_ms,
                    reap_ms,
                })
            })
            .collect();
        SweepReport {
            function,
            repetitions,
            warm_ms: Summary::of_us_as_ms(&warm.iter().map(|w| w.latency_us).collect::<Vec<_>>()),
            levels,
            batches,
            warm,
        }
    }
}

/// Everything a run produced; written as `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Version of the JSON layout ([`SCHEMA_VERSION`] when written by this build).
    pub schema_version: u32,
    /// Where and when the run was made.
    pub environment: Environment,
    /// The run's parameters.
    pub config: RunConfig,
    /// The disk measurement (`None` when skipped).
    pub disk: Option<DiskResult>,
    /// Geometric mean over the functions of file median / reap median.
    pub geomean_speedup_file_to_reap: Option<f64>,
    /// Geometric mean over the functions of lazy median / reap median.
    pub geomean_speedup_lazy_to_reap: Option<f64>,
    /// Geometric mean over the functions of reap median / warm median.
    pub geomean_reap_over_warm: Option<f64>,
    /// Lazily served faults and host page faults, summed over the functions.
    pub fault_reduction: FaultReduction,
    /// Each function's raw results and summary, in the order measured (a function with
    /// no samples for a mode or no warm samples is left out).
    pub functions: Vec<FunctionReport>,
    /// The concurrency sweep (`None` when skipped).
    pub sweep: Option<SweepReport>,
    /// Wall time of the whole run.
    pub duration_s: f64,
}

impl Report {
    /// Summarizes each run and computes the figures across functions.
    pub fn new(
        environment: Environment,
        config: RunConfig,
        disk: Option<DiskResult>,
        runs: Vec<FunctionRun>,
        sweep: Option<SweepReport>,
        duration_s: f64,
    ) -> Report {
        let functions: Vec<FunctionReport> = runs
            .into_iter()
            .filter_map(|run| {
                let summary = FunctionSummary::of(&run, disk.as_ref())?;
                Some(FunctionReport { run, summary })
            })
            .collect();
        let geo = |f: fn(&FunctionSummary) -> f64| {
            stats::geomean(&functions.iter().map(|r| f(&r.summary)).collect::<Vec<_>>())
        };
        let sum = |f: fn(&FunctionSummary) -> f64| functions.iter().map(|r| f(&r.summary)).sum();
        let lazy_mode_faults: f64 = sum(|s| s.lazy.lazy_faults);
        let reap_mode_faults: f64 = sum(|s| s.reap.lazy_faults);
        let fault_reduction = FaultReduction {
            lazy_mode_faults,
            reap_mode_faults,
            reduction_pct: (lazy_mode_faults > 0.0)
                .then(|| (1.0 - reap_mode_faults / lazy_mode_faults) * 100.0),
            file_mode_host_faults: sum(|s| s.file.host_minor_faults + s.file.host_major_faults),
            reap_mode_host_faults: sum(|s| s.reap.host_minor_faults + s.reap.host_major_faults),
        };
        Report {
            schema_version: SCHEMA_VERSION,
            environment,
            config,
            disk,
            geomean_speedup_file_to_reap: geo(|s| s.speedup_file_to_reap),
            geomean_speedup_lazy_to_reap: geo(|s| s.speedup_lazy_to_reap),
            geomean_reap_over_warm: geo(|s| s.reap_over_warm),
            fault_reduction,
            functions,
            sweep,
            duration_s,
        }
    }

    /// The tables (see [`Table`]), in order, each with its title.
    pub fn tables(&self) -> Vec<(String, Table)> {
        let mut out = Vec::new();
        let mut t = Table::new(&[
            "function",
            "file ms",
            "lazy ms",
            "reap ms",
            "warm ms",
            "file/reap",
            "reap/warm",
        ]);
        for f in &self.functions {
            let s = &f.summary;
            t.row(vec![
                f.run.name.clone(),
                med_p90(&s.file.latency_ms),
                med_p90(&s.lazy.latency_ms),
                med_p90(&s.reap.latency_ms),
                med_p90(&s.warm_ms),
                format!("{:.1}x", s.speedup_file_to_reap),
                format!("{:.1}x", s.reap_over_warm),
            ]);
        }
        if let Some(g) = self.geomean_speedup_file_to_reap {
            t.row(vec![
                "geomean".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!("{g:.1}x"),
                self.geomean_reap_over_warm
                    .map(|g| format!("{g:.1}x"))
                    .unwrap_or_default(),
            ]);
        }
        out.push((
            format!(
                "Cold-start latency (restore + first invocation, page cache evicted), ms: median (p90) of {}",
                self.config.iterations
            ),
            t,
        ));

        let mut t = Table::new(&[
            "function",
            "restore",
            "fetch",
            "install",
            "invoke",
            "faults lazy→reap",
            "host faults file→reap",
            "WS MiB",
            "WS % mem",
            "floor ms",
            "reap/floor",
        ]);
        for f in &self.functions {
            let s = &f.summary;
            t.row(vec![
                f.run.name.clone(),
                ms(s.reap.restore_ms),
                ms(s.reap.fetch_ms),
                ms(s.reap.install_ms),
                ms(s.reap.invoke_ms),
                format!("{:.0}→{:.0}", s.lazy.lazy_faults, s.reap.lazy_faults),
                format!(
                    "{:.0}→{:.0}",
                    s.file.host_minor_faults + s.file.host_major_faults,
                    s.reap.host_minor_faults + s.reap.host_major_faults
                ),
                format!("{:.2}", f.run.ws.mib),
                format!("{:.2}", f.run.ws.pct_guest_memory),
                s.floor.as_ref().map_or("-".into(), |fl| ms(fl.floor_ms)),
                s.floor
                    .as_ref()
                    .map_or("-".into(), |fl| format!("{:.1}x", fl.reap_over_floor)),
            ]);
        }
        out.push((
            "reap cold start: breakdown (medians, ms), lazily served faults, working set, distance to the disk floor (warm + WS bytes / sequential bandwidth)".into(),
            t,
        ));

        if let Some(t) = self.input_sensitivity_table() {
            out.push((
                "Input sensitivity: working set recorded with the first sample request, cold starts with the second; ms: median (p90); lazily served faults (median); \"holes served\": the page server serves the memory file's holes (WS recorded that way too)".into(),
                t,
            ));
        }

        if let Some(t) = self.ablation_table() {
            out.push((
                "Ablation: reap cold starts with each technique off (the rest on), interleaved, page cache evicted; ms: median; last row: geometric mean of variant / all on. Recording: the first cold start, working set written after or before the answer".into(),
                t,
            ));
        }

        if let Some(t) = self.throughput_table() {
            out.push((
                "Concurrency sweep: cold starts per second per core (k / wall time of the batch / CPUs), median over repetitions; \"before\": every technique off".into(),
                t,
            ));
        }

        if let Some(sweep) = &self.sweep {
            let mut t = Table::new(&["concurrent", "file ms", "reap ms", "file/reap"]);
            for l in &sweep.levels {
                t.row(vec![
                    l.concurrency.to_string(),
                    med_p90(&l.file_ms),
                    med_p90(&l.reap_ms),
                    format!("{:.1}x", l.speedup_file_to_reap),
                ]);
            }
            out.push((
                format!(
                    "Concurrency sweep ({}): latency of each of k simultaneous cold starts, ms: median (p90)",
                    sweep.function
                ),
                t,
            ));
        }
        out
    }

    /// The ablation's variants: `all on` first, the others in the order they first
    /// ran, the recording cold starts last.
    fn ablation_variants(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for f in &self.functions {
            for a in &f.run.ablation {
                if !names.contains(&a.variant) {
                    names.push(a.variant.clone());
                }
            }
        }
        names.sort_by_key(|n| (n != ALL_ON, n.starts_with(RECORDING)));
        names
    }

    /// The ablation table, if the run has one.
    fn ablation_table(&self) -> Option<Table> {
        let variants = self.ablation_variants();
        if variants.is_empty() {
            return None;
        }
        let mut header = vec!["function"];
        header.extend(variants.iter().map(String::as_str));
        let mut t = Table::new(&header);
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for f in &self.functions {
            if f.run.ablation.is_empty() {
                continue;
            }
            let median = |v: &str| {
                let lat: Vec<f64> = f
                    .run
                    .ablation
                    .iter()
                    .filter(|a| a.variant == v)
                    .map(|a| a.sample.latency_us as f64 / 1e3)
                    .collect();
                stats::median(&lat)
            };
            let mut row = vec![f.run.name.clone()];
            for (i, v) in variants.iter().enumerate() {
                let m = median(v);
                row.push(m.map_or("-".into(), ms));
                // A recording compares with the recording of the default (background
                // write), the others with every technique on.
                let base = if v.starts_with(RECORDING) {
                    median(RECORDING_BACKGROUND)
                } else {
                    median(ALL_ON)
                };
                if let (Some(m), Some(b)) = (m, base) {
                    ratios[i].push(m / b);
                }
            }
            t.row(row);
        }
        let mut row = vec!["geomean ratio".to_string()];
        for r in &ratios {
            row.push(stats::geomean(r).map_or("-".into(), |g| format!("{g:.2}x")));
        }
        t.row(row);
        Some(t)
    }

    /// Cold starts per second per core of each sweep level, techniques on and off.
    fn throughput_table(&self) -> Option<Table> {
        let sweep = self.sweep.as_ref()?;
        if sweep.batches.iter().all(|b| b.wall_us == 0) {
            return None;
        }
        let cpus = self.environment.cpus.max(1) as f64;
        let before = sweep.batches.iter().any(|b| !b.techniques_on);
        let mut header = vec!["concurrent", "file", "reap"];
        if before {
            header.extend(["file, before", "reap, before"]);
        }
        let mut t = Table::new(&header);
        let mut levels: Vec<usize> = sweep.batches.iter().map(|b| b.concurrency).collect();
        levels.dedup();
        for k in levels {
            let rate = |mode: MemoryMode, on: bool| {
                let r: Vec<f64> = sweep
                    .batches
                    .iter()
                    .filter(|b| b.concurrency == k && b.mode == mode && b.techniques_on == on)
                    .filter(|b| b.wall_us > 0)
                    .map(|b| b.samples.len() as f64 / (b.wall_us as f64 / 1e6) / cpus)
                    .collect();
                stats::median(&r).map_or("-".into(), |m| format!("{m:.0}"))
            };
            let mut row = vec![
                k.to_string(),
                rate(MemoryMode::File, true),
                rate(MemoryMode::Reap, true),
            ];
            if before {
                row.push(rate(MemoryMode::File, false));
                row.push(rate(MemoryMode::Reap, false));
            }
            t.row(row);
        }
        Some(t)
    }

    /// The input-sensitivity table, if any function has those cold starts.
    fn input_sensitivity_table(&self) -> Option<Table> {
        let mut t = Table::new(&[
            "function",
            "file ms",
            "reap ms",
            "reap, holes served ms",
            "reap/file",
            "WS pages",
            "faults reap",
            "faults holes served (zero)",
        ]);
        let mut rows = 0;
        for f in &self.functions {
            let Some(inp) = &f.run.input_sensitivity else {
                continue;
            };
            let lat = |v: &[ColdSample]| {
                Summary::of_us_as_ms(&v.iter().map(|s| s.latency_us).collect::<Vec<_>>())
            };
            let med = |v: &[ColdSample], get: fn(&ColdSample) -> u64| {
                stats::median(&v.iter().map(|s| get(s) as f64).collect::<Vec<_>>()).unwrap_or(0.0)
            };
            let (Some(file), Some(reap), Some(served)) =
                (lat(&inp.file), lat(&inp.reap), lat(&inp.reap_served_holes))
            else {
                continue;
            };
            rows += 1;
            t.row(vec![
                f.run.name.clone(),
                med_p90(&file),
                med_p90(&reap),
                med_p90(&served),
                format!("{:.2}", reap.median / file.median),
                format!("{:.0}", med(&inp.reap, |s| s.prefetched_pages)),
                format!("{:.0}", med(&inp.reap, |s| s.lazy_faults)),
                format!(
                    "{:.0} ({:.0})",
                    med(&inp.reap_served_holes, |s| s.lazy_faults),
                    med(&inp.reap_served_holes, |s| s.lazy_faults_zero)
                ),
            ]);
        }
        (rows > 0).then_some(t)
    }

    /// Summary lines under the tables.
    pub fn findings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(g) = self.geomean_speedup_file_to_reap {
            lines.push(format!(
                "geometric mean speedup file → reap: {g:.2}x (lazy → reap: {})",
                self.geomean_speedup_lazy_to_reap
                    .map_or("-".into(), |g| format!("{g:.2}x"))
            ));
        }
        let fr = &self.fault_reduction;
        if let Some(pct) = fr.reduction_pct {
            lines.push(format!(
                "lazily served faults, lazy → reap: {:.0} → {:.0} ({pct:.1}% fewer); host page faults of the vCPU thread, file → reap: {:.0} → {:.0}",
                fr.lazy_mode_faults,
                fr.reap_mode_faults,
                fr.file_mode_host_faults,
                fr.reap_mode_host_faults
            ));
        }
        if let Some(d) = &self.disk {
            lines.push(format!(
                "disk: sequential O_DIRECT read {:.0} MB/s ({} KiB requests); 4 KiB random O_DIRECT read {:.0} µs median, {:.0} µs p90",
                d.seq_read_mb_s, d.seq_request_kib, d.rand_4k_read_us.median, d.rand_4k_read_us.p90
            ));
        }
        let floors: Vec<f64> = self
            .functions
            .iter()
            .filter_map(|f| f.summary.floor.as_ref().map(|fl| fl.reap_over_floor))
            .collect();
        if let Some(g) = stats::geomean(&floors) {
            lines.push(format!(
                "reap cold start / floor: geometric mean {g:.2}x (median {:.2}x; target 1.5x or less)",
                stats::median(&floors).unwrap_or(0.0)
            ));
        }
        if let Some(h) = self.functions.iter().find(|f| f.run.name == "helloworld") {
            let r = &h.summary.reap;
            lines.push(format!(
                "helloworld reap cold start: median {} ms (target 0.5 ms or less); restore + fetch {} ms (medians; target 0.25 ms or less)",
                ms(r.latency_ms.median),
                ms(r.restore_ms + r.fetch_ms)
            ));
        }
        lines
    }

    /// The whole text report: header, tables, findings.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let e = &self.environment;
        let _ = writeln!(
            s,
            "reap bench: {} function(s), {} cold starts per mode and {} warm invocations each; {} on {} ({}, {} CPUs{}), git {}{}",
            self.functions.len(),
            self.config.iterations,
            self.config.iterations,
            e.date,
            e.host,
            e.kernel,
            e.cpus,
            e.kvm_module
                .as_deref()
                .map(|m| format!(", {m}"))
                .unwrap_or_default(),
            e.git_revision
                .as_deref()
                .map_or("-", |r| &r[..r.len().min(12)]),
            if e.git_dirty == Some(true) {
                " (modified)"
            } else {
                ""
            },
        );
        for (title, table) in self.tables() {
            let _ = writeln!(s, "\n{title}\n{}", table.render_text());
        }
        s.push('\n');
        for line in self.findings() {
            let _ = writeln!(s, "{line}");
        }
        s
    }

    /// The same as Markdown.
    pub fn render_markdown(&self) -> String {
        let mut s = String::new();
        let e = &self.environment;
        let _ = writeln!(
            s,
            "Run of {} on `{}` (kernel {}, {} CPUs, {}), git `{}`{}; {} cold starts per mode, {} warm invocations, guest memory {} MiB.\n",
            e.date,
            e.host,
            e.kernel,
            e.cpus,
            e.kvm_module.as_deref().unwrap_or("kvm"),
            e.git_revision
                .as_deref()
                .map_or("-", |r| &r[..r.len().min(12)]),
            if e.git_dirty == Some(true) {
                " (modified)"
            } else {
                ""
            },
            self.config.iterations,
            self.config.iterations,
            self.config.mem_mib,
        );
        for (title, table) in self.tables() {
            let _ = writeln!(s, "{title}\n\n{}", table.render_markdown());
        }
        for line in self.findings() {
            let _ = writeln!(s, "- {line}");
        }
        s
    }

    /// `results.json`'s text: the report as pretty-printed JSON.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// `summary.csv`: one row per function.
    pub fn summary_csv(&self) -> String {
        let mut w = Csv::new(&[
            "function",
            "file_median_ms",
            "file_p90_ms",
            "lazy_median_ms",
            "lazy_p90_ms",
            "reap_median_ms",
            "reap_p90_ms",
            "warm_median_ms",
            "warm_p90_ms",
            "speedup_file_to_reap",
            "speedup_lazy_to_reap",
            "reap_over_warm",
            "reap_restore_ms",
            "reap_fetch_ms",
            "reap_install_ms",
            "reap_invoke_ms",
            "file_restore_ms",
            "file_invoke_ms",
            "lazy_restore_ms",
            "lazy_invoke_ms",
            "lazy_faults_lazy",
            "lazy_faults_reap",
            "host_faults_file",
            "host_faults_reap",
            "ws_pages",
            "ws_mib",
            "ws_pct_guest_memory",
            "ws_file_bytes",
            "floor_ms",
            "reap_over_floor",
        ]);
        for f in &self.functions {
            let s = &f.summary;
            let floor = s.floor.as_ref();
            w.row(&[
                f.run.name.clone(),
                num(s.file.latency_ms.median),
                num(s.file.latency_ms.p90),
                num(s.lazy.latency_ms.median),
                num(s.lazy.latency_ms.p90),
                num(s.reap.latency_ms.median),
                num(s.reap.latency_ms.p90),
                num(s.warm_ms.median),
                num(s.warm_ms.p90),
                num(s.speedup_file_to_reap),
                num(s.speedup_lazy_to_reap),
                num(s.reap_over_warm),
                num(s.reap.restore_ms),
                num(s.reap.fetch_ms),
                num(s.reap.install_ms),
                num(s.reap.invoke_ms),
                num(s.file.restore_ms),
                num(s.file.invoke_ms),
                num(s.lazy.restore_ms),
                num(s.lazy.invoke_ms),
                num(s.lazy.lazy_faults),
                num(s.reap.lazy_faults),
                num(s.file.host_minor_faults + s.file.host_major_faults),
                num(s.reap.host_minor_faults + s.reap.host_major_faults),
                f.run.ws.pages.to_string(),
                num(f.run.ws.mib),
                num(f.run.ws.pct_guest_memory),
                f.run.ws.file_bytes.to_string(),
                floor.map_or(String::new(), |fl| num(fl.floor_ms)),
                floor.map_or(String::new(), |fl| num(fl.reap_over_floor)),
            ]);
        }
        w.finish()
    }

    /// `samples.csv`: every measured cold start and warm invocation.
    pub fn samples_csv(&self) -> String {
        let mut w = Csv::new(&SAMPLE_COLUMNS);
        for f in &self.functions {
            let mut seen = std::collections::HashMap::<MemoryMode, usize>::new();
            for s in &f.run.cold {
                let i = seen.entry(s.mode).or_default();
                w.row(&sample_row(&f.run.name, s.mode.name(), *i, None, s));
                *i += 1;
            }
            for (i, s) in f.run.warm.iter().enumerate() {
                w.row(&warm_row(&f.run.name, i, s));
            }
        }
        w.finish()
    }

    /// `sweep.csv`: every cold start of the concurrency sweep.
    pub fn sweep_csv(&self) -> Option<String> {
        let sweep = self.sweep.as_ref()?;
        let mut w = Csv::new(&SAMPLE_COLUMNS);
        for b in &sweep.batches {
            for s in &b.samples {
                w.row(&sample_row(
                    &sweep.function,
                    b.mode.name(),
                    b.repetition,
                    Some(b.concurrency),
                    s,
                ));
            }
        }
        for (i, s) in sweep.warm.iter().enumerate() {
            w.row(&warm_row(&sweep.function, i, s));
        }
        Some(w.finish())
    }
}

const SAMPLE_COLUMNS: [&str; 16] = [
    "function",
    "mode",
    "iteration",
    "concurrency",
    "latency_us",
    "restore_us",
    "fetch_us",
    "install_us",
    "invoke_us",
    "restore_lazy_faults",
    "lazy_faults",
    "lazy_faults_zero",
    "prefetched_pages",
    "host_minor_faults",
    "host_major_faults",
    "warm",
];

fn sample_row(
    function: &str,
    mode: &str,
    iteration: usize,
    concurrency: Option<usize>,
    s: &ColdSample,
) -> Vec<String> {
    vec![
        function.to_owned(),
        mode.to_owned(),
        iteration.to_string(),
        concurrency.unwrap_or(1).to_string(),
        s.latency_us.to_string(),
        s.restore_us.to_string(),
        s.fetch_us.to_string(),
        s.install_us.to_string(),
        s.invoke_us.to_string(),
        s.restore_lazy_faults.to_string(),
        s.lazy_faults.to_string(),
        s.lazy_faults_zero.to_string(),
        s.prefetched_pages.to_string(),
        s.host_minor_faults.to_string(),
        s.host_major_faults.to_string(),
        "false".into(),
    ]
}

fn warm_row(function: &str, iteration: usize, s: &WarmSample) -> Vec<String> {
    let mut row = vec![String::new(); SAMPLE_COLUMNS.len()];
    row[0] = function.to_owned();
    row[1] = "warm".into();
    row[2] = iteration.to_string();
    row[3] = "1".into();
    row[4] = s.latency_us.to_string();
    row[8] = s.invoke_us.to_string();
    row[15] = "true".into();
    row
}

fn num(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() || s == "-" {
            "0".into()
        } else {
            s.to_owned()
        }
    } else {
        String::new()
    }
}

/// A latency in ms, with precision that suits its size.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn med_p90(s: &Summary) -> String {
    format!("{} ({})", ms(s.median), ms(s.p90))
}

/// A table of text cells, rendered aligned for a terminal or as Markdown.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (padded or cut to the number of columns).
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.headers.len())
            .map(|c| {
                std::iter::once(&self.headers[c])
                    .chain(self.rows.iter().map(|r| &r[c]))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The first column left-aligned, the others right-aligned, two spaces apart.
    pub fn render_text(&self) -> String {
        let widths = self.widths();
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (c, cell) in cells.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if c == 0 {
                    s.push_str(cell);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str("  ");
                    s.push_str(&" ".repeat(pad));
                    s.push_str(cell);
                }
            }
            s.trim_end().to_owned()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }

    /// The table in Markdown: the first column left-aligned, the others right-aligned,
    /// `|` escaped.
    pub fn render_markdown(&self) -> String {
        let esc = |s: &String| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n|{}|\n",
            self.headers.iter().map(esc).collect::<Vec<_>>().join(" | "),
            (0..self.headers.len())
                .map(|c| if c == 0 { "---" } else { "--:" })
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} |",
                r.iter().map(esc).collect::<Vec<_>>().join(" | ")
            );
        }
        out
    }
}

/// A CSV writer (RFC 4180 quoting).
pub struct Csv {
    out: String,
}

impl Csv {
    /// A CSV text with `headers` as its first row.
    pub fn new(headers: &[&str]) -> Csv {
        let mut w = Csv { out: String::new() };
        w.row(&headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
        w
    }

    /// Appends a row.
    pub fn row(&mut self, cells: &[String]) {
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        self.out.push_str(&line.join(","));
        self.out.push('\n');
    }

    /// The CSV text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::WsInfo;
    use crate::run::{AblationSample, InputSensitivity};

    fn cold(mode: MemoryMode, latency_us: u64, lazy_faults: u64) -> ColdSample {
        ColdSample {
            mode,
            latency_us,
            restore_us: latency_us / 4,
            fetch_us: if mode == MemoryMode::Reap { 100 } else { 0 },
            install_us: if mode == MemoryMode::Reap { 50 } else { 0 },
            invoke_us: latency_us / 2,
            restore_lazy_faults: 0,
            lazy_faults,
            lazy_faults_zero: 0,
            prefetched_pages: if mode == MemoryMode::Reap { 40 } else { 0 },
            host_minor_faults: 10,
            host_major_faults: 1,
        }
    }

    fn function_run(name: &str, file_us: u64, lazy_us: u64, reap_us: u64) -> FunctionRun {
        let mut cold_samples = Vec::new();
        for i in 0..3 {
            cold_samples.push(cold(MemoryMode::File, file_us + i * 10, 0));
            cold_samples.push(cold(MemoryMode::Lazy, lazy_us + i * 10, 40));
            cold_samples.push(cold(MemoryMode::Reap, reap_us + i * 10, 2));
        }
        FunctionRun {
            name: name.into(),
            request: "{}".into(),
            guest_memory_bytes: 256 << 20,
            snapshot_data_bytes: 1 << 20,
            boot_ms: 20.0,
            snapshot_ms: 100.0,
            ws: WsInfo {
                pages: 40,
                data_pages: 30,
                zero_pages: 10,
                file_bytes: 1_000_000,
                mib: 40.0 * 4096.0 / (1 << 20) as f64,
                pct_guest_memory: 40.0 * 4096.0 * 100.0 / (256u64 << 20) as f64,
            },
            recording: cold(MemoryMode::Reap, 30_000, 40),
            input_sensitivity: Some(InputSensitivity {
                request: "{}".into(),
                file: (0..3)
                    .map(|i| cold(MemoryMode::File, file_us + i, 0))
                    .collect(),
                reap: (0..3)
                    .map(|i| cold(MemoryMode::Reap, reap_us + i, 3))
                    .collect(),
                reap_served_holes: (0..3)
                    .map(|i| cold(MemoryMode::Reap, reap_us * 3 + i, 50))
                    .collect(),
            }),
            cold: cold_samples,
            ablation: ["no shells", "all on", "all off"]
                .iter()
                .enumerate()
                .flat_map(|(i, v)| {
                    (0..3).map(move |j| AblationSample {
                        variant: (*v).into(),
                        sample: cold(MemoryMode::Reap, reap_us * (i as u64 + 1) + j, 2),
                    })
                })
                .collect(),
            warm: (0..3)
                .map(|i| WarmSample {
                    latency_us: 1000 + i,
                    invoke_us: 900,
                })
                .collect(),
        }
    }

    fn disk() -> DiskResult {
        DiskResult {
            file_mib: 256,
            seq_request_kib: 4096,
            seq_read_mb_s: 1000.0,
            seq_read_passes_mb_s: vec![1000.0],
            rand_4k_read_us: Summary::of(&[70.0, 80.0]).unwrap(),
            rand_4k_read_mean_us: 75.0,
            rand_4k_samples_us: vec![70.0, 80.0],
        }
    }

    fn report() -> Report {
        let env = Environment {
            git_revision: Some("0123456789abcdef".into()),
            git_dirty: Some(false),
            date: iso8601_utc(0),
            host: "h".into(),
            kernel: "k".into(),
            cpu_model: None,
            cpus: 2,
            kvm_module: Some("kvm_pvm".into()),
            reap_version: "0.1.0".into(),
        };
        let config = RunConfig {
            quick: true,
            functions: vec!["a".into(), "b".into()],
            iterations: 3,
            warmup: 1,
            mem_mib: 256,
            sweep_function: Some("a".into()),
            sweep_levels: vec![1, 2],
            disk_probe_mib: 256,
            holes: Holes::Kernel,
            state_cache: true,
            techniques: Techniques::ALL,
            ablation: true,
        };
        let batches = [1usize, 2]
            .into_iter()
            .flat_map(|k| {
                [MemoryMode::File, MemoryMode::Reap].map(|m| SweepBatch {
                    concurrency: k,
                    repetition: 0,
                    mode: m,
                    techniques_on: true,
                    wall_us: 4000,
                    samples: (0..k)
                        .map(|_| cold(m, if m == MemoryMode::File { 8000 } else { 2000 }, 0))
                        .collect(),
                })
            })
            .collect();
        let sweep = SweepReport::new("a".into(), 1, batches, vec![]);
        Report::new(
            env,
            config,
            Some(disk()),
            vec![
                function_run("a", 20_000, 10_000, 2_000),
                function_run("b", 80_000, 40_000, 10_000),
            ],
            Some(sweep),
            12.5,
        )
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(compact_utc(1_700_000_000), "20231114-221320");
    }

    #[test]
    fn summaries_speedups_and_geomean() {
        let r = report();
        let a = &r.functions[0].summary;
        // Medians: file 20.01 ms, reap 2.01 ms, warm 1.001 ms.
        assert!((a.file.latency_ms.median - 20.01).abs() < 1e-9);
        assert!((a.speedup_file_to_reap - 20.01 / 2.01).abs() < 1e-9);
        assert!((a.reap_over_warm - 2.01 / 1.001).abs() < 1e-9);
        assert_eq!(a.fault_reduction_pct, Some(95.0));
        let b = &r.functions[1].summary;
        let expected = (a.speedup_file_to_reap * b.speedup_file_to_reap).sqrt();
        assert!((r.geomean_speedup_file_to_reap.unwrap() - expected).abs() < 1e-9);
        assert_eq!(r.fault_reduction.lazy_mode_faults, 80.0);
        assert_eq!(r.fault_reduction.reap_mode_faults, 4.0);
    }

    #[test]
    fn floor_is_warm_plus_ws_read_at_sequential_bandwidth() {
        let r = report();
        let fl = r.functions[0].summary.floor.as_ref().unwrap();
        // warm median 1.001 ms + 1 MB at 1000 MB/s = 1 ms.
        assert!((fl.floor_ms - 2.001).abs() < 1e-9);
        assert!((fl.reap_over_floor - 2.01 / 2.001).abs() < 1e-9);
    }

    #[test]
    fn sweep_levels_summarize_each_concurrency() {
        let r = report();
        let s = r.sweep.as_ref().unwrap();
        assert_eq!(
            s.levels.iter().map(|l| l.concurrency).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(s.levels[1].file_ms.n, 2);
        assert!((s.levels[0].speedup_file_to_reap - 4.0).abs() < 1e-9);
    }

    #[test]
    fn json_has_the_documented_keys_and_round_trips() {
        let r = report();
        let json = r.to_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        for key in [
            "geomean_speedup_file_to_reap",
            "environment",
            "disk",
            "functions",
            "sweep",
            "fault_reduction",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        for key in ["git_revision", "date", "host", "kernel"] {
            assert!(v["environment"].get(key).is_some(), "{key}");
        }
        let f = &v["functions"][0];
        assert_eq!(f["name"], "a");
        assert_eq!(f["cold"].as_array().unwrap().len(), 9);
        assert_eq!(f["cold"][0]["mode"], "file");
        assert!(
            f["summary"]["reap"]["latency_ms"]["median"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.functions.len(), 2);
        assert_eq!(
            back.geomean_speedup_file_to_reap,
            r.geomean_speedup_file_to_reap
        );
    }

    #[test]
    fn csv_files_have_a_header_and_one_row_per_item() {
        let r = report();
        let summary = r.summary_csv();
        let lines: Vec<_> = summary.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("function,file_median_ms,"));
        let columns = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == columns));
        assert!(lines[1].starts_with("a,20.01,"));

        let samples = r.samples_csv();
        // 2 functions × (9 cold + 3 warm) + header.
        assert_eq!(samples.lines().count(), 25);
        assert!(samples.lines().any(|l| l.starts_with("b,warm,2,1,1002,")));
        let sweep = r.sweep_csv().unwrap();
        // (1 + 2) × 2 modes + header.
        assert_eq!(sweep.lines().count(), 7);
    }

    #[test]
    fn ablation_table_has_a_column_per_variant_and_the_geomean_ratio() {
        let r = report();
        let t = r.ablation_table().unwrap();
        let text = t.render_text();
        let header = text.lines().next().unwrap();
        let columns: Vec<&str> = header
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(columns, ["function", "all on", "no shells", "all off"]);
        // Function a's variants ran at 1x (no shells), 2x (all on) and 3x (all off) of
        // its reap latency: ratios to "all on".
        let geo = text
            .lines()
            .find(|l| l.starts_with("geomean ratio"))
            .unwrap();
        let cells: Vec<&str> = geo.split_whitespace().skip(2).collect();
        assert_eq!(cells, ["1.00x", "0.50x", "1.50x"]);
    }

    #[test]
    fn throughput_is_cold_starts_per_second_per_core() {
        let r = report();
        let text = r.throughput_table().unwrap().render_text();
        // k cold starts in 4 ms on 2 CPUs: 125 k per second per core.
        let one = text
            .lines()
            .find(|l| l.trim_start().starts_with('1'))
            .unwrap();
        assert_eq!(
            one.split_whitespace().collect::<Vec<_>>(),
            ["1", "125", "125"]
        );
        let two = text
            .lines()
            .find(|l| l.trim_start().starts_with('2'))
            .unwrap();
        assert_eq!(
            two.split_whitespace().collect::<Vec<_>>(),
            ["2", "250", "250"]
        );
    }

    #[test]
    fn csv_quotes_fields_that_need_it() {
        let mut w = Csv::new(&["a", "b"]);
        w.row(&["x,y".into(), "say \"hi\"".into()]);
        assert_eq!(w.finish(), "a,b\n\"x,y\",\"say \"\"hi\"\"\"\n");
    }

    #[test]
    fn table_aligns_columns_and_renders_markdown() {
        let mut t = Table::new(&["function", "ms"]);
        t.row(vec!["helloworld".into(), "1.5".into()]);
        t.row(vec!["x".into(), "100".into()]);
        assert_eq!(
            t.render_text(),
            "function     ms\nhelloworld  1.5\nx           100\n"
        );
        assert_eq!(
            t.render_markdown(),
            "| function | ms |\n|---|--:|\n| helloworld | 1.5 |\n| x | 100 |\n"
        );
    }

    #[test]
    fn text_report_names_every_function_and_the_geomean() {
        let text = report().render_text();
        assert!(text.contains("geometric mean speedup file → reap"));
        assert!(text.contains("\na "));
        assert!(text.contains("\nb "));
        assert!(text.contains("Concurrency sweep (a)"));
        assert!(
            report()
                .render_markdown()
                .contains("| function | file ms |")
        );
    }

    #[test]
    fn number_formatting() {
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(0.00001), "0");
        assert_eq!(ms(123.4), "123");
        assert_eq!(ms(12.34), "12.3");
        assert_eq!(ms(1.234), "1.23");
        assert_eq!(ms(0.0401), "0.040");
    }
}
