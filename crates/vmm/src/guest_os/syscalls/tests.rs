//! The system calls against plain guest memory: a [`GuestOs`] and a [`GuestMemory`],
//! no VM, no vCPU, no KVM.
//!
//! Each expectation is what Linux (x86-64, 6.1) returns for the same call, unless a
//! comment says where reap deliberately differs (docs/guest-abi.md).

use std::io;
use std::sync::{Arc, Mutex};

use libc::c_long;
use vm_memory::ByteValued;

use crate::arch::layout::{GDT_ADDR, PAGE_SIZE, STACK_GUARD_GAP, STACK_SIZE, SYSTEM_AREA_END};
use crate::guest_os::abi::{Iovec, KernelSigaction, PollFd, Rlimit, SigStack, Timespec, Utsname};
use crate::guest_os::mm::AddressSpace;
use crate::guest_os::threads::{MAIN_TID, Resume, RunState, Wait, WaitOn, monotonic_ns};
use crate::guest_os::{GuestOs, Outcome, Syscall};
use crate::vstate::memory::GuestMemory;

/// Guest memory size.
const MEM: u64 = 32 << 20;
/// The first page after the "program": the heap starts here.
const PROGRAM_END: u64 = 0x40_0000;
/// Where mappings end: the stack is above.
const MMAP_TOP: u64 = MEM - STACK_SIZE - STACK_GUARD_GAP;
/// Scratch memory in the program's data for the tests' buffers.
const BUF: u64 = 0x30_0000;
/// A second scratch area (iovec arrays, pollfds, timespecs).
const AUX: u64 = 0x31_0000;

/// Addresses no system call may read or write, each with what it is. Every object the
/// syscall layer reads or writes is at least two bytes, so each of these is EFAULT.
/// There is no "unmapped page" inside guest memory: reap has no page protections, and
/// all memory from 0x200000 to the end of guest memory is the program's (guest-abi.md).
const BAD: [(&str, u64); 9] = [
    ("null", 0),
    ("page 0", 0xff8),
    ("the system area (GDT)", GDT_ADDR),
    ("the last byte below user memory", SYSTEM_AREA_END - 1),
    ("the end of guest memory", MEM),
    ("across the end of guest memory", MEM - 1),
    ("unmapped, above guest memory", 0x7fff_0000_0000),
    ("the kernel half", 0xffff_ffff_ff60_0000),
    ("wrapping around the address space", u64::MAX - 1),
];

/// `AT_FDCWD` as the guest passes it.
const CWD: u64 = (libc::AT_FDCWD as i64).cast_unsigned();

fn errno(e: i32) -> i64 {
    -i64::from(e)
}

/// A sink the test can read back.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

/// A guest OS over fresh guest memory, with captured stdout and stderr.
struct Guest {
    os: GuestOs,
    mem: GuestMemory,
    stdout: Capture,
    stderr: Capture,
}

impl Guest {
    fn new() -> Self {
        let mem = GuestMemory::anonymous(MEM).unwrap();
        let (stdout, stderr) = (Capture::default(), Capture::default());
        let os = GuestOs::new(
            AddressSpace::new(MEM, PROGRAM_END),
            Box::new(stdout.clone()),
            Box::new(stderr.clone()),
        );
        Self {
            os,
            mem,
            stdout,
            stderr,
        }
    }

    fn call(&mut self, nr: c_long, args: &[u64]) -> Outcome {
        let mut all = [0; 6];
        all[..args.len()].copy_from_slice(args);
        let call = Syscall {
            nr: nr.cast_unsigned(),
            args: all,
        };
        self.os.syscall(&self.mem, &call)
    }

    /// The value the call returns to the guest; panics if it does not return.
    fn ret(&mut self, nr: c_long, args: &[u64]) -> i64 {
        match self.call(nr, args) {
            Outcome::Return(v) => v,
            other => panic!("system call {nr} {args:x?}: {other:?}"),
        }
    }

    fn put<T: ByteValued>(&self, addr: u64, value: T) {
        self.mem.write_obj(addr, value).unwrap();
    }

    fn get<T: ByteValued>(&self, addr: u64) -> T {
        self.mem.read_obj(addr).unwrap()
    }

    fn put_bytes(&self, addr: u64, bytes: &[u8]) {
        self.mem.write(addr, bytes).unwrap();
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read(addr, &mut buf).unwrap();
        buf
    }
}

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec { sec, nsec }
}

fn iov(base: u64, len: u64) -> Iovec {
    Iovec { base, len }
}

// --- Bad pointers -----------------------------------------------------------------

/// One pointer argument of one system call.
struct PointerCase {
    what: &'static str,
    nr: c_long,
    /// The arguments with the pointer under test.
    args: fn(u64) -> Vec<u64>,
    /// A pointer that works (its memory prepared by `setup`).
    good: u64,
    /// What the call returns with the good pointer, if not just "not an error".
    good_ret: Option<i64>,
    /// Prepares the guest; given the pointer under test.
    setup: fn(&mut Guest, u64),
    /// NULL means "none" for this argument (tested on its own).
    null_ok: bool,
}

fn case(what: &'static str, nr: c_long, args: fn(u64) -> Vec<u64>) -> PointerCase {
    PointerCase {
        what,
        nr,
        args,
        good: BUF,
        good_ret: None,
        setup: |_, _| {},
        null_ok: false,
    }
}

impl PointerCase {
    fn returns(self, ret: i64) -> Self {
        Self {
            good_ret: Some(ret),
            ..self
        }
    }

    fn good(self, good: u64) -> Self {
        Self { good, ..self }
    }

    fn setup(self, setup: fn(&mut Guest, u64)) -> Self {
        Self { setup, ..self }
    }

    fn null_ok(self) -> Self {
        Self {
            null_ok: true,
            ..self
        }
    }
}

/// Every pointer argument of every system call that takes one.
fn pointer_cases() -> Vec<PointerCase> {
    use libc::*;
    fn path(g: &mut Guest, _: u64) {
        g.put_bytes(BUF, b"/etc/passwd\0");
    }
    fn stdin16(g: &mut Guest, _: u64) {
        g.os.push_stdin(&[7; 16]);
    }
    fn zero_ts(g: &mut Guest, _: u64) {
        g.put(AUX, ts(0, 0));
    }
    fn nofile(g: &mut Guest, _: u64) {
        g.put(AUX, Rlimit { cur: 3, max: 3 });
    }
    fn pollfd_stdout(g: &mut Guest, _: u64) {
        g.put(
            AUX,
            PollFd {
                fd: 1,
                events: POLLOUT,
                revents: 0,
            },
        );
        g.put(AUX + 0x100, ts(0, 0));
    }
    let enoent = errno(ENOENT);
    vec![
        case("read buf", SYS_read, |p| vec![0, p, 16])
            .returns(16)
            .setup(stdin16),
        case("readv iov", SYS_readv, |p| vec![0, p, 1])
            .good(AUX)
            .returns(16)
            .setup(|g, _| {
                stdin16(g, 0);
                g.put(AUX, iov(BUF, 16));
            }),
        case("readv iov_base", SYS_readv, |_| vec![0, AUX, 1])
            .returns(16)
            .setup(|g, p| {
                stdin16(g, 0);
                g.put(AUX, iov(p, 16));
            }),
        case("write buf", SYS_write, |p| vec![1, p, 16]).returns(16),
        case("writev iov", SYS_writev, |p| vec![2, p, 1])
            .good(AUX)
            .returns(16)
            .setup(|g, _| g.put(AUX, iov(BUF, 16))),
        case("writev iov_base", SYS_writev, |_| vec![1, AUX, 2])
            .returns(32)
            .setup(|g, p| {
                g.put(AUX, iov(BUF, 16));
                g.put(AUX + 16, iov(p, 16));
            }),
        case("fstat buf", SYS_fstat, |p| vec![1, p]).returns(0),
        case("newfstatat path", SYS_newfstatat, |p| vec![CWD, p, AUX, 0])
            .returns(enoent)
            .setup(path),
        case("newfstatat buf", SYS_newfstatat, |p| {
            vec![1, BUF, p, AT_EMPTY_PATH as u64]
        })
        .returns(0),
        case("open path", SYS_open, |p| vec![p, 0, 0])
            .returns(enoent)
            .setup(path),
        case("access path", SYS_access, |p| vec![p, 0])
            .returns(enoent)
            .setup(path),
        case("stat path", SYS_stat, |p| vec![p, AUX])
            .returns(enoent)
            .setup(path),
        case("lstat path", SYS_lstat, |p| vec![p, AUX])
            .returns(enoent)
            .setup(path),
        case("readlink path", SYS_readlink, |p| vec![p, AUX, 64])
            .returns(enoent)
            .setup(path),
        case("openat path", SYS_openat, |p| vec![CWD, p, 0, 0])
            .returns(enoent)
            .setup(path),
        case("readlinkat path", SYS_readlinkat, |p| vec![CWD, p, AUX, 64])
            .returns(enoent)
            .setup(path),
        case("faccessat path", SYS_faccessat, |p| vec![CWD, p, 0])
            .returns(enoent)
            .setup(path),
        case("faccessat2 path", SYS_faccessat2, |p| vec![CWD, p, 0, 0])
            .returns(enoent)
            .setup(path),
        case("clock_gettime tp", SYS_clock_gettime, |p| {
            vec![CLOCK_MONOTONIC as u64, p]
        })
        .returns(0),
        case("clock_getres res", SYS_clock_getres, |p| {
            vec![CLOCK_REALTIME as u64, p]
        })
        .returns(0)
        .null_ok(),
        case("gettimeofday tv", SYS_gettimeofday, |p| vec![p, 0])
            .returns(0)
            .null_ok(),
        case("time tloc", SYS_time, |p| vec![p]).null_ok(),
        case("nanosleep req", SYS_nanosleep, |p| vec![p, 0])
            .good(AUX)
            .returns(0)
            .setup(zero_ts),
        case("clock_nanosleep req", SYS_clock_nanosleep, |p| {
            vec![CLOCK_MONOTONIC as u64, 0, p, 0]
        })
        .good(AUX)
        .returns(0)
        .setup(zero_ts),
        case("futex uaddr", SYS_futex, |p| vec![p, WAIT, 1, AUX])
            .returns(errno(EAGAIN))
            .setup(zero_ts),
        case("futex timeout", SYS_futex, |p| vec![BUF, WAIT, 0, p])
            .good(AUX)
            .returns(errno(ETIMEDOUT))
            .setup(zero_ts)
            .null_ok(),
        case("uname buf", SYS_uname, |p| vec![p]).returns(0),
        case("getrandom buf", SYS_getrandom, |p| vec![p, 16, 0]).returns(16),
        case("rt_sigaction act", SYS_rt_sigaction, |p| {
            vec![SIGUSR1 as u64, p, 0, 8]
        })
        .returns(0)
        .null_ok(),
        case("rt_sigaction oldact", SYS_rt_sigaction, |p| {
            vec![SIGUSR1 as u64, 0, p, 8]
        })
        .returns(0)
        .null_ok(),
        case("rt_sigprocmask set", SYS_rt_sigprocmask, |p| {
            vec![SIG_BLOCK as u64, p, 0, 8]
        })
        .returns(0)
        .null_ok(),
        case("rt_sigprocmask oldset", SYS_rt_sigprocmask, |p| {
            vec![SIG_BLOCK as u64, 0, p, 8]
        })
        .returns(0)
        .null_ok(),
        case("sigaltstack ss", SYS_sigaltstack, |p| vec![p, 0])
            .returns(0)
            .null_ok()
            .setup(|g, _| {
                let disabled = SigStack {
                    flags: SS_DISABLE,
                    ..Default::default()
                };
                g.put(BUF, disabled);
            }),
        case("sigaltstack old_ss", SYS_sigaltstack, |p| vec![0, p])
            .returns(0)
            .null_ok(),
        case("prlimit64 new_limit", SYS_prlimit64, |p| {
            vec![0, RLIMIT_NOFILE.into(), p, 0]
        })
        .good(AUX)
        .returns(0)
        .setup(nofile)
        .null_ok(),
        case("prlimit64 old_limit", SYS_prlimit64, |p| {
            vec![0, RLIMIT_STACK.into(), 0, p]
        })
        .returns(0)
        .null_ok(),
        case("getrlimit rlim", SYS_getrlimit, |p| {
            vec![RLIMIT_STACK.into(), p]
        })
        .returns(0),
        case("setrlimit rlim", SYS_setrlimit, |p| {
            vec![RLIMIT_NOFILE.into(), p]
        })
        .good(AUX)
        .returns(0)
        .setup(nofile),
        case("getrusage usage", SYS_getrusage, |p| {
            vec![RUSAGE_SELF as u64, p]
        })
        .returns(0),
        case("arch_prctl(ARCH_GET_FS) addr", SYS_arch_prctl, |p| {
            vec![0x1003, p]
        })
        .returns(0),
        case("sched_getaffinity mask", SYS_sched_getaffinity, |p| {
            vec![0, 8, p]
        })
        .returns(8),
        case("getcwd buf", SYS_getcwd, |p| vec![p, 64]).returns(2),
        case("poll fds", SYS_poll, |p| vec![p, 1, 0])
            .good(AUX)
            .returns(1)
            .setup(pollfd_stdout),
        case("ppoll fds", SYS_ppoll, |p| vec![p, 1, AUX + 0x100, 0, 8])
            .good(AUX)
            .returns(1)
            .setup(pollfd_stdout),
        case("ppoll tsp", SYS_ppoll, |p| vec![AUX, 1, p, 0, 8])
            .good(AUX + 0x100)
            .returns(1)
            .setup(pollfd_stdout)
            .null_ok(),
        case("ppoll sigmask", SYS_ppoll, |p| {
            vec![AUX, 1, AUX + 0x100, p, 8]
        })
        .returns(1)
        .setup(pollfd_stdout)
        .null_ok(),
    ]
}

#[test]
fn every_pointer_argument_is_efault_for_every_bad_pointer() {
    let mut failures = Vec::new();
    for case in pointer_cases() {
        let mut g = Guest::new();
        (case.setup)(&mut g, case.good);
        let r = g.ret(case.nr, &(case.args)(case.good));
        if case.good_ret.map_or(r < 0, |want| r != want) {
            failures.push(format!("{}: a good pointer returned {r}", case.what));
        }
        for (bad, p) in BAD {
            if p == 0 && case.null_ok {
                continue;
            }
            let mut g = Guest::new();
            // No NUL at the last byte of guest memory: a string there runs off the end.
            g.put_bytes(MEM - 1, b"x");
            (case.setup)(&mut g, p);
            let pending = g.os.stdin_pending();
            let r = g.ret(case.nr, &(case.args)(p));
            // Linux checks a futex's alignment before its address.
            let want = if case.what == "futex uaddr" && p % 4 != 0 {
                errno(libc::EINVAL)
            } else {
                errno(libc::EFAULT)
            };
            if r != want {
                failures.push(format!("{} at {bad} ({p:#x}) returned {r}", case.what));
            }
            if !g.stdout.bytes().is_empty() || !g.stderr.bytes().is_empty() {
                failures.push(format!("{} at {bad}: output was written", case.what));
            }
            if g.os.stdin_pending() != pending {
                failures.push(format!("{} at {bad}: input was consumed", case.what));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn optional_pointers_may_be_null_and_the_others_may_not() {
    use libc::*;
    let mut g = Guest::new();
    g.put(
        AUX,
        PollFd {
            fd: 1,
            events: 0x4,
            revents: 0,
        },
    );
    assert_eq!(g.ret(SYS_clock_getres, &[CLOCK_MONOTONIC as u64, 0]), 0);
    assert_eq!(g.ret(SYS_gettimeofday, &[0, 0]), 0);
    assert!(g.ret(SYS_time, &[0]) > 1_600_000_000);
    assert_eq!(g.ret(SYS_rt_sigaction, &[SIGUSR1 as u64, 0, 0, 8]), 0);
    assert_eq!(g.ret(SYS_rt_sigprocmask, &[SIG_BLOCK as u64, 0, 0, 8]), 0);
    assert_eq!(g.ret(SYS_sigaltstack, &[0, 0]), 0);
    assert_eq!(g.ret(SYS_prlimit64, &[0, RLIMIT_STACK as u64, 0, 0]), 0);
    assert_eq!(
        g.ret(SYS_ppoll, &[AUX, 1, 0, 0, 0]),
        1,
        "no timeout, no mask"
    );
    // getrlimit and setrlimit copy unconditionally: NULL is a bad pointer.
    assert_eq!(
        g.ret(SYS_getrlimit, &[RLIMIT_STACK as u64, 0]),
        errno(EFAULT)
    );
    assert_eq!(
        g.ret(SYS_setrlimit, &[RLIMIT_STACK as u64, 0]),
        errno(EFAULT)
    );
}

// --- Standard streams --------------------------------------------------------------

#[test]
fn read_of_empty_stdin_waits_for_input_then_returns_the_data_then_eof() {
    use libc::SYS_read;
    let mut g = Guest::new();
    assert_eq!(g.call(SYS_read, &[0, BUF, 100]), Outcome::BlockOnStdin);
    // The VMM carries the same call out again when it resumes the guest.
    assert_eq!(g.call(SYS_read, &[0, BUF, 100]), Outcome::BlockOnStdin);
    g.os.push_stdin(b"hello\n");
    assert_eq!(g.ret(SYS_read, &[0, BUF, 3]), 3);
    assert_eq!(g.bytes(BUF, 3), b"hel");
    assert_eq!(g.ret(SYS_read, &[0, BUF, 100]), 3);
    assert_eq!(g.bytes(BUF, 3), b"lo\n");
    assert_eq!(g.call(SYS_read, &[0, BUF, 100]), Outcome::BlockOnStdin);
    g.os.push_stdin(b"x");
    g.os.close_stdin();
    assert_eq!(g.ret(SYS_read, &[0, BUF, 100]), 1, "queued data before EOF");
    assert_eq!(g.ret(SYS_read, &[0, BUF, 100]), 0, "EOF");
    assert_eq!(g.ret(SYS_read, &[0, BUF, 100]), 0, "EOF stays");
}

#[test]
fn read_of_zero_bytes_returns_zero_without_waiting() {
    use libc::SYS_read;
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_read, &[0, 0, 0]), 0);
    assert_eq!(g.ret(SYS_read, &[0, BUF, 0]), 0);
    // Only an address outside the user address space fails (Linux's access_ok).
    assert_eq!(
        g.ret(SYS_read, &[0, 0xffff_8000_0000_0000, 0]),
        errno(libc::EFAULT)
    );
}

#[test]
fn read_checks_the_bytes_it_copies_and_the_whole_length_against_the_address_space() {
    use libc::{EFAULT, SYS_read};
    let mut g = Guest::new();
    g.os.push_stdin(b"abcd");
    // A buffer larger than the rest of guest memory is fine when the data fits (a pipe
    // read copies only what is there).
    assert_eq!(g.ret(SYS_read, &[0, MEM - 4, 4096]), 4);
    assert_eq!(g.bytes(MEM - 4, 4), b"abcd");
    // When the data does not fit: EFAULT, and the data stays queued.
    g.os.push_stdin(b"abcdefgh");
    assert_eq!(g.ret(SYS_read, &[0, MEM - 4, 4096]), errno(EFAULT));
    assert_eq!(g.os.stdin_pending(), 8);
    // A length that wraps around or leaves the user address space is EFAULT before
    // anything else, even with nothing queued.
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_read, &[0, BUF, u64::MAX]), errno(EFAULT));
    assert_eq!(g.ret(SYS_read, &[0, BUF, 1 << 47]), errno(EFAULT));
}

#[test]
fn read_is_for_stdin_only() {
    let mut g = Guest::new();
    g.os.push_stdin(b"x");
    for fd in [1, 2, 3, 1000] {
        assert_eq!(
            g.ret(libc::SYS_read, &[fd, BUF, 1]),
            errno(libc::EBADF),
            "fd {fd}"
        );
    }
    assert_eq!(g.os.stdin_pending(), 1);
}

#[test]
fn readv_fills_the_buffers_in_order_and_waits_like_read() {
    use libc::SYS_readv;
    let mut g = Guest::new();
    g.put(AUX, iov(BUF, 2));
    g.put(AUX + 16, iov(BUF + 100, 10));
    assert_eq!(g.call(SYS_readv, &[0, AUX, 2]), Outcome::BlockOnStdin);
    g.os.push_stdin(b"abcdef");
    assert_eq!(g.ret(SYS_readv, &[0, AUX, 2]), 6);
    assert_eq!(g.bytes(BUF, 2), b"ab");
    assert_eq!(g.bytes(BUF + 100, 4), b"cdef");
    g.os.close_stdin();
    assert_eq!(g.ret(SYS_readv, &[0, AUX, 2]), 0, "EOF");
}

#[test]
fn readv_checks_its_arguments_before_waiting() {
    use libc::{EBADF, EFAULT, EINVAL, SYS_readv};
    // Linux imports the iovecs before a pipe read waits, and a zero total length
    // returns 0 at once: none of these waits for input.
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_readv, &[0, 0, 1]), errno(EFAULT));
    assert_eq!(
        g.ret(SYS_readv, &[0, AUX, 1025]),
        errno(EINVAL),
        "UIO_MAXIOV"
    );
    assert_eq!(g.ret(SYS_readv, &[0, AUX, 0]), 0);
    g.put(AUX, iov(1, 0));
    assert_eq!(g.ret(SYS_readv, &[0, AUX, 1]), 0, "one empty buffer");
    g.put(AUX, iov(BUF, 1 << 63));
    assert_eq!(
        g.ret(SYS_readv, &[0, AUX, 1]),
        errno(EINVAL),
        "iov_len > SSIZE_MAX"
    );
    g.put(AUX, iov(BUF, 1 << 62));
    assert_eq!(
        g.ret(SYS_readv, &[0, AUX, 1]),
        errno(EFAULT),
        "past the address space"
    );
    g.put(AUX, iov(BUF, 16));
    assert_eq!(g.ret(SYS_readv, &[1, AUX, 1]), errno(EBADF));
    assert_eq!(g.call(SYS_readv, &[0, AUX, 1]), Outcome::BlockOnStdin);
}

#[test]
fn readv_keeps_what_it_read_when_a_later_buffer_is_bad() {
    // Linux returns the bytes copied before the fault; the rest stays queued.
    let mut g = Guest::new();
    g.os.push_stdin(b"abcdef");
    g.put(AUX, iov(BUF, 2));
    g.put(AUX + 16, iov(MEM, 4));
    assert_eq!(g.ret(libc::SYS_readv, &[0, AUX, 2]), 2);
    assert_eq!(g.bytes(BUF, 2), b"ab");
    assert_eq!(g.os.stdin_pending(), 4);
}

#[test]
fn write_goes_to_stdout_or_stderr_and_counts_response_lines() {
    use libc::{EBADF, SYS_write};
    let mut g = Guest::new();
    g.put_bytes(BUF, b"a\nb\nerr");
    assert_eq!(g.ret(SYS_write, &[1, BUF, 4]), 4);
    assert_eq!(g.ret(SYS_write, &[2, BUF + 4, 3]), 3);
    assert_eq!(g.stdout.bytes(), b"a\nb\n");
    assert_eq!(g.stderr.bytes(), b"err");
    let c = g.os.counters();
    assert_eq!((c.stdout_bytes, c.stdout_lines, c.stderr_bytes), (4, 2, 3));
    assert!(g.os.last_line_at().is_some());
    for fd in [0, 3, 1000] {
        assert_eq!(g.ret(SYS_write, &[fd, BUF, 1]), errno(EBADF), "fd {fd}");
    }
}

#[test]
fn write_of_zero_bytes_returns_zero_for_any_user_address() {
    use libc::SYS_write;
    // Linux: write(fd, NULL, 0) is 0; only an address outside the user address space
    // fails.
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_write, &[1, 0, 0]), 0);
    assert_eq!(g.ret(SYS_write, &[1, MEM, 0]), 0);
    assert_eq!(
        g.ret(SYS_write, &[1, 0xffff_8000_0000_0000, 0]),
        errno(libc::EFAULT)
    );
    assert!(g.stdout.bytes().is_empty());
}

#[test]
fn write_checks_the_whole_buffer_before_writing_anything() {
    use libc::{EFAULT, SYS_write};
    // Linux writes the part before the fault to a pipe and returns a short count; reap
    // checks the whole buffer first and writes nothing (guest-abi.md).
    let mut g = Guest::new();
    g.put_bytes(MEM - 4, b"tail");
    assert_eq!(g.ret(SYS_write, &[1, MEM - 4, 8]), errno(EFAULT));
    assert_eq!(g.ret(SYS_write, &[1, BUF, u64::MAX]), errno(EFAULT));
    assert_eq!(g.ret(SYS_write, &[1, BUF, MEM]), errno(EFAULT));
    assert!(g.stdout.bytes().is_empty());
    assert_eq!(g.ret(SYS_write, &[1, MEM - 4, 4]), 4);
    assert_eq!(g.stdout.bytes(), b"tail");
}

#[test]
fn writev_accepts_empty_buffers_at_any_address() {
    // Rust's `IoSlice::new(&[])` points at 0x1; Linux never looks at the base of an
    // empty iovec.
    let mut g = Guest::new();
    g.put_bytes(BUF, b"hi");
    g.put(AUX, iov(1, 0));
    g.put(AUX + 16, iov(BUF, 2));
    g.put(AUX + 32, iov(0, 0));
    assert_eq!(g.ret(libc::SYS_writev, &[1, AUX, 3]), 2);
    assert_eq!(g.stdout.bytes(), b"hi");
}

#[test]
fn writev_writes_nothing_unless_every_buffer_is_good() {
    use libc::{EBADF, EFAULT, EINVAL, SYS_writev};
    let mut g = Guest::new();
    g.put_bytes(BUF, b"hi");
    g.put(AUX, iov(BUF, 2));
    g.put(AUX + 16, iov(MEM - 1, 2));
    assert_eq!(g.ret(SYS_writev, &[1, AUX, 2]), errno(EFAULT));
    assert!(g.stdout.bytes().is_empty());
    assert_eq!(
        g.ret(SYS_writev, &[1, AUX, 1025]),
        errno(EINVAL),
        "UIO_MAXIOV"
    );
    g.put(AUX + 16, iov(BUF, 1 << 63));
    assert_eq!(
        g.ret(SYS_writev, &[1, AUX, 2]),
        errno(EINVAL),
        "iov_len > SSIZE_MAX"
    );
    assert_eq!(g.ret(SYS_writev, &[0, AUX, 1]), errno(EBADF));
    assert_eq!(g.ret(SYS_writev, &[1, AUX, 0]), 0);
    assert!(g.stdout.bytes().is_empty());
}

#[test]
fn pread_pwrite_and_lseek_on_the_streams_are_espipe() {
    use libc::*;
    // The streams are pipes. pread/pwrite check the offset first, then the descriptor,
    // and never look at the buffer.
    let mut g = Guest::new();
    for nr in [SYS_pread64, SYS_pwrite64] {
        assert_eq!(g.ret(nr, &[0, BUF, 1, 0]), errno(ESPIPE));
        assert_eq!(g.ret(nr, &[1, 0, 1, 0]), errno(ESPIPE));
        assert_eq!(g.ret(nr, &[7, BUF, 1, 0]), errno(EBADF));
        assert_eq!(
            g.ret(nr, &[7, BUF, 1, u64::MAX]),
            errno(EINVAL),
            "offset -1"
        );
    }
    assert_eq!(g.ret(SYS_lseek, &[0, 0, SEEK_SET as u64]), errno(ESPIPE));
    assert_eq!(g.ret(SYS_lseek, &[9, 0, SEEK_SET as u64]), errno(EBADF));
}

#[test]
fn fstat_shows_the_streams_as_pipes() {
    use crate::guest_os::abi::Stat;
    use libc::*;
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_fstat, &[0, BUF]), 0);
    let st: Stat = g.get(BUF);
    assert_eq!((st.mode, st.nlink, st.blksize), (S_IFIFO | 0o600, 1, 4096));
    assert_eq!(
        g.ret(SYS_fstat, &[3, 0]),
        errno(EBADF),
        "the descriptor first"
    );
    g.put_bytes(AUX, b"\0");
    let empty = AT_EMPTY_PATH as u64;
    assert_eq!(g.ret(SYS_newfstatat, &[2, AUX, BUF, empty]), 0);
    assert_eq!(g.ret(SYS_newfstatat, &[9, AUX, BUF, empty]), errno(EBADF));
    assert_eq!(g.ret(SYS_newfstatat, &[2, AUX, BUF, 0]), errno(ENOENT));
}

#[test]
fn paths_never_exist_and_4096_bytes_without_nul_are_too_long() {
    use libc::*;
    let mut g = Guest::new();
    g.put_bytes(BUF, &[b'a'; 4096]);
    assert_eq!(g.ret(SYS_open, &[BUF, 0, 0]), errno(ENAMETOOLONG));
    assert_eq!(g.ret(SYS_openat, &[CWD, BUF, 0, 0]), errno(ENAMETOOLONG));
    g.put_bytes(BUF + 4095, b"\0");
    assert_eq!(
        g.ret(SYS_open, &[BUF, 0, 0]),
        errno(ENOENT),
        "4095 bytes and NUL"
    );
    g.put_bytes(BUF, b"\0");
    assert_eq!(
        g.ret(SYS_access, &[BUF, 0]),
        errno(ENOENT),
        "the empty path"
    );
    // A path that runs into the end of guest memory is EFAULT, however short.
    g.put_bytes(MEM - 10, &[b'a'; 10]);
    assert_eq!(g.ret(SYS_stat, &[MEM - 10, AUX]), errno(EFAULT));
}

#[test]
fn poll_on_stdin_waits_for_input_like_read() {
    use libc::{POLLHUP, POLLIN, SYS_poll};
    let mut g = Guest::new();
    g.put(
        AUX,
        PollFd {
            fd: 0,
            events: POLLIN,
            revents: 0,
        },
    );
    assert_eq!(
        g.call(SYS_poll, &[AUX, 1, (-1i64).cast_unsigned()]),
        Outcome::BlockOnStdin
    );
    assert_eq!(
        g.ret(SYS_poll, &[AUX, 1, 0]),
        0,
        "a zero timeout never waits"
    );
    g.os.push_stdin(b"x");
    assert_eq!(g.ret(SYS_poll, &[AUX, 1, (-1i64).cast_unsigned()]), 1);
    assert_eq!(g.get::<PollFd>(AUX).revents, POLLIN);
    g.os.close_stdin();
    assert_eq!(g.ret(libc::SYS_read, &[0, BUF, 1]), 1);
    assert_eq!(g.ret(SYS_poll, &[AUX, 1, 0]), 1);
    assert_eq!(g.get::<PollFd>(AUX).revents, POLLIN | POLLHUP, "EOF");
}

#[test]
fn poll_marks_unknown_descriptors_and_limits_the_entries() {
    use libc::{EINVAL, POLLIN, POLLNVAL, POLLOUT, SYS_poll, SYS_ppoll};
    let mut g = Guest::new();
    g.put(
        AUX,
        PollFd {
            fd: 7,
            events: POLLIN,
            revents: 0,
        },
    );
    g.put(
        AUX + 8,
        PollFd {
            fd: -1,
            events: POLLIN,
            revents: 0x7f,
        },
    );
    g.put(
        AUX + 16,
        PollFd {
            fd: 2,
            events: POLLOUT | POLLIN,
            revents: 0,
        },
    );
    assert_eq!(g.ret(SYS_poll, &[AUX, 3, 0]), 2);
    assert_eq!(g.get::<PollFd>(AUX).revents, POLLNVAL);
    assert_eq!(
        g.get::<PollFd>(AUX + 8).revents,
        0,
        "negative fds are skipped"
    );
    assert_eq!(g.get::<PollFd>(AUX + 16).revents, POLLOUT);
    assert_eq!(g.ret(SYS_poll, &[AUX, 1025, 0]), errno(EINVAL));
    assert_eq!(g.ret(SYS_poll, &[0, 0, 0]), 0, "no descriptors: a sleep");
    // ppoll: an invalid timeout or signal set size is EINVAL.
    g.put(BUF, ts(0, 1_000_000_000));
    assert_eq!(g.ret(SYS_ppoll, &[AUX, 1, BUF, 0, 8]), errno(EINVAL));
    g.put(BUF, ts(0, 0));
    assert_eq!(
        g.ret(SYS_ppoll, &[AUX, 1, BUF, AUX + 0x100, 4]),
        errno(EINVAL)
    );
    assert_eq!(g.ret(SYS_ppoll, &[AUX, 1, BUF, AUX + 0x100, 8]), 1);
}

// --- Memory ------------------------------------------------------------------------

const ANON: u64 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
const FIXED: u64 = ANON | libc::MAP_FIXED as u64;
const NOREPLACE: u64 = ANON | libc::MAP_FIXED_NOREPLACE as u64;
const RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
const PAGE: u64 = PAGE_SIZE;

impl Guest {
    fn mmap(&mut self, addr: u64, len: u64, flags: u64) -> i64 {
        self.ret(libc::SYS_mmap, &[addr, len, RW, flags, u64::MAX, 0])
    }

    fn brk(&mut self, addr: u64) -> u64 {
        self.ret(libc::SYS_brk, &[addr]).cast_unsigned()
    }
}

fn addr(ret: i64) -> u64 {
    u64::try_from(ret).unwrap_or_else(|_| panic!("error {ret}"))
}

#[test]
fn brk_moves_the_break_within_its_limits() {
    let mut g = Guest::new();
    assert_eq!(g.brk(0), PROGRAM_END, "query");
    assert_eq!(g.brk(PROGRAM_END + 10_000), PROGRAM_END + 10_000);
    g.put_bytes(PROGRAM_END + 9_000, b"heap");
    // Below the start of the heap: refused, the break stays (Linux returns the current
    // break).
    assert_eq!(g.brk(PROGRAM_END - 1), PROGRAM_END + 10_000);
    assert_eq!(g.brk(1), PROGRAM_END + 10_000);
    // Past the limit: into the stack, past the end of guest memory, overflowing.
    for past in [MMAP_TOP + 1, MEM, u64::MAX - 1, u64::MAX] {
        assert_eq!(g.brk(past), PROGRAM_END + 10_000, "{past:#x}");
    }
    assert_eq!(g.brk(MMAP_TOP), MMAP_TOP, "up to the stack");
    // Shrinking releases the pages: grown again, they read as zero.
    assert_eq!(g.brk(PROGRAM_END), PROGRAM_END);
    assert_eq!(g.brk(PROGRAM_END + 10_000), PROGRAM_END + 10_000);
    assert_eq!(g.bytes(PROGRAM_END + 9_000, 4), [0; 4]);
}

#[test]
fn brk_cannot_grow_into_a_mapping() {
    let mut g = Guest::new();
    let hint = PROGRAM_END + 0x10_0000;
    assert_eq!(addr(g.mmap(hint, PAGE, ANON)), hint, "a free hint is taken");
    assert_eq!(g.brk(hint + 1), PROGRAM_END);
    assert_eq!(g.brk(hint + 2 * PAGE), PROGRAM_END, "over it");
    assert_eq!(
        g.brk(hint - PAGE),
        hint - PAGE,
        "up to a page below is fine"
    );
}

#[test]
fn mmap_hands_out_zeroed_pages_top_down() {
    let mut g = Guest::new();
    let a = addr(g.mmap(0, 5000, ANON));
    assert_eq!(a, MMAP_TOP - 2 * PAGE, "5000 bytes take two pages");
    let b = addr(g.mmap(0, 1, ANON));
    assert_eq!(b, a - PAGE);
    let c = addr(g.mmap(BUF + 1, PAGE, ANON));
    assert_eq!(c, b - PAGE, "an unaligned or used hint is ignored");
    g.put_bytes(a, b"used");
    assert_eq!(g.ret(libc::SYS_munmap, &[a, 2 * PAGE]), 0);
    assert_eq!(
        addr(g.mmap(0, 2 * PAGE, ANON)),
        a,
        "the freed range is reused"
    );
    assert_eq!(g.bytes(a, 4), [0; 4], "and reads as zero");
}

#[test]
fn mmap_refuses_what_linux_refuses() {
    use libc::*;
    let mut g = Guest::new();
    assert_eq!(g.mmap(0, 0, ANON), errno(EINVAL), "length 0");
    assert_eq!(g.mmap(0, u64::MAX, ANON), errno(ENOMEM), "length overflows");
    assert_eq!(g.mmap(0, MEM, ANON), errno(ENOMEM), "larger than memory");
    assert_eq!(
        g.mmap(0, PAGE, MAP_ANONYMOUS as u64),
        errno(EINVAL),
        "neither private nor shared"
    );
    let private = MAP_PRIVATE as u64;
    assert_eq!(
        g.ret(SYS_mmap, &[0, PAGE, RW, private, 0, 0]),
        errno(ENODEV),
        "a pipe"
    );
    assert_eq!(g.ret(SYS_mmap, &[0, PAGE, RW, private, 5, 0]), errno(EBADF));
    assert_eq!(
        g.mmap(PROGRAM_END + 1, PAGE, FIXED),
        errno(EINVAL),
        "unaligned"
    );
    assert_eq!(g.mmap(PROGRAM_END + 1, PAGE, NOREPLACE), errno(EINVAL));
    // Linux would map there; the system area is not the program's. Past the end is
    // ENOMEM as past TASK_SIZE on Linux.
    assert_eq!(g.mmap(GDT_ADDR, PAGE, FIXED), errno(ENOMEM), "system area");
    assert_eq!(
        g.mmap(MEM - PAGE, 2 * PAGE, FIXED),
        errno(ENOMEM),
        "past the end"
    );
    assert_eq!(
        g.mmap(u64::MAX - PAGE + 1, PAGE, FIXED),
        errno(ENOMEM),
        "wraps"
    );
}

#[test]
fn map_fixed_replaces_what_was_there_with_zeroes() {
    let mut g = Guest::new();
    g.put_bytes(BUF, b"program data");
    assert_eq!(addr(g.mmap(BUF, PAGE, FIXED)), BUF);
    assert_eq!(g.bytes(BUF, 4), [0; 4]);
    // Over the stack, too (Linux lets MAP_FIXED replace anything).
    g.put_bytes(MEM - 8, b"stack!!!");
    assert_eq!(addr(g.mmap(MEM - PAGE, PAGE, FIXED)), MEM - PAGE);
    assert_eq!(g.bytes(MEM - 8, 8), [0; 8]);
}

#[test]
fn map_fixed_noreplace_refuses_program_heap_stack_and_mappings() {
    use libc::EEXIST;
    let mut g = Guest::new();
    g.brk(PROGRAM_END + PAGE);
    let m = addr(g.mmap(0, 2 * PAGE, ANON));
    for (what, at, len) in [
        ("the program", BUF, PAGE),
        ("the heap", PROGRAM_END, PAGE),
        ("the stack", MEM - PAGE, PAGE),
        ("a mapping", m, PAGE),
        ("the end of a mapping", m + PAGE, 2 * PAGE),
        ("the start of a mapping", m - PAGE, 2 * PAGE),
    ] {
        assert_eq!(g.mmap(at, len, NOREPLACE), errno(EEXIST), "{what}");
    }
    let free = PROGRAM_END + 0x10_0000;
    g.put_bytes(free, b"junk");
    assert_eq!(addr(g.mmap(free, PAGE, NOREPLACE)), free, "free memory");
    assert_eq!(g.bytes(free, 4), [0; 4]);
}

#[test]
fn exhausting_guest_memory_is_enomem() {
    use libc::{ENOMEM, SYS_mremap};
    let mut g = Guest::new();
    let mib = 1 << 20;
    let mut maps = Vec::new();
    loop {
        match g.mmap(0, mib, ANON) {
            r if r >= 0 => maps.push(addr(r)),
            r => {
                assert_eq!(r, errno(ENOMEM));
                break;
            }
        }
    }
    // Everything between the heap and the stack, each MiB once.
    assert_eq!(maps.len() as u64, (MMAP_TOP - PROGRAM_END) / mib);
    maps.sort_unstable();
    assert_eq!(maps[0], PROGRAM_END);
    assert!(maps.windows(2).all(|w| w[1] == w[0] + mib));
    assert_eq!(g.mmap(0, PAGE, ANON), errno(ENOMEM));
    assert_eq!(g.brk(PROGRAM_END + PAGE), PROGRAM_END, "brk is refused");
    let last = maps[maps.len() - 1];
    assert_eq!(
        g.ret(SYS_mremap, &[last, mib, 2 * mib, 1, 0]),
        errno(ENOMEM)
    );
    // Freeing a page makes room for a page.
    assert_eq!(g.ret(libc::SYS_munmap, &[last, PAGE]), 0);
    assert_eq!(addr(g.mmap(0, PAGE, ANON)), last);
}

#[test]
fn munmap_refuses_bad_ranges_and_ignores_unmapped_ones() {
    use libc::{EINVAL, SYS_munmap};
    let mut g = Guest::new();
    let m = addr(g.mmap(0, 3 * PAGE, ANON));
    assert_eq!(
        g.ret(SYS_munmap, &[m + 1, PAGE]),
        errno(EINVAL),
        "unaligned"
    );
    assert_eq!(g.ret(SYS_munmap, &[m, 0]), errno(EINVAL), "length 0");
    assert_eq!(
        g.ret(SYS_munmap, &[m, u64::MAX]),
        errno(EINVAL),
        "length overflows"
    );
    assert_eq!(
        g.ret(SYS_munmap, &[PROGRAM_END + 0x10_0000, PAGE]),
        0,
        "not mapped"
    );
    // A hole in the middle of a mapping.
    g.put_bytes(m + PAGE, b"mid");
    assert_eq!(g.ret(SYS_munmap, &[m + PAGE, 1]), 0, "rounded up to a page");
    assert_eq!(
        addr(g.mmap(m + PAGE, PAGE, NOREPLACE)),
        m + PAGE,
        "now free"
    );
    assert_eq!(g.bytes(m + PAGE, 3), [0; 3]);
}

#[test]
fn mremap_grows_in_place_moves_with_the_data_and_shrinks() {
    use libc::{ENOMEM, SYS_mremap};
    const MAYMOVE: u64 = 1;
    let mut g = Guest::new();
    let a = addr(g.mmap(0, 2 * PAGE, ANON));
    g.put_bytes(a, b"first");
    g.put_bytes(a + PAGE, b"second");
    // Nothing is free above `a` (the stack is): growing needs a move.
    assert_eq!(
        g.ret(SYS_mremap, &[a, 2 * PAGE, 4 * PAGE, 0]),
        errno(ENOMEM)
    );
    let n = addr(g.ret(SYS_mremap, &[a, 2 * PAGE, 4 * PAGE, MAYMOVE]));
    assert_ne!(n, a);
    assert_eq!(g.bytes(n, 5), b"first");
    assert_eq!(g.bytes(n + PAGE, 6), b"second");
    assert_eq!(g.bytes(a, 5), [0; 5], "the old range is released");
    // Shrinking stays in place; growing back into the released tail, too.
    assert_eq!(addr(g.ret(SYS_mremap, &[n, 4 * PAGE, PAGE, 0])), n);
    assert_eq!(addr(g.ret(SYS_mremap, &[n, PAGE, 2 * PAGE, 0])), n);
    assert_eq!(g.bytes(n, 5), b"first");
    assert_eq!(g.bytes(n + PAGE, 6), [0; 6], "the regrown page is new");
}

#[test]
fn mremap_fixed_moves_the_data_to_the_new_address() {
    const MAYMOVE_FIXED: u64 = 3;
    let mut g = Guest::new();
    let a = addr(g.mmap(0, 2 * PAGE, ANON));
    g.put_bytes(a, b"first");
    g.put_bytes(a + PAGE, b"second");
    let to = PROGRAM_END + 0x10_0000;
    g.put_bytes(to + 2 * PAGE, b"junk");
    let r = g.ret(
        libc::SYS_mremap,
        &[a, 2 * PAGE, 3 * PAGE, MAYMOVE_FIXED, to],
    );
    assert_eq!(addr(r), to);
    assert_eq!(g.bytes(to, 5), b"first");
    assert_eq!(g.bytes(to + PAGE, 6), b"second");
    assert_eq!(g.bytes(to + 2 * PAGE, 4), [0; 4], "what was there is gone");
    assert_eq!(g.bytes(a, 5), [0; 5], "the old range is released");
}

#[test]
fn mremap_refuses_what_linux_refuses() {
    use libc::{EFAULT, EINVAL, SYS_mremap};
    let mut g = Guest::new();
    let a = addr(g.mmap(0, 2 * PAGE, ANON));
    let to = PROGRAM_END + 0x10_0000;
    for (what, args, want) in [
        ("unknown flag", [a, PAGE, PAGE, 8, 0], EINVAL),
        ("FIXED without MAYMOVE", [a, PAGE, PAGE, 2, to], EINVAL),
        ("unaligned address", [a + 1, PAGE, PAGE, 1, 0], EINVAL),
        ("new length 0", [a, PAGE, 0, 1, 0], EINVAL),
        ("old length 0", [a, 0, PAGE, 1, 0], EINVAL),
        ("not mapped", [to, PAGE, 2 * PAGE, 1, 0], EFAULT),
        ("beyond the mapping", [a, 3 * PAGE, 4 * PAGE, 1, 0], EFAULT),
        (
            "FIXED onto itself",
            [a, 2 * PAGE, 2 * PAGE, 3, a + PAGE],
            EINVAL,
        ),
        ("FIXED unaligned", [a, PAGE, PAGE, 3, to + 1], EINVAL),
    ] {
        assert_eq!(g.ret(SYS_mremap, &args), errno(want), "{what}");
    }
}

/// The page-table entry that maps `addr` in `g`'s guest memory: the 2 MiB page's, or
/// the 4 KiB page's when its range has a table.
fn entry(g: &Guest, addr: u64) -> u64 {
    let pde: u64 = g.get(crate::arch::pde_addr(addr));
    if pde & 1 == 0 || pde & (1 << 7) != 0 {
        return pde;
    }
    g.get(crate::arch::pte_addr(pde & !0xfff, addr))
}

/// (present, writable) of the page at `addr`.
fn mapped(g: &Guest, addr: u64) -> (bool, bool) {
    let e = entry(g, addr);
    (e & 1 != 0, e & 2 != 0)
}

#[test]
fn mmap_mprotect_munmap_and_mremap_keep_the_page_tables_in_sync() {
    use libc::{PROT_NONE, PROT_READ, SYS_mprotect, SYS_mremap, SYS_munmap};
    let mut g = Guest::new();
    g.os.take_lowered();
    let m = addr(g.mmap(0, 3 * PAGE, ANON));
    assert_eq!(g.ret(SYS_mprotect, &[m + PAGE, PAGE, PROT_READ as u64]), 0);
    assert_eq!(mapped(&g, m), (true, true));
    assert_eq!(mapped(&g, m + PAGE), (true, false), "read-only");
    assert_eq!(mapped(&g, m + 2 * PAGE), (true, true));
    assert_eq!(g.os.take_lowered(), vec![(m + PAGE, m + 2 * PAGE)]);
    assert_eq!(g.ret(SYS_mprotect, &[m, PAGE, PROT_NONE as u64]), 0);
    assert_eq!(mapped(&g, m), (false, false), "PROT_NONE");
    assert_eq!(g.ret(SYS_mprotect, &[m, 2 * PAGE, RW]), 0);
    assert_eq!(mapped(&g, m), (true, true));
    assert_eq!(mapped(&g, m + PAGE), (true, true));
    assert!(
        g.os.take_lowered().len() == 1,
        "only the PROT_NONE took a permission"
    );
    // A PROT_NONE mapping is not present; munmap makes it read-write again.
    let n = addr(g.ret(
        libc::SYS_mmap,
        &[0, PAGE, PROT_NONE as u64, ANON, u64::MAX, 0],
    ));
    assert_eq!(mapped(&g, n), (false, false));
    assert_eq!(g.ret(SYS_munmap, &[n, PAGE]), 0);
    assert_eq!(mapped(&g, n), (true, true));
    // mremap moves the protection with the pages and leaves the old range read-write.
    assert_eq!(g.ret(SYS_mprotect, &[m, 3 * PAGE, PROT_READ as u64]), 0);
    let to = addr(g.ret(SYS_mremap, &[m, 3 * PAGE, 64 * PAGE, 1, 0]));
    assert_ne!(to, m);
    assert_eq!(mapped(&g, to), (true, false));
    assert_eq!(mapped(&g, to + 63 * PAGE), (true, false));
    assert_eq!(mapped(&g, m), (true, true));
}

#[test]
fn the_stack_guard_gap_cannot_be_mapped_or_unprotected() {
    use libc::{ENOMEM, SYS_mprotect};
    let mut g = Guest::new();
    let gap = MMAP_TOP;
    assert_eq!(g.mmap(gap, PAGE, FIXED), errno(ENOMEM));
    assert_eq!(g.ret(SYS_mprotect, &[gap, PAGE, RW]), errno(ENOMEM));
    assert_eq!(
        g.ret(SYS_mprotect, &[gap - PAGE, 2 * PAGE, RW]),
        errno(ENOMEM),
        "overlapping"
    );
    assert_eq!(g.brk(gap + PAGE), PROGRAM_END, "the heap stops below it");
    assert!(addr(g.mmap(0, PAGE, ANON)) + PAGE <= gap);
}

#[test]
fn mprotect_is_checked_as_linux_does() {
    use libc::{EINVAL, ENOMEM, PROT_GROWSDOWN, PROT_GROWSUP, PROT_NONE, SYS_mprotect};
    let mut g = Guest::new();
    let m = addr(g.mmap(0, PAGE, ANON));
    assert_eq!(g.ret(SYS_mprotect, &[m, PAGE, PROT_NONE as u64]), 0);
    assert_eq!(
        g.ret(SYS_mprotect, &[m + 1, PAGE, 0]),
        errno(EINVAL),
        "unaligned"
    );
    assert_eq!(g.ret(SYS_mprotect, &[m, 0, 0x100]), 0, "length 0 first");
    assert_eq!(
        g.ret(SYS_mprotect, &[m, PAGE, 0x100]),
        errno(EINVAL),
        "unknown bit"
    );
    let both = (PROT_GROWSDOWN | PROT_GROWSUP) as u64;
    assert_eq!(g.ret(SYS_mprotect, &[m, PAGE, both]), errno(EINVAL));
    assert_eq!(
        g.ret(SYS_mprotect, &[m, u64::MAX, 0]),
        errno(ENOMEM),
        "overflows"
    );
    assert_eq!(g.ret(SYS_mprotect, &[0, PAGE, 0]), errno(ENOMEM), "page 0");
    assert_eq!(
        g.ret(SYS_mprotect, &[MEM - PAGE, 2 * PAGE, 0]),
        errno(ENOMEM)
    );
}

// --- Time ---------------------------------------------------------------------------

#[test]
fn clock_gettime_reads_the_host_clock_and_refuses_unknown_clocks() {
    use libc::*;
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_clock_gettime, &[CLOCK_MONOTONIC as u64, BUF]), 0);
    let t: Timespec = g.get(BUF);
    assert!(t.sec >= 0 && (0..1_000_000_000).contains(&t.nsec));
    // x86-64 Linux does not require alignment.
    assert_eq!(
        g.ret(SYS_clock_gettime, &[CLOCK_REALTIME as u64, BUF + 1]),
        0
    );
    // The clock is checked before the pointer.
    for clock in [100, (-1i64).cast_unsigned()] {
        assert_eq!(g.ret(SYS_clock_gettime, &[clock, 0]), errno(EINVAL));
        assert_eq!(g.ret(SYS_clock_getres, &[clock, BUF]), errno(EINVAL));
    }
    assert_eq!(g.ret(SYS_clock_getres, &[CLOCK_MONOTONIC as u64, BUF]), 0);
    assert_eq!(g.get::<Timespec>(BUF).nsec, 1);
    assert_eq!(g.ret(SYS_gettimeofday, &[BUF, 0]), 0);
    let now = g.ret(SYS_time, &[BUF]);
    assert_eq!(g.get::<i64>(BUF), now);
}

#[test]
fn the_monotonic_clocks_add_the_vdso_pages_offset_and_realtime_does_not() {
    use libc::*;
    let mut g = Guest::new();
    let hour = 3_600_000_000_000u64;
    // A restore on a host whose monotonic clock is ten hours behind the snapshot's.
    let sample = |monotonic_ns| crate::vdso::ClockSample {
        guest_tsc: 0,
        tsc_khz: Some(1_000_000),
        realtime_ns: 0,
        monotonic_ns,
    };
    crate::vdso::sync(&g.mem, &sample(1), crate::vdso::Resync::Running).unwrap();
    crate::vdso::sync(&g.mem, &sample(1), crate::vdso::Resync::Running).unwrap();
    let mut v: crate::vdso::Vvar = g.get(crate::arch::layout::VVAR_ADDR);
    v.monotonic_ns = 10 * hour;
    g.put(crate::arch::layout::VVAR_ADDR, v);
    crate::vdso::sync(&g.mem, &sample(0), crate::vdso::Resync::Restored).unwrap();
    let host = super::sys_time::host_clock(CLOCK_MONOTONIC).unwrap();
    for clock in [CLOCK_MONOTONIC, CLOCK_MONOTONIC_COARSE, CLOCK_BOOTTIME] {
        assert_eq!(
            g.ret(SYS_clock_gettime, &[u64::from(clock.cast_unsigned()), BUF]),
            0
        );
        let t: Timespec = g.get(BUF);
        let ahead = t.sec - host.sec;
        assert!(
            (36_000 - 2..=36_000 + 2).contains(&ahead),
            "{clock}: {t:?} vs {host:?}"
        );
    }
    assert_eq!(g.ret(SYS_clock_gettime, &[CLOCK_REALTIME as u64, BUF]), 0);
    let real: Timespec = g.get(BUF);
    let host_real = super::sys_time::host_clock(CLOCK_REALTIME).unwrap();
    assert!(
        (real.sec - host_real.sec).abs() <= 1,
        "{real:?} vs {host_real:?}"
    );
}

#[test]
fn sleeps_refuse_invalid_times() {
    use libc::*;
    let mut g = Guest::new();
    for bad in [ts(-1, 0), ts(0, -1), ts(0, 1_000_000_000)] {
        g.put(BUF, bad);
        assert_eq!(g.ret(SYS_nanosleep, &[BUF, 0]), errno(EINVAL), "{bad:?}");
        let mono = CLOCK_MONOTONIC as u64;
        assert_eq!(
            g.ret(SYS_clock_nanosleep, &[mono, 0, BUF, 0]),
            errno(EINVAL)
        );
    }
    g.put(BUF, ts(0, 1000));
    assert_eq!(g.ret(SYS_clock_nanosleep, &[100, 0, BUF, 0]), errno(EINVAL));
    // A sleep blocks the calling thread until its deadline.
    assert_eq!(g.call(SYS_nanosleep, &[BUF, 0]), Outcome::Switch);
    assert!(matches!(
        g.os.threads.current().state,
        RunState::Blocked(Wait {
            on: WaitOn::Sleep,
            deadline: Some(_),
            ..
        })
    ));
    g.os.threads.wake_expired(u64::MAX);
    assert_eq!(
        g.os.threads.pick_next(),
        Some((MAIN_TID, Resume::Return(0)))
    );
    g.os.threads.set_current(MAIN_TID);
    // An absolute time in the past returns at once.
    let abs = TIMER_ABSTIME as u64;
    assert_eq!(
        g.ret(SYS_clock_nanosleep, &[CLOCK_MONOTONIC as u64, abs, BUF, 0]),
        0
    );
}

// --- Futexes ------------------------------------------------------------------------

const WAIT: u64 = (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64;
const WAIT_BITSET: u64 = (libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG) as u64;
const WAKE: u64 = (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64;

#[test]
fn futex_wait_checks_in_linux_order() {
    use libc::*;
    let mut g = Guest::new();
    g.put(BUF, 5u32);
    assert_eq!(
        g.ret(SYS_futex, &[BUF, WAIT, 4, 0]),
        errno(EAGAIN),
        "value differs"
    );
    // The timeout is read and checked before anything else.
    assert_eq!(g.ret(SYS_futex, &[BUF, WAIT, 4, 0x10]), errno(EFAULT));
    g.put(AUX, ts(-1, 0));
    assert_eq!(g.ret(SYS_futex, &[BUF, WAIT, 4, AUX]), errno(EINVAL));
    g.put(AUX, ts(0, 0));
    // Then the operation, the bitset, the alignment.
    let realtime = FUTEX_CLOCK_REALTIME as u64;
    assert_eq!(
        g.ret(SYS_futex, &[BUF, WAIT | realtime, 5, AUX]),
        errno(ENOSYS)
    );
    assert_eq!(g.ret(SYS_futex, &[BUF, 99, 5, AUX]), errno(ENOSYS));
    let none = [BUF, WAIT_BITSET, 5, AUX, 0, 0];
    assert_eq!(g.ret(SYS_futex, &none), errno(EINVAL), "empty bitset");
    assert_eq!(
        g.ret(SYS_futex, &[BUF + 2, WAIT, 5, AUX]),
        errno(EINVAL),
        "unaligned"
    );
    assert_eq!(
        g.ret(SYS_futex, &[BUF + 2, WAIT, 4, AUX]),
        errno(EINVAL),
        "before the value"
    );
}

#[test]
fn futex_wait_for_the_current_value_blocks_the_thread() {
    use libc::*;
    let mut g = Guest::new();
    g.put(BUF, 5u32);
    g.put(AUX, ts(0, 1000));
    // FUTEX_WAIT_BITSET takes an absolute time: this one has passed.
    let any = u64::from(u32::MAX);
    let realtime = FUTEX_CLOCK_REALTIME as u64;
    assert_eq!(
        g.ret(SYS_futex, &[BUF, WAIT_BITSET, 5, AUX, 0, any]),
        errno(ETIMEDOUT)
    );
    let args = [BUF, WAIT_BITSET | realtime, 5, AUX, 0, any];
    assert_eq!(g.ret(SYS_futex, &args), errno(ETIMEDOUT));
    // A relative timeout: the thread blocks until then.
    g.put(AUX, ts(10, 0));
    assert_eq!(g.call(SYS_futex, &[BUF, WAIT, 5, AUX]), Outcome::Switch);
    let RunState::Blocked(wait) = g.os.threads.current().state else {
        panic!("not blocked");
    };
    assert_eq!(
        wait.on,
        WaitOn::Futex {
            addr: BUF,
            bitset: u32::MAX
        }
    );
    let left = wait.deadline.unwrap() - monotonic_ns();
    assert!((9_000_000_000..=10_000_000_000).contains(&left), "{left}");
    g.os.threads.wake_expired(u64::MAX);
    assert_eq!(
        g.os.threads.pick_next(),
        Some((MAIN_TID, Resume::Return(errno(ETIMEDOUT))))
    );
    // Without a timeout it waits until woken (the VMM reports a deadlock when no
    // thread is left to wake it).
    g.os.threads.set_current(MAIN_TID);
    assert_eq!(g.call(SYS_futex, &[BUF, WAIT, 5, 0]), Outcome::Switch);
    assert_eq!(g.os.threads.earliest_deadline(), None);
}

/// A guest with a second thread, created by `clone` as glibc's `pthread_create` does
/// it; returns its id. The main thread stays current.
fn with_thread(g: &mut Guest) -> u32 {
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as u64;
    let tid = g.ret(
        libc::SYS_clone,
        &[flags, AUX + 0x1000, BUF + 0x100, BUF + 0x100, AUX],
    );
    u32::try_from(tid).unwrap()
}

/// Makes `tid` the thread on the vCPU (what the VMM's scheduler does).
fn run_thread(g: &mut Guest, tid: u32) {
    g.os.threads.set_current(tid);
}

#[test]
fn futex_wake_makes_a_waiter_runnable_with_0() {
    use libc::*;
    let mut g = Guest::new();
    let t = with_thread(&mut g);
    g.put(BUF, 7u32);
    run_thread(&mut g, t);
    assert_eq!(g.call(SYS_futex, &[BUF, WAIT, 7, 0]), Outcome::Switch);
    run_thread(&mut g, MAIN_TID);
    // Queued as a new thread first: take it off the run queue.
    while g.os.threads.pick_next().is_some() {}
    assert_eq!(g.ret(SYS_futex, &[BUF + 4, WAKE, 1]), 0, "another address");
    assert_eq!(g.ret(SYS_futex, &[BUF, WAKE, 10]), 1);
    assert_eq!(g.os.threads.pick_next(), Some((t, Resume::Return(0))));
    assert_eq!(g.ret(SYS_futex, &[BUF, WAKE, 10]), 0, "woken once");
}

#[test]
fn futex_requeue_and_cmp_requeue_move_waiters() {
    use libc::*;
    let mut g = Guest::new();
    let a = with_thread(&mut g);
    let b = with_thread(&mut g);
    g.put(BUF, 1u32);
    for t in [a, b] {
        run_thread(&mut g, t);
        assert_eq!(g.call(SYS_futex, &[BUF, WAIT, 1, 0]), Outcome::Switch);
    }
    run_thread(&mut g, MAIN_TID);
    while g.os.threads.pick_next().is_some() {}
    let cmp_requeue = (FUTEX_CMP_REQUEUE | FUTEX_PRIVATE_FLAG) as u64;
    assert_eq!(
        g.ret(SYS_futex, &[BUF, cmp_requeue, 0, 1, BUF + 8, 2]),
        errno(EAGAIN),
        "the word is not val3"
    );
    assert_eq!(
        g.ret(SYS_futex, &[BUF, cmp_requeue, 0, 1, BUF, 1]),
        errno(EINVAL),
        "the same address"
    );
    // Wake none, move one.
    assert_eq!(g.ret(SYS_futex, &[BUF, cmp_requeue, 0, 1, BUF + 8, 1]), 1);
    assert_eq!(g.ret(SYS_futex, &[BUF + 8, WAKE, 10]), 1);
    assert_eq!(g.os.threads.pick_next(), Some((a, Resume::Return(0))));
    let requeue = (FUTEX_REQUEUE | FUTEX_PRIVATE_FLAG) as u64;
    assert_eq!(g.ret(SYS_futex, &[BUF, requeue, 1, 0, BUF + 8]), 1);
    assert_eq!(g.os.threads.pick_next(), Some((b, Resume::Return(0))));
}

#[test]
fn futex_wake_op_changes_the_second_word_and_wakes_by_its_old_value() {
    use libc::*;
    let mut g = Guest::new();
    let a = with_thread(&mut g);
    let b = with_thread(&mut g);
    g.put(BUF, 0u32);
    g.put(BUF + 8, 0u32);
    run_thread(&mut g, a);
    assert_eq!(g.call(SYS_futex, &[BUF, WAIT, 0, 0]), Outcome::Switch);
    run_thread(&mut g, b);
    assert_eq!(g.call(SYS_futex, &[BUF + 8, WAIT, 0, 0]), Outcome::Switch);
    run_thread(&mut g, MAIN_TID);
    while g.os.threads.pick_next().is_some() {}
    // glibc's FUTEX_OP_CLEAR_WAKE_IF_GT_ONE: *uaddr2 = 0 (op SET 0, oparg 0); wake
    // uaddr2's waiters if the old value was > 1 (cmp GT 4, cmparg 1).
    let wake_op = (FUTEX_WAKE_OP | FUTEX_PRIVATE_FLAG) as u64;
    let clear_if_gt_one = (4 << 24) | 1;
    g.put(BUF + 8, 2u32);
    assert_eq!(
        g.ret(SYS_futex, &[BUF, wake_op, 1, 1, BUF + 8, clear_if_gt_one]),
        2
    );
    assert_eq!(g.get::<u32>(BUF + 8), 0);
    assert_eq!(g.os.threads.pick_next(), Some((a, Resume::Return(0))));
    assert_eq!(g.os.threads.pick_next(), Some((b, Resume::Return(0))));
    // ADD with the shift flag: *uaddr2 += 1 << 3; the comparison fails: nobody else.
    let add_shifted = (1 << 31) | (1 << 28) | (1 << 24) | (3 << 12);
    assert_eq!(
        g.ret(SYS_futex, &[BUF, wake_op, 1, 1, BUF + 8, add_shifted]),
        0
    );
    assert_eq!(g.get::<u32>(BUF + 8), 8);
    assert_eq!(
        g.ret(SYS_futex, &[BUF, wake_op, 1, 1, BUF + 8, 7 << 28]),
        errno(ENOSYS),
        "unknown operation"
    );
}

#[test]
fn futex_wake_wakes_no_one() {
    use libc::*;
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_futex, &[BUF, WAKE, 1]), 0);
    let wake_bitset = (FUTEX_WAKE_BITSET | FUTEX_PRIVATE_FLAG) as u64;
    assert_eq!(g.ret(SYS_futex, &[BUF, wake_bitset, 1, 0, 0, 1]), 0);
    assert_eq!(
        g.ret(SYS_futex, &[BUF, wake_bitset, 1, 0, 0, 0]),
        errno(EINVAL)
    );
    assert_eq!(
        g.ret(SYS_futex, &[BUF + 1, WAKE, 1]),
        errno(EINVAL),
        "unaligned"
    );
    // A private futex needs only an address in the user address space; a shared one
    // needs memory behind it.
    assert_eq!(g.ret(SYS_futex, &[0, WAKE, 1]), 0);
    assert_eq!(g.ret(SYS_futex, &[0, FUTEX_WAKE as u64, 1]), errno(EFAULT));
    assert_eq!(g.ret(SYS_futex, &[1 << 47, WAKE, 1]), errno(EFAULT));
    let realtime = FUTEX_CLOCK_REALTIME as u64;
    assert_eq!(g.ret(SYS_futex, &[BUF, WAKE | realtime, 1]), errno(ENOSYS));
}

// --- Process, signals, limits -------------------------------------------------------

#[test]
fn uname_describes_linux_on_x86_64() {
    let mut g = Guest::new();
    assert_eq!(g.ret(libc::SYS_uname, &[BUF]), 0);
    let u: Utsname = g.get(BUF);
    assert_eq!(&u.fields[0][..6], b"Linux\0");
    assert_eq!(&u.fields[4][..7], b"x86_64\0");
}

#[test]
fn getrandom_fills_at_most_1_mib_and_checks_its_flags() {
    use libc::{EINVAL, SYS_getrandom};
    let mut g = Guest::new();
    // Nothing to copy: no pointer is looked at (the `getrandom` crate probes with a
    // dangling one).
    assert_eq!(g.ret(SYS_getrandom, &[1, 0, 1]), 0);
    assert_eq!(g.ret(SYS_getrandom, &[0, 0, 0]), 0);
    assert_eq!(
        g.ret(SYS_getrandom, &[BUF, 16, 8]),
        errno(EINVAL),
        "unknown flag"
    );
    assert_eq!(
        g.ret(SYS_getrandom, &[BUF, 16, 6]),
        errno(EINVAL),
        "RANDOM | INSECURE"
    );
    assert_eq!(g.ret(SYS_getrandom, &[BUF, 64, 1]), 64);
    assert_ne!(g.bytes(BUF, 64), [0; 64]);
    // Linux may return fewer bytes than asked for; reap returns at most 1 MiB.
    assert_eq!(g.ret(SYS_getrandom, &[BUF, 2 << 20, 0]), 1 << 20);
}

#[test]
fn rt_sigaction_checks_like_linux_and_reports_the_default_action() {
    use libc::*;
    let mut g = Guest::new();
    let handler = KernelSigaction {
        handler: 0x40_1000,
        ..Default::default()
    };
    g.put(BUF, handler);
    g.put(
        AUX,
        KernelSigaction {
            handler: 7,
            ..Default::default()
        },
    );
    let usr1 = SIGUSR1 as u64;
    assert_eq!(g.ret(SYS_rt_sigaction, &[usr1, BUF, AUX, 8]), 0);
    assert_eq!(g.get::<KernelSigaction>(AUX).handler, 0, "SIG_DFL");
    assert_eq!(
        g.ret(SYS_rt_sigaction, &[usr1, 0, 0, 4]),
        errno(EINVAL),
        "sigsetsize"
    );
    for sig in [0, 65] {
        assert_eq!(
            g.ret(SYS_rt_sigaction, &[sig, BUF, 0, 8]),
            errno(EINVAL),
            "{sig}"
        );
    }
    let kill = SIGKILL as u64;
    assert_eq!(g.ret(SYS_rt_sigaction, &[kill, BUF, 0, 8]), errno(EINVAL));
    assert_eq!(
        g.ret(SYS_rt_sigaction, &[kill, 0, AUX, 8]),
        0,
        "asking is fine"
    );
    // The new action is read before the signal number is checked.
    assert_eq!(g.ret(SYS_rt_sigaction, &[0, 0x10, 0, 8]), errno(EFAULT));
}

#[test]
fn rt_sigprocmask_checks_how_only_with_a_new_set() {
    use libc::*;
    let mut g = Guest::new();
    g.put(AUX, u64::MAX);
    assert_eq!(g.ret(SYS_rt_sigprocmask, &[99, BUF, 0, 8]), errno(EINVAL));
    assert_eq!(g.ret(SYS_rt_sigprocmask, &[99, 0, AUX, 8]), 0);
    assert_eq!(g.get::<u64>(AUX), 0, "the empty mask");
    assert_eq!(
        g.ret(SYS_rt_sigprocmask, &[SIG_SETMASK as u64, BUF, 0, 16]),
        errno(EINVAL)
    );
}

#[test]
fn sigaltstack_checks_the_new_stack_and_reports_none() {
    use libc::*;
    let mut g = Guest::new();
    let stack = |flags| SigStack {
        sp: BUF,
        flags,
        size: 64 << 10,
        ..Default::default()
    };
    g.put(BUF, stack(5));
    assert_eq!(
        g.ret(SYS_sigaltstack, &[BUF, 0]),
        errno(EINVAL),
        "unknown flags"
    );
    g.put(BUF, stack(0));
    assert_eq!(g.ret(SYS_sigaltstack, &[BUF, AUX]), 0);
    assert_eq!(g.get::<SigStack>(AUX).flags, SS_DISABLE);
}

#[test]
fn limits_are_fixed_and_new_ones_are_checked() {
    use libc::*;
    let mut g = Guest::new();
    let limit = |g: &mut Guest, resource: u32| {
        assert_eq!(g.ret(SYS_prlimit64, &[0, resource.into(), 0, BUF]), 0);
        let r: Rlimit = g.get(BUF);
        (r.cur, r.max)
    };
    assert_eq!(limit(&mut g, RLIMIT_STACK), (STACK_SIZE, u64::MAX));
    assert_eq!(limit(&mut g, RLIMIT_NOFILE), (3, 3));
    assert_eq!(limit(&mut g, RLIMIT_AS), (MEM, MEM));
    assert_eq!(limit(&mut g, RLIMIT_CORE), (u64::MAX, u64::MAX));
    assert_eq!(
        g.ret(SYS_prlimit64, &[0, 16, 0, BUF]),
        errno(EINVAL),
        "RLIM_NLIMITS"
    );
    assert_eq!(
        g.ret(SYS_prlimit64, &[2, 0, 0, BUF]),
        errno(ESRCH),
        "another process"
    );
    g.put(AUX, Rlimit { cur: 10, max: 5 });
    let nofile = u64::from(RLIMIT_NOFILE);
    assert_eq!(
        g.ret(SYS_prlimit64, &[0, nofile, AUX, 0]),
        errno(EINVAL),
        "cur > max"
    );
    assert_eq!(g.ret(SYS_setrlimit, &[nofile, AUX]), errno(EINVAL));
    assert_eq!(g.ret(SYS_getrlimit, &[nofile, BUF]), 0);
    assert_eq!(g.get::<Rlimit>(BUF).cur, 3);
}

#[test]
fn identity_and_cpu_calls() {
    use libc::*;
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_getpid, &[]), 1);
    assert_eq!(g.ret(SYS_getppid, &[]), 0);
    assert_eq!(g.ret(SYS_sched_getaffinity, &[0, 128, BUF]), 8);
    assert_eq!(g.get::<u64>(BUF), 1, "CPU 0");
    for len in [0, 4, 12] {
        assert_eq!(
            g.ret(SYS_sched_getaffinity, &[0, len, BUF]),
            errno(EINVAL),
            "{len}"
        );
    }
    assert_eq!(g.ret(SYS_getcwd, &[BUF, 2]), 2);
    assert_eq!(g.bytes(BUF, 2), b"/\0");
    assert_eq!(g.ret(SYS_getcwd, &[BUF, 1]), errno(ERANGE));
    assert_eq!(
        g.ret(SYS_getrusage, &[2, BUF]),
        errno(EINVAL),
        "unknown who"
    );
    let children = RUSAGE_CHILDREN.cast_unsigned().into();
    assert_eq!(g.ret(SYS_getrusage, &[children, BUF]), 0);
    assert_eq!(g.ret(SYS_set_robust_list, &[BUF, 24]), 0);
    assert_eq!(g.ret(SYS_set_robust_list, &[BUF, 16]), errno(EINVAL));
}

#[test]
fn arch_prctl_sets_fs_and_gs_in_the_user_address_space() {
    const SET_GS: u64 = 0x1001;
    const SET_FS: u64 = 0x1002;
    const GET_FS: u64 = 0x1003;
    use libc::{EINVAL, EPERM, SYS_arch_prctl};
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_arch_prctl, &[SET_FS, BUF]), 0);
    assert_eq!(g.ret(SYS_arch_prctl, &[SET_GS, AUX]), 0);
    assert_eq!(g.os.take_changed_bases(), Some((BUF, AUX)));
    assert_eq!(g.os.take_changed_bases(), None, "taken once");
    assert_eq!(g.ret(SYS_arch_prctl, &[GET_FS, AUX]), 0);
    assert_eq!(g.get::<u64>(AUX), BUF);
    let top = (1 << 47) - PAGE;
    assert_eq!(
        g.ret(SYS_arch_prctl, &[SET_FS, top]),
        errno(EPERM),
        "TASK_SIZE_MAX"
    );
    assert_eq!(g.ret(SYS_arch_prctl, &[SET_FS, top - 1]), 0);
    assert_eq!(g.ret(SYS_arch_prctl, &[0x1005, 0]), errno(EINVAL));
}

#[test]
fn a_signal_to_itself_ends_the_program_unless_ignored() {
    use libc::*;
    let mut g = Guest::new();
    assert_eq!(g.ret(SYS_kill, &[1, 0]), 0, "signal 0 only checks");
    assert_eq!(
        g.ret(SYS_kill, &[0, SIGCHLD as u64]),
        0,
        "ignored by default"
    );
    assert_eq!(
        g.call(SYS_kill, &[1, SIGABRT as u64]),
        Outcome::Signal(SIGABRT)
    );
    assert_eq!(
        g.call(SYS_tgkill, &[1, 1, SIGSEGV as u64]),
        Outcome::Signal(SIGSEGV)
    );
    assert_eq!(g.ret(SYS_kill, &[2, SIGTERM as u64]), errno(ESRCH));
    assert_eq!(g.ret(SYS_kill, &[1, 65]), errno(EINVAL));
}

#[test]
fn exit_ends_the_program_with_the_low_byte_of_the_status() {
    let mut g = Guest::new();
    assert_eq!(g.call(libc::SYS_exit_group, &[256 + 7]), Outcome::Exit(7));
    assert_eq!(g.call(libc::SYS_exit, &[u64::MAX]), Outcome::Exit(255));
}

#[test]
fn new_processes_are_refused() {
    use libc::*;
    // Linux would create them; a reap guest is one process.
    let mut g = Guest::new();
    for nr in [SYS_fork, SYS_vfork, SYS_execve, SYS_execveat] {
        assert_eq!(g.ret(nr, &[BUF, BUF, BUF]), errno(EPERM), "{nr}");
    }
    // clone without CLONE_THREAD (fork), and posix_spawn's CLONE_VM | CLONE_VFORK.
    let sigchld = SIGCHLD as u64;
    assert_eq!(g.ret(SYS_clone, &[sigchld, 0, 0, 0, 0]), errno(EPERM));
    let vfork = (CLONE_VM | CLONE_VFORK) as u64 | sigchld;
    g.put(AUX, [vfork, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(g.ret(SYS_clone3, &[AUX, 64]), errno(EPERM));
    assert_eq!(g.os.threads.len(), 1);
}

#[test]
fn clone_creates_a_thread_as_pthread_create_asks() {
    use libc::*;
    let mut g = Guest::new();
    g.put(BUF + 0x100, 0u32);
    let t = with_thread(&mut g);
    assert_eq!(t, 2);
    assert_eq!(g.get::<u32>(BUF + 0x100), t, "CLONE_PARENT_SETTID");
    let thread = g.os.threads.get(t).unwrap();
    assert_eq!(thread.fs_base, AUX, "CLONE_SETTLS");
    assert_eq!(thread.clear_child_tid, BUF + 0x100, "CLONE_CHILD_CLEARTID");
    let spawned = g.os.threads.take_spawned();
    assert_eq!(spawned.len(), 1);
    assert_eq!(spawned[0].stack, AUX + 0x1000);
    assert_eq!(g.ret(SYS_gettid, &[]), 1);
    run_thread(&mut g, t);
    assert_eq!(g.ret(SYS_gettid, &[]), u64::from(t).cast_signed());
    assert_eq!(g.ret(SYS_getpid, &[]), 1);
    // clone3, as glibc 2.34+ tries first: the stack is a base and a size.
    let flags = (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD) as u64;
    g.put(AUX, [flags, 0, 0, 0, 0, 0x50_0000, 0x1000, 0]);
    let t3 = g.ret(SYS_clone3, &[AUX, 64]);
    assert_eq!(t3, 3);
    assert_eq!(g.os.threads.take_spawned()[0].stack, 0x50_1000);
    assert_eq!(g.ret(SYS_clone3, &[AUX, 32]), errno(EINVAL), "too small");
    g.put(AUX, [flags | 0x1_0000_0000, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(g.ret(SYS_clone3, &[AUX, 64]), errno(EINVAL), "unknown flag");
}

#[test]
fn threads_beyond_the_limit_are_eagain() {
    let mut g = Guest::new();
    for _ in 1..crate::guest_os::threads::MAX_THREADS {
        with_thread(&mut g);
    }
    let flags = (libc::CLONE_VM | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64;
    assert_eq!(
        g.ret(libc::SYS_clone, &[flags, 0, 0, 0, 0]),
        errno(libc::EAGAIN)
    );
}

#[test]
fn a_thread_exit_clears_and_wakes_its_child_tid_and_the_last_exit_ends_the_program() {
    use libc::*;
    let mut g = Guest::new();
    let t = with_thread(&mut g);
    // pthread_join waits on the thread id word.
    g.put(BUF + 0x100, t);
    assert_eq!(
        g.call(SYS_futex, &[BUF + 0x100, WAIT, u64::from(t), 0]),
        Outcome::Switch
    );
    run_thread(&mut g, t);
    assert_eq!(g.call(SYS_exit, &[0]), Outcome::Switch);
    assert!(!g.os.threads.contains(t));
    assert_eq!(g.get::<u32>(BUF + 0x100), 0);
    assert_eq!(
        g.os.threads.pick_next(),
        Some((MAIN_TID, Resume::Return(0)))
    );
    run_thread(&mut g, MAIN_TID);
    assert_eq!(g.call(SYS_exit, &[3]), Outcome::Exit(3));
}

#[test]
fn set_tid_address_returns_the_tid_and_signals_go_to_existing_threads() {
    use libc::*;
    let mut g = Guest::new();
    let t = with_thread(&mut g);
    run_thread(&mut g, t);
    assert_eq!(
        g.ret(SYS_set_tid_address, &[BUF]),
        u64::from(t).cast_signed()
    );
    assert_eq!(g.os.threads.get(t).unwrap().clear_child_tid, BUF);
    assert_eq!(g.ret(SYS_tgkill, &[1, u64::from(t), 0]), 0);
    assert_eq!(g.ret(SYS_tgkill, &[1, 99, 0]), errno(ESRCH));
    assert_eq!(g.ret(SYS_tgkill, &[2, u64::from(t), 0]), errno(ESRCH));
    assert_eq!(g.ret(SYS_tkill, &[99, 0]), errno(ESRCH));
    assert_eq!(
        g.call(SYS_tgkill, &[1, u64::from(t), SIGABRT as u64]),
        Outcome::Signal(SIGABRT)
    );
}

#[test]
fn sched_yield_switches_only_when_another_thread_can_run() {
    let mut g = Guest::new();
    assert_eq!(g.ret(libc::SYS_sched_yield, &[]), 0);
    let t = with_thread(&mut g);
    assert_eq!(g.call(libc::SYS_sched_yield, &[]), Outcome::Switch);
    assert_eq!(g.os.threads.pick_next(), Some((t, Resume::Continue)));
    assert_eq!(
        g.os.threads.pick_next(),
        Some((MAIN_TID, Resume::Return(0)))
    );
}

#[test]
fn signal_masks_are_per_thread() {
    use libc::*;
    let mut g = Guest::new();
    let t = with_thread(&mut g);
    g.put(BUF, 1u64 << (SIGUSR1 - 1));
    assert_eq!(g.ret(SYS_rt_sigprocmask, &[SIG_BLOCK as u64, BUF, 0, 8]), 0);
    assert_eq!(g.ret(SYS_rt_sigprocmask, &[SIG_BLOCK as u64, 0, AUX, 8]), 0);
    assert_eq!(g.get::<u64>(AUX), 1 << (SIGUSR1 - 1));
    run_thread(&mut g, t);
    assert_eq!(g.ret(SYS_rt_sigprocmask, &[SIG_BLOCK as u64, 0, AUX, 8]), 0);
    assert_eq!(
        g.get::<u64>(AUX),
        0,
        "the new thread started before the change"
    );
}

#[test]
fn unknown_system_calls_are_enosys() {
    use libc::*;
    let mut g = Guest::new();
    for nr in [
        SYS_socket,
        SYS_inotify_init1,
        SYS_epoll_create1,
        SYS_io_uring_setup,
        463,
        100_000,
    ] {
        assert_eq!(g.ret(nr, &[0, 0, 0]), errno(ENOSYS), "{nr}");
    }
    assert_eq!(g.ret(-1, &[]), errno(ENOSYS));
    for nr in [SYS_rseq, SYS_statx, SYS_membarrier] {
        assert_eq!(g.ret(nr, &[0, 0, 0]), errno(ENOSYS), "{nr}");
    }
    assert_eq!(g.os.counters().syscalls, 10);
}

#[test]
fn unsupported_calls_are_counted_by_number_for_the_first_few_distinct_numbers() {
    use crate::guest_os::MAX_LOGGED_UNSUPPORTED;
    let mut g = Guest::new();
    // Quiet ones (probed by libc) are not counted.
    g.ret(libc::SYS_rseq, &[]);
    assert!(g.os.take_unsupported().is_empty());
    let first = 1000;
    for round in 0..3 {
        for nr in first..first + 100 {
            assert_eq!(g.ret(nr, &[]), errno(libc::ENOSYS));
        }
        let counted = g.os.take_unsupported();
        assert_eq!(counted.by_nr.len(), MAX_LOGGED_UNSUPPORTED, "round {round}");
        assert!(counted.by_nr.iter().all(|(nr, n)| *nr < 1016 && *n == 1));
        assert_eq!(counted.other, 100 - MAX_LOGGED_UNSUPPORTED as u64);
    }
    // The numbers logged stay those first seen.
    g.ret(2000, &[]);
    g.ret(1003, &[]);
    let counted = g.os.take_unsupported();
    assert_eq!(counted.by_nr.into_iter().collect::<Vec<_>>(), [(1003, 1)]);
    assert_eq!(counted.other, 1);
    assert_eq!(g.os.warned.len(), MAX_LOGGED_UNSUPPORTED);
}

#[test]
fn int_arguments_and_the_call_number_are_the_low_32_bits_of_their_registers() {
    use libc::*;
    // Linux's wrappers cast `long` registers to `int`/`unsigned int` parameters, and
    // its entry code takes the number as an `int`.
    let high = 0xdead_0000_0000;
    let mut g = Guest::new();
    g.put_bytes(BUF, b"x");
    assert_eq!(g.ret(SYS_write, &[high | 1, BUF, 1]), 1, "fd");
    assert_eq!(g.stdout.bytes(), b"x");
    let getpid = (high | SYS_getpid as u64).cast_signed();
    assert_eq!(g.ret(getpid, &[]), 1, "number");
    let clock = high | CLOCK_MONOTONIC as u64;
    assert_eq!(g.ret(SYS_clock_gettime, &[clock, BUF]), 0, "clock");
    assert_eq!(g.call(SYS_exit, &[high | 3]), Outcome::Exit(3), "status");
    // `prot` is an `unsigned long`: a bit above 32 is an unknown flag.
    let m = addr(g.mmap(0, PAGE, ANON));
    assert_eq!(g.ret(SYS_mprotect, &[m, PAGE, high]), errno(EINVAL));
}

#[test]
fn madvise_dontneed_zeroes_and_checks_the_range() {
    use libc::{EINVAL, ENOMEM, MADV_DONTNEED, MADV_WILLNEED, SYS_madvise};
    let mut g = Guest::new();
    let m = addr(g.mmap(0, 2 * PAGE, ANON));
    g.put_bytes(m, b"gone");
    g.put_bytes(m + PAGE, b"kept");
    let dontneed = MADV_DONTNEED as u64;
    assert_eq!(
        g.ret(SYS_madvise, &[m, 10, dontneed]),
        0,
        "rounded up to a page"
    );
    assert_eq!(g.bytes(m, 4), [0; 4]);
    assert_eq!(g.bytes(m + PAGE, 4), b"kept");
    assert_eq!(
        g.ret(SYS_madvise, &[m + PAGE, PAGE, MADV_WILLNEED as u64]),
        0
    );
    assert_eq!(
        g.bytes(m + PAGE, 4),
        b"kept",
        "other advice changes nothing"
    );
    assert_eq!(g.ret(SYS_madvise, &[m + 1, PAGE, dontneed]), errno(EINVAL));
    assert_eq!(g.ret(SYS_madvise, &[m, u64::MAX, dontneed]), errno(EINVAL));
    assert_eq!(
        g.ret(SYS_madvise, &[GDT_ADDR, PAGE, dontneed]),
        errno(ENOMEM)
    );
    assert_eq!(
        g.ret(SYS_madvise, &[MEM - PAGE, 2 * PAGE, dontneed]),
        errno(ENOMEM)
    );
}

#[test]
fn a_state_from_before_threads_is_one_thread_blocked_on_stdin_with_its_bases() {
    let mut g = Guest::new();
    assert_eq!(g.ret(libc::SYS_arch_prctl, &[0x1002, BUF]), 0);
    let mut state = g.os.save();
    // What a format 3 state file decodes to.
    state.threads = None;
    let mut restored =
        GuestOs::from_state(state, Box::new(io::sink()), Box::new(io::sink())).unwrap();
    assert_eq!(restored.threads.len(), 1);
    assert!(restored.threads.waits_on_stdin());
    assert_eq!(restored.fs_base(), BUF);
    restored.push_stdin(b"x");
    assert_eq!(
        restored.threads.pick_next(),
        Some((
            MAIN_TID,
            Resume::Retry {
                timed_out: false,
                deadline: None
            }
        ))
    );
}

#[test]
fn saved_state_brings_back_the_address_space_bases_and_counters() {
    let mut g = Guest::new();
    g.brk(PROGRAM_END + 3 * PAGE);
    let m = addr(g.mmap(0, 2 * PAGE, ANON));
    assert_eq!(g.ret(libc::SYS_arch_prctl, &[0x1002, BUF]), 0);
    let state = g.os.save();
    let mut restored =
        GuestOs::from_state(state.clone(), Box::new(io::sink()), Box::new(io::sink())).unwrap();
    // Equal but for the time of the save, which the thread table records.
    let unstamped = |mut s: crate::guest_os::GuestOsState| {
        s.threads.as_mut().unwrap().mark_saved(0);
        s
    };
    assert_eq!(unstamped(restored.save()), unstamped(state));
    assert_eq!(restored.fs_base(), BUF);
    assert_eq!(
        restored.mm.brk_range(),
        (PROGRAM_END, PROGRAM_END + 3 * PAGE)
    );
    assert_eq!(restored.counters().syscalls, 3);
    // The restored address space goes on where the saved one stopped.
    assert_eq!(
        restored.mm.mmap(0, PAGE, false, false).map(|(a, _)| a),
        Ok(m - PAGE)
    );
    assert_eq!(
        restored.take_changed_bases(),
        None,
        "loaded from the vCPU state"
    );
}
