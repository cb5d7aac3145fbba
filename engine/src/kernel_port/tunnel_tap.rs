//! VXLAN super-frames out whole: a TAP whose frames go straight out of
//! the underlay interface.
//!
//! A pod's 64 KiB TCP super-frame, once encapsulated, is one VXLAN
//! datagram far longer than the underlay's MTU. The kernel's own VXLAN
//! device hands such a datagram down as one skb marked
//! `SKB_GSO_UDP_TUNNEL`: a NIC with tunnel segmentation cuts it, a veth
//! carries it whole to the other node's socket, and otherwise the kernel
//! cuts it as late as it can (`skb_udp_tunnel_segment`), repeating every
//! header. Userspace gets the same since Linux 6.17: a TAP with
//! `TUN_F_UDP_TUNNEL_GSO` takes a frame with a 24-byte virtio-net header
//! that says where the outer UDP header and the inner IPv4 header start
//! ([`TunnelVnetHeader`]). Neither AF_PACKET nor a UDP socket takes that
//! type (an AF_PACKET socket refuses it with `EINVAL`; a `UDP_SEGMENT`
//! send needs every datagram's headers written and each inner checksum
//! computed in userspace, then copied as 2 × 44 pieces).
//!
//! A frame written to a TAP enters the kernel as if the TAP had received
//! it. A BPF program on the TAP's tcx ingress hook sends it on at once
//! out of the underlay interface (`bpf_redirect_neigh`,
//! [`IngressRedirect`]), the kernel's route and neighbour tables filling
//! in its Ethernet addresses: it never reaches the TAP's IP stack, so no
//! forwarding, `rp_filter`, conntrack or FORWARD chain (which Docker sets
//! to DROP) is involved, and the datagram leaves as the node's own would,
//! the outer source port the flow's hash as for every other packet of the
//! flow. The TAP has no address, no ARP and no IPv6, so the kernel sends
//! nothing to it.
//!
//! The same TAP sends a batch of small VXLAN datagrams of one flow as one
//! write ([`TunnelTap::send_batch`]): the first's headers with the whole's
//! lengths, every payload behind them, and a virtio-net header asking for
//! UDP segmentation (`GSO_UDP_L4`, Linux 6.2+), which the kernel performs
//! as for a `UDP_SEGMENT` send. Each datagram keeps the flow's hashed
//! source port, which a UDP socket (bound to one port) could not give.
//!
//! Where any of it is missing (a kernel before 6.17, no tcx before 6.6,
//! no `bpf_redirect_neigh` before 5.10, BPF not allowed) the underlay
//! keeps `UDP_SEGMENT` sends, and says why
//! ([`super::UnderlayPort::tunnel_tap_refused`]).
//!
//! **IPIP** (Calico's tunl0) has the same need and no virtio-net type at
//! all: the kernel marks its own IPIP super-frames `SKB_GSO_IPXIP4`,
//! which no header from userspace can ask for, and a raw socket takes
//! one packet a send. Without it every IPIP segment crossed the node's
//! stack alone, cut in userspace, and TCP across nodes ran at a
//! fifteenth of VXLAN's rate (docs/benchmarks.md, "IPIP super-frames
//! sent whole"). The IPIP TAP takes the encapsulated super-frame with an
//! ordinary `GSO_TCPV4` header that describes the inner TCP packet, and
//! its program ([`IngressIpipOut`]) turns the outer IPv4 header into an
//! encapsulation the kernel knows before it sends the frame on: a veth
//! carries it whole, the receiving node's raw IPIP socket reads it
//! whole, a NIC or the kernel cuts it as for tunl0. It needs tcx (6.6)
//! and `bpf_redirect_neigh` (5.10), not Linux 6.17.

use std::io;

use podswitch_encap::ethernet::HEADER_LEN as ETH;
use podswitch_encap::ipv4::HEADER_LEN as IPV4;
use podswitch_encap::offload::{udp_batch_headers, GsoKind, TunnelVnetHeader, UDP_BATCH_HEADERS};

use crate::offload::vnet_header_with_l3_at;
use crate::packet::PacketBuf;
use crate::sys::netdev;
use crate::sys::tcx::{IngressIpipOut, IngressRedirect};
use crate::sys::tun::{TunDevice, TunKind};

/// The TAP's default name (`[dataplane] tunnel_tap`).
pub const DEFAULT_TUNNEL_TAP: &str = "podswitch-gso";

/// The TAP and the program that sends what enters it out of the
/// underlay. The program is declared first, so it is detached before the
/// TAP (and with it the interface) goes.
#[derive(Debug)]
pub(super) struct TunnelTap {
    program: TapProgram,
    dev: TunDevice,
}

/// What the TAP's program does with what enters it.
#[derive(Debug)]
enum TapProgram {
    /// Sends it on as it is (VXLAN).
    Redirect { _attached: IngressRedirect },
    /// Marks it as IPIP encapsulated, then sends it on.
    Ipip { _attached: IngressIpipOut },
}

impl TunnelTap {
    /// Creates the TAP `name` for VXLAN and attaches the redirect to
    /// interface `underlay_ifindex`.
    pub(super) fn open(name: &str, underlay_ifindex: u32) -> io::Result<TunnelTap> {
        let dev = TunDevice::open_tunnel_gso(name)?;
        TunnelTap::with_program(name, dev, "redirect", |ifindex| {
            let attached = IngressRedirect::attach(ifindex, underlay_ifindex)?;
            Ok(TapProgram::Redirect {
                _attached: attached,
            })
        })
    }

    /// Creates the TAP `name` for IPIP (TCP segmentation offloads only)
    /// and attaches its program ([`IngressIpipOut`]) towards interface
    /// `underlay_ifindex`.
    pub(super) fn open_ipip(name: &str, underlay_ifindex: u32) -> io::Result<TunnelTap> {
        let dev = TunDevice::open_with_offloads(name, TunKind::Tap)?;
        TunnelTap::with_program(name, dev, "IPIP", |ifindex| {
            let attached = IngressIpipOut::attach(ifindex, underlay_ifindex)?;
            Ok(TapProgram::Ipip {
                _attached: attached,
            })
        })
    }

    /// The TAP `name` opened as `dev`, quiet and up, with the program
    /// `attach` puts on its tcx ingress (`what` names it in an error).
    fn with_program(
        name: &str,
        dev: TunDevice,
        what: &str,
        attach: impl FnOnce(u32) -> io::Result<TapProgram>,
    ) -> io::Result<TunnelTap> {
        let ifindex = quiet_and_up(name)?;
        let program = attach(ifindex).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("tcx {what} program on {name} (Linux 6.6+): {e}"),
            )
        })?;
        Ok(TunnelTap { program, dev })
    }

    /// The TAP's interface name.
    pub(super) fn name(&self) -> &str {
        self.dev.name()
    }

    /// Sends `frames`, Ethernet/IPv4/UDP datagrams alike but for their
    /// payloads, every payload `segment` bytes long but the last's (a
    /// batch: the underlay's `batch_len`), as one write the kernel cuts at
    /// `segment` bytes of payload, filling in each datagram's UDP checksum
    /// ([`udp_batch_headers`]). `Ok(false)` if the headers cannot describe
    /// them; the caller sends them another way.
    pub(super) fn send_batch(&self, frames: &[PacketBuf], segment: u16) -> io::Result<bool> {
        let Some(first) = frames.first() else {
            return Ok(false);
        };
        if frames.len() + 2 > TunDevice::MAX_WRITE_PARTS {
            return Ok(false);
        }
        let payload_len = frames
            .iter()
            .map(|f| f.frame().len().saturating_sub(UDP_BATCH_HEADERS))
            .sum();
        let Some((headers, vnet)) = udp_batch_headers(first.frame(), payload_len, segment) else {
            return Ok(false);
        };
        // The TAP's header is the tunnel one; without a tunnel GSO type
        // its tunnel offsets are not read.
        let vnet = TunnelVnetHeader {
            inner: vnet,
            outer_th_offset: 0,
            inner_nh_offset: 0,
        }
        .to_bytes();
        let mut parts: [&[u8]; TunDevice::MAX_WRITE_PARTS] = [&[]; TunDevice::MAX_WRITE_PARTS];
        parts[0] = &vnet;
        parts[1] = &headers;
        for (part, f) in parts[2..].iter_mut().zip(frames) {
            *part = f.frame().get(UDP_BATCH_HEADERS..).unwrap_or(&[]);
        }
        self.dev.write(&parts[..2 + frames.len()])?;
        Ok(true)
    }

    /// Sends `buf`, an encapsulated VXLAN datagram around a TCP
    /// super-frame, whole. `Ok(false)` if its header cannot describe the
    /// frame (see [`TunnelVnetHeader::for_frame`]); the caller sends it
    /// another way.
    pub(super) fn send(&self, buf: &PacketBuf) -> io::Result<bool> {
        if let TapProgram::Ipip { .. } = self.program {
            return self.send_ipip(buf);
        }
        let Some(gso) = buf.offload().gso else {
            return Ok(false);
        };
        let Some(inner_l3) = buf.frame_offset(buf.offload().l3) else {
            return Ok(false);
        };
        let Some(header) = TunnelVnetHeader::for_frame(buf.frame(), inner_l3, &gso) else {
            return Ok(false);
        };
        self.dev.write(&[&header.to_bytes(), buf.frame()])?;
        Ok(true)
    }

    /// Sends `buf`, an IPIP packet around a TCP super-frame (its outer
    /// header without options), whole, with a virtio-net header for the
    /// inner packet; the TAP's program does the rest. `Ok(false)` if it
    /// is not such a frame; the caller sends it another way.
    fn send_ipip(&self, buf: &PacketBuf) -> io::Result<bool> {
        let frame = buf.frame();
        let outer_plain = frame.len() > ETH + IPV4 && frame[ETH] == 0x45 && frame[ETH + 9] == 4;
        let tcp = buf.offload().gso.is_some_and(|g| g.kind == GsoKind::TcpV4);
        if !(outer_plain && tcp) {
            return Ok(false);
        }
        let Some(header) = vnet_header_with_l3_at(buf, ETH + IPV4) else {
            return Ok(false);
        };
        self.dev.write(&[&header.to_bytes(), frame])?;
        Ok(true)
    }
}

/// Readies the TAP `name`: nothing of the kernel's own is to go to it
/// (nobody reads it), and up. Returns its interface index.
fn quiet_and_up(name: &str) -> io::Result<u32> {
    netdev::set_noarp(name)?;
    let _ = netdev::disable_ipv6(name);
    netdev::set_up(name)?;
    netdev::ifindex(name)
}
