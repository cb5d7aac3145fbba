//! # podswitch-protocol: podswitchd's control protocol, version 1
//!
//! One JSON object per line each way, over podswitchd's Unix socket.
//!
//! A request names its operation in `"request"` and carries the protocol
//! version in `"v"`; every request gets exactly one reply line:
//!
//! ```text
//! > {"v":1,"request":"route-add","prefix":"10.244.9.0/24","next_hop":"blackhole"}
//! < {"v":1,"ok":true,"result":null}
//! > {"v":1,"request":"peer-del","name":"node9"}
//! < {"v":1,"ok":false,"error":"no peer node9"}
//! ```
//!
//! Unknown fields are errors (a typo must not be silently ignored), and so
//! are unknown requests, other versions, and lines over [`MAX_LINE`] bytes.
//! docs/control-protocol.md documents every request with an example.
//!
//! This crate is the protocol alone: the request and reply types and
//! [`client`], the blocking client podswitchctl and the CNI plugin use;
//! each request's result has its type in [`reply`]. MACs and networks are
//! podswitch-addr's [`MacAddr`] and [`Prefix`], and its named choices
//! ([`Backend`], [`GatewayMode`], [`PortRole`], [`PodPortKind`]): the types
//! the engine uses.
//! It depends on serde and podswitch-addr and nothing else of podswitch,
//! so that the CNI plugin, which a container runtime runs once per pod,
//! does not link the data path. The server side lives in
//! `podswitch-control`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
mod ipv4_field;
pub mod reply;

pub use podswitch_addr::{
    Backend, GatewayMode, MacAddr, ParseMacError, PodPortKind, PortRole, Prefix, PrefixError,
};
pub use reply::*;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// The longest request line accepted, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Where a route sends packets, as the protocol names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum NextHopSpec {
    /// A local port, by interface name.
    Local(String),
    /// A peer's tunnel, by peer name.
    Peer(String),
    /// A peer without tunnel (host-gw), by peer name.
    Direct(String),
    /// The node's host port.
    Host,
    /// Drop.
    Blackhole,
}

/// A frame for `trace`, described by its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameSpec {
    /// Source MAC (default: the in port's pod MAC).
    #[serde(default)]
    pub src_mac: Option<MacAddr>,
    /// Destination MAC (default: the gateway MAC).
    #[serde(default)]
    pub dst_mac: Option<MacAddr>,
    /// Source IPv4 address (default: the in port's pod IP).
    #[serde(default, with = "ipv4_field::optional")]
    pub src_ip: Option<Ipv4Addr>,
    /// Destination IPv4 address.
    #[serde(with = "ipv4_field::required")]
    pub dst_ip: Ipv4Addr,
    /// `icmp` (an echo request, the default), `udp` or `tcp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// TTL (default 64).
    #[serde(default)]
    pub ttl: Option<u8>,
    /// Payload bytes after the L4 header (default 32).
    #[serde(default)]
    pub payload_len: Option<usize>,
    /// Set DF (default true).
    #[serde(default)]
    pub dont_frag: Option<bool>,
    /// Trace a TCP super-frame: the frame (protocol `tcp`, up to 65,000
    /// payload bytes) carries segmentation offload with this segment size
    /// and a partial checksum, as a pod's TSO hands it over.
    #[serde(default)]
    pub gso_size: Option<u16>,
}

impl FrameSpec {
    /// An ICMP echo request to `dst_ip`, every other field its default.
    pub fn to(dst_ip: Ipv4Addr) -> FrameSpec {
        FrameSpec {
            src_mac: None,
            dst_mac: None,
            src_ip: None,
            dst_ip,
            protocol: None,
            ttl: None,
            payload_len: None,
            dont_frag: None,
            gso_size: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// A limit on what a pod sends, in the units of the CNI bandwidth
/// capability (`runtimeConfig.bandwidth`'s `egressRate` and
/// `egressBurst`, which `kubernetes.io/egress-bandwidth` becomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressLimit {
    /// Bits per second, at least 8.
    pub rate_bits: u64,
    /// Bits that may pass at once after a quiet spell, at least 8.
    pub burst_bits: u64,
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The daemon's and the protocol's versions.
    Version,
    /// Node, addresses, backend, MTU, ports, peers, uptime.
    Status,
    /// Attach a pod port.
    PortAdd {
        /// Host-side interface name.
        interface: String,
        /// The pod's IPv4 address.
        #[serde(with = "ipv4_field::required")]
        ip: Ipv4Addr,
        /// The pod's MAC.
        mac: MacAddr,
        /// The container it belongs to.
        #[serde(default)]
        container_id: Option<String>,
        /// The interface name inside the container (CNI_IFNAME).
        #[serde(default)]
        ifname: Option<String>,
        /// Drop frames not from the pod's own MAC and IP (default true).
        #[serde(default = "yes")]
        anti_spoof: bool,
        /// How the daemon reads the interface: `af-packet` or `af-xdp` (a
        /// veth's host side) or `tap` (a TAP device the daemon creates);
        /// default: the daemon's `port_kind` (af-packet).
        #[serde(default)]
        kind: Option<PodPortKind>,
        /// The most the pod may send (default: no limit): past the burst
        /// the daemon holds its frames until the rate lets them go, and
        /// drops one that would wait more than 25 ms, counted as
        /// `egress_rate_limited`. Left out when there is none, so that a
        /// daemon older than the field still takes the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        egress_limit: Option<EgressLimit>,
    },
    /// Detach a port.
    PortDel {
        /// Interface name.
        interface: String,
    },
    /// The ports.
    PortList,
    /// Add or replace a route.
    RouteAdd {
        /// The prefix, `a.b.c.d/len`.
        prefix: Prefix,
        /// Where it goes.
        next_hop: NextHopSpec,
    },
    /// Remove a route.
    RouteDel {
        /// The prefix.
        prefix: Prefix,
    },
    /// The routes.
    RouteList,
    /// Add a peer (and its route).
    PeerAdd {
        /// Node name.
        name: String,
        /// Its underlay IPv4 address.
        #[serde(with = "ipv4_field::required")]
        underlay_ip: Ipv4Addr,
        /// Its pod subnet.
        pod_cidr: Prefix,
        /// Its VTEP MAC.
        vtep_mac: MacAddr,
        /// The MAC of its underlay interface, used by host-gw and by an L2
        /// underlay port (default: 02:00 and the address's four bytes, the
        /// MAC podswitch's own nodes give their underlay).
        #[serde(default)]
        underlay_mac: Option<MacAddr>,
        /// vxlan, ipip, udp, host-gw or directrouting (default: the node's).
        #[serde(default)]
        backend: Option<Backend>,
        /// VNI (default: the node's).
        #[serde(default)]
        vni: Option<u32>,
    },
    /// Remove a peer and its routes.
    PeerDel {
        /// Node name.
        name: String,
    },
    /// The peers.
    PeerList,
    /// The FDB.
    FdbShow,
    /// Remove learned FDB entries.
    FdbFlush,
    /// The neighbours.
    NeighShow,
    /// Counters per port and per drop reason.
    Stats,
    /// Write the frames a port receives and sends to a pcap file.
    Capture {
        /// The port, by interface name.
        interface: String,
        /// The pcap file to write (created or truncated; absolute path).
        file: String,
        /// Stop after this many frames.
        #[serde(default)]
        packets: Option<u64>,
        /// Stop after this many seconds (default 10, at most 3600).
        #[serde(default)]
        seconds: Option<u64>,
    },
    /// Run a frame through the pipeline without sending it.
    Trace {
        /// The port it arrives on, by interface name.
        in_port: String,
        /// The frame as hex.
        #[serde(default)]
        hex: Option<String>,
        /// The frame by fields (when `hex` is absent).
        #[serde(default)]
        frame: Option<FrameSpec>,
    },
}

/// Why a line is not a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// Longer than [`MAX_LINE`].
    TooLong(usize),
    /// Not JSON, or not an object.
    Json(String),
    /// `"v"` missing or another version.
    Version(Option<Value>),
    /// Not a known request, or its fields are wrong.
    Request(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::TooLong(n) => write!(
                f,
                "request line of {n} bytes is over the {MAX_LINE}-byte limit"
            ),
            ProtocolError::Json(e) => write!(f, "not a JSON object: {e}"),
            ProtocolError::Version(None) => write!(
                f,
                "missing \"v\": this daemon speaks protocol version {PROTOCOL_VERSION}"
            ),
            ProtocolError::Version(Some(v)) => write!(
                f,
                "protocol version {v} is not supported: this daemon speaks {PROTOCOL_VERSION}"
            ),
            ProtocolError::Request(e) => write!(f, "bad request: {e}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl Request {
    /// Parses one request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, ProtocolError> {
        if line.len() > MAX_LINE {
            return Err(ProtocolError::TooLong(line.len()));
        }
        let mut value: Value =
            serde_json::from_str(line).map_err(|e| ProtocolError::Json(e.to_string()))?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| ProtocolError::Json("expected an object".into()))?;
        match object.remove("v") {
            Some(Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
            other => return Err(ProtocolError::Version(other)),
        }
        serde_json::from_value(value).map_err(|e| ProtocolError::Request(e.to_string()))
    }

    /// The request as one line (with `"v"`, without the newline).
    pub fn to_line(&self) -> String {
        let mut value = serde_json::to_value(self).expect("requests always serialise");
        if let Some(object) = value.as_object_mut() {
            object.insert("v".into(), Value::from(PROTOCOL_VERSION));
        }
        value.to_string()
    }
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version.
    pub v: u64,
    /// True on success.
    pub ok: bool,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// A success.
    pub fn ok(result: Value) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failure.
    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }

    /// The reply as one line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("replies always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port-add without a limit is written as before the field existed,
    /// so a daemon that predates it (unknown fields are refused) still
    /// takes it from a newer CNI plugin or podswitchctl.
    #[test]
    fn a_port_add_without_a_limit_leaves_the_field_out() {
        let add = |egress_limit| Request::PortAdd {
            interface: "veth1".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            mac: "0a:58:0a:f4:01:02".parse().unwrap(),
            container_id: None,
            ifname: None,
            anti_spoof: true,
            kind: None,
            egress_limit,
        };
        let line = serde_json::to_string(&add(None)).unwrap();
        assert!(!line.contains("egress_limit"), "{line}");
        let limit = EgressLimit {
            rate_bits: 8_000,
            burst_bits: 800,
        };
        let line = serde_json::to_string(&add(Some(limit))).unwrap();
        assert!(
            line.contains(r#""egress_limit":{"rate_bits":8000,"burst_bits":800}"#),
            "{line}"
        );
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back, add(Some(limit)));
    }

    #[test]
    fn round_trip_and_errors() {
        let r = Request::RouteAdd {
            prefix: "10.244.9.0/24".parse().unwrap(),
            next_hop: NextHopSpec::Peer("node2".into()),
        };
        assert_eq!(Request::parse(&r.to_line()).unwrap(), r);
        assert_eq!(
            Request::parse(
                r#"{"v":1,"request":"route-add","prefix":"10.244.9.0/24","next_hop":"blackhole"}"#
            )
            .unwrap(),
            Request::RouteAdd {
                prefix: "10.244.9.0/24".parse().unwrap(),
                next_hop: NextHopSpec::Blackhole
            }
        );
        assert!(matches!(
            Request::parse(r#"{"request":"status"}"#),
            Err(ProtocolError::Version(None))
        ));
        assert!(matches!(
            Request::parse(r#"{"v":2,"request":"status"}"#),
            Err(ProtocolError::Version(Some(_)))
        ));
        assert!(matches!(
            Request::parse(r#"{"v":1,"request":"reboot"}"#),
            Err(ProtocolError::Request(_))
        ));
        assert!(matches!(
            Request::parse(r#"{"v":1,"request":"port-del","interfce":"x"}"#),
            Err(ProtocolError::Request(_))
        ));
        assert!(matches!(
            Request::parse(r#"{"v":1,"request":"status""#),
            Err(ProtocolError::Json(_))
        ));
        assert!(matches!(
            Request::parse("[1,2]"),
            Err(ProtocolError::Json(_))
        ));
        let long = format!(
            r#"{{"v":1,"request":"port-del","interface":"{}"}}"#,
            "x".repeat(MAX_LINE)
        );
        assert!(matches!(
            Request::parse(&long),
            Err(ProtocolError::TooLong(_))
        ));
        // Malformed addresses are refused here, saying which text is wrong.
        for (line, says) in [
            (
                r#"{"v":1,"request":"route-add","prefix":"10.244.9.1/24","next_hop":"blackhole"}"#,
                "bad request: 10.244.9.1/24 has host bits set; did you mean 10.244.9.0/24?",
            ),
            (
                r#"{"v":1,"request":"peer-add","name":"n","underlay_ip":"192.168.100","pod_cidr":"10.244.2.0/24","vtep_mac":"02:00:00:00:00:01"}"#,
                "bad request: \"192.168.100\" is not an IPv4 address",
            ),
        ] {
            assert_eq!(Request::parse(line).unwrap_err().to_string(), says);
        }
        let port = Request::parse(r#"{"v":1,"request":"port-add","interface":"veth1","ip":"10.244.1.2","mac":"0a:58:0a:f4:01:02"}"#).unwrap();
        assert!(matches!(
            port,
            Request::PortAdd {
                anti_spoof: true,
                container_id: None,
                ..
            }
        ));
    }
}
