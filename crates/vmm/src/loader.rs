//! Loads an x86-64 Linux executable (ET_EXEC or PIE, static or with a dynamic loader)
//! into guest memory, the dynamic loader (`PT_INTERP`) beside it, and builds the initial
//! stack a Linux process starts with (argc, argv, envp, auxv).

use goblin::elf::Elf;
use goblin::elf::header::{EM_X86_64, ET_DYN, ET_EXEC};
use goblin::elf::program_header::{PF_W, PF_X, PT_LOAD, PT_PHDR};

use crate::arch::layout::{
    PAGE_SIZE, PIE_LOAD_BASE, STACK_GUARD_GAP, STACK_SIZE, SYSTEM_AREA_END, page_align_down,
    page_align_up,
};
use crate::vstate::memory::GuestMemory;

/// Largest executable the loader reads.
pub const MAX_BINARY_SIZE: u64 = 1 << 30;

/// Why an executable cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No ELF magic.
    #[error("not an ELF file")]
    NotElf,
    /// goblin could not parse it (its message).
    #[error("malformed ELF file: {0}")]
    Malformed(String),
    /// A 32-bit ELF file.
    #[error("32-bit ELF executables are not supported (x86-64 only)")]
    Elf32,
    /// Another architecture (`e_machine`).
    #[error("ELF machine {0} is not x86-64")]
    WrongMachine(u16),
    /// Neither `ET_EXEC` nor `ET_DYN` (`e_type`).
    #[error("ELF type {0} is not an executable (ET_EXEC or a static PIE)")]
    NotExecutable(u16),
    /// It names an interpreter (the dynamic loader's path).
    #[error(
        "dynamically linked executable (interpreter {0}): build it static, e.g. with -C target-feature=+crt-static"
    )]
    Dynamic(String),
    /// `e_entry` is 0.
    #[error("executable has no entry point")]
    NoEntry,
    /// No `PT_LOAD` segment.
    #[error("executable has no loadable segment")]
    NoSegments,
    /// A segment's file range is not inside the file.
    #[error(
        "segment at file offset {offset:#x} (+{size:#x}) lies outside the {file_size}-byte file"
    )]
    SegmentOutsideFile {
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        size: u64,
        /// The file's size.
        file_size: u64,
    },
    /// A segment does not fit between the system area and the stack.
    #[error(
        "segment at {start:#x}..{end:#x} does not fit in guest memory (usable {usable_start:#x}..{usable_end:#x}; \
         the program needs more than the {mem_mib} MiB of guest memory, or is linked at an address below {usable_start:#x})"
    )]
    SegmentOutsideMemory {
        /// The segment's first address.
        start: u64,
        /// Its end.
        end: u64,
        /// The lowest address a segment may use.
        usable_start: u64,
        /// The end of the memory segments may use.
        usable_end: u64,
        /// Guest memory in MiB.
        mem_mib: u64,
    },
    /// The dynamic loader is itself dynamic, or not a shared object.
    #[error("the dynamic loader {0} is not a static shared object (ET_DYN without PT_INTERP)")]
    BadInterpreter(String),
    /// More than [`MAX_BINARY_SIZE`] bytes.
    #[error("executable is {0} bytes, larger than the {MAX_BINARY_SIZE}-byte limit")]
    TooLarge(u64),
    /// argv, envp and the auxiliary vector do not fit.
    #[error("initial stack does not fit in guest memory")]
    StackOverflow,
}

/// Where the program landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedProgram {
    /// The entry point (after the static-pie load offset).
    pub entry: u64,
    /// Where the program headers are in guest memory (AT_PHDR).
    pub phdr: u64,
    /// The size of one program header (AT_PHENT).
    pub phent: u64,
    /// The number of program headers (AT_PHNUM).
    pub phnum: u64,
    /// First page after the program's segments: where the heap (brk) starts.
    pub end: u64,
    /// Page ranges (start, end, executable) of the segments without `PF_W` (text with
    /// `PF_X`, read-only data without), less the pages a writable segment shares: mapped
    /// read-only, as Linux maps them.
    pub read_only: Vec<(u64, u64, bool)>,
    /// Page ranges of segments with both `PF_W` and `PF_X`: mapped writable and
    /// executable (other writable memory is not executable).
    pub writable_exec: Vec<(u64, u64)>,
    /// The dynamic loader the program names (`PT_INTERP`), if any.
    pub interp: Option<String>,
    /// Where the image's address 0 landed (the load bias of a PIE or shared object).
    pub base: u64,
}

/// The highest address program segments may occupy: the stack guard gap and the stack
/// sit above.
pub fn load_limit(mem_size: u64) -> u64 {
    mem_size.saturating_sub(STACK_SIZE + STACK_GUARD_GAP)
}

/// Parses and checks `image`, then copies its loadable segments into `mem`. A PIE goes
/// to [`PIE_LOAD_BASE`]; a program that names a dynamic loader is loaded all the same,
/// with the loader's path in [`LoadedProgram::interp`].
pub fn load_elf(image: &[u8], mem: &GuestMemory) -> Result<LoadedProgram, LoadError> {
    load_at(image, mem, None)
}

/// Loads the dynamic loader `image` (a shared object without `PT_INTERP`) with its
/// address 0 at `base` (page-aligned; [`elf_span`] bytes must be free there).
pub fn load_interpreter(
    image: &[u8],
    mem: &GuestMemory,
    base: u64,
    path: &str,
) -> Result<LoadedProgram, LoadError> {
    let loaded = load_at(image, mem, Some(base))?;
    if loaded.interp.is_some() {
        return Err(LoadError::BadInterpreter(path.into()));
    }
    Ok(loaded)
}

/// The bytes from address 0 of a shared object to the end of its last segment, page
/// aligned: the room [`load_interpreter`] needs.
pub fn elf_span(image: &[u8], path: &str) -> Result<u64, LoadError> {
    let elf = Elf::parse(image).map_err(|e| LoadError::Malformed(e.to_string()))?;
    if elf.header.e_type != ET_DYN || !elf.is_64 || elf.header.e_machine != EM_X86_64 {
        return Err(LoadError::BadInterpreter(path.into()));
    }
    let end = elf
        .program_headers
        .iter()
        .filter(|ph| ph.p_type == PT_LOAD)
        .map(|ph| ph.p_vaddr.checked_add(ph.p_memsz))
        .try_fold(0u64, |acc, e| e.map(|e| acc.max(e)))
        .ok_or(LoadError::BadInterpreter(path.into()))?;
    if end == 0 || end > MAX_BINARY_SIZE {
        return Err(LoadError::BadInterpreter(path.into()));
    }
    page_align_up(end).ok_or(LoadError::BadInterpreter(path.into()))
}

fn load_at(
    image: &[u8],
    mem: &GuestMemory,
    base_override: Option<u64>,
) -> Result<LoadedProgram, LoadError> {
    if image.len() as u64 > MAX_BINARY_SIZE {
        return Err(LoadError::TooLarge(image.len() as u64));
    }
    if image.len() < 4 || &image[..4] != b"\x7fELF" {
        return Err(LoadError::NotElf);
    }
    if image.get(4) == Some(&1) {
        return Err(LoadError::Elf32);
    }
    let elf = Elf::parse(image).map_err(|e| LoadError::Malformed(e.to_string()))?;
    if !elf.is_64 {
        return Err(LoadError::Elf32);
    }
    if elf.header.e_machine != EM_X86_64 {
        return Err(LoadError::WrongMachine(elf.header.e_machine));
    }
    let interp = elf.interpreter.map(str::to_string);
    let base = match (elf.header.e_type, base_override) {
        (ET_DYN, Some(base)) => base,
        (_, Some(_)) => return Err(LoadError::NotExecutable(elf.header.e_type)),
        (ET_EXEC, None) => 0,
        (ET_DYN, None) => PIE_LOAD_BASE,
        (other, None) => return Err(LoadError::NotExecutable(other)),
    };
    if elf.entry == 0 {
        return Err(LoadError::NoEntry);
    }

    let usable_end = load_limit(mem.size());
    let mut end = 0u64;
    let mut phdr = None;
    let mut loads = 0;
    let mut read_only = Vec::new();
    let mut writable = Vec::new();
    let mut writable_exec = Vec::new();
    for ph in &elf.program_headers {
        if ph.p_type == PT_PHDR {
            phdr = Some(base.wrapping_add(ph.p_vaddr));
        }
        if ph.p_type != PT_LOAD {
            continue;
        }
        loads += 1;
        let file_end = ph.p_offset.checked_add(ph.p_filesz);
        if file_end.is_none_or(|e| e > image.len() as u64) || ph.p_filesz > ph.p_memsz {
            return Err(LoadError::SegmentOutsideFile {
                offset: ph.p_offset,
                size: ph.p_filesz,
                file_size: image.len() as u64,
            });
        }
        let start = base.checked_add(ph.p_vaddr);
        let seg_end = start.and_then(|s| s.checked_add(ph.p_memsz));
        let (Some(start), Some(seg_end)) = (start, seg_end) else {
            return Err(outside(ph.p_vaddr, u64::MAX, mem.size()));
        };
        if start < SYSTEM_AREA_END || seg_end > usable_end {
            return Err(outside(start, seg_end, mem.size()));
        }
        let bytes = &image[ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize];
        mem.write(start, bytes)
            .map_err(|_| outside(start, seg_end, mem.size()))?;
        // The rest up to p_memsz (.bss) is already zero: guest memory starts zeroed.
        if phdr.is_none() && ph.p_offset == 0 && elf.header.e_phoff < ph.p_filesz {
            phdr = Some(start + elf.header.e_phoff);
        }
        end = end.max(seg_end);
        // Inside usable guest memory, so rounding up cannot overflow.
        let pages = (
            page_align_down(start),
            page_align_up(seg_end).unwrap_or(seg_end),
        );
        if ph.p_flags & PF_W != 0 {
            writable.push(pages);
            if ph.p_flags & PF_X != 0 {
                writable_exec.push(pages);
            }
        } else if pages.0 < pages.1 {
            read_only.push((pages.0, pages.1, ph.p_flags & PF_X != 0));
        }
    }
    let read_only = less_pages_of(read_only, &writable);
    if loads == 0 {
        return Err(LoadError::NoSegments);
    }
    let entry = base.checked_add(elf.entry).ok_or(LoadError::NoEntry)?;
    Ok(LoadedProgram {
        entry,
        phdr: phdr.unwrap_or(0),
        phent: u64::from(elf.header.e_phentsize),
        phnum: u64::from(elf.header.e_phnum),
        end: page_align_up(end).ok_or(LoadError::StackOverflow)?,
        read_only,
        writable_exec,
        interp,
        base,
    })
}

/// The page ranges `ranges` without the pages of `remove`: the read-only segments less
/// the pages writable segments share with them (Linux maps a shared page with the
/// later segment's permissions; a writable one there is the data after the text).
fn less_pages_of<T: Copy>(
    mut ranges: Vec<(u64, u64, T)>,
    remove: &[(u64, u64)],
) -> Vec<(u64, u64, T)> {
    for &(r_start, r_end) in remove {
        ranges = ranges
            .into_iter()
            .flat_map(|(s, e, t)| [(s, e.min(r_start), t), (s.max(r_end), e, t)])
            .filter(|(s, e, _)| s < e)
            .collect();
    }
    ranges
}

fn outside(start: u64, end: u64, mem_size: u64) -> LoadError {
    LoadError::SegmentOutsideMemory {
        start,
        end,
        usable_start: SYSTEM_AREA_END,
        usable_end: load_limit(mem_size),
        mem_mib: mem_size >> 20,
    }
}

// Auxiliary vector keys (include/uapi/linux/auxvec.h).
const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_PAGESZ: u64 = 6;
const AT_BASE: u64 = 7;
const AT_FLAGS: u64 = 8;
const AT_ENTRY: u64 = 9;
const AT_UID: u64 = 11;
const AT_EUID: u64 = 12;
const AT_GID: u64 = 13;
const AT_EGID: u64 = 14;
const AT_PLATFORM: u64 = 15;
const AT_HWCAP: u64 = 16;
const AT_CLKTCK: u64 = 17;
const AT_SECURE: u64 = 23;
const AT_RANDOM: u64 = 25;
const AT_HWCAP2: u64 = 26;
const AT_EXECFN: u64 = 31;
const AT_SYSINFO_EHDR: u64 = 33;

/// What goes on the initial stack besides the program's own addresses.
pub struct StackInputs<'a> {
    /// argv, including `argv[0]`.
    pub args: &'a [String],
    /// The environment, as `KEY=VALUE` strings.
    pub env: &'a [String],
    /// CPUID.1:EDX, what the kernel reports as AT_HWCAP.
    pub hwcap: u64,
    /// 16 bytes for AT_RANDOM.
    pub random: [u8; 16],
    /// Where the dynamic loader is (AT_BASE), 0 for none.
    pub interp_base: u64,
    /// The program's path (AT_EXECFN); argv[0] if `None`.
    pub execfn: Option<&'a str>,
    /// Where the vDSO is (AT_SYSINFO_EHDR), 0 for none (then the entry is left out).
    pub vdso: u64,
}

/// Builds the Linux initial stack below `top` and returns the stack pointer at entry
/// (pointing at argc, 16-byte aligned).
pub fn build_stack(
    mem: &GuestMemory,
    top: u64,
    program: &LoadedProgram,
    inputs: &StackInputs<'_>,
) -> Result<u64, LoadError> {
    // Strings and random bytes go at the top; the pointer block below them.
    let mut strings: Vec<u8> = Vec::new();
    let mut offsets = Vec::new();
    for s in inputs.args.iter().chain(inputs.env) {
        offsets.push(strings.len() as u64);
        strings.extend(s.as_bytes().iter().filter(|&&b| b != 0));
        strings.push(0);
    }
    let platform_off = strings.len() as u64;
    strings.extend(b"x86_64\0");
    let random_off = strings.len() as u64;
    strings.extend(inputs.random);
    let execfn_off = inputs.execfn.map(|f| {
        let off = strings.len() as u64;
        strings.extend(f.as_bytes().iter().filter(|&&b| b != 0));
        strings.push(0);
        off
    });

    let strings_start = top
        .checked_sub(strings.len() as u64 + 16)
        .ok_or(LoadError::StackOverflow)?
        & !15;
    let addr_of = |off: u64| strings_start + off;
    let execfn = match execfn_off {
        Some(off) => addr_of(off),
        None => inputs
            .args
            .first()
            .map(|_| addr_of(offsets[0]))
            .unwrap_or(0),
    };

    let vdso = [(AT_SYSINFO_EHDR, inputs.vdso)];
    let vdso = vdso.iter().filter(|&&(_, addr)| addr != 0).copied();
    let auxv = [
        (AT_PHDR, program.phdr),
        (AT_PHENT, program.phent),
        (AT_PHNUM, program.phnum),
        (AT_PAGESZ, PAGE_SIZE),
        (AT_BASE, inputs.interp_base),
        (AT_FLAGS, 0),
        (AT_ENTRY, program.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_PLATFORM, addr_of(platform_off)),
        (AT_HWCAP, inputs.hwcap),
        (AT_CLKTCK, 100),
        (AT_SECURE, 0),
        (AT_RANDOM, addr_of(random_off)),
        (AT_HWCAP2, 0),
        (AT_EXECFN, execfn),
    ]
    .into_iter()
    .chain(vdso)
    .chain([(AT_NULL, 0)]);
    let mut words: Vec<u64> = vec![inputs.args.len() as u64];
    let nargs = inputs.args.len();
    words.extend(offsets[..nargs].iter().map(|&o| addr_of(o)));
    words.push(0);
    words.extend(offsets[nargs..].iter().map(|&o| addr_of(o)));
    words.push(0);
    for (k, v) in auxv {
        words.push(k);
        words.push(v);
    }
    let block = words.len() as u64 * 8;
    let sp = strings_start
        .checked_sub(block)
        .ok_or(LoadError::StackOverflow)?
        & !15;
    if sp < top.saturating_sub(STACK_SIZE) {
        return Err(LoadError::StackOverflow);
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    mem.write(sp, &bytes)
        .map_err(|_| LoadError::StackOverflow)?;
    mem.write(strings_start, &strings)
        .map_err(|_| LoadError::StackOverflow)?;
    Ok(sp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_header(class: u8, machine: u16, etype: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = 1; // little-endian
        h[6] = 1;
        h[16..18].copy_from_slice(&etype.to_le_bytes());
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        h
    }

    #[test]
    fn refuses_what_is_not_a_static_x86_64_executable() {
        let mem = GuestMemory::anonymous(16 << 20).unwrap();
        assert!(matches!(
            load_elf(b"#!/bin/sh\n", &mem),
            Err(LoadError::NotElf)
        ));
        assert!(matches!(
            load_elf(&elf_header(1, 3, 2), &mem),
            Err(LoadError::Elf32)
        ));
        assert!(matches!(
            load_elf(&elf_header(2, 183, 2), &mem),
            Err(LoadError::WrongMachine(183))
        ));
        assert!(matches!(
            load_elf(&elf_header(2, EM_X86_64, 1), &mem),
            Err(LoadError::NotExecutable(1))
        ));
    }

    #[test]
    fn read_only_segments_lose_the_pages_writable_ones_share() {
        let p = PAGE_SIZE;
        let b = 0x40_0000;
        // Text in pages 0..3, read-only data in 3..5, data sharing page 4 and on to 7.
        let ro = vec![(b, b + 3 * p, true), (b + 3 * p, b + 5 * p, false)];
        let rw = [(b + 4 * p, b + 7 * p)];
        assert_eq!(
            less_pages_of(ro.clone(), &rw),
            vec![(b, b + 3 * p, true), (b + 3 * p, b + 4 * p, false)]
        );
        // A writable segment inside a read-only one splits it; one covering it removes it.
        let inside = [(b + p, b + 2 * p)];
        assert_eq!(
            less_pages_of(vec![ro[0]], &inside),
            vec![(b, b + p, true), (b + 2 * p, b + 3 * p, true)]
        );
        assert_eq!(less_pages_of(vec![ro[0]], &[(0, 1 << 30)]), vec![]);
        assert_eq!(less_pages_of(ro.clone(), &[]), ro);
    }

    #[test]
    fn stack_holds_argc_argv_envp_and_auxv() {
        let mem = GuestMemory::anonymous(16 << 20).unwrap();
        let program = LoadedProgram {
            entry: 0x40_1000,
            phdr: 0x40_0040,
            phent: 56,
            phnum: 9,
            end: 0x50_0000,
            read_only: Vec::new(),
            writable_exec: Vec::new(),
            interp: None,
            base: 0,
        };
        let args = vec!["fn".to_string(), "-v".to_string()];
        let env = vec!["A=1".to_string()];
        let inputs = StackInputs {
            args: &args,
            env: &env,
            hwcap: 0xbfeb_fbff,
            random: [9; 16],
            interp_base: 0,
            execfn: None,
            vdso: 0xe000,
        };
        let top = 16 << 20;
        let sp = build_stack(&mem, top, &program, &inputs).unwrap();
        assert_eq!(sp % 16, 0);
        let word = |i: u64| mem.read_obj::<u64>(sp + 8 * i).unwrap();
        assert_eq!(word(0), 2);
        assert_eq!(mem.read_user_cstr(word(1), 64).unwrap(), b"fn");
        assert_eq!(mem.read_user_cstr(word(2), 64).unwrap(), b"-v");
        assert_eq!(word(3), 0);
        assert_eq!(mem.read_user_cstr(word(4), 64).unwrap(), b"A=1");
        assert_eq!(word(5), 0);
        let mut aux = std::collections::HashMap::new();
        let mut i = 6;
        while word(i) != AT_NULL {
            aux.insert(word(i), word(i + 1));
            i += 2;
        }
        assert_eq!(aux[&AT_ENTRY], 0x40_1000);
        assert_eq!(aux[&AT_PHNUM], 9);
        assert_eq!(aux[&AT_PAGESZ], 4096);
        assert_eq!(aux[&AT_SYSINFO_EHDR], 0xe000);
        let mut random = [0u8; 16];
        mem.read(aux[&AT_RANDOM], &mut random).unwrap();
        assert_eq!(random, [9; 16]);
        assert_eq!(
            mem.read_user_cstr(aux[&AT_PLATFORM], 16).unwrap(),
            b"x86_64"
        );
        assert!(aux[&AT_RANDOM] + 16 <= top);
    }
}

#[cfg(test)]
mod proptests {
    //! Property tests of the loader, which reads an untrusted executable: arbitrary
    //! bytes and damaged copies of small static executables built here are refused or
    //! loaded inside guest memory, never a panic, and parsing them never allocates much
    //! more than the file's size. Valid executables load exactly.

    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestRunner};

    /// Records the heap use of the test thread that asks for it, so that a parser
    /// trusting a count in its input (and allocating for it) is caught even when the
    /// system would grant the memory. It is this test binary's global allocator (a
    /// binary has one); other threads and tests only pass through it.
    mod probe {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static ON: Cell<bool> = const { Cell::new(false) };
            static LIVE: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        fn note(delta: isize) {
            let _ = ON.try_with(|on| {
                if on.get() {
                    let _ = LIVE.try_with(|live| {
                        live.set(live.get() + delta);
                        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
                    });
                }
            });
        }

        struct Probe;

        // SAFETY: every call goes to the system allocator unchanged; the probe only
        // counts sizes in thread-locals that need no allocation.
        unsafe impl GlobalAlloc for Probe {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size() as isize);
                // SAFETY: the caller's contract, passed on.
                unsafe { System.alloc(layout) }
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                note(layout.size() as isize);
                // SAFETY: the caller's contract, passed on.
                unsafe { System.alloc_zeroed(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                note(-(layout.size() as isize));
                // SAFETY: the caller's contract, passed on.
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                note(new_size as isize - layout.size() as isize);
                // SAFETY: the caller's contract, passed on.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static PROBE: Probe = Probe;

        /// Runs `f` and returns its result with the most heap bytes it held at once.
        pub fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
            LIVE.set(0);
            PEAK.set(0);
            ON.set(true);
            let r = f();
            ON.set(false);
            (r, PEAK.get().max(0) as usize)
        }
    }

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// Guest memory of the smallest size: programs fit in 2 MiB..8 MiB.
    const MEM: u64 = 16 << 20;
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const SHDR: usize = 64;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const INTERP: &[u8] = b"/lib/ld-musl-x86_64.so.1\0";
    const PT_GNU_STACK: u32 = 0x6474_e551;

    /// What a test executable holds.
    #[derive(Debug, Clone)]
    struct Program {
        /// A static PIE (ET_DYN, loaded at `PIE_LOAD_BASE`) or ET_EXEC at 4 MiB.
        pie: bool,
        /// Each segment: its file bytes, the pages of .bss after them, and the free
        /// pages before it.
        segments: Vec<(Vec<u8>, u8, u8)>,
        /// Where in the first segment's bytes the entry point is.
        entry: Index,
        /// With a PT_PHDR header.
        phdr: bool,
        /// With a dynamic section and relocations (as a static PIE has), inside the
        /// last segment.
        dynamic: bool,
        /// With section headers, a symbol table and string tables.
        sections: bool,
        /// With a PT_INTERP header: a dynamically linked executable, refused.
        interp: bool,
    }

    fn program() -> impl Strategy<Value = Program> {
        (
            any::<bool>(),
            prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 1..600), 0..3u8, 0..3u8),
                1..4,
            ),
            any::<Index>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.2),
        )
            .prop_map(
                |(pie, segments, entry, phdr, dynamic, sections, interp)| Program {
                    pie,
                    segments,
                    entry,
                    phdr,
                    dynamic,
                    sections,
                    interp,
                },
            )
    }

    /// A built executable: its bytes, where each header field is (offset, width), and
    /// what loading it must give.
    struct Built {
        image: Vec<u8>,
        fields: Vec<(usize, usize)>,
        /// (guest address, file offset, file size, memory size) of each PT_LOAD.
        loads: Vec<(u64, usize, usize, u64)>,
        expected: LoadedProgram,
    }

    fn put(image: &mut [u8], fields: &mut Vec<(usize, usize)>, at: usize, width: usize, v: u64) {
        image[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
        fields.push((at, width));
    }

    fn build(p: &Program) -> Built {
        let base = if p.pie { PIE_LOAD_BASE } else { 0 };
        let first_vaddr = if p.pie { 0 } else { 0x40_0000 };
        let phnum = usize::from(p.phdr)
            + p.segments.len()
            + usize::from(p.dynamic)
            + usize::from(p.interp)
            + 1;
        let headers = EHDR + PHDR * phnum;
        // Dynamic entries and two relocations, appended to the last segment.
        let dyn_len = 5 * 16 + 2 * 24;

        // Place the segments: the first at file offset 0 (with the headers), the others
        // 16-byte aligned, each at a guest address with the same page offset.
        let mut image = vec![0u8; headers];
        let mut loads = Vec::new();
        let mut next_page = first_vaddr;
        for (i, (data, bss, gap)) in p.segments.iter().enumerate() {
            let offset = if i == 0 {
                0
            } else {
                let offset = image.len().next_multiple_of(16);
                image.resize(offset, 0);
                offset
            };
            image.extend_from_slice(data);
            if p.dynamic && i == p.segments.len() - 1 {
                image.resize(image.len().next_multiple_of(8) + dyn_len, 0);
            }
            let filesz = image.len() - offset;
            let vaddr = next_page + u64::from(*gap) * PAGE_SIZE + (offset as u64 % PAGE_SIZE);
            let memsz = filesz as u64 + u64::from(*bss) * PAGE_SIZE;
            next_page = page_align_up(vaddr + memsz).unwrap();
            loads.push((vaddr, offset, filesz, memsz));
        }
        // Guest address of the first segment, which holds the headers.
        let v0 = loads[0].0;
        let mut fields = Vec::new();
        let f = &mut fields;

        // Dynamic section: DT_FLAGS_1 = DF_1_PIE, DT_RELA, DT_RELASZ, DT_RELAENT, DT_NULL,
        // then two R_X86_64_RELATIVE relocations of words in the first segment.
        let mut dynamic = None;
        if p.dynamic {
            let &(vaddr, offset, filesz, _) = loads.last().unwrap();
            let at = offset + filesz - dyn_len;
            let dyn_vaddr = vaddr + (at - offset) as u64;
            let rela_vaddr = dyn_vaddr + 5 * 16;
            let entries = [
                (0x6fff_fffb, 0x0800_0000),
                (7, rela_vaddr),
                (8, 2 * 24),
                (9, 24),
                (0, 0),
            ];
            for (k, (tag, val)) in entries.into_iter().enumerate() {
                put(&mut image, f, at + 16 * k, 8, tag);
                put(&mut image, f, at + 16 * k + 8, 8, val);
            }
            for k in 0..2 {
                let r = at + 5 * 16 + 24 * k;
                put(&mut image, f, r, 8, v0 + 8 * k as u64);
                put(&mut image, f, r + 8, 8, 8);
                put(&mut image, f, r + 16, 8, 0x1000);
            }
            dynamic = Some((at, dyn_vaddr));
        }

        let interp_at = image.len();
        if p.interp {
            image.extend_from_slice(INTERP);
        }

        // Sections: null, .text, .shstrtab, .symtab (two symbols), .strtab.
        let mut shoff = 0;
        if p.sections {
            let shstrtab = b"\0.text\0.shstrtab\0.symtab\0.strtab\0";
            let strtab = b"\0_start\0main\0";
            let shstr_at = image.len();
            image.extend_from_slice(shstrtab);
            let str_at = image.len();
            image.extend_from_slice(strtab);
            image.resize(image.len().next_multiple_of(8), 0);
            let sym_at = image.len();
            image.resize(sym_at + 3 * 24, 0);
            for (k, name) in [(1usize, 1u64), (2, 8)] {
                let s = sym_at + 24 * k;
                put(&mut image, f, s, 4, name);
                put(&mut image, f, s + 4, 1, 0x12);
                put(&mut image, f, s + 6, 2, 1);
                put(&mut image, f, s + 8, 8, v0 + headers as u64);
                put(&mut image, f, s + 16, 8, 16);
            }
            shoff = image.len().next_multiple_of(8);
            image.resize(shoff + 5 * SHDR, 0);
            let (text_vaddr, _, text_size, _) = loads[0];
            // (name, type, addr, offset, size, link, entsize)
            let sections = [
                (0, 0, 0, 0, 0, 0, 0),
                (1, 1, text_vaddr, 0, text_size, 0, 0),
                (7, 3, 0, shstr_at, shstrtab.len(), 0, 0),
                (17, 2, 0, sym_at, 3 * 24, 4, 24),
                (25, 3, 0, str_at, strtab.len(), 0, 0),
            ];
            for (k, (name, ty, addr, offset, size, link, entsize)) in
                sections.into_iter().enumerate()
            {
                let s = shoff + SHDR * k;
                put(&mut image, f, s, 4, name);
                put(&mut image, f, s + 4, 4, ty);
                put(&mut image, f, s + 16, 8, addr);
                put(&mut image, f, s + 24, 8, offset as u64);
                put(&mut image, f, s + 32, 8, size as u64);
                put(&mut image, f, s + 40, 4, link);
                put(&mut image, f, s + 56, 8, entsize);
            }
        }

        // The ELF header.
        let entry = v0 + (headers + p.entry.index(p.segments[0].0.len())) as u64;
        image[..4].copy_from_slice(b"\x7fELF");
        image[4..7].copy_from_slice(&[2, 1, 1]);
        put(
            &mut image,
            f,
            16,
            2,
            u64::from(if p.pie { ET_DYN } else { ET_EXEC }),
        );
        put(&mut image, f, 18, 2, u64::from(EM_X86_64));
        put(&mut image, f, 20, 4, 1);
        put(&mut image, f, 24, 8, entry);
        put(&mut image, f, 32, 8, EHDR as u64);
        put(&mut image, f, 40, 8, shoff as u64);
        put(&mut image, f, 52, 2, EHDR as u64);
        put(&mut image, f, 54, 2, PHDR as u64);
        put(&mut image, f, 56, 2, phnum as u64);
        put(&mut image, f, 58, 2, SHDR as u64);
        put(&mut image, f, 60, 2, if p.sections { 5 } else { 0 });
        put(&mut image, f, 62, 2, if p.sections { 2 } else { 0 });

        // The program headers: PT_PHDR, PT_INTERP, the loads, PT_DYNAMIC, PT_GNU_STACK.
        let mut headers_list = Vec::new();
        let phdr_vaddr = v0 + EHDR as u64;
        if p.phdr {
            let size = (PHDR * phnum) as u64;
            headers_list.push((PT_PHDR, EHDR as u64, phdr_vaddr, size, size));
        }
        if p.interp {
            let len = INTERP.len() as u64;
            headers_list.push((PT_INTERP, interp_at as u64, 0, len, len));
        }
        for &(vaddr, offset, filesz, memsz) in &loads {
            headers_list.push((PT_LOAD, offset as u64, vaddr, filesz as u64, memsz));
        }
        if let Some((at, vaddr)) = dynamic {
            headers_list.push((PT_DYNAMIC, at as u64, vaddr, 5 * 16, 5 * 16));
        }
        headers_list.push((PT_GNU_STACK, 0, 0, 0, 0));
        for (k, (ty, offset, vaddr, filesz, memsz)) in headers_list.into_iter().enumerate() {
            let h = EHDR + PHDR * k;
            put(&mut image, f, h, 4, u64::from(ty));
            put(&mut image, f, h + 4, 4, 5);
            put(&mut image, f, h + 8, 8, offset);
            put(&mut image, f, h + 16, 8, vaddr);
            put(&mut image, f, h + 32, 8, filesz);
            put(&mut image, f, h + 40, 8, memsz);
            put(&mut image, f, h + 48, 8, PAGE_SIZE);
        }

        let end = loads.iter().map(|l| base + l.0 + l.3).max().unwrap();
        let loads_pages = loads
            .iter()
            .map(|l| {
                let start = base + l.0;
                (
                    page_align_down(start),
                    page_align_up(start + l.3).unwrap(),
                    true,
                )
            })
            .filter(|(s, e, _)| s < e)
            .collect();
        let loads = loads
            .into_iter()
            .map(|(vaddr, offset, filesz, memsz)| (base + vaddr, offset, filesz, memsz))
            .collect();
        Built {
            image,
            fields,
            loads,
            expected: LoadedProgram {
                entry: base + entry,
                phdr: base + phdr_vaddr,
                phent: PHDR as u64,
                phnum: phnum as u64,
                end: page_align_up(end).unwrap(),
                // Every segment is PF_R | PF_X.
                read_only: loads_pages,
                writable_exec: Vec::new(),
                interp: None,
                base,
            },
        }
    }

    /// Loads `image`, checking that parsing it held at most a few times its size on
    /// the heap, and that whatever was accepted lies in the usable guest memory.
    fn load_bounded(
        image: &[u8],
        mem: &GuestMemory,
    ) -> Result<Result<LoadedProgram, LoadError>, TestCaseError> {
        let (r, peak) = probe::peak_heap(|| load_elf(image, mem));
        prop_assert!(
            peak <= 16 * image.len() + (64 << 10),
            "{} heap bytes to load {} bytes ({:?})",
            peak,
            image.len(),
            r
        );
        if let Ok(p) = &r {
            prop_assert!(p.end.is_multiple_of(PAGE_SIZE));
            prop_assert!(
                SYSTEM_AREA_END < p.end && p.end <= page_align_up(load_limit(MEM)).unwrap()
            );
            prop_assert_ne!(p.entry, 0);
        }
        Ok(r)
    }

    #[test]
    fn built_executables_load_exactly() {
        TestRunner::new(config(256))
            .run(&program(), |p| {
                let b = build(&p);
                let mem = GuestMemory::anonymous(MEM).unwrap();
                let loaded = load_bounded(&b.image, &mem)?;
                let mut expected = b.expected.clone();
                if p.interp {
                    // Loaded all the same, the loader's path kept for the VMM to load.
                    let interp = std::str::from_utf8(&INTERP[..INTERP.len() - 1]).unwrap();
                    expected.interp = Some(interp.to_string());
                }
                prop_assert_eq!(loaded.as_ref().ok(), Some(&expected), "{:?}", loaded);
                for &(addr, offset, filesz, memsz) in &b.loads {
                    let mut got = vec![0u8; memsz as usize];
                    mem.read(addr, &mut got).unwrap();
                    prop_assert!(got[..filesz] == b.image[offset..offset + filesz]);
                    prop_assert!(got[filesz..].iter().all(|&x| x == 0), ".bss not zero");
                }
                Ok(())
            })
            .unwrap();
    }

    /// Numbers on the parsers' boundaries, and any number.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(vec![
                0,
                1,
                2,
                3,
                7,
                24,
                56,
                64,
                0xff,
                0xffff,
                0x1_0000,
                PAGE_SIZE,
                SYSTEM_AREA_END,
                0x40_0000,
                MEM,
                1 << 31,
                1 << 32,
                u64::from(u32::MAX),
                1 << 60,
                u64::MAX / 56,
                u64::MAX - PAGE_SIZE + 1,
                u64::MAX,
            ]),
            0..0x2000u64,
            any::<u64>(),
        ]
    }

    /// One change to an executable.
    #[derive(Debug, Clone)]
    enum Edit {
        /// XOR a byte with a non-zero mask.
        Flip(Index, u8),
        /// Cut the file.
        Truncate(Index),
        /// Append bytes.
        Extend(Vec<u8>),
        /// Overwrite a header field (ELF, program, section header, dynamic entry,
        /// relocation, symbol) with a number, cut to the field's width.
        Field(Index, u64),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            2 => (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
            1 => any::<Index>().prop_map(Edit::Truncate),
            1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Edit::Extend),
            6 => (any::<Index>(), number()).prop_map(|(i, v)| Edit::Field(i, v)),
        ]
    }

    fn apply(b: &Built, image: &mut Vec<u8>, edit: &Edit) {
        match edit {
            Edit::Flip(i, mask) if !image.is_empty() => {
                let at = i.index(image.len());
                image[at] ^= mask;
            }
            Edit::Truncate(i) => image.truncate(i.index(image.len() + 1)),
            Edit::Extend(bytes) => image.extend_from_slice(bytes),
            Edit::Field(i, v) => {
                let (at, width) = b.fields[i.index(b.fields.len())];
                if at + width <= image.len() {
                    image[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn damaged_executables_are_refused_or_loaded_inside_memory() {
        let mem = GuestMemory::anonymous(MEM).unwrap();
        let cases = (program(), prop::collection::vec(edit(), 1..5));
        TestRunner::new(config(16384))
            .run(&cases, |(p, edits)| {
                let b = build(&p);
                let mut image = b.image.clone();
                for e in &edits {
                    apply(&b, &mut image, e);
                }
                let _ = load_bounded(&image, &mem)?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn arbitrary_bytes_are_refused() {
        // After a valid ELF64 x86-64 identification and header start, or from scratch.
        let mem = GuestMemory::anonymous(MEM).unwrap();
        let mut start = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
        start.extend_from_slice(&ET_EXEC.to_le_bytes());
        start.extend_from_slice(&EM_X86_64.to_le_bytes());
        let cases = (any::<bool>(), prop::collection::vec(any::<u8>(), 0..1024));
        TestRunner::new(config(8192))
            .run(&cases, |(with_start, mut image)| {
                if with_start {
                    let n = start.len().min(image.len());
                    image[..n].copy_from_slice(&start[..n]);
                }
                let _ = load_bounded(&image, &mem)?;
                Ok(())
            })
            .unwrap();
    }
}
