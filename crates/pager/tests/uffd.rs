//! The userfaultfd wrapper: errno values, partial fills, descriptor checks.

mod common;

use common::*;
use reap_pager::{Errno, Event, FillError, Uffd, UffdError};
use std::os::fd::{AsRawFd, OwnedFd};

#[test]
fn new_uffd_is_nonblocking_and_close_on_exec() {
    let u = Uffd::new().unwrap();
    // SAFETY: F_GETFL/F_GETFD on a descriptor we own.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(u.as_raw_fd(), libc::F_GETFL),
            libc::fcntl(u.as_raw_fd(), libc::F_GETFD),
        )
    };
    assert_ne!(fl & libc::O_NONBLOCK, 0);
    assert_ne!(fdfl & libc::FD_CLOEXEC, 0);
    assert_ne!(
        u.features() & reap_pager::uffd::sys::UFFD_FEATURE_EVENT_REMOVE,
        0
    );
}

#[test]
fn register_allows_copy_and_zeropage() {
    let u = Uffd::new().unwrap();
    let m = Mapping::new(4 * PS);
    let ioctls = u.register(m.addr, m.len).unwrap();
    use reap_pager::uffd::sys::{RANGE_IOCTL_COPY, RANGE_IOCTL_ZEROPAGE};
    assert_eq!(
        ioctls & (RANGE_IOCTL_COPY | RANGE_IOCTL_ZEROPAGE),
        RANGE_IOCTL_COPY | RANGE_IOCTL_ZEROPAGE
    );
    assert_eq!(u.register(m.addr + 1, PS), Err(Errno::EINVAL));
}

#[test]
fn copy_onto_a_present_page_fails_with_eexist() {
    let u = Uffd::new().unwrap();
    let m = Mapping::new(4 * PS);
    u.register(m.addr, m.len).unwrap();
    let page = page_contents(1);
    u.copy(m.page_addr(0), &page, false).unwrap();
    assert_eq!(
        u.copy(m.page_addr(0), &page, false),
        Err(FillError {
            copied: 0,
            errno: Errno::EEXIST
        })
    );
    assert_eq!(
        u.zeropage(m.page_addr(0), PS, false),
        Err(FillError {
            copied: 0,
            errno: Errno::EEXIST
        })
    );
    assert!(read_page(m.addr, 0) == page);
}

#[test]
fn copy_stopped_by_a_present_page_reports_the_bytes_copied_and_eagain() {
    let u = Uffd::new().unwrap();
    let m = Mapping::new(4 * PS);
    u.register(m.addr, m.len).unwrap();
    u.zeropage(m.page_addr(2), PS, false).unwrap();
    let src: Vec<u8> = (0..4).flat_map(page_contents).collect();
    // Pages 0 and 1 go in, page 2 is there: 2 pages copied, then EAGAIN (not a huge
    // number of bytes).
    let e = u.copy(m.addr, &src, false).unwrap_err();
    assert_eq!(
        e,
        FillError {
            copied: 2 * PS,
            errno: Errno::EAGAIN
        }
    );
    assert!(read_page(m.addr, 1) == page_contents(1));
    assert!(read_page(m.addr, 2).iter().all(|&b| b == 0));
}

#[test]
fn no_events_are_pending_on_an_idle_uffd() {
    let u = Uffd::new().unwrap();
    let mut ev: Vec<Event> = Vec::new();
    assert_eq!(u.read_events(&mut ev), Ok(0));
    assert!(ev.is_empty());
}

#[test]
fn owner_alive_is_true_for_our_own_memory() {
    let u = Uffd::new().unwrap();
    let m = Mapping::new(PS);
    u.register(m.addr, m.len).unwrap();
    assert!(u.owner_alive(m.addr, PS));
    // The probe changed nothing: the page is still missing and can be filled.
    u.copy(m.addr, &page_contents(0), false).unwrap();
}

#[test]
fn owner_alive_is_true_on_an_unregistered_part_of_our_memory() {
    // The page server probes the first page of its first region, which may be a hole
    // it unregistered.
    let u = Uffd::new().unwrap();
    let m = Mapping::new(2 * PS);
    u.register(m.addr, m.len).unwrap();
    u.unregister(m.addr, PS).unwrap();
    assert!(u.owner_alive(m.addr, PS));
    // Filling an unregistered page is refused.
    assert_eq!(
        u.copy(m.addr, &page_contents(0), false).unwrap_err().errno,
        Errno::ENOENT
    );
}

#[test]
fn from_fd_refuses_a_descriptor_that_is_not_a_userfaultfd() {
    let f = std::fs::File::open("/dev/null").unwrap();
    let r = Uffd::from_fd(OwnedFd::from(f));
    match r {
        Err(UffdError::NotAUserfaultfd { kind, .. }) => assert_eq!(kind, "/dev/null"),
        other => panic!("{other:?}"),
    }
}
