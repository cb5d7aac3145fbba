//! eBPF programs written here as instructions, and loaded through libbpf
//! (libbpf-sys, already linked for AF_XDP): the programs podswitch
//! attaches are a handful of loads and compares each, where a compiled
//! object would need clang at build time.
//!
//! The encoding is the kernel's (include/uapi/linux/bpf.h,
//! Documentation/bpf/standardization/instruction-set.rst). Loads from
//! packet memory read in the host's byte order: an immediate compared
//! with one is built with `from_ne_bytes` over the wire's bytes.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// One BPF instruction (`struct bpf_insn`): `regs` holds dst_reg in its
/// low nibble and src_reg in its high one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Opcode: class, operation and source.
    pub code: u8,
    /// dst_reg (low nibble), src_reg (high nibble).
    pub regs: u8,
    /// Memory offset or jump offset (in instructions, from the next one).
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

/// A register, `r0` to `r10`.
pub type Reg = u8;

const fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Instruction {
    Instruction {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Classes, sizes, modes and operations (include/uapi/linux/bpf_common.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU: u8 = 0x04;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const AND: u8 = 0x50;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that names a map by descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// `dst = imm` (64-bit).
pub const fn mov64_imm(dst: Reg, imm: i32) -> Instruction {
    insn(ALU64 | MOV | K, dst, 0, 0, imm)
}
/// `dst = src` (64-bit).
pub const fn mov64_reg(dst: Reg, src: Reg) -> Instruction {
    insn(ALU64 | MOV | X, dst, src, 0, 0)
}
/// `dst += imm` (64-bit).
pub const fn add64_imm(dst: Reg, imm: i32) -> Instruction {
    insn(ALU64 | ADD | K, dst, 0, 0, imm)
}
/// `dst &= imm` (32-bit: the upper half is cleared).
pub const fn and32_imm(dst: Reg, imm: u32) -> Instruction {
    insn(ALU | AND | K, dst, 0, 0, imm as i32)
}
/// `dst = *(u32 *)(src + off)`.
pub const fn load32(dst: Reg, src: Reg, off: i16) -> Instruction {
    insn(LDX | MEM | W, dst, src, off, 0)
}
/// `dst = *(u16 *)(src + off)`.
pub const fn load16(dst: Reg, src: Reg, off: i16) -> Instruction {
    insn(LDX | MEM | H, dst, src, off, 0)
}
/// `dst = *(u8 *)(src + off)`.
pub const fn load8(dst: Reg, src: Reg, off: i16) -> Instruction {
    insn(LDX | MEM | B, dst, src, off, 0)
}
/// `if (u32)dst != imm goto +off`.
pub const fn jne32_imm(dst: Reg, imm: u32, off: i16) -> Instruction {
    insn(JMP32 | JNE | K, dst, 0, off, imm as i32)
}
/// `if (u32)dst == imm goto +off`.
pub const fn jeq32_imm(dst: Reg, imm: u32, off: i16) -> Instruction {
    insn(JMP32 | JEQ | K, dst, 0, off, imm as i32)
}
/// `if dst > src goto +off` (64-bit, unsigned).
pub const fn jgt_reg(dst: Reg, src: Reg, off: i16) -> Instruction {
    insn(JMP | JGT | X, dst, src, off, 0)
}
/// `goto +off`.
pub const fn ja(off: i16) -> Instruction {
    insn(JMP | JA, 0, 0, off, 0)
}
/// Calls helper number `helper` (include/uapi/linux/bpf.h, `__BPF_FUNC_MAPPER`).
pub const fn call(helper: i32) -> Instruction {
    insn(JMP | CALL, 0, 0, 0, helper)
}
/// `return r0`.
pub const fn exit() -> Instruction {
    insn(JMP | EXIT, 0, 0, 0, 0)
}
/// `dst = map` (two instructions: a 64-bit immediate load whose
/// immediate is the map's descriptor, which the verifier replaces by the
/// map's address).
pub const fn load_map(dst: Reg, map_fd: i32) -> [Instruction; 2] {
    [
        insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
    ]
}

/// Loads `program` as a BPF program of `kind` named `name` (at most 15
/// characters, as `bpftool prog` shows it). A program the verifier
/// refuses comes back as an error carrying the verifier's log.
pub fn load_program(
    kind: libbpf_sys::bpf_prog_type,
    name: &str,
    program: &[Instruction],
) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut log = vec![0u8; 64 * 1024];
    let opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as libbpf_sys::size_t,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr().cast(),
        ..Default::default()
    };
    // SAFETY: `Instruction` has the layout of `struct bpf_insn` (checked
    // in the tests); the pointer and count describe the live slice; name
    // and license are NUL-terminated; the log buffer outlives the call
    // and its size is given. The return is a new descriptor or a negative
    // errno.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            kind,
            name.as_ptr(),
            c"Apache-2.0".as_ptr(),
            program.as_ptr().cast(),
            program.len() as libbpf_sys::size_t,
            &opts as *const _ as *mut _,
        )
    };
    if fd < 0 {
        let err = io::Error::from_raw_os_error(-fd);
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        if text.trim().is_empty() {
            return Err(err);
        }
        return Err(io::Error::new(
            err.kind(),
            format!("{err}; the verifier said:\n{}", text.trim()),
        ));
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Turns a libbpf return value (a descriptor or a negative errno) into an
/// owned descriptor.
pub fn owned_fd(ret: libc::c_int) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret));
    }
    // SAFETY: a non-negative return of a libbpf call that creates an
    // object is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_have_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<Instruction>(), 8);
        assert_eq!(
            std::mem::size_of::<Instruction>(),
            std::mem::size_of::<libbpf_sys::bpf_insn>()
        );
    }

    #[test]
    fn encodings_match_the_kernels_opcodes() {
        // Values from include/uapi/linux/bpf.h as the kernel's own
        // samples spell them (BPF_MOV64_IMM, BPF_LDX_MEM, BPF_JMP32_IMM...).
        assert_eq!(mov64_imm(0, 2).code, 0xb7);
        assert_eq!(mov64_reg(6, 1), insn(0xbf, 6, 1, 0, 0));
        assert_eq!(mov64_reg(6, 1).regs, 0x16);
        assert_eq!(load32(2, 6, 4).code, 0x61);
        assert_eq!(load16(5, 2, 12).code, 0x69);
        assert_eq!(load8(5, 2, 23).code, 0x71);
        assert_eq!(jne32_imm(5, 1, 3).code, 0x56);
        assert_eq!(jeq32_imm(5, 6, 3).code, 0x16);
        assert_eq!(jgt_reg(4, 3, 1).code, 0x2d);
        assert_eq!(and32_imm(5, 0xff3f).code, 0x54);
        assert_eq!(add64_imm(4, 42).code, 0x07);
        assert_eq!(call(51).code, 0x85);
        assert_eq!(exit().code, 0x95);
        assert_eq!(ja(1).code, 0x05);
        let [lo, hi] = load_map(1, 7);
        assert_eq!((lo.code, lo.regs, lo.imm), (0x18, 0x11, 7));
        assert_eq!(hi, insn(0, 0, 0, 0, 0));
    }
}
