//! Lazy, record and prefetch modes on anonymous memory registered with a userfaultfd,
//! touched from another thread (no VM needed).

mod common;

use common::*;
use reap_pager::ws::WorkingSet;
use reap_pager::{Holes, MemoryFile, Mode, PageServer, Region, ServeOptions, Uffd};

const PAGES: u64 = 256;

/// Pages 100..140 are holes, and every page ≡ 7 (mod 16).
fn is_hole(i: u64) -> bool {
    (100..140).contains(&i) || i % 16 == 7
}

fn count_holes(pages: &[u64]) -> u64 {
    pages.iter().filter(|&&i| is_hole(i)).count() as u64
}

/// Runs of consecutive hole pages among `0..PAGES`.
fn hole_runs() -> u64 {
    (0..PAGES)
        .filter(|&i| is_hole(i) && (i == 0 || !is_hole(i - 1)))
        .count() as u64
}

fn served() -> ServeOptions {
    ServeOptions::default().holes(Holes::Served)
}

#[test]
fn lazy_serves_every_page_from_the_memory_file_in_any_order() {
    let mem = memory_file("lazy", PAGES, is_hole);
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    let mut order: Vec<u64> = (0..PAGES).collect();
    Rng(1).shuffle(&mut order);
    let got = touch(&m, &order);
    assert_pages_match_file(mem.path(), &order, &got);
    let s = server.stop();
    let holes = count_holes(&order);
    assert_eq!(s.lazy_faults_file, PAGES - holes);
    // The holes were unregistered: the kernel filled them, the server saw none.
    assert_eq!(s.lazy_faults_zero, 0);
    assert_eq!(s.hole_ranges_unregistered, hole_runs());
    assert_eq!(s.hole_bytes_unregistered, holes * PS);
    assert_eq!((s.hole_ranges_served, s.hole_unregister_errors), (0, 0));
    assert_eq!(s.bytes_read_lazy, (PAGES - holes) * PS);
    assert_eq!(s.prefetched_pages, 0);
    assert_eq!(s.stopped, Some(reap_pager::StopReason::Requested));
}

#[test]
fn served_holes_come_back_as_zeros_without_any_read() {
    // A mostly empty memory file: data only in the first and last page.
    let mem = memory_file("holes", PAGES, |i| i != 0 && i != PAGES - 1);
    let (uffd, m, regions) = registered(PAGES);
    let memory = MemoryFile::open(mem.path()).unwrap();
    assert_eq!(memory.data_bytes(), 2 * PS);
    let server = PageServer::start_with(uffd, regions, memory, Mode::Lazy, served()).unwrap();
    let order: Vec<u64> = (1..PAGES - 1).rev().collect();
    let got = touch(&m, &order);
    assert!(got.iter().all(|p| p.iter().all(|&b| b == 0)));
    let s = server.stats();
    assert_eq!(s.holes, "served");
    assert_eq!((s.hole_ranges_served, s.hole_ranges_unregistered), (1, 0));
    assert_eq!(s.lazy_faults_zero, PAGES - 2);
    assert_eq!(s.lazy_faults_file, 0);
    assert_eq!(
        s.bytes_read_lazy, 0,
        "holes must be served without reading the file"
    );
    // The data pages still come from the file.
    let got = touch(&m, &[0, PAGES - 1]);
    assert_pages_match_file(mem.path(), &[0, PAGES - 1], &got);
    assert_eq!(server.stop().bytes_read_lazy, 2 * PS);
}

#[test]
fn record_writes_a_ws_whose_order_matches_the_touches() {
    let mem = memory_file("record", PAGES, is_hole);
    let ws_path = TempPath::new("record.ws");
    let (uffd, m, regions) = registered(PAGES);
    // Holes served, so that they are recorded too (as zero pages).
    let server = start_with(uffd, regions, &mem, Mode::Record, served());
    // Includes holes, and page 5 twice (recorded once).
    let order = [5, 200, 3, 101, 4, 250, 7, 5, 0, 120, 64];
    touch(&m, &order);
    let expected: Vec<u64> = [5, 200, 3, 101, 4, 250, 7, 0, 120, 64]
        .iter()
        .map(|i| i * PS)
        .collect();
    assert_eq!(server.recorded_offsets(), expected);
    let summary = server.write_ws(ws_path.path()).unwrap();
    assert_eq!(summary.pages, 10);
    assert_eq!(summary.zero_pages, 3, "pages 101, 7 and 120 are holes");
    assert_eq!(summary.file_len % 4096, 0);
    let memory = MemoryFile::open(mem.path()).unwrap();
    let ws = WorkingSet::load(ws_path.path(), &memory, PS).unwrap();
    let listed: Vec<u64> = ws.pages().map(|p| p.offset).collect();
    assert_eq!(listed, expected);
    for p in ws.pages() {
        assert_eq!(p.zero, is_hole(p.offset / PS), "page {}", p.offset / PS);
    }
    let s = server.stop();
    assert_eq!(s.recorded_pages, 10);
}

#[test]
fn recorded_ws_holds_the_snapshot_contents_not_the_guests_later_writes() {
    let mem = memory_file("record-writes", PAGES, is_hole);
    let ws_path = TempPath::new("record-writes.ws");
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Record);
    let order = [10, 11, 12, 50];
    touch(&m, &order);
    // The guest scribbles over the pages it touched.
    for &i in &order {
        // SAFETY: the pages are present now; the mapping is live.
        unsafe { std::ptr::write_bytes((m.page_addr(i)) as *mut u8, 0xee, PS as usize) };
    }
    server.write_ws(ws_path.path()).unwrap();
    let memory = MemoryFile::open(mem.path()).unwrap();
    let ws = WorkingSet::load(ws_path.path(), &memory, PS).unwrap();
    for (k, &i) in order.iter().enumerate() {
        let stored = &ws.data()[k * PS as usize..(k + 1) * PS as usize];
        assert!(stored == file_page(mem.path(), i).as_slice(), "page {i}");
    }
    server.stop();
}

/// Records `order` into a WS file and returns it. The holes are served during the
/// recording, so that the touched ones are in the set as zero pages.
fn record(mem: &TempPath, order: &[u64]) -> TempPath {
    let ws_path = TempPath::new("ws");
    let (uffd, m, regions) = registered(PAGES);
    let server = start_with(uffd, regions, mem, Mode::Record, served());
    touch(&m, order);
    server.write_ws(ws_path.path()).unwrap();
    server.stop();
    ws_path
}

fn prefetch(mem: &TempPath, ws: &TempPath) -> (PageServer, Mapping) {
    prefetch_with(mem, ws, ServeOptions::default())
}

fn prefetch_with(mem: &TempPath, ws: &TempPath, options: ServeOptions) -> (PageServer, Mapping) {
    let (uffd, m, regions) = registered(PAGES);
    let mode = Mode::Prefetch {
        ws: ws.path().to_path_buf(),
    };
    (start_with(uffd, regions, mem, mode, options), m)
}

fn scattered(seed: u64, n: usize) -> Vec<u64> {
    let mut all: Vec<u64> = (0..PAGES).collect();
    Rng(seed).shuffle(&mut all);
    all.truncate(n);
    all
}

#[test]
fn prefetch_of_the_recorded_touches_serves_no_lazy_fault() {
    let mem = memory_file("prefetch-same", PAGES, is_hole);
    let order = scattered(7, 120);
    let ws = record(&mem, &order);
    let (server, m) = prefetch(&mem, &ws);
    // The install goes on after start returns; its counters are final after this.
    server.wait_installed();
    let installed = server.stats();
    let holes = count_holes(&order);
    assert!(holes > 0);
    assert_eq!(installed.prefetched_pages, order.len() as u64 - holes);
    // The set's zero pages are holes: installed (runs of 8 pages or more), or
    // unregistered with their hole and left to the kernel (shorter runs).
    assert_eq!(
        installed.prefetched_zero_pages + installed.ws_zero_pages_unregistered,
        holes
    );
    assert!(installed.hole_ranges_unregistered > 0);
    assert!(!installed.prefetch_fell_back);
    assert_eq!(
        installed.bytes_read_fetch,
        std::fs::metadata(ws.path()).unwrap().len()
    );
    let got = touch(&m, &order);
    assert_pages_match_file(mem.path(), &order, &got);
    // The zero pages are writable.
    let zeros: Vec<u64> = order.iter().copied().filter(|&i| is_hole(i)).collect();
    let written = write_touch(&m, &zeros);
    for (&i, page) in zeros.iter().zip(&written) {
        assert!(is_marked_zero_page(page, i), "page {i}");
    }
    let s = server.stop();
    assert_eq!(s.lazy_faults_file + s.lazy_faults_zero, 0);
    assert_eq!(s.bytes_read_lazy, 0);
}

#[test]
fn prefetch_then_other_touches_faults_exactly_the_new_pages() {
    let mem = memory_file("prefetch-other", PAGES, is_hole);
    let recorded = scattered(11, 100);
    let ws = record(&mem, &recorded);
    // Half of the recorded pages, and 40 pages that were not recorded.
    let mut order: Vec<u64> = recorded[..50].to_vec();
    let new: Vec<u64> = (0..PAGES)
        .filter(|i| !recorded.contains(i))
        .take(40)
        .collect();
    order.extend(&new);
    Rng(3).shuffle(&mut order);
    let new_holes = count_holes(&new);
    assert!(new_holes > 0);
    for (options, zero_faults) in [(ServeOptions::default(), 0), (served(), new_holes)] {
        let (server, m) = prefetch_with(&mem, &ws, options);
        let got = touch(&m, &order);
        assert_pages_match_file(mem.path(), &order, &got);
        let s = server.stop();
        assert_eq!(s.lazy_faults_file, new.len() as u64 - new_holes);
        // Holes outside the set: filled by the kernel, or served as zero pages.
        assert_eq!(s.lazy_faults_zero, zero_faults, "holes {}", s.holes);
    }
}

#[test]
fn install_uses_one_ioctl_per_contiguous_run() {
    let mem = memory_file("runs", PAGES, |_| false);
    // Three runs in fault order: 10..20, 40..45, 30..33.
    let order: Vec<u64> = (10..20).chain(40..45).chain(30..33).collect();
    let ws = record(&mem, &order);
    let (server, m) = prefetch(&mem, &ws);
    let s = server.stats();
    assert_eq!(s.install_ioctls, 3);
    assert_eq!(s.prefetched_pages, order.len() as u64);
    let got = touch(&m, &order);
    assert_pages_match_file(mem.path(), &order, &got);
    assert_eq!(server.stop().lazy_faults_file, 0);
}

#[test]
fn regions_map_file_offsets_that_are_not_in_address_order() {
    // Two mappings: the first holds file pages 64..128, the second file pages 0..64.
    let mem = memory_file("regions", 128, |i| i % 10 == 3);
    let uffd = Uffd::new().unwrap();
    let (a, b) = (Mapping::new(64 * PS), Mapping::new(64 * PS));
    uffd.register(a.addr, a.len).unwrap();
    uffd.register(b.addr, b.len).unwrap();
    let regions = vec![
        Region {
            host_addr: a.addr,
            len: a.len,
            file_offset: 64 * PS,
            page_size: PS,
        },
        Region {
            host_addr: b.addr,
            len: b.len,
            file_offset: 0,
            page_size: PS,
        },
    ];
    let server = start(uffd, regions, &mem, Mode::Record);
    let got_a = touch(&a, &[0, 13, 63]);
    let got_b = touch(&b, &[63, 0, 3]);
    assert_pages_match_file(mem.path(), &[64, 77, 127], &got_a);
    assert_pages_match_file(mem.path(), &[63, 0, 3], &got_b);
    // File pages 63 and 3 are holes, left to the kernel: not recorded.
    let expected: Vec<u64> = [64, 77, 127, 0].iter().map(|i| i * PS).collect();
    assert_eq!(server.recorded_offsets(), expected);
    server.stop();
}

#[test]
fn faults_taken_by_the_kernel_are_served() {
    // write(2) from registered memory: the kernel's copy_from_user takes the fault, as
    // KVM does when it reads guest memory. A user-mode-only userfaultfd would make the
    // write fail with EFAULT instead.
    let mem = memory_file("kernel", PAGES, is_hole);
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    let out = TempPath::new("kernel-out");
    let f = std::fs::File::create(out.path()).unwrap();
    // SAFETY: the source is 2 pages of the live mapping; the kernel faults them in.
    let n = unsafe {
        libc::write(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            m.page_addr(20) as *const libc::c_void,
            2 * PS as usize,
        )
    };
    assert_eq!(n, 2 * PS as isize);
    let written = std::fs::read(out.path()).unwrap();
    assert!(written[..PS as usize] == file_page(mem.path(), 20));
    assert!(written[PS as usize..] == file_page(mem.path(), 21));
    assert_eq!(server.stop().lazy_faults_file, 2);
}

#[test]
fn many_threads_faulting_the_same_pages_all_see_the_file_contents() {
    let mem = memory_file("threads", PAGES, is_hole);
    let (uffd, m, regions) = registered(PAGES);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    let order: Vec<u64> = (0..PAGES).collect();
    let base = m.addr;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mut o = order.clone();
            Rng(t).shuffle(&mut o);
            std::thread::spawn(move || {
                (
                    o.clone(),
                    o.iter().map(|&i| read_page(base, i)).collect::<Vec<_>>(),
                )
            })
        })
        .collect();
    for t in threads {
        let (o, got) = t.join().unwrap();
        assert_pages_match_file(mem.path(), &o, &got);
    }
    let s = server.stop();
    // Each data page is filled once; a fault that finds its page already there is only
    // woken. The holes are the kernel's.
    assert_eq!(s.lazy_faults_file, PAGES - count_holes(&order));
    assert_eq!(s.lazy_faults_zero, 0);
}

#[test]
fn stats_serialize_to_json() {
    let mem = memory_file("json", 16, |_| false);
    let (uffd, m, regions) = registered(16);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    touch(&m, &[1, 2]);
    let s = server.stop();
    let v: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(v["mode"], "lazy");
    assert_eq!(v["holes"], "kernel");
    assert_eq!(v["lazy_faults_file"], 2);
    assert_eq!(v["stopped"]["reason"], "requested");
}

#[test]
fn write_ws_outside_record_mode_is_an_error() {
    let mem = memory_file("notrec", 16, |_| false);
    let (uffd, _m, regions) = registered(16);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    let ws = TempPath::new("notrec.ws");
    assert!(matches!(
        server.write_ws(ws.path()),
        Err(reap_pager::PagerError::NotRecording)
    ));
    assert!(!ws.path().exists());
}
