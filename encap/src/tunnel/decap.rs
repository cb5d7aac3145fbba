//! Decapsulation: every outer header checked in order, the tunnel and
//! VNI accepted or refused, ECN combined per RFC 6040.

use core::fmt;
use core::ops::Range;
use std::net::Ipv4Addr;

use crate::ecn::{self, DecapEcn, Ecn};
use crate::error::{Layer, WireError};
use crate::ethernet::{self, EtherType};
use crate::ipv4::{IpProtocol, Ipv4Packet};
use crate::ipv6::Ipv6Packet;
use crate::udp::{self, UdpPacket};
use crate::vxlan::{self, Vni, VxlanHeader};

use super::{TunnelConfig, TunnelMode};

/// What arrives from the underlay and which tunnels podswitch accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecapConfig {
    /// UDP port of VXLAN, or `None` to refuse VXLAN.
    pub vxlan_port: Option<u16>,
    /// The VNI accepted; any other is [`DecapError::UnknownVni`].
    pub vni: Vni,
    /// UDP port of IP-in-UDP, or `None`.
    pub ip_in_udp_port: Option<u16>,
    /// Accept IPIP (protocol 4).
    pub ipip: bool,
    /// Ignore set reserved bits in the VXLAN header, as RFC 7348 §5 says a
    /// receiver should. Off by default, because Linux drops such packets
    /// (`vxlan_rcv` in drivers/net/vxlan/vxlan_core.c treats unparsed flags
    /// as malformed, "more robust and ... a little more security").
    pub ignore_vxlan_reserved: bool,
}

impl DecapConfig {
    /// Accepts exactly the tunnel of `tunnel`.
    pub const fn for_tunnel(tunnel: &TunnelConfig) -> Self {
        let (vxlan_port, ip_in_udp_port, ipip) = match tunnel.mode {
            TunnelMode::Vxlan => (Some(tunnel.dst_port), None, false),
            TunnelMode::Ipip => (None, None, true),
            TunnelMode::IpInUdp => (None, Some(tunnel.dst_port), false),
        };
        DecapConfig {
            vxlan_port,
            vni: tunnel.vni,
            ip_in_udp_port,
            ipip,
            ignore_vxlan_reserved: false,
        }
    }
}

/// Why an underlay packet was not decapsulated. One variant per cause;
/// the engine counts each under its own drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapError {
    /// The outer frame is not IPv4.
    NotIpv4(EtherType),
    /// An outer Ethernet, IPv4 or UDP header is malformed (truncated, bad
    /// version, IHL, total length, header checksum, UDP length).
    Outer(WireError),
    /// The outer IPv4 packet is a fragment (podswitch does not reassemble
    /// tunnel packets; its own senders never fragment them).
    OuterFragment,
    /// An IP protocol no configured tunnel uses.
    NotTunnelProtocol(IpProtocol),
    /// A UDP port no configured tunnel uses.
    NotTunnelPort(u16),
    /// A non-zero outer UDP checksum that does not verify.
    UdpChecksum {
        /// The checksum received.
        received: u16,
        /// The checksum the datagram should carry.
        computed: u16,
    },
    /// The VXLAN header is truncated.
    VxlanTruncated {
        /// Bytes of UDP payload there.
        available: usize,
    },
    /// The VXLAN I flag is clear (RFC 7348 §5: it must be 1).
    VxlanNoVni {
        /// The flags byte.
        flags: u8,
    },
    /// Reserved VXLAN bits are set.
    VxlanReserved {
        /// The flags byte.
        flags: u8,
    },
    /// A VNI other than the configured one.
    UnknownVni(Vni),
    /// The carried frame or packet is malformed or too short.
    Inner(WireError),
    /// IPIP or IP-in-UDP carrying something other than IPv4.
    InnerNotIpv4 {
        /// The version nibble of the carried packet.
        version: u8,
    },
    /// Outer CE on an inner Not-ECT packet (RFC 6040 §4.2: drop).
    EcnCongestionOnNotEct,
}

impl fmt::Display for DecapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecapError::NotIpv4(t) => write!(f, "outer frame is {t}, not IPv4"),
            DecapError::Outer(e) => write!(f, "outer header: {e}"),
            DecapError::OuterFragment => f.write_str("outer IPv4 packet is a fragment"),
            DecapError::NotTunnelProtocol(p) => write!(f, "outer {p} is not a configured tunnel"),
            DecapError::NotTunnelPort(p) => write!(f, "UDP port {p} is not a configured tunnel"),
            DecapError::UdpChecksum { received, computed } => write!(
                f,
                "outer UDP checksum 0x{received:04x} is wrong, it should be 0x{computed:04x}"
            ),
            DecapError::VxlanTruncated { available } => {
                write!(f, "VXLAN header truncated: {available} of 8 bytes")
            }
            DecapError::VxlanNoVni { flags } => {
                write!(f, "VXLAN I flag clear (flags 0x{flags:02x})")
            }
            DecapError::VxlanReserved { flags } => {
                write!(f, "VXLAN reserved bits set (flags 0x{flags:02x})")
            }
            DecapError::UnknownVni(v) => write!(f, "VNI {v} is not configured"),
            DecapError::Inner(e) => write!(f, "inner: {e}"),
            DecapError::InnerNotIpv4 { version } => {
                write!(f, "carried packet is IP version {version}, not 4")
            }
            DecapError::EcnCongestionOnNotEct => {
                f.write_str("outer ECN CE on a not-ECT inner packet (RFC 6040 drop)")
            }
        }
    }
}

impl std::error::Error for DecapError {}

/// What the carried bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inner {
    /// An Ethernet frame (VXLAN).
    Ethernet,
    /// An IPv4 packet without link header (IPIP, IP-in-UDP).
    Ipv4,
}

/// A decapsulated packet: what the outer headers said, and where the inner
/// bytes are in the buffer that was passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decapsulated {
    /// The tunnel it came through.
    pub mode: TunnelMode,
    /// Outer source (the peer node's underlay address).
    pub outer_src: Ipv4Addr,
    /// Outer destination (ours).
    pub outer_dst: Ipv4Addr,
    /// Outer UDP source port (VXLAN, IP-in-UDP).
    pub outer_src_port: Option<u16>,
    /// The VNI (VXLAN).
    pub vni: Option<Vni>,
    /// What the carried bytes are.
    pub inner: Inner,
    /// Where they are.
    pub inner_range: Range<usize>,
}

/// Decapsulates underlay packets per a [`DecapConfig`].
#[derive(Debug, Clone, Copy)]
pub struct Decapsulator {
    config: DecapConfig,
}

impl Decapsulator {
    /// A decapsulator accepting what `config` allows.
    pub const fn new(config: DecapConfig) -> Self {
        Decapsulator { config }
    }

    /// The configuration.
    pub const fn config(&self) -> &DecapConfig {
        &self.config
    }

    /// Decapsulates an outer Ethernet frame. The inner bytes may be changed
    /// in place (RFC 6040 ECN). Ranges in the result index `frame`.
    pub fn decapsulate_frame(&self, frame: &mut [u8]) -> Result<Decapsulated, DecapError> {
        let (ethertype, at) = ethernet::payload_info(frame).map_err(DecapError::Outer)?;
        if ethertype != EtherType::Ipv4 {
            return Err(DecapError::NotIpv4(ethertype));
        }
        let mut d = self.decapsulate_ipv4(&mut frame[at..])?;
        d.inner_range = d.inner_range.start + at..d.inner_range.end + at;
        Ok(d)
    }

    /// Decapsulates an outer IPv4 packet (as a raw socket delivers it).
    pub fn decapsulate_ipv4(&self, packet: &mut [u8]) -> Result<Decapsulated, DecapError> {
        let outer = Ipv4Packet::new_checked(&*packet).map_err(DecapError::Outer)?;
        outer.verify_checksum().map_err(DecapError::Outer)?;
        if outer.is_fragment() {
            return Err(DecapError::OuterFragment);
        }
        let (outer_src, outer_dst, outer_tos) = (outer.src(), outer.dst(), outer.tos());
        let header_len = outer.header_len();
        let packet_len = outer.packet_len();
        let (mode, outer_src_port, vni, inner, carried) = match outer.protocol() {
            IpProtocol::Ipip if self.config.ipip => (
                TunnelMode::Ipip,
                None,
                None,
                Inner::Ipv4,
                header_len..packet_len,
            ),
            IpProtocol::Udp => {
                let udp = UdpPacket::new_checked(&packet[header_len..packet_len])
                    .map_err(DecapError::Outer)?;
                let payload_start = header_len + udp::HEADER_LEN;
                let payload = payload_start..header_len + usize::from(udp.len());
                let (src_port, dst_port) = (udp.src_port(), udp.dst_port());
                let tunnel_port = Some(dst_port) == self.config.vxlan_port
                    || Some(dst_port) == self.config.ip_in_udp_port;
                if !tunnel_port {
                    // Not ours to judge: a host-gw frame's UDP checksum may
                    // still be partial, for the receiving pod to trust.
                    return Err(DecapError::NotTunnelPort(dst_port));
                }
                let received = udp.checksum();
                if received != 0 && !udp.checksum_ok(outer_src, outer_dst) {
                    return Err(DecapError::UdpChecksum {
                        received,
                        computed: udp.compute_checksum(outer_src, outer_dst),
                    });
                }
                if Some(dst_port) == self.config.vxlan_port {
                    let vni = self.check_vxlan(&packet[payload.clone()])?;
                    let inner = payload.start + vxlan::HEADER_LEN..payload.end;
                    (
                        TunnelMode::Vxlan,
                        Some(src_port),
                        Some(vni),
                        Inner::Ethernet,
                        inner,
                    )
                } else if Some(dst_port) == self.config.ip_in_udp_port {
                    (
                        TunnelMode::IpInUdp,
                        Some(src_port),
                        None,
                        Inner::Ipv4,
                        payload,
                    )
                } else {
                    return Err(DecapError::NotTunnelPort(dst_port));
                }
            }
            other => return Err(DecapError::NotTunnelProtocol(other)),
        };
        let carried = match inner {
            Inner::Ethernet => {
                apply_ecn_ethernet(outer_tos, &mut packet[carried.clone()])?;
                carried
            }
            Inner::Ipv4 => {
                let len = apply_ecn_ipv4(outer_tos, &mut packet[carried.clone()])?;
                // The inner total length ends the packet (anything after it
                // inside the UDP payload is not part of it).
                carried.start..carried.start + len
            }
        };
        Ok(Decapsulated {
            mode,
            outer_src,
            outer_dst,
            outer_src_port,
            vni,
            inner,
            inner_range: carried,
        })
    }

    fn check_vxlan(&self, payload: &[u8]) -> Result<Vni, DecapError> {
        let header = VxlanHeader::new_checked(payload).map_err(|_| DecapError::VxlanTruncated {
            available: payload.len(),
        })?;
        if !header.vni_valid() {
            return Err(DecapError::VxlanNoVni {
                flags: header.flags(),
            });
        }
        if header.reserved_bits_set() && !self.config.ignore_vxlan_reserved {
            return Err(DecapError::VxlanReserved {
                flags: header.flags(),
            });
        }
        if header.vni() != self.config.vni {
            return Err(DecapError::UnknownVni(header.vni()));
        }
        if header.payload().len() < ethernet::HEADER_LEN {
            return Err(DecapError::Inner(WireError::Truncated {
                layer: Layer::Ethernet,
                needed: ethernet::HEADER_LEN,
                available: header.payload().len(),
            }));
        }
        Ok(header.vni())
    }
}

/// Applies RFC 6040 to an inner IPv4 packet; returns its length.
fn apply_ecn_ipv4(outer_tos: u8, packet: &mut [u8]) -> Result<usize, DecapError> {
    if let Some(&first) = packet.first() {
        if first >> 4 != 4 {
            return Err(DecapError::InnerNotIpv4 {
                version: first >> 4,
            });
        }
    }
    let mut inner = Ipv4Packet::new_checked(packet).map_err(DecapError::Inner)?;
    match ecn::decapsulate(Ecn::from_tos(outer_tos), Ecn::from_tos(inner.tos())) {
        DecapEcn::Keep => {}
        DecapEcn::Set(e) => inner.set_tos_patch_checksum((inner.tos() & !ecn::ECN_MASK) | e.bits()),
        DecapEcn::Drop => return Err(DecapError::EcnCongestionOnNotEct),
    }
    Ok(inner.packet_len())
}

/// Applies RFC 6040 to the IP packet inside an inner Ethernet frame; a
/// non-IP frame (ARP) has no ECN field and passes unchanged. A malformed
/// inner IP header is left for the pipeline to judge and count.
fn apply_ecn_ethernet(outer_tos: u8, frame: &mut [u8]) -> Result<(), DecapError> {
    let outer = Ecn::from_tos(outer_tos);
    if outer == Ecn::NotEct || outer == Ecn::Ect0 {
        return Ok(()); // RFC 6040 Figure 4: these never change the inner field.
    }
    let Ok((ethertype, at)) = ethernet::payload_info(frame) else {
        return Ok(());
    };
    match ethertype {
        EtherType::Ipv4 => {
            let Ok(mut inner) = Ipv4Packet::new_checked(&mut frame[at..]) else {
                return Ok(());
            };
            match ecn::decapsulate(outer, Ecn::from_tos(inner.tos())) {
                DecapEcn::Keep => {}
                DecapEcn::Set(e) => {
                    inner.set_tos_patch_checksum((inner.tos() & !ecn::ECN_MASK) | e.bits())
                }
                DecapEcn::Drop => return Err(DecapError::EcnCongestionOnNotEct),
            }
        }
        EtherType::Ipv6 => {
            let Ok(mut inner) = Ipv6Packet::new_checked(&mut frame[at..]) else {
                return Ok(());
            };
            match ecn::decapsulate(outer, Ecn::from_tos(inner.traffic_class())) {
                DecapEcn::Keep => {}
                DecapEcn::Set(e) => {
                    inner.set_traffic_class((inner.traffic_class() & !ecn::ECN_MASK) | e.bits())
                }
                DecapEcn::Drop => return Err(DecapError::EcnCongestionOnNotEct),
            }
        }
        _ => {}
    }
    Ok(())
}
