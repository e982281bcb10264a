//! The process and its thread: `arch_prctl`, resource limits, CPU affinity, usage.

use super::*;

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
}

pub(super) fn sched_getaffinity(mem: &GuestMemory, len: u32, mask: u64) -> SysResult {
    if len < 8 || !len.is_multiple_of(8) {
        return Err(Errno(libc::EINVAL));
    }
    // One vCPU: CPU 0 only.
    mem.write_user_obj(mask, 1u64)?;
    Ok(8)
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
