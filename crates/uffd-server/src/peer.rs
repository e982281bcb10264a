//! The connected process: its identity (`SO_PEERCRED`, a pidfd), receiving its
//! message with descriptors (`SCM_RIGHTS`), and killing it. Every system call of the
//! Firecracker server that needs `unsafe` is here or in `signals`.

use std::io;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected. Not in `libc` yet;
/// the same number on every architecture that uses the generic socket options.
const SO_PEERPIDFD: libc::c_int = 77;

/// Most descriptors accepted in one message. Firecracker sends one (the userfaultfd);
/// releases with guest_memfd support send three. More are cut by the kernel
/// (`MSG_CTRUNC`) and refused.
pub const MAX_FDS: usize = 4;

/// The process at the other end of an accepted connection, as the kernel saw it when
/// it connected.
#[derive(Debug)]
pub struct Peer {
    /// Its pid in our pid namespace (0 if it is not visible from here).
    pub pid: i32,
    /// Its user id.
    pub uid: u32,
    /// A pidfd that refers to that very process (so a signal can never reach another
    /// process that reused the pid); `None` if neither `SO_PEERPIDFD` nor
    /// `pidfd_open` gave one.
    pidfd: Option<OwnedFd>,
}

impl Peer {
    /// The peer of `stream`.
    pub fn of(stream: &UnixStream) -> io::Result<Peer> {
        let fd = stream.as_raw_fd();
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the live `cred`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut pidfd: RawFd = -1;
        let mut len = size_of::<RawFd>() as libc::socklen_t;
        // SAFETY: as above, into the live `pidfd`; the kernel installs a new descriptor.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERPIDFD,
                (&raw mut pidfd).cast(),
                &mut len,
            )
        };
        let unsupported =
            rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOPROTOOPT);
        let pidfd = if rc == 0 && pidfd >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns.
            Some(unsafe { OwnedFd::from_raw_fd(pidfd) })
        } else if unsupported && cred.pid > 0 {
            // Kernels before 6.5: open one by pid. (Any other failure, e.g. the peer
            // already gone, gives no pidfd rather than one that might name a process
            // that reused the pid.)
            // SAFETY: pidfd_open takes a pid and flags by value and returns a fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, cred.pid, 0) };
            // SAFETY: a fresh descriptor that nothing else owns.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
        } else {
            None
        };
        Ok(Peer {
            pid: cred.pid,
            uid: cred.uid,
            pidfd,
        })
    }

    /// The pidfd, readable once the peer has exited.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether the peer has exited (its pidfd is readable). `false` when unknown.
    pub fn has_exited(&self) -> bool {
        let Some(fd) = &self.pidfd else {
            return false;
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd without waiting.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    /// Sends `SIGKILL` through the pidfd.
    pub fn kill(&self) -> io::Result<()> {
        let Some(fd) = &self.pidfd else {
            return Err(io::Error::other(
                "no pidfd for the peer (it is not visible in this pid namespace)",
            ));
        };
        // SAFETY: pidfd_send_signal takes a pidfd, a signal, a null siginfo and flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// What one `recvmsg` brought.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes of data (0: the peer closed its end).
    pub len: usize,
    /// Descriptors that came with them, owned (and close-on-exec) here.
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors that did not fit ([`MAX_FDS`]).
    pub fds_truncated: bool,
}

/// One non-blocking `recvmsg` on `stream` into `buf`, taking any `SCM_RIGHTS`
/// descriptors. `WouldBlock` when nothing is there yet.
pub fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> io::Result<Received> {
    // Room for one SCM_RIGHTS header with MAX_FDS descriptors (CMSG_SPACE(16) = 32).
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cbuf);
    // SAFETY: the msghdr points at live buffers of the lengths it states.
    let n = unsafe {
        libc::recvmsg(
            stream.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Received {
        len: n as usize,
        fds: Vec::new(),
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // `msg_controllen`; each SCM_RIGHTS payload is an array of `int` descriptors that
    // the kernel installed in this process, which we take ownership of once each.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let payload = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..payload / size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    if fd >= 0 {
                        out.fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(out)
}

/// What a descriptor is, as `/proc/self/fd` names it (for error messages).
pub fn describe_fd(fd: BorrowedFd<'_>) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn peer_of_a_socketpair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = Peer::of(&a).unwrap();
        assert_eq!(p.pid, std::process::id() as i32);
        assert!(p.pidfd().is_some());
        assert!(!p.has_exited());
    }

    #[test]
    fn receives_data_and_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 16];
        let e = recv_with_fds(&a, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let fds = [file.as_raw_fd(), file.as_raw_fd()];
        let mut cbuf = [0u64; 8];
        let mut data = *b"hello";
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: a msghdr over live buffers with one SCM_RIGHTS header of two ints.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(8) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(8) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), 8);
            assert_eq!(libc::sendmsg(b.as_raw_fd(), &msg, 0), 5);
        }
        let r = recv_with_fds(&a, &mut buf).unwrap();
        assert_eq!((r.len, r.fds.len(), r.fds_truncated), (5, 2, false));
        assert_eq!(&buf[..5], b"hello");
        assert!(describe_fd(r.fds[0].as_fd()).ends_with("/stat"));

        (&b).write_all(b"x").unwrap();
        drop(b);
        let r = recv_with_fds(&a, &mut buf).unwrap();
        assert_eq!((r.len, r.fds.len()), (1, 0));
        assert_eq!(recv_with_fds(&a, &mut buf).unwrap().len, 0);
    }
}
