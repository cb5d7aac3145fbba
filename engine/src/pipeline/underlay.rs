//! Frames from the underlay: decapsulation (outer checks, known peer,
//! VNI), the inner frame's checks and offloads, and host-gw frames that
//! came without a tunnel.

use podswitch_encap::ethernet::{self, EtherType, EthernetRepr};
use podswitch_encap::ipv4::Ipv4Packet;
use podswitch_encap::{DecapError, Inner};

use crate::drop::DropReason;
use crate::fib::NextHop;
use crate::offload::{recognise_offloads, L4Checksum};
use crate::packet::{PacketBuf, PacketPool};
use crate::peer::Peer;
use crate::stats::OffloadEvent;
use crate::trace::{Step, Tracer};

use super::{Ctx, Drop, Origin, Outputs, Pipeline, Verdict, ETH};

impl Pipeline {
    pub(super) fn on_underlay<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        let snap = ctx.snap;
        let decapsulated = snap.decap.decapsulate_frame(buf.frame_mut());
        let d = match decapsulated {
            Ok(d) => d,
            Err(
                DecapError::NotIpv4(_)
                | DecapError::NotTunnelProtocol(_)
                | DecapError::NotTunnelPort(_),
            ) => {
                return self.on_underlay_direct(ctx, buf, pool, out, t);
            }
            Err(e) => return Drop(DropReason::from_decap(e)),
        };
        let Some(peer) = snap.peers.by_underlay_ip(d.outer_src) else {
            return Drop(DropReason::UnknownPeer);
        };
        if peer.tunnel_mode() != Some(d.mode) {
            return Drop(DropReason::TunnelModeMismatch);
        }
        t.step(|| Step::Decapsulated {
            mode: d.mode,
            src: d.outer_src,
            vni: d.vni,
            inner_len: d.inner_range.len(),
        });
        buf.narrow(d.inner_range.clone());
        match d.inner {
            Inner::Ethernet => {
                // flannel.1 delivers only frames for its own MAC.
                if buf.frame()[..6] != snap.node.vtep_mac.0 {
                    return Drop(DropReason::InnerNotForVtep);
                }
                match ethernet::payload_info(buf.frame()) {
                    Ok((EtherType::Ipv4, ETH)) => {}
                    Ok((EtherType::Ipv6, _)) => return Drop(DropReason::Ipv6NotConfigured),
                    Ok(_) => return Drop(DropReason::UnsupportedEtherType),
                    Err(_) => return Drop(DropReason::InnerMalformed),
                }
            }
            Inner::Ipv4 => {
                // The outer headers freed at least 20 bytes in front.
                let Some(header) = buf.prepend(ETH) else {
                    return Drop(DropReason::EncapFailed);
                };
                EthernetRepr {
                    src: peer.spec.vtep_mac,
                    dst: snap.node.vtep_mac,
                    ethertype: EtherType::Ipv4,
                }
                .emit(header);
            }
        }
        // A socket says little of offloads: a kernel node behind a veth
        // leaves the inner checksum partial and sends whole GSO datagrams,
        // and so does a podswitch peer through its tunnel TAP. (A
        // super-frame the underlay port merged already says it all; a
        // segment size the socket reported is only what it said.)
        if buf.offload().is_none() || buf.offload().said_udp_segment().is_some() {
            self.recognise_inner_offloads(ctx, buf, peer, t);
        }
        self.route(ctx, buf, Origin::Tunnel(peer.id), pool, out, t)
    }

    /// Marks what a socket could not say about a decapsulated packet (see
    /// [`recognise_offloads`]).
    pub(super) fn recognise_inner_offloads<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        peer: &Peer,
        t: &mut T,
    ) {
        let mtu = peer.path_mtu(ctx.snap.node.underlay_mtu);
        let checked = recognise_offloads(buf, ETH, mtu);
        if let Some(gso) = buf.offload().gso {
            ctx.tables
                .stats
                .add_offload(buf.in_port, OffloadEvent::SuperFrameIn, 1);
            t.step(|| Step::Offload {
                what: "a whole GSO datagram from the peer (its kernel's VXLAN device or podswitch's tunnel TAP), carried on as one super-frame",
                gso_size: Some(gso.size),
                partial_checksum: buf.offload().partial_csum.is_some(),
            });
        } else if checked == L4Checksum::Partial {
            t.step(|| Step::Offload {
                what: "inner checksum left partial by the peer's kernel, carried as such",
                gso_size: None,
                partial_checksum: true,
            });
        }
    }

    /// host-gw: a plain IPv4 frame from a peer whose packets come without a
    /// tunnel.
    pub(super) fn on_underlay_direct<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        if !matches!(
            ethernet::payload_info(buf.frame()),
            Ok((EtherType::Ipv4, ETH))
        ) {
            return Drop(DropReason::NotTunnel);
        }
        let (src, dst) = match Ipv4Packet::new_checked(&buf.frame()[ETH..]) {
            Ok(p) => (p.src(), p.dst()),
            Err(e) => return Drop(DropReason::from_ipv4(e)),
        };
        if let Some(NextHop::Direct(peer)) = ctx.snap.fib.lookup(src) {
            t.step(|| Step::Classified("IPv4 from a host-gw peer's pod"));
            return self.route(ctx, buf, Origin::Direct(peer), pool, out, t);
        }
        // The peer node itself, from its own address: a process of its
        // own (a host-network pod, say) bound to that address. The kernel's
        // host-gw route carries these to pods as it carries the pods'.
        // To this node's own addresses (the gateway's) they are the
        // kernel's: a host takes its addresses on any interface, and the
        // underlay's tcx program passes them on (only a source in the
        // cluster CIDR ends there), so podswitch delivering them too
        // would deliver them twice.
        match ctx.snap.peers.by_underlay_ip(src) {
            Some(peer)
                if peer.tunnel_mode().is_none()
                    && matches!(ctx.snap.fib.lookup(dst), Some(NextHop::Local(_))) =>
            {
                t.step(|| Step::Classified("IPv4 from a host-gw peer's own address"));
                self.route(ctx, buf, Origin::Direct(peer.id), pool, out, t)
            }
            _ => Drop(DropReason::NotTunnel),
        }
    }
}
