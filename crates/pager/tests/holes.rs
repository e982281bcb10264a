//! Holes of the memory file are unregistered from the userfaultfd at start
//! ([`Holes::Kernel`], the default): the kernel zero-fills them on first touch and the
//! server never sees a fault there. [`Holes::Served`] keeps the old behaviour.

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
use reap_pager::{Holes, Mode, PAGE_2M, Region, ServeOptions, Uffd};

const PAGES: u64 = 64;

/// Data in pages 0..4, 20..24 and 60..64; holes 4..20 and 24..60.
fn is_hole(i: u64) -> bool {
    !((0..4).contains(&i) || (20..24).contains(&i) || (60..64).contains(&i))
}

fn served() -> ServeOptions {
    ServeOptions::default().holes(Holes::Served)
}

#[test]
fn holes_are_unregistered_and_the_kernel_fills_them_on_first_touch() {
    let mem = memory_file("kernel", PAGES, is_hole);
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    // Only the data stays registered.
    assert_eq!(
        uffd_registered(None, m.addr, m.addr + m.len),
        vec![
            (m.page_addr(0), m.page_addr(4)),
            (m.page_addr(20), m.page_addr(24)),
            (m.page_addr(60), m.page_addr(64)),
        ]
    );
    let s = server.stats();
    assert_eq!(s.holes, "kernel");
    assert_eq!(s.hole_ranges_unregistered, 2);
    assert_eq!(s.hole_bytes_unregistered, (16 + 36) * PS);
    assert_eq!((s.hole_ranges_served, s.hole_unregister_errors), (0, 0));

    // Holes read as zeros and are writable; some are read first, some written first.
    let holes: Vec<u64> = (0..PAGES).filter(|&i| is_hole(i)).collect();
    let read = touch(&m, &holes[..10]);
    assert!(read.iter().all(|p| p.iter().all(|&b| b == 0)));
    let written = write_touch(&m, &holes);
    for (&i, page) in holes.iter().zip(&written) {
        assert!(is_marked_zero_page(page, i), "hole page {i}");
    }
    // None of it reached the server.
    let s = server.stats();
    assert_eq!((s.lazy_faults_zero, s.lazy_faults_file), (0, 0));
    assert_eq!(s.bytes_read_lazy, 0);

    // The data pages still come from the file, through the server.
    let data: Vec<u64> = (0..PAGES).filter(|&i| !is_hole(i)).collect();
    let got = touch(&m, &data);
    assert_pages_match_file(mem.path(), &data, &got);
    let s = server.stop();
    assert_eq!(s.lazy_faults_file, data.len() as u64);
    assert_eq!(s.lazy_faults_zero, 0);
}

#[test]
fn served_holes_stay_registered_and_are_filled_by_the_server() {
    let mem = memory_file("served", PAGES, is_hole);
    let (uffd, m, regions) = registered(PAGES);
    let server = start_with(uffd, regions, &mem, Mode::Lazy, served());
    assert_eq!(
        uffd_registered(None, m.addr, m.addr + m.len),
        vec![(m.addr, m.addr + m.len)]
    );
    let holes: Vec<u64> = (0..PAGES).filter(|&i| is_hole(i)).collect();
    // A zero page the server installed is writable too (the write faults once more,
    // in the kernel).
    let written = write_touch(&m, &holes);
    for (&i, page) in holes.iter().zip(&written) {
        assert!(is_marked_zero_page(page, i), "hole page {i}");
    }
    let s = server.stop();
    assert_eq!(s.holes, "served");
    assert_eq!((s.hole_ranges_served, s.hole_ranges_unregistered), (2, 0));
    assert_eq!(s.hole_bytes_unregistered, 0);
    assert_eq!(s.lazy_faults_zero, holes.len() as u64);
    assert_eq!(s.lazy_faults_file, 0);
}

/// The pages of the WS file at `ws` for the memory file at `mem`: (page, zero), in
/// table order.
fn ws_pages(ws: &TempPath, mem: &TempPath, page_size: u64) -> Vec<(u64, bool)> {
    let memory = reap_pager::MemoryFile::open(mem.path()).unwrap();
    reap_pager::WorkingSet::load(ws.path(), &memory, page_size)
        .unwrap()
        .pages()
        .map(|p| (p.offset / page_size, p.zero))
        .collect()
}

#[test]
fn record_lists_the_data_pages_in_fault_order_then_the_holes_touched_in_address_order() {
    let mem = memory_file("record", PAGES, is_hole);
    let ws = TempPath::new("record.ws");
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Record);
    // Nothing touched yet: the page map shows no hole page.
    assert_eq!(server.scan_touched_holes().unwrap(), 0);
    // Data and holes interleaved; holes both read and written.
    let order = [30, 2, 5, 21, 40, 63, 0, 50];
    let got = touch(&m, &order);
    for (&i, page) in order.iter().zip(&got) {
        assert!(*page == file_page(mem.path(), i), "page {i}");
    }
    write_touch(&m, &[5, 41]);
    // Only the data pages fault.
    let expected: Vec<u64> = [2, 21, 63, 0].iter().map(|i| i * PS).collect();
    assert_eq!(server.recorded_offsets(), expected);
    assert_eq!(server.stats().lazy_faults_file, 4);
    assert!(server.recorded_hole_offsets().is_empty(), "before a scan");
    let summary = server.write_ws(ws.path()).unwrap();
    assert_eq!((summary.pages, summary.zero_pages), (9, 5));
    let holes = [5, 30, 40, 41, 50];
    assert_eq!(
        server.recorded_hole_offsets(),
        holes.iter().map(|i| i * PS).collect::<Vec<_>>()
    );
    let listed: Vec<(u64, bool)> = [2, 21, 63, 0]
        .map(|i| (i, false))
        .into_iter()
        .chain(holes.map(|i| (i, true)))
        .collect();
    assert_eq!(ws_pages(&ws, &mem, PS), listed);
    // Touched again, and more: the set grows, each page once.
    write_touch(&m, &[30, 6, 2]);
    assert_eq!(server.scan_touched_holes().unwrap(), 6);
    let summary = server.write_ws(ws.path()).unwrap();
    assert_eq!((summary.pages, summary.zero_pages), (10, 6));
    let s = server.stop();
    assert_eq!((s.recorded_pages, s.recorded_hole_pages), (4, 6));
    assert_eq!((s.lazy_faults_file, s.lazy_faults_zero), (4, 0));
    assert!(s.hole_scan_ns > 0);
}

#[test]
fn a_recorded_set_with_long_runs_of_holes_has_them_installed_by_the_next_prefetch() {
    let mem = memory_file("record-prefetch", PAGES, is_hole);
    let ws = TempPath::new("record-prefetch.ws");
    // The recording: two data pages read, a run of 10 hole pages written (fresh heap),
    // one more hole written and one only read.
    let run: Vec<u64> = (30..40).collect();
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Record);
    touch(&m, &[21, 2, 50]);
    write_touch(&m, &run);
    write_touch(&m, &[5]);
    let summary = server.write_ws(ws.path()).unwrap();
    assert_eq!((summary.pages, summary.data_pages), (14, 2));
    let listed: Vec<(u64, bool)> = [(21, false), (2, false), (5, true)]
        .into_iter()
        .chain(run.iter().map(|&i| (i, true)))
        .chain([(50, true)])
        .collect();
    assert_eq!(ws_pages(&ws, &mem, PS), listed);
    server.stop();

    // The next cold start installs the data pages and the long run of zeros; the two
    // isolated holes are left to the kernel.
    let (uffd, m, regions) = registered(PAGES);
    let mode = Mode::Prefetch {
        ws: ws.path().to_path_buf(),
    };
    let server = start(uffd, regions, &mem, mode);
    let s = server.stats();
    assert!(!s.prefetch_fell_back, "{:?}", s.fallback_reason);
    assert_eq!(s.prefetched_pages, 2);
    assert_eq!(
        (s.prefetched_zero_pages, s.ws_zero_pages_unregistered),
        (10, 2)
    );
    // The run was installed, registered and filled: present and writable before the
    // guest touches it.
    assert_eq!(
        uffd_registered(None, m.page_addr(30), m.page_addr(40)),
        vec![(m.page_addr(30), m.page_addr(40))]
    );
    for (&i, page) in run.iter().zip(&write_touch(&m, &run)) {
        assert!(is_marked_zero_page(page, i), "hole page {i}");
    }
    let got = touch(&m, &[21, 2, 5, 50]);
    assert_pages_match_file(mem.path(), &[21, 2, 5, 50], &got);
    let s = server.stop();
    assert_eq!((s.lazy_faults_file, s.lazy_faults_zero), (0, 0));
}

#[test]
fn record_with_served_holes_records_them_as_faults_and_scans_nothing() {
    let mem = memory_file("record-served", PAGES, is_hole);
    let ws = TempPath::new("record-served.ws");
    let (uffd, m, regions) = registered(PAGES);
    let server = start_with(uffd, regions, &mem, Mode::Record, served());
    touch(&m, &[30, 2, 5]);
    assert_eq!(server.scan_touched_holes().unwrap(), 0);
    server.write_ws(ws.path()).unwrap();
    assert_eq!(
        ws_pages(&ws, &mem, PS),
        vec![(30, true), (2, false), (5, true)]
    );
    let s = server.stop();
    assert_eq!((s.recorded_pages, s.recorded_hole_pages), (3, 0));
}

#[test]
fn scanning_the_holes_is_refused_unless_recording() {
    let mem = memory_file("scan-lazy", PAGES, is_hole);
    let (uffd, _m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    assert!(matches!(
        server.scan_touched_holes(),
        Err(reap_pager::PagerError::NotRecording)
    ));
}

#[test]
fn prefetch_keeps_long_zero_runs_of_the_set_registered_and_installs_them() {
    let mem = memory_file("prefetch", PAGES, is_hole);
    // Data pages 1, 2, 21; zero pages (holes) 10..13 and 45 (short runs) and 30..40 (a
    // run of 10 pages).
    let set: Vec<u64> = [1, 2, 10, 11, 12, 21, 45]
        .into_iter()
        .chain(30..40)
        .collect();
    let ws = TempPath::new("prefetch.ws");
    let memory = reap_pager::MemoryFile::open(mem.path()).unwrap();
    let offsets: Vec<u64> = set.iter().map(|i| i * PS).collect();
    reap_pager::ws::write_ws(ws.path(), PS, &offsets, &memory).unwrap();
    let kernel = ServeOptions::default();
    /// The options, zero pages installed, registered page ranges, hole ranges
    /// unregistered.
    type Case = (ServeOptions, u64, &'static [(u64, u64)], u64);
    let cases: [Case; 4] = [
        // The default: the long run is installed, the short ones go with their holes
        // (4..20, 24..30, 40..60).
        (
            kernel.clone(),
            10,
            &[(0, 4), (20, 24), (30, 40), (60, 64)],
            3,
        ),
        // Every zero page of the set installed: the holes split around them.
        (
            kernel.clone().min_installed_zero_run(0),
            14,
            &[(0, 4), (10, 13), (20, 24), (30, 40), (45, 46), (60, 64)],
            5,
        ),
        // None: all holes unregistered whole.
        (
            kernel.min_installed_zero_run(u64::MAX),
            0,
            &[(0, 4), (20, 24), (60, 64)],
            2,
        ),
        // Nothing unregistered, every zero page of the set installed.
        (served(), 14, &[(0, 64)], 0),
    ];
    for (options, installed, kept, ranges) in cases {
        let (uffd, m, regions) = registered(PAGES);
        let mode = Mode::Prefetch {
            ws: ws.path().to_path_buf(),
        };
        let holes = options.holes;
        let server = start_with(uffd, regions, &mem, mode, options.clone());
        let s = server.stats();
        assert!(!s.prefetch_fell_back);
        assert_eq!(s.prefetched_pages, 3);
        assert_eq!(
            (s.prefetched_zero_pages, s.ws_zero_pages_unregistered),
            (installed, 14 - installed),
            "{options:?}"
        );
        let expected: Vec<(u64, u64)> = kept
            .iter()
            .map(|&(a, b)| (m.page_addr(a), m.page_addr(b)))
            .collect();
        assert_eq!(
            uffd_registered(None, m.addr, m.addr + m.len),
            expected,
            "{options:?}"
        );
        assert_eq!(s.hole_ranges_unregistered, ranges, "{options:?}");
        if holes == Holes::Kernel {
            assert_eq!(s.hole_bytes_unregistered, (52 - installed) * PS);
        }
        // Everything reads right: the set without faults, the rest lazily (data) or
        // from the kernel or as zero pages (holes); every zero page is writable.
        let all: Vec<u64> = (0..PAGES).collect();
        let got = touch(&m, &all);
        assert_pages_match_file(mem.path(), &all, &got);
        let hole_pages: Vec<u64> = all.iter().copied().filter(|&i| is_hole(i)).collect();
        for (&i, page) in hole_pages.iter().zip(&write_touch(&m, &hole_pages)) {
            assert!(is_marked_zero_page(page, i), "hole page {i}");
        }
        let s = server.stop();
        assert_eq!(s.lazy_faults_file, 12 - 3);
        let served_zero = if holes == Holes::Kernel { 0 } else { 52 - 14 };
        assert_eq!(s.lazy_faults_zero, served_zero, "{options:?}");
    }
}

#[test]
fn zero_pages_of_the_set_that_are_data_are_installed_whatever_their_run() {
    // Page 2 holds zeros written to the file: data, not a hole.
    let mem = memory_file("zero-data", PAGES, is_hole);
    std::fs::OpenOptions::new()
        .write(true)
        .open(mem.path())
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[0; PS as usize], 2 * PS))
        .unwrap();
    let memory = reap_pager::MemoryFile::open(mem.path()).unwrap();
    assert!(!memory.is_hole(2 * PS, PS));
    let ws = TempPath::new("zero-data.ws");
    let summary = reap_pager::ws::write_ws(ws.path(), PS, &[2 * PS, 3 * PS], &memory).unwrap();
    assert_eq!(summary.zero_pages, 1);
    let (uffd, m, regions) = registered(PAGES);
    let mode = Mode::Prefetch {
        ws: ws.path().to_path_buf(),
    };
    let server = start(uffd, regions, &mem, mode);
    let s = server.stats();
    assert_eq!((s.prefetched_pages, s.prefetched_zero_pages), (1, 1));
    assert_eq!(s.ws_zero_pages_unregistered, 0);
    assert!(is_marked_zero_page(&write_touch(&m, &[2])[0], 2));
    let s = server.stop();
    assert_eq!(s.lazy_faults_file + s.lazy_faults_zero, 0);
}

#[test]
fn a_fault_waiting_on_a_hole_before_start_is_woken_by_the_unregister() {
    let mem = memory_file("pending", PAGES, is_hole);
    let (uffd, m, regions) = registered(PAGES);
    // Two threads fault before any server runs: one on a hole, one on data.
    let base = m.addr;
    let hole = std::thread::spawn(move || write_page(base, 33, marker(33)));
    let data = std::thread::spawn(move || read_page(base, 22));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending_faults(&uffd) < 2 {
        assert!(Instant::now() < deadline, "the faults never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    let server = start(uffd, regions, &mem, Mode::Lazy);
    assert!(is_marked_zero_page(&hole.join().unwrap(), 33));
    assert!(data.join().unwrap() == file_page(mem.path(), 22));
    let s = server.stop();
    // The hole's fault left the queue when it was woken: only the data page was served.
    assert_eq!((s.lazy_faults_file, s.lazy_faults_zero), (1, 0));
    assert_eq!(s.faults_already_present, 0);
}

#[test]
fn a_hole_the_kernel_refuses_to_unregister_is_served() {
    let mem = memory_file("refused", PAGES, is_hole);
    let (uffd, m, regions) = registered(PAGES);
    // Page 40, inside the hole 24..60, becomes a private file mapping, which cannot be
    // registered with a userfaultfd: the kernel refuses to unregister 24..60 as a whole
    // (EINVAL) and leaves it registered.
    let file = TempPath::new("refused-file");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(file.path())
        .unwrap();
    f.set_len(PS).unwrap();
    // SAFETY: replaces one page of the test's own mapping, which nothing references.
    let p = unsafe {
        libc::mmap(
            m.page_addr(40) as *mut libc::c_void,
            PS as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_eq!(p as u64, m.page_addr(40), "mmap");
    let server = start(uffd, regions, &mem, Mode::Lazy);
    let s = server.stats();
    assert_eq!(s.hole_ranges_unregistered, 1);
    assert_eq!(s.hole_bytes_unregistered, 16 * PS);
    assert_eq!((s.hole_ranges_served, s.hole_unregister_errors), (1, 1));
    let p = |i| m.page_addr(i);
    assert_eq!(
        uffd_registered(None, m.addr, m.addr + m.len),
        vec![(p(0), p(4)), (p(20), p(40)), (p(41), p(64))]
    );
    // The refused hole is served as zero pages; the unregistered one is the kernel's.
    let order: Vec<u64> = (4..60).filter(|&i| i != 40 && is_hole(i)).collect();
    for (&i, page) in order.iter().zip(&write_touch(&m, &order)) {
        assert!(is_marked_zero_page(page, i), "hole page {i}");
    }
    let s = server.stop();
    assert_eq!(s.lazy_faults_zero, 35);
    assert_eq!(s.lazy_faults_file, 0);
}

#[test]
fn only_the_largest_holes_are_unregistered_beyond_the_limit() {
    // Holes of 1, 3, 2 and 5 pages.
    let hole = |i: u64| matches!(i, 2 | 5..8 | 10..12 | 20..25);
    let mem = memory_file("limit", 32, hole);
    let (uffd, m, regions) = registered(32);
    let options = ServeOptions::default().max_hole_ranges(2);
    let server = start_with(uffd, regions, &mem, Mode::Lazy, options);
    let s = server.stats();
    assert_eq!((s.hole_ranges_unregistered, s.hole_ranges_served), (2, 2));
    assert_eq!(s.hole_bytes_unregistered, 8 * PS);
    let p = |i| m.page_addr(i);
    assert_eq!(
        uffd_registered(None, m.addr, m.addr + m.len),
        vec![(p(0), p(5)), (p(8), p(20)), (p(25), p(32))]
    );
    let order: Vec<u64> = (0..32).collect();
    let got = touch(&m, &order);
    assert_pages_match_file(mem.path(), &order, &got);
    let s = server.stop();
    // Holes 2 and 10..12 were served.
    assert_eq!(s.lazy_faults_zero, 3);
}

#[test]
fn holes_of_2m_regions_are_unregistered_in_whole_2m_pages() {
    // 2 MiB regions on ordinary anonymous memory (no hugetlbfs here): the pager fills
    // and unregisters whole 2 MiB pages all the same.
    const HUGE: u64 = PAGE_2M;
    let per = HUGE / PS;
    // Huge page 0: one 4 KiB block of data; 1: a hole; 2: all data; 3: a hole but for
    // its last 4 KiB.
    let hole = move |i: u64| match i / per {
        0 => i != 0,
        1 => true,
        2 => false,
        _ => i != 4 * per - 1,
    };
    let mem = memory_file("huge", 4 * per, hole);
    let uffd = Uffd::new().unwrap();
    let space = Mapping::new(5 * HUGE);
    let addr = space.addr.next_multiple_of(HUGE);
    uffd.register(addr, 4 * HUGE).unwrap();
    let region = Region {
        host_addr: addr,
        len: 4 * HUGE,
        file_offset: 0,
        page_size: HUGE,
    };
    let server = start(uffd, vec![region], &mem, Mode::Lazy);
    let s = server.stats();
    assert_eq!(s.hole_ranges_unregistered, 1);
    assert_eq!(s.hole_bytes_unregistered, HUGE);
    assert_eq!(
        uffd_registered(None, addr, addr + 4 * HUGE),
        vec![(addr, addr + HUGE), (addr + 2 * HUGE, addr + 4 * HUGE)]
    );
    // One 4 KiB page in each huge page, and a hole inside the first.
    let order = [0, 7, per + 3, 2 * per + 9, 4 * per - 1, 3 * per];
    let got = std::thread::spawn(move || {
        order
            .iter()
            .map(|&i| read_page(addr, i))
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert_pages_match_file(mem.path(), &order, &got);
    let s = server.stop();
    // Huge pages 0, 2 and 3, each filled from the file once.
    assert_eq!((s.lazy_faults_file, s.lazy_faults_zero), (3, 0));
    drop(space);
}

#[test]
fn a_recording_of_2m_regions_lists_a_hole_huge_page_touched_anywhere_in_it() {
    const HUGE: u64 = PAGE_2M;
    let per = HUGE / PS;
    // Huge page 0 holds data, 1 to 3 are holes.
    let mem = memory_file("huge-record", 4 * per, move |i| i >= per);
    let ws = TempPath::new("huge-record.ws");
    let uffd = Uffd::new().unwrap();
    let space = Mapping::new(5 * HUGE);
    let addr = space.addr.next_multiple_of(HUGE);
    uffd.register(addr, 4 * HUGE).unwrap();
    let region = Region {
        host_addr: addr,
        len: 4 * HUGE,
        file_offset: 0,
        page_size: HUGE,
    };
    let server = start(uffd, vec![region], &mem, Mode::Record);
    // Huge page 0 through a fault; in huge page 3 only its last 4 KiB block is
    // written; huge pages 1 and 2 are left alone.
    let order = [5, 4 * per - 1];
    std::thread::spawn(move || {
        for i in order {
            write_page(addr, i, marker(i));
        }
    })
    .join()
    .unwrap();
    assert_eq!(server.scan_touched_holes().unwrap(), 1);
    server.write_ws(ws.path()).unwrap();
    assert_eq!(ws_pages(&ws, &mem, HUGE), vec![(0, false), (3, true)]);
    server.stop();
    drop(space);
}
