//! The memory belongs to another process, which sends its userfaultfd over a Unix
//! socket with SCM_RIGHTS (as Firecracker does) and then exits: the fault loop must
//! serve it while it lives and stop by itself once it is gone. A recording finds the
//! holes it touched in its page map while it lives.

mod common;

use common::*;
use reap_pager::pagemap::PagemapError;
use reap_pager::uffd::sys;
use reap_pager::{MemoryFile, Mode, PageServer, PagerError, PagerStats, Region, StopReason, Uffd};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const PAGES: u64 = 16;
const TOUCHED: u64 = 3;
/// The page the owner writes in [`received_uffd_holes_are_unregistered_in_the_owner`].
const HOLE: u64 = 10;
const HOLE_MARK: u64 = 0x5eed_0123;

/// The forked owner. Only raw system calls here: the parent is multi-threaded, so the
/// child must not allocate or take locks. With `write_hole`, it also writes a word
/// into page [`HOLE`] and reports it and the next word as read back. After its report
/// it waits for a last byte (or end of file) before it exits.
fn owner_child(sock: RawFd, blocking_uffd: bool, write_hole: bool) -> ! {
    // SAFETY: raw system calls on descriptors and memory of this process only.
    unsafe {
        let flags = if blocking_uffd {
            libc::O_CLOEXEC
        } else {
            libc::O_CLOEXEC | libc::O_NONBLOCK
        };
        let u = libc::syscall(libc::SYS_userfaultfd, flags) as i32;
        let mut api = sys::UffdioApi {
            api: sys::UFFD_API,
            features: sys::UFFD_FEATURE_EVENT_REMOVE,
            ioctls: 0,
        };
        if u < 0 || libc::ioctl(u, sys::UFFDIO_API as _, &mut api) < 0 {
            libc::_exit(10);
        }
        let len = (PAGES * PS) as usize;
        let mem = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        let mut reg = sys::UffdioRegister {
            range: sys::UffdioRange {
                start: mem as u64,
                len: len as u64,
            },
            mode: sys::UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        if mem == libc::MAP_FAILED || libc::ioctl(u, sys::UFFDIO_REGISTER as _, &mut reg) < 0 {
            libc::_exit(11);
        }
        let addr = mem as u64;
        if send_fd(sock, u, addr) < 0 {
            libc::_exit(12);
        }
        libc::close(u);
        // Wait for the page server, touch one page, report what it holds, exit.
        let mut go = 0u8;
        if libc::read(sock, (&mut go as *mut u8).cast(), 1) != 1 {
            libc::_exit(13);
        }
        let mut v = [
            std::ptr::read_volatile((addr + TOUCHED * PS) as *const u64),
            0,
            0,
        ];
        if write_hole {
            let hole = (addr + HOLE * PS) as *mut u64;
            std::ptr::write_volatile(hole, HOLE_MARK);
            v[1] = std::ptr::read_volatile(hole);
            v[2] = std::ptr::read_volatile(hole.add(1));
        }
        libc::write(sock, v.as_ptr().cast(), 24);
        libc::read(sock, (&mut go as *mut u8).cast(), 1);
        libc::_exit(0);
    }
}

/// Sends `fd` and `addr` in one message. Raw calls only (see `owner_child`).
unsafe fn send_fd(sock: RawFd, fd: RawFd, addr: u64) -> isize {
    let mut payload = addr;
    let mut iov = libc::iovec {
        iov_base: (&mut payload as *mut u64).cast(),
        iov_len: 8,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: the msghdr points at live stack buffers; the control buffer has room for
    // one SCM_RIGHTS header with one descriptor (CMSG_SPACE(4) = 24 <= 32 bytes).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::copy_nonoverlapping((&fd as *const RawFd).cast::<u8>(), libc::CMSG_DATA(c), 4);
        libc::sendmsg(sock, &msg, 0)
    }
}

fn recv_fd(sock: RawFd) -> (OwnedFd, u64) {
    let mut addr = 0u64;
    let mut iov = libc::iovec {
        iov_base: (&mut addr as *mut u64).cast(),
        iov_len: 8,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: as in `send_fd`; the received descriptor is new and owned by us.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        assert_eq!(
            libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC),
            8,
            "recvmsg"
        );
        let c = libc::CMSG_FIRSTHDR(&msg);
        assert!(
            !c.is_null() && (*c).cmsg_type == libc::SCM_RIGHTS,
            "no descriptor received"
        );
        let mut fd: RawFd = -1;
        std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c), (&mut fd as *mut RawFd).cast::<u8>(), 4);
        (OwnedFd::from_raw_fd(fd), addr)
    }
}

/// What a recording of the owner wrote: the working set while the owner lived, and
/// after it had exited, each with the error of the page-map scan, if any.
struct Recorded {
    alive: (Vec<(u64, bool)>, Option<PagerError>),
    exited: (Vec<(u64, bool)>, Option<PagerError>),
}

/// A forked child owns the memory and sends its userfaultfd; we serve it. Returns the
/// stats once the child has exited. With `holes`, the memory file's pages from
/// [`HOLE`] on are holes and the child writes one of them. With `record`, the server
/// records, and writes the working set before the child exits and after.
fn run_owner_exits(
    blocking_uffd: bool,
    watch_pid: bool,
    holes: bool,
    record: bool,
) -> (PagerStats, Option<Recorded>) {
    let mem = memory_file("owner", PAGES, |i| holes && i >= HOLE);
    let ws = TempPath::new("owner.ws");
    let write_ws = |server: &PageServer| {
        let scan = server.scan_touched_holes().err();
        server.write_ws(ws.path()).unwrap();
        let memory = MemoryFile::open(mem.path()).unwrap();
        let set = reap_pager::WorkingSet::load(ws.path(), &memory, PS).unwrap();
        let pages = set.pages().map(|p| (p.offset / PS, p.zero)).collect();
        (pages, scan)
    };
    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into `sv`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: fork; the child runs only raw system calls and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        owner_child(sv[1], blocking_uffd, holes);
    }
    // SAFETY: the parent's copy of the child's end is not used.
    unsafe { libc::close(sv[1]) };
    // SAFETY: `sv[0]` is ours; OwnedFd closes it at the end of the test.
    let sock = unsafe { OwnedFd::from_raw_fd(sv[0]) };
    let sock_fd = std::os::fd::AsRawFd::as_raw_fd(&sock);

    let (fd, addr) = recv_fd(sock_fd);
    let mut uffd = Uffd::from_fd(fd).unwrap();
    if watch_pid {
        uffd = uffd.with_owner_pid(pid).unwrap();
    }
    let region = Region {
        host_addr: addr,
        len: PAGES * PS,
        file_offset: 0,
        page_size: PS,
    };
    let server = PageServer::start(
        uffd,
        vec![region],
        MemoryFile::open(mem.path()).unwrap(),
        if record { Mode::Record } else { Mode::Lazy },
    )
    .unwrap();

    // The holes were unregistered in the child's address space, through the
    // descriptor it sent.
    let registered = uffd_registered(Some(pid), addr, addr + PAGES * PS);
    if holes {
        assert_eq!(registered, vec![(addr, addr + HOLE * PS)]);
    } else {
        assert_eq!(registered, vec![(addr, addr + PAGES * PS)]);
    }

    // The child touches a page of its own memory; we serve it from the file.
    let mut v = [0u64; 3];
    // SAFETY: 1-byte write and 24-byte read on our socket, from/to live stack buffers.
    unsafe {
        assert_eq!(libc::write(sock_fd, [1u8].as_ptr().cast(), 1), 1);
        assert_eq!(libc::read(sock_fd, v.as_mut_ptr().cast(), 24), 24);
    }
    assert_eq!(v[0].to_le_bytes(), file_page(mem.path(), TOUCHED)[..8]);
    if holes {
        // The hole was the kernel's to fill: a zero page, writable.
        assert_eq!((v[1], v[2]), (HOLE_MARK, 0));
    }
    let alive = record.then(|| write_ws(&server));
    // SAFETY: a 1-byte write on our socket from a live buffer.
    assert_eq!(unsafe { libc::write(sock_fd, [1u8].as_ptr().cast(), 1) }, 1);
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );

    // The stop is announced on `stopped_event`, which a caller can poll.
    let started = Instant::now();
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&server.stopped_event()),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one live pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(n, 1, "the fault loop did not notice its owner's exit");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!server.is_running());
    assert_eq!(server.stop_reason(), Some(StopReason::OwnerExited));
    let recorded = alive.map(|alive| Recorded {
        alive,
        exited: write_ws(&server),
    });
    let s = server.stop();
    assert_eq!(s.lazy_faults_file, 1);
    assert_eq!(s.stopped, Some(StopReason::OwnerExited));
    (s, recorded)
}

#[test]
fn owner_exit_stops_the_fault_loop() {
    run_owner_exits(false, false, false, false);
}

#[test]
fn owner_exit_stops_the_fault_loop_through_its_pidfd() {
    run_owner_exits(false, true, false, false);
}

#[test]
fn received_blocking_uffd_is_made_nonblocking_and_served() {
    run_owner_exits(true, false, false, false);
}

#[test]
fn received_uffd_holes_are_unregistered_in_the_owner() {
    let (s, _) = run_owner_exits(false, true, true, false);
    assert_eq!(s.hole_ranges_unregistered, 1);
    assert_eq!(s.hole_bytes_unregistered, (PAGES - HOLE) * PS);
    assert_eq!(s.lazy_faults_zero, 0);
}

#[test]
fn recording_finds_the_hole_its_owner_wrote_in_the_owners_page_map() {
    let (s, r) = run_owner_exits(false, true, true, true);
    let r = r.unwrap();
    // While the owner lives: the page that faulted, then the hole it wrote.
    assert!(r.alive.1.is_none(), "{:?}", r.alive.1);
    assert_eq!(r.alive.0, vec![(TOUCHED, false), (HOLE, true)]);
    // Once it has exited, its page map is gone: the scan fails, and the hole found
    // before stays in the set.
    assert!(
        matches!(
            r.exited.1,
            Some(PagerError::ScanHoles(PagemapError::OwnerExited { .. }))
        ),
        "{:?}",
        r.exited.1
    );
    assert_eq!(r.exited.0, r.alive.0);
    assert_eq!((s.recorded_pages, s.recorded_hole_pages), (1, 1));
}

#[test]
fn recording_without_the_owners_pid_lists_the_faulting_pages_only() {
    let (s, r) = run_owner_exits(false, false, true, true);
    let r = r.unwrap();
    assert!(
        matches!(
            r.alive.1,
            Some(PagerError::ScanHoles(PagemapError::UnknownOwner))
        ),
        "{:?}",
        r.alive.1
    );
    assert_eq!(r.alive.0, vec![(TOUCHED, false)]);
    assert_eq!((s.recorded_pages, s.recorded_hole_pages), (1, 0));
}
