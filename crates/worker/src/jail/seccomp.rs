//! The seccomp filter of an instance process: the system calls its VMM makes once the
//! snapshot's directory is its root (restore, the page server, the vCPU, the watchdog,
//! the socket to the server), and nothing else. Any other call kills the process
//! (`SECCOMP_RET_KILL_PROCESS`, seen by the server as `SIGSYS`). The list was found by
//! tracing instance processes through every memory mode (`strace -f`); `docs/jail.md`
//! says how to find what a new feature needs (`REAP_SECCOMP_LOG=1` logs instead of
//! killing, to the kernel log).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The system calls allowed, by name, for the messages that list them.
pub const ALLOWED: &[(i64, &str)] = &[
    // Memory: guest memory, the heap, thread stacks.
    (libc::SYS_mmap, "mmap"),
    (libc::SYS_munmap, "munmap"),
    (libc::SYS_mprotect, "mprotect"),
    (libc::SYS_madvise, "madvise"),
    (libc::SYS_mremap, "mremap"),
    (libc::SYS_brk, "brk"),
    // KVM and userfaultfd ioctls, on descriptors opened before the jail: only requests
    // of those two types ([`IOCTL_TYPES`]).
    (libc::SYS_ioctl, "ioctl"),
    // The snapshot's files, in the root the snapshot directory became.
    (libc::SYS_openat, "openat"),
    // The function's image: resolved beneath its root (`RESOLVE_IN_ROOT`).
    (libc::SYS_openat2, "openat2"),
    (libc::SYS_readlinkat, "readlinkat"),
    (libc::SYS_getdents64, "getdents64"),
    (libc::SYS_close, "close"),
    (libc::SYS_read, "read"),
    (libc::SYS_pread64, "pread64"),
    (libc::SYS_readv, "readv"),
    (libc::SYS_preadv, "preadv"),
    (libc::SYS_write, "write"),
    (libc::SYS_writev, "writev"),
    (libc::SYS_lseek, "lseek"),
    (libc::SYS_fstat, "fstat"),
    (libc::SYS_newfstatat, "newfstatat"),
    (libc::SYS_statx, "statx"),
    (libc::SYS_fadvise64, "fadvise64"),
    (libc::SYS_fcntl, "fcntl"),
    // The socket to the server.
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_recvmsg, "recvmsg"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_sendto, "sendto"),
    // Threads: the page server, the watchdog.
    (libc::SYS_clone, "clone"),
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_futex, "futex"),
    (libc::SYS_set_robust_list, "set_robust_list"),
    (libc::SYS_rseq, "rseq"),
    (libc::SYS_prctl, "prctl"),
    (libc::SYS_sched_getaffinity, "sched_getaffinity"),
    (libc::SYS_sched_yield, "sched_yield"),
    (libc::SYS_gettid, "gettid"),
    (libc::SYS_getpid, "getpid"),
    (libc::SYS_exit, "exit"),
    (libc::SYS_exit_group, "exit_group"),
    // Signals: the watchdog kicks the vCPU thread out of KVM_RUN.
    (libc::SYS_rt_sigaction, "rt_sigaction"),
    (libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    (libc::SYS_rt_sigreturn, "rt_sigreturn"),
    (libc::SYS_sigaltstack, "sigaltstack"),
    (libc::SYS_tgkill, "tgkill"),
    // Consuming a kick that ended KVM_RUN (the signal is blocked outside it).
    (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait"),
    // Waiting and time.
    (libc::SYS_poll, "poll"),
    (libc::SYS_ppoll, "ppoll"),
    (libc::SYS_eventfd2, "eventfd2"),
    (libc::SYS_clock_gettime, "clock_gettime"),
    (libc::SYS_clock_nanosleep, "clock_nanosleep"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_getrandom, "getrandom"),
    // The confinement, made after the filter is installed (while the process waits for
    // a snapshot); once the privileges are dropped these can only fail (`EPERM`), and
    // `chroot`, `chdir` and `fchdir` stay inside the root.
    (libc::SYS_fchdir, "fchdir"),
    (libc::SYS_chdir, "chdir"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_setgroups, "setgroups"),
    (libc::SYS_setresgid, "setresgid"),
    (libc::SYS_setresuid, "setresuid"),
    (libc::SYS_capget, "capget"),
    (libc::SYS_getuid, "getuid"),
    (libc::SYS_getgid, "getgid"),
    // Landlock, which can only take rights away.
    (libc::SYS_landlock_create_ruleset, "landlock_create_ruleset"),
    (libc::SYS_landlock_add_rule, "landlock_add_rule"),
    (libc::SYS_landlock_restrict_self, "landlock_restrict_self"),
];

/// The calls a deploy adds (writing the snapshot into its directory, and removing a
/// half-written one).
pub const DEPLOY_EXTRA: &[(i64, &str)] = &[
    (libc::SYS_pwrite64, "pwrite64"),
    (libc::SYS_ftruncate, "ftruncate"),
    (libc::SYS_fsync, "fsync"),
    (libc::SYS_fdatasync, "fdatasync"),
    (libc::SYS_mkdir, "mkdir"),
    (libc::SYS_mkdirat, "mkdirat"),
    (libc::SYS_rename, "rename"),
    (libc::SYS_renameat, "renameat"),
    (libc::SYS_renameat2, "renameat2"),
    (libc::SYS_unlink, "unlink"),
    (libc::SYS_unlinkat, "unlinkat"),
    (libc::SYS_rmdir, "rmdir"),
    (libc::SYS_mincore, "mincore"),
];

/// The `ioctl` request types allowed (bits 8-15 of the request number): KVM's (`0xAE`:
/// `KVM_RUN`, `KVM_SET_REGS`, ...) and userfaultfd's (`0xAA`: `UFFDIO_COPY`, ...,
/// `USERFAULTFD_IOC_NEW`). Terminal, socket and file-system requests (`TIOCSTI`,
/// `FIONBIO`, `FICLONE`, ...) are refused: the process makes none once confined.
pub const IOCTL_TYPES: &[(u64, &str)] = &[(0xAE, "KVM"), (0xAA, "userfaultfd")];

/// The rules for one allowed call: none (any arguments) but for `ioctl`.
fn rules_for(nr: i64) -> Result<Vec<SeccompRule>, SeccompError> {
    if nr != libc::SYS_ioctl {
        return Ok(Vec::new());
    }
    IOCTL_TYPES
        .iter()
        .map(|&(ty, _)| {
            let condition = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(0xff00),
                ty << 8,
            )?;
            Ok(SeccompRule::new(vec![condition])?)
        })
        .collect()
}

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules do not compile.
    #[error("cannot build the seccomp filter")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter")]
    Install(#[from] seccompiler::Error),
}

/// The filter: [`ALLOWED`] calls pass (and [`DEPLOY_EXTRA`] with `deploy`), any other
/// kills the process (or, with `log`, is logged by the kernel and allowed, to find what
/// a change needs).
pub fn filter(log: bool, deploy: bool) -> Result<BpfProgram, SeccompError> {
    let extra: &[(i64, &str)] = if deploy { DEPLOY_EXTRA } else { &[] };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(extra)
        .map(|&(nr, _)| Ok((nr, rules_for(nr)?)))
        .collect::<Result<_, SeccompError>>()?;
    let mismatch = if log {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    Ok(filter.try_into()?)
}

/// Installs `program` on every thread of the process (there is one when it is
/// called). Needs `no_new_privs` (set by [`super::confine`]).
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter_all_threads(program)?;
    Ok(())
}

/// The name of system call `nr` if the filter allows it.
pub fn allowed_name(nr: i64) -> Option<&'static str> {
    ALLOWED
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_builds_and_lists_each_call_once() {
        let program = filter(false, false).unwrap();
        assert!(program.len() > ALLOWED.len(), "one jump at least per call");
        assert!(filter(false, true).unwrap().len() > program.len());
        let mut nrs: Vec<i64> = ALLOWED
            .iter()
            .chain(DEPLOY_EXTRA)
            .map(|(nr, _)| *nr)
            .collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), ALLOWED.len() + DEPLOY_EXTRA.len());
        assert_eq!(allowed_name(libc::SYS_ioctl), Some("ioctl"));
        assert_eq!(allowed_name(libc::SYS_execve), None);
        assert_eq!(allowed_name(libc::SYS_socket), None);
    }
}
