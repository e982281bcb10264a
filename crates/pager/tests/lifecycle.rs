//! Stopping a page server, explicitly or by dropping it, ends its thread and closes its
//! userfaultfd. One test only in this binary, so that no other test's server is
//! counted.

mod common;

use common::*;
use reap_pager::{Mode, StopReason};

fn pager_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "reap-pager")
        .count()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn stop_and_drop_end_the_fault_thread_and_close_the_uffd() {
    let mem = memory_file("lifecycle", 16, |_| false);
    assert_eq!(pager_threads(), 0);
    // The process's /dev/userfaultfd handle, opened on first use and kept, is not a
    // server's.
    drop(reap_pager::Uffd::new().unwrap());
    let fds_before = open_fds();

    let (uffd, m, regions) = registered(16);
    let server = start(uffd, regions, &mem, Mode::Lazy);
    assert_eq!(pager_threads(), 1);
    touch(&m, &[0]);
    let s = server.stop();
    assert_eq!(s.stopped, Some(StopReason::Requested));
    assert_eq!(pager_threads(), 0);
    // The userfaultfd, the eventfd and the memory file are closed.
    assert_eq!(open_fds(), fds_before);
    // With the userfaultfd closed the memory is no longer registered: a page that was
    // never served reads as plain anonymous memory (zeros), and page 0 keeps its data.
    assert!(touch(&m, &[5])[0].iter().all(|&b| b == 0));
    assert!(touch(&m, &[0])[0] == file_page(mem.path(), 0));
    drop(m);

    let (uffd, _m, regions) = registered(16);
    let server = start(uffd, regions, &mem, Mode::Record);
    assert_eq!(pager_threads(), 1);
    drop(server);
    assert_eq!(pager_threads(), 0);
}
