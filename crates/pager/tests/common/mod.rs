//! Helpers shared by the integration tests: temp files, anonymous mappings registered
//! with a userfaultfd, memory files with known contents and holes, and a toucher thread.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use reap_pager::{MemoryFile, Mode, PAGE_4K, PageServer, Region, ServeOptions, Uffd};

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

/// Writes `value` into the first word of page `i` of the mapping (faulting it in), then
/// reads the whole page back.
pub fn write_page(base: u64, i: u64, value: u64) -> Vec<u8> {
    // SAFETY: the word is inside a live mapping of the test; a missing page blocks until
    // the page server fills it (or the kernel, for unregistered memory).
    unsafe { std::ptr::write_volatile((base + i * PS) as *mut u64, value) };
    read_page(base, i)
}

/// Writes a marker into each page of `order` from another thread (see [`write_page`];
/// the marker of page `i` is [`marker`]`(i)`), and returns each page's contents as read
/// back then.
pub fn write_touch(m: &Mapping, order: &[u64]) -> Vec<Vec<u8>> {
    let base = m.addr;
    let order = order.to_vec();
    std::thread::spawn(move || {
        order
            .iter()
            .map(|&i| write_page(base, i, marker(i)))
            .collect()
    })
    .join()
    .unwrap()
}

/// The word [`write_touch`] writes into page `i`.
pub fn marker(i: u64) -> u64 {
    0x5eed_0000_0000_0000 | i
}

/// Whether `page` is a zero page with `marker(i)` written into its first word.
pub fn is_marked_zero_page(page: &[u8], i: u64) -> bool {
    page[..8] == marker(i).to_le_bytes() && page[8..].iter().all(|&b| b == 0)
}

/// The parts of `[start, end)` of process `pid`'s address space (this process if
/// `None`) that are registered with a userfaultfd in MISSING mode (`um` in the
/// `VmFlags` of `/proc/PID/smaps`), merged, in address order.
pub fn uffd_registered(pid: Option<i32>, start: u64, end: u64) -> Vec<(u64, u64)> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/smaps"),
        None => "/proc/self/smaps".to_string(),
    };
    let smaps = std::fs::read_to_string(path).unwrap();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut vma = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            vma = Some((a, b));
        } else if let Some(flags) = line.strip_prefix("VmFlags:")
            && let Some((a, b)) = vma.take()
            && flags.split_whitespace().any(|f| f == "um")
        {
            let (a, b) = (a.max(start), b.min(end));
            if a >= b {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => out.push((a, b)),
            }
        }
    }
    out
}

/// Faults queued on `uffd` that no reader has taken yet (`pending` in its fdinfo).
pub fn pending_faults(uffd: &Uffd) -> u64 {
    let fd = std::os::fd::AsRawFd::as_raw_fd(uffd);
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("pending:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
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

/// [`start`] with `options`.
pub fn start_with(
    uffd: Uffd,
    regions: Vec<Region>,
    mem: &TempPath,
    mode: Mode,
    options: ServeOptions,
) -> PageServer {
    let memory = MemoryFile::open(mem.path()).unwrap();
    PageServer::start_with(uffd, regions, memory, mode, options).unwrap()
}

/// How many pages of `order` are holes of the memory file at `mem`.
pub fn holes_among(mem: &Path, order: &[u64]) -> u64 {
    let memory = MemoryFile::open(mem).unwrap();
    order
        .iter()
        .filter(|&&i| memory.is_hole(i * PS, PS))
        .count() as u64
}
