//! The guest's operating system: the Linux system calls a static program makes,
//! implemented by the VMM against the guest's memory and three standard streams.
//!
//! The function contract lives here too: the guest reads requests from stdin (a byte
//! queue the VMM fills) and writes responses to stdout. When the guest reads stdin
//! and nothing is pending, the call is left pending and the VMM is told: that is the
//! "ready" point a snapshot is taken at, and where an invocation ends.
//!
//! Every number here comes from the guest: conversions between integer types are
//! checked (`try_from`) or carry a comment saying why they cannot truncate or wrap.

#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod abi;
pub mod fs;
pub mod mm;
mod syscalls;
pub mod threads;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use self::fs::{FsError, Vfs, VfsState};
use self::mm::AddressSpace;
use self::threads::{ThreadTable, WaitOn};

/// A system call as the guest made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    /// The number (RAX).
    pub nr: u64,
    /// The arguments (RDI, RSI, RDX, R10, R8, R9).
    pub args: [u64; 6],
}

/// What the VMM does after a system call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value (a negative errno on failure) to the guest.
    Return(i64),
    /// The guest reads stdin and nothing is pending: the calling thread is blocked
    /// on stdin (its call is carried out again when input arrives).
    BlockOnStdin,
    /// The calling thread stopped running (it blocked, yielded or exited): the thread
    /// table says why, and another thread runs.
    Switch,
    /// The program exited with this status.
    Exit(i32),
    /// The program sent itself this fatal signal (e.g. `abort()`).
    Signal(i32),
}

/// Counters of the guest's activity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// System calls carried out (a call that blocks counts each time it is tried).
    pub syscalls: u64,
    /// Bytes written to stdout.
    pub stdout_bytes: u64,
    /// Newlines written to stdout.
    pub stdout_lines: u64,
    /// Bytes written to stderr.
    pub stderr_bytes: u64,
}

/// Most distinct unsupported system call numbers logged, and counted by number, per
/// guest; the calls beyond them are counted together and logged once, in a summary line.
pub const MAX_LOGGED_UNSUPPORTED: usize = 16;

/// Unsupported system calls (not implemented, or refused) the guest made: by number for
/// the first [`MAX_LOGGED_UNSUPPORTED`] distinct numbers, the others together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsupportedCalls {
    /// Calls per number.
    pub by_nr: BTreeMap<u64, u64>,
    /// Calls of the numbers past the first [`MAX_LOGGED_UNSUPPORTED`].
    pub other: u64,
}

impl UnsupportedCalls {
    /// No calls counted.
    pub fn is_empty(&self) -> bool {
        self.by_nr.is_empty() && self.other == 0
    }
}

/// The part of the guest OS a snapshot saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestOsState {
    /// The program's address space.
    pub mm: AddressSpace,
    /// The FS base the current thread set (`arch_prctl`).
    pub fs_base: u64,
    /// The GS base the current thread set.
    pub gs_base: u64,
    /// The threads (format 4 on; a state without it is one thread blocked reading
    /// stdin, with the bases above).
    #[serde(default)]
    pub threads: Option<ThreadTable>,
    /// The activity counters.
    pub counters: Counters,
    /// The file system: open files, working directory, writable layer.
    pub fs: VfsState,
}

/// Where the guest's stdout or stderr goes.
pub type Sink = Box<dyn Write + Send>;

/// The guest's operating system: its address space, standard streams and the state
/// its system calls keep. It needs no VM: [`syscall`](Self::syscall) works on a
/// [`GuestMemory`](crate::vstate::memory::GuestMemory) alone.
pub struct GuestOs {
    /// The program's address space (heap, mappings, stack).
    pub mm: AddressSpace,
    stdin: VecDeque<u8>,
    stdin_eof: bool,
    stdout: Sink,
    stderr: Sink,
    /// The threads, their waits and the run queue.
    pub threads: ThreadTable,
    /// FS/GS base changed by the last system call: the VMM must load them.
    bases_changed: bool,
    /// The system call being carried out again: whether its timeout passed, and its
    /// deadline.
    retry: Option<(bool, Option<u64>)>,
    counters: Counters,
    /// When the last newline went to stdout (the end of a response line).
    last_line_at: Option<Instant>,
    /// Unsupported system call numbers already logged (at most
    /// [`MAX_LOGGED_UNSUPPORTED`]).
    warned: BTreeSet<u64>,
    /// The summary line for the numbers past those was logged.
    warned_rest: bool,
    /// Unsupported calls since the last [`take_unsupported`](Self::take_unsupported).
    unsupported: UnsupportedCalls,
    /// Ranges where a page lost a permission: translations the vCPU may cache for them
    /// must be dropped.
    lowered: Vec<(u64, u64)>,
    /// The file system and the descriptor table.
    pub vfs: Vfs,
    /// Print every system call to stderr (`reap run --trace`).
    trace: bool,
}

impl GuestOs {
    /// A guest OS for a freshly loaded program: empty stdin, FS and GS base 0.
    pub fn new(mm: AddressSpace, stdout: Sink, stderr: Sink) -> Self {
        Self {
            mm,
            stdin: VecDeque::new(),
            stdin_eof: false,
            stdout,
            stderr,
            threads: ThreadTable::new(),
            bases_changed: false,
            retry: None,
            counters: Counters::default(),
            last_line_at: None,
            warned: BTreeSet::new(),
            warned_rest: false,
            unsupported: UnsupportedCalls::default(),
            lowered: Vec::new(),
            vfs: Vfs::none(),
            trace: false,
        }
    }

    /// Gives the guest a file system (its root, descriptors and working directory).
    pub fn set_vfs(&mut self, vfs: Vfs) {
        self.vfs = vfs;
    }

    /// Prints every system call, its arguments and result to stderr, strace-style.
    pub fn set_trace(&mut self, trace: bool) {
        self.trace = trace;
    }

    /// The guest OS of a snapshot, with new output streams and an empty stdin. Its
    /// image must be where it was and the files the guest opened unchanged.
    pub fn from_state(state: GuestOsState, stdout: Sink, stderr: Sink) -> Result<Self, FsError> {
        let vfs = Vfs::restore(state.fs)?;
        let mut os = Self::new(state.mm, stdout, stderr);
        os.threads = match state.threads {
            Some(mut threads) => {
                threads.rebase(threads::monotonic_ns());
                threads
            }
            None => {
                let mut threads = ThreadTable::single_at_ready_point();
                threads.current_mut().fs_base = state.fs_base;
                threads.current_mut().gs_base = state.gs_base;
                threads
            }
        };
        os.counters = state.counters;
        os.vfs = vfs;
        Ok(os)
    }

    /// What a snapshot keeps. stdin is not saved: at the ready point it is empty.
    pub fn save(&self) -> GuestOsState {
        let mut threads = self.threads.clone();
        threads.mark_saved(threads::monotonic_ns());
        GuestOsState {
            mm: self.mm.clone(),
            fs_base: self.fs_base(),
            gs_base: self.gs_base(),
            threads: Some(threads),
            counters: self.counters,
            fs: self.vfs.save(),
        }
    }

    /// Replaces the output streams (e.g. to capture one invocation's response).
    pub fn set_output(&mut self, stdout: Sink, stderr: Sink) {
        self.stdout = stdout;
        self.stderr = stderr;
    }

    /// Appends bytes to the guest's stdin.
    pub fn push_stdin(&mut self, data: &[u8]) {
        self.stdin.extend(data);
        if !data.is_empty() {
            self.threads.wake_io(true);
        }
    }

    /// Ends the guest's stdin: once drained, reads return 0.
    pub fn close_stdin(&mut self) {
        self.stdin_eof = true;
        self.threads.wake_io(true);
    }

    /// The next system call is one carried out again after a wait
    /// ([`threads::Resume::Retry`]): whether the wait timed out, and its deadline (a
    /// poll blocking again keeps it). `None` after that call.
    pub fn set_retry(&mut self, retry: Option<(bool, Option<u64>)>) {
        self.retry = retry;
    }

    /// Blocks the current thread on `on` until `deadline` (host `CLOCK_MONOTONIC`
    /// ns); the outcome that tells the VMM.
    fn block(&mut self, on: WaitOn, deadline: Option<u64>) -> Outcome {
        self.threads.block(on, deadline);
        match on {
            WaitOn::Io { stdin: true } => Outcome::BlockOnStdin,
            _ => Outcome::Switch,
        }
    }

    /// Bytes pushed to stdin and not yet read.
    pub fn stdin_pending(&self) -> usize {
        self.stdin.len()
    }

    /// The activity counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The unsupported system calls counted since the last call (and resets the count).
    pub fn take_unsupported(&mut self) -> UnsupportedCalls {
        std::mem::take(&mut self.unsupported)
    }

    /// When the last newline went to stdout.
    pub fn last_line_at(&self) -> Option<Instant> {
        self.last_line_at
    }

    /// The FS and GS bases if a system call changed them since the last call.
    pub fn take_changed_bases(&mut self) -> Option<(u64, u64)> {
        std::mem::take(&mut self.bases_changed).then_some((self.fs_base(), self.gs_base()))
    }

    /// The page ranges where a page lost a permission since the last call: the VMM must
    /// drop the translations the vCPU may have cached for them before the guest runs
    /// again.
    pub fn take_lowered(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.lowered)
    }

    /// Writes the page-table entries the address space has pending into `mem` (at boot:
    /// the stack guard gap).
    pub fn write_page_tables(
        &mut self,
        mem: &crate::vstate::memory::GuestMemory,
    ) -> Result<(), crate::vstate::memory::Efault> {
        for (addr, value) in self.mm.take_page_table_writes().entries {
            mem.write_obj(addr, value)?;
        }
        Ok(())
    }

    /// The FS base the current thread set.
    pub fn fs_base(&self) -> u64 {
        self.threads
            .get(self.threads.current_tid())
            .map_or(0, |t| t.fs_base)
    }

    /// The GS base the current thread set.
    pub fn gs_base(&self) -> u64 {
        self.threads
            .get(self.threads.current_tid())
            .map_or(0, |t| t.gs_base)
    }

    /// Flushes stdout and stderr, ignoring errors (the VMM does this when the guest exits).
    pub fn flush(&mut self) {
        let _ = self.stdout.flush();
        let _ = self.stderr.flush();
    }
}
