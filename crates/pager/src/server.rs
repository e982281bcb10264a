//! The page server: a fault loop on its own thread, in lazy, record or prefetch mode.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;

use crate::buf::AlignedBuf;
use crate::memfile::MemoryFile;
use crate::num::{in_memory, nanos};
use crate::pagemap::{Owner, Pagemap, PagemapError};
use crate::region::{self, PAGE_2M, Region, RegionError, Regions};
use crate::uffd::{Errno, Event, FillError, Uffd};
use crate::ws::{self, WorkingSet, WsError, WsSummary, WsWriteError};

/// How often an idle fault loop checks that the memory's owner still exists, when no
/// owner pidfd tells it (milliseconds).
pub const IDLE_CHECK_MS: i32 = 100;

/// How guest memory is filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Every fault is served from the memory file (holes as zero pages).
    Lazy,
    /// Lazy, and the faulting pages are recorded in fault order for
    /// [`PageServer::write_ws`]. With [`Holes::Kernel`] holes do not fault: the hole
    /// pages the owner touched are found in its page map when the set is written
    /// ([`PageServer::scan_touched_holes`]) and listed after the faulting pages.
    Record,
    /// Before [`PageServer::start`] returns, the WS file is fetched with one `O_DIRECT`
    /// read and installed (one `UFFDIO_COPY` per contiguous run, zero pages copied from
    /// a zero buffer, except those [`Holes::Kernel`] leaves to the kernel); everything
    /// else is then served lazily.
    ///
    /// A WS file that is unreadable, damaged, foreign, or does not fit the memory file
    /// or the regions is not an error: the server logs a warning, installs nothing,
    /// serves lazily and reports it in [`PagerStats::prefetch_fell_back`] and
    /// [`PagerStats::fallback_reason`]. A bad WS file costs speed, never correctness.
    /// (To refuse instead, check the file first with [`WorkingSet::load`].)
    Prefetch {
        /// The WS file.
        ws: PathBuf,
    },
}

impl Mode {
    /// The mode's name in reports: `lazy`, `record` or `prefetch`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Lazy => "lazy",
            Mode::Record => "record",
            Mode::Prefetch { .. } => "prefetch",
        }
    }
}

/// What happens to guest memory that is a hole of the memory file (pages never written
/// before the snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Holes {
    /// [`PageServer::start`] unregisters the holes from the userfaultfd (in whole pages
    /// of the regions' page size, at most [`ServeOptions::max_hole_ranges`] ranges): they
    /// become plain anonymous memory, which the kernel zero-fills on first touch without
    /// any fault reaching the server. Pages of a working set being prefetched stay
    /// registered, so that the install can fill them, except zero pages in runs shorter
    /// than [`ServeOptions::min_installed_zero_run`], which are left to the kernel too.
    /// The default.
    #[default]
    Kernel,
    /// The holes stay registered: each first touch is a fault the server answers with a
    /// zero page (`UFFDIO_ZEROPAGE`).
    Served,
}

impl Holes {
    /// `kernel` or `served`.
    pub fn name(self) -> &'static str {
        match self {
            Holes::Kernel => "kernel",
            Holes::Served => "served",
        }
    }
}

/// How [`PageServer::start_with`] serves, beyond the [`Mode`].
/// `ServeOptions::default()` is what [`PageServer::start`] uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ServeOptions {
    /// What happens to holes of the memory file.
    pub holes: Holes,
    /// With [`Holes::Kernel`], the most hole ranges unregistered (the largest ones);
    /// the rest stay registered and are served. Each range costs an ioctl at start
    /// (about 4 us here) and splits the owner's mapping into up to two more VMAs.
    pub max_hole_ranges: usize,
    /// With [`Holes::Kernel`] in prefetch mode, the shortest run (bytes of contiguous
    /// memory) of the working set's zero pages that stays registered and is installed
    /// as copied zeros; zero pages in shorter runs that are holes are unregistered with
    /// their hole and left to the kernel. 0 installs every zero page of the set;
    /// `u64::MAX` leaves all of them to the kernel.
    pub min_installed_zero_run: u64,
    /// In prefetch mode, install the working set concurrently with the guest:
    /// [`PageServer::start`] returns once the first
    /// [`ServeOptions::first_install_pages`] pages of the set (in recorded fault
    /// order) are in, and the fault loop installs the rest in chunks of
    /// [`INSTALL_CHUNK_PAGES`], serving the faults that arrive meanwhile first (a
    /// fault on a page of the set not yet installed is served from the fetched set).
    /// Off, the whole set is installed before [`PageServer::start`] returns.
    pub concurrent_install: bool,
    /// With [`ServeOptions::concurrent_install`], the pages installed before
    /// [`PageServer::start`] returns.
    pub first_install_pages: u64,
}

/// The default of [`ServeOptions::first_install_pages`].
pub const FIRST_INSTALL_PAGES: u64 = 64;

/// Pages the concurrent install fills between two looks at the fault queue.
pub const INSTALL_CHUNK_PAGES: u64 = 64;

/// The default of [`ServeOptions::max_hole_ranges`].
pub const MAX_HOLE_RANGES: usize = 1024;

/// The default of [`ServeOptions::min_installed_zero_run`]: 32 KiB (8 pages of 4 KiB).
pub const MIN_INSTALLED_ZERO_RUN: u64 = 32 << 10;

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            holes: Holes::default(),
            max_hole_ranges: MAX_HOLE_RANGES,
            min_installed_zero_run: MIN_INSTALLED_ZERO_RUN,
            concurrent_install: true,
            first_install_pages: FIRST_INSTALL_PAGES,
        }
    }
}

impl ServeOptions {
    /// Sets [`ServeOptions::holes`].
    pub fn holes(mut self, holes: Holes) -> ServeOptions {
        self.holes = holes;
        self
    }

    /// Sets [`ServeOptions::max_hole_ranges`].
    pub fn max_hole_ranges(mut self, max: usize) -> ServeOptions {
        self.max_hole_ranges = max;
        self
    }

    /// Sets [`ServeOptions::concurrent_install`].
    pub fn concurrent_install(mut self, on: bool) -> ServeOptions {
        self.concurrent_install = on;
        self
    }

    /// Sets [`ServeOptions::first_install_pages`].
    pub fn first_install_pages(mut self, pages: u64) -> ServeOptions {
        self.first_install_pages = pages;
        self
    }

    /// Sets [`ServeOptions::min_installed_zero_run`].
    pub fn min_installed_zero_run(mut self, bytes: u64) -> ServeOptions {
        self.min_installed_zero_run = bytes;
        self
    }
}

/// Why the fault loop stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum StopReason {
    /// [`PageServer::stop`] or drop.
    Requested,
    /// The process owning the memory exited.
    OwnerExited,
    /// The fault loop could not go on (the message says why); threads still waiting on
    /// faults stay blocked until the userfaultfd is closed, so the owner should be
    /// killed (a Firecracker peer) or its vCPU stopped.
    Failed(String),
}

/// Errors of the page server.
#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    /// The regions cannot be served.
    #[error("invalid memory regions")]
    Regions(#[from] RegionError),
    /// Creating the stop eventfd or the thread failed.
    #[error("cannot start the fault loop")]
    Spawn(#[source] io::Error),
    /// The fault loop stopped before it was ready (e.g. the owner exited during the
    /// prefetch install).
    #[error("fault loop stopped before it was ready: {0:?}")]
    NotReady(StopReason),
    /// [`PageServer::write_ws`] on a server that is not recording.
    #[error("the page server is not in record mode")]
    NotRecording,
    /// Writing the WS file failed.
    #[error("cannot write the working set")]
    WriteWs(#[from] WsWriteError),
    /// The owner's page map, which tells which unregistered holes it touched, cannot
    /// be read ([`PageServer::scan_touched_holes`]).
    #[error("cannot tell which holes of the memory its owner touched")]
    ScanHoles(#[source] PagemapError),
}

/// Counters of one page server, readable while it runs ([`PageServer::stats`]) and
/// returned by [`PageServer::stop`]. Times are in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PagerStats {
    /// `lazy`, `record` or `prefetch`.
    pub mode: String,
    /// What happens to holes of the memory file ([`Holes`]): `kernel` or `served`.
    pub holes: String,
    /// Hole ranges unregistered from the userfaultfd at start ([`Holes::Kernel`]).
    pub hole_ranges_unregistered: u64,
    /// Bytes in those ranges.
    pub hole_bytes_unregistered: u64,
    /// Hole ranges left registered, whose faults are served: all of them with
    /// [`Holes::Served`]; with [`Holes::Kernel`], those beyond
    /// [`ServeOptions::max_hole_ranges`] and those the kernel refused to unregister.
    /// (Pages of a prefetched working set are not counted: they are installed.)
    pub hole_ranges_served: u64,
    /// `UFFDIO_UNREGISTER` calls that failed (their ranges are served; a warning says
    /// why).
    pub hole_unregister_errors: u64,
    /// Time to unregister the holes.
    pub unregister_ns: u64,
    /// Faults served with a page read from the memory file.
    pub lazy_faults_file: u64,
    /// Faults served with a zero page, without any read: holes of the memory file that
    /// are registered ([`PagerStats::hole_ranges_served`]) and ranges the owner dropped
    /// with `MADV_DONTNEED`/`MADV_REMOVE`. Touches of unregistered holes are not faults
    /// of the server and are not counted anywhere.
    pub lazy_faults_zero: u64,
    /// Faults on pages that were already present when served (`EEXIST`: served by an
    /// earlier fault or the install); the waiting threads are woken.
    pub faults_already_present: u64,
    /// `UFFD_EVENT_REMOVE` events received.
    pub remove_events: u64,
    /// Pages of the WS file installed with `UFFDIO_COPY`.
    pub prefetched_pages: u64,
    /// Zero pages of the WS file installed without contents (as copied zeros).
    pub prefetched_zero_pages: u64,
    /// Zero pages of the WS file not installed because they lie in holes unregistered
    /// at start ([`Holes::Kernel`]: runs shorter than
    /// [`ServeOptions::min_installed_zero_run`]): the kernel fills them on first touch.
    pub ws_zero_pages_unregistered: u64,
    /// `UFFDIO_COPY`/`UFFDIO_ZEROPAGE` ioctls of the install.
    pub install_ioctls: u64,
    /// Bytes read from the WS file.
    pub bytes_read_fetch: u64,
    /// Bytes read from the memory file to serve faults.
    pub bytes_read_lazy: u64,
    /// Time to read the WS file.
    pub fetch_ns: u64,
    /// Time to check the WS file (checksum, entries).
    pub verify_ns: u64,
    /// The WS file was read with `O_DIRECT`.
    pub fetch_direct: bool,
    /// Time to install the working set before the guest may run (with
    /// [`ServeOptions::concurrent_install`], its first pages only).
    pub install_ns: u64,
    /// Time the concurrent install took after the guest was let run, faults served
    /// in between included.
    pub background_install_ns: u64,
    /// Pages of the working set installed after the guest was let run.
    pub background_installed_pages: u64,
    /// Pages of the working set the install fills, before the guest runs and while it
    /// runs (known once [`PageServer::start`] has returned; zero pages left to the
    /// kernel are not among them).
    pub install_planned_pages: u64,
    /// Faults on pages of the working set that the concurrent install had not
    /// installed yet, served from the fetched set (not counted as lazy faults).
    pub ws_faults: u64,
    /// Time spent serving faults: from taking a fault off the queue to its page being
    /// filled (the file read included).
    pub fault_serve_ns: u64,
    /// Distinct pages recorded by their faults (record mode), in fault order.
    pub recorded_pages: u64,
    /// Pages of the holes unregistered at start that the owner has touched, as found
    /// in its page map by the last scan (record mode with [`Holes::Kernel`];
    /// [`PageServer::scan_touched_holes`], which [`PageServer::write_ws`] calls). The
    /// WS file lists them after the [`PagerStats::recorded_pages`], as zero pages.
    pub recorded_hole_pages: u64,
    /// Time spent reading the owner's page map, all scans together.
    pub hole_scan_ns: u64,
    /// Prefetch mode fell back to lazy because the WS file was refused.
    pub prefetch_fell_back: bool,
    /// Why it fell back.
    pub fallback_reason: Option<String>,
    /// Why the fault loop stopped, once it has.
    pub stopped: Option<StopReason>,
}

#[derive(Default)]
struct Counters {
    hole_ranges_unregistered: AtomicU64,
    hole_bytes_unregistered: AtomicU64,
    hole_ranges_served: AtomicU64,
    hole_unregister_errors: AtomicU64,
    unregister_ns: AtomicU64,
    lazy_faults_file: AtomicU64,
    lazy_faults_zero: AtomicU64,
    faults_already_present: AtomicU64,
    remove_events: AtomicU64,
    prefetched_pages: AtomicU64,
    prefetched_zero_pages: AtomicU64,
    ws_zero_pages_unregistered: AtomicU64,
    install_ioctls: AtomicU64,
    bytes_read_fetch: AtomicU64,
    bytes_read_lazy: AtomicU64,
    fetch_ns: AtomicU64,
    verify_ns: AtomicU64,
    install_ns: AtomicU64,
    background_install_ns: AtomicU64,
    background_installed_pages: AtomicU64,
    install_planned_pages: AtomicU64,
    ws_faults: AtomicU64,
    fault_serve_ns: AtomicU64,
    recorded_hole_pages: AtomicU64,
    hole_scan_ns: AtomicU64,
}

#[derive(Default)]
struct Info {
    fetch_direct: bool,
    fallback_reason: Option<String>,
    stopped: Option<StopReason>,
}

struct Shared {
    mode: &'static str,
    holes: Holes,
    counters: Counters,
    recorded: Mutex<Vec<u64>>,
    /// Record mode: the holes unregistered at start, and which of their pages the
    /// owner touched.
    touched_holes: Mutex<TouchedHoles>,
    info: Mutex<Info>,
    running: AtomicBool,
    /// An eventfd made readable once the fault loop has stopped.
    stopped_fd: OwnedFd,
    /// Set once the whole working set is in (at once or by the concurrent install),
    /// or the loop has stopped; waited on by [`PageServer::wait_installed`].
    installed: Mutex<bool>,
    installed_cv: Condvar,
}

impl Shared {
    /// Marks the loop stopped and makes [`PageServer::stopped_event`] readable.
    fn mark_installed(&self) {
        *lock(&self.installed) = true;
        self.installed_cv.notify_all();
    }

    fn mark_stopped(&self) {
        self.mark_installed();
        self.running.store(false, Ordering::Release);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        let _ = unsafe { libc::write(self.stopped_fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn add(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Ordering::Relaxed);
}

/// Record mode with [`Holes::Kernel`]: the hole ranges unregistered at start, and
/// which of their pages the owner's page map has shown touched so far. Pages once seen
/// stay recorded (a page the owner dropped since was still touched).
#[derive(Default)]
struct TouchedHoles {
    /// `[start, end)` host addresses, in address order.
    host: Vec<(u64, u64)>,
    /// The memory-file offset of each range's first byte.
    file: Vec<u64>,
    /// One bit per page of the ranges, in their order.
    bits: Vec<u64>,
    /// Bits set.
    count: u64,
}

impl TouchedHoles {
    fn new(host: Vec<(u64, u64)>, file: Vec<u64>, page_size: u64) -> TouchedHoles {
        let pages: u64 = host.iter().map(|&(s, e)| (e - s) / page_size).sum();
        TouchedHoles {
            host,
            file,
            bits: vec![0; bit_word(pages) + 1],
            count: 0,
        }
    }

    /// Marks page `k` (numbered over all ranges) touched.
    fn mark(bits: &mut [u64], count: &mut u64, k: u64) {
        let (w, b) = (bit_word(k), 1u64 << (k % 64));
        if bits[w] & b == 0 {
            bits[w] |= b;
            *count += 1;
        }
    }

    /// The memory-file offsets of the pages marked, in address order.
    fn offsets(&self, page_size: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut k = 0u64;
        for (&(start, end), &file) in self.host.iter().zip(&self.file) {
            let pages = (end - start) / page_size;
            for i in 0..pages {
                if self.bits[bit_word(k + i)] & (1 << ((k + i) % 64)) != 0 {
                    out.push(file + i * page_size);
                }
            }
            k += pages;
        }
        out
    }
}

/// The word of a bitmap that holds bit `k`. The bitmap has one bit per page of guest
/// memory, which the process maps, so the index fits a `usize`.
fn bit_word(k: u64) -> usize {
    in_memory(k / 64)
}

/// A recorded working set to write ([`PageServer::ws_writer`]).
#[derive(Debug)]
pub struct WsWriter {
    offsets: Vec<u64>,
    page_size: u64,
    memory: Arc<MemoryFile>,
}

impl WsWriter {
    /// Pages it writes.
    pub fn pages(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// The pages, as memory-file offsets in WS order: for a caller that has the WS file
    /// written elsewhere (with [`ws::write_ws`]), e.g. by a process that can write the
    /// snapshot's directory when this one cannot.
    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// Writes the WS file `path` atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<WsSummary, WsWriteError> {
        ws::write_ws(path, self.page_size, &self.offsets, &self.memory)
    }
}

/// A running page server. Dropping it stops the fault loop (like [`PageServer::stop`]).
///
/// Once the loop has stopped, its userfaultfd is closed, which unregisters the memory:
/// pages that were never served then read as zeros. Stop a server only when the guest
/// is done with its memory.
pub struct PageServer {
    shared: Arc<Shared>,
    stop_fd: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    memory: Arc<MemoryFile>,
    page_size: u64,
    recording: bool,
    /// Whose page map tells the holes touched (record mode).
    owner: Owner,
    /// That page map, opened at the first scan.
    pagemap: Mutex<Option<Pagemap>>,
    /// A page-map scan failed and was reported (once per server).
    scan_warned: AtomicBool,
}

impl std::fmt::Debug for PageServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageServer")
            .field("mode", &self.shared.mode)
            .field("memory", &self.memory.path())
            .field("running", &self.is_running())
            .finish()
    }
}

impl PageServer {
    /// Starts serving `regions` of the memory registered with `uffd` (MISSING mode; the
    /// caller or the process that sent the descriptor registered them) from `memory`,
    /// with the default [`ServeOptions`]: the holes of the memory file are unregistered
    /// first ([`Holes::Kernel`]).
    ///
    /// In [`Mode::Prefetch`] the WS file is fetched and installed before this returns,
    /// so the caller can run the guest next. The fault loop runs on its own thread
    /// (named `reap-pager`) from the start, so faults that arrive during the install
    /// are queued and served right after it.
    pub fn start(
        uffd: Uffd,
        regions: Vec<Region>,
        memory: MemoryFile,
        mode: Mode,
    ) -> Result<PageServer, PagerError> {
        Self::start_with(uffd, regions, memory, mode, ServeOptions::default())
    }

    /// [`PageServer::start`] with `options`.
    pub fn start_with(
        uffd: Uffd,
        regions: Vec<Region>,
        memory: MemoryFile,
        mode: Mode,
        options: ServeOptions,
    ) -> Result<PageServer, PagerError> {
        let regions = Regions::new(regions, memory.len())?;
        let page_size = regions.page_size();
        // SAFETY: eventfd takes integers and returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(PagerError::Spawn(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let stop_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        // SAFETY: as above.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(PagerError::Spawn(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let stopped_fd = unsafe { OwnedFd::from_raw_fd(efd) };
        let memory = Arc::new(memory);
        let owner = if mode == Mode::Record {
            Owner::of(&uffd).map_err(PagerError::Spawn)?
        } else {
            Owner::Unknown
        };
        let shared = Arc::new(Shared {
            mode: mode.name(),
            holes: options.holes,
            counters: Counters::default(),
            recorded: Mutex::new(Vec::new()),
            touched_holes: Mutex::new(TouchedHoles::default()),
            info: Mutex::new(Info::default()),
            running: AtomicBool::new(true),
            stopped_fd,
            installed: Mutex::new(false),
            installed_cv: Condvar::new(),
        });
        let zero_buf = if page_size == PAGE_2M {
            Some(AlignedBuf::zeroed(in_memory(PAGE_2M)).map_err(PagerError::Spawn)?)
        } else {
            None
        };
        let fault_loop = FaultLoop {
            uffd,
            regions,
            memory: memory.clone(),
            shared: shared.clone(),
            stop_fd: stop_fd.clone(),
            page_size,
            record: (mode == Mode::Record).then(HashSet::new),
            removed: RangeSet::default(),
            options,
            unregistered: RangeSet::default(),
            pending: VecDeque::new(),
            events: Vec::new(),
            page_buf: AlignedBuf::zeroed(in_memory(page_size)).map_err(PagerError::Spawn)?,
            zero_buf,
            install_zeros: None,
            background: None,
        };
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("reap-pager".into())
            .spawn(move || fault_loop.run(mode, ready_tx))
            .map_err(PagerError::Spawn)?;
        let mut server = PageServer {
            shared,
            stop_fd,
            thread: Some(thread),
            memory,
            page_size,
            recording: false,
            owner,
            pagemap: Mutex::new(None),
            scan_warned: AtomicBool::new(false),
        };
        server.recording = server.shared.mode == "record";
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(server),
            Ok(Err(reason)) => {
                server.join();
                Err(PagerError::NotReady(reason))
            }
            Err(_) => {
                server.join();
                Err(PagerError::NotReady(StopReason::Failed(
                    "fault loop thread died".into(),
                )))
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> PagerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let info = lock(&self.shared.info);
        PagerStats {
            mode: self.shared.mode.to_string(),
            holes: self.shared.holes.name().to_string(),
            hole_ranges_unregistered: get(&c.hole_ranges_unregistered),
            hole_bytes_unregistered: get(&c.hole_bytes_unregistered),
            hole_ranges_served: get(&c.hole_ranges_served),
            hole_unregister_errors: get(&c.hole_unregister_errors),
            unregister_ns: get(&c.unregister_ns),
            lazy_faults_file: get(&c.lazy_faults_file),
            lazy_faults_zero: get(&c.lazy_faults_zero),
            faults_already_present: get(&c.faults_already_present),
            remove_events: get(&c.remove_events),
            prefetched_pages: get(&c.prefetched_pages),
            prefetched_zero_pages: get(&c.prefetched_zero_pages),
            ws_zero_pages_unregistered: get(&c.ws_zero_pages_unregistered),
            install_ioctls: get(&c.install_ioctls),
            bytes_read_fetch: get(&c.bytes_read_fetch),
            bytes_read_lazy: get(&c.bytes_read_lazy),
            fetch_ns: get(&c.fetch_ns),
            verify_ns: get(&c.verify_ns),
            fetch_direct: info.fetch_direct,
            install_ns: get(&c.install_ns),
            background_install_ns: get(&c.background_install_ns),
            background_installed_pages: get(&c.background_installed_pages),
            install_planned_pages: get(&c.install_planned_pages),
            ws_faults: get(&c.ws_faults),
            fault_serve_ns: get(&c.fault_serve_ns),
            recorded_pages: lock(&self.shared.recorded).len() as u64,
            recorded_hole_pages: get(&c.recorded_hole_pages),
            hole_scan_ns: get(&c.hole_scan_ns),
            prefetch_fell_back: info.fallback_reason.is_some(),
            fallback_reason: info.fallback_reason.clone(),
            stopped: info.stopped.clone(),
        }
    }

    /// Blocks until the whole working set is installed (prefetch mode with
    /// [`ServeOptions::concurrent_install`]: the install goes on after
    /// [`PageServer::start`] returns) or the fault loop has stopped. Returns at once in
    /// the other modes, and once the loop is serving faults only. The install
    /// counters of [`PageServer::stats`] are final after it.
    pub fn wait_installed(&self) {
        let mut done = lock(&self.shared.installed);
        while !*done {
            done = self
                .shared
                .installed_cv
                .wait(done)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether the fault loop is still running.
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }

    /// A descriptor that becomes readable (`POLLIN`) once the fault loop has stopped,
    /// for whatever reason, so that a caller can wait for the loop together with other
    /// descriptors instead of polling [`PageServer::is_running`]. By then
    /// [`PageServer::stop_reason`] is set. The caller must not read from it.
    pub fn stopped_event(&self) -> BorrowedFd<'_> {
        self.shared.stopped_fd.as_fd()
    }

    /// Why the fault loop stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        lock(&self.shared.info).stopped.clone()
    }

    /// The memory file being served.
    pub fn memory_file(&self) -> &MemoryFile {
        &self.memory
    }

    /// The memory-file offsets of the pages recorded by their faults so far, in fault
    /// order, each once (record mode; empty otherwise). With [`Holes::Kernel`] the hole
    /// pages touched are not among them: see [`PageServer::recorded_hole_offsets`].
    pub fn recorded_offsets(&self) -> Vec<u64> {
        lock(&self.shared.recorded).clone()
    }

    /// The memory-file offsets of the pages of unregistered holes that the owner has
    /// touched, as found by the scans so far ([`PageServer::scan_touched_holes`]), in
    /// address order (record mode; empty otherwise).
    pub fn recorded_hole_offsets(&self) -> Vec<u64> {
        lock(&self.shared.touched_holes).offsets(self.page_size)
    }

    /// Record mode: reads the owner's page map over the holes unregistered at start
    /// ([`Holes::Kernel`]) and records the pages it shows touched (present or swapped
    /// out) since; returns the hole pages recorded so far
    /// ([`PagerStats::recorded_hole_pages`]). [`PageServer::write_ws`] calls it; a
    /// caller calls it to learn whether the set grew without writing it.
    ///
    /// The owner is this process for a userfaultfd from [`Uffd::new`], else the process
    /// [`Uffd::with_owner_pid`] named; without one ([`PagemapError::UnknownOwner`]),
    /// after the owner has exited ([`PagemapError::OwnerExited`]), or without access to
    /// its page map, this fails and the pages found by earlier scans stay recorded. A
    /// hole page counts as touched by the guest because no hole is present when the
    /// server starts: the holes are unregistered before the owner's guest runs, and
    /// neither reap's microVM nor Firecracker touches guest memory before that.
    pub fn scan_touched_holes(&self) -> Result<u64, PagerError> {
        if !self.recording {
            return Err(PagerError::NotRecording);
        }
        let mut holes = lock(&self.shared.touched_holes);
        if holes.host.is_empty() {
            return Ok(0);
        }
        let t = Instant::now();
        let mut pagemap = lock(&self.pagemap);
        let pm = match &mut *pagemap {
            Some(pm) => pm,
            None => pagemap.insert(Pagemap::open(&self.owner).map_err(PagerError::ScanHoles)?),
        };
        let TouchedHoles {
            host, bits, count, ..
        } = &mut *holes;
        let result = pm.scan(host, self.page_size, |k| TouchedHoles::mark(bits, count, k));
        let c = &self.shared.counters;
        c.recorded_hole_pages.store(*count, Ordering::Relaxed);
        add(&c.hole_scan_ns, nanos(t.elapsed()));
        result.map_err(PagerError::ScanHoles)?;
        Ok(*count)
    }

    /// Writes the pages recorded so far to the WS file `path` (atomically), with their
    /// contents read from the memory file, i.e. the snapshot's contents, not the guest's
    /// current memory: the faulting pages in fault order, then the hole pages the owner
    /// touched ([`PageServer::scan_touched_holes`], done first), in address order, as
    /// zero pages. If the owner's page map cannot be read, the set gets the hole pages
    /// found by earlier scans only (one warning per server). Recording goes on; call it
    /// again to write a longer set.
    pub fn write_ws(&self, path: &Path) -> Result<WsSummary, PagerError> {
        if !self.recording {
            return Err(PagerError::NotRecording);
        }
        Ok(self.ws_writer().write(path)?)
    }

    /// What [`PageServer::write_ws`] would write now, as a [`WsWriter`] that writes it
    /// later, on any thread, without the server (the owner's page map is read now,
    /// while the owner's memory is there; the contents come from the memory file).
    pub fn ws_writer(&self) -> WsWriter {
        if self.recording
            && let Err(e) = self.scan_touched_holes()
            && !self.scan_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "{}; the working set lists the pages that faulted and only the {} hole \
                 pages found before",
                reap_error::chain(&e),
                self.shared
                    .counters
                    .recorded_hole_pages
                    .load(Ordering::Relaxed)
            );
        }
        let mut offsets = self.recorded_offsets();
        offsets.extend(self.recorded_hole_offsets());
        WsWriter {
            offsets,
            page_size: self.page_size,
            memory: self.memory.clone(),
        }
    }

    /// Stops the fault loop, waits for its thread, and returns the final counters.
    pub fn stop(mut self) -> PagerStats {
        self.join();
        self.stats()
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd.
            let _ = unsafe { libc::write(self.stop_fd.as_raw_fd(), one.as_ptr().cast(), 8) };
            if t.join().is_err() {
                let mut info = lock(&self.shared.info);
                info.stopped
                    .get_or_insert(StopReason::Failed("fault loop panicked".into()));
                drop(info);
                self.shared.mark_stopped();
            }
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.join();
    }
}

/// Page-aligned host ranges dropped by `UFFD_EVENT_REMOVE`: disjoint, merged.
#[derive(Default)]
struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Merge with every range that overlaps or touches [start, end).
        if let Some((&s, &e)) = self.0.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.0.remove(&s);
        }
        let inside: Vec<(u64, u64)> = self.0.range(start..=end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            end = end.max(e);
            self.0.remove(&s);
        }
        self.0.insert(start, end);
    }

    fn contains(&self, addr: u64) -> bool {
        self.0
            .range(..=addr)
            .next_back()
            .is_some_and(|(_, &e)| addr < e)
    }
}

/// Why serving stopped, inside the loop.
type Stop = StopReason;

struct FaultLoop {
    uffd: Uffd,
    regions: Regions,
    memory: Arc<MemoryFile>,
    shared: Arc<Shared>,
    stop_fd: Arc<OwnedFd>,
    page_size: u64,
    /// Pages recorded so far (record mode).
    record: Option<HashSet<u64>>,
    removed: RangeSet,
    options: ServeOptions,
    /// Hole ranges unregistered at start: no fault can come from them any more.
    unregistered: RangeSet,
    /// Faults read while doing something else, served next.
    pending: VecDeque<u64>,
    events: Vec<Event>,
    page_buf: AlignedBuf,
    /// A zero page for hugetlbfs, where `UFFDIO_ZEROPAGE` does not exist.
    zero_buf: Option<AlignedBuf>,
    /// Zeros the install copies from (allocated when a working set has zero pages).
    install_zeros: Option<AlignedBuf>,
    /// The working set while the concurrent install runs: faults on its pages are
    /// served from it.
    background: Option<Background>,
}

/// One step of an install: `pages` pages at host address `host`, from the data pages
/// of the set from index `data` on, or zeros (`None`).
#[derive(Debug, Clone, Copy)]
struct Step {
    host: u64,
    data: Option<usize>,
    pages: u64,
}

/// A working set fetched and partly installed, and the steps left.
struct Prefetched {
    ws: WorkingSet,
    rest: Vec<Step>,
}

/// The working set of a concurrent install: for each page the install has not
/// reached, its data index (`None`: a zero page).
struct Background {
    ws: WorkingSet,
    index: HashMap<u64, Option<usize>>,
}

impl FaultLoop {
    fn run(mut self, mode: Mode, ready: mpsc::SyncSender<Result<(), StopReason>>) {
        let prepared = match &mode {
            Mode::Prefetch { ws } => self.prefetch(ws),
            Mode::Lazy | Mode::Record => {
                self.unregister_holes(&[]);
                Ok(None)
            }
        };
        let reason = match prepared {
            Ok(prefetched) => {
                let _ = ready.send(Ok(()));
                let installed = match prefetched {
                    Some(p) if !p.rest.is_empty() => self.install_in_background(p),
                    // Unmapping the fetched image is not on the restore's critical path.
                    p => {
                        drop(p);
                        Ok(())
                    }
                };
                self.shared.mark_installed();
                match installed {
                    Ok(()) => self.serve_until_stopped(),
                    Err(stop) => stop,
                }
            }
            Err(reason) => {
                let _ = ready.send(Err(reason.clone()));
                reason
            }
        };
        match &reason {
            StopReason::Requested => tracing::debug!("page server stopped"),
            StopReason::OwnerExited => tracing::info!("page server stopped: memory owner exited"),
            StopReason::Failed(why) => tracing::error!("page server stopped: {why}"),
        }
        lock(&self.shared.info).stopped = Some(reason);
        self.shared.mark_stopped();
        // Dropping `self` closes the userfaultfd.
    }

    /// Unregisters the holes of the memory file in the regions ([`Holes::Kernel`]),
    /// except the pages at `keep` (sorted host addresses: the working set to install).
    ///
    /// `UFFDIO_UNREGISTER` wakes the faults pending in the range: they are retried as
    /// plain anonymous faults, and their messages leave the queue. It is done before
    /// any event is read, so no fault read later can lie in an unregistered range. A
    /// range the kernel refuses (e.g. `ENOMEM` past `vm.max_map_count`) stays
    /// registered and is served; the kernel may have unregistered a part of it, which
    /// is harmless: no fault comes from that part.
    fn unregister_holes(&mut self, keep: &[u64]) {
        let t = Instant::now();
        let ps = self.page_size;
        let holes = self.regions.hole_ranges(self.memory.data_extents());
        let mut ranges = region::without_pages(&holes, keep, ps);
        let c = &self.shared.counters;
        if self.options.holes == Holes::Served {
            add(&c.hole_ranges_served, ranges.len() as u64);
            return;
        }
        if ranges.len() > self.options.max_hole_ranges {
            // The largest ones, unregistered in address order.
            ranges.sort_unstable_by_key(|&(s, e)| (std::cmp::Reverse(e - s), s));
            let over = ranges.split_off(self.options.max_hole_ranges);
            add(&c.hole_ranges_served, over.len() as u64);
            ranges.sort_unstable();
        }
        let mut first_error = None;
        let mut done = Vec::new();
        for &(start, end) in &ranges {
            match self.uffd.unregister(start, end - start) {
                Ok(()) => {
                    self.unregistered.insert(start, end);
                    done.push((start, end));
                    add(&c.hole_ranges_unregistered, 1);
                    add(&c.hole_bytes_unregistered, end - start);
                }
                Err(e) => {
                    add(&c.hole_ranges_served, 1);
                    add(&c.hole_unregister_errors, 1);
                    first_error.get_or_insert((start, end, e));
                }
            }
        }
        add(&c.unregister_ns, nanos(t.elapsed()));
        if self.record.is_some() {
            // Each range lies in one region (hole ranges are cut at region ends).
            let file = done
                .iter()
                .map(|&(start, _)| {
                    self.regions
                        .by_addr(start)
                        .map_or(0, |r| r.file_offset + (start - r.host_addr))
                })
                .collect();
            *lock(&self.shared.touched_holes) = TouchedHoles::new(done, file, ps);
        }
        // One warning per server. An owner that has exited refuses everything
        // (`ENOMEM`); the fault loop then stops by itself.
        if let Some((start, end, e)) = first_error
            && self
                .uffd
                .owner_alive(self.regions.as_slice()[0].host_addr, ps)
        {
            tracing::warn!(
                "UFFDIO_UNREGISTER refused {} of {} hole ranges of the guest memory (the \
                 first: {start:#x}..{end:#x}: {e}); they stay registered and are served",
                c.hole_unregister_errors.load(Ordering::Relaxed),
                ranges.len()
            );
        }
    }

    /// Fetches and installs the WS file; returns it so that its buffer is freed after
    /// the caller is released. The holes are unregistered in between, except the
    /// working set's pages.
    fn prefetch(&mut self, path: &Path) -> Result<Option<Prefetched>, Stop> {
        let ws = match WorkingSet::load(path, &self.memory, self.page_size)
            .and_then(|ws| self.check_fits(ws))
        {
            Ok(ws) => ws,
            Err(e) => {
                let reason = match &e {
                    // It names the file.
                    WsError::Io(_) => reap_error::chain(&e),
                    _ => format!("{}: {}", path.display(), reap_error::chain(&e)),
                };
                tracing::warn!("working set refused, serving lazily: {reason}");
                lock(&self.shared.info).fallback_reason = Some(reason);
                self.unregister_holes(&[]);
                return Ok(None);
            }
        };
        let keep = self.pages_to_install(&ws);
        self.unregister_holes(&keep);
        let c = &self.shared.counters;
        let f = ws.fetch_info();
        add(&c.bytes_read_fetch, f.bytes);
        add(&c.fetch_ns, f.fetch_ns);
        add(&c.verify_ns, f.verify_ns);
        lock(&self.shared.info).fetch_direct = f.direct;
        let t = Instant::now();
        let mut steps = self.plan(&ws);
        add(
            &self.shared.counters.install_planned_pages,
            steps.iter().map(|s| s.pages).sum(),
        );
        let head = if self.options.concurrent_install {
            let mut pages = 0;
            steps
                .iter()
                .position(|s| {
                    pages += s.pages;
                    pages >= self.options.first_install_pages
                })
                .map_or(steps.len(), |i| i + 1)
        } else {
            steps.len()
        };
        let rest = steps.split_off(head);
        let result = steps.iter().try_for_each(|s| self.step(&ws, *s));
        add(&self.shared.counters.install_ns, nanos(t.elapsed()));
        result.map(|()| Some(Prefetched { ws, rest }))
    }

    /// The concurrent install: the `rest` of the working set, in chunks, the faults
    /// that arrived meanwhile served before each chunk (from the set, for its pages).
    fn install_in_background(&mut self, p: Prefetched) -> Result<(), Stop> {
        let t = Instant::now();
        let ps = self.page_size;
        let mut index = HashMap::new();
        for s in &p.rest {
            for k in 0..s.pages {
                index.insert(s.host + k * ps, s.data.map(|i| i + in_memory(k)));
            }
        }
        self.background = Some(Background { ws: p.ws, index });
        let result = self.install_steps(&p.rest);
        // Unmapping the fetched image is off the guest's path too.
        self.background = None;
        add(
            &self.shared.counters.background_install_ns,
            nanos(t.elapsed()),
        );
        result
    }

    fn install_steps(&mut self, rest: &[Step]) -> Result<(), Stop> {
        for s in rest {
            let mut done = 0;
            while done < s.pages {
                self.serve_pending_now()?;
                let n = (s.pages - done).min(INSTALL_CHUNK_PAGES);
                let chunk = Step {
                    host: s.host + done * self.page_size,
                    data: s.data.map(|i| i + in_memory(done)),
                    pages: n,
                };
                let bg = self.background.take().expect("set by the caller");
                let before = self.prefetched();
                let r = self.step(&bg.ws, chunk);
                add(
                    &self.shared.counters.background_installed_pages,
                    self.prefetched() - before,
                );
                self.background = Some(bg);
                r?;
                done += n;
            }
        }
        Ok(())
    }

    fn prefetched(&self) -> u64 {
        let c = &self.shared.counters;
        c.prefetched_pages.load(Ordering::Relaxed) + c.prefetched_zero_pages.load(Ordering::Relaxed)
    }

    /// Without blocking: stops if asked to, reads the pending events and serves the
    /// faults among them.
    fn serve_pending_now(&mut self) -> Result<(), Stop> {
        let mut fds = [
            libc::pollfd {
                fd: self.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of 2 pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 0) };
        if n > 0 {
            if fds[1].revents != 0 {
                return Err(Stop::Requested);
            }
            let rev = fds[0].revents;
            if rev & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return Err(Stop::Failed(format!("userfaultfd poll reported {rev:#x}")));
            }
            if rev != 0 {
                self.drain_events()?;
            }
        }
        while let Some(addr) = self.pending.pop_front() {
            self.serve(addr)?;
        }
        Ok(())
    }

    fn step(&mut self, ws: &WorkingSet, s: Step) -> Result<(), Stop> {
        let page_len = in_memory(self.page_size);
        match s.data {
            Some(i) => {
                let src = &ws.data()[i * page_len..(i + in_memory(s.pages)) * page_len];
                self.install_run(s.host, Some(src), s.pages)
            }
            None => self.install_run(s.host, None, s.pages),
        }
    }

    /// The host addresses (sorted) of the set's pages that must stay registered for the
    /// install: the data pages, and the zero pages in runs of at least
    /// [`ServeOptions::min_installed_zero_run`] bytes. A zero page in a shorter run
    /// that is a hole is unregistered with its hole and left to the kernel: in a guest,
    /// copying zeros into it and splitting the hole around it costs more than the
    /// kernel's zero-fill on first touch, while long runs installed as copied zeros
    /// cost 2-3x less than that (docs/pager.md).
    fn pages_to_install(&self, ws: &WorkingSet) -> Vec<u64> {
        let ps = self.page_size;
        let host = |offset| self.regions.host_addr_of(offset).unwrap_or_default();
        let mut keep: Vec<u64> = ws
            .pages()
            .filter(|p| !p.zero)
            .map(|p| host(p.offset))
            .collect();
        let mut zeros: Vec<u64> = ws
            .pages()
            .filter(|p| p.zero)
            .map(|p| host(p.offset))
            .collect();
        zeros.sort_unstable();
        let mut i = 0;
        while i < zeros.len() {
            let mut n = 1;
            while i + n < zeros.len() && zeros[i + n] == zeros[i] + n as u64 * ps {
                n += 1;
            }
            if n as u64 * ps >= self.options.min_installed_zero_run {
                keep.extend_from_slice(&zeros[i..i + n]);
            }
            i += n;
        }
        keep.sort_unstable();
        keep
    }

    fn check_fits(&self, ws: WorkingSet) -> Result<WorkingSet, WsError> {
        for p in ws.pages() {
            if self.regions.host_addr_of(p.offset).is_none() {
                return Err(WsError::OutsideRegions { offset: p.offset });
            }
        }
        Ok(ws)
    }

    /// The install of the working set, as steps: data pages in table order, one step
    /// (one `UFFDIO_COPY`) per run of entries that are contiguous both in the file and
    /// in memory; then zero pages (but those in unregistered holes) sorted and merged,
    /// each run filled by [`FaultLoop::install_zeros`].
    fn plan(&mut self, ws: &WorkingSet) -> Vec<Step> {
        let ps = self.page_size;
        let mut steps = Vec::new();
        let mut zeros = Vec::new();
        let mut run: Option<Step> = None;
        let mut data_index = 0usize;
        for p in ws.pages() {
            let host = self.regions.host_addr_of(p.offset).unwrap_or_default();
            if p.zero {
                zeros.push(host);
                continue;
            }
            run = match run {
                Some(mut r) if r.host + r.pages * ps == host => {
                    r.pages += 1;
                    Some(r)
                }
                prev => {
                    steps.extend(prev);
                    Some(Step {
                        host,
                        data: Some(data_index),
                        pages: 1,
                    })
                }
            };
            data_index += 1;
        }
        steps.extend(run);
        // Zero pages unregistered with their hole are the kernel's to fill.
        let before = zeros.len();
        zeros.retain(|&h| !self.unregistered.contains(h));
        add(
            &self.shared.counters.ws_zero_pages_unregistered,
            (before - zeros.len()) as u64,
        );
        zeros.sort_unstable();
        let mut i = 0;
        while i < zeros.len() {
            let mut n = 1;
            while i + n < zeros.len() && zeros[i + n] == zeros[i] + n as u64 * ps {
                n += 1;
            }
            steps.push(Step {
                host: zeros[i],
                data: None,
                pages: n as u64,
            });
            i += n;
        }
        steps
    }

    /// Fills `pages` pages at `host` from `src` (or with zeros). Pages already present
    /// are skipped, pages dropped by the owner are left alone (they must read as zero).
    fn install_run(&mut self, host: u64, src: Option<&[u8]>, pages: u64) -> Result<(), Stop> {
        let ps = self.page_size;
        let len = pages * ps;
        let shared = self.shared.clone();
        let c = &shared.counters;
        let counter = if src.is_some() {
            &c.prefetched_pages
        } else {
            &c.prefetched_zero_pages
        };
        let mut done = 0;
        while done < len {
            // Normally the whole rest in one ioctl; page by page once the owner has
            // dropped ranges, to skip those.
            let chunk = if self.removed.is_empty() {
                len - done
            } else if self.removed.contains(host + done) {
                done += ps;
                continue;
            } else {
                ps
            };
            let dst = host + done;
            add(&c.install_ioctls, 1);
            let r = match src {
                Some(s) => self
                    .uffd
                    .copy(dst, &s[in_memory(done)..in_memory(done + chunk)], true),
                None => self.install_zeros(dst, chunk),
            };
            match r {
                Ok(()) => {
                    add(counter, chunk / ps);
                    done += chunk;
                }
                Err(FillError { copied, errno }) => {
                    add(counter, copied / ps);
                    done += copied;
                    match errno {
                        Errno::EEXIST => {
                            add(&c.faults_already_present, 1);
                            done += ps;
                        }
                        // Partial fill: go on from where it stopped. Nothing filled: the
                        // owner's memory map is changing; read the pending events first.
                        Errno::EAGAIN if copied > 0 => {}
                        Errno::EAGAIN => self.drain_before_retry()?,
                        Errno::ESRCH => return Err(Stop::OwnerExited),
                        e => {
                            return Err(Stop::Failed(format!(
                                "installing the working set at {dst:#x}: {e}"
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Fills `len` bytes at `dst` with zeros for the install. Unlike the lazy path's
    /// `UFFDIO_ZEROPAGE`, which maps the shared zero page read-only (so the guest's
    /// first write to it faults again), this copies zeros: the pages are the guest's
    /// own and writable at once. The working set's zero pages are mostly ones the
    /// function writes (fresh heap), so the copy saves a fault per page.
    fn install_zeros(&mut self, dst: u64, len: u64) -> Result<(), FillError> {
        const CHUNK: usize = 1 << 20;
        if self.zero_buf.is_some() {
            return self.fill_zero(dst, len, true);
        }
        if self.install_zeros.is_none() {
            match AlignedBuf::zeroed(CHUNK) {
                Ok(buf) => self.install_zeros = Some(buf),
                // No memory for the buffer: fall back to zero pages.
                Err(_) => return self.uffd.zeropage(dst, len, true),
            }
        }
        let zeros = self.install_zeros.as_ref().expect("allocated above");
        let mut done = 0;
        while done < len {
            let n = usize::try_from(len - done).map_or(CHUNK, |rest| rest.min(CHUNK));
            self.uffd
                .copy(dst + done, &zeros[..n], true)
                .map_err(|e| FillError {
                    copied: done + e.copied,
                    errno: e.errno,
                })?;
            done += n as u64;
        }
        Ok(())
    }

    fn fill_zero(&self, dst: u64, len: u64, wake: bool) -> Result<(), FillError> {
        match &self.zero_buf {
            // hugetlbfs has no UFFDIO_ZEROPAGE: copy a zero huge page, one at a time.
            Some(z) => {
                let mut done = 0;
                while done < len {
                    self.uffd.copy(dst + done, z, wake).map_err(|e| FillError {
                        copied: done + e.copied,
                        errno: e.errno,
                    })?;
                    done += z.len() as u64;
                }
                Ok(())
            }
            None => self.uffd.zeropage(dst, len, wake),
        }
    }

    /// Before retrying a fill refused with `EAGAIN`: reads the pending events (the
    /// kernel refuses fills until the event that changes the map has been read), and
    /// yields the CPU if none has been posted yet.
    fn drain_before_retry(&mut self) -> Result<(), Stop> {
        if self.drain_events()? == 0 {
            std::thread::yield_now();
        }
        Ok(())
    }

    /// Reads every pending event: faults are queued, removals recorded.
    /// Returns how many events were read.
    fn drain_events(&mut self) -> Result<usize, Stop> {
        let mut events = std::mem::take(&mut self.events);
        let r = self.uffd.read_events(&mut events);
        for ev in events.drain(..) {
            match ev {
                Event::PageFault { addr, .. } => self.pending.push_back(addr),
                Event::Remove { start, end } => {
                    // Keep whole pages only (the kernel drops whole pages).
                    let ps = self.page_size;
                    self.removed
                        .insert(start.next_multiple_of(ps), end - end % ps);
                    add(&self.shared.counters.remove_events, 1);
                }
                Event::Other(kind) => tracing::debug!("ignoring userfaultfd event {kind:#x}"),
            }
        }
        self.events = events;
        r.map_err(|e| Stop::Failed(format!("reading userfaultfd events: {e}")))
    }

    fn serve_until_stopped(&mut self) -> Stop {
        let probe_addr = self.regions.as_slice()[0].host_addr;
        loop {
            while let Some(addr) = self.pending.pop_front() {
                if let Err(stop) = self.serve(addr) {
                    return stop;
                }
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop_fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: -1,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let owner_fd = self
                .uffd
                .owner_pidfd()
                .map(|(_, fd)| fd.as_fd().as_raw_fd());
            if let Some(fd) = owner_fd {
                fds[2].fd = fd;
            }
            // SAFETY: `fds` is a live array of 3 pollfd structs; poll ignores fd -1.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, IDLE_CHECK_MS) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Stop::Failed(format!("poll: {e}"));
            }
            if fds[1].revents != 0 {
                return Stop::Requested;
            }
            if fds[2].revents != 0 {
                return Stop::OwnerExited;
            }
            if n == 0 {
                if !self.uffd.owner_alive(probe_addr, self.page_size) {
                    return Stop::OwnerExited;
                }
                continue;
            }
            let rev = fds[0].revents;
            if rev & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return Stop::Failed(format!("userfaultfd poll reported {rev:#x}"));
            }
            if let Err(stop) = self.drain_events() {
                return stop;
            }
        }
    }

    /// Serves one fault at `addr`.
    fn serve(&mut self, addr: u64) -> Result<(), Stop> {
        let t = Instant::now();
        let ps = self.page_size;
        let page = addr & !(ps - 1);
        let Some(region) = self.regions.by_addr(page) else {
            return Err(Stop::Failed(format!(
                "fault at {addr:#x} is outside every region"
            )));
        };
        if self.unregistered.contains(page) {
            // A fault read before its range was unregistered: the unregister woke it,
            // and it is now the kernel's to fill. (The holes are unregistered before
            // any event is read, so this is not expected.)
            tracing::debug!("fault at {addr:#x} in an unregistered hole: left to the kernel");
            return Ok(());
        }
        let offset = region.file_offset + (page - region.host_addr);
        let shared = self.shared.clone();
        let c = &shared.counters;
        let mut have_data = false;
        let (removed, result) = loop {
            let removed = self.removed.contains(page);
            // A page of the working set that the concurrent install has not reached.
            let in_ws = match &self.background {
                Some(bg) if !removed => bg.index.get(&page).copied(),
                _ => None,
            };
            let zero = removed || self.memory.is_hole(offset, ps);
            let r = if let Some(data) = in_ws {
                let bg = self.background.as_ref().expect("checked above");
                let r = match data {
                    Some(i) => {
                        let len = in_memory(ps);
                        self.uffd
                            .copy(page, &bg.ws.data()[i * len..(i + 1) * len], false)
                    }
                    None => self.fill_zero(page, ps, false),
                };
                match r {
                    Err(FillError {
                        errno: Errno::EAGAIN,
                        ..
                    }) => {
                        self.drain_before_retry()?;
                        continue;
                    }
                    Ok(()) => {
                        add(&c.ws_faults, 1);
                        add(&c.fault_serve_ns, nanos(t.elapsed()));
                        return self.wake_page(page);
                    }
                    Err(e) => Err(e),
                }
            } else if zero {
                self.fill_zero(page, ps, false)
            } else {
                if !have_data {
                    // A page that fails its checksum is never installed: the loop
                    // stops, and the owner must not run on (docs/pager.md).
                    self.memory
                        .read_page(offset, &mut self.page_buf)
                        .map_err(|e| Stop::Failed(reap_error::chain(&e)))?;
                    add(&c.bytes_read_lazy, ps);
                    have_data = true;
                }
                self.uffd.copy(page, &self.page_buf, false)
            };
            match r {
                Err(FillError {
                    errno: Errno::EAGAIN,
                    ..
                }) => self.drain_before_retry()?,
                r => break (removed, r.map(|()| zero)),
            }
        };
        // The page is filled without waking its waiters: the counters and the record
        // are updated first, so that once the faulting thread runs on, stats() and
        // recorded_offsets() include its fault.
        match result {
            Ok(zero) => {
                add(
                    if zero {
                        &c.lazy_faults_zero
                    } else {
                        &c.lazy_faults_file
                    },
                    1,
                );
                if !removed
                    && let Some(seen) = &mut self.record
                    && seen.insert(offset)
                {
                    lock(&self.shared.recorded).push(offset);
                }
            }
            Err(FillError {
                errno: Errno::EEXIST,
                ..
            }) => add(&c.faults_already_present, 1),
            Err(FillError {
                errno: Errno::ESRCH,
                ..
            }) => return Err(Stop::OwnerExited),
            Err(e) => return Err(Stop::Failed(format!("serving the fault at {addr:#x}: {e}"))),
        }
        add(&c.fault_serve_ns, nanos(t.elapsed()));
        self.wake_page(page)
    }

    fn wake_page(&self, page: u64) -> Result<(), Stop> {
        match self.uffd.wake(page, self.page_size) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(Stop::OwnerExited),
            Err(e) => Err(Stop::Failed(format!("waking {page:#x}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_set_merges_overlapping_and_touching_ranges() {
        let mut r = RangeSet::default();
        r.insert(0x3000, 0x5000);
        r.insert(0x8000, 0x9000);
        r.insert(0x5000, 0x6000); // touches the first
        r.insert(0x2000, 0x3000); // touches it from below
        assert_eq!(
            r.0.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(),
            vec![(0x2000, 0x6000), (0x8000, 0x9000)]
        );
        r.insert(0x1000, 0xa000); // swallows everything
        assert_eq!(r.0.len(), 1);
        assert!(r.contains(0x1000) && r.contains(0x9fff));
        assert!(!r.contains(0xa000) && !r.contains(0xfff));
        r.insert(0x5000, 0x5000); // empty: ignored
        assert_eq!(r.0.len(), 1);
    }

    #[test]
    fn touched_holes_map_marked_pages_to_file_offsets_in_address_order() {
        // Two ranges: 3 pages at host 0x10000 (file 0x5000), 2 at host 0x20000 (file
        // 0x1000).
        let mut t = TouchedHoles::new(
            vec![(0x10000, 0x13000), (0x20000, 0x22000)],
            vec![0x5000, 0x1000],
            0x1000,
        );
        for k in [4, 0, 2, 4] {
            TouchedHoles::mark(&mut t.bits, &mut t.count, k);
        }
        assert_eq!(t.count, 3, "each page once");
        assert_eq!(t.offsets(0x1000), vec![0x5000, 0x7000, 0x2000]);
        assert!(TouchedHoles::default().offsets(0x1000).is_empty());
    }
}
