//! UDP (RFC 768) over IPv4: a checked view and the 8-byte header we emit.

use std::net::Ipv4Addr;

use crate::checksum;
use crate::describe::Section;
use crate::error::{check_len, Layer, WireError, WireResult};
use crate::ipv4::IpProtocol;

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps bytes without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps untrusted bytes: a whole header, a length field of at least 8
    /// and no longer than the buffer (the IP payload). Bytes after the
    /// length field are not part of the datagram.
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        check_len(Layer::Udp, buffer.as_ref(), HEADER_LEN)?;
        let packet = UdpPacket { buffer };
        let len = packet.len();
        if usize::from(len) < HEADER_LEN {
            return Err(WireError::UdpLength(len));
        }
        check_len(Layer::Udp, packet.buffer.as_ref(), usize::from(len))?;
        Ok(packet)
    }

    fn word(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.word(0)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.word(2)
    }

    /// Length field: header plus payload.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        self.word(4)
    }

    /// Checksum field (0 means "not computed" over IPv4).
    pub fn checksum(&self) -> u16 {
        self.word(6)
    }

    /// The datagram: header and payload up to the length field.
    pub fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.len())]
    }

    /// The payload up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// The checksum this datagram should carry between `src` and `dst`.
    /// A computed 0 is sent as 0xffff (RFC 768: 0 means "no checksum").
    pub fn compute_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let datagram = self.datagram();
        let sum = checksum::pseudo_header_v4(src, dst, 17, self.len());
        let sum = checksum::accumulate(sum, &datagram[..6]);
        let sum = checksum::accumulate(sum, &datagram[8..]);
        match !checksum::fold(sum) {
            0 => 0xffff,
            c => c,
        }
    }

    /// True if the checksum is absent (0) or verifies.
    pub fn checksum_ok(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let sum = checksum::pseudo_header_v4(src, dst, 17, self.len());
        checksum::fold(checksum::accumulate(sum, self.datagram())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Computes and stores the checksum.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let c = self.compute_checksum(src, dst);
        self.buffer.as_mut()[6..8].copy_from_slice(&c.to_be_bytes());
    }
}

/// A UDP header to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length.
    pub payload_len: usize,
}

impl UdpRepr {
    /// Bytes the header takes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with checksum 0 into the first 8 bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than 8 bytes or the length exceeds 65535.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let len = u16::try_from(HEADER_LEN + self.payload_len)
            .expect("UDP length above 65535: caller must bound the payload");
        let h = &mut buf[..HEADER_LEN];
        h[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        h[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        h[4..6].copy_from_slice(&len.to_be_bytes());
        h[6..8].copy_from_slice(&[0, 0]);
    }
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// The header at `offset` of a datagram from `src` to `dst`,
    /// described field by field ([`crate::describe`]); `port_name` names
    /// a well-known destination port. A checksum left partial by offload
    /// is told apart from a wrong one, which is the problem.
    pub fn describe(
        &self,
        offset: usize,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port_name: Option<&str>,
    ) -> Section {
        let ok = self.checksum_ok(src, dst);
        let pseudo = checksum::pseudo_header_v4(src, dst, u8::from(IpProtocol::Udp), self.len());
        let partial = !ok && checksum::is_partial(self.checksum(), pseudo);
        let computed = self.compute_checksum(src, dst);
        let checksum = match (self.checksum(), ok) {
            (0, _) => "0x0000 (none: allowed over IPv4)".to_string(),
            (c, true) => format!("0x{c:04x} (correct)"),
            (c, false) if partial => format!("0x{c:04x} ({})", checksum::PARTIAL_IN_WORDS),
            (c, false) => format!("0x{c:04x} (WRONG, should be 0x{computed:04x})"),
        };
        let dport = self.dst_port();
        let mut s = Section::new("UDP", offset, HEADER_LEN);
        s.field("source port", offset, 2, self.src_port().to_string());
        s.field(
            "destination port",
            offset + 2,
            2,
            match port_name {
                Some(name) => format!("{dport} ({name})"),
                None => dport.to_string(),
            },
        );
        s.field("length", offset + 4, 2, self.len().to_string());
        s.field("checksum", offset + 6, 2, checksum);
        if !ok && !partial {
            s.problem(format!(
                "checksum is wrong, should be 0x{computed:04x} (a receiver drops this)"
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_round_trip_and_truncation() {
        let src = Ipv4Addr::new(192, 168, 100, 2);
        let dst = Ipv4Addr::new(192, 168, 100, 1);
        let mut buf = vec![0u8; 8 + 5];
        UdpRepr {
            src_port: 40000,
            dst_port: 8472,
            payload_len: 5,
        }
        .emit(&mut buf);
        buf[8..].copy_from_slice(b"hello");
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        assert!(p.checksum_ok(src, dst), "zero checksum is accepted");
        p.fill_checksum(src, dst);
        assert!(p.checksum_ok(src, dst));
        assert!(!p.checksum_ok(src, Ipv4Addr::new(192, 168, 100, 3)));
        assert_eq!(p.payload(), b"hello");
        for len in 0..8 {
            assert_eq!(
                UdpPacket::new_checked(&buf[..len]).unwrap_err(),
                WireError::Truncated {
                    layer: Layer::Udp,
                    needed: 8,
                    available: len
                }
            );
        }
        for len in 8..13 {
            assert_eq!(
                UdpPacket::new_checked(&buf[..len]).unwrap_err(),
                WireError::Truncated {
                    layer: Layer::Udp,
                    needed: 13,
                    available: len
                }
            );
        }
        buf[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&buf[..]).unwrap_err(),
            WireError::UdpLength(7)
        );
    }
}
