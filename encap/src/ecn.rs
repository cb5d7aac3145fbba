//! ECN across a tunnel, per RFC 6040 ("Tunnelling of Explicit Congestion
//! Notification").
//!
//! Encapsulation (RFC 6040 §4.1, normal mode): the outer ECN field is a copy
//! of the inner one, so congestion marks made on the underlay can be seen.
//! The Linux kernel's tunnels (`INET_ECN_encapsulate` in
//! include/net/inet_ecn.h) instead follow the older RFC 3168 §9.1.1 full
//! functionality and turn an inner CE into an outer ECT(0); the two differ
//! only for an inner CE, and both are accepted by any RFC 6040 egress.
//!
//! Decapsulation (RFC 6040 §4.2, Figure 4): the inner field is combined with
//! the outer one; a CE on the outer header of a packet whose inner header is
//! Not-ECT means the transport cannot be told of congestion, so the packet
//! is dropped (the kernel's `INET_ECN_decapsulate` does the same).

/// The ECN codepoint: the two low bits of the IPv4 TOS / IPv6 traffic class
/// (RFC 3168 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ecn {
    /// 0b00: the transport does not do ECN.
    NotEct,
    /// 0b01.
    Ect1,
    /// 0b10.
    Ect0,
    /// 0b11: congestion experienced.
    Ce,
}

/// Mask of the ECN bits in a TOS byte.
pub const ECN_MASK: u8 = 0x03;

impl Ecn {
    /// The codepoint of a TOS / traffic class byte.
    pub const fn from_tos(tos: u8) -> Ecn {
        match tos & ECN_MASK {
            0 => Ecn::NotEct,
            1 => Ecn::Ect1,
            2 => Ecn::Ect0,
            _ => Ecn::Ce,
        }
    }

    /// The two bits.
    pub const fn bits(self) -> u8 {
        match self {
            Ecn::NotEct => 0,
            Ecn::Ect1 => 1,
            Ecn::Ect0 => 2,
            Ecn::Ce => 3,
        }
    }
}

/// The outer TOS byte for an encapsulated packet: DSCP from `outer_dscp_tos`
/// (its ECN bits are ignored), ECN copied from the inner header (RFC 6040
/// §4.1 normal mode). `inner_tos` is `None` for a non-IP inner frame.
#[inline]
pub const fn encapsulate(outer_dscp_tos: u8, inner_tos: Option<u8>) -> u8 {
    let ecn = match inner_tos {
        Some(tos) => tos & ECN_MASK,
        None => 0,
    };
    (outer_dscp_tos & !ECN_MASK) | ecn
}

/// What decapsulation does to the inner ECN field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapEcn {
    /// Leave the inner header as it is.
    Keep,
    /// Set the inner ECN field to this codepoint.
    Set(Ecn),
    /// Drop: outer CE on a Not-ECT inner packet.
    Drop,
}

/// RFC 6040 §4.2 Figure 4: the inner ECN after decapsulation.
#[inline]
pub const fn decapsulate(outer: Ecn, inner: Ecn) -> DecapEcn {
    match (inner, outer) {
        (Ecn::NotEct, Ecn::Ce) => DecapEcn::Drop,
        (Ecn::NotEct, _) => DecapEcn::Keep,
        (Ecn::Ect0, Ecn::Ect1) => DecapEcn::Set(Ecn::Ect1),
        (Ecn::Ect0 | Ecn::Ect1, Ecn::Ce) => DecapEcn::Set(Ecn::Ce),
        _ => DecapEcn::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Ecn; 4] = [Ecn::NotEct, Ecn::Ect1, Ecn::Ect0, Ecn::Ce];

    /// RFC 6040 Figure 4, row by row: the resulting inner header.
    #[test]
    fn decapsulation_table() {
        // rows: inner; columns: outer Not-ECT, ECT(0), ECT(1), CE
        let expect = |inner: Ecn, outer: Ecn| -> Option<Ecn> {
            use Ecn::*;
            match (inner, outer) {
                (NotEct, Ce) => None,
                (NotEct, _) => Some(NotEct),
                (Ect0, NotEct | Ect0) => Some(Ect0),
                (Ect0, Ect1) => Some(Ect1),
                (Ect1, NotEct | Ect0 | Ect1) => Some(Ect1),
                (_, Ce) | (Ce, _) => Some(Ce),
            }
        };
        for inner in ALL {
            for outer in ALL {
                let got = match decapsulate(outer, inner) {
                    DecapEcn::Keep => Some(inner),
                    DecapEcn::Set(e) => Some(e),
                    DecapEcn::Drop => None,
                };
                assert_eq!(got, expect(inner, outer), "inner {inner:?} outer {outer:?}");
            }
        }
    }

    #[test]
    fn encapsulation_copies_ecn_keeps_dscp() {
        for inner in ALL {
            let tos = encapsulate(0xb8, Some(0x10 | inner.bits()));
            assert_eq!(tos, 0xb8 | inner.bits());
        }
        assert_eq!(encapsulate(0x03, None), 0);
    }
}
