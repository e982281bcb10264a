//! The jail of an instance process, in the manner of Firecracker's jailer, built in
//! two steps so that the slow part happens before a request needs the process:
//!
//! 1. at start ([`Jail::prepare`], with [`pre_exec`] in the forked child before it
//!    runs `reap worker`): new mount, PID, network, IPC and UTS namespaces; the cgroup
//!    of the instance; `/dev/kvm`, `/dev/userfaultfd` and the process's own page map
//!    opened; then an empty, read-only root (a tmpfs the process pivots into, the
//!    host's tree unmounted beneath it).
//! 2. when the server hands it a snapshot ([`Jail::confine`]): the snapshot's
//!    directory becomes the root (`chroot` through the descriptor the server sent, so
//!    `..` stops there), then the process drops to an unprivileged uid and gid with no
//!    supplementary groups and no capabilities, sets `no_new_privs`, and installs the
//!    seccomp filter ([`seccomp`]) that kills it on any system call the VMM does not
//!    make. Only then does guest code run.
//!
//! The threat model and what each layer stops are in `docs/jail.md`.

pub mod cgroup;
pub mod seccomp;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// The unprivileged user and group instance processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

impl Default for Ids {
    /// `nobody` and `nogroup` (65534).
    fn default() -> Self {
        Ids {
            uid: 65534,
            gid: 65534,
        }
    }
}

/// The namespaces an instance process gets (`unshare` in the forked child).
pub const NAMESPACES: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in a constant path")
}

/// Step 1 inside the new namespaces, after the fork into the PID namespace: opens what
/// the VMM needs from the host, then pivots into an empty read-only root.
pub fn prepare() -> io::Result<()> {
    reap_vmm::vstate::vm::kvm().map_err(|e| io::Error::other(reap_error::chain(&e)))?;
    reap_pager::uffd::open_device()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/userfaultfd: {e}")))?;
    reap_pager::pagemap::open_own()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /proc/self/pagemap: {e}")))?;
    empty_root()
}

/// Pivots into an empty tmpfs, read-only, with the host's tree unmounted.
fn empty_root() -> io::Result<()> {
    let root = cstr("/");
    let tmp = cstr("/tmp");
    let old = cstr("/tmp/.old");
    let tmpfs = cstr("tmpfs");
    let opts = cstr("size=64k,mode=0755");
    // SAFETY: plain system calls with NUL-terminated constant paths.
    unsafe {
        check(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "cannot make the mounts private",
        )?;
        check(
            libc::mount(
                tmpfs.as_ptr(),
                tmp.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                opts.as_ptr().cast(),
            ),
            "cannot mount the jail's tmpfs",
        )?;
        check(
            libc::mkdir(old.as_ptr(), 0o700),
            "cannot make the old root's mount point",
        )?;
        check(
            libc::syscall(libc::SYS_pivot_root, tmp.as_ptr(), old.as_ptr()) as libc::c_int,
            "pivot_root",
        )?;
        check(libc::chdir(root.as_ptr()), "chdir /")?;
        let old_in_new = cstr("/.old");
        check(
            libc::umount2(old_in_new.as_ptr(), libc::MNT_DETACH),
            "cannot unmount the host's tree",
        )?;
        check(libc::rmdir(old_in_new.as_ptr()), "rmdir /.old")?;
        check(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ),
            "cannot make the root read-only",
        )?;
    }
    Ok(())
}

/// Step 2: makes `dir` (a directory descriptor the server sent) the root, drops to
/// `ids` with no capabilities and `no_new_privs`, and limits file access to reading
/// beneath the root (also writing there, with `writable`: a deploy) and the
/// directories `also` (Landlock: even a descriptor of a directory outside the root
/// cannot reach its parent).
pub fn confine(dir: OwnedFd, ids: Ids, also: &[OwnedFd], writable: bool) -> io::Result<()> {
    let dot = cstr(".");
    let root = cstr("/");
    // SAFETY: plain system calls on a descriptor we own, constant
    // paths, and an empty group list.
    unsafe {
        check(
            libc::fchdir(dir.as_raw_fd()),
            "cannot enter the snapshot directory",
        )?;
        check(libc::chroot(dot.as_ptr()), "chroot")?;
        check(libc::chdir(root.as_ptr()), "chdir /")?;
        drop(dir);
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(ids.gid, ids.gid, ids.gid), "setresgid")?;
        check(libc::setresuid(ids.uid, ids.uid, ids.uid), "setresuid")?;
        // Changing credentials clears the parent-death signal: set it again, so the
        // process dies with its outer process (which the server kills to end it).
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
            "PR_SET_PDEATHSIG",
        )?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "PR_SET_NO_NEW_PRIVS",
        )?;
    }
    beneath(also, writable)?;
    let caps = capabilities()?;
    if caps != [0; 3] {
        return Err(io::Error::other(format!(
            "capabilities left after dropping privileges: effective {:#x}, permitted {:#x}, inheritable {:#x}",
            caps[0], caps[1], caps[2]
        )));
    }
    Ok(())
}

/// Landlock: from now on this process may only read files and directories beneath
/// its root (or also change them, with `writable`) and `also`, and nothing anywhere
/// else (descriptors opened before, such as `/dev/kvm`, keep working). An error if the
/// kernel enforces it only in part or not at all.
fn beneath(also: &[OwnedFd], writable: bool) -> io::Result<()> {
    use landlock::{
        ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus,
    };
    let abi = ABI::V5;
    let err = |e: landlock::RulesetError| io::Error::other(format!("landlock: {e}"));
    let root = PathFd::new("/").map_err(|e| io::Error::other(format!("landlock: {e}")))?;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rule(PathBeneath::new(
            root,
            if writable {
                AccessFs::from_all(abi)
            } else {
                AccessFs::from_read(abi)
            },
        ))
        .map_err(err)?;
    for dir in also {
        ruleset = ruleset
            .add_rule(PathBeneath::new(dir, AccessFs::from_read(abi)))
            .map_err(err)?;
    }
    let status = ruleset.restrict_self().map_err(err)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(io::Error::other(format!(
            "landlock is not fully enforced by this kernel ({:?})",
            status.ruleset
        )));
    }
    Ok(())
}

/// This thread's effective, permitted and inheritable capability sets (the low and
/// high words or-ed into one `u64` each).
pub fn capabilities() -> io::Result<[u64; 3]> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` (version 3) into `data`, and may update `header`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    check(rc as libc::c_int, "capget")?;
    let word = |f: fn(&Data) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok([
        word(|d| d.effective),
        word(|d| d.permitted),
        word(|d| d.inheritable),
    ])
}

/// The nice value instance processes start at ([`pre_exec`]).
pub const START_NICE: libc::c_int = 10;

/// Back to the normal priority (nice 0), once the process is set up and waits for
/// work; needs the privilege to lower a nice value (root, before [`confine`]).
pub fn normal_priority() -> io::Result<()> {
    // SAFETY: a plain system call on this process.
    check(
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) },
        "setpriority",
    )
}

/// The scheduling slice asked for instance processes ([`short_slice`]), in nanoseconds:
/// the shortest Linux allows.
pub const SLICE_NS: u64 = 100_000;

/// Asks the scheduler for a short time slice ([`SLICE_NS`]) for this thread (Linux 6.12
/// and later: a custom slice for normal tasks). A thread woken with a shorter slice than
/// the running one's preempts it at once; with the default slice (0.75 ms times a
/// factor that grows with the CPUs) a process woken for a cold start on a busy machine
/// waits for the running task's slice to end. It does not change the process's share
/// of the CPU. Kernels without custom slices refuse it (`EINVAL`), harmlessly.
pub fn short_slice() -> io::Result<()> {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice: 0,
        priority: 0,
        runtime: SLICE_NS,
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr reads one `sched_attr` (version 0, 48 bytes) from `attr`.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) };
    check(rc as libc::c_int, "sched_setattr")
}

/// Unshares [`NAMESPACES`] (the PID namespace takes effect for the next child).
pub fn unshare() -> io::Result<()> {
    // SAFETY: a plain system call.
    check(unsafe { libc::unshare(NAMESPACES) }, "unshare")
}

/// What the forked child does before it runs `reap worker` (it must not allocate: the
/// parent may have other threads): starts a session of its own (no terminal, no
/// signals of the server's process group), puts the socket on descriptor 3, asks to be
/// killed with its parent, and joins the instance's cgroup (`procs`: open
/// `cgroup.procs` files), so that all its descendants are in it.
///
/// # Safety
/// Only between `fork` and `exec` (`Command::pre_exec`), with descriptors that stay
/// open until then.
pub unsafe fn pre_exec(socket: libc::c_int, procs: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: async-signal-safe system calls on descriptors the caller keeps open.
    unsafe {
        check(libc::setsid(), "setsid")?;
        // The cgroup first: a `cgroup.procs` descriptor may be number 3, which the
        // socket takes next.
        for &fd in procs {
            let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if socket == 3 {
            check(libc::fcntl(3, libc::F_SETFD, 0), "fcntl")?;
        } else {
            check(libc::dup2(socket, 3), "dup2")?;
        }
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
            "PR_SET_PDEATHSIG",
        )?;
        // Started at a low priority: a process started ahead must not take the CPU
        // from the cold start that took its predecessor; it returns to normal once
        // ready ([`normal_priority`]).
        libc::setpriority(libc::PRIO_PROCESS, 0, START_NICE);
    }
    Ok(())
}
