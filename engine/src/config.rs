//! The node's settings: what flannel or Calico would have configured on the
//! node's kernel, said once.

use std::net::Ipv4Addr;

use podswitch_addr::Prefix;
use podswitch_encap::{MacAddr, Vni};

// The names config files and requests use, shared through the vocabulary
// crate.
pub use podswitch_addr::{Backend, GatewayMode};

/// The pods' MTU with `backend` over an underlay of `underlay_mtu`: the
/// tunnel's overhead taken off (vxlan 1450, ipip 1480, udp 1472 over
/// 1500, as flannel and Calico give their pods).
pub fn pod_mtu(backend: Backend, underlay_mtu: u16) -> u16 {
    use podswitch_encap::TunnelMode;
    match backend {
        Backend::Vxlan | Backend::DirectRouting => TunnelMode::Vxlan.inner_mtu(underlay_mtu),
        Backend::Ipip => TunnelMode::Ipip.inner_mtu(underlay_mtu),
        Backend::Udp => TunnelMode::IpInUdp.inner_mtu(underlay_mtu),
        Backend::HostGw => underlay_mtu,
    }
}

/// Calico's gateway address for pods in proxy-ARP mode.
pub const PROXY_ARP_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The MAC Calico gives every host-side pod interface.
pub const PROXY_ARP_MAC: MacAddr = MacAddr([0xee; 6]);

/// Everything the pipeline needs to know about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// This node's pod subnet (10.244.X.0/24).
    pub pod_cidr: Prefix,
    /// The whole cluster's pod network (10.244.0.0/16).
    pub cluster_cidr: Prefix,
    /// Bridge (flannel) or proxy ARP (Calico).
    pub gateway_mode: GatewayMode,
    /// The pods' gateway: 10.244.X.1 in bridge mode, 169.254.1.1 in proxy-ARP mode.
    pub gateway_ip: Ipv4Addr,
    /// The MAC that answers for the gateway.
    pub gateway_mac: MacAddr,
    /// The node's own address in its pod subnet (10.244.X.1, cni0's in
    /// bridge mode): its host port's, and where ICMP errors come from but
    /// for those the kernel would send from another interface's
    /// (`pipeline::icmp`).
    pub host_address: Ipv4Addr,
    /// Tunnel backend.
    pub backend: Backend,
    /// This node's underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Prefix length of the underlay subnet (DirectRouting's "same subnet").
    pub underlay_prefix_len: u8,
    /// This node's underlay MAC.
    pub underlay_mac: MacAddr,
    /// MTU of the underlay (IP packet size).
    pub underlay_mtu: u16,
    /// This node's VTEP MAC (flannel.1's address).
    pub vtep_mac: MacAddr,
    /// VXLAN VNI.
    pub vni: Vni,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// IP-in-UDP port.
    pub udp_port: u16,
    /// FDB size limit.
    pub fdb_limit: usize,
    /// FDB aging time in seconds (the Linux bridge's default is 300).
    pub fdb_aging_secs: u32,
    /// Learned neighbours kept at most.
    pub neighbour_limit: usize,
}

impl NodeConfig {
    /// A node with flannel's defaults for pod subnet `pod_cidr` and underlay
    /// address `underlay_ip` (/24): vxlan, VNI 1, port 8472, bridge mode.
    pub fn flannel(name: &str, pod_cidr: Prefix, underlay_ip: Ipv4Addr) -> Self {
        let o = underlay_ip.octets();
        NodeConfig {
            name: name.to_string(),
            pod_cidr,
            cluster_cidr: Prefix::new_truncating(pod_cidr.addr(), 16),
            gateway_mode: GatewayMode::Bridge,
            gateway_ip: pod_cidr.nth(1),
            gateway_mac: derived_mac(0x0a, name),
            host_address: pod_cidr.nth(1),
            backend: Backend::Vxlan,
            underlay_ip,
            underlay_prefix_len: 24,
            underlay_mac: MacAddr([0x02, 0x00, o[0], o[1], o[2], o[3]]),
            underlay_mtu: 1500,
            vtep_mac: derived_mac(0x0e, name),
            vni: Vni::FLANNEL,
            vxlan_port: podswitch_encap::vxlan::PORT_FLANNEL,
            udp_port: podswitch_encap::tunnel::PORT_FLANNEL_UDP,
            fdb_limit: 8192,
            fdb_aging_secs: 300,
            neighbour_limit: 4096,
        }
    }

    /// A node configured like Calico: proxy ARP, IPIP, gateway 169.254.1.1.
    pub fn calico(name: &str, pod_cidr: Prefix, underlay_ip: Ipv4Addr) -> Self {
        NodeConfig {
            gateway_mode: GatewayMode::ProxyArp,
            gateway_ip: PROXY_ARP_GATEWAY,
            gateway_mac: PROXY_ARP_MAC,
            backend: Backend::Ipip,
            ..NodeConfig::flannel(name, pod_cidr, underlay_ip)
        }
    }

    /// The MTU pods get: the underlay's less the backend's tunnel
    /// overhead (flannel's vxlan gives 1450 over 1500; Calico's IPIP 1480).
    /// DirectRouting reckons with VXLAN, which some peers may need.
    pub fn pod_mtu(&self) -> u16 {
        pod_mtu(self.backend, self.underlay_mtu)
    }

    /// The address of the node's tunnel end, where the backend has one:
    /// the first of its pod subnet, 10.244.X.0, as flanneld gives its
    /// flannel.1 (VXLAN, DirectRouting) or flannel0 (udp) and as a tunl0
    /// takes one of its node's block (IPIP). The node answers at it, and
    /// ICMP errors into a tunnel come from it (`pipeline::icmp`). host-gw
    /// has no tunnel device, so no such address.
    pub fn tunnel_address(&self) -> Option<Ipv4Addr> {
        (self.backend != Backend::HostGw).then(|| self.pod_cidr.addr())
    }

    /// The address this node sends from towards a host behind
    /// `next_hop`: what a kernel flannel or Calico node takes, the address
    /// of the interface the packet leaves by (`inet_select_addr`; for ICMP
    /// errors `__icmp_send` with `icmp_errors_use_inbound_ifaddr` at its
    /// default, 0, leaves it to the route back). `traceroute` from a pod
    /// shows these, and a pod sees the node's own connections come from
    /// them:
    /// - into a tunnel, flannel.1's address, the node's pod subnet's
    ///   first, 10.244.X.0 (flannel0's for the udp backend);
    /// - to a host-gw peer, the node's underlay address (eth0's);
    /// - to a pod of the node, cni0's 10.244.X.1 in bridge mode; in
    ///   proxy-ARP mode the pod's cali interface has no address, and the
    ///   kernel takes the node's (its underlay's);
    /// - to the node itself, 10.244.X.1.
    pub fn address_towards(&self, next_hop: Option<crate::fib::NextHop>) -> Ipv4Addr {
        use crate::fib::NextHop;
        match next_hop {
            Some(NextHop::Peer(_)) => self.tunnel_address().unwrap_or(self.host_address),
            Some(NextHop::Direct(_)) => self.underlay_ip,
            Some(NextHop::Local(_)) => self.address_towards_pods(),
            _ => self.host_address,
        }
    }

    /// The address this node sends from towards its own pods
    /// ([`Self::address_towards`] a local pod).
    pub fn address_towards_pods(&self) -> Ipv4Addr {
        match self.gateway_mode {
            GatewayMode::Bridge => self.host_address,
            GatewayMode::ProxyArp => self.underlay_ip,
        }
    }

    /// This node's underlay subnet.
    pub fn underlay_subnet(&self) -> Prefix {
        Prefix::new_truncating(self.underlay_ip, self.underlay_prefix_len)
    }

    /// True if `ip` is on this node's underlay subnet.
    pub fn on_underlay_subnet(&self, ip: Ipv4Addr) -> bool {
        self.underlay_subnet().contains(ip)
    }
}

/// A stable, locally administered MAC derived from a name (FNV-1a), with
/// `kind` as its second octet so the gateway and VTEP MACs differ.
pub fn derived_mac(kind: u8, name: &str) -> MacAddr {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    MacAddr([0x02, kind, b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::NextHop;
    use crate::ids::{PeerId, PortId};

    #[test]
    fn the_node_speaks_from_the_interface_the_kernel_would_send_by() {
        let underlay = Ipv4Addr::new(192, 168, 100, 2);
        let cidr = "10.244.2.0/24".parse().unwrap();
        let flannel = NodeConfig::flannel("node2", cidr, underlay);
        let calico = NodeConfig::calico("node2", cidr, underlay);
        let (gateway, vtep) = (Ipv4Addr::new(10, 244, 2, 1), Ipv4Addr::new(10, 244, 2, 0));
        let pod = Some(NextHop::Local(PortId(3)));
        for (node, to_pod) in [(&flannel, gateway), (&calico, underlay)] {
            assert_eq!(node.address_towards(pod), to_pod);
            assert_eq!(node.address_towards(Some(NextHop::Peer(PeerId(1)))), vtep);
            assert_eq!(
                node.address_towards(Some(NextHop::Direct(PeerId(1)))),
                underlay
            );
            assert_eq!(node.address_towards(Some(NextHop::Host)), gateway);
            assert_eq!(node.address_towards(None), gateway);
        }
    }

    #[test]
    fn defaults_follow_flannel_and_calico() {
        let f = NodeConfig::flannel(
            "node1",
            "10.244.1.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 100, 1),
        );
        assert_eq!(f.gateway_ip, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(f.cluster_cidr.to_string(), "10.244.0.0/16");
        assert!(f.gateway_mac.is_local() && !f.gateway_mac.is_multicast());
        assert_ne!(f.gateway_mac, f.vtep_mac);
        assert_eq!(derived_mac(0x0e, "node1"), f.vtep_mac, "stable across runs");
        assert!(f.on_underlay_subnet(Ipv4Addr::new(192, 168, 100, 9)));
        assert!(!f.on_underlay_subnet(Ipv4Addr::new(192, 168, 101, 9)));
        let c = NodeConfig::calico(
            "node1",
            "10.244.1.64/26".parse().unwrap(),
            Ipv4Addr::new(192, 168, 100, 1),
        );
        assert_eq!(c.gateway_mac, MacAddr([0xee; 6]));
        assert_eq!(c.backend, Backend::Ipip);
        assert_eq!("host-gw".parse::<Backend>(), Ok(Backend::HostGw));
        assert!("gre".parse::<Backend>().is_err());
    }
}
