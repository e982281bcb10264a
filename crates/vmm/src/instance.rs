//! A function instance: a microVM running a function program, booted to its ready
//! point or restored from a snapshot in one of the memory modes, and invoked one
//! request at a time.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reap_pager::policy::WsWriting;
use reap_pager::{PageServer, PagerStats, ServeOptions, StopReason};
use serde::{Deserialize, Serialize};

use crate::guest_os::Sink;
use crate::microvm::{MicroVm, MicroVmConfig, RunExit, VmError};
use crate::persist::{self, FileMemoryError, PagedMemoryError};
use crate::snapshot::{SnapshotDir, SnapshotError, SnapshotState};
use crate::vdso;
use crate::vstate::shell::{self, Shell};

pub use reap_pager::MemoryMode;

/// Why an instance could not be booted, restored or invoked.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The microVM failed (including the guest's own faults: see [`VmError::Guest`]).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The snapshot could not be read or written.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Guest memory could not be mapped from the memory file (`file` mode).
    #[error(transparent)]
    FileMemory(#[from] FileMemoryError),
    /// Guest memory could not be set up with its page server (lazy, record, reap).
    #[error(transparent)]
    PagedMemory(#[from] PagedMemoryError),
    /// The program exited (with this status) before its ready point.
    #[error("the function exited with status {0} before reading its first request")]
    ExitedBeforeReady(i32),
    /// The program exited (with this status) during an invocation.
    #[error("the function exited with status {0} instead of answering")]
    Exited(i32),
    /// The program waited for input again without writing a response line.
    #[error("the function waits for more input without having answered")]
    NoResponse,
    /// The program wrote this many lines instead of one response line.
    #[error("the function answered with {0} lines instead of one")]
    ResponseLines(usize),
    /// The program's response exceeded [`MAX_RESPONSE_BYTES`].
    #[error("the function wrote more than {MAX_RESPONSE_BYTES} bytes in answer to one request")]
    ResponseTooLarge,
    /// The request held a newline: requests are one line each.
    #[error("a request must be one line (it contains a newline)")]
    MultilineRequest,
    /// The instance is not waiting for a request (it is not at its ready point).
    #[error("the instance is not ready for a request")]
    NotReady,
    /// The page server stopped serving guest memory (e.g. a page of the memory file
    /// failed its checksum): whatever the guest did since is discarded.
    #[error("guest memory cannot be served: {0}")]
    PageServer(String),
}

impl InstanceError {
    /// Whether the function (not the runtime) is at fault.
    pub fn is_function_fault(&self) -> bool {
        matches!(
            self,
            InstanceError::Vm(VmError::Guest(_))
                | InstanceError::Exited(_)
                | InstanceError::ExitedBeforeReady(_)
                | InstanceError::NoResponse
                | InstanceError::ResponseLines(_)
                | InstanceError::ResponseTooLarge
        )
    }
}

/// Largest response the runtime keeps; a function that writes more gets an error.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Bytes written by the guest to stdout, shared with the guest OS's sink. Bytes past
/// [`MAX_RESPONSE_BYTES`] are dropped and remembered as an overflow.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<(Vec<u8>, bool)>>);

impl Capture {
    /// The bytes written since the last call, or `None` if they overflowed.
    pub fn take(&self) -> Option<Vec<u8>> {
        let (buf, overflow) =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        (!overflow).then_some(buf)
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (data, overflow) = &mut *guard;
        if data.len() + buf.len() > MAX_RESPONSE_BYTES {
            *overflow = true;
        } else if !*overflow {
            data.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a cold start went, up to the point the guest can run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColdStart {
    /// The memory mode of the restore.
    pub mode: MemoryMode,
    /// Restoring the VM: state file, memory setup, VM and vCPU (fetch and install
    /// excluded).
    pub restore_us: u64,
    /// Reading the WS file (reap mode, prefetch).
    pub fetch_us: u64,
    /// Installing the working set into guest memory.
    pub install_us: u64,
    /// Pages of the working set installed, before the guest ran or (concurrent install)
    /// while it runs (zero pages included).
    pub prefetched_pages: u64,
    /// This cold start records the working set (reap mode, no WS file yet).
    pub recording: bool,
    /// The WS file was unusable: served lazily instead.
    pub ws_fell_back: bool,
    /// Faults the page server served during the restore, before the guest ran (the
    /// host kernel touching guest memory while the VM is set up).
    pub restore_lazy_faults: u64,
    /// The VM came from the shell pool: how many restores used that shell before
    /// (`None`: a VM made for this restore alone, shells off).
    pub shell_uses: Option<u64>,
}

/// A cold start and its first invocation, as one flat record: what `reap restore
/// --json` prints, and what `reap bench` and the orchestrator measure.
#[derive(Debug, Clone, Serialize)]
pub struct ColdStartReport {
    /// The restore.
    #[serde(flatten)]
    pub cold_start: ColdStart,
    /// The first invocation.
    #[serde(flatten)]
    pub invocation: Invocation,
}

/// A function booted to its ready point and snapshotted ([`Instance::deploy`]).
pub struct Deployed {
    /// The booted instance, warm, at its ready point.
    pub instance: Instance,
    /// The snapshot's state as written.
    pub state: SnapshotState,
    /// Boot until the ready point.
    pub boot: Duration,
    /// Writing the snapshot.
    pub snapshot: Duration,
}

/// One invocation's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invocation {
    /// The first invocation after a restore (part of a cold start).
    pub cold: bool,
    /// From handing the request to the guest until its response line was written.
    pub invoke_us: u64,
    /// Faults served lazily by the page server during this invocation, from the file
    /// and as zero pages.
    pub lazy_faults: u64,
    /// Of [`Invocation::lazy_faults`], the faults served with a zero page.
    pub lazy_faults_zero: u64,
    /// Guest system calls during this invocation.
    pub syscalls: u64,
    /// Pages written to the WS file after this invocation (recording cold start; with
    /// the background write, the pages being written after the answer).
    pub ws_pages_written: Option<u64>,
}

/// A function instance: a microVM at its ready point, with its page server (if any)
/// and the capture of its stdout.
pub struct Instance {
    // Field order is drop order: the page server stops before the microVM hands its
    // memory back (to the VM shell pool, which reuses it).
    pager: Option<PageServer>,
    vm: MicroVm,
    stdout: Capture,
    /// Where to write the working set after the first invocation (recording).
    record_ws: Option<PathBuf>,
    /// The working set is kept for [`Instance::take_recorded_ws`] instead of written.
    record_elsewhere: bool,
    /// The working set recorded by the first invocation, not written.
    recorded: Option<Vec<u64>>,
    /// The background write of the recorded working set, joined at drop.
    ws_write: Option<JoinHandle<()>>,
    cold_start: Option<ColdStart>,
    invocations: u64,
    /// When the vDSO's clock parameters were last rewritten.
    clock_synced: Instant,
}

impl Instance {
    /// Boots `image` and runs it until it first waits for a request (its ready point),
    /// at most `limit`.
    pub fn boot(
        image: &[u8],
        config: &MicroVmConfig,
        stderr: Sink,
        limit: Option<Duration>,
    ) -> Result<Self, InstanceError> {
        let stdout = Capture::default();
        let mut vm = MicroVm::boot(image, config, Box::new(stdout.clone()), stderr)?;
        match vm.run(limit)? {
            RunExit::WaitingForInput => {}
            RunExit::Exited(code) => return Err(InstanceError::ExitedBeforeReady(code)),
        }
        // Whatever the program printed during init is not a response.
        let _ = stdout.take();
        Ok(Self {
            pager: None,
            vm,
            stdout,
            record_ws: None,
            record_elsewhere: false,
            recorded: None,
            ws_write: None,
            cold_start: None,
            invocations: 0,
            clock_synced: Instant::now(),
        })
    }

    /// Snapshots this instance (at its ready point) into `dir`.
    pub fn snapshot(&mut self, dir: &SnapshotDir) -> Result<SnapshotState, InstanceError> {
        // The clock as the guest last saw it, for the restores to continue from.
        self.vm.sync_clock(vdso::Resync::Running)?;
        self.clock_synced = Instant::now();
        Ok(dir.write(&mut self.vm)?)
    }

    /// Boots `image` to its ready point (within `limit`) and snapshots it into `dir`:
    /// the one boot-and-snapshot path of the CLI, the function store and the bench.
    pub fn deploy(
        image: &[u8],
        config: &MicroVmConfig,
        stderr: Sink,
        limit: Option<Duration>,
        dir: &SnapshotDir,
    ) -> Result<Deployed, InstanceError> {
        let started = Instant::now();
        let mut instance = Instance::boot(image, config, stderr, limit)?;
        let boot = started.elapsed();
        let state = instance.snapshot(dir)?;
        Ok(Deployed {
            instance,
            state,
            boot,
            snapshot: started.elapsed().saturating_sub(boot),
        })
    }

    /// Restores an instance from the snapshot in `dir`, its memory filled as `mode` says
    /// (in [`MemoryMode::Reap`], the snapshot's working set is prefetched if it has one,
    /// else recorded by the first invocation).
    pub fn restore(
        dir: &SnapshotDir,
        mode: MemoryMode,
        stderr: Sink,
    ) -> Result<Self, InstanceError> {
        Self::restore_with(dir, mode, stderr, ServeOptions::default())
    }

    /// [`Instance::restore`] with the page server's `options` (ignored in
    /// [`MemoryMode::File`]), e.g. to measure the memory file's holes served by it.
    pub fn restore_with(
        dir: &SnapshotDir,
        mode: MemoryMode,
        stderr: Sink,
        options: ServeOptions,
    ) -> Result<Self, InstanceError> {
        let started = Instant::now();
        let state = dir.read_state()?;
        let memory_file = dir.open_memory(&state)?;
        let size = memory_file.len();
        // A ready shell, else a new one (the same work as a new VM, and it joins the
        // pool at teardown).
        let shell = if shell::enabled() {
            shell::take(size, &state.vm.vcpu.cpuid).or_else(|| Shell::new(size).ok())
        } else {
            None
        };
        let (memory, pager, record_ws) = match dir.ws_policy(mode) {
            None => {
                dir.verify_for_mapping(&memory_file)?;
                let memory = match &shell {
                    Some(s) => s
                        .memory
                        .private_file(memory_file.file())
                        .map_err(FileMemoryError::Map)?,
                    None => persist::from_file(&memory_file)?,
                };
                (memory, None, None)
            }
            Some(policy) => {
                let paged = match &shell {
                    Some(s) => {
                        let guest = s.memory.anonymous().map_err(PagedMemoryError::Map)?;
                        persist::from_page_server_over(memory_file, &policy, options, guest)?
                    }
                    None => persist::from_page_server(memory_file, &policy, options)?,
                };
                (paged.memory, Some(paged.server), paged.resolved.record_into)
            }
        };
        let stdout = Capture::default();
        let mut vm = match shell {
            Some(shell) => MicroVm::restore_in_shell(
                shell,
                memory,
                &state.vm,
                Box::new(stdout.clone()),
                stderr,
            )?,
            None => MicroVm::restore(memory, &state.vm, Box::new(stdout.clone()), stderr)?,
        };
        // The TSC and the wall clock moved on since the snapshot: the guest's vDSO must
        // read the host's time before the guest runs again.
        vm.sync_clock(vdso::Resync::Restored)?;
        let clock_synced = Instant::now();
        pager_failure(pager.as_ref())?;
        let stats = pager.as_ref().map(PageServer::stats).unwrap_or_default();
        let total = started.elapsed();
        let fetch = Duration::from_nanos(stats.fetch_ns + stats.verify_ns);
        let install = Duration::from_nanos(stats.install_ns);
        let cold_start = ColdStart {
            mode,
            restore_us: micros(total.saturating_sub(fetch + install)),
            fetch_us: micros(fetch),
            install_us: micros(install),
            prefetched_pages: stats.install_planned_pages,
            recording: record_ws.is_some(),
            ws_fell_back: stats.prefetch_fell_back,
            restore_lazy_faults: stats.lazy_faults_file + stats.lazy_faults_zero,
            shell_uses: vm.shell_uses(),
        };
        Ok(Self {
            pager,
            vm,
            stdout,
            record_ws,
            record_elsewhere: false,
            recorded: None,
            ws_write: None,
            cold_start: Some(cold_start),
            invocations: 0,
            clock_synced,
        })
    }

    /// A recording instance keeps the working set its first invocation records, for
    /// [`Instance::take_recorded_ws`], instead of writing the WS file itself (a process
    /// that cannot write the snapshot's directory hands it to one that can).
    pub fn keep_recorded_ws(&mut self) {
        self.record_elsewhere = true;
    }

    /// The working set the first invocation recorded, as memory-file offsets in WS
    /// order (after [`Instance::keep_recorded_ws`]), once.
    pub fn take_recorded_ws(&mut self) -> Option<Vec<u64>> {
        self.recorded.take()
    }

    /// The cold start with its first invocation `inv`, if `inv` was that invocation.
    pub fn cold_start_report(&self, inv: &Invocation) -> Option<ColdStartReport> {
        let cold_start = self.cold_start.as_ref().filter(|_| inv.cold)?;
        Some(ColdStartReport {
            cold_start: cold_start.clone(),
            invocation: inv.clone(),
        })
    }

    /// The cold start that made this instance (restored instances only).
    pub fn cold_start(&self) -> Option<&ColdStart> {
        self.cold_start.as_ref()
    }

    /// The page server's counters (lazy and reap modes).
    pub fn pager_stats(&self) -> Option<PagerStats> {
        self.pager.as_ref().map(PageServer::stats)
    }

    /// The guest's memory.
    pub fn guest_memory(&self) -> &crate::vstate::memory::GuestMemory {
        &self.vm.memory
    }

    /// Guest memory the program has mapped (heap and anonymous mappings).
    pub fn guest_mapped_bytes(&self) -> u64 {
        self.vm.os.mm.mapped_bytes()
    }

    /// The unsupported system calls the guest made since the last call.
    pub fn take_unsupported_syscalls(&mut self) -> crate::guest_os::UnsupportedCalls {
        self.vm.os.take_unsupported()
    }

    /// Sends one request line and waits for the response line, at most `limit`.
    pub fn invoke(
        &mut self,
        request: &[u8],
        limit: Option<Duration>,
    ) -> Result<(Vec<u8>, Invocation), InstanceError> {
        let request = request.strip_suffix(b"\n").unwrap_or(request);
        if request.contains(&b'\n') {
            return Err(InstanceError::MultilineRequest);
        }
        if !self.vm.is_waiting_for_input() {
            return Err(InstanceError::NotReady);
        }
        pager_failure(self.pager.as_ref())?;
        if self.clock_synced.elapsed() >= vdso::RESYNC_AFTER {
            self.vm.sync_clock(vdso::Resync::Running)?;
            self.clock_synced = Instant::now();
        }
        let before = self.pager_stats().unwrap_or_default();
        let syscalls_before = self.vm.os.counters().syscalls;
        let _ = self.stdout.take();
        self.vm.os.push_stdin(request);
        self.vm.os.push_stdin(b"\n");
        let started = Instant::now();
        let exit = self.vm.run(limit);
        // A page server that stopped failing has installed no page since; the guest's
        // later faults were filled with zeros when its userfaultfd closed. Nothing the
        // guest did in this run counts, whatever it returned.
        pager_failure(self.pager.as_ref())?;
        let exit = exit?;
        let finished = Instant::now();
        let response = self.stdout.take();
        match exit {
            RunExit::WaitingForInput => {}
            RunExit::Exited(code) => return Err(InstanceError::Exited(code)),
        }
        let Some(response) = response else {
            return Err(InstanceError::ResponseTooLarge);
        };
        if self.vm.os.stdin_pending() > 0 {
            return Err(InstanceError::NoResponse);
        }
        let lines = response.iter().filter(|&&b| b == b'\n').count();
        if lines == 0 {
            return Err(InstanceError::NoResponse);
        }
        if lines != 1 || !response.ends_with(b"\n") {
            return Err(InstanceError::ResponseLines(
                lines + usize::from(!response.ends_with(b"\n")),
            ));
        }
        let answered = self
            .vm
            .os
            .last_line_at()
            .filter(|t| *t >= started)
            .unwrap_or(finished);
        let after = self.pager_stats().unwrap_or_default();
        // A working set that cannot be written costs the next cold start speed, not
        // this invocation its answer.
        let ws_pages_written = match (self.record_ws.take(), &self.pager) {
            (Some(_), Some(pager)) if self.record_elsewhere => {
                self.recorded = Some(pager.ws_writer().offsets().to_vec());
                None
            }
            (Some(path), Some(pager)) if background_record() => {
                let writer = pager.ws_writer();
                let pages = writer.pages();
                let writing = WsWriting::start(&path);
                let spawned = std::thread::Builder::new()
                    .name("reap-ws-write".into())
                    .spawn(move || {
                        if let Err(e) = writer.write(&path) {
                            tracing::warn!(path = %path.display(), "cannot write the working set: {e:#}");
                        }
                        drop(writing);
                    });
                match spawned {
                    Ok(handle) => {
                        self.ws_write = Some(handle);
                        Some(pages)
                    }
                    Err(e) => {
                        tracing::warn!("cannot start the working-set writer thread: {e}");
                        None
                    }
                }
            }
            (Some(path), Some(pager)) => match pager.write_ws(&path) {
                Ok(summary) => Some(summary.pages),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot write the working set: {e:#}");
                    None
                }
            },
            _ => None,
        };
        let cold = self.invocations == 0 && self.cold_start.is_some();
        self.invocations += 1;
        Ok((
            response,
            Invocation {
                cold,
                invoke_us: micros(answered.duration_since(started)),
                lazy_faults: (after.lazy_faults_file + after.lazy_faults_zero)
                    .saturating_sub(before.lazy_faults_file + before.lazy_faults_zero),
                lazy_faults_zero: after
                    .lazy_faults_zero
                    .saturating_sub(before.lazy_faults_zero),
                syscalls: self.vm.os.counters().syscalls - syscalls_before,
                ws_pages_written,
            },
        ))
    }
}

impl Instance {
    /// Waits for the background write of the working set this instance recorded, if
    /// one is under way (dropping the instance waits for it too).
    pub fn wait_for_ws_write(&mut self) {
        if let Some(handle) = self.ws_write.take() {
            // The writer reports its own errors; a panic there is not this caller's.
            let _ = handle.join();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.wait_for_ws_write();
    }
}

/// Whether a recording cold start writes its working set in the background (the
/// default), answering its caller first.
static BACKGROUND_RECORD: AtomicBool = AtomicBool::new(true);

/// Makes recording cold starts write their working set in the background, after the
/// answer (`true`, the default), or before returning the answer (`false`). Meanwhile a
/// REAP cold start of the same snapshot in this process is served lazily.
pub fn set_background_record(on: bool) {
    BACKGROUND_RECORD.store(on, Ordering::Relaxed);
}

fn background_record() -> bool {
    BACKGROUND_RECORD.load(Ordering::Relaxed)
}

/// The error to report if `pager` has stopped for any reason but a request (the
/// owner of the memory is this process, so it can only have failed).
fn pager_failure(pager: Option<&PageServer>) -> Result<(), InstanceError> {
    match pager.and_then(PageServer::stop_reason) {
        None | Some(StopReason::Requested) => Ok(()),
        Some(StopReason::Failed(why)) => Err(InstanceError::PageServer(why)),
        Some(StopReason::OwnerExited) => Err(InstanceError::PageServer(
            "the page server lost the guest memory".into(),
        )),
    }
}

/// Whole microseconds of `d` (saturating: a duration of 500,000 years is not a case).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
