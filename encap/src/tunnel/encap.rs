//! Encapsulation: a tunnel's outer headers written in place in front of
//! the frame, from a template built once per peer.

use core::fmt;

use crate::buffer::FrameBuf;
use crate::checksum;
use crate::ecn;
use crate::error::{Layer, WireError};
use crate::ethernet::{self, EtherType, EthernetRepr};
use crate::flow::FlowHasher;
use crate::ipv4::{self, IpProtocol, Ipv4Packet, Ipv4Repr};
use crate::ipv6::Ipv6Packet;
use crate::udp::{self, UdpRepr};
use crate::vxlan;

use super::{
    DontFragment, Dscp, OuterPath, SourcePort, Ttl, TunnelConfig, TunnelMode, DEFAULT_TTL,
    OUTER_ETH_IP,
};

/// Why a frame could not be encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapError {
    /// Not enough headroom in front of the frame.
    Headroom {
        /// Bytes needed.
        needed: usize,
        /// Bytes there.
        available: usize,
    },
    /// IPIP and IP-in-UDP carry only IPv4; the frame holds something else.
    InnerNotIpv4(EtherType),
    /// The inner frame's headers could not be read.
    Inner(WireError),
    /// The outer packet would exceed 65535 bytes.
    TooLong {
        /// The outer IPv4 total length it would have.
        total_len: usize,
    },
}

impl fmt::Display for EncapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncapError::Headroom { needed, available } => {
                write!(
                    f,
                    "needs {needed} bytes of headroom, the buffer has {available}"
                )
            }
            EncapError::InnerNotIpv4(t) => {
                write!(f, "this tunnel carries IPv4 only, the frame is {t}")
            }
            EncapError::Inner(e) => write!(f, "inner frame: {e}"),
            EncapError::TooLong { total_len } => {
                write!(
                    f,
                    "outer packet would be {total_len} bytes, above IPv4's 65535"
                )
            }
        }
    }
}

impl std::error::Error for EncapError {}

/// What the inner header says about TTL, DF and TOS.
#[derive(Debug, Clone, Copy)]
struct InnerIpInfo {
    ttl: u8,
    tos: u8,
    dont_frag: bool,
}

/// TTL, TOS and DF of an IP packet, when readable.
#[inline]
fn inner_ip_info(ethertype: EtherType, packet: &[u8]) -> Option<InnerIpInfo> {
    match ethertype {
        EtherType::Ipv4 if packet.len() >= ipv4::HEADER_LEN => Some(InnerIpInfo {
            ttl: packet[8],
            tos: packet[1],
            dont_frag: packet[6] & 0x40 != 0,
        }),
        EtherType::Ipv6 => {
            let p = Ipv6Packet::new_checked(packet).ok()?;
            Some(InnerIpInfo {
                ttl: p.hop_limit(),
                tos: p.traffic_class(),
                dont_frag: false,
            })
        }
        _ => None,
    }
}

/// A configured tunnel: encapsulates frames towards peers.
#[derive(Debug, Clone, Copy)]
pub struct Tunnel {
    config: TunnelConfig,
    hasher: FlowHasher,
}

impl Tunnel {
    /// A tunnel with `config`.
    pub const fn new(config: TunnelConfig) -> Self {
        Tunnel {
            config,
            hasher: FlowHasher::new(config.flow_seed),
        }
    }

    /// The configuration.
    pub const fn config(&self) -> &TunnelConfig {
        &self.config
    }

    /// Builds the outer headers towards `path` once; the engine keeps the
    /// template per peer and calls [`EncapTemplate::encapsulate`] per packet.
    pub fn template(&self, path: &OuterPath) -> EncapTemplate {
        let cfg = &self.config;
        let mode = cfg.mode;
        let mut header = [0u8; MAX_OUTER_HEADER_LEN];
        EthernetRepr {
            src: path.src_mac,
            dst: path.dst_mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut header);
        let protocol = if mode == TunnelMode::Ipip {
            IpProtocol::Ipip
        } else {
            IpProtocol::Udp
        };
        // Per-packet fields are written as zero, so the sum of the header is
        // the sum of its constant words: version/IHL, protocol, addresses.
        Ipv4Repr {
            src: path.src_ip,
            dst: path.dst_ip,
            protocol,
            payload_len: 0,
            ttl: 0,
            tos: 0,
            ident: 0,
            dont_frag: false,
        }
        .emit(&mut header[ethernet::HEADER_LEN..]);
        header[ethernet::HEADER_LEN + 2..ethernet::HEADER_LEN + 4].copy_from_slice(&[0, 0]); // total length
        header[ethernet::HEADER_LEN + 10..ethernet::HEADER_LEN + 12].copy_from_slice(&[0, 0]); // checksum
        let ip_sum = checksum::accumulate(0, &header[ethernet::HEADER_LEN..OUTER_ETH_IP]);
        let mut udp_sum = 0;
        if mode != TunnelMode::Ipip {
            UdpRepr {
                src_port: 0,
                dst_port: cfg.dst_port,
                payload_len: 0,
            }
            .emit(&mut header[OUTER_ETH_IP..]);
            header[OUTER_ETH_IP + 4..OUTER_ETH_IP + 6].copy_from_slice(&[0, 0]); // length
            if mode == TunnelMode::Vxlan {
                vxlan::emit(cfg.vni, &mut header[OUTER_ETH_IP + udp::HEADER_LEN..]);
            }
            // Pseudo-header without its length, the destination port, and
            // the VXLAN header: everything in the checksum that is constant.
            udp_sum =
                checksum::pseudo_header_v4(path.src_ip, path.dst_ip, u8::from(IpProtocol::Udp), 0);
            udp_sum = checksum::accumulate(udp_sum, &header[OUTER_ETH_IP..mode.outer_header_len()]);
        }
        EncapTemplate {
            tunnel: *self,
            header,
            ip_sum,
            udp_sum,
        }
    }

    /// Encapsulates the Ethernet frame in `frame` towards `path`, writing
    /// the outer headers into its headroom. On success `frame` holds the
    /// outer Ethernet frame. `ident` is the outer IPv4 identification (the
    /// caller keeps a counter; RFC 6864 lets it be anything for DF packets).
    ///
    /// Builds a template each call: for one-off use. Per-packet callers keep
    /// the [`Self::template`] of each peer.
    pub fn encapsulate(
        &self,
        path: &OuterPath,
        frame: &mut FrameBuf<'_>,
        ident: u16,
    ) -> Result<(), EncapError> {
        self.template(path).encapsulate(frame, ident)
    }
}

/// Longest outer header: VXLAN's 50 bytes.
const MAX_OUTER_HEADER_LEN: usize = OUTER_ETH_IP + udp::HEADER_LEN + vxlan::HEADER_LEN;

/// The outer headers towards one peer, built once: per packet only the
/// lengths, TOS, TTL, DF, identification, UDP source port and checksums
/// are filled in, and the IPv4 header checksum is finished from the
/// precomputed sum of the constant words. (Open vSwitch pushes tunnel
/// headers the same way: a header prebuilt per tunnel, patched per packet.)
#[derive(Debug, Clone, Copy)]
pub struct EncapTemplate {
    tunnel: Tunnel,
    header: [u8; MAX_OUTER_HEADER_LEN],
    /// Sum of the outer IPv4 header's constant words.
    ip_sum: u32,
    /// Sum of the UDP checksum's constant inputs (pseudo-header addresses
    /// and protocol, destination port, VXLAN header).
    udp_sum: u32,
}

impl EncapTemplate {
    /// The tunnel this template belongs to.
    pub const fn tunnel(&self) -> &Tunnel {
        &self.tunnel
    }

    /// Encapsulates the Ethernet frame in `frame`, writing the outer headers
    /// into its headroom; see [`Tunnel::encapsulate`].
    #[inline]
    pub fn encapsulate(&self, frame: &mut FrameBuf<'_>, ident: u16) -> Result<(), EncapError> {
        let cfg = &self.tunnel.config;
        let mode = cfg.mode;
        let bytes = frame.frame();
        // Pods send untagged frames: read the EtherType directly and walk
        // VLAN tags only when there are some.
        let (ethertype, l3_offset) = match bytes.get(12..14) {
            Some(&[0x08, 0x00]) => (EtherType::Ipv4, ethernet::HEADER_LEN),
            Some(_) => ethernet::payload_info(bytes).map_err(EncapError::Inner)?,
            None => {
                return Err(EncapError::Inner(WireError::Truncated {
                    layer: Layer::Ethernet,
                    needed: ethernet::HEADER_LEN,
                    available: bytes.len(),
                }))
            }
        };
        let l3 = &bytes[l3_offset..];
        // The bytes that travel: the whole frame (VXLAN), or its IPv4 packet
        // without Ethernet padding (IPIP, IP-in-UDP).
        let (carried_start, carried_end) = match mode {
            TunnelMode::Vxlan => (frame.start(), frame.end()),
            TunnelMode::Ipip | TunnelMode::IpInUdp => {
                if ethertype != EtherType::Ipv4 {
                    return Err(EncapError::InnerNotIpv4(ethertype));
                }
                let packet = Ipv4Packet::new_checked(l3).map_err(EncapError::Inner)?;
                let start = frame.start() + l3_offset;
                (start, start + packet.packet_len())
            }
        };
        let inner_info = inner_ip_info(ethertype, l3);
        let outer_len = mode.outer_header_len();
        if carried_start < outer_len {
            return Err(EncapError::Headroom {
                needed: outer_len - (carried_start - frame.start()),
                available: frame.headroom(),
            });
        }
        let carried_len = carried_end - carried_start;
        let ip_payload_len = outer_len - OUTER_ETH_IP + carried_len;
        let Ok(total_len) = u16::try_from(ipv4::HEADER_LEN + ip_payload_len) else {
            return Err(EncapError::TooLong {
                total_len: ipv4::HEADER_LEN + ip_payload_len,
            });
        };

        let ttl = match (cfg.ttl, inner_info) {
            (Ttl::Fixed(ttl), _) => ttl,
            (Ttl::Inherit, Some(info)) => info.ttl,
            (Ttl::Inherit, None) => DEFAULT_TTL,
        };
        let dont_frag = match cfg.df {
            DontFragment::Set => true,
            DontFragment::Clear => false,
            DontFragment::Inherit => inner_info.is_some_and(|i| i.dont_frag),
        };
        let dscp_tos = match (cfg.dscp, inner_info) {
            (Dscp::Fixed(tos), _) => tos,
            (Dscp::Inherit, Some(info)) => info.tos,
            (Dscp::Inherit, None) => 0,
        };
        let tos = ecn::encapsulate(dscp_tos, inner_info.map(|i| i.tos));
        let src_port = match cfg.src_port {
            SourcePort::Fixed(port) => port,
            SourcePort::FlowHash(range) => {
                let hash = self.tunnel.hasher.hash_l3(bytes, ethertype, l3_offset);
                range.pick(hash)
            }
        };
        let flags: u16 = if dont_frag { ipv4::FLAG_DF } else { 0 };

        let outer_start = carried_start - outer_len;
        // outer_start >= 0 (headroom checked) and carried_end <= the old end.
        frame.set_bounds_trusted(outer_start, carried_end);
        let out = frame.frame_mut();
        // Constant lengths per mode let the compiler copy with a few moves.
        match mode {
            TunnelMode::Vxlan => out[..50].copy_from_slice(&self.header[..50]),
            TunnelMode::Ipip => out[..34].copy_from_slice(&self.header[..34]),
            TunnelMode::IpInUdp => out[..42].copy_from_slice(&self.header[..42]),
        }
        let ip = &mut out[ethernet::HEADER_LEN..OUTER_ETH_IP];
        ip[1] = tos;
        ip[2..4].copy_from_slice(&total_len.to_be_bytes());
        ip[4..6].copy_from_slice(&ident.to_be_bytes());
        ip[6..8].copy_from_slice(&flags.to_be_bytes());
        ip[8] = ttl;
        let ip_sum = self.ip_sum
            + u32::from(tos)
            + u32::from(total_len)
            + u32::from(ident)
            + u32::from(flags)
            + (u32::from(ttl) << 8);
        ip[10..12].copy_from_slice(&(!checksum::fold(ip_sum)).to_be_bytes());
        if mode == TunnelMode::Ipip {
            return Ok(());
        }
        let udp_len = total_len - ipv4::HEADER_LEN as u16;
        let (udp, payload) = out[OUTER_ETH_IP..].split_at_mut(udp::HEADER_LEN);
        udp[0..2].copy_from_slice(&src_port.to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        if cfg.udp_checksum {
            // Pseudo-header length + UDP length field + source port + data
            // after the template's part (the VXLAN header is in udp_sum).
            let data = &payload[outer_len - OUTER_ETH_IP - udp::HEADER_LEN..];
            let sum = checksum::accumulate(
                self.udp_sum + 2 * u32::from(udp_len) + u32::from(src_port),
                data,
            );
            let c = match !checksum::fold(sum) {
                0 => 0xffff, // RFC 768: a computed zero is sent as all ones
                c => c,
            };
            udp[6..8].copy_from_slice(&c.to_be_bytes());
        }
        Ok(())
    }
}
