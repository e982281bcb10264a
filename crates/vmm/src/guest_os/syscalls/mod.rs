//! The system calls, one function each, dispatched by number.
//!
//! Every guest pointer goes through the bounds-checked user accessors of
//! [`GuestMemory`] (EFAULT to the guest, never a host access outside guest memory) and
//! every guest-controlled number through checked arithmetic.

use std::io::Write;
use std::time::{Duration, Instant};

use libc::c_long;

mod names;
mod sys_file;
mod sys_futex;
mod sys_mmap;
mod sys_poll;
mod sys_read_write;
mod sys_signal;
mod sys_stat;
mod sys_system;
mod sys_thread;
mod sys_time;

use self::sys_read_write::MAX_LAYER_FILE;
use self::{sys_signal::*, sys_system::*, sys_thread::*, sys_time::*};
use super::abi::*;
use super::fs::fd::{FileKind, OpenFile, PIPE_CAPACITY};
use super::fs::synthetic::Generated;
use super::mm::{Discards, MmError};
use super::{GuestOs, MAX_LOGGED_UNSUPPORTED, Outcome, Syscall};
use crate::arch::Protection;
use crate::arch::layout::PAGE_SIZE;
use crate::vstate::memory::{Efault, GuestMemory};

/// An errno for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Errno(i32);

impl From<Efault> for Errno {
    fn from(_: Efault) -> Self {
        Errno(libc::EFAULT)
    }
}

impl From<MmError> for Errno {
    fn from(e: MmError) -> Self {
        Errno(match e {
            MmError::Invalid => libc::EINVAL,
            MmError::NoMemory => libc::ENOMEM,
            MmError::Exists => libc::EEXIST,
            MmError::Fault => libc::EFAULT,
        })
    }
}

type SysResult = Result<u64, Errno>;

/// What RAX gets: the value's 64 bits, or −errno. A value of 2⁶³ or more would read as
/// an error to the guest; none is made (addresses lie in guest memory, counts are
/// bounded), except `time`'s seconds, which go back as the signed value they were.
fn ret(r: SysResult) -> i64 {
    r.map_or_else(|Errno(e)| -i64::from(e), u64::cast_signed)
}

/// A C `unsigned int` argument: Linux's system-call wrappers take the low 32 bits of
/// the register and ignore the rest.
#[allow(clippy::cast_possible_truncation)] // the truncation is the system-call ABI
fn uint(arg: u64) -> u32 {
    arg as u32
}

/// A C `int` argument: the low 32 bits of the register, as for [`uint`].
fn int(arg: u64) -> i32 {
    uint(arg).cast_signed()
}

/// Largest single write the VMM copies out of the guest at once.
const IO_CHUNK: u64 = 1 << 20;
/// Largest path the VMM reads from the guest.
const PATH_MAX: u64 = 4096;
/// Largest iovec count (UIO_MAXIOV).
const IOV_MAX: u64 = 1024;
/// The end of the user address space of x86-64 Linux with 4-level paging.
const TASK_SIZE_MAX: u64 = (1 << 47) - PAGE_SIZE;
/// Number of resource limits (RLIM_NLIMITS).
const RLIM_NLIMITS: u32 = 16;
const POLLIN: i16 = 0x1;
const POLLOUT: i16 = 0x4;
const POLLHUP: i16 = 0x10;
const POLLNVAL: i16 = 0x20;

/// System calls answered ENOSYS without a warning: programs probe them and fall back.
const QUIET_ENOSYS: [c_long; 3] = [libc::SYS_rseq, libc::SYS_statx, libc::SYS_membarrier];

impl GuestOs {
    /// Carries out one system call of the guest.
    ///
    /// Arguments are taken as Linux declares them: a C `int` or `unsigned int` is the
    /// low 32 bits of its register, and so is the call's number.
    pub fn syscall(&mut self, mem: &GuestMemory, call: &Syscall) -> Outcome {
        let shown = self.trace.then(|| trace_call(mem, call));
        let outcome = self.dispatch(mem, call);
        if let Some(shown) = shown {
            let result = match &outcome {
                Outcome::Return(v) if *v < 0 && *v >= -4095 => {
                    let e = i32::try_from(-v).unwrap_or(0);
                    let text = std::io::Error::from_raw_os_error(e).to_string();
                    let text = text.split(" (os error").next().unwrap_or_default();
                    format!("-1 {} ({text})", errno_name(e))
                }
                Outcome::Return(v) if *v > 0xffff => format!("{v:#x}"),
                Outcome::Return(v) => v.to_string(),
                Outcome::BlockOnStdin => "? <waits for input>".into(),
                Outcome::Switch => "? <blocks, yields or exits>".into(),
                Outcome::Exit(c) => format!("? <exit {c}>"),
                Outcome::Signal(s) => format!("? <signal {s}>"),
            };
            eprintln!("{shown} = {result}");
        }
        outcome
    }

    fn dispatch(&mut self, mem: &GuestMemory, call: &Syscall) -> Outcome {
        self.counters.syscalls += 1;
        let [a0, a1, a2, a3, a4, a5] = call.args;
        let n = c_long::from(int(call.nr));
        let fs = self.vfs.has_root();
        const CWD: i32 = libc::AT_FDCWD;
        let result: SysResult = match n {
            libc::SYS_read => return self.read(mem, uint(a0), a1, a2),
            libc::SYS_write => self.write(mem, uint(a0), a1, a2),
            libc::SYS_writev => self.writev(mem, uint(a0), a1, a2, None),
            libc::SYS_readv => return self.readv(mem, uint(a0), a1, a2, None),
            libc::SYS_pread64
            | libc::SYS_pwrite64
            | libc::SYS_preadv
            | libc::SYS_pwritev
            | libc::SYS_preadv2
            | libc::SYS_pwritev2
                if a3.cast_signed() < 0 =>
            {
                Err(Errno(libc::EINVAL))
            }
            libc::SYS_pread64 | libc::SYS_pwrite64 | libc::SYS_preadv | libc::SYS_pwritev
                if self.seekable(uint(a0)).is_err() =>
            {
                self.seekable(uint(a0))
            }
            libc::SYS_pread64 => {
                let r = self.file(uint(a0)).and_then(|(_, f)| {
                    if f.readable() {
                        Ok(())
                    } else {
                        Err(Errno(libc::EBADF))
                    }
                });
                r.and_then(|()| access_ok(a1, a2))
                    .and_then(|()| self.read_file(mem, uint(a0), a1, a2, Some(a3)))
            }
            libc::SYS_pwrite64 => self.write_at(mem, uint(a0), a1, a2, Some(a3)),
            libc::SYS_preadv => return self.readv(mem, uint(a0), a1, a2, Some(a3)),
            libc::SYS_pwritev => self.writev(mem, uint(a0), a1, a2, Some(a3)),
            libc::SYS_lseek => self.lseek(uint(a0), a1, uint(a2)),
            libc::SYS_brk => Ok(self.brk(mem, a0)),
            libc::SYS_mmap => self.mmap(mem, a0, a1, a2, int(a3), int(a4), a5),
            libc::SYS_munmap => self.munmap(mem, a0, a1),
            libc::SYS_mremap => self.mremap(mem, a0, a1, a2, a3, a4),
            libc::SYS_mprotect => self.mprotect(mem, a0, a1, a2),
            libc::SYS_madvise => self.madvise(mem, a0, a1, int(a2)),
            libc::SYS_mlock | libc::SYS_munlock | libc::SYS_mlockall | libc::SYS_munlockall => {
                Ok(0)
            }
            libc::SYS_arch_prctl => self.arch_prctl(mem, int(a0), a1),
            libc::SYS_set_tid_address => {
                self.threads.current_mut().clear_child_tid = a0;
                Ok(u64::from(self.threads.current_tid()))
            }
            libc::SYS_set_robust_list => {
                if a1 == 24 {
                    self.threads.current_mut().robust_list = a0;
                    Ok(0)
                } else {
                    Err(Errno(libc::EINVAL))
                }
            }
            libc::SYS_get_robust_list => self.get_robust_list(mem, int(a0), a1, a2),
            libc::SYS_prlimit64 => self.prlimit(mem, int(a0), uint(a1), a2, a3),
            libc::SYS_getrlimit => self.getrlimit(mem, uint(a0), a1),
            // NULL is no new limit to prlimit64 but a bad pointer to setrlimit.
            libc::SYS_setrlimit if a1 == 0 => Err(Errno(libc::EFAULT)),
            libc::SYS_setrlimit => self.prlimit(mem, 0, uint(a0), a1, 0),
            libc::SYS_getrandom => self.getrandom(mem, a0, a1, uint(a2)),
            libc::SYS_clock_gettime => self.clock_gettime(mem, int(a0), a1),
            libc::SYS_clock_getres => clock_id(int(a0)).and_then(|_| {
                if a1 != 0 {
                    mem.write_user_obj(a1, Timespec { sec: 0, nsec: 1 })?;
                }
                Ok(0)
            }),
            libc::SYS_gettimeofday => self.gettimeofday(mem, a0),
            libc::SYS_time => self.time(mem, a0),
            libc::SYS_nanosleep => {
                return self.nanosleep(mem, libc::CLOCK_MONOTONIC, 0, a0);
            }
            libc::SYS_clock_nanosleep => return self.nanosleep(mem, int(a0), int(a1), a2),
            libc::SYS_sched_yield => return self.sched_yield(),
            libc::SYS_sched_getaffinity => self.sched_getaffinity(mem, int(a0), uint(a1), a2),
            libc::SYS_sched_setaffinity => self.thread_of(int(a0)).map(|_| 0),
            libc::SYS_gettid => Ok(u64::from(self.threads.current_tid())),
            libc::SYS_getpid | libc::SYS_getpgrp | libc::SYS_getsid => Ok(1),
            libc::SYS_getppid => Ok(0),
            libc::SYS_getuid | libc::SYS_geteuid | libc::SYS_getgid | libc::SYS_getegid => Ok(0),
            libc::SYS_getgroups => Ok(0),
            libc::SYS_getresuid | libc::SYS_getresgid => [a0, a1, a2]
                .into_iter()
                .try_for_each(|p| mem.write_user_obj(p, 0u32).map(|_| ()))
                .map(|()| 0)
                .map_err(Errno::from),
            libc::SYS_uname => uname(mem, a0),
            libc::SYS_sysinfo => self.sysinfo(mem, a0),
            libc::SYS_umask => {
                let old = self.vfs.umask;
                self.vfs.umask = uint(a0) & 0o777;
                Ok(u64::from(old))
            }
            libc::SYS_getcwd => self.getcwd(mem, a0, a1),
            libc::SYS_chdir => self.chdir(mem, a0),
            libc::SYS_fchdir => self.fchdir(uint(a0)),
            libc::SYS_open => self.openat(mem, CWD, a0, int(a1), uint(a2)),
            libc::SYS_creat => self.openat(
                mem,
                CWD,
                a0,
                libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
                uint(a1),
            ),
            libc::SYS_openat => self.openat(mem, int(a0), a1, int(a2), uint(a3)),
            libc::SYS_openat2 => self.openat2(mem, int(a0), a1, a2, a3),
            libc::SYS_close => self.close(int(a0)),
            libc::SYS_dup => self.dup(int(a0)),
            libc::SYS_dup2 => self.dup3(int(a0), int(a1), 0, true),
            libc::SYS_dup3 => self.dup3(int(a0), int(a1), int(a2), false),
            libc::SYS_pipe => self.pipe2(mem, a0, 0),
            libc::SYS_pipe2 => self.pipe2(mem, a0, int(a1)),
            libc::SYS_readlink => self.readlinkat(mem, CWD, a0, a1, a2),
            libc::SYS_readlinkat => self.readlinkat(mem, int(a0), a1, a2, a3),
            libc::SYS_access => self.faccessat(mem, CWD, a0, int(a1), 0),
            libc::SYS_faccessat => self.faccessat(mem, int(a0), a1, int(a2), 0),
            libc::SYS_faccessat2 => self.faccessat(mem, int(a0), a1, int(a2), int(a3)),
            libc::SYS_stat => self.newfstatat(mem, CWD, a0, a1, 0),
            libc::SYS_lstat => self.newfstatat(mem, CWD, a0, a1, libc::AT_SYMLINK_NOFOLLOW),
            libc::SYS_fstat => self.fstat(mem, uint(a0), a1),
            libc::SYS_newfstatat => self.newfstatat(mem, int(a0), a1, a2, int(a3)),
            libc::SYS_statx if fs => self.statx(mem, int(a0), a1, int(a2), a4),
            libc::SYS_statfs => self.statfs(mem, Ok(a0), a1),
            libc::SYS_fstatfs => self.statfs(mem, Err(uint(a0)), a1),
            libc::SYS_getdents64 => self.getdents64(mem, uint(a0), a1, a2),
            libc::SYS_mkdir => self.mkdirat(mem, CWD, a0, uint(a1)),
            libc::SYS_mkdirat => self.mkdirat(mem, int(a0), a1, uint(a2)),
            libc::SYS_unlink => self.unlinkat(mem, CWD, a0, 0),
            libc::SYS_rmdir => self.unlinkat(mem, CWD, a0, libc::AT_REMOVEDIR),
            libc::SYS_unlinkat => self.unlinkat(mem, int(a0), a1, int(a2)),
            libc::SYS_symlink => self.symlinkat(mem, a0, CWD, a1),
            libc::SYS_symlinkat => self.symlinkat(mem, a0, int(a1), a2),
            libc::SYS_rename => self.renameat2(mem, CWD, a0, CWD, a1, 0),
            libc::SYS_renameat => self.renameat2(mem, int(a0), a1, int(a2), a3, 0),
            libc::SYS_renameat2 => self.renameat2(mem, int(a0), a1, int(a2), a3, uint(a4)),
            libc::SYS_ftruncate => self.truncate(mem, Ok(uint(a0)), a1),
            libc::SYS_truncate => self.truncate(mem, Err(a0), a1),
            libc::SYS_fsync | libc::SYS_fdatasync | libc::SYS_syncfs => {
                self.file(uint(a0)).map(|_| 0)
            }
            libc::SYS_fadvise64 => self.file(uint(a0)).map(|_| 0),
            libc::SYS_flock => self.file(uint(a0)).map(|_| 0),
            // Permissions, owners and times are not kept: the entry must exist.
            libc::SYS_chmod | libc::SYS_chown | libc::SYS_lchown => {
                self.touch_path(mem, CWD, a0, n != libc::SYS_lchown)
            }
            libc::SYS_fchmod | libc::SYS_fchown => self.file(uint(a0)).map(|_| 0),
            libc::SYS_fchmodat | libc::SYS_fchownat => self.touch_path(mem, int(a0), a1, true),
            libc::SYS_utimensat => self.touch_path(mem, int(a0), a1, true),
            // No extended attributes (no ACLs, no capabilities, no SELinux labels).
            libc::SYS_getxattr | libc::SYS_listxattr => self
                .existing_at(mem, CWD, a0, true)
                .and(Err(Errno(libc::EOPNOTSUPP))),
            libc::SYS_lgetxattr | libc::SYS_llistxattr => self
                .existing_at(mem, CWD, a0, false)
                .and(Err(Errno(libc::EOPNOTSUPP))),
            libc::SYS_fgetxattr | libc::SYS_flistxattr => {
                self.file(uint(a0)).and(Err(Errno(libc::EOPNOTSUPP)))
            }
            libc::SYS_ioctl => self.ioctl(mem, uint(a0), uint(a1), a2),
            libc::SYS_fcntl => self.fcntl(mem, uint(a0), int(a1), a2),
            libc::SYS_poll => return self.poll(mem, a0, uint(a1), int(a2)),
            libc::SYS_ppoll => return self.ppoll(mem, a0, uint(a1), a2, a3, a4),
            libc::SYS_sigaltstack => sigaltstack(mem, a0, a1),
            libc::SYS_rt_sigaction => rt_sigaction(mem, int(a0), a1, a2, a3),
            libc::SYS_rt_sigprocmask => self.rt_sigprocmask(mem, int(a0), a1, a2, a3),
            libc::SYS_futex => return self.futex(mem, a0, int(a1), uint(a2), a3, a4, uint(a5)),
            libc::SYS_getrusage => getrusage(mem, int(a0), a1),
            libc::SYS_prctl => Err(Errno(libc::EINVAL)),
            libc::SYS_exit => return self.exit_thread(mem, int(a0) & 0xff),
            libc::SYS_exit_group => return Outcome::Exit(int(a0) & 0xff),
            libc::SYS_kill => return self.kill(int(a0), int(a1)),
            libc::SYS_tkill => match self.thread_of(int(a0)) {
                Ok(_) if int(a0) > 0 => return self.kill(0, int(a1)),
                Ok(_) => Err(Errno(libc::EINVAL)),
                Err(e) => Err(e),
            },
            libc::SYS_tgkill => match (int(a0), self.thread_of(int(a1))) {
                (t, _) if t <= 0 || int(a1) <= 0 => Err(Errno(libc::EINVAL)),
                (1, Ok(_)) => return self.kill(0, int(a2)),
                (_, Ok(_)) => Err(Errno(libc::ESRCH)),
                (_, Err(e)) => Err(e),
            },
            libc::SYS_clone => self.clone_thread(
                call.nr,
                mem,
                CloneArgs {
                    flags: a0,
                    stack: a1,
                    parent_tid: a2,
                    child_tid: a3,
                    tls: a4,
                },
            ),
            libc::SYS_clone3 => self.clone3(call.nr, mem, a0, a1),
            libc::SYS_fork | libc::SYS_vfork | libc::SYS_execve | libc::SYS_execveat => {
                self.unsupported(
                    call.nr,
                    "refused: a reap guest is one process (threads only, no child processes)",
                );
                Err(Errno(libc::EPERM))
            }
            _ => {
                if !QUIET_ENOSYS.contains(&n) {
                    self.unsupported(call.nr, "not implemented: returning ENOSYS");
                }
                Err(Errno(libc::ENOSYS))
            }
        };
        // Something was written or closed: threads blocked on a pipe or a poll look again.
        if matches!(
            n,
            libc::SYS_write
                | libc::SYS_writev
                | libc::SYS_pwrite64
                | libc::SYS_pwritev
                | libc::SYS_close
                | libc::SYS_dup2
                | libc::SYS_dup3
        ) {
            self.threads.wake_io(false);
        }
        let ret = ret(result);
        tracing::trace!(nr = call.nr, args = ?call.args, ret, "syscall");
        Outcome::Return(ret)
    }

    /// Ok if `fd` is an open file with an offset (ESPIPE for streams and pipes).
    fn seekable(&self, fd: u32) -> SysResult {
        let (_, f) = self.file(fd)?;
        match f.kind {
            FileKind::Stdin | FileKind::Stdout | FileKind::Stderr | FileKind::Pipe { .. } => {
                Err(Errno(libc::ESPIPE))
            }
            _ => Ok(0),
        }
    }

    /// Counts an unsupported call and logs its number the first time, for the first
    /// [`MAX_LOGGED_UNSUPPORTED`] distinct numbers; past them, one summary line.
    fn unsupported(&mut self, nr: u64, what: &str) {
        if !self.warned.contains(&nr) && self.warned.len() < MAX_LOGGED_UNSUPPORTED {
            self.warned.insert(nr);
            match names::name(nr) {
                Some(name) => {
                    tracing::warn!(syscall = nr, "guest system call {name} ({nr}) {what}")
                }
                None => tracing::warn!(syscall = nr, "guest system call {nr} {what}"),
            }
        }
        if self.warned.contains(&nr) {
            *self.unsupported.by_nr.entry(nr).or_default() += 1;
        } else {
            self.unsupported.other += 1;
            if !self.warned_rest {
                self.warned_rest = true;
                tracing::warn!(
                    "guest made more than {MAX_LOGGED_UNSUPPORTED} distinct unsupported system calls; the others are not logged"
                );
            }
        }
    }
}

/// Linux's `access_ok`: `addr..addr+len` lies in the user address space. Linux checks
/// only this before a call that may copy fewer than `len` bytes (a read into a buffer
/// larger than the data); what is copied is then checked against user memory.
fn access_ok(addr: u64, len: u64) -> Result<(), Errno> {
    match addr.checked_add(len) {
        Some(end) if end <= TASK_SIZE_MAX => Ok(()),
        _ => Err(Errno(libc::EFAULT)),
    }
}

/// Reads `count` iovecs at `iov` as Linux's `import_iovec` does: at most `IOV_MAX`
/// (EINVAL), each length at most `SSIZE_MAX` (EINVAL) and in the user address space
/// (EFAULT).
fn read_iovecs(mem: &GuestMemory, iov: u64, count: u64) -> Result<Vec<Iovec>, Errno> {
    if count > IOV_MAX {
        return Err(Errno(libc::EINVAL));
    }
    (0..count)
        .map(|i| {
            let at = iov.checked_add(i * 16).ok_or(Errno(libc::EFAULT))?;
            let v: Iovec = mem.read_user_obj(at)?;
            if i64::try_from(v.len).is_err() {
                return Err(Errno(libc::EINVAL));
            }
            access_ok(v.base, v.len)?;
            Ok(v)
        })
        .collect()
}

/// Reads a path: EFAULT if it is not user memory, ENAMETOOLONG if its first
/// `PATH_MAX` bytes hold no NUL.
fn read_path(mem: &GuestMemory, path: u64) -> Result<Vec<u8>, Errno> {
    mem.read_user_cstr(path, PATH_MAX).map_err(|_| {
        if mem.check_user(path, PATH_MAX).is_ok() {
            Errno(libc::ENAMETOOLONG)
        } else {
            Errno(libc::EFAULT)
        }
    })
}

/// The calls whose argument `i` is a path, for the trace.
fn path_args(n: c_long) -> &'static [usize] {
    match n {
        libc::SYS_open
        | libc::SYS_creat
        | libc::SYS_stat
        | libc::SYS_lstat
        | libc::SYS_access
        | libc::SYS_readlink
        | libc::SYS_chdir
        | libc::SYS_mkdir
        | libc::SYS_rmdir
        | libc::SYS_unlink
        | libc::SYS_truncate
        | libc::SYS_statfs
        | libc::SYS_execve
        | libc::SYS_chmod => &[0],
        libc::SYS_rename | libc::SYS_symlink => &[0, 1],
        libc::SYS_openat
        | libc::SYS_openat2
        | libc::SYS_newfstatat
        | libc::SYS_statx
        | libc::SYS_faccessat
        | libc::SYS_faccessat2
        | libc::SYS_readlinkat
        | libc::SYS_mkdirat
        | libc::SYS_unlinkat
        | libc::SYS_fchmodat
        | libc::SYS_utimensat => &[1],
        libc::SYS_renameat | libc::SYS_renameat2 => &[1, 3],
        libc::SYS_symlinkat => &[0, 2],
        _ => &[],
    }
}

/// `name(args...)` of a call, paths shown as strings.
fn trace_call(mem: &GuestMemory, call: &Syscall) -> String {
    let n = c_long::from(int(call.nr));
    let name = names::name(call.nr).map_or_else(|| format!("syscall_{}", call.nr), str::to_string);
    let paths = path_args(n);
    let args: Vec<String> = call
        .args
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            if paths.contains(&i) && a != 0 {
                match mem.read_user_cstr(a, PATH_MAX) {
                    Ok(p) => format!("{:?}", String::from_utf8_lossy(&p)),
                    Err(_) => format!("{a:#x}"),
                }
            } else if int(a) == libc::AT_FDCWD && (a >> 32 == 0 || a.cast_signed() == -100) {
                "AT_FDCWD".to_string()
            } else if a > 0xffff && a.cast_signed() > -4096 && a.cast_signed() < 0 {
                a.cast_signed().to_string()
            } else if a >> 32 == 0 && (-4095..0).contains(&int(a)) {
                int(a).to_string()
            } else if a > 0xffff {
                format!("{a:#x}")
            } else {
                a.to_string()
            }
        })
        .collect();
    format!("{name}({})", args.join(", "))
}

/// The symbolic name of an errno.
fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ESPIPE => "ESPIPE",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EXDEV => "EXDEV",
        libc::ENXIO => "ENXIO",
        libc::ENODEV => "ENODEV",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "E?",
    }
}

#[cfg(test)]
mod fs_tests;
#[cfg(test)]
mod tests;
