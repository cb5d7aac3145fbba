//! IPv4 address fields whose error names the text that is not an address
//! (std's says only "invalid IP address syntax"), for `#[serde(with =
//! ...)]`. MACs and networks are podswitch-addr's `MacAddr` and `Prefix`,
//! whose errors say so themselves.

/// A required field: `#[serde(with = "ipv4_field::required")]`.
pub(crate) mod required {
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

/// An optional field: `#[serde(default, with = "ipv4_field::optional")]`.
pub(crate) mod optional {
    use std::net::Ipv4Addr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        ip: &Option<Ipv4Addr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => super::required::serialize(ip, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Ipv4Addr>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::required::parse(&text))
            .transpose()
    }
}
