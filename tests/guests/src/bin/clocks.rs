//! Reads the clocks through glibc (which uses the vDSO when the auxiliary vector has
//! `AT_SYSINFO_EHDR`) and answers one JSON line per request line on stdin.
//!
//! - A number `N` (or anything else: N = 1000): `N` rounds of `clock_gettime`
//!   (`CLOCK_REALTIME`, `CLOCK_MONOTONIC`, `CLOCK_REALTIME_COARSE`,
//!   `CLOCK_MONOTONIC_COARSE`), `gettimeofday` and `time`, counting the readings of
//!   each monotonic clock that went backwards; then one `CLOCK_BOOTTIME` and one
//!   `CLOCK_PROCESS_CPUTIME_ID` reading (clocks the vDSO leaves to the system call),
//!   `clock_getres(CLOCK_MONOTONIC)` and `sched_getcpu`. The answer gives the first and
//!   last readings in ns (µs, s for `gettimeofday`, `time`) and the counts.
//! - `bench N M`: `N` calls of `clock_gettime(CLOCK_MONOTONIC)` through glibc and `M`
//!   (default `N`) as a system call (`syscall(SYS_clock_gettime)`), timed with the
//!   clock itself: ns per call of each, and of the `rdtsc` instruction alone (`N`
//!   times).
use std::io::{BufRead, Write};

fn ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn ns_syscall(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which is valid and writable.
    let rc = unsafe { libc::syscall(libc::SYS_clock_gettime, clock, &mut ts) };
    assert_eq!(rc, 0, "SYS_clock_gettime({clock})");
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn gettimeofday_us() -> i64 {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a valid, writable timeval; no time zone is asked.
    let rc = unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "gettimeofday");
    tv.tv_sec * 1_000_000 + tv.tv_usec
}

fn time_s() -> i64 {
    // SAFETY: a null pointer asks only for the return value.
    unsafe { libc::time(std::ptr::null_mut()) }
}

fn readings(n: u64) -> String {
    let (r0, m0) = (ns(libc::CLOCK_REALTIME), ns(libc::CLOCK_MONOTONIC));
    let (g0, t0) = (gettimeofday_us(), time_s());
    let (mut last_m, mut last_mc) = (m0, ns(libc::CLOCK_MONOTONIC_COARSE));
    let mut backwards = 0u64;
    let (mut r, mut g, mut t, mut rc) = (r0, g0, t0, 0);
    for _ in 0..n {
        r = ns(libc::CLOCK_REALTIME);
        let m = ns(libc::CLOCK_MONOTONIC);
        rc = ns(libc::CLOCK_REALTIME_COARSE);
        let mc = ns(libc::CLOCK_MONOTONIC_COARSE);
        g = gettimeofday_us();
        t = time_s();
        backwards += u64::from(m < last_m) + u64::from(mc < last_mc);
        (last_m, last_mc) = (m, mc);
    }
    let boottime = ns(libc::CLOCK_BOOTTIME);
    let cputime = ns(libc::CLOCK_PROCESS_CPUTIME_ID);
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid, writable timespec.
    let getres = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut res) };
    // SAFETY: no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    // SAFETY: getauxval reads the auxiliary vector glibc saved at start.
    let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    format!(
        "{{\"rounds\":{n},\"calls\":{},\"vdso\":{vdso},\"realtime_ns\":[{r0},{r}],\
         \"monotonic_ns\":[{m0},{last_m}],\"realtime_coarse_ns\":{rc},\
         \"monotonic_coarse_ns\":{last_mc},\"gettimeofday_us\":[{g0},{g}],\"time_s\":[{t0},{t}],\
         \"backwards\":{backwards},\"boottime_ns\":{boottime},\"cputime_ns\":{cputime},\
         \"getres\":[{getres},{},{}],\"cpu\":{cpu}}}",
        6 * n + 6,
        res.tv_sec,
        res.tv_nsec,
    )
}

fn bench(n: u64, m: u64) -> String {
    let (n, m) = (n.max(1), m.max(1));
    let start = ns(libc::CLOCK_MONOTONIC);
    for _ in 0..n {
        std::hint::black_box(ns(libc::CLOCK_MONOTONIC));
    }
    let mid = ns(libc::CLOCK_MONOTONIC);
    for _ in 0..m {
        std::hint::black_box(ns_syscall(libc::CLOCK_MONOTONIC));
    }
    let end = ns(libc::CLOCK_MONOTONIC);
    for _ in 0..n {
        // SAFETY: rdtsc only reads the time-stamp counter.
        std::hint::black_box(unsafe { std::arch::x86_64::_rdtsc() });
    }
    let rdtsc_end = ns(libc::CLOCK_MONOTONIC);
    format!(
        "{{\"calls\":{n},\"syscalls\":{m},\"glibc_ns\":{:.1},\"syscall_ns\":{:.1},\"rdtsc_ns\":{:.1}}}",
        (mid - start) as f64 / n as f64,
        (end - mid) as f64 / m as f64,
        (rdtsc_end - end) as f64 / n as f64
    )
}

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        let answer = match line.strip_prefix("bench") {
            Some(args) => {
                let mut args = args.split_whitespace().map(|a| a.parse().ok());
                let n = args.next().flatten().unwrap_or(100_000);
                bench(n, args.next().flatten().unwrap_or(n))
            }
            None => readings(line.parse().unwrap_or(1000)),
        };
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
}
