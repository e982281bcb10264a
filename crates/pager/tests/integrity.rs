//! The memory file's checksums on every path that reads it: lazy faults, the recorded
//! working set's build, and the prefetch of a set built from a damaged file. A page
//! that fails is never installed; good pages and holes are served as before.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::*;
use reap_pager::ws;
use reap_pager::{MemoryFile, Mode, PageServer, PageSums, StopReason, WsWriteError};

const PAGES: u64 = 64;

fn is_hole(i: u64) -> bool {
    (20..30).contains(&i)
}

/// A memory file, its checksums, and (if `bad` is given) one byte of page `bad` flipped
/// after they were taken.
fn damaged(name: &str, bad: Option<u64>) -> (TempPath, PageSums) {
    let mem = memory_file(name, PAGES, is_hole);
    let sums = PageSums::compute(&MemoryFile::open(mem.path()).unwrap()).unwrap();
    if let Some(p) = bad {
        let f = File::options()
            .read(true)
            .write(true)
            .open(mem.path())
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, p * PS + 123).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], p * PS + 123).unwrap();
    }
    (mem, sums)
}

fn checked(mem: &TempPath, sums: &PageSums) -> MemoryFile {
    MemoryFile::open(mem.path())
        .unwrap()
        .with_sums(sums.clone())
        .unwrap()
}

fn wait_stopped(server: &PageServer) -> StopReason {
    let t = Instant::now();
    while server.is_running() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    server.stop_reason().unwrap()
}

#[test]
fn good_pages_and_holes_are_served_with_checksums() {
    let (mem, sums) = damaged("good", None);
    assert_eq!(sums.len() as u64, PAGES - 10, "holes have no checksum");
    let (uffd, m, regions) = registered(PAGES);
    let server = PageServer::start(uffd, regions, checked(&mem, &sums), Mode::Lazy).unwrap();
    let order: Vec<u64> = (0..PAGES).rev().collect();
    let got = touch(&m, &order);
    assert_pages_match_file(mem.path(), &order, &got);
    let s = server.stop();
    assert_eq!(s.lazy_faults_file, PAGES - 10);
    assert_eq!(s.stopped, Some(StopReason::Requested));
}

#[test]
fn a_bad_page_stops_the_server_and_is_never_installed() {
    let (mem, sums) = damaged("bad", Some(40));
    let (uffd, m, regions) = registered(PAGES);
    let server = PageServer::start(uffd, regions, checked(&mem, &sums), Mode::Lazy).unwrap();
    // Good pages and holes before it are served.
    let got = touch(&m, &[1, 25, 39]);
    assert_pages_match_file(mem.path(), &[1, 25, 39], &got);
    // The toucher of the bad page is released when the server closes its userfaultfd:
    // it reads the kernel's zero page, never the damaged contents.
    let got = touch(&m, &[40]);
    assert!(
        got[0].iter().all(|&b| b == 0),
        "the damaged page was installed"
    );
    let StopReason::Failed(why) = wait_stopped(&server) else {
        panic!("not a failure");
    };
    let path = mem.path().display().to_string();
    assert!(
        why.contains(&path) && why.contains("page at offset 0x28000 does not match its checksum"),
        "{why}"
    );
    assert_eq!(
        server.stats().lazy_faults_file,
        2,
        "pages 1 and 39; 25 is a hole"
    );
}

#[test]
fn a_working_set_is_never_built_from_a_bad_page() {
    let (mem, sums) = damaged("build", Some(7));
    let memory = checked(&mem, &sums);
    let ws_path = TempPath::new("build.ws");
    let e = ws::write_ws(ws_path.path(), PS, &[3, 7, 9].map(|p| p * PS), &memory).unwrap_err();
    assert!(matches!(e, WsWriteError::ReadMemory(_)), "{e:?}");
    assert!(e.to_string().contains("page at offset 0x7000"), "{e}");
    assert!(!ws_path.path().exists());
    // Good pages and holes build.
    ws::write_ws(ws_path.path(), PS, &[3, 25, 9].map(|p| p * PS), &memory).unwrap();
}

#[test]
fn a_set_built_from_a_damaged_file_is_refused_and_lazy_stops_at_the_page() {
    let (mem, sums) = damaged("prefetch", Some(5));
    // Built without checksums, from the damaged file, as an older build would have.
    let ws_path = TempPath::new("prefetch.ws");
    let unchecked = MemoryFile::open(mem.path()).unwrap();
    ws::write_ws(
        ws_path.path(),
        PS,
        &[4, 5, 6, 22].map(|p| p * PS),
        &unchecked,
    )
    .unwrap();
    let e = ws::WorkingSet::load(ws_path.path(), &checked(&mem, &sums), PS).unwrap_err();
    assert!(
        matches!(e, ws::WsError::Damaged { offset: 0x5000, .. }),
        "{e:?}"
    );

    let (uffd, m, regions) = registered(PAGES);
    let mode = Mode::Prefetch {
        ws: ws_path.path().to_path_buf(),
    };
    let server = PageServer::start(uffd, regions, checked(&mem, &sums), mode).unwrap();
    let s = server.stats();
    assert!(s.prefetch_fell_back && s.prefetched_pages == 0, "{s:?}");
    assert!(
        s.fallback_reason
            .unwrap()
            .contains("does not match the memory file's checksum")
    );
    let got = touch(&m, &[4, 5]);
    assert_pages_match_file(mem.path(), &[4], &got[..1]);
    assert!(got[1].iter().all(|&b| b == 0));
    assert!(matches!(wait_stopped(&server), StopReason::Failed(why) if why.contains("0x5000")));

    // A set whose zero entry is a page that held data is refused too.
    let (mem2, sums2) = damaged("prefetch-zero", None);
    let f = File::options().write(true).open(mem2.path()).unwrap();
    f.write_all_at(&vec![0u8; PS as usize], 8 * PS).unwrap();
    let zeroed = MemoryFile::open(mem2.path()).unwrap();
    ws::write_ws(ws_path.path(), PS, &[8 * PS], &zeroed).unwrap();
    let e = ws::WorkingSet::load(ws_path.path(), &checked(&mem2, &sums2), PS).unwrap_err();
    assert!(
        matches!(e, ws::WsError::Damaged { offset: 0x8000, .. }),
        "{e:?}"
    );
}

#[test]
fn a_record_server_stops_at_a_bad_page() {
    let (mem, sums) = damaged("record", Some(11));
    let (uffd, m, regions) = registered(PAGES);
    let server = PageServer::start(uffd, regions, checked(&mem, &sums), Mode::Record).unwrap();
    touch(&m, &[10]);
    touch(&m, &[11]);
    assert!(matches!(wait_stopped(&server), StopReason::Failed(_)));
    assert_eq!(
        server.recorded_offsets(),
        vec![10 * PS],
        "the bad page is not recorded"
    );
}
