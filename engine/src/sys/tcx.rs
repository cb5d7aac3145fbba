//! Programs podswitch attaches to the tcx ingress hook (Linux 6.6,
//! `CONFIG_NET_XGRESS`) of an interface, each a few raw instructions
//! ([`super::bpf`]):
//!
//! - [`IngressStop`]: ending pod frames in podswitch, on the host side of
//!   an AF_PACKET pod's veth (returns `TCX_DROP`).
//! - [`IngressTaken`]: ending, on the underlay interface, the host-gw
//!   frames podswitch's packet socket has taken: IPv4 from a pod of the
//!   cluster to the node's pod subnet. Everything else goes on to the
//!   kernel (`TCX_NEXT`): the node's own traffic, ARP, tunnel packets.
//!   And on an IPIP underlay split among workers, the IPIP packets for
//!   the node that podswitch's packet sockets have taken.
//! - [`IngressRedirect`]: sending what enters the UDP-tunnel TAP out of
//!   the underlay interface (`bpf_redirect_neigh`), for the VXLAN
//!   super-frames the underlay port sends whole (`kernel_port/tunnel_tap.rs`).
//! - [`IngressIpipOut`]: the same for the IPIP TAP, whose super-frames it
//!   first marks as IPIP encapsulated, which a virtio-net header cannot
//!   say.
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
//! Why host-gw frames end: the underlay is the node's own interface, so
//! it cannot end everything as a pod's veth does; but a host-gw peer's
//! frame for this node's pods reaches the kernel there too, after the
//! tap. Sent to a pod, the kernel routed it towards the host port only to
//! drop it in podswitch's forward chain (after a route lookup and a copy
//! of its head, as `ip_forward` unshares the tap's clone). Sent to the
//! node's gateway address (10.244.X.1, on the host port), the kernel
//! delivered it to the node's socket itself (a host takes its addresses
//! on any interface) while podswitch delivered it through the host port:
//! every datagram from another node's pod to the gateway address arrived
//! twice. The condition is the pod subnet as destination and a source in
//! the cluster CIDR, which every host-gw peer's pods have: a packet from
//! outside the cluster to a pod (a reply to a pod that kept its address,
//! `no_masquerade`) still goes through the kernel, which sends it on to
//! the host port. The packet socket also takes a peer node's own frames
//! (from the underlay's subnet) but for the gateway address; those go on
//! to the kernel too, which delivers them itself when they are for the
//! gateway address and drops them in podswitch's forward chain when they
//! are for a pod (podswitch delivers those).
//!
//! Why IPIP packets end: an IPIP underlay split among workers reads IPIP
//! packets for the node from a packet socket per worker, a fanout group
//! steered by flow, because a raw socket cannot be split (every raw socket
//! of a protocol gets a copy of each packet, `raw_v4_input`). The kernel
//! would go on with each packet after the group's tap, through `ip_rcv`
//! to a raw socket that must stay open (below), and to an error it would
//! send back without one ("protocol unreachable"): twice the work, and
//! every packet read twice. The condition is the packet socket's own
//! filter: IPv4 to this host's MAC (`PACKET_HOST`), protocol 4, to the
//! node's address, not a fragment. A fragment goes on to the kernel, which
//! reassembles it and hands the whole packet to the raw socket.
//!
//! Each attachment is a BPF link (`BPF_LINK_CREATE` with
//! `BPF_TCX_INGRESS`): it lives as long as its descriptor, so it goes
//! away with the port, with the interface, and with podswitchd however it
//! ends (kill -9 included), and leaves nothing behind to clean up. Other
//! tcx programs on the interface are left alone; ours is appended after
//! them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use podswitch_addr::{mask, Prefix};

use super::bpf::{
    add64_imm, and32_imm, call, exit, jne32_imm, load16, load32, load8, load_program, mov64_imm,
    mov64_reg, owned_fd, store32, Assembler, Instruction, ETHERTYPE_IPV4, IPV4_FRAGMENT_BITS,
    PROTOCOL_IPIP, REDIRECT_NEIGH, SKB_ADJUST_ROOM, SKB_LOAD_BYTES, SKB_PKT_TYPE, SKB_PROTOCOL,
    SKB_QUEUE_MAPPING, SKB_STORE_BYTES,
};

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

/// `TCX_NEXT`: on to the interface's next tcx program, or to the kernel.
const TCX_NEXT: i32 = -1;
/// Where a tcx ingress program finds the IPv4 source and destination:
/// the frame starts at its Ethernet header (`tcx_run` pushes it back).
const IPV4_ADDRESSES_AT: i32 = 14 + 12;

/// The name [`IngressTaken`]'s program shows under (at most 15
/// characters).
pub const TAKEN_PROGRAM_NAME: &str = "podswitch_taken";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Next,
}

/// `(addr & mask) == net` for the IPv4 address in register `reg` as
/// loaded from the wire (in the host's order of the wire's bytes), or a
/// jump to [`Label::Next`].
fn jump_unless_inside(a: &mut Assembler<Label>, reg: u8, prefix: Prefix) {
    let wire = |x: u32| u32::from_ne_bytes(x.to_be_bytes());
    a.op(and32_imm(reg, wire(mask(prefix.prefix_len()))));
    a.jump(
        jne32_imm(reg, wire(u32::from(prefix.addr())), 0),
        Label::Next,
    );
}

/// Drops untagged IPv4 frames from `sources` to `destinations`
/// (`TCX_DROP`), and passes everything else on (`TCX_NEXT`), a frame too
/// short to hold the addresses included.
fn drop_between(sources: Prefix, destinations: Prefix) -> Vec<Instruction> {
    let mut a = Assembler::default();
    next_unless_ipv4(&mut a);
    // Both addresses to the stack in one helper call.
    bytes_to_stack_or_next(&mut a, IPV4_ADDRESSES_AT, 8, -8);
    a.op(load32(1, 10, -8));
    jump_unless_inside(&mut a, 1, sources);
    a.op(load32(1, 10, -4));
    jump_unless_inside(&mut a, 1, destinations);
    drop_here_else_next(a)
}

/// A dropping program's start: r6 the context, and a frame that is not
/// IPv4 goes on ([`Label::Next`]).
fn next_unless_ipv4(a: &mut Assembler<Label>) {
    a.op(mov64_reg(6, 1));
    a.op(load32(0, 6, SKB_PROTOCOL));
    a.jump(jne32_imm(0, ETHERTYPE_IPV4, 0), Label::Next);
}

/// `len` bytes of the frame at `from` (its Ethernet header at 0) to the
/// stack at `to`, in one helper call; a frame too short goes on
/// ([`Label::Next`]). Clobbers r0 to r5.
fn bytes_to_stack_or_next(a: &mut Assembler<Label>, from: i32, len: i32, to: i16) {
    a.op(mov64_reg(1, 6));
    a.op(mov64_imm(2, from));
    a.op(mov64_reg(3, 10));
    a.op(add64_imm(3, i32::from(to)));
    a.op(mov64_imm(4, len));
    a.op(call(SKB_LOAD_BYTES));
    a.jump(jne32_imm(0, 0, 0), Label::Next);
}

/// A dropping program's end: what reaches here is dropped (`TCX_DROP`),
/// what jumped to [`Label::Next`] goes on (`TCX_NEXT`).
fn drop_here_else_next(mut a: Assembler<Label>) -> Vec<Instruction> {
    a.op(mov64_imm(0, TCX_DROP));
    a.op(exit());
    a.place(Label::Next);
    a.op(mov64_imm(0, TCX_NEXT));
    a.op(exit());
    a.finish()
}

/// `PACKET_HOST`: a frame for this host (`skb->pkt_type`).
const PACKET_HOST: u32 = 0;
/// Where [`drop_ipip_to`] copies the IPv4 header on its stack.
const IPV4_HEADER_AT: i16 = -24;

/// Drops IPIP packets for `local` that are not fragments, received for
/// this host (`TCX_DROP`); passes everything else on (`TCX_NEXT`). The
/// condition is the one of the split IPIP underlay's packet socket
/// (`kernel_port/underlay.rs`, `ipip_filter`).
fn drop_ipip_to(local: std::net::Ipv4Addr) -> Vec<Instruction> {
    let mut a = Assembler::default();
    next_unless_ipv4(&mut a);
    a.op(load32(0, 6, SKB_PKT_TYPE));
    a.jump(jne32_imm(0, PACKET_HOST, 0), Label::Next);
    bytes_to_stack_or_next(&mut a, 14, 20, IPV4_HEADER_AT);
    a.op(load8(1, 10, IPV4_HEADER_AT + 9));
    a.jump(jne32_imm(1, PROTOCOL_IPIP, 0), Label::Next);
    a.op(load16(1, 10, IPV4_HEADER_AT + 6));
    a.op(and32_imm(1, IPV4_FRAGMENT_BITS));
    a.jump(jne32_imm(1, 0, 0), Label::Next);
    a.op(load32(1, 10, IPV4_HEADER_AT + 16));
    a.jump(
        jne32_imm(1, u32::from_ne_bytes(local.octets()), 0),
        Label::Next,
    );
    drop_here_else_next(a)
}

/// The underlay's program that ends what podswitch's packet sockets
/// have taken there: host-gw frames, or the IPIP packets of a split IPIP
/// underlay (see the module's documentation); detached when dropped.
#[derive(Debug)]
pub struct IngressTaken {
    /// Held, never read: closing it detaches the program.
    _link: OwnedFd,
}

impl IngressTaken {
    /// Attaches to interface `ifindex` a program that drops IPv4 frames
    /// from `cluster` to `pod_subnet`, after the taps (a packet socket
    /// bound to `ETH_P_ALL` has its copy; one bound to `ETH_P_IP` would
    /// come after the hook, and see nothing). Fails as
    /// [`IngressStop::attach`] does.
    pub fn attach(ifindex: u32, cluster: Prefix, pod_subnet: Prefix) -> io::Result<IngressTaken> {
        Ok(IngressTaken {
            _link: attach_ingress(
                ifindex,
                TAKEN_PROGRAM_NAME,
                &drop_between(cluster, pod_subnet),
            )?,
        })
    }

    /// Attaches to interface `ifindex` a program that drops the IPIP
    /// packets for `local` that are not fragments, after the taps, as
    /// [`attach`](Self::attach) does. Fails as [`IngressStop::attach`]
    /// does.
    pub fn attach_ipip(ifindex: u32, local: std::net::Ipv4Addr) -> io::Result<IngressTaken> {
        Ok(IngressTaken {
            _link: attach_ingress(ifindex, TAKEN_PROGRAM_NAME, &drop_ipip_to(local))?,
        })
    }
}

/// The name the redirect program shows under.
pub const REDIRECT_PROGRAM_NAME: &str = "podswitch_out";

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

/// The name the IPIP TAP's program shows under.
pub const IPIP_OUT_PROGRAM_NAME: &str = "podswitch_ipip";

/// `TC_ACT_SHOT`.
const TC_ACT_SHOT: i32 = 2;
/// `BPF_ADJ_ROOM_MAC` (enum bpf_adj_room_mode): room taken or made right
/// after the Ethernet header.
const ADJ_ROOM_MAC: i32 = 1;
/// `BPF_F_ADJ_ROOM_FIXED_GSO`: the segment size stays what it is.
const ADJ_ROOM_FIXED_GSO: i32 = 1 << 0;
/// `BPF_F_ADJ_ROOM_ENCAP_L3_IPV4`: the room made is an outer IPv4 header.
const ADJ_ROOM_ENCAP_L3_IPV4: i32 = 1 << 1;
/// Where the outer IPv4 header is kept on the program's stack.
const OUTER_AT: i32 = -24;
/// An outer IPv4 header without options.
const OUTER_LEN: i32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shot {
    Drop,
}

/// The IPIP TAP's program. A frame written to the TAP is an IPIP packet
/// as the engine encapsulates it (its outer IPv4 header whole: lengths,
/// TTL, TOS, DF, checksum) around a TCP super-frame, with a virtio-net
/// header for the inner TCP segmentation (`GSO_TCPV4`). No virtio-net
/// type says "inside IPIP", so the kernel would cut such a frame as if
/// the outer header were the TCP segments' own. The program takes the
/// outer header off (`bpf_skb_adjust_room`, shrinking after the Ethernet
/// header, segment size kept) and makes the room again as an IPv4
/// encapsulation (`BPF_F_ADJ_ROOM_ENCAP_L3_IPV4`), which marks the skb
/// `SKB_GSO_IPXIP4`, `encapsulation` set, its inner headers where the
/// TCP super-frame starts: what the kernel's own tunl0 hands down. It
/// writes the outer header back into that room, and sends the frame out
/// of interface `to` ([`redirect_out`]). A NIC with IPIP segmentation
/// cuts it; a veth carries it whole to the other node; otherwise the
/// kernel cuts it (`ipip_gso_segment`), repeating the outer header and
/// fixing its length, ID and checksum per segment. Any helper's failure
/// drops the frame (`TC_ACT_SHOT`; counted by the kernel as the TAP's
/// receive drop).
fn ipip_out(to: i32) -> Vec<Instruction> {
    let mut a = Assembler::default();
    // r6: the skb, for every helper.
    a.op(mov64_reg(6, 1));
    // The outer header to the stack...
    outer_header_and_stack(&mut a);
    call_or_drop(&mut a, SKB_LOAD_BYTES);
    // ... off, leaving the TCP super-frame...
    adjust_room(&mut a, -OUTER_LEN, ADJ_ROOM_FIXED_GSO);
    // ... on again as its IPv4 encapsulation...
    adjust_room(
        &mut a,
        OUTER_LEN,
        ADJ_ROOM_FIXED_GSO | ADJ_ROOM_ENCAP_L3_IPV4,
    );
    // ... and back from the stack (flags 0).
    outer_header_and_stack(&mut a);
    a.op(mov64_imm(5, 0));
    call_or_drop(&mut a, SKB_STORE_BYTES);
    a.op(mov64_reg(1, 6));
    a.ops(&redirect_out(to));
    a.place(Shot::Drop);
    a.op(mov64_imm(0, TC_ACT_SHOT));
    a.op(exit());
    a.finish()
}

/// r1 to r4 for `bpf_skb_load_bytes` or `bpf_skb_store_bytes` of the
/// outer header (behind the Ethernet header) and its place on the stack.
fn outer_header_and_stack(a: &mut Assembler<Shot>) {
    a.op(mov64_reg(1, 6));
    a.op(mov64_imm(2, 14));
    a.op(mov64_reg(3, 10));
    a.op(add64_imm(3, OUTER_AT));
    a.op(mov64_imm(4, OUTER_LEN));
}

/// `bpf_skb_adjust_room(skb, len, BPF_ADJ_ROOM_MAC, flags)`, or drop.
fn adjust_room(a: &mut Assembler<Shot>, len: i32, flags: i32) {
    a.op(mov64_reg(1, 6));
    a.op(mov64_imm(2, len));
    a.op(mov64_imm(3, ADJ_ROOM_MAC));
    a.op(mov64_imm(4, flags));
    call_or_drop(a, SKB_ADJUST_ROOM);
}

/// Calls `helper` and drops the frame if it fails.
fn call_or_drop(a: &mut Assembler<Shot>, helper: i32) {
    a.op(call(helper));
    a.jump(jne32_imm(0, 0, 0), Shot::Drop);
}

/// The IPIP TAP's program on one interface's tcx ingress (what it does:
/// `ipip_out` in this module); detached when dropped.
#[derive(Debug)]
pub struct IngressIpipOut {
    /// Held, never read: closing it detaches the program.
    _link: OwnedFd,
}

impl IngressIpipOut {
    /// Attaches to interface `ifindex` the program that sends the IPIP
    /// super-frames written there out of interface `to`. Fails as
    /// [`IngressRedirect::attach`] does, and before Linux 5.2 (no
    /// encapsulation flags for `bpf_skb_adjust_room`).
    pub fn attach(ifindex: u32, to: u32) -> io::Result<IngressIpipOut> {
        Ok(IngressIpipOut {
            _link: attach_ingress(
                ifindex,
                IPIP_OUT_PROGRAM_NAME,
                &ipip_out(interface_index(to)?),
            )?,
        })
    }
}

/// How many programs interface `ifindex` (of this thread's network
/// namespace) has on its tcx ingress, podswitch's and any other's: what
/// `bpftool net` lists there.
pub fn ingress_programs(ifindex: u32) -> io::Result<u32> {
    let mut opts = libbpf_sys::bpf_prog_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    // SAFETY: `opts` is sized and asks for no id arrays (their pointers
    // are null), so the kernel writes only the count into it. The return
    // is 0 or a negative errno.
    let ret = unsafe {
        libbpf_sys::bpf_prog_query_opts(
            interface_index(ifindex)?,
            libbpf_sys::BPF_TCX_INGRESS,
            &mut opts,
        )
    };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret));
    }
    // SAFETY: both fields of the union are the same `__u32`, which the
    // query wrote.
    Ok(unsafe { opts.__bindgen_anon_1.count })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame of `ether_type` carrying an IPv4 header from
    /// `src` to `dst` (only the addresses matter to the program).
    fn frame(ether_type: u16, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ether_type.to_be_bytes());
        f[14] = 0x45;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f
    }

    /// Loads `code` as a tcx program named `name`, or fails the test
    /// saying why (loading needs root and BPF).
    fn load_for_test(name: &str, code: &[Instruction]) -> OwnedFd {
        load_program(libbpf_sys::BPF_PROG_TYPE_SCHED_CLS, name, code)
            .unwrap_or_else(|e| panic!("loading the program needs root and BPF: {e}"))
    }

    /// The program's verdict on `data`, run by the kernel
    /// (`BPF_PROG_TEST_RUN`, which sets `skb->protocol` from the frame
    /// as a receive would).
    fn verdict(program: &OwnedFd, data: &[u8]) -> i32 {
        run(program, data).0
    }

    /// The program's verdict on `data` and the frame as it left it.
    fn run(program: &OwnedFd, data: &[u8]) -> (i32, Vec<u8>) {
        let mut out = vec![0u8; data.len() + 256];
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as libbpf_sys::size_t,
            data_in: data.as_ptr().cast(),
            data_size_in: data.len() as u32,
            data_out: out.as_mut_ptr().cast(),
            data_size_out: out.len() as u32,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: `program` is a live program descriptor; `opts` is
        // sized, its input points at `data` for its length and its output
        // at `out` for its length, which the kernel writes at most.
        let ret = unsafe { libbpf_sys::bpf_prog_test_run_opts(program.as_raw_fd(), &mut opts) };
        assert_eq!(
            ret,
            0,
            "BPF_PROG_TEST_RUN: {}",
            io::Error::from_raw_os_error(-ret)
        );
        out.truncate(opts.data_size_out as usize);
        (opts.retval as i32, out)
    }

    /// Needs root (loading a BPF program).
    #[test]
    fn the_underlay_program_ends_only_cluster_frames_for_the_pod_subnet() {
        let program = load_for_test(
            TAKEN_PROGRAM_NAME,
            &drop_between(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap(),
            ),
        );
        let ipv4 = 0x0800;
        let cases = [
            (
                "a peer's pod to a pod here",
                frame(ipv4, [10, 244, 2, 2], [10, 244, 1, 2]),
                TCX_DROP,
            ),
            (
                "a peer's pod to the gateway",
                frame(ipv4, [10, 244, 2, 2], [10, 244, 1, 1]),
                TCX_DROP,
            ),
            (
                "outside the cluster to a pod here",
                frame(ipv4, [192, 168, 100, 200], [10, 244, 1, 2]),
                TCX_NEXT,
            ),
            (
                "a peer's pod to another node's pod",
                frame(ipv4, [10, 244, 2, 2], [10, 244, 3, 2]),
                TCX_NEXT,
            ),
            (
                "a peer's pod to the node's address",
                frame(ipv4, [10, 244, 2, 2], [192, 168, 100, 1]),
                TCX_NEXT,
            ),
            (
                "node to node",
                frame(ipv4, [192, 168, 100, 2], [192, 168, 100, 1]),
                TCX_NEXT,
            ),
            (
                "ARP",
                frame(0x0806, [10, 244, 2, 2], [10, 244, 1, 2]),
                TCX_NEXT,
            ),
            (
                "IPv6",
                frame(0x86dd, [10, 244, 2, 2], [10, 244, 1, 2]),
                TCX_NEXT,
            ),
        ];
        for (what, data, want) in &cases {
            assert_eq!(verdict(&program, data), *want, "{what}");
        }
        // (A frame too short for the addresses cannot be run here: the
        // kernel's test run refuses an IPv4 frame shorter than its
        // header. `bpf_skb_load_bytes` checks the bounds, and its error
        // passes the frame on.)
    }

    /// Needs root (loading a BPF program).
    #[test]
    fn the_ipip_underlay_program_ends_only_whole_ipip_packets_for_the_node() {
        let program = load_for_test(
            TAKEN_PROGRAM_NAME,
            &drop_ipip_to(std::net::Ipv4Addr::new(192, 168, 100, 1)),
        );
        // An IPv4 packet of `protocol` from node 2 to `dst`, with the
        // fragment field `fragment`, sent to the MAC of the test run's
        // device (the loopback's, all zero), which makes it this host's.
        let packet = |protocol: u8, dst: [u8; 4], fragment: u16| {
            let mut f = frame(0x0800, [192, 168, 100, 2], dst);
            f[..6].fill(0);
            f[14 + 6..14 + 8].copy_from_slice(&fragment.to_be_bytes());
            f[14 + 9] = protocol;
            f
        };
        let node = [192, 168, 100, 1];
        let mut other_host = packet(4, node, 0);
        other_host[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 9]);
        let cases = [
            ("IPIP to the node", packet(4, node, 0), TCX_DROP),
            ("IPIP, DF set", packet(4, node, 0x4000), TCX_DROP),
            ("IPIP, a first fragment", packet(4, node, 0x2000), TCX_NEXT),
            ("IPIP, a last fragment", packet(4, node, 0x0010), TCX_NEXT),
            (
                "IPIP to another address",
                packet(4, [192, 168, 100, 3], 0),
                TCX_NEXT,
            ),
            ("IPIP to another host's MAC", other_host, TCX_NEXT),
            ("UDP to the node", packet(17, node, 0), TCX_NEXT),
            ("ARP", frame(0x0806, [0; 4], node), TCX_NEXT),
        ];
        for (what, data, want) in &cases {
            assert_eq!(verdict(&program, data), *want, "{what}");
        }
    }

    /// Needs root. The IPIP TAP's program takes the outer header off and
    /// writes it back into the room it makes again: the frame it sends on
    /// is byte for byte the one written (what changes is the skb's GSO
    /// type, which a test run does not show; the daemon's tests see it
    /// work), and it sends it on (`TC_ACT_REDIRECT`). What it cannot make
    /// room in (not IPv4) it drops.
    #[test]
    fn the_ipip_program_sends_the_frame_on_as_it_was_written() {
        let program = load_for_test(IPIP_OUT_PROGRAM_NAME, &ipip_out(1));
        // Ethernet, an outer IPv4 header (protocol 4) from node 1 to node
        // 2, an inner IPv4/TCP header and a payload.
        let mut ipip = frame(0x0800, [192, 168, 100, 1], [192, 168, 100, 2]);
        ipip.resize(14 + 20 + 20 + 20 + 200, 0x5a);
        ipip[14 + 9] = 4;
        let outer_len = (ipip.len() - 14) as u16;
        ipip[14 + 2..14 + 4].copy_from_slice(&outer_len.to_be_bytes());
        ipip[34] = 0x45;
        ipip[34 + 9] = 6;
        ipip[34 + 12..34 + 20].copy_from_slice(&[10, 244, 1, 2, 10, 244, 2, 2]);
        const TC_ACT_REDIRECT: i32 = 7;
        let (verdict, out) = run(&program, &ipip);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, ipip, "the frame as written");
        let (verdict, _) = run(&program, &frame(0x0806, [0; 4], [0; 4]));
        assert_eq!(verdict, TC_ACT_SHOT, "ARP");
    }
}
