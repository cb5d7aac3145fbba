//! IPv4 headers (RFC 791): a checked view over untrusted bytes and a
//! representation for the 20-byte headers podswitch writes.
//!
//! The checked constructor enforces what a forwarder must trust before it
//! touches a packet: version 4, IHL >= 5, the header inside the buffer, and
//! `header_len <= total_len <= buffer.len()`. Bytes past `total_len` are
//! Ethernet padding (a 60-byte minimum frame carrying a 28-byte ping) and are
//! not part of the packet; [`Ipv4Packet::packet_len`] is where it ends.
//!
//! One exception, taken only where the caller knows the packet is a TCP
//! super-frame ([`Ipv4Packet::new_checked_super_frame`]): BIG TCP (Linux
//! 6.3) builds GSO packets longer than the 16-bit total length can say
//! and writes 0 there; the packet then ends where the buffer does, as the
//! kernel's `iph_totlen` reads it.

use core::fmt;
use std::net::Ipv4Addr;

use crate::checksum;
use crate::describe::Section;
use crate::ecn::Ecn;
use crate::error::{check_len, Layer, WireError, WireResult};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// The "don't fragment" bit of the flags/fragment-offset word.
pub const FLAG_DF: u16 = 0x4000;
/// The "more fragments" bit.
pub const FLAG_MF: u16 = 0x2000;
/// Mask of the fragment offset (in 8-byte units).
pub const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// IP protocol numbers (IANA). Open: unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// 1.
    Icmp,
    /// 4, IPv4-in-IPv4 (RFC 2003): what Calico's tunl0 sends.
    Ipip,
    /// 6.
    Tcp,
    /// 17.
    Udp,
    /// 41, IPv6-in-IPv4.
    Ipv6,
    /// 58.
    Icmpv6,
    /// Any other value (0 included).
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            1 => IpProtocol::Icmp,
            4 => IpProtocol::Ipip,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            41 => IpProtocol::Ipv6,
            58 => IpProtocol::Icmpv6,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::Ipip => 4,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Ipv6 => 41,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Unknown(other) => other,
        }
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpProtocol::Icmp => f.write_str("ICMP"),
            IpProtocol::Ipip => f.write_str("IPIP"),
            IpProtocol::Tcp => f.write_str("TCP"),
            IpProtocol::Udp => f.write_str("UDP"),
            IpProtocol::Ipv6 => f.write_str("IPv6"),
            IpProtocol::Icmpv6 => f.write_str("ICMPv6"),
            IpProtocol::Unknown(v) => write!(f, "protocol {v}"),
        }
    }
}

mod field {
    use core::ops::Range;
    pub(super) const VER_IHL: usize = 0;
    pub(super) const TOS: usize = 1;
    pub(super) const TOTAL_LEN: Range<usize> = 2..4;
    pub(super) const IDENT: Range<usize> = 4..6;
    pub(super) const FLAGS_FRAG: Range<usize> = 6..8;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: Range<usize> = 10..12;
    pub(super) const SRC: Range<usize> = 12..16;
    pub(super) const DST: Range<usize> = 16..20;
}

/// A view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps bytes without checks; accessors panic on a short buffer. For
    /// buffers podswitch wrote itself.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps untrusted bytes: version, IHL and total length are checked
    /// against the buffer. The checksum is not (see [`Self::verify_checksum`]).
    #[inline]
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        Self::checked(buffer, false)
    }

    /// [`Self::new_checked`] for a TCP super-frame (the caller has its GSO
    /// metadata): a total length of 0 is also taken when the buffer holds
    /// more than 65535 bytes of a TCP packet, a BIG TCP packet (Linux
    /// `iph_set_totlen`); [`Self::packet_len`] is then the buffer's length.
    #[inline]
    pub fn new_checked_super_frame(buffer: T) -> WireResult<Self> {
        Self::checked(buffer, true)
    }

    #[inline(always)]
    fn checked(buffer: T, super_frame: bool) -> WireResult<Self> {
        let bytes = buffer.as_ref();
        check_len(Layer::Ipv4, bytes, HEADER_LEN)?;
        let packet = Ipv4Packet { buffer };
        let version = packet.version();
        if version != 4 {
            return Err(WireError::Ipv4Version(version));
        }
        let ihl = packet.ihl();
        if ihl < 5 {
            return Err(WireError::Ipv4HeaderLength(ihl));
        }
        let header_len = packet.header_len();
        check_len(Layer::Ipv4, packet.buffer.as_ref(), header_len)?;
        let total_len = packet.total_len();
        if super_frame && packet.is_big_tcp() {
            return Ok(packet);
        }
        if usize::from(total_len) < header_len {
            return Err(WireError::Ipv4TotalLength {
                total_len,
                header_len,
            });
        }
        check_len(Layer::Ipv4, packet.buffer.as_ref(), usize::from(total_len))?;
        Ok(packet)
    }

    /// Gives the bytes back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn word(&self, range: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Version field (4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Internet header length in 32-bit words.
    pub fn ihl(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] & 0x0f
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    /// The TOS byte: DSCP (upper 6 bits) and ECN (lower 2, RFC 3168).
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// Total length: header plus payload.
    pub fn total_len(&self) -> u16 {
        self.word(field::TOTAL_LEN)
    }

    /// Length of the packet in the buffer: the total length, which excludes
    /// any link-layer padding after it; for a BIG TCP packet (total length
    /// 0, longer than 65535 bytes), the buffer's length.
    #[inline]
    pub fn packet_len(&self) -> usize {
        match self.total_len() {
            0 if self.is_big_tcp() => self.buffer.as_ref().len(),
            len => usize::from(len),
        }
    }

    /// True for a BIG TCP packet: total length 0, TCP, more than 65535
    /// bytes in the buffer. Only a super-frame can be one: the pipeline
    /// takes it only with GSO metadata ([`Self::new_checked_super_frame`]).
    #[inline]
    pub fn is_big_tcp(&self) -> bool {
        self.total_len() == 0
            && self.buffer.as_ref()[field::PROTOCOL] == 6
            && self.buffer.as_ref().len() > usize::from(u16::MAX)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        self.word(field::IDENT)
    }

    /// The flags and fragment offset word.
    pub fn flags_fragment(&self) -> u16 {
        self.word(field::FLAGS_FRAG)
    }

    /// DF bit.
    pub fn dont_frag(&self) -> bool {
        self.flags_fragment() & FLAG_DF != 0
    }

    /// MF bit.
    pub fn more_frags(&self) -> bool {
        self.flags_fragment() & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.flags_fragment() & FRAG_OFFSET_MASK) * 8
    }

    /// True for any fragment: MF set or a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        self.flags_fragment() & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        self.word(field::CHECKSUM)
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.packet_len()]
    }

    /// The checksum the header should carry (computed with the field as 0).
    pub fn compute_checksum(&self) -> u16 {
        let header = self.header();
        let sum = checksum::accumulate(0, &header[..field::CHECKSUM.start]);
        let sum = checksum::accumulate(sum, &header[field::CHECKSUM.end..]);
        !checksum::fold(sum)
    }

    /// Checks the header checksum (RFC 791: the ones' complement sum of the
    /// whole header, checksum included, is all ones).
    #[inline(always)]
    pub fn verify_checksum(&self) -> WireResult<()> {
        let header = self.header();
        let sum = match header.try_into() {
            // The usual option-less header: ten words, summed straight.
            Ok(h) => checksum::sum_header20(h),
            Err(_) => checksum::accumulate(0, header),
        };
        if checksum::fold(sum) == 0xffff {
            Ok(())
        } else {
            Err(WireError::Ipv4Checksum {
                received: self.checksum(),
                computed: self.compute_checksum(),
            })
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn set_word(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets TTL and patches the checksum incrementally (RFC 1624), the way a
    /// router decrements TTL without summing the header again.
    #[inline]
    pub fn set_ttl_patch_checksum(&mut self, ttl: u8) {
        let old = self.word(field::TTL..field::TTL + 2);
        self.buffer.as_mut()[field::TTL] = ttl;
        let new = self.word(field::TTL..field::TTL + 2);
        let patched = checksum::update_word(self.checksum(), old, new);
        self.set_word(field::CHECKSUM, patched);
    }

    /// Decrements TTL by one and patches the checksum: one less in the TTL
    /// byte is 0x0100 less in the header sum, so 0x0100 more in its
    /// complement, with the end-around carry (the kernel's
    /// `ip_decrease_ttl()`, include/net/ip.h; a special case of RFC 1624
    /// that never produces 0xffff). Returns the new TTL.
    ///
    /// # Panics
    /// If the buffer is shorter than 12 bytes, or TTL is already 0 (callers
    /// send Time Exceeded instead).
    #[inline]
    pub fn decrement_ttl(&mut self) -> u8 {
        let h: &mut [u8] = &mut self.buffer.as_mut()[..12];
        assert!(h[field::TTL] > 0, "decrementing TTL 0");
        let check = u32::from(u16::from_be_bytes([h[10], h[11]])) + 0x0100;
        let check = (check + u32::from(check >= 0xffff)) as u16;
        h[field::TTL] -= 1;
        h[10..12].copy_from_slice(&check.to_be_bytes());
        h[field::TTL]
    }

    /// Sets the TOS byte and patches the checksum incrementally.
    #[inline]
    pub fn set_tos_patch_checksum(&mut self, tos: u8) {
        let old = self.word(0..2);
        self.buffer.as_mut()[field::TOS] = tos;
        let new = self.word(0..2);
        let patched = checksum::update_word(self.checksum(), old, new);
        self.set_word(field::CHECKSUM, patched);
    }

    /// Rewrites the source address and patches the checksum incrementally.
    /// A transport checksum over a pseudo-header (TCP, UDP) is the caller's.
    pub fn set_src_patch_checksum(&mut self, addr: Ipv4Addr) {
        let old = u32::from(self.src());
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.octets());
        let patched = checksum::update_u32(self.checksum(), old, u32::from(addr));
        self.set_word(field::CHECKSUM, patched);
    }

    /// Rewrites the destination address and patches the checksum.
    pub fn set_dst_patch_checksum(&mut self, addr: Ipv4Addr) {
        let old = u32::from(self.dst());
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.octets());
        let patched = checksum::update_u32(self.checksum(), old, u32::from(addr));
        self.set_word(field::CHECKSUM, patched);
    }

    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_word(field::CHECKSUM, 0);
        let c = checksum::checksum(self.header());
        self.set_word(field::CHECKSUM, c);
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), self.packet_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// A 20-byte IPv4 header without options: what podswitch emits as the
/// outer header of a tunnel and for the ICMP errors it originates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Payload protocol.
    pub protocol: IpProtocol,
    /// Payload length in bytes (total length minus 20).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Identification.
    pub ident: u16,
    /// Set DF.
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Reads the fields of a checked packet (options are not kept).
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Self {
        Ipv4Repr {
            src: packet.src(),
            dst: packet.dst(),
            protocol: packet.protocol(),
            payload_len: packet.packet_len() - packet.header_len(),
            ttl: packet.ttl(),
            tos: packet.tos(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
        }
    }

    /// Bytes the header takes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header and its checksum into the first 20 bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than 20 bytes or `20 + payload_len` exceeds
    /// 65535; callers size the buffer and bound the payload first.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let total_len = u16::try_from(HEADER_LEN + self.payload_len)
            .expect("IPv4 total length above 65535: caller must bound the payload");
        let h = &mut buf[..HEADER_LEN];
        h[field::VER_IHL] = 0x45;
        h[field::TOS] = self.tos;
        h[field::TOTAL_LEN].copy_from_slice(&total_len.to_be_bytes());
        h[field::IDENT].copy_from_slice(&self.ident.to_be_bytes());
        let flags: u16 = if self.dont_frag { FLAG_DF } else { 0 };
        h[field::FLAGS_FRAG].copy_from_slice(&flags.to_be_bytes());
        h[field::TTL] = self.ttl;
        h[field::PROTOCOL] = u8::from(self.protocol);
        h[field::CHECKSUM].copy_from_slice(&[0, 0]);
        h[field::SRC].copy_from_slice(&self.src.octets());
        h[field::DST].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(h);
        h[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// The header at `offset`, described field by field
    /// ([`crate::describe`]), a wrong header checksum as its problem.
    pub fn describe(&self, offset: usize) -> Section {
        let header_len = self.header_len();
        // What the field should hold, when it does not.
        let should_be = self
            .verify_checksum()
            .err()
            .map(|_| self.compute_checksum());
        let checksum_state = match should_be {
            None => "correct".to_string(),
            Some(should_be) => format!("WRONG, should be 0x{should_be:04x}"),
        };
        let mut flag_words = Vec::new();
        if self.dont_frag() {
            flag_words.push("DF");
        }
        if self.more_frags() {
            flag_words.push("MF");
        }
        let flags = if flag_words.is_empty() {
            "none".to_string()
        } else {
            flag_words.join("+")
        };
        let mut s = Section::new("IPv4", offset, header_len);
        s.field(
            "version, IHL",
            offset,
            1,
            format!("4, {} ({header_len} bytes)", self.ihl()),
        );
        s.field(
            "DSCP, ECN",
            offset + 1,
            1,
            format!(
                "DSCP {}, ECN {:?}",
                self.tos() >> 2,
                Ecn::from_tos(self.tos())
            ),
        );
        s.field("total length", offset + 2, 2, self.total_len().to_string());
        s.field(
            "identification",
            offset + 4,
            2,
            format!("0x{:04x}", self.ident()),
        );
        s.field(
            "flags, fragment",
            offset + 6,
            2,
            format!(
                "{flags} offset {}",
                (self.flags_fragment() & FRAG_OFFSET_MASK) * 8
            ),
        );
        s.field("TTL", offset + 8, 1, self.ttl().to_string());
        s.field(
            "protocol",
            offset + 9,
            1,
            format!("{} ({})", u8::from(self.protocol()), self.protocol()),
        );
        s.field(
            "header checksum",
            offset + 10,
            2,
            format!("0x{:04x} ({checksum_state})", self.checksum()),
        );
        s.field("source", offset + 12, 4, self.src().to_string());
        s.field("destination", offset + 16, 4, self.dst().to_string());
        if header_len > HEADER_LEN {
            s.field(
                "options",
                offset + HEADER_LEN,
                header_len - HEADER_LEN,
                format!("{} bytes", header_len - HEADER_LEN),
            );
        }
        if let Some(should_be) = should_be {
            s.problem(format!(
                "header checksum 0x{:04x} is wrong, should be 0x{should_be:04x}",
                self.checksum()
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echo request 10.244.2.2 -> 10.244.1.2, 84 bytes, checksum as the
    /// kernel wrote it (from a capture in the seed scenario's addressing).
    fn sample() -> Vec<u8> {
        let repr = Ipv4Repr {
            src: Ipv4Addr::new(10, 244, 2, 2),
            dst: Ipv4Addr::new(10, 244, 1, 2),
            protocol: IpProtocol::Icmp,
            payload_len: 64,
            ttl: 64,
            tos: 0,
            ident: 0x1234,
            dont_frag: true,
        };
        let mut buf = vec![0u8; 84];
        repr.emit(&mut buf);
        buf
    }

    #[test]
    fn emit_parse_round_trip() {
        let buf = sample();
        let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
        packet.verify_checksum().unwrap();
        assert_eq!(packet.total_len(), 84);
        assert!(packet.dont_frag());
        assert!(!packet.is_fragment());
        assert_eq!(Ipv4Repr::parse(&packet).payload_len, 64);
    }

    #[test]
    fn truncated_at_every_length() {
        let buf = sample();
        for len in 0..HEADER_LEN {
            assert_eq!(
                Ipv4Packet::new_checked(&buf[..len]).unwrap_err(),
                WireError::Truncated {
                    layer: Layer::Ipv4,
                    needed: 20,
                    available: len
                }
            );
        }
        for len in HEADER_LEN..buf.len() {
            assert_eq!(
                Ipv4Packet::new_checked(&buf[..len]).unwrap_err(),
                WireError::Truncated {
                    layer: Layer::Ipv4,
                    needed: 84,
                    available: len
                }
            );
        }
    }

    #[test]
    fn bad_ihl_and_lengths() {
        let mut buf = sample();
        for ihl in 0..5u8 {
            buf[0] = 0x40 | ihl;
            assert_eq!(
                Ipv4Packet::new_checked(&buf[..]).unwrap_err(),
                WireError::Ipv4HeaderLength(ihl)
            );
        }
        // IHL 15 = a 60-byte header: fits in 84 bytes; total length 84 is fine.
        buf[0] = 0x4f;
        assert!(Ipv4Packet::new_checked(&buf[..]).is_ok());
        // IHL past the frame.
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..40]).unwrap_err(),
            WireError::Truncated {
                layer: Layer::Ipv4,
                needed: 60,
                available: 40
            }
        );
        buf[0] = 0x45;
        buf[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..]).unwrap_err(),
            WireError::Ipv4TotalLength {
                total_len: 19,
                header_len: 20
            }
        );
        buf[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..]).unwrap_err(),
            WireError::Ipv4Version(6)
        );
    }

    #[test]
    fn padding_after_total_length_is_not_payload() {
        let mut buf = sample();
        buf.extend_from_slice(&[0xaa; 10]);
        let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.packet_len(), 84);
        assert_eq!(packet.payload().len(), 64);
    }

    #[test]
    fn bad_checksum_is_reported() {
        let mut buf = sample();
        let good = u16::from_be_bytes([buf[10], buf[11]]);
        buf[10] ^= 0x01;
        let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(
            packet.verify_checksum().unwrap_err(),
            WireError::Ipv4Checksum {
                received: good ^ 0x0100,
                computed: good
            }
        );
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut buf = sample();
        let mut packet = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        while packet.ttl() > 0 {
            let ttl = packet.ttl() - 1;
            packet.set_ttl_patch_checksum(ttl);
            packet.verify_checksum().unwrap();
        }
        packet.set_dst_patch_checksum(Ipv4Addr::new(10, 244, 7, 9));
        packet.set_src_patch_checksum(Ipv4Addr::new(192, 168, 100, 3));
        packet.set_tos_patch_checksum(0xb9);
        packet.verify_checksum().unwrap();
    }

    /// The kernel's one-add TTL decrement equals a full recomputation for
    /// every TTL and a spread of header checksums.
    #[test]
    fn decrement_ttl_matches_recompute() {
        let mut buf = sample();
        for ident in (0..=u16::MAX).step_by(251) {
            buf[4..6].copy_from_slice(&ident.to_be_bytes());
            buf[8] = 255;
            let mut packet = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
            packet.fill_checksum();
            while packet.ttl() > 0 {
                let ttl = packet.decrement_ttl();
                assert_eq!(ttl, packet.ttl());
                packet.verify_checksum().unwrap();
                assert_ne!(packet.checksum(), 0xffff);
            }
        }
    }

    #[test]
    fn protocol_is_open() {
        assert_eq!(IpProtocol::from(0), IpProtocol::Unknown(0));
        for v in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(v)), v);
        }
    }
}
