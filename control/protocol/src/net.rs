//! IPv4 address fields that say which text is not an address. MACs and
//! networks are podswitch-addr's `MacAddr` and `Prefix`, which travel as
//! their text (`"0a:58:0a:f4:01:02"`, `"10.244.1.0/24"`) and say so
//! themselves.

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
