//! Counters: per port (rx/tx packets and bytes, drops, and which offload
//! path its frames took) and per drop reason.
//!
//! # Contract
//! Workers add to the counters with relaxed atomic adds, once per batch
//! where they can; anyone may read them at any time. A [`StatsSnapshot`] is
//! a copy of every counter taken without stopping the workers: each value
//! is exact, but two counters may be read a few packets apart.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::drop::DropReason;
use crate::port::PortId;

/// What happened to a frame's offloads on a port: the counters that show
/// which path traffic took (a super-frame carried whole, or cut up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OffloadEvent {
    /// A GSO super-frame arrived (reported by the kernel, or recognised
    /// after decapsulation).
    SuperFrameIn,
    /// A super-frame left whole, for the kernel or the pod to segment.
    SuperFrameOut,
    /// A super-frame was cut into segments in userspace.
    Segmented,
    /// Segments those cuts made.
    SegmentsMade,
    /// A partial checksum was completed in userspace.
    ChecksumCompleted,
    /// Frames merged into a super-frame (receive coalescing).
    Coalesced,
    /// A BIG TCP super-frame (longer than an IPv4 length can say) cut into
    /// super-frames of at most 64 KiB for a next hop that cannot take it
    /// whole (a tunnel, the host port, the underlay).
    BigTcpCut,
    /// Small datagrams of one flow sent together, as one write the kernel
    /// cuts as late as it can (a batch): tunnel datagrams on the
    /// underlay, a flow's datagrams into a pod ([`crate::offload::coalesce_udp_runs`]).
    DatagramsBatched,
    /// A pod's frame held until its egress limit let it leave (not an
    /// offload: the path a frame took all the same).
    EgressHeld,
}

impl OffloadEvent {
    const COUNT: usize = 9;
}

/// The counters of one port.
#[derive(Debug, Default)]
pub struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: AtomicU64,
    offload: [AtomicU64; OffloadEvent::COUNT],
}

/// A copy of one port's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames forwarded to the port to send. Those its kernel side then
    /// refused or lost count in `drops` too (`tx_failed`, `handoff_full`,
    /// `tx_device_dropped`, `port_gone`).
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames dropped on this port: received on it, or forwarded to it
    /// and not sent.
    pub drops: u64,
    /// GSO super-frames received (each counts once in `rx_packets`).
    pub super_frames_in: u64,
    /// Super-frames sent whole (each counts once in `tx_packets`).
    pub super_frames_out: u64,
    /// Super-frames this port cut into segments before sending.
    pub segmented: u64,
    /// Segments those cuts made.
    pub segments_made: u64,
    /// Partial checksums completed in userspace.
    pub checksums_completed: u64,
    /// Frames merged into super-frames on receive.
    pub coalesced: u64,
    /// BIG TCP super-frames received here and cut into 64 KiB ones.
    pub big_tcp_cut: u64,
    /// Small datagrams of one flow sent in batches, each batch one write
    /// the kernel cuts (each datagram counts once in `tx_packets`).
    pub datagrams_batched: u64,
    /// Frames of a pod that waited for its egress limit before they went
    /// on (each also counts once in `rx_packets`).
    pub egress_held: u64,
}

/// Every counter of an engine.
#[derive(Debug)]
pub struct Stats {
    ports: Box<[PortCounters]>,
    drops: Box<[AtomicU64]>,
}

/// A copy of every counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Ports with any traffic, by id.
    pub ports: Vec<(PortId, PortStats)>,
    /// Drop counts by reason (every reason, zeros included).
    pub drops: Vec<(DropReason, u64)>,
}

impl StatsSnapshot {
    /// The count for one reason.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].1
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|(_, n)| n).sum()
    }

    /// One port's counters (zero if it had no traffic).
    pub fn port(&self, id: PortId) -> PortStats {
        self.ports
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }
}

impl Stats {
    /// Counters for ports 0..max_ports.
    pub fn new(max_ports: usize) -> Self {
        Stats {
            ports: (0..max_ports).map(|_| PortCounters::default()).collect(),
            drops: (0..DropReason::COUNT).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Number of ports counted.
    pub fn max_ports(&self) -> usize {
        self.ports.len()
    }

    #[inline]
    fn port(&self, port: PortId) -> Option<&PortCounters> {
        self.ports.get(usize::from(port.0))
    }

    /// Counts frames received on a port.
    #[inline]
    pub fn add_rx(&self, port: PortId, packets: u64, bytes: u64) {
        if let Some(c) = self.port(port) {
            c.rx_packets.fetch_add(packets, Ordering::Relaxed);
            c.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts frames sent on a port.
    #[inline]
    pub fn add_tx(&self, port: PortId, packets: u64, bytes: u64) {
        if let Some(c) = self.port(port) {
            c.tx_packets.fetch_add(packets, Ordering::Relaxed);
            c.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts `n` offload events on a port.
    #[inline]
    pub fn add_offload(&self, port: PortId, event: OffloadEvent, n: u64) {
        if let Some(c) = self.port(port) {
            c.offload[event as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts a drop of a frame received on `port`.
    #[inline]
    pub fn add_drop(&self, port: PortId, reason: DropReason) {
        self.add_drops(port, reason, 1);
    }

    /// Counts `n` frames received on (or bound for) `port` dropped for
    /// `reason`.
    pub fn add_drops(&self, port: PortId, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.drops[reason.index()].fetch_add(n, Ordering::Relaxed);
        if let Some(c) = self.port(port) {
            c.drops.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let ports = self
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let offload = |e: OffloadEvent| c.offload[e as usize].load(Ordering::Relaxed);
                let s = PortStats {
                    rx_packets: c.rx_packets.load(Ordering::Relaxed),
                    rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
                    tx_packets: c.tx_packets.load(Ordering::Relaxed),
                    tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
                    drops: c.drops.load(Ordering::Relaxed),
                    super_frames_in: offload(OffloadEvent::SuperFrameIn),
                    super_frames_out: offload(OffloadEvent::SuperFrameOut),
                    segmented: offload(OffloadEvent::Segmented),
                    segments_made: offload(OffloadEvent::SegmentsMade),
                    checksums_completed: offload(OffloadEvent::ChecksumCompleted),
                    coalesced: offload(OffloadEvent::Coalesced),
                    big_tcp_cut: offload(OffloadEvent::BigTcpCut),
                    datagrams_batched: offload(OffloadEvent::DatagramsBatched),
                    egress_held: offload(OffloadEvent::EgressHeld),
                };
                (s != PortStats::default()).then_some((PortId(i as u16), s))
            })
            .collect();
        let drops = DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops[r.index()].load(Ordering::Relaxed)))
            .collect();
        StatsSnapshot { ports, drops }
    }
}
