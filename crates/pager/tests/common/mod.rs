//! Helpers shared by the integration tests: temp files, anonymous mappings registered
//! with a userfaultfd, memory files with known contents and holes, and a toucher thread.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use reap_pager::{MemoryFile, Mode, PAGE_4K, PageServer, Region, Uffd};

pub const PS: u64 = PAGE_4K;

/// A unique path in the temp dir, removed on drop.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(name: &str) -> TempPath {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempPath(
            std::env::temp_dir().join(format!("reap-pager-test-{}-{n}-{name}", std::process::id())),
        )
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The contents of page `i` of a test memory file: every 8-byte word names the page and
/// the word, so a page served at the wrong offset is caught.
pub fn page_contents(i: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(PS as usize);
    for w in 0..PS / 8 {
        p.extend_from_slice(&((i << 32) | w | 0x8000_0000).to_le_bytes());
    }
    p
}

/// A memory file of `pages` pages; pages for which `hole(i)` are left as holes.
pub fn memory_file(name: &str, pages: u64, hole: impl Fn(u64) -> bool) -> TempPath {
    let t = TempPath::new(name);
    let f = File::create(t.path()).unwrap();
    f.set_len(pages * PS).unwrap();
    for i in (0..pages).filter(|&i| !hole(i)) {
        f.write_all_at(&page_contents(i), i * PS).unwrap();
    }
    f.sync_all().unwrap();
    t
}

/// What page `i` of `path` holds.
pub fn file_page(path: &Path, i: u64) -> Vec<u8> {
    let mut p = vec![0u8; PS as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut p, i * PS)
        .unwrap();
    p
}

/// A private anonymous mapping, unmapped on drop.
pub struct Mapping {
    pub addr: u64,
    pub len: u64,
}

impl Mapping {
    pub fn new(len: u64) -> Mapping {
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        Mapping {
            addr: p as u64,
            len,
        }
    }

    pub fn page_addr(&self, i: u64) -> u64 {
        self.addr + i * PS
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping created in `new`.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

/// A new userfaultfd with a fresh mapping of `pages` pages registered, and the region
/// that maps it to the memory file from offset 0.
pub fn registered(pages: u64) -> (Uffd, Mapping, Vec<Region>) {
    let uffd = Uffd::new().expect("userfaultfd (run as root)");
    let m = Mapping::new(pages * PS);
    uffd.register(m.addr, m.len).expect("UFFDIO_REGISTER");
    let region = Region {
        host_addr: m.addr,
        len: m.len,
        file_offset: 0,
        page_size: PS,
    };
    (uffd, m, vec![region])
}

/// Reads page `i` of the mapping (faulting it in).
pub fn read_page(base: u64, i: u64) -> Vec<u8> {
    let mut out = vec![0u8; PS as usize];
    for (w, chunk) in out.chunks_exact_mut(8).enumerate() {
        let p = (base + i * PS + w as u64 * 8) as *const u64;
        // SAFETY: `p` is inside a live mapping of the test; a missing page blocks until
        // the page server fills it.
        let v = unsafe { std::ptr::read_volatile(p) };
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Touches `order` (page indexes) from another thread, one after the other, and returns
/// each page's contents as read then.
pub fn touch(m: &Mapping, order: &[u64]) -> Vec<Vec<u8>> {
    let base = m.addr;
    let order = order.to_vec();
    std::thread::spawn(move || order.iter().map(|&i| read_page(base, i)).collect())
        .join()
        .unwrap()
}

/// Checks that the touched pages hold what `path` holds.
pub fn assert_pages_match_file(path: &Path, order: &[u64], got: &[Vec<u8>]) {
    for (&i, page) in order.iter().zip(got) {
        assert!(
            *page == file_page(path, i),
            "page {i} differs from the memory file"
        );
    }
}

/// A deterministic pseudo-random generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Starts a page server in `mode` over `uffd` and `regions`, serving the memory file
/// at `mem`.
pub fn start(uffd: Uffd, regions: Vec<Region>, mem: &TempPath, mode: Mode) -> PageServer {
    PageServer::start(uffd, regions, MemoryFile::open(mem.path()).unwrap(), mode).unwrap()
}
