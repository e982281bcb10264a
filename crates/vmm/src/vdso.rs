//! The guest's vDSO: `clock_gettime`, `gettimeofday`, `time`, `getcpu` and
//! `clock_getres` without a VM exit.
//!
//! As on Linux, the VMM maps a small ELF shared object into the guest (at
//! [`VDSO_ADDR`], announced as `AT_SYSINFO_EHDR` in the auxiliary vector), and glibc
//! (static and dynamic alike) calls its `__vdso_*` functions (version `LINUX_2.6`)
//! instead of making the system calls. The image is built from `vdso/vdso.c` by
//! `build.rs` with the system C compiler. Its functions read the guest's TSC and the
//! parameters in the data page at [`VVAR_ADDR`] ([`Vvar`]), which only the VMM writes:
//! `ns = base + ((tsc - tsc_base) * mult) >> shift` for `CLOCK_REALTIME` and
//! `CLOCK_MONOTONIC` (and their `_COARSE` variants); every other clock, and every call
//! while the page says the TSC cannot be used, falls back to the system call.
//!
//! The VMM rewrites the page ([`sync`]) before the guest first runs, at each snapshot
//! (the guest is at its ready point), after each restore before the guest runs again,
//! and at an invocation when the last rewrite is older than a second (so the guest's
//! clock follows the host's NTP-disciplined one). A restore lands on another vCPU
//! whose TSC has nothing to do with the snapshot's, and the wall clock has moved on:
//! the restore's rewrite takes both from the host, so `CLOCK_REALTIME` reads the host's
//! time. `CLOCK_MONOTONIC` is the host's `CLOCK_MONOTONIC` plus an offset that is 0
//! unless the host's clock is behind the snapshot's (a restore on another host or after
//! a reboot): then the offset grows so that the guest's clock continues from the value
//! at the snapshot and never goes backwards (see docs/vdso.md for why it counts the
//! time a snapshot spent on disk). The VMM's own clock system calls add the same
//! offset ([`monotonic_offset`]). The page is guest memory, so it is in the snapshot;
//! the state file's format does not change.

use std::sync::OnceLock;
use std::sync::atomic::{Ordering, compiler_fence};

use vm_memory::ByteValued;

use crate::arch::layout::{PAGE_SIZE, VDSO_ADDR, VDSO_MAX_SIZE, VVAR_ADDR};
use crate::vstate::memory::{Efault, GuestMemory};
use crate::vstate::vcpu::{Vcpu, VcpuError};

/// The vDSO image (`vdso/vdso.c`, built by `build.rs`).
pub const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vdso.so"));
const _: () = assert!(IMAGE.len() as u64 <= VDSO_MAX_SIZE);

/// [`Vvar::magic`]: `"REAPVVAR"`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"REAPVVAR");
/// [`Vvar::flags`]: the TSC fields may be used (the host's TSC is invariant and its
/// frequency known).
pub const VALID: u32 = 1;
/// [`Vvar::shift`] of the parameters the VMM writes.
pub const SHIFT: u32 = 32;
/// An invocation rewrites the page when the last rewrite is older than this.
pub const RESYNC_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The data page's contents (`struct vvar` in `vdso/vdso.h`: keep them identical).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vvar {
    /// Sequence count: odd while the VMM writes the page.
    pub seq: u32,
    /// [`VALID`] or 0.
    pub flags: u32,
    /// [`MAGIC`] once the VMM wrote the page.
    pub magic: u64,
    /// The guest's TSC at the instant the bases below were read.
    pub tsc_base: u64,
    /// Nanoseconds per TSC tick, times 2^`shift`.
    pub mult: u64,
    /// See `mult`.
    pub shift: u32,
    /// Zero.
    pub pad: u32,
    /// `CLOCK_REALTIME` at `tsc_base`, ns since the epoch.
    pub realtime_ns: u64,
    /// `CLOCK_MONOTONIC` at `tsc_base`, ns.
    pub monotonic_ns: u64,
    /// The guest's `CLOCK_MONOTONIC` minus the host's (the VMM's own field).
    pub monotonic_offset_ns: i64,
}

const _: () = assert!(size_of::<Vvar>() == 64);
const _: () = assert!(size_of::<Vvar>() as u64 <= PAGE_SIZE);

// SAFETY: `Vvar` is `repr(C)`, made of integers only and without padding (64 bytes, as
// the fields add up), so every byte pattern is a valid value.
unsafe impl ByteValued for Vvar {}

impl Vvar {
    fn elapsed_ns(&self, tsc: u64) -> u64 {
        let ticks = u128::from(tsc.saturating_sub(self.tsc_base));
        u64::try_from((ticks * u128::from(self.mult)) >> self.shift.min(127)).unwrap_or(u64::MAX)
    }

    /// `CLOCK_MONOTONIC` at guest TSC `tsc`, as the vDSO computes it.
    pub fn monotonic_at(&self, tsc: u64) -> u64 {
        self.monotonic_ns.saturating_add(self.elapsed_ns(tsc))
    }

    /// `CLOCK_REALTIME` at guest TSC `tsc`, as the vDSO computes it.
    pub fn realtime_at(&self, tsc: u64) -> u64 {
        self.realtime_ns.saturating_add(self.elapsed_ns(tsc))
    }
}

/// `mult` for a TSC of `khz` kHz: `ticks * mult >> SHIFT` is nanoseconds.
pub fn mult_for(khz: u32) -> u64 {
    u64::try_from((1_000_000u128 << SHIFT) / u128::from(khz.max(1))).unwrap_or(u64::MAX)
}

/// Copies the vDSO image into guest memory at [`VDSO_ADDR`].
pub fn install(mem: &GuestMemory) -> Result<(), Efault> {
    mem.write(VDSO_ADDR, IMAGE)
}

/// The data page, if the VMM wrote one into this guest's memory (a guest booted before
/// the vDSO existed has none).
pub fn read(mem: &GuestMemory) -> Option<Vvar> {
    mem.read_obj::<Vvar>(VVAR_ADDR)
        .ok()
        .filter(|v| v.magic == MAGIC)
}

/// The guest's `CLOCK_MONOTONIC` minus the host's, ns (0 without a data page).
pub fn monotonic_offset(mem: &GuestMemory) -> i64 {
    read(mem).map_or(0, |v| v.monotonic_offset_ns)
}

/// The guest's TSC read together with the host's clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// The guest's TSC.
    pub guest_tsc: u64,
    /// The TSC's frequency, `None` if it is unknown or the TSC is not invariant.
    pub tsc_khz: Option<u32>,
    /// The host's `CLOCK_REALTIME`, ns since the epoch.
    pub realtime_ns: u64,
    /// The host's `CLOCK_MONOTONIC`, ns.
    pub monotonic_ns: u64,
}

fn host_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and the clock ids used here exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The host's TSC frequency, read once per process: `KVM_GET_TSC_KHZ` of the first
/// vCPU asked, `None` if that fails or the host's TSC is not invariant
/// (CPUID.80000007H:EDX bit 8).
fn tsc_khz(vcpu: &Vcpu) -> Option<u32> {
    static KHZ: OnceLock<Option<u32>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        if !crate::arch::invariant_tsc() {
            return None;
        }
        vcpu.tsc_khz().ok().filter(|&k| k > 0)
    })
}

impl ClockSample {
    /// Reads the guest's TSC through `vcpu` (`KVM_GET_MSRS`), between two readings of
    /// each host clock: each host figure is the mean of its two readings.
    pub fn take(vcpu: &Vcpu) -> Result<Self, VcpuError> {
        let tsc_khz = tsc_khz(vcpu);
        let (r0, m0) = (
            host_ns(libc::CLOCK_REALTIME),
            host_ns(libc::CLOCK_MONOTONIC),
        );
        let guest_tsc = vcpu.tsc()?;
        let (m1, r1) = (
            host_ns(libc::CLOCK_MONOTONIC),
            host_ns(libc::CLOCK_REALTIME),
        );
        Ok(Self {
            guest_tsc,
            tsc_khz,
            realtime_ns: r0 / 2 + r1 / 2,
            monotonic_ns: m0 / 2 + m1 / 2,
        })
    }
}

/// What keeps the guest's `CLOCK_MONOTONIC` from going backwards in [`sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// The page's parameters were written for this vCPU's TSC: the new ones never read
    /// less than the old ones read now.
    Running,
    /// The guest was restored onto a vCPU whose TSC has nothing to do with the
    /// snapshot's: the new parameters never read less than the page's base, which is
    /// the clock at the snapshot (taken right after a [`Resync::Running`] rewrite at
    /// the ready point, where the guest stood still).
    Restored,
}

/// [`sync`] for a guest that has a data page; a guest booted before the vDSO existed
/// (restored from an older snapshot) has none, and its memory there is left alone:
/// `None`.
pub fn sync_existing(
    mem: &GuestMemory,
    sample: &ClockSample,
    how: Resync,
) -> Result<Option<Vvar>, Efault> {
    if read(mem).is_none() {
        return Ok(None);
    }
    sync(mem, sample, how).map(Some)
}

/// Writes the parameters of `sample` into the data page (a seqlock write: `seq` odd,
/// the fields, `seq` even) and returns them. `CLOCK_REALTIME` is the host's;
/// `CLOCK_MONOTONIC` is the host's plus the page's offset, which grows as `how` says
/// when that would go backwards.
pub fn sync(mem: &GuestMemory, sample: &ClockSample, how: Resync) -> Result<Vvar, Efault> {
    let old = read(mem);
    let floor = match (old, how) {
        (Some(v), Resync::Running) if v.flags & VALID != 0 => v.monotonic_at(sample.guest_tsc),
        (Some(v), _) => v.monotonic_ns,
        (None, _) => 0,
    };
    let offset = old.map_or(0, |v| v.monotonic_offset_ns);
    let candidate = i128::from(sample.monotonic_ns) + i128::from(offset);
    let (monotonic_ns, offset) = if candidate < i128::from(floor) {
        let raise = i128::from(floor) - candidate;
        (
            floor,
            i64::try_from(i128::from(offset) + raise).unwrap_or(i64::MAX),
        )
    } else {
        (u64::try_from(candidate).unwrap_or(u64::MAX), offset)
    };
    let seq = old.map_or(0, |v| v.seq & !1);
    let new = Vvar {
        seq: seq.wrapping_add(1),
        flags: if sample.tsc_khz.is_some() { VALID } else { 0 },
        magic: MAGIC,
        tsc_base: sample.guest_tsc,
        mult: sample.tsc_khz.map_or(0, mult_for),
        shift: SHIFT,
        pad: 0,
        realtime_ns: sample.realtime_ns,
        monotonic_ns,
        monotonic_offset_ns: offset,
    };
    mem.write_obj(VVAR_ADDR, new.seq)?;
    compiler_fence(Ordering::SeqCst);
    mem.write_obj(VVAR_ADDR, new)?;
    compiler_fence(Ordering::SeqCst);
    let done = seq.wrapping_add(2);
    mem.write_obj(VVAR_ADDR, done)?;
    Ok(Vvar { seq: done, ..new })
}

#[cfg(test)]
mod tests {
    use super::*;
    use goblin::elf::Elf;

    fn memory() -> GuestMemory {
        GuestMemory::anonymous(16 << 20).unwrap()
    }

    fn sample(tsc: u64, realtime_ns: u64, monotonic_ns: u64) -> ClockSample {
        ClockSample {
            guest_tsc: tsc,
            tsc_khz: Some(2_000_000),
            realtime_ns,
            monotonic_ns,
        }
    }

    #[test]
    fn the_image_exports_the_linux_vdso_functions_with_their_version() {
        let elf = Elf::parse(IMAGE).unwrap();
        assert_eq!(elf.soname, Some("linux-vdso.so.1"));
        let names: Vec<&str> = elf
            .dynsyms
            .iter()
            .filter(|s| s.st_value != 0)
            .filter_map(|s| elf.dynstrtab.get_at(s.st_name))
            .collect();
        for f in [
            "__vdso_clock_gettime",
            "__vdso_gettimeofday",
            "__vdso_time",
            "__vdso_getcpu",
            "__vdso_clock_getres",
        ] {
            assert!(names.contains(&f), "{f} missing from {names:?}");
        }
        let verdefs = elf.verdef.as_ref().expect("version definitions");
        let mut versions = Vec::new();
        for d in verdefs.iter() {
            for a in d.iter() {
                versions.extend(elf.dynstrtab.get_at(a.vda_name));
            }
        }
        assert!(versions.contains(&"LINUX_2.6"), "{versions:?}");
        // One loadable segment whose addresses are its file offsets: the file is the
        // image as the guest sees it.
        let loads: Vec<_> = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
            .collect();
        assert_eq!(loads.len(), 1);
        assert_eq!(loads[0].p_vaddr, loads[0].p_offset);
        assert!(loads[0].p_filesz as usize <= IMAGE.len());
    }

    #[test]
    fn mult_converts_ticks_to_nanoseconds() {
        let v = Vvar {
            mult: mult_for(2_100_000),
            shift: SHIFT,
            ..Vvar::default()
        };
        // 2.1 GHz: 2.1e9 ticks are one second.
        assert_eq!(v.monotonic_at(2_100_000_000), 1_000_000_000 - 1);
        assert_eq!(v.monotonic_at(0), 0);
    }

    #[test]
    fn a_guest_without_a_data_page_is_left_alone() {
        let mem = memory();
        let before = mem.read_obj::<Vvar>(VVAR_ADDR).unwrap();
        assert_eq!(
            sync_existing(&mem, &sample(1000, 5_000, 7_000), Resync::Restored).unwrap(),
            None
        );
        assert_eq!(mem.read_obj::<Vvar>(VVAR_ADDR).unwrap(), before);
        let v = sync(&mem, &sample(1000, 5_000, 7_000), Resync::Running).unwrap();
        let again = sync_existing(&mem, &sample(2000, 6_000, 8_000), Resync::Running).unwrap();
        assert!(again.is_some_and(|w| w.seq == v.seq + 2));
    }

    #[test]
    fn a_fresh_page_reads_the_host_clocks() {
        let mem = memory();
        assert_eq!(read(&mem), None);
        let v = sync(&mem, &sample(1000, 5_000, 7_000), Resync::Running).unwrap();
        assert_eq!(read(&mem), Some(v));
        assert_eq!(v.seq % 2, 0);
        assert_eq!(
            (v.realtime_ns, v.monotonic_ns, v.monotonic_offset_ns),
            (5_000, 7_000, 0)
        );
        assert_eq!(v.flags, VALID);
        // 2 GHz: 2000 ticks later is 1 µs later.
        assert_eq!(v.monotonic_at(3000), 8_000);
        assert_eq!(v.realtime_at(3000), 6_000);
    }

    #[test]
    fn after_a_restore_realtime_is_the_hosts_and_monotonic_continues() {
        let mem = memory();
        let hour = 3_600_000_000_000u64;
        // The snapshot: taken "hours ago" on a host whose monotonic clock was ahead.
        sync(
            &mem,
            &sample(5_000_000, 10 * hour, 50 * hour),
            Resync::Running,
        )
        .unwrap();
        // Restored on a vCPU whose TSC restarted, on a host whose monotonic clock is
        // behind the snapshot's: monotonic continues from the snapshot's value.
        let v = sync(&mem, &sample(100, 13 * hour, 2 * hour), Resync::Restored).unwrap();
        assert_eq!(v.realtime_ns, 13 * hour);
        assert_eq!(v.monotonic_ns, 50 * hour);
        assert_eq!(v.monotonic_offset_ns, 48 * hour as i64);
        assert_eq!(monotonic_offset(&mem), 48 * hour as i64);
        // Later rewrites keep the offset: the guest's clock advances with the host's.
        let w = sync(
            &mem,
            &sample(2_000_100, 13 * hour + 1_000_000, 2 * hour + 1_000_000),
            Resync::Running,
        )
        .unwrap();
        assert_eq!(w.monotonic_ns, 50 * hour + 1_000_000);
        // On a host whose clock is ahead, the offset stays (0 here would go back).
        let x = sync(&mem, &sample(7, 14 * hour, 60 * hour), Resync::Restored).unwrap();
        assert_eq!(x.monotonic_ns, 60 * hour + 48 * hour);
    }

    #[test]
    fn a_resync_never_moves_monotonic_backwards() {
        let mem = memory();
        sync(&mem, &sample(0, 0, 1_000_000), Resync::Running).unwrap();
        // The old parameters read 1_000_000 + 1000 µs at TSC 2e6; the host says less.
        let v = sync(&mem, &sample(2_000_000, 0, 1_500_000), Resync::Running).unwrap();
        assert_eq!(v.monotonic_ns, 2_000_000);
        assert_eq!(v.monotonic_offset_ns, 500_000);
    }

    #[test]
    fn without_a_known_tsc_frequency_the_page_sends_the_guest_to_the_system_call() {
        let mem = memory();
        let mut s = sample(1, 2, 3);
        s.tsc_khz = None;
        let v = sync(&mem, &s, Resync::Running).unwrap();
        assert_eq!(v.flags, 0);
        assert_eq!(v.mult, 0);
    }
}
