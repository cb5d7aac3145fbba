//! A hash map keyed by IPv4 address, for the data path's per-packet
//! look-ups (peer by underlay address, neighbour by pod address).
//!
//! The standard library's SipHash resists hash flooding at ~20 ns a key.
//! These maps are filled only by the control side (peers, attached pods)
//! and by ARP from pods whose sender address passed the anti-spoofing
//! check, under a size limit, so an attacker does not choose their keys;
//! a multiply-and-fold hash (a few cycles) is enough.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;

/// Hashes the few bytes of an address with one multiply per write.
#[derive(Debug, Default, Clone, Copy)]
pub struct AddrHasher {
    state: u64,
}

impl Hasher for AddrHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        let product = u128::from(self.state ^ value) * 0x9e37_79b9_7f4a_7c15;
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
}

/// A map from IPv4 addresses with [`AddrHasher`].
pub type IpMap<V> = HashMap<Ipv4Addr, V, BuildHasherDefault<AddrHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_neighbouring_addresses() {
        let mut buckets = [0u32; 64];
        for i in 0..6400u32 {
            let mut h = AddrHasher::default();
            std::hash::Hash::hash(&Ipv4Addr::from(0x0af4_0000 + i), &mut h);
            buckets[(h.finish() >> 58) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (50..=150).contains(&n)),
            "{buckets:?}"
        );
    }
}
