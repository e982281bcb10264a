//! The snapshot's memory file: raw guest memory, sparse (zero pages are holes).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use reap_error::PathIoError;

use crate::sums::{Mismatch, PageSums, SumsError};

/// Errors opening a memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// The file cannot be opened or its size read.
    #[error(transparent)]
    Open(PathIoError),
    /// `lseek(SEEK_DATA/SEEK_HOLE)` failed while mapping the file's holes.
    #[error(transparent)]
    Seek(PathIoError),
}

/// A snapshot memory file, opened once, with its data/hole map.
///
/// The map comes from `lseek(SEEK_DATA)`/`lseek(SEEK_HOLE)` at open time. A file system
/// without hole support reports the whole file as data, which is correct, only slower.
#[derive(Debug)]
pub struct MemoryFile {
    file: File,
    path: PathBuf,
    len: u64,
    /// Sorted, disjoint, non-adjacent `[start, end)` byte ranges that hold data.
    data: Vec<(u64, u64)>,
    /// The checksums every page read through [`MemoryFile::read_page`] is checked
    /// against, if the snapshot has them.
    sums: Option<PageSums>,
}

/// Why a page of the memory file could not be read for the guest.
#[derive(Debug, thiserror::Error)]
pub enum PageReadError {
    /// The read failed.
    #[error("cannot read page {offset:#x} of {}", path.display())]
    Io {
        /// The memory file.
        path: PathBuf,
        /// The page's offset.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The page does not match its checksum: the file is damaged.
    #[error(transparent)]
    Damaged(#[from] Mismatch),
}

impl MemoryFile {
    /// Opens `path` read-only and maps its data and holes.
    pub fn open(path: impl AsRef<Path>) -> Result<MemoryFile, MemoryFileError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |what| {
            let on = PathIoError::on(&path, what);
            move |e| MemoryFileError::Open(on(e))
        };
        let file = File::open(&path).map_err(open_err("cannot open the memory file"))?;
        let len = file
            .metadata()
            .map_err(open_err("cannot read the memory file's size"))?
            .len();
        let data = data_extents(&file, len).map_err(|e| {
            MemoryFileError::Seek(PathIoError::on(
                &path,
                "cannot map the holes of the memory file",
            )(e))
        })?;
        Ok(MemoryFile {
            file,
            path,
            len,
            data,
            sums: None,
        })
    }

    /// Attaches the checksums of the file's data pages (`memory.sum`): from now on
    /// [`MemoryFile::read_page`] checks every page it reads against them. Refused if
    /// they are for a file of another length, or if a page that held data when they
    /// were computed is a hole now ([`PageSums::check_map`]; no data is read).
    pub fn with_sums(mut self, sums: PageSums) -> Result<MemoryFile, SumsError> {
        sums.check_map(&self)?;
        self.sums = Some(sums);
        Ok(self)
    }

    /// The checksums attached with [`MemoryFile::with_sums`].
    pub fn sums(&self) -> Option<&PageSums> {
        self.sums.as_ref()
    }

    /// Reads the pages at `offset` (4 KiB aligned; `buf` a whole number of 4 KiB pages)
    /// for the guest: like [`MemoryFile::read_at`], and checked against the checksums
    /// if the file has them. A page that does not match is an error naming the file
    /// and the page's offset, and the caller must not use `buf`.
    pub fn read_page(&self, offset: u64, buf: &mut [u8]) -> Result<(), PageReadError> {
        self.read_at(offset, buf)
            .map_err(|source| PageReadError::Io {
                path: self.path.clone(),
                offset,
                source,
            })?;
        if let Some(sums) = &self.sums {
            sums.verify(&self.path, offset, buf)?;
        }
        Ok(())
    }

    /// The open file (read-only), e.g. to map it.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `[start, end)` ranges that hold data; everything else is a hole.
    pub fn data_extents(&self) -> &[(u64, u64)] {
        &self.data
    }

    /// Bytes of the file that are data (not holes).
    pub fn data_bytes(&self) -> u64 {
        self.data.iter().map(|(s, e)| e - s).sum()
    }

    /// Whether `[offset, offset + len)` lies entirely in holes (or past the end), so it
    /// reads as zeros without any I/O.
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        // The first extent that ends after `offset`.
        let i = self.data.partition_point(|&(_, e)| e <= offset);
        match self.data.get(i) {
            Some(&(s, _)) => s >= end,
            None => true,
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`. Bytes past the end of the file read
    /// as zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A fingerprint of this memory file, stored in working-set files recorded against it
    /// so that a working set from another snapshot is refused: a hash of the file's
    /// length and data/hole map (FNV-1a, 64 bits). It reads no data, so it cannot tell
    /// apart two files of the same length and the same hole map.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        h.write(&self.len.to_le_bytes());
        for (s, e) in &self.data {
            h.write(&s.to_le_bytes());
            h.write(&e.to_le_bytes());
        }
        h.finish()
    }

    /// Drops the file's pages from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`),
    /// to measure a cold start.
    pub fn evict_from_page_cache(&self) -> io::Result<()> {
        fadvise_dontneed(&self.file)
    }
}

/// Drops `file`'s clean pages from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`).
pub fn fadvise_dontneed(file: &File) -> io::Result<()> {
    // SAFETY: posix_fadvise takes a descriptor we own and integers; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        Err(io::Error::from_raw_os_error(rc))
    } else {
        Ok(())
    }
}

fn lseek(file: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    // Offsets below the file's length, which the kernel keeps as an off_t.
    let at =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), at, whence) };
    // A negative result is the error return.
    let Ok(r) = u64::try_from(r) else {
        let e = io::Error::last_os_error();
        // ENXIO: no data (or hole) at or after `offset`.
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    };
    Ok(Some(r))
}

fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Some(start) = lseek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        if start >= len {
            break;
        }
        let end = lseek(file, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if end <= start {
            break;
        }
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => out.push((start, end)),
        }
        pos = end;
    }
    Ok(out)
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("reap-pager-memfile-{}-{name}", std::process::id()))
    }

    #[test]
    fn holes_and_data_are_mapped_at_page_granularity() {
        let path = temp_path("holes");
        {
            let mut f = File::create(&path).unwrap();
            f.set_len(16 * 4096).unwrap();
            f.write_all_at(&[7u8; 4096], 3 * 4096).unwrap();
            f.write_all_at(&[9u8; 8192], 10 * 4096).unwrap();
            f.flush().unwrap();
        }
        let m = MemoryFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(m.len(), 16 * 4096);
        assert_eq!(
            m.data_extents(),
            &[(3 * 4096, 4 * 4096), (10 * 4096, 12 * 4096)]
        );
        assert_eq!(m.data_bytes(), 3 * 4096);
        assert!(m.is_hole(0, 3 * 4096));
        assert!(!m.is_hole(3 * 4096, 4096));
        assert!(!m.is_hole(0, 4 * 4096));
        assert!(m.is_hole(4 * 4096, 6 * 4096));
        assert!(!m.is_hole(11 * 4096, 4096));
        assert!(m.is_hole(12 * 4096, 4 * 4096));
        assert!(m.is_hole(16 * 4096, 4096), "past the end reads as zeros");
        let mut page = vec![1u8; 4096];
        m.read_at(4 * 4096, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0));
        m.read_at(3 * 4096, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 7));
    }

    #[test]
    fn fingerprint_differs_when_the_hole_map_differs() {
        let a = temp_path("fp-a");
        let b = temp_path("fp-b");
        for (p, page) in [(&a, 1u64), (&b, 2u64)] {
            let f = File::create(p).unwrap();
            f.set_len(8 * 4096).unwrap();
            f.write_all_at(&[1u8; 4096], page * 4096).unwrap();
        }
        let (ma, mb) = (MemoryFile::open(&a).unwrap(), MemoryFile::open(&b).unwrap());
        let ma2 = MemoryFile::open(&a).unwrap();
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(&b).unwrap();
        assert_ne!(ma.fingerprint(), mb.fingerprint());
        assert_eq!(ma.fingerprint(), ma2.fingerprint());
    }
}
