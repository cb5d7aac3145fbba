//! The tables the pipeline reads, published together as one [`Snapshot`].
//!
//! # Contract
//! - Readers (workers) load the current snapshot once per batch with one
//!   atomic load and read it without locks. A snapshot never changes; FIB,
//!   peers, ports and neighbours in it are consistent with each other (a
//!   route never names a peer that its snapshot lacks).
//! - Writers (the control socket, and the data path learning a neighbour
//!   from ARP, which is rare) serialise on a mutex, build the next snapshot
//!   from the current one (sharing every table they did not change, and
//!   every FIB chunk a route change did not touch, see [`crate::fib`]) and
//!   publish it with one atomic store (RCU through `arc-swap`). An edit
//!   that fails is undone step by step and publishes nothing.
//! - A replaced snapshot is freed when the last reader holding it drops it:
//!   no reader ever sees freed memory.
//! - The FDB and the counters are not in the snapshot: the data path
//!   writes them, with atomics (see [`crate::fdb`], [`crate::stats`]).

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use podswitch_encap::{DecapConfig, Decapsulator, MacAddr};

use crate::config::{Backend, GatewayMode, NodeConfig};
use crate::egress_limit::{EgressBucket, RateLimit};
use crate::fdb::Fdb;
use crate::fib::{Fib, NextHop, Prefix, RouteTable};
use crate::host_connections::HostConnections;
use crate::ipmap::IpMap;
use crate::peer::{Forwarding, Peer, PeerId, PeerSpec, PeerTable};
use crate::port::{PortId, PortRole};
use crate::stats::Stats;

/// A route the node's own kernel takes into the host port
/// ([`Tables::host_routes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostRoute {
    /// Where it leads.
    pub prefix: Prefix,
    /// The address the node sends from along it (the route's `src`).
    pub source: Ipv4Addr,
}

/// What the control side says about a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Interface name.
    pub name: String,
    /// Pod, underlay or host.
    pub role: PortRole,
    /// The pod's MAC (pod ports).
    pub mac: Option<MacAddr>,
    /// The pod's IPv4 address (pod ports).
    pub ip: Option<Ipv4Addr>,
    /// Drop frames whose source MAC or IP is not the pod's own.
    pub anti_spoof: bool,
    /// The container it belongs to.
    pub container_id: Option<String>,
    /// The interface name inside the container (CNI_IFNAME): with the
    /// container id, the CNI attachment this port is.
    pub ifname: Option<String>,
    /// The most a pod may send (the CNI bandwidth capability's egress
    /// rate and burst): past the burst its frames wait in the worker for
    /// the rate (`egress_limit`, `worker::shaper`).
    pub egress_limit: Option<RateLimit>,
}

impl PortSpec {
    /// A pod port with anti-spoofing on.
    pub fn pod(name: &str, ip: Ipv4Addr, mac: MacAddr) -> Self {
        PortSpec {
            name: name.into(),
            role: PortRole::Pod,
            mac: Some(mac),
            ip: Some(ip),
            anti_spoof: true,
            container_id: None,
            ifname: None,
            egress_limit: None,
        }
    }

    /// The underlay port.
    pub fn underlay(name: &str) -> Self {
        PortSpec {
            name: name.into(),
            role: PortRole::Underlay,
            mac: None,
            ip: None,
            anti_spoof: false,
            container_id: None,
            ifname: None,
            egress_limit: None,
        }
    }

    /// The host port.
    pub fn host(name: &str) -> Self {
        PortSpec {
            role: PortRole::Host,
            ..PortSpec::underlay(name)
        }
    }
}

/// An attached port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    /// Its id.
    pub id: PortId,
    /// What the control side said.
    pub spec: PortSpec,
    /// The bucket that enforces `spec.egress_limit`, shared by the workers
    /// that read the port.
    pub bucket: Option<Arc<EgressBucket>>,
}

/// The attached ports.
#[derive(Debug, Clone, Default)]
pub struct PortTable {
    by_id: Vec<Option<PortEntry>>,
    /// Pod ports on the bridge segment (bridge mode), in id order.
    pub segment: Vec<PortId>,
    /// The underlay port.
    pub underlay: Option<PortId>,
    /// The host port.
    pub host: Option<PortId>,
}

impl PortTable {
    /// The port with this id.
    #[inline]
    pub fn get(&self, id: PortId) -> Option<&PortEntry> {
        self.by_id.get(usize::from(id.0)).and_then(Option::as_ref)
    }

    /// Every port.
    pub fn iter(&self) -> impl Iterator<Item = &PortEntry> {
        self.by_id.iter().flatten()
    }

    /// The port with this interface name.
    pub fn by_name(&self, name: &str) -> Option<&PortEntry> {
        self.iter().find(|p| p.spec.name == name)
    }

    /// The interface name of port `id`, or `#id` once it is detached
    /// (counters and learned entries outlive their port).
    pub fn name_or_number(&self, id: PortId) -> String {
        self.get(id)
            .map(|p| p.spec.name.clone())
            .unwrap_or_else(|| format!("#{}", id.0))
    }
}

/// A pod's MAC, as the ARP table (`ip neigh`) knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Its MAC.
    pub mac: MacAddr,
    /// Its port.
    pub port: PortId,
    /// Learned from ARP (not configured with the port).
    pub learned: bool,
}

/// Everything the pipeline reads, as of one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The node.
    pub node: Arc<NodeConfig>,
    /// Routes.
    pub fib: Arc<Fib>,
    /// Other nodes.
    pub peers: Arc<PeerTable>,
    /// Ports.
    pub ports: Arc<PortTable>,
    /// Local pods' MACs by IP.
    pub neighbours: Arc<IpMap<Neighbour>>,
    /// Which tunnels the underlay accepts.
    pub decap: Decapsulator,
    /// Version, incremented at each publish.
    pub version: u64,
}

/// Why a control request could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// A port with this name is attached.
    PortExists(String),
    /// No such port.
    NoSuchPort(String),
    /// Port ids are exhausted.
    TooManyPorts(usize),
    /// A pod port needs its IP and MAC.
    PodPortIncomplete(String),
    /// The address is attached to another port.
    AddressInUse(Ipv4Addr, String),
    /// The pod address is outside the node's pod subnet.
    AddressOutsidePodCidr(Ipv4Addr, Prefix),
    /// A second underlay or host port.
    RoleTaken(PortRole),
    /// A peer with this name or underlay address exists.
    PeerExists(String),
    /// No such peer.
    NoSuchPeer(String),
    /// Peer ids are exhausted.
    TooManyPeers,
    /// The peer's pod subnet overlaps ours.
    PeerOverlapsNode(Prefix),
    /// No route for this prefix.
    NoSuchRoute(Prefix),
    /// A route names a port or peer that does not exist.
    BadNextHop(NextHop),
    /// A pod address the node keeps for itself or the subnet (the
    /// gateway, the network or the broadcast address).
    ReservedAddress(Ipv4Addr, &'static str),
    /// A pod MAC that no single interface can own (multicast, broadcast,
    /// zero) or that is the gateway's.
    BadPodMac(MacAddr, &'static str),
    /// A `local` route to a port that is not a pod's.
    LocalRouteToNonPod(String),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::PortExists(n) => write!(f, "port {n} is already attached"),
            TableError::NoSuchPort(n) => write!(f, "no port {n}"),
            TableError::TooManyPorts(max) => write!(f, "all {max} port ids are in use"),
            TableError::PodPortIncomplete(n) => {
                write!(f, "pod port {n} needs an IP address and a MAC")
            }
            TableError::AddressInUse(ip, n) => write!(f, "{ip} is already attached on port {n}"),
            TableError::AddressOutsidePodCidr(ip, p) => {
                write!(f, "{ip} is outside this node's pod subnet {p}")
            }
            TableError::RoleTaken(r) => write!(f, "there is already a {r} port"),
            TableError::PeerExists(n) => {
                write!(f, "peer {n} exists (same name or underlay address)")
            }
            TableError::NoSuchPeer(n) => write!(f, "no peer {n}"),
            TableError::TooManyPeers => f.write_str("all peer ids are in use"),
            TableError::PeerOverlapsNode(p) => {
                write!(f, "peer pod subnet {p} overlaps this node's")
            }
            TableError::NoSuchRoute(p) => write!(f, "no route for {p}"),
            TableError::BadNextHop(nh) => write!(f, "next hop {nh} does not exist"),
            TableError::ReservedAddress(ip, what) => {
                write!(f, "{ip} is the pod subnet's {what}: no pod may have it")
            }
            TableError::BadPodMac(mac, why) => write!(f, "pod MAC {mac} {why}"),
            TableError::LocalRouteToNonPod(n) => {
                write!(f, "a local route leads to a pod port, and {n} is not one")
            }
        }
    }
}

impl std::error::Error for TableError {}

/// The tables of one node: the published snapshot, the FDB and counters.
#[derive(Debug)]
pub struct Tables {
    current: ArcSwap<Snapshot>,
    writer: Mutex<RouteTable>,
    /// MAC learning table of the bridge segment.
    pub fdb: Fdb,
    /// The connections the host port handed on from a pod to a pod,
    /// whose replies go back through it (Services).
    pub host_connections: HostConnections,
    /// Counters, shared with the kernel ports, which count their own
    /// drops in them.
    pub stats: Arc<Stats>,
    max_ports: usize,
}

fn decap_for(node: &NodeConfig) -> Decapsulator {
    let vxlan = matches!(node.backend, Backend::Vxlan | Backend::DirectRouting);
    Decapsulator::new(DecapConfig {
        vxlan_port: vxlan.then_some(node.vxlan_port),
        vni: node.vni,
        ip_in_udp_port: (node.backend == Backend::Udp).then_some(node.udp_port),
        ipip: node.backend == Backend::Ipip,
        ignore_vxlan_reserved: false,
    })
}

impl Tables {
    /// Tables for `node` with room for `max_ports` ports. The node's own
    /// routes are installed: its pod subnet blackholed (addresses with no
    /// pod; each attached pod gets a /32), the default route to the host,
    /// and in bridge mode the gateway address (cni0's) to the host.
    pub fn new(node: NodeConfig, max_ports: usize) -> Arc<Tables> {
        let mut routes = RouteTable::new();
        routes.insert(node.pod_cidr, NextHop::Blackhole);
        routes.insert(
            Prefix::new_truncating(Ipv4Addr::UNSPECIFIED, 0),
            NextHop::Host,
        );
        if node.gateway_mode == GatewayMode::Bridge {
            routes.insert(Prefix::new_truncating(node.gateway_ip, 32), NextHop::Host);
        }
        let snapshot = Snapshot {
            decap: decap_for(&node),
            fib: routes.fib(),
            node: Arc::new(node.clone()),
            peers: Arc::default(),
            ports: Arc::default(),
            neighbours: Arc::default(),
            version: 0,
        };
        Arc::new(Tables {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(routes),
            fdb: Fdb::new(node.fdb_limit, node.fdb_aging_secs),
            host_connections: HostConnections::new(),
            stats: Arc::new(Stats::new(max_ports)),
            max_ports,
        })
    }

    /// The current snapshot (one atomic load; no lock).
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies a set of changes and publishes them as one new snapshot.
    /// Nothing is published if `f` fails.
    pub fn edit<R>(
        &self,
        f: impl FnOnce(&mut Editor<'_>) -> Result<R, TableError>,
    ) -> Result<R, TableError> {
        // A panic while editing unwinds through the editor's drop, which
        // undoes its route changes: the route table behind a poisoned lock
        // still matches the published snapshot.
        let mut routes = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        let mut editor = Editor {
            next: (*current).clone(),
            routes: &mut routes,
            undo: Vec::new(),
            max_ports: self.max_ports,
            detached: Vec::new(),
        };
        // On failure the editor is dropped here, undoing its route changes.
        let result = f(&mut editor)?;
        let routes_changed = !editor.undo.is_empty();
        editor.undo.clear();
        let mut next = editor.next.clone();
        if routes_changed {
            next.fib = editor.routes.fib();
        }
        let detached = std::mem::take(&mut editor.detached);
        drop(editor);
        next.version = current.version + 1;
        self.current.store(Arc::new(next));
        for port in detached {
            self.fdb.remove_port(port);
        }
        Ok(result)
    }

    /// Attaches a port; see [`Editor::attach_port`].
    pub fn attach_port(&self, spec: PortSpec) -> Result<PortId, TableError> {
        self.edit(|e| e.attach_port(spec))
    }

    /// Detaches a port by name.
    pub fn detach_port(&self, name: &str) -> Result<PortId, TableError> {
        self.edit(|e| e.detach_port(name))
    }

    /// Adds a peer; see [`Editor::add_peer`].
    pub fn add_peer(&self, spec: PeerSpec) -> Result<PeerId, TableError> {
        self.edit(|e| e.add_peer(spec))
    }

    /// Removes a peer by name.
    pub fn remove_peer(&self, name: &str) -> Result<PeerId, TableError> {
        self.edit(|e| e.remove_peer(name))
    }

    /// Adds or replaces a route.
    pub fn add_route(&self, prefix: Prefix, next_hop: NextHop) -> Result<(), TableError> {
        self.edit(|e| e.add_route(prefix, next_hop))
    }

    /// Removes a route.
    pub fn remove_route(&self, prefix: Prefix) -> Result<NextHop, TableError> {
        self.edit(|e| e.remove_route(prefix))
    }

    /// Every route, by prefix, with the snapshot they belong to (to name
    /// their ports and peers). A published [`Fib`] answers lookups only; the
    /// list lives with the writer.
    pub fn routes(&self) -> (Arc<Snapshot>, Vec<(Prefix, NextHop)>) {
        let routes = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let list = routes.routes().iter().map(|(p, nh)| (*p, *nh)).collect();
        (self.snapshot(), list)
    }

    /// The prefixes the node's own kernel routes into the host port: what
    /// the FIB sends anywhere but back to the node, less what a shorter one
    /// of them covers (a pod's /32 inside the node's subnet). A flannel
    /// node's kernel has one route per node's subnet and a Calico node's
    /// one per block, and no route for the rest of the cluster CIDR: an
    /// address of a subnet no node holds follows the node's own routes
    /// (its default route, or Net Unreachable), where a route for the
    /// whole cluster CIDR into podswitch would hand it back to the node,
    /// which would send it in again (an ICMP redirect to the pod first).
    ///
    /// Each comes with the address the node sends from along it, as a
    /// kernel node's route through flannel.1 or cni0 gives it
    /// ([`NodeConfig::address_towards`] its next hop; towards its own
    /// pods for the node's own subnet, a blackhole that holds them). Not
    /// towards a host-gw peer: a kernel node sends from its underlay
    /// address there, and the peer's kernel, which sees its pods' replies
    /// but not (through podswitch) the requests, would take them for new
    /// connections out of the cluster and masquerade them; the node's
    /// pod-side address stays inside the cluster CIDR.
    pub fn host_routes(&self) -> Vec<HostRoute> {
        let (snap, routes) = self.routes();
        let away: std::collections::HashMap<Prefix, NextHop> = routes
            .into_iter()
            .filter(|(prefix, next_hop)| *next_hop != NextHop::Host && !prefix.is_default())
            .collect();
        let node = &snap.node;
        let mut out: Vec<HostRoute> = away
            .iter()
            .filter(|(prefix, _)| {
                (1..prefix.prefix_len())
                    .all(|len| !away.contains_key(&Prefix::new_truncating(prefix.addr(), len)))
            })
            .map(|(prefix, next_hop)| HostRoute {
                prefix: *prefix,
                source: match next_hop {
                    _ if *prefix == node.pod_cidr => node.address_towards_pods(),
                    NextHop::Direct(_) => node.host_address,
                    _ => node.address_towards(Some(*next_hop)),
                },
            })
            .collect();
        out.sort();
        out
    }

    /// Records that `ip` is at `mac` behind `port`, learned from ARP.
    /// Lock-free when nothing changes (the common case); takes the writer
    /// lock only to publish a new or moved entry, and refuses new entries
    /// past the node's neighbour limit.
    pub fn learn_neighbour(&self, ip: Ipv4Addr, mac: MacAddr, port: PortId) -> bool {
        let known = self.load().neighbours.get(&ip).copied();
        match known {
            Some(n) if n.mac == mac && n.port == port => return false,
            Some(n) if !n.learned => return false, // configured entries win
            _ => {}
        }
        self.edit(|e| {
            if e.next.neighbours.len() >= e.next.node.neighbour_limit
                && !e.next.neighbours.contains_key(&ip)
            {
                return Ok(false);
            }
            Arc::make_mut(&mut e.next.neighbours).insert(
                ip,
                Neighbour {
                    mac,
                    port,
                    learned: true,
                },
            );
            Ok(true)
        })
        .unwrap_or(false)
    }
}

/// Changes being prepared for the next snapshot; see [`Tables::edit`].
#[derive(Debug)]
pub struct Editor<'a> {
    next: Snapshot,
    /// The routes, edited in place: edits that touch no route (a learned
    /// neighbour, a port without an address) leave the FIB as it is.
    routes: &'a mut RouteTable,
    /// Each route change's prefix and what it held before, to undo an edit
    /// that fails (or panics) before it is published.
    undo: Vec<(Prefix, Option<NextHop>)>,
    max_ports: usize,
    detached: Vec<PortId>,
}

impl Drop for Editor<'_> {
    fn drop(&mut self) {
        while let Some((prefix, before)) = self.undo.pop() {
            match before {
                Some(next_hop) => self.routes.insert(prefix, next_hop),
                None => self.routes.remove(&prefix),
            };
        }
    }
}

impl Editor<'_> {
    fn remove_routes_via(&mut self, next_hop: NextHop) {
        for prefix in self.routes.remove_via(next_hop) {
            self.undo.push((prefix, Some(next_hop)));
        }
    }

    /// The snapshot as it stands with the changes so far.
    pub fn snapshot(&self) -> &Snapshot {
        &self.next
    }

    fn ports_mut(&mut self) -> &mut PortTable {
        Arc::make_mut(&mut self.next.ports)
    }

    fn set_route(&mut self, prefix: Prefix, next_hop: NextHop) {
        let before = self.routes.insert(prefix, next_hop);
        self.undo.push((prefix, before));
    }

    /// Attaches a port. A pod port needs its IP (inside the node's pod
    /// subnet) and MAC; it gets a /32 route and a neighbour entry, and in
    /// bridge mode joins the segment. There is at most one underlay and one
    /// host port.
    pub fn attach_port(&mut self, spec: PortSpec) -> Result<PortId, TableError> {
        let ports = &self.next.ports;
        if ports.by_name(&spec.name).is_some() {
            return Err(TableError::PortExists(spec.name));
        }
        match spec.role {
            PortRole::Underlay if ports.underlay.is_some() => {
                return Err(TableError::RoleTaken(spec.role))
            }
            PortRole::Host if ports.host.is_some() => return Err(TableError::RoleTaken(spec.role)),
            _ => {}
        }
        let pod = if spec.role == PortRole::Pod {
            let (Some(ip), Some(mac)) = (spec.ip, spec.mac) else {
                return Err(TableError::PodPortIncomplete(spec.name));
            };
            if !self.next.node.pod_cidr.contains(ip) {
                return Err(TableError::AddressOutsidePodCidr(
                    ip,
                    self.next.node.pod_cidr,
                ));
            }
            let node = &self.next.node;
            let cidr = node.pod_cidr;
            let host_bits = 32 - u32::from(cidr.prefix_len());
            let broadcast = Ipv4Addr::from(
                u32::from(cidr.addr()) | u32::MAX.checked_shr(32 - host_bits).unwrap_or(0),
            );
            let reserved = if ip == node.gateway_ip {
                Some("gateway")
            } else if host_bits >= 2 && ip == cidr.addr() {
                Some("network address")
            } else if host_bits >= 2 && ip == broadcast {
                Some("broadcast address")
            } else {
                None
            };
            if let Some(what) = reserved {
                return Err(TableError::ReservedAddress(ip, what));
            }
            if mac.is_multicast() || mac == MacAddr::ZERO {
                return Err(TableError::BadPodMac(
                    mac,
                    "is multicast, broadcast or zero: no single interface owns it",
                ));
            }
            if mac == node.gateway_mac {
                return Err(TableError::BadPodMac(mac, "is the gateway's"));
            }
            if let Some(other) = ports.iter().find(|p| p.spec.ip == Some(ip)) {
                return Err(TableError::AddressInUse(ip, other.spec.name.clone()));
            }
            Some((ip, mac))
        } else {
            None
        };
        let free = ports
            .by_id
            .iter()
            .position(Option::is_none)
            .unwrap_or(ports.by_id.len());
        if free >= self.max_ports {
            return Err(TableError::TooManyPorts(self.max_ports));
        }
        let id = PortId(free as u16);
        let bridge = self.next.node.gateway_mode == GatewayMode::Bridge;
        let role = spec.role;
        let table = self.ports_mut();
        if table.by_id.len() <= free {
            table.by_id.resize(free + 1, None);
        }
        let bucket = spec
            .egress_limit
            .map(|limit| Arc::new(EgressBucket::new(limit)));
        table.by_id[free] = Some(PortEntry { id, spec, bucket });
        match role {
            PortRole::Pod if bridge => {
                table.segment.push(id);
                table.segment.sort_unstable();
            }
            PortRole::Underlay => table.underlay = Some(id),
            PortRole::Host => table.host = Some(id),
            PortRole::Pod => {}
        }
        if let Some((ip, mac)) = pod {
            self.set_route(Prefix::new_truncating(ip, 32), NextHop::Local(id));
            Arc::make_mut(&mut self.next.neighbours).insert(
                ip,
                Neighbour {
                    mac,
                    port: id,
                    learned: false,
                },
            );
        }
        Ok(id)
    }

    /// Detaches a port by name, with its route, neighbours and FDB entries.
    pub fn detach_port(&mut self, name: &str) -> Result<PortId, TableError> {
        let entry = self
            .next
            .ports
            .by_name(name)
            .cloned()
            .ok_or_else(|| TableError::NoSuchPort(name.into()))?;
        let id = entry.id;
        let table = self.ports_mut();
        table.by_id[usize::from(id.0)] = None;
        table.segment.retain(|p| *p != id);
        if table.underlay == Some(id) {
            table.underlay = None;
        }
        if table.host == Some(id) {
            table.host = None;
        }
        self.remove_routes_via(NextHop::Local(id));
        Arc::make_mut(&mut self.next.neighbours).retain(|_, n| n.port != id);
        self.detached.push(id);
        Ok(id)
    }

    /// Adds a peer and its route: `pod_cidr -> Peer` (tunnel) or
    /// `pod_cidr -> Direct` (host-gw, or DirectRouting on our subnet).
    pub fn add_peer(&mut self, spec: PeerSpec) -> Result<PeerId, TableError> {
        let peers = &self.next.peers;
        if peers.by_name(&spec.name).is_some() || peers.by_underlay_ip(spec.underlay_ip).is_some() {
            return Err(TableError::PeerExists(spec.name));
        }
        let node = &self.next.node;
        if spec.pod_cidr.covers(&node.pod_cidr) || node.pod_cidr.covers(&spec.pod_cidr) {
            return Err(TableError::PeerOverlapsNode(spec.pod_cidr));
        }
        let id = peers.free_id().ok_or(TableError::TooManyPeers)?;
        let peer = Peer::resolve(id, spec, node);
        let next_hop = match peer.forwarding {
            Forwarding::Tunnel(_) => NextHop::Peer(id),
            Forwarding::Direct => NextHop::Direct(id),
        };
        let pod_cidr = peer.spec.pod_cidr;
        Arc::make_mut(&mut self.next.peers).insert(peer);
        self.set_route(pod_cidr, next_hop);
        Ok(id)
    }

    /// Removes a peer by name, with every route through it.
    pub fn remove_peer(&mut self, name: &str) -> Result<PeerId, TableError> {
        let id = self
            .next
            .peers
            .by_name(name)
            .map(|p| p.id)
            .ok_or_else(|| TableError::NoSuchPeer(name.into()))?;
        Arc::make_mut(&mut self.next.peers).remove(id);
        self.remove_routes_via(NextHop::Peer(id));
        self.remove_routes_via(NextHop::Direct(id));
        Ok(id)
    }

    /// Adds or replaces a route. Its port or peer must exist.
    pub fn add_route(&mut self, prefix: Prefix, next_hop: NextHop) -> Result<(), TableError> {
        if let NextHop::Local(p) = next_hop {
            if let Some(port) = self.next.ports.get(p) {
                if port.spec.role != PortRole::Pod {
                    return Err(TableError::LocalRouteToNonPod(port.spec.name.clone()));
                }
            }
        }
        let exists = match next_hop {
            NextHop::Local(p) => self.next.ports.get(p).is_some(),
            NextHop::Peer(p) | NextHop::Direct(p) => self.next.peers.get(p).is_some(),
            NextHop::Host | NextHop::Blackhole => true,
        };
        if !exists {
            return Err(TableError::BadNextHop(next_hop));
        }
        self.set_route(prefix, next_hop);
        Ok(())
    }

    /// Removes a route.
    pub fn remove_route(&mut self, prefix: Prefix) -> Result<NextHop, TableError> {
        let before = self
            .routes
            .remove(&prefix)
            .ok_or(TableError::NoSuchRoute(prefix))?;
        self.undo.push((prefix, Some(before)));
        Ok(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Arc<Tables> {
        Tables::new(
            NodeConfig::flannel(
                "node1",
                "10.244.1.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 168, 100, 1),
            ),
            8,
        )
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    /// Attaches pod veth1 (10.244.1.2) and adds node2 as a VXLAN peer.
    fn pod_and_peer(tables: &Tables) -> (PortId, PeerId) {
        let pod = tables
            .attach_port(PortSpec::pod(
                "veth1",
                "10.244.1.2".parse().unwrap(),
                MacAddr([2, 0, 0, 0, 0, 2]),
            ))
            .unwrap();
        (pod, tables.add_peer(peer_spec(2, Backend::Vxlan)).unwrap())
    }

    /// Node `n`'s peer: underlay 192.168.100.`n`, pods 10.244.`n`.0/24.
    fn peer_spec(n: u8, backend: Backend) -> PeerSpec {
        PeerSpec {
            name: format!("node{n}"),
            underlay_ip: Ipv4Addr::new(192, 168, 100, n),
            underlay_mac: MacAddr([2, 0, 0, 0, 1, n]),
            pod_cidr: p(&format!("10.244.{n}.0/24")),
            backend,
            vni: podswitch_encap::Vni::FLANNEL,
            vtep_mac: MacAddr([2, 0, 0, 0, 2, n]),
        }
    }

    /// An edit that fails half-way leaves the routes and the published
    /// FIB as they were, and the next edit starts from them.
    #[test]
    fn failed_edit_undoes_its_route_changes() {
        let tables = tables();
        tables.add_route(p("10.9.0.0/16"), NextHop::Host).unwrap();
        let (_, before) = tables.routes();
        let published = tables.snapshot();
        let err = tables.edit(|e| {
            e.add_route(p("10.9.0.0/16"), NextHop::Blackhole)?;
            e.add_route(p("10.9.1.0/24"), NextHop::Blackhole)?;
            e.remove_route(p("10.244.1.0/24"))?;
            e.remove_route(p("10.7.0.0/16")) // no such route: the edit fails
        });
        assert_eq!(err, Err(TableError::NoSuchRoute(p("10.7.0.0/16"))));
        assert_eq!(tables.routes().1, before);
        let now = tables.snapshot();
        assert_eq!(now.version, published.version, "nothing published");
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(now.fib.lookup(ip("10.9.1.1")), Some(NextHop::Host));
        assert_eq!(now.fib.lookup(ip("10.244.1.9")), Some(NextHop::Blackhole));
        // The table the next edit starts from is the published one.
        tables
            .add_route(p("10.8.0.0/16"), NextHop::Blackhole)
            .unwrap();
        let fib = &tables.snapshot().fib;
        assert_eq!(fib.lookup(ip("10.9.1.1")), Some(NextHop::Host));
        assert_eq!(fib.lookup(ip("10.244.1.9")), Some(NextHop::Blackhole));
        assert_eq!(fib.len(), before.len() + 1);
    }

    /// A panic inside an edit unwinds through the undo as well.
    #[test]
    fn panicking_edit_undoes_its_route_changes() {
        let tables = tables();
        let (_, before) = tables.routes();
        let shared = Arc::clone(&tables);
        let outcome = std::panic::catch_unwind(move || {
            let _ = shared.edit(|e| -> Result<(), TableError> {
                e.add_route(p("10.9.0.0/16"), NextHop::Host)?;
                panic!("a bug in the middle of an edit");
            });
        });
        assert!(outcome.is_err());
        assert_eq!(tables.routes().1, before);
        tables.add_route(p("10.8.0.0/16"), NextHop::Host).unwrap();
        let ip = "10.9.0.1".parse().unwrap();
        assert_eq!(
            tables.snapshot().fib.lookup(ip),
            Some(NextHop::Host),
            "default route"
        );
        assert_eq!(tables.routes().1.len(), before.len() + 1);
    }

    /// Removing a peer or detaching a pod takes exactly their routes.
    #[test]
    fn peer_and_port_removal_take_their_routes() {
        let tables = tables();
        let before = tables.routes().1.len();
        let (pod, peer) = pod_and_peer(&tables);
        tables
            .add_route(p("10.250.0.0/16"), NextHop::Peer(peer))
            .unwrap();
        assert_eq!(tables.routes().1.len(), before + 3);
        tables.remove_peer("node2").unwrap();
        tables.detach_port("veth1").unwrap();
        let (snap, routes) = tables.routes();
        assert_eq!(routes.len(), before);
        assert!(routes
            .iter()
            .all(|(_, nh)| *nh != NextHop::Peer(peer) && *nh != NextHop::Local(pod)));
        assert_eq!(snap.fib.len(), before);
    }

    /// The node's kernel routes into podswitch what podswitch sends
    /// elsewhere: its own subnet (its pods' /32s inside it), each peer's
    /// subnet and any block routed to a peer, and no more; not the cluster
    /// CIDR as a whole, and nothing podswitch hands back to the node.
    #[test]
    fn the_node_routes_into_podswitch_what_podswitch_sends_elsewhere() {
        let tables = tables();
        let prefixes = |tables: &Tables| -> Vec<Prefix> {
            tables.host_routes().iter().map(|r| r.prefix).collect()
        };
        assert_eq!(prefixes(&tables), vec![p("10.244.1.0/24")]);
        let (_, peer) = pod_and_peer(&tables);
        tables
            .add_route(p("10.244.3.64/26"), NextHop::Peer(peer))
            .unwrap();
        tables.add_route(p("10.96.0.0/12"), NextHop::Host).unwrap();
        // From cni0's address to the node's pods, from flannel.1's into
        // the tunnel.
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            tables.host_routes(),
            vec![
                HostRoute {
                    prefix: p("10.244.1.0/24"),
                    source: ip("10.244.1.1")
                },
                HostRoute {
                    prefix: p("10.244.2.0/24"),
                    source: ip("10.244.1.0")
                },
                HostRoute {
                    prefix: p("10.244.3.64/26"),
                    source: ip("10.244.1.0")
                },
            ]
        );
        // A shorter prefix routed away covers the longer ones.
        tables
            .add_route(p("10.244.0.0/16"), NextHop::Blackhole)
            .unwrap();
        assert_eq!(prefixes(&tables), vec![p("10.244.0.0/16")]);
        tables.remove_route(p("10.244.0.0/16")).unwrap();
        tables.remove_peer("node2").unwrap();
        assert_eq!(prefixes(&tables), vec![p("10.244.1.0/24")]);
        // Towards a host-gw peer, from the pod side's address (see the
        // method's docs for why not the underlay's).
        tables.add_peer(peer_spec(4, Backend::HostGw)).unwrap();
        assert_eq!(
            tables.host_routes()[1],
            HostRoute {
                prefix: p("10.244.4.0/24"),
                source: ip("10.244.1.1")
            }
        );
        // A Calico node's cali interfaces have no address: the kernel
        // sends to its pods from the node's own.
        let underlay = Ipv4Addr::new(192, 168, 100, 1);
        let calico = Tables::new(NodeConfig::calico("node1", p("10.244.1.0/24"), underlay), 8);
        assert_eq!(
            calico.host_routes(),
            vec![HostRoute {
                prefix: p("10.244.1.0/24"),
                source: underlay
            }]
        );
    }
}
