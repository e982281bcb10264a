//! The guest's identity-mapped page tables.

use serde::{Deserialize, Serialize};

use super::fault::Access;
use super::layout::*;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const LARGE: u64 = 1 << 7;
/// Accessed and dirty, preset in the entries the VMM writes for user memory so that
/// neither the CPU nor a shadowing KVM has to write them back into the tables on the
/// first access to each page.
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
/// No-execute (with `EFER.NXE`).
const NO_EXECUTE: u64 = 1 << 63;

/// What the program may do with a page of user memory, as its page-table entry
/// enforces it (with `EFER.NXE` set, so a page without execute permission has the
/// no-execute bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protection {
    /// Not present: every access faults (`PROT_NONE`, the stack guard gap).
    None,
    /// Present, not writable, not executable (`PROT_READ`).
    Read,
    /// Present, not writable, executable (`PROT_EXEC`, with or without `PROT_READ`: x86
    /// cannot map execute-only).
    ReadExec,
    /// Present, writable, not executable (`PROT_WRITE` with or without `PROT_READ`;
    /// x86 cannot map write-only).
    ReadWrite,
    /// Present, writable and executable (`PROT_WRITE | PROT_EXEC`).
    ReadWriteExec,
}

impl Protection {
    /// The protection that enforces the `prot` of `mmap`/`mprotect` (`PROT_*` bits).
    pub fn from_prot(prot: u64) -> Self {
        const READ: u64 = libc::PROT_READ as u64;
        const WRITE: u64 = libc::PROT_WRITE as u64;
        const EXEC: u64 = libc::PROT_EXEC as u64;
        match (prot & WRITE != 0, prot & EXEC != 0, prot & READ != 0) {
            (true, true, _) => Self::ReadWriteExec,
            (true, false, _) => Self::ReadWrite,
            (false, true, _) => Self::ReadExec,
            (false, false, true) => Self::Read,
            (false, false, false) => Self::None,
        }
    }

    /// (readable, writable, executable).
    fn rights(self) -> (bool, bool, bool) {
        match self {
            Self::None => (false, false, false),
            Self::Read => (true, false, false),
            Self::ReadExec => (true, false, true),
            Self::ReadWrite => (true, true, false),
            Self::ReadWriteExec => (true, true, true),
        }
    }

    fn from_rights(read: bool, write: bool, exec: bool) -> Self {
        match (read || write || exec, write, exec) {
            (false, _, _) => Self::None,
            (true, false, false) => Self::Read,
            (true, false, true) => Self::ReadExec,
            (true, true, false) => Self::ReadWrite,
            (true, true, true) => Self::ReadWriteExec,
        }
    }

    /// Whether an access of this kind (read, write or instruction fetch) is allowed.
    pub fn allows(self, access: Access) -> bool {
        let (read, write, exec) = self.rights();
        match access {
            Access::Read => read,
            Access::Write => write,
            Access::Execute => exec,
        }
    }

    /// Whether going from `self` to `to` takes a permission away.
    pub fn loses_to(self, to: Self) -> bool {
        let (r, w, x) = self.rights();
        let (tr, tw, tx) = to.rights();
        (r && !tr) || (w && !tw) || (x && !tx)
    }

    /// Every permission either has.
    pub fn union(self, other: Self) -> Self {
        let (r, w, x) = self.rights();
        let (or, ow, ox) = other.rights();
        Self::from_rights(r || or, w || ow, x || ox)
    }

    fn bits(self) -> u64 {
        let (read, write, exec) = self.rights();
        if !read {
            return 0;
        }
        let mut bits = PRESENT | USER | ACCESSED | DIRTY;
        if write {
            bits |= WRITABLE;
        }
        if !exec {
            bits |= NO_EXECUTE;
        }
        bits
    }
}

/// The address of the page-directory entry that maps the 2 MiB range at `region`.
pub fn pde_addr(region: u64) -> u64 {
    // The page directories are contiguous, so entry n of the whole set is at PD_ADDR + 8n.
    PD_ADDR + region / LARGE_PAGE_SIZE * 8
}

/// A page-directory entry mapping the 2 MiB range at `region` as one large page.
pub fn large_pde(region: u64, protection: Protection) -> u64 {
    match protection {
        Protection::None => 0,
        p => region | p.bits() | LARGE,
    }
}

/// A page-directory entry pointing to the 4 KiB page table at `table`. The table's
/// entries decide each page's protection.
pub fn table_pde(table: u64) -> u64 {
    table | PRESENT | WRITABLE | USER | ACCESSED
}

/// The address of the entry for `page` in the page table at `table`.
pub fn pte_addr(table: u64, page: u64) -> u64 {
    table + (page % LARGE_PAGE_SIZE) / PAGE_SIZE * 8
}

/// A page-table entry mapping the 4 KiB page at `page`.
pub fn pte(page: u64, protection: Protection) -> u64 {
    match protection {
        Protection::None => 0,
        p => page | p.bits(),
    }
}

/// Pages of the system area the guest's address space maps, with whether they are
/// writable. Everything else below `SYSTEM_AREA_END` (page 0 included) is unmapped.
/// The GDT, TSS and IDT are read through linear addresses by the CPU, the stub page is
/// executed, the exception stack receives exception frames, and the guest's vDSO reads
/// its data page and runs its code.
const SYSTEM_PAGES: [(u64, bool); 8] = [
    (GDT_ADDR, false),
    (IDT_ADDR, false),
    (STUB_PAGE, false),
    (EXCEPTION_STACK, true),
    (EXCEPTION_STACK + PAGE_SIZE, true),
    (VVAR_ADDR, false),
    (VDSO_ADDR, false),
    (VDSO_ADDR + PAGE_SIZE, false),
];

/// Returns the page-table entries to write, as (guest address, value) pairs, for guest
/// memory of `mem_size` bytes (a multiple of 2 MiB between `MIN_MEM_SIZE` and
/// `MAX_MEM_SIZE`): 4 KiB pages for the system area, 2 MiB read-write user pages above
/// it. The address space (`guest_os::mm`) then changes the entries of the ranges whose
/// protection differs (the stack guard gap from the start) with the functions below.
pub fn page_table_entries(mem_size: u64) -> Vec<(u64, u64)> {
    debug_assert!(mem_size.is_multiple_of(LARGE_PAGE_SIZE) && mem_size <= MAX_MEM_SIZE);
    let mut entries = vec![(PML4_ADDR, PDPT_ADDR | PRESENT | WRITABLE | USER)];
    let gib = mem_size.div_ceil(1 << 30);
    for i in 0..gib {
        entries.push((
            PDPT_ADDR + i * 8,
            (PD_ADDR + i * PAGE_SIZE) | PRESENT | WRITABLE | USER,
        ));
    }
    // The first 2 MiB through a 4 KiB page table; the rest as 2 MiB pages.
    entries.push((PD_ADDR, PT_ADDR | PRESENT | WRITABLE | USER));
    for (page, writable) in SYSTEM_PAGES {
        let rw = if writable { WRITABLE } else { 0 };
        entries.push((PT_ADDR + (page / PAGE_SIZE) * 8, page | PRESENT | USER | rw));
    }
    let mut addr = LARGE_PAGE_SIZE;
    while addr < mem_size {
        entries.push((pde_addr(addr), large_pde(addr, Protection::ReadWrite)));
        addr += LARGE_PAGE_SIZE;
    }
    entries
}

/// Writes the page tables into guest memory through `write_u64(guest_addr, value)`.
/// The tables' pages must be zero beforehand (fresh guest memory is).
pub fn write_page_tables<E>(
    mem_size: u64,
    mut write_u64: impl FnMut(u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    for (addr, value) in page_table_entries(mem_size) {
        write_u64(addr, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Walks the tables like the MMU does: the physical address and whether it is
    /// writable, or `None` when unmapped.
    fn translate(tables: &HashMap<u64, u64>, va: u64) -> Option<(u64, bool)> {
        let get = |a: u64| tables.get(&a).copied().unwrap_or(0);
        let pml4e = get(PML4_ADDR + ((va >> 39) & 511) * 8);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = get((pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = get((pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & PRESENT == 0 {
            return None;
        }
        assert!(pde & USER != 0);
        if pde & LARGE != 0 {
            return Some((
                (pde & !0x1f_ffff & !(1 << 63)) + (va & 0x1f_ffff),
                pde & WRITABLE != 0,
            ));
        }
        let pte = get((pde & !0xfff) + ((va >> 12) & 511) * 8);
        if pte & PRESENT == 0 {
            return None;
        }
        assert!(pte & USER != 0);
        Some((
            (pte & !0xfff & !NO_EXECUTE) + (va & 0xfff),
            pte & WRITABLE != 0,
        ))
    }

    #[test]
    fn identity_maps_memory_and_leaves_page_zero_unmapped() {
        let mem = 256 << 20;
        let tables: HashMap<u64, u64> = page_table_entries(mem).into_iter().collect();
        assert_eq!(translate(&tables, 0), None);
        assert_eq!(translate(&tables, 0xfff), None);
        assert_eq!(
            translate(&tables, PML4_ADDR),
            None,
            "page tables are not mapped"
        );
        assert_eq!(
            translate(&tables, STUB_PAGE + 5),
            Some((STUB_PAGE + 5, false))
        );
        assert_eq!(
            translate(&tables, EXCEPTION_STACK),
            Some((EXCEPTION_STACK, true))
        );
        assert_eq!(translate(&tables, 0x1f_f000), None);
        for va in [LARGE_PAGE_SIZE, 0x40_1234, mem - 1] {
            assert_eq!(translate(&tables, va), Some((va, true)));
        }
        assert_eq!(translate(&tables, mem), None);
    }

    #[test]
    fn a_split_range_maps_each_page_with_its_protection() {
        let mem = 64 << 20;
        let mut tables: HashMap<u64, u64> = page_table_entries(mem).into_iter().collect();
        let region = 0x60_0000;
        let table = PT_POOL_START;
        for i in 0..512 {
            let page = region + i * PAGE_SIZE;
            let protection = match i {
                0 => Protection::None,
                1 | 511 => Protection::Read,
                _ => Protection::ReadWrite,
            };
            tables.insert(pte_addr(table, page), pte(page, protection));
        }
        tables.insert(pde_addr(region), table_pde(table));
        assert_eq!(translate(&tables, region + 8), None, "PROT_NONE");
        assert_eq!(
            translate(&tables, region + 0x1008),
            Some((region + 0x1008, false))
        );
        assert_eq!(
            translate(&tables, region + 0x2008),
            Some((region + 0x2008, true))
        );
        assert_eq!(
            translate(&tables, region + LARGE_PAGE_SIZE - 1),
            Some((region + LARGE_PAGE_SIZE - 1, false))
        );
        // The neighbouring large pages are untouched.
        assert_eq!(translate(&tables, region - 1), Some((region - 1, true)));
        assert_eq!(
            translate(&tables, region + LARGE_PAGE_SIZE),
            Some((region + LARGE_PAGE_SIZE, true))
        );
        // Merged back into one read-only large page, then one not present.
        tables.insert(pde_addr(region), large_pde(region, Protection::Read));
        assert_eq!(translate(&tables, region + 8), Some((region + 8, false)));
        tables.insert(pde_addr(region), large_pde(region, Protection::None));
        assert_eq!(translate(&tables, region + 0x2008), None);
    }

    #[test]
    fn prot_bits_map_to_protections() {
        use libc::{PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE};
        let p = |bits: i32| Protection::from_prot(bits as u64);
        assert_eq!(p(PROT_NONE), Protection::None);
        assert_eq!(p(PROT_READ), Protection::Read);
        assert_eq!(p(PROT_EXEC), Protection::ReadExec);
        assert_eq!(p(PROT_READ | PROT_EXEC), Protection::ReadExec);
        assert_eq!(p(PROT_WRITE), Protection::ReadWrite);
        assert_eq!(
            p(PROT_READ | PROT_WRITE | PROT_EXEC),
            Protection::ReadWriteExec
        );
        assert!(!Protection::None.allows(Access::Read));
        assert!(Protection::Read.allows(Access::Read));
        assert!(!Protection::Read.allows(Access::Write));
        assert!(!Protection::Read.allows(Access::Execute));
        assert!(Protection::ReadExec.allows(Access::Execute));
        assert!(Protection::ReadWrite.allows(Access::Write));
        assert!(!Protection::ReadWrite.allows(Access::Execute));
        assert!(Protection::ReadWrite.loses_to(Protection::ReadExec));
        assert!(!Protection::Read.loses_to(Protection::ReadWriteExec));
        assert_eq!(
            Protection::ReadWrite.union(Protection::ReadExec),
            Protection::ReadWriteExec
        );
        // Only pages without execute permission get the no-execute bit.
        assert_eq!(pte(0x40_0000, Protection::ReadExec) & NO_EXECUTE, 0);
        assert_ne!(pte(0x40_0000, Protection::ReadWrite) & NO_EXECUTE, 0);
    }

    #[test]
    fn maps_up_to_four_gib() {
        let tables: HashMap<u64, u64> = page_table_entries(MAX_MEM_SIZE).into_iter().collect();
        assert_eq!(
            translate(&tables, MAX_MEM_SIZE - 8),
            Some((MAX_MEM_SIZE - 8, true))
        );
        assert_eq!(
            translate(&tables, (3 << 30) + 4096),
            Some(((3 << 30) + 4096, true))
        );
        assert_eq!(translate(&tables, MAX_MEM_SIZE), None);
    }
}
