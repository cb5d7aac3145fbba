//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! IPv4, UDP and ICMPv4 all use the 16-bit ones' complement sum. Forwarding
//! changes only a few header words (TTL, an address), so instead of summing
//! the whole header again the engine patches the checksum with RFC 1624
//! eqn. 3: `HC' = ~(~HC + ~m + m')`, which is correct even where the
//! older RFC 1141 formula produced 0xffff for a zero sum.

use std::net::Ipv4Addr;

/// Adds `data` to a running ones' complement sum of big-endian 16-bit
/// words, padding an odd last byte with zero (RFC 1071 §4.1).
///
/// The ones' complement sum does not depend on byte order (RFC 1071
/// §2(B)): the bytes are summed as native-endian 32-bit words into a u64
/// (a loop the compiler vectorises; no carry can be lost below 2^32 words)
/// and the folded result is swapped to network order once at the end.
#[inline]
pub fn accumulate(sum: u32, data: &[u8]) -> u32 {
    let mut wide: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        wide += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    if rest.len() >= 2 {
        wide += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
    }
    if rest.len() % 2 == 1 {
        // The odd byte is the high byte of a big-endian word.
        wide += u64::from(u16::from_ne_bytes([rest[rest.len() - 1], 0]));
    }
    // Fold 64 -> 16 bits in native order, then turn it into network order.
    let mut folded = (wide & 0xffff_ffff) + (wide >> 32);
    folded = (folded & 0xffff_ffff) + (folded >> 32);
    let native = fold(folded as u32);
    u32::from(u16::from_be(native)) + u32::from(fold(sum))
}

/// Folds a 32-bit sum into 16 bits with end-around carry. Two folds are
/// always enough: the first leaves at most 0x1fffe, the second at most 0xffff.
#[inline]
pub fn fold(sum: u32) -> u16 {
    let once = (sum & 0xffff) + (sum >> 16);
    ((once & 0xffff) + (once >> 16)) as u16
}

/// The sum of a 20-byte header (IPv4 without options), for the per-packet
/// header check: five native-endian 32-bit loads, folded and swapped once
/// (byte-order independence, RFC 1071 §2(B)).
#[inline]
pub fn sum_header20(h: &[u8; 20]) -> u32 {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let wide = w(0) + w(4) + w(8) + w(12) + w(16);
    let folded = (wide & 0xffff_ffff) + (wide >> 32);
    let native = fold(folded as u32 + (folded >> 32) as u32);
    u32::from(u16::from_be(native))
}

/// The checksum field value for `data`: the complement of its folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(accumulate(0, data))
}

/// The sum of the IPv4 pseudo-header used by UDP and TCP (RFC 768).
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    u32::from(u16::from_be_bytes([s[0], s[1]]))
        + u32::from(u16::from_be_bytes([s[2], s[3]]))
        + u32::from(u16::from_be_bytes([d[0], d[1]]))
        + u32::from(u16::from_be_bytes([d[2], d[3]]))
        + u32::from(protocol)
        + u32::from(length)
}

/// [`pseudo_header_v4`] with the transport length 32 bits wide, as the
/// kernel's `csum_tcpudp_nofold` adds it: the same sum up to 65535, and
/// the one a BIG TCP super-frame's partial checksum holds beyond.
#[inline]
pub fn pseudo_header_v4_long(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u32) -> u32 {
    pseudo_header_v4(src, dst, protocol, 0) + (length >> 16) + (length & 0xffff)
}

/// Patches checksum `old_checksum` for one 16-bit word changing from `old`
/// to `new` (RFC 1624 eqn. 3).
#[inline]
pub fn update_word(old_checksum: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!old_checksum) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// Patches a checksum for a 32-bit field (an IPv4 address) changing.
#[inline]
pub fn update_u32(old_checksum: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!old_checksum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    !fold(sum)
}

/// True if `stored` is the folded pseudo-header sum `pseudo`: in a TCP or
/// UDP segment whose full sum does not verify (the caller checks), a
/// checksum offload left undone (Linux's CHECKSUM_PARTIAL), not corruption.
pub fn is_partial(stored: u16, pseudo: u32) -> bool {
    stored == fold(pseudo)
}

/// How [`crate::describe`] words a partial checksum.
pub const PARTIAL_IN_WORDS: &str =
    "partial: the pseudo-header sum only, as checksum offload leaves it for the NIC or the receiving kernel (CHECKSUM_PARTIAL)";

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7
    /// sum to 0xddf2.
    #[test]
    fn rfc1071_example_sum() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(accumulate(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    /// The word-at-a-time sum equals a plain big-endian 16-bit sum for
    /// every length and alignment.
    #[test]
    fn matches_naive_sum() {
        let data: Vec<u8> = (0..600u32)
            .map(|i| (i.wrapping_mul(151) ^ (i >> 3)) as u8)
            .collect();
        for start in 0..4 {
            for len in 0..200 {
                let slice = &data[start..start + len];
                let mut naive: u32 = 0;
                for pair in slice.chunks(2) {
                    naive += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
                }
                assert_eq!(
                    fold(accumulate(0, slice)),
                    fold(naive),
                    "start {start} len {len}"
                );
                assert_eq!(fold(accumulate(0xfffe, slice)), fold(naive + 0xfffe));
            }
        }
        let all_ones = vec![0xffu8; 70_000];
        assert_eq!(fold(accumulate(0, &all_ones)), 0xffff);
    }

    #[test]
    fn header20_matches_accumulate() {
        let h: [u8; 20] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
        assert_eq!(fold(sum_header20(&h)), fold(accumulate(0, &h)));
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(accumulate(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    /// A header with a correct checksum sums to 0xffff.
    #[test]
    fn verified_header_sums_to_all_ones() {
        // IPv4 header from the Wikipedia/RFC 1071 style example.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&header);
        assert_eq!(c, 0xb861);
        header[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(accumulate(0, &header)), 0xffff);
    }

    /// RFC 1624 §4: incremental update equals recomputation, including the
    /// corner case where the RFC 1141 formula gave 0xffff instead of 0.
    #[test]
    fn incremental_update_matches_recompute() {
        let mut header = [
            0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 0x0a, 0xf4,
            0x02, 0x02, 0x0a, 0xf4, 0x01, 0x02,
        ];
        let c = checksum(&header);
        header[10..12].copy_from_slice(&c.to_be_bytes());
        for ttl in (1..=64u8).rev() {
            let old_word = u16::from_be_bytes([header[8], header[9]]);
            header[8] = ttl - 1;
            let new_word = u16::from_be_bytes([header[8], header[9]]);
            let old_c = u16::from_be_bytes([header[10], header[11]]);
            let patched = update_word(old_c, old_word, new_word);
            header[10..12].copy_from_slice(&[0, 0]);
            assert_eq!(patched, checksum(&header), "ttl {ttl}");
            header[10..12].copy_from_slice(&patched.to_be_bytes());
        }
        let old_addr = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
        let new_addr = u32::from(Ipv4Addr::new(10, 244, 9, 77));
        let old_c = u16::from_be_bytes([header[10], header[11]]);
        let patched = update_u32(old_c, old_addr, new_addr);
        header[12..16].copy_from_slice(&new_addr.to_be_bytes());
        header[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(patched, checksum(&header));
    }

    /// The RFC 1624 §3 corner case: a header summing to 0xffff except for the
    /// changed word must yield checksum 0x0000, never 0xffff (-0).
    #[test]
    fn rfc1624_negative_zero_case() {
        // Checksum 0xdd2f over data whose sum changes by exactly 0x5555 -> ...
        // Direct check from RFC 1624 §3: HC = 0xdd2f, m = 0x5555, m' = 0x3285.
        assert_eq!(update_word(0xdd2f, 0x5555, 0x3285), 0x0000);
    }
}
