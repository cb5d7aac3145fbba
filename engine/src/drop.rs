//! Why a frame was dropped. Every drop in the engine names one of these
//! and increments its counter; there are no silent drops.

use std::fmt;

use podswitch_encap::{DecapError, Layer, WireError};

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $what:literal;)*) => {
        /// Why a frame was dropped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $what] $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// Number of reasons.
            pub const COUNT: usize = Self::ALL.len();

            /// Its name in stats output (snake case, stable).
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }

            /// What it means, for people.
            pub const fn describe(self) -> &'static str {
                match self { $(DropReason::$variant => $what,)* }
            }

            /// Its counter index.
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

drop_reasons! {
    EthernetTruncated => "ethernet_truncated", "the frame is shorter than an Ethernet header";
    InvalidSourceMac => "invalid_source_mac", "the source MAC is multicast or zero";
    SpoofedSourceMac => "spoofed_source_mac", "a pod sent from a MAC that is not its own";
    SpoofedSourceIp => "spoofed_source_ip", "a pod sent from an IP address that is not its own";
    EgressRateLimited => "egress_rate_limited", "a pod sent beyond its egress rate and burst (the CNI bandwidth capability)";
    L2Hairpin => "l2_hairpin", "the destination MAC is behind the port the frame came from";
    NotSwitched => "not_switched", "no L2 segment to switch this frame in (proxy-ARP mode, or a non-pod port)";
    NoFloodTargets => "no_flood_targets", "a broadcast or unknown unicast with no other port in the segment";
    UnsupportedEtherType => "unsupported_ethertype", "an EtherType podswitch does not route here";
    VlanTagged => "vlan_tagged", "an 802.1Q/802.1ad-tagged frame from a pod: VLAN tagging is not configured";
    Ipv6NotConfigured => "ipv6_not_configured", "IPv6 (router advertisements included) while IPv6 is not configured";
    ArpMalformed => "arp_malformed", "an ARP packet that is not Ethernet/IPv4 or is truncated";
    ArpHandled => "arp_handled", "an ARP reply addressed to the gateway, consumed after learning";
    Ipv4Truncated => "ipv4_truncated", "the IPv4 header or its total length runs past the frame";
    Ipv4BadVersion => "ipv4_bad_version", "the IPv4 version field is not 4";
    Ipv4BadHeaderLength => "ipv4_bad_header_length", "IPv4 IHL below 5";
    Ipv4BadTotalLength => "ipv4_bad_total_length", "IPv4 total length below the header length";
    Ipv4BadChecksum => "ipv4_bad_checksum", "the IPv4 header checksum does not verify";
    Ipv4NotUnicast => "ipv4_not_unicast", "a broadcast, multicast or zero address that is not routed";
    NoRoute => "no_route", "no FIB entry matches the destination";
    Blackhole => "blackhole", "the destination matches a blackhole route (an unassigned address of a proxy-ARP node's block, or a route added as blackhole)";
    NoPod => "no_pod", "no pod has the destination, an address of the node's own pod subnet in bridge mode (ICMP Host Unreachable sent, as the kernel sends when cni0's ARP for it goes unanswered)";
    TtlExpired => "ttl_expired", "TTL 0 or 1 on a packet to forward (ICMP Time Exceeded sent)";
    FragmentationNeeded => "fragmentation_needed", "DF set and too big for the path (ICMP Fragmentation Needed sent)";
    TooBigNoDf => "too_big_no_df", "too big for the path without DF: podswitch does not fragment";
    NoNeighbour => "no_neighbour", "no MAC known for a local destination";
    PortGone => "port_gone", "the route names a port that is not attached";
    HandoffFull => "handoff_full", "the worker that owns the output port has a full mailbox (it is stalled or overloaded)";
    PeerGone => "peer_gone", "the route names a peer that was removed";
    NoUnderlayPort => "no_underlay_port", "the packet must leave on the underlay and there is none";
    NoHostPort => "no_host_port", "the packet is for the node and there is no host port";
    NotTunnel => "not_tunnel", "underlay traffic that is no configured tunnel and not for a local pod";
    OuterMalformed => "outer_malformed", "a tunnel packet's outer Ethernet/IPv4/UDP header is malformed";
    OuterFragment => "outer_fragment", "a tunnel packet's outer IPv4 header is a fragment";
    UdpChecksum => "udp_checksum", "a tunnel packet's non-zero outer UDP checksum does not verify";
    VxlanTruncated => "vxlan_truncated", "the VXLAN header is truncated";
    VxlanNoVni => "vxlan_no_vni", "the VXLAN I flag is clear";
    VxlanReserved => "vxlan_reserved", "VXLAN reserved bits are set";
    UnknownVni => "unknown_vni", "a VNI other than the configured one";
    InnerMalformed => "inner_malformed", "the decapsulated frame or packet is malformed or too short";
    InnerNotIpv4 => "inner_not_ipv4", "IPIP or IP-in-UDP carrying something other than IPv4";
    EcnCongestionOnNotEct => "ecn_ce_on_not_ect", "outer ECN CE over a not-ECT inner packet (RFC 6040)";
    UnknownPeer => "unknown_peer", "a tunnel packet from an underlay address that is no peer";
    TunnelModeMismatch => "tunnel_mode_mismatch", "a peer sent a tunnel type that is not its backend";
    InnerNotForVtep => "inner_not_for_vtep", "a VXLAN inner frame not addressed to our VTEP MAC";
    SpoofedTunnelSource => "spoofed_tunnel_source", "a decapsulated packet's source is neither the sending peer's own address nor inside its pod subnet";
    TunnelTransit => "tunnel_transit", "a decapsulated packet would leave through the underlay again";
    PoolExhausted => "pool_exhausted", "no free packet buffer for a copy or a reply";
    IcmpRateLimited => "icmp_rate_limited", "an ICMP error not sent: past 1000 a second, bursts of 50 (Linux's icmp_msgs_per_sec and icmp_msgs_burst)";
    EncapFailed => "encap_failed", "encapsulation failed (no headroom or too long)";
    RxTooLong => "rx_too_long", "a received frame longer than a packet buffer, without segmentation offload";
    RxControlTruncated => "rx_control_truncated", "the kernel cut a received tunnel datagram's control data (its outer TOS, TTL or coalesced segment size), which therefore cannot be read";
    OffloadChecksum => "offload_checksum", "a partial checksum whose offsets point outside the frame";
    GsoUnsupported => "gso_unsupported", "a segmentation-offload frame of a type podswitch does not segment (IPv6, legacy UFO)";
    GsoMalformed => "gso_malformed", "a segmentation-offload frame whose headers do not match its type";
    HostNotIp => "host_not_ip", "a packet from the host port that is neither IPv4 nor IPv6";
    TxFailed => "tx_failed", "the kernel did not take a frame on send (queue full or link down)";
    RxQueueFull => "rx_queue_full", "the kernel dropped a frame for the port before podswitch read it: its socket's receive queue, AF_XDP ring or TUN/TAP queue was full (podswitch fell behind)";
    TxDeviceDropped => "tx_device_dropped", "the kernel took a frame on send, then dropped it on its way (the next device's backlog or queue full, its peer down); read from the device's own counters, which count a super-frame once, the underlay's including the node's own packets";
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl DropReason {
    /// The reason for a malformed IPv4 header.
    pub fn from_ipv4(err: WireError) -> DropReason {
        match err {
            WireError::Truncated { .. } => DropReason::Ipv4Truncated,
            WireError::Ipv4Version(_) => DropReason::Ipv4BadVersion,
            WireError::Ipv4HeaderLength(_) => DropReason::Ipv4BadHeaderLength,
            WireError::Ipv4TotalLength { .. } => DropReason::Ipv4BadTotalLength,
            WireError::Ipv4Checksum { .. } => DropReason::Ipv4BadChecksum,
            WireError::Ipv6Version(_) | WireError::UdpLength(_) | WireError::ArpFormat { .. } => {
                DropReason::Ipv4Truncated
            }
        }
    }

    /// The reason for a decapsulation failure.
    pub fn from_decap(err: DecapError) -> DropReason {
        match err {
            DecapError::NotIpv4(_)
            | DecapError::NotTunnelProtocol(_)
            | DecapError::NotTunnelPort(_) => DropReason::NotTunnel,
            DecapError::Outer(WireError::Truncated {
                layer: Layer::Ethernet,
                ..
            }) => DropReason::EthernetTruncated,
            DecapError::Outer(_) => DropReason::OuterMalformed,
            DecapError::OuterFragment => DropReason::OuterFragment,
            DecapError::UdpChecksum { .. } => DropReason::UdpChecksum,
            DecapError::VxlanTruncated { .. } => DropReason::VxlanTruncated,
            DecapError::VxlanNoVni { .. } => DropReason::VxlanNoVni,
            DecapError::VxlanReserved { .. } => DropReason::VxlanReserved,
            DecapError::UnknownVni(_) => DropReason::UnknownVni,
            DecapError::Inner(_) => DropReason::InnerMalformed,
            DecapError::InnerNotIpv4 { .. } => DropReason::InnerNotIpv4,
            DecapError::EcnCongestionOnNotEct => DropReason::EcnCongestionOnNotEct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indexed() {
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(!r.describe().is_empty());
        }
    }
}
