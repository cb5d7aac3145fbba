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

/// Folds two 64-bit words into 32 well-mixed bits with one 64x64->128
/// multiply (the "multiply and fold" of wyhash and foldhash): every input
/// bit reaches the result, in a few cycles instead of a chain of rounds.
#[inline]
const fn fold_mul(a: u64, b: u64) -> u32 {
    let product = (a ^ 0x243f_6a88_85a3_08d3) as u128 * (b ^ 0x1319_8a2e_0370_7344) as u128;
    let h = (product as u64) ^ ((product >> 64) as u64);
    (h ^ (h >> 32)) as u32
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
            Ok((ethertype, at)) => self.hash_l3(frame, ethertype, at),
            Err(_) => self.hash_macs(frame),
        }
    }

    /// Hashes a frame whose EtherType and network-header offset the caller
    /// already read.
    #[inline(always)]
    pub fn hash_l3(&self, frame: &[u8], ethertype: EtherType, l3_offset: usize) -> u32 {
        let l3 = frame.get(l3_offset..).unwrap_or_default();
        let hash = match ethertype {
            EtherType::Ipv4 => self.hash_ipv4(l3),
            EtherType::Ipv6 => self.hash_ipv6(l3),
            _ => None,
        };
        hash.unwrap_or_else(|| self.hash_macs(frame))
    }

    /// Hashes an IPv4 packet's flow, `None` if it is not a readable IPv4
    /// header. Ports count only for TCP/UDP non-fragments.
    #[inline(always)]
    pub fn hash_ipv4(&self, packet: &[u8]) -> Option<u32> {
        let h: &[u8; ipv4::HEADER_LEN] = packet.get(..ipv4::HEADER_LEN)?.try_into().ok()?;
        if h[0] >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(h[0] & 0x0f) * 4;
        let protocol = h[9];
        // Addresses as one word, straight from the fixed header.
        let addresses =
            u64::from_be_bytes([h[12], h[13], h[14], h[15], h[16], h[17], h[18], h[19]]);
        let first_fragment = u16::from_be_bytes([h[6], h[7]]) & ipv4::FRAG_OFFSET_MASK == 0;
        let has_ports = protocol == 6 || protocol == 17; // TCP, UDP
        let ports = match packet.get(header_len..header_len + 4) {
            Some(p) if has_ports && first_fragment && header_len >= ipv4::HEADER_LEN => {
                u32::from_be_bytes([p[0], p[1], p[2], p[3]])
            }
            _ => 0,
        };
        let rest = (u64::from(ports) << 32 | u64::from(protocol)) ^ u64::from(self.seed) << 8;
        Some(fold_mul(addresses, rest))
    }

    /// Hashes an IPv6 packet's flow (fixed header only: addresses, next
    /// header, and ports when the next header is TCP/UDP).
    #[inline]
    pub fn hash_ipv6(&self, packet: &[u8]) -> Option<u32> {
        if packet.len() < ipv6::HEADER_LEN || packet[0] >> 4 != 6 {
            return None;
        }
        let word = |at: usize| u64::from(be32(packet, at)) << 32 | u64::from(be32(packet, at + 4));
        let next = packet[6];
        let ports = if matches!(IpProtocol::from(next), IpProtocol::Tcp | IpProtocol::Udp)
            && packet.len() >= 44
        {
            be32(packet, 40)
        } else {
            0
        };
        let src = fold_mul(word(8), word(16));
        let dst = fold_mul(word(24), word(32));
        let rest = (u64::from(ports) << 32 | u64::from(next)) ^ u64::from(self.seed) << 8;
        Some(fold_mul(u64::from(src) << 32 | u64::from(dst), rest))
    }

    #[inline]
    fn hash_macs(&self, frame: &[u8]) -> u32 {
        if frame.len() < 12 {
            return fold_mul(u64::from(self.seed), 0);
        }
        let dst_src = u64::from(be32(frame, 0)) << 32 | u64::from(be32(frame, 4));
        fold_mul(
            dst_src,
            u64::from(be32(frame, 8)) ^ u64::from(self.seed) << 32,
        )
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
