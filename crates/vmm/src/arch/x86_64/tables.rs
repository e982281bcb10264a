//! Descriptor tables (GDT, TSS, IDT) and the entry stubs the VMM writes into the
//! guest's system area.
//!
//! A `syscall` from the program lands at LSTAR on a stub whose `out` exits to the VMM;
//! the VMM emulates the call and returns to user mode itself by rewriting RIP, RFLAGS,
//! CS and SS (a `sysretq` in the stub triple-faults on some KVM implementations). A CPU
//! exception goes through the IDT to a per-vector stub whose `out` names the vector, so
//! a crashing program is reported with its exception, address and RIP rather than as a
//! bare triple fault.

use super::layout::*;

/// GDT: null, kernel code 0x08, kernel data 0x10, user data 0x18, user code 0x20,
/// 64-bit TSS 0x28 (two slots). The layout makes STAR-style selectors work. Accessed
/// bits are preset so the CPU never writes to the (read-only) GDT page.
pub const GDT_ENTRIES: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff, // kernel code: L, P, DPL0, execute/read, accessed
    0x00cf_9300_0000_ffff, // kernel data
    0x00cf_f300_0000_ffff, // user data: DPL3
    0x00af_fb00_0000_ffff, // user code: L, DPL3
];
pub const KERNEL_CS: u16 = 0x08;
pub const USER_DS_SELECTOR: u16 = 0x18 | 3;
pub const USER_CS_SELECTOR: u16 = 0x20 | 3;
pub const TSS_SELECTOR: u16 = 0x28;
/// Size of a 64-bit TSS without its I/O permission bitmap.
const TSS_BASE_SIZE: u64 = 0x68;
/// I/O permission bitmap after the TSS: ports 0x00-0x17 (a clear bit allows a port),
/// then the terminating 0xff byte. Only the stubs' ports are allowed.
const IO_BITMAP: [u8; 4] = [0xff, 0xff, !0x3, 0xff];
/// Size of the TSS with its I/O permission bitmap.
pub const TSS_SIZE: u64 = TSS_BASE_SIZE + IO_BITMAP.len() as u64;
const _: () = assert!(SYSCALL_PORT == 0x10 && EXCEPTION_PORT == 0x11);
/// Number of exception vectors with a gate.
const VECTORS: u64 = 32;

/// The bytes of the system area other than the page tables, as (guest address, bytes).
pub fn system_tables() -> Vec<(u64, Vec<u8>)> {
    let mut gdt: Vec<u8> = GDT_ENTRIES.iter().flat_map(|e| e.to_le_bytes()).collect();
    let (tss_lo, tss_hi) = tss_descriptor(TSS_ADDR, TSS_SIZE - 1);
    gdt.extend(tss_lo.to_le_bytes());
    gdt.extend(tss_hi.to_le_bytes());

    let mut tss = vec![0u8; TSS_SIZE as usize];
    tss[4..12].copy_from_slice(&EXCEPTION_STACK_TOP.to_le_bytes()); // RSP0
    tss[102..104].copy_from_slice(&(TSS_BASE_SIZE as u16).to_le_bytes()); // I/O bitmap offset
    tss[TSS_BASE_SIZE as usize..].copy_from_slice(&IO_BITMAP);

    let mut idt = Vec::with_capacity((VECTORS * 16) as usize);
    for vector in 0..VECTORS {
        let (lo, hi) = interrupt_gate(exception_stub(vector as u8));
        idt.extend(lo.to_le_bytes());
        idt.extend(hi.to_le_bytes());
    }

    // out SYSCALL_PORT, al; ud2 (never reached: the VMM sets RIP itself).
    let syscall_stub = vec![0xe6, SYSCALL_PORT as u8, 0x0f, 0x0b];
    let mut exception_stubs = Vec::with_capacity((VECTORS * EXCEPTION_STUB_SIZE) as usize);
    for vector in 0..VECTORS {
        exception_stubs.extend([
            0xb0,
            vector as u8,
            0xe6,
            EXCEPTION_PORT as u8,
            0xeb,
            0xfe,
            0x90,
            0x90,
        ]);
    }
    vec![
        (GDT_ADDR, gdt),
        (TSS_ADDR, tss),
        (IDT_ADDR, idt),
        (SYSCALL_STUB, syscall_stub),
        (EXCEPTION_STUBS, exception_stubs),
    ]
}

/// Writes the descriptor tables and stubs through `write(guest_addr, bytes)`.
pub fn write_system_tables<E>(mut write: impl FnMut(u64, &[u8]) -> Result<(), E>) -> Result<(), E> {
    for (addr, bytes) in system_tables() {
        write(addr, &bytes)?;
    }
    Ok(())
}

/// A 64-bit busy TSS descriptor (two GDT slots).
fn tss_descriptor(base: u64, limit: u64) -> (u64, u64) {
    let lo = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0xb << 40) // type: busy 64-bit TSS
        | (1 << 47) // present
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (lo, base >> 32)
}

/// A 64-bit interrupt gate to `handler` in the kernel code segment.
fn interrupt_gate(handler: u64) -> (u64, u64) {
    let lo = (handler & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | (0x8e << 40) // present, DPL0, 64-bit interrupt gate
        | (((handler >> 16) & 0xffff) << 48);
    (lo, handler >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_and_tss_descriptors_encode_their_addresses() {
        let (lo, hi) = interrupt_gate(0x1234_5678_9abc);
        assert_eq!(lo & 0xffff, 0x9abc);
        assert_eq!((lo >> 48) & 0xffff, 0x5678);
        assert_eq!(hi, 0x1234);
        assert_eq!((lo >> 16) & 0xffff, u64::from(KERNEL_CS));
        let (lo, hi) = tss_descriptor(0x8800, 0x67);
        assert_eq!(lo & 0xffff, 0x67);
        assert_eq!((lo >> 16) & 0xff_ffff, 0x8800);
        assert_eq!(hi, 0);
    }

    #[test]
    fn stubs_fit_in_their_page() {
        let tables = system_tables();
        for (addr, bytes) in &tables {
            let end = addr + bytes.len() as u64;
            assert!(end <= SYSTEM_AREA_END);
        }
        let stubs = tables.iter().find(|(a, _)| *a == EXCEPTION_STUBS).unwrap();
        assert!(EXCEPTION_STUBS + stubs.1.len() as u64 <= STUB_PAGE + PAGE_SIZE);
        let gdt = tables.iter().find(|(a, _)| *a == GDT_ADDR).unwrap();
        assert!(GDT_ADDR + gdt.1.len() as u64 <= TSS_ADDR);
    }
}
