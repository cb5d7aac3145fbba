//! Peers: the other nodes, what flannel keeps in its lease per node
//! (`bridge fdb show dev flannel.1`, the ARP entry for 10.244.Y.0, the route
//! to 10.244.Y.0/24) and Calico in its BGP routes.

use std::net::Ipv4Addr;

use podswitch_addr::Prefix;
use podswitch_encap::tunnel::EncapTemplate;
use podswitch_encap::{MacAddr, OuterPath, Tunnel, TunnelConfig, TunnelMode, Vni};

use crate::config::{Backend, NodeConfig};
use crate::ipmap::IpMap;

pub use crate::ids::PeerId;

/// What the control side says about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Node name.
    pub name: String,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// The MAC of its underlay interface (the L2 next hop for host-gw and
    /// the outer destination MAC of tunnels).
    pub underlay_mac: MacAddr,
    /// Its pod subnet.
    pub pod_cidr: Prefix,
    /// How we reach it.
    pub backend: Backend,
    /// VNI (VXLAN).
    pub vni: Vni,
    /// Its VTEP MAC (VXLAN: the inner destination MAC).
    pub vtep_mac: MacAddr,
}

/// How packets to a peer leave, resolved when the peer is added.
#[derive(Debug, Clone, Copy)]
pub enum Forwarding {
    /// Encapsulated with this template.
    Tunnel(EncapTemplate),
    /// Rewritten and sent on the underlay as they are (host-gw).
    Direct,
}

/// A peer with its resolved forwarding.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its number.
    pub id: PeerId,
    /// What the control side said.
    pub spec: PeerSpec,
    /// How packets to it leave.
    pub forwarding: Forwarding,
}

impl Peer {
    /// Resolves a spec against our node: the tunnel mode of the backend,
    /// or direct forwarding (host-gw, and DirectRouting for a peer on our
    /// underlay subnet).
    pub fn resolve(id: PeerId, spec: PeerSpec, node: &NodeConfig) -> Peer {
        let mode = match spec.backend {
            Backend::Vxlan => Some(TunnelMode::Vxlan),
            Backend::Ipip => Some(TunnelMode::Ipip),
            Backend::Udp => Some(TunnelMode::IpInUdp),
            Backend::HostGw => None,
            Backend::DirectRouting if node.on_underlay_subnet(spec.underlay_ip) => None,
            Backend::DirectRouting => Some(TunnelMode::Vxlan),
        };
        let forwarding = match mode {
            None => Forwarding::Direct,
            Some(mode) => {
                let mut config = TunnelConfig::for_mode(mode);
                config.vni = spec.vni;
                config.dst_port = match mode {
                    TunnelMode::Vxlan => node.vxlan_port,
                    TunnelMode::IpInUdp => node.udp_port,
                    TunnelMode::Ipip => 0,
                };
                if mode == TunnelMode::IpInUdp {
                    config.src_port = podswitch_encap::SourcePort::Fixed(node.udp_port);
                }
                let path = OuterPath {
                    src_mac: node.underlay_mac,
                    dst_mac: spec.underlay_mac,
                    src_ip: node.underlay_ip,
                    dst_ip: spec.underlay_ip,
                };
                Forwarding::Tunnel(Tunnel::new(config).template(&path))
            }
        };
        Peer {
            id,
            spec,
            forwarding,
        }
    }

    /// The tunnel mode packets to this peer use, `None` for direct.
    pub fn tunnel_mode(&self) -> Option<TunnelMode> {
        match &self.forwarding {
            Forwarding::Tunnel(t) => Some(t.tunnel().config().mode),
            Forwarding::Direct => None,
        }
    }

    /// The largest inner IPv4 packet that reaches this peer in one piece.
    pub fn path_mtu(&self, underlay_mtu: u16) -> u16 {
        match self.tunnel_mode() {
            Some(mode) => mode.inner_mtu(underlay_mtu),
            None => underlay_mtu,
        }
    }
}

/// The peers, by id and by underlay address.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    by_id: Vec<Option<Peer>>,
    by_underlay: IpMap<PeerId>,
}

impl PeerTable {
    /// The peer with this id.
    #[inline]
    pub fn get(&self, id: PeerId) -> Option<&Peer> {
        self.by_id.get(usize::from(id.0)).and_then(Option::as_ref)
    }

    /// The peer whose underlay address is `ip` (the decapsulation check:
    /// tunnels are accepted only from known peers).
    #[inline]
    pub fn by_underlay_ip(&self, ip: Ipv4Addr) -> Option<&Peer> {
        self.by_underlay.get(&ip).and_then(|id| self.get(*id))
    }

    /// The peer with this name.
    pub fn by_name(&self, name: &str) -> Option<&Peer> {
        self.iter().find(|p| p.spec.name == name)
    }

    /// Every peer.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.by_id.iter().flatten()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_underlay.len()
    }

    /// True with no peers.
    pub fn is_empty(&self) -> bool {
        self.by_underlay.is_empty()
    }

    /// The lowest free id.
    pub fn free_id(&self) -> Option<PeerId> {
        let i = self
            .by_id
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.by_id.len());
        u16::try_from(i).ok().map(PeerId)
    }

    /// Inserts (or replaces) a peer.
    pub fn insert(&mut self, peer: Peer) {
        let i = usize::from(peer.id.0);
        if self.by_id.len() <= i {
            self.by_id.resize(i + 1, None);
        }
        if let Some(old) = &self.by_id[i] {
            self.by_underlay.remove(&old.spec.underlay_ip);
        }
        self.by_underlay.insert(peer.spec.underlay_ip, peer.id);
        self.by_id[i] = Some(peer);
    }

    /// Removes a peer.
    pub fn remove(&mut self, id: PeerId) -> Option<Peer> {
        let peer = self.by_id.get_mut(usize::from(id.0))?.take()?;
        self.by_underlay.remove(&peer.spec.underlay_ip);
        Some(peer)
    }
}
