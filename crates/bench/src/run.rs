//! The measurements: deploy a function, record its working set, cold-start it in each
//! memory mode (interleaved, page cache evicted before each), invoke it warm, and
//! cold-start many instances at once (the concurrency sweep).

use reap_error::PathIoError;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::BenchError;
use super::progress::Progress;
use reap_pager::{Holes, ServeOptions};
use reap_vmm::guest_os::fs::RootFs;
use reap_vmm::instance::{Deployed, Instance, InstanceError, MemoryMode};
use reap_vmm::microvm::MicroVmConfig;
use reap_vmm::snapshot::SnapshotDir;

/// The modes a cold start is measured in, in the order of the first round.
pub const MODES: [MemoryMode; 3] = [MemoryMode::File, MemoryMode::Lazy, MemoryMode::Reap];

/// A function to measure.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// The function's name, also its binary's file name and its argv[0] in the guest.
    pub name: String,
    /// Path of the function's binary (a static program; with `rootfs`, the program's
    /// path in the image, for messages).
    pub binary: PathBuf,
    /// The function as a dynamic program in a root file system (Debian's `python3`
    /// with a handler, say); `None`: `binary` is a static program run with argv
    /// `[name]`.
    pub rootfs: Option<RootProgram>,
    /// The request every invocation sends (one line): the first sample request.
    pub request: String,
    /// The second sample request, if the function has one: the input-sensitivity
    /// cold starts send it to a snapshot whose working set was recorded with the first.
    pub second_request: Option<String>,
}

/// A function that is a program in a root file system.
#[derive(Debug, Clone)]
pub struct RootProgram {
    /// The image, the program's path in it and the working directory.
    pub root: RootFs,
    /// argv, including `argv[0]`.
    pub args: Vec<String>,
}

/// What a function run needs besides the function.
#[derive(Debug, Clone)]
pub struct RunParams {
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Measured cold starts per mode, and measured warm invocations.
    pub iterations: usize,
    /// Unmeasured rounds before the measured ones.
    pub warmup: usize,
    /// Limit on the function's init and on each invocation.
    pub limit: Duration,
    /// What the page server does with the memory file's holes in the lazy and reap
    /// cold starts (`--served-holes`: [`Holes::Served`], to measure the technique).
    pub holes: Holes,
    /// Run the input-sensitivity cold starts (functions with a second sample request).
    pub input_sensitivity: bool,
    /// The techniques of the measured cold starts (`holes` and the state cache are set
    /// apart, above and by the caller).
    pub techniques: Techniques,
    /// Run the ablation rounds (each technique off, the rest on) and the sweep before
    /// and after.
    pub ablation: bool,
}

impl RunParams {
    /// The page server's options for the measured cold starts.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions::default()
            .holes(self.holes)
            .concurrent_install(self.techniques.concurrent_install)
    }
}

/// The cold-start techniques that can be turned off, each to measure what it brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Techniques {
    /// Holes of the memory file left to the kernel (off: served by the page server).
    pub kernel_holes: bool,
    /// Decoded state files reused across cold starts.
    pub state_cache: bool,
    /// VM shells: pre-created KVM VMs taken by restores.
    pub shells: bool,
    /// The working set installed concurrently with the guest.
    pub concurrent_install: bool,
    /// The recorded working set written after the answer, in the background.
    pub background_record: bool,
}

impl Techniques {
    /// Every technique on.
    pub const ALL: Techniques = Techniques {
        kernel_holes: true,
        state_cache: true,
        shells: true,
        concurrent_install: true,
        background_record: true,
    };

    /// Every technique off: the cold start of reap before them.
    pub const NONE: Techniques = Techniques {
        kernel_holes: false,
        state_cache: false,
        shells: false,
        concurrent_install: false,
        background_record: false,
    };

    /// Makes this process's cold starts use these techniques (the page server's part is
    /// in [`Techniques::serve_options`]).
    pub fn apply(&self) {
        reap_vmm::snapshot::set_state_cache(self.state_cache);
        reap_vmm::vstate::shell::set_enabled(self.shells);
        reap_vmm::instance::set_background_record(self.background_record);
    }

    /// The page server's options with these techniques.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions::default()
            .holes(if self.kernel_holes {
                Holes::Kernel
            } else {
                Holes::Served
            })
            .concurrent_install(self.concurrent_install)
    }

    /// The ablation's variants of `self`: itself, then each technique it has on turned
    /// off alone, then all off; each with its name.
    pub fn ablation(&self) -> Vec<(&'static str, Techniques)> {
        let mut out = vec![("all on", *self)];
        let off: [(&'static str, TechniqueField); 4] = [
            ("holes served", |t| &mut t.kernel_holes),
            ("no state cache", |t| &mut t.state_cache),
            ("no shells", |t| &mut t.shells),
            ("no concurrent install", |t| &mut t.concurrent_install),
        ];
        for (name, field) in off {
            let mut t = *self;
            if std::mem::replace(field(&mut t), false) {
                out.push((name, t));
            }
        }
        out.push(("all off", Techniques::NONE));
        out
    }
}

/// One technique's switch in [`Techniques`].
type TechniqueField = fn(&mut Techniques) -> &mut bool;

/// The samples and answers of a batch of concurrent cold starts, and its wall time.
type Batch = (Vec<(ColdSample, Vec<u8>)>, Duration);

/// One cold start of the ablation: a variant of the techniques and its sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AblationSample {
    /// The variant's name (`all on`, `no shells`, ..., `all off`; `recording,
    /// background write` and `recording, foreground write` for recording cold starts).
    pub variant: String,
    /// The cold start.
    pub sample: ColdSample,
}

/// One cold start: restore plus the first invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColdSample {
    /// The memory mode of the restore.
    pub mode: MemoryMode,
    /// Wall time from the start of the restore until the invocation returned its
    /// response: restore + fetch + install + invoke.
    pub latency_us: u64,
    /// Restoring the VM (state file, memory setup, VM and vCPU), fetch and install
    /// excluded, µs.
    pub restore_us: u64,
    /// Reading and checking the WS file, µs (0 unless a reap cold start read one).
    pub fetch_us: u64,
    /// Installing the working set into guest memory, µs (0 unless it was prefetched).
    pub install_us: u64,
    /// The first invocation as the instance measures it: from handing the request to
    /// the guest until its response line was written, µs.
    pub invoke_us: u64,
    /// Faults the page server served during the restore, before the guest ran (the
    /// host kernel touching guest memory while the VM is set up).
    #[serde(default)]
    pub restore_lazy_faults: u64,
    /// Faults the page server served during the invocation (lazy and reap modes).
    pub lazy_faults: u64,
    /// Of `lazy_faults`, those served with a zero page, without a read.
    pub lazy_faults_zero: u64,
    /// Pages of the WS file installed, before the guest ran or (concurrent install)
    /// while it ran, data and zero pages (0 unless the working set was prefetched).
    pub prefetched_pages: u64,
    /// Page faults the host kernel counted on the vCPU thread during restore and
    /// invocation (guest memory faults included; in file mode, the kernel's own
    /// faults on the mapped memory file).
    pub host_minor_faults: u64,
    /// Major page faults (ones that waited for a read), counted like
    /// `host_minor_faults`.
    pub host_major_faults: u64,
}

/// One warm invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmSample {
    /// Wall time around the invocation.
    pub latency_us: u64,
    /// The instance's own measure: until the response line was written.
    pub invoke_us: u64,
}

/// The working set recorded by the first cold start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WsInfo {
    /// Pages in the working set.
    pub pages: u64,
    /// Pages whose contents the WS file holds (the rest are zero pages).
    pub data_pages: u64,
    /// Pages of the working set that are zero pages: `pages - data_pages`.
    pub zero_pages: u64,
    /// Bytes of the WS file: what a prefetching cold start reads.
    pub file_bytes: u64,
    /// The working set's size in guest memory: pages × 4 KiB, in MiB.
    pub mib: f64,
    /// The working set's share of guest memory, %.
    pub pct_guest_memory: f64,
}

/// Everything measured for one function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionRun {
    /// The function's name.
    pub name: String,
    /// The request every invocation sent (one line).
    pub request: String,
    /// Size of the guest memory, bytes.
    pub guest_memory_bytes: u64,
    /// Bytes of the snapshot's memory file that hold data (not holes).
    pub snapshot_data_bytes: u64,
    /// Boot until the ready point.
    pub boot_ms: f64,
    /// Writing the snapshot, ms.
    pub snapshot_ms: f64,
    /// The working set the recording cold start wrote.
    pub ws: WsInfo,
    /// The cold start that recorded the working set.
    pub recording: ColdSample,
    /// Measured cold starts, in the order they ran.
    pub cold: Vec<ColdSample>,
    /// Measured warm invocations on the booted instance, in the order they ran (after
    /// one unmeasured invocation).
    pub warm: Vec<WarmSample>,
    /// Cold starts with the second sample request against the working set recorded
    /// with the first (`None` without a second request or with
    /// `--no-input-sensitivity`).
    #[serde(default)]
    pub input_sensitivity: Option<InputSensitivity>,
    /// The ablation's reap cold starts, in the order they ran (empty without
    /// `--ablation`).
    #[serde(default)]
    pub ablation: Vec<AblationSample>,
}

/// The paper's input-sensitivity experiment: the working set is recorded with the
/// function's first sample request, the cold starts send its second, so they may touch
/// memory the working set does not hold. Interleaved rounds of file, reap (holes left
/// to the kernel) and reap with the holes served by the page server (a copy of the
/// snapshot whose working set was recorded that way: the behaviour without the
/// technique).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputSensitivity {
    /// The request the cold starts send.
    pub request: String,
    /// `file` cold starts.
    pub file: Vec<ColdSample>,
    /// `reap` cold starts, holes left to the kernel.
    pub reap: Vec<ColdSample>,
    /// `reap` cold starts with every hole served by the page server (its working set
    /// recorded that way too).
    pub reap_served_holes: Vec<ColdSample>,
}

/// One level of the concurrency sweep: `concurrency` cold starts at once, repeated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepBatch {
    /// How many cold starts ran at once.
    pub concurrency: usize,
    /// Which repetition of the level this batch is, from 0.
    pub repetition: usize,
    /// The memory mode of all its cold starts (file or reap).
    pub mode: MemoryMode,
    /// The techniques were all on (`true`) or all off (the sweep "before", with
    /// `--ablation`).
    #[serde(default = "yes")]
    pub techniques_on: bool,
    /// Wall time of the batch: from the release of its threads until the last one had
    /// its answer, µs.
    #[serde(default)]
    pub wall_us: u64,
    /// One sample per cold start of the batch, in thread order.
    pub samples: Vec<ColdSample>,
}

fn yes() -> bool {
    true
}

/// Boots `spec` and snapshots it into `dir`.
fn deploy(
    spec: &FunctionSpec,
    dir: &SnapshotDir,
    params: &RunParams,
) -> Result<Deployed, BenchError> {
    let mut config = MicroVmConfig {
        mem_mib: params.mem_mib,
        args: vec![spec.name.clone()],
        env: Vec::new(),
        ..Default::default()
    };
    let image = match &spec.rootfs {
        None => std::fs::read(&spec.binary).map_err(|source| {
            BenchError::Io(PathIoError {
                path: spec.binary.clone(),
                what: "cannot read the function binary",
                source,
            })
        })?,
        Some(program) => {
            config.args.clone_from(&program.args);
            config.rootfs = Some(program.root.clone());
            config.read_program().map_err(|e| {
                function_err(
                    &spec.name,
                    "cannot read its program from the root file system",
                )(e.into())
            })?
        }
    };
    Instance::deploy(
        &image,
        &config,
        Box::new(std::io::sink()),
        Some(params.limit),
        dir,
    )
    .map_err(function_err(
        &spec.name,
        "cannot boot to its ready point and snapshot",
    ))
}

fn function_err<'a>(
    function: &'a str,
    what: &'static str,
) -> impl FnOnce(InstanceError) -> BenchError + 'a {
    move |source| BenchError::Function {
        function: function.to_owned(),
        what,
        source,
    }
}

/// Page faults counted for the calling thread: (minor, major).
fn thread_faults() -> (u64, u64) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the buffer, which is large enough and
    // writable; RUSAGE_THREAD names the calling thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if rc != 0 {
        return (0, 0);
    }
    // SAFETY: zero-initialized, then filled by the successful call; all fields are
    // plain integers.
    let usage = unsafe { usage.assume_init() };
    (usage.ru_minflt as u64, usage.ru_majflt as u64)
}

/// One cold start from `dir` in `mode`: restore, then the first invocation with
/// `request`. The caller evicts the page cache first. Returns the figures, the
/// response and the instance, which the caller drops once the clock has stopped.
pub fn cold_start(
    dir: &SnapshotDir,
    mode: MemoryMode,
    request: &[u8],
    limit: Duration,
    options: ServeOptions,
) -> Result<(ColdSample, Vec<u8>, Instance), InstanceError> {
    let (minor0, major0) = thread_faults();
    let started = Instant::now();
    let mut instance = Instance::restore_with(dir, mode, Box::new(std::io::sink()), options)?;
    let (response, invocation) = instance.invoke(request, Some(limit))?;
    let latency = started.elapsed();
    let (minor1, major1) = thread_faults();
    let report = instance
        .cold_start_report(&invocation)
        .ok_or(InstanceError::NotReady)?;
    let c = &report.cold_start;
    let sample = ColdSample {
        mode,
        latency_us: latency.as_micros() as u64,
        restore_us: c.restore_us,
        fetch_us: c.fetch_us,
        install_us: c.install_us,
        invoke_us: invocation.invoke_us,
        restore_lazy_faults: c.restore_lazy_faults,
        lazy_faults: invocation.lazy_faults,
        lazy_faults_zero: invocation.lazy_faults_zero,
        prefetched_pages: c.prefetched_pages,
        host_minor_faults: minor1.saturating_sub(minor0),
        host_major_faults: major1.saturating_sub(major0),
    };
    Ok((sample, response, instance))
}

/// The recording cold start from `dir` (reap mode, no WS file yet), page cache
/// evicted first: its figures and its answer, which later cold starts must give.
fn record(
    dir: &SnapshotDir,
    function: &str,
    request: &[u8],
    limit: Duration,
    options: ServeOptions,
) -> Result<(ColdSample, Vec<u8>), BenchError> {
    evict(dir)?;
    let (sample, response, _) = cold_start(dir, MemoryMode::Reap, request, limit, options)
        .map_err(function_err(function, "recording cold start failed"))?;
    Ok((sample, response))
}

fn evict(dir: &SnapshotDir) -> Result<(), BenchError> {
    dir.evict_from_page_cache()
        .map_err(|source| BenchError::Snapshot {
            what: "cannot evict the snapshot from the page cache",
            source,
        })
}

/// The order of the modes in round `round`: each round starts with the next mode, so
/// that no mode always runs first (right after the previous function's work) or
/// always right after the same other mode.
pub fn round_order(round: usize) -> [MemoryMode; 3] {
    let mut order = MODES;
    order.rotate_left(round % MODES.len());
    order
}

/// Measures one function: deploy into `snapshot_dir`, warm invocations on the booted
/// instance, the recording cold start, then `warmup + iterations` rounds of one cold
/// start per mode.
pub fn function(
    spec: &FunctionSpec,
    snapshot_dir: &Path,
    params: &RunParams,
    progress: &Progress,
) -> Result<FunctionRun, BenchError> {
    let name = spec.name.as_str();
    let request = spec.request.as_bytes();
    let dir = SnapshotDir::new(snapshot_dir);

    progress.set_message(format!("{name}: deploy"));
    let deployed = deploy(spec, &dir, params)?;
    let (booted, snapshotted) = (deployed.boot, deployed.snapshot);
    let (memory_len, data_bytes) = (deployed.state.memory_len, deployed.state.memory_data_bytes);
    let mut warm_instance = deployed.instance;
    progress.inc();

    // Warm: the booted instance, one unmeasured invocation first.
    progress.set_message(format!("{name}: warm"));
    let mut warm = Vec::with_capacity(params.iterations);
    for i in 0..=params.iterations {
        let started = Instant::now();
        let (_, inv) = warm_instance
            .invoke(request, Some(params.limit))
            .map_err(function_err(name, "warm invocation failed"))?;
        let latency = started.elapsed();
        if i > 0 {
            warm.push(WarmSample {
                latency_us: latency.as_micros() as u64,
                invoke_us: inv.invoke_us,
            });
        }
        progress.inc();
    }
    drop(warm_instance);

    // The recording cold start (reap mode, no WS file yet).
    progress.set_message(format!("{name}: recording cold start"));
    let (recording, expected) = record(&dir, name, request, params.limit, params.serve_options())?;
    let ws = ws_info(&dir, memory_len)?;
    progress.inc();

    let rounds = params.warmup + params.iterations;
    let mut cold = Vec::with_capacity(params.iterations * MODES.len());
    for round in 0..rounds {
        for mode in round_order(round) {
            progress.set_message(format!(
                "{name}: {} cold start {}/{}{}",
                mode.name(),
                round + 1,
                rounds,
                if round < params.warmup {
                    " (warm-up)"
                } else {
                    ""
                }
            ));
            evict(&dir)?;
            let (sample, response, instance) =
                cold_start(&dir, mode, request, params.limit, params.serve_options())
                    .map_err(function_err(name, "cold start failed"))?;
            drop(instance);
            if response != expected {
                return Err(BenchError::WrongAnswer {
                    function: name.to_owned(),
                    mode: mode.name(),
                    expected: String::from_utf8_lossy(&expected).trim_end().to_owned(),
                    got: String::from_utf8_lossy(&response).trim_end().to_owned(),
                });
            }
            if round >= params.warmup {
                cold.push(sample);
            }
            progress.inc();
        }
    }

    let ablation = if params.ablation {
        let r = ablation(spec, &dir, &expected, params, progress);
        params.techniques.apply();
        r?
    } else {
        Vec::new()
    };

    let input_sensitivity = match (&spec.second_request, params.input_sensitivity) {
        (Some(second), true) => Some(input_sensitivity(spec, &dir, second, params, progress)?),
        _ => None,
    };

    Ok(FunctionRun {
        name: name.to_owned(),
        request: spec.request.clone(),
        guest_memory_bytes: memory_len,
        snapshot_data_bytes: data_bytes,
        boot_ms: booted.as_secs_f64() * 1e3,
        snapshot_ms: snapshotted.as_secs_f64() * 1e3,
        ws,
        recording,
        cold,
        warm,
        input_sensitivity,
        ablation,
    })
}

/// The ablation of `spec` from `dir` (working set recorded): `warmup + iterations`
/// rounds, each one reap cold start per variant of the techniques (the order rotating
/// from round to round), then one recording cold start with the working set written in
/// the background and one with it written before the answer (the WS file removed
/// before each). Leaves the techniques as the variant last run: the caller applies its
/// own again.
fn ablation(
    spec: &FunctionSpec,
    dir: &SnapshotDir,
    expected: &[u8],
    params: &RunParams,
    progress: &Progress,
) -> Result<Vec<AblationSample>, BenchError> {
    let name = spec.name.as_str();
    let request = spec.request.as_bytes();
    let variants = params.techniques.ablation();
    let rounds = params.warmup + params.iterations;
    let mut out = Vec::new();
    let check = |mode: MemoryMode, response: &[u8]| {
        if response == expected {
            return Ok(());
        }
        Err(BenchError::WrongAnswer {
            function: name.to_owned(),
            mode: mode.name(),
            expected: String::from_utf8_lossy(expected).trim_end().to_owned(),
            got: String::from_utf8_lossy(response).trim_end().to_owned(),
        })
    };
    for round in 0..rounds {
        for i in 0..variants.len() {
            let (label, t) = variants[(i + round) % variants.len()];
            progress.set_message(format!("{name}: ablation, {label} {}/{rounds}", round + 1));
            t.apply();
            evict(dir)?;
            let (sample, response, instance) = cold_start(
                dir,
                MemoryMode::Reap,
                request,
                params.limit,
                t.serve_options(),
            )
            .map_err(function_err(name, "ablation cold start failed"))?;
            drop(instance);
            check(MemoryMode::Reap, &response)?;
            if round >= params.warmup {
                out.push(AblationSample {
                    variant: label.to_owned(),
                    sample,
                });
            }
        }
        for background in [round % 2 == 0, round % 2 != 0] {
            let label = if background {
                "recording, background write"
            } else {
                "recording, foreground write"
            };
            progress.set_message(format!("{name}: ablation, {label} {}/{rounds}", round + 1));
            let t = Techniques {
                background_record: background,
                ..params.techniques
            };
            t.apply();
            dir.drop_working_set()
                .map_err(|source| BenchError::Snapshot {
                    what: "cannot remove the working set",
                    source,
                })?;
            evict(dir)?;
            let (sample, response, instance) = cold_start(
                dir,
                MemoryMode::Reap,
                request,
                params.limit,
                t.serve_options(),
            )
            .map_err(function_err(name, "ablation recording cold start failed"))?;
            // Waits for the background write.
            drop(instance);
            check(MemoryMode::Reap, &response)?;
            if round >= params.warmup {
                out.push(AblationSample {
                    variant: label.to_owned(),
                    sample,
                });
            }
        }
        progress.inc();
    }
    Ok(out)
}

/// Rounds of the input-sensitivity experiment: as many as the main rounds, unmeasured
/// ones first.
fn input_rounds(params: &RunParams) -> usize {
    params.warmup + params.iterations
}

/// The input-sensitivity cold starts of `spec` from `dir`, whose working set was
/// recorded with the first request (see [`InputSensitivity`]).
fn input_sensitivity(
    spec: &FunctionSpec,
    dir: &SnapshotDir,
    request: &str,
    params: &RunParams,
    progress: &Progress,
) -> Result<InputSensitivity, BenchError> {
    let name = spec.name.as_str();
    // A second snapshot directory with the same state, memory and checksums (hard
    // links), whose working set is recorded with the holes served, as without the
    // technique.
    let served_path = PathBuf::from(format!("{}-served-holes", dir.dir.display()));
    let served = SnapshotDir::new(&served_path);
    let _ = std::fs::remove_dir_all(&served_path);
    std::fs::create_dir_all(&served_path)
        .map_err(PathIoError::on(&served_path, "cannot create"))?;
    for file in [dir.state(), dir.memory(), dir.sums()] {
        let link = served_path.join(file.file_name().unwrap_or_default());
        std::fs::hard_link(&file, &link).map_err(PathIoError::on(&link, "cannot link"))?;
    }
    let result = (|| {
        let served_options = ServeOptions::default().holes(Holes::Served);
        progress.set_message(format!(
            "{name}: input sensitivity, recording (holes served)"
        ));
        record(
            &served,
            name,
            spec.request.as_bytes(),
            params.limit,
            served_options.clone(),
        )?;
        progress.inc();
        let mut out = InputSensitivity {
            request: request.to_owned(),
            file: Vec::new(),
            reap: Vec::new(),
            reap_served_holes: Vec::new(),
        };
        let mut expected: Option<Vec<u8>> = None;
        let rounds = input_rounds(params);
        for round in 0..rounds {
            for variant in 0..3usize {
                let variant = (variant + round) % 3;
                let (d, mode, options, label) = match variant {
                    0 => (dir, MemoryMode::File, params.serve_options(), "file"),
                    1 => (dir, MemoryMode::Reap, ServeOptions::default(), "reap"),
                    _ => (
                        &served,
                        MemoryMode::Reap,
                        served_options.clone(),
                        "reap, holes served",
                    ),
                };
                progress.set_message(format!(
                    "{name}: input sensitivity, {label} cold start {}/{rounds}",
                    round + 1
                ));
                evict(d)?;
                let (sample, response, instance) =
                    cold_start(d, mode, request.as_bytes(), params.limit, options)
                        .map_err(function_err(name, "input-sensitivity cold start failed"))?;
                drop(instance);
                match &expected {
                    None => expected = Some(response),
                    Some(e) if *e != response => {
                        return Err(BenchError::WrongAnswer {
                            function: name.to_owned(),
                            mode: mode.name(),
                            expected: String::from_utf8_lossy(e).trim_end().to_owned(),
                            got: String::from_utf8_lossy(&response).trim_end().to_owned(),
                        });
                    }
                    Some(_) => {}
                }
                if round >= params.warmup {
                    match variant {
                        0 => out.file.push(sample),
                        1 => out.reap.push(sample),
                        _ => out.reap_served_holes.push(sample),
                    }
                }
                progress.inc();
            }
        }
        Ok(out)
    })();
    let _ = std::fs::remove_dir_all(&served_path);
    result
}

/// Progress steps of [`function`].
pub fn function_steps(spec: &FunctionSpec, params: &RunParams) -> u64 {
    let rounds = (params.warmup + params.iterations) as u64;
    let input = if spec.second_request.is_some() && params.input_sensitivity {
        1 + 3 * input_rounds(params) as u64
    } else {
        0
    };
    let ablation = if params.ablation { rounds } else { 0 };
    1 + (params.iterations as u64 + 1) + 1 + rounds * MODES.len() as u64 + input + ablation
}

fn ws_info(dir: &SnapshotDir, memory_len: u64) -> Result<WsInfo, BenchError> {
    let path = dir.working_set().ok_or_else(|| {
        BenchError::Io(PathIoError {
            path: dir.dir.clone(),
            what: "the recording cold start left no working-set file",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    })?;
    let memory = reap_pager::memfile::MemoryFile::open(dir.memory()).map_err(|e| {
        BenchError::Io(PathIoError {
            path: dir.memory(),
            what: "cannot open the memory file",
            source: std::io::Error::other(e),
        })
    })?;
    let ws = reap_pager::ws::WorkingSet::load(&path, &memory, reap_pager::region::PAGE_4K)
        .map_err(|e| {
            BenchError::Io(PathIoError {
                path: path.clone(),
                what: "the recording cold start left no usable working-set file",
                source: std::io::Error::other(e),
            })
        })?;
    let header = ws.header();
    let pages = header.page_count;
    let bytes = pages * reap_pager::region::PAGE_4K;
    Ok(WsInfo {
        pages,
        data_pages: header.data_pages,
        zero_pages: pages - header.data_pages.min(pages),
        file_bytes: header.file_len,
        mib: bytes as f64 / (1u64 << 20) as f64,
        pct_guest_memory: if memory_len == 0 {
            0.0
        } else {
            bytes as f64 * 100.0 / memory_len as f64
        },
    })
}

/// The concurrency sweep: deploys `spec` into `snapshot_dir`, records its working set,
/// then for each level `k`, `repetitions` times and for file and reap mode (alternating
/// which goes first), evicts the page cache and cold-starts `k` instances at once, one
/// per thread, released together. Each thread keeps its instance until all have
/// answered, so that no teardown overlaps a measured cold start.
pub fn sweep(
    spec: &FunctionSpec,
    snapshot_dir: &Path,
    levels: &[usize],
    repetitions: usize,
    params: &RunParams,
    progress: &Progress,
) -> Result<(Vec<SweepBatch>, Vec<WarmSample>), BenchError> {
    let name = spec.name.as_str();
    let request = spec.request.as_bytes();
    let dir = SnapshotDir::new(snapshot_dir);
    progress.set_message(format!("sweep {name}: deploy"));
    let mut warm_instance = deploy(spec, &dir, params)?.instance;
    let mut warm = Vec::new();
    for i in 0..=repetitions {
        let started = Instant::now();
        let (_, inv) = warm_instance
            .invoke(request, Some(params.limit))
            .map_err(function_err(name, "warm invocation failed"))?;
        if i > 0 {
            warm.push(WarmSample {
                latency_us: started.elapsed().as_micros() as u64,
                invoke_us: inv.invoke_us,
            });
        }
    }
    drop(warm_instance);
    let (_, expected) = record(&dir, name, request, params.limit, params.serve_options())?;
    progress.inc();

    let configs: &[bool] = if params.ablation {
        &[true, false]
    } else {
        &[true]
    };
    let mut batches = Vec::new();
    for &k in levels {
        for repetition in 0..repetitions {
            let order = if repetition % 2 == 0 {
                [MemoryMode::File, MemoryMode::Reap]
            } else {
                [MemoryMode::Reap, MemoryMode::File]
            };
            for (mode, on) in order
                .into_iter()
                .flat_map(|m| configs.iter().map(move |&on| (m, on)))
            {
                let mut params = params.clone();
                params.techniques = if on {
                    params.techniques
                } else {
                    Techniques::NONE
                };
                if !on {
                    params.holes = Holes::Served;
                }
                params.techniques.apply();
                let params = &params;
                progress.set_message(format!(
                    "sweep {name}: {k} concurrent, {} {}/{}",
                    mode.name(),
                    repetition + 1,
                    repetitions
                ));
                evict(&dir)?;
                let (samples, wall) = concurrent_cold_starts(&dir, mode, request, k, params)
                    .map_err(function_err(name, "concurrent cold start failed"))?;
                for (_, response) in &samples {
                    if *response != expected {
                        return Err(BenchError::WrongAnswer {
                            function: name.to_owned(),
                            mode: mode.name(),
                            expected: String::from_utf8_lossy(&expected).trim_end().to_owned(),
                            got: String::from_utf8_lossy(response).trim_end().to_owned(),
                        });
                    }
                }
                batches.push(SweepBatch {
                    concurrency: k,
                    repetition,
                    mode,
                    techniques_on: on,
                    wall_us: wall.as_micros() as u64,
                    samples: samples.into_iter().map(|(s, _)| s).collect(),
                });
                progress.inc();
            }
        }
    }
    params.techniques.apply();
    Ok((batches, warm))
}

/// Progress steps of [`sweep`] (`ablation`: before and after).
pub fn sweep_steps(levels: &[usize], repetitions: usize, ablation: bool) -> u64 {
    1 + (levels.len() * repetitions * if ablation { 4 } else { 2 }) as u64
}

fn concurrent_cold_starts(
    dir: &SnapshotDir,
    mode: MemoryMode,
    request: &[u8],
    k: usize,
    params: &RunParams,
) -> Result<Batch, InstanceError> {
    let start = Barrier::new(k);
    let done = Barrier::new(k);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..k)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let released = Instant::now();
                    let result =
                        cold_start(dir, mode, request, params.limit, params.serve_options());
                    let answered = Instant::now();
                    // Every thread reaches this barrier, failed or not.
                    done.wait();
                    result.map(|(sample, response, instance)| {
                        drop(instance);
                        (sample, response, released, answered)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect::<Result<_, _>>()
    })?;
    let first = results.iter().map(|r| r.2).min();
    let last = results.iter().map(|r| r.3).max();
    let wall = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a),
        _ => Duration::ZERO,
    };
    Ok((
        results.into_iter().map(|(s, r, _, _)| (s, r)).collect(),
        wall,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_runs_each_mode_once_and_the_first_mode_rotates() {
        let firsts: Vec<_> = (0..3).map(|r| round_order(r)[0]).collect();
        assert_eq!(firsts, MODES);
        for r in 0..6 {
            let mut order = round_order(r).to_vec();
            order.sort_by_key(|m| m.name());
            let mut all = MODES.to_vec();
            all.sort_by_key(|m| m.name());
            assert_eq!(order, all);
        }
        assert_eq!(round_order(0), MODES);
    }
}
