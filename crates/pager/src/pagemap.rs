//! The memory owner's page map (`/proc/PID/pagemap`, `/proc/self/pagemap` for this
//! process): which pages of the holes unregistered at start the owner has touched
//! since, so that a recording can list them although they never fault.
//!
//! The page map has one 8-byte entry per 4 KiB page of the address space, at offset
//! `address / 4096 * 8`; bit 63 says the page is present, bit 62 that it is swapped
//! out (`Documentation/admin-guide/mm/pagemap.rst`). Either means the page has been
//! touched since the range became plain anonymous memory: an untouched anonymous page
//! has no entry at all. The flags are readable with `PTRACE_MODE_READ` access to the
//! process (the physical frame numbers are zeroed without `CAP_SYS_ADMIN`; they are
//! not used).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use reap_error::PathIoError;

use crate::num::in_memory;
use crate::uffd::Uffd;

/// Bytes of one page-map entry.
const ENTRY: u64 = 8;
/// Bytes of memory one entry describes.
const ENTRY_PAGE: u64 = 4096;
/// Bit 63: the page is present in memory.
const PRESENT: u64 = 1 << 63;
/// Bit 62: the page is swapped out.
const SWAPPED: u64 = 1 << 62;
/// Entries read per `pread` (512 KiB, for 256 MiB of memory).
const CHUNK_ENTRIES: u64 = 1 << 16;

/// Why the owner's page map cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    /// A received userfaultfd without an owner pid ([`Uffd::with_owner_pid`]), e.g.
    /// from a process in another pid namespace: whose page map to read is unknown.
    #[error("the process owning the memory is unknown (no owner pid)")]
    UnknownOwner,
    /// Opening or reading the page map failed (e.g. no `PTRACE_MODE_READ` access).
    #[error("cannot read the owner's page map")]
    Io(#[source] PathIoError),
    /// The owner has exited: its address space, and its page map, are gone.
    #[error("pid {pid} has exited: its page map is gone")]
    OwnerExited {
        /// The owner's pid.
        pid: i32,
    },
}

/// The process that owns the memory a userfaultfd serves, as far as its page map is
/// concerned.
#[derive(Debug)]
pub enum Owner {
    /// This process ([`Uffd::created_here`]).
    This,
    /// Another process, with a pidfd that tells whether it still lives (and so whether
    /// the pid still names it).
    Pid {
        /// Its pid, in this process's pid namespace.
        pid: i32,
        /// Its pidfd.
        pidfd: OwnedFd,
    },
    /// Not known: a received descriptor without an owner pid.
    Unknown,
}

impl Owner {
    /// The owner of the memory `uffd` serves: this process for a descriptor created
    /// here, else the process [`Uffd::with_owner_pid`] named (its pidfd duplicated).
    pub fn of(uffd: &Uffd) -> io::Result<Owner> {
        if uffd.created_here() {
            return Ok(Owner::This);
        }
        match uffd.owner_pidfd() {
            Some((pid, fd)) => Ok(Owner::Pid {
                pid,
                pidfd: fd.try_clone_to_owned()?,
            }),
            None => Ok(Owner::Unknown),
        }
    }

    fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd, without waiting.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents != 0
    }
}

/// An open page map of the memory's owner.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    path: PathBuf,
    /// The owner's pid; `None` for this process.
    pid: Option<i32>,
    /// The entries read, kept from one scan to the next.
    buf: Vec<u8>,
}

/// This process's own page map, opened ahead by [`open_own`] (a jailed process has no
/// `/proc`).
static OWN: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// Opens this process's page map (`/proc/self/pagemap`) now, for the later scans of
/// [`Owner::This`]: a process about to lose its `/proc` (a jail) calls it first.
pub fn open_own() -> std::io::Result<()> {
    if OWN.get().is_none() {
        let _ = OWN.set(File::open("/proc/self/pagemap")?);
    }
    Ok(())
}

impl Pagemap {
    /// Opens the page map of `owner`. For another process, the pid is checked to still
    /// name the owner after the open (its pidfd has not fired): the open file then
    /// stays tied to the owner's address space, whatever happens to the pid later.
    pub fn open(owner: &Owner) -> Result<Pagemap, PagemapError> {
        let (path, pid) = match owner {
            Owner::This => (PathBuf::from("/proc/self/pagemap"), None),
            Owner::Pid { pid, .. } => (PathBuf::from(format!("/proc/{pid}/pagemap")), Some(*pid)),
            Owner::Unknown => return Err(PagemapError::UnknownOwner),
        };
        let opened = match (owner, OWN.get()) {
            (Owner::This, Some(own)) => own.try_clone(),
            _ => File::open(&path),
        };
        let file = opened
            .map_err(|e| PagemapError::Io(PathIoError::on(&path, "cannot open the page map")(e)))?;
        if let Owner::Pid { pid, pidfd } = owner
            && Owner::has_exited(pidfd.as_fd())
        {
            return Err(PagemapError::OwnerExited { pid: *pid });
        }
        Ok(Pagemap {
            file,
            path,
            pid,
            buf: Vec::new(),
        })
    }

    /// Calls `touched(k)` for every page of `page_size` bytes (4 KiB or 2 MiB) in
    /// `ranges` (`[start, end)` host addresses, page aligned) that the owner has
    /// touched: present or swapped out; a 2 MiB page counts if any of its 4 KiB
    /// entries does. `k` numbers the pages of all ranges one after the other, in the
    /// order given. Reads the entries of the ranges only, 64 Ki entries (512 KiB) at a
    /// time.
    ///
    /// A read of nothing means the owner's address space is gone
    /// ([`PagemapError::OwnerExited`]); the pages reported before are kept.
    pub fn scan(
        &mut self,
        ranges: &[(u64, u64)],
        page_size: u64,
        mut touched: impl FnMut(u64),
    ) -> Result<(), PagemapError> {
        let per_page = (page_size / ENTRY_PAGE).max(1);
        // Whole pages per read: CHUNK_ENTRIES is a multiple of 512.
        let chunk = CHUNK_ENTRIES.max(per_page);
        let longest = ranges
            .iter()
            .map(|&(s, e)| (e - s) / ENTRY_PAGE)
            .max()
            .unwrap_or(0)
            .min(chunk);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(buf.len().max(in_memory(longest * ENTRY)), 0);
        let result = self.scan_with(&mut buf, ranges, per_page, chunk, &mut touched);
        self.buf = buf;
        result
    }

    fn scan_with(
        &self,
        buf: &mut [u8],
        ranges: &[(u64, u64)],
        per_page: u64,
        chunk: u64,
        touched: &mut impl FnMut(u64),
    ) -> Result<(), PagemapError> {
        let mut k = 0u64;
        for &(start, end) in ranges {
            let mut at = start / ENTRY_PAGE;
            let last = end / ENTRY_PAGE;
            while at < last {
                let n = (last - at).min(chunk);
                let bytes = &mut buf[..in_memory(n * ENTRY)];
                self.read_exact_at(bytes, at * ENTRY)?;
                for page in bytes.chunks_exact(in_memory(per_page * ENTRY)) {
                    let any = page.chunks_exact(in_memory(ENTRY)).any(|e| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(e);
                        u64::from_ne_bytes(b) & (PRESENT | SWAPPED) != 0
                    });
                    if any {
                        touched(k);
                    }
                    k += 1;
                }
                at += n;
            }
        }
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PagemapError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(match self.pid {
                        Some(pid) => PagemapError::OwnerExited { pid },
                        None => PagemapError::Io(PathIoError {
                            path: self.path.clone(),
                            what: "short read of the page map",
                            source: io::ErrorKind::UnexpectedEof.into(),
                        }),
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(PagemapError::Io(PathIoError {
                        path: self.path.clone(),
                        what: "cannot read the page map",
                        source: e,
                    }));
                }
            }
        }
        Ok(())
    }
}
