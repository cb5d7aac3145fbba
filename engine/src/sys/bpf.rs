//! eBPF programs written here as instructions, and loaded through libbpf
//! (libbpf-sys, already linked for AF_XDP): the programs podswitch
//! attaches are a handful of loads and compares each, where a compiled
//! object would need clang at build time.
//!
//! The encoding is the kernel's (include/uapi/linux/bpf.h,
//! Documentation/bpf/standardization/instruction-set.rst). A load of
//! packet bytes (copied to the stack by a helper) reads the wire's bytes
//! in the host's order: an immediate compared with one is built with
//! `from_ne_bytes` over the wire's bytes.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

// Where `__sk_buff` (include/uapi/linux/bpf.h) keeps the fields the
// programs read, and the helpers they call by number
// (`__BPF_FUNC_MAPPER`), shared by every program built here.
/// `skb->len`.
pub const SKB_LEN: i16 = 0;
/// `skb->pkt_type`: `PACKET_HOST`, `PACKET_OTHERHOST`, ...
pub const SKB_PKT_TYPE: i16 = 4;
/// `skb->queue_mapping`.
pub const SKB_QUEUE_MAPPING: i16 = 12;
/// `skb->protocol`: the EtherType, in the wire's order.
pub const SKB_PROTOCOL: i16 = 16;
/// `bpf_map_lookup_elem`.
pub const MAP_LOOKUP_ELEM: i32 = 1;
/// `bpf_ktime_get_ns`.
pub const KTIME_GET_NS: i32 = 5;
/// `bpf_get_smp_processor_id`.
pub const GET_SMP_PROCESSOR_ID: i32 = 8;
/// `bpf_skb_store_bytes`.
pub const SKB_STORE_BYTES: i32 = 9;
/// `bpf_skb_load_bytes`.
pub const SKB_LOAD_BYTES: i32 = 26;
/// `bpf_skb_adjust_room` (Linux 4.13; its encapsulation flags 5.2).
pub const SKB_ADJUST_ROOM: i32 = 50;
/// `bpf_redirect_map`.
pub const REDIRECT_MAP: i32 = 51;
/// `bpf_skb_load_bytes_relative`.
pub const SKB_LOAD_BYTES_RELATIVE: i32 = 68;
/// `bpf_redirect_neigh` (Linux 5.10).
pub const REDIRECT_NEIGH: i32 = 152;

// IP protocol numbers the programs compare with (IANA; the kernel's
// `IPPROTO_*`).
/// IP protocol 4: IPv4 in IPv4 (RFC 2003).
pub const PROTOCOL_IPIP: u32 = 4;
/// TCP.
pub const PROTOCOL_TCP: u32 = 6;
/// UDP.
pub const PROTOCOL_UDP: u32 = 17;

/// The IPv4 EtherType as `skb->protocol` holds it (the wire's order).
pub const ETHERTYPE_IPV4: u32 = u16::from_ne_bytes([0x08, 0x00]) as u32;
/// An IPv4 header's "more fragments" flag and fragment offset, in a
/// 16-bit load of its bytes 6 and 7 from the stack: not zero in a
/// fragment.
pub const IPV4_FRAGMENT_BITS: u32 = u16::from_ne_bytes([0x3f, 0xff]) as u32;

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
const STX: u8 = 0x03;
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
const ATOMIC: u8 = 0xc0;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const MUL: u8 = 0x20;
const LSH: u8 = 0x60;
const RSH: u8 = 0x70;
const AND: u8 = 0x50;
const MOD: u8 = 0x90;
const XOR: u8 = 0xa0;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JGE: u8 = 0x30;
const JNE: u8 = 0x50;
const JSGE: u8 = 0x70;
const JLT: u8 = 0xa0;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// The atomic operation's `imm`: `BPF_ADD` (0x00) with `BPF_FETCH`
/// (0x01), which returns the old value in the source register.
const ATOMIC_FETCH_ADD: i32 = 0x01;
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
/// `dst += src` (64-bit).
pub const fn add64_reg(dst: Reg, src: Reg) -> Instruction {
    insn(ALU64 | ADD | X, dst, src, 0, 0)
}
/// `dst &= imm` (32-bit: the upper half is cleared).
pub const fn and32_imm(dst: Reg, imm: u32) -> Instruction {
    insn(ALU | AND | K, dst, 0, 0, imm as i32)
}
/// `dst = imm` (32-bit, the upper half cleared).
pub const fn mov32_imm(dst: Reg, imm: u32) -> Instruction {
    insn(ALU | MOV | K, dst, 0, 0, imm as i32)
}
/// `dst += imm` (32-bit).
pub const fn add32_imm(dst: Reg, imm: u32) -> Instruction {
    insn(ALU | ADD | K, dst, 0, 0, imm as i32)
}
/// `dst -= src` (32-bit).
pub const fn sub32_reg(dst: Reg, src: Reg) -> Instruction {
    insn(ALU | SUB | X, dst, src, 0, 0)
}
/// `dst *= imm` (32-bit, wrapping).
pub const fn mul32_imm(dst: Reg, imm: u32) -> Instruction {
    insn(ALU | MUL | K, dst, 0, 0, imm as i32)
}
/// `dst %= imm` (32-bit, unsigned).
pub const fn mod32_imm(dst: Reg, imm: u32) -> Instruction {
    insn(ALU | MOD | K, dst, 0, 0, imm as i32)
}
/// `dst <<= imm` (32-bit).
pub const fn lsh32_imm(dst: Reg, imm: u32) -> Instruction {
    insn(ALU | LSH | K, dst, 0, 0, imm as i32)
}
/// `dst >>= imm` (32-bit, logical).
pub const fn rsh32_imm(dst: Reg, imm: u32) -> Instruction {
    insn(ALU | RSH | K, dst, 0, 0, imm as i32)
}
/// `dst ^= src` (64-bit).
pub const fn xor64_reg(dst: Reg, src: Reg) -> Instruction {
    insn(ALU64 | XOR | X, dst, src, 0, 0)
}
/// `dst = *(u64 *)(src + off)`.
pub const fn load64(dst: Reg, src: Reg, off: i16) -> Instruction {
    insn(LDX | MEM | DW, dst, src, off, 0)
}
/// `*(u64 *)(dst + off) = src`.
pub const fn store64(dst: Reg, off: i16, src: Reg) -> Instruction {
    insn(STX | MEM | DW, dst, src, off, 0)
}
/// `dst -= src` (64-bit).
pub const fn sub64_reg(dst: Reg, src: Reg) -> Instruction {
    insn(ALU64 | SUB | X, dst, src, 0, 0)
}
/// `if dst < imm goto +off` (64-bit, unsigned; `imm` sign-extended).
pub const fn jlt_imm(dst: Reg, imm: i32, off: i16) -> Instruction {
    insn(JMP | JLT | K, dst, 0, off, imm)
}
/// `*(u32 *)(dst + off) = src`.
pub const fn store32(dst: Reg, off: i16, src: Reg) -> Instruction {
    insn(STX | MEM | W, dst, src, off, 0)
}
/// Atomically `src = fetch_add((u32 *)(dst + off), src)`: the old value
/// comes back in `src` (Linux 5.12).
pub const fn fetch_add32(dst: Reg, off: i16, src: Reg) -> Instruction {
    insn(STX | ATOMIC | W, dst, src, off, ATOMIC_FETCH_ADD)
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
/// `if (u32)dst == (u32)src goto +off`.
pub const fn jeq32_reg(dst: Reg, src: Reg, off: i16) -> Instruction {
    insn(JMP32 | JEQ | X, dst, src, off, 0)
}
/// `if (u32)dst >= imm goto +off` (unsigned).
pub const fn jge32_imm(dst: Reg, imm: u32, off: i16) -> Instruction {
    insn(JMP32 | JGE | K, dst, 0, off, imm as i32)
}
/// `if (u32)dst > (u32)src goto +off` (unsigned).
pub const fn jgt32_reg(dst: Reg, src: Reg, off: i16) -> Instruction {
    insn(JMP32 | JGT | X, dst, src, off, 0)
}
/// `if (u32)dst < imm goto +off` (unsigned).
pub const fn jlt32_imm(dst: Reg, imm: u32, off: i16) -> Instruction {
    insn(JMP32 | JLT | K, dst, 0, off, imm as i32)
}
/// `if (s32)dst >= imm goto +off` (signed).
pub const fn jsge32_imm(dst: Reg, imm: i32, off: i16) -> Instruction {
    insn(JMP32 | JSGE | K, dst, 0, off, imm)
}
/// `if dst == imm goto +off` (64-bit): a null check on a pointer.
pub const fn jeq_imm(dst: Reg, imm: i32, off: i16) -> Instruction {
    insn(JMP | JEQ | K, dst, 0, off, imm)
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

/// A program under construction, its forward jumps patched once the
/// labels (any `L` that tells them apart) are placed.
#[derive(Debug)]
pub struct Assembler<L> {
    code: Vec<Instruction>,
    jumps: Vec<(usize, L)>,
    labels: Vec<(L, usize)>,
}

impl<L> Default for Assembler<L> {
    fn default() -> Self {
        Assembler {
            code: Vec::new(),
            jumps: Vec::new(),
            labels: Vec::new(),
        }
    }
}

impl<L: Copy + PartialEq + std::fmt::Debug> Assembler<L> {
    /// Emits `i`.
    pub fn op(&mut self, i: Instruction) {
        self.code.push(i);
    }

    /// Emits each of `code`.
    pub fn ops(&mut self, code: &[Instruction]) {
        self.code.extend_from_slice(code);
    }

    /// Emits `jump` (whose offset is patched) towards `to`.
    pub fn jump(&mut self, jump: Instruction, to: L) {
        self.jumps.push((self.code.len(), to));
        self.code.push(jump);
    }

    /// Places `label` at the next instruction.
    pub fn place(&mut self, label: L) {
        self.labels.push((label, self.code.len()));
    }

    /// The program, every jump patched to its label.
    ///
    /// # Panics
    ///
    /// If a jump's label was never placed, or lies behind it: programs
    /// built here only jump forward.
    pub fn finish(mut self) -> Vec<Instruction> {
        for &(at, to) in &self.jumps {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| *l == to)
                .map(|&(_, pos)| pos)
                .unwrap_or_else(|| panic!("label {to:?} is never placed"));
            assert!(target > at, "label {to:?} lies behind its jump");
            self.code[at].off = (target - at - 1) as i16;
        }
        self.code
    }
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

/// Asserts that every jump of `program` goes forward and lands inside it
/// (what [`Assembler::finish`] makes of placed labels, checked on the
/// finished program).
#[cfg(test)]
pub(crate) fn assert_jumps_forward_inside(program: &[Instruction]) {
    for (i, ins) in program.iter().enumerate() {
        let class = ins.code & 0x07;
        let is_jump = (class == JMP || class == JMP32)
            && ins.code != (JMP | CALL)
            && ins.code != (JMP | EXIT);
        if is_jump {
            let target = i as i64 + 1 + i64::from(ins.off);
            assert!(ins.off >= 0, "instruction {i} jumps back");
            assert!(
                (target as usize) < program.len(),
                "instruction {i} jumps out"
            );
        }
    }
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
        assert_eq!(mov32_imm(1, 1).code, 0xb4);
        assert_eq!(add32_imm(1, 1).code, 0x04);
        assert_eq!(sub32_reg(1, 2), insn(0x1c, 1, 2, 0, 0));
        assert_eq!(mul32_imm(7, 3).code, 0x24);
        assert_eq!(mod32_imm(0, 2).code, 0x94);
        assert_eq!(lsh32_imm(0, 2).code, 0x64);
        assert_eq!(rsh32_imm(7, 20).code, 0x74);
        assert_eq!(xor64_reg(7, 0).code, 0xaf);
        assert_eq!(store32(10, -4, 7), insn(0x63, 10, 7, -4, 0));
        // BPF_ATOMIC | BPF_W | BPF_STX with BPF_ADD | BPF_FETCH.
        assert_eq!(fetch_add32(0, 0, 1), insn(0xc3, 0, 1, 0, 1));
        assert_eq!(jeq32_reg(1, 9, 0).code, 0x1e);
        assert_eq!(jge32_imm(1, 2, 0).code, 0x36);
        assert_eq!(jgt32_reg(2, 9, 0).code, 0x2e);
        assert_eq!(jsge32_imm(1, 0, 0).code, 0x76);
        assert_eq!(jlt32_imm(9, 20, 0).code, 0xa6);
        assert_eq!(jlt_imm(2, 20, 0).code, 0xa5);
        assert_eq!(load64(1, 8, 8), insn(0x79, 1, 8, 8, 0));
        assert_eq!(store64(8, 8, 7), insn(0x7b, 8, 7, 8, 0));
        assert_eq!(sub64_reg(2, 1).code, 0x1f);
        assert_eq!(jeq_imm(0, 0, 0).code, 0x15);
        let [lo, hi] = load_map(1, 7);
        assert_eq!((lo.code, lo.regs, lo.imm), (0x18, 0x11, 7));
        assert_eq!(hi, insn(0, 0, 0, 0, 0));
    }
}
