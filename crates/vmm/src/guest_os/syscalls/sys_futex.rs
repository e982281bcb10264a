//! `futex`.

use super::*;

impl GuestOs {
    /// `futex(uaddr, op, val, timeout, uaddr2, val3)`, in Linux's order of checks: the
    /// timeout, the operation, the bitset, the address, the value.
    pub(super) fn futex(
        &mut self,
        mem: &GuestMemory,
        uaddr: u64,
        op: i32,
        val: u32,
        timeout: u64,
        bitset: u32,
    ) -> Outcome {
        const FUTEX_CMD_MASK: i32 = !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME);
        let cmd = op & FUTEX_CMD_MASK;
        let wait = matches!(cmd, libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET);
        let r = (|| {
            // FUTEX_WAIT takes a relative timeout; FUTEX_WAIT_BITSET an absolute time
            // on CLOCK_MONOTONIC (CLOCK_REALTIME with the flag).
            let sleep = if wait && timeout != 0 {
                let ts = mem.read_user_obj::<Timespec>(timeout)?;
                let mut d = ts.to_duration().ok_or(Errno(libc::EINVAL))?;
                if cmd == libc::FUTEX_WAIT_BITSET {
                    let clock = if op & libc::FUTEX_CLOCK_REALTIME != 0 {
                        libc::CLOCK_REALTIME
                    } else {
                        libc::CLOCK_MONOTONIC
                    };
                    let now = host_clock(clock)
                        .ok()
                        .and_then(Timespec::to_duration)
                        .unwrap_or_default();
                    d = d.saturating_sub(now);
                }
                Some(d)
            } else {
                None
            };
            let bitset_op = matches!(cmd, libc::FUTEX_WAIT_BITSET | libc::FUTEX_WAKE_BITSET);
            if !(wait || bitset_op || cmd == libc::FUTEX_WAKE)
                || (op & libc::FUTEX_CLOCK_REALTIME != 0 && cmd != libc::FUTEX_WAIT_BITSET)
            {
                return Err(Errno(libc::ENOSYS));
            }
            if bitset_op && bitset == 0 {
                return Err(Errno(libc::EINVAL));
            }
            if !uaddr.is_multiple_of(4) {
                return Err(Errno(libc::EINVAL));
            }
            if !wait {
                // Nothing waits: waking wakes no one. Linux looks at the memory only
                // for a shared futex; a private one needs just a user address.
                if op & libc::FUTEX_PRIVATE_FLAG != 0 {
                    access_ok(uaddr, 4)?;
                } else {
                    mem.check_user(uaddr, 4)?;
                }
                return Ok(None);
            }
            if mem.read_user_obj::<u32>(uaddr)? != val {
                return Err(Errno(libc::EAGAIN));
            }
            Ok(Some(sleep))
        })();
        match r {
            Ok(None) => Outcome::Return(0),
            Ok(Some(None)) => Outcome::Fatal(format!(
                "deadlock: futex wait on {uaddr:#x} with no other thread to wake it"
            )),
            Ok(Some(Some(d))) => {
                // Nothing else can wake a single-threaded guest: the wait times out.
                self.sleep(d);
                Outcome::Return(-i64::from(libc::ETIMEDOUT))
            }
            Err(Errno(e)) => Outcome::Return(-i64::from(e)),
        }
    }
}
