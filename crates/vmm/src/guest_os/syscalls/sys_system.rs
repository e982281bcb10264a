//! The system: `uname`, `getrandom`.

use super::*;

impl GuestOs {
    pub(super) fn getrandom(
        &mut self,
        mem: &GuestMemory,
        buf: u64,
        len: u64,
        flags: u32,
    ) -> SysResult {
        const GRND_NONBLOCK: u32 = 1;
        const GRND_RANDOM: u32 = 2;
        const GRND_INSECURE: u32 = 4;
        if flags & !(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE) != 0
            || flags & (GRND_RANDOM | GRND_INSECURE) == GRND_RANDOM | GRND_INSECURE
        {
            return Err(Errno(libc::EINVAL));
        }
        // Linux caps a request at INT_MAX bytes before checking it.
        access_ok(buf, len.min(i32::MAX as u64))?;
        let n = len.min(IO_CHUNK);
        if n == 0 {
            return Ok(0);
        }
        mem.check_user(buf, n)?;
        let mut bytes = vec![0u8; n as usize];
        fill_random(&mut bytes).map_err(|_| Errno(libc::EIO))?;
        mem.write_user(buf, &bytes)?;
        Ok(n)
    }
}

/// Fills `buf` from the host's entropy source.
pub(super) fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Not negative (checked above), and at most the length asked for.
        done += n.unsigned_abs();
    }
    Ok(())
}

pub(super) fn uname(mem: &GuestMemory, buf: u64) -> SysResult {
    let u = Utsname::new([
        "Linux",
        "reap",
        "6.1.0",
        "#1 SMP reap microVM",
        "x86_64",
        "(none)",
    ]);
    mem.write_user_obj(buf, u)?;
    Ok(0)
}

impl GuestOs {
    /// The contents of a synthetic file, as of now.
    pub(super) fn generate(&self, what: Generated) -> Vec<u8> {
        let mem_size = self.mm.mem_size();
        match what {
            Generated::Maps => {
                let mut out = String::new();
                // The vDSO's pages in the system area (never handed out by mmap).
                use crate::arch::layout::{PAGE_SIZE, VDSO_ADDR, VDSO_MAX_SIZE, VVAR_ADDR};
                out.push_str(&format!(
                    "{VVAR_ADDR:08x}-{:08x} r--p 00000000 00:00 0 [vvar]\n",
                    VVAR_ADDR + PAGE_SIZE
                ));
                out.push_str(&format!(
                    "{VDSO_ADDR:08x}-{:08x} r-xp 00000000 00:00 0 [vdso]\n",
                    VDSO_ADDR + VDSO_MAX_SIZE
                ));
                let mut line = |start: u64, end: u64, p: Protection, name: &str| {
                    let p = match p {
                        Protection::None => "---p",
                        Protection::Read => "r--p",
                        Protection::ReadExec => "r-xp",
                        Protection::ReadWrite => "rw-p",
                        Protection::ReadWriteExec => "rwxp",
                    };
                    out.push_str(&format!(
                        "{start:08x}-{end:08x} {p} 00000000 00:00 0 {name}\n"
                    ));
                };
                // The program's segments, then the heap, the mappings (the dynamic
                // loader and file mappings by their paths), the stack.
                for (s, e) in self.mm.named_outside_mappings() {
                    for (a, b, p, name) in self.mm.areas(s, e) {
                        line(a, b, p, name.unwrap_or(""));
                    }
                }
                let (brk_start, brk) = self.mm.brk_range();
                let heap_end = crate::arch::layout::page_align_up(brk).unwrap_or(brk);
                if heap_end > brk_start {
                    line(
                        brk_start,
                        heap_end,
                        self.mm.protection_at(brk_start),
                        "[heap]",
                    );
                }
                for (s, e) in self.mm.mappings() {
                    for (a, b, p, name) in self.mm.areas(s, e) {
                        line(a, b, p, name.unwrap_or(""));
                    }
                }
                let top = mem_size;
                let stack = top - crate::arch::layout::STACK_SIZE;
                line(stack, top, self.mm.protection_at(stack), "[stack]");
                out.into_bytes()
            }
            Generated::Status => format!(
                "Name:\t{}\nUmask:\t{:04o}\nState:\tR (running)\nTgid:\t1\nPid:\t1\nPPid:\t0\n\
                 Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nThreads:\t1\nVmSize:\t{} kB\nVmRSS:\t{} kB\n\
                 Cpus_allowed:\t1\nCpus_allowed_list:\t0\n",
                String::from_utf8_lossy(self.vfs.exe.rsplit(|&b| b == b'/').next().unwrap_or(b"")),
                self.vfs.umask,
                mem_size >> 10,
                self.mm.mapped_bytes() >> 10,
            )
            .into_bytes(),
            Generated::Stat => {
                b"1 (function) R 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 0 0 0\n".to_vec()
            }
            Generated::Cmdline => {
                let mut v = self.vfs.exe.clone();
                v.push(0);
                v
            }
            Generated::Cpuinfo => {
                let model = cpu_model();
                format!(
                    "processor\t: 0\nvendor_id\t: {}\nmodel name\t: {model}\ncpu cores\t: 1\n\
                     siblings\t: 1\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2\n\n",
                    cpu_vendor()
                )
                .into_bytes()
            }
            Generated::Meminfo => {
                let total = mem_size >> 10;
                let free = total.saturating_sub(self.mm.mapped_bytes() >> 10);
                format!(
                    "MemTotal:       {total} kB\nMemFree:        {free} kB\nMemAvailable:   {free} kB\n\
                     Buffers:        0 kB\nCached:         0 kB\nSwapTotal:      0 kB\nSwapFree:       0 kB\n"
                )
                .into_bytes()
            }
            // One vCPU.
            Generated::CpuList => b"0\n".to_vec(),
        }
    }

    /// `sysinfo(info)`: guest memory as the RAM, one process.
    pub(super) fn sysinfo(&self, mem: &GuestMemory, info: u64) -> SysResult {
        let total = self.mm.mem_size();
        let free = total.saturating_sub(self.mm.mapped_bytes());
        let mut b = Vec::with_capacity(112);
        b.extend(1i64.to_le_bytes()); // uptime
        b.extend([0u8; 24]); // loads
        for v in [total, free, 0, 0, 0, 0] {
            b.extend(v.to_le_bytes());
        }
        b.extend(1u16.to_le_bytes()); // procs
        b.extend([0u8; 6]);
        b.extend([0u8; 16]); // totalhigh, freehigh
        b.extend(1u32.to_le_bytes()); // mem_unit
        b.resize(112, 0);
        mem.write_user(info, &b)?;
        Ok(0)
    }
}

/// The host CPU's vendor string (CPUID leaf 0).
fn cpu_vendor() -> String {
    let r = std::arch::x86_64::__cpuid(0);
    let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The host CPU's brand string (CPUID leaves 0x80000002-4).
fn cpu_model() -> String {
    let mut bytes = Vec::new();
    for leaf in 0x8000_0002u32..=0x8000_0004 {
        let r = std::arch::x86_64::__cpuid(leaf);
        for w in [r.eax, r.ebx, r.ecx, r.edx] {
            bytes.extend(w.to_le_bytes());
        }
    }
    let s = String::from_utf8_lossy(&bytes);
    s.trim_matches(char::from(0)).trim().to_string()
}
