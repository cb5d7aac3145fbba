//! VXLAN, IPIP and IP-in-UDP: encapsulation in place and validated
//! decapsulation.
//!
//! | mode | what follows the outer IPv4 header | overhead | pod MTU on a 1500 underlay |
//! |---|---|---|---|
//! | VXLAN (RFC 7348; flannel `vxlan`) | UDP (dst 8472) + VXLAN (VNI 1) + inner Ethernet frame | 50 | 1450 |
//! | IPIP (RFC 2003; Calico `tunl0`) | the inner IPv4 packet (protocol 4) | 20 | 1480 |
//! | IP-in-UDP (flannel `udp`) | UDP (8285 -> 8285) + the inner IPv4 packet | 28 | 1472 |
//!
//! The "overhead" is what the tunnel adds to the underlay's IP MTU; for
//! VXLAN it includes the inner Ethernet header, which the pod's MTU does not
//! count (1500 - 20 - 8 - 8 - 14 = 1450).
//!
//! Encapsulation writes the outer headers into the headroom in front of the
//! frame ([`FrameBuf`](crate::buffer::FrameBuf)): for VXLAN the inner Ethernet frame stays as it is;
//! for IPIP and IP-in-UDP the inner Ethernet header is overwritten, since
//! only the IP packet travels.
//!
//! Decapsulation takes a whole outer Ethernet frame (or an IPv4 packet from
//! a raw socket) and checks, in order: outer IPv4 version, IHL, lengths and
//! header checksum; no outer fragment; the protocol and UDP port; UDP length
//! and (if non-zero) checksum; VXLAN flags and VNI; a whole inner header;
//! ECN per RFC 6040. Each failure is its own [`DecapError`] variant.
//!
//! Its rooms: this module holds the modes and their configuration;
//! `encap.rs` the [`Tunnel`] and its per-peer [`EncapTemplate`];
//! `decap.rs` the [`Decapsulator`] and its errors; `tests.rs` the tests.

use core::fmt;
use std::net::Ipv4Addr;

use crate::ethernet::{self, MacAddr};
use crate::flow::PortRange;
use crate::ipv4;
use crate::udp;
use crate::vxlan::{self, Vni};

mod decap;
mod encap;
#[cfg(test)]
mod tests;

pub use decap::{DecapConfig, DecapError, Decapsulated, Decapsulator, Inner};
pub use encap::{EncapError, EncapTemplate, Tunnel};

/// flannel's `udp` backend port (flanneld's default).
pub const PORT_FLANNEL_UDP: u16 = 8285;
/// The TTL Linux gives tunnel packets when none is configured
/// (`ip4_dst_hoplimit`, sysctl net.ipv4.ip_default_ttl).
pub const DEFAULT_TTL: u8 = 64;
/// Outer Ethernet + IPv4 headers.
const OUTER_ETH_IP: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;

/// The encapsulation of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelMode {
    /// VXLAN: the inner Ethernet frame in UDP.
    Vxlan,
    /// IPIP: the inner IPv4 packet directly in IPv4.
    Ipip,
    /// IP-in-UDP: the inner IPv4 packet as a UDP payload.
    IpInUdp,
}

impl TunnelMode {
    /// Bytes the tunnel adds to the underlay's IP MTU (see the module table).
    pub const fn overhead(self) -> u16 {
        match self {
            TunnelMode::Vxlan => {
                (ipv4::HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN + ethernet::HEADER_LEN)
                    as u16
            }
            TunnelMode::Ipip => ipv4::HEADER_LEN as u16,
            TunnelMode::IpInUdp => (ipv4::HEADER_LEN + udp::HEADER_LEN) as u16,
        }
    }

    /// The largest inner IP packet (the pod's MTU) over an underlay MTU.
    pub const fn inner_mtu(self, underlay_mtu: u16) -> u16 {
        underlay_mtu.saturating_sub(self.overhead())
    }

    /// Bytes of outer headers in front of the carried data in an outer
    /// Ethernet frame: 50 for VXLAN (before the inner Ethernet header),
    /// 34 for IPIP and 42 for IP-in-UDP (before the inner IP header).
    pub const fn outer_header_len(self) -> usize {
        match self {
            TunnelMode::Vxlan => OUTER_ETH_IP + udp::HEADER_LEN + vxlan::HEADER_LEN,
            TunnelMode::Ipip => OUTER_ETH_IP,
            TunnelMode::IpInUdp => OUTER_ETH_IP + udp::HEADER_LEN,
        }
    }

    /// Headroom a frame needs in front of its Ethernet header to be
    /// encapsulated in place (IPIP and IP-in-UDP reuse the 14 bytes of the
    /// inner Ethernet header they drop).
    pub const fn headroom_needed(self) -> usize {
        match self {
            TunnelMode::Vxlan => self.outer_header_len(),
            TunnelMode::Ipip | TunnelMode::IpInUdp => {
                self.outer_header_len() - ethernet::HEADER_LEN
            }
        }
    }
}

impl fmt::Display for TunnelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TunnelMode::Vxlan => "vxlan",
            TunnelMode::Ipip => "ipip",
            TunnelMode::IpInUdp => "udp",
        })
    }
}

/// Outer TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ttl {
    /// This value.
    Fixed(u8),
    /// The inner packet's TTL / hop limit (Linux `ttl inherit`); 64 for a
    /// non-IP inner frame.
    Inherit,
}

/// Outer DF bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DontFragment {
    /// Always set.
    Set,
    /// Never set.
    Clear,
    /// Copied from an inner IPv4 header; clear otherwise (Linux `df inherit`).
    Inherit,
}

/// Outer DSCP (the ECN bits always follow RFC 6040, see [`crate::ecn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dscp {
    /// This TOS value's DSCP bits.
    Fixed(u8),
    /// The inner packet's DSCP (Linux `tos inherit`).
    Inherit,
}

/// Outer UDP source port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourcePort {
    /// A hash of the inner flow scaled into this range (what the Linux vxlan
    /// device does, see [`crate::flow`]).
    FlowHash(PortRange),
    /// Always this port (flanneld's UDP socket sends from its own port).
    Fixed(u16),
}

/// How one node's tunnel encapsulates. The defaults of each constructor
/// are what the kernel device flannel or Calico configures does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelConfig {
    /// The encapsulation.
    pub mode: TunnelMode,
    /// VXLAN Network Identifier (VXLAN only).
    pub vni: Vni,
    /// UDP destination port (VXLAN and IP-in-UDP).
    pub dst_port: u16,
    /// UDP source port (VXLAN and IP-in-UDP).
    pub src_port: SourcePort,
    /// Compute the outer UDP checksum. RFC 7348 §5 allows zero over IPv4;
    /// Linux's vxlan device computes it by default since 4.6 (`udpcsum`).
    pub udp_checksum: bool,
    /// Outer TTL.
    pub ttl: Ttl,
    /// Outer DF.
    pub df: DontFragment,
    /// Outer DSCP.
    pub dscp: Dscp,
    /// Seed of the flow hash.
    pub flow_seed: u32,
}

impl TunnelConfig {
    /// flannel's VXLAN: VNI 1, port 8472, source port from the flow hash in
    /// 32768-60999, TTL 64, DF clear, TOS 0, UDP checksum 0 (RFC 7348).
    pub const fn vxlan() -> Self {
        TunnelConfig {
            mode: TunnelMode::Vxlan,
            vni: Vni::FLANNEL,
            dst_port: vxlan::PORT_FLANNEL,
            src_port: SourcePort::FlowHash(PortRange::LINUX_EPHEMERAL),
            udp_checksum: false,
            ttl: Ttl::Fixed(DEFAULT_TTL),
            df: DontFragment::Clear,
            dscp: Dscp::Fixed(0),
            flow_seed: 0,
        }
    }

    /// Calico's IPIP (the kernel's `tunl0`: `ttl inherit nopmtudisc`, which
    /// copies TTL and DF from the inner header).
    pub const fn ipip() -> Self {
        TunnelConfig {
            mode: TunnelMode::Ipip,
            ttl: Ttl::Inherit,
            df: DontFragment::Inherit,
            ..Self::vxlan()
        }
    }

    /// flannel's `udp` backend: UDP 8285 -> 8285, checksum computed (it is
    /// an ordinary UDP socket), TTL 64.
    pub const fn ip_in_udp() -> Self {
        TunnelConfig {
            mode: TunnelMode::IpInUdp,
            dst_port: PORT_FLANNEL_UDP,
            src_port: SourcePort::Fixed(PORT_FLANNEL_UDP),
            udp_checksum: true,
            ..Self::vxlan()
        }
    }

    /// The defaults for `mode`.
    pub const fn for_mode(mode: TunnelMode) -> Self {
        match mode {
            TunnelMode::Vxlan => Self::vxlan(),
            TunnelMode::Ipip => Self::ipip(),
            TunnelMode::IpInUdp => Self::ip_in_udp(),
        }
    }
}

/// The outer addresses of one encapsulated packet: this node's underlay
/// interface and the next hop towards the peer node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuterPath {
    /// Our underlay MAC.
    pub src_mac: MacAddr,
    /// The underlay next hop's MAC.
    pub dst_mac: MacAddr,
    /// Our underlay IPv4 address.
    pub src_ip: Ipv4Addr,
    /// The peer node's underlay IPv4 address.
    pub dst_ip: Ipv4Addr,
}
