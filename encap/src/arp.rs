//! ARP for IPv4 over Ethernet (RFC 826): the only kind a pod sends. The
//! engine answers it as the bridge gateway (flannel's cni0) or as a proxy
//! for every address (Calico's 169.254.1.1 trick).

use std::net::Ipv4Addr;

use crate::describe::Section;
use crate::error::{check_len, Layer, WireError, WireResult};
use crate::ethernet::MacAddr;

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP operation. Open: unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    /// 1.
    Request,
    /// 2.
    Reply,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(v: u16) -> Self {
        match v {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(v: ArpOperation) -> Self {
        match v {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    /// Request or reply.
    pub operation: ArpOperation,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in a request).
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Parses untrusted bytes: 28 bytes, hardware type 1 (Ethernet) with
    /// 6-byte addresses, protocol 0x0800 with 4-byte addresses.
    pub fn parse(bytes: &[u8]) -> WireResult<Self> {
        check_len(Layer::Arp, bytes, PACKET_LEN)?;
        let hardware = u16::from_be_bytes([bytes[0], bytes[1]]);
        let protocol = u16::from_be_bytes([bytes[2], bytes[3]]);
        let (hardware_len, protocol_len) = (bytes[4], bytes[5]);
        if (hardware, protocol, hardware_len, protocol_len) != (1, 0x0800, 6, 4) {
            return Err(WireError::ArpFormat {
                hardware,
                protocol,
                hardware_len,
                protocol_len,
            });
        }
        let ip = |at: usize| Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
        Ok(ArpRepr {
            operation: ArpOperation::from(u16::from_be_bytes([bytes[6], bytes[7]])),
            sender_mac: MacAddr::from_slice(&bytes[8..14]),
            sender_ip: ip(14),
            target_mac: MacAddr::from_slice(&bytes[18..24]),
            target_ip: ip(24),
        })
    }

    /// Bytes the packet takes.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet into the first 28 bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than 28 bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..PACKET_LEN];
        b[0..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&u16::from(self.operation).to_be_bytes());
        b[8..14].copy_from_slice(&self.sender_mac.0);
        b[14..18].copy_from_slice(&self.sender_ip.octets());
        b[18..24].copy_from_slice(&self.target_mac.0);
        b[24..28].copy_from_slice(&self.target_ip.octets());
    }

    /// The reply that answers this request as `answer_mac` (RFC 826: swap
    /// sender and target, fill in our hardware address).
    pub fn reply_from(&self, answer_mac: MacAddr) -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Reply,
            sender_mac: answer_mac,
            sender_ip: self.target_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        }
    }
}

impl ArpRepr {
    /// The ARP packet at `offset`, described field by field
    /// ([`crate::describe`]).
    pub fn describe(&self, offset: usize) -> Section {
        let op = match self.operation {
            ArpOperation::Request => {
                format!(
                    "request: who has {}? tell {}",
                    self.target_ip, self.sender_ip
                )
            }
            ArpOperation::Reply => {
                format!("reply: {} is at {}", self.sender_ip, self.sender_mac)
            }
            ArpOperation::Unknown(v) => format!("operation {v}"),
        };
        let mut s = Section::new("ARP", offset, PACKET_LEN);
        s.field("hw/proto", offset, 6, "Ethernet / IPv4");
        s.field("operation", offset + 6, 2, op);
        s.field("sender MAC", offset + 8, 6, self.sender_mac.to_string());
        s.field("sender IP", offset + 14, 4, self.sender_ip.to_string());
        s.field("target MAC", offset + 18, 6, self.target_mac.to_string());
        s.field("target IP", offset + 24, 4, self.target_ip.to_string());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_reply_round_trip() {
        let request = ArpRepr {
            operation: ArpOperation::Request,
            sender_mac: MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]),
            sender_ip: Ipv4Addr::new(10, 244, 140, 65),
            target_mac: MacAddr::ZERO,
            target_ip: Ipv4Addr::new(169, 254, 1, 1),
        };
        let mut buf = [0u8; PACKET_LEN];
        request.emit(&mut buf);
        assert_eq!(ArpRepr::parse(&buf).unwrap(), request);
        let reply = request.reply_from(MacAddr([0xee; 6]));
        assert_eq!(reply.sender_ip, Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(reply.target_mac, request.sender_mac);
        for len in 0..PACKET_LEN {
            assert!(ArpRepr::parse(&buf[..len]).is_err());
        }
        buf[5] = 16;
        assert!(matches!(
            ArpRepr::parse(&buf),
            Err(WireError::ArpFormat {
                protocol_len: 16,
                ..
            })
        ));
    }
}
