//! The system calls, one function each, dispatched by number.
//!
//! Every guest pointer goes through the bounds-checked user accessors of
//! [`GuestMemory`] (EFAULT to the guest, never a host access outside guest memory) and
//! every guest-controlled number through checked arithmetic.

use std::io::Write;
use std::time::{Duration, Instant};

use libc::c_long;

use super::abi::*;
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
const QUIET_ENOSYS: [c_long; 4] = [
    libc::SYS_rseq,
    libc::SYS_statx,
    libc::SYS_clone3,
    libc::SYS_membarrier,
];

impl GuestOs {
    /// Carries out one system call of the guest.
    ///
    /// Arguments are taken as Linux declares them: a C `int` or `unsigned int` is the
    /// low 32 bits of its register, and so is the call's number.
    pub fn syscall(&mut self, mem: &GuestMemory, call: &Syscall) -> Outcome {
        self.counters.syscalls += 1;
        let [a0, a1, a2, a3, a4, a5] = call.args;
        let n = c_long::from(int(call.nr));
        let result: SysResult = match n {
            libc::SYS_read => return self.read(mem, uint(a0), a1, a2),
            libc::SYS_write => self.write(mem, uint(a0), a1, a2),
            libc::SYS_writev => self.writev(mem, uint(a0), a1, a2),
            libc::SYS_readv => return self.readv(mem, uint(a0), a1, a2),
            libc::SYS_pread64 | libc::SYS_pwrite64 if a3.cast_signed() < 0 => {
                Err(Errno(libc::EINVAL))
            }
            libc::SYS_pread64 | libc::SYS_pwrite64 | libc::SYS_lseek => {
                self.on_std_fd(uint(a0), libc::ESPIPE)
            }
            libc::SYS_brk => Ok(self.brk(mem, a0)),
            libc::SYS_mmap => self.mmap(mem, a0, a1, a2, int(a3), int(a4)),
            libc::SYS_munmap => self.munmap(mem, a0, a1),
            libc::SYS_mremap => self.mremap(mem, a0, a1, a2, a3, a4),
            libc::SYS_mprotect => self.mprotect(mem, a0, a1, a2),
            libc::SYS_madvise => self.madvise(mem, a0, a1, int(a2)),
            libc::SYS_mlock | libc::SYS_munlock | libc::SYS_mlockall | libc::SYS_munlockall => {
                Ok(0)
            }
            libc::SYS_arch_prctl => self.arch_prctl(mem, int(a0), a1),
            libc::SYS_set_tid_address => Ok(1),
            libc::SYS_set_robust_list => {
                if a1 == 24 {
                    Ok(0)
                } else {
                    Err(Errno(libc::EINVAL))
                }
            }
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
            libc::SYS_nanosleep => self.nanosleep(mem, libc::CLOCK_MONOTONIC, 0, a0),
            libc::SYS_clock_nanosleep => self.nanosleep(mem, int(a0), int(a1), a2),
            libc::SYS_sched_yield => Ok(0),
            libc::SYS_sched_getaffinity => sched_getaffinity(mem, uint(a1), a2),
            libc::SYS_sched_setaffinity => Ok(0),
            libc::SYS_getpid | libc::SYS_gettid | libc::SYS_getpgrp | libc::SYS_getsid => Ok(1),
            libc::SYS_getppid => Ok(0),
            libc::SYS_getuid | libc::SYS_geteuid | libc::SYS_getgid | libc::SYS_getegid => Ok(0),
            libc::SYS_uname => uname(mem, a0),
            libc::SYS_getcwd => getcwd(mem, a0, a1),
            libc::SYS_readlink
            | libc::SYS_open
            | libc::SYS_access
            | libc::SYS_stat
            | libc::SYS_lstat => no_such_file(mem, a0),
            libc::SYS_readlinkat
            | libc::SYS_openat
            | libc::SYS_faccessat
            | libc::SYS_faccessat2 => no_such_file(mem, a1),
            libc::SYS_close => self.on_std_fd(uint(a0), 0),
            libc::SYS_fstat => self.fstat(mem, uint(a0), a1),
            libc::SYS_newfstatat => self.newfstatat(mem, int(a0), a1, a2, int(a3)),
            libc::SYS_ioctl => self.on_std_fd(uint(a0), libc::ENOTTY),
            libc::SYS_fcntl => self.fcntl(uint(a0), int(a1)),
            libc::SYS_poll => return self.poll(mem, a0, uint(a1), int(a2)),
            libc::SYS_ppoll => return self.ppoll(mem, a0, uint(a1), a2, a3, a4),
            libc::SYS_sigaltstack => sigaltstack(mem, a0, a1),
            libc::SYS_rt_sigaction => rt_sigaction(mem, int(a0), a1, a2, a3),
            libc::SYS_rt_sigprocmask => rt_sigprocmask(mem, int(a0), a1, a2, a3),
            libc::SYS_futex => return self.futex(mem, a0, int(a1), uint(a2), a3, uint(a5)),
            libc::SYS_getrusage => getrusage(mem, int(a0), a1),
            libc::SYS_prctl => Err(Errno(libc::EINVAL)),
            libc::SYS_exit | libc::SYS_exit_group => return Outcome::Exit(int(a0) & 0xff),
            libc::SYS_kill | libc::SYS_tkill => return self.kill(int(a0), int(a1)),
            libc::SYS_tgkill => return self.kill(int(a1), int(a2)),
            libc::SYS_clone
            | libc::SYS_fork
            | libc::SYS_vfork
            | libc::SYS_execve
            | libc::SYS_execveat => {
                self.unsupported(
                    call.nr,
                    "refused: reap guests are one single-threaded process",
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
        let ret = ret(result);
        tracing::trace!(nr = call.nr, args = ?call.args, ret, "syscall");
        Outcome::Return(ret)
    }

    /// Counts an unsupported call and logs its number the first time, for the first
    /// [`MAX_LOGGED_UNSUPPORTED`] distinct numbers; past them, one summary line.
    fn unsupported(&mut self, nr: u64, what: &str) {
        if !self.warned.contains(&nr) && self.warned.len() < MAX_LOGGED_UNSUPPORTED {
            self.warned.insert(nr);
            tracing::warn!(syscall = nr, "guest system call {nr} {what}");
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

    /// Answers `ok` for the standard streams and EBADF for any other descriptor.
    fn on_std_fd(&self, fd: u32, ok: i32) -> SysResult {
        match fd {
            0..=2 if ok == 0 => Ok(0),
            0..=2 => Err(Errno(ok)),
            _ => Err(Errno(libc::EBADF)),
        }
    }

    fn read(&mut self, mem: &GuestMemory, fd: u32, buf: u64, count: u64) -> Outcome {
        let r = match fd {
            // Linux checks the whole buffer against the user address space first; the
            // bytes actually copied are checked against user memory below.
            0 if access_ok(buf, count).is_err() => Err(Errno(libc::EFAULT)),
            0 if count == 0 => Ok(0),
            0 if self.stdin.is_empty() && !self.stdin_eof => return Outcome::BlockOnStdin,
            0 => self.read_stdin(mem, buf, count),
            _ => Err(Errno(libc::EBADF)),
        };
        Outcome::Return(ret(r))
    }

    /// Moves up to `count` pending stdin bytes to guest memory at `buf`.
    fn read_stdin(&mut self, mem: &GuestMemory, buf: u64, count: u64) -> SysResult {
        let n = count.min(self.stdin.len() as u64).min(IO_CHUNK);
        if n == 0 {
            return Ok(0);
        }
        mem.check_user(buf, n)?;
        let data: Vec<u8> = self.stdin.iter().take(n as usize).copied().collect();
        mem.write_user(buf, &data)?;
        self.stdin.drain(..n as usize);
        Ok(n)
    }

    fn readv(&mut self, mem: &GuestMemory, fd: u32, iov: u64, count: u64) -> Outcome {
        // The descriptor and the iovecs are checked before the call blocks, and a
        // zero total length returns at once, as on Linux.
        let iovecs = match fd {
            0 => read_iovecs(mem, iov, count),
            _ => Err(Errno(libc::EBADF)),
        };
        let r = match iovecs {
            Ok(v) if v.iter().all(|v| v.len == 0) => Ok(0),
            Ok(_) if self.stdin.is_empty() && !self.stdin_eof => return Outcome::BlockOnStdin,
            Ok(v) => self.readv_now(mem, &v),
            Err(e) => Err(e),
        };
        Outcome::Return(ret(r))
    }

    /// Fills the buffers in order from stdin. A buffer that is not user memory ends the
    /// call: EFAULT if nothing was read yet, else the bytes read so far (as Linux).
    fn readv_now(&mut self, mem: &GuestMemory, iovecs: &[Iovec]) -> SysResult {
        let mut total = 0;
        for v in iovecs {
            let n = match self.read_stdin(mem, v.base, v.len) {
                Ok(n) => n,
                Err(_) if total > 0 => break,
                Err(e) => return Err(e),
            };
            total += n;
            if n < v.len {
                break;
            }
        }
        Ok(total)
    }

    fn write(&mut self, mem: &GuestMemory, fd: u32, buf: u64, count: u64) -> SysResult {
        if !(1..=2).contains(&fd) {
            return Err(Errno(libc::EBADF));
        }
        access_ok(buf, count)?;
        if count == 0 {
            return Ok(0);
        }
        mem.check_user(buf, count)?;
        let mut done = 0;
        while done < count {
            let n = (count - done).min(IO_CHUNK);
            let data = mem.read_user(buf + done, n)?;
            self.emit(fd, &data)?;
            done += n;
        }
        Ok(count)
    }

    fn writev(&mut self, mem: &GuestMemory, fd: u32, iov: u64, count: u64) -> SysResult {
        if !(1..=2).contains(&fd) {
            return Err(Errno(libc::EBADF));
        }
        let iovecs = read_iovecs(mem, iov, count)?;
        // Unlike Linux, nothing is written unless every buffer is user memory. An empty
        // buffer is never read, so any base will do (as Linux).
        for v in iovecs.iter().filter(|v| v.len > 0) {
            mem.check_user(v.base, v.len)?;
        }
        let mut total = 0u64;
        for v in iovecs {
            total = total
                .checked_add(self.write(mem, fd, v.base, v.len)?)
                .ok_or(Errno(libc::EINVAL))?;
        }
        Ok(total)
    }

    /// Sends guest output to stdout (fd 1) or stderr (fd 2).
    fn emit(&mut self, fd: u32, data: &[u8]) -> Result<(), Errno> {
        let sink = if fd == 1 {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        sink.write_all(data)
            .and_then(|()| sink.flush())
            .map_err(|e| {
                Errno(if e.kind() == std::io::ErrorKind::BrokenPipe {
                    libc::EPIPE
                } else {
                    libc::EIO
                })
            })?;
        if fd == 1 {
            self.counters.stdout_bytes += data.len() as u64;
            let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
            if lines > 0 {
                self.counters.stdout_lines += lines;
                self.last_line_at = Some(Instant::now());
            }
        } else {
            self.counters.stderr_bytes += data.len() as u64;
        }
        Ok(())
    }

    fn discard(mem: &GuestMemory, discards: Discards) -> Result<(), Errno> {
        for (start, end) in discards {
            mem.discard(start, end).map_err(|e| {
                tracing::error!("{e:#}");
                Errno(libc::ENOMEM)
            })?;
        }
        Ok(())
    }

    fn brk(&mut self, mem: &GuestMemory, request: u64) -> u64 {
        let (brk, discards) = self.mm.brk(request);
        if Self::discard(mem, discards).is_err() {
            tracing::error!("could not zero memory released by brk");
        }
        if self.sync_page_tables(mem).is_err() {
            tracing::error!("could not update the page tables after brk");
        }
        brk
    }

    fn mmap(
        &mut self,
        mem: &GuestMemory,
        addr: u64,
        len: u64,
        prot: u64,
        flags: i32,
        fd: i32,
    ) -> SysResult {
        if flags & libc::MAP_ANONYMOUS == 0 {
            return Err(Errno(if (0..=2).contains(&fd) {
                libc::ENODEV
            } else {
                libc::EBADF
            }));
        }
        if len == 0 {
            return Err(Errno(libc::EINVAL));
        }
        // Exactly one of MAP_SHARED, MAP_PRIVATE and MAP_SHARED_VALIDATE.
        const MAP_TYPE: i32 = 0xf;
        if !(1..=3).contains(&(flags & MAP_TYPE)) {
            return Err(Errno(libc::EINVAL));
        }
        let fixed = flags & libc::MAP_FIXED != 0;
        let noreplace = flags & libc::MAP_FIXED_NOREPLACE != 0;
        let (at, discards) = self.mm.mmap(addr, len, fixed, noreplace)?;
        Self::discard(mem, discards)?;
        // `mm.mmap` accepted the length, so rounding it up cannot overflow.
        let end = at + crate::arch::layout::page_align_up(len).unwrap_or(len);
        self.mm.set_protection(at, end, Protection::from_prot(prot));
        self.sync_page_tables(mem)?;
        Ok(at)
    }

    fn munmap(&mut self, mem: &GuestMemory, addr: u64, len: u64) -> SysResult {
        let discards = self.mm.munmap(addr, len)?;
        Self::discard(mem, discards)?;
        self.sync_page_tables(mem)?;
        Ok(0)
    }

    /// `mprotect(addr, len, prot)`, checked as Linux does. Memory outside user memory
    /// and the stack guard gap count as unmapped (ENOMEM).
    fn mprotect(&mut self, mem: &GuestMemory, addr: u64, len: u64, prot: u64) -> SysResult {
        let end = check_mprotect(mem, addr, len, prot)?;
        let (guard, guard_end) = self.mm.stack_guard();
        if addr < guard_end && guard < end {
            return Err(Errno(libc::ENOMEM));
        }
        self.mm
            .set_protection(addr, end, Protection::from_prot(prot));
        self.sync_page_tables(mem)?;
        Ok(0)
    }

    /// Writes the page-table entries of the protections the address space changed;
    /// the VMM drops cached translations before the guest runs again if one lost a
    /// permission.
    fn sync_page_tables(&mut self, mem: &GuestMemory) -> Result<(), Errno> {
        let writes = self.mm.take_page_table_writes();
        for (addr, value) in writes.entries {
            mem.write_obj(addr, value).map_err(|e| {
                tracing::error!("cannot write a page-table entry: {e}");
                Errno(libc::ENOMEM)
            })?;
        }
        self.lowered.extend(writes.lowered);
        Ok(())
    }

    fn mremap(
        &mut self,
        mem: &GuestMemory,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: u64,
    ) -> SysResult {
        const MAYMOVE: u64 = 1;
        const FIXED: u64 = 2;
        if flags & !(MAYMOVE | FIXED) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let fixed_to = (flags & FIXED != 0).then_some(new_addr);
        let protection = self.mm.protection_at(old);
        let (at, copy, discards) =
            self.mm
                .mremap(old, old_len, new_len, flags & MAYMOVE != 0, fixed_to)?;
        if let Some((from, to, len)) = copy {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(IO_CHUNK);
                let mut buf = vec![0u8; n as usize];
                mem.read(from + done, &mut buf)?;
                mem.write(to + done, &buf)?;
                done += n;
            }
        }
        let discards_copy = discards.clone();
        Self::discard(mem, discards)?;
        // The ranges that left the mapping are unmapped, the new range has the old one's
        // protection (mremap never splits a mapping's protection: it takes the first).
        for &(start, end) in &discards_copy {
            self.mm.set_protection(start, end, Protection::ReadWrite);
        }
        let new_end = at + crate::arch::layout::page_align_up(new_len).unwrap_or(new_len);
        self.mm.set_protection(at, new_end, protection);
        self.sync_page_tables(mem)?;
        Ok(at)
    }

    fn madvise(&mut self, mem: &GuestMemory, addr: u64, len: u64, advice: i32) -> SysResult {
        let (start, end) =
            super::mm::AddressSpace::page_range(addr, len).ok_or(Errno(libc::EINVAL))?;
        if matches!(
            advice,
            libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE
        ) {
            mem.check_user(start, end - start)
                .map_err(|_| Errno(libc::ENOMEM))?;
            Self::discard(mem, vec![(start, end)])?;
        }
        Ok(0)
    }

    fn arch_prctl(&mut self, mem: &GuestMemory, code: i32, addr: u64) -> SysResult {
        const ARCH_SET_GS: i32 = 0x1001;
        const ARCH_SET_FS: i32 = 0x1002;
        const ARCH_GET_FS: i32 = 0x1003;
        const ARCH_GET_GS: i32 = 0x1004;
        // Addresses in the user address space only.
        let canonical = addr < TASK_SIZE_MAX;
        match code {
            ARCH_SET_FS | ARCH_SET_GS if !canonical => Err(Errno(libc::EPERM)),
            ARCH_SET_FS => {
                self.fs_base = addr;
                self.bases_changed = true;
                Ok(0)
            }
            ARCH_SET_GS => {
                self.gs_base = addr;
                self.bases_changed = true;
                Ok(0)
            }
            ARCH_GET_FS => mem
                .write_user_obj(addr, self.fs_base)
                .map(|_| 0)
                .map_err(Errno::from),
            ARCH_GET_GS => mem
                .write_user_obj(addr, self.gs_base)
                .map(|_| 0)
                .map_err(Errno::from),
            _ => Err(Errno(libc::EINVAL)),
        }
    }

    /// `prlimit64(pid, resource, new, old)`; `setrlimit` is the same without `old`.
    /// A new limit is read and checked, then ignored.
    fn prlimit(
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
        let limit = Self::rlimit(mem, resource)?;
        if new.is_some_and(|n| n.cur > n.max) {
            return Err(Errno(libc::EINVAL));
        }
        if old != 0 {
            mem.write_user_obj(old, limit)?;
        }
        Ok(0)
    }

    /// `getrlimit(resource, old)`: `old` is not optional.
    fn getrlimit(&mut self, mem: &GuestMemory, resource: u32, old: u64) -> SysResult {
        mem.write_user_obj(old, Self::rlimit(mem, resource)?)?;
        Ok(0)
    }

    /// The limits the guest sees.
    fn rlimit(mem: &GuestMemory, resource: u32) -> Result<Rlimit, Errno> {
        let infinity = u64::MAX;
        Ok(match resource {
            libc::RLIMIT_STACK => Rlimit {
                cur: crate::arch::layout::STACK_SIZE,
                max: infinity,
            },
            libc::RLIMIT_NOFILE => Rlimit { cur: 3, max: 3 },
            libc::RLIMIT_NPROC => Rlimit { cur: 1, max: 1 },
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

    fn getrandom(&mut self, mem: &GuestMemory, buf: u64, len: u64, flags: u32) -> SysResult {
        const GRND_NONBLOCK: u32 = 1;
        const GRND_RANDOM: u32 = 2;
        const GRND_INSECURE: u32 = 4;
        if flags & !(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE) != 0
            || flags & (GRND_RANDOM | GRND_INSECURE) == GRND_RANDOM | GRND_INSECURE
        {
            return Err(Errno(libc::EINVAL));
        }
        // Linux caps a request at INT_MAX bytes before checking it.
        access_ok(buf, len.min(i32::MAX as u64))?;
        let n = len.min(IO_CHUNK);
        if n == 0 {
            return Ok(0);
        }
        mem.check_user(buf, n)?;
        let mut bytes = vec![0u8; n as usize];
        fill_random(&mut bytes).map_err(|_| Errno(libc::EIO))?;
        mem.write_user(buf, &bytes)?;
        Ok(n)
    }

    fn clock_gettime(&mut self, mem: &GuestMemory, clock: i32, tp: u64) -> SysResult {
        let now = host_clock(clock_id(clock)?)?;
        mem.write_user_obj(tp, now)?;
        Ok(0)
    }

    fn gettimeofday(&mut self, mem: &GuestMemory, tv: u64) -> SysResult {
        if tv != 0 {
            let now = host_clock(libc::CLOCK_REALTIME)?;
            mem.write_user_obj(
                tv,
                Timeval {
                    sec: now.sec,
                    usec: now.nsec / 1000,
                },
            )?;
        }
        Ok(0)
    }

    fn time(&mut self, mem: &GuestMemory, tloc: u64) -> SysResult {
        let now = host_clock(libc::CLOCK_REALTIME)?;
        if tloc != 0 {
            mem.write_user_obj(tloc, now.sec)?;
        }
        // The seconds go to RAX as they are (a clock before 1970 reads as negative).
        Ok(now.sec.cast_unsigned())
    }

    fn nanosleep(&mut self, mem: &GuestMemory, clock: i32, flags: i32, req: u64) -> SysResult {
        let clock = clock_id(clock)?;
        let ts: Timespec = mem.read_user_obj(req)?;
        let mut d = ts.to_duration().ok_or(Errno(libc::EINVAL))?;
        if flags & libc::TIMER_ABSTIME != 0 {
            let now = host_clock(clock)?.to_duration().unwrap_or_default();
            d = d.saturating_sub(now);
        }
        self.sleep(d);
        Ok(0)
    }

    /// Sleeps for `d`, but not past the run's deadline.
    fn sleep(&self, d: Duration) {
        let d = match self.deadline {
            Some(deadline) => d.min(deadline.saturating_duration_since(Instant::now())),
            None => d,
        };
        std::thread::sleep(d);
    }

    fn fstat(&mut self, mem: &GuestMemory, fd: u32, buf: u64) -> SysResult {
        if fd > 2 {
            return Err(Errno(libc::EBADF));
        }
        let stat = Stat {
            mode: libc::S_IFIFO | 0o600,
            nlink: 1,
            blksize: 4096,
            ..Default::default()
        };
        mem.write_user_obj(buf, stat)?;
        Ok(0)
    }

    fn newfstatat(
        &mut self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        buf: u64,
        flags: i32,
    ) -> SysResult {
        let path = read_path(mem, path)?;
        if path.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
            // A negative descriptor is no descriptor, as a large unsigned one.
            return self.fstat(mem, dirfd.cast_unsigned(), buf);
        }
        Err(Errno(libc::ENOENT))
    }

    fn fcntl(&mut self, fd: u32, cmd: i32) -> SysResult {
        if fd > 2 {
            return Err(Errno(libc::EBADF));
        }
        match cmd {
            libc::F_GETFD | libc::F_SETFD | libc::F_SETFL => Ok(0),
            libc::F_GETFL => Ok(if fd == 0 {
                libc::O_RDONLY.cast_unsigned().into()
            } else {
                libc::O_WRONLY.cast_unsigned().into()
            }),
            libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => Err(Errno(libc::EMFILE)),
            _ => Err(Errno(libc::EINVAL)),
        }
    }

    /// Readiness of each polled descriptor; the number ready.
    fn poll_fds(&self, fds: &mut [PollFd]) -> u64 {
        let mut ready = 0;
        for p in fds.iter_mut() {
            p.revents = match p.fd {
                fd if fd < 0 => 0,
                0 if self.stdin_eof && self.stdin.is_empty() => p.events & POLLIN | POLLHUP,
                0 if !self.stdin.is_empty() => p.events & POLLIN,
                0 => 0,
                1 | 2 => p.events & POLLOUT,
                _ => POLLNVAL,
            };
            ready += u64::from(p.revents != 0);
        }
        ready
    }

    fn poll(&mut self, mem: &GuestMemory, fds: u64, nfds: u32, timeout_ms: i32) -> Outcome {
        // A negative timeout waits forever.
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        self.poll_common(mem, fds, nfds, timeout)
    }

    fn ppoll(
        &mut self,
        mem: &GuestMemory,
        fds: u64,
        nfds: u32,
        tsp: u64,
        sigmask: u64,
        sigsetsize: u64,
    ) -> Outcome {
        let timeout = if tsp == 0 {
            None
        } else {
            match mem
                .read_user_obj::<Timespec>(tsp)
                .map(Timespec::to_duration)
            {
                Ok(Some(d)) => Some(d),
                Ok(None) => return Outcome::Return(-i64::from(libc::EINVAL)),
                Err(_) => return Outcome::Return(-i64::from(libc::EFAULT)),
            }
        };
        // The signal mask is read and checked, then ignored.
        if sigmask != 0 {
            if sigsetsize != 8 {
                return Outcome::Return(-i64::from(libc::EINVAL));
            }
            if mem.read_user_obj::<u64>(sigmask).is_err() {
                return Outcome::Return(-i64::from(libc::EFAULT));
            }
        }
        self.poll_common(mem, fds, nfds, timeout)
    }

    fn poll_common(
        &mut self,
        mem: &GuestMemory,
        fds: u64,
        nfds: u32,
        timeout: Option<Duration>,
    ) -> Outcome {
        let r = (|| {
            if u64::from(nfds) > IOV_MAX {
                return Err(Errno(libc::EINVAL));
            }
            let addrs = (0..u64::from(nfds))
                .map(|i| fds.checked_add(i * 8).ok_or(Errno(libc::EFAULT)))
                .collect::<Result<Vec<u64>, Errno>>()?;
            let mut polled = addrs
                .iter()
                .map(|&at| mem.read_user_obj::<PollFd>(at).map_err(Errno::from))
                .collect::<Result<Vec<PollFd>, Errno>>()?;
            let ready = self.poll_fds(&mut polled);
            Ok((addrs, polled, ready))
        })();
        let (addrs, polled, ready) = match r {
            Ok(v) => v,
            Err(Errno(e)) => return Outcome::Return(-i64::from(e)),
        };
        if ready == 0 && timeout != Some(Duration::ZERO) {
            if polled.iter().any(|p| p.fd == 0 && p.events & POLLIN != 0) {
                // Waiting for input: the same ready point as a blocking read.
                return Outcome::BlockOnStdin;
            }
            match timeout {
                Some(d) => self.sleep(d),
                None => {
                    return Outcome::Fatal(
                        "poll() waits forever on descriptors that never become ready".into(),
                    );
                }
            }
        }
        for (&at, &p) in addrs.iter().zip(&polled) {
            if mem.write_user_obj(at, p).is_err() {
                return Outcome::Return(-i64::from(libc::EFAULT));
            }
        }
        Outcome::Return(ret(Ok(ready)))
    }

    /// `futex(uaddr, op, val, timeout, uaddr2, val3)`, in Linux's order of checks: the
    /// timeout, the operation, the bitset, the address, the value.
    fn futex(
        &mut self,
        mem: &GuestMemory,
        uaddr: u64,
        op: i32,
        val: u32,
        timeout: u64,
        bitset: u32,
    ) -> Outcome {
        const FUTEX_CMD_MASK: i32 = !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME);
        let cmd = op & FUTEX_CMD_MASK;
        let wait = matches!(cmd, libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET);
        let r = (|| {
            // FUTEX_WAIT takes a relative timeout; FUTEX_WAIT_BITSET an absolute time
            // on CLOCK_MONOTONIC (CLOCK_REALTIME with the flag).
            let sleep = if wait && timeout != 0 {
                let ts = mem.read_user_obj::<Timespec>(timeout)?;
                let mut d = ts.to_duration().ok_or(Errno(libc::EINVAL))?;
                if cmd == libc::FUTEX_WAIT_BITSET {
                    let clock = if op & libc::FUTEX_CLOCK_REALTIME != 0 {
                        libc::CLOCK_REALTIME
                    } else {
                        libc::CLOCK_MONOTONIC
                    };
                    let now = host_clock(clock)
                        .ok()
                        .and_then(Timespec::to_duration)
                        .unwrap_or_default();
                    d = d.saturating_sub(now);
                }
                Some(d)
            } else {
                None
            };
            let bitset_op = matches!(cmd, libc::FUTEX_WAIT_BITSET | libc::FUTEX_WAKE_BITSET);
            if !(wait || bitset_op || cmd == libc::FUTEX_WAKE)
                || (op & libc::FUTEX_CLOCK_REALTIME != 0 && cmd != libc::FUTEX_WAIT_BITSET)
            {
                return Err(Errno(libc::ENOSYS));
            }
            if bitset_op && bitset == 0 {
                return Err(Errno(libc::EINVAL));
            }
            if !uaddr.is_multiple_of(4) {
                return Err(Errno(libc::EINVAL));
            }
            if !wait {
                // Nothing waits: waking wakes no one. Linux looks at the memory only
                // for a shared futex; a private one needs just a user address.
                if op & libc::FUTEX_PRIVATE_FLAG != 0 {
                    access_ok(uaddr, 4)?;
                } else {
                    mem.check_user(uaddr, 4)?;
                }
                return Ok(None);
            }
            if mem.read_user_obj::<u32>(uaddr)? != val {
                return Err(Errno(libc::EAGAIN));
            }
            Ok(Some(sleep))
        })();
        match r {
            Ok(None) => Outcome::Return(0),
            Ok(Some(None)) => Outcome::Fatal(format!(
                "deadlock: futex wait on {uaddr:#x} with no other thread to wake it"
            )),
            Ok(Some(Some(d))) => {
                // Nothing else can wake a single-threaded guest: the wait times out.
                self.sleep(d);
                Outcome::Return(-i64::from(libc::ETIMEDOUT))
            }
            Err(Errno(e)) => Outcome::Return(-i64::from(e)),
        }
    }

    fn kill(&mut self, pid: i32, sig: i32) -> Outcome {
        if !(-1..=1).contains(&pid) {
            return Outcome::Return(-i64::from(libc::ESRCH));
        }
        match sig {
            0 => Outcome::Return(0),
            1..=64 => match sig {
                // Ignored by default.
                libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT => Outcome::Return(0),
                _ => Outcome::Signal(sig),
            },
            _ => Outcome::Return(-i64::from(libc::EINVAL)),
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

/// Checks `mprotect(addr, len, prot)` as Linux does and returns the end of the range.
/// Memory outside user memory counts as unmapped (ENOMEM).
fn check_mprotect(mem: &GuestMemory, addr: u64, len: u64, prot: u64) -> Result<u64, Errno> {
    if !addr.is_multiple_of(PAGE_SIZE) {
        return Err(Errno(libc::EINVAL));
    }
    if len == 0 {
        return Ok(addr);
    }
    let end = crate::arch::layout::page_align_up(len)
        .and_then(|len| addr.checked_add(len))
        .ok_or(Errno(libc::ENOMEM))?;
    // `prot` is an `unsigned long`: unknown bits anywhere in it are EINVAL.
    const PROT_SEM: i32 = 0x8;
    let grows = u64::from((libc::PROT_GROWSDOWN | libc::PROT_GROWSUP).cast_unsigned());
    let known = u64::from(
        (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC | PROT_SEM).cast_unsigned(),
    ) | grows;
    if prot & !known != 0 || prot & grows == grows {
        return Err(Errno(libc::EINVAL));
    }
    mem.check_user(addr, end - addr)
        .map_err(|_| Errno(libc::ENOMEM))?;
    Ok(end)
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

fn clock_id(clock: i32) -> Result<i32, Errno> {
    match clock {
        c @ (libc::CLOCK_REALTIME
        | libc::CLOCK_MONOTONIC
        | libc::CLOCK_PROCESS_CPUTIME_ID
        | libc::CLOCK_THREAD_CPUTIME_ID
        | libc::CLOCK_MONOTONIC_RAW
        | libc::CLOCK_REALTIME_COARSE
        | libc::CLOCK_MONOTONIC_COARSE
        | libc::CLOCK_BOOTTIME
        | libc::CLOCK_TAI) => Ok(c),
        _ => Err(Errno(libc::EINVAL)),
    }
}

fn host_clock(clock: i32) -> Result<Timespec, Errno> {
    // CPU-time clocks of the guest are measured as the VMM thread's CPU time.
    let host = match clock {
        libc::CLOCK_PROCESS_CPUTIME_ID => libc::CLOCK_THREAD_CPUTIME_ID,
        c => c,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id was validated.
    if unsafe { libc::clock_gettime(host, &mut ts) } != 0 {
        return Err(Errno(libc::EINVAL));
    }
    Ok(Timespec {
        sec: ts.tv_sec,
        nsec: ts.tv_nsec,
    })
}

/// Fills `buf` from the host's entropy source.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Not negative (checked above), and at most the length asked for.
        done += n.unsigned_abs();
    }
    Ok(())
}

fn sched_getaffinity(mem: &GuestMemory, len: u32, mask: u64) -> SysResult {
    if len < 8 || !len.is_multiple_of(8) {
        return Err(Errno(libc::EINVAL));
    }
    // One vCPU: CPU 0 only.
    mem.write_user_obj(mask, 1u64)?;
    Ok(8)
}

fn uname(mem: &GuestMemory, buf: u64) -> SysResult {
    let u = Utsname::new([
        "Linux",
        "reap",
        "6.1.0",
        "#1 SMP reap microVM",
        "x86_64",
        "(none)",
    ]);
    mem.write_user_obj(buf, u)?;
    Ok(0)
}

fn getcwd(mem: &GuestMemory, buf: u64, size: u64) -> SysResult {
    if size < 2 {
        return Err(Errno(libc::ERANGE));
    }
    mem.write_user(buf, b"/\0")?;
    Ok(2)
}

/// The guest has no file system: any path it names does not exist.
fn no_such_file(mem: &GuestMemory, path: u64) -> SysResult {
    read_path(mem, path)?;
    Err(Errno(libc::ENOENT))
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

/// `sigaltstack(new, old)`: a new stack is read and checked, then ignored; the old one
/// reads as disabled.
fn sigaltstack(mem: &GuestMemory, new: u64, old: u64) -> SysResult {
    if new != 0 {
        let ss: SigStack = mem.read_user_obj(new)?;
        const SS_AUTODISARM: i32 = 1 << 31;
        let mode = ss.flags & !SS_AUTODISARM;
        if mode != 0 && mode != libc::SS_DISABLE && mode != libc::SS_ONSTACK {
            return Err(Errno(libc::EINVAL));
        }
    }
    if old != 0 {
        mem.write_user_obj(
            old,
            SigStack {
                flags: libc::SS_DISABLE,
                ..Default::default()
            },
        )?;
    }
    Ok(0)
}

/// `rt_sigaction(sig, act, old, sigsetsize)`: a new action is read and dropped; the old
/// one reads as `SIG_DFL`.
fn rt_sigaction(mem: &GuestMemory, sig: i32, act: u64, old: u64, sigsetsize: u64) -> SysResult {
    if sigsetsize != 8 {
        return Err(Errno(libc::EINVAL));
    }
    if act != 0 {
        mem.read_user_obj::<KernelSigaction>(act)?;
    }
    if !(1..=64).contains(&sig) || (act != 0 && (sig == libc::SIGKILL || sig == libc::SIGSTOP)) {
        return Err(Errno(libc::EINVAL));
    }
    if old != 0 {
        mem.write_user_obj(old, KernelSigaction::default())?;
    }
    Ok(0)
}

/// `rt_sigprocmask(how, set, old, sigsetsize)`: a new mask is read and checked, then
/// ignored; the old one reads as empty.
fn rt_sigprocmask(mem: &GuestMemory, how: i32, set: u64, old: u64, sigsetsize: u64) -> SysResult {
    if sigsetsize != 8 {
        return Err(Errno(libc::EINVAL));
    }
    if set != 0 {
        mem.read_user_obj::<u64>(set)?;
        if !matches!(how, libc::SIG_BLOCK | libc::SIG_UNBLOCK | libc::SIG_SETMASK) {
            return Err(Errno(libc::EINVAL));
        }
    }
    if old != 0 {
        mem.write_user_obj(old, 0u64)?;
    }
    Ok(0)
}

/// `getrusage(who, usage)`: all zero.
fn getrusage(mem: &GuestMemory, who: i32, usage: u64) -> SysResult {
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

#[cfg(test)]
mod tests;
