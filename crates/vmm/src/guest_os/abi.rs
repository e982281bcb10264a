//! Linux x86-64 ABI structures the syscall layer writes into guest memory.

use vm_memory::ByteValued;

/// `struct timespec`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Timespec {
    /// Seconds.
    pub sec: i64,
    /// Nanoseconds, 0 to 999 999 999 when valid.
    pub nsec: i64,
}

/// `struct timeval`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Timeval {
    /// Seconds.
    pub sec: i64,
    /// Microseconds.
    pub usec: i64,
}

/// `struct iovec`: one buffer of `readv`/`writev`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Iovec {
    /// The buffer's guest address.
    pub base: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// `struct pollfd`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PollFd {
    /// The descriptor (negative: skipped).
    pub fd: i32,
    /// The events asked for.
    pub events: i16,
    /// The events that happened (written back).
    pub revents: i16,
}

/// `struct rlimit` (as `prlimit64` uses it).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Rlimit {
    /// The soft limit.
    pub cur: u64,
    /// The hard limit.
    pub max: u64,
}

/// `struct stat` of x86-64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Stat {
    /// `st_dev`: the device.
    pub dev: u64,
    /// `st_ino`: the inode number.
    pub ino: u64,
    /// `st_nlink`: the number of links.
    pub nlink: u64,
    /// `st_mode`: file type and permissions.
    pub mode: u32,
    /// `st_uid`: the owner.
    pub uid: u32,
    /// `st_gid`: the group.
    pub gid: u32,
    /// Padding.
    pub pad0: u32,
    /// `st_rdev`: the device a device file stands for.
    pub rdev: u64,
    /// `st_size`: the size in bytes.
    pub size: i64,
    /// `st_blksize`: the preferred I/O size.
    pub blksize: i64,
    /// `st_blocks`: 512-byte blocks allocated.
    pub blocks: i64,
    /// `st_atim`: last access.
    pub atime: Timespec,
    /// `st_mtim`: last modification.
    pub mtime: Timespec,
    /// `st_ctim`: last status change.
    pub ctime: Timespec,
    /// Reserved.
    pub unused: [i64; 3],
}

/// `stack_t` for sigaltstack.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct SigStack {
    /// The stack's lowest address.
    pub sp: u64,
    /// `SS_DISABLE`, `SS_ONSTACK`, `SS_AUTODISARM`.
    pub flags: i32,
    /// Padding.
    pub pad: u32,
    /// The stack's size.
    pub size: u64,
}

/// The kernel's `struct sigaction` (handler, flags, restorer, mask).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelSigaction {
    /// The handler, or `SIG_DFL` (0) or `SIG_IGN` (1).
    pub handler: u64,
    /// `SA_*` flags.
    pub flags: u64,
    /// The return trampoline (`SA_RESTORER`).
    pub restorer: u64,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}

/// `struct utsname`: six NUL-padded 65-byte fields.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Utsname {
    /// sysname, nodename, release, version, machine, domainname.
    pub fields: [[u8; 65]; 6],
}

const _: () = assert!(size_of::<Timespec>() == 16);
const _: () = assert!(size_of::<Timeval>() == 16);
const _: () = assert!(size_of::<Iovec>() == 16);
const _: () = assert!(size_of::<PollFd>() == 8);
const _: () = assert!(size_of::<Rlimit>() == 16);
const _: () = assert!(size_of::<Stat>() == 144);
const _: () = assert!(size_of::<SigStack>() == 24);
const _: () = assert!(size_of::<KernelSigaction>() == 32);
const _: () = assert!(size_of::<Utsname>() == 390);

// SAFETY: all of these are plain-old-data `repr(C)` structs of integers without
// padding bytes (sizes asserted above), so any byte pattern is a valid value.
unsafe impl ByteValued for Timespec {}
// SAFETY: as above.
unsafe impl ByteValued for Timeval {}
// SAFETY: as above.
unsafe impl ByteValued for Iovec {}
// SAFETY: as above.
unsafe impl ByteValued for PollFd {}
// SAFETY: as above.
unsafe impl ByteValued for Rlimit {}
// SAFETY: as above.
unsafe impl ByteValued for Stat {}
// SAFETY: as above.
unsafe impl ByteValued for SigStack {}
// SAFETY: as above.
unsafe impl ByteValued for KernelSigaction {}
// SAFETY: as above (u8 arrays only).
unsafe impl ByteValued for Utsname {}

impl Utsname {
    /// The six fields in order, each cut to 64 bytes and NUL-padded.
    pub fn new(values: [&str; 6]) -> Self {
        let mut fields = [[0u8; 65]; 6];
        for (field, value) in fields.iter_mut().zip(values) {
            let n = value.len().min(64);
            field[..n].copy_from_slice(&value.as_bytes()[..n]);
        }
        Self { fields }
    }
}

impl Timespec {
    /// The timespec of a duration (seconds beyond `i64::MAX` saturate).
    pub fn from_duration(d: std::time::Duration) -> Self {
        Self {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: i64::from(d.subsec_nanos()),
        }
    }

    /// The duration, or `None` if negative or not normalized (EINVAL).
    pub fn to_duration(self) -> Option<std::time::Duration> {
        let sec = u64::try_from(self.sec).ok()?;
        let nsec = u32::try_from(self.nsec)
            .ok()
            .filter(|&n| n < 1_000_000_000)?;
        Some(std::time::Duration::new(sec, nsec))
    }
}
