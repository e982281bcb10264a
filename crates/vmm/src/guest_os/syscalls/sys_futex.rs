//! `futex`: waits block only the calling thread (the thread table keeps the waiters,
//! see [`super::super::threads`]); wakes make waiters runnable in FIFO order.
//!
//! The whole guest is one address space, so a private and a shared futex on the same
//! address are the same futex (as they are within one Linux process).

use super::super::threads::{WaitOn, monotonic_ns};
use super::*;

const FUTEX_CMD_MASK: i32 = !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME);
const FUTEX_BITSET_MATCH_ANY: u32 = u32::MAX;

impl GuestOs {
    /// `futex(uaddr, op, val, timeout_or_val2, uaddr2, val3)`, in Linux's order of
    /// checks: the timeout, the operation, the bitset, the addresses, the values.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn futex(
        &mut self,
        mem: &GuestMemory,
        uaddr: u64,
        op: i32,
        val: u32,
        timeout: u64,
        uaddr2: u64,
        val3: u32,
    ) -> Outcome {
        match self.futex_op(mem, uaddr, op, val, timeout, uaddr2, val3) {
            Ok(FutexResult::Done(n)) => Outcome::Return(i64::from(n)),
            Ok(FutexResult::Wait { bitset, deadline }) => self.block(
                WaitOn::Futex {
                    addr: uaddr,
                    bitset,
                },
                deadline,
            ),
            Err(Errno(e)) => Outcome::Return(-i64::from(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn futex_op(
        &mut self,
        mem: &GuestMemory,
        uaddr: u64,
        op: i32,
        val: u32,
        timeout: u64,
        uaddr2: u64,
        val3: u32,
    ) -> Result<FutexResult, Errno> {
        let cmd = op & FUTEX_CMD_MASK;
        let realtime = op & libc::FUTEX_CLOCK_REALTIME != 0;
        let wait = matches!(cmd, libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET);
        // FUTEX_WAIT takes a relative timeout; FUTEX_WAIT_BITSET an absolute time on
        // CLOCK_MONOTONIC (CLOCK_REALTIME with the flag). Both become a deadline on
        // the host's CLOCK_MONOTONIC.
        let deadline = if wait && timeout != 0 {
            let ts = mem.read_user_obj::<Timespec>(timeout)?;
            let d = ts.to_duration().ok_or(Errno(libc::EINVAL))?;
            Some(if cmd == libc::FUTEX_WAIT {
                deadline_after(d)
            } else {
                let clock = if realtime {
                    libc::CLOCK_REALTIME
                } else {
                    libc::CLOCK_MONOTONIC
                };
                deadline_at(mem, clock, d)?
            })
        } else {
            None
        };
        let known = matches!(
            cmd,
            libc::FUTEX_WAIT
                | libc::FUTEX_WAKE
                | libc::FUTEX_REQUEUE
                | libc::FUTEX_CMP_REQUEUE
                | libc::FUTEX_WAKE_OP
                | libc::FUTEX_WAIT_BITSET
                | libc::FUTEX_WAKE_BITSET
        );
        if !known || (realtime && cmd != libc::FUTEX_WAIT_BITSET) {
            return Err(Errno(libc::ENOSYS));
        }
        let bitset = match cmd {
            libc::FUTEX_WAIT_BITSET | libc::FUTEX_WAKE_BITSET if val3 == 0 => {
                return Err(Errno(libc::EINVAL));
            }
            libc::FUTEX_WAIT_BITSET | libc::FUTEX_WAKE_BITSET => val3,
            _ => FUTEX_BITSET_MATCH_ANY,
        };
        if !uaddr.is_multiple_of(4) {
            return Err(Errno(libc::EINVAL));
        }
        let private = op & libc::FUTEX_PRIVATE_FLAG != 0;
        // A private futex needs only a user address to wake; a shared one is looked
        // up in memory (EFAULT if it is not user memory), as Linux does.
        let key_ok = |addr: u64| {
            if private {
                access_ok(addr, 4)
            } else {
                mem.check_user(addr, 4).map_err(Errno::from)
            }
        };
        // The second count of the requeue and wake-op commands comes in the timeout
        // argument's register.
        let val2 = uint(timeout);
        match cmd {
            libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET => {
                if mem.read_user_obj::<u32>(uaddr)? != val {
                    return Err(Errno(libc::EAGAIN));
                }
                if deadline.is_some_and(|d| d <= monotonic_ns()) {
                    return Err(Errno(libc::ETIMEDOUT));
                }
                Ok(FutexResult::Wait { bitset, deadline })
            }
            libc::FUTEX_WAKE | libc::FUTEX_WAKE_BITSET => {
                key_ok(uaddr)?;
                Ok(FutexResult::Done(
                    self.threads.futex_wake(uaddr, val, bitset),
                ))
            }
            libc::FUTEX_REQUEUE | libc::FUTEX_CMP_REQUEUE => {
                // Linux takes both counts as signed and refuses negative ones.
                if val.cast_signed() < 0 || val2.cast_signed() < 0 {
                    return Err(Errno(libc::EINVAL));
                }
                if !uaddr2.is_multiple_of(4) {
                    return Err(Errno(libc::EINVAL));
                }
                key_ok(uaddr)?;
                key_ok(uaddr2)?;
                if cmd == libc::FUTEX_CMP_REQUEUE && mem.read_user_obj::<u32>(uaddr)? != val3 {
                    return Err(Errno(libc::EAGAIN));
                }
                if uaddr == uaddr2 {
                    return Err(Errno(libc::EINVAL));
                }
                Ok(FutexResult::Done(
                    self.threads.futex_requeue(uaddr, val, uaddr2, val2),
                ))
            }
            _ => {
                // FUTEX_WAKE_OP
                if !uaddr2.is_multiple_of(4) {
                    return Err(Errno(libc::EINVAL));
                }
                key_ok(uaddr)?;
                let wake_op = WakeOp::decode(val3).ok_or(Errno(libc::ENOSYS))?;
                let old = mem.read_user_obj::<u32>(uaddr2)?;
                mem.write_user_obj(uaddr2, wake_op.apply(old))?;
                let mut woken = self.threads.futex_wake(uaddr, val, FUTEX_BITSET_MATCH_ANY);
                if wake_op.test(old) {
                    woken += self
                        .threads
                        .futex_wake(uaddr2, val2, FUTEX_BITSET_MATCH_ANY);
                }
                Ok(FutexResult::Done(woken))
            }
        }
    }
}

/// What a futex operation does to the calling thread.
enum FutexResult {
    /// Returns this count.
    Done(u32),
    /// Blocks until woken or the deadline.
    Wait { bitset: u32, deadline: Option<u64> },
}

/// The host `CLOCK_MONOTONIC` deadline `d` from now.
pub(super) fn deadline_after(d: Duration) -> u64 {
    monotonic_ns().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The host `CLOCK_MONOTONIC` deadline of the absolute time `at` on the guest's
/// `clock` (which for the monotonic clocks is the host's plus the vDSO's offset).
pub(super) fn deadline_at(mem: &GuestMemory, clock: i32, at: Duration) -> Result<u64, Errno> {
    let now = guest_clock(mem, clock)?.to_duration().unwrap_or_default();
    Ok(deadline_after(at.saturating_sub(now)))
}

/// `FUTEX_WAKE_OP`'s encoded operation: `*uaddr2 = old OP oparg`, then wake the
/// waiters of `uaddr2` too if `old CMP cmparg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WakeOp {
    op: u32,
    cmp: u32,
    oparg: i32,
    cmparg: i32,
}

impl WakeOp {
    /// Decodes `val3` as Linux's `futex_atomic_op_inuser` does; `None` for an unknown
    /// operation or comparison (ENOSYS).
    pub(super) fn decode(encoded: u32) -> Option<Self> {
        const FUTEX_OP_OPARG_SHIFT: u32 = 8;
        let op = (encoded >> 28) & 7;
        let cmp = (encoded >> 24) & 15;
        // 12-bit signed fields.
        let sext12 = |v: u32| ((v << 20).cast_signed()) >> 20;
        let mut oparg = sext12((encoded >> 12) & 0xfff);
        let cmparg = sext12(encoded & 0xfff);
        if (encoded >> 28) & FUTEX_OP_OPARG_SHIFT != 0 {
            oparg = 1i32.wrapping_shl(oparg.cast_unsigned() & 31);
        }
        if op > 4 || cmp > 5 {
            return None;
        }
        Some(Self {
            op,
            cmp,
            oparg,
            cmparg,
        })
    }

    /// The new value of the word that held `old`.
    pub(super) fn apply(self, old: u32) -> u32 {
        let arg = self.oparg.cast_unsigned();
        match self.op {
            0 => arg,
            1 => old.wrapping_add(arg),
            2 => old | arg,
            3 => old & !arg,
            _ => old ^ arg,
        }
    }

    /// Whether the waiters of the second address are woken too.
    pub(super) fn test(self, old: u32) -> bool {
        let old = old.cast_signed();
        match self.cmp {
            0 => old == self.cmparg,
            1 => old != self.cmparg,
            2 => old < self.cmparg,
            3 => old <= self.cmparg,
            4 => old > self.cmparg,
            _ => old >= self.cmparg,
        }
    }
}
