//! Loads a static x86-64 Linux executable (ET_EXEC or static-pie) into guest memory
//! and builds the initial stack a Linux process starts with (argc, argv, envp, auxv).

use goblin::elf::Elf;
use goblin::elf::header::{EM_X86_64, ET_DYN, ET_EXEC};
use goblin::elf::program_header::{PT_LOAD, PT_PHDR};

use crate::arch::layout::{PAGE_SIZE, PIE_LOAD_BASE, STACK_SIZE, SYSTEM_AREA_END, page_align_up};
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
    /// More than [`MAX_BINARY_SIZE`] bytes.
    #[error("executable is {0} bytes, larger than the {MAX_BINARY_SIZE}-byte limit")]
    TooLarge(u64),
    /// argv, envp and the auxiliary vector do not fit.
    #[error("initial stack does not fit in guest memory")]
    StackOverflow,
}

/// Where the program landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// The highest address program segments may occupy: the stack sits above.
pub fn load_limit(mem_size: u64) -> u64 {
    mem_size.saturating_sub(STACK_SIZE)
}

/// Parses and checks `image`, then copies its loadable segments into `mem`.
pub fn load_elf(image: &[u8], mem: &GuestMemory) -> Result<LoadedProgram, LoadError> {
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
    if let Some(interp) = elf.interpreter {
        return Err(LoadError::Dynamic(interp.to_string()));
    }
    let base = match elf.header.e_type {
        ET_EXEC => 0,
        ET_DYN => PIE_LOAD_BASE,
        other => return Err(LoadError::NotExecutable(other)),
    };
    if elf.entry == 0 {
        return Err(LoadError::NoEntry);
    }

    let usable_end = load_limit(mem.size());
    let mut end = 0u64;
    let mut phdr = None;
    let mut loads = 0;
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
    }
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
    })
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

    let strings_start = top
        .checked_sub(strings.len() as u64 + 16)
        .ok_or(LoadError::StackOverflow)?
        & !15;
    let addr_of = |off: u64| strings_start + off;
    let execfn = inputs
        .args
        .first()
        .map(|_| addr_of(offsets[0]))
        .unwrap_or(0);

    let auxv = [
        (AT_PHDR, program.phdr),
        (AT_PHENT, program.phent),
        (AT_PHNUM, program.phnum),
        (AT_PAGESZ, PAGE_SIZE),
        (AT_BASE, 0),
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
        (AT_NULL, 0),
    ];
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
    fn stack_holds_argc_argv_envp_and_auxv() {
        let mem = GuestMemory::anonymous(16 << 20).unwrap();
        let program = LoadedProgram {
            entry: 0x40_1000,
            phdr: 0x40_0040,
            phent: 56,
            phnum: 9,
            end: 0x50_0000,
        };
        let args = vec!["fn".to_string(), "-v".to_string()];
        let env = vec!["A=1".to_string()];
        let inputs = StackInputs {
            args: &args,
            env: &env,
            hwcap: 0xbfeb_fbff,
            random: [9; 16],
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
