//! The messages between the server and an instance process, and their framing on a
//! Unix stream socket.
//!
//! A frame is two little-endian `u32` lengths, a JSON header of the first length and a
//! byte payload of the second (a request, or a response followed by the guest's
//! stderr); file descriptors travel with the frame's first bytes (`SCM_RIGHTS`). The
//! server treats everything an instance process sends as untrusted: lengths are capped,
//! headers are parsed strictly, and a frame that breaks a rule is a protocol error
//! that ends the process.

use std::io::{self, Read};
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use reap_pager::{MemoryMode, ServeOptions};
use reap_vmm::instance::{ColdStart, Invocation};
use reap_vmm::snapshot::Stamp;
use serde::{Deserialize, Serialize};

/// Largest header, in bytes.
pub const MAX_HEADER: u32 = 1 << 20;

/// Largest payload, in bytes: a response ([`reap_vmm::instance::MAX_RESPONSE_BYTES`])
/// with [`MAX_STDERR`] of stderr, or a request of the same size.
pub const MAX_PAYLOAD: u32 = (reap_vmm::instance::MAX_RESPONSE_BYTES as u32) + MAX_STDERR;

/// Most bytes of the guest's stderr a reply carries; the rest is counted as dropped.
pub const MAX_STDERR: u32 = 1 << 20;

/// Most file descriptors a frame carries.
const MAX_FDS: usize = 4;

/// What the server asks of an instance process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Restore the snapshot whose directory comes with the frame (one descriptor): the
    /// process makes that directory its root, drops its privileges and restores.
    Restore {
        /// The memory mode.
        mode: MemoryMode,
        /// The page server's options.
        serve: ServeOptions,
        /// The memory file as the server verified it against its checksums (`file`
        /// mode): the process skips the verification if its file has this stamp.
        verified: Option<Stamp>,
        /// The host path of the function's root file system (its image), whose
        /// directory comes as the frame's second descriptor.
        image: Option<std::path::PathBuf>,
    },
    /// Boot the function whose program is the payload to its ready point and snapshot
    /// it into `snapshot` in the directory that comes with the frame (one descriptor,
    /// writable by the process's uid): the process makes it its root first.
    Deploy {
        /// Guest memory, argv and environment.
        mem_mib: u64,
        /// argv, including `argv[0]`.
        args: Vec<String>,
        /// The environment, `KEY=VALUE`.
        env: Vec<String>,
        /// Limit on the function's initialization, in microseconds.
        limit_us: u64,
        /// The program's root file system, for a program from an image: its directory
        /// comes as the frame's second descriptor (`dir` is the path the snapshot
        /// records, which need not exist yet).
        #[serde(default)]
        rootfs: Option<reap_vmm::guest_os::fs::RootFs>,
    },
    /// Invoke the restored function with the payload as its request.
    Invoke {
        /// The invocation's time limit, in microseconds.
        limit_us: u64,
    },
}

/// What an instance process answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// The process is set up and waits for [`Request::Restore`].
    Ready,
    /// The restore went through.
    Restored {
        /// How it went.
        cold_start: ColdStart,
        /// Confining the process to the snapshot directory, in microseconds.
        confine_us: u64,
        /// From reading the request to sending this reply, in microseconds.
        handled_us: u64,
        /// When the request was read: the host's `CLOCK_MONOTONIC` in nanoseconds
        /// (`reap_vmm::guest_os::threads::monotonic_ns`), which the server reads too.
        received_ns: u64,
    },
    /// The function was booted and snapshotted into `snapshot` under the root.
    Deployed {
        /// Boot until the ready point, in microseconds.
        boot_us: u64,
        /// Writing the snapshot, in microseconds.
        snapshot_us: u64,
        /// Bytes of guest memory that hold data.
        memory_data_bytes: u64,
    },
    /// The function answered; the payload holds the response line (then stderr).
    Answered {
        /// The invocation's figures.
        invocation: Invocation,
        /// The working set the invocation recorded (memory-file offsets in WS order),
        /// for the server to write: the process cannot write the snapshot directory.
        recorded_ws: Option<Vec<u64>>,
    },
    /// The restore or invocation failed; the instance is unusable.
    Failed {
        /// Whose fault, and what kind.
        fault: Fault,
        /// The error, with its causes.
        message: String,
    },
}

/// The kind of an instance's failure, as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// The function ran past its time limit.
    Timeout,
    /// The function crashed (a guest fault, a fatal signal) or exited.
    Crash,
    /// The function did not answer with exactly one line.
    BadResponse,
    /// The runtime failed (guest memory, the VMM), not the function.
    Runtime,
    /// The snapshot's files are damaged (a checksum does not match, a file does not
    /// belong to the others): no cold start from them can succeed.
    Damaged,
}

impl Fault {
    /// Whether the function, not the runtime, is at fault.
    pub fn is_function_fault(self) -> bool {
        !matches!(self, Fault::Runtime | Fault::Damaged)
    }
}

/// A reply's trailer: the guest's stderr and unsupported system calls since the last
/// reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trailer {
    /// Bytes of the payload's end that are the guest's stderr.
    pub stderr_len: u32,
    /// Bytes of stderr dropped past [`MAX_STDERR`].
    pub stderr_dropped: u64,
    /// Unsupported system calls by number.
    pub unsupported: Vec<(u64, u64)>,
    /// Unsupported system calls beyond the numbers counted one by one.
    pub unsupported_other: u64,
}

/// A reply frame's header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplyHeader {
    /// The reply.
    pub reply: Reply,
    /// What came with it.
    pub trailer: Trailer,
}

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("socket")]
    Io(#[from] io::Error),
    /// The peer closed the socket at a frame boundary.
    #[error("the peer closed the connection")]
    Closed,
    /// The frame broke a rule.
    #[error("bad frame: {0}")]
    Bad(String),
}

/// Sends one frame: `header` as JSON, `payload`, and `fds`.
pub fn send<H: Serialize>(
    sock: &UnixStream,
    header: &H,
    payloads: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> Result<(), FrameError> {
    let json = serde_json::to_vec(header).map_err(|e| FrameError::Bad(e.to_string()))?;
    let payload_len: usize = payloads.iter().map(|p| p.len()).sum();
    let (Ok(hl), Ok(pl)) = (u32::try_from(json.len()), u32::try_from(payload_len)) else {
        return Err(FrameError::Bad("frame too large".into()));
    };
    if hl > MAX_HEADER || pl > MAX_PAYLOAD {
        return Err(FrameError::Bad(format!(
            "frame too large: header {hl} bytes, payload {pl} bytes"
        )));
    }
    let mut prefix = [0u8; 8];
    prefix[..4].copy_from_slice(&hl.to_le_bytes());
    prefix[4..].copy_from_slice(&pl.to_le_bytes());
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + payloads.len());
    parts.push(&prefix);
    parts.push(&json);
    parts.extend(payloads.iter().filter(|p| !p.is_empty()));
    send_all(sock, &parts, fds)
}

/// Receives one frame: its header, payload and descriptors.
pub fn recv<H: for<'de> Deserialize<'de>>(
    sock: &UnixStream,
) -> Result<(H, Vec<u8>, Vec<OwnedFd>), FrameError> {
    let mut prefix = [0u8; 8];
    let (n, fds) = recv_with_fds(sock, &mut prefix)?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    let mut got = n;
    let mut reader = sock;
    while got < prefix.len() {
        match reader.read(&mut prefix[got..])? {
            0 => return Err(FrameError::Bad("connection closed inside a frame".into())),
            k => got += k,
        }
    }
    let hl = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes"));
    let pl = u32::from_le_bytes(prefix[4..].try_into().expect("4 bytes"));
    if hl > MAX_HEADER || pl > MAX_PAYLOAD {
        return Err(FrameError::Bad(format!(
            "frame too large: header {hl} bytes, payload {pl} bytes"
        )));
    }
    let mut json = vec![0u8; hl as usize];
    read_exact(sock, &mut json)?;
    let mut payload = vec![0u8; pl as usize];
    read_exact(sock, &mut payload)?;
    let header = serde_json::from_slice(&json).map_err(|e| FrameError::Bad(e.to_string()))?;
    Ok((header, payload, fds))
}

fn read_exact(mut sock: &UnixStream, buf: &mut [u8]) -> Result<(), FrameError> {
    sock.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Bad("connection closed inside a frame".into()),
        _ => FrameError::Io(e),
    })
}

/// Space for a control message of [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

fn send_all(sock: &UnixStream, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), FrameError> {
    assert!(
        fds.len() <= MAX_FDS,
        "at most {MAX_FDS} descriptors a frame"
    );
    let mut iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0usize;
    let mut first = true;
    let mut cmsg = CmsgBuf([0; 64]);
    while sent < total {
        // Skip the parts already sent.
        let mut skip = sent;
        let mut start = 0;
        while skip >= iov[start].iov_len {
            skip -= iov[start].iov_len;
            start += 1;
        }
        let base = iov[start].iov_base;
        let len = iov[start].iov_len;
        // SAFETY: `skip < len`: the pointer stays inside the part.
        iov[start].iov_base = unsafe { base.cast::<u8>().add(skip) }.cast();
        iov[start].iov_len = len - skip;
        // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov[start..].as_mut_ptr();
        msg.msg_iovlen = iov.len() - start;
        if first && !fds.is_empty() {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let data_len = size_of_val(raw.as_slice());
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
            msg.msg_control = cmsg.0.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: `msg_control` points at `cmsg`, aligned and big enough for
            // `space` bytes (MAX_FDS descriptors need 32); CMSG_FIRSTHDR returns its
            // start, and CMSG_DATA the data within it.
            unsafe {
                let hdr = libc::CMSG_FIRSTHDR(&msg);
                (*hdr).cmsg_level = libc::SOL_SOCKET;
                (*hdr).cmsg_type = libc::SCM_RIGHTS;
                (*hdr).cmsg_len = libc::CMSG_LEN(data_len as u32) as usize;
                std::ptr::copy_nonoverlapping(
                    raw.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(hdr),
                    data_len,
                );
            }
        }
        // SAFETY: `msg` points at live iovecs and control data for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        iov[start].iov_base = base;
        iov[start].iov_len = len;
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        first = false;
        sent += n as usize;
    }
    Ok(())
}

fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), FrameError> {
    let mut cmsg = CmsgBuf([0; 64]);
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<CmsgBuf>();
        // SAFETY: `msg` points at `buf` and `cmsg`, live for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        let mut fds = Vec::new();
        // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of
        // well-formed control messages; CMSG_FIRSTHDR/NXTHDR walk them and return null
        // at the end. Each SCM_RIGHTS message holds descriptors now owned by us.
        unsafe {
            let mut hdr = libc::CMSG_FIRSTHDR(&msg);
            while !hdr.is_null() {
                if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(hdr);
                    let len = (*hdr).cmsg_len - (data as usize - hdr as usize);
                    for i in 0..len / size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                hdr = libc::CMSG_NXTHDR(&msg, hdr);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(FrameError::Bad("too many descriptors in a frame".into()));
        }
        return Ok((n as usize, fds));
    }
}

/// `d` in whole microseconds, the unit of the frames' durations (saturating).
pub fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn frames_carry_header_payload_and_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let big = vec![7u8; 3 << 20];
        let t = std::thread::spawn(move || {
            send(
                &a,
                &Request::Invoke { limit_us: 5 },
                &[&big, b"tail"],
                &[std::os::fd::AsFd::as_fd(&file)],
            )
            .unwrap();
            a
        });
        let (req, payload, fds): (Request, _, _) = recv(&b).unwrap();
        t.join().unwrap();
        assert!(matches!(req, Request::Invoke { limit_us: 5 }));
        assert_eq!(payload.len(), (3 << 20) + 4);
        assert!(payload.ends_with(b"tail"));
        assert_eq!(fds.len(), 1);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fds[0].as_raw_fd())).unwrap();
        assert_eq!(link, std::path::Path::new("/dev/null"));
    }

    #[test]
    fn a_closed_peer_and_garbage_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(recv::<Reply>(&b), Err(FrameError::Closed)));

        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_le_bytes()).unwrap();
        a.write_all(&0u32.to_le_bytes()).unwrap();
        assert!(matches!(recv::<Reply>(&b), Err(FrameError::Bad(_))));

        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&3u32.to_le_bytes()).unwrap();
        a.write_all(&0u32.to_le_bytes()).unwrap();
        a.write_all(b"{{{").unwrap();
        assert!(matches!(recv::<Reply>(&b), Err(FrameError::Bad(_))));

        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&10u32.to_le_bytes()).unwrap();
        a.write_all(&0u32.to_le_bytes()).unwrap();
        a.write_all(b"{").unwrap();
        drop(a);
        assert!(matches!(recv::<Reply>(&b), Err(FrameError::Bad(_))));
    }
}
