//! The underlay port: how tunnel packets and host-gw frames leave and
//! arrive through the node's kernel.
//!
//! - **Send**: every encapsulated packet goes out through one raw socket
//!   (`IPPROTO_RAW`): the outer IPv4 header is the one the engine's
//!   template built — flow-hashed UDP source port, TTL, DF, ECN, as the
//!   kernel's flannel.1 and tunl0 make them — and the kernel routes it.
//!   host-gw frames, which keep the pod addresses and need the peer's
//!   MAC, go out through an AF_PACKET socket on the underlay interface.
//! - **Receive**: VXLAN and IP-in-UDP through a UDP socket bound to the
//!   node's address and the tunnel port (8472 / 8285), so the kernel
//!   neither answers "port unreachable" nor sees the port as free; IPIP
//!   through a raw socket for protocol 4 (which also keeps the kernel from
//!   answering "protocol unreachable"); host-gw frames through the
//!   AF_PACKET socket, filtered in the kernel (classic BPF) to IPv4 for
//!   our pod CIDR from the cluster's pods or the underlay's subnet (a
//!   peer node's own address; but for the node's gateway address, which
//!   the kernel delivers a peer's frames to itself). Which frame leaves which way is the
//!   pipeline's mark ([`PacketBuf::is_encapsulated`]), not the frame's
//!   look: a node's own process bound to the node's address sends UDP
//!   whose source is the outer header's. The kernel's own handling of the
//!   host-gw frames from the cluster's pods then ends after the socket's
//!   tap ([`crate::sys::tcx::IngressTaken`]): it would deliver those for
//!   the node's gateway address a second time.
//! - **IPIP split among workers**: every raw socket of a protocol gets a
//!   copy of each packet, so a raw socket cannot be shared out as a
//!   reuseport group is. An IPIP underlay split among workers reads the
//!   IPIP packets for the node through a packet socket per worker
//!   instead, a fanout group steered by flow, which hashes the packet
//!   IPIP carries ([`crate::sys::flow_steer`]), filtered in the kernel
//!   to the IPIP packets for the node: frames to this host's MAC
//!   (`PACKET_HOST`), IPv4, protocol 4, to the node's address, not
//!   fragments ([`ipip_filter`]). Frames sent to a broadcast or
//!   multicast MAC go on to the kernel and the raw socket. The kernel's own handling of those ends after the
//!   group's tap ([`IngressTaken::attach_ipip`]). A fragment goes on to
//!   the kernel, which reassembles it for the raw socket, kept open on
//!   the first member. Where that program cannot be attached, the port is
//!   not split ([`UnderlayPort::split_refused`]). The packets taken this
//!   way do not cross the node's netfilter hooks (a firewall rule on
//!   protocol 4 in `INPUT` no longer sees them), as those the AF_XDP path
//!   takes do not: the pipeline decapsulates only known peers' packets
//!   (`unknown_peer` counts the rest), what Calico's rule for IPIP
//!   allows.
//!
//! Super-frames (DESIGN.md, "Offloads"):
//!
//! - **Send whole** (VXLAN, Linux 6.17+): an encapsulated VXLAN
//!   super-frame is written whole, with a virtio-net header that describes
//!   the tunnel, to a TAP whose frames a BPF program sends straight out of
//!   the underlay interface ([`super::tunnel_tap`]); the kernel cuts it
//!   as late as it can, or a veth carries it whole to the other node, as
//!   for the kernel's own VXLAN device. Where that TAP cannot be set up
//!   ([`UnderlayPort::tunnel_tap_refused`]), as below.
//! - **Send with GSO**: an encapsulated VXLAN or IP-in-UDP super-frame
//!   leaves as one `sendmsg` on a UDP socket with `UDP_SEGMENT` (two when
//!   it holds more datagrams than 64 KiB): podswitch writes each segment's
//!   headers once (inner checksums complete, so any receiver, a kernel
//!   flannel.1 included, takes them) and the send gathers them with the
//!   payloads straight from the super-frame; the kernel makes the outer
//!   IPv4/UDP headers per datagram, or carries the whole burst across a
//!   veth as one skb. The outer source port is the socket's. For VXLAN: a
//!   pool of `SEGMENT_SENDERS` (16) sockets bound to ports the kernel
//!   picks, one chosen per flow by the flow hash, and every other packet of
//!   the flow (sent through the raw socket) gets the same port, so one
//!   flow keeps one outer 5-tuple (what ECMP and RSS need). For IP-in-UDP:
//!   the receiving socket, so the source port stays 8285, as flanneld
//!   sends. Without `UDP_SEGMENT` (Linux before 4.18) the raw socket
//!   sends each segment, cut in userspace.
//! - **IPIP super-frames** have no UDP to segment and no virtio GSO type:
//!   they leave whole through the IPIP TAP, whose program marks them as
//!   the kernel's own IPIP device does ([`super::tunnel_tap`]); where it
//!   cannot be set up they are cut in userspace and go through the raw
//!   socket.
//! - **Small datagrams in batches** (VXLAN and IP-in-UDP): consecutive
//!   small tunnel packets of one flow, alike in all but their payload
//!   ([`batch_len`]: one outer destination, source port, TOS and TTL, one
//!   length, the last maybe shorter), leave as one `UDP_SEGMENT` write on
//!   the socket whose port they carry, not one raw send each. The kernel
//!   then makes one skb for the whole batch and cuts it as late as it can:
//!   at the device that cannot carry it, or, across a veth, at the
//!   receiving socket (a podswitch node's `UDP_GRO` socket takes it whole;
//!   a kernel flannel.1's gets the datagrams one by one). Measured on
//!   this machine, 32 datagrams of 110 bytes cost the sender 2.2-2.5 µs
//!   each as raw sends and 0.09-0.15 µs each as one such write, the
//!   receiving node's stack included (docs/benchmarks.md, "Small
//!   datagrams of a flow in one write"). What the pipeline sends keeps
//!   its order: a batch goes out only after the raw sends before it.
//! - **Receive with GRO**: the UDP socket has `UDP_GRO` on and buffers of
//!   64 KiB. A peer's `UDP_SEGMENT` burst arrives as one super-datagram
//!   with its segment size; when its datagrams are in-order segments of one
//!   TCP flow they are merged into one inner super-frame
//!   ([`coalesce_datagrams`]), which reaches the pod as one skb. Otherwise
//!   each datagram goes on as it came. A kernel node's GSO datagram
//!   (whole, its inner checksum partial) is recognised by the pipeline.
//!   One around a pod's `UDP_SEGMENT` write comes with the size of the
//!   pod's datagrams, which the socket reports as it would a burst's
//!   ([`is_one_tunnel_datagram`] tells the two apart): the pipeline
//!   carries it as a UDP super-datagram of that size
//!   ([`crate::offload::recognise_offloads`]), so the pod receives the
//!   datagrams its peer wrote.
//!
//! **AF_XDP receive** (`UnderlayOptions::af_xdp`, Linux 5.9+): an XDP
//! program on the underlay interface ([`crate::sys::xdp_steer`]) steers
//! the tunnel's packets for the node, except those carrying TCP, into an
//! AF_XDP socket per receive queue (generic XDP on a veth, native
//! elsewhere); they reach the pipeline as the wire
//! frames they are, without crossing the kernel's IP and UDP stack.
//! Everything else still reaches the kernel, and the sockets above stay
//! open for what the program passes: TCP (as super-datagrams, which GRO
//! makes where native XDP took GSO off a veth's peer), fragments, frames
//! with IP options, other receive queues. Where the program cannot be
//! attached the port keeps the sockets alone and says why
//! ([`UnderlayPort::xdp_refused`]).
//!
//! A socket hands over the payload, not the outer headers; the port
//! rebuilds them from what the kernel reports (source address and port,
//! TOS with its ECN bits, TTL) so that the pipeline decapsulates, and
//! `trace`/`capture` show, the same frame a wire capture would. The
//! rebuilt UDP header carries checksum 0: the kernel already verified it.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use podswitch_encap::ethernet::{EtherType, EthernetRepr, HEADER_LEN as ETH};
use podswitch_encap::ipv4::{Ipv4Repr, HEADER_LEN as IPV4};
use podswitch_encap::{IpProtocol, MacAddr};

use super::af_packet::{send_counted_run, PacketRx, TxScratch};
use super::af_xdp::XdpRx;
use super::tunnel_tap::TunnelTap;
use super::{
    finish_offloads, give_back, has_offloads, received_frame, stage, stage_large, Counter,
    KernelDrops, Steered,
};
use crate::config::Backend;
use crate::drop::DropReason;
use crate::fib::Prefix;
use crate::offload::{
    coalesce_datagrams, is_one_tunnel_datagram, settle_outer_udp_checksum, udp_datagram_view,
    Segmenter, MAX_UDP_PAYLOAD, MAX_UDP_SEGMENTS,
};
use crate::packet::{Offload, PacketBuf, PacketPool, PartialChecksum, BATCH_SIZE, HEADROOM};
use crate::port::{DeviceCounter, Port, PortId, PortKind};
use crate::stats::{OffloadEvent, Stats};
use crate::sys::flow_steer::{FlowSteering, Group, MemberProgress, DEFAULT_GAP};
use crate::sys::inet::{InetSocket, IPPROTO_IPIP};
use crate::sys::mmsg::{Received, RecvBuffers, SendBuffers, MAX_PARTS};
use crate::sys::netdev;
use crate::sys::packet_socket::{BpfInstruction, PacketOptions, PacketSocket};
use crate::sys::tcx::IngressTaken;
use crate::sys::xdp::{Frames, XdpMode, XdpSocket};
use crate::sys::xdp_steer::{inner_protocol, Steer, SteerRules, TunnelSteering};

const UDP: usize = 8;
/// VXLAN header and inner Ethernet header: where a VXLAN datagram's inner
/// IPv4 packet starts.
const VXLAN_INNER_L3: usize = 8 + ETH;
/// UDP sockets sending super-frames, one per outer source port.
const SEGMENT_SENDERS: usize = 16;
/// Most datagrams one `UDP_SEGMENT` send may carry.
const MAX_SEGMENTS: usize = MAX_UDP_SEGMENTS;
/// Fewest datagrams sent as one `UDP_SEGMENT` write rather than raw.
const MIN_BATCH: usize = 2;
/// In an IPIP port split among workers, under load, one read in this
/// many also reads the raw socket (reassembled fragments).
const RAW_READ_EVERY: u8 = 8;

/// What the underlay port needs to know.
#[derive(Debug, Clone)]
pub struct UnderlayOptions {
    /// The underlay interface.
    pub interface: String,
    /// The node's address on it.
    pub local_ip: Ipv4Addr,
    /// The backend, which decides the sockets.
    pub backend: Backend,
    /// VXLAN port.
    pub vxlan_port: u16,
    /// IP-in-UDP port.
    pub udp_port: u16,
    /// The node's pod CIDR (host-gw frames to receive).
    pub pod_cidr: Prefix,
    /// All pods of the cluster: the sources of the host-gw frames whose
    /// handling by the node's kernel ends once podswitch has them.
    pub cluster_cidr: Prefix,
    /// The node's subnet on the underlay, where its host-gw peers are: a
    /// peer's own address is a source of host-gw frames too.
    pub underlay_subnet: Prefix,
    /// The node's own address in its pod CIDR (the host port's,
    /// 10.244.X.1): a host-gw peer's own frames to it are the kernel's.
    pub gateway: Ipv4Addr,
    /// Receive tunnel packets through an AF_XDP socket (see
    /// [`crate::sys::xdp_steer`]); where that cannot be set up, the port
    /// receives through its sockets and [`UnderlayPort::xdp_refused`]
    /// says why.
    pub af_xdp: bool,
    /// The TAP through which VXLAN super-frames leave whole
    /// (`kernel_port/tunnel_tap.rs`); `None`: in `UDP_SEGMENT` bursts.
    pub tunnel_tap: Option<String>,
    /// Whether a flow's small datagrams leave the host-gw socket as one
    /// super-datagram ([`crate::offload::coalesce_udp_runs`]).
    pub udp_batches: bool,
    /// How many workers the port is to be split among ([`Port::fan_out`]):
    /// above 1, an underlay receiving through a UDP socket (VXLAN,
    /// IP-in-UDP, directrouting) opens that many, in a reuseport group
    /// steered by flow ([`InetSocket::udp_bound_by_flow`]), and one
    /// receiving host-gw frames through a packet socket (host-gw,
    /// directrouting) opens that many in a fanout group steered by flow
    /// ([`PacketSocket::fan_out_by_flow`]); an IPIP underlay reads its
    /// IPIP packets through that many packet sockets in a fanout group
    /// steered by flow (see the module's documentation). AF_XDP is not
    /// split yet and keeps one owner.
    pub receivers: usize,
}

impl UnderlayOptions {
    /// True if the port these options open is to split among
    /// [`receivers`](Self::receivers) workers: more than one asked for,
    /// and an underlay that receives through its sockets (not AF_XDP).
    /// An IPIP underlay may still refuse
    /// ([`UnderlayPort::split_refused`]).
    pub fn splits(&self) -> bool {
        self.receivers > 1 && !self.af_xdp
    }
}

/// The sockets of one more member of a split underlay, until
/// [`Port::fan_out`] makes a port of them: its UDP socket of the
/// reuseport group, its packet socket of the host-gw fanout group, or
/// its packet socket of the IPIP fanout group (whichever the backend
/// has), each with its report to its group's steering program.
#[derive(Debug)]
struct SpareMember {
    udp: Option<(InetSocket, MemberProgress)>,
    direct: Option<(PacketSocket, MemberProgress)>,
    ipip: Option<(PacketSocket, MemberProgress)>,
}

/// A member's socket and its report to the group's steering program
/// (if the port is split), taken apart.
fn steered<S>(member: Option<(S, MemberProgress)>) -> (Option<S>, Option<Steered>) {
    match member {
        Some((sock, progress)) => (Some(sock), Some(Steered::new(progress))),
        None => (None, None),
    }
}

/// The steering program for a group of `receivers` sockets, if the
/// underlay is split.
fn group_steering(options: &UnderlayOptions, group: Group) -> io::Result<Option<FlowSteering>> {
    match options.splits() {
        true => FlowSteering::new(group, options.receivers, DEFAULT_GAP).map(Some),
        false => Ok(None),
    }
}

/// The AF_XDP receive path: the steering program and the sockets it
/// redirects into, one per receive queue. The program is declared first,
/// so it is detached before the sockets close.
#[derive(Debug)]
struct XdpReceive {
    steering: TunnelSteering,
    rx: Vec<XdpRx>,
    /// The interface whose GRO was turned on for the TCP path, to turn
    /// off again when the port closes.
    gro_turned_on: Option<String>,
}

impl Drop for XdpReceive {
    fn drop(&mut self) {
        if let Some(interface) = &self.gro_turned_on {
            let _ = netdev::set_gro(interface, false);
        }
    }
}

/// Receive queues read through AF_XDP, at most: the steering program's
/// socket map has an entry for each. Tunnel packets arriving on a queue
/// beyond these reach the kernel and the tunnel socket.
const XDP_MAX_QUEUES: u32 = 64;
/// The AF_XDP underlay's receive frames, shared out between its queues'
/// sockets (receive only: the underlay sends through its sockets). 8,192
/// (16 MiB) so that a burst arriving while the worker is off its CPU
/// waits in a ring, as it would in a UDP socket's receive buffer, instead
/// of being dropped: with 1,024, two generators across nodes lost four
/// frames in five (`rx_queue_full`).
const XDP_UNDERLAY_FRAMES: u32 = 8192;
/// Receive frames of one queue's socket, at least.
const XDP_MIN_QUEUE_FRAMES: u32 = 2048;

impl XdpReceive {
    fn open(options: &UnderlayOptions, ifindex: u32, mac: MacAddr) -> io::Result<XdpReceive> {
        let steer = match options.backend {
            Backend::Vxlan | Backend::DirectRouting => vec![Steer::Udp {
                port: options.vxlan_port,
                inner_protocol: inner_protocol::VXLAN,
            }],
            Backend::Udp => vec![Steer::Udp {
                port: options.udp_port,
                inner_protocol: inner_protocol::IP_IN_UDP,
            }],
            Backend::Ipip => vec![Steer::Ipip],
            Backend::HostGw => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "host-gw carries no tunnel packets to steer",
                ))
            }
        };
        let rules = SteerRules {
            mac: mac.0,
            local_ip: options.local_ip,
            steer,
        };
        // Native XDP on a veth takes GSO off its peer (`veth_xdp_set`,
        // drivers/net/veth.c): every TCP super-frame a peer sends would be
        // segmented before it, and merged again by GRO after, which cost
        // more than AF_XDP saved (docs/benchmarks.md, "AF_XDP underlay").
        // Generic XDP leaves the peer alone, so a veth gets generic; any
        // other driver native where it takes it.
        let native = netdev::driver(&options.interface).map_or(true, |d| d != "veth");
        let queues = netdev::rx_queues(&options.interface)
            .unwrap_or(1)
            .clamp(1, XDP_MAX_QUEUES);
        let steering = TunnelSteering::attach(ifindex, &rules, queues, native)?;
        let frames = Frames {
            rx: (XDP_UNDERLAY_FRAMES / queues).max(XDP_MIN_QUEUE_FRAMES),
            tx: 0,
        };
        let mut rx = Vec::with_capacity(queues as usize);
        for queue in 0..queues {
            let socket =
                XdpSocket::open_for_program(&options.interface, queue, steering.mode(), frames)?;
            steering.insert(queue, socket.fd())?;
            rx.push(XdpRx::new(socket));
        }
        // With native XDP the TCP packets the program passes reach the
        // tunnel socket as super-datagrams only through GRO: where it is
        // off (a veth's default) it is turned on for as long as the port
        // lives; a daemon killed with SIGKILL leaves it on, which is every
        // NIC's default.
        let gro_turned_on = match (steering.mode(), netdev::gro(&options.interface)) {
            (XdpMode::Native, Ok(false)) => {
                netdev::set_gro(&options.interface, true)?;
                Some(options.interface.clone())
            }
            _ => None,
        };
        Ok(XdpReceive {
            steering,
            rx,
            gro_turned_on,
        })
    }
}

/// The node's underlay.
#[derive(Debug)]
pub struct UnderlayPort {
    name: String,
    counter: Counter,
    local_ip: Ipv4Addr,
    local_mac: MacAddr,
    /// VXLAN / IP-in-UDP receiver and its port.
    udp: Option<(InetSocket, u16)>,
    ipip: Option<InetSocket>,
    /// IPIP packets taken by a packet socket of a fanout group, in a port
    /// split among workers (the raw socket then gets only what the kernel
    /// reassembled from fragments).
    ipip_packets: Option<PacketRx>,
    /// Why an IPIP port asked to split among workers did not.
    split_refused: Option<String>,
    /// Reads since the raw socket was last read, in a split IPIP port.
    raw_reads_skipped: u8,
    /// What the kernel dropped for the UDP and IPIP sockets.
    udp_drops: KernelDrops,
    ipip_drops: KernelDrops,
    sender: Option<InetSocket>,
    direct: Option<PacketRx>,
    meta: Vec<Received>,
    staging: Vec<PacketBuf>,
    /// Super-frame buffers behind the staged ones: a kernel node sends
    /// whole GSO datagrams of up to 64 KiB, which a UDP socket hands over
    /// unsegmented.
    staging_large: Vec<Option<PacketBuf>>,
    tunnel_out: Vec<PacketBuf>,
    direct_out: Vec<PacketBuf>,
    /// Tunnel packets waiting for the raw socket's batched send.
    tunnel_waiting: Vec<PacketBuf>,
    finish: Vec<PacketBuf>,
    direct_tx: TxScratch,
    /// `UDP_SEGMENT` senders and their ports (VXLAN only: IP-in-UDP
    /// sends from its receiving socket, whose port flanneld sends from).
    segment_senders: Vec<(InetSocket, u16)>,
    /// Super-frames leave as `UDP_SEGMENT` bursts (a UDP tunnel, on a
    /// kernel that has it).
    segmenting: bool,
    /// Small datagrams of one flow leave in batches, one write each
    /// (until the kernel refuses one for good: no `UDP_SEGMENT`, a route
    /// through IPsec, a TAP without `GSO_UDP_L4`).
    batching: bool,
    /// VXLAN super-frames leave whole through this TAP, if set up; the
    /// members of a split port all write to it (each write is one frame).
    tunnel_tap: Option<Arc<TunnelTap>>,
    /// Why the TAP asked for is not set up.
    tunnel_tap_refused: Option<String>,
    /// Where the headers of one send's datagrams are written (a segment's
    /// headers are at most 256 bytes: IPv4 and TCP options included).
    segment_scratch: Vec<u8>,
    /// Where the inner IPv4 packet of a received datagram starts.
    inner_l3: usize,
    /// Tunnel packets received through AF_XDP, if asked for and set up.
    xdp: Option<XdpReceive>,
    /// Why AF_XDP receive was asked for and not set up.
    xdp_refused: Option<String>,
    /// What ends the node kernel's own handling of the host-gw frames the
    /// packet socket has taken, or why it could not be attached; or of the
    /// IPIP packets a split IPIP port's packet sockets take (which is not
    /// split where it cannot be attached). `None` without either, and in
    /// the other members of a split port, which the first member's covers.
    kernel_stop: Option<io::Result<IngressTaken>>,
    /// A member of a port split among workers reports its UDP reads to
    /// the reuseport group's steering program, and its host-gw reads to
    /// the fanout group's.
    udp_steered: Option<Steered>,
    direct_steered: Option<Steered>,
    ipip_steered: Option<Steered>,
    /// The other members' sockets, until [`Port::fan_out`] makes them
    /// ports.
    spare_members: Vec<SpareMember>,
    /// The last UDP receive found the socket empty; the last IPIP one.
    udp_emptied: bool,
    ipip_emptied: bool,
}

/// Who sends host-gw frames: the cluster's pods, and the peer nodes
/// themselves, from the underlay's subnet.
#[derive(Debug, Clone, Copy)]
struct HostGwSources {
    pods: Prefix,
    peers: Prefix,
}

/// Classic BPF: accept untagged IPv4 frames to `destinations` from the
/// `sources`' pods, or from their peers but to `gateway`; reject the rest
/// (what `tcpdump -dd 'ip and dst net C and (src net A or (src net B and
/// not dst host G))'` gives).
fn host_gw_filter(
    sources: HostGwSources,
    destinations: Prefix,
    gateway: Ipv4Addr,
) -> [BpfInstruction; 15] {
    let ins = BpfInstruction::new;
    let mask = |p: Prefix| podswitch_addr::mask(p.prefix_len());
    let net = |p: Prefix| u32::from(p.addr());
    let HostGwSources { pods, peers } = sources;
    // Jumps count the instructions after the jump's own; 14 rejects.
    [
        ins(0x28, 0, 0, 12),                 // 0: ldh [12]        EtherType
        ins(0x15, 0, 12, 0x0800),            // 1: jeq #IPv4, 2, 14
        ins(0x20, 0, 0, 26),                 // 2: ld [26]         IPv4 source
        ins(0x54, 0, 0, mask(pods)),         // 3: and #mask
        ins(0x15, 5, 0, net(pods)),          // 4: jeq #net, 10, 5
        ins(0x20, 0, 0, 26),                 // 5: ld [26]
        ins(0x54, 0, 0, mask(peers)),        // 6: and #mask
        ins(0x15, 0, 6, net(peers)),         // 7: jeq #net, 8, 14
        ins(0x20, 0, 0, 30),                 // 8: ld [30]         IPv4 destination
        ins(0x15, 4, 0, u32::from(gateway)), // 9: jeq #gateway, 14, 10
        ins(0x20, 0, 0, 30),                 // 10: ld [30]
        ins(0x54, 0, 0, mask(destinations)), // 11: and #mask
        ins(0x15, 0, 1, net(destinations)),  // 12: jeq #net, 13, 14
        ins(0x06, 0, 0, 0x0004_0000),        // 13: accept (up to 256 KiB)
        ins(0x06, 0, 0, 0),                  // 14: reject
    ]
}

/// Classic BPF: accept whole IPIP packets for `local`: frames to this
/// host's MAC (`PACKET_HOST`), IPv4, protocol 4, to `local`, not a
/// fragment (what [`IngressTaken::attach_ipip`] ends, the same
/// condition); reject the rest.
fn ipip_filter(local: Ipv4Addr) -> [BpfInstruction; 12] {
    let ins = BpfInstruction::new;
    // `SKF_AD_OFF + SKF_AD_PKTTYPE`: an ancillary load of `skb->pkt_type`
    // (what `tcpdump -dd inbound` loads).
    const PKTTYPE: u32 = 0xffff_f004;
    // Jumps count the instructions after the jump's own; 11 rejects.
    [
        ins(0x28, 0, 0, PKTTYPE),          // 0: ldh #pkttype
        ins(0x15, 0, 9, 0),                // 1: jeq #PACKET_HOST, 2, 11
        ins(0x28, 0, 0, 12),               // 2: ldh [12]        EtherType
        ins(0x15, 0, 7, 0x0800),           // 3: jeq #IPv4, 4, 11
        ins(0x30, 0, 0, 23),               // 4: ldb [23]        protocol
        ins(0x15, 0, 5, 4),                // 5: jeq #IPIP, 6, 11
        ins(0x20, 0, 0, 30),               // 6: ld [30]         destination
        ins(0x15, 0, 3, u32::from(local)), // 7: jeq #local, 8, 11
        ins(0x28, 0, 0, 20),               // 8: ldh [20]        flags, fragment offset
        ins(0x45, 1, 0, 0x3fff),           // 9: jset #MF|offset, 11, 10
        ins(0x06, 0, 0, 0x0004_0000),      // 10: accept (up to 256 KiB)
        ins(0x06, 0, 0, 0),                // 11: reject
    ]
}

/// The IPIP fanout group of a port split among `options.receivers`
/// workers (see the module's documentation), each member's socket with
/// its report to the group's steering program, and what ends the
/// kernel's own handling of the packets it takes. In this order, so that
/// no packet reaches neither: the group, steered by flow, then the
/// program.
fn ipip_fanout(
    options: &UnderlayOptions,
    ifindex: u32,
) -> io::Result<(Vec<(PacketSocket, MemberProgress)>, IngressTaken)> {
    let steering = FlowSteering::new(Group::Fanout, options.receivers, DEFAULT_GAP)?;
    let socket_options = PacketOptions {
        vnet_hdr: false,
        rcvbuf: 8 << 20,
        ..PacketOptions::default()
    };
    let filter = ipip_filter(options.local_ip);
    let members = steered_fanout(ifindex, socket_options, &filter, &steering)?;
    let stop = IngressTaken::attach_ipip(ifindex, options.local_ip)?;
    Ok((members, stop))
}

/// A fanout group of `steering`'s members on interface `ifindex`, each
/// socket opened with `socket_options` and taking what `filter` accepts,
/// each with its report to the group's steering program (member k's
/// k-th).
fn steered_fanout(
    ifindex: u32,
    socket_options: PacketOptions,
    filter: &[BpfInstruction],
    steering: &FlowSteering,
) -> io::Result<Vec<(PacketSocket, MemberProgress)>> {
    let first = PacketSocket::open_filtered(ifindex, socket_options, Some(filter))?;
    let others = first.fan_out_by_flow(steering.members() - 1, socket_options, steering)?;
    Ok(std::iter::once(first)
        .chain(others)
        .zip(0..)
        .map(|(sock, member)| (sock, steering.progress(member)))
        .collect())
}

impl UnderlayPort {
    /// Opens the sockets the backend needs.
    pub fn open(
        options: &UnderlayOptions,
        id: PortId,
        stats: Arc<Stats>,
    ) -> io::Result<UnderlayPort> {
        let local_mac = MacAddr(netdev::mac(&options.interface)?);
        let ifindex = netdev::ifindex(&options.interface)?;
        let tunnel_port = match options.backend {
            Backend::Vxlan | Backend::DirectRouting => Some(options.vxlan_port),
            Backend::Udp => Some(options.udp_port),
            Backend::Ipip | Backend::HostGw => None,
        };
        let mut udp_members = Vec::new();
        let mut udp_steered = None;
        let udp = match tunnel_port {
            Some(port) => {
                let addr = SocketAddrV4::new(options.local_ip, port);
                let steering = group_steering(options, Group::Reuseport)?;
                let mut group = match &steering {
                    Some(steering) => InetSocket::udp_bound_by_flow(addr, steering)?,
                    None => vec![InetSocket::udp_bound(addr)?],
                };
                for sock in &group {
                    // Without UDP_GRO (before Linux 5.0) datagrams come one by one.
                    let _ = sock.enable_gro();
                }
                if let Some(steering) = &steering {
                    udp_steered = Some(Steered::new(steering.progress(0)));
                    udp_members = group
                        .drain(1..)
                        .zip(1..)
                        .map(|(sock, member)| (sock, steering.progress(member)))
                        .collect();
                }
                Some((group.remove(0), port))
            }
            None => None,
        };
        let vxlan = matches!(options.backend, Backend::Vxlan | Backend::DirectRouting);
        let tap = match (&options.tunnel_tap, options.backend) {
            (Some(name), _) if vxlan => Some(TunnelTap::open(name, ifindex)),
            (Some(name), Backend::Ipip) => Some(TunnelTap::open_ipip(name, ifindex)),
            _ => None,
        };
        let (tunnel_tap, tunnel_tap_refused) = match tap {
            Some(Ok(tap)) => (Some(Arc::new(tap)), None),
            Some(Err(e)) => (None, Some(e.to_string())),
            None => (None, None),
        };
        // Without UDP_SEGMENT the raw socket sends everything. With the
        // TAP no burst is sent, and every packet of a flow keeps the
        // flow-hashed source port the encapsulation gave it.
        let segment_senders: Vec<_> = if vxlan && tunnel_tap.is_none() {
            (0..SEGMENT_SENDERS)
                .map_while(|_| InetSocket::udp_segment_sender(options.local_ip).ok())
                .collect()
        } else {
            Vec::new()
        };
        let segmenting = match options.backend {
            Backend::Udp => true,
            _ => !segment_senders.is_empty(),
        };
        let inner_l3 = match options.backend {
            Backend::Udp => 0,
            _ => VXLAN_INNER_L3,
        };
        // Split: the packet sockets and the program that ends the
        // kernel's handling of what they take come first, so that the
        // raw socket (for reassembled fragments) never takes a packet
        // they took too.
        let (ipip_group, ipip_stop, split_refused) = match (options.backend, options.splits()) {
            (Backend::Ipip, true) => match ipip_fanout(options, ifindex) {
                Ok((group, stop)) => (Some(group), Some(stop), None),
                Err(e) => (None, None, Some(e.to_string())),
            },
            _ => (None, None, None),
        };
        let ipip = match options.backend {
            Backend::Ipip => Some(InetSocket::raw_receiver(IPPROTO_IPIP, options.local_ip)?),
            _ => None,
        };
        let mut ipip_members = ipip_group.unwrap_or_default().into_iter();
        let (ipip_packets, ipip_steered) = steered(ipip_members.next());
        let ipip_packets = ipip_packets.map(PacketRx::whole_frames);
        let sender = match options.backend {
            Backend::HostGw => None,
            _ => Some(InetSocket::raw_sender()?),
        };
        let mut direct_members = Vec::new();
        let mut direct_steered = None;
        let direct = match options.backend {
            Backend::HostGw | Backend::DirectRouting => {
                // Every protocol, so that the socket is a tap, whose copy
                // the kernel hands over before its tcx ingress hook
                // (`__netif_receive_skb_core`), where `IngressTaken`
                // ends the kernel's own (a socket bound to IPv4 alone
                // gets its copy after the hook). The filter keeps to IPv4.
                // What it takes is what a host-gw peer sends: from its
                // pods, or from the peer itself (a peer is on the
                // underlay's subnet, whose MAC it is sent to). A reply
                // to a pod that kept its address, from outside both, is
                // the kernel's (it sends it on to the host port), and
                // taken here it would only be counted as dropped; so is
                // a peer's own frame to the gateway address, which the
                // kernel delivers itself (`on_underlay_direct`).
                let socket_options = PacketOptions::default();
                let sources = HostGwSources {
                    pods: options.cluster_cidr,
                    peers: options.underlay_subnet,
                };
                let filter = host_gw_filter(sources, options.pod_cidr, options.gateway);
                let mut group = match group_steering(options, Group::Fanout)? {
                    Some(steering) => steered_fanout(ifindex, socket_options, &filter, &steering)?,
                    None => Vec::new(),
                }
                .into_iter();
                let (first, first_steered) = steered(group.next());
                direct_steered = first_steered;
                direct_members = group.collect();
                let sock = match first {
                    Some(sock) => sock,
                    None => PacketSocket::open_filtered(ifindex, socket_options, Some(&filter))?,
                };
                Some(PacketRx::new(sock, options.udp_batches))
            }
            _ => None,
        };
        let spare_members = {
            let mut udp = udp_members.into_iter();
            let mut direct = direct_members.into_iter();
            let mut ipip = ipip_members;
            std::iter::from_fn(|| match (udp.next(), direct.next(), ipip.next()) {
                (None, None, None) => None,
                (udp, direct, ipip) => Some(SpareMember { udp, direct, ipip }),
            })
            .collect()
        };
        let (xdp, xdp_refused) = if options.af_xdp {
            match XdpReceive::open(options, ifindex, local_mac) {
                Ok(x) => (Some(x), None),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        // After every member is bound, so that no frame reaches neither.
        let kernel_stop = direct
            .is_some()
            .then(|| IngressTaken::attach(ifindex, options.cluster_cidr, options.pod_cidr))
            .or(ipip_stop.map(Ok));
        Ok(UnderlayPort {
            udp,
            ipip,
            ipip_packets,
            ipip_steered,
            split_refused,
            sender,
            direct,
            kernel_stop,
            segment_senders,
            tunnel_tap,
            tunnel_tap_refused,
            xdp,
            xdp_refused,
            udp_steered,
            direct_steered,
            spare_members,
            ..UnderlayPort::without_sockets(
                options.interface.clone(),
                Counter { stats, id },
                (options.local_ip, local_mac),
                inner_l3,
                segmenting,
            )
        })
    }

    /// A port named `name` that counts with `counter`, whose node has
    /// the address and MAC `local`, with its buffers and no socket yet.
    fn without_sockets(
        name: String,
        counter: Counter,
        local: (Ipv4Addr, MacAddr),
        inner_l3: usize,
        segmenting: bool,
    ) -> UnderlayPort {
        UnderlayPort {
            name,
            counter,
            local_ip: local.0,
            local_mac: local.1,
            udp: None,
            ipip: None,
            ipip_packets: None,
            split_refused: None,
            raw_reads_skipped: 0,
            udp_drops: KernelDrops::socket(),
            ipip_drops: KernelDrops::socket(),
            sender: None,
            direct: None,
            meta: vec![Received::default(); BATCH_SIZE],
            staging: Vec::with_capacity(BATCH_SIZE),
            staging_large: Vec::with_capacity(BATCH_SIZE),
            tunnel_out: Vec::with_capacity(BATCH_SIZE),
            direct_out: Vec::with_capacity(BATCH_SIZE),
            tunnel_waiting: Vec::with_capacity(BATCH_SIZE),
            finish: Vec::with_capacity(BATCH_SIZE),
            direct_tx: TxScratch::default(),
            segment_senders: Vec::new(),
            segmenting,
            batching: true,
            tunnel_tap: None,
            tunnel_tap_refused: None,
            segment_scratch: vec![0; MAX_SEGMENTS * 256],
            inner_l3,
            xdp: None,
            xdp_refused: None,
            kernel_stop: None,
            udp_steered: None,
            direct_steered: None,
            ipip_steered: None,
            spare_members: Vec::new(),
            udp_emptied: false,
            ipip_emptied: false,
        }
    }

    /// How the AF_XDP receive path runs, if it does.
    pub fn xdp_mode(&self) -> Option<XdpMode> {
        self.xdp.as_ref().map(|x| x.steering.mode())
    }

    /// Why the AF_XDP receive path asked for is not running.
    pub fn xdp_refused(&self) -> Option<&str> {
        self.xdp_refused.as_deref()
    }

    /// Why the node's kernel still handles the host-gw frames this port
    /// takes (a kernel before 6.6, BPF not allowed), if it does. Then a
    /// datagram from another node's pod to the node's gateway address
    /// reaches the node's socket twice, once through the kernel and once
    /// through podswitch's host port.
    pub fn kernel_stop_error(&self) -> Option<&io::Error> {
        super::kernel_stop_failure(&self.kernel_stop)
    }

    /// Why an IPIP underlay asked to split among workers is not: its
    /// packet sockets, their steering program, or the program that ends
    /// the kernel's handling of their packets could not be set up (before
    /// Linux 6.6 for the last, or without the right to load BPF). One
    /// worker then reads every IPIP packet, through the raw socket.
    pub fn split_refused(&self) -> Option<&str> {
        self.split_refused.as_deref()
    }

    /// The TAP VXLAN super-frames leave through whole, if set up.
    pub fn tunnel_tap(&self) -> bool {
        self.tunnel_tap.is_some()
    }

    /// Why the TAP asked for is not set up (VXLAN super-frames then leave
    /// in `UDP_SEGMENT` bursts).
    pub fn tunnel_tap_refused(&self) -> Option<&str> {
        self.tunnel_tap_refused.as_deref()
    }

    /// Tunnel frames from the AF_XDP socket: whole frames as on the wire,
    /// which the pipeline checks as it checks every underlay frame (outer
    /// IPv4 header checksum, UDP length and checksum).
    fn recv_xdp(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> usize {
        let Some(xdp) = self.xdp.as_mut() else {
            return 0;
        };
        let inner_l3 = ETH + IPV4 + UDP + self.inner_l3;
        let mut read = 0;
        for rx in &mut xdp.rx {
            // What a UDP socket would have taken, this path takes.
            read += rx.recv(&self.counter, pool, batch, |frame| {
                settle_outer_udp_checksum(frame, ETH, inner_l3);
            });
        }
        read
    }

    /// Receives datagrams from `sock`, each at `reserve` bytes into its
    /// buffer, and rebuilds the headers in front with `rebuild`.
    fn recv_socket(
        &mut self,
        which: Socket,
        pool: &mut PacketPool,
        batch: &mut Vec<PacketBuf>,
    ) -> io::Result<usize> {
        let reserve = match which {
            Socket::Udp => ETH + IPV4 + UDP,
            Socket::Ipip => ETH,
        };
        let sock = match which {
            Socket::Udp => self.udp.as_ref().map(|(s, _)| s),
            Socket::Ipip => self.ipip.as_ref(),
        };
        // A backend has one of the two sockets: no buffers for the other.
        let Some(sock) = sock else { return Ok(0) };
        let want = BATCH_SIZE.saturating_sub(batch.len());
        stage(pool, &mut self.staging, want, self.counter.id);
        stage_large(
            pool,
            &mut self.staging_large,
            self.staging.len(),
            self.counter.id,
        );
        let small_area = pool.buf_size() - HEADROOM - reserve;
        let asked = self.staging.len();
        let mut bufs = AreaBuffers {
            bufs: &mut self.staging,
            large: &mut self.staging_large,
            reserve,
            small_area,
        };
        let got = sock.recv_batch(&mut bufs, &mut self.meta);
        let got = match got {
            Ok(n) => n,
            Err(e) => {
                give_back(pool, &mut self.staging, &mut self.staging_large);
                return Err(e);
            }
        };
        let emptied = got < asked;
        let (kernel_drops, emptied_flag) = match which {
            Socket::Udp => (&mut self.udp_drops, &mut self.udp_emptied),
            Socket::Ipip => (&mut self.ipip_drops, &mut self.ipip_emptied),
        };
        *emptied_flag = emptied;
        kernel_drops.after_socket_recv(&self.counter, got, want, emptied, sock.as_fd());
        let tunnel_port = self.udp.as_ref().map_or(0, |(_, p)| *p);
        let mut staging = std::mem::take(&mut self.staging);
        let mut staging_large = std::mem::take(&mut self.staging_large);
        for (i, small) in staging.drain(..got).enumerate() {
            let meta = self.meta[i];
            let large = staging_large.get_mut(i).and_then(Option::take);
            let Some(mut buf) = received_frame(
                &self.counter,
                pool,
                small,
                large,
                reserve,
                meta.len,
                meta.truncated,
            ) else {
                continue;
            };
            if meta.control_truncated {
                self.counter.drop(DropReason::RxControlTruncated);
                pool.free(buf);
                continue;
            }
            let len = meta.len;
            let segment = meta
                .segment_size
                .filter(|&s| which == Socket::Udp && len > usize::from(s));
            // A kernel VXLAN device's whole datagram around a pod's
            // `UDP_SEGMENT` write comes with the inner segment size.
            let burst = segment.filter(|_| {
                !is_one_tunnel_datagram(&buf.frame()[reserve..reserve + len], self.inner_l3)
            });
            if let Some(segment) = burst {
                let segment = usize::from(segment);
                self.receive_burst(buf, reserve, len, segment, &meta, tunnel_port, pool, batch);
                continue;
            }
            if self.rebuild_outer(&mut buf, which, &meta, len, tunnel_port) {
                // Left, a segment size is a whole datagram's inner one.
                if let Some(segment) = segment {
                    let l3 = buf.position(reserve + self.inner_l3);
                    buf.set_offload(Offload::udp_segment_said(segment, l3));
                }
                batch.push(buf);
            } else {
                pool.free(buf);
            }
        }
        give_back(pool, &mut staging, &mut staging_large);
        self.staging = staging;
        self.staging_large = staging_large;
        Ok(got)
    }
}

impl UnderlayPort {
    /// Another member of this split underlay, receiving through
    /// `spare`'s sockets and sending through its own.
    fn member(&self, spare: SpareMember) -> io::Result<UnderlayPort> {
        let port = self.udp.as_ref().map_or(0, |(_, p)| *p);
        let (udp, udp_steered) = steered(spare.udp);
        let (direct, direct_steered) = steered(spare.direct);
        let (ipip_packets, ipip_steered) = steered(spare.ipip);
        let segment_senders = if self.segment_senders.is_empty() {
            Vec::new()
        } else {
            (0..SEGMENT_SENDERS)
                .map_while(|_| InetSocket::udp_segment_sender(self.local_ip).ok())
                .collect()
        };
        let sender = match self.sender {
            Some(_) => Some(InetSocket::raw_sender()?),
            None => None,
        };
        Ok(UnderlayPort {
            udp: udp.map(|sock| (sock, port)),
            direct: direct.map(|sock| {
                let keep = self.direct.as_ref().is_some_and(PacketRx::udp_batches);
                PacketRx::new(sock, keep)
            }),
            ipip_packets: ipip_packets.map(PacketRx::whole_frames),
            sender,
            segment_senders,
            tunnel_tap: self.tunnel_tap.clone(),
            udp_steered,
            direct_steered,
            ipip_steered,
            ..UnderlayPort::without_sockets(
                self.name.clone(),
                self.counter.clone(),
                (self.local_ip, self.local_mac),
                self.inner_l3,
                self.segmenting,
            )
        })
    }

    /// Writes in front of the `len` bytes of payload at the buffer's
    /// reserve the outer headers the kernel consumed (the Ethernet header;
    /// for UDP the IPv4 and UDP headers as the kernel reported them); false
    /// (counted) if it cannot.
    fn rebuild_outer(
        &self,
        buf: &mut PacketBuf,
        which: Socket,
        meta: &Received,
        len: usize,
        tunnel_port: u16,
    ) -> bool {
        let frame = buf.frame_mut();
        EthernetRepr {
            src: MacAddr::ZERO,
            dst: self.local_mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(frame);
        if which == Socket::Udp {
            let Some(from) = meta.from else {
                self.counter.drop(DropReason::OuterMalformed);
                return false;
            };
            Ipv4Repr {
                src: *from.ip(),
                dst: self.local_ip,
                protocol: IpProtocol::Udp,
                payload_len: UDP + len,
                ttl: meta.ttl.unwrap_or(64),
                tos: meta.tos.unwrap_or(0),
                ident: 0,
                dont_frag: false,
            }
            .emit(&mut frame[ETH..]);
            let udp = &mut frame[ETH + IPV4..ETH + IPV4 + UDP];
            udp[0..2].copy_from_slice(&from.port().to_be_bytes());
            udp[2..4].copy_from_slice(&tunnel_port.to_be_bytes());
            udp[4..6].copy_from_slice(&((UDP + len) as u16).to_be_bytes());
            udp[6..8].fill(0);
        }
        true
    }

    /// A `UDP_GRO` super-datagram: `len` bytes of datagrams of `segment`
    /// bytes at the buffer's reserve. Merged into one inner super-frame
    /// when they are segments of one TCP flow, else split into one buffer
    /// per datagram.
    #[allow(clippy::too_many_arguments)]
    fn receive_burst(
        &self,
        mut buf: PacketBuf,
        reserve: usize,
        len: usize,
        segment: usize,
        meta: &Received,
        tunnel_port: u16,
        pool: &mut PacketPool,
        batch: &mut Vec<PacketBuf>,
    ) {
        let merged = coalesce_datagrams(
            &mut buf.frame_mut()[reserve..reserve + len],
            segment,
            self.inner_l3,
        );
        if let Some(m) = merged {
            buf.truncate(reserve + m.len);
            if !self.rebuild_outer(&mut buf, Socket::Udp, meta, m.len, tunnel_port) {
                pool.free(buf);
                return;
            }
            let l3 = reserve + self.inner_l3;
            let l4 = l3 + usize::from(buf.frame()[l3] & 0x0f) * 4;
            buf.set_offload(Offload {
                gso: Some(m.gso),
                partial_csum: Some(PartialChecksum {
                    start: buf.position(l4),
                    offset: 16,
                }),
                l3: buf.position(l3),
            });
            self.counter.offload(OffloadEvent::Coalesced, m.count);
            self.counter.offload(OffloadEvent::SuperFrameIn, 1);
            batch.push(buf);
            return;
        }
        let mut at = 0;
        while at < len {
            let piece = segment.min(len - at);
            let Some(mut one) = pool.alloc(self.counter.id) else {
                self.counter.drop(DropReason::PoolExhausted);
                at += piece;
                continue;
            };
            let area = one.receive_area(reserve);
            if piece > area.len() {
                self.counter.drop(DropReason::RxTooLong);
                pool.free(one);
                at += piece;
                continue;
            }
            area[..piece].copy_from_slice(&buf.frame()[reserve + at..reserve + at + piece]);
            one.set_received(reserve, piece);
            if self.rebuild_outer(&mut one, Socket::Udp, meta, piece, tunnel_port) {
                batch.push(one);
            } else {
                pool.free(one);
            }
            at += piece;
        }
        pool.free(buf);
    }

    /// Sends an encapsulated VXLAN super-frame whole through the TAP.
    /// Returns false, sending nothing, if it must go another way (no TAP,
    /// a frame its header cannot describe, or one the kernel refused:
    /// `EINVAL`).
    fn send_whole(&self, buf: &PacketBuf) -> bool {
        let Some(tap) = &self.tunnel_tap else {
            return false;
        };
        match tap.send(buf) {
            Ok(true) => {
                self.counter.offload(OffloadEvent::SuperFrameOut, 1);
                true
            }
            Ok(false) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
            Err(_) => {
                self.counter.drop(DropReason::TxFailed);
                true
            }
        }
    }

    /// Sends an encapsulated UDP-tunnel super-frame as `UDP_SEGMENT`
    /// bursts. Returns false, sending nothing, if it must go the software
    /// way (no sender, or this kernel has no `UDP_SEGMENT`).
    fn send_segmented(&mut self, buf: &PacketBuf) -> bool {
        let Some(gso) = buf.offload().gso else {
            return false;
        };
        if !self.segmenting {
            return false;
        }
        let frame = buf.frame();
        let Some(l3) = buf.frame_offset(buf.offload().l3) else {
            return false;
        };
        let Ok(segmenter) = Segmenter::at(frame, l3, gso.kind, gso.size) else {
            return false;
        };
        let udp_payload = ETH + usize::from(frame[ETH] & 0x0f) * 4 + UDP;
        let each = segmenter.datagram_len(udp_payload);
        // As few sends as fit, of even size: the receiver merges each
        // send into one super-frame.
        let count = segmenter.count();
        let most = (MAX_UDP_PAYLOAD / each).clamp(1, MAX_SEGMENTS);
        let per_send = count.div_ceil(count.div_ceil(most));
        let header_bytes = segmenter.header_bytes();
        let ip = &frame[ETH..];
        let dst = SocketAddrV4::new(
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            u16::from_be_bytes([frame[udp_payload - 6], frame[udp_payload - 5]]),
        );
        let (tos, ttl) = (ip[1], ip[8]);
        let flow_port =
            u16::from_be_bytes([frame[udp_payload - UDP], frame[udp_payload - UDP + 1]]);
        // VXLAN: the pool socket the flow's hashed port picks; IP-in-UDP:
        // the receiving socket, so the source port stays flanneld's 8285.
        let sender = match self.segment_senders.len() {
            0 => None,
            n => Some(usize::from(flow_port) % n),
        };
        let mut first = 0;
        while first < count {
            let range = first..(first + per_send).min(count);
            // Each datagram is gathered from two places: its headers,
            // written here, and its payload, straight from the super-frame.
            let mut parts: [&[u8]; InetSocket::MAX_SEND_PARTS] = [&[]; InetSocket::MAX_SEND_PARTS];
            for (k, i) in range.clone().enumerate() {
                let at = k * header_bytes;
                let Some(dst) = self.segment_scratch.get_mut(at..at + header_bytes) else {
                    self.counter.drop(DropReason::EncapFailed);
                    return true;
                };
                if segmenter.write_headers(frame, i, dst).is_none() {
                    self.counter.drop(DropReason::EncapFailed);
                    return true;
                }
            }
            for (k, i) in range.clone().enumerate() {
                let at = k * header_bytes;
                parts[2 * k] = &self.segment_scratch[at + udp_payload..at + header_bytes];
                parts[2 * k + 1] = &frame[segmenter.chunk(i)];
            }
            let parts = &parts[..2 * range.len()];
            let sock = match sender {
                Some(i) => &self.segment_senders[i].0,
                None => match &self.udp {
                    Some((sock, _)) => sock,
                    None => return false,
                },
            };
            let sent = sock.send_segmented(parts, dst, each as u16, tos, ttl);
            match sent {
                Ok(true) => {}
                Ok(false) => self.counter.drop(DropReason::TxFailed),
                Err(e)
                    if first == 0
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EINVAL | libc::ENOPROTOOPT | libc::EIO)
                        ) =>
                {
                    // This kernel cannot: from now on, the software way.
                    self.segment_senders.clear();
                    self.segmenting = false;
                    return false;
                }
                Err(_) => self.counter.drop(DropReason::TxFailed),
            }
            first = range.end;
        }
        self.counter.offload(OffloadEvent::SuperFrameOut, 1);
        true
    }

    /// Sends the tunnel packets of `tunnel_out`, in their order. A UDP
    /// tunnel's super-frame leaves at once, in its own write (whole through
    /// the TAP, or in `UDP_SEGMENT` bursts), while the other packets wait
    /// for the raw socket's batched send: those waiting are sent before
    /// each super-frame, or it would overtake them. Without that, a flow
    /// whose wire-sized segment came just before its super-frame reached
    /// the other node out of order: the receiver queued the super-frame's
    /// segments out of order and sent a duplicate acknowledgement for each
    /// (RFC 5681, section 4.2).
    fn send_tunnel_out(&mut self, pool: &mut PacketPool) -> usize {
        let whole_or_bursts = self.segmenting || self.tunnel_tap.is_some();
        if !whole_or_bursts {
            let mut out = std::mem::take(&mut self.tunnel_out);
            let sent = self.send_small(&mut out, pool);
            self.tunnel_out = out;
            return sent;
        }
        // Both batches are put back, so they keep their capacity: no
        // allocation per send.
        let mut waiting = std::mem::take(&mut self.tunnel_waiting);
        let mut out = std::mem::take(&mut self.tunnel_out);
        let mut sent = 0;
        for mut buf in out.drain(..) {
            let udp = buf.frame()[ETH + 9] == 17;
            // IPIP leaves whole through the TAP or is cut with the rest.
            let ipip_whole = buf.frame()[ETH + 9] == 4 && self.tunnel_tap.is_some();
            if (udp || ipip_whole) && buf.is_gso() {
                if !waiting.is_empty() {
                    sent += self.send_small(&mut waiting, pool);
                }
                if self.send_whole(&buf) || self.send_segmented(&buf) {
                    sent += 1;
                    pool.free(buf);
                    continue;
                }
            }
            if udp {
                self.use_flow_source_port(&mut buf);
            }
            waiting.push(buf);
        }
        sent += self.send_small(&mut waiting, pool);
        self.tunnel_out = out;
        self.tunnel_waiting = waiting;
        sent
    }

    /// Sends `frames`, in their order, once their offloads are finished in
    /// software (the raw socket and a batch take wire-sized packets only):
    /// each run of datagrams that can leave as one `UDP_SEGMENT` write
    /// ([`batch_len`]) as one, the others through the raw socket. Leaves
    /// `frames` empty.
    fn send_small(&mut self, frames: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> usize {
        if frames.is_empty() {
            return 0;
        }
        if self.sender.is_none() {
            self.counter.drop_n(DropReason::TxFailed, frames.len());
            pool.free_all(frames);
            return 0;
        }
        finish_offloads(&self.counter, frames, pool, &mut self.finish, has_offloads);
        let (mut sent, mut raw_from, mut at) = (0, 0, 0);
        while at < frames.len() {
            let run = if self.batching {
                batch_len(frames[at..].iter().map(PacketBuf::frame))
            } else {
                0
            };
            let path = if run >= MIN_BATCH {
                self.batch_path(&frames[at])
            } else {
                None
            };
            let Some(path) = path else {
                // Alike, these have no socket of their port either.
                at += run.max(1);
                continue;
            };
            // What came before the batch leaves before it.
            sent += self.send_raw(&frames[raw_from..at]);
            match send_batch(&self.counter, path, &frames[at..at + run]) {
                BatchSent::Sent => {
                    sent += run;
                    raw_from = at + run;
                }
                BatchSent::Dropped => raw_from = at + run,
                BatchSent::Refused { for_good } => {
                    // These go raw, with what follows.
                    self.batching &= !for_good;
                    raw_from = at;
                }
            }
            at += run;
        }
        sent += self.send_raw(&frames[raw_from..]);
        pool.free_all(frames);
        sent
    }

    /// Sends wire-sized `frames` through the raw socket.
    fn send_raw(&self, frames: &[PacketBuf]) -> usize {
        let Some(sock) = &self.sender else {
            self.counter.drop_n(DropReason::TxFailed, frames.len());
            return 0;
        };
        send_counted_run(&self.counter, frames, &[], |_, frames| {
            sock.send_batch(&RawPackets { frames })
        })
    }

    /// How a batch starting with `first` leaves: from the UDP socket bound
    /// to its outer source port (a `UDP_SEGMENT` sender for VXLAN without
    /// the TAP, the receiving socket for IP-in-UDP), so that the kernel's
    /// headers say what the raw socket's would have; else, for VXLAN,
    /// through the tunnel TAP, which keeps any source port.
    fn batch_path(&self, first: &PacketBuf) -> Option<BatchPath<'_>> {
        let f = first.frame();
        let at = ETH + IPV4;
        let port = u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]);
        let socket = self
            .segment_senders
            .iter()
            .chain(self.udp.iter())
            .find(|(_, p)| *p == port)
            .map(|(sock, _)| BatchPath::Socket(sock));
        socket.or_else(|| self.tunnel_tap.as_deref().map(BatchPath::Tap))
    }

    /// Rewrites the outer UDP source port of a tunnel packet for the raw
    /// socket to [`Self::flow_source_port`] (RFC 1624 update of a UDP
    /// checksum, if it has one).
    fn use_flow_source_port(&self, buf: &mut PacketBuf) {
        let frame = buf.frame_mut();
        let udp = ETH + usize::from(frame[ETH] & 0x0f) * 4;
        if frame.len() < udp + UDP {
            return;
        }
        let old = u16::from_be_bytes([frame[udp], frame[udp + 1]]);
        let Some(new) = self.flow_source_port(old) else {
            return;
        };
        frame[udp..udp + 2].copy_from_slice(&new.to_be_bytes());
        let check = u16::from_be_bytes([frame[udp + 6], frame[udp + 7]]);
        if check != 0 {
            let updated = podswitch_encap::checksum::update_word(check, old, new);
            let updated = if updated == 0 { 0xffff } else { updated };
            frame[udp + 6..udp + 8].copy_from_slice(&updated.to_be_bytes());
        }
    }

    /// The outer UDP source port a tunnel flow leaves with: the port of
    /// the `UDP_SEGMENT` sender its flow-hashed port picks, so that the
    /// flow's super-frames and its other packets share one outer 5-tuple.
    fn flow_source_port(&self, flow_port: u16) -> Option<u16> {
        let n = self.segment_senders.len();
        (n > 0).then(|| self.segment_senders[usize::from(flow_port) % n].1)
    }
}

/// What every datagram of one batch shares: the kernel writes the same
/// outer IPv4 and UDP headers for each datagram of a `UDP_SEGMENT` write,
/// lengths (and IPv4 ids) aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchKey {
    dst: SocketAddrV4,
    src_port: u16,
    tos: u8,
    ttl: u8,
}

/// The [`BatchKey`] and UDP payload length of an encapsulated frame that a
/// UDP socket sends just as the raw socket would: IPv4 without options,
/// not a fragment and without DF (the `UDP_SEGMENT` senders leave DF clear,
/// as flannel.1 does: a frame with it goes raw), UDP, and lengths that
/// agree with the frame's.
fn batch_member(frame: &[u8]) -> Option<(BatchKey, usize)> {
    let view = udp_datagram_view(frame).filter(|v| !v.dont_fragment)?;
    let ip = &frame[ETH..];
    let udp = &ip[IPV4..];
    let key = BatchKey {
        dst: SocketAddrV4::new(
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            u16::from_be_bytes([udp[2], udp[3]]),
        ),
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        tos: ip[1],
        ttl: ip[8],
    };
    Some((key, view.payload_len))
}

/// How many of `frames`, from the first, can leave as one `UDP_SEGMENT`
/// write: datagrams with one [`BatchKey`] and one payload length, but for
/// the last, which may be shorter (the kernel cuts the write at the
/// first's length), at most [`MAX_SEGMENTS`] of them and
/// [`MAX_UDP_PAYLOAD`] bytes in all. 0 if the first cannot be in one.
fn batch_len<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> usize {
    let mut frames = frames.into_iter();
    let Some((key, segment)) = frames.next().and_then(batch_member) else {
        return 0;
    };
    let (mut count, mut bytes) = (1, segment);
    for frame in frames {
        if count == MAX_SEGMENTS {
            break;
        }
        let Some((k, len)) = batch_member(frame) else {
            break;
        };
        if k != key || len > segment || bytes + len > MAX_UDP_PAYLOAD {
            break;
        }
        count += 1;
        bytes += len;
        if len < segment {
            break;
        }
    }
    count
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchSent {
    Sent,
    /// Refused by a full socket buffer or an error (counted as
    /// [`DropReason::TxFailed`]), as raw sends would have been.
    Dropped,
    /// The kernel will not send this batch so (a datagram longer than the
    /// route's MTU: `EINVAL`, `EMSGSIZE`), or none ever (no `UDP_SEGMENT`:
    /// `ENOPROTOOPT`; a route through IPsec: `EIO`; a TAP that refuses
    /// `GSO_UDP_L4`: `EINVAL`): nothing was sent.
    Refused {
        for_good: bool,
    },
}

/// Where a batch leaves.
#[derive(Debug, Clone, Copy)]
enum BatchPath<'a> {
    /// A `UDP_SEGMENT` send on this socket.
    Socket(&'a InetSocket),
    /// One write to the tunnel TAP ([`TunnelTap::send_batch`]).
    Tap(&'a TunnelTap),
}

/// Sends `frames` ([`batch_len`] of them) as one write the kernel cuts at
/// the first's payload length: a `UDP_SEGMENT` send of their payloads,
/// gathered, or one write to the tunnel TAP.
fn send_batch(counter: &Counter, path: BatchPath<'_>, frames: &[PacketBuf]) -> BatchSent {
    let Some((key, segment)) = frames.first().and_then(|f| batch_member(f.frame())) else {
        return BatchSent::Refused { for_good: false };
    };
    let sent = match path {
        BatchPath::Socket(sock) => {
            let mut payloads: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
            for (payload, buf) in payloads.iter_mut().zip(frames) {
                *payload = buf.frame().get(ETH + IPV4 + UDP..).unwrap_or(&[]);
            }
            let payloads = &payloads[..frames.len().min(MAX_SEGMENTS)];
            sock.send_segmented(payloads, key.dst, segment as u16, key.tos, key.ttl)
        }
        BatchPath::Tap(tap) => match tap.send_batch(frames, segment as u16) {
            Ok(false) => return BatchSent::Refused { for_good: false },
            other => other,
        },
    };
    match sent {
        Ok(true) => {
            counter.offload(OffloadEvent::DatagramsBatched, frames.len());
            BatchSent::Sent
        }
        Err(e) => match (e.raw_os_error(), path) {
            // A TAP that will not take a GSO_UDP_L4 frame never will.
            (Some(libc::EINVAL), BatchPath::Tap(_)) => BatchSent::Refused { for_good: true },
            (Some(libc::EINVAL | libc::EMSGSIZE), _) => BatchSent::Refused { for_good: false },
            (Some(libc::ENOPROTOOPT | libc::EIO), _) => BatchSent::Refused { for_good: true },
            _ => {
                counter.drop_n(DropReason::TxFailed, frames.len());
                BatchSent::Dropped
            }
        },
        Ok(false) => {
            counter.drop_n(DropReason::TxFailed, frames.len());
            BatchSent::Dropped
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socket {
    Udp,
    Ipip,
}

/// Pool buffers as receive areas, `reserve` bytes in, each continued by
/// a super-frame buffer where the pool had one.
struct AreaBuffers<'a> {
    bufs: &'a mut [PacketBuf],
    large: &'a mut [Option<PacketBuf>],
    reserve: usize,
    small_area: usize,
}

impl RecvBuffers for AreaBuffers<'_> {
    fn count(&self) -> usize {
        self.bufs.len()
    }

    fn parts(&mut self, i: usize) -> [&mut [u8]; MAX_PARTS] {
        let rest: &mut [u8] = match self.large.get_mut(i) {
            Some(Some(large)) => large.receive_area(self.reserve + self.small_area),
            _ => &mut [],
        };
        [
            &mut self.bufs[i].receive_area(self.reserve)[..self.small_area],
            rest,
            &mut [],
        ]
    }
}

/// Encapsulated frames as outer IPv4 packets for the raw socket.
struct RawPackets<'a> {
    frames: &'a [PacketBuf],
}

impl SendBuffers for RawPackets<'_> {
    fn count(&self) -> usize {
        self.frames.len()
    }

    fn parts(&self, i: usize) -> [&[u8]; MAX_PARTS] {
        [&self.frames[i].frame()[ETH..], &[], &[]]
    }

    fn destination(&self, i: usize) -> Option<SocketAddrV4> {
        let f = self.frames[i].frame();
        let dst = Ipv4Addr::new(f[ETH + 16], f[ETH + 17], f[ETH + 18], f[ETH + 19]);
        Some(SocketAddrV4::new(dst, 0))
    }
}

impl Port for UnderlayPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PortKind {
        if self.xdp.is_some() {
            PortKind::AfXdp
        } else if self.udp.is_some() {
            PortKind::UdpSocket
        } else if self.ipip.is_some() && self.ipip_packets.is_none() {
            PortKind::RawIp
        } else {
            PortKind::AfPacket
        }
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        let mut got = self.recv_xdp(pool, batch);
        // In two halves, not `Steered::receive`: `recv_socket` borrows the
        // whole port.
        let mark = self.udp_steered.as_mut().map(Steered::before_recv);
        let from_udp = self.recv_socket(Socket::Udp, pool, batch)?;
        if let (Some(steered), Some(mark)) = (self.udp_steered.as_mut(), mark) {
            steered.after_recv(mark, from_udp, self.udp_emptied);
        }
        got += from_udp;
        let mut from_packets = 0;
        for (rx, steered) in [
            (&mut self.direct, &mut self.direct_steered),
            (&mut self.ipip_packets, &mut self.ipip_steered),
        ] {
            if let Some(rx) = rx.as_mut() {
                from_packets += Steered::receive(steered.as_mut(), || {
                    let got = rx.recv(&self.counter, pool, batch)?;
                    Ok((got, rx.emptied))
                })?;
            }
        }
        got += from_packets;
        // Split, the raw socket gets only what the kernel reassembled
        // from fragments: read when the packet sockets gave nothing (the
        // wake may be its own), and under load every few reads, not a
        // system call on each (its stale `ipip_emptied` keeps the port
        // polled while it had frames left).
        let skip_raw = self.ipip_packets.is_some()
            && from_packets > 0
            && self.raw_reads_skipped + 1 < RAW_READ_EVERY;
        if skip_raw {
            self.raw_reads_skipped += 1;
        } else {
            self.raw_reads_skipped = 0;
            got += self.recv_socket(Socket::Ipip, pool, batch)?;
        }
        Ok(got)
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        for buf in batch.drain(..) {
            if buf.is_encapsulated() {
                self.tunnel_out.push(buf);
            } else {
                self.direct_out.push(buf);
            }
        }
        let mut sent = 0;
        if !self.tunnel_out.is_empty() {
            sent += self.send_tunnel_out(pool);
        }
        if !self.direct_out.is_empty() {
            match &mut self.direct {
                Some(rx) => {
                    // host-gw frames keep their super-frames: the peer's
                    // kernel takes them whole, as from its own pods.
                    sent += rx.send(
                        &self.counter,
                        &mut self.direct_tx,
                        &mut self.direct_out,
                        pool,
                    );
                }
                None => {
                    self.counter
                        .drop_n(DropReason::TxFailed, self.direct_out.len());
                    pool.free_all(&mut self.direct_out);
                }
            }
        }
        Ok(sent)
    }

    fn forwarded(&mut self) {
        for steered in [
            &mut self.udp_steered,
            &mut self.direct_steered,
            &mut self.ipip_steered,
        ]
        .into_iter()
        .flatten()
        {
            steered.release();
        }
    }

    /// Every socket it has found empty; never with AF_XDP rings, whose
    /// reads do not say it.
    fn drained(&self) -> bool {
        self.xdp.is_none()
            && (self.udp.is_none() || self.udp_emptied)
            && (self.ipip.is_none() || self.ipip_emptied)
            && [&self.direct, &self.ipip_packets]
                .into_iter()
                .flatten()
                .all(|rx| rx.emptied)
    }

    /// The members of an underlay opened for `members` receivers
    /// ([`UnderlayOptions::receivers`]): each takes its own socket of the
    /// UDP reuseport group, of the host-gw fanout group or of the IPIP
    /// fanout group (whichever the backend has; host-gw frames leave
    /// through that packet socket),
    /// sends tunnel packets through its own raw and `UDP_SEGMENT`
    /// sockets, and all write to the one tunnel TAP. An underlay that
    /// does not split answers [`io::ErrorKind::Unsupported`].
    fn fan_out(&mut self, members: usize) -> io::Result<Vec<Box<dyn Port>>> {
        if self.spare_members.is_empty() || self.spare_members.len() + 1 != members {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the underlay {} was opened for {} receivers, not {members}",
                    self.name,
                    self.spare_members.len() + 1
                ),
            ));
        }
        let spare = std::mem::take(&mut self.spare_members);
        spare
            .into_iter()
            .map(|spare| Ok(Box::new(self.member(spare)?) as Box<dyn Port>))
            .collect()
    }

    /// The underlay interface's `tx_dropped` (the raw and `UDP_SEGMENT`
    /// sockets report no drop after the kernel took a packet), and the
    /// tunnel TAP's `rx_dropped` (a write succeeds before the frame enters
    /// the stack). Host-gw frames leave through the packet socket, which
    /// reports a drop as a send error.
    fn send_drop_counters(&self) -> Vec<DeviceCounter> {
        let mut counters = vec![DeviceCounter::TxDropped(self.name.clone())];
        if let Some(tap) = &self.tunnel_tap {
            counters.push(DeviceCounter::RxDropped(tap.name().to_string()));
        }
        counters
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        if let Some(x) = &self.xdp {
            fds.extend(x.rx.iter().map(|rx| rx.sock.fd()));
        }
        if let Some((s, _)) = &self.udp {
            fds.push(s.as_fd().as_raw_fd());
        }
        if let Some(s) = &self.ipip {
            fds.push(s.as_fd().as_raw_fd());
        }
        for rx in [&self.direct, &self.ipip_packets].into_iter().flatten() {
            fds.push(rx.sock.as_fd().as_raw_fd());
        }
        fds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encapsulated frame as the pipeline hands it to the underlay:
    /// Ethernet, IPv4 from 192.168.100.1 to 192.168.100.2 with `flags`
    /// (DF, MF, offset), UDP `src_port` to 8472, `payload` bytes.
    fn datagram(payload: usize, src_port: u16, tos: u8, ttl: u8, flags: u16) -> Vec<u8> {
        let mut f = vec![0u8; ETH + IPV4 + UDP + payload];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[ETH..];
        let total = (IPV4 + UDP + payload) as u16;
        ip[0] = 0x45;
        ip[1] = tos;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6..8].copy_from_slice(&flags.to_be_bytes());
        ip[8] = ttl;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[192, 168, 100, 1]);
        ip[16..20].copy_from_slice(&[192, 168, 100, 2]);
        let udp = &mut ip[IPV4..];
        udp[0..2].copy_from_slice(&src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&8472u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((UDP + payload) as u16).to_be_bytes());
        f
    }

    fn len_of(frames: &[Vec<u8>]) -> usize {
        batch_len(frames.iter().map(Vec::as_slice))
    }

    #[test]
    fn a_batch_is_the_datagrams_alike_from_the_first() {
        let alike = |n| vec![datagram(60, 40000, 0, 64, 0); n];
        assert_eq!(len_of(&alike(32)), 32);
        assert_eq!(len_of(&alike(1)), 1);
        assert_eq!(len_of(&[]), 0);
        // Each difference the kernel's headers could not carry ends it.
        for other in [
            datagram(60, 40001, 0, 64, 0),      // source port
            datagram(60, 40000, 2, 64, 0),      // TOS (ECN)
            datagram(60, 40000, 0, 63, 0),      // TTL
            datagram(60, 40000, 0, 64, 0x4000), // DF
            datagram(61, 40000, 0, 64, 0),      // longer
        ] {
            let mut frames = alike(3);
            frames.push(other);
            frames.extend(alike(3));
            assert_eq!(len_of(&frames), 3);
        }
        let mut other_dst = datagram(60, 40000, 0, 64, 0);
        other_dst[ETH + 19] = 3;
        let mut frames = alike(2);
        frames.push(other_dst);
        assert_eq!(len_of(&frames), 2);
        // A shorter datagram ends it, inside it: the kernel cuts the write
        // at the first's length, so only the last may be short.
        let mut frames = alike(3);
        frames.push(datagram(20, 40000, 0, 64, 0));
        frames.extend(alike(3));
        assert_eq!(len_of(&frames), 4);
    }

    #[test]
    fn a_batch_stops_at_the_kernels_limits() {
        assert_eq!(
            len_of(&vec![datagram(60, 40000, 0, 64, 0); 100]),
            MAX_SEGMENTS
        );
        // 1,400-byte payloads: 46 fit in the 65,507 bytes of one send.
        let big = vec![datagram(1400, 40000, 0, 64, 0); 60];
        assert_eq!(len_of(&big), MAX_UDP_PAYLOAD / 1400);
    }

    #[test]
    fn only_plain_udp_datagrams_batch() {
        let good = datagram(60, 40000, 0, 64, 0);
        assert!(batch_member(&good).is_some());
        let mut ipip = good.clone();
        ipip[ETH + 9] = 4;
        let mut options = good.clone();
        options[ETH] = 0x46;
        let mut fragment = good.clone();
        fragment[ETH + 6] = 0x20; // MF
        let mut padded = good.clone();
        padded.extend([0; 4]); // longer than its IPv4 length says
        let mut udp_too_long = good.clone();
        udp_too_long[ETH + IPV4 + 5] += 1;
        let mut no_payload = datagram(0, 40000, 0, 64, 0);
        no_payload.truncate(ETH + IPV4 + UDP);
        let mut vlan = good.clone();
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        for bad in [
            ipip,
            options,
            fragment,
            padded,
            udp_too_long,
            no_payload,
            vlan,
        ] {
            assert_eq!(batch_member(&bad), None);
            assert_eq!(len_of(&[bad.clone(), good.clone()]), 0);
        }
        assert_eq!(batch_member(&good[..ETH + IPV4]), None);
    }

    #[test]
    fn host_gw_filter_jumps_land_where_its_comments_say() {
        let p = host_gw_filter(
            HostGwSources {
                pods: "10.244.0.0/16".parse().unwrap(),
                peers: "192.168.100.0/24".parse().unwrap(),
            },
            "10.244.2.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 244, 2, 1),
        );
        assert_eq!(
            (p[3].k, p[6].k, p[11].k),
            (0xffff_0000, 0xffff_ff00, 0xffff_ff00)
        );
        assert_eq!(p[9].k, u32::from(Ipv4Addr::new(10, 244, 2, 1)));
        assert_eq!(p[12].k, u32::from(Ipv4Addr::new(10, 244, 2, 0)));
        let target = |at: usize, offset: u8| at + 1 + usize::from(offset);
        let reject = p.len() - 1;
        assert_eq!(target(1, p[1].jf), reject);
        assert_eq!(
            target(4, p[4].jt),
            10,
            "a pod source: on to the destination"
        );
        assert_eq!(
            target(7, p[7].jt),
            8,
            "a peer source: on to the gateway test"
        );
        assert_eq!(target(7, p[7].jf), reject);
        assert_eq!(target(9, p[9].jt), reject, "a peer to the gateway");
        assert_eq!(target(9, p[9].jf), 10, "a peer elsewhere");
        assert_eq!(target(12, p[12].jf), reject);
        assert_eq!((p[13].k, p[reject].k), (0x0004_0000, 0));
    }
}
