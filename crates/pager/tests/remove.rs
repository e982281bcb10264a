//! `madvise(MADV_DONTNEED)` on registered memory: the range reads back as zeros,
//! never as snapshot data, whether or not it had been served before.

mod common;

use common::*;
use reap_pager::{MemoryFile, Mode, PageServer};

const PAGES: u64 = 64;

fn dontneed(m: &Mapping, first: u64, pages: u64) {
    // SAFETY: drops pages of the test's own live mapping; nothing holds references
    // into it. With UFFD_FEATURE_EVENT_REMOVE this blocks until the fault loop has read
    // the event.
    let rc = unsafe {
        libc::madvise(
            m.page_addr(first) as *mut libc::c_void,
            (pages * PS) as usize,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0, "madvise");
}

#[test]
fn dontneed_on_served_pages_reads_back_as_zeros() {
    let mem = memory_file("dontneed", PAGES, |_| false);
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    let all: Vec<u64> = (0..16).collect();
    let got = touch(&m, &all);
    assert_pages_match_file(mem.path(), &all, &got);
    dontneed(&m, 4, 8);
    let again = touch(&m, &all);
    for (i, page) in all.iter().zip(&again) {
        if (4..12).contains(i) {
            assert!(
                page.iter().all(|&b| b == 0),
                "page {i} was dropped and must read as zeros"
            );
        } else {
            assert!(*page == file_page(mem.path(), *i), "page {i} was kept");
        }
    }
    let s = server.stop();
    assert_eq!(s.remove_events, 1);
    assert_eq!(s.lazy_faults_file, 16);
    assert_eq!(s.lazy_faults_zero, 8);
}

#[test]
fn dontneed_on_never_served_pages_reads_back_as_zeros() {
    let mem = memory_file("dontneed-untouched", PAGES, |_| false);
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Record);
    dontneed(&m, 32, 16);
    let order: Vec<u64> = (30..50).collect();
    let got = touch(&m, &order);
    for (i, page) in order.iter().zip(&got) {
        if (32..48).contains(i) {
            assert!(page.iter().all(|&b| b == 0), "page {i}");
        } else {
            assert!(*page == file_page(mem.path(), *i), "page {i}");
        }
    }
    // Dropped pages are not part of the working set: their snapshot contents are
    // never what the guest sees.
    let recorded: Vec<u64> = server.recorded_offsets().iter().map(|o| o / PS).collect();
    assert_eq!(recorded, vec![30, 31, 48, 49]);
    let s = server.stop();
    assert_eq!((s.lazy_faults_file, s.lazy_faults_zero), (4, 16));
}

#[test]
fn dontneed_after_prefetch_reads_back_as_zeros() {
    let mem = memory_file("dontneed-prefetch", PAGES, |_| false);
    let ws = TempPath::new("dontneed-prefetch.ws");
    let memory = MemoryFile::open(mem.path()).unwrap();
    let offsets: Vec<u64> = (0..PAGES).map(|i| i * PS).collect();
    reap_pager::ws::write_ws(ws.path(), PS, &offsets, &memory).unwrap();
    let (uffd, m, regions) = registered(PAGES);
    let mode = Mode::Prefetch {
        ws: ws.path().to_path_buf(),
    };
    let server = PageServer::start(uffd, regions, memory, mode).unwrap();
    server.wait_installed();
    assert_eq!(server.stats().prefetched_pages, PAGES);
    dontneed(&m, 10, 5);
    let got = touch(&m, &[9, 10, 14, 15]);
    assert!(got[0] == file_page(mem.path(), 9));
    assert!(got[1].iter().all(|&b| b == 0) && got[2].iter().all(|&b| b == 0));
    assert!(got[3] == file_page(mem.path(), 15));
    let s = server.stop();
    assert_eq!(
        (s.lazy_faults_file, s.lazy_faults_zero, s.remove_events),
        (0, 2, 1)
    );
}

#[test]
fn dontneed_across_holes_and_data_reads_back_as_zeros() {
    // Pages 8..24 are holes (unregistered); the rest is data.
    let mem = memory_file("dontneed-holes", PAGES, |i| (8..24).contains(&i));
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    assert_eq!(server.stats().hole_ranges_unregistered, 1);
    let all: Vec<u64> = (0..32).collect();
    touch(&m, &all);
    let holes: Vec<u64> = (8..24).collect();
    write_touch(&m, &holes);
    // One madvise over data, the holes (written by now) and data again.
    dontneed(&m, 4, 24);
    let again = touch(&m, &all);
    for (i, page) in all.iter().zip(&again) {
        if (4..28).contains(i) {
            assert!(page.iter().all(|&b| b == 0), "page {i} must read as zeros");
        } else {
            assert!(*page == file_page(mem.path(), *i), "page {i} was kept");
        }
    }
    let s = server.stop();
    // Events come from the registered parts only; the dropped data pages touched again
    // are zero pages, the dropped holes the kernel's again.
    assert!(s.remove_events >= 1);
    assert_eq!(s.lazy_faults_file, 16);
    assert_eq!(s.lazy_faults_zero, 8);
}
