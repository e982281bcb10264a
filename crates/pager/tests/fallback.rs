//! Damaged, truncated and foreign WS files are refused, and a prefetch restore falls
//! back to lazy serving with correct contents.

mod common;

use common::*;
use reap_pager::ws::{WorkingSet, write_ws};
use reap_pager::{MemoryFile, Mode, PageServer, WsError};
use std::os::unix::fs::FileExt;

const PAGES: u64 = 128;

fn is_hole(i: u64) -> bool {
    i % 8 == 5
}

/// A memory file and a good WS file for `ORDER`.
struct Setup {
    mem: TempPath,
    ws: TempPath,
}

const ORDER: [u64; 12] = [3, 4, 5, 6, 90, 91, 13, 21, 120, 0, 64, 65];

fn setup(name: &str) -> Setup {
    let mem = memory_file(name, PAGES, is_hole);
    let ws = TempPath::new(&format!("{name}.ws"));
    let memory = MemoryFile::open(mem.path()).unwrap();
    let offsets: Vec<u64> = ORDER.iter().map(|i| i * PS).collect();
    write_ws(ws.path(), PS, &offsets, &memory).unwrap();
    WorkingSet::load(ws.path(), &memory, PS).expect("the untouched file is valid");
    Setup { mem, ws }
}

/// Restores in prefetch mode with the (damaged) WS file and checks that it fell back:
/// nothing installed, every touched page served lazily with the file's contents.
fn assert_falls_back_to_lazy(s: &Setup, reason_contains: &str) {
    let (uffd, m, regions) = registered(PAGES);
    let mode = Mode::Prefetch {
        ws: s.ws.path().to_path_buf(),
    };
    let server =
        PageServer::start(uffd, regions, MemoryFile::open(s.mem.path()).unwrap(), mode).unwrap();
    let got = touch(&m, &ORDER);
    assert_pages_match_file(s.mem.path(), &ORDER, &got);
    let st = server.stop();
    assert!(st.prefetch_fell_back);
    let reason = st.fallback_reason.unwrap();
    assert!(
        reason.contains(reason_contains),
        "reason {reason:?} lacks {reason_contains:?}"
    );
    assert_eq!(st.prefetched_pages + st.prefetched_zero_pages, 0);
    // The holes are unregistered as in lazy mode: only the data pages fault.
    assert!(st.hole_ranges_unregistered > 0);
    assert_eq!(st.lazy_faults_zero, 0);
    assert_eq!(
        st.lazy_faults_file,
        ORDER.len() as u64 - holes_among(s.mem.path(), &ORDER)
    );
}

fn load(s: &Setup) -> Result<WorkingSet, WsError> {
    WorkingSet::load(s.ws.path(), &MemoryFile::open(s.mem.path()).unwrap(), PS)
}

#[test]
fn corrupt_ws_is_refused_and_restore_falls_back_to_lazy() {
    let s = setup("corrupt");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.ws.path())
        .unwrap();
    let len = f.metadata().unwrap().len();
    // One flipped byte inside the stored page contents.
    let mut b = [0u8; 1];
    std::fs::File::open(s.ws.path())
        .unwrap()
        .read_exact_at(&mut b, len - 1000)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0x01], len - 1000).unwrap();
    assert!(matches!(load(&s), Err(WsError::ChecksumMismatch { .. })));
    assert_falls_back_to_lazy(&s, "checksum");
}

#[test]
fn truncated_ws_is_refused_and_restore_falls_back_to_lazy() {
    let s = setup("truncated");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.ws.path())
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 4096).unwrap();
    assert!(matches!(load(&s), Err(WsError::Truncated { .. })));
    assert_falls_back_to_lazy(&s, "truncated");
}

#[test]
fn ws_cut_inside_its_header_is_refused() {
    let s = setup("cut-header");
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.ws.path())
        .unwrap()
        .set_len(40)
        .unwrap();
    assert!(matches!(load(&s), Err(WsError::Truncated { .. })));
    assert_falls_back_to_lazy(&s, "truncated");
}

#[test]
fn foreign_file_is_refused_and_restore_falls_back_to_lazy() {
    let s = setup("foreign");
    // Some other file of a plausible size: not a WS file.
    let mut junk = vec![0u8; 3 * 4096];
    let mut rng = Rng(99);
    for b in junk.iter_mut() {
        *b = rng.next() as u8;
    }
    std::fs::write(s.ws.path(), &junk).unwrap();
    assert!(matches!(load(&s), Err(WsError::BadMagic { .. })));
    assert_falls_back_to_lazy(&s, "not a working-set file");
}

#[test]
fn ws_of_another_snapshot_is_refused_and_restore_falls_back_to_lazy() {
    let s = setup("other-snapshot");
    // The same WS file against another memory file of the same length: other holes.
    let other = memory_file("other-snapshot-mem", PAGES, |i| i % 8 == 6);
    let other_setup = Setup {
        mem: other,
        ws: TempPath(s.ws.path().to_path_buf()),
    };
    assert!(matches!(
        load(&other_setup),
        Err(WsError::ForeignMemory { .. })
    ));
    assert_falls_back_to_lazy(&other_setup, "another memory file");
    std::mem::forget(s.ws); // removed through `other_setup`
}

#[test]
fn missing_ws_file_falls_back_to_lazy() {
    let s = setup("missing");
    std::fs::remove_file(s.ws.path()).unwrap();
    let reason = format!(
        "{}: cannot open the working-set file: ",
        s.ws.path().display()
    );
    assert_falls_back_to_lazy(&s, &reason);
}

#[test]
fn ws_that_does_not_fit_the_regions_falls_back_to_lazy() {
    // Recorded against the whole memory file, restored with a region that covers only
    // its first half: page 120 of the set lies in no region.
    let s = setup("regions");
    let (uffd, m, mut regions) = registered(PAGES);
    regions[0].len = 64 * PS;
    let mode = Mode::Prefetch {
        ws: s.ws.path().to_path_buf(),
    };
    let server =
        PageServer::start(uffd, regions, MemoryFile::open(s.mem.path()).unwrap(), mode).unwrap();
    let order = [3, 4, 13];
    let got = touch(&m, &order);
    assert_pages_match_file(s.mem.path(), &order, &got);
    let st = server.stop();
    assert!(st.prefetch_fell_back);
    assert!(st.fallback_reason.unwrap().contains("no memory region"));
    assert_eq!(st.prefetched_pages, 0);
}
