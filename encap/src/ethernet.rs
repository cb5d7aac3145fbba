//! Ethernet II frames (IEEE 802.3 with an EtherType), MAC addresses, and
//! the 802.1Q / 802.1ad tags that may follow the addresses.

use core::fmt;

use crate::describe::Section;
use crate::error::{check_len, Layer, WireResult};

// The MAC address is podswitch's vocabulary, shared with the tables and
// the control protocol.
pub use podswitch_addr::{MacAddr, ParseMacError};

/// Length of an Ethernet II header without tags: two MACs and the EtherType.
pub const HEADER_LEN: usize = 14;
/// Length of one 802.1Q or 802.1ad tag (TPID + TCI).
pub const VLAN_TAG_LEN: usize = 4;
/// Most tags we skip before giving up (QinQ is two; three is generous).
pub const MAX_VLAN_TAGS: usize = 3;

/// EtherType values (IEEE 802 numbers). Open: unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// 0x0800.
    Ipv4,
    /// 0x0806.
    Arp,
    /// 0x86dd.
    Ipv6,
    /// 0x8100, IEEE 802.1Q customer VLAN tag.
    Vlan,
    /// 0x88a8, IEEE 802.1ad service VLAN tag (QinQ).
    QinQ,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::QinQ,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::QinQ => 0x88a8,
            EtherType::Unknown(other) => other,
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtherType::Ipv4 => f.write_str("IPv4"),
            EtherType::Arp => f.write_str("ARP"),
            EtherType::Ipv6 => f.write_str("IPv6"),
            EtherType::Vlan => f.write_str("802.1Q"),
            EtherType::QinQ => f.write_str("802.1ad"),
            EtherType::Unknown(v) => write!(f, "0x{v:04x}"),
        }
    }
}

mod field {
    use core::ops::Range;
    pub(super) const DESTINATION: Range<usize> = 0..6;
    pub(super) const SOURCE: Range<usize> = 6..12;
    pub(super) const ETHERTYPE: Range<usize> = 12..14;
}

/// A read (and, over `&mut [u8]`, write) view of an Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps bytes without checking them. Accessors panic on a buffer
    /// shorter than [`HEADER_LEN`]; use for buffers we built ourselves.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps untrusted bytes, checking there is a whole header.
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        check_len(Layer::Ethernet, buffer.as_ref(), HEADER_LEN)?;
        Ok(EthernetFrame { buffer })
    }

    /// Gives the bytes back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The EtherType right after the addresses (a TPID if tagged).
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skips 802.1Q/802.1ad tags and returns the EtherType of the payload
    /// and the offset where the payload starts.
    pub fn payload_info(&self) -> WireResult<(EtherType, usize)> {
        payload_info(self.buffer.as_ref())
    }

    /// Everything after the (untagged) header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC.
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(ethertype).to_be_bytes());
    }
}

/// Returns the payload EtherType of a frame and its offset, skipping up to
/// [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags.
pub fn payload_info(frame: &[u8]) -> WireResult<(EtherType, usize)> {
    check_len(Layer::Ethernet, frame, HEADER_LEN)?;
    let mut offset = field::ETHERTYPE.start;
    for _ in 0..=MAX_VLAN_TAGS {
        let ethertype = EtherType::from(u16::from_be_bytes([frame[offset], frame[offset + 1]]));
        match ethertype {
            EtherType::Vlan | EtherType::QinQ => {
                // The tag's TCI follows its TPID; the next EtherType follows that.
                offset += VLAN_TAG_LEN;
                check_len(Layer::Vlan, frame, offset + 2)?;
            }
            other => return Ok((other, offset + 2)),
        }
    }
    // More stacked tags than any real network uses: treat the rest as opaque.
    Ok((
        EtherType::Unknown(u16::from_be_bytes([frame[offset], frame[offset + 1]])),
        offset + 2,
    ))
}

/// A parsed Ethernet II header without tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Source MAC.
    pub src: MacAddr,
    /// Destination MAC.
    pub dst: MacAddr,
    /// EtherType.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Self {
        EthernetRepr {
            src: frame.src(),
            dst: frame.dst(),
            ethertype: frame.ethertype(),
        }
    }

    /// Bytes this header takes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`] (a bug in the caller, which
    /// sizes its own buffer).
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..HEADER_LEN]);
        frame.set_dst(self.dst);
        frame.set_src(self.src);
        frame.set_ethertype(self.ethertype);
    }
}

/// The Ethernet header of `frame` at `offset` described field by field
/// ([`crate::describe`]); `header_len` is where its payload starts (after
/// any 802.1Q tags), as [`payload_info`] found it.
///
/// # Panics
///
/// If `header_len` is not one [`payload_info`] returned for this frame
/// (shorter than an Ethernet header, or past the frame's end).
pub fn describe(frame: &[u8], offset: usize, header_len: usize) -> Section {
    let b = &frame[offset..];
    let mac = |at: usize| MacAddr(b[at..at + 6].try_into().expect("6 bytes"));
    let mut s = Section::new("Ethernet II", offset, header_len);
    s.field("destination", offset, 6, describe_mac(mac(0)));
    s.field("source", offset + 6, 6, describe_mac(mac(6)));
    let mut at = 12;
    while at + 2 < header_len {
        let tci = u16::from_be_bytes([b[at + 2], b[at + 3]]);
        let tpid = EtherType::from(u16::from_be_bytes([b[at], b[at + 1]]));
        s.field(
            "VLAN tag",
            offset + at,
            4,
            format!("{tpid} VLAN {} priority {}", tci & 0x0fff, tci >> 13),
        );
        at += 4;
    }
    let ethertype = u16::from_be_bytes([b[header_len - 2], b[header_len - 1]]);
    s.field(
        "ethertype",
        offset + header_len - 2,
        2,
        format!("0x{ethertype:04x} ({})", EtherType::from(ethertype)),
    );
    s
}

/// A MAC address, with what it is when it is a well-known one.
fn describe_mac(mac: MacAddr) -> String {
    if mac == MacAddr::BROADCAST {
        format!("{mac} (broadcast)")
    } else if mac == MacAddr([0xee; 6]) {
        format!("{mac} (Calico's proxy-ARP MAC)")
    } else {
        mac.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WireError;

    #[test]
    fn mac_text_round_trip() {
        let mac: MacAddr = "42:88:6a:88:a9:3f".parse().unwrap();
        assert_eq!(mac.0, [0x42, 0x88, 0x6a, 0x88, 0xa9, 0x3f]);
        assert_eq!(mac.to_string(), "42:88:6a:88:a9:3f");
        assert!(mac.is_local());
        assert!(!mac.is_multicast());
        assert!(MacAddr::BROADCAST.is_multicast());
        for bad in [
            "",
            "42:88:6a:88:a9",
            "42:88:6a:88:a9:3f:00",
            "4288:6a:88:a9:3f:0",
            "zz:88:6a:88:a9:3f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ethertype_is_open() {
        assert_eq!(EtherType::from(0x88cc), EtherType::Unknown(0x88cc));
        assert_eq!(u16::from(EtherType::Unknown(0x88cc)), 0x88cc);
        for v in [0x0800u16, 0x0806, 0x86dd, 0x8100, 0x88a8] {
            assert_eq!(u16::from(EtherType::from(v)), v);
        }
    }

    #[test]
    fn truncated_at_every_length() {
        let frame = [0u8; HEADER_LEN];
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&frame[..len]).unwrap_err(),
                WireError::Truncated {
                    layer: Layer::Ethernet,
                    needed: 14,
                    available: len
                }
            );
        }
        assert!(EthernetFrame::new_checked(&frame[..]).is_ok());
    }

    #[test]
    fn skips_vlan_tags() {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x88, 0xa8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x0a, 0x08, 0x00]);
        frame.extend_from_slice(&[0x45; 20]);
        assert_eq!(payload_info(&frame).unwrap(), (EtherType::Ipv4, 22));
        // A tag cut short is reported as a truncated tag.
        assert_eq!(
            payload_info(&frame[..17]).unwrap_err(),
            WireError::Truncated {
                layer: Layer::Vlan,
                needed: 18,
                available: 17
            }
        );
    }

    #[test]
    fn emit_then_parse() {
        let repr = EthernetRepr {
            src: MacAddr([2, 0, 0, 0, 0, 1]),
            dst: MacAddr::BROADCAST,
            ethertype: EtherType::Arp,
        };
        let mut buf = [0u8; 14];
        repr.emit(&mut buf);
        assert_eq!(
            buf,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06]
        );
        assert_eq!(
            EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap()),
            repr
        );
    }
}
