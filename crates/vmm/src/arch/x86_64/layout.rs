//! Where things are in guest memory. Guest virtual addresses equal guest physical
//! addresses (identity mapping), and guest physical address 0 is the start of the host
//! mapping that backs guest memory.

/// Page size used by the guest's page tables and by the VMM's bookkeeping.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a large page (one page-directory entry).
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// Smallest and largest guest memory the VMM builds page tables for.
pub const MIN_MEM_SIZE: u64 = 16 << 20;
/// One PML4 entry with four page directories maps 4 GiB.
pub const MAX_MEM_SIZE: u64 = 4 << 30;

/// The system area: everything the VMM puts in guest memory below this address.
pub const SYSTEM_AREA_END: u64 = LARGE_PAGE_SIZE;

/// The PML4 (CR3).
pub const PML4_ADDR: u64 = 0x1000;
/// The one page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0x2000;
/// Four page directories (one per GiB) at 0x3000..0x7000.
pub const PD_ADDR: u64 = 0x3000;
/// Number of page directories.
pub const PD_COUNT: u64 = 4;
/// The 4 KiB page table for the first 2 MiB (the system area).
pub const PT_ADDR: u64 = 0x7000;
/// GDT (with the 64-bit TSS descriptor).
pub const GDT_ADDR: u64 = 0x8000;
/// The TSS (RSP0 = the exception stack, and the I/O permission bitmap).
pub const TSS_ADDR: u64 = 0x8800;
/// IDT: 32 exception gates of 16 bytes.
pub const IDT_ADDR: u64 = 0x9000;
/// Syscall entry (LSTAR) at the start of this page, exception stubs after it.
pub const STUB_PAGE: u64 = 0xa000;
/// The syscall stub: `out SYSCALL_PORT, al; ud2`.
pub const SYSCALL_STUB: u64 = STUB_PAGE;
/// The 32 exception stubs, one per vector.
pub const EXCEPTION_STUBS: u64 = STUB_PAGE + 0x100;
/// Bytes per exception stub: `mov al, VECTOR; out EXCEPTION_PORT, al; jmp $; nop; nop`.
pub const EXCEPTION_STUB_SIZE: u64 = 8;

/// Address of the stub of exception `vector`.
pub const fn exception_stub(vector: u8) -> u64 {
    EXCEPTION_STUBS + vector as u64 * EXCEPTION_STUB_SIZE
}

/// Exception stack (TSS.RSP0): two pages, top at `EXCEPTION_STACK_TOP`.
pub const EXCEPTION_STACK: u64 = 0xb000;
/// The top of the exception stack (TSS.RSP0).
pub const EXCEPTION_STACK_TOP: u64 = 0xd000;

/// The vDSO's data page (`[vvar]`): the clock parameters the VMM keeps for the
/// guest's vDSO (`crate::vdso`), read-only to the guest.
pub const VVAR_ADDR: u64 = 0xd000;
/// The vDSO (`[vdso]`): the ELF image whose address the auxiliary vector gives as
/// `AT_SYSINFO_EHDR`, read-only and executable, at most `VDSO_MAX_SIZE` bytes.
pub const VDSO_ADDR: u64 = 0xe000;
/// Room for the vDSO image.
pub const VDSO_MAX_SIZE: u64 = 2 * PAGE_SIZE;

/// I/O port the syscall stub writes to: the exit that means "system call".
pub const SYSCALL_PORT: u16 = 0x10;
/// I/O port the exception stubs write to; the byte written is the vector.
pub const EXCEPTION_PORT: u16 = 0x11;

/// Where a position-independent executable is loaded.
pub const PIE_LOAD_BASE: u64 = 0x40_0000;
/// Stack reserved at the top of guest memory (not handed out by mmap): its maximum
/// size, as RLIMIT_STACK's default on Linux.
pub const STACK_SIZE: u64 = 8 << 20;
/// The guard gap below the stack, as Linux's default `stack_guard_gap` (256 pages): never
/// mapped, so that a stack overflow faults instead of running into other memory.
pub const STACK_GUARD_GAP: u64 = 256 * PAGE_SIZE;
/// Page tables for 2 MiB ranges of user memory that need 4 KiB pages are taken from
/// this pool in the system area, one 4 KiB page each.
pub const PT_POOL_START: u64 = 0x1_0000;
/// End of the page-table pool.
pub const PT_POOL_END: u64 = SYSTEM_AREA_END;

// The system structures fit in the system area without overlapping, and page 0 stays
// unmapped.
const _: () = {
    assert!(PML4_ADDR >= PAGE_SIZE);
    assert!(PDPT_ADDR >= PML4_ADDR + PAGE_SIZE);
    assert!(PD_ADDR >= PDPT_ADDR + PAGE_SIZE);
    assert!(PT_ADDR >= PD_ADDR + PD_COUNT * PAGE_SIZE);
    assert!(GDT_ADDR >= PT_ADDR + PAGE_SIZE);
    assert!(TSS_ADDR >= GDT_ADDR + 7 * 8);
    assert!(IDT_ADDR >= TSS_ADDR + super::tables::TSS_SIZE);
    assert!(STUB_PAGE >= IDT_ADDR + 32 * 16);
    assert!(EXCEPTION_STACK >= STUB_PAGE + PAGE_SIZE);
    assert!(EXCEPTION_STACK_TOP <= SYSTEM_AREA_END);
    assert!(VVAR_ADDR >= EXCEPTION_STACK_TOP);
    assert!(VDSO_ADDR >= VVAR_ADDR + PAGE_SIZE);
    assert!(PT_POOL_START >= VDSO_ADDR + VDSO_MAX_SIZE);
    assert!(PT_POOL_START >= EXCEPTION_STACK_TOP && PT_POOL_START.is_multiple_of(PAGE_SIZE));
    assert!(MIN_MEM_SIZE >= SYSTEM_AREA_END + STACK_GUARD_GAP + STACK_SIZE);
    assert!(MAX_MEM_SIZE == PD_COUNT << 30);
};

/// Rounds `v` up to a page boundary; `None` on overflow.
pub fn page_align_up(v: u64) -> Option<u64> {
    Some(v.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
}

/// Rounds `v` down to a page boundary.
pub fn page_align_down(v: u64) -> u64 {
    v & !(PAGE_SIZE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_alignment() {
        assert_eq!(page_align_up(0), Some(0));
        assert_eq!(page_align_up(1), Some(4096));
        assert_eq!(page_align_up(4096), Some(4096));
        assert_eq!(page_align_up(u64::MAX), None);
        assert_eq!(page_align_down(8191), 4096);
    }
}
