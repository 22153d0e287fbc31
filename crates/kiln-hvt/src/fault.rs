//! CPU exceptions raised by the image: names, the frame the CPU pushes on
//! the ring-0 stack, and a readable account of page faults.

/// The architectural name of exception `vector`.
pub const fn exception_name(vector: u8) -> &'static str {
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
        9 => "coprocessor segment overrun",
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
        28 => "hypervisor injection exception",
        29 => "VMM communication exception",
        30 => "security exception",
        _ => "reserved exception",
    }
}

/// Whether the CPU pushes an error code for exception `vector`.
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Number of 8-byte words of the largest frame (error code + 5 words).
pub const MAX_FRAME_WORDS: usize = 6;

/// What the CPU pushed when it delivered an exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExceptionFrame {
    /// The error code, for the vectors that have one.
    pub error_code: Option<u64>,
    /// Address of the faulting instruction (or of the next one for traps).
    pub rip: u64,
    /// Code segment selector at the time of the exception.
    pub cs: u64,
    /// RFLAGS at the time of the exception.
    pub rflags: u64,
    /// Stack pointer at the time of the exception.
    pub rsp: u64,
    /// Stack segment selector at the time of the exception.
    pub ss: u64,
}

impl ExceptionFrame {
    /// Decodes the frame of exception `vector` from the words at the ring-0
    /// stack pointer (lowest address first): `[error code,] RIP, CS, RFLAGS,
    /// RSP, SS`. Returns `None` when `words` is too short.
    pub fn decode(vector: u8, words: &[u64]) -> Option<ExceptionFrame> {
        let (error_code, rest) = if has_error_code(vector) {
            let (e, rest) = words.split_first()?;
            (Some(*e), rest)
        } else {
            (None, words)
        };
        match rest {
            [rip, cs, rflags, rsp, ss, ..] => Some(ExceptionFrame {
                error_code,
                rip: *rip,
                cs: *cs,
                rflags: *rflags,
                rsp: *rsp,
                ss: *ss,
            }),
            _ => None,
        }
    }

    /// The privilege level the CPU was running at (RPL of the saved CS).
    pub fn cpl(&self) -> u8 {
        (self.cs & 3) as u8
    }
}

/// Page-fault error code bits.
mod pf {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const RESERVED: u64 = 1 << 3;
    pub const FETCH: u64 = 1 << 4;
}

/// Describes a page fault's error code: the kind of access and why it
/// failed, e.g. `"write, protection violation"`.
pub fn describe_page_fault(error_code: u64) -> &'static str {
    let fetch = error_code & pf::FETCH != 0;
    let write = error_code & pf::WRITE != 0;
    if error_code & pf::USER == 0 {
        return "access from ring 0 (tender stub)";
    }
    if error_code & pf::RESERVED != 0 {
        return "reserved bit set in a page table entry";
    }
    match (error_code & pf::PRESENT != 0, fetch, write) {
        (false, true, _) => "instruction fetch, page not mapped",
        (false, false, true) => "write, page not mapped",
        (false, false, false) => "read, page not mapped",
        (true, true, _) => "instruction fetch, protection violation (page not executable)",
        (true, false, true) => "write, protection violation (page not writable)",
        (true, false, false) => "read, protection violation (page not user-accessible)",
    }
}

/// Describes a general-protection error code when it names a descriptor:
/// `int n` from ring 3 through a DPL-0 gate reports the IDT entry.
pub fn describe_gp_error(error_code: u64) -> &'static str {
    if error_code == 0 {
        ""
    } else if error_code & 2 != 0 {
        "software interrupt (int n) through a ring-0 gate"
    } else {
        "bad segment selector"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_the_common_faults() {
        assert_eq!(exception_name(14), "page fault");
        assert_eq!(exception_name(6), "invalid opcode");
        assert_eq!(exception_name(13), "general protection fault");
        assert_eq!(exception_name(0), "divide error");
        assert_eq!(exception_name(15), "reserved exception");
    }

    #[test]
    fn error_code_vectors() {
        let with: Vec<u8> = (0..32).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
    }

    #[test]
    fn decodes_a_frame_with_an_error_code() {
        let words = [0x6, 0x10_1234, 0x23, 0x202, 0x1ff_fff0, 0x1b];
        let f = ExceptionFrame::decode(14, &words).unwrap();
        assert_eq!(f.error_code, Some(6));
        assert_eq!(f.rip, 0x10_1234);
        assert_eq!(f.cs, 0x23);
        assert_eq!(f.rflags, 0x202);
        assert_eq!(f.rsp, 0x1ff_fff0);
        assert_eq!(f.ss, 0x1b);
        assert_eq!(f.cpl(), 3);
    }

    #[test]
    fn decodes_a_frame_without_an_error_code() {
        let words = [0x10_2000, 0x23, 0x2, 0x1000, 0x1b, 0xdead];
        let f = ExceptionFrame::decode(6, &words).unwrap();
        assert_eq!(f.error_code, None);
        assert_eq!(f.rip, 0x10_2000);
        assert_eq!(f.ss, 0x1b);
    }

    #[test]
    fn short_frames_are_rejected() {
        assert_eq!(ExceptionFrame::decode(14, &[1, 2, 3, 4, 5]), None);
        assert_eq!(ExceptionFrame::decode(6, &[1, 2, 3, 4]), None);
        assert!(ExceptionFrame::decode(6, &[1, 2, 3, 4, 5]).is_some());
    }

    #[test]
    fn page_fault_error_codes_read_well() {
        assert_eq!(describe_page_fault(0b00100), "read, page not mapped");
        assert_eq!(
            describe_page_fault(0b00111),
            "write, protection violation (page not writable)"
        );
        assert_eq!(
            describe_page_fault(0b10101),
            "instruction fetch, protection violation (page not executable)"
        );
        assert_eq!(
            describe_page_fault(0b00010),
            "access from ring 0 (tender stub)"
        );
    }

    #[test]
    fn gp_errors_name_int_n() {
        assert_eq!(
            describe_gp_error(0x80 * 8 + 2),
            "software interrupt (int n) through a ring-0 gate"
        );
        assert_eq!(describe_gp_error(0), "");
    }
}
