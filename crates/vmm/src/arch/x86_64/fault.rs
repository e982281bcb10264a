//! Decoding a CPU exception the guest took: its name, the frame the CPU pushed on the
//! exception stack, a page fault's error code, and the port of an `in`/`out` that
//! raised #GP. The VMM turns the result into a report (`microvm::GuestFault`).

use super::layout::PAGE_SIZE;

/// #GP: general protection fault.
pub const GENERAL_PROTECTION: u8 = 13;
/// #PF: page fault.
pub const PAGE_FAULT: u8 = 14;

/// What the CPU pushed on the exception stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExceptionFrame {
    /// The error code, for the vectors that push one.
    pub error_code: Option<u64>,
    /// RIP of the faulting instruction (of the next one for traps).
    pub rip: u64,
    /// The program's stack pointer when it faulted.
    pub rsp: u64,
}

/// Whether the CPU pushes an error code for `vector`.
fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Reads the exception frame at `rsp` (the stub's stack pointer when it exited) through
/// `read_u64`; `None` if it cannot be read.
pub fn read_exception_frame(
    vector: u8,
    rsp: u64,
    read_u64: impl Fn(u64) -> Option<u64>,
) -> Option<ExceptionFrame> {
    let (error_code, frame) = if has_error_code(vector) {
        (Some(read_u64(rsp)?), rsp.checked_add(8)?)
    } else {
        (None, rsp)
    };
    Some(ExceptionFrame {
        error_code,
        rip: read_u64(frame)?,
        rsp: read_u64(frame.checked_add(24)?)?,
    })
}

/// The architectural name of an exception vector.
pub fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug exception",
        2 => "non-maskable interrupt",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating-point exception",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point exception",
        20 => "virtualization exception",
        21 => "control protection exception",
        _ => "reserved exception",
    }
}

/// The access that caused a page fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Execute,
}

/// A page fault, decoded from its error code and CR2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// The address the program accessed (CR2).
    pub addr: u64,
    /// What kind of access it was.
    pub access: Access,
    /// Whether the page was present (a protection fault) rather than not mapped.
    pub present: bool,
}

impl PageFault {
    /// Decodes a page fault's error code (P = bit 0, W/R = bit 1, I/D = bit 4).
    pub fn decode(error_code: u64, cr2: u64) -> Self {
        let access = if error_code & 0x10 != 0 {
            Access::Execute
        } else if error_code & 0x2 != 0 {
            Access::Write
        } else {
            Access::Read
        };
        Self {
            addr: cr2,
            access,
            present: error_code & 0x1 != 0,
        }
    }

    /// The access and the address: "write to 0x10", "read from 0x7000", ….
    pub fn describe_access(&self) -> String {
        let access = match self.access {
            Access::Execute => "instruction fetch from",
            Access::Write => "write to",
            Access::Read => "read from",
        };
        format!("{access} {:#x}", self.addr)
    }

    /// Whether the address lies in page 0: the program followed a null pointer.
    pub fn is_null_pointer(&self) -> bool {
        self.addr < PAGE_SIZE
    }
}

impl std::fmt::Display for PageFault {
    /// "write to 0x10 (null pointer)", "read from 0x7000 (unmapped)", ….
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.is_null_pointer() {
            "null pointer"
        } else if self.present {
            "protected"
        } else {
            "unmapped"
        };
        write!(f, "{} ({what})", self.describe_access())
    }
}

/// If `code` (the first bytes at RIP) is an `in`/`out`/`ins`/`outs` instruction, the
/// port it names: the immediate, or DX (`rdx`). With the I/O permission bitmap in
/// force, a program's own port I/O shows up as a #GP at that instruction.
pub fn io_instruction_port(code: [u8; 3], rdx: u64) -> Option<u16> {
    // An operand-size prefix (0x66) may precede the opcode.
    let op = if code[0] == 0x66 {
        &code[1..]
    } else {
        &code[..2]
    };
    match op[0] {
        0xe4..=0xe7 => Some(u16::from(op[1])),
        // DX: the low 16 bits of RDX.
        0xec..=0xef | 0x6c..=0x6f => Some(rdx as u16),
        _ => None,
    }
}

/// The registers a fault report needs, as the exception stub left them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultRegs {
    /// RIP at the stub's exit (used when the frame cannot be read).
    pub rip: u64,
    /// RSP at the stub's exit: the exception frame.
    pub rsp: u64,
    /// RDX of the program (the port of `in`/`out` with DX).
    pub rdx: u64,
    /// CR2: the address of the last page fault.
    pub cr2: u64,
}

/// An exception, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExceptionReport {
    /// A #GP at an `in`/`out` instruction: the program's own port I/O.
    StrayIo {
        /// The port.
        port: u16,
        /// RIP of the instruction.
        rip: u64,
    },
    /// Any other exception.
    Exception {
        /// The vector.
        vector: u8,
        /// Its architectural name.
        name: &'static str,
        /// ": write to 0x0 (null pointer)" for a page fault, " (error code 0x..)"
        /// for another exception with a non-zero error code, else empty.
        detail: String,
        /// RIP of the faulting instruction (the stub's when the frame is unreadable).
        rip: u64,
    },
}

/// Decodes exception `vector`, reported by its stub with the registers `regs`, reading
/// guest memory (the frame, the faulting instruction) through `read`.
pub fn decode_exception(
    vector: u8,
    regs: &FaultRegs,
    read: impl Fn(u64, &mut [u8]) -> Option<()>,
) -> ExceptionReport {
    let name = exception_name(vector);
    let read_u64 = |addr| {
        let mut b = [0u8; 8];
        read(addr, &mut b).map(|()| u64::from_le_bytes(b))
    };
    let Some(frame) = read_exception_frame(vector, regs.rsp, read_u64) else {
        return ExceptionReport::Exception {
            vector,
            name,
            detail: String::new(),
            rip: regs.rip,
        };
    };
    if vector == GENERAL_PROTECTION {
        let mut code = [0u8; 3];
        if read(frame.rip, &mut code).is_some()
            && let Some(port) = io_instruction_port(code, regs.rdx)
        {
            return ExceptionReport::StrayIo {
                port,
                rip: frame.rip,
            };
        }
    }
    let detail = match (vector, frame.error_code) {
        (PAGE_FAULT, Some(code)) => format!(": {}", PageFault::decode(code, regs.cr2)),
        (_, Some(code)) if code != 0 => format!(" (error code {code:#x})"),
        _ => String::new(),
    };
    ExceptionReport::Exception {
        vector,
        name,
        detail,
        rip: frame.rip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_frame_with_and_without_error_code() {
        let stack = [7u64, 0x40_1000, 0x23, 0x3002, 0x7fff_0000, 0x1b];
        let read = |a: u64| stack.get(usize::try_from((a - 0x1000) / 8).ok()?).copied();
        let pf = read_exception_frame(14, 0x1000, read).unwrap();
        assert_eq!(
            pf,
            ExceptionFrame {
                error_code: Some(7),
                rip: 0x40_1000,
                rsp: 0x7fff_0000
            }
        );
        let ud = read_exception_frame(6, 0x1008, read).unwrap();
        assert_eq!(ud.error_code, None);
        assert_eq!(ud.rip, 0x40_1000);
        assert_eq!(exception_name(14), "page fault");
        assert_eq!(read_exception_frame(6, u64::MAX - 4, read), None, "wraps");
    }

    #[test]
    fn page_fault_error_codes_name_the_access() {
        let describe = |code, cr2| PageFault::decode(code, cr2).to_string();
        assert_eq!(describe(0x4, 0x8), "read from 0x8 (null pointer)");
        assert_eq!(describe(0x6, 0xff8), "write to 0xff8 (null pointer)");
        assert_eq!(
            describe(0x14, 0x1000),
            "instruction fetch from 0x1000 (unmapped)"
        );
        assert_eq!(describe(0x7, 0x8000), "write to 0x8000 (protected)");
        assert_eq!(describe(0x5, 0x9000), "read from 0x9000 (protected)");
        let pf = PageFault::decode(0x15, 0x40_0000);
        assert_eq!((pf.access, pf.present), (Access::Execute, true));
    }

    #[test]
    fn io_instructions_name_their_port() {
        assert_eq!(
            io_instruction_port([0xe6, 0x80, 0], 0),
            Some(0x80),
            "out imm8, al"
        );
        assert_eq!(
            io_instruction_port([0xe5, 0x40, 0], 0),
            Some(0x40),
            "in eax, imm8"
        );
        assert_eq!(
            io_instruction_port([0x66, 0xe7, 0x71], 0),
            Some(0x71),
            "out imm8, ax"
        );
        assert_eq!(
            io_instruction_port([0xee, 0, 0], 0x1_03f8),
            Some(0x3f8),
            "out dx, al"
        );
        assert_eq!(io_instruction_port([0x6c, 0, 0], 0x60), Some(0x60), "insb");
        assert_eq!(io_instruction_port([0x66, 0xef, 0], 0xcf8), Some(0xcf8));
        assert_eq!(io_instruction_port([0x0f, 0x01, 0xf8], 0), None, "swapgs");
        assert_eq!(io_instruction_port([0xf4, 0, 0], 0), None, "hlt");
    }

    /// A guest memory of one exception stack at 0xc000 and code at 0x40_0000.
    fn memory(stack: &[u64], code: &[u8]) -> impl Fn(u64, &mut [u8]) -> Option<()> {
        let mut bytes = vec![0u8; 0x1000];
        for (i, v) in stack.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let code = code.to_vec();
        move |addr, buf| {
            let (area, base) = if addr >= 0x40_0000 {
                (&code, 0x40_0000)
            } else {
                (&bytes, 0xc000)
            };
            let start = usize::try_from(addr.checked_sub(base)?).ok()?;
            buf.copy_from_slice(area.get(start..start + buf.len())?);
            Some(())
        }
    }

    #[test]
    fn a_null_write_is_reported_with_its_address_and_rip() {
        let regs = FaultRegs {
            rip: 0xa104,
            rsp: 0xc000,
            cr2: 0x10,
            ..Default::default()
        };
        let read = memory(&[0x6, 0x40_0010, 0x33, 0x202, 0x7fff_f000, 0x2b], &[]);
        assert_eq!(
            decode_exception(PAGE_FAULT, &regs, read),
            ExceptionReport::Exception {
                vector: 14,
                name: "page fault",
                detail: ": write to 0x10 (null pointer)".into(),
                rip: 0x40_0010,
            }
        );
    }

    #[test]
    fn a_general_protection_fault_at_port_io_is_stray_io() {
        let regs = FaultRegs {
            rip: 0xa16c,
            rsp: 0xc000,
            rdx: 0x3f8,
            ..Default::default()
        };
        let frame = [0, 0x40_0000, 0x33, 0x202, 0x7fff_f000, 0x2b];
        let read = memory(&frame, &[0xee, 0x90, 0x90]);
        assert_eq!(
            decode_exception(GENERAL_PROTECTION, &regs, &read),
            ExceptionReport::StrayIo {
                port: 0x3f8,
                rip: 0x40_0000
            }
        );
        // Any other #GP names its error code (a selector) when there is one.
        let read = memory(
            &[0x18, 0x40_0000, 0x33, 0x202, 0x7fff_f000, 0x2b],
            &[0xfa; 3],
        );
        let ExceptionReport::Exception { detail, .. } =
            decode_exception(GENERAL_PROTECTION, &regs, &read)
        else {
            panic!("not an exception report");
        };
        assert_eq!(detail, " (error code 0x18)");
    }

    #[test]
    fn an_unreadable_frame_still_names_the_exception() {
        let regs = FaultRegs {
            rip: 0xa134,
            rsp: 0x1_0000_0000,
            ..Default::default()
        };
        assert_eq!(
            decode_exception(6, &regs, memory(&[], &[])),
            ExceptionReport::Exception {
                vector: 6,
                name: "invalid opcode",
                detail: String::new(),
                rip: 0xa134,
            }
        );
    }
}
