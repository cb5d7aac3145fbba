//! The IPv6 fixed header (RFC 8200 §3), read-only: podswitch carries IPv6
//! inside tunnels and hashes its flows, but does not route it yet.

use std::net::Ipv6Addr;

use crate::describe::Section;
use crate::ecn::Ecn;
use crate::error::{check_len, Layer, WireError, WireResult};
use crate::ipv4::IpProtocol;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// A view of an IPv6 packet's fixed header.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps untrusted bytes: version 6 and a whole fixed header.
    /// The payload length is not required to fit (callers check it where
    /// they read the payload).
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        check_len(Layer::Ipv6, buffer.as_ref(), HEADER_LEN)?;
        let version = buffer.as_ref()[0] >> 4;
        if version != 6 {
            return Err(WireError::Ipv6Version(version));
        }
        Ok(Ipv6Packet { buffer })
    }

    /// Traffic class: DSCP and ECN, as the IPv4 TOS byte.
    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        let b = self.buffer.as_ref();
        (u32::from(b[1] & 0x0f) << 16) | (u32::from(b[2]) << 8) | u32::from(b[3])
    }

    /// Payload length.
    pub fn payload_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }

    /// Next header (the payload protocol when there are no extension headers).
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[6])
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }

    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[8..24]);
        Ipv6Addr::from(a)
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[24..40]);
        Ipv6Addr::from(a)
    }

    /// Bytes after the fixed header that the payload length covers, cut at
    /// the end of the buffer.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(b.len());
        &b[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets the traffic class (IPv6 has no header checksum to patch).
    pub fn set_traffic_class(&mut self, tc: u8) {
        let b = self.buffer.as_mut();
        b[0] = 0x60 | (tc >> 4);
        b[1] = (b[1] & 0x0f) | (tc << 4);
    }
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// The fixed header at `offset`, described field by field
    /// ([`crate::describe`]).
    pub fn describe(&self, offset: usize) -> Section {
        let mut s = Section::new("IPv6", offset, HEADER_LEN);
        s.field(
            "traffic class",
            offset,
            2,
            format!(
                "0x{:02x} (ECN {:?})",
                self.traffic_class(),
                Ecn::from_tos(self.traffic_class())
            ),
        );
        s.field(
            "payload length",
            offset + 4,
            2,
            self.payload_len().to_string(),
        );
        s.field("next header", offset + 6, 1, self.next_header().to_string());
        s.field("hop limit", offset + 7, 1, self.hop_limit().to_string());
        s.field("source", offset + 8, 16, self.src().to_string());
        s.field("destination", offset + 24, 16, self.dst().to_string());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_truncation() {
        let mut header = [0u8; 40];
        header[0] = 0x6b; // version 6, traffic class high nibble 0xb
        header[1] = 0x81; // traffic class low nibble 0x8, flow label 0x1....
        header[2] = 0x23;
        header[3] = 0x45;
        header[5] = 8;
        header[6] = 17;
        header[7] = 255;
        header[23] = 1;
        header[39] = 2;
        let p = Ipv6Packet::new_checked(&header[..]).unwrap();
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.next_header(), IpProtocol::Udp);
        assert_eq!(p.src(), "::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst(), "::2".parse::<Ipv6Addr>().unwrap());
        assert!(p.payload().is_empty());
        for len in 0..40 {
            assert!(Ipv6Packet::new_checked(&header[..len]).is_err());
        }
        let mut m = header;
        Ipv6Packet::new_checked(&mut m[..])
            .unwrap()
            .set_traffic_class(0x03);
        assert_eq!(
            Ipv6Packet::new_checked(&m[..]).unwrap().traffic_class(),
            0x03
        );
        assert_eq!(
            Ipv6Packet::new_checked(&m[..]).unwrap().flow_label(),
            0x12345
        );
        header[0] = 0x45;
        assert_eq!(
            Ipv6Packet::new_checked(&header[..]).unwrap_err(),
            WireError::Ipv6Version(4)
        );
    }
}
