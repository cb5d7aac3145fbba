//! flannel's subnet file, `/run/flannel/subnet.env`: the node's lease as
//! flanneld writes it (pkg/subnet/subnet.go, `WriteSubnetFile`), which
//! podswitchd writes in its turn and the CNI plugin reads when neither its
//! configuration nor the daemon names the node's subnet.
//!
//! ```text
//! FLANNEL_NETWORK=10.5.0.0/16
//! FLANNEL_SUBNET=10.5.52.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! `FLANNEL_SUBNET` is the gateway, the subnet's first address, with the
//! subnet's length, not the subnet itself.

use podswitch_addr::Prefix;

/// flannel's `--subnet-file` default.
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

/// The file for a node holding `subnet` of `network`.
pub fn render(network: &Prefix, subnet: &Prefix, mtu: u16, ip_masq: bool) -> String {
    format!(
        "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ip_masq}\n",
        subnet.nth(1),
        subnet.prefix_len()
    )
}

/// What a subnet file says, each field if present and well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubnetFile {
    /// The node's subnet (`FLANNEL_SUBNET`, with the host bits of the
    /// gateway address cleared).
    pub subnet: Option<Prefix>,
    /// The pods' MTU (`FLANNEL_MTU`).
    pub mtu: Option<u16>,
}

/// Reads a subnet file's text. Lines it does not know are skipped, as
/// flannel's CNI plugin skips them.
pub fn parse(text: &str) -> SubnetFile {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let subnet = value("FLANNEL_SUBNET=").and_then(|gateway| {
        let (addr, len) = gateway.split_once('/')?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
        Some(Prefix::new_truncating(addr.parse().ok()?, len))
    });
    let mtu = value("FLANNEL_MTU=").and_then(|m| m.parse().ok());
    SubnetFile { subnet, mtu }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn written_as_flannel_writes_it() {
        // flannel's Documentation/reservations.md example.
        assert_eq!(
            render(&p("10.5.0.0/16"), &p("10.5.52.0/24"), 1450, false),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn read_back_with_the_gateway_cleared_to_the_subnet() {
        let file = parse(&render(&p("10.5.0.0/16"), &p("10.5.52.0/24"), 1450, true));
        assert_eq!(
            file,
            SubnetFile {
                subnet: Some(p("10.5.52.0/24")),
                mtu: Some(1450)
            }
        );
        assert_eq!(
            parse("FLANNEL_SUBNET=0.0.0.1/0\n").subnet,
            Some(p("0.0.0.0/0")),
            "a /0 clears every bit"
        );
        assert_eq!(
            parse("FLANNEL_SUBNET=10.1.2.3/32\n").subnet,
            Some(p("10.1.2.3/32"))
        );
    }

    #[test]
    fn malformed_fields_are_absent() {
        for text in [
            "FLANNEL_SUBNET=10.5.52.1/33\nFLANNEL_MTU=big\n",
            "FLANNEL_SUBNET=10.5.52.1\nFLANNEL_MTU=70000\n",
            "FLANNEL_SUBNET=ten/24\n",
            "",
        ] {
            assert_eq!(parse(text), SubnetFile::default(), "{text:?}");
        }
    }
}
