//! Lazy faults vs. REAP's prefetch install, same machine, same run.
//!
//! For working sets of 4 MiB and 64 MiB (scattered 4 KiB pages of a 256 MiB memory
//! file, touched in a shuffled order), with the memory and WS files evicted from the
//! page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`) and cached:
//! - lazy: a thread touches every page of the set; each touch is a userfaultfd fault
//!   served from the memory file. Cost per fault = touch time / pages.
//! - prefetch: `PageServer::start` in prefetch mode (one `O_DIRECT` read of the WS file,
//!   then the install); cost per page = start time / pages. The same touches then run
//!   and must fault nothing.
//!
//! Then, for holes of the memory file (pages never written before the snapshot), the
//! three ways the pager can provide them, while a thread writes one word into each of
//! N hole pages after `PageServer::start`:
//! - served: `Holes::Served`, lazy mode; each write is a fault the server answers with
//!   `UFFDIO_ZEROPAGE`, then a second (kernel) fault makes the zero page writable.
//!   Cost = the writes.
//! - kernel: `Holes::Kernel`, lazy mode: the holes are unregistered at start; each
//!   write is one anonymous fault the kernel fills with a zeroed page. Cost = the
//!   unregister + the writes.
//! - copied: `Holes::Kernel`, prefetch of a WS file listing the N pages (as zero
//!   pages), with `min_installed_zero_run(0)` and no range limit: they all stay
//!   registered (the holes split around each run) and the install copies zeros into
//!   them; the writes then fault nothing. Cost = the unregister + the install + the
//!   writes.
//!
//! The N = 4096 pages lie in runs of 1 to 4096 pages, each run followed by as many
//! untouched pages, all in one hole of the file.
//!
//! (The fetch of the WS file and the start of the fault thread are left out: the first
//! is paid for the data pages anyway, the second is the same for all three and, on a
//! loaded machine, costs up to a scheduler slice.)
//!
//! And the cost of unregistering: a lazy server over a memory file with K hole ranges,
//! `Holes::Kernel` against `Holes::Served`: the unregister at start, and the stop,
//! whose closing of the userfaultfd walks the VMAs the unregister split.
//!
//! And the cost of finding the holes a recording's owner touched: a recording server
//! over a 256 MiB region that is all hole (unregistered at start), with none, 4096
//! scattered or all of its pages touched; the time of one
//! `PageServer::scan_touched_holes` (one read of the owner's page map over the
//! region).
//!
//! Run with `cargo bench -p reap-pager`. Environment: `PAGER_BENCH_REPS` (default 6),
//! `PAGER_BENCH_DIR` (default the temp dir; must be a disk-backed file system),
//! `PAGER_BENCH_JSON` (write the raw results there), `PAGER_BENCH_PARTS` (a
//! comma-separated list of `ws`, `holes` and `scan`; default all three).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reap_pager::memfile::fadvise_dontneed;
use reap_pager::{Holes, MemoryFile, Mode, PageServer, PagerStats, ServeOptions};

// The integration tests' helpers: `Mapping`, `registered`, `Rng`, `PS`.
#[path = "../tests/common/mod.rs"]
mod common;

use common::{Mapping, PS, Rng, registered};

const MEM_PAGES: u64 = 65_536; // 256 MiB

/// Touches one word of each page in `order` from another thread; returns the time and
/// a checksum of what was read.
fn touch(m: &Mapping, order: &[u64]) -> (Duration, u64) {
    let base = m.addr;
    let order = order.to_vec();
    std::thread::spawn(move || {
        let t = Instant::now();
        let mut sum = 0u64;
        for &i in &order {
            // SAFETY: inside the live mapping; a missing page blocks until served.
            sum =
                sum.wrapping_add(unsafe { std::ptr::read_volatile((base + i * PS) as *const u64) });
        }
        (t.elapsed(), sum)
    })
    .join()
    .unwrap()
}

/// Writes one word into each page in `order` from another thread; returns the time.
fn write_touch(m: &Mapping, order: &[u64]) -> Duration {
    let base = m.addr;
    let order = order.to_vec();
    std::thread::spawn(move || {
        let t = Instant::now();
        for &i in &order {
            // SAFETY: inside the live mapping; a missing page blocks until served (or
            // the kernel fills it).
            unsafe { std::ptr::write_volatile((base + i * PS) as *mut u64, i | 1) };
        }
        t.elapsed()
    })
    .join()
    .unwrap()
}

fn expected_sum(mem: &Path, order: &[u64]) -> u64 {
    let f = File::open(mem).unwrap();
    let mut w = [0u8; 8];
    order.iter().fold(0u64, |s, &i| {
        f.read_exact_at(&mut w, i * PS).unwrap();
        s.wrapping_add(u64::from_le_bytes(w))
    })
}

fn evict(path: &Path) {
    fadvise_dontneed(&File::open(path).unwrap()).unwrap();
}

fn cache(path: &Path) {
    std::io::copy(&mut File::open(path).unwrap(), &mut std::io::sink()).unwrap();
}

struct Sample {
    total: Duration,
    stats: PagerStats,
}

fn run_lazy(mem: &Path, order: &[u64], cold: bool, sum: u64) -> Sample {
    let (uffd, m, regions) = registered(MEM_PAGES);
    let memory = MemoryFile::open(mem).unwrap();
    if cold {
        evict(mem);
    } else {
        cache(mem);
    }
    let server = PageServer::start(uffd, regions, memory, Mode::Lazy).unwrap();
    let (t, got) = touch(&m, order);
    let stats = server.stop();
    assert_eq!(got, sum, "lazy: wrong contents");
    assert_eq!(stats.lazy_faults_file, order.len() as u64);
    Sample { total: t, stats }
}

fn run_prefetch(mem: &Path, ws: &Path, order: &[u64], cold: bool, sum: u64) -> (Sample, Duration) {
    let (uffd, m, regions) = registered(MEM_PAGES);
    let memory = MemoryFile::open(mem).unwrap();
    for p in [mem, ws] {
        if cold {
            evict(p);
        } else {
            cache(p);
        }
    }
    let t0 = Instant::now();
    let server = PageServer::start(
        uffd,
        regions,
        memory,
        Mode::Prefetch {
            ws: ws.to_path_buf(),
        },
    )
    .unwrap();
    let total = t0.elapsed();
    let (run, got) = touch(&m, order);
    let stats = server.stop();
    assert_eq!(got, sum, "prefetch: wrong contents");
    assert!(!stats.prefetch_fell_back, "{:?}", stats.fallback_reason);
    assert_eq!(
        stats.lazy_faults_file + stats.lazy_faults_zero,
        0,
        "prefetch left faults"
    );
    (Sample { total, stats }, run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    (
        v.iter().cloned().fold(f64::MAX, f64::min),
        v.iter().cloned().fold(0.0, f64::max),
    )
}

fn main() {
    let reps: usize = std::env::var("PAGER_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = std::env::var_os("PAGER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let parts = std::env::var("PAGER_BENCH_PARTS").unwrap_or_else(|_| "ws,holes,scan".into());
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    let mut json = Vec::new();
    if parts.contains(&"ws") {
        json.push(format!("\"results\":[{}]", ws_part(reps, &dir).join(",")));
    }
    if parts.contains(&"holes") {
        let (holes, ranges) = holes_part(reps, &dir);
        json.push(format!("\"holes\":[{}]", holes.join(",")));
        json.push(format!("\"unregister\":[{}]", ranges.join(",")));
    }
    if parts.contains(&"scan") {
        json.push(format!("\"scan\":[{}]", scan_part(reps, &dir).join(",")));
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let git_rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let json = format!(
        concat!(
            "{{\"git_rev\":\"{}\",\"unix_time\":{},\"kernel\":\"{}\",\"cpus\":{},",
            "\"reps\":{},\"memory_mib\":256,{}}}"
        ),
        git_rev,
        unix_time,
        kernel.trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        reps,
        json.join(",")
    );
    if let Some(p) = std::env::var_os("PAGER_BENCH_JSON") {
        std::fs::write(p, &json).unwrap();
    }
}

/// Lazy faults vs the prefetch install; returns the JSON results.
fn ws_part(reps: usize, dir: &Path) -> Vec<String> {
    let tag = std::process::id();
    let mem = dir.join(format!("reap-pager-bench-{tag}.mem"));

    // A 256 MiB memory file of non-zero pseudo-random data (no holes).
    {
        let f = File::create(&mem).unwrap();
        let mut rng = Rng(42);
        let mut chunk = vec![0u8; 1 << 20];
        for c in 0..(MEM_PAGES * PS) >> 20 {
            for w in chunk.chunks_exact_mut(8) {
                w.copy_from_slice(&(rng.next() | 1).to_le_bytes());
            }
            f.write_all_at(&chunk, c << 20).unwrap();
        }
        f.sync_all().unwrap();
    }

    let mut results = Vec::new();
    // (MiB, pages, pages per run of the layout)
    let sizes = [
        (4u64, 1024usize, 1u64),
        (4, 1024, 16),
        (64, 16_384, 1),
        (64, 16_384, 16),
    ];
    let mut sets = Vec::new();
    for &(mib, pages, run) in &sizes {
        // `pages / run` distinct runs of `run` contiguous pages, in a shuffled order;
        // each run is touched in address order.
        let mut runs: Vec<u64> = (0..MEM_PAGES / run).collect();
        Rng(mib * 100 + run).shuffle(&mut runs);
        let all: Vec<u64> = runs[..pages / run as usize]
            .iter()
            .flat_map(|r| r * run..(r + 1) * run)
            .collect();
        let ws = dir.join(format!("reap-pager-bench-{tag}-{mib}-{run}.ws"));
        // Record the set through the library, as a first cold start would.
        let (uffd, m, regions) = registered(MEM_PAGES);
        let server =
            PageServer::start(uffd, regions, MemoryFile::open(&mem).unwrap(), Mode::Record)
                .unwrap();
        touch(&m, &all);
        let summary = server.write_ws(&ws).unwrap();
        server.stop();
        assert_eq!(summary.data_pages, pages as u64);
        let sum = expected_sum(&mem, &all);
        sets.push((mib, all, ws, sum));
    }

    // Warm-up, then interleaved repetitions.
    for (_, order, ws, sum) in &sets {
        run_lazy(&mem, order, false, *sum);
        run_prefetch(&mem, ws, order, false, *sum);
    }
    #[derive(Default)]
    struct Cell {
        lazy_us: Vec<f64>,
        lazy_serve_us: Vec<f64>,
        pre_us: Vec<f64>,
        fetch_us: Vec<f64>,
        verify_us: Vec<f64>,
        install_us: Vec<f64>,
        after_us: Vec<f64>,
        ioctls: u64,
        direct: bool,
    }
    let mut cells: Vec<Cell> = (0..2 * sizes.len()).map(|_| Cell::default()).collect();
    for rep in 0..reps {
        for (si, (_, order, ws, sum)) in sets.iter().enumerate() {
            for (ci, cold) in [true, false].into_iter().enumerate() {
                let n = order.len() as f64;
                // Alternate which mode goes first, so that neither always runs right
                // after the other's page-cache and memory churn.
                let (l, (p, after)) = if rep % 2 == 0 {
                    let l = run_lazy(&mem, order, cold, *sum);
                    (l, run_prefetch(&mem, ws, order, cold, *sum))
                } else {
                    let p = run_prefetch(&mem, ws, order, cold, *sum);
                    (run_lazy(&mem, order, cold, *sum), p)
                };
                let cell = &mut cells[si * 2 + ci];
                cell.lazy_us.push(l.total.as_secs_f64() * 1e6 / n);
                cell.lazy_serve_us
                    .push(l.stats.fault_serve_ns as f64 / 1e3 / n);
                cell.pre_us.push(p.total.as_secs_f64() * 1e6 / n);
                cell.fetch_us.push(p.stats.fetch_ns as f64 / 1e3 / n);
                cell.verify_us.push(p.stats.verify_ns as f64 / 1e3 / n);
                cell.install_us.push(p.stats.install_ns as f64 / 1e3 / n);
                cell.after_us.push(after.as_secs_f64() * 1e6 / n);
                cell.ioctls = p.stats.install_ioctls;
                cell.direct = p.stats.fetch_direct;
            }
        }
    }
    let _ = std::fs::remove_file(&mem);
    for (_, _, ws, _) in &sets {
        let _ = std::fs::remove_file(ws);
    }

    println!(
        "reap-pager: lazy faults vs prefetch install, medians of {reps} interleaved runs (us per page)"
    );
    println!(
        "{:>6} {:>6} {:>7} | {:>9} {:>9} | {:>9} {:>8} {:>8} {:>8} {:>7} | {:>7} | {:>8}",
        "WS",
        "run",
        "files",
        "lazy/flt",
        "(served)",
        "prefetch",
        "fetch",
        "verify",
        "install",
        "ioctls",
        "ratio",
        "after/pg"
    );
    for (si, &(mib, _, run)) in sizes.iter().enumerate() {
        for (ci, label) in ["evicted", "cached"].into_iter().enumerate() {
            let c = &cells[si * 2 + ci];
            let m = |v: &Vec<f64>| median(v.clone());
            let (lazy, pre) = (m(&c.lazy_us), m(&c.pre_us));
            println!(
                "{:>3}MiB {:>6} {:>7} | {:>9.2} {:>9.2} | {:>9.3} {:>8.3} {:>8.3} {:>8.3} {:>7} | {:>6.1}x | {:>8.3}",
                mib,
                format!("{run}p"),
                label,
                lazy,
                m(&c.lazy_serve_us),
                pre,
                m(&c.fetch_us),
                m(&c.verify_us),
                m(&c.install_us),
                c.ioctls,
                lazy / pre,
                m(&c.after_us),
            );
            let (lmin, lmax) = spread(&c.lazy_us);
            let (pmin, pmax) = spread(&c.pre_us);
            results.push(format!(
                concat!(
                    "{{\"ws_mib\":{},\"run_pages\":{},\"files\":\"{}\",\"lazy_us_per_fault\":{:.3},\"lazy_min\":{:.3},",
                    "\"lazy_max\":{:.3},\"lazy_serve_us\":{:.3},\"prefetch_us_per_page\":{:.4},\"prefetch_min\":{:.4},",
                    "\"prefetch_max\":{:.4},\"fetch_us_per_page\":{:.4},\"verify_us_per_page\":{:.4},",
                    "\"install_us_per_page\":{:.4},\"install_ioctls\":{},\"o_direct\":{},\"ratio\":{:.2},",
                    "\"after_us_per_page\":{:.4}}}"
                ),
                mib,
                run,
                label,
                lazy,
                lmin,
                lmax,
                m(&c.lazy_serve_us),
                pre,
                pmin,
                pmax,
                m(&c.fetch_us),
                m(&c.verify_us),
                m(&c.install_us),
                c.ioctls,
                c.direct,
                lazy / pre,
                m(&c.after_us),
            ));
        }
    }
    println!("lazy/flt: touch time per fault; (served): page-server time per fault (read + fill)");
    println!(
        "prefetch: PageServer::start time per page (fetch + verify + install + thread start); after/pg: touching the installed pages"
    );
    println!("run: pages per contiguous run of the working set (1p = scattered single pages)");
    results
}

/// How the holes are provided in one run of [`holes_part`].
#[derive(Clone, Copy, PartialEq)]
enum HoleWay {
    Served,
    Kernel,
    Copied,
}

/// Starts a server over the hole file, writes into `order`, stops it. Returns the time
/// of the writes and the stats.
fn run_holes(mem: &Path, ws: &Path, order: &[u64], way: HoleWay) -> (Duration, PagerStats) {
    let (uffd, m, regions) = registered(MEM_PAGES);
    let memory = MemoryFile::open(mem).unwrap();
    let (mode, holes) = match way {
        HoleWay::Served => (Mode::Lazy, Holes::Served),
        HoleWay::Kernel => (Mode::Lazy, Holes::Kernel),
        HoleWay::Copied => (
            Mode::Prefetch {
                ws: ws.to_path_buf(),
            },
            Holes::Kernel,
        ),
    };
    let mut options = ServeOptions::default().holes(holes);
    if way == HoleWay::Copied {
        options = options
            .min_installed_zero_run(0)
            .max_hole_ranges(usize::MAX);
    }
    let server = PageServer::start_with(uffd, regions, memory, mode, options).unwrap();
    let writes = write_touch(&m, order);
    let stats = server.stop();
    let n = order.len() as u64;
    let served = stats.lazy_faults_zero;
    match way {
        HoleWay::Served => assert_eq!(served, n),
        HoleWay::Kernel => assert_eq!((served, stats.hole_ranges_unregistered), (0, 1)),
        HoleWay::Copied => {
            assert!(!stats.prefetch_fell_back, "{:?}", stats.fallback_reason);
            assert_eq!((served, stats.prefetched_zero_pages), (0, n));
        }
    }
    (writes, stats)
}

/// Holes served, left to the kernel, or copied at install; and the cost of
/// unregistering. Returns the JSON results of both.
fn holes_part(reps: usize, dir: &Path) -> (Vec<String>, Vec<String>) {
    let tag = std::process::id();
    // 256 MiB, data in the first 1 MiB only.
    const DATA_PAGES: u64 = 256;
    let mem = dir.join(format!("reap-pager-bench-{tag}-holes.mem"));
    {
        let f = File::create(&mem).unwrap();
        f.set_len(MEM_PAGES * PS).unwrap();
        f.write_all_at(&vec![0x5a; (DATA_PAGES * PS) as usize], 0)
            .unwrap();
        f.sync_all().unwrap();
    }
    let memory = MemoryFile::open(&mem).unwrap();
    // (pages, pages per run); each run is followed by as many untouched pages.
    let shapes = [1u64, 2, 4, 8, 16, 64, 4096].map(|run| (4096usize, run));
    let mut sets = Vec::new();
    for &(pages, run) in &shapes {
        let order: Vec<u64> = (0..pages as u64)
            .map(|k| DATA_PAGES + (k / run) * 2 * run + k % run)
            .collect();
        let ws = dir.join(format!("reap-pager-bench-{tag}-holes-{pages}-{run}.ws"));
        let offsets: Vec<u64> = order.iter().map(|i| i * PS).collect();
        reap_pager::ws::write_ws(&ws, PS, &offsets, &memory).unwrap();
        sets.push((order, ws));
    }
    let ways = [HoleWay::Served, HoleWay::Kernel, HoleWay::Copied];
    for (order, ws) in &sets {
        for way in ways {
            run_holes(&mem, ws, order, way);
        }
    }
    // Per set and way, us per page: cost, writes, unregister, install.
    let mut cells = vec![vec![[const { Vec::new() }; 4]; 3]; sets.len()];
    for rep in 0..reps {
        for (si, (order, ws)) in sets.iter().enumerate() {
            let n = order.len() as f64;
            for k in 0..3 {
                // Rotate which way goes first.
                let wi = (k + rep) % 3;
                let (writes, st) = run_holes(&mem, ws, order, ways[wi]);
                let own = Duration::from_nanos(st.unregister_ns + st.install_ns);
                let c = &mut cells[si][wi];
                c[0].push((writes + own).as_secs_f64() * 1e6 / n);
                c[1].push(writes.as_secs_f64() * 1e6 / n);
                c[2].push(st.unregister_ns as f64 / 1e3 / n);
                c[3].push(st.install_ns as f64 / 1e3 / n);
            }
        }
    }
    for (_, ws) in &sets {
        let _ = std::fs::remove_file(ws);
    }
    println!();
    println!(
        "reap-pager: writing N hole pages after start, medians of {reps} interleaved runs (us per page)"
    );
    println!(
        "{:>6} {:>6} | {:>8} | {:>8} | {:>8} {:>8} {:>9} {:>8} | {:>8} {:>8}",
        "pages",
        "run",
        "served",
        "kernel",
        "copied",
        "(unreg)",
        "(install)",
        "(writes)",
        "srv/krn",
        "krn/cop"
    );
    let mut holes_json = Vec::new();
    for (si, &(pages, run)) in shapes.iter().enumerate() {
        let m = |wi: usize, k: usize| median(cells[si][wi][k].clone());
        let (served, kernel, copied) = (m(0, 0), m(1, 0), m(2, 0));
        println!(
            "{:>6} {:>6} | {:>8.2} | {:>8.2} | {:>8.2} {:>8.2} {:>9.2} {:>8.2} | {:>7.1}x {:>7.1}x",
            pages,
            format!("{}p", run),
            served,
            kernel,
            copied,
            m(2, 2),
            m(2, 3),
            m(2, 1),
            served / kernel,
            kernel / copied,
        );
        let spread = |wi: usize| spread(&cells[si][wi][0]);
        let ((smin, smax), (kmin, kmax), (cmin, cmax)) = (spread(0), spread(1), spread(2));
        holes_json.push(format!(
            concat!(
                "{{\"pages\":{},\"run_pages\":{},\"served_us_per_page\":{:.3},\"served_min\":{:.3},",
                "\"served_max\":{:.3},\"kernel_us_per_page\":{:.3},\"kernel_min\":{:.3},",
                "\"kernel_max\":{:.3},\"copied_us_per_page\":{:.3},",
                "\"copied_min\":{:.3},\"copied_max\":{:.3},\"copied_unregister_us_per_page\":{:.3},",
                "\"copied_install_us_per_page\":{:.3},\"copied_writes_us_per_page\":{:.3}}}"
            ),
            pages,
            run,
            served,
            smin,
            smax,
            kernel,
            kmin,
            kmax,
            copied,
            cmin,
            cmax,
            m(2, 2),
            m(2, 3),
            m(2, 1),
        ));
    }
    println!(
        "served: lazy, holes registered (the writes); kernel: holes unregistered at start (unregister + writes)"
    );
    println!(
        "copied: prefetch of a WS listing the pages, all kept registered: unregister of the holes around them + install of zeros + writes"
    );
    println!("run: pages per contiguous run, each followed by as many untouched pages");
    let _ = std::fs::remove_file(&mem);

    // The cost of unregistering K hole ranges: at start and at stop, Kernel vs Served.
    println!();
    println!("reap-pager: a lazy server over K hole ranges, medians of {reps} (us)");
    println!(
        "{:>6} | {:>10} {:>11} | {:>9} {:>9}",
        "K", "unregister", "per range", "stop:krn", "stop:srv"
    );
    let mut ranges_json = Vec::new();
    for k in [16u64, 256, 1024, 4096] {
        // One data page every MEM_PAGES / k pages: k hole ranges.
        let every = MEM_PAGES / k;
        let mem = dir.join(format!("reap-pager-bench-{tag}-ranges-{k}.mem"));
        {
            let f = File::create(&mem).unwrap();
            f.set_len(MEM_PAGES * PS).unwrap();
            for i in 0..k {
                f.write_all_at(&[0x5a; PS as usize], i * every * PS)
                    .unwrap();
            }
            f.sync_all().unwrap();
        }
        let mut v: [Vec<f64>; 3] = Default::default();
        for rep in 0..=reps {
            for j in 0..2 {
                let holes = if (j + rep) % 2 == 0 {
                    Holes::Kernel
                } else {
                    Holes::Served
                };
                let (uffd, _m, regions) = registered(MEM_PAGES);
                let memory = MemoryFile::open(&mem).unwrap();
                let options = ServeOptions::default()
                    .holes(holes)
                    .max_hole_ranges(usize::MAX);
                let server =
                    PageServer::start_with(uffd, regions, memory, Mode::Lazy, options).unwrap();
                let t = Instant::now();
                let st = server.stop();
                let stop = t.elapsed();
                if rep == 0 {
                    continue; // warm-up
                }
                let us = |d: Duration| d.as_secs_f64() * 1e6;
                if holes == Holes::Kernel {
                    assert_eq!(st.hole_ranges_unregistered, k);
                    v[0].push(st.unregister_ns as f64 / 1e3);
                    v[1].push(us(stop));
                } else {
                    v[2].push(us(stop));
                }
            }
        }
        let _ = std::fs::remove_file(&mem);
        let m = |i: usize| median(v[i].clone());
        println!(
            "{:>6} | {:>10.0} {:>11.2} | {:>9.0} {:>9.0}",
            k,
            m(0),
            m(0) / k as f64,
            m(1),
            m(2),
        );
        ranges_json.push(format!(
            concat!(
                "{{\"ranges\":{},\"unregister_us\":{:.1},\"stop_kernel_us\":{:.1},",
                "\"stop_served_us\":{:.1}}}"
            ),
            k,
            m(0),
            m(1),
            m(2)
        ));
    }
    println!("stop: joining the fault thread and closing the userfaultfd, which walks the VMAs");
    (holes_json, ranges_json)
}

/// The cost of one page-map scan of a recording server over a 256 MiB hole, with none,
/// some or all of its pages touched. Returns the JSON results.
fn scan_part(reps: usize, dir: &Path) -> Vec<String> {
    const SCANS: usize = 20;
    let tag = std::process::id();
    let mem = dir.join(format!("reap-pager-bench-{tag}-scan.mem"));
    {
        let f = File::create(&mem).unwrap();
        f.set_len(MEM_PAGES * PS).unwrap();
        f.sync_all().unwrap();
    }
    println!();
    println!(
        "reap-pager: one page-map scan of a 256 MiB unregistered hole, medians of {reps} x {SCANS} (us)"
    );
    println!(
        "{:>8} | {:>9} {:>9} {:>9} | {:>12}",
        "touched", "scan", "min", "max", "ns per page"
    );
    let mut out = Vec::new();
    for touched in [0u64, 4096, MEM_PAGES] {
        let order: Vec<u64> = (0..touched)
            .map(|k| k * (MEM_PAGES / touched.max(1)))
            .collect();
        let mut v = Vec::new();
        for _ in 0..reps {
            let (uffd, m, regions) = registered(MEM_PAGES);
            let memory = MemoryFile::open(&mem).unwrap();
            let server = PageServer::start(uffd, regions, memory, Mode::Record).unwrap();
            write_touch(&m, &order);
            for _ in 0..SCANS {
                let t = Instant::now();
                let n = server.scan_touched_holes().unwrap();
                v.push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(n, touched);
            }
            server.stop();
        }
        let (lo, hi) = spread(&v);
        let med = median(v);
        println!(
            "{:>8} | {:>9.1} {:>9.1} {:>9.1} | {:>12.2}",
            touched,
            med,
            lo,
            hi,
            med * 1e3 / MEM_PAGES as f64
        );
        out.push(format!(
            "{{\"touched_pages\":{touched},\"scan_us\":{med:.1},\"scan_min_us\":{lo:.1},\"scan_max_us\":{hi:.1}}}"
        ));
    }
    println!(
        "scan: PageServer::scan_touched_holes, 65,536 page-map entries (512 KiB) read in one pread"
    );
    let _ = std::fs::remove_file(&mem);
    out
}
