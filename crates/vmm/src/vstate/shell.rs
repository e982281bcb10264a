//! VM shells: KVM VMs made ahead of time, each with its vCPU and its memory slot over a
//! host mapping of its own, that a restore takes instead of creating a VM
//! ([`take`]); a torn-down microVM gives its shell back ([`give_back`]).
//!
//! The pool is per process and per guest-memory size. One background thread
//! (`reap-shells`) does the slow work off the restore's critical path: it creates
//! shells after a restore took one or found none (up to [`AHEAD`] ready), and resets
//! the shells given back, then keeps them (at most [`limit`] ready per size) or
//! destroys them.
//!
//! A shell keeps its memory slot: the slot points at the shell's own host mapping for
//! its whole life, and a restore fills that mapping instead of a fresh one (a fresh
//! mapping would need the slot deleted and made again, `KVM_SET_USER_MEMORY_REGION`
//! twice, which costs more than the whole VM). What a shell must never carry from one
//! function to the next, and how it does not:
//! - guest memory: the reset maps fresh anonymous memory over the whole range
//!   (`MAP_FIXED`), which frees every page the last guest had; KVM follows the host's
//!   page tables through its MMU notifier, so no translation to an old page survives.
//!   A restore in `file` mode maps the memory file over the range the same way.
//! - registers: a restore sets every register a snapshot holds (general, special,
//!   XCR0, the XSAVE area, the syscall MSRs); the reset also clears the `kvm_run`
//!   sync area's dirty flags (else the next `KVM_RUN` would load the last guest's
//!   registers from it) and pending exceptions (`KVM_SET_VCPU_EVENTS`). A CPL3 guest
//!   cannot change any other vCPU state.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, mpsc};

use kvm_bindings::{kvm_cpuid_entry2, kvm_vcpu_events};

use super::memory::{Backing, GuestMemory, MemoryError};
use super::vcpu::{Vcpu, VcpuError};
use super::vm::{Vm, VmError};

/// Default largest number of ready shells kept per guest-memory size.
pub const DEFAULT_LIMIT: usize = 16;
/// Shells the background thread keeps ready ahead of the restores, per size.
pub const AHEAD: usize = 2;

/// Why a shell could not be made or reset.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The host mapping failed.
    #[error("cannot map {size} bytes for a VM shell")]
    Map {
        /// The size.
        size: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The VM could not be created.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The vCPU could not be created or reset.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// A shell's host mapping: guest memory for the restores that use the shell. It owns
/// the mapping; the [`GuestMemory`] values made over it borrow it.
pub struct ShellMemory {
    host: *mut u8,
    size: u64,
}

// SAFETY: `host` is a mapping this value owns; nothing but the owner touches it.
unsafe impl Send for ShellMemory {}

impl ShellMemory {
    fn new(size: u64) -> Result<Self, ShellError> {
        // SAFETY: a new anonymous mapping; the kernel picks the address.
        let ret = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(ShellError::Map {
                size,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            host: ret.cast(),
            size,
        })
    }

    /// Maps `fd` (or fresh anonymous memory, `None`) privately over the whole range.
    fn map_over(&self, fd: Option<&File>) -> io::Result<()> {
        let (flags, fd) = match fd {
            Some(f) => (libc::MAP_PRIVATE, f.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: the range is this value's own mapping; MAP_FIXED replaces it in place.
        // Whoever borrowed it (a finished microVM) no longer uses it.
        let ret = unsafe {
            libc::mmap(
                self.host.cast(),
                self.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
                fd,
                0,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The range as guest memory: fresh anonymous memory (the reset left it so).
    pub fn anonymous(&self) -> Result<GuestMemory, MemoryError> {
        // SAFETY: the range is one anonymous private mapping, kept as long as the
        // shell, which the microVM holds as long as this guest memory.
        unsafe { GuestMemory::borrowed(self.host, self.size, Backing::Anonymous) }
    }

    /// The range as guest memory mapped privately from `file` (`file` mode).
    pub fn private_file(&self, file: &File) -> Result<GuestMemory, MemoryError> {
        self.map_over(Some(file))
            .map_err(|source| MemoryError::Discard {
                start: 0,
                end: self.size,
                source,
            })?;
        // SAFETY: as in `anonymous`, the mapping being the file's now.
        unsafe { GuestMemory::borrowed(self.host, self.size, Backing::PrivateFile) }
    }

    /// Host address of the range.
    pub fn host_addr(&self) -> u64 {
        self.host as u64
    }

    /// Size of the range in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for ShellMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping this value owns; nothing uses it any more.
        unsafe { libc::munmap(self.host.cast(), self.size as usize) };
    }
}

/// A KVM VM with its vCPU and its memory slot over [`ShellMemory`].
pub struct Shell {
    // Field order is drop order: the vCPU and the VM go before their memory.
    /// Its vCPU 0.
    pub vcpu: Vcpu,
    /// The VM (memory slot 0 over `memory`).
    pub vm: Vm,
    /// Its guest memory.
    pub memory: ShellMemory,
    /// Restores that used this shell before.
    pub uses: u64,
    /// The CPUID its vCPU was given, once it was: KVM refuses a different one after
    /// the vCPU has run, so such a shell only serves snapshots with the same.
    pub cpuid: Option<Vec<kvm_cpuid_entry2>>,
}

impl Shell {
    /// A new shell with `size` bytes of guest memory.
    pub fn new(size: u64) -> Result<Shell, ShellError> {
        let memory = ShellMemory::new(size)?;
        // SAFETY: the mapping lives in the same shell as the VM; the shell's field
        // order drops the vCPU and the VM first.
        let vm = unsafe { Vm::over(memory.host_addr(), size) }?;
        let vcpu = Vcpu::new(vm.kvm, &vm.fd)?;
        Ok(Shell {
            vcpu,
            vm,
            memory,
            uses: 0,
            cpuid: None,
        })
    }

    /// Guest memory size.
    pub fn size(&self) -> u64 {
        self.memory.size
    }

    /// Makes a used shell like a new one: fresh memory, no register or event left
    /// pending from the last guest.
    fn reset(&mut self) -> Result<(), ShellError> {
        self.memory
            .map_over(None)
            .map_err(|source| ShellError::Map {
                size: self.memory.size,
                source,
            })?;
        self.vcpu.forget_pending();
        self.vcpu
            .fd
            .set_vcpu_events(&kvm_vcpu_events::default())
            .map_err(|e| VcpuError::Ioctl("SET_VCPU_EVENTS", e))?;
        self.uses += 1;
        Ok(())
    }
}

/// What the pool has done, for reports.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ShellStats {
    /// Restores that took a ready shell.
    pub taken: u64,
    /// Restores that found none ready.
    pub missed: u64,
    /// Shells created by the background thread.
    pub created: u64,
    /// Shells given back, reset and kept.
    pub reused: u64,
    /// Shells destroyed (pool full, reset failed, or shells off).
    pub destroyed: u64,
}

enum Job {
    Fill(u64),
    Reset(Box<Shell>),
    Sync(mpsc::SyncSender<()>),
}

struct Pool {
    ready: Mutex<HashMap<u64, Vec<Shell>>>,
    jobs: Mutex<mpsc::Sender<Job>>,
}

static ENABLED: AtomicBool = AtomicBool::new(true);
static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_LIMIT);
static POOL: OnceLock<Option<Pool>> = OnceLock::new();
static TAKEN: AtomicU64 = AtomicU64::new(0);
static MISSED: AtomicU64 = AtomicU64::new(0);
static CREATED: AtomicU64 = AtomicU64::new(0);
static REUSED: AtomicU64 = AtomicU64::new(0);
static DESTROYED: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turns the pool on or off for this process (on by default). Off, [`take`] finds
/// nothing and every restore creates its own VM; the shells ready stay for when it is
/// turned on again.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the pool is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Sets the largest number of ready shells kept per guest-memory size.
pub fn set_limit(limit: usize) {
    LIMIT.store(limit, Ordering::Relaxed);
}

/// The largest number of ready shells kept per guest-memory size.
pub fn limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// The pool's counters so far.
pub fn stats() -> ShellStats {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    ShellStats {
        taken: get(&TAKEN),
        missed: get(&MISSED),
        created: get(&CREATED),
        reused: get(&REUSED),
        destroyed: get(&DESTROYED),
    }
}

/// The pool, its thread started on first use; `None` if the thread cannot start.
fn pool() -> Option<&'static Pool> {
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let started = std::thread::Builder::new()
            .name("reap-shells".into())
            .spawn(move || work(rx));
        match started {
            Ok(_) => Some(Pool {
                ready: Mutex::new(HashMap::new()),
                jobs: Mutex::new(tx),
            }),
            Err(e) => {
                tracing::warn!("cannot start the VM shell thread, restores create VMs: {e}");
                None
            }
        }
    })
    .as_ref()
}

fn send(pool: &Pool, job: Job) {
    // The thread never ends, so the send cannot fail while the process runs.
    let _ = lock(&pool.jobs).send(job);
}

/// A ready shell with `size` bytes of guest memory whose vCPU can take `cpuid` (a new
/// one, or one that ran with the same CPUID), if the pool has one; either way the
/// background thread tops the pool up.
pub fn take(size: u64, cpuid: &[kvm_cpuid_entry2]) -> Option<Shell> {
    if !enabled() {
        return None;
    }
    let pool = pool()?;
    // The most recently kept shell that fits: shells whose vCPU ran with another CPUID
    // stay for the snapshots that have it.
    let shell = {
        let mut ready = lock(&pool.ready);
        ready.get_mut(&size).and_then(|shells| {
            let i = shells
                .iter()
                .rposition(|s| s.cpuid.as_deref().is_none_or(|c| c == cpuid))?;
            Some(shells.remove(i))
        })
    };
    match shell {
        Some(_) => TAKEN.fetch_add(1, Ordering::Relaxed),
        None => MISSED.fetch_add(1, Ordering::Relaxed),
    };
    send(pool, Job::Fill(size));
    shell
}

/// Creates a shell with `size` bytes of guest memory now, in this thread, and keeps it
/// ready whatever the limit: for a process that restores once and makes its shell
/// before the snapshot is known (an instance process waiting for work).
pub fn prefill(size: u64) -> Result<(), ShellError> {
    let Some(pool) = pool() else {
        return Ok(());
    };
    let shell = Shell::new(size)?;
    CREATED.fetch_add(1, Ordering::Relaxed);
    lock(&pool.ready).entry(size).or_default().push(shell);
    Ok(())
}

/// Hands `shell` back after its microVM is torn down: the background thread resets it
/// and keeps it, or destroys it.
pub fn give_back(shell: Shell) {
    match pool() {
        Some(pool) => send(pool, Job::Reset(Box::new(shell))),
        None => {
            DESTROYED.fetch_add(1, Ordering::Relaxed);
            drop(shell);
        }
    }
}

/// Waits until the background thread has done everything asked of it so far (the
/// shells given back are reset and ready, the pool topped up).
pub fn flush() {
    let Some(pool) = pool() else {
        return;
    };
    let (tx, rx) = mpsc::sync_channel(1);
    send(pool, Job::Sync(tx));
    let _ = rx.recv();
}

fn work(rx: mpsc::Receiver<Job>) {
    for job in rx {
        let Some(Some(pool)) = POOL.get() else {
            continue;
        };
        match job {
            Job::Fill(size) => {
                while enabled() && ready(pool, size) < AHEAD.min(limit()) {
                    match Shell::new(size) {
                        Ok(shell) => {
                            CREATED.fetch_add(1, Ordering::Relaxed);
                            lock(&pool.ready).entry(size).or_default().push(shell);
                        }
                        Err(e) => {
                            tracing::warn!("cannot create a VM shell: {e}");
                            break;
                        }
                    }
                }
            }
            Job::Sync(done) => {
                let _ = done.send(());
            }
            Job::Reset(mut shell) => {
                let keep = enabled() && ready(pool, shell.size()) < limit();
                if keep {
                    match shell.reset() {
                        Ok(()) => {
                            REUSED.fetch_add(1, Ordering::Relaxed);
                            lock(&pool.ready)
                                .entry(shell.size())
                                .or_default()
                                .push(*shell);
                            continue;
                        }
                        Err(e) => tracing::warn!("cannot reset a VM shell, destroying it: {e}"),
                    }
                }
                DESTROYED.fetch_add(1, Ordering::Relaxed);
                drop(shell);
            }
        }
    }
}

fn ready(pool: &Pool, size: u64) -> usize {
    lock(&pool.ready).get(&size).map_or(0, Vec::len)
}
