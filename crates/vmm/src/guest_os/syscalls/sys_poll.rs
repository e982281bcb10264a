//! `poll` and `ppoll`.

use super::super::threads::WaitOn;
use super::sys_futex::deadline_after;
use super::*;

impl GuestOs {
    /// Readiness of each polled descriptor; the number ready.
    pub(super) fn poll_fds(&self, fds: &mut [PollFd]) -> u64 {
        let mut ready = 0;
        for p in fds.iter_mut() {
            let kind = self.vfs.fds.get(p.fd).ok().map(|f| &f.kind);
            p.revents = match kind {
                _ if p.fd < 0 => 0,
                None => POLLNVAL,
                Some(FileKind::Stdin) if self.stdin_eof && self.stdin.is_empty() => {
                    p.events & POLLIN | POLLHUP
                }
                Some(FileKind::Stdin) if !self.stdin.is_empty() => p.events & POLLIN,
                Some(FileKind::Stdin) => 0,
                Some(FileKind::Stdout | FileKind::Stderr) => p.events & POLLOUT,
                Some(FileKind::Pipe { id, write: false }) => {
                    let has = self
                        .vfs
                        .fds
                        .pipes
                        .get(id)
                        .is_some_and(|d| !d.data.is_empty());
                    let hup = !self.vfs.fds.pipe_has(*id, true);
                    (if has { p.events & POLLIN } else { 0 }) | if hup { POLLHUP } else { 0 }
                }
                Some(_) => p.events & (POLLIN | POLLOUT),
            };
            ready += u64::from(p.revents != 0);
        }
        ready
    }

    pub(super) fn poll(
        &mut self,
        mem: &GuestMemory,
        fds: u64,
        nfds: u32,
        timeout_ms: i32,
    ) -> Outcome {
        // A negative timeout waits forever.
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        self.poll_common(mem, fds, nfds, timeout)
    }

    pub(super) fn ppoll(
        &mut self,
        mem: &GuestMemory,
        fds: u64,
        nfds: u32,
        tsp: u64,
        sigmask: u64,
        sigsetsize: u64,
    ) -> Outcome {
        let timeout = if tsp == 0 {
            None
        } else {
            match mem
                .read_user_obj::<Timespec>(tsp)
                .map(Timespec::to_duration)
            {
                Ok(Some(d)) => Some(d),
                Ok(None) => return Outcome::Return(-i64::from(libc::EINVAL)),
                Err(_) => return Outcome::Return(-i64::from(libc::EFAULT)),
            }
        };
        // The signal mask is read and checked, then ignored.
        if sigmask != 0 {
            if sigsetsize != 8 {
                return Outcome::Return(-i64::from(libc::EINVAL));
            }
            if mem.read_user_obj::<u64>(sigmask).is_err() {
                return Outcome::Return(-i64::from(libc::EFAULT));
            }
        }
        self.poll_common(mem, fds, nfds, timeout)
    }

    pub(super) fn poll_common(
        &mut self,
        mem: &GuestMemory,
        fds: u64,
        nfds: u32,
        timeout: Option<Duration>,
    ) -> Outcome {
        let r = (|| {
            if u64::from(nfds) > IOV_MAX {
                return Err(Errno(libc::EINVAL));
            }
            let addrs = (0..u64::from(nfds))
                .map(|i| fds.checked_add(i * 8).ok_or(Errno(libc::EFAULT)))
                .collect::<Result<Vec<u64>, Errno>>()?;
            let mut polled = addrs
                .iter()
                .map(|&at| mem.read_user_obj::<PollFd>(at).map_err(Errno::from))
                .collect::<Result<Vec<PollFd>, Errno>>()?;
            let ready = self.poll_fds(&mut polled);
            Ok((addrs, polled, ready))
        })();
        let (addrs, polled, ready) = match r {
            Ok(v) => v,
            Err(Errno(e)) => return Outcome::Return(-i64::from(e)),
        };
        // A poll carried out again after its timeout passed returns what it finds.
        let (timed_out, old_deadline) = self.retry.take().unwrap_or((false, None));
        if ready == 0 && timeout != Some(Duration::ZERO) && !timed_out {
            let stdin = polled.iter().any(|p| {
                p.events & POLLIN != 0
                    && self
                        .vfs
                        .fds
                        .get(p.fd)
                        .is_ok_and(|f| f.kind == FileKind::Stdin)
            });
            // Waiting for input on stdin is the same ready point as a blocking read
            // (its timeout is not kept: a function waits for its next request).
            if stdin {
                return self.block(WaitOn::Io { stdin: true }, None);
            }
            let deadline = old_deadline.or_else(|| timeout.map(deadline_after));
            return self.block(WaitOn::Io { stdin: false }, deadline);
        }
        for (&at, &p) in addrs.iter().zip(&polled) {
            if mem.write_user_obj(at, p).is_err() {
                return Outcome::Return(-i64::from(libc::EFAULT));
            }
        }
        Outcome::Return(ret(Ok(ready)))
    }
}
