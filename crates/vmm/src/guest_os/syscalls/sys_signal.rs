//! Signals: `kill`, `rt_sigaction`, `rt_sigprocmask`, `sigaltstack`.

use super::*;

impl GuestOs {
    pub(super) fn kill(&mut self, pid: i32, sig: i32) -> Outcome {
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

/// `sigaltstack(new, old)`: a new stack is read and checked, then ignored; the old one
/// reads as disabled.
pub(super) fn sigaltstack(mem: &GuestMemory, new: u64, old: u64) -> SysResult {
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
pub(super) fn rt_sigaction(
    mem: &GuestMemory,
    sig: i32,
    act: u64,
    old: u64,
    sigsetsize: u64,
) -> SysResult {
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

impl GuestOs {
    /// `rt_sigprocmask(how, set, old, sigsetsize)`: the calling thread's mask is kept
    /// (signals are never delivered, so it changes nothing else).
    pub(super) fn rt_sigprocmask(
        &mut self,
        mem: &GuestMemory,
        how: i32,
        set: u64,
        old: u64,
        sigsetsize: u64,
    ) -> SysResult {
        if sigsetsize != 8 {
            return Err(Errno(libc::EINVAL));
        }
        let before = self.threads.current().sigmask;
        let new = if set != 0 {
            let set = mem.read_user_obj::<u64>(set)?;
            // SIGKILL and SIGSTOP cannot be blocked.
            let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
            Some(
                match how {
                    libc::SIG_BLOCK => before | set,
                    libc::SIG_UNBLOCK => before & !set,
                    libc::SIG_SETMASK => set,
                    _ => return Err(Errno(libc::EINVAL)),
                } & !unblockable,
            )
        } else {
            None
        };
        if old != 0 {
            mem.write_user_obj(old, before)?;
        }
        if let Some(mask) = new {
            self.threads.current_mut().sigmask = mask;
        }
        Ok(0)
    }
}
