//! Routing a packet to its next hop: the FIB lookup, TTL and MTU, MAC
//! rewriting for pods and host-gw peers, and encapsulation towards a
//! tunnel peer (RFC 7348 VXLAN, RFC 2003 IPIP, IP-in-UDP).

use std::net::Ipv4Addr;

use podswitch_encap::ethernet::EthernetFrame;
use podswitch_encap::icmpv4::Icmpv4Error;
use podswitch_encap::ipv4::Ipv4Packet;
use podswitch_encap::tunnel::EncapTemplate;
use podswitch_encap::{MacAddr, TunnelMode};

use crate::config::{GatewayMode, NodeConfig};
use crate::drop::DropReason;
use crate::fib::{mask, Fib, NextHop};
use crate::host_connections::Flow;
use crate::offload::{
    accept_vnet_header, complete_partial_checksum, cut_big_tcp, is_big_tcp, GsoKind, VnetHeader,
    FLAG_NEEDS_CSUM, GSO_TCPV4,
};
use crate::packet::{PacketBuf, PacketPool};
use crate::peer::{Forwarding, Peer};
use crate::port::PortId;
use crate::stats::OffloadEvent;
use crate::trace::{Step, Tracer};

use super::{Ctx, Drop, Origin, Output, Outputs, Pipeline, Verdict, ETH};

impl Pipeline {
    /// Routes the untagged IPv4 frame in `buf`.
    pub(super) fn route<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        origin: Origin,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        let snap = ctx.snap;
        let packet = match ipv4_of(buf) {
            Ok(p) => p,
            Err(e) => return Drop(DropReason::from_ipv4(e)),
        };
        if packet.verify_checksum().is_err() {
            return Drop(DropReason::Ipv4BadChecksum);
        }
        let (src, dst, ttl, mut total_len, dont_frag) = (
            packet.src(),
            packet.dst(),
            packet.ttl(),
            packet.packet_len(),
            packet.dont_frag(),
        );
        match origin {
            Origin::Pod(Some(expected)) => {
                if src != expected {
                    return Drop(DropReason::SpoofedSourceIp);
                }
                t.step(|| Step::SourceOk {
                    what: "source MAC and IP are the pod's own",
                });
            }
            // A tunnel carries only its peer's pods and the peer node
            // itself (a process there bound to the node's address; flannel.1
            // and tunl0 carry it too): anything else is someone injecting
            // packets into the overlay.
            Origin::Tunnel(peer) => {
                let inside =
                    ctx.snap.peers.get(peer).is_some_and(|p| {
                        p.spec.pod_cidr.contains(src) || p.spec.underlay_ip == src
                    });
                if !inside {
                    return Drop(DropReason::SpoofedTunnelSource);
                }
                t.step(|| Step::SourceOk {
                    what: "inner source is the peer node or inside its pod subnet",
                });
            }
            _ => {}
        }
        // Bytes after the total length are link padding, not packet: they
        // must not travel on (Open vSwitch's CVE-2020-35498 forwarded them).
        if buf.len() > ETH + total_len {
            let extra = buf.len() - ETH - total_len;
            t.step(|| Step::Trimmed { bytes: extra });
            buf.truncate(ETH + total_len);
            // A partial checksum a pod's virtio-net header placed in the
            // padding now points outside the frame: handed on, the kernel
            // would refuse it ("bad partial csum").
            if let Some(c) = buf.offload().partial_csum {
                let inside = buf
                    .frame_offset(c.start)
                    .is_some_and(|start| start + usize::from(c.offset) + 2 <= buf.len());
                if !inside {
                    return Drop(DropReason::OffloadChecksum);
                }
            }
        }
        if !is_unicast(dst) || src.is_multicast() || src.is_broadcast() {
            return Drop(DropReason::Ipv4NotUnicast);
        }
        let next_hop = if T::ENABLED {
            let route = snap.fib.lookup_route(dst);
            t.step(|| Step::FibLookup { dst, route });
            route.map(|(_, nh)| nh)
        } else {
            snap.fib.lookup(dst)
        };
        let Some(next_hop) = next_hop else {
            return Drop(DropReason::NoRoute);
        };
        let next_hop = self.through_host(ctx, buf, origin, src, next_hop, t);
        if origin.is_underlay() && matches!(next_hop, NextHop::Peer(_) | NextHop::Direct(_)) {
            return Drop(DropReason::TunnelTransit);
        }
        // A pod's veth takes a BIG TCP super-frame whole; a tunnel's outer
        // header, the host port and the underlay stop at 64 KiB.
        if !matches!(next_hop, NextHop::Local(_) | NextHop::Blackhole) && is_big_tcp(buf) {
            if let Err(reason) = self.cut_big_tcp(ctx, buf, origin, pool, t) {
                return Drop(reason);
            }
            total_len = buf.len() - ETH;
        }
        match next_hop {
            NextHop::Blackhole => {
                if !is_unassigned_pod_address(&snap.node, &snap.fib, dst) {
                    return Drop(DropReason::Blackhole);
                }
                // What a flannel node's kernel does for an address of its
                // own pod subnet that no pod has: forwards it (TTL first),
                // finds no neighbour on cni0, and answers Host Unreachable
                // (`ipv4_link_failure`). Here no ARP is needed to know.
                if let Some(verdict) = self.check_ttl(ctx, buf, origin, ttl, pool, out, t) {
                    return verdict;
                }
                self.icmp_error(ctx, buf, Icmpv4Error::HostUnreachable, pool, out, t);
                Drop(DropReason::NoPod)
            }
            NextHop::Host => {
                // Local delivery: the host stack decrements TTL if it forwards.
                let Some(host) = snap.ports.host else {
                    return Drop(DropReason::NoHostPort);
                };
                if origin == Origin::Host {
                    return Drop(DropReason::NoRoute);
                }
                rewrite_macs(buf, snap.node.gateway_mac, snap.node.gateway_mac, t);
                t.step(|| Step::Output(host));
                Output(host)
            }
            NextHop::Local(port_id) => {
                let Some(port) = snap.ports.get(port_id) else {
                    return Drop(DropReason::PortGone);
                };
                let mac = snap.neighbours.get(&dst).map(|n| n.mac).or(port.spec.mac);
                t.step(|| Step::Neighbour { ip: dst, mac });
                let Some(mac) = mac else {
                    return Drop(DropReason::NoNeighbour);
                };
                if let Some(verdict) = self.check_ttl(ctx, buf, origin, ttl, pool, out, t) {
                    return verdict;
                }
                rewrite_macs(buf, snap.node.gateway_mac, mac, t);
                t.step(|| Step::Output(port_id));
                Output(port_id)
            }
            NextHop::Peer(id) | NextHop::Direct(id) => {
                let Some(peer) = snap.peers.get(id) else {
                    return Drop(DropReason::PeerGone);
                };
                t.step(|| Step::Peer {
                    id,
                    name: peer.spec.name.clone(),
                    underlay_ip: peer.spec.underlay_ip,
                    mode: peer.tunnel_mode(),
                });
                let Some(underlay) = snap.ports.underlay else {
                    return Drop(DropReason::NoUnderlayPort);
                };
                if let Some(verdict) = self.check_ttl(ctx, buf, origin, ttl, pool, out, t) {
                    return verdict;
                }
                let mtu = peer.path_mtu(snap.node.underlay_mtu);
                // A super-frame leaves as segments of its GSO size (or
                // whole, segmented by the kernel into the same): what must
                // fit the path is its largest segment.
                let wire_len = match buf.offload().gso {
                    Some(gso) => total_len.min(usize::from(gso.header_len) + usize::from(gso.size)),
                    None => total_len,
                };
                if wire_len > usize::from(mtu) {
                    if !dont_frag {
                        // podswitch does not fragment: pods get an MTU that
                        // fits the tunnel, so only a misconfigured sender
                        // gets here, and fragmenting inner packets costs
                        // every receiver a reassembly.
                        return Drop(DropReason::TooBigNoDf);
                    }
                    self.icmp_error(
                        ctx,
                        buf,
                        Icmpv4Error::FragNeeded { next_hop_mtu: mtu },
                        pool,
                        out,
                        t,
                    );
                    return Drop(DropReason::FragmentationNeeded);
                }
                self.forward_to_peer(ctx, buf, peer, underlay, t)
            }
        }
    }

    /// Where a connection the node's kernel forwards from a pod to a pod
    /// (a Service's, after kube-proxy's DNAT) has its packets go: one from
    /// the host port is recorded, and a reply of one (for a local pod from
    /// a pod or a tunnel, or from a local pod for another node's pod) goes
    /// back to the host port instead, whose
    /// conntrack turns the Service's address back (see
    /// [`crate::host_connections`]). Everything else keeps `next_hop`.
    #[inline(always)]
    fn through_host<T: Tracer>(
        &self,
        ctx: &Ctx<'_>,
        buf: &PacketBuf,
        origin: Origin,
        src: Ipv4Addr,
        next_hop: NextHop,
        t: &mut T,
    ) -> NextHop {
        match (origin, next_hop) {
            (Origin::Host, NextHop::Local(_) | NextHop::Peer(_) | NextHop::Direct(_)) => {
                self.record_host_connection(ctx, buf, src, t);
                next_hop
            }
            // A client on another node (its packet to this node's own
            // address, a NodePort, translated here): only a pod's reply
            // can be for it, a tunnel's would be transit.
            (Origin::Pod(_) | Origin::Tunnel(_) | Origin::Direct(_), NextHop::Local(_))
            | (Origin::Pod(_), NextHop::Peer(_) | NextHop::Direct(_)) => {
                let connections = &ctx.tables.host_connections;
                if !connections.is_reply_packet(&buf.frame()[ETH..], ctx.now)
                    || ctx.snap.ports.host.is_none()
                {
                    return next_hop;
                }
                t.step(|| Step::HostConnection {
                    what: "a reply of a connection the node's kernel forwarded: back through the host port, whose conntrack translates it",
                });
                NextHop::Host
            }
            _ => next_hop,
        }
    }

    /// Records the connection of a packet from the host port, if its
    /// source is a pod (of this node or another).
    #[inline(never)]
    fn record_host_connection<T: Tracer>(
        &self,
        ctx: &Ctx<'_>,
        buf: &PacketBuf,
        src: Ipv4Addr,
        t: &mut T,
    ) {
        let from_pod = matches!(
            ctx.snap.fib.lookup(src),
            Some(NextHop::Local(_) | NextHop::Peer(_) | NextHop::Direct(_))
        );
        let Some(flow) = Flow::of_ipv4(&buf.frame()[ETH..]).filter(|_| from_pod) else {
            return;
        };
        let what = if ctx.learning {
            ctx.tables.host_connections.record(&flow, ctx.now);
            "from a pod to a pod through the node's kernel: recorded, its replies go back through the host port"
        } else {
            "from a pod to a pod through the node's kernel: its replies go back through the host port (not recorded in a trace)"
        };
        t.step(|| Step::HostConnection { what });
    }

    /// Cuts a BIG TCP super-frame into super-frames of at most 64 KiB
    /// ([`cut_big_tcp`]): `buf` goes on as the first; the others wait in
    /// `pending`, which the batch loop runs through the pipeline next, so
    /// they leave after it and in order.
    #[inline(never)]
    fn cut_big_tcp<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        origin: Origin,
        pool: &mut PacketPool,
        t: &mut T,
    ) -> Result<(), DropReason> {
        let gso_size = buf.offload().gso.map(|g| g.size);
        cut_big_tcp(buf, pool, &mut self.pending)?;
        self.pending_origin = origin;
        t.step(|| Step::Offload {
            what: "a BIG TCP super-frame, longer than an IPv4 length can say: cut into super-frames of at most 64 KiB, routed one after the other",
            gso_size,
            partial_checksum: true,
        });
        if !T::ENABLED {
            let stats = &ctx.tables.stats;
            stats.add_offload(buf.in_port, OffloadEvent::BigTcpCut, 1);
        }
        Ok(())
    }

    /// Sends an ICMP Time Exceeded and returns a drop if the packet's TTL
    /// does not allow another hop; decrements it otherwise.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn check_ttl<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        origin: Origin,
        ttl: u8,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Option<Verdict> {
        // Packets the node itself sends are not forwarded by it, as in the
        // kernel path: no TTL decrement for the host's or our own packets.
        if matches!(origin, Origin::Local | Origin::Host) {
            return None;
        }
        if ttl <= 1 {
            self.icmp_error(ctx, buf, Icmpv4Error::TtlExceeded, pool, out, t);
            return Some(Drop(DropReason::TtlExpired));
        }
        Ipv4Packet::new_unchecked(&mut buf.frame_mut()[ETH..]).decrement_ttl();
        t.step(|| Step::Ttl {
            from: ttl,
            to: ttl - 1,
        });
        None
    }

    pub(super) fn forward_to_peer<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        peer: &Peer,
        underlay: PortId,
        t: &mut T,
    ) -> Verdict {
        let node = &ctx.snap.node;
        match &peer.forwarding {
            Forwarding::Direct => {
                rewrite_macs(buf, node.underlay_mac, peer.spec.underlay_mac, t);
                t.step(|| Step::Output(underlay));
                Output(underlay)
            }
            Forwarding::Tunnel(template) => {
                if template.tunnel().config().mode == TunnelMode::Vxlan {
                    // What flannel.1 does: the inner frame goes from our VTEP
                    // to the peer's (the ARP entry for 10.244.Y.0).
                    rewrite_macs(buf, node.vtep_mac, peer.spec.vtep_mac, t);
                }
                if template.tunnel().config().udp_checksum && !buf.is_gso() {
                    // The outer UDP checksum covers the inner packet: finish
                    // the inner one first (a super-frame's outer checksums
                    // are made per segment).
                    // (One whose offsets leave the frame stays as it is.)
                    let _ = complete_partial_checksum(buf);
                }
                match self.encapsulate(template, buf) {
                    Ok(()) => {
                        if T::ENABLED {
                            let step = encap_step(template, buf.frame());
                            t.step(|| step);
                        }
                        t.step(|| Step::Output(underlay));
                        Output(underlay)
                    }
                    Err(_) => Drop(DropReason::EncapFailed),
                }
            }
        }
    }

    #[inline]
    pub(super) fn encapsulate(
        &mut self,
        template: &EncapTemplate,
        buf: &mut PacketBuf,
    ) -> Result<(), podswitch_encap::EncapError> {
        self.ident = self.ident.wrapping_add(1);
        let mut frame = buf.frame_buf();
        template.encapsulate(&mut frame, self.ident)?;
        let (start, end) = (frame.start(), frame.end());
        buf.adopt_bounds(start, end);
        buf.set_encapsulated();
        Ok(())
    }
}

/// The IPv4 packet behind `buf`'s Ethernet header, checked; a TCP
/// super-frame's may be a BIG TCP packet (total length 0).
#[inline(always)]
pub(super) fn ipv4_of(buf: &PacketBuf) -> Result<Ipv4Packet<&[u8]>, podswitch_encap::WireError> {
    let ip = &buf.frame()[ETH..];
    match buf.offload().gso {
        Some(gso) if gso.kind == GsoKind::TcpV4 => Ipv4Packet::new_checked_super_frame(ip),
        _ => Ipv4Packet::new_checked(ip),
    }
}

/// Gives a traced frame the offload state a pod's TSO super-frame
/// arrives with (checked as a port checks it).
pub(super) fn super_frame_offload(buf: &mut PacketBuf, gso_size: u16) -> Result<(), DropReason> {
    let frame = buf.frame();
    let l4 = ETH + usize::from(frame.get(ETH).map_or(0, |b| b & 0x0f)) * 4;
    let doff = frame.get(l4 + 12).map_or(0, |b| usize::from(b >> 4) * 4);
    let hdr = VnetHeader {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: (l4 + doff) as u16,
        gso_size,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    accept_vnet_header(buf, &hdr).map_err(|_| DropReason::GsoMalformed)
}

/// Unicast: not 0.0.0.0, not broadcast, not multicast.
#[inline]
pub(super) fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast())
}

/// Whether `dst`, which a blackhole route matched, is an address of the
/// node's own pod subnet that no pod has, in bridge mode: the route the
/// node installed itself, not one an operator added, and not the subnet's
/// network or broadcast address (cni0's kernel takes those as broadcasts,
/// and answers none with an error: RFC 1812 §4.3.2.7). In proxy-ARP mode a
/// Calico node blackholes its block (`blackhole 10.244.X.64/26 proto
/// bird`), and so drops it silently.
fn is_unassigned_pod_address(node: &NodeConfig, fib: &Fib, dst: Ipv4Addr) -> bool {
    let subnet = node.pod_cidr;
    let broadcast = u32::from(subnet.addr()) | !mask(subnet.prefix_len());
    node.gateway_mode == GatewayMode::Bridge
        && dst != subnet.addr()
        && u32::from(dst) != broadcast
        && fib
            .lookup_route(dst)
            .is_some_and(|(prefix, _)| prefix == subnet)
}

#[inline]
pub(super) fn rewrite_macs<T: Tracer>(buf: &mut PacketBuf, src: MacAddr, dst: MacAddr, t: &mut T) {
    let mut eth = EthernetFrame::new_unchecked(buf.frame_mut());
    eth.set_src(src);
    eth.set_dst(dst);
    t.step(|| Step::Rewrite { src, dst });
}

pub(super) fn encap_step(template: &EncapTemplate, outer: &[u8]) -> Step {
    let config = template.tunnel().config();
    let ip = Ipv4Packet::new_unchecked(&outer[ETH..]);
    let udp = &outer[ETH + 20..];
    Step::Encapsulated {
        mode: config.mode,
        src: ip.src(),
        dst: ip.dst(),
        ports: (config.mode != TunnelMode::Ipip).then(|| {
            (
                u16::from_be_bytes([udp[0], udp[1]]),
                u16::from_be_bytes([udp[2], udp[3]]),
            )
        }),
        vni: (config.mode == TunnelMode::Vxlan).then_some(config.vni),
        len: outer.len(),
    }
}
