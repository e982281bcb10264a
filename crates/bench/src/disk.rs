//! The disk's speed for the reads a cold start makes: one large sequential `O_DIRECT`
//! read (REAP's WS fetch) and single 4 KiB reads (a lazily served fault).
//!
//! The probe writes a file of pseudo-random bytes (so that no layer below can compress
//! or deduplicate it), syncs it and drops it from the page cache, then reads it with
//! `O_DIRECT`: sequentially in 4 MiB requests, then 4 KiB pages at random offsets.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use reap_pager::buf::AlignedBuf;
use serde::{Deserialize, Serialize};

use super::stats::{self, Summary};

const PAGE: usize = 4096;
/// Request size of the sequential read.
const SEQ_REQUEST: usize = 4 << 20;

/// How the disk was measured and what it gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskResult {
    /// Size of the probe file.
    pub file_mib: u64,
    /// Request size of the sequential reads.
    pub seq_request_kib: u64,
    /// Sequential `O_DIRECT` read bandwidth, the median of the passes, in MB/s
    /// (10^6 bytes per second).
    pub seq_read_mb_s: f64,
    /// Each pass over the whole file, MB/s.
    pub seq_read_passes_mb_s: Vec<f64>,
    /// Latency of one 4 KiB `O_DIRECT` read at a random offset, µs.
    pub rand_4k_read_us: Summary,
    /// Mean latency of the random reads, µs.
    pub rand_4k_read_mean_us: f64,
    /// Every random read, µs, in the order they were made.
    pub rand_4k_samples_us: Vec<f64>,
}

impl DiskResult {
    /// Seconds to read `bytes` sequentially at the measured bandwidth.
    pub fn seq_read_secs(&self, bytes: u64) -> f64 {
        bytes as f64 / (self.seq_read_mb_s * 1e6)
    }
}

/// The disk probe failed.
#[derive(Debug, thiserror::Error)]
#[error("disk probe {}: {what}", path.display())]
pub struct DiskError {
    /// The probe file.
    pub path: PathBuf,
    /// What failed.
    pub what: &'static str,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

/// Measures the disk holding `dir` with a `mib` MiB probe file (removed afterwards):
/// `passes` sequential passes and `random_reads` random 4 KiB reads.
pub fn measure(
    dir: &Path,
    mib: u64,
    passes: usize,
    random_reads: usize,
) -> Result<DiskResult, DiskError> {
    let path = dir.join(format!(".disk-probe-{}", std::process::id()));
    let result = probe(&path, mib, passes, random_reads);
    let _ = fs::remove_file(&path);
    result
}

fn probe(
    path: &Path,
    mib: u64,
    passes: usize,
    random_reads: usize,
) -> Result<DiskResult, DiskError> {
    let err = |what| {
        let path = path.to_path_buf();
        move |source| DiskError { path, what, source }
    };
    let len = (mib.max(1) << 20) as usize;
    write_probe_file(path, len).map_err(err("cannot write the probe file"))?;

    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(err("cannot open with O_DIRECT"))?;
    let mut buf = AlignedBuf::zeroed(SEQ_REQUEST).map_err(err("cannot allocate a buffer"))?;

    let mut passes_mb_s = Vec::with_capacity(passes);
    for _ in 0..passes.max(1) {
        evict(path).map_err(err("cannot evict from the page cache"))?;
        let started = Instant::now();
        let mut offset = 0usize;
        while offset < len {
            let n = SEQ_REQUEST.min(len - offset);
            file.read_exact_at(&mut buf[..n], offset as u64)
                .map_err(err("sequential read failed"))?;
            offset += n;
        }
        passes_mb_s.push(len as f64 / started.elapsed().as_secs_f64() / 1e6);
    }

    evict(path).map_err(err("cannot evict from the page cache"))?;
    let pages = (len / PAGE) as u64;
    let mut rng = XorShift::seeded();
    let mut samples = Vec::with_capacity(random_reads);
    for _ in 0..random_reads.max(1) {
        let offset = rng.next() % pages * PAGE as u64;
        let started = Instant::now();
        file.read_exact_at(&mut buf[..PAGE], offset)
            .map_err(err("random read failed"))?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }

    Ok(DiskResult {
        file_mib: mib.max(1),
        seq_request_kib: (SEQ_REQUEST / 1024) as u64,
        seq_read_mb_s: stats::median(&passes_mb_s).unwrap_or(0.0),
        seq_read_passes_mb_s: passes_mb_s,
        rand_4k_read_us: Summary::of(&samples).unwrap_or(Summary {
            n: 0,
            median: 0.0,
            p90: 0.0,
            min: 0.0,
            max: 0.0,
        }),
        rand_4k_read_mean_us: samples.iter().sum::<f64>() / samples.len().max(1) as f64,
        rand_4k_samples_us: samples,
    })
}

fn write_probe_file(path: &Path, len: usize) -> io::Result<()> {
    let mut file = File::create(path)?;
    let mut rng = XorShift::seeded();
    let mut chunk = vec![0u8; SEQ_REQUEST];
    let mut written = 0;
    while written < len {
        for word in chunk.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next().to_le_bytes());
        }
        let n = chunk.len().min(len - written);
        file.write_all(&chunk[..n])?;
        written += n;
    }
    // Dirty pages cannot be dropped from the page cache: write them out first.
    file.sync_all()
}

fn evict(path: &Path) -> io::Result<()> {
    reap_pager::memfile::fadvise_dontneed(&File::open(path)?)
}

/// xorshift64*: fast pseudo-random bytes; not for anything but filling and picking.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        XorShift(t | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
