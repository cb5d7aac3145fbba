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
//! frame ([`FrameBuf`]): for VXLAN the inner Ethernet frame stays as it is;
//! for IPIP and IP-in-UDP the inner Ethernet header is overwritten, since
//! only the IP packet travels.
//!
//! Decapsulation takes a whole outer Ethernet frame (or an IPv4 packet from
//! a raw socket) and checks, in order: outer IPv4 version, IHL, lengths and
//! header checksum; no outer fragment; the protocol and UDP port; UDP length
//! and (if non-zero) checksum; VXLAN flags and VNI; a whole inner header;
//! ECN per RFC 6040. Each failure is its own [`DecapError`] variant.

use core::fmt;
use core::ops::Range;
use std::net::Ipv4Addr;

use crate::buffer::FrameBuf;
use crate::checksum;
use crate::ecn::{self, DecapEcn, Ecn};
use crate::error::{Layer, WireError};
use crate::ethernet::{self, EtherType, EthernetRepr, MacAddr};
use crate::flow::{FlowHasher, PortRange};
use crate::ipv4::{self, IpProtocol, Ipv4Packet, Ipv4Repr};
use crate::ipv6::Ipv6Packet;
use crate::udp::{self, UdpPacket, UdpRepr};
use crate::vxlan::{self, Vni, VxlanHeader};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::Ipv4Packet;

    fn path() -> OuterPath {
        OuterPath {
            src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            src_ip: Ipv4Addr::new(192, 168, 100, 2),
            dst_ip: Ipv4Addr::new(192, 168, 100, 1),
        }
    }

    /// An Ethernet + IPv4 frame with `tos` and `payload` bytes after the header.
    fn inner(tos: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        Ipv4Repr {
            src: Ipv4Addr::new(10, 244, 2, 2),
            dst: Ipv4Addr::new(10, 244, 1, 2),
            protocol: IpProtocol::Udp,
            payload_len: payload,
            ttl: 63,
            tos,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut ip);
        f.extend_from_slice(&ip);
        f.resize(14 + 20 + payload, 0x5a);
        f
    }

    fn encap(config: TunnelConfig, frame: &[u8], headroom: usize) -> Result<Vec<u8>, EncapError> {
        let mut buf = vec![0u8; headroom + frame.len()];
        buf[headroom..].copy_from_slice(frame);
        let mut fb = FrameBuf::new(&mut buf, headroom, headroom + frame.len());
        Tunnel::new(config).encapsulate(&path(), &mut fb, 7)?;
        Ok(fb.frame().to_vec())
    }

    /// Overhead and pod MTU per mode over a 1500-byte underlay, as flannel
    /// and Calico set them.
    #[test]
    fn overhead_and_inner_mtu() {
        assert_eq!(
            (
                TunnelMode::Vxlan.overhead(),
                TunnelMode::Vxlan.inner_mtu(1500)
            ),
            (50, 1450)
        );
        assert_eq!(
            (
                TunnelMode::Ipip.overhead(),
                TunnelMode::Ipip.inner_mtu(1500)
            ),
            (20, 1480)
        );
        assert_eq!(
            (
                TunnelMode::IpInUdp.overhead(),
                TunnelMode::IpInUdp.inner_mtu(1500)
            ),
            (28, 1472)
        );
        assert_eq!(TunnelMode::Vxlan.inner_mtu(9000), 8950);
        assert_eq!(TunnelMode::Vxlan.inner_mtu(40), 0, "saturates");
        // A pod packet of exactly the inner MTU makes a full-size underlay packet.
        for mode in [TunnelMode::Vxlan, TunnelMode::Ipip, TunnelMode::IpInUdp] {
            let frame = inner(0, usize::from(mode.inner_mtu(1500)) - 20);
            let outer = encap(TunnelConfig::for_mode(mode), &frame, 64).unwrap();
            assert_eq!(outer.len() - 14, 1500, "{mode}");
        }
    }

    #[test]
    fn encapsulation_errors() {
        let frame = inner(0, 10);
        let needed = TunnelMode::Vxlan.headroom_needed();
        assert_eq!(
            encap(TunnelConfig::vxlan(), &frame, needed - 1),
            Err(EncapError::Headroom {
                needed,
                available: needed - 1
            })
        );
        assert!(encap(TunnelConfig::vxlan(), &frame, needed).is_ok());
        assert_eq!(
            TunnelMode::Ipip.headroom_needed(),
            20,
            "IPIP reuses the inner Ethernet header's 14 bytes"
        );
        assert!(encap(TunnelConfig::ipip(), &frame, 20).is_ok());
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            encap(TunnelConfig::ipip(), &arp, 64),
            Err(EncapError::InnerNotIpv4(EtherType::Arp))
        );
        assert!(
            encap(TunnelConfig::vxlan(), &arp, 64).is_ok(),
            "VXLAN carries any Ethernet frame"
        );
        assert!(matches!(
            encap(TunnelConfig::vxlan(), &frame[..10], 64),
            Err(EncapError::Inner(_))
        ));
        let jumbo = vec![0u8; 65_535 - 20];
        assert!(matches!(
            encap(TunnelConfig::vxlan(), &jumbo, 64),
            Err(EncapError::TooLong { .. })
        ));
    }

    /// RFC 6040 applied to a real packet: outer CE marks an ECT inner
    /// packet CE (its checksum still valid) and drops a Not-ECT one.
    #[test]
    fn decapsulation_applies_ecn() {
        let decap = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::vxlan()));
        for (inner_tos, expect) in [
            (0x02u8, Ok(0x03u8)),
            (0x01, Ok(0x03)),
            (0x00, Err(DecapError::EcnCongestionOnNotEct)),
        ] {
            let mut outer = encap(TunnelConfig::vxlan(), &inner(inner_tos, 8), 64).unwrap();
            // Mark congestion on the underlay: outer ECN CE (fixing the checksum).
            outer[15] |= 0x03;
            Ipv4Packet::new_checked(&mut outer[14..])
                .unwrap()
                .fill_checksum();
            match (decap.decapsulate_frame(&mut outer), expect) {
                (Ok(d), Ok(tos)) => {
                    let ip = Ipv4Packet::new_checked(&outer[d.inner_range.start + 14..]).unwrap();
                    assert_eq!(ip.tos(), tos);
                    ip.verify_checksum().unwrap();
                }
                (got, want) => assert_eq!(got.map(|_| ()), want.map(|_| ())),
            }
        }
        // Outer ECT(1) over inner ECT(0) becomes ECT(1); IPIP likewise.
        let ipip = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::ipip()));
        let mut outer = encap(TunnelConfig::ipip(), &inner(0x02, 8), 64).unwrap();
        outer[15] = (outer[15] & !0x03) | 0x01;
        Ipv4Packet::new_checked(&mut outer[14..])
            .unwrap()
            .fill_checksum();
        let d = ipip.decapsulate_frame(&mut outer).unwrap();
        assert_eq!(outer[d.inner_range.start + 1] & 0x03, 0x01);
    }

    #[test]
    fn decapsulation_refuses_other_protocols_and_ports() {
        let decap = Decapsulator::new(DecapConfig::for_tunnel(&TunnelConfig::vxlan()));
        let mut ipip = encap(TunnelConfig::ipip(), &inner(0, 8), 64).unwrap();
        assert_eq!(
            decap.decapsulate_frame(&mut ipip),
            Err(DecapError::NotTunnelProtocol(IpProtocol::Ipip))
        );
        let mut udp = encap(TunnelConfig::ip_in_udp(), &inner(0, 8), 64).unwrap();
        assert_eq!(
            decap.decapsulate_frame(&mut udp),
            Err(DecapError::NotTunnelPort(PORT_FLANNEL_UDP))
        );
        let mut arp = inner(0, 8);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            decap.decapsulate_frame(&mut arp),
            Err(DecapError::NotIpv4(EtherType::Arp))
        );
        // Reserved bits are dropped by default and ignored on request (RFC 7348 §5).
        let mut reserved = encap(TunnelConfig::vxlan(), &inner(0, 8), 64).unwrap();
        reserved[45] = 0x01;
        assert_eq!(
            decap.decapsulate_frame(&mut reserved.clone()),
            Err(DecapError::VxlanReserved { flags: 0x08 })
        );
        let lenient = Decapsulator::new(DecapConfig {
            ignore_vxlan_reserved: true,
            ..DecapConfig::for_tunnel(&TunnelConfig::vxlan())
        });
        assert!(lenient.decapsulate_frame(&mut reserved).is_ok());
    }
}
