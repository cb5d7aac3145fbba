//! Errors of the wire-format views: small, `Copy`, no heap.
//!
//! Each variant names the layer that failed and the number that was wrong,
//! so the engine can map it to a drop reason and a person can read it in
//! `podswitchctl explain` without a debugger.

use core::fmt;

/// The protocol layer a [`WireError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet II header (14 bytes).
    Ethernet,
    /// An IEEE 802.1Q / 802.1ad tag (4 bytes) after the MAC addresses.
    Vlan,
    /// ARP for Ethernet/IPv4 (28 bytes).
    Arp,
    /// IPv4 header.
    Ipv4,
    /// IPv6 fixed header (40 bytes).
    Ipv6,
    /// UDP header.
    Udp,
    /// ICMPv4 header.
    Icmpv4,
    /// VXLAN header (8 bytes).
    Vxlan,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "Ethernet",
            Layer::Vlan => "802.1Q tag",
            Layer::Arp => "ARP",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Udp => "UDP",
            Layer::Icmpv4 => "ICMPv4",
            Layer::Vxlan => "VXLAN",
        })
    }
}

/// Why a header could not be read. One variant per failed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// Fewer bytes than the layer's header (or its declared length) needs.
    Truncated {
        /// The layer being read.
        layer: Layer,
        /// Bytes the layer needs.
        needed: usize,
        /// Bytes that were there.
        available: usize,
    },
    /// IPv4 version field is not 4.
    Ipv4Version(u8),
    /// IPv4 IHL below 5 (a header shorter than 20 bytes). RFC 791 §3.1.
    Ipv4HeaderLength(u8),
    /// IPv4 total length below the header length.
    Ipv4TotalLength {
        /// The total length field.
        total_len: u16,
        /// The header length from IHL, in bytes.
        header_len: usize,
    },
    /// IPv4 header checksum does not verify. RFC 791 §3.1, RFC 1071.
    Ipv4Checksum {
        /// The checksum field as received.
        received: u16,
        /// The checksum the header should carry.
        computed: u16,
    },
    /// IPv6 version field is not 6.
    Ipv6Version(u8),
    /// UDP length field below 8 (the header itself). RFC 768.
    UdpLength(u16),
    /// ARP for another hardware or protocol type than Ethernet/IPv4.
    ArpFormat {
        /// Hardware type (1 = Ethernet).
        hardware: u16,
        /// Protocol type (0x0800 = IPv4).
        protocol: u16,
        /// Hardware address length (6).
        hardware_len: u8,
        /// Protocol address length (4).
        protocol_len: u8,
    },
}

impl WireError {
    /// The layer the error is about.
    pub fn layer(&self) -> Layer {
        match *self {
            WireError::Truncated { layer, .. } => layer,
            WireError::Ipv4Version(_)
            | WireError::Ipv4HeaderLength(_)
            | WireError::Ipv4TotalLength { .. }
            | WireError::Ipv4Checksum { .. } => Layer::Ipv4,
            WireError::Ipv6Version(_) => Layer::Ipv6,
            WireError::UdpLength(_) => Layer::Udp,
            WireError::ArpFormat { .. } => Layer::Arp,
        }
    }

    /// Shorthand used by every view's checked constructor.
    pub(crate) fn truncated(layer: Layer, needed: usize, available: usize) -> Self {
        WireError::Truncated {
            layer,
            needed,
            available,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WireError::Truncated {
                layer,
                needed,
                available,
            } => {
                write!(
                    f,
                    "{layer}: truncated, needs {needed} bytes but {available} are there"
                )
            }
            WireError::Ipv4Version(v) => write!(f, "IPv4: version is {v}, not 4"),
            WireError::Ipv4HeaderLength(ihl) => write!(
                f,
                "IPv4: IHL {ihl} means a {}-byte header, below the 20-byte minimum",
                usize::from(ihl) * 4
            ),
            WireError::Ipv4TotalLength {
                total_len,
                header_len,
            } => write!(
                f,
                "IPv4: total length {total_len} is below the {header_len}-byte header"
            ),
            WireError::Ipv4Checksum { received, computed } => write!(
                f,
                "IPv4: header checksum 0x{received:04x} is wrong, it should be 0x{computed:04x}"
            ),
            WireError::Ipv6Version(v) => write!(f, "IPv6: version is {v}, not 6"),
            WireError::UdpLength(len) => {
                write!(f, "UDP: length field {len} is below the 8-byte header")
            }
            WireError::ArpFormat {
                hardware,
                protocol,
                hardware_len,
                protocol_len,
            } => write!(
                f,
                "ARP: hardware type {hardware}/len {hardware_len}, protocol 0x{protocol:04x}/len \
                 {protocol_len} is not Ethernet/IPv4"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// Result of reading untrusted bytes.
pub type WireResult<T> = Result<T, WireError>;

/// Returns `Ok` when `bytes` holds at least `needed` bytes for `layer`.
#[inline]
pub(crate) fn check_len(layer: Layer, bytes: &[u8], needed: usize) -> WireResult<()> {
    if bytes.len() < needed {
        Err(WireError::truncated(layer, needed, bytes.len()))
    } else {
        Ok(())
    }
}
