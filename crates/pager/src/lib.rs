//! `reap-pager`: the userfaultfd page server that fills a restored microVM's memory,
//! with REAP's record-and-prefetch.
//!
//! It does not care who owns the memory (reap's own microVM, or a Firecracker process
//! that sent its userfaultfd over a socket): it takes a userfaultfd with the memory
//! registered, the list of regions, and the snapshot's memory file.
//!
//! # API
//!
//! ```text
//! // uffd: a safe userfaultfd
//! Uffd::new() -> Result<Uffd, UffdError>              // /dev/userfaultfd, else the syscall;
//!                                                     // non-blocking, cloexec, EVENT_REMOVE,
//!                                                     // kernel faults included
//! Uffd::from_fd(OwnedFd) -> Result<Uffd, UffdError>   // adopt a received descriptor
//! Uffd::with_owner_pid(self, pid: i32) -> Result<Uffd, UffdError> // watch the owner (pidfd)
//! Uffd::register(&self, addr: u64, len: u64) -> Result<u64, Errno>  // MISSING mode
//! Uffd::unregister(&self, addr: u64, len: u64) -> Result<(), Errno>
//! Uffd::copy(&self, dst: u64, src: &[u8], wake: bool) -> Result<(), FillError>
//! Uffd::zeropage(&self, dst: u64, len: u64, wake: bool) -> Result<(), FillError>
//! Uffd::wake(&self, addr: u64, len: u64) -> Result<(), Errno>
//! Uffd::read_events(&self, out: &mut Vec<Event>) -> Result<usize, Errno>
//! Uffd::owner_alive(&self, probe_addr: u64, page_size: u64) -> bool
//! Uffd::created_here(&self) -> bool                   // Uffd::new: the memory is ours
//! FillError { copied: u64, errno: Errno }             // a partial fill is bytes + errno
//!
//! // memory
//! Region { host_addr: u64, len: u64, file_offset: u64, page_size: u64 } // 4 KiB or 2 MiB
//! MemoryFile::open(path) -> Result<MemoryFile, MemoryFileError>   // data/hole map
//! MemoryFile::is_hole(&self, offset, len) -> bool; read_at; fingerprint; evict_from_page_cache
//! MemoryFile::with_sums(self, PageSums) -> Result<MemoryFile, SumsError> // memory.sum attached:
//!     // every page the server reads (lazy, record, WS build) and every WS data page
//!     // prefetched is checked against it
//! MemoryFile::read_page(&self, offset, buf) -> Result<(), PageReadError> // read + verify
//!
//! // the checksums of the memory file's data pages (memory.sum)
//! PageSums::compute(&MemoryFile) -> Result<PageSums, SumsError>  // reads the data pages
//! PageSums::load(path) / decode(bytes) / write(path) / encode() / file_crc()
//! PageSums::verify(&self, path, offset, data) -> Result<(), Mismatch>
//! PageSums::check_map(&self, &MemoryFile) / verify_file(&self, &MemoryFile) // whole file
//!
//! // memory modes and the working-set policy (the one place that looks for the WS file)
//! MemoryMode::File | Lazy | Record | Reap                // clap (feature), serde, FromStr
//! WsPolicy::new(MemoryMode, Option<PathBuf>) -> Result<Option<WsPolicy>, RecordWithoutWs>
//! WsPolicy::Lazy | Record { ws } | Reap { ws }; WsPolicy::resolve(&self) -> Resolved { mode, record_into }
//! policy::ws_exists(path) -> bool; policy::remove_ws(path) -> io::Result<bool>
//! policy::WsWriting::start(path) (a guard) / ws_being_written(path) / wait_for_ws_writes()
//!     // a WS file written in the background: REAP resolves to lazy meanwhile
//!
//! // the server
//! PageServer::start(Uffd, Vec<Region>, MemoryFile, Mode) -> Result<PageServer, PagerError>
//! PageServer::start_with(Uffd, Vec<Region>, MemoryFile, Mode, ServeOptions) -> Result<..>
//! Mode::Lazy | Mode::Record | Mode::Prefetch { ws: PathBuf }
//! ServeOptions { holes: Holes, max_hole_ranges: usize, min_installed_zero_run: u64,
//!                concurrent_install: bool, first_install_pages: u64 }
//!     // non_exhaustive, built as ServeOptions::default().holes(Holes::Served)...
//!     // (one builder method per field); defaults: Kernel, MAX_HOLE_RANGES = 1024,
//!     // MIN_INSTALLED_ZERO_RUN = 32 KiB, concurrent install on, FIRST_INSTALL_PAGES = 64
//! Holes::Kernel (holes unregistered at start) | Holes::Served (served as zero pages)
//! PageServer::stats(&self) -> PagerStats               // while running
//! PageServer::is_running(&self) -> bool
//! PageServer::stopped_event(&self) -> BorrowedFd<'_>  // POLLIN once the loop stopped
//! PageServer::stop_reason(&self) -> Option<StopReason>
//! PageServer::recorded_offsets(&self) -> Vec<u64>      // record mode, fault order
//! PageServer::scan_touched_holes(&self) -> Result<u64, PagerError> // record mode: the
//!     // owner's page map over the unregistered holes; hole pages recorded so far
//! PageServer::recorded_hole_offsets(&self) -> Vec<u64> // those, address order
//! PageServer::write_ws(&self, path: &Path) -> Result<WsSummary, PagerError> // record mode:
//!     // scan, then the faulting pages in fault order and the holes touched
//! PageServer::ws_writer(&self) -> WsWriter             // scan now, write later:
//!     // WsWriter::write(&self, path) on any thread; WsWriter::pages()
//! PageServer::stop(self) -> PagerStats                 // Drop stops it too
//!
//! PageServer::memory_file(&self) -> &MemoryFile
//! PagerStats { holes, hole_ranges_unregistered, hole_bytes_unregistered,
//!              hole_ranges_served, hole_unregister_errors, unregister_ns,
//!              lazy_faults_file, lazy_faults_zero, faults_already_present, remove_events,
//!              prefetched_pages, prefetched_zero_pages, ws_zero_pages_unregistered,
//!              install_ioctls, bytes_read_fetch, background_install_ns,
//!              background_installed_pages, install_planned_pages, ws_faults,
//!              bytes_read_lazy, fetch_ns, verify_ns, install_ns, fault_serve_ns,
//!              fetch_direct, recorded_pages, recorded_hole_pages, hole_scan_ns,
//!              prefetch_fell_back, fallback_reason,
//!              stopped: Option<StopReason>, mode }                 // Serialize
//! StopReason::Requested | StopReason::OwnerExited | StopReason::Failed(String)
//!
//! // the WS file (docs/ws-format.md)
//! ws::WorkingSet::load(path, &MemoryFile, page_size) -> Result<WorkingSet, WsError>
//! ws::WorkingSet::pages(&self) -> impl Iterator<Item = WsPage { offset, zero }>
//! ws::WorkingSet::data(&self) -> &[u8]                 // data pages, table order
//! ws::write_ws(path, page_size, offsets: &[u64], &MemoryFile) -> Result<WsSummary, WsWriteError>
//!
//! // the owner's page map (/proc/PID/pagemap)
//! pagemap::Owner::of(&Uffd) -> io::Result<Owner>      // This | Pid { pid, pidfd } | Unknown
//! pagemap::Pagemap::open(&Owner) -> Result<Pagemap, PagemapError>
//! pagemap::Pagemap::scan(&mut self, ranges, page_size, touched: FnMut(u64)) -> Result<(), PagemapError>
//! ```
//!
//! # Holes
//!
//! Guest memory that is a hole of the memory file (never written before the snapshot)
//! reads as zeros. With [`Holes::Kernel`], the default, [`PageServer::start`] first
//! unregisters those ranges from the userfaultfd (`UFFDIO_UNREGISTER` acts on the
//! address space of the process that created the descriptor, so this works for a
//! received Firecracker descriptor too): they become plain anonymous memory, which the
//! kernel zero-fills on first touch, without a fault reaching the server. Whole pages
//! of the regions' page size only; at most [`ServeOptions::max_hole_ranges`] ranges
//! (the largest). The pages of a working set being prefetched stay registered, so that
//! the install fills them, except its zero pages in runs shorter than
//! [`ServeOptions::min_installed_zero_run`] (32 KiB), which are cheaper left to the
//! kernel. A range the kernel refuses to unregister stays registered and is served (one
//! warning). [`Holes::Served`] keeps every hole registered and served as zero pages.
//!
//! # Modes
//!
//! - [`Mode::Lazy`]: every fault reads its page from the memory file (`pread`) and
//!   installs it with `UFFDIO_COPY`; pages in holes that are still registered are
//!   installed with `UFFDIO_ZEROPAGE` without any read.
//! - [`Mode::Record`]: lazy, plus the faulting pages in fault order (each once; with
//!   [`Holes::Kernel`] that is the data pages only, since holes do not fault);
//!   [`PageServer::write_ws`] writes them, with the snapshot's contents read from the
//!   memory file, to a WS file (atomically), followed by the hole pages the owner
//!   touched, found in its page map ([`PageServer::scan_touched_holes`]; while the
//!   owner lives), as zero pages.
//! - [`Mode::Prefetch`]: [`PageServer::start`] reads the WS file with one `O_DIRECT`
//!   read, checks it, and installs it (one ioctl per contiguous run) before returning;
//!   with [`ServeOptions::concurrent_install`] (the default) only its first
//!   [`ServeOptions::first_install_pages`] pages, in recorded fault order, and the fault
//!   loop installs the rest while the guest runs, serving the faults that arrive
//!   meanwhile first (from the fetched set for its pages, counted as
//!   [`PagerStats::ws_faults`]); what the set does not hold is served lazily and counted ([`PagerStats::lazy_faults_file`] is the
//!   signal for re-recording). A WS file that is refused (damaged, truncated, foreign,
//!   not fitting the memory file or the regions) makes the server warn and serve
//!   lazily, with [`PagerStats::prefetch_fell_back`] set: it costs speed, never
//!   correctness. A caller that wants to refuse instead checks the file first with
//!   [`ws::WorkingSet::load`].
//!
//! # Checksums
//!
//! A [`MemoryFile`] given the checksums of its data pages ([`MemoryFile::with_sums`],
//! a snapshot's `memory.sum`) has every page the server reads from it checked before
//! it is installed or written into a WS file, and every data page of a prefetched WS
//! file checked against them. A lazy fault on a page that fails stops the fault loop
//! with [`StopReason::Failed`] naming the file and the page's offset; the page is never
//! installed. A WS file that fails is refused (served lazily, checked page by page);
//! [`PageServer::write_ws`] fails rather than write a page that fails.
//!
//! # The fault loop
//!
//! One thread (`reap-pager`) per server polls the userfaultfd, a stop eventfd and, if
//! given, the owner's pidfd. `EEXIST` from a fill means the page is already there (the
//! waiters are woken); `EAGAIN` means the owner's memory map is changing: the pending
//! events are read first, then the fill is retried. `UFFD_EVENT_REMOVE` (the owner's
//! `madvise(MADV_DONTNEED)`) marks its range: later faults there get zero pages, never
//! snapshot data. The loop stops when asked ([`PageServer::stop`] or drop), when the
//! owner exits (its pidfd fires, a fill returns `ESRCH`, or an idle check every
//! [`IDLE_CHECK_MS`] finds its address space gone: the userfaultfd itself never reports
//! `POLLHUP`), or when the userfaultfd reports an error.

#![warn(missing_docs)]
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod buf;
pub mod memfile;
mod num;
pub mod pagemap;
pub mod policy;
pub mod region;
mod server;
pub mod sums;
pub mod uffd;
pub mod ws;

pub use memfile::{MemoryFile, MemoryFileError, PageReadError};
pub use policy::{MemoryMode, RecordWithoutWs, Resolved, UnknownMode, WsPolicy};
pub use region::{PAGE_2M, PAGE_4K, Region, RegionError};
pub use server::{
    FIRST_INSTALL_PAGES, Holes, IDLE_CHECK_MS, INSTALL_CHUNK_PAGES, MAX_HOLE_RANGES,
    MIN_INSTALLED_ZERO_RUN, Mode, PageServer, PagerError, PagerStats, ServeOptions, StopReason,
    WsWriter,
};
pub use sums::{Mismatch, PageSums, SumsError};
pub use uffd::{Errno, Event, FillError, Uffd, UffdError};
pub use ws::{WorkingSet, WsError, WsSummary, WsWriteError};
