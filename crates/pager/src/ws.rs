//! The working-set (WS) file: the pages a restore touched, in fault order, with their
//! contents from the snapshot's memory file, laid out for one `O_DIRECT` read.
//!
//! The format is an interface (documented in `docs/ws-format.md`):
//!
//! ```text
//! offset  size  field
//!      0     8  magic "REAPWSET"
//!      8     4  format version (1)
//!     12     4  header length (128)
//!     16     8  page size (4096 or 2 MiB)
//!     24     8  page count: entries in the offset table
//!     32     8  data page count: entries that have contents
//!     40     8  offset of the offset table (= header length)
//!     48     8  offset of the page contents (multiple of 4096)
//!     56     8  file length (multiple of 4096)
//!     64     8  length of the memory file the set was recorded against
//!     72     8  fingerprint of that memory file (`MemoryFile::fingerprint`)
//!     80     4  CRC-32 (IEEE) of the whole file with these 4 bytes as zero
//!     84     4  flags (0 in version 1)
//!     88    40  reserved, zero
//!    128  8*n  offset table: u64 memory-file offsets in fault order; bit 0 set = the
//!              page is zero (no contents stored)
//!      …        zero padding up to the contents offset
//!      …        contents of the data pages, in table order, `page size` bytes each
//! ```
//! All integers are little-endian.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use reap_error::PathIoError;

use crate::buf::AlignedBuf;
use crate::memfile::{MemoryFile, PageReadError};
use crate::num::{in_memory, nanos};
use crate::sums::PageSums;

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"REAPWSET";
/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Length of the version 1 header.
pub const HEADER_LEN: u64 = 128;
/// Alignment of the contents and of the file length, for `O_DIRECT`.
pub const ALIGN: u64 = 4096;
/// Bit of an offset-table entry marking a zero page (no contents stored).
pub const ZERO_FLAG: u64 = 1;
/// Absolute cap on the page count, whatever the memory file's size (64 GiB of 4 KiB
/// pages).
pub const MAX_PAGES: u64 = 1 << 24;

const CHECKSUM_AT: usize = 80;
/// [`HEADER_LEN`] as an index.
const HEADER: usize = 128;
/// [`HEADER_LEN`] as its header field.
const HEADER_FIELD: u32 = 128;
const _: () = assert!(HEADER as u64 == HEADER_LEN && HEADER_FIELD as u64 == HEADER_LEN);

/// Why a WS file was refused. Any of these means "prefetch nothing, serve lazily".
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The file cannot be opened or read.
    #[error(transparent)]
    Io(PathIoError),
    /// Not a WS file (wrong magic).
    #[error("not a working-set file (magic {found:02x?})")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// A format version this build does not know.
    #[error("working-set format version {found} is not supported (this build reads {VERSION})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
    },
    /// The file is shorter than its header says (or than a header).
    #[error("working-set file is truncated: {len} bytes, {expected} expected")]
    Truncated {
        /// The file's length.
        len: u64,
        /// The length it should have.
        expected: u64,
    },
    /// The file is longer than its header says, or not a multiple of 4096 bytes.
    #[error("working-set file has {len} bytes, {expected} expected")]
    BadLength {
        /// The file's length.
        len: u64,
        /// The length it should have.
        expected: u64,
    },
    /// Header fields that contradict each other or the format.
    #[error("working-set header is inconsistent: {0}")]
    BadHeader(&'static str),
    /// More pages, or more bytes, than the memory file could ever need.
    #[error("working set too large: {what} is {found}, at most {cap}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its value.
        found: u64,
        /// The cap.
        cap: u64,
    },
    /// The CRC does not match: the file is damaged.
    #[error("working-set checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// The stored CRC.
        stored: u32,
        /// The CRC of the file as read.
        computed: u32,
    },
    /// Recorded with another page size than the restore uses.
    #[error("working set has {found}-byte pages, the memory uses {expected}-byte pages")]
    PageSizeMismatch {
        /// The file's page size.
        found: u64,
        /// The restore's page size.
        expected: u64,
    },
    /// Recorded against another memory file (other length or hole map).
    #[error(
        "working set was recorded against another memory file ({found_len} bytes, fingerprint {found_fp:#018x}; this one: {len} bytes, {fp:#018x})"
    )]
    ForeignMemory {
        /// Length recorded in the WS file.
        found_len: u64,
        /// Fingerprint recorded in the WS file.
        found_fp: u64,
        /// This memory file's length.
        len: u64,
        /// This memory file's fingerprint.
        fp: u64,
    },
    /// An offset that is misaligned, has unknown flag bits, or lies past the memory file.
    #[error("working-set entry {index}: offset {offset:#x} is {problem}")]
    BadOffset {
        /// Index in the offset table.
        index: u64,
        /// The raw entry.
        offset: u64,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The same page listed twice.
    #[error("working-set entry {index}: page {offset:#x} is listed twice")]
    Duplicate {
        /// Index in the offset table.
        index: u64,
        /// The page's offset.
        offset: u64,
    },
    /// A page of the set does not match the memory file's checksum (`memory.sum`): it
    /// was built from a damaged memory file, or for another one.
    #[error(
        "working-set page {offset:#x} does not match the memory file's checksum (stored \
         {stored:#010x}, computed {computed:#010x})"
    )]
    Damaged {
        /// The page's memory-file offset.
        offset: u64,
        /// The memory file's checksum of the page.
        stored: u32,
        /// The checksum of the set's contents (of zeros for a zero entry).
        computed: u32,
    },
    /// A page of the set lies in no region of the restored memory.
    #[error("working-set page {offset:#x} lies in no memory region")]
    OutsideRegions {
        /// The page's memory-file offset.
        offset: u64,
    },
}

/// Errors writing a WS file.
#[derive(Debug, thiserror::Error)]
pub enum WsWriteError {
    /// Reading page contents from the memory file failed, or a page does not match
    /// the memory file's checksums.
    #[error(transparent)]
    ReadMemory(#[from] PageReadError),
    /// Writing, syncing or renaming the file failed (on the temporary file, the final
    /// path, or the directory).
    #[error(transparent)]
    Write(PathIoError),
    /// An offset that is not page aligned or lies past the memory file.
    #[error(
        "page offset {offset:#x} is not a {page_size}-byte page of a {file_len}-byte memory file"
    )]
    BadOffset {
        /// The offset.
        offset: u64,
        /// The page size.
        page_size: u64,
        /// The memory file's length.
        file_len: u64,
    },
    /// A page size other than 4 KiB or 2 MiB.
    #[error("unsupported page size {0}")]
    PageSize(u64),
    /// More pages than [`MAX_PAGES`].
    #[error("{0} pages is more than a working set may hold")]
    TooLarge(u64),
}

/// One entry of a working set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsPage {
    /// The page's offset in the memory file.
    pub offset: u64,
    /// The page is all zeros: no contents stored; the install copies zeros into it (or
    /// leaves it to the kernel when it lies in a hole the server unregistered).
    pub zero: bool,
}

/// What [`write_ws`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WsSummary {
    /// Entries in the offset table.
    pub pages: u64,
    /// Pages whose contents are stored.
    pub data_pages: u64,
    /// Pages stored as zero (holes of the memory file, or all-zero contents).
    pub zero_pages: u64,
    /// The file's length.
    pub file_len: u64,
}

/// The parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsHeader {
    /// Page size.
    pub page_size: u64,
    /// Entries in the offset table.
    pub page_count: u64,
    /// Entries with contents.
    pub data_pages: u64,
    /// Offset of the offset table.
    pub entries_offset: u64,
    /// Offset of the contents.
    pub data_offset: u64,
    /// File length.
    pub file_len: u64,
    /// Length of the memory file recorded against.
    pub memory_len: u64,
    /// Fingerprint of the memory file recorded against.
    pub memory_fingerprint: u64,
    /// Stored CRC-32.
    pub checksum: u32,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn data_offset_for(page_count: u64) -> Option<u64> {
    HEADER_LEN
        .checked_add(page_count.checked_mul(8)?)?
        .checked_next_multiple_of(ALIGN)
}

impl WsHeader {
    /// Parses and checks the header at the start of `b` (magic, version, layout), without
    /// the checksum. `file_len` is the real length of the file.
    pub fn parse(b: &[u8], file_len: u64) -> Result<WsHeader, WsError> {
        if b.len() < MAGIC.len() || b[..MAGIC.len()] != MAGIC {
            return Err(WsError::BadMagic {
                found: b[..b.len().min(8)].to_vec(),
            });
        }
        if b.len() < 12 {
            return Err(WsError::Truncated {
                len: file_len,
                expected: HEADER_LEN,
            });
        }
        let version = le32(b, 8);
        if version != VERSION {
            return Err(WsError::UnsupportedVersion { found: version });
        }
        if (b.len() as u64) < HEADER_LEN {
            return Err(WsError::Truncated {
                len: file_len,
                expected: HEADER_LEN,
            });
        }
        if u64::from(le32(b, 12)) != HEADER_LEN {
            return Err(WsError::BadHeader("header length is not 128"));
        }
        let h = WsHeader {
            page_size: le64(b, 16),
            page_count: le64(b, 24),
            data_pages: le64(b, 32),
            entries_offset: le64(b, 40),
            data_offset: le64(b, 48),
            file_len: le64(b, 56),
            memory_len: le64(b, 64),
            memory_fingerprint: le64(b, 72),
            checksum: le32(b, CHECKSUM_AT),
        };
        if le32(b, 84) != 0 {
            return Err(WsError::BadHeader("unknown flags"));
        }
        if b[88..HEADER].iter().any(|&x| x != 0) {
            return Err(WsError::BadHeader("reserved bytes are not zero"));
        }
        if h.page_size != crate::PAGE_4K && h.page_size != crate::PAGE_2M {
            return Err(WsError::BadHeader("page size is neither 4 KiB nor 2 MiB"));
        }
        if h.page_count > MAX_PAGES {
            return Err(WsError::TooLarge {
                what: "page count",
                found: h.page_count,
                cap: MAX_PAGES,
            });
        }
        if h.data_pages > h.page_count {
            return Err(WsError::BadHeader("more data pages than pages"));
        }
        if h.entries_offset != HEADER_LEN {
            return Err(WsError::BadHeader(
                "offset table does not follow the header",
            ));
        }
        if Some(h.data_offset) != data_offset_for(h.page_count) {
            return Err(WsError::BadHeader(
                "contents offset does not follow the offset table",
            ));
        }
        let expected = h
            .data_pages
            .checked_mul(h.page_size)
            .and_then(|d| d.checked_add(h.data_offset))
            .ok_or(WsError::BadHeader("file length overflows"))?;
        if h.file_len != expected {
            return Err(WsError::BadHeader(
                "file length does not match the page counts",
            ));
        }
        if file_len < h.file_len {
            return Err(WsError::Truncated {
                len: file_len,
                expected: h.file_len,
            });
        }
        if file_len > h.file_len {
            return Err(WsError::BadLength {
                len: file_len,
                expected: h.file_len,
            });
        }
        Ok(h)
    }
}

/// CRC-32 of a whole WS file image, with the checksum field taken as zero.
pub fn checksum(image: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&image[..CHECKSUM_AT]);
    h.update(&[0; 4]);
    h.update(&image[CHECKSUM_AT + 4..]);
    h.finalize()
}

/// How a WS file was fetched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchInfo {
    /// Bytes read.
    pub bytes: u64,
    /// Time to open and read the file, in nanoseconds.
    pub fetch_ns: u64,
    /// Time to check its checksum and entries, in nanoseconds.
    pub verify_ns: u64,
    /// The read bypassed the page cache (`O_DIRECT`); false if the file system refused
    /// `O_DIRECT` and a buffered read was used.
    pub direct: bool,
}

/// A validated working set in memory: the whole file, read at once.
#[derive(Debug)]
pub struct WorkingSet {
    header: WsHeader,
    image: AlignedBuf,
    fetch: FetchInfo,
}

impl WorkingSet {
    /// Reads the WS file at `path` with one `O_DIRECT` read into an aligned buffer and
    /// validates it for `memory` and pages of `page_size` bytes: magic, version, layout,
    /// length, checksum, page size, memory-file identity, every offset (aligned, no
    /// unknown flags, inside the memory file, no duplicates).
    pub fn load(path: &Path, memory: &MemoryFile, page_size: u64) -> Result<WorkingSet, WsError> {
        let io_err = |what| move |e| WsError::Io(PathIoError::on(path, what)(e));
        let read_err = io_err("cannot read the working-set file");
        let t0 = Instant::now();
        let (file, direct) =
            open_direct(path).map_err(io_err("cannot open the working-set file"))?;
        let len = file.metadata().map_err(read_err)?.len();
        // The largest file a set for this memory file can be: every page once, with
        // contents.
        let max_pages = (memory.len() / page_size).min(MAX_PAGES);
        let cap = data_offset_for(max_pages)
            .unwrap_or(u64::MAX)
            .saturating_add(max_pages * page_size);
        if !len.is_multiple_of(ALIGN) || len < ALIGN || len > cap {
            // Not something to read whole: read the header for the most precise error.
            let mut head = [0u8; HEADER];
            let n = read_prefix(path, &mut head).map_err(read_err)?;
            let h = WsHeader::parse(&head[..n], len)?;
            if h.file_len > cap {
                return Err(WsError::TooLarge {
                    what: "file length",
                    found: h.file_len,
                    cap,
                });
            }
            return Err(WsError::BadLength {
                len,
                expected: h.file_len,
            });
        }
        // At most `cap`, which a 32-bit address space may still not hold.
        let len_bytes = usize::try_from(len).map_err(|_| WsError::TooLarge {
            what: "file length",
            found: len,
            cap: usize::MAX as u64,
        })?;
        let mut image = AlignedBuf::zeroed(len_bytes)
            .map_err(io_err("no memory to read the working-set file into"))?;
        let direct = match read_full(&file, &mut image) {
            Ok(()) => direct,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // The file system takes O_DIRECT at open but not for this read.
                let f = File::open(path).map_err(io_err("cannot open the working-set file"))?;
                read_full(&f, &mut image).map_err(read_err)?;
                false
            }
            Err(e) => return Err(read_err(e)),
        };
        let fetch_ns = nanos(t0.elapsed());
        let t1 = Instant::now();
        let header = validate(&image, memory, page_size)?;
        let verify_ns = nanos(t1.elapsed());
        Ok(WorkingSet {
            header,
            image,
            fetch: FetchInfo {
                bytes: len,
                fetch_ns,
                verify_ns,
                direct,
            },
        })
    }

    /// The header.
    pub fn header(&self) -> &WsHeader {
        &self.header
    }

    /// How the file was fetched.
    pub fn fetch_info(&self) -> FetchInfo {
        self.fetch
    }

    /// Number of pages (entries).
    pub fn len(&self) -> usize {
        // The entries are in the image held in memory.
        in_memory(self.header.page_count)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.header.page_count == 0
    }

    /// The pages in fault order.
    pub fn pages(&self) -> impl ExactSizeIterator<Item = WsPage> + '_ {
        let at = in_memory(self.header.entries_offset);
        self.image[at..at + 8 * self.len()]
            .chunks_exact(8)
            .map(|c| {
                let e = le64(c, 0);
                WsPage {
                    offset: e & !ZERO_FLAG,
                    zero: e & ZERO_FLAG != 0,
                }
            })
    }

    /// The stored contents: the data pages, in table order, `page_size` bytes each.
    pub fn data(&self) -> &[u8] {
        &self.image[in_memory(self.header.data_offset)..]
    }
}

/// Validates a whole WS file image (see [`WorkingSet::load`]).
pub fn validate(image: &[u8], memory: &MemoryFile, page_size: u64) -> Result<WsHeader, WsError> {
    let h = WsHeader::parse(image, image.len() as u64)?;
    let computed = checksum(image);
    if computed != h.checksum {
        return Err(WsError::ChecksumMismatch {
            stored: h.checksum,
            computed,
        });
    }
    if h.page_size != page_size {
        return Err(WsError::PageSizeMismatch {
            found: h.page_size,
            expected: page_size,
        });
    }
    if h.memory_len != memory.len() || h.memory_fingerprint != memory.fingerprint() {
        return Err(WsError::ForeignMemory {
            found_len: h.memory_len,
            found_fp: h.memory_fingerprint,
            len: memory.len(),
            fp: memory.fingerprint(),
        });
    }
    let max_pages = memory.len() / page_size;
    if h.page_count > max_pages {
        return Err(WsError::TooLarge {
            what: "page count",
            found: h.page_count,
            cap: max_pages,
        });
    }
    let words = usize::try_from(max_pages.div_ceil(64)).map_err(|_| WsError::TooLarge {
        what: "page count of the memory file",
        found: max_pages,
        cap: usize::MAX as u64,
    })?;
    let mut seen = vec![0u64; words];
    let mut data_pages = 0;
    // `parse` checked that the table lies inside the image.
    let table = &image[in_memory(h.entries_offset)..in_memory(h.entries_offset + 8 * h.page_count)];
    for (index, c) in table.chunks_exact(8).enumerate() {
        let index = index as u64;
        let e = le64(c, 0);
        let offset = e & !ZERO_FLAG;
        if !offset.is_multiple_of(page_size) || e & (page_size - 1) & !ZERO_FLAG != 0 {
            return Err(WsError::BadOffset {
                index,
                offset: e,
                problem: "not page aligned",
            });
        }
        if offset >= memory.len() || memory.len() - offset < page_size {
            return Err(WsError::BadOffset {
                index,
                offset: e,
                problem: "past the end of the memory file",
            });
        }
        // Below `max_pages`, whose bitmap is allocated.
        let page = in_memory(offset / page_size);
        if seen[page / 64] & (1 << (page % 64)) != 0 {
            return Err(WsError::Duplicate { index, offset });
        }
        seen[page / 64] |= 1 << (page % 64);
        if e & ZERO_FLAG == 0 {
            data_pages += 1;
        }
    }
    if data_pages != h.data_pages {
        return Err(WsError::BadHeader(
            "data page count does not match the offset table",
        ));
    }
    if let Some(sums) = memory.sums() {
        verify_contents(image, &h, sums)?;
    }
    Ok(h)
}

/// Checks the contents of a set (its CRC already checked) against the memory file's
/// checksums: every data page as stored, every zero entry as zeros.
fn verify_contents(image: &[u8], h: &WsHeader, sums: &PageSums) -> Result<(), WsError> {
    let table = &image[in_memory(h.entries_offset)..in_memory(h.entries_offset + 8 * h.page_count)];
    let ps = in_memory(h.page_size);
    let mut data = &image[in_memory(h.data_offset)..];
    for c in table.chunks_exact(8) {
        let e = le64(c, 0);
        let offset = e & !ZERO_FLAG;
        if e & ZERO_FLAG != 0 {
            for k in 0..h.page_size / crate::sums::CHUNK {
                let at = offset + k * crate::sums::CHUNK;
                let stored = sums.expected_at(at);
                if stored != crate::sums::ZERO_CHUNK_CRC {
                    return Err(WsError::Damaged {
                        offset: at,
                        stored,
                        computed: crate::sums::ZERO_CHUNK_CRC,
                    });
                }
            }
        } else {
            let (page, rest) = data.split_at(ps);
            data = rest;
            if let Some((offset, stored, computed)) = sums.first_bad(offset, page) {
                return Err(WsError::Damaged {
                    offset,
                    stored,
                    computed,
                });
            }
        }
    }
    Ok(())
}

fn open_direct(path: &Path) -> io::Result<(File, bool)> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((File::open(path)?, false)),
        Err(e) => Err(e),
    }
}

/// Reads the whole of `buf` from offset 0. One `pread` does it unless the kernel caps
/// the transfer (about 2 GiB per call) or a signal interrupts it.
fn read_full(file: &File, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "working-set file shrank while read",
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Builds the image of a WS file for `pages` of `memory`, in the given order (the first
/// occurrence of a repeated offset counts). Page contents come from the memory file;
/// pages that are holes, or whose contents are all zero, are stored as zero pages.
pub fn build_image(
    page_size: u64,
    pages: &[u64],
    memory: &MemoryFile,
) -> Result<(Vec<u8>, WsSummary), WsWriteError> {
    if page_size != crate::PAGE_4K && page_size != crate::PAGE_2M {
        return Err(WsWriteError::PageSize(page_size));
    }
    let mut seen = std::collections::HashSet::with_capacity(pages.len());
    let mut entries = Vec::with_capacity(pages.len());
    let mut contents: Vec<u8> = Vec::new();
    let mut page = vec![0u8; in_memory(page_size)];
    for &offset in pages {
        if !offset.is_multiple_of(page_size)
            || offset
                .checked_add(page_size)
                .is_none_or(|e| e > memory.len())
        {
            return Err(WsWriteError::BadOffset {
                offset,
                page_size,
                file_len: memory.len(),
            });
        }
        if !seen.insert(offset) {
            continue;
        }
        let zero = memory.is_hole(offset, page_size) || {
            memory.read_page(offset, &mut page)?;
            page.iter().all(|&b| b == 0)
        };
        if zero {
            entries.push(offset | ZERO_FLAG);
        } else {
            entries.push(offset);
            contents.extend_from_slice(&page);
        }
    }
    let page_count = entries.len() as u64;
    if page_count > MAX_PAGES {
        return Err(WsWriteError::TooLarge(page_count));
    }
    let data_pages = contents.len() as u64 / page_size;
    let data_offset = data_offset_for(page_count).ok_or(WsWriteError::TooLarge(page_count))?;
    let file_len = data_offset + contents.len() as u64;
    // The contents are in memory, and the table is at most 128 MiB (MAX_PAGES).
    let mut image = Vec::with_capacity(in_memory(file_len));
    image.extend_from_slice(&MAGIC);
    image.extend_from_slice(&VERSION.to_le_bytes());
    image.extend_from_slice(&HEADER_FIELD.to_le_bytes());
    for v in [
        page_size,
        page_count,
        data_pages,
        HEADER_LEN,
        data_offset,
        file_len,
        memory.len(),
        memory.fingerprint(),
    ] {
        image.extend_from_slice(&v.to_le_bytes());
    }
    image.resize(HEADER, 0); // checksum (filled below), flags, reserved
    for e in &entries {
        image.extend_from_slice(&e.to_le_bytes());
    }
    image.resize(in_memory(data_offset), 0);
    image.extend_from_slice(&contents);
    let crc = checksum(&image);
    image[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&crc.to_le_bytes());
    let summary = WsSummary {
        pages: page_count,
        data_pages,
        zero_pages: page_count - data_pages,
        file_len,
    };
    Ok((image, summary))
}

/// Writes the WS file for `pages` (memory-file offsets in fault order) to `path`,
/// atomically: a temporary file in the same directory, `fsync`, `rename`, `fsync` of the
/// directory. See [`build_image`] for what goes in.
pub fn write_ws(
    path: &Path,
    page_size: u64,
    pages: &[u64],
    memory: &MemoryFile,
) -> Result<WsSummary, WsWriteError> {
    let (image, summary) = build_image(page_size, pages, memory)?;
    write_atomic(path, &image)?;
    Ok(summary)
}

/// Replaces `path` with `bytes` atomically (temporary file in the same directory, fsync,
/// rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WsWriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per writer: several recording restores of one snapshot may finish at once
    // (in one process or several); the last rename wins, each file is complete.
    static WRITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let writer = WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{writer}", std::process::id()));
    let werr = |p: &Path, what| {
        let on = PathIoError::on(p.to_path_buf(), what);
        move |e| WsWriteError::Write(on(e))
    };
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })()
    .map_err(werr(
        &tmp,
        "cannot write the working set into a temporary file",
    ));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(
            path,
            "cannot rename the working set's temporary file to it",
        )(e));
    }
    File::open(&dir).and_then(|d| d.sync_all()).map_err(werr(
        &dir,
        "cannot sync the directory of the working-set file",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    struct Fixture {
        mem: MemoryFile,
        path: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// A 64-page memory file: page i holds byte i+1, except holes at pages 8..16 and a
    /// data page of zeros at page 20.
    fn fixture(name: &str) -> Fixture {
        let path =
            std::env::temp_dir().join(format!("reap-pager-ws-{}-{name}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(64 * 4096).unwrap();
        for i in (0..64u64).filter(|i| !(8..16).contains(i)) {
            let b = if i == 20 {
                0
            } else {
                u8::try_from(i + 1).unwrap()
            };
            f.write_all_at(&[b; 4096], i * 4096).unwrap();
        }
        Fixture {
            mem: MemoryFile::open(&path).unwrap(),
            path,
        }
    }

    fn image(fx: &Fixture, pages: &[u64]) -> Vec<u8> {
        let offs: Vec<u64> = pages.iter().map(|p| p * 4096).collect();
        build_image(4096, &offs, &fx.mem).unwrap().0
    }

    /// Rewrites the checksum after a deliberate edit, so that a later check is reached.
    fn reseal(img: &mut [u8]) {
        let crc = checksum(img);
        img[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn image_round_trips_with_fault_order_and_zero_pages() {
        let fx = fixture("roundtrip");
        let img = image(&fx, &[5, 3, 9, 20, 4, 3, 6]);
        assert_eq!(img.len() % 4096, 0);
        let h = validate(&img, &fx.mem, 4096).unwrap();
        assert_eq!((h.page_count, h.data_pages), (6, 4));
        let ws = WorkingSet {
            header: h,
            image: aligned(&img),
            fetch: FetchInfo::default(),
        };
        let pages: Vec<(u64, bool)> = ws.pages().map(|p| (p.offset / 4096, p.zero)).collect();
        assert_eq!(
            pages,
            vec![
                (5, false),
                (3, false),
                (9, true),
                (20, true),
                (4, false),
                (6, false)
            ]
        );
        let firsts: Vec<u8> = ws.data().chunks(4096).map(|c| c[0]).collect();
        assert_eq!(firsts, vec![6, 4, 5, 7]);
    }

    fn aligned(b: &[u8]) -> AlignedBuf {
        let mut a = AlignedBuf::zeroed(b.len()).unwrap();
        a.copy_from_slice(b);
        a
    }

    #[test]
    fn empty_set_is_one_aligned_block() {
        let fx = fixture("empty");
        let img = image(&fx, &[]);
        assert_eq!(img.len(), 4096);
        assert_eq!(validate(&img, &fx.mem, 4096).unwrap().page_count, 0);
    }

    #[test]
    fn foreign_file_is_refused_by_magic() {
        let fx = fixture("foreign");
        let mut img = image(&fx, &[1, 2]);
        img[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        assert!(matches!(
            validate(&img, &fx.mem, 4096),
            Err(WsError::BadMagic { .. })
        ));
    }

    #[test]
    fn unknown_version_is_refused() {
        let fx = fixture("version");
        let mut img = image(&fx, &[1]);
        img[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal(&mut img);
        assert!(matches!(
            validate(&img, &fx.mem, 4096),
            Err(WsError::UnsupportedVersion { found: 2 })
        ));
    }

    #[test]
    fn truncated_image_is_refused() {
        let fx = fixture("truncated");
        let img = image(&fx, &[1, 2, 3]);
        let cut = &img[..img.len() - 4096];
        assert!(matches!(
            validate(cut, &fx.mem, 4096),
            Err(WsError::Truncated { .. })
        ));
        assert!(matches!(
            validate(&img[..100], &fx.mem, 4096),
            Err(WsError::Truncated { .. })
        ));
    }

    #[test]
    fn flipped_content_bit_fails_the_checksum() {
        let fx = fixture("crc");
        let mut img = image(&fx, &[1, 2, 3]);
        let last = img.len() - 1;
        img[last] ^= 0x40;
        assert!(matches!(
            validate(&img, &fx.mem, 4096),
            Err(WsError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn page_size_mismatch_is_refused() {
        let fx = fixture("pagesize");
        let img = image(&fx, &[1]);
        assert!(matches!(
            validate(&img, &fx.mem, crate::PAGE_2M),
            Err(WsError::PageSizeMismatch { found: 4096, .. })
        ));
    }

    #[test]
    fn misaligned_out_of_range_and_duplicate_offsets_are_refused() {
        let fx = fixture("offsets");
        let table = HEADER;
        for (entry, want) in [
            (4096 + 512, "aligned"),
            (4096 | 2, "aligned"),
            (64 * 4096, "past"),
            (!4095, "past"),
        ] {
            let mut img = image(&fx, &[1, 2]);
            img[table..table + 8].copy_from_slice(&u64::to_le_bytes(entry));
            reseal(&mut img);
            match validate(&img, &fx.mem, 4096) {
                Err(WsError::BadOffset { problem, .. }) => {
                    assert!(problem.contains(want), "{problem}")
                }
                other => panic!("entry {entry:#x}: {other:?}"),
            }
        }
        let mut img = image(&fx, &[1, 2]);
        img[table + 8..table + 16].copy_from_slice(&4096u64.to_le_bytes());
        reseal(&mut img);
        assert!(matches!(
            validate(&img, &fx.mem, 4096),
            Err(WsError::Duplicate { index: 1, .. })
        ));
    }

    #[test]
    fn absurd_page_count_is_refused_before_anything_is_allocated() {
        let fx = fixture("absurd");
        let mut img = image(&fx, &[1]);
        img[24..32].copy_from_slice(&(MAX_PAGES + 1).to_le_bytes());
        assert!(matches!(
            WsHeader::parse(&img, img.len() as u64),
            Err(WsError::TooLarge { .. })
        ));
        // Within the absolute cap but more pages than the memory file has.
        let mut img = image(&fx, &[1]);
        img[24..32].copy_from_slice(&1000u64.to_le_bytes());
        img[48..56].copy_from_slice(&data_offset_for(1000).unwrap().to_le_bytes());
        let len = data_offset_for(1000).unwrap() + 4096;
        img[56..64].copy_from_slice(&len.to_le_bytes());
        img.resize(in_memory(len), 0);
        reseal(&mut img);
        assert!(matches!(
            validate(&img, &fx.mem, 4096),
            Err(WsError::TooLarge {
                what: "page count",
                ..
            })
        ));
    }

    #[test]
    fn set_recorded_against_another_memory_file_is_refused() {
        let fx = fixture("foreign-mem-a");
        let other = fixture("foreign-mem-b");
        // Same length, one hole filled in: another snapshot.
        let f = OpenOptions::new().write(true).open(&other.path).unwrap();
        f.write_all_at(&[1; 4096], 9 * 4096).unwrap();
        let other_mem = MemoryFile::open(&other.path).unwrap();
        let img = image(&fx, &[1]);
        assert!(matches!(
            validate(&img, &other_mem, 4096),
            Err(WsError::ForeignMemory { .. })
        ));
    }

    #[test]
    fn every_damaged_byte_or_cut_is_refused_without_panicking() {
        let fx = fixture("mutations");
        let img = image(&fx, &[5, 3, 9, 20, 4, 40, 41, 42]);
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut m = img.clone();
            let at = in_memory(next() % m.len() as u64);
            let flip = u8::try_from(next() % 255 + 1).unwrap();
            m[at] ^= flip;
            assert!(
                validate(&m, &fx.mem, 4096).is_err(),
                "byte {at} ^ {flip:#x} accepted"
            );
        }
        for cut in (0..img.len()).step_by(61) {
            assert!(
                validate(&img[..cut], &fx.mem, 4096).is_err(),
                "cut at {cut} accepted"
            );
        }
        let mut longer = img.clone();
        longer.extend_from_slice(&[0; 4096]);
        assert!(matches!(
            validate(&longer, &fx.mem, 4096),
            Err(WsError::BadLength { .. })
        ));
    }

    #[test]
    fn load_reads_and_validates_a_written_file() {
        let fx = fixture("load");
        let ws_path = fx.path.with_extension("ws");
        let s = write_ws(&ws_path, 4096, &[7 * 4096, 2 * 4096, 12 * 4096], &fx.mem).unwrap();
        assert_eq!((s.pages, s.data_pages, s.zero_pages), (3, 2, 1));
        let ws = WorkingSet::load(&ws_path, &fx.mem, 4096).unwrap();
        std::fs::remove_file(&ws_path).unwrap();
        assert_eq!(ws.fetch_info().bytes, s.file_len);
        assert_eq!(
            ws.pages().map(|p| p.offset / 4096).collect::<Vec<_>>(),
            vec![7, 2, 12]
        );
    }

    #[test]
    fn load_of_a_file_with_a_partial_block_reports_truncation() {
        let fx = fixture("partial");
        let ws_path = fx.path.with_extension("ws");
        let (img, _) = build_image(4096, &[4096, 8192], &fx.mem).unwrap();
        std::fs::write(&ws_path, &img[..img.len() - 100]).unwrap();
        let r = WorkingSet::load(&ws_path, &fx.mem, 4096);
        std::fs::remove_file(&ws_path).unwrap();
        assert!(matches!(r, Err(WsError::Truncated { .. })), "{r:?}");
    }
}

#[cfg(test)]
// Positions and counts in the small images these tests build fit every integer type.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
mod proptests {
    //! Property tests of the reader, which takes untrusted bytes: arbitrary bytes and
    //! damaged copies of real images are refused, or accepted only when every rule of
    //! `docs/ws-format.md` holds; never a panic. Valid sets round-trip.

    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestRunner};
    use std::os::unix::fs::FileExt;

    /// Pages in the test memory files.
    const PAGES: u64 = 64;

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// A sparse memory file of `pages` pages of `page_size` bytes: every fifth page
    /// (from page 2) is a hole, every seventh (from page 3) is data that is all zero,
    /// the others start with 4 KiB of the byte `page + 1` (the rest of a 2 MiB page is
    /// a hole).
    struct Memory {
        mem: MemoryFile,
        path: PathBuf,
        page_size: u64,
    }

    impl Drop for Memory {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn memory(name: &str, page_size: u64, pages: u64) -> Memory {
        let path =
            std::env::temp_dir().join(format!("reap-pager-ws-prop-{}-{name}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(pages * page_size).unwrap();
        for i in 0..pages {
            let byte = match (i % 5, i % 7) {
                (2, _) => continue,
                (_, 3) => 0,
                _ => i as u8 + 1,
            };
            f.write_all_at(&[byte; 4096], i * page_size).unwrap();
        }
        Memory {
            mem: MemoryFile::open(&path).unwrap(),
            path,
            page_size,
        }
    }

    fn aligned(b: &[u8]) -> AlignedBuf {
        let mut a = AlignedBuf::zeroed(b.len()).unwrap();
        a.copy_from_slice(b);
        a
    }

    fn entry(image: &[u8], i: u64) -> u64 {
        le64(image, (HEADER_LEN + 8 * i) as usize)
    }

    /// Checks an accepted image against the format's rules, independently of the
    /// reader's code, and reads it through `WorkingSet` as a restore would.
    fn assert_consistent(image: &[u8], h: &WsHeader, m: &Memory) {
        let ps = m.page_size;
        assert_eq!(&image[..8], &MAGIC);
        assert_eq!(h.page_size, ps);
        assert_eq!(h.file_len, image.len() as u64);
        assert_eq!(h.file_len % ALIGN, 0);
        assert_eq!(
            (h.memory_len, h.memory_fingerprint),
            (m.mem.len(), m.mem.fingerprint())
        );
        assert_eq!(h.checksum, checksum(image));
        assert!(h.page_count <= m.mem.len() / ps);
        assert_eq!(h.entries_offset, HEADER_LEN);
        assert_eq!(
            h.data_offset,
            (HEADER_LEN + 8 * h.page_count).next_multiple_of(ALIGN)
        );
        assert_eq!(h.file_len, h.data_offset + h.data_pages * ps);
        let mut seen = std::collections::HashSet::new();
        let mut data = 0;
        for i in 0..h.page_count {
            let e = entry(image, i);
            let offset = e & !ZERO_FLAG;
            assert_eq!(offset % ps, 0, "entry {i}: {e:#x}");
            assert!(offset + ps <= m.mem.len(), "entry {i}: {e:#x}");
            assert!(seen.insert(offset), "entry {i}: {e:#x} twice");
            data += u64::from(e & ZERO_FLAG == 0);
        }
        assert_eq!(data, h.data_pages);
        let ws = WorkingSet {
            header: *h,
            image: aligned(image),
            fetch: FetchInfo::default(),
        };
        assert_eq!(ws.len() as u64, h.page_count);
        assert_eq!(ws.pages().filter(|p| !p.zero).count() as u64, h.data_pages);
        assert_eq!(ws.data().len() as u64, h.data_pages * ps);
    }

    /// The reference result of `build_image`: the first occurrence of each page, zero
    /// when the memory file reads as zeros there, with the contents of the others.
    fn expected(m: &Memory, offsets: &[u64]) -> (Vec<WsPage>, Vec<u8>) {
        let mut seen = std::collections::HashSet::new();
        let (mut pages, mut contents) = (Vec::new(), Vec::new());
        let mut page = vec![0u8; m.page_size as usize];
        for &offset in offsets {
            if !seen.insert(offset) {
                continue;
            }
            m.mem.read_at(offset, &mut page).unwrap();
            let zero = page.iter().all(|&b| b == 0);
            pages.push(WsPage { offset, zero });
            if !zero {
                contents.extend_from_slice(&page);
            }
        }
        (pages, contents)
    }

    fn round_trip(m: &Memory, max_len: usize, cases: u32) {
        let pages = m.mem.len() / m.page_size;
        let ps = m.page_size;
        let offsets = prop::collection::vec((0..pages).prop_map(move |p| p * ps), 0..max_len);
        TestRunner::new(config(cases))
            .run(&offsets, |offsets| {
                let (image, summary) = build_image(ps, &offsets, &m.mem).unwrap();
                let h = validate(&image, &m.mem, ps).unwrap();
                assert_consistent(&image, &h, m);
                let (pages, contents) = expected(m, &offsets);
                let ws = WorkingSet {
                    header: h,
                    image: aligned(&image),
                    fetch: FetchInfo::default(),
                };
                prop_assert_eq!(ws.pages().collect::<Vec<_>>(), pages);
                prop_assert!(ws.data() == &contents[..]);
                prop_assert_eq!(
                    (summary.pages, summary.data_pages, summary.file_len),
                    (h.page_count, h.data_pages, image.len() as u64)
                );
                prop_assert_eq!(summary.zero_pages, h.page_count - h.data_pages);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn built_images_of_4k_pages_round_trip() {
        let m = memory("rt4k", crate::PAGE_4K, PAGES);
        round_trip(&m, 2 * PAGES as usize, 512);
    }

    #[test]
    fn built_images_of_2m_pages_round_trip() {
        let m = memory("rt2m", crate::PAGE_2M, 6);
        round_trip(&m, 10, 24);
    }

    /// Numbers that sit on the reader's boundaries, and any number.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(vec![
                0,
                1,
                8,
                HEADER_LEN,
                ALIGN - 1,
                ALIGN,
                ALIGN + 1,
                crate::PAGE_2M,
                PAGES,
                PAGES * ALIGN,
                MAX_PAGES,
                MAX_PAGES + 1,
                1 << 32,
                1 << 60,
                u64::MAX / 8,
                u64::MAX - ALIGN + 1,
                u64::MAX,
            ]),
            (0..PAGES + 2).prop_map(|p| p * ALIGN),
            (0..PAGES + 2).prop_map(|p| (p * ALIGN) | ZERO_FLAG),
            0..(PAGES + 2) * ALIGN,
            any::<u64>(),
        ]
    }

    /// One change to an image.
    #[derive(Debug, Clone)]
    enum Edit {
        /// XOR a byte with a non-zero mask.
        Flip(Index, u8),
        /// Cut the image.
        Truncate(Index),
        /// Append bytes.
        Extend(Vec<u8>),
        /// Append whole zero blocks (the length stays aligned).
        ExtendBlocks(u8),
        /// Overwrite one of the header's u64 fields (offsets 16 to 72).
        Field(Index, u64),
        /// Overwrite an offset-table entry.
        Entry(Index, u64),
        /// Swap two offset-table entries.
        Swap(Index, Index),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
            any::<Index>().prop_map(Edit::Truncate),
            prop::collection::vec(any::<u8>(), 1..64).prop_map(Edit::Extend),
            (1..3u8).prop_map(Edit::ExtendBlocks),
            (any::<Index>(), number()).prop_map(|(i, v)| Edit::Field(i, v)),
            (any::<Index>(), number()).prop_map(|(i, v)| Edit::Entry(i, v)),
            (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        ]
    }

    fn apply(image: &mut Vec<u8>, edit: &Edit) {
        let table = |image: &Vec<u8>| {
            if image.len() < HEADER_LEN as usize + 8 {
                0
            } else {
                let n = le64(image, 24).min((image.len() as u64 - HEADER_LEN) / 8);
                n as usize
            }
        };
        let put = |image: &mut Vec<u8>, at: usize, v: u64| {
            if at + 8 <= image.len() {
                image[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        };
        match edit {
            Edit::Flip(i, mask) if !image.is_empty() => {
                let at = i.index(image.len());
                image[at] ^= mask;
            }
            Edit::Truncate(i) => image.truncate(i.index(image.len() + 1)),
            Edit::Extend(b) => image.extend_from_slice(b),
            Edit::ExtendBlocks(n) => image.resize(image.len() + *n as usize * ALIGN as usize, 0),
            Edit::Field(i, v) => put(image, 16 + 8 * i.index(8), *v),
            Edit::Entry(i, v) if table(image) > 0 => {
                let at = HEADER_LEN as usize + 8 * i.index(table(image));
                put(image, at, *v);
            }
            Edit::Swap(a, b) if table(image) > 0 => {
                let n = table(image);
                let (a, b) = (
                    HEADER_LEN as usize + 8 * a.index(n),
                    HEADER_LEN as usize + 8 * b.index(n),
                );
                let (x, y) = (le64(image, a), le64(image, b));
                put(image, a, y);
                put(image, b, x);
            }
            _ => {}
        }
    }

    /// Rewrites the checksum, so that the checks after it are reached.
    fn reseal(image: &mut [u8]) {
        if image.len() >= CHECKSUM_AT + 4 {
            let crc = checksum(image);
            image[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }

    fn page_lists() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec((0..PAGES).prop_map(|p| p * ALIGN), 0..2 * PAGES as usize)
    }

    #[test]
    fn damaged_images_are_refused_or_consistent() {
        let m = memory("damaged", crate::PAGE_4K, PAGES);
        let cases = (
            page_lists(),
            prop::collection::vec(edit(), 1..5),
            any::<bool>(),
        );
        TestRunner::new(config(4096))
            .run(&cases, |(offsets, edits, resealed)| {
                let (image, _) = build_image(ALIGN, &offsets, &m.mem).unwrap();
                let mut damaged = image.clone();
                for e in &edits {
                    apply(&mut damaged, e);
                }
                if resealed {
                    reseal(&mut damaged);
                }
                match validate(&damaged, &m.mem, ALIGN) {
                    Ok(h) => {
                        // Without a new checksum, only an unchanged image passes.
                        prop_assert!(resealed || damaged == image, "accepted: {:?}", h);
                        assert_consistent(&damaged, &h, &m);
                    }
                    Err(e) => {
                        prop_assert!(damaged != image, "valid image refused: {}", e);
                    }
                }
                // The header parser alone, told any file length.
                let _ = WsHeader::parse(&damaged, image.len() as u64);
                let _ = validate(&damaged, &m.mem, crate::PAGE_2M);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn arbitrary_bytes_are_refused() {
        let m = memory("arbitrary", crate::PAGE_4K, PAGES);
        // Bytes after a valid start (magic, version, header length), or from scratch.
        let start = [&MAGIC[..], &VERSION.to_le_bytes(), &128u32.to_le_bytes()].concat();
        let bytes = (
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..2 * ALIGN as usize),
            any::<u64>(),
        );
        TestRunner::new(config(4096))
            .run(&bytes, |(with_start, mut b, file_len)| {
                if with_start {
                    let n = start.len().min(b.len());
                    b[..n].copy_from_slice(&start[..n]);
                }
                let _ = WsHeader::parse(&b, file_len);
                if let Ok(h) = WsHeader::parse(&b, b.len() as u64) {
                    prop_assert_eq!(h.file_len, b.len() as u64);
                }
                if let Ok(h) = validate(&b, &m.mem, ALIGN) {
                    assert_consistent(&b, &h, &m);
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn absurd_counts_are_refused_by_the_header_alone() {
        // A header claiming up to 2^64 pages, with every derived field made consistent
        // with that claim, on a short buffer: refused from the 128 header bytes.
        let m = memory("absurd", crate::PAGE_4K, PAGES);
        let (image, _) = build_image(ALIGN, &[ALIGN, 2 * ALIGN], &m.mem).unwrap();
        let counts = (MAX_PAGES + 1.., any::<u64>(), any::<bool>());
        TestRunner::new(config(1024))
            .run(&counts, |(count, data, consistent)| {
                let mut b = image.clone();
                b[24..32].copy_from_slice(&count.to_le_bytes());
                b[32..40].copy_from_slice(&data.to_le_bytes());
                if consistent && let Some(d) = data_offset_for(count) {
                    b[48..56].copy_from_slice(&d.to_le_bytes());
                    let len = data.wrapping_mul(ALIGN).wrapping_add(d);
                    b[56..64].copy_from_slice(&len.to_le_bytes());
                }
                reseal(&mut b);
                let claimed = le64(&b, 56);
                let r = WsHeader::parse(&b, claimed);
                prop_assert!(matches!(r, Err(WsError::TooLarge { .. })), "{:?}", r);
                prop_assert!(validate(&b, &m.mem, ALIGN).is_err());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn files_of_any_length_are_refused_or_consistent_when_loaded() {
        // Through the file: lengths that are not block multiples, larger than any set
        // for this memory file (sparse, up to 2^44 bytes), or damaged contents. A
        // length past the cap must be refused from the header, without reading or
        // allocating the file (which would fail, or take seconds).
        let m = memory("load", crate::PAGE_4K, PAGES);
        let ws_path = m.path.with_extension("ws");
        let cases = (
            page_lists(),
            prop::collection::vec(edit(), 0..3),
            any::<bool>(),
            // Bytes to add: any number, or whole blocks.
            prop_oneof![
                Just(None),
                (0..44u32, any::<u64>()).prop_map(|(bits, x)| Some(x % (1 << bits) + 1)),
                (0..32u32, any::<u64>()).prop_map(|(bits, x)| Some((x % (1 << bits) + 1) * ALIGN)),
            ],
        );
        TestRunner::new(config(64))
            .run(&cases, |(offsets, edits, resealed, grow)| {
                let (image, _) = build_image(ALIGN, &offsets, &m.mem).unwrap();
                let mut damaged = image.clone();
                for e in &edits {
                    apply(&mut damaged, e);
                }
                if resealed {
                    reseal(&mut damaged);
                }
                std::fs::write(&ws_path, &damaged).unwrap();
                let mut len = damaged.len() as u64;
                if let Some(extra) = grow {
                    len += extra;
                    OpenOptions::new()
                        .write(true)
                        .open(&ws_path)
                        .unwrap()
                        .set_len(len)
                        .unwrap();
                }
                let started = Instant::now();
                match WorkingSet::load(&ws_path, &m.mem, ALIGN) {
                    Ok(ws) => {
                        prop_assert_eq!(ws.fetch_info().bytes, len);
                        prop_assert_eq!(len, damaged.len() as u64);
                        assert_consistent(&damaged, ws.header(), &m);
                    }
                    Err(e) => {
                        prop_assert!(
                            damaged != image || grow.is_some(),
                            "valid file refused: {}",
                            e
                        );
                        // Only a failed allocation or read could give an I/O error.
                        prop_assert!(!matches!(e, WsError::Io { .. }), "{}", e);
                    }
                }
                prop_assert!(started.elapsed() < std::time::Duration::from_secs(2));
                Ok(())
            })
            .unwrap();
        let _ = std::fs::remove_file(&ws_path);
    }
}
