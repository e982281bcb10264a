//! The guest's identity-mapped page tables.

use super::layout::*;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const LARGE: u64 = 1 << 7;

/// Pages of the system area the guest's address space maps, with whether they are
/// writable. Everything else below `SYSTEM_AREA_END` (page 0 included) is unmapped.
/// The GDT, TSS and IDT are read through linear addresses by the CPU, the stub page is
/// executed, and the exception stack receives exception frames.
const SYSTEM_PAGES: [(u64, bool); 5] = [
    (GDT_ADDR, false),
    (IDT_ADDR, false),
    (STUB_PAGE, false),
    (EXCEPTION_STACK, true),
    (EXCEPTION_STACK + PAGE_SIZE, true),
];

/// Returns the page-table entries to write, as (guest address, value) pairs, for guest
/// memory of `mem_size` bytes (a multiple of 2 MiB between `MIN_MEM_SIZE` and
/// `MAX_MEM_SIZE`): 4 KiB pages for the system area, 2 MiB user pages above it.
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
        // The page directories are contiguous, so entry n of the whole set is at PD_ADDR + 8n.
        let index = addr / LARGE_PAGE_SIZE;
        entries.push((
            PD_ADDR + index * 8,
            addr | PRESENT | WRITABLE | USER | LARGE,
        ));
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
        Some(((pte & !0xfff) + (va & 0xfff), pte & WRITABLE != 0))
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
