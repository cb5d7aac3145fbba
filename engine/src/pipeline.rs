//! The switching and routing pipeline: what happens to each frame of a
//! batch, by the port it came from.
//!
//! ```text
//! pod port ── source MAC check ── FDB learn (bridge) ─┬─ ARP: answer as gateway / proxy, or switch
//!                                                     ├─ IPv4 to the gateway MAC: source IP check ── route
//!                                                     ├─ other L2 (bridge mode): switch in the segment
//!                                                     └─ IPv6: drop (not configured)
//! underlay ── decapsulate (outer checks, known peer, VNI) ── inner source check ── route
//! host ────────────────────────────────────────────────────────────────────────── route
//!
//! route: IPv4 checks, padding trimmed ── FIB ─┬─ Local(port): TTL-1, MACs ── pod port
//!                                             ├─ Peer: TTL-1, MTU, (VXLAN: VTEP MACs), encapsulate ── underlay
//!                                             ├─ Direct: TTL-1, MTU, underlay MACs ── underlay
//!                                             ├─ Host ── host port
//!                                             └─ Blackhole: drop
//! ```
//!
//! The pipeline is generic over a [`Tracer`]: [`Pipeline::process`] runs
//! with [`NoTrace`]; [`Pipeline::trace`] runs the same code on one frame with
//! a [`Recorder`] and sends nothing. It takes `now` (seconds, for FDB aging)
//! as an argument and does no I/O: callers give it batches and send the
//! [`Outputs`] it fills.

use std::net::Ipv4Addr;
use std::sync::Arc;

use podswitch_encap::arp::{ArpOperation, ArpRepr};
use podswitch_encap::ethernet::{self, EtherType, EthernetFrame, EthernetRepr};
use podswitch_encap::icmpv4::{Icmpv4Error, Icmpv4Type};
use podswitch_encap::ipv4::{IpProtocol, Ipv4Packet, Ipv4Repr};
use podswitch_encap::tunnel::EncapTemplate;
use podswitch_encap::{DecapError, Inner, MacAddr, TunnelMode};

use crate::config::GatewayMode;
use crate::drop::DropReason;
use crate::fib::NextHop;
use crate::offload::{
    accept_vnet_header, complete_partial_checksum, recognise_offloads, L4Checksum, Segmenter,
    VnetHeader, FLAG_NEEDS_CSUM, GSO_TCPV4,
};
use crate::packet::{PacketBuf, PacketPool};
use crate::peer::{Forwarding, Peer, PeerId};
use crate::port::{PortId, PortRole};
use crate::stats::OffloadEvent;
use crate::tables::{PortEntry, Snapshot, Tables};
use crate::trace::{NoTrace, Recorder, Step, TraceResult, Tracer};

/// The port id of frames podswitch makes itself (ICMP errors, ARP replies
/// it originates); never a real port, never counted as one.
pub const LOCAL_PORT: PortId = PortId(u16::MAX);

const ETH: usize = ethernet::HEADER_LEN;

/// Frames sorted by the port they leave on.
#[derive(Debug, Default)]
pub struct Outputs {
    batches: Vec<Vec<PacketBuf>>,
    active: Vec<PortId>,
    /// Frames of each batch already counted in the port's tx counters.
    counted: Vec<usize>,
}

impl Outputs {
    /// Empty outputs.
    pub fn new() -> Self {
        Outputs::default()
    }

    #[inline(always)]
    fn push(&mut self, port: PortId, buf: PacketBuf) {
        let i = usize::from(port.0);
        if self.batches.len() <= i {
            self.batches.resize_with(i + 1, Vec::new);
            self.counted.resize(i + 1, 0);
        }
        if self.batches[i].is_empty() {
            self.active.push(port);
        }
        self.batches[i].push(buf);
    }

    /// Hands each port's batch to `send`, which must empty it (a
    /// [`crate::port::Port::send`] does).
    pub fn drain(&mut self, mut send: impl FnMut(PortId, &mut Vec<PacketBuf>)) {
        for port in self.active.drain(..) {
            let batch = &mut self.batches[usize::from(port.0)];
            self.counted[usize::from(port.0)] = 0;
            send(port, batch);
            debug_assert!(batch.is_empty(), "send must consume the batch");
        }
    }

    /// Frames waiting, all ports.
    pub fn len(&self) -> usize {
        self.active
            .iter()
            .map(|p| self.batches[usize::from(p.0)].len())
            .sum()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

/// What happens to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Output(PortId),
    Drop(DropReason),
}

use Verdict::{Drop, Output};

/// Where a packet to route came from; decides which checks apply and
/// which next hops it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A pod port; with anti-spoofing on, the IPv4 source it must use.
    Pod(Option<Ipv4Addr>),
    /// Decapsulated from this peer's tunnel.
    Tunnel(PeerId),
    /// From this host-gw peer, without a tunnel.
    Direct(PeerId),
    /// The node's host port.
    Host,
    /// Made by podswitch (an ICMP error).
    Local,
}

impl Origin {
    fn is_underlay(self) -> bool {
        matches!(self, Origin::Tunnel(_) | Origin::Direct(_))
    }
}

/// Per-batch context: what the whole batch reads.
struct Ctx<'a> {
    tables: &'a Tables,
    snap: &'a Snapshot,
    now: u32,
    /// Learn into the FDB and neighbour table (off in a trace).
    learning: bool,
}

/// The pipeline of one worker.
#[derive(Debug)]
pub struct Pipeline {
    tables: Arc<Tables>,
    /// Outer IPv4 identification of the next packet we originate or
    /// encapsulate.
    ident: u16,
    /// The last source MAC learned, with its port and second.
    last_learned: Option<(MacAddr, PortId, u32)>,
    /// ICMP errors it may still send now.
    icmp_limit: IcmpLimiter,
}

/// The ICMP errors a node sends, bounded as Linux bounds its own
/// (`icmp_global_allow`: `net.ipv4.icmp_msgs_per_sec` = 1000 a second,
/// bursts of `icmp_msgs_burst` = 50): a flood of TTL-1 or oversized
/// packets cannot turn podswitch into an ICMP flood. A token bucket,
/// refilled from the monotonic clock, read only when an error is due.
#[derive(Debug, Clone, Copy)]
struct IcmpLimiter {
    tokens: u32,
    refilled: Option<std::time::Instant>,
}

impl IcmpLimiter {
    const PER_SEC: u32 = 1000;
    const BURST: u32 = 50;

    const fn new() -> Self {
        IcmpLimiter {
            tokens: Self::BURST,
            refilled: None,
        }
    }

    fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        let last = *self.refilled.get_or_insert(now);
        let earned = now.duration_since(last).as_millis() as u64 * u64::from(Self::PER_SEC) / 1000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(Self::BURST)) as u32;
            self.refilled = Some(now);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Pipeline {
    /// A pipeline over `tables`.
    pub fn new(tables: Arc<Tables>) -> Self {
        Pipeline {
            tables,
            ident: 0,
            last_learned: None,
            icmp_limit: IcmpLimiter::new(),
        }
    }

    /// The tables it reads.
    pub fn tables(&self) -> &Arc<Tables> {
        &self.tables
    }

    /// Runs every frame of `batch` through the pipeline. Frames to send are
    /// moved into `out`; dropped frames go back to `pool` and are counted.
    /// `now` is in seconds (FDB aging).
    pub fn process(
        &mut self,
        batch: &mut Vec<PacketBuf>,
        pool: &mut PacketPool,
        out: &mut Outputs,
        now: u32,
    ) {
        let tables = Arc::clone(&self.tables);
        let snap = tables.load();
        let ctx = Ctx {
            tables: &tables,
            snap: &snap,
            now,
            learning: true,
        };
        // Receive counters once per run of frames from one port.
        let mut run: Option<(PortId, u64, u64)> = None;
        for mut buf in batch.drain(..) {
            match &mut run {
                Some((port, packets, bytes)) if *port == buf.in_port => {
                    *packets += 1;
                    *bytes += buf.len() as u64;
                }
                _ => {
                    if let Some((port, packets, bytes)) = run {
                        tables.stats.add_rx(port, packets, bytes);
                    }
                    run = Some((buf.in_port, 1, buf.len() as u64));
                }
            }
            let verdict = self.handle(&ctx, &mut buf, pool, out, &mut NoTrace);
            self.finish(&ctx, buf, verdict, pool, out);
        }
        if let Some((port, packets, bytes)) = run {
            tables.stats.add_rx(port, packets, bytes);
        }
        // Transmit counters once per output batch, for the frames queued
        // since the last count.
        for &port in &out.active {
            let i = usize::from(port.0);
            let queued = &out.batches[i][out.counted[i]..];
            let bytes = queued.iter().map(|f| f.len() as u64).sum();
            tables.stats.add_tx(port, queued.len() as u64, bytes);
            out.counted[i] = out.batches[i].len();
        }
    }

    #[inline(always)]
    fn finish(
        &mut self,
        ctx: &Ctx<'_>,
        buf: PacketBuf,
        verdict: Verdict,
        pool: &mut PacketPool,
        out: &mut Outputs,
    ) {
        match verdict {
            Output(port) => out.push(port, buf),
            Drop(reason) => {
                ctx.tables.stats.add_drop(buf.in_port, reason);
                pool.free(buf);
            }
        }
    }

    /// Runs one frame through the pipeline as if it arrived on `in_port`,
    /// without learning, counting or sending anything, and returns every
    /// decision and the frames that would leave.
    pub fn trace(&mut self, frame: &[u8], in_port: PortId, now: u32) -> TraceResult {
        self.trace_with(frame, in_port, now, None)
    }

    /// [`Self::trace`] for a TCP super-frame: `frame` arrives with
    /// segmentation offload of `gso_size` bytes per segment and a partial
    /// checksum, as a pod's TSO hands it to an AF_PACKET port.
    pub fn trace_super_frame(
        &mut self,
        frame: &[u8],
        in_port: PortId,
        now: u32,
        gso_size: u16,
    ) -> TraceResult {
        self.trace_with(frame, in_port, now, Some(gso_size))
    }

    fn trace_with(
        &mut self,
        frame: &[u8],
        in_port: PortId,
        now: u32,
        gso_size: Option<u16>,
    ) -> TraceResult {
        let tables = Arc::clone(&self.tables);
        let snap = tables.load();
        let ctx = Ctx {
            tables: &tables,
            snap: &snap,
            now,
            learning: false,
        };
        let mut pool = PacketPool::with_large(64, crate::packet::DEFAULT_BUF_SIZE, 4);
        let mut out = Outputs::new();
        let mut rec = Recorder::default();
        let ident = self.ident;
        match pool.alloc_with(in_port, frame) {
            Some(mut buf) => {
                let offloaded = match gso_size {
                    Some(size) => super_frame_offload(&mut buf, size),
                    None => Ok(()),
                };
                let verdict = match offloaded {
                    Ok(()) => self.handle(&ctx, &mut buf, &mut pool, &mut out, &mut rec),
                    Err(reason) => Drop(reason),
                };
                match verdict {
                    Output(port) => out.push(port, buf),
                    Drop(reason) => {
                        rec.step(|| Step::Drop(reason));
                        pool.free(buf);
                    }
                }
            }
            None => rec.step(|| Step::Drop(DropReason::PoolExhausted)),
        }
        self.ident = ident; // a trace leaves no trace
        let mut outputs = Vec::new();
        out.drain(|port, batch| {
            for buf in batch.drain(..) {
                if let Some(gso) = buf.offload().gso {
                    let segments = buf
                        .frame_offset(buf.offload().l3)
                        .and_then(|l3| Segmenter::at(buf.frame(), l3, gso.kind, gso.size).ok())
                        .map_or(0, |s| s.count());
                    rec.step(|| Step::LeavesWhole { port, segments });
                }
                outputs.push((port, buf.frame().to_vec()));
                pool.free(buf);
            }
        });
        TraceResult {
            steps: rec.steps,
            outputs,
        }
    }

    fn handle<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        t.step(|| Step::Received {
            port: buf.in_port,
            len: buf.len(),
        });
        if let Some(gso) = buf.offload().gso {
            t.step(|| Step::Offload {
                what: "a GSO super-frame: routed as one packet, segmented only by a port that cannot take it whole",
                gso_size: Some(gso.size),
                partial_checksum: buf.offload().partial_csum.is_some(),
            });
        }
        let Some(port) = ctx.snap.ports.get(buf.in_port) else {
            return Drop(DropReason::PortGone);
        };
        match port.spec.role {
            PortRole::Pod => self.on_pod(ctx, port, buf, pool, out, t),
            PortRole::Underlay => self.on_underlay(ctx, buf, pool, out, t),
            PortRole::Host => self.on_host(ctx, buf, pool, out, t),
        }
    }

    // ---- pod ports -------------------------------------------------------

    fn on_pod<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        port: &PortEntry,
        buf: &mut PacketBuf,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        let node = &ctx.snap.node;
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
                let packet = match Ipv4Packet::new_checked(&buf.frame()[ETH..]) {
                    Ok(p) => p,
                    Err(e) => return Drop(DropReason::from_ipv4(e)),
                };
                if expected_src.is_some_and(|ip| ip != packet.src()) {
                    return Drop(DropReason::SpoofedSourceIp);
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
    fn arp_from_pod<T: Tracer>(
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
                    GatewayMode::Bridge => {
                        (arp.target_ip == node.gateway_ip).then_some(node.gateway_mac)
                    }
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
    fn switch<T: Tracer>(
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

    fn flood<T: Tracer>(
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

    // ---- underlay and host ------------------------------------------------

    fn on_underlay<T: Tracer>(
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
        // A socket says nothing of offloads: a kernel node behind a veth
        // leaves the inner checksum partial and sends whole GSO datagrams.
        // (A super-frame the underlay port merged already says it all.)
        if buf.offload().is_none() {
            self.recognise_inner_offloads(ctx, buf, peer, t);
        }
        self.route(ctx, buf, Origin::Tunnel(peer.id), pool, out, t)
    }

    /// Marks what a socket could not say about a decapsulated packet (see
    /// [`recognise_offloads`]).
    fn recognise_inner_offloads<T: Tracer>(
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
                what: "a GSO datagram from the peer's kernel, carried on as one super-frame",
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
    fn on_underlay_direct<T: Tracer>(
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
        let src = match Ipv4Packet::new_checked(&buf.frame()[ETH..]) {
            Ok(p) => p.src(),
            Err(e) => return Drop(DropReason::from_ipv4(e)),
        };
        match ctx.snap.fib.lookup(src) {
            Some(NextHop::Direct(peer)) => {
                t.step(|| Step::Classified("IPv4 from a host-gw peer"));
                self.route(ctx, buf, Origin::Direct(peer), pool, out, t)
            }
            _ => Drop(DropReason::NotTunnel),
        }
    }

    fn on_host<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        match ethernet::payload_info(buf.frame()) {
            Ok((EtherType::Ipv4, ETH)) => {
                t.step(|| Step::Classified("IPv4 from the host"));
                self.route(ctx, buf, Origin::Host, pool, out, t)
            }
            Ok((EtherType::Ipv6, _)) => Drop(DropReason::Ipv6NotConfigured),
            Ok(_) => Drop(DropReason::UnsupportedEtherType),
            Err(_) => Drop(DropReason::EthernetTruncated),
        }
    }

    // ---- routing ---------------------------------------------------------

    /// Routes the untagged IPv4 frame in `buf`.
    fn route<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: &mut PacketBuf,
        origin: Origin,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) -> Verdict {
        let snap = ctx.snap;
        let packet = match Ipv4Packet::new_checked(&buf.frame()[ETH..]) {
            Ok(p) => p,
            Err(e) => return Drop(DropReason::from_ipv4(e)),
        };
        if packet.verify_checksum().is_err() {
            return Drop(DropReason::Ipv4BadChecksum);
        }
        let (src, dst, ttl, total_len, dont_frag) = (
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
            // A tunnel carries only its peer's pods: anything else is
            // someone injecting packets into the overlay.
            Origin::Tunnel(peer) => {
                let inside = ctx
                    .snap
                    .peers
                    .get(peer)
                    .is_some_and(|p| p.spec.pod_cidr.contains(src));
                if !inside {
                    return Drop(DropReason::SpoofedTunnelSource);
                }
                t.step(|| Step::SourceOk {
                    what: "inner source is inside the peer's pod subnet",
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
        if origin.is_underlay() && matches!(next_hop, NextHop::Peer(_) | NextHop::Direct(_)) {
            return Drop(DropReason::TunnelTransit);
        }
        match next_hop {
            NextHop::Blackhole => Drop(DropReason::Blackhole),
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

    /// Sends an ICMP Time Exceeded and returns a drop if the packet's TTL
    /// does not allow another hop; decrements it otherwise.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn check_ttl<T: Tracer>(
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

    fn forward_to_peer<T: Tracer>(
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
    fn encapsulate(
        &mut self,
        template: &EncapTemplate,
        buf: &mut PacketBuf,
    ) -> Result<(), podswitch_encap::EncapError> {
        self.ident = self.ident.wrapping_add(1);
        let mut frame = buf.frame_buf();
        template.encapsulate(&mut frame, self.ident)?;
        let (start, end) = (frame.start(), frame.end());
        buf.adopt_bounds(start, end);
        Ok(())
    }

    /// Sends an ICMP error about the packet in `offending` back to its
    /// source, routed like any packet. Never about an ICMP error, a
    /// non-first fragment or a non-unicast source (RFC 1122 §3.2.2).
    fn icmp_error<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        offending: &PacketBuf,
        error: Icmpv4Error,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) {
        let ip = &offending.frame()[ETH..];
        let packet = Ipv4Packet::new_unchecked(ip);
        let about_error = packet.protocol() == IpProtocol::Icmp
            && packet.frag_offset() == 0
            && ip.get(packet.header_len()).is_some_and(|&ty| {
                !matches!(
                    Icmpv4Type::from(ty),
                    Icmpv4Type::EchoRequest | Icmpv4Type::EchoReply
                )
            });
        if about_error || packet.frag_offset() != 0 || !is_unicast(packet.src()) {
            return;
        }
        // A trace sends nothing, so it spends no token.
        if !T::ENABLED && !self.icmp_limit.allow() {
            ctx.tables
                .stats
                .add_drop(offending.in_port, DropReason::IcmpRateLimited);
            return;
        }
        let quoted = &ip[..Icmpv4Error::quote_len(packet.header_len(), packet.packet_len())];
        let icmp_len = Icmpv4Error::buffer_len(quoted.len());
        let Some(mut reply) = pool.alloc(LOCAL_PORT) else {
            ctx.tables
                .stats
                .add_drop(offending.in_port, DropReason::PoolExhausted);
            return;
        };
        let mut bytes = [0u8; ETH + 20 + 8 + 60 + 8];
        let len = ETH + 20 + icmp_len;
        self.ident = self.ident.wrapping_add(1);
        EthernetRepr {
            src: ctx.snap.node.gateway_mac,
            dst: ctx.snap.node.gateway_mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut bytes);
        Ipv4Repr {
            src: ctx.snap.node.icmp_source,
            dst: packet.src(),
            protocol: IpProtocol::Icmp,
            payload_len: icmp_len,
            ttl: 64,
            tos: 0,
            ident: self.ident,
            dont_frag: false,
        }
        .emit(&mut bytes[ETH..]);
        error.emit(quoted, &mut bytes[ETH + 20..len]);
        reply.set(&bytes[..len]);
        let what = match error {
            Icmpv4Error::TtlExceeded => "time exceeded",
            Icmpv4Error::FragNeeded { .. } => "fragmentation needed",
        };
        t.step(|| Step::IcmpError {
            what,
            to: packet.src(),
        });
        let verdict = self.route(ctx, &mut reply, Origin::Local, pool, out, t);
        self.finish(ctx, reply, verdict, pool, out);
    }
}

/// Gives a traced frame the offload state a pod's TSO super-frame
/// arrives with (checked as a port checks it).
fn super_frame_offload(buf: &mut PacketBuf, gso_size: u16) -> Result<(), DropReason> {
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
fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast())
}

#[inline]
fn rewrite_macs<T: Tracer>(buf: &mut PacketBuf, src: MacAddr, dst: MacAddr, t: &mut T) {
    let mut eth = EthernetFrame::new_unchecked(buf.frame_mut());
    eth.set_src(src);
    eth.set_dst(dst);
    t.step(|| Step::Rewrite { src, dst });
}

fn encap_step(template: &EncapTemplate, outer: &[u8]) -> Step {
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
