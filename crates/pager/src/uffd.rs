//! A safe wrapper over Linux userfaultfd, with raw ioctls through `libc`.
//!
//! Every userfaultfd system call and ioctl of the crate lives in this module. The
//! types it exposes are safe: [`Uffd`] owns the descriptor, fills only pages that are
//! missing (the kernel refuses to overwrite a present page with `EEXIST`), and reports
//! failures as [`Errno`] values, including how many bytes a partial `UFFDIO_COPY`
//! installed before it stopped ([`FillError`]).
//!
//! What the kernel does when the process that owns the registered memory exits (measured
//! on Linux 6.18 with a forked owner, see `tests/owner.rs`): the userfaultfd does *not*
//! report `POLLHUP` or end-of-file: `poll` stays silent and `read` returns `EAGAIN`.
//! `UFFDIO_COPY` and `UFFDIO_ZEROPAGE` then fail with `ESRCH`, while `UFFDIO_WAKE` still
//! succeeds. [`Uffd::owner_alive`] turns that into a side-effect-free check, and
//! [`Uffd::with_owner_pid`] adds a pidfd that becomes readable the moment the owner exits.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Raw kernel ABI: ioctl numbers, feature bits and `#[repr(C)]` structs of
/// `<linux/userfaultfd.h>`, for callers that must talk to the kernel without this
/// wrapper (e.g. a forked child that may not allocate).
pub mod sys {
    use std::mem::size_of;

    const IOC_WRITE: u64 = 1;
    const IOC_READ: u64 = 2;
    const UFFDIO: u64 = 0xAA;

    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
    }

    /// `UFFD_API`: the API version asked for in `UFFDIO_API`.
    pub const UFFD_API: u64 = 0xAA;
    /// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`.
    pub const USERFAULTFD_IOC_NEW: u64 = 0xAA00;
    /// `UFFDIO_API`.
    pub const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3F, size_of::<UffdioApi>());
    /// `UFFDIO_REGISTER`.
    pub const UFFDIO_REGISTER: u64 = ioc(IOC_READ | IOC_WRITE, 0x00, size_of::<UffdioRegister>());
    /// `UFFDIO_UNREGISTER`.
    pub const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0x01, size_of::<UffdioRange>());
    /// `UFFDIO_WAKE`.
    pub const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, size_of::<UffdioRange>());
    /// `UFFDIO_COPY`.
    pub const UFFDIO_COPY: u64 = ioc(IOC_READ | IOC_WRITE, 0x03, size_of::<UffdioCopy>());
    /// `UFFDIO_ZEROPAGE`.
    pub const UFFDIO_ZEROPAGE: u64 = ioc(IOC_READ | IOC_WRITE, 0x04, size_of::<UffdioZeropage>());
    /// `UFFDIO_WRITEPROTECT`.
    pub const UFFDIO_WRITEPROTECT: u64 =
        ioc(IOC_READ | IOC_WRITE, 0x06, size_of::<UffdioWriteprotect>());

    /// `UFFD_FEATURE_EVENT_REMOVE`: `madvise(MADV_DONTNEED/REMOVE)` is reported.
    pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
    /// `UFFD_FEATURE_MISSING_HUGETLBFS`: MISSING mode works on hugetlbfs mappings.
    pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
    /// `UFFDIO_REGISTER_MODE_MISSING`.
    pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
    /// `UFFDIO_COPY_MODE_DONTWAKE`.
    pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;
    /// `UFFDIO_ZEROPAGE_MODE_DONTWAKE`.
    pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1;
    /// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`.
    pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 2;
    /// Bit of `uffdio_register.ioctls` saying `UFFDIO_COPY` is allowed on the range.
    pub const RANGE_IOCTL_COPY: u64 = 1 << 0x03;
    /// Bit of `uffdio_register.ioctls` saying `UFFDIO_ZEROPAGE` is allowed on the range.
    pub const RANGE_IOCTL_ZEROPAGE: u64 = 1 << 0x04;

    /// `UFFD_EVENT_PAGEFAULT`.
    pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
    /// `UFFD_EVENT_REMOVE`.
    pub const UFFD_EVENT_REMOVE: u8 = 0x15;
    /// `UFFD_PAGEFAULT_FLAG_WRITE`.
    pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;

    /// `struct uffdio_api`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioApi {
        /// In: [`UFFD_API`].
        pub api: u64,
        /// In: the features asked for; out: the features the kernel has.
        pub features: u64,
        /// Out: bitmask of the ioctls available on the descriptor.
        pub ioctls: u64,
    }

    /// `struct uffdio_range`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioRange {
        /// First byte (page aligned).
        pub start: u64,
        /// Length in bytes (a page multiple).
        pub len: u64,
    }

    /// `struct uffdio_register`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioRegister {
        /// In: the range to register.
        pub range: UffdioRange,
        /// In: `UFFDIO_REGISTER_MODE_*`.
        pub mode: u64,
        /// Out: bitmask of the range ioctls allowed there ([`RANGE_IOCTL_COPY`], ...).
        pub ioctls: u64,
    }

    /// `struct uffdio_copy`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioCopy {
        /// In: destination address in the registered range.
        pub dst: u64,
        /// In: source address in the caller's memory.
        pub src: u64,
        /// In: bytes to copy.
        pub len: u64,
        /// In: [`UFFDIO_COPY_MODE_DONTWAKE`] or 0.
        pub mode: u64,
        /// Out: bytes copied, or a negated errno.
        pub copy: i64,
    }

    /// `struct uffdio_zeropage`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioZeropage {
        /// In: the range to fill.
        pub range: UffdioRange,
        /// In: [`UFFDIO_ZEROPAGE_MODE_DONTWAKE`] or 0.
        pub mode: u64,
        /// Out: bytes filled, or a negated errno.
        pub zeropage: i64,
    }

    /// `struct uffdio_writeprotect`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioWriteprotect {
        /// In: the range.
        pub range: UffdioRange,
        /// In: `UFFDIO_WRITEPROTECT_MODE_*` (0: clear the protection).
        pub mode: u64,
    }

    /// `struct uffd_msg` (packed in C; every field here is naturally aligned, so
    /// `repr(C)` gives the same 32-byte layout). `arg` holds the event's union as
    /// little-endian u64 words: for a page fault `[flags, address, ptid]`, for a remove
    /// `[start, end, _]`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdMsg {
        /// `UFFD_EVENT_*`.
        pub event: u8,
        /// Reserved.
        pub reserved1: u8,
        /// Reserved.
        pub reserved2: u16,
        /// Reserved.
        pub reserved3: u32,
        /// The event's arguments (above).
        pub arg: [u64; 3],
    }

    const _: () = assert!(size_of::<UffdioApi>() == 24);
    const _: () = assert!(size_of::<UffdioRange>() == 16);
    const _: () = assert!(size_of::<UffdioRegister>() == 32);
    const _: () = assert!(size_of::<UffdioCopy>() == 40);
    const _: () = assert!(size_of::<UffdioZeropage>() == 32);
    const _: () = assert!(size_of::<UffdioWriteprotect>() == 24);
    const _: () = assert!(size_of::<UffdMsg>() == 32);
    // The numbers `<linux/userfaultfd.h>` gives on x86-64.
    const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
    const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
    const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_aa01);
    const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);
    const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
    const _: () = assert!(UFFDIO_ZEROPAGE == 0xc020_aa04);
    const _: () = assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
}

/// An `errno` value returned by a failed system call.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The page is already present: someone else served it.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// Retry: a partial copy, or the memory map is changing (an event is pending).
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    /// The process owning the registered memory has exited.
    pub const ESRCH: Errno = Errno(libc::ESRCH);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// The range is not registered (or not in the needed mode).
    pub const ENOENT: Errno = Errno(libc::ENOENT);

    /// The calling thread's current `errno`.
    pub fn last() -> Errno {
        Errno(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({}: {})",
            self.0,
            io::Error::from_raw_os_error(self.0)
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.0)
    }
}

/// A `UFFDIO_COPY` or `UFFDIO_ZEROPAGE` that did not fill the whole range: `copied`
/// bytes from the start of the range were filled, then the kernel stopped with `errno`
/// (`EAGAIN` after a partial fill, `EEXIST` if the first page was present, `ESRCH` if
/// the owner exited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("filled {copied} bytes, then: {errno}")]
pub struct FillError {
    /// Bytes filled from the start of the range before the error (page multiple).
    pub copied: u64,
    /// Why the kernel stopped.
    pub errno: Errno,
}

/// Errors creating or adopting a userfaultfd.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// Neither `/dev/userfaultfd` nor the `userfaultfd` system call gave a descriptor.
    #[error("cannot create a userfaultfd (/dev/userfaultfd: {dev}; userfaultfd(2): {syscall})")]
    Create {
        /// Why `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW` failed.
        dev: Errno,
        /// Why the system call failed.
        syscall: Errno,
    },
    /// The `UFFDIO_API` handshake failed (e.g. a feature the kernel lacks).
    #[error("UFFDIO_API handshake (features {features:#x}) failed")]
    Api {
        /// The features asked for.
        features: u64,
        /// The cause.
        #[source]
        errno: Errno,
    },
    /// A descriptor handed to [`Uffd::from_fd`] is not a userfaultfd.
    #[error("file descriptor {fd} is not a userfaultfd (it is {kind:?})")]
    NotAUserfaultfd {
        /// The descriptor number.
        fd: RawFd,
        /// What `/proc/self/fd` says it is.
        kind: String,
    },
    /// A `fcntl` on the descriptor failed.
    #[error("fcntl on userfaultfd")]
    Fcntl(#[source] Errno),
    /// `pidfd_open` on the owner failed (it may already have exited).
    #[error("pidfd_open({pid}) for the memory owner")]
    PidfdOpen {
        /// The owner's pid.
        pid: i32,
        /// The cause.
        #[source]
        errno: Errno,
    },
}

/// An event read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread (or the kernel on its behalf, e.g. KVM) touched a missing page.
    PageFault {
        /// The faulting address (not page aligned unless the kernel masks it).
        addr: u64,
        /// The access was a write.
        write: bool,
    },
    /// `madvise(MADV_DONTNEED/MADV_REMOVE)` dropped `[start, end)`: those pages read as
    /// zero (anonymous memory) from now on.
    Remove {
        /// First byte of the range.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Another event (fork, remap, unmap) that this crate does not ask for.
    Other(u8),
}

impl Event {
    fn from_msg(m: &sys::UffdMsg) -> Event {
        match m.event {
            sys::UFFD_EVENT_PAGEFAULT => Event::PageFault {
                addr: m.arg[1],
                write: m.arg[0] & sys::UFFD_PAGEFAULT_FLAG_WRITE != 0,
            },
            sys::UFFD_EVENT_REMOVE => Event::Remove {
                start: m.arg[0],
                end: m.arg[1],
            },
            other => Event::Other(other),
        }
    }
}

/// This process's `/dev/userfaultfd`, opened on first use and kept: a jailed process
/// opens it (with [`open_device`]) before its root and privileges are taken away.
static DEV_USERFAULTFD: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// Opens `/dev/userfaultfd` for this process's later [`Uffd::new`] calls, if it is not
/// open yet; an error if it cannot be opened.
pub fn open_device() -> io::Result<()> {
    if DEV_USERFAULTFD.get().is_none() {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/userfaultfd")?;
        // Another thread may have opened it meanwhile: either descriptor will do.
        let _ = DEV_USERFAULTFD.set(dev.into());
    }
    Ok(())
}

fn dev_userfaultfd() -> Result<BorrowedFd<'static>, Errno> {
    open_device().map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok(DEV_USERFAULTFD
        .get()
        .expect("open_device() succeeded")
        .as_fd())
}

/// An owned userfaultfd in non-blocking, close-on-exec mode.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    features: u64,
    owner: Option<(i32, OwnedFd)>,
    /// Created by this process ([`Uffd::new`]): the memory it registers is ours.
    created_here: bool,
}

/// The features [`Uffd::new`] asks for.
pub const FEATURES: u64 = sys::UFFD_FEATURE_EVENT_REMOVE;

impl Uffd {
    /// Creates a userfaultfd with [`FEATURES`] enabled, non-blocking and close-on-exec.
    ///
    /// Prefers `/dev/userfaultfd` (`USERFAULTFD_IOC_NEW`), which does not depend on
    /// `vm.unprivileged_userfaultfd`, and falls back to the system call. Neither is
    /// created with `UFFD_USER_MODE_ONLY`: faults the kernel takes on the process's
    /// behalf (KVM reading guest memory, `copy_from_user` in a system call) arrive too.
    pub fn new() -> Result<Uffd, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let fd = match Self::create_dev(flags) {
            Ok(fd) => fd,
            Err(dev) => match Self::create_syscall(flags) {
                Ok(fd) => fd,
                Err(syscall) => return Err(UffdError::Create { dev, syscall }),
            },
        };
        let mut api = sys::UffdioApi {
            api: sys::UFFD_API,
            features: FEATURES,
            ioctls: 0,
        };
        // SAFETY: `fd` is a valid userfaultfd and `api` is a live, correctly sized
        // `uffdio_api` the kernel reads and writes.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), sys::UFFDIO_API as _, &mut api) };
        if rc < 0 {
            return Err(UffdError::Api {
                features: FEATURES,
                errno: Errno::last(),
            });
        }
        Ok(Uffd {
            fd,
            features: FEATURES,
            owner: None,
            created_here: true,
        })
    }

    fn create_dev(flags: i32) -> Result<OwnedFd, Errno> {
        let dev = dev_userfaultfd()?;
        // SAFETY: `dev` is an open /dev/userfaultfd; USERFAULTFD_IOC_NEW takes the
        // flags by value and returns a new descriptor or -1.
        let fd = unsafe { libc::ioctl(dev.as_raw_fd(), sys::USERFAULTFD_IOC_NEW as _, flags) };
        if fd < 0 {
            return Err(Errno::last());
        }
        // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn create_syscall(flags: i32) -> Result<OwnedFd, Errno> {
        // SAFETY: userfaultfd(2) takes flags by value and returns a descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(Errno::last());
        }
        // A descriptor is an int, returned in a long: it fits.
        #[allow(clippy::cast_possible_truncation)]
        let fd = fd as RawFd;
        // SAFETY: the system call returned a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Adopts a userfaultfd created by another process (Firecracker sends one over
    /// `SCM_RIGHTS` after doing the `UFFDIO_API` handshake and registering its memory).
    ///
    /// Checks that the descriptor is a userfaultfd and sets `O_NONBLOCK` on it (a flag
    /// of the open file description, so the sender sees it too). The enabled features
    /// are unknown: [`Uffd::features`] returns 0.
    pub fn from_fd(fd: OwnedFd) -> Result<Uffd, UffdError> {
        let raw = fd.as_raw_fd();
        let kind = std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        if kind != "anon_inode:[userfaultfd]" {
            return Err(UffdError::NotAUserfaultfd { fd: raw, kind });
        }
        // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
        let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if fl < 0 {
            return Err(UffdError::Fcntl(Errno::last()));
        }
        if fl & libc::O_NONBLOCK == 0 {
            // SAFETY: F_SETFL with an integer argument on a descriptor we own.
            if unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
                return Err(UffdError::Fcntl(Errno::last()));
            }
        }
        // SAFETY: F_GETFD/F_SETFD with an integer argument on a descriptor we own.
        unsafe {
            let fdfl = libc::fcntl(raw, libc::F_GETFD);
            if fdfl < 0 || libc::fcntl(raw, libc::F_SETFD, fdfl | libc::FD_CLOEXEC) < 0 {
                return Err(UffdError::Fcntl(Errno::last()));
            }
        }
        Ok(Uffd {
            fd,
            features: 0,
            owner: None,
            created_here: false,
        })
    }

    /// Watches the process that owns the registered memory through a pidfd, so a page
    /// server notices at once when it exits (without it, it notices at its next ioctl or
    /// its next idle check). Use the pid from `SO_PEERCRED` for a Firecracker peer.
    pub fn with_owner_pid(mut self, pid: i32) -> Result<Uffd, UffdError> {
        // SAFETY: pidfd_open takes a pid and flags by value and returns a fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(UffdError::PidfdOpen {
                pid,
                errno: Errno::last(),
            });
        }
        // A descriptor is an int, returned in a long: it fits.
        #[allow(clippy::cast_possible_truncation)]
        let fd = fd as RawFd;
        // SAFETY: a fresh descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        self.owner = Some((pid, pidfd));
        Ok(self)
    }

    /// The owner's pid and pidfd, if [`Uffd::with_owner_pid`] was called.
    pub fn owner_pidfd(&self) -> Option<(i32, BorrowedFd<'_>)> {
        self.owner.as_ref().map(|(pid, fd)| (*pid, fd.as_fd()))
    }

    /// Whether this process created the descriptor ([`Uffd::new`]), so that the memory
    /// registered with it is this process's own. (A userfaultfd acts on the address
    /// space of the process that created it; for an adopted one, that process is the
    /// one [`Uffd::with_owner_pid`] names, if the caller knows it.)
    pub fn created_here(&self) -> bool {
        self.created_here
    }

    /// The features enabled by [`Uffd::new`] (0 for an adopted descriptor).
    pub fn features(&self) -> u64 {
        self.features
    }

    fn ioctl<T>(&self, req: u64, arg: &mut T) -> Result<(), Errno> {
        // SAFETY: every caller passes the request number matching `T`, one of the
        // `#[repr(C)]` structs of `sys` whose sizes are checked at compile time; the
        // kernel reads and writes only that struct. Any guest-memory effect is limited
        // to filling pages that are missing in ranges registered with this descriptor.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg as *mut T) };
        if rc < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    /// Registers `[addr, addr + len)` in MISSING mode and returns the bitmask of range
    /// ioctls the kernel allows there (`sys::RANGE_IOCTL_*`).
    pub fn register(&self, addr: u64, len: u64) -> Result<u64, Errno> {
        let mut reg = sys::UffdioRegister {
            range: sys::UffdioRange { start: addr, len },
            mode: sys::UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        self.ioctl(sys::UFFDIO_REGISTER, &mut reg)?;
        Ok(reg.ioctls)
    }

    /// Unregisters `[addr, addr + len)`.
    pub fn unregister(&self, addr: u64, len: u64) -> Result<(), Errno> {
        let mut range = sys::UffdioRange { start: addr, len };
        self.ioctl(sys::UFFDIO_UNREGISTER, &mut range)
    }

    /// Fills the missing pages of `[dst, dst + src.len())` with a copy of `src`
    /// (`UFFDIO_COPY`), then wakes the threads waiting there if `wake`.
    ///
    /// `dst` and `src.len()` must be multiples of the region's page size. The kernel
    /// never overwrites a present page: it stops with `EEXIST` there.
    pub fn copy(&self, dst: u64, src: &[u8], wake: bool) -> Result<(), FillError> {
        let len = src.len() as u64;
        let mut c = sys::UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len,
            mode: if wake {
                0
            } else {
                sys::UFFDIO_COPY_MODE_DONTWAKE
            },
            copy: 0,
        };
        match self.ioctl(sys::UFFDIO_COPY, &mut c) {
            Ok(()) => Ok(()),
            // `copy` holds the bytes filled (> 0) or a negated errno; it stays 0 when the
            // kernel failed before trying (e.g. ESRCH).
            Err(errno) => Err(FillError {
                copied: u64::try_from(c.copy).map_or(0, |n| n.min(len)),
                errno,
            }),
        }
    }

    /// Maps the zero page into the missing pages of `[dst, dst + len)`
    /// (`UFFDIO_ZEROPAGE`; not available on hugetlbfs), then wakes if `wake`.
    pub fn zeropage(&self, dst: u64, len: u64, wake: bool) -> Result<(), FillError> {
        let mut z = sys::UffdioZeropage {
            range: sys::UffdioRange { start: dst, len },
            mode: if wake {
                0
            } else {
                sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE
            },
            zeropage: 0,
        };
        match self.ioctl(sys::UFFDIO_ZEROPAGE, &mut z) {
            Ok(()) => Ok(()),
            Err(errno) => Err(FillError {
                copied: u64::try_from(z.zeropage).map_or(0, |n| n.min(len)),
                errno,
            }),
        }
    }

    /// Wakes the threads waiting on faults in `[addr, addr + len)` (`UFFDIO_WAKE`).
    pub fn wake(&self, addr: u64, len: u64) -> Result<(), Errno> {
        let mut range = sys::UffdioRange { start: addr, len };
        self.ioctl(sys::UFFDIO_WAKE, &mut range)
    }

    /// Whether the process owning the registered memory still exists, checked with an
    /// ioctl that changes nothing: `UFFDIO_WRITEPROTECT` clearing protection, without
    /// waking, on the first page at `probe_addr` of a range registered in MISSING mode
    /// only. The kernel answers `ENOENT` (the range is not in write-protect mode) while
    /// the owner's address space exists and `ESRCH` once it is gone.
    pub fn owner_alive(&self, probe_addr: u64, page_size: u64) -> bool {
        let mut wp = sys::UffdioWriteprotect {
            range: sys::UffdioRange {
                start: probe_addr,
                len: page_size,
            },
            mode: sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
        };
        // Anything but ESRCH (ENOENT, or EAGAIN while the map is changing) means the
        // address space is still there.
        self.ioctl(sys::UFFDIO_WRITEPROTECT, &mut wp) != Err(Errno::ESRCH)
    }

    /// Reads the pending events, without blocking, appending them to `out`. Returns how
    /// many were read (0: none pending).
    pub fn read_events(&self, out: &mut Vec<Event>) -> Result<usize, Errno> {
        const BATCH: usize = 32;
        let mut msgs = [sys::UffdMsg::default(); BATCH];
        let mut total = 0;
        loop {
            // SAFETY: `msgs` is a live buffer of exactly the given size; the kernel writes
            // whole `uffd_msg` records into it.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    std::mem::size_of_val(&msgs),
                )
            };
            // A negative result is the error return.
            let Ok(n) = usize::try_from(n) else {
                let e = Errno::last();
                return match e {
                    Errno::EAGAIN => Ok(total),
                    Errno(libc::EINTR) => continue,
                    e => Err(e),
                };
            };
            let count = n / std::mem::size_of::<sys::UffdMsg>();
            if count == 0 {
                return Ok(total);
            }
            out.extend(msgs[..count].iter().map(Event::from_msg));
            total += count;
            if count < BATCH {
                return Ok(total);
            }
        }
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagefault_message_decodes_address_and_write_flag() {
        let m = sys::UffdMsg {
            event: sys::UFFD_EVENT_PAGEFAULT,
            arg: [sys::UFFD_PAGEFAULT_FLAG_WRITE, 0x7000_1234, 0],
            ..Default::default()
        };
        assert_eq!(
            Event::from_msg(&m),
            Event::PageFault {
                addr: 0x7000_1234,
                write: true
            }
        );
    }

    #[test]
    fn remove_message_decodes_range() {
        let m = sys::UffdMsg {
            event: sys::UFFD_EVENT_REMOVE,
            arg: [0x1000, 0x5000, 0],
            ..Default::default()
        };
        assert_eq!(
            Event::from_msg(&m),
            Event::Remove {
                start: 0x1000,
                end: 0x5000
            }
        );
    }

    #[test]
    fn errno_displays_the_os_message() {
        assert_eq!(
            Errno::EEXIST.to_string(),
            io::Error::from_raw_os_error(libc::EEXIST).to_string()
        );
    }
}
