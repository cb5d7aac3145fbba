//! Flow hashing for the outer UDP source port.
//!
//! A VXLAN sender puts a hash of the inner flow into the outer UDP source
//! port so that underlay ECMP and receive-side scaling spread tunnels across
//! paths and cores, while packets of one flow stay in order (RFC 7348 §5).
//! Linux does it in `udp_flow_src_port()` (include/net/udp.h): the flow
//! dissector's hash of the inner 5-tuple (addresses only for non-TCP/UDP and
//! for fragments; the Ethernet addresses for non-IP), scaled into the local
//! port range, 32768-60999 by default (`net.ipv4.ip_local_port_range`).
//! The kernel seeds its hash randomly at boot, so its ports cannot be
//! predicted; ours are deterministic for a given seed.

use crate::ethernet::{self, EtherType};
use crate::ipv4::{self, IpProtocol};
use crate::ipv6;

/// An inclusive range of UDP source ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// Lowest port.
    pub min: u16,
    /// Highest port.
    pub max: u16,
}

impl PortRange {
    /// Linux's default `ip_local_port_range`, which its vxlan device uses.
    pub const LINUX_EPHEMERAL: PortRange = PortRange {
        min: 32768,
        max: 60999,
    };

    /// A range, or `None` if `min > max`.
    pub const fn new(min: u16, max: u16) -> Option<PortRange> {
        if min <= max {
            Some(PortRange { min, max })
        } else {
            None
        }
    }

    /// Scales a 32-bit hash into the range without a division (the
    /// multiply-shift Linux uses in `udp_flow_src_port`).
    #[inline]
    pub const fn pick(self, hash: u32) -> u16 {
        let span = (self.max - self.min) as u64 + 1;
        self.min + ((hash as u64 * span) >> 32) as u16
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange::LINUX_EPHEMERAL
    }
}

/// A seeded hash of an inner frame's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowHasher {
    seed: u32,
}

/// One mixing round (the 32-bit finaliser of MurmurHash3, applied to the
/// running state plus the next word): cheap and spreads every input bit.
#[inline]
const fn mix(state: u32, word: u32) -> u32 {
    let mut h = state
        ^ word
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
    h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    h
}

#[inline]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl FlowHasher {
    /// A hasher with `seed`; nodes may pick different seeds.
    pub const fn new(seed: u32) -> Self {
        FlowHasher { seed }
    }

    /// Hashes the flow of an inner Ethernet frame. Never fails: whatever
    /// cannot be parsed falls back to the MAC addresses, then to nothing.
    #[inline]
    pub fn hash_ethernet(&self, frame: &[u8]) -> u32 {
        match ethernet::payload_info(frame) {
            Ok((EtherType::Ipv4, at)) => self
                .hash_ipv4(&frame[at..])
                .unwrap_or_else(|| self.hash_macs(frame)),
            Ok((EtherType::Ipv6, at)) => self
                .hash_ipv6(&frame[at..])
                .unwrap_or_else(|| self.hash_macs(frame)),
            _ => self.hash_macs(frame),
        }
    }

    /// Hashes an IPv4 packet's flow, `None` if it is not a readable IPv4
    /// header. Ports count only for TCP/UDP non-fragments.
    #[inline]
    pub fn hash_ipv4(&self, packet: &[u8]) -> Option<u32> {
        if packet.len() < ipv4::HEADER_LEN || packet[0] >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        let protocol = packet[9];
        let mut h = mix(self.seed, be32(packet, 12));
        h = mix(h, be32(packet, 16));
        h = mix(h, u32::from(protocol));
        let first_fragment =
            u16::from_be_bytes([packet[6], packet[7]]) & ipv4::FRAG_OFFSET_MASK == 0;
        let has_ports = matches!(
            IpProtocol::from(protocol),
            IpProtocol::Tcp | IpProtocol::Udp
        );
        if has_ports
            && first_fragment
            && header_len >= ipv4::HEADER_LEN
            && packet.len() >= header_len + 4
        {
            h = mix(h, be32(packet, header_len));
        }
        Some(finish(h))
    }

    /// Hashes an IPv6 packet's flow (fixed header only: addresses, next
    /// header, and ports when the next header is TCP/UDP).
    #[inline]
    pub fn hash_ipv6(&self, packet: &[u8]) -> Option<u32> {
        if packet.len() < ipv6::HEADER_LEN || packet[0] >> 4 != 6 {
            return None;
        }
        let mut h = self.seed;
        for at in (8..40).step_by(4) {
            h = mix(h, be32(packet, at));
        }
        let next = packet[6];
        h = mix(h, u32::from(next));
        if matches!(IpProtocol::from(next), IpProtocol::Tcp | IpProtocol::Udp) && packet.len() >= 44
        {
            h = mix(h, be32(packet, 40));
        }
        Some(finish(h))
    }

    #[inline]
    fn hash_macs(&self, frame: &[u8]) -> u32 {
        if frame.len() < 12 {
            return finish(self.seed);
        }
        let mut h = mix(self.seed, be32(frame, 0));
        h = mix(h, be32(frame, 4));
        h = mix(h, be32(frame, 8));
        finish(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_stays_in_range_and_covers_it() {
        let r = PortRange::LINUX_EPHEMERAL;
        assert_eq!(r.pick(0), 32768);
        assert_eq!(r.pick(u32::MAX), 60999);
        let one = PortRange::new(4789, 4789).unwrap();
        assert_eq!(one.pick(12345), 4789);
        assert!(PortRange::new(2, 1).is_none());
    }

    #[test]
    fn ports_change_the_hash_only_for_tcp_udp() {
        let hasher = FlowHasher::new(7);
        let mut udp = [0u8; 28];
        udp[0] = 0x45;
        udp[9] = 17;
        udp[12..16].copy_from_slice(&[10, 244, 1, 2]);
        udp[16..20].copy_from_slice(&[10, 244, 2, 2]);
        udp[20..24].copy_from_slice(&[0x9c, 0x40, 0x13, 0x88]);
        let a = hasher.hash_ipv4(&udp).unwrap();
        udp[21] ^= 1;
        let b = hasher.hash_ipv4(&udp).unwrap();
        assert_ne!(a, b, "UDP ports are part of the flow");
        let mut icmp = udp;
        icmp[9] = 1;
        let c = hasher.hash_ipv4(&icmp).unwrap();
        icmp[21] ^= 1;
        assert_eq!(c, hasher.hash_ipv4(&icmp).unwrap(), "ICMP has no ports");
        // A non-first fragment hashes on addresses only.
        udp[7] = 1;
        let frag = hasher.hash_ipv4(&udp).unwrap();
        udp[21] ^= 1;
        assert_eq!(frag, hasher.hash_ipv4(&udp).unwrap());
        assert_ne!(
            FlowHasher::new(8).hash_ipv4(&udp),
            hasher.hash_ipv4(&udp),
            "seeded"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let hasher = FlowHasher::default();
        for len in 0..80 {
            let junk = vec![0x45u8; len];
            let _ = hasher.hash_ethernet(&junk);
            let _ = hasher.hash_ipv4(&junk);
            let _ = hasher.hash_ipv6(&junk);
        }
    }
}
