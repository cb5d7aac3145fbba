//! Applies control requests to a node's data path: a thin translation
//! from the protocol's requests into [`Datapath`] calls and table edits,
//! and from their results into the protocol's replies.
//!
//! The handler owns a [`Pipeline`] of its own over the same tables, used
//! only for `trace` (a trace learns, counts and sends nothing, so it never
//! disturbs the workers). Every failure becomes an error reply; nothing in
//! a request can make the handler panic.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::ControlCounters;

use podswitch_engine::config::Backend;
use podswitch_engine::datapath::{AttachedPort, Datapath, RemovedPort};
use podswitch_engine::egress_limit::RateLimit;
use podswitch_engine::encap::ethernet::{EtherType, EthernetRepr};
use podswitch_engine::encap::ipv4::Ipv4Repr;
use podswitch_engine::encap::udp::UdpRepr;
use podswitch_engine::encap::{checksum, hex, IpProtocol, MacAddr, Vni};
use podswitch_engine::fib::NextHop;
use podswitch_engine::kernel_port::PodPortKind;
use podswitch_engine::peer::{Forwarding, PeerSpec};
use podswitch_engine::pipeline::Pipeline;
use podswitch_engine::tables::{PortSpec, Snapshot, Tables};
use podswitch_engine::worker::WorkerStats;
use serde::Serialize;
use serde_json::Value;

use crate::protocol::{
    CaptureResult, EgressLimit, FdbEntry, FdbTable, Flushed, FrameSpec, Neighbour, NextHopSpec,
    PeerInfo, PeerRef, PortCounters, PortInfo, PortRef, Request, RouteInfo, Stats, Status,
    StoreStatus, TraceOutput, TraceResult, VersionInfo, WorkerCounters, PROTOCOL_VERSION,
};

/// What a running daemon keeps beside the data path: its log, its state
/// file, its lease store. A handler without one (tests, `podswitchctl`
/// against an in-process server) changes the data path only.
pub trait DaemonHooks: Send + Sync + std::fmt::Debug {
    /// A request changed the tables (for the daemon's log: one line per
    /// state change).
    fn changed(&self, what: &str);
    /// A peer or route request was applied: a daemon keeps it, so that a
    /// restart brings it back (the default keeps nothing).
    fn applied(&self, _request: &Request) {}
    /// A pod port was added (`requested`: the kind its request named).
    /// Called before another port comes or goes, so it must not add or
    /// remove one itself.
    fn port_added(&self, _spec: &PortSpec, _requested: Option<PodPortKind>, _port: &AttachedPort) {}
    /// A pod port was removed; called as [`DaemonHooks::port_added`] is.
    fn port_removed(&self, _name: &str, _port: &RemovedPort) {}
    /// The lease store's health, for `status` (None: peers are static).
    fn store_status(&self) -> Option<StoreStatus> {
        None
    }
}

/// Longest capture, in seconds.
pub const MAX_CAPTURE_SECS: u64 = 3600;
/// Capture length when a request gives none.
pub const DEFAULT_CAPTURE_SECS: u64 = 10;

/// Serves requests against one node's data path.
#[derive(Debug)]
pub struct Handler {
    datapath: Arc<Datapath>,
    /// The data path's tables, which most requests read or edit.
    tables: Arc<Tables>,
    tracer: Mutex<Pipeline>,
    started: Instant,
    clock: fn() -> u32,
    hooks: Option<Arc<dyn DaemonHooks>>,
    /// Requests answered through the control socket.
    requests: Arc<ControlCounters>,
}

impl Handler {
    /// A handler over a data path of `tables` only (no workers, no kernel
    /// ports); `clock` gives the engine's seconds (FDB ages).
    pub fn new(tables: Arc<Tables>, clock: fn() -> u32) -> Self {
        Handler::build(Arc::new(Datapath::tables_only(tables)), clock, None)
    }

    /// A daemon's handler: requests reach `datapath`, and `hooks` hear
    /// of every change.
    pub fn over(datapath: Arc<Datapath>, clock: fn() -> u32, hooks: Arc<dyn DaemonHooks>) -> Self {
        Handler::build(datapath, clock, Some(hooks))
    }

    fn build(
        datapath: Arc<Datapath>,
        clock: fn() -> u32,
        hooks: Option<Arc<dyn DaemonHooks>>,
    ) -> Self {
        let tables = Arc::clone(datapath.tables());
        Handler {
            tracer: Mutex::new(Pipeline::new(Arc::clone(&tables))),
            tables,
            datapath,
            started: Instant::now(),
            clock,
            hooks,
            requests: Arc::default(),
        }
    }

    /// The data path's workers, whose load `stats` reports.
    pub fn workers(&self) -> Vec<Arc<WorkerStats>> {
        self.datapath.worker_stats()
    }

    /// The count of requests answered through the control socket.
    pub fn requests(&self) -> Arc<ControlCounters> {
        Arc::clone(&self.requests)
    }

    fn changed(&self, what: impl FnOnce() -> String) {
        if let Some(hooks) = &self.hooks {
            hooks.changed(&what());
        }
    }

    fn applied(&self, request: &Request) {
        if let Some(hooks) = &self.hooks {
            hooks.applied(request);
        }
    }

    /// Adds a pod port, opened as `kind` (none: the daemon's default):
    /// what `port-add` does, and what podswitchd does for the ports of its
    /// config and state files.
    pub fn add_port(
        &self,
        spec: PortSpec,
        kind: Option<PodPortKind>,
    ) -> Result<AttachedPort, String> {
        // The hooks run before another port comes or goes: a state file
        // written in the order of the changes.
        self.datapath
            .add_pod_port(spec.clone(), kind, |port| {
                if let Some(hooks) = &self.hooks {
                    hooks.port_added(&spec, kind, port);
                }
            })
            .map_err(|e| e.to_string())
    }

    /// Handles one request.
    pub fn handle(&self, request: &Request) -> Result<Value, String> {
        let err = |e: podswitch_engine::tables::TableError| e.to_string();
        match request {
            Request::Version => Ok(result(VersionInfo {
                podswitch: env!("CARGO_PKG_VERSION").into(),
                protocol: PROTOCOL_VERSION,
            })),
            Request::Status => Ok(result(self.status())),
            Request::PortAdd {
                interface,
                ip,
                mac,
                container_id,
                ifname,
                anti_spoof,
                kind,
                egress_limit,
            } => {
                let kind = *kind;
                let mut spec = PortSpec::pod(interface, *ip, *mac);
                spec.anti_spoof = *anti_spoof;
                spec.egress_limit = egress_limit.map(rate_limit).transpose()?;
                spec.container_id = container_id.clone();
                spec.ifname = ifname.clone();
                let port = self.add_port(spec, kind)?;
                Ok(result(PortRef {
                    port: port.id.0,
                    kind: port.kind,
                }))
            }
            Request::PortDel { interface } => {
                let removed = self
                    .datapath
                    .remove_pod_port(interface, |removed| {
                        if let Some(hooks) = &self.hooks {
                            hooks.port_removed(interface, removed);
                        }
                    })
                    .map_err(|e| e.to_string())?;
                Ok(result(PortRef {
                    port: removed.id.0,
                    kind: None,
                }))
            }
            Request::Capture {
                interface,
                file,
                packets,
                seconds,
            } => {
                let path = Path::new(file);
                if !path.is_absolute() {
                    return Err(format!("file {file:?}: give an absolute path (the daemon's working directory is not yours)"));
                }
                let seconds = seconds.unwrap_or(DEFAULT_CAPTURE_SECS);
                if seconds == 0 || seconds > MAX_CAPTURE_SECS {
                    return Err(format!("seconds must be 1 to {MAX_CAPTURE_SECS}"));
                }
                if *packets == Some(0) {
                    return Err("packets must be at least 1".into());
                }
                let captured = self
                    .datapath
                    .capture(interface, path, *packets, Duration::from_secs(seconds))
                    .map_err(|e| e.to_string())?;
                Ok(result(CaptureResult {
                    file: file.clone(),
                    packets: captured.packets,
                }))
            }
            Request::PortList => Ok(result(self.ports())),
            Request::RouteAdd { prefix, next_hop } => {
                let snap = self.tables.load();
                let next_hop = resolve(&snap, next_hop)?;
                self.tables.add_route(*prefix, next_hop).map_err(err)?;
                self.changed(|| format!("route {prefix} -> {next_hop:?} added"));
                self.applied(request);
                Ok(Value::Null)
            }
            Request::RouteDel { prefix } => {
                self.tables.remove_route(*prefix).map_err(err)?;
                self.changed(|| format!("route {prefix} removed"));
                self.applied(request);
                Ok(Value::Null)
            }
            Request::RouteList => Ok(result(routes(&self.tables))),
            Request::PeerAdd { .. } => {
                let spec = self.peer_spec(request)?;
                let (name, underlay_ip) = (spec.name.clone(), spec.underlay_ip);
                let id = self.tables.add_peer(spec).map_err(err)?;
                self.changed(|| format!("peer {name} at {underlay_ip} added"));
                self.applied(request);
                Ok(result(PeerRef { peer: id.0 }))
            }
            Request::PeerDel { name } => {
                let id = self.tables.remove_peer(name).map_err(err)?;
                self.changed(|| format!("peer {name} removed"));
                self.applied(request);
                Ok(result(PeerRef { peer: id.0 }))
            }
            Request::PeerList => Ok(result(peers(&self.tables.load()))),
            Request::FdbShow => {
                let snap = self.tables.load();
                let entries = self
                    .tables
                    .fdb
                    .entries((self.clock)())
                    .iter()
                    .map(|e| FdbEntry {
                        mac: e.mac,
                        port: port_name(&snap, e.port.0),
                        is_static: e.is_static,
                        age_secs: e.age_secs,
                    })
                    .collect();
                Ok(result(FdbTable {
                    entries,
                    limit: self.tables.fdb.limit(),
                    refused: self.tables.fdb.refused(),
                }))
            }
            Request::FdbFlush => {
                let flushed = self.tables.fdb.flush();
                self.changed(|| format!("fdb flushed ({flushed} entries)"));
                Ok(result(Flushed { flushed }))
            }
            Request::NeighShow => {
                let snap = self.tables.load();
                let mut list: Vec<Neighbour> = snap
                    .neighbours
                    .iter()
                    .map(|(ip, n)| Neighbour {
                        ip: *ip,
                        mac: n.mac,
                        port: port_name(&snap, n.port.0),
                        learned: n.learned,
                    })
                    .collect();
                list.sort_by_key(|n| n.ip);
                Ok(result(list))
            }
            Request::Stats => Ok(result(self.stats())),
            Request::Trace {
                in_port,
                hex: frame_hex,
                frame,
            } => {
                let snap = self.tables.load();
                let port = snap
                    .ports
                    .by_name(in_port)
                    .ok_or_else(|| format!("no port {in_port}"))?;
                let bytes = match (frame_hex, frame) {
                    (Some(h), None) => hex::decode(h).map_err(|e| format!("hex: {e}"))?,
                    (None, Some(spec)) => build_frame(&snap, port.spec.mac, port.spec.ip, spec)?,
                    _ => return Err("trace needs exactly one of \"hex\" and \"frame\"".into()),
                };
                if bytes.len() > MAX_TRACE_FRAME {
                    return Err(format!(
                        "a {}-byte frame: the longest a port hands over is {MAX_TRACE_FRAME}",
                        bytes.len()
                    ));
                }
                let gso_size = frame.as_ref().and_then(|f| f.gso_size);
                let id = port.id;
                drop(snap);
                let mut tracer = self.tracer.lock().unwrap_or_else(|e| e.into_inner());
                let traced = match gso_size {
                    Some(size) => tracer.trace_super_frame(&bytes, id, (self.clock)(), size),
                    None => tracer.trace(&bytes, id, (self.clock)()),
                };
                let snap = self.tables.load();
                Ok(result(TraceResult {
                    steps: traced.steps.iter().map(|s| s.to_string()).collect(),
                    outputs: traced
                        .outputs
                        .iter()
                        .map(|(p, f)| TraceOutput {
                            port: port_name(&snap, p.0),
                            hex: hex::encode(f),
                        })
                        .collect(),
                }))
            }
        }
    }

    /// The peer a `PeerAdd` request describes.
    fn peer_spec(&self, request: &Request) -> Result<PeerSpec, String> {
        let Request::PeerAdd {
            name,
            underlay_ip,
            pod_cidr,
            vtep_mac,
            underlay_mac,
            backend,
            vni,
        } = request
        else {
            return Err("not a peer-add request".into());
        };
        let snap = self.tables.load();
        let underlay_ip = *underlay_ip;
        let o = underlay_ip.octets();
        let backend = backend.unwrap_or(snap.node.backend);
        // host-gw next hops need the peer's real MAC: ask the underlay
        // when the request does not say.
        let direct = backend == Backend::HostGw
            || (backend == Backend::DirectRouting && snap.node.on_underlay_subnet(underlay_ip));
        Ok(PeerSpec {
            name: name.clone(),
            underlay_ip,
            underlay_mac: match underlay_mac {
                Some(m) => *m,
                None if direct && self.datapath.is_running() => self
                    .datapath
                    .resolve_neighbour(underlay_ip)
                    .map_err(|e| e.to_string())?,
                None => MacAddr([0x02, 0x00, o[0], o[1], o[2], o[3]]),
            },
            pod_cidr: *pod_cidr,
            backend,
            vni: match vni {
                Some(v) => Vni::new(*v).ok_or_else(|| format!("vni {v} does not fit 24 bits"))?,
                None => snap.node.vni,
            },
            vtep_mac: *vtep_mac,
        })
    }

    /// Puts the peer a `PeerAdd` request describes in place of the peer
    /// of that name, as one table change: no snapshot is without it (the
    /// traffic to its pods flows on while its VTEP or address changes),
    /// and one log line says so.
    pub fn replace_peer(&self, request: &Request) -> Result<Value, String> {
        let spec = self.peer_spec(request)?;
        let (name, underlay_ip, vtep_mac) = (spec.name.clone(), spec.underlay_ip, spec.vtep_mac);
        let id = self
            .tables
            .edit(|editor| {
                editor.remove_peer(&spec.name)?;
                editor.add_peer(spec.clone())
            })
            .map_err(|e| e.to_string())?;
        self.changed(|| format!("peer {name} changed: now at {underlay_ip}, VTEP {vtep_mac}"));
        self.applied(request);
        Ok(result(PeerRef { peer: id.0 }))
    }

    /// Applies many `PeerAdd` requests as one table change (one copy of
    /// the peer table and one new snapshot, where one request at a time
    /// copies the growing table once per peer); each gets its own answer,
    /// as [`Handler::handle`] would have given it.
    pub fn add_peers(&self, requests: &[Request]) -> Vec<Result<Value, String>> {
        let specs: Vec<Result<PeerSpec, String>> =
            requests.iter().map(|r| self.peer_spec(r)).collect();
        let added = self.tables.edit(|editor| {
            Ok(specs
                .iter()
                .map(|spec| match spec {
                    Ok(spec) => editor.add_peer(spec.clone()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.clone()),
                })
                .collect::<Vec<_>>())
        });
        let added = match added {
            Ok(added) => added,
            Err(e) => return requests.iter().map(|_| Err(e.to_string())).collect(),
        };
        requests
            .iter()
            .zip(specs)
            .zip(added)
            .map(|((request, spec), id)| {
                let id = id?;
                if let Ok(spec) = spec {
                    self.changed(|| format!("peer {} at {} added", spec.name, spec.underlay_ip));
                }
                self.applied(request);
                Ok(result(PeerRef { peer: id.0 }))
            })
            .collect()
    }

    fn ports(&self) -> Vec<PortInfo> {
        self.tables
            .load()
            .ports
            .iter()
            .map(|p| PortInfo {
                port: p.id.0,
                interface: p.spec.name.clone(),
                role: p.spec.role,
                kind: self.datapath.port_kind(p.id),
                worker: self.datapath.port_worker(p.id),
                split: self.datapath.port_split(p.id),
                ip: p.spec.ip,
                mac: p.spec.mac,
                anti_spoof: p.spec.anti_spoof,
                container_id: p.spec.container_id.clone(),
                ifname: p.spec.ifname.clone(),
                egress_limit: p.spec.egress_limit.map(egress_limit),
            })
            .collect()
    }

    fn status(&self) -> Status {
        let snap = self.tables.load();
        let node = &snap.node;
        Status {
            node: node.name.clone(),
            pod_cidr: node.pod_cidr,
            cluster_cidr: node.cluster_cidr,
            gateway_mode: node.gateway_mode,
            gateway: node.gateway_ip,
            underlay_ip: node.underlay_ip,
            vtep_mac: node.vtep_mac,
            backend: node.backend,
            vni: node.vni.get(),
            mtu: node.pod_mtu(),
            underlay_mtu: node.underlay_mtu,
            ports: snap.ports.iter().count(),
            peers: snap.peers.len(),
            routes: snap.fib.len(),
            uptime_secs: self.started.elapsed().as_secs(),
            store: self.hooks.as_ref().and_then(|h| h.store_status()),
        }
    }

    fn stats(&self) -> Stats {
        self.datapath.count_device_drops();
        let snap = self.tables.load();
        let s = self.tables.stats.snapshot();
        let ports = s
            .ports
            .iter()
            .map(|(p, c)| PortCounters {
                port: port_name(&snap, p.0),
                rx_packets: c.rx_packets,
                rx_bytes: c.rx_bytes,
                tx_packets: c.tx_packets,
                tx_bytes: c.tx_bytes,
                drops: c.drops,
                super_frames_in: c.super_frames_in,
                super_frames_out: c.super_frames_out,
                segmented: c.segmented,
                segments_made: c.segments_made,
                checksums_completed: c.checksums_completed,
                coalesced: c.coalesced,
                big_tcp_cut: c.big_tcp_cut,
                datagrams_batched: c.datagrams_batched,
                egress_held: c.egress_held,
            })
            .collect();
        let drops = s
            .drops
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.name().to_string(), *n))
            .collect();
        let workers = self
            .workers()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let s = w.snapshot();
                WorkerCounters {
                    worker: i,
                    busy_secs: s.busy_secs(),
                    idle_secs: s.idle_secs,
                    wakeups: s.wakeups,
                    batches: s.batches,
                    batch_packets: s.batch_packets,
                    spin_window_secs: s.spin_window_secs,
                    spins_caught: s.spins_caught,
                    spins_expired: s.spins_expired,
                    spins_preempted: s.spins_preempted,
                    spins_rescued: s.spins_rescued,
                    handed_off: s.handed_off,
                    yields: s.yields,
                    realtime: s.realtime,
                }
            })
            .collect();
        Stats {
            ports,
            drops,
            workers,
        }
    }
}

/// A reply's result as JSON: every reply type serialises.
/// The engine's limit (bytes) for the protocol's (bits, as CNI gives
/// them), refused when either is under a byte, which would drop every
/// frame.
pub fn rate_limit(limit: EgressLimit) -> Result<RateLimit, String> {
    RateLimit::from_bits(limit.rate_bits, limit.burst_bits).ok_or_else(|| {
        format!(
            "egress_limit: rate_bits ({}) and burst_bits ({}) must each be at least 8 (one byte)",
            limit.rate_bits, limit.burst_bits
        )
    })
}

/// The protocol's limit (bits) for the engine's (bytes).
pub fn egress_limit(limit: RateLimit) -> EgressLimit {
    EgressLimit {
        rate_bits: limit.bytes_per_sec.saturating_mul(8),
        burst_bits: limit.burst_bytes.saturating_mul(8),
    }
}

fn result(reply: impl Serialize) -> Value {
    serde_json::to_value(reply).expect("reply types serialise")
}

/// A port's name, or its number if it is gone.
fn port_name(snap: &Snapshot, id: u16) -> String {
    snap.ports
        .name_or_number(podswitch_engine::port::PortId(id))
}

fn resolve(snap: &Snapshot, spec: &NextHopSpec) -> Result<NextHop, String> {
    let peer = |name: &str| {
        snap.peers
            .by_name(name)
            .map(|p| p.id)
            .ok_or_else(|| format!("no peer {name}"))
    };
    Ok(match spec {
        NextHopSpec::Local(name) => NextHop::Local(
            snap.ports
                .by_name(name)
                .map(|p| p.id)
                .ok_or_else(|| format!("no port {name}"))?,
        ),
        NextHopSpec::Peer(name) => NextHop::Peer(peer(name)?),
        NextHopSpec::Direct(name) => NextHop::Direct(peer(name)?),
        NextHopSpec::Host => NextHop::Host,
        NextHopSpec::Blackhole => NextHop::Blackhole,
    })
}

/// A FIB next hop as the protocol names it: ports and peers by name (a
/// number, `#3`, for a peer that is gone).
fn describe(snap: &Snapshot, nh: &NextHop) -> NextHopSpec {
    let peer_name = |p: podswitch_engine::peer::PeerId| {
        snap.peers
            .get(p)
            .map(|p| p.spec.name.clone())
            .unwrap_or_else(|| format!("#{}", p.0))
    };
    match nh {
        NextHop::Local(p) => NextHopSpec::Local(port_name(snap, p.0)),
        NextHop::Peer(p) => NextHopSpec::Peer(peer_name(*p)),
        NextHop::Direct(p) => NextHopSpec::Direct(peer_name(*p)),
        NextHop::Host => NextHopSpec::Host,
        NextHop::Blackhole => NextHopSpec::Blackhole,
    }
}

fn routes(tables: &Tables) -> Vec<RouteInfo> {
    let (snap, routes) = tables.routes();
    routes
        .iter()
        .map(|(p, nh)| RouteInfo {
            prefix: *p,
            next_hop: describe(&snap, nh),
        })
        .collect()
}

fn peers(snap: &Snapshot) -> Vec<PeerInfo> {
    snap.peers
        .iter()
        .map(|p| PeerInfo {
            name: p.spec.name.clone(),
            underlay_ip: p.spec.underlay_ip,
            pod_cidr: p.spec.pod_cidr,
            backend: p.spec.backend,
            vni: p.spec.vni.get(),
            vtep_mac: p.spec.vtep_mac,
            forwarding: match &p.forwarding {
                Forwarding::Tunnel(t) => t.tunnel().config().mode.to_string(),
                Forwarding::Direct => "direct".to_string(),
            },
        })
        .collect()
}

/// The longest frame a trace takes: a BIG TCP super-frame as long as a
/// pod's veth may hand over (`POD_GSO_IPV4_MAX_SIZE`).
const MAX_TRACE_FRAME: usize = podswitch_host::netlink::POD_GSO_IPV4_MAX_SIZE as usize;

/// Builds a frame from its fields: Ethernet, IPv4 and an ICMP echo
/// request, UDP datagram or TCP SYN.
fn build_frame(
    snap: &Snapshot,
    port_mac: Option<MacAddr>,
    port_ip: Option<Ipv4Addr>,
    spec: &FrameSpec,
) -> Result<Vec<u8>, String> {
    let src_mac = match spec.src_mac {
        Some(m) => m,
        None => port_mac.ok_or("src_mac: the port has no MAC, give one")?,
    };
    let dst_mac = match spec.dst_mac {
        Some(m) => m,
        None => snap.node.gateway_mac,
    };
    let src = match &spec.src_ip {
        Some(s) => *s,
        None => port_ip.ok_or("src_ip: the port has no address, give one")?,
    };
    let dst = spec.dst_ip;
    let payload_len = spec.payload_len.unwrap_or(32);
    let limit = if spec.gso_size.is_some() {
        // A BIG TCP super-frame as the CNI plugin lets a pod's veth carry.
        MAX_TRACE_FRAME - 14 - 20 - 20
    } else {
        9000
    };
    if payload_len > limit {
        return Err(format!("payload_len {payload_len} is above {limit}"));
    }
    if spec.gso_size == Some(0) {
        return Err("gso_size 0: a segment carries at least one byte".into());
    }
    if spec.gso_size.is_some() && spec.protocol.as_deref() != Some("tcp") {
        return Err("gso_size: a super-frame is TCP here (give protocol tcp)".into());
    }
    let (protocol, l4_len) = match spec.protocol.as_deref().unwrap_or("icmp") {
        "icmp" => (IpProtocol::Icmp, 8),
        "udp" => (IpProtocol::Udp, 8),
        "tcp" => (IpProtocol::Tcp, 20),
        other => return Err(format!("protocol {other:?}: icmp, udp or tcp")),
    };
    let mut f = vec![0u8; 14 + 20 + l4_len + payload_len];
    // Longer than an IPv4 total length can say: a BIG TCP super-frame,
    // whose length says 0 (the kernel's `iph_set_totlen`).
    let big_tcp = 20 + l4_len + payload_len > usize::from(u16::MAX);
    EthernetRepr {
        src: src_mac,
        dst: dst_mac,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut f);
    Ipv4Repr {
        src,
        dst,
        protocol,
        payload_len: if big_tcp { 0 } else { l4_len + payload_len },
        ttl: spec.ttl.unwrap_or(64),
        tos: 0,
        ident: 1,
        dont_frag: spec.dont_frag.unwrap_or(true),
    }
    .emit(&mut f[14..]);
    if big_tcp {
        f[16..18].fill(0);
        f[24..26].fill(0);
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
    let l4 = &mut f[34..];
    match protocol {
        IpProtocol::Icmp => {
            l4[0] = 8;
            l4[4..8].copy_from_slice(&[0, 1, 0, 1]);
            let c = checksum::checksum(l4);
            l4[2..4].copy_from_slice(&c.to_be_bytes());
        }
        IpProtocol::Udp => {
            UdpRepr {
                src_port: 40000,
                dst_port: 5201,
                payload_len,
            }
            .emit(l4);
            podswitch_engine::encap::udp::UdpPacket::new_unchecked(&mut l4[..])
                .fill_checksum(src, dst);
        }
        _ if spec.gso_size.is_some() => {
            // A TSO super-frame as a pod's kernel hands it over: ACK|PSH,
            // and only the pseudo-header sum in the checksum field.
            l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
            l4[2..4].copy_from_slice(&5201u16.to_be_bytes());
            l4[12] = 0x50;
            l4[13] = 0x18;
            // The TCP length in the pseudo-header as the kernel adds it,
            // 32 bits wide (csum_tcpudp_nofold): a BIG TCP one exceeds 16.
            let tcp_len = (20 + payload_len) as u32;
            let sum = checksum::pseudo_header_v4_long(src, dst, 6, tcp_len);
            l4[16..18].copy_from_slice(&checksum::fold(sum).to_be_bytes());
        }
        _ => {
            l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
            l4[2..4].copy_from_slice(&80u16.to_be_bytes());
            l4[12] = 0x50;
            l4[13] = 0x02; // SYN
            let sum = checksum::pseudo_header_v4(src, dst, 6, (20 + payload_len) as u16);
            let c = !checksum::fold(checksum::accumulate(sum, l4));
            l4[16..18].copy_from_slice(&c.to_be_bytes());
        }
    }
    Ok(f)
}
