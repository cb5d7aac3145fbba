//! What each request answers on success: the `"result"` of its reply, one
//! type per request (docs/control-protocol.md shows each). The daemon
//! builds these and the clients read them, so a field renamed on one side
//! is a compile error on the other, not a `null` in a table.
//!
//! A client reads a reply with [`crate::client::Client::call_for`]. Unknown
//! fields are ignored when reading, so that a client keeps working against
//! a newer daemon of the same protocol version that answers more.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{Backend, GatewayMode, MacAddr, NextHopSpec, PortRole, Prefix};

/// `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The daemon's version.
    pub podswitch: String,
    /// The protocol version it speaks.
    pub protocol: u64,
}

/// `status`: the node as the daemon runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// This node's pod subnet.
    pub pod_cidr: Prefix,
    /// The whole cluster's pod network.
    pub cluster_cidr: Prefix,
    /// `bridge` or `proxy-arp`.
    pub gateway_mode: GatewayMode,
    /// The pods' gateway address.
    pub gateway: Ipv4Addr,
    /// The node's underlay address.
    pub underlay_ip: Ipv4Addr,
    /// The node's VTEP MAC.
    pub vtep_mac: MacAddr,
    /// vxlan, ipip, udp, host-gw or directrouting.
    pub backend: Backend,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The pods' MTU (the underlay's less the tunnel overhead).
    pub mtu: u16,
    /// The underlay's MTU.
    pub underlay_mtu: u16,
    /// Attached ports.
    pub ports: usize,
    /// Known peers.
    pub peers: usize,
    /// Routes in the FIB.
    pub routes: usize,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The lease store's health; `None` when peers are static.
    pub store: Option<StoreStatus>,
}

/// The etcd lease store's health, in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Whether the last exchange with etcd worked.
    pub connected: bool,
    /// The other nodes' leases.
    pub leases: usize,
    /// This node's leased subnet, once it has one.
    pub subnet: Option<Prefix>,
    /// When this node's lease expires (seconds since the epoch); `None`
    /// for a reservation.
    pub expires: Option<u64>,
    /// Full reads of the subnets (at start, and after the watch fell
    /// behind compaction).
    pub resyncs: u64,
    /// Failed exchanges with etcd.
    pub errors: u64,
    /// Keys under the subnets prefix that were not leases.
    pub bad_leases: u64,
    /// The last error; stays after the store comes back.
    pub last_error: Option<String>,
}

/// `port-add` and `port-del`: the port's number, and for an added port
/// how the daemon reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRef {
    /// The port's number.
    pub port: u16,
    /// `af-xdp`, `af-packet` or `tap` (port-add on a running daemon only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// One entry of `port-list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// The port's number.
    pub port: u16,
    /// Host-side interface name.
    pub interface: String,
    /// `pod`, `underlay` or `host`.
    pub role: PortRole,
    /// How the daemon moves its frames (`af-packet`, `udp-socket`, ...).
    pub kind: Option<String>,
    /// The worker thread that owns it (none for a split port).
    pub worker: Option<usize>,
    /// Split among every worker (`per_cpu`): each reads its own member
    /// of the port, steered by flow, and writes the port through it.
    #[serde(default)]
    pub split: bool,
    /// A pod port's address.
    pub ip: Option<Ipv4Addr>,
    /// A pod port's MAC.
    pub mac: Option<MacAddr>,
    /// Whether frames not from the pod's own MAC and IP are dropped.
    pub anti_spoof: bool,
    /// The container it belongs to.
    pub container_id: Option<String>,
    /// The interface name inside the container.
    #[serde(default)]
    pub ifname: Option<String>,
    /// The most the pod may send, in whole bytes (shown in bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_limit: Option<crate::EgressLimit>,
}

/// One entry of `route-list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// The destination.
    pub prefix: Prefix,
    /// Where it goes.
    pub next_hop: NextHopSpec,
}

/// `peer-add` and `peer-del`: the peer's number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRef {
    /// The peer's number.
    pub peer: u16,
}

/// One entry of `peer-list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Node name.
    pub name: String,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Its pod subnet.
    pub pod_cidr: Prefix,
    /// Its backend.
    pub backend: Backend,
    /// The VNI.
    pub vni: u32,
    /// Its VTEP MAC.
    pub vtep_mac: MacAddr,
    /// How packets reach it: the tunnel (`vxlan`, `ipip`, `udp`) or
    /// `direct`.
    pub forwarding: String,
}

/// `fdb-show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbTable {
    /// The entries.
    pub entries: Vec<FdbEntry>,
    /// The most entries the FDB holds.
    pub limit: usize,
    /// Learns refused because the FDB was full.
    pub refused: u64,
}

/// One FDB entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntry {
    /// The MAC.
    pub mac: MacAddr,
    /// The port it was learned on (or a number, if that port is gone).
    pub port: String,
    /// Programmed rather than learned.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Seconds since it was last seen.
    pub age_secs: u32,
}

/// `fdb-flush`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    /// Learned entries removed.
    pub flushed: usize,
}

/// One entry of `neigh-show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: MacAddr,
    /// The port it is behind.
    pub port: String,
    /// Learned from traffic rather than programmed.
    pub learned: bool,
}

/// `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Per port.
    pub ports: Vec<PortCounters>,
    /// Dropped frames per reason (reasons with none are left out).
    pub drops: BTreeMap<String, u64>,
    /// Per worker thread.
    pub workers: Vec<WorkerCounters>,
}

/// A port's counters, in `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    /// The port's name (or number, if it is gone).
    pub port: String,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames forwarded to the port to send; those it then failed to
    /// send count in `drops` too.
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames dropped on this port: received on it, or forwarded to it
    /// and not sent (`tx_failed`, `handoff_full`, `tx_device_dropped`,
    /// `port_gone`).
    pub drops: u64,
    /// Super-frames received whole.
    pub super_frames_in: u64,
    /// Super-frames sent whole.
    pub super_frames_out: u64,
    /// Super-frames cut in userspace because the egress could not take
    /// them whole.
    pub segmented: u64,
    /// The segments those cuts made.
    pub segments_made: u64,
    /// Partial checksums completed here.
    pub checksums_completed: u64,
    /// Segments merged into super-frames on receive.
    pub coalesced: u64,
    /// BIG TCP super-frames received here and cut into super-frames of at
    /// most 64 KiB for a next hop whose IPv4 lengths stop there.
    #[serde(default)]
    pub big_tcp_cut: u64,
    /// Small datagrams of one flow sent together, a batch per write,
    /// which the kernel cuts as late as it can (tunnel datagrams on the
    /// underlay, a flow's datagrams into a pod).
    #[serde(default)]
    pub datagrams_batched: u64,
    /// Frames of a pod that waited for its egress limit before they went
    /// on.
    #[serde(default)]
    pub egress_held: u64,
}

/// A worker's counters, in `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerCounters {
    /// The worker's number.
    pub worker: usize,
    /// Seconds spent working.
    pub busy_secs: f64,
    /// Seconds spent asleep.
    pub idle_secs: f64,
    /// Times it woke.
    pub wakeups: u64,
    /// Batches it processed.
    pub batches: u64,
    /// Frames in those batches.
    pub batch_packets: u64,
    /// The adaptive spin window, in seconds.
    pub spin_window_secs: f64,
    /// Spins that found work.
    pub spins_caught: u64,
    /// Spins that ran out.
    pub spins_expired: u64,
    /// Spins cut short by another task.
    pub spins_preempted: u64,
    /// Spins the worker's guard ended (also counted as preempted): it was
    /// moved back to its working class after a busy task kept it off its
    /// CPU past its window.
    #[serde(default)]
    pub spins_rescued: u64,
    /// Frames posted to the worker that owns their output port.
    pub handed_off: u64,
    /// Times it gave its CPU to the other workers.
    pub yields: u64,
    /// Whether it forwards in `SCHED_FIFO`.
    pub realtime: bool,
}

/// `capture`: what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureResult {
    /// The pcap file.
    pub file: String,
    /// Frames written.
    pub packets: u64,
}

/// `trace`: every decision, and the frames that would leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceResult {
    /// The pipeline's decisions, in order.
    pub steps: Vec<String>,
    /// The frames that would leave.
    pub outputs: Vec<TraceOutput>,
}

/// A frame a trace would send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceOutput {
    /// The port it leaves on.
    pub port: String,
    /// The frame, as hex.
    pub hex: String,
}
