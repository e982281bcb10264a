//! The process and its threads: `clone`, `clone3`, `exit`, `sched_yield`,
//! `arch_prctl`, resource limits, CPU affinity, usage.

use super::super::threads::{MAX_THREADS, Resume, TooManyThreads};
use super::*;

/// The `clone` flags of a thread as glibc's `pthread_create` and Rust's std make it.
const THREAD_FLAGS: u64 = flags(libc::CLONE_VM | libc::CLONE_SIGHAND | libc::CLONE_THREAD);
/// Flags a thread's `clone` may carry besides [`THREAD_FLAGS`].
const ALLOWED_FLAGS: u64 = THREAD_FLAGS
    | flags(
        libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID
            | libc::CLONE_CHILD_SETTID
            | libc::CLONE_DETACHED,
    );

/// libc's `c_int` clone flags as the 64-bit flags word of `clone`.
const fn flags(f: i32) -> u64 {
    f.cast_unsigned() as u64
}
/// `struct clone_args` of `clone3`, its first version (64 bytes).
const CLONE_ARGS_SIZE_VER0: u64 = 64;

/// What `clone` and `clone3` ask for.
#[derive(Debug, Clone, Copy)]
pub(super) struct CloneArgs {
    pub flags: u64,
    /// The new thread's stack pointer (0: the parent's).
    pub stack: u64,
    pub parent_tid: u64,
    pub child_tid: u64,
    pub tls: u64,
}

impl GuestOs {
    /// The thread a `pid` argument of the `sched_*` calls names: 0 or 1 (the process:
    /// the calling thread) or a thread id (ESRCH if there is none).
    pub(super) fn thread_of(&self, pid: i32) -> Result<u32, Errno> {
        match u32::try_from(pid) {
            Ok(0) => Ok(self.threads.current_tid()),
            Ok(tid) if self.threads.contains(tid) || tid == 1 => Ok(tid),
            _ => Err(Errno(libc::ESRCH)),
        }
    }

    /// `clone(flags, stack, parent_tid, child_tid, tls)`: a thread of this process.
    /// A new process (`fork`, `vfork`, `posix_spawn`'s `CLONE_VFORK`) is refused.
    pub(super) fn clone_thread(
        &mut self,
        nr: u64,
        mem: &GuestMemory,
        args: CloneArgs,
    ) -> SysResult {
        if args.flags & THREAD_FLAGS != THREAD_FLAGS {
            self.unsupported(
                nr,
                "refused: a reap guest is one process (threads only, no child processes)",
            );
            return Err(Errno(libc::EPERM));
        }
        // The low byte is the exit signal, which a thread cannot have.
        if args.flags & !ALLOWED_FLAGS != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let has = |flag: i32| args.flags & flags(flag) != 0;
        if has(libc::CLONE_SETTLS) && args.tls >= TASK_SIZE_MAX {
            return Err(Errno(libc::EPERM));
        }
        // The pointers are checked before the thread exists, so a failure leaves none.
        if has(libc::CLONE_PARENT_SETTID) {
            mem.check_user(args.parent_tid, 4)?;
        }
        if has(libc::CLONE_CHILD_SETTID) {
            mem.check_user(args.child_tid, 4)?;
        }
        let tls = has(libc::CLONE_SETTLS).then_some(args.tls);
        let clear = if has(libc::CLONE_CHILD_CLEARTID) {
            args.child_tid
        } else {
            0
        };
        let tid = self
            .threads
            .spawn(args.stack, tls, clear)
            .map_err(|TooManyThreads| Errno(libc::EAGAIN))?;
        if has(libc::CLONE_PARENT_SETTID) {
            mem.write_user_obj(args.parent_tid, tid)?;
        }
        if has(libc::CLONE_CHILD_SETTID) {
            mem.write_user_obj(args.child_tid, tid)?;
        }
        Ok(u64::from(tid))
    }

    /// `clone3(args, size)`: as `clone`, from a `struct clone_args`.
    pub(super) fn clone3(
        &mut self,
        nr: u64,
        mem: &GuestMemory,
        uargs: u64,
        size: u64,
    ) -> SysResult {
        if !(CLONE_ARGS_SIZE_VER0..=PAGE_SIZE).contains(&size) {
            return Err(Errno(libc::EINVAL));
        }
        let words: [u64; 8] = mem.read_user_obj(uargs)?;
        let [
            flags,
            pidfd,
            child_tid,
            parent_tid,
            exit_signal,
            stack,
            stack_size,
            tls,
        ] = words;
        // Fields past the first version must be zero (Linux: E2BIG).
        if size > CLONE_ARGS_SIZE_VER0 {
            let at = uargs
                .checked_add(CLONE_ARGS_SIZE_VER0)
                .ok_or(Errno(libc::EFAULT))?;
            let rest = mem.read_user(at, size - CLONE_ARGS_SIZE_VER0)?;
            if rest.iter().any(|&b| b != 0) {
                return Err(Errno(libc::E2BIG));
            }
        }
        let _ = pidfd;
        if flags >> 32 != 0 || exit_signal != 0 && flags & THREAD_FLAGS == THREAD_FLAGS {
            return Err(Errno(libc::EINVAL));
        }
        if (stack == 0) != (stack_size == 0) {
            return Err(Errno(libc::EINVAL));
        }
        let top = stack.checked_add(stack_size).ok_or(Errno(libc::EINVAL))?;
        self.clone_thread(
            nr,
            mem,
            CloneArgs {
                flags: flags | exit_signal,
                stack: top,
                parent_tid,
                child_tid,
                tls,
            },
        )
    }

    /// `exit(status)`: ends the calling thread; its `clear_child_tid` word is zeroed
    /// and one waiter on it woken (what `pthread_join` waits for). The last thread's
    /// exit ends the program with `status`.
    pub(super) fn exit_thread(&mut self, mem: &GuestMemory, status: i32) -> Outcome {
        if self.threads.len() == 1 {
            return Outcome::Exit(status);
        }
        let thread = self.threads.exit_current();
        let clear = thread.clear_child_tid;
        // Linux ignores a bad address here.
        if clear != 0 && mem.write_user_obj(clear, 0u32).is_ok() {
            self.threads.futex_wake(clear, 1, u32::MAX);
        }
        Outcome::Switch
    }

    /// `sched_yield()`: the next runnable thread runs, if there is one.
    pub(super) fn sched_yield(&mut self) -> Outcome {
        if self.threads.others_runnable() {
            self.threads.yield_current(Resume::Return(0));
            Outcome::Switch
        } else {
            Outcome::Return(0)
        }
    }

    /// `get_robust_list(pid, head_ptr, len_ptr)`.
    pub(super) fn get_robust_list(
        &mut self,
        mem: &GuestMemory,
        pid: i32,
        head: u64,
        len: u64,
    ) -> SysResult {
        let tid = self.thread_of(pid)?;
        let list = self.threads.get(tid).map_or(0, |t| t.robust_list);
        mem.write_user_obj(head, list)?;
        mem.write_user_obj(len, 24u64)?;
        Ok(0)
    }

    /// `sched_getaffinity(pid, len, mask)`: the one vCPU, CPU 0.
    pub(super) fn sched_getaffinity(
        &mut self,
        mem: &GuestMemory,
        pid: i32,
        len: u32,
        mask: u64,
    ) -> SysResult {
        self.thread_of(pid)?;
        if len < 8 || !len.is_multiple_of(8) {
            return Err(Errno(libc::EINVAL));
        }
        mem.write_user_obj(mask, 1u64)?;
        Ok(8)
    }
}

impl GuestOs {
    pub(super) fn arch_prctl(&mut self, mem: &GuestMemory, code: i32, addr: u64) -> SysResult {
        const ARCH_SET_GS: i32 = 0x1001;
        const ARCH_SET_FS: i32 = 0x1002;
        const ARCH_GET_FS: i32 = 0x1003;
        const ARCH_GET_GS: i32 = 0x1004;
        // Addresses in the user address space only.
        let canonical = addr < TASK_SIZE_MAX;
        match code {
            ARCH_SET_FS | ARCH_SET_GS if !canonical => Err(Errno(libc::EPERM)),
            ARCH_SET_FS => {
                self.threads.current_mut().fs_base = addr;
                self.bases_changed = true;
                Ok(0)
            }
            ARCH_SET_GS => {
                self.threads.current_mut().gs_base = addr;
                self.bases_changed = true;
                Ok(0)
            }
            ARCH_GET_FS => mem
                .write_user_obj(addr, self.fs_base())
                .map(|_| 0)
                .map_err(Errno::from),
            ARCH_GET_GS => mem
                .write_user_obj(addr, self.gs_base())
                .map(|_| 0)
                .map_err(Errno::from),
            _ => Err(Errno(libc::EINVAL)),
        }
    }

    /// `prlimit64(pid, resource, new, old)`; `setrlimit` is the same without `old`.
    /// A new limit is read and checked, then ignored.
    pub(super) fn prlimit(
        &mut self,
        mem: &GuestMemory,
        pid: i32,
        resource: u32,
        new: u64,
        old: u64,
    ) -> SysResult {
        let new = if new != 0 {
            Some(mem.read_user_obj::<Rlimit>(new)?)
        } else {
            None
        };
        if pid != 0 && pid != 1 {
            return Err(Errno(libc::ESRCH));
        }
        let limit = self.rlimit(mem, resource)?;
        if new.is_some_and(|n| n.cur > n.max) {
            return Err(Errno(libc::EINVAL));
        }
        if old != 0 {
            mem.write_user_obj(old, limit)?;
        }
        Ok(0)
    }

    /// `getrlimit(resource, old)`: `old` is not optional.
    pub(super) fn getrlimit(&mut self, mem: &GuestMemory, resource: u32, old: u64) -> SysResult {
        mem.write_user_obj(old, self.rlimit(mem, resource)?)?;
        Ok(0)
    }

    /// The limits the guest sees.
    pub(super) fn rlimit(&self, mem: &GuestMemory, resource: u32) -> Result<Rlimit, Errno> {
        let nofile = u64::try_from(self.vfs.fds.limit).unwrap_or(0);
        let infinity = u64::MAX;
        Ok(match resource {
            libc::RLIMIT_STACK => Rlimit {
                cur: crate::arch::layout::STACK_SIZE,
                max: infinity,
            },
            libc::RLIMIT_NOFILE => Rlimit {
                cur: nofile,
                max: nofile,
            },
            libc::RLIMIT_NPROC => Rlimit {
                cur: MAX_THREADS as u64,
                max: MAX_THREADS as u64,
            },
            libc::RLIMIT_AS | libc::RLIMIT_DATA => Rlimit {
                cur: mem.size(),
                max: mem.size(),
            },
            r if r < RLIM_NLIMITS => Rlimit {
                cur: infinity,
                max: infinity,
            },
            _ => return Err(Errno(libc::EINVAL)),
        })
    }
}

/// `getrusage(who, usage)`: all zero.
pub(super) fn getrusage(mem: &GuestMemory, who: i32, usage: u64) -> SysResult {
    const RUSAGE_THREAD: i32 = 1;
    if !matches!(
        who,
        libc::RUSAGE_SELF | libc::RUSAGE_CHILDREN | RUSAGE_THREAD
    ) {
        return Err(Errno(libc::EINVAL));
    }
    mem.write_user(usage, &[0u8; 144])?;
    Ok(0)
}
