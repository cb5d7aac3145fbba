//! # podswitch-addr: the addresses and names podswitch speaks of
//!
//! A MAC address ([`MacAddr`]) and an IPv4 prefix ([`Prefix`]), with the
//! text forms `ip` prints (`0a:58:0a:f4:01:02`, `10.244.1.0/24`), and the
//! named choices ([`Backend`], [`GatewayMode`], [`PortRole`],
//! [`PodPortKind`]) as configuration files and the control protocol spell
//! them. They are podswitch's vocabulary: the wire formats
//! (podswitch-encap), the tables (podswitch-engine), the control protocol
//! (podswitch-protocol) and the CNI plugin use these same types, so that
//! nothing converts between look-alikes and each is parsed in one place.
//! With the `serde` feature all of them travel as their text.
//!
//! No I/O, no allocation but in error messages, no `unsafe`; std only.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

mod names;

pub use names::{Backend, GatewayMode, PodPortKind, PortRole};

/// A 48-bit IEEE MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00 (ARP requests carry it as the unknown target).
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The address as bytes.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Broadcast or multicast: the I/G bit (least significant bit of the
    /// first octet) is set.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Locally administered: the U/L bit is set (what podswitch uses for
    /// VTEP and gateway MACs it invents).
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// Reads six bytes. Panics if `bytes` is shorter: callers pass slices
    /// whose length a view has already checked.
    #[inline]
    pub fn from_slice(bytes: &[u8]) -> MacAddr {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[..6]);
        MacAddr(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error of parsing a MAC address from text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMacError(String);

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid MAC address {:?}: expected six hex octets like 42:88:6a:88:a9:3f",
            self.0
        )
    }
}

impl std::error::Error for ParseMacError {}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for octet in &mut mac {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(mac))
    }
}

/// An IPv4 prefix with its host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: u32,
    len: u8,
}

/// Why a prefix is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixError {
    /// The text is not `a.b.c.d/len`.
    Syntax(String),
    /// The length exceeds 32.
    Length(u8),
    /// Bits are set past the prefix length (`10.244.1.5/24`).
    HostBits(Ipv4Addr, u8),
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixError::Syntax(s) => write!(f, "{s:?} is not a prefix like 10.244.1.0/24"),
            PrefixError::Length(l) => write!(f, "prefix length {l} is above 32"),
            PrefixError::HostBits(a, l) => {
                let p = Prefix::new_truncating(*a, *l);
                write!(f, "{a}/{l} has host bits set; did you mean {p}?")
            }
        }
    }
}

impl std::error::Error for PrefixError {}

impl Prefix {
    /// A prefix; host bits must be zero.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Prefix, PrefixError> {
        if len > 32 {
            return Err(PrefixError::Length(len));
        }
        let p = Prefix::new_truncating(addr, len);
        if p.addr != u32::from(addr) {
            return Err(PrefixError::HostBits(addr, len));
        }
        Ok(p)
    }

    /// A prefix, clearing host bits. Lengths above 32 count as 32.
    pub fn new_truncating(addr: Ipv4Addr, len: u8) -> Prefix {
        let len = len.min(32);
        Prefix {
            addr: u32::from(addr) & mask(len),
            len,
        }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    /// The network address as a number (what a lookup table indexes).
    pub const fn bits(&self) -> u32 {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for 0.0.0.0/0.
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// True if `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.addr
    }

    /// True if `other` is inside (or equal).
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && other.addr & mask(self.len) == self.addr
    }

    /// The n-th address of the prefix (n = 1 is a bridge's usual gateway).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.addr.wrapping_add(n))
    }
}

/// The netmask of a prefix length: `len` leading one bits.
pub const fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (
                a,
                l.parse::<u8>()
                    .map_err(|_| PrefixError::Syntax(s.to_string()))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| PrefixError::Syntax(s.to_string()))?;
        Prefix::new(addr, len)
    }
}

#[cfg(feature = "serde")]
mod text {
    //! Every type travels as its text in serde formats.

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Backend, GatewayMode, MacAddr, PodPortKind, PortRole, Prefix};

    macro_rules! serde_as_text {
        ($($ty:ty),*) => {$(
            impl Serialize for $ty {
                fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.collect_str(self)
                }
            }

            impl<'de> Deserialize<'de> for $ty {
                fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                    let text = String::deserialize(deserializer)?;
                    text.parse().map_err(serde::de::Error::custom)
                }
            }
        )*};
    }

    serde_as_text!(MacAddr, Prefix, Backend, GatewayMode, PortRole, PodPortKind);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_read_and_print_as_ip_link_does() {
        let mac: MacAddr = "0a:58:0A:f4:1:02".parse().unwrap();
        assert_eq!(mac, MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]));
        assert_eq!(mac.to_string(), "0a:58:0a:f4:01:02");
        assert_eq!("0a-58-0a-f4-01-02".parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:02:03",
            "0a:58:0a:f4:01:",
            "0a.58.0a.f4.01.02",
            "0a:58:0a:f4:01:123",
            "0a:58:0a:f4:01:gg",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_have_their_host_bits_clear() {
        let net: Prefix = "10.244.1.0/24".parse().unwrap();
        assert_eq!(
            (net.addr(), net.prefix_len()),
            (Ipv4Addr::new(10, 244, 1, 0), 24)
        );
        assert_eq!(net.bits(), 0x0af4_0100);
        assert_eq!(net.to_string(), "10.244.1.0/24");
        assert!("0.0.0.0/0".parse::<Prefix>().unwrap().is_default());
        assert_eq!(
            "10.1.2.3".parse::<Prefix>().unwrap().prefix_len(),
            32,
            "an address is its /32"
        );
        assert_eq!(
            "10.244.9.1/24".parse::<Prefix>().unwrap_err().to_string(),
            "10.244.9.1/24 has host bits set; did you mean 10.244.9.0/24?"
        );
        for bad in [
            "10.244.1.5/24",
            "10.244.1.0/33",
            "10.244.1/24",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad:?}");
        }
        assert_eq!(mask(0), 0);
        assert_eq!(mask(32), u32::MAX);
        assert_eq!(mask(20), 0xffff_f000);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn both_travel_as_text() {
        let mac = MacAddr([2, 0, 0xc0, 0xa8, 0x64, 2]);
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            r#""02:00:c0:a8:64:02""#
        );
        assert_eq!(
            serde_json::from_str::<MacAddr>(r#""02:00:c0:a8:64:02""#).unwrap(),
            mac
        );
        let err = serde_json::from_str::<Prefix>(r#""10.0.0.1/8""#).unwrap_err();
        assert!(err.to_string().contains("did you mean 10.0.0.0/8"), "{err}");
    }
}
