//! Programs podswitch attaches to the tcx ingress hook (Linux 6.6,
//! `CONFIG_NET_XGRESS`) of an interface, each a few raw instructions
//! ([`super::bpf`]):
//!
//! - [`IngressStop`]: ending pod frames in podswitch, on the host side of
//!   an AF_PACKET pod's veth (returns `TCX_DROP`).
//! - [`IngressRedirect`]: sending what enters the UDP-tunnel TAP out of
//!   the underlay interface (`bpf_redirect_neigh`), for the VXLAN
//!   super-frames the underlay port sends whole (`kernel_port/tunnel_tap.rs`).
//!
//! Why pod frames end: an AF_PACKET socket is a tap. In
//! `__netif_receive_skb_core`
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
//! Each attachment is a BPF link (`BPF_LINK_CREATE` with
//! `BPF_TCX_INGRESS`): it lives as long as its descriptor, so it goes
//! away with the port, with the interface, and with podswitchd however it
//! ends (kill -9 included), and leaves nothing behind to clean up. Other
//! tcx programs on the interface are left alone; ours is appended after
//! them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::bpf::{call, exit, load_program, mov64_imm, owned_fd, store32, Instruction};

/// `TCX_DROP` (enum tcx_action_base).
const TCX_DROP: i32 = 2;

/// `r0 = TCX_DROP; exit`.
const DROP_EVERYTHING: [Instruction; 2] = [mov64_imm(0, TCX_DROP), exit()];

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
        Ok(IngressStop {
            _link: attach_ingress(ifindex, PROGRAM_NAME, &DROP_EVERYTHING)?,
        })
    }
}

/// `BPF_FUNC_redirect_neigh` (Linux 5.10).
const REDIRECT_NEIGH: i32 = 152;

/// The name the redirect program shows under.
pub const REDIRECT_PROGRAM_NAME: &str = "podswitch_out";

/// Where `__sk_buff` keeps `queue_mapping` (include/uapi/linux/bpf.h).
const SKB_QUEUE_MAPPING: i16 = 12;

/// `skb->queue_mapping = 0`, then `bpf_redirect_neigh(to, NULL, 0, 0)`:
/// send the frame out of interface `to`, its Ethernet addresses filled in
/// by the kernel's route and neighbour lookup for its IP destination (ARP
/// included, as for the node's own packets). The helper's return is the
/// verdict: `TC_ACT_REDIRECT` (`TCX_REDIRECT`), or `TC_ACT_SHOT` when `to`
/// is gone.
///
/// The TAP recorded its queue as the frame's receive queue
/// (`skb_record_rx_queue` in `tun_get_user`). A device with several
/// transmit queues and no XPS map would pick its queue from that record
/// (`skb_tx_hash`, net/core/dev.c): queue 0 for every super-frame, while
/// the flow's other packets, from podswitch's sockets, take the queue of
/// their flow's hash. Two queues can reorder a flow. Cleared, the record
/// no longer decides, and the super-frame takes its flow's queue too.
const fn redirect_out(to: i32) -> [Instruction; 8] {
    [
        mov64_imm(2, 0),
        store32(1, SKB_QUEUE_MAPPING, 2),
        mov64_imm(1, to),
        mov64_imm(2, 0),
        mov64_imm(3, 0),
        mov64_imm(4, 0),
        call(REDIRECT_NEIGH),
        exit(),
    ]
}

/// A program on one interface's tcx ingress that sends every frame
/// arriving there out of another interface; detached when dropped.
#[derive(Debug)]
pub struct IngressRedirect {
    /// Held, never read: closing it detaches the program.
    _link: OwnedFd,
}

impl IngressRedirect {
    /// Attaches to interface `ifindex` a program that sends what arrives
    /// there out of interface `to` (`bpf_redirect_neigh`). Fails as
    /// [`IngressStop::attach`] does, and before Linux 5.10 (no
    /// `bpf_redirect_neigh`: the verifier refuses the program).
    pub fn attach(ifindex: u32, to: u32) -> io::Result<IngressRedirect> {
        Ok(IngressRedirect {
            _link: attach_ingress(
                ifindex,
                REDIRECT_PROGRAM_NAME,
                &redirect_out(interface_index(to)?),
            )?,
        })
    }
}

/// Loads `program` (`BPF_PROG_TYPE_SCHED_CLS`) and links it to the tcx
/// ingress of interface `ifindex`; the link descriptor keeps it attached.
fn attach_ingress(ifindex: u32, name: &str, program: &[Instruction]) -> io::Result<OwnedFd> {
    let program = load_program(libbpf_sys::BPF_PROG_TYPE_SCHED_CLS, name, program)?;
    let target = interface_index(ifindex)?;
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
    // The link keeps the program loaded; `program` may close.
    owned_fd(link)
}

/// An interface index as the kernel's `int` (BPF immediates and
/// `bpf_link_create` take it signed).
fn interface_index(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))
}
