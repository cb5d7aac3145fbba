//! ICMPv4 (RFC 792): a checked view, and the messages a router sends
//! (Time Exceeded, Fragmentation Needed with the next-hop MTU of RFC 1191).

use core::fmt;

use crate::checksum;
use crate::describe::Section;
use crate::error::{check_len, Layer, WireResult};

/// Length of the ICMP header: type, code, checksum, 4 bytes of "rest".
pub const HEADER_LEN: usize = 8;

/// ICMP message types (IANA). Open: unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4Type {
    /// 0.
    EchoReply,
    /// 3.
    DestUnreachable,
    /// 8.
    EchoRequest,
    /// 11.
    TimeExceeded,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for Icmpv4Type {
    fn from(v: u8) -> Self {
        match v {
            0 => Icmpv4Type::EchoReply,
            3 => Icmpv4Type::DestUnreachable,
            8 => Icmpv4Type::EchoRequest,
            11 => Icmpv4Type::TimeExceeded,
            other => Icmpv4Type::Unknown(other),
        }
    }
}

impl From<Icmpv4Type> for u8 {
    fn from(v: Icmpv4Type) -> Self {
        match v {
            Icmpv4Type::EchoReply => 0,
            Icmpv4Type::DestUnreachable => 3,
            Icmpv4Type::EchoRequest => 8,
            Icmpv4Type::TimeExceeded => 11,
            Icmpv4Type::Unknown(other) => other,
        }
    }
}

impl fmt::Display for Icmpv4Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Icmpv4Type::EchoReply => f.write_str("echo reply"),
            Icmpv4Type::DestUnreachable => f.write_str("destination unreachable"),
            Icmpv4Type::EchoRequest => f.write_str("echo request"),
            Icmpv4Type::TimeExceeded => f.write_str("time exceeded"),
            Icmpv4Type::Unknown(v) => write!(f, "type {v}"),
        }
    }
}

/// Code of Destination Unreachable saying "host unreachable".
pub const CODE_HOST_UNREACHABLE: u8 = 1;
/// Code of Destination Unreachable saying "fragmentation needed and DF set".
pub const CODE_FRAG_NEEDED: u8 = 4;
/// Code of Time Exceeded saying "TTL exceeded in transit".
pub const CODE_TTL_EXCEEDED: u8 = 0;

/// A view of an ICMPv4 message.
#[derive(Debug, Clone, Copy)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps untrusted bytes: a whole 8-byte header.
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        check_len(Layer::Icmpv4, buffer.as_ref(), HEADER_LEN)?;
        Ok(Icmpv4Packet { buffer })
    }

    /// Message type.
    pub fn msg_type(&self) -> Icmpv4Type {
        Icmpv4Type::from(self.buffer.as_ref()[0])
    }

    /// Code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// Echo identifier (echo request/reply).
    pub fn echo_ident(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }

    /// Echo sequence number (echo request/reply).
    pub fn echo_seq(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }

    /// Next-hop MTU of a Fragmentation Needed message (RFC 1191 §4).
    pub fn next_hop_mtu(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }

    /// Bytes after the header: echo data, or the invoking packet of an error.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// True if the checksum over the whole message verifies.
    pub fn checksum_ok(&self) -> bool {
        checksum::fold(checksum::accumulate(0, self.buffer.as_ref())) == 0xffff
    }
}

/// An ICMP error a router originates about a packet it could not forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv4Error {
    /// Time Exceeded, TTL exceeded in transit (type 11 code 0).
    TtlExceeded,
    /// Destination Unreachable, fragmentation needed (type 3 code 4), with
    /// the MTU of the next hop (RFC 1191).
    FragNeeded {
        /// The largest IPv4 packet the next hop carries.
        next_hop_mtu: u16,
    },
    /// Destination Unreachable, host unreachable (type 3 code 1): what a
    /// Linux router sends when its ARP for the destination goes
    /// unanswered (`ipv4_link_failure`).
    HostUnreachable,
}

impl Icmpv4Error {
    /// How much of the invoking packet an error quotes: its IP header and
    /// the first 8 bytes of its payload (RFC 792; RFC 1812 §4.3.2.3 allows
    /// more, the Linux kernel quotes up to 576 bytes in total).
    pub fn quote_len(invoking_header_len: usize, invoking_len: usize) -> usize {
        (invoking_header_len + 8).min(invoking_len)
    }

    /// Bytes of the ICMP message quoting `quoted_len` bytes.
    pub const fn buffer_len(quoted_len: usize) -> usize {
        HEADER_LEN + quoted_len
    }

    /// Writes the ICMP message (header, quote, checksum) into `buf`, whose
    /// length must be [`Self::buffer_len`] of `quoted.len()`.
    ///
    /// # Panics
    /// If `buf` has another length.
    pub fn emit(&self, quoted: &[u8], buf: &mut [u8]) {
        assert_eq!(
            buf.len(),
            HEADER_LEN + quoted.len(),
            "ICMP buffer sized by buffer_len()"
        );
        let (msg_type, code, rest) = match *self {
            Icmpv4Error::TtlExceeded => (Icmpv4Type::TimeExceeded, CODE_TTL_EXCEEDED, [0u8; 4]),
            Icmpv4Error::FragNeeded { next_hop_mtu } => {
                let m = next_hop_mtu.to_be_bytes();
                (
                    Icmpv4Type::DestUnreachable,
                    CODE_FRAG_NEEDED,
                    [0, 0, m[0], m[1]],
                )
            }
            Icmpv4Error::HostUnreachable => {
                (Icmpv4Type::DestUnreachable, CODE_HOST_UNREACHABLE, [0u8; 4])
            }
        };
        buf[0] = u8::from(msg_type);
        buf[1] = code;
        buf[2..4].copy_from_slice(&[0, 0]);
        buf[4..8].copy_from_slice(&rest);
        buf[HEADER_LEN..].copy_from_slice(quoted);
        let c = checksum::checksum(buf);
        buf[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// The header at `offset`, described field by field
    /// ([`crate::describe`]), a wrong checksum as its problem.
    pub fn describe(&self, offset: usize) -> Section {
        let (kind, code, ok) = (self.msg_type(), self.code(), self.checksum_ok());
        let rest = match kind {
            Icmpv4Type::EchoRequest | Icmpv4Type::EchoReply => {
                format!("id 0x{:04x} seq {}", self.echo_ident(), self.echo_seq())
            }
            Icmpv4Type::DestUnreachable if code == CODE_FRAG_NEEDED => {
                format!("next-hop MTU {}", self.next_hop_mtu())
            }
            _ => "unused".into(),
        };
        let mut s = Section::new("ICMPv4", offset, HEADER_LEN);
        s.field(
            "type, code",
            offset,
            2,
            format!("{} ({kind}), {code}", u8::from(kind)),
        );
        s.field(
            "checksum",
            offset + 2,
            2,
            format!(
                "0x{:04x} ({})",
                self.checksum(),
                if ok { "correct" } else { "WRONG" }
            ),
        );
        s.field("rest of header", offset + 4, 4, rest);
        if !ok {
            s.problem("checksum is wrong");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frag_needed_round_trip() {
        let quoted = [0x45u8; 28];
        let mut buf = vec![0u8; Icmpv4Error::buffer_len(quoted.len())];
        Icmpv4Error::FragNeeded { next_hop_mtu: 1450 }.emit(&quoted, &mut buf);
        let p = Icmpv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.msg_type(), Icmpv4Type::DestUnreachable);
        assert_eq!(p.code(), CODE_FRAG_NEEDED);
        assert_eq!(p.next_hop_mtu(), 1450);
        assert!(p.checksum_ok());
        assert_eq!(p.data(), &quoted);
        for len in 0..HEADER_LEN {
            assert!(Icmpv4Packet::new_checked(&buf[..len]).is_err());
        }
    }

    #[test]
    fn host_unreachable_round_trip() {
        let quoted = [0x45u8; 28];
        let mut buf = vec![0u8; Icmpv4Error::buffer_len(quoted.len())];
        Icmpv4Error::HostUnreachable.emit(&quoted, &mut buf);
        let p = Icmpv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.msg_type(), Icmpv4Type::DestUnreachable);
        assert_eq!(p.code(), CODE_HOST_UNREACHABLE);
        assert_eq!(&buf[4..8], &[0, 0, 0, 0], "unused, zero (RFC 792)");
        assert!(p.checksum_ok());
        assert_eq!(p.data(), &quoted);
    }

    #[test]
    fn quote_is_header_plus_eight() {
        assert_eq!(Icmpv4Error::quote_len(20, 1500), 28);
        assert_eq!(Icmpv4Error::quote_len(24, 26), 26);
    }
}
