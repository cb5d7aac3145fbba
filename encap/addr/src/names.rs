//! The named choices podswitch's parts share: a node's backend and its
//! pods' gateway mode, a port's role, and how a pod port is opened. Each
//! reads and prints as configuration files, control requests and replies
//! spell it (`host-gw`, `proxy-arp`, `af-xdp`), and refuses anything else
//! naming every choice.

use std::fmt;
use std::str::FromStr;

/// A named choice: its variants with their names, `ALL`, `Display` and
/// `FromStr` (the error names `what` and every choice), and any more
/// derives it asks for.
macro_rules! named {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal $(, derive($($derive:ident),*))? {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash $($(, $derive)*)?)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every choice, in the order help texts list them.
            pub const ALL: [$name; [$($text),*].len()] = [$($name::$variant),*];

            /// The name configuration and the protocol use.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<$name, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|choice| choice.name() == s)
                    .ok_or_else(|| {
                        let names: Vec<&str> = $name::ALL.iter().map(|c| c.name()).collect();
                        format!("{} {s:?}: one of {}", $what, names.join(", "))
                    })
            }
        }
    };
}

named! {
    /// How a node reaches other nodes' pods (flannel's backends and
    /// Calico's IPIP).
    Backend, "backend" {
        /// flannel vxlan (VNI 1, port 8472).
        Vxlan = "vxlan",
        /// Calico IPIP.
        Ipip = "ipip",
        /// flannel udp (port 8285).
        Udp = "udp",
        /// flannel host-gw: routes via the node's underlay address, no
        /// tunnel.
        HostGw = "host-gw",
        /// flannel DirectRouting: host-gw for peers on the node's underlay
        /// subnet, VXLAN for the others.
        DirectRouting = "directrouting",
    }
}

named! {
    /// How pods reach their gateway.
    GatewayMode, "gateway mode" {
        /// flannel: pods share a bridge (cni0) with a gateway address (the
        /// pod subnet's .1); same-subnet pods talk over L2.
        Bridge = "bridge",
        /// Calico: every pod has a /32 and `default via 169.254.1.1`; the
        /// host side answers every ARP request with ee:ee:ee:ee:ee:ee;
        /// there is no L2 between pods.
        ProxyArp = "proxy-arp",
    }
}

named! {
    /// What a port is attached to, which decides how the pipeline treats
    /// frames from it.
    PortRole, "port role" {
        /// The host side of a pod's interface.
        Pod = "pod",
        /// The node's link to other nodes: tunnels and host-gw traffic.
        Underlay = "underlay",
        /// The node's own network stack (a TUN device).
        Host = "host",
    }
}

named! {
    /// How a pod port may be asked to move frames.
    PodPortKind, "port kind", derive(Default) {
        /// AF_PACKET on the host side of the pod's veth, carrying
        /// super-frames both ways: the default (docs/benchmarks.md).
        #[default]
        AfPacket = "af-packet",
        /// AF_XDP on the host side of the pod's veth: faster for small
        /// packets, but any XDP program on a veth takes TSO off its peer
        /// (`veth_xdp_set`), so TCP moves frame by frame.
        AfXdp = "af-xdp",
        /// A TAP device podswitchd creates under the port's name, which
        /// can be moved into the pod's namespace.
        Tap = "tap",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_reads_back_what_it_prints() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
        }
        for m in GatewayMode::ALL {
            assert_eq!(m.to_string().parse::<GatewayMode>(), Ok(m));
        }
        for r in PortRole::ALL {
            assert_eq!(r.to_string().parse::<PortRole>(), Ok(r));
        }
        for k in PodPortKind::ALL {
            assert_eq!(k.to_string().parse::<PodPortKind>(), Ok(k));
        }
    }

    #[test]
    fn anything_else_is_refused_naming_every_choice() {
        assert_eq!(
            "host_gw".parse::<Backend>().unwrap_err(),
            "backend \"host_gw\": one of vxlan, ipip, udp, host-gw, directrouting"
        );
        assert_eq!(
            "af_xdp".parse::<PodPortKind>().unwrap_err(),
            "port kind \"af_xdp\": one of af-packet, af-xdp, tap"
        );
        assert_eq!(
            "tunnel".parse::<GatewayMode>().unwrap_err(),
            "gateway mode \"tunnel\": one of bridge, proxy-arp"
        );
    }
}
