//! The protocol's address types: a MAC and an IPv4 network, each written
//! as text on the wire (`"0a:58:0a:f4:01:02"`, `"10.244.1.0/24"`), the way
//! `ip` prints them. IPv4 addresses are `std::net::Ipv4Addr`.
//!
//! They are the protocol's own, not the engine's (`MacAddr`,
//! `fib::Prefix`), so that the CNI plugin and other clients need not link
//! the data path; the server converts at its edge.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;

    /// Six hexadecimal octets separated by colons, as `ip link` prints
    /// them (or by dashes).
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || format!("{s:?} is not a MAC like 0a:58:0a:f4:01:02");
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(Mac(mac)),
            Some(_) => Err(bad()),
        }
    }
}

/// An IPv4 network: an address with its host bits clear, and a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Cidr {
    /// A network; `None` if `len` is above 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Cidr> {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0);
        (len <= 32 && u32::from(addr) & !mask == 0).then_some(Cidr { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for 0.0.0.0/0, which holds every address.
    pub fn is_default(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not a network like 10.244.1.0/24");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
        Cidr::new(addr, len).ok_or_else(|| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            let network = Ipv4Addr::from(u32::from(addr) & mask);
            format!("{s} has host bits set; did you mean {network}/{len}?")
        })
    }
}

/// Both types travel as their text.
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

serde_as_text!(Mac, Cidr);

/// An IPv4 address field whose error names the text that is not one
/// (std's says only "invalid IP address syntax"): `#[serde(with =
/// "net::ipv4")]`.
pub(crate) mod ipv4 {
    use std::net::Ipv4Addr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        ip: &Ipv4Addr,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(ip)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Ipv4Addr, D::Error> {
        parse(&String::deserialize(deserializer)?)
    }

    pub(super) fn parse<E: serde::de::Error>(text: &str) -> Result<Ipv4Addr, E> {
        text.parse()
            .map_err(|_| E::custom(format!("{text:?} is not an IPv4 address")))
    }
}

/// [`ipv4`] for an optional field.
pub(crate) mod ipv4_opt {
    use std::net::Ipv4Addr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        ip: &Option<Ipv4Addr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => super::ipv4::serialize(ip, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Ipv4Addr>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::ipv4::parse(&text))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_read_and_print_as_ip_link_does() {
        let mac: Mac = "0a:58:0A:f4:1:02".parse().unwrap();
        assert_eq!(mac, Mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]));
        assert_eq!(mac.to_string(), "0a:58:0a:f4:01:02");
        assert_eq!("0a-58-0a-f4-01-02".parse::<Mac>().unwrap(), mac);
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:02:03",
            "0a:58:0a:f4:01:",
            "0a.58.0a.f4.01.02",
            "0a:58:0a:f4:01:123",
            "0a:58:0a:f4:01:gg",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn networks_have_their_host_bits_clear() {
        let net: Cidr = "10.244.1.0/24".parse().unwrap();
        assert_eq!(
            (net.addr(), net.prefix_len()),
            (Ipv4Addr::new(10, 244, 1, 0), 24)
        );
        assert_eq!(net.to_string(), "10.244.1.0/24");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().is_default());
        assert_eq!("10.1.2.3/32".parse::<Cidr>().unwrap().prefix_len(), 32);
        assert_eq!(
            "10.244.9.1/24".parse::<Cidr>().unwrap_err(),
            "10.244.9.1/24 has host bits set; did you mean 10.244.9.0/24?"
        );
        for bad in [
            "10.244.1.5/24",
            "10.244.1.0/33",
            "10.244.1.0",
            "10.244.1/24",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn both_travel_as_text() {
        let mac = Mac([2, 0, 0xc0, 0xa8, 0x64, 2]);
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            r#""02:00:c0:a8:64:02""#
        );
        assert_eq!(
            serde_json::from_str::<Mac>(r#""02:00:c0:a8:64:02""#).unwrap(),
            mac
        );
        let err = serde_json::from_str::<Cidr>(r#""10.0.0.1/8""#).unwrap_err();
        assert!(err.to_string().contains("10.0.0.1/8"), "{err}");
    }
}
