//! The switching and routing pipeline: what happens to each frame of a
//! batch, by the port it came from.
//!
//! ```text
//! pod port ── source MAC check ── FDB learn (bridge) ─┬─ ARP: answer as gateway / proxy, or switch
//!                                                     ├─ IPv4 to the gateway MAC: source IP check ── route
//!                                                     ├─ other L2 (bridge mode): switch in the segment
//!                                                     └─ IPv6: drop (not configured)
//! underlay ── decapsulate (outer checks, known peer, VNI) ── inner source check ── route
//! host ──────────────────────────────────── a pod's connection to a pod: recorded ── route
//!
//! route: IPv4 checks, padding trimmed ── FIB ─┬─ Local(port): TTL-1, MACs ── pod port
//!                                             │    (a reply of a recorded connection: ── host port)
//!                                             ├─ Peer: TTL-1, MTU, (VXLAN: VTEP MACs), encapsulate ── underlay
//!                                             ├─ Direct: TTL-1, MTU, underlay MACs ── underlay
//!                                             ├─ Host ── host port
//!                                             └─ Blackhole: drop (an address of the node's subnet
//!                                                  no pod has, bridge mode: TTL-1, Host Unreachable)
//! ```
//!
//! The pipeline is generic over a [`Tracer`]: [`Pipeline::process`] runs
//! with [`NoTrace`]; [`Pipeline::trace`] runs the same code on one frame with
//! a [`Recorder`] and sends nothing. It takes `now` (seconds, for FDB aging)
//! as an argument and does no I/O: callers give it batches and send the
//! [`Outputs`] it fills.
//!
//! Its rooms: this module holds the batch loop, tracing and the dispatch
//! by input port; `pod.rs` the pod side (checks, learning, ARP,
//! switching), `underlay.rs` decapsulation and host-gw input, `route.rs`
//! the FIB and every next hop (encapsulation included), `icmp.rs` the
//! errors the node sends.

mod icmp;
mod pod;
mod route;
mod underlay;

use std::net::Ipv4Addr;
use std::sync::Arc;

use podswitch_encap::ethernet::{self, EtherType};
use podswitch_encap::MacAddr;

use crate::drop::DropReason;
use crate::offload::Segmenter;
use crate::packet::{PacketBuf, PacketPool};
use crate::peer::PeerId;
use crate::port::{PortId, PortRole};
use crate::tables::{Snapshot, Tables};
use crate::trace::{NoTrace, Recorder, Step, TraceResult, Tracer};

use icmp::IcmpLimiter;
use route::super_frame_offload;

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
    /// Pieces of a BIG TCP super-frame cut by the route: the batch loop
    /// runs them through right after the frame that became the first
    /// piece (`route.rs`), so they leave in order.
    pending: Vec<PacketBuf>,
    /// Where the frame `pending` was cut from came from.
    pending_origin: Origin,
}

impl Pipeline {
    /// A pipeline over `tables`.
    pub fn new(tables: Arc<Tables>) -> Self {
        Pipeline {
            tables,
            ident: 0,
            last_learned: None,
            icmp_limit: IcmpLimiter::new(),
            pending: Vec::new(),
            pending_origin: Origin::Local,
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
            self.finish(&ctx, buf, verdict, pool, out, &mut NoTrace);
            if !self.pending.is_empty() {
                self.handle_pending(&ctx, pool, out, &mut NoTrace);
            }
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

    /// Runs the frames the route set aside (the pieces of a BIG TCP
    /// super-frame after its first) through the pipeline, in order. Rare,
    /// and kept out of the batch loop.
    #[cold]
    #[inline(never)]
    fn handle_pending<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) {
        let mut pending = std::mem::take(&mut self.pending);
        let origin = self.pending_origin;
        for mut buf in pending.drain(..) {
            // Checked and classified as the first piece was: routed again.
            let verdict = self.route(ctx, &mut buf, origin, pool, out, t);
            self.finish(ctx, buf, verdict, pool, out, t);
        }
        self.pending = pending;
    }

    /// Queues a frame on its port, or frees it and counts the drop (a
    /// trace records it instead: it counts nothing).
    #[inline(always)]
    fn finish<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        buf: PacketBuf,
        verdict: Verdict,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) {
        match verdict {
            Output(port) => out.push(port, buf),
            Drop(reason) => {
                t.step(|| Step::Drop(reason));
                if !T::ENABLED {
                    ctx.tables.stats.add_drop(buf.in_port, reason);
                }
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
                self.finish(&ctx, buf, verdict, &mut pool, &mut out, &mut rec);
                self.handle_pending(&ctx, &mut pool, &mut out, &mut rec);
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

    // ---- underlay and host ------------------------------------------------

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
}
