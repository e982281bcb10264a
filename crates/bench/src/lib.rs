//! `reap bench`: the paper's cold-start measurement on this machine.
//!
//! For each function: deploy (boot to the ready point, snapshot), N warm invocations
//! on the booted instance, one recording cold start (reap mode, which writes the WS
//! file), then rounds of one cold start per memory mode (file, lazy, reap: interleaved,
//! each round starting with the next mode), the snapshot's files evicted from the page
//! cache before each. A cold start is the restore plus the first invocation, timed
//! around both; every one sends the function's first sample request and must answer
//! exactly as the recording cold start did. Unmeasured warm-up rounds come first.
//!
//! The same run measures the disk ([`disk`]) to put each reap cold start beside its
//! floor (warm + WS bytes / sequential bandwidth), and a concurrency sweep (paper
//! Fig. 9): k = 1, 2, 4, 8, 16 cold starts of one function at once, file vs reap.
//!
//! Output directory (default `bench-results/<UTC date-time>`): `results.json` (all
//! raw samples and summaries; see [`report::Report`]), `summary.csv`, `samples.csv`,
//! `sweep.csv`, `results.md` (the tables as Markdown), `cold_starts.{png,svg}`,
//! `sweep.{png,svg}`. The table goes to stdout, progress to stderr.
//!
//! - [`run`]: the measurements; [`disk`]: the disk probe; [`stats`]: median, p90,
//!   geometric mean; [`report`]: summaries, tables, JSON and CSV; [`plot`]: the plots.

#![warn(missing_docs)]

pub mod disk;
pub mod plot;
pub mod progress;
pub mod report;
pub mod run;
pub mod stats;

use reap_error::PathIoError;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use reap_vmm::instance::InstanceError;
use reap_vmm::microvm::DEFAULT_MEM_MIB;
use reap_vmm::snapshot::SnapshotError;

use self::progress::Progress;
use self::report::{Environment, Report, RunConfig, SweepReport};
use self::run::{FunctionSpec, RunParams, Techniques};

/// The paper's ten functions, in its order.
pub const SUITE: [&str; 10] = [
    "helloworld",
    "chameleon",
    "pyaes",
    "image_rotate",
    "json_serdes",
    "lr_serving",
    "cnn_serving",
    "rnn_serving",
    "lr_training",
    "video_processing",
];
/// `--quick`'s functions.
pub const QUICK_SUITE: [&str; 4] = ["helloworld", "pyaes", "json_serdes", "image_rotate"];
/// Measured cold starts per mode, and warm invocations, per function: `--iterations`'s
/// default.
pub const DEFAULT_ITERATIONS: usize = 10;
/// `--iterations`'s default with `--quick`.
pub const QUICK_ITERATIONS: usize = 5;
/// `--sweep-levels`'s default: how many cold starts run at once at each level of the
/// sweep.
pub const DEFAULT_SWEEP_LEVELS: [usize; 5] = [1, 2, 4, 8, 16];
/// `--sweep-levels`'s default with `--quick`.
pub const QUICK_SWEEP_LEVELS: [usize; 3] = [1, 2, 4];
/// Random 4 KiB reads of the disk probe.
const DISK_RANDOM_READS: usize = 2000;
const DISK_SEQ_PASSES: usize = 3;

/// `reap bench`'s command line.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Functions to measure, comma-separated [default: the ten of the suite; with
    /// --quick: helloworld,pyaes,json_serdes,image_rotate].
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub functions: Vec<String>,
    /// Measured cold starts per mode, and warm invocations, per function [default: 10;
    /// with --quick: 5].
    #[arg(long, value_name = "N")]
    pub iterations: Option<usize>,
    /// Unmeasured rounds (one cold start per mode) before the measured ones.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub warmup: usize,
    /// A short run: four functions, 5 iterations, the sweep up to 4 at once.
    #[arg(long)]
    pub quick: bool,
    /// Output directory [default: bench-results/<UTC date-time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Directory of the function binaries [default: the directory of this executable].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Directory holding NAME/requests.jsonl for each function [default: ./functions,
    /// else the workspace's functions/ two levels above --bin-dir]. A function without
    /// one is sent `{}`.
    #[arg(long, value_name = "DIR")]
    pub functions_dir: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEM_MIB)]
    pub mem: u64,
    /// Function of the concurrency sweep.
    #[arg(long, value_name = "NAME", default_value = "helloworld")]
    pub sweep_function: String,
    /// Concurrency levels of the sweep, comma-separated [default: 1,2,4,8,16; with
    /// --quick: 1,2,4].
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    pub sweep_levels: Vec<usize>,
    /// Skip the concurrency sweep.
    #[arg(long)]
    pub no_sweep: bool,
    /// Size of the disk probe file in MiB (0 skips the disk measurement and the floor).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub disk_mib: u64,
    /// Keep the snapshots (OUT/snapshots) instead of removing each after its function.
    #[arg(long)]
    pub keep_snapshots: bool,
    /// Limit in seconds on each function's init and on each invocation.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub timeout: f64,
    /// Have the page server serve the memory file's holes (zero pages) in the lazy and
    /// reap cold starts, instead of leaving them to the kernel: the behaviour without
    /// that technique.
    #[arg(long)]
    pub served_holes: bool,
    /// Decode the snapshot's state file on every cold start instead of reusing the
    /// state this process decoded from the same bytes: the behaviour without that
    /// technique.
    #[arg(long)]
    pub no_state_cache: bool,
    /// Skip the input-sensitivity cold starts (working set recorded with a function's
    /// first sample request, cold starts with its second).
    #[arg(long)]
    pub no_input_sensitivity: bool,
    /// Restores create their KVM VM instead of taking a ready VM shell from the pool:
    /// the behaviour without that technique.
    #[arg(long)]
    pub no_shells: bool,
    /// Install the whole working set before the guest runs, instead of its first pages
    /// and the rest while it runs: the behaviour without that technique.
    #[arg(long)]
    pub no_concurrent_install: bool,
    /// The recording cold start writes the working set before answering, instead of
    /// after, in the background: the behaviour without that technique.
    #[arg(long)]
    pub no_background_record: bool,
    /// Also measure each technique off (the rest on) in interleaved reap cold starts
    /// of every function, recording cold starts with the working set written before
    /// and after the answer, and the sweep with every technique off as well.
    #[arg(long)]
    pub ablation: bool,
}

/// Why `reap bench` failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The command line cannot be used as given.
    #[error("{message}")]
    Usage {
        /// What is wrong, naming the option.
        message: String,
    },
    /// A function's binary is not in the binary directory.
    #[error(
        "function binary {} not found: build the functions with `cargo build --release --workspace`, or pass --bin-dir",
        path.display()
    )]
    MissingBinary {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A step of one function's measurement failed: deploy, an invocation or a cold
    /// start.
    #[error("{function}: {what}")]
    Function {
        /// The function's name.
        function: String,
        /// The step that failed.
        what: &'static str,
        /// The instance's error.
        #[source]
        source: InstanceError,
    },
    /// A snapshot's files could not be evicted from the page cache.
    #[error("{what}")]
    Snapshot {
        /// What failed.
        what: &'static str,
        /// The snapshot's error.
        #[source]
        source: SnapshotError,
    },
    /// A cold start answered differently from the function's recording cold start.
    #[error(
        "{function}: a {mode} cold start answered {got:?}, the recording cold start {expected:?}"
    )]
    WrongAnswer {
        /// The function's name.
        function: String,
        /// The memory mode of the cold start (`file`, `lazy` or `reap`).
        mode: &'static str,
        /// The recording cold start's response (lossy UTF-8, trailing whitespace
        /// removed).
        expected: String,
        /// This cold start's response, likewise.
        got: String,
    },
    /// A file or directory could not be used.
    #[error(transparent)]
    Io(#[from] PathIoError),
    /// The disk probe failed.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// A plot could not be drawn or written.
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    /// The report could not be encoded as JSON.
    #[error("cannot encode the results")]
    Json(#[from] serde_json::Error),
}

/// A run's settings, defaults applied.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// The functions to measure, in order.
    pub functions: Vec<FunctionSpec>,
    /// Guest memory, iterations, warm-up rounds and time limit of each function's run.
    pub params: RunParams,
    /// The sweep's function and its concurrency levels; `None` with `--no-sweep`.
    pub sweep: Option<(FunctionSpec, Vec<usize>)>,
    /// Size of the disk probe file in MiB; 0 skips the disk measurement and the floor.
    pub disk_mib: u64,
    /// Output directory.
    pub out: PathBuf,
    /// Keep the snapshots under `OUT/snapshots` instead of removing each after use.
    pub keep_snapshots: bool,
    /// `--quick` was given (recorded in the report).
    pub quick: bool,
    /// Reuse decoded state files across cold starts (off with `--no-state-cache`).
    pub state_cache: bool,
}

impl BenchPlan {
    /// Applies the defaults to `args` (`--quick`'s with `--quick`), checks the values,
    /// and finds each function's binary and first sample request; `started` names the
    /// default output directory.
    pub fn from_args(args: &BenchArgs, started: SystemTime) -> Result<BenchPlan, BenchError> {
        let usage = |message: String| BenchError::Usage { message };
        let names: Vec<String> = if !args.functions.is_empty() {
            args.functions.clone()
        } else if args.quick {
            QUICK_SUITE.map(String::from).to_vec()
        } else {
            SUITE.map(String::from).to_vec()
        };
        if let Some(bad) = names
            .iter()
            .find(|n| n.is_empty() || n.contains('/') || n.starts_with('.'))
        {
            return Err(usage(format!(
                "--functions: {bad:?} is not a function name"
            )));
        }
        let iterations = args.iterations.unwrap_or(if args.quick {
            QUICK_ITERATIONS
        } else {
            DEFAULT_ITERATIONS
        });
        if iterations == 0 {
            return Err(usage("--iterations must be at least 1".into()));
        }
        let limit = Duration::try_from_secs_f64(args.timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| usage("--timeout must be a positive number of seconds".into()))?;
        let bin_dir = match &args.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf))
                .ok_or_else(|| {
                    usage("cannot tell where this executable is: pass --bin-dir".into())
                })?,
        };
        let functions_dir = args.functions_dir.clone().or_else(|| {
            // ./functions, else <workspace>/functions for <workspace>/target/<profile>.
            [
                PathBuf::from("functions"),
                bin_dir.join("..").join("..").join("functions"),
            ]
            .into_iter()
            .find(|d| d.is_dir())
        });
        let spec = |name: &str| -> Result<FunctionSpec, BenchError> {
            let binary = bin_dir.join(name);
            if !binary.is_file() {
                return Err(BenchError::MissingBinary { path: binary });
            }
            let mut requests = sample_requests(functions_dir.as_deref(), name)?.into_iter();
            Ok(FunctionSpec {
                name: name.to_owned(),
                binary,
                rootfs: None,
                request: requests.next().unwrap_or_else(|| "{}".into()),
                second_request: requests.next(),
            })
        };
        let functions = names.iter().map(|n| spec(n)).collect::<Result<_, _>>()?;
        let sweep = if args.no_sweep {
            None
        } else {
            let levels = if !args.sweep_levels.is_empty() {
                args.sweep_levels.clone()
            } else if args.quick {
                QUICK_SWEEP_LEVELS.to_vec()
            } else {
                DEFAULT_SWEEP_LEVELS.to_vec()
            };
            if levels.iter().any(|&k| k == 0 || k > 256) {
                return Err(usage("--sweep-levels must be between 1 and 256".into()));
            }
            Some((spec(&args.sweep_function)?, levels))
        };
        let out = args.out.clone().unwrap_or_else(|| {
            Path::new("bench-results").join(report::compact_utc(report::unix_secs(started)))
        });
        Ok(BenchPlan {
            functions,
            params: RunParams {
                mem_mib: args.mem,
                iterations,
                warmup: args.warmup,
                limit,
                holes: if args.served_holes {
                    reap_pager::Holes::Served
                } else {
                    reap_pager::Holes::Kernel
                },
                input_sensitivity: !args.no_input_sensitivity,
                techniques: Techniques {
                    kernel_holes: !args.served_holes,
                    state_cache: !args.no_state_cache,
                    shells: !args.no_shells,
                    concurrent_install: !args.no_concurrent_install,
                    background_record: !args.no_background_record,
                },
                ablation: args.ablation,
            },
            sweep,
            disk_mib: args.disk_mib,
            out,
            keep_snapshots: args.keep_snapshots,
            quick: args.quick,
            state_cache: !args.no_state_cache,
        })
    }
}

/// The non-empty lines of `DIR/NAME/requests.jsonl` (none if there is no such file).
fn sample_requests(functions_dir: Option<&Path>, name: &str) -> Result<Vec<String>, BenchError> {
    let Some(dir) = functions_dir else {
        return Ok(Vec::new());
    };
    let path = dir.join(name).join("requests.jsonl");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(BenchError::Io(PathIoError {
            path,
            what: "cannot read the sample requests",
            source,
        })),
    }
}

/// What a run wrote.
#[derive(Debug)]
pub struct Outputs {
    /// Everything measured, as written to `results.json`.
    pub report: Report,
    /// The output directory.
    pub dir: PathBuf,
    /// The files written, in the order they were written.
    pub files: Vec<PathBuf>,
}

/// Runs the whole benchmark of `plan` and writes its files.
pub fn run(plan: &BenchPlan, show_progress: bool) -> Result<Outputs, BenchError> {
    plan.params.techniques.apply();
    let started_at = SystemTime::now();
    let started = Instant::now();
    let environment = Environment::detect(started_at);
    let io_err = |path: &Path, what| {
        let path = path.to_path_buf();
        move |source| BenchError::Io(PathIoError { path, what, source })
    };
    std::fs::create_dir_all(&plan.out).map_err(io_err(&plan.out, "cannot create"))?;
    let snapshots = plan.out.join("snapshots");

    let p = &plan.params;
    let steps = plan
        .functions
        .iter()
        .map(|f| run::function_steps(f, p))
        .sum::<u64>()
        + u64::from(plan.disk_mib > 0)
        + plan.sweep.as_ref().map_or(0, |(_, levels)| {
            run::sweep_steps(levels, p.iterations, p.ablation)
        });
    let progress = Progress::new(steps, show_progress);

    let disk = if plan.disk_mib > 0 {
        progress.set_message("disk: sequential and random O_DIRECT reads");
        let d = disk::measure(&plan.out, plan.disk_mib, DISK_SEQ_PASSES, DISK_RANDOM_READS)?;
        progress.inc();
        progress.println(&format!(
            "disk: sequential {:.0} MB/s, 4 KiB random {:.0} µs",
            d.seq_read_mb_s, d.rand_4k_read_us.median
        ));
        Some(d)
    } else {
        None
    };

    let mut runs = Vec::new();
    for spec in &plan.functions {
        let dir = snapshots.join(&spec.name);
        let result = run::function(spec, &dir, p, &progress);
        if !plan.keep_snapshots {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let r = result?;
        if let Some(s) = report::FunctionSummary::of(&r, disk.as_ref()) {
            progress.println(&format!(
                "{}: file {} ms, lazy {} ms, reap {} ms, warm {} ms (medians); WS {:.2} MiB",
                r.name,
                report::ms(s.file.latency_ms.median),
                report::ms(s.lazy.latency_ms.median),
                report::ms(s.reap.latency_ms.median),
                report::ms(s.warm_ms.median),
                r.ws.mib
            ));
        }
        runs.push(r);
    }

    let sweep = match &plan.sweep {
        Some((spec, levels)) => {
            let dir = snapshots.join(format!("sweep-{}", spec.name));
            let result = run::sweep(spec, &dir, levels, p.iterations, p, &progress);
            if !plan.keep_snapshots {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let (batches, warm) = result?;
            Some(SweepReport::new(
                spec.name.clone(),
                p.iterations,
                batches,
                warm,
            ))
        }
        None => None,
    };
    if !plan.keep_snapshots {
        let _ = std::fs::remove_dir(&snapshots);
    }
    progress.set_message("writing results and plots");

    let config = RunConfig {
        quick: plan.quick,
        functions: plan.functions.iter().map(|f| f.name.clone()).collect(),
        iterations: p.iterations,
        warmup: p.warmup,
        mem_mib: p.mem_mib,
        sweep_function: plan.sweep.as_ref().map(|(s, _)| s.name.clone()),
        sweep_levels: plan
            .sweep
            .as_ref()
            .map(|(_, l)| l.clone())
            .unwrap_or_default(),
        disk_probe_mib: plan.disk_mib,
        holes: p.holes,
        state_cache: plan.state_cache,
        techniques: p.techniques,
        ablation: p.ablation,
    };
    let report = Report::new(
        environment,
        config,
        disk,
        runs,
        sweep,
        started.elapsed().as_secs_f64(),
    );
    let files = write_outputs(&report, &plan.out)?;
    progress.finish();
    Ok(Outputs {
        report,
        dir: plan.out.clone(),
        files,
    })
}

/// Writes the JSON, CSV and Markdown files and the plots into `dir`.
pub fn write_outputs(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let mut files = Vec::new();
    let mut write = |name: &str, text: String| -> Result<(), BenchError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| {
            BenchError::Io(PathIoError {
                path: path.clone(),
                what: "cannot write",
                source,
            })
        })?;
        files.push(path);
        Ok(())
    };
    write("results.json", report.to_json()? + "\n")?;
    write("summary.csv", report.summary_csv())?;
    write("samples.csv", report.samples_csv())?;
    if let Some(csv) = report.sweep_csv() {
        write("sweep.csv", csv)?;
    }
    write("results.md", report.render_markdown())?;

    if !report.functions.is_empty() {
        let groups: Vec<plot::BarGroup> = report
            .functions
            .iter()
            .map(|f| plot::BarGroup {
                name: f.run.name.clone(),
                file_ms: f.summary.file.latency_ms.median,
                lazy_ms: f.summary.lazy.latency_ms.median,
                reap_ms: f.summary.reap.latency_ms.median,
                warm_ms: f.summary.warm_ms.median,
            })
            .collect();
        let title = format!(
            "Cold starts, page cache evicted: median of {} (warm marked); geomean file/reap {}",
            report.config.iterations,
            report
                .geomean_speedup_file_to_reap
                .map_or("-".into(), |g| format!("{g:.1}x"))
        );
        files.extend(plot::cold_starts(
            &groups,
            &title,
            &dir.join("cold_starts"),
        )?);
    }
    if let Some(sweep) = report.sweep.as_ref().filter(|s| !s.levels.is_empty()) {
        let points: Vec<plot::SweepPoint> = sweep
            .levels
            .iter()
            .map(|l| plot::SweepPoint {
                concurrency: l.concurrency,
                file_ms: l.file_ms.median,
                reap_ms: l.reap_ms.median,
            })
            .collect();
        let title = format!(
            "{}: concurrent cold starts, page cache evicted (median of each)",
            sweep.function
        );
        files.extend(plot::sweep(
            &points,
            sweep.warm_ms.map(|w| w.median),
            &title,
            &dir.join("sweep"),
        )?);
    }
    Ok(files)
}

/// `reap bench`: runs, prints the table to stdout and where the files are to stderr.
pub fn main(args: BenchArgs) -> Result<(), BenchError> {
    let plan = BenchPlan::from_args(&args, SystemTime::now())?;
    let outputs = run(&plan, io::stderr().is_terminal())?;
    print!("{}", outputs.report.render_text());
    println!(
        "\nfinished in {:.0} s; results in {}:",
        outputs.report.duration_s,
        outputs.dir.display()
    );
    for f in &outputs.files {
        println!("  {}", f.display());
    }
    Ok(())
}
