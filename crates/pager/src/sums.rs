//! Checksums of a memory file's data pages (the `memory.sum` file of a snapshot): one
//! CRC-32 per 4 KiB page of the file's data extents; holes have none (they read as
//! zeros, which is what a hole is).
//!
//! The format is an interface (documented in `docs/snapshot-format.md`):
//!
//! ```text
//! offset  size  field
//!      0     8  magic "REAPMSUM"
//!      8     4  format version (1)
//!     12     4  header length (64)
//!     16     8  chunk size: bytes per checksum (4096)
//!     24     8  length of the memory file
//!     32     8  extent count e
//!     40     8  checksum count s (= pages in the extents)
//!     48     4  CRC-32 (IEEE) of the whole file with these 4 bytes as zero
//!     52     4  flags (0)
//!     56     8  reserved, zero
//!     64  16*e  extents: (start, length) in bytes, chunk aligned, sorted, disjoint
//!      …   4*s  CRC-32 (IEEE, as `crc32fast`) of each chunk of the extents, in order
//! ```
//! All integers are little-endian.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use reap_error::PathIoError;

use crate::memfile::MemoryFile;
use crate::num::in_memory;

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"REAPMSUM";
/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Length of the version 1 header.
pub const HEADER_LEN: u64 = 64;
/// Bytes covered by one checksum: one 4 KiB page.
pub const CHUNK: u64 = 4096;
/// The checksum of a chunk of zeros (a hole).
pub const ZERO_CHUNK_CRC: u32 = 0xc71c_0011;
/// Most checksums a file may hold (64 GiB of data).
pub const MAX_SUMS: u64 = 1 << 24;

const HEADER: usize = 64;
/// [`HEADER_LEN`] as its header field.
const HEADER_FIELD: u32 = 64;
const _: () = assert!(HEADER as u64 == HEADER_LEN && HEADER_FIELD as u64 == HEADER_LEN);
const CRC_AT: usize = 48;
/// Bytes read at a time when computing or verifying.
const READ_CHUNK: usize = 1 << 20;

/// Why a checksum file was refused, or why memory does not match it.
#[derive(Debug, thiserror::Error)]
pub enum SumsError {
    /// The file cannot be read or written.
    #[error(transparent)]
    Io(PathIoError),
    /// Not a checksum file, or a header field is invalid (which is said).
    #[error("memory checksum file is invalid: {0}")]
    BadFormat(&'static str),
    /// The file's own CRC does not match.
    #[error("memory checksum file is corrupt (checksum mismatch)")]
    Corrupt,
    /// The sums are for a memory file of another length.
    #[error("memory checksums are for a {expected}-byte memory file, this one has {found} bytes")]
    Length {
        /// The length the sums were computed for.
        expected: u64,
        /// The memory file's length.
        found: u64,
    },
    /// A page that held data when the sums were computed is now a hole (it reads as
    /// zeros, which its checksum says it was not).
    #[error("{}: page at offset {offset:#x} is a hole but held data: the memory file is damaged", path.display())]
    Punched {
        /// The memory file.
        path: std::path::PathBuf,
        /// The page's offset.
        offset: u64,
    },
    /// A page does not match its checksum.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
}

/// A page of the memory file whose contents do not match its checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}: page at offset {offset:#x} does not match its checksum (stored {stored:#010x}, \
     computed {computed:#010x}): the memory file is damaged",
    path.display()
)]
pub struct Mismatch {
    /// The memory file.
    pub path: std::path::PathBuf,
    /// The page's offset.
    pub offset: u64,
    /// The checksum recorded at snapshot time.
    pub stored: u32,
    /// The checksum of the bytes read now.
    pub computed: u32,
}

/// The checksums of a memory file's data pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSums {
    memory_len: u64,
    /// Chunk-aligned `[start, end)` byte ranges, sorted, disjoint.
    extents: Vec<(u64, u64)>,
    /// Index in `sums` of each extent's first chunk.
    first: Vec<u64>,
    sums: Vec<u32>,
    /// The CRC of the file image, computed once.
    crc: u32,
}

/// CRC-32 of one chunk.
pub fn chunk_crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
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

/// CRC-32 of a whole checksum-file image, the CRC field taken as zero.
fn file_crc(image: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&image[..CRC_AT]);
    h.update(&[0; 4]);
    h.update(&image[CRC_AT + 4..]);
    h.finalize()
}

/// The data extents of `memory` widened to whole chunks (a file system reports them
/// in its block size) and merged.
fn chunk_extents(memory: &MemoryFile) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in memory.data_extents() {
        let s = s - s % CHUNK;
        let e = e
            .next_multiple_of(CHUNK)
            .min(memory.len().next_multiple_of(CHUNK));
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Reads the byte ranges `extents` of `memory`, [`READ_CHUNK`] bytes at a time, handing
/// each piece and its offset to `f`; `what` names the reading in an I/O error. Returns
/// the bytes read.
fn read_extents(
    memory: &MemoryFile,
    extents: impl IntoIterator<Item = (u64, u64)>,
    what: &'static str,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), SumsError>,
) -> Result<u64, SumsError> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut read = 0;
    for (s, e) in extents {
        let mut at = s;
        while at < e {
            let n = in_memory((e - at).min(READ_CHUNK as u64));
            memory
                .read_at(at, &mut buf[..n])
                .map_err(|e| SumsError::Io(PathIoError::on(memory.path(), what)(e)))?;
            f(at, &buf[..n])?;
            read += n as u64;
            at += n as u64;
        }
    }
    Ok(read)
}

impl PageSums {
    /// Computes the checksums of `memory`'s data pages, reading them (1 MiB at a time).
    pub fn compute(memory: &MemoryFile) -> Result<PageSums, SumsError> {
        let extents = chunk_extents(memory);
        let mut sums = Vec::new();
        read_extents(
            memory,
            extents.iter().copied(),
            "cannot read the memory file to checksum it",
            |_, bytes| {
                sums.extend(bytes.chunks(in_memory(CHUNK)).map(chunk_crc));
                Ok(())
            },
        )?;
        Self::new(memory.len(), extents, sums)
    }

    fn new(
        memory_len: u64,
        extents: Vec<(u64, u64)>,
        sums: Vec<u32>,
    ) -> Result<PageSums, SumsError> {
        if sums.len() as u64 > MAX_SUMS {
            return Err(SumsError::BadFormat("too many checksums"));
        }
        let mut first = Vec::with_capacity(extents.len());
        let mut n = 0u64;
        let mut prev_end = 0u64;
        for (i, &(s, e)) in extents.iter().enumerate() {
            if s % CHUNK != 0 || e % CHUNK != 0 || s >= e || (i > 0 && s < prev_end) {
                return Err(SumsError::BadFormat(
                    "extents are not sorted disjoint chunks",
                ));
            }
            if e > memory_len.next_multiple_of(CHUNK) {
                return Err(SumsError::BadFormat("an extent lies past the memory file"));
            }
            first.push(n);
            n += (e - s) / CHUNK;
            prev_end = e;
        }
        if n != sums.len() as u64 {
            return Err(SumsError::BadFormat(
                "checksum count does not match the extents",
            ));
        }
        let mut out = PageSums {
            memory_len,
            extents,
            first,
            sums,
            crc: 0,
        };
        out.crc = le32(&out.encode(), CRC_AT);
        Ok(out)
    }

    /// The length of the memory file the sums were computed for.
    pub fn memory_len(&self) -> u64 {
        self.memory_len
    }

    /// The length of the file image ([`PageSums::encode`]).
    pub fn file_len(&self) -> u64 {
        HEADER_LEN + 16 * self.extents.len() as u64 + 4 * self.sums.len() as u64
    }

    /// Number of checksums (data pages).
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    /// Whether there is no checksum at all (a memory file of holes only).
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// The checksum of the chunk at `offset` (chunk aligned), or `None` if it was a
    /// hole (its contents must be zeros).
    pub fn sum_at(&self, offset: u64) -> Option<u32> {
        let i = self.extents.partition_point(|&(_, e)| e <= offset);
        let &(s, _) = self.extents.get(i).filter(|&&(s, _)| s <= offset)?;
        let k = self.first[i] + (offset - s) / CHUNK;
        Some(self.sums[in_memory(k)])
    }

    /// The checksum `offset`'s chunk must have: its own, or that of zeros for a hole.
    pub fn expected_at(&self, offset: u64) -> u32 {
        self.sum_at(offset).unwrap_or(ZERO_CHUNK_CRC)
    }

    /// The first chunk of `data` (the bytes at `offset`, chunk aligned, a whole number
    /// of chunks) that does not match its checksum: `(offset, stored, computed)`.
    pub fn first_bad(&self, offset: u64, data: &[u8]) -> Option<(u64, u32, u32)> {
        data.chunks(in_memory(CHUNK))
            .enumerate()
            .find_map(|(i, chunk)| {
                let at = offset + i as u64 * CHUNK;
                let stored = self.expected_at(at);
                let computed = chunk_crc(chunk);
                (stored != computed).then_some((at, stored, computed))
            })
    }

    /// Checks `data`, the bytes of the memory file `memory` at `offset` (chunk
    /// aligned, a whole number of chunks), against the sums; the error names the file
    /// and the offset of the first bad chunk.
    pub fn verify(&self, memory: &Path, offset: u64, data: &[u8]) -> Result<(), Mismatch> {
        match self.first_bad(offset, data) {
            None => Ok(()),
            Some((offset, stored, computed)) => Err(Mismatch {
                path: memory.to_path_buf(),
                offset,
                stored,
                computed,
            }),
        }
    }

    /// Checks that the sums fit `memory`: the same length, and every page that is a
    /// hole now was a hole, or held zeros, when the sums were computed. (A page that
    /// is data now but was a hole must read as zeros: [`PageSums::verify`] checks that
    /// when it is read.) Reads no data.
    pub fn check_map(&self, memory: &MemoryFile) -> Result<(), SumsError> {
        if memory.len() != self.memory_len {
            return Err(SumsError::Length {
                expected: self.memory_len,
                found: memory.len(),
            });
        }
        let data = memory.data_extents();
        for (i, &(s, e)) in self.extents.iter().enumerate() {
            // Skip an extent that lies inside one data extent of the file now.
            let d = data.partition_point(|&(_, de)| de <= s);
            if data.get(d).is_some_and(|&(ds, de)| ds <= s && e <= de) {
                continue;
            }
            let mut at = s;
            while at < e {
                if memory.is_hole(at, CHUNK) {
                    let k = self.first[i] + (at - s) / CHUNK;
                    if self.sums[in_memory(k)] != ZERO_CHUNK_CRC {
                        return Err(SumsError::Punched {
                            path: memory.path().to_path_buf(),
                            offset: at,
                        });
                    }
                }
                at += CHUNK;
            }
        }
        Ok(())
    }

    /// Reads every data page of `memory` and checks it (the whole file, for a mapping
    /// that the kernel faults in without asking anyone). Returns the bytes read.
    pub fn verify_file(&self, memory: &MemoryFile) -> Result<u64, SumsError> {
        self.check_map(memory)?;
        read_extents(
            memory,
            memory
                .data_extents()
                .iter()
                .map(|&(s, e)| (s - s % CHUNK, e.next_multiple_of(CHUNK))),
            "cannot read the memory file to verify it",
            |at, bytes| Ok(self.verify(memory.path(), at, bytes)?),
        )
    }

    /// The file image.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 16 * self.extents.len() + 4 * self.sums.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&HEADER_FIELD.to_le_bytes());
        for v in [
            CHUNK,
            self.memory_len,
            self.extents.len() as u64,
            self.sums.len() as u64,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.resize(HEADER, 0);
        for &(s, e) in &self.extents {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&(e - s).to_le_bytes());
        }
        for s in &self.sums {
            out.extend_from_slice(&s.to_le_bytes());
        }
        let crc = file_crc(&out);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses a file image, checking everything.
    pub fn decode(b: &[u8]) -> Result<PageSums, SumsError> {
        if b.len() < HEADER || b[..8] != MAGIC {
            return Err(SumsError::BadFormat("not a memory checksum file"));
        }
        if le32(b, 8) != VERSION {
            return Err(SumsError::BadFormat("unsupported format version"));
        }
        if le32(b, 12) != HEADER_FIELD || le64(b, 16) != CHUNK {
            return Err(SumsError::BadFormat(
                "unsupported header length or chunk size",
            ));
        }
        if le32(b, 52) != 0 || le64(b, 56) != 0 {
            return Err(SumsError::BadFormat("unknown flags or reserved bytes set"));
        }
        let (memory_len, e, s) = (le64(b, 24), le64(b, 32), le64(b, 40));
        if s > MAX_SUMS || e > s {
            return Err(SumsError::BadFormat("too many checksums"));
        }
        if b.len() as u64 != HEADER_LEN + 16 * e + 4 * s {
            return Err(SumsError::BadFormat("length does not match the header"));
        }
        if file_crc(b) != le32(b, CRC_AT) {
            return Err(SumsError::Corrupt);
        }
        let table = &b[HEADER..HEADER + 16 * in_memory(e)];
        let extents = table
            .chunks_exact(16)
            .map(|c| {
                let (start, len) = (le64(c, 0), le64(c, 8));
                (start, start.saturating_add(len))
            })
            .collect();
        let sums = b[HEADER + 16 * in_memory(e)..]
            .chunks_exact(4)
            .map(|c| le32(c, 0))
            .collect();
        Self::new(memory_len, extents, sums)
    }

    /// The CRC-32 of the file image ([`PageSums::encode`]), which a snapshot's state
    /// records to bind the file to it.
    pub fn file_crc(&self) -> u32 {
        self.crc
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<PageSums, SumsError> {
        let bytes = std::fs::read(path).map_err(|source| {
            SumsError::Io(PathIoError {
                path: path.to_path_buf(),
                what: "cannot read the memory checksum file",
                source,
            })
        })?;
        Self::decode(&bytes)
    }

    /// Writes the file image to `path` (created or truncated) and syncs it. Returns the
    /// image's length and CRC.
    pub fn write(&self, path: &Path) -> Result<(u64, u32), SumsError> {
        let image = self.encode();
        let io = |source| {
            SumsError::Io(PathIoError {
                path: path.to_path_buf(),
                what: "cannot write the memory checksum file",
                source,
            })
        };
        let mut f = File::create(path).map_err(io)?;
        f.write_all(&image)
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        Ok((image.len() as u64, le32(&image, CRC_AT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    struct Temp(PathBuf);
    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A 16-page memory file: data at pages 3 and 10-11, the rest holes.
    fn memory(name: &str) -> (Temp, MemoryFile) {
        let path =
            std::env::temp_dir().join(format!("reap-pager-sums-{}-{name}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(16 * 4096).unwrap();
        f.write_all_at(&[7u8; 4096], 3 * 4096).unwrap();
        f.write_all_at(&[9u8; 8192], 10 * 4096).unwrap();
        f.write_all_at(&[1u8], 11 * 4096 + 17).unwrap();
        drop(f);
        let m = MemoryFile::open(&path).unwrap();
        (Temp(path), m)
    }

    #[test]
    fn zero_chunk_crc_is_the_crc_of_a_zero_page() {
        assert_eq!(chunk_crc(&[0u8; 4096]), ZERO_CHUNK_CRC);
    }

    #[test]
    fn good_pages_pass_and_holes_have_no_checksum() {
        let (_t, m) = memory("good");
        let sums = PageSums::compute(&m).unwrap();
        assert_eq!(sums.len(), 3, "one checksum per data page, none for holes");
        assert_eq!(sums.sum_at(0), None);
        assert_eq!(sums.sum_at(3 * 4096), Some(chunk_crc(&[7u8; 4096])));
        assert_eq!(sums.sum_at(4 * 4096), None);
        let mut page = vec![0u8; 4096];
        for p in 0..16 {
            m.read_at(p * 4096, &mut page).unwrap();
            sums.verify(m.path(), p * 4096, &page).unwrap();
        }
        assert_eq!(sums.verify_file(&m).unwrap(), 3 * 4096);
        sums.check_map(&m).unwrap();
    }

    #[test]
    fn a_bad_page_is_an_error_naming_the_file_and_offset() {
        let (t, m) = memory("bad");
        let sums = PageSums::compute(&m).unwrap();
        File::options()
            .write(true)
            .open(&t.0)
            .unwrap()
            .write_all_at(&[8u8], 10 * 4096 + 4095)
            .unwrap();
        let mut page = vec![0u8; 8192];
        m.read_at(10 * 4096, &mut page).unwrap();
        let e = sums.verify(m.path(), 10 * 4096, &page).unwrap_err();
        assert_eq!(e.offset, 10 * 4096);
        let msg = e.to_string();
        assert!(
            msg.contains(&t.0.display().to_string()) && msg.contains("0xa000"),
            "{msg}"
        );
        assert!(
            matches!(sums.verify_file(&m), Err(SumsError::Mismatch(e)) if e.offset == 10 * 4096)
        );
        // A page that was a hole and now holds data is caught too.
        let mut nonzero = vec![0u8; 4096];
        nonzero[5] = 1;
        assert_eq!(
            sums.verify(m.path(), 0, &nonzero).unwrap_err().stored,
            ZERO_CHUNK_CRC
        );
    }

    #[test]
    fn a_data_page_punched_into_a_hole_is_refused_by_the_map() {
        let (t, m) = memory("punched");
        let sums = PageSums::compute(&m).unwrap();
        let f = File::options().write(true).open(&t.0).unwrap();
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                3 * 4096,
                4096,
            )
        };
        assert_eq!(rc, 0);
        let m2 = MemoryFile::open(&t.0).unwrap();
        assert!(m2.is_hole(3 * 4096, 4096));
        assert!(
            matches!(sums.check_map(&m2), Err(SumsError::Punched { offset, .. }) if offset == 3 * 4096)
        );
        drop(m);
    }

    #[test]
    fn the_file_round_trips_and_damage_is_refused() {
        let (_t, m) = memory("format");
        let sums = PageSums::compute(&m).unwrap();
        let image = sums.encode();
        assert_eq!(PageSums::decode(&image).unwrap(), sums);
        assert_eq!(sums.file_crc(), le32(&image, CRC_AT));
        assert_eq!(sums.file_len(), image.len() as u64);
        for at in 0..image.len() {
            let mut bad = image.clone();
            bad[at] ^= 0x10;
            assert!(PageSums::decode(&bad).is_err(), "flip at {at}");
        }
        for len in 0..image.len() {
            assert!(PageSums::decode(&image[..len]).is_err());
        }
        let mut other = MemoryFile::open(m.path()).unwrap();
        assert!(sums.check_map(&other).is_ok());
        let short =
            std::env::temp_dir().join(format!("reap-pager-sums-{}-short", std::process::id()));
        File::create(&short).unwrap().set_len(8 * 4096).unwrap();
        other = MemoryFile::open(&short).unwrap();
        std::fs::remove_file(&short).unwrap();
        assert!(matches!(
            sums.check_map(&other),
            Err(SumsError::Length { .. })
        ));
    }
}

#[cfg(test)]
mod proptests {
    //! The checksum file is read from disk: arbitrary bytes and damaged or resealed
    //! images are refused, or decode to sums that encode back to the same image; never
    //! a panic.

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// A valid image for extents given as (gap, length) in pages.
    fn image(runs: &[(u64, u64)]) -> Vec<u8> {
        let mut extents = Vec::new();
        let mut at = 0;
        for &(gap, len) in runs {
            let s = (at + gap + u64::from(at > 0)) * CHUNK;
            extents.push((s, s + len * CHUNK));
            at = s / CHUNK + len;
        }
        let pages: u64 = runs.iter().map(|r| r.1).sum();
        let sums = (0..pages).map(|k| chunk_crc(&k.to_le_bytes())).collect();
        PageSums::new((at + 1) * CHUNK, extents, sums)
            .unwrap()
            .encode()
    }

    fn reseal(b: &mut [u8]) {
        if b.len() >= HEADER {
            let crc = file_crc(b);
            b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }

    fn accepted_images_round_trip(b: &[u8]) {
        if let Ok(s) = PageSums::decode(b) {
            assert_eq!(s.encode(), b);
            for &(st, e) in &s.extents {
                assert!(st < e && e <= s.memory_len.next_multiple_of(CHUNK));
                assert!(s.sum_at(st).is_some() && s.sum_at(e - CHUNK).is_some());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_are_refused_or_consistent() {
        let mut runner = TestRunner::new(config(2000));
        runner
            .run(
                &(any::<bool>(), prop::collection::vec(any::<u8>(), 0..400)),
                |(magic, mut b)| {
                    if magic && b.len() >= 8 {
                        b[..8].copy_from_slice(&MAGIC);
                    }
                    reseal(&mut b);
                    accepted_images_round_trip(&b);
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn edited_and_resealed_images_are_refused_or_consistent() {
        let mut runner = TestRunner::new(config(2000));
        let runs = prop::collection::vec((0u64..4, 1u64..6), 0..6);
        let edit = (any::<prop::sample::Index>(), any::<u64>(), 0usize..3);
        runner
            .run(&(runs, edit), |(runs, (at, value, kind))| {
                let mut b = image(&runs);
                assert!(PageSums::decode(&b).is_ok());
                let i = at.index(b.len());
                match kind {
                    0 => b[i] ^= value.to_le_bytes()[0] | 1,
                    1 => {
                        let i = i.min(b.len().saturating_sub(8)) & !7;
                        b[i..i + 8].copy_from_slice(&value.to_le_bytes());
                    }
                    _ => b.truncate(i),
                }
                let unsealed = PageSums::decode(&b);
                assert!(
                    unsealed.is_err() || kind == 1,
                    "a damaged image was accepted"
                );
                reseal(&mut b);
                accepted_images_round_trip(&b);
                Ok(())
            })
            .unwrap();
    }
}
