//! Ending pod frames in podswitch: a two-instruction BPF program on the
//! tcx ingress hook (Linux 6.6, `CONFIG_NET_XGRESS`) of the host side of
//! an AF_PACKET pod's veth, returning `TCX_DROP`.
//!
//! Why: an AF_PACKET socket is a tap. In `__netif_receive_skb_core`
//! (net/core/dev.c) the kernel hands every received frame to the taps
//! bound to the device (`dev->ptype_all`, where an `ETH_P_ALL` packet
//! socket lives) and then goes on with it itself. Most pod frames end
//! there cheaply (they are addressed to podswitch's gateway MAC, so
//! `ip_rcv` drops them as `PACKET_OTHERHOST`), but an Ethernet broadcast
//! is not: one carrying any source address a pod cares to forge, sent to
//! one of the node's own addresses, went up the node's stack to its
//! sockets, past podswitch's anti-spoofing. The node reaches pods through
//! podswitch's host port, never through a pod veth (DESIGN.md), so the
//! kernel has nothing to do with a pod's frames: ending them after the
//! taps closes that, and saves the kernel's receive work on every frame.
//! The tap's copy shares the frame's data (`skb_clone`), so dropping the
//! original costs podswitch nothing; `sch_handle_ingress` delivers to the
//! last tap before it runs the hook, so the order is the kernel's, not a
//! matter of timing.
//!
//! The attachment is a BPF link (`BPF_LINK_CREATE` with
//! `BPF_TCX_INGRESS`): it lives as long as its descriptor, so it goes
//! away with the port, with the interface, and with podswitchd however it
//! ends (kill -9 included), and leaves nothing behind to clean up. Other
//! tcx programs on the interface are left alone; ours is appended after
//! them.
//!
//! The program and the link go through libbpf (libbpf-sys, already linked
//! for AF_XDP); the program is written here as raw instructions because
//! it is two of them, where a compiled object would need clang at build
//! time.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One BPF instruction (`struct bpf_insn`, include/uapi/linux/bpf.h):
/// `regs` holds dst_reg in its low nibble and src_reg in its high one.
#[repr(C)]
#[derive(Clone, Copy)]
struct Instruction {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `BPF_ALU64 | BPF_MOV | BPF_K`: dst = imm.
const MOV64_IMM: u8 = 0x07 | 0xb0;
/// `BPF_JMP | BPF_EXIT`: return r0.
const EXIT: u8 = 0x05 | 0x90;
/// `TCX_DROP` (enum tcx_action_base).
const TCX_DROP: i32 = 2;

/// `r0 = TCX_DROP; exit`.
const DROP_EVERYTHING: [Instruction; 2] = [
    Instruction {
        code: MOV64_IMM,
        regs: 0,
        off: 0,
        imm: TCX_DROP,
    },
    Instruction {
        code: EXIT,
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// The name the program shows under in `bpftool prog` and
/// `bpftool net` (at most 15 characters).
pub const PROGRAM_NAME: &str = "podswitch_stop";

/// A drop-everything program attached to one interface's tcx ingress;
/// detached when dropped.
#[derive(Debug)]
pub struct IngressStop {
    /// Held, never read: closing it detaches the program.
    _link: OwnedFd,
}

impl IngressStop {
    /// Attaches the program to interface `ifindex`. Fails with the
    /// kernel's error where tcx does not exist (before Linux 6.6, or
    /// without `CONFIG_NET_XGRESS`) or BPF is not allowed (not root).
    pub fn attach(ifindex: u32) -> io::Result<IngressStop> {
        let program = load_program()?;
        let target = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        // SAFETY: `program` is a live BPF program descriptor; null options
        // are documented as "none" (libbpf reads them with OPTS_GET). The
        // return is a new link descriptor or a negative errno.
        let link = unsafe {
            libbpf_sys::bpf_link_create(
                program.as_raw_fd(),
                target,
                libbpf_sys::BPF_TCX_INGRESS,
                std::ptr::null(),
            )
        };
        if link < 0 {
            return Err(io::Error::from_raw_os_error(-link));
        }
        // SAFETY: `link` was just returned by the kernel and nothing else
        // owns it. The link keeps the program loaded; `program` may close.
        let link = unsafe { OwnedFd::from_raw_fd(link) };
        Ok(IngressStop { _link: link })
    }
}

fn load_program() -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(PROGRAM_NAME).expect("no NUL in the name");
    // SAFETY: `Instruction` has the layout of `struct bpf_insn` (8 bytes:
    // u8, u8 of two nibbles, s16, s32); the pointer and count describe the
    // live constant array; name and license are NUL-terminated; null
    // options mean none. The return is a new descriptor or a negative
    // errno.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_SCHED_CLS,
            name.as_ptr(),
            c"Apache-2.0".as_ptr(),
            DROP_EVERYTHING.as_ptr().cast(),
            DROP_EVERYTHING.len() as libbpf_sys::size_t,
            std::ptr::null_mut(),
        )
    };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
}
