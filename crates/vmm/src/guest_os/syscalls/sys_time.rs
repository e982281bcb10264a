//! Clocks and sleeps.

use super::super::threads::{WaitOn, monotonic_ns};
use super::sys_futex::{deadline_after, deadline_at};
use super::*;

impl GuestOs {
    pub(super) fn clock_gettime(&mut self, mem: &GuestMemory, clock: i32, tp: u64) -> SysResult {
        let now = guest_clock(mem, clock_id(clock)?)?;
        mem.write_user_obj(tp, now)?;
        Ok(0)
    }

    pub(super) fn gettimeofday(&mut self, mem: &GuestMemory, tv: u64) -> SysResult {
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

    pub(super) fn time(&mut self, mem: &GuestMemory, tloc: u64) -> SysResult {
        let now = host_clock(libc::CLOCK_REALTIME)?;
        if tloc != 0 {
            mem.write_user_obj(tloc, now.sec)?;
        }
        // The seconds go to RAX as they are (a clock before 1970 reads as negative).
        Ok(now.sec.cast_unsigned())
    }

    /// `nanosleep` and `clock_nanosleep`: the calling thread sleeps (blocks until its
    /// deadline) while the others run. `rem` is never written (signals never
    /// interrupt a sleep).
    pub(super) fn nanosleep(
        &mut self,
        mem: &GuestMemory,
        clock: i32,
        flags: i32,
        req: u64,
    ) -> Outcome {
        let r = (|| {
            let clock = clock_id(clock)?;
            let ts: Timespec = mem.read_user_obj(req)?;
            let d = ts.to_duration().ok_or(Errno(libc::EINVAL))?;
            if flags & libc::TIMER_ABSTIME != 0 {
                deadline_at(mem, clock, d)
            } else {
                Ok(deadline_after(d))
            }
        })();
        match r {
            Ok(deadline) if deadline <= monotonic_ns() => Outcome::Return(0),
            Ok(deadline) => self.block(WaitOn::Sleep, Some(deadline)),
            Err(Errno(e)) => Outcome::Return(-i64::from(e)),
        }
    }
}

pub(super) fn clock_id(clock: i32) -> Result<i32, Errno> {
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

/// The guest's reading of `clock`: the host's, plus the vDSO data page's offset for the
/// clocks that count from boot (which keeps them from going backwards across a restore
/// on a host whose clock is behind the snapshot's: see `crate::vdso`).
pub(super) fn guest_clock(mem: &GuestMemory, clock: i32) -> Result<Timespec, Errno> {
    let now = host_clock(clock)?;
    let offset = match clock {
        libc::CLOCK_MONOTONIC
        | libc::CLOCK_MONOTONIC_RAW
        | libc::CLOCK_MONOTONIC_COARSE
        | libc::CLOCK_BOOTTIME => crate::vdso::monotonic_offset(mem),
        _ => 0,
    };
    if offset == 0 {
        return Ok(now);
    }
    let ns = i128::from(now.sec) * 1_000_000_000 + i128::from(now.nsec) + i128::from(offset);
    Ok(Timespec {
        sec: i64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        nsec: i64::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    })
}

pub(super) fn host_clock(clock: i32) -> Result<Timespec, Errno> {
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
