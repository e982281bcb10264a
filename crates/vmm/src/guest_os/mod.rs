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
pub mod mm;
mod syscalls;

use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use self::mm::AddressSpace;

/// A system call as the guest made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    pub nr: u64,
    pub args: [u64; 6],
}

/// What the VMM does after a system call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value (a negative errno on failure) to the guest.
    Return(i64),
    /// The guest reads stdin and nothing is pending: leave the call pending.
    BlockOnStdin,
    /// The program exited with this status.
    Exit(i32),
    /// The program sent itself this fatal signal (e.g. `abort()`).
    Signal(i32),
    /// The program can never make progress (e.g. waits on a futex with no other thread).
    Fatal(String),
}

/// Counters of the guest's activity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub syscalls: u64,
    pub stdout_bytes: u64,
    pub stdout_lines: u64,
    pub stderr_bytes: u64,
}

/// The part of the guest OS a snapshot saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestOsState {
    pub mm: AddressSpace,
    pub fs_base: u64,
    pub gs_base: u64,
    pub counters: Counters,
}

pub type Sink = Box<dyn Write + Send>;

pub struct GuestOs {
    pub mm: AddressSpace,
    stdin: VecDeque<u8>,
    stdin_eof: bool,
    stdout: Sink,
    stderr: Sink,
    fs_base: u64,
    gs_base: u64,
    /// FS/GS base changed by the last system call: the VMM must load them.
    bases_changed: bool,
    counters: Counters,
    /// When the last newline went to stdout (the end of a response line).
    last_line_at: Option<Instant>,
    /// Unsupported system calls already logged.
    warned: BTreeSet<u64>,
    /// Sleeps end no later than this (the run's time limit).
    deadline: Option<Instant>,
}

impl GuestOs {
    pub fn new(mm: AddressSpace, stdout: Sink, stderr: Sink) -> Self {
        Self {
            mm,
            stdin: VecDeque::new(),
            stdin_eof: false,
            stdout,
            stderr,
            fs_base: 0,
            gs_base: 0,
            bases_changed: false,
            counters: Counters::default(),
            last_line_at: None,
            warned: BTreeSet::new(),
            deadline: None,
        }
    }

    pub fn from_state(state: GuestOsState, stdout: Sink, stderr: Sink) -> Self {
        let mut os = Self::new(state.mm, stdout, stderr);
        os.fs_base = state.fs_base;
        os.gs_base = state.gs_base;
        os.counters = state.counters;
        os
    }

    pub fn save(&self) -> GuestOsState {
        GuestOsState {
            mm: self.mm.clone(),
            fs_base: self.fs_base,
            gs_base: self.gs_base,
            counters: self.counters,
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
    }

    /// Ends the guest's stdin: once drained, reads return 0.
    pub fn close_stdin(&mut self) {
        self.stdin_eof = true;
    }

    pub fn stdin_pending(&self) -> usize {
        self.stdin.len()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn last_line_at(&self) -> Option<Instant> {
        self.last_line_at
    }

    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The FS and GS bases if a system call changed them since the last call.
    pub fn take_changed_bases(&mut self) -> Option<(u64, u64)> {
        std::mem::take(&mut self.bases_changed).then_some((self.fs_base, self.gs_base))
    }

    pub fn fs_base(&self) -> u64 {
        self.fs_base
    }

    pub fn gs_base(&self) -> u64 {
        self.gs_base
    }

    pub fn flush(&mut self) {
        let _ = self.stdout.flush();
        let _ = self.stderr.flush();
    }
}
