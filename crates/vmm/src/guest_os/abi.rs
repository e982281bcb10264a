//! Linux x86-64 ABI structures the syscall layer writes into guest memory.

use vm_memory::ByteValued;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: i64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Timeval {
    pub sec: i64,
    pub usec: i64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Iovec {
    pub base: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PollFd {
    pub fd: i32,
    pub events: i16,
    pub revents: i16,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Rlimit {
    pub cur: u64,
    pub max: u64,
}

/// `struct stat` of x86-64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub pad0: u32,
    pub rdev: u64,
    pub size: i64,
    pub blksize: i64,
    pub blocks: i64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub unused: [i64; 3],
}

/// `stack_t` for sigaltstack.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct SigStack {
    pub sp: u64,
    pub flags: i32,
    pub pad: u32,
    pub size: u64,
}

/// The kernel's `struct sigaction` (handler, flags, restorer, mask).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// `struct utsname`: six NUL-padded 65-byte fields.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Utsname {
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
