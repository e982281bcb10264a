//! A microVM: guest memory, one KVM VM and vCPU, and the guest OS that runs a static
//! Linux program in it; the run loop that turns vCPU exits into system calls.
//!
//! The program's threads share the vCPU: the run loop keeps every thread that is not
//! on it as a parked register set and XSAVE area, and switches when the running thread
//! blocks (a futex wait, a sleep, a read with nothing to read), yields, exits, or its
//! time slice ends (the watchdog kicks `KVM_RUN` every [`TIME_SLICE`] while more than
//! one thread exists). Which thread runs next is the guest OS's thread table's choice
//! (`guest_os::threads`).

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_xsave};

use crate::arch::{self, layout};
use crate::guest_os::fs::{RootFs, Vfs};
use crate::guest_os::mm::AddressSpace;
use crate::guest_os::threads::{MAIN_TID, Resume, monotonic_ns};
use crate::guest_os::{GuestOs, GuestOsState, Outcome, Sink, Syscall};
use crate::loader::{self, LoadError, StackInputs};
use crate::vdso;
use crate::vstate::memory::{GuestMemory, MemoryError};
use crate::vstate::shell::{self, Shell, ShellMemory};
use crate::vstate::vcpu::{Exit, Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError as KvmVmError};
use crate::vstate::watchdog::{KickMask, Watchdog};

/// How long a guest thread runs before another runnable one gets the vCPU.
pub const TIME_SLICE: Duration = Duration::from_millis(10);

/// Default guest memory, as in the paper's setup.
pub const DEFAULT_MEM_MIB: u64 = 256;

/// How to boot a microVM.
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    /// Guest memory in MiB (a multiple of 2 between 16 and 4096).
    pub mem_mib: u64,
    /// argv, including `argv[0]`.
    pub args: Vec<String>,
    /// The environment, as `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// The root file system and the program in it; `None` for a static program with
    /// no file system.
    pub rootfs: Option<RootFs>,
    /// Print every system call to stderr, strace-style.
    pub trace: bool,
}

impl Default for MicroVmConfig {
    fn default() -> Self {
        Self {
            mem_mib: DEFAULT_MEM_MIB,
            args: vec!["function".into()],
            env: Vec::new(),
            rootfs: None,
            trace: false,
        }
    }
}

impl MicroVmConfig {
    /// The bytes of the program `config.rootfs` names, read from its image (what
    /// [`MicroVm::boot`] then takes as its `image`).
    pub fn read_program(&self) -> Result<Vec<u8>, VmError> {
        match &self.rootfs {
            Some(root) => Ok(Vfs::boot(root)?.1),
            None => Err(VmError::NoRootFs),
        }
    }
}

/// Why a guest stopped for good: the program did something that ends it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    /// A CPU exception (decoded by [`arch::decode_exception`]).
    #[error("guest crashed: {name}{detail} at RIP {rip:#x}")]
    Exception {
        /// The exception vector.
        vector: u8,
        /// Its architectural name.
        name: &'static str,
        /// For a page fault, the access and address; else the error code, if any.
        detail: String,
        /// RIP of the faulting instruction.
        rip: u64,
    },
    /// A fault while delivering a double fault: KVM's `SHUTDOWN` exit.
    #[error("guest crashed: triple fault at RIP {rip:#x}")]
    TripleFault {
        /// RIP at the shutdown.
        rip: u64,
    },
    /// Port I/O anywhere but the system-call and exception stubs.
    #[error(
        "guest executed an I/O instruction (port {port:#x}) outside the syscall stub at RIP {rip:#x}"
    )]
    StrayIo {
        /// The port.
        port: u16,
        /// RIP of the instruction (of the next one when KVM reported the exit).
        rip: u64,
    },
    /// The run's time limit passed.
    #[error("guest ran past its time limit of {0:?}")]
    Timeout(Duration),
    /// The program sent itself a fatal signal (`abort()`, `kill`), or did what Linux
    /// answers with one: a stack overflow into the guard gap, an access a page's
    /// protection forbids (`SIGSEGV`).
    #[error("guest was killed by signal {signal} ({name}){detail}")]
    Signal {
        /// The signal number.
        signal: i32,
        /// Its name (`SIGABRT`, …), or "signal".
        name: &'static str,
        /// What the program did, when the VMM raised the signal: ": stack overflow:
        /// write to 0x… in the stack guard gap at RIP 0x…". Empty for a signal the
        /// program sent itself.
        detail: String,
    },
    /// The program waits for something that can never happen: every thread is
    /// blocked, none on stdin or with a timeout (a deadlock).
    #[error("guest cannot make progress: {0}")]
    Stuck(String),
    /// A vCPU exit the VMM does not expect (`HLT`, MMIO, a KVM failure).
    #[error("unexpected vCPU exit ({what}) at RIP {rip:#x}")]
    UnexpectedExit {
        /// KVM's name for the exit, or what the access was.
        what: String,
        /// RIP at the exit.
        rip: u64,
    },
}

/// Why a microVM could not be built, run or saved.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The guest stopped for good.
    #[error(transparent)]
    Guest(#[from] GuestFault),
    /// A guest memory size (in MiB) the VMM does not support.
    #[error(
        "guest memory of {0} MiB is not supported (a multiple of 2 MiB between 16 MiB and 4096 MiB)"
    )]
    MemSize(u64),
    /// Guest memory could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The KVM VM could not be created.
    #[error(transparent)]
    Kvm(#[from] KvmVmError),
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The vCPU's initial or restored state could not be set.
    #[error("cannot set up the vCPU")]
    Cpu(#[from] arch::CpuSetupError),
    /// The program could not be loaded.
    #[error("cannot load the program")]
    Load(#[from] LoadError),
    /// [`MicroVmConfig::read_program`] without a root file system.
    #[error("no root file system configured")]
    NoRootFs,
    /// The guest's file system could not be set up or brought back.
    #[error(transparent)]
    Fs(Box<crate::guest_os::fs::FsError>),
    /// [`MicroVm::save`] outside the ready point.
    #[error("the guest is not at its ready point (blocked reading stdin)")]
    NotReady,
    /// The watchdog thread that enforces a run's time limit could not be started.
    #[error("cannot start the watchdog thread")]
    Watchdog(#[source] std::io::Error),
    /// A guest thread the scheduler picked has no saved registers (a snapshot whose
    /// thread table and thread registers disagree).
    #[error("guest thread {0} has no saved registers")]
    NoThreadContext(u32),
}

impl From<crate::guest_os::fs::FsError> for VmError {
    fn from(e: crate::guest_os::fs::FsError) -> Self {
        Self::Fs(Box::new(e))
    }
}

/// Why `run` returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunExit {
    /// The program reads stdin and nothing is pending: the ready point. Push input
    /// (or close stdin) and call `run` again to continue.
    WaitingForInput,
    /// The program exited with this status.
    Exited(i32),
}

/// A microVM: one KVM VM with one vCPU running one program, its guest memory and its
/// guest OS.
pub struct MicroVm {
    // Dropped by `Drop` (the vCPU, then the VM, or both back to the shell pool) before
    // the fields below: the memory they use goes after them.
    vcpu: ManuallyDrop<Vcpu>,
    _vm: ManuallyDrop<Vm>,
    /// The guest's memory.
    pub memory: GuestMemory,
    /// The VM shell's memory (and its earlier uses), when the VM came from the shell
    /// pool: `memory` borrows it, and the shell goes back to the pool at drop.
    shell: Option<(ShellMemory, u64)>,
    /// The guest's operating system (stdin, stdout, address space).
    pub os: GuestOs,
    /// The guest is at its ready point: every thread is blocked and one reads stdin.
    pending: bool,
    cpuid: kvm_bindings::CpuId,
    watchdog: Watchdog,
    /// The thread whose registers are on the vCPU (it may have exited since).
    on_cpu: u32,
    /// The registers of every other thread.
    parked: BTreeMap<u32, Parked>,
    /// The watchdog's time slice is on (more than one thread).
    sliced: bool,
}

/// A thread's CPU state while it is off the vCPU.
#[derive(Clone)]
struct Parked {
    regs: kvm_regs,
    /// The `kvm_xsave` region.
    xsave: Vec<u32>,
}

/// A thread's registers in a snapshot (every thread but the one on the vCPU, whose
/// registers are [`VmState::vcpu`]).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ParkedThread {
    /// Its thread id.
    pub tid: u32,
    /// General registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// The XSAVE area (`kvm_xsave`'s 1024 words).
    pub xsave: Vec<u32>,
}

impl std::fmt::Debug for ParkedThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedThread")
            .field("tid", &self.tid)
            .field("rip", &self.regs.rip)
            .finish_non_exhaustive()
    }
}

/// What the run loop does after a system call.
enum Step {
    /// The same thread goes on.
    Continue,
    /// Another thread must be put on the vCPU.
    Switch,
    /// The run ends.
    Exit(RunExit),
}

/// What a snapshot saves of a microVM at its ready point.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    /// Guest memory size in bytes.
    pub mem_size: u64,
    /// The vCPU.
    pub vcpu: arch::VcpuState,
    /// The guest OS.
    pub os: GuestOsState,
    /// The registers of the threads not on the vCPU (none in format 3).
    #[serde(default)]
    pub threads: Vec<ParkedThread>,
}

impl MicroVm {
    /// Boots `image` (an x86-64 Linux executable): builds guest memory and page tables,
    /// loads the program (and its dynamic loader from the root file system, for a
    /// dynamic one), and sets up the vCPU at its entry point. With `config.rootfs`,
    /// `image` is the program as [`MicroVmConfig::read_program`] read it, and the
    /// guest sees the image as its file system. The program starts running at the
    /// first [`run`](Self::run).
    pub fn boot(
        image: &[u8],
        config: &MicroVmConfig,
        stdout: Sink,
        stderr: Sink,
    ) -> Result<Self, VmError> {
        let mem_size = mem_size(config.mem_mib)?;
        let (mut vfs, execfn) = match &config.rootfs {
            Some(root) => {
                let (vfs, _, path) = Vfs::boot(root)?;
                (Some(vfs), Some(path))
            }
            None => (None, None),
        };
        let memory = GuestMemory::anonymous(mem_size)?;
        write_system_area(&memory)?;
        let program = loader::load_elf(image, &memory)?;
        let mut space = AddressSpace::new(mem_size, program.end);
        protect_segments(&mut space, &program);
        let exe_name = execfn
            .clone()
            .or_else(|| config.args.first().cloned())
            .unwrap_or_else(|| "program".into());
        space.name_range(program_start(&program), program.end, &exe_name);
        let mut entry = program.entry;
        let mut interp_base = 0;
        if let Some(interp_path) = &program.interp {
            let Some(vfs) = vfs.as_mut() else {
                return Err(LoadError::Dynamic(interp_path.clone()).into());
            };
            let (interp, shown) = vfs.read_whole(interp_path.as_bytes(), "the dynamic loader")?;
            let span = loader::elf_span(&interp, &shown)?;
            let (base, _) = space
                .mmap(0, span, false, false)
                .map_err(|_| VmError::MemSize(mem_size >> 20))?;
            let loaded = loader::load_interpreter(&interp, &memory, base, &shown)?;
            protect_segments(&mut space, &loaded);
            let end = base + layout::page_align_up(span).unwrap_or(span);
            space.name_range(base, end, &shown);
            entry = loaded.entry;
            interp_base = base;
        }
        let mut random = [0u8; 16];
        getrandom(&mut random);
        let inputs = StackInputs {
            args: &config.args,
            env: &config.env,
            hwcap: arch::hwcap(),
            random,
            interp_base,
            execfn: execfn.as_deref(),
            vdso: layout::VDSO_ADDR,
        };
        let rsp = loader::build_stack(&memory, mem_size, &program, &inputs)?;

        let vm = Vm::new(&memory)?;
        let vcpu = Vcpu::new(vm.kvm, &vm.fd)?;
        let cpuid = arch::configure_vcpu(vm.kvm, &vcpu.fd, entry, rsp)?;
        let mut os = GuestOs::new(space, stdout, stderr);
        if let Some(vfs) = vfs {
            os.set_vfs(vfs);
        }
        os.set_trace(config.trace);
        os.write_page_tables(&memory)
            .map_err(|_| VmError::MemSize(mem_size >> 20))?;
        let booted = Self {
            vcpu: ManuallyDrop::new(vcpu),
            _vm: ManuallyDrop::new(vm),
            memory,
            shell: None,
            os,
            pending: false,
            cpuid,
            watchdog: Watchdog::new(),
            on_cpu: MAIN_TID,
            parked: BTreeMap::new(),
            sliced: false,
        };
        let sample = vdso::ClockSample::take(&booted.vcpu)?;
        vdso::sync(&booted.memory, &sample, vdso::Resync::Running)
            .map_err(|_| VmError::MemSize(mem_size >> 20))?;
        Ok(booted)
    }

    /// Rewrites the clock parameters of the guest's vDSO from the guest's TSC and the
    /// host's clocks now ([`vdso::sync`]); `None`, writing nothing, for a guest booted
    /// before the vDSO existed. Call it only while the guest is not running.
    pub fn sync_clock(&mut self, how: vdso::Resync) -> Result<Option<vdso::Vvar>, VmError> {
        let sample = vdso::ClockSample::take(&self.vcpu)?;
        vdso::sync_existing(&self.memory, &sample, how)
            .map_err(|_| VmError::MemSize(self.memory.size() >> 20))
    }

    /// Saves the microVM's state at its ready point (guest memory is saved separately).
    pub fn save(&mut self) -> Result<VmState, VmError> {
        if !self.pending {
            return Err(VmError::NotReady);
        }
        let (regs, sregs) = self.vcpu.regs()?;
        let vcpu = arch::save_vcpu(self._vm.kvm, &self.vcpu.fd, &self.cpuid, regs, sregs)?;
        let threads = self
            .parked
            .iter()
            .map(|(&tid, p)| ParkedThread {
                tid,
                regs: p.regs,
                xsave: p.xsave.clone(),
            })
            .collect();
        Ok(VmState {
            mem_size: self.memory.size(),
            vcpu,
            os: self.os.save(),
            threads,
        })
    }

    /// Builds a microVM from a saved state over `memory`, which holds (or will be filled
    /// with) the snapshot's guest memory. The guest resumes inside its pending read of
    /// stdin at the first [`run`](Self::run).
    pub fn restore(
        memory: GuestMemory,
        state: &VmState,
        stdout: Sink,
        stderr: Sink,
    ) -> Result<Self, VmError> {
        if memory.size() != state.mem_size {
            return Err(VmError::MemSize(state.mem_size >> 20));
        }
        let vm = Vm::new(&memory)?;
        let vcpu = Vcpu::new(vm.kvm, &vm.fd)?;
        Self::restore_on(vm, vcpu, memory, None, true, state, stdout, stderr)
    }

    /// [`MicroVm::restore`] on a VM shell from the pool ([`shell::take`]): `memory`
    /// must be guest memory over `shell.memory` (the shell's own mapping). The shell
    /// goes back to the pool when the microVM is dropped.
    pub fn restore_in_shell(
        shell: Shell,
        memory: GuestMemory,
        state: &VmState,
        stdout: Sink,
        stderr: Sink,
    ) -> Result<Self, VmError> {
        let Shell {
            vcpu,
            vm,
            memory: shell_memory,
            uses,
            cpuid,
        } = shell;
        if memory.size() != state.mem_size
            || memory.host_addr() != shell_memory.host_addr()
            || shell_memory.size() != memory.size()
        {
            shell::give_back(Shell {
                vcpu,
                vm,
                memory: shell_memory,
                uses,
                cpuid,
            });
            return Err(VmError::MemSize(state.mem_size >> 20));
        }
        // A vCPU that has run keeps the CPUID it was given (KVM refuses another).
        let set_cpuid = match &cpuid {
            None => true,
            Some(c) if *c == state.vcpu.cpuid => false,
            Some(_) => {
                return Err(VmError::Cpu(arch::CpuSetupError::SetCpuid(
                    kvm_ioctls::Error::new(libc::EINVAL),
                )));
            }
        };
        Self::restore_on(
            vm,
            vcpu,
            memory,
            Some((shell_memory, uses)),
            set_cpuid,
            state,
            stdout,
            stderr,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn restore_on(
        vm: Vm,
        mut vcpu: Vcpu,
        memory: GuestMemory,
        shell: Option<(ShellMemory, u64)>,
        set_cpuid: bool,
        state: &VmState,
        stdout: Sink,
        stderr: Sink,
    ) -> Result<Self, VmError> {
        // On an error the shell is destroyed with the VM, not handed back.
        let cpuid = arch::restore_vcpu_with(vm.kvm, &vcpu.fd, &state.vcpu, set_cpuid)?;
        vcpu.invalidate_sync();
        // Before the VM and vCPU go into their `ManuallyDrop`s: an error here drops them.
        let os = GuestOs::from_state(state.os.clone(), stdout, stderr)?;
        let parked = state
            .threads
            .iter()
            .map(|t| {
                (
                    t.tid,
                    Parked {
                        regs: t.regs,
                        xsave: t.xsave.clone(),
                    },
                )
            })
            .collect();
        Ok(Self {
            vcpu: ManuallyDrop::new(vcpu),
            _vm: ManuallyDrop::new(vm),
            memory,
            shell,
            on_cpu: os.threads.current_tid(),
            os,
            pending: true,
            cpuid,
            watchdog: Watchdog::new(),
            parked,
            sliced: false,
        })
    }

    /// Restores that used this microVM's VM shell before it (`None`: not from a shell).
    pub fn shell_uses(&self) -> Option<u64> {
        self.shell.as_ref().map(|(_, uses)| *uses)
    }

    /// Runs the guest until it waits for input, exits, or fails. `limit` bounds the
    /// guest's running time in this call.
    pub fn run(&mut self, limit: Option<Duration>) -> Result<RunExit, VmError> {
        let deadline = limit.map(|d| Instant::now() + d);
        self.update_slice()?;
        let _armed = self.watchdog.arm(deadline).map_err(VmError::Watchdog)?;
        let vcpu = &self.vcpu;
        let mask = KickMask::block(|mask| vcpu.set_run_signal_mask(mask))?;
        let timeout = || GuestFault::Timeout(limit.unwrap_or_default()).into();
        // At the ready point every thread is blocked: input may have woken one.
        let mut switch = std::mem::take(&mut self.pending);
        loop {
            if switch {
                if let Some(exit) = self.schedule(deadline, limit)? {
                    return Ok(exit);
                }
                switch = false;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timeout());
            }
            let exit = self.vcpu.run()?;
            match exit {
                Exit::IoOut {
                    port: layout::SYSCALL_PORT,
                    ..
                } => {
                    let rip = self.vcpu.regs()?.0.rip;
                    if rip != layout::SYSCALL_STUB + 2 {
                        return Err(GuestFault::StrayIo {
                            port: layout::SYSCALL_PORT,
                            rip,
                        }
                        .into());
                    }
                    match self.handle_syscall()? {
                        Step::Continue => {}
                        Step::Switch => switch = true,
                        Step::Exit(exit) => return Ok(exit),
                    }
                }
                Exit::IoOut {
                    port: layout::EXCEPTION_PORT,
                    byte,
                } => {
                    // Only the exception stubs report exceptions; anything else
                    // writing to that port is stray I/O.
                    let rip = self.vcpu.regs()?.0.rip;
                    if rip != layout::exception_stub(byte) + 4 {
                        return Err(GuestFault::StrayIo {
                            port: layout::EXCEPTION_PORT,
                            rip,
                        }
                        .into());
                    }
                    return Err(self.exception(byte)?.into());
                }
                Exit::IoOut { port, .. } | Exit::IoIn { port } => {
                    let rip = self.vcpu.regs()?.0.rip;
                    return Err(GuestFault::StrayIo { port, rip }.into());
                }
                Exit::Interrupted => {
                    mask.take_pending();
                    // A time slice ended (or the deadline passed): the timeouts due
                    // end, and the next runnable thread gets the vCPU. A thread stopped on the syscall stub's
                    // `out` is left to make its call first.
                    self.os.threads.wake_expired(monotonic_ns());
                    if self.os.threads.others_runnable()
                        && self.vcpu.regs()?.0.rip != layout::SYSCALL_STUB
                    {
                        self.os.threads.yield_current(Resume::Continue);
                        switch = true;
                    }
                }
                Exit::Shutdown => {
                    let rip = self.vcpu.regs()?.0.rip;
                    return Err(GuestFault::TripleFault { rip }.into());
                }
                Exit::Mmio { addr } => {
                    let rip = self.vcpu.regs()?.0.rip;
                    return Err(GuestFault::UnexpectedExit {
                        what: format!("access to {addr:#x} outside guest memory"),
                        rip,
                    }
                    .into());
                }
                Exit::Hlt => {
                    let rip = self.vcpu.regs()?.0.rip;
                    return Err(GuestFault::UnexpectedExit {
                        what: "hlt".into(),
                        rip,
                    }
                    .into());
                }
                Exit::Other(what) => {
                    let rip = self.vcpu.regs()?.0.rip;
                    return Err(GuestFault::UnexpectedExit {
                        what: what.into(),
                        rip,
                    }
                    .into());
                }
            }
        }
    }

    /// Puts the next runnable thread on the vCPU, waiting (on the host) for the
    /// earliest timeout when every thread is blocked. `Some` when the run ends: the
    /// ready point (every thread blocked, one on stdin), or the program exited.
    fn schedule(
        &mut self,
        deadline: Option<Instant>,
        limit: Option<Duration>,
    ) -> Result<Option<RunExit>, VmError> {
        loop {
            self.os.threads.wake_expired(monotonic_ns());
            if let Some((tid, resume)) = self.os.threads.pick_next() {
                self.load(tid)?;
                match resume {
                    Resume::Continue => return Ok(None),
                    Resume::Return(value) => {
                        let (mut regs, mut sregs) = self.vcpu.regs()?;
                        arch::return_from_syscall(&mut regs, &mut sregs, value as u64);
                        self.vcpu.set_regs(&regs, Some(&sregs))?;
                        return Ok(None);
                    }
                    Resume::Retry {
                        timed_out,
                        deadline,
                    } => {
                        self.os.set_retry(Some((timed_out, deadline)));
                        let step = self.handle_syscall();
                        self.os.set_retry(None);
                        match step? {
                            Step::Continue => return Ok(None),
                            Step::Switch => continue,
                            Step::Exit(exit) => return Ok(Some(exit)),
                        }
                    }
                }
            }
            if self.os.threads.waits_on_stdin() {
                self.pending = true;
                return Ok(Some(RunExit::WaitingForInput));
            }
            let Some(wake) = self.os.threads.earliest_deadline() else {
                return Err(GuestFault::Stuck(format!(
                    "deadlock: every thread is blocked and nothing can wake them ({})",
                    self.os.threads.describe_waits()
                ))
                .into());
            };
            // Every thread sleeps: the host waits for the first timeout, not past
            // the run's time limit.
            let mut idle = Duration::from_nanos(wake.saturating_sub(monotonic_ns()));
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(GuestFault::Timeout(limit.unwrap_or_default()).into());
                }
                idle = idle.min(left);
            }
            std::thread::sleep(idle);
        }
    }

    /// Puts thread `tid` on the vCPU, parking the one there (unless it exited).
    fn load(&mut self, tid: u32) -> Result<(), VmError> {
        if self.on_cpu != tid {
            let (regs, mut sregs) = self.vcpu.regs()?;
            if self.os.threads.contains(self.on_cpu) {
                let xsave = self.vcpu.xsave()?.region.to_vec();
                self.parked.insert(self.on_cpu, Parked { regs, xsave });
            }
            let next = self
                .parked
                .remove(&tid)
                .ok_or(VmError::NoThreadContext(tid))?;
            let thread = self
                .os
                .threads
                .get(tid)
                .ok_or(VmError::NoThreadContext(tid))?;
            sregs.fs.base = thread.fs_base;
            sregs.gs.base = thread.gs_base;
            // Every thread runs at CPL3; the sregs of an exit in the syscall stub may
            // say otherwise.
            sregs.cs = arch::user_cs();
            sregs.ss = arch::user_ss();
            self.vcpu.set_regs(&next.regs, Some(&sregs))?;
            let mut xsave = kvm_xsave::default();
            if next.xsave.len() != xsave.region.len() {
                return Err(VmError::NoThreadContext(tid));
            }
            xsave.region.copy_from_slice(&next.xsave);
            self.vcpu.set_xsave(&xsave)?;
            self.on_cpu = tid;
        }
        self.os.threads.set_current(tid);
        Ok(())
    }

    /// Turns the watchdog's time slice on while more than one thread exists.
    fn update_slice(&mut self) -> Result<(), VmError> {
        let want = self.os.threads.len() > 1;
        if want != self.sliced {
            self.watchdog
                .set_slice(want.then_some(TIME_SLICE))
                .map_err(VmError::Watchdog)?;
            self.sliced = want;
        }
        Ok(())
    }

    /// Carries out the system call the thread on the vCPU is stopped at.
    fn handle_syscall(&mut self) -> Result<Step, VmError> {
        let (mut regs, mut sregs) = self.vcpu.regs()?;
        let call = Syscall {
            nr: regs.rax,
            args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
        };
        let outcome = self.os.syscall(&self.memory, &call);
        // A page that lost a permission must not keep it through a translation KVM
        // cached before the page tables changed.
        for (start, end) in self.os.take_lowered() {
            self.memory.drop_translations(start, end)?;
        }
        match outcome {
            Outcome::Return(value) => {
                arch::return_from_syscall(&mut regs, &mut sregs, value as u64);
                if let Some((fs, gs)) = self.os.take_changed_bases() {
                    sregs.fs.base = fs;
                    sregs.gs.base = gs;
                }
                self.vcpu.set_regs(&regs, Some(&sregs))?;
                let spawned = self.os.threads.take_spawned();
                if !spawned.is_empty() {
                    // A new thread starts where its parent returns from `clone`, with
                    // 0 in RAX, its own stack, and a copy of the parent's FPU state.
                    let xsave = self.vcpu.xsave()?.region.to_vec();
                    for child in spawned {
                        let mut regs = regs;
                        regs.rax = 0;
                        if child.stack != 0 {
                            regs.rsp = child.stack;
                        }
                        let xsave = xsave.clone();
                        self.parked.insert(child.tid, Parked { regs, xsave });
                    }
                    self.update_slice()?;
                }
                Ok(Step::Continue)
            }
            Outcome::BlockOnStdin | Outcome::Switch => {
                self.os.take_changed_bases();
                self.update_slice()?;
                Ok(Step::Switch)
            }
            Outcome::Exit(code) => {
                self.os.flush();
                self.pending = false;
                Ok(Step::Exit(RunExit::Exited(code)))
            }
            Outcome::Signal(signal) => Err(GuestFault::Signal {
                signal,
                name: signal_name(signal),
                detail: String::new(),
            }
            .into()),
        }
    }

    /// Describes the exception the guest took (vector `vector`).
    fn exception(&mut self, vector: u8) -> Result<GuestFault, VmError> {
        let (regs, sregs) = self.vcpu.regs()?;
        let at = arch::FaultRegs {
            rip: regs.rip,
            rsp: regs.rsp,
            rdx: regs.rdx,
            cr2: sregs.cr2,
        };
        if let Some(fault) = self.segfault(vector, &at) {
            return Ok(fault);
        }
        let read = |addr, buf: &mut [u8]| self.memory.read(addr, buf).ok();
        Ok(match arch::decode_exception(vector, &at, read) {
            arch::ExceptionReport::StrayIo { port, rip } => GuestFault::StrayIo { port, rip },
            arch::ExceptionReport::Exception {
                vector,
                name,
                detail,
                rip,
            } => match linux_signal(vector) {
                // What Linux does with the exception: a signal, which ends a program
                // that does not catch it (and guests' handlers are never run).
                Some(signal) => GuestFault::Signal {
                    signal,
                    name: signal_name(signal),
                    detail: format!(": {name}{detail} at RIP {rip:#x}"),
                },
                None => GuestFault::Exception {
                    vector,
                    name,
                    detail,
                    rip,
                },
            },
        })
    }

    /// A page fault that Linux answers with `SIGSEGV` and the VMM's page tables made: an
    /// access to the stack guard gap (a stack overflow) or one the page's protection
    /// forbids. Other exceptions (page faults in the system area, null pointers) are
    /// reported as crashes.
    fn segfault(&self, vector: u8, at: &arch::FaultRegs) -> Option<GuestFault> {
        if vector != arch::PAGE_FAULT {
            return None;
        }
        let frame = arch::read_exception_frame(vector, at.rsp, |addr| {
            let mut word = [0u8; 8];
            self.memory.read(addr, &mut word).ok()?;
            Some(u64::from_le_bytes(word))
        })?;
        let fault = arch::PageFault::decode(frame.error_code?, at.cr2);
        let (guard, guard_end) = self.os.mm.stack_guard();
        let in_user_memory = (layout::SYSTEM_AREA_END..self.memory.size()).contains(&fault.addr);
        let protection = self.os.mm.protection_at(fault.addr);
        let detail = if (guard..guard_end).contains(&fault.addr) {
            format!(
                ": stack overflow: {} in the stack guard gap at RIP {:#x}",
                fault.describe_access(),
                frame.rip
            )
        } else if in_user_memory && !protection.allows(fault.access) {
            let what = match (protection, fault.access) {
                (arch::Protection::None, _) => "a PROT_NONE page",
                (_, arch::Access::Execute) => "a non-executable page",
                _ => "a read-only page",
            };
            format!(
                ": page fault: {} ({what}) at RIP {:#x}",
                fault.describe_access(),
                frame.rip
            )
        } else {
            return None;
        };
        Some(GuestFault::Signal {
            signal: libc::SIGSEGV,
            name: "SIGSEGV",
            detail,
        })
    }

    /// Whether the guest is at its ready point (a read of stdin pending).
    pub fn is_waiting_for_input(&self) -> bool {
        self.pending
    }
}

impl Drop for MicroVm {
    fn drop(&mut self) {
        // SAFETY: both fields are taken here, once, and never used again.
        let (vcpu, vm) = unsafe {
            (
                ManuallyDrop::take(&mut self.vcpu),
                ManuallyDrop::take(&mut self._vm),
            )
        };
        match self.shell.take() {
            // `memory` borrows the shell's mapping and is dropped after this, which
            // leaves the mapping alone; the pool resets it off this thread.
            Some((memory, uses)) => shell::give_back(Shell {
                vcpu,
                vm,
                memory,
                uses,
                cpuid: Some(self.cpuid.as_slice().to_vec()),
            }),
            None => {
                drop(vcpu);
                drop(vm);
            }
        }
    }
}

/// The signal Linux sends a user program for CPU exception `vector` (as its
/// `arch/x86/kernel/traps.c` does), if it sends one.
fn linux_signal(vector: u8) -> Option<i32> {
    match vector {
        0 | 16 | 19 => Some(libc::SIGFPE),                // #DE, #MF, #XM
        1 | 3 => Some(libc::SIGTRAP),                     // #DB, #BP
        4 | 5 | 11 | 12 | 13 | 14 => Some(libc::SIGSEGV), // #OF, #BR, #NP, #SS, #GP, #PF
        6 => Some(libc::SIGILL),                          // #UD
        17 => Some(libc::SIGBUS),                         // #AC
        _ => None,
    }
}

/// Maps a loaded program's read-only and writable-executable segments with their
/// protections.
/// The first page of the program's segments: the lowest of its read-only segments and
/// of its program headers (loaded with the first segment).
fn program_start(program: &loader::LoadedProgram) -> u64 {
    program
        .read_only
        .iter()
        .map(|r| r.0)
        .chain(program.writable_exec.iter().map(|r| r.0))
        .chain([program.phdr & !(layout::PAGE_SIZE - 1)])
        .min()
        .unwrap_or(program.end)
        .min(program.end)
}

fn protect_segments(space: &mut AddressSpace, program: &loader::LoadedProgram) {
    for &(start, end, exec) in &program.read_only {
        let protection = if exec {
            arch::Protection::ReadExec
        } else {
            arch::Protection::Read
        };
        space.set_protection(start, end, protection);
    }
    for &(start, end) in &program.writable_exec {
        space.set_protection(start, end, arch::Protection::ReadWriteExec);
    }
}

fn mem_size(mib: u64) -> Result<u64, VmError> {
    let size = mib.checked_mul(1 << 20).ok_or(VmError::MemSize(mib))?;
    if !(layout::MIN_MEM_SIZE..=layout::MAX_MEM_SIZE).contains(&size)
        || !size.is_multiple_of(layout::LARGE_PAGE_SIZE)
    {
        return Err(VmError::MemSize(mib));
    }
    Ok(size)
}

/// Writes page tables, descriptor tables and stubs into fresh guest memory.
fn write_system_area(memory: &GuestMemory) -> Result<(), VmError> {
    let fault = |_| VmError::MemSize(memory.size() >> 20);
    arch::write_page_tables(memory.size(), |addr, value| memory.write_obj(addr, value))
        .map_err(fault)?;
    arch::write_system_tables(|addr, bytes| memory.write(addr, bytes)).map_err(fault)?;
    vdso::install(memory).map_err(fault)?;
    Ok(())
}

fn getrandom(buf: &mut [u8]) {
    // SAFETY: writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(n, buf.len() as isize, "getrandom failed");
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    }
}
