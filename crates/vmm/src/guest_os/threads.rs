//! The program's threads as the system calls see them: the thread table, who runs
//! next, and who waits for what (futex addresses, sleeps, input).
//!
//! The VMM multiplexes the threads on the microVM's vCPU (`microvm.rs` keeps each
//! parked thread's registers and XSAVE area); this module is KVM-free and decides
//! *which* thread runs and what its blocked system call returns when it is woken.
//!
//! A futex wait queue is not a separate structure: a blocked thread's [`Wait`] holds
//! the futex address and bitset and a sequence number taken when it blocked, and a
//! wake takes the matching waiters in that order (FIFO, as Linux's hash buckets are).
//! With at most [`MAX_THREADS`] threads a scan of the table is cheap.
//!
//! Deadlines are host `CLOCK_MONOTONIC` times in nanoseconds (the clock the guest's
//! timeouts are measured on); a snapshot keeps the time it was taken, and a restore
//! moves every deadline by the time that passed since ([`ThreadTable::rebase`]).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Most threads a program may have at once; `clone` beyond it fails with `EAGAIN`.
pub const MAX_THREADS: usize = 256;
/// The thread id of the program's first thread (also its process id).
pub const MAIN_TID: u32 = 1;
/// Largest thread id handed out before the numbering wraps (Linux's `PID_MAX_LIMIT`).
const TID_MAX: u32 = 1 << 22;

/// The host's `CLOCK_MONOTONIC` in nanoseconds: the clock of every deadline here.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// One thread of the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    /// Its id (`gettid`).
    pub tid: u32,
    /// `CLONE_CHILD_CLEARTID` / `set_tid_address`: zeroed and futex-woken at exit.
    pub clear_child_tid: u64,
    /// `set_robust_list`'s head (kept, not walked at exit).
    pub robust_list: u64,
    /// The signal mask (`rt_sigprocmask`).
    pub sigmask: u64,
    /// FS base (`arch_prctl`, `CLONE_SETTLS`).
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// Whether it may run, and how its system call ends.
    pub state: RunState,
}

/// Whether a thread may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// It runs, or waits in the run queue to.
    Runnable(Resume),
    /// It is blocked in a system call.
    Blocked(Wait),
}

/// How a runnable thread continues when it is put on the vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resume {
    /// With its registers as they are (a new thread, a preempted one).
    Continue,
    /// Its pending system call returns this value (a futex woken or timed out, a
    /// sleep ended, `sched_yield`).
    Return(i64),
    /// Its pending system call is carried out again (a read of stdin or a poll that
    /// may now find data); `timed_out` when its timeout passed meanwhile.
    Retry {
        /// The wait's timeout passed.
        timed_out: bool,
        /// The wait's deadline, which the call keeps if it blocks again.
        deadline: Option<u64>,
    },
}

/// What a blocked thread waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    /// The event.
    pub on: WaitOn,
    /// When the wait times out (host `CLOCK_MONOTONIC`, ns), if it does.
    pub deadline: Option<u64>,
    /// Order of blocking, for FIFO wakes.
    pub seq: u64,
}

/// The event a blocked thread waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitOn {
    /// A `FUTEX_WAKE*` on this address matching this bitset.
    Futex {
        /// The futex word's address.
        addr: u64,
        /// The waiter's bitset (all ones for `FUTEX_WAIT`).
        bitset: u32,
    },
    /// Only its deadline (`nanosleep`).
    Sleep,
    /// Input: stdin when `stdin`, else a pipe or a poll of other descriptors. The call
    /// is retried when that may have changed.
    Io {
        /// It waits on stdin (the ready point).
        stdin: bool,
    },
}

/// A thread `clone` created whose registers the VMM must set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// The new thread's id.
    pub tid: u32,
    /// Its stack pointer (0: the parent's).
    pub stack: u64,
}

/// The program's threads and its scheduler's run queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadTable {
    threads: BTreeMap<u32, Thread>,
    /// The thread on the vCPU (or last on it).
    current: u32,
    /// Runnable threads other than the current one, in the order they run.
    run_queue: VecDeque<u32>,
    next_tid: u32,
    seq: u64,
    /// Host `CLOCK_MONOTONIC` (ns) when the state was saved.
    saved_at: u64,
    #[serde(skip)]
    spawned: Vec<Spawned>,
}

impl Default for ThreadTable {
    fn default() -> Self {
        Self::new()
    }
}

/// Why `clone` could not add a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyThreads;

impl ThreadTable {
    /// A program with its main thread, running.
    pub fn new() -> Self {
        let main = Thread {
            tid: MAIN_TID,
            clear_child_tid: 0,
            robust_list: 0,
            sigmask: 0,
            fs_base: 0,
            gs_base: 0,
            state: RunState::Runnable(Resume::Continue),
        };
        Self {
            threads: BTreeMap::from([(MAIN_TID, main)]),
            current: MAIN_TID,
            run_queue: VecDeque::new(),
            next_tid: MAIN_TID + 1,
            seq: 0,
            saved_at: 0,
            spawned: Vec::new(),
        }
    }

    /// The thread table of a snapshot from before threads were saved (format 3): one
    /// thread, blocked reading stdin.
    pub fn single_at_ready_point() -> Self {
        let mut t = Self::new();
        t.block(WaitOn::Io { stdin: true }, None);
        t
    }

    /// The thread on the vCPU.
    pub fn current(&self) -> &Thread {
        self.threads
            .get(&self.current)
            .expect("the current thread is in the table")
    }

    /// The thread on the vCPU, to change.
    pub fn current_mut(&mut self) -> &mut Thread {
        self.threads
            .get_mut(&self.current)
            .expect("the current thread is in the table")
    }

    /// The current thread's id.
    pub fn current_tid(&self) -> u32 {
        self.current
    }

    /// Makes `tid` the thread on the vCPU.
    pub fn set_current(&mut self, tid: u32) {
        debug_assert!(self.threads.contains_key(&tid));
        self.current = tid;
    }

    /// A thread by id.
    pub fn get(&self, tid: u32) -> Option<&Thread> {
        self.threads.get(&tid)
    }

    /// Every thread, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Thread> {
        self.threads.values()
    }

    /// How many threads there are.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Never true: a program has at least one thread while it runs.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Adds a runnable thread, a copy of the current one but for its id, FS base and
    /// `clear_child_tid`; the VMM sets up its registers ([`take_spawned`](Self::take_spawned)).
    pub fn spawn(
        &mut self,
        stack: u64,
        fs_base: Option<u64>,
        clear_child_tid: u64,
    ) -> Result<u32, TooManyThreads> {
        if self.threads.len() >= MAX_THREADS {
            return Err(TooManyThreads);
        }
        let mut tid = self.next_tid;
        while self.threads.contains_key(&tid) {
            tid = if tid >= TID_MAX {
                MAIN_TID + 1
            } else {
                tid + 1
            };
        }
        self.next_tid = if tid >= TID_MAX {
            MAIN_TID + 1
        } else {
            tid + 1
        };
        let parent = self.current();
        let thread = Thread {
            tid,
            clear_child_tid,
            robust_list: 0,
            sigmask: parent.sigmask,
            fs_base: fs_base.unwrap_or(parent.fs_base),
            gs_base: parent.gs_base,
            state: RunState::Runnable(Resume::Continue),
        };
        self.threads.insert(tid, thread);
        self.run_queue.push_back(tid);
        self.spawned.push(Spawned { tid, stack });
        Ok(tid)
    }

    /// The threads spawned since the last call.
    pub fn take_spawned(&mut self) -> Vec<Spawned> {
        std::mem::take(&mut self.spawned)
    }

    /// Removes the current thread (it exited); returns it.
    pub fn exit_current(&mut self) -> Thread {
        let tid = self.current;
        self.run_queue.retain(|&t| t != tid);
        self.threads
            .remove(&tid)
            .expect("the current thread is in the table")
    }

    /// Whether thread `tid` exists.
    pub fn contains(&self, tid: u32) -> bool {
        self.threads.contains_key(&tid)
    }

    /// Blocks the current thread on `on` until `deadline`.
    pub fn block(&mut self, on: WaitOn, deadline: Option<u64>) {
        self.seq += 1;
        let seq = self.seq;
        self.current_mut().state = RunState::Blocked(Wait { on, deadline, seq });
    }

    /// The current thread stops running for now but stays runnable: it goes to the
    /// back of the run queue and resumes as `resume` says (`sched_yield`, preemption).
    pub fn yield_current(&mut self, resume: Resume) {
        let tid = self.current;
        self.current_mut().state = RunState::Runnable(resume);
        if !self.run_queue.contains(&tid) {
            self.run_queue.push_back(tid);
        }
    }

    /// Whether the current thread may go on running.
    pub fn current_runnable(&self) -> bool {
        self.threads
            .get(&self.current)
            .is_some_and(|t| matches!(t.state, RunState::Runnable(_)))
    }

    /// Whether a thread other than the current one waits to run.
    pub fn others_runnable(&self) -> bool {
        !self.run_queue.is_empty()
    }

    /// The next thread to run (taken off the run queue) and how it resumes.
    pub fn pick_next(&mut self) -> Option<(u32, Resume)> {
        while let Some(tid) = self.run_queue.pop_front() {
            if let Some(t) = self.threads.get_mut(&tid)
                && let RunState::Runnable(resume) = t.state
            {
                // Once on the vCPU its registers carry the resume.
                t.state = RunState::Runnable(Resume::Continue);
                return Some((tid, resume));
            }
        }
        None
    }

    fn make_runnable(&mut self, tid: u32, resume: Resume) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.state = RunState::Runnable(resume);
            if !self.run_queue.contains(&tid) {
                self.run_queue.push_back(tid);
            }
        }
    }

    /// Blocked futex waiters on `addr` whose bitset meets `bitset`, in FIFO order.
    fn futex_waiters(&self, addr: u64, bitset: u32) -> Vec<u32> {
        let mut waiters: Vec<(u64, u32)> = self
            .threads
            .values()
            .filter_map(|t| match t.state {
                RunState::Blocked(Wait {
                    on: WaitOn::Futex { addr: a, bitset: b },
                    seq,
                    ..
                }) if a == addr && b & bitset != 0 => Some((seq, t.tid)),
                _ => None,
            })
            .collect();
        waiters.sort_unstable();
        waiters.into_iter().map(|(_, tid)| tid).collect()
    }

    /// `FUTEX_WAKE(_BITSET)`: wakes up to `n` waiters of `addr` (their wait returns 0);
    /// returns how many.
    pub fn futex_wake(&mut self, addr: u64, n: u32, bitset: u32) -> u32 {
        let mut woken = 0;
        for tid in self.futex_waiters(addr, bitset) {
            if woken >= n {
                break;
            }
            self.make_runnable(tid, Resume::Return(0));
            woken += 1;
        }
        woken
    }

    /// `FUTEX_REQUEUE`: wakes up to `n` waiters of `addr`, then moves up to `n2` of the
    /// others to wait on `addr2`; returns the number woken plus the number moved.
    pub fn futex_requeue(&mut self, addr: u64, n: u32, addr2: u64, n2: u32) -> u32 {
        let woken = self.futex_wake(addr, n, u32::MAX);
        let mut moved = 0;
        for tid in self.futex_waiters(addr, u32::MAX) {
            if moved >= n2 {
                break;
            }
            if let Some(t) = self.threads.get_mut(&tid)
                && let RunState::Blocked(w) = &mut t.state
            {
                w.on = WaitOn::Futex {
                    addr: addr2,
                    bitset: u32::MAX,
                };
                moved += 1;
            }
        }
        woken + moved
    }

    /// Ends the waits whose deadline is at or before `now`: a futex wait returns
    /// `ETIMEDOUT`, a sleep 0, an I/O wait is retried knowing it timed out.
    pub fn wake_expired(&mut self, now: u64) {
        let expired: Vec<(u32, WaitOn)> = self
            .threads
            .values()
            .filter_map(|t| match t.state {
                RunState::Blocked(Wait {
                    on,
                    deadline: Some(d),
                    ..
                }) if d <= now => Some((t.tid, on)),
                _ => None,
            })
            .collect();
        for (tid, on) in expired {
            let resume = match on {
                WaitOn::Futex { .. } => Resume::Return(-i64::from(libc::ETIMEDOUT)),
                WaitOn::Sleep => Resume::Return(0),
                WaitOn::Io { .. } => Resume::Retry {
                    timed_out: true,
                    deadline: None,
                },
            };
            self.make_runnable(tid, resume);
        }
    }

    /// Makes the threads blocked on input retry their call: on stdin when `stdin`,
    /// else on pipes and polls (something was written or closed).
    pub fn wake_io(&mut self, stdin: bool) {
        let waiting: Vec<(u32, Option<u64>)> = self
            .threads
            .values()
            .filter_map(|t| match t.state {
                RunState::Blocked(Wait {
                    on: WaitOn::Io { stdin: s },
                    deadline,
                    ..
                }) if s == stdin => Some((t.tid, deadline)),
                _ => None,
            })
            .collect();
        for (tid, deadline) in waiting {
            self.make_runnable(
                tid,
                Resume::Retry {
                    timed_out: false,
                    deadline,
                },
            );
        }
    }

    /// The earliest deadline of a blocked thread.
    pub fn earliest_deadline(&self) -> Option<u64> {
        self.threads
            .values()
            .filter_map(|t| match t.state {
                RunState::Blocked(w) => w.deadline,
                RunState::Runnable(_) => None,
            })
            .min()
    }

    /// Whether a thread is blocked reading stdin.
    pub fn waits_on_stdin(&self) -> bool {
        self.threads.values().any(|t| {
            matches!(
                t.state,
                RunState::Blocked(Wait {
                    on: WaitOn::Io { stdin: true },
                    ..
                })
            )
        })
    }

    /// What every thread waits for, for a deadlock report.
    pub fn describe_waits(&self) -> String {
        self.threads
            .values()
            .map(|t| {
                let what = match t.state {
                    RunState::Runnable(_) => "runnable".to_string(),
                    RunState::Blocked(w) => match w.on {
                        WaitOn::Futex { addr, .. } => format!("futex wait on {addr:#x}"),
                        WaitOn::Sleep => "sleep".to_string(),
                        WaitOn::Io { stdin: true } => "read of stdin".to_string(),
                        WaitOn::Io { stdin: false } => "pipe or poll".to_string(),
                    },
                };
                format!("thread {}: {what}", t.tid)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks a thread table read from a snapshot: at least one thread and at most
    /// [`MAX_THREADS`], each under its own id, none with id 0.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.threads.is_empty() || self.threads.len() > MAX_THREADS {
            return Err("thread count out of range");
        }
        if self
            .threads
            .iter()
            .any(|(&tid, t)| tid == 0 || t.tid != tid)
        {
            return Err("thread ids disagree");
        }
        Ok(())
    }

    /// Records `now` (host `CLOCK_MONOTONIC`, ns) as the time the state is saved.
    pub fn mark_saved(&mut self, now: u64) {
        self.saved_at = now;
    }

    /// Moves every deadline by the time that passed between the save and `now`.
    pub fn rebase(&mut self, now: u64) {
        let saved = self.saved_at;
        for t in self.threads.values_mut() {
            if let RunState::Blocked(Wait {
                deadline: Some(d), ..
            }) = &mut t.state
            {
                *d = if now >= saved {
                    d.saturating_add(now - saved)
                } else {
                    d.saturating_sub(saved - now)
                };
            }
        }
        self.saved_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(n: usize) -> ThreadTable {
        let mut t = ThreadTable::new();
        for _ in 1..n {
            t.spawn(0, None, 0).unwrap();
        }
        t.take_spawned();
        t
    }

    /// Runs `tid` and blocks it on `on`.
    fn block(t: &mut ThreadTable, tid: u32, on: WaitOn, deadline: Option<u64>) {
        t.run_queue.retain(|&x| x != tid);
        t.set_current(tid);
        t.block(on, deadline);
    }

    fn futex(addr: u64) -> WaitOn {
        WaitOn::Futex {
            addr,
            bitset: u32::MAX,
        }
    }

    #[test]
    fn spawned_threads_get_distinct_ids_and_run_in_order() {
        let mut t = ThreadTable::new();
        let a = t.spawn(0x1000, Some(0x2000), 0x3000).unwrap();
        let b = t.spawn(0x4000, None, 0).unwrap();
        assert_eq!((a, b), (2, 3));
        assert_eq!(t.get(a).unwrap().fs_base, 0x2000);
        assert_eq!(t.get(a).unwrap().clear_child_tid, 0x3000);
        assert_eq!(
            t.take_spawned(),
            vec![
                Spawned {
                    tid: 2,
                    stack: 0x1000
                },
                Spawned {
                    tid: 3,
                    stack: 0x4000
                }
            ]
        );
        assert_eq!(t.pick_next(), Some((2, Resume::Continue)));
        assert_eq!(t.pick_next(), Some((3, Resume::Continue)));
        assert_eq!(t.pick_next(), None);
    }

    #[test]
    fn spawning_past_the_limit_fails() {
        let mut t = table_with(MAX_THREADS);
        assert_eq!(t.spawn(0, None, 0), Err(TooManyThreads));
        t.set_current(5);
        t.exit_current();
        t.set_current(MAIN_TID);
        assert!(t.spawn(0, None, 0).is_ok());
    }

    #[test]
    fn thread_ids_are_not_reused_while_in_use_across_the_wrap() {
        let mut t = table_with(2);
        t.next_tid = TID_MAX;
        assert_eq!(t.spawn(0, None, 0), Ok(TID_MAX));
        // 2 is taken: the numbering wraps to 3.
        assert_eq!(t.spawn(0, None, 0), Ok(3));
    }

    #[test]
    fn futex_wake_wakes_waiters_in_fifo_order_and_at_most_n() {
        let mut t = table_with(4);
        block(&mut t, 3, futex(0x100), None);
        block(&mut t, 2, futex(0x100), None);
        block(&mut t, 4, futex(0x200), None);
        assert!(t.pick_next().is_none());
        assert_eq!(t.futex_wake(0x100, 1, u32::MAX), 1);
        assert_eq!(t.pick_next(), Some((3, Resume::Return(0))));
        assert_eq!(t.futex_wake(0x100, 5, u32::MAX), 1);
        assert_eq!(t.pick_next(), Some((2, Resume::Return(0))));
        assert_eq!(t.futex_wake(0x100, 5, u32::MAX), 0);
        assert!(matches!(t.get(4).unwrap().state, RunState::Blocked(_)));
    }

    #[test]
    fn bitset_wakes_only_matching_waiters() {
        let mut t = table_with(3);
        block(
            &mut t,
            2,
            WaitOn::Futex {
                addr: 0x100,
                bitset: 0b01,
            },
            None,
        );
        block(
            &mut t,
            3,
            WaitOn::Futex {
                addr: 0x100,
                bitset: 0b10,
            },
            None,
        );
        assert_eq!(t.futex_wake(0x100, 10, 0b10), 1);
        assert_eq!(t.pick_next(), Some((3, Resume::Return(0))));
        assert!(matches!(t.get(2).unwrap().state, RunState::Blocked(_)));
    }

    #[test]
    fn requeue_wakes_some_and_moves_the_rest() {
        let mut t = table_with(5);
        for tid in 2..=5 {
            block(&mut t, tid, futex(0x100), None);
        }
        assert_eq!(t.futex_requeue(0x100, 1, 0x200, 2), 3);
        assert_eq!(t.pick_next(), Some((2, Resume::Return(0))));
        assert_eq!(t.futex_wake(0x100, 10, u32::MAX), 1, "thread 5 stayed");
        assert_eq!(
            t.futex_wake(0x200, 10, u32::MAX),
            2,
            "threads 3 and 4 moved"
        );
    }

    #[test]
    fn expired_waits_end_by_kind() {
        let mut t = table_with(4);
        block(&mut t, 2, futex(0x100), Some(100));
        block(&mut t, 3, WaitOn::Sleep, Some(200));
        block(&mut t, 4, WaitOn::Io { stdin: false }, Some(300));
        assert_eq!(t.earliest_deadline(), Some(100));
        t.wake_expired(250);
        assert_eq!(
            t.pick_next(),
            Some((2, Resume::Return(-i64::from(libc::ETIMEDOUT))))
        );
        assert_eq!(t.pick_next(), Some((3, Resume::Return(0))));
        assert_eq!(t.pick_next(), None);
        assert_eq!(t.earliest_deadline(), Some(300));
        t.wake_expired(300);
        assert_eq!(
            t.pick_next(),
            Some((
                4,
                Resume::Retry {
                    timed_out: true,
                    deadline: None
                }
            ))
        );
        // A woken futex waiter no longer matches a wake.
        assert_eq!(t.futex_wake(0x100, 1, u32::MAX), 0);
    }

    #[test]
    fn io_waiters_retry_on_their_kind_of_input() {
        let mut t = table_with(3);
        block(&mut t, 2, WaitOn::Io { stdin: true }, None);
        block(&mut t, 3, WaitOn::Io { stdin: false }, Some(77));
        assert!(t.waits_on_stdin());
        t.wake_io(false);
        assert_eq!(
            t.pick_next(),
            Some((
                3,
                Resume::Retry {
                    timed_out: false,
                    deadline: Some(77)
                }
            ))
        );
        assert_eq!(t.pick_next(), None);
        t.wake_io(true);
        assert_eq!(
            t.pick_next(),
            Some((
                2,
                Resume::Retry {
                    timed_out: false,
                    deadline: None
                }
            ))
        );
        assert!(!t.waits_on_stdin());
    }

    #[test]
    fn yield_puts_the_thread_behind_the_others() {
        let mut t = table_with(3);
        assert_eq!(t.pick_next(), Some((2, Resume::Continue)));
        t.set_current(2);
        t.yield_current(Resume::Return(0));
        assert_eq!(t.pick_next(), Some((3, Resume::Continue)));
        assert_eq!(t.pick_next(), Some((2, Resume::Return(0))));
    }

    #[test]
    fn rebase_moves_deadlines_by_the_time_since_the_save() {
        let mut t = table_with(2);
        block(&mut t, 2, WaitOn::Sleep, Some(1_000));
        t.mark_saved(400);
        let saved: ThreadTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(saved, t);
        let mut later = saved.clone();
        later.rebase(10_400);
        assert_eq!(later.earliest_deadline(), Some(11_000));
        let mut earlier = saved;
        earlier.rebase(100);
        assert_eq!(earlier.earliest_deadline(), Some(700));
    }

    #[test]
    fn an_old_snapshot_has_one_thread_blocked_on_stdin() {
        let t = ThreadTable::single_at_ready_point();
        assert_eq!(t.len(), 1);
        assert!(t.waits_on_stdin());
        assert_eq!(t.current_tid(), MAIN_TID);
    }
}
