//! Frames from pod ports: the source checks, FDB learning, ARP answered
//! as the gateway (bridge mode) or by proxy (proxy-arp mode, RFC 1027),
//! and switching within the node's bridge segment.

use std::net::Ipv4Addr;

use podswitch_encap::arp::{ArpOperation, ArpRepr};
use podswitch_encap::ethernet::{self, EtherType, EthernetFrame, EthernetRepr};
use podswitch_encap::MacAddr;

use crate::config::GatewayMode;
use crate::drop::DropReason;
use crate::egress_limit::wire_bytes;
use crate::packet::{PacketBuf, PacketPool};
use crate::port::PortId;
use crate::tables::PortEntry;
use crate::trace::{Step, Tracer};

use super::route::ipv4_of;
use super::{Ctx, Drop, Origin, Output, Outputs, Pipeline, Verdict, ETH};

impl Pipeline {
    pub(super) fn on_pod<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        port: &PortEntry,
        buf: &mut PacketBuf,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        let node = &ctx.snap.node;
        // A pod's egress limit is the worker's to apply, before the
        // pipeline (worker::shaper: a frame that must wait is held there);
        // a trace says whether the frame would leave at once.
        if T::ENABLED {
            if let Some(bucket) = &port.bucket {
                let conforms = bucket.conforms(wire_bytes(buf), std::time::Instant::now());
                t.step(|| Step::EgressLimit { conforms });
            }
        }
        let Ok(eth) = EthernetFrame::new_checked(buf.frame()) else {
            return Drop(DropReason::EthernetTruncated);
        };
        let (src, dst) = (eth.src(), eth.dst());
        if src.is_multicast() || src == MacAddr::ZERO {
            return Drop(DropReason::InvalidSourceMac);
        }
        if port.spec.anti_spoof && Some(src) != port.spec.mac {
            return Drop(DropReason::SpoofedSourceMac);
        }
        let bridged = node.gateway_mode == GatewayMode::Bridge;
        if bridged {
            // A batch is mostly one pod's frames: learn each (MAC, port)
            // once per second, not once per frame.
            let key = (src, port.id, ctx.now);
            let result = if ctx.learning && self.last_learned != Some(key) {
                self.last_learned = Some(key);
                Some(ctx.tables.fdb.learn(src, port.id, ctx.now))
            } else {
                None
            };
            t.step(|| Step::FdbLearn {
                mac: src,
                port: port.id,
                result,
            });
        }
        let (ethertype, l3) = match buf.frame()[12..14] {
            [0x08, 0x00] => (EtherType::Ipv4, ETH), // untagged IPv4: the common case
            _ => match ethernet::payload_info(buf.frame()) {
                Ok(info) => info,
                Err(_) => return Drop(DropReason::EthernetTruncated),
            },
        };
        // Pods send untagged frames. A tag (even VID 0, priority only)
        // would carry IPv4 past every check below, which read untagged
        // frames, and be switched as "other L2": one classification for
        // every tagged frame, whatever it carries (issue 15).
        if l3 != ETH {
            return Drop(DropReason::VlanTagged);
        }
        match ethertype {
            EtherType::Arp => {
                t.step(|| Step::Classified("ARP"));
                self.arp_from_pod(ctx, port, buf, l3, bridged, pool, out, t)
            }
            EtherType::Ipv4 if l3 == ETH => {
                let expected_src = if port.spec.anti_spoof {
                    Some(port.spec.ip.unwrap_or(Ipv4Addr::UNSPECIFIED))
                } else {
                    None
                };
                if dst == node.gateway_mac {
                    t.step(|| Step::Classified("IPv4 to the gateway: routed"));
                    return self.route(ctx, buf, Origin::Pod(expected_src), pool, out, t);
                }
                if !bridged {
                    return Drop(DropReason::NotSwitched);
                }
                // Switched, not routed: the source IP must still be the pod's.
                let packet = match ipv4_of(buf) {
                    Ok(p) => p,
                    Err(e) => return Drop(DropReason::from_ipv4(e)),
                };
                if expected_src.is_some_and(|ip| ip != packet.src()) {
                    return Drop(DropReason::SpoofedSourceIp);
                }
                // A Service backend answers its client on the segment;
                // the node's kernel must see the reply (host_connections).
                let connections = &ctx.tables.host_connections;
                if connections.is_reply_packet(&buf.frame()[ETH..], ctx.now)
                    && ctx.snap.ports.host.is_some()
                {
                    t.step(|| Step::Classified("IPv4 to another MAC, a reply of a connection the node's kernel forwarded: routed"));
                    return self.route(ctx, buf, Origin::Pod(expected_src), pool, out, t);
                }
                t.step(|| Step::Classified("IPv4 to another MAC: switched in the bridge segment"));
                self.switch(ctx, buf, pool, out, t)
            }
            EtherType::Ipv6 => Drop(DropReason::Ipv6NotConfigured),
            _ if bridged => {
                t.step(|| Step::Classified("other L2: switched in the bridge segment"));
                self.switch(ctx, buf, pool, out, t)
            }
            _ => Drop(DropReason::UnsupportedEtherType),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn arp_from_pod<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        port: &PortEntry,
        buf: &mut PacketBuf,
        l3: usize,
        bridged: bool,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        let node = &ctx.snap.node;
        let Ok(arp) = ArpRepr::parse(&buf.frame()[l3..]) else {
            return Drop(DropReason::ArpMalformed);
        };
        let unspecified = arp.sender_ip == Ipv4Addr::UNSPECIFIED; // an RFC 5227 probe
        if port.spec.anti_spoof {
            if Some(arp.sender_mac) != port.spec.mac {
                return Drop(DropReason::SpoofedSourceMac);
            }
            if !unspecified && Some(arp.sender_ip) != port.spec.ip {
                return Drop(DropReason::SpoofedSourceIp);
            }
        }
        if !unspecified && node.pod_cidr.contains(arp.sender_ip) && ctx.learning {
            ctx.tables
                .learn_neighbour(arp.sender_ip, arp.sender_mac, port.id);
        }
        match arp.operation {
            ArpOperation::Request => {
                // Never answer for the asker's own address: that is duplicate
                // address detection or a gratuitous ARP, and an answer would
                // tell the pod its address is taken.
                let own = unspecified || arp.target_ip == arp.sender_ip;
                let answer = match node.gateway_mode {
                    // The node's addresses, as cni0 answers for each of
                    // the node's (arp_ignore 0): the gateway's and the
                    // tunnel end's, flannel.1's.
                    GatewayMode::Bridge => (arp.target_ip == node.gateway_ip
                        || Some(arp.target_ip) == node.tunnel_address())
                    .then_some(node.gateway_mac),
                    GatewayMode::ProxyArp => (!own).then_some(node.gateway_mac),
                };
                match answer {
                    Some(mac) if !own => {
                        t.step(|| Step::ArpReply {
                            target: arp.target_ip,
                            mac,
                        });
                        let reply = arp.reply_from(mac);
                        // The request's buffer carries the reply back.
                        let mut bytes = [0u8; ETH + 28];
                        EthernetRepr {
                            src: mac,
                            dst: arp.sender_mac,
                            ethertype: EtherType::Arp,
                        }
                        .emit(&mut bytes);
                        reply.emit(&mut bytes[ETH..]);
                        buf.set(&bytes);
                        t.step(|| Step::Output(port.id));
                        Output(port.id)
                    }
                    _ if bridged => self.switch(ctx, buf, pool, out, t),
                    _ => Drop(DropReason::NotSwitched),
                }
            }
            ArpOperation::Reply if buf.frame()[..6] == node.gateway_mac.0 => {
                Drop(DropReason::ArpHandled)
            }
            ArpOperation::Reply if bridged => self.switch(ctx, buf, pool, out, t),
            ArpOperation::Reply => Drop(DropReason::NotSwitched),
            ArpOperation::Unknown(_) => Drop(DropReason::ArpMalformed),
        }
    }

    /// L2 forwarding in the bridge segment: known unicast to its port,
    /// everything else flooded to the segment's other ports (never into a
    /// tunnel).
    pub(super) fn switch<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        let dst = MacAddr(
            buf.frame()[..6]
                .try_into()
                .expect("checked Ethernet header"),
        );
        if !dst.is_multicast() {
            let port = ctx.tables.fdb.lookup(dst, ctx.now);
            t.step(|| Step::FdbLookup { mac: dst, port });
            if let Some(port) = port {
                if port == buf.in_port {
                    return Drop(DropReason::L2Hairpin);
                }
                if ctx.snap.ports.segment.binary_search(&port).is_ok() {
                    t.step(|| Step::Output(port));
                    return Output(port);
                }
            }
        }
        self.flood(ctx, buf, pool, out, t)
    }

    pub(super) fn flood<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        let in_port = buf.in_port;
        let mut targets = ctx
            .snap
            .ports
            .segment
            .iter()
            .copied()
            .filter(|p| *p != in_port);
        let Some(first) = targets.next() else {
            return Drop(DropReason::NoFloodTargets);
        };
        if T::ENABLED {
            let all: Vec<PortId> = ctx
                .snap
                .ports
                .segment
                .iter()
                .copied()
                .filter(|p| *p != in_port)
                .collect();
            t.step(|| Step::Flood(all));
        }
        for port in targets {
            match pool.copy(buf) {
                Some(copy) => out.push(port, copy),
                None => ctx
                    .tables
                    .stats
                    .add_drop(in_port, DropReason::PoolExhausted),
            }
        }
        Output(first)
    }
}
