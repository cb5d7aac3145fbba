//! flannel's layout in etcd, byte for byte where flannel defines it
//! (flannel-io/flannel: pkg/subnet/config.go, pkg/subnet/subnet.go,
//! pkg/lease/lease.go, pkg/subnet/etcd/local_manager.go):
//!
//! - `<prefix>/config`: the network ([`NetworkConfig`]), JSON keys matched
//!   without regard to case, as Go's `encoding/json` does;
//! - `<prefix>/subnets/10.244.1.0-24`: one node's lease ([`LeaseAttrs`]),
//!   `{"PublicIP":"192.168.100.1","PublicIPv6":null,"BackendType":"vxlan",
//!   "BackendData":{"VNI":1,"VtepMAC":"..."}}`, attached to an etcd lease
//!   of 24 hours;
//! - `/run/flannel/subnet.env`: written by podswitchd in the format of
//!   `podswitch_host::subnet_file`.
//!
//! IPv6 leases (`EnableIPv6`, a `&fc00::-64` key suffix) are read for
//! their IPv4 half; podswitch does not route IPv6.

use std::net::Ipv4Addr;

use podswitch_engine::config::Backend;
use podswitch_engine::fib::Prefix;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// flannel's `--etcd-prefix` default.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// A lease's time to live (flannel's `subnetTTL`).
pub const LEASE_TTL_SECS: i64 = 24 * 60 * 60;
/// How long before expiry a lease is renewed (flannel's
/// `--subnet-lease-renew-margin` default, 60 minutes).
pub const RENEW_MARGIN_SECS: i64 = 60 * 60;
/// The VXLAN network identifier when the config gives none.
pub const DEFAULT_VNI: u32 = 1;

/// The network, as `<prefix>/config` says it, with flannel's defaults
/// filled in and its checks passed (`CheckNetworkConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network`: every pod of the cluster.
    pub network: Prefix,
    /// `SubnetLen`: each node's share.
    pub subnet_len: u8,
    /// `SubnetMin`: the first subnet a node may lease.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: the last one.
    pub subnet_max: Ipv4Addr,
    /// `Backend`.
    pub backend: BackendConfig,
}

/// `Backend` of the network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `Type`, lower case: vxlan, host-gw, udp, ipip (flannel's default,
    /// with no `Backend` at all, is udp).
    pub kind: String,
    /// `VNI` (vxlan).
    pub vni: Option<u32>,
    /// `Port` (vxlan, udp).
    pub port: Option<u16>,
    /// `DirectRouting` (vxlan): peers on the node's own underlay subnet
    /// are routed directly, without the tunnel.
    pub direct_routing: bool,
}

/// The backend podswitch runs for flannel's backend type `kind` (as a
/// network config's `Type` or a lease's `BackendType` names it): vxlan with
/// `DirectRouting` is podswitch's directrouting. None for a type podswitch
/// does not carry.
pub fn podswitch_backend(kind: &str, direct_routing: bool) -> Option<Backend> {
    match kind {
        "vxlan" if direct_routing => Some(Backend::DirectRouting),
        "vxlan" => Some(Backend::Vxlan),
        "host-gw" => Some(Backend::HostGw),
        "ipip" => Some(Backend::Ipip),
        "udp" => Some(Backend::Udp),
        _ => None,
    }
}

/// flannel's backend type for podswitch's `backend` (DirectRouting is an
/// option of vxlan).
pub fn flannel_type(backend: Backend) -> &'static str {
    match backend {
        Backend::Vxlan | Backend::DirectRouting => "vxlan",
        Backend::HostGw => "host-gw",
        Backend::Ipip => "ipip",
        Backend::Udp => "udp",
    }
}

/// Go's `encoding/json` matches object keys without regard to case; the
/// config is read the same way by lower-casing every key first.
fn lower_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lower_keys(v)))
                .collect(),
        ),
        other => other,
    }
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    network: Option<String>,
    #[serde(rename = "subnetlen")]
    subnet_len: Option<u32>,
    #[serde(rename = "subnetmin")]
    subnet_min: Option<String>,
    #[serde(rename = "subnetmax")]
    subnet_max: Option<String>,
    backend: Option<RawBackend>,
}

#[derive(Debug, Default, Deserialize)]
struct RawBackend {
    #[serde(rename = "type")]
    kind: Option<String>,
    vni: Option<u32>,
    port: Option<u16>,
    #[serde(rename = "directrouting", default)]
    direct_routing: bool,
}

fn subnet_size(len: u8) -> u64 {
    1u64 << (32 - u32::from(len.min(32)))
}

impl NetworkConfig {
    /// Parses `<prefix>/config` and applies flannel's defaults: a
    /// `SubnetLen` of 24 (or the network's length + 2 when that is longer
    /// than /22); `SubnetMin` the network's second subnet (the first is
    /// skipped: its address would be the network's own); `SubnetMax` its
    /// last. Errors are flannel's own words.
    pub fn parse(text: &str) -> Result<NetworkConfig, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("config: {e}"))?;
        let raw: RawConfig =
            serde_json::from_value(lower_keys(value)).map_err(|e| format!("config: {e}"))?;
        let network: Prefix = raw
            .network
            .as_deref()
            .and_then(|n| {
                let (addr, len) = n.split_once('/')?;
                let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
                // Host bits are cleared, as Go's net.ParseCIDR does.
                Some(Prefix::new_truncating(addr.parse().ok()?, len))
            })
            .ok_or("please define a correct Network parameter in the flannel config")?;
        let subnet_len = match raw.subnet_len {
            Some(len) if len > 0 => {
                if len > 30 {
                    return Err("SubnetLen must be less than /31".into());
                }
                if len < u32::from(network.prefix_len()) + 2 {
                    return Err("network must be able to accommodate at least four subnets".into());
                }
                len as u8
            }
            _ => match network.prefix_len() {
                l if l > 28 => {
                    return Err("network is too small. Minimum useful network prefix is /28".into())
                }
                l if l <= 22 => 24,
                l => l + 2,
            },
        };
        let size = subnet_size(subnet_len);
        let network_start = u64::from(u32::from(network.addr()));
        let network_end = network_start + subnet_size(network.prefix_len());
        let mask = u32::MAX << (32 - u32::from(subnet_len));
        let bound =
            |given: Option<String>, default: u64, which: &str| -> Result<Ipv4Addr, String> {
                let Some(text) = given.filter(|t| !t.is_empty()) else {
                    return Ok(Ipv4Addr::from(default as u32));
                };
                let ip: Ipv4Addr = text
                    .parse()
                    .map_err(|_| format!("{which} {text:?} is not an IPv4 address"))?;
                if !network.contains(ip) {
                    return Err(format!("{which} is not in the range of the Network"));
                }
                if u32::from(ip) & !mask != 0 {
                    return Err(format!("{which} is not on a SubnetLen boundary: {ip}"));
                }
                Ok(ip)
            };
        let subnet_min = bound(raw.subnet_min, network_start + size, "SubnetMin")?;
        let subnet_max = bound(raw.subnet_max, network_end - size, "SubnetMax")?;
        let backend = match raw.backend {
            None => BackendConfig {
                kind: "udp".into(),
                vni: None,
                port: None,
                direct_routing: false,
            },
            Some(b) => BackendConfig {
                kind: b.kind.unwrap_or_default().to_ascii_lowercase(),
                vni: b.vni,
                port: b.port,
                direct_routing: b.direct_routing,
            },
        };
        if podswitch_backend(&backend.kind, false).is_none() {
            return Err(format!(
                "Backend Type {:?}: podswitch carries vxlan, host-gw, udp and ipip",
                backend.kind
            ));
        }
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// Whether `subnet` may be a lease of this network (flannel's
    /// `isSubnetConfigCompat`).
    pub fn fits(&self, subnet: &Prefix) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
    }

    /// Subnets free for a new lease, in order, at most `limit` of them
    /// (flannel takes the first 100 and picks one at random).
    pub fn free_subnets(&self, taken: &[Prefix], limit: usize) -> Vec<Prefix> {
        let size = subnet_size(self.subnet_len);
        let mut free = Vec::new();
        let mut at = u64::from(u32::from(self.subnet_min));
        while at <= u64::from(u32::from(self.subnet_max)) && free.len() < limit {
            let candidate = Prefix::new_truncating(Ipv4Addr::from(at as u32), self.subnet_len);
            if !taken
                .iter()
                .any(|t| t.covers(&candidate) || candidate.covers(t))
            {
                free.push(candidate);
            }
            at += size;
        }
        free
    }
}

/// A node's lease as flannel stores it (`LeaseAttrs`). Field order and
/// presence are flannel's: `PublicIP` always, `PublicIPv6` always (null),
/// the rest only when set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    /// The node's address on the underlay.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// Its IPv6 address (podswitch writes null).
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    /// The backend the node runs; flannel's udp backend writes none.
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    /// Backend details: for vxlan, `{"VNI":1,"VtepMAC":"..."}`.
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Value::is_null"
    )]
    pub backend_data: Value,
    /// The IPv6 half of the backend details (kept as read).
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Value::is_null"
    )]
    pub backend_v6_data: Value,
}

/// `BackendData` of a vxlan lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    /// `VNI`.
    #[serde(rename = "VNI")]
    pub vni: u32,
    /// `VtepMAC`, lower-case colon hex.
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

impl LeaseAttrs {
    /// The lease a node writes for itself: `backend` as the network
    /// config names it; vxlan leases carry the VNI and VTEP MAC.
    pub fn own(public_ip: Ipv4Addr, backend: &str, vni: u32, vtep_mac: &str) -> LeaseAttrs {
        let backend_data = if backend == "vxlan" {
            serde_json::to_value(VxlanData {
                vni,
                vtep_mac: vtep_mac.to_ascii_lowercase(),
            })
            .unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            // flannel's udp backend leaves the type out; so do we, so
            // that flanneld's udp nodes read our lease as theirs.
            backend_type: if backend == "udp" {
                String::new()
            } else {
                backend.to_string()
            },
            backend_data,
            backend_v6_data: Value::Null,
        }
    }

    /// The backend, with flannel's udp default for a lease without one.
    pub fn backend(&self) -> &str {
        if self.backend_type.is_empty() {
            "udp"
        } else {
            &self.backend_type
        }
    }

    /// A vxlan lease's VNI and VTEP MAC.
    pub fn vxlan(&self) -> Result<VxlanData, String> {
        serde_json::from_value(self.backend_data.clone())
            .map_err(|e| format!("vxlan BackendData {}: {e}", self.backend_data))
    }

    /// The JSON flannel writes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes serialize")
    }

    /// Reads a lease's value.
    pub fn parse(text: &[u8]) -> Result<LeaseAttrs, String> {
        serde_json::from_slice(text).map_err(|e| format!("lease: {e}"))
    }
}

/// A subnet's key under `<prefix>/subnets/` (flannel's `MakeSubnetKey`):
/// `10.244.1.0-24`.
pub fn subnet_key(subnet: &Prefix) -> String {
    format!("{}-{}", subnet.addr(), subnet.prefix_len())
}

/// The IPv4 subnet of a key under `<prefix>/subnets/` (a dual-stack key's
/// `&<ipv6>-<len>` suffix is ignored); None for anything else.
pub fn parse_subnet_key(key: &str) -> Option<Prefix> {
    let name = key.rsplit('/').next()?;
    let v4 = name.split('&').next()?;
    let (addr, len) = v4.rsplit_once('-')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let prefix = Prefix::new(addr, len).ok()?;
    Some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    /// Every podswitch backend has a flannel type that maps back to it
    /// (DirectRouting as vxlan's option); a type flannel has and podswitch
    /// does not carry maps to none.
    #[test]
    fn backends_and_flannel_types_map_both_ways() {
        for backend in Backend::ALL {
            let direct = backend == Backend::DirectRouting;
            assert_eq!(
                podswitch_backend(flannel_type(backend), direct),
                Some(backend)
            );
        }
        assert_eq!(flannel_type(Backend::DirectRouting), "vxlan");
        assert_eq!(podswitch_backend("host-gw", true), Some(Backend::HostGw));
        assert_eq!(podswitch_backend("wireguard", false), None);
    }

    #[test]
    fn defaults_are_flannels() {
        // flannel's config_test.go: {"network":"10.3.0.0/16"}.
        let c = NetworkConfig::parse(r#"{"network":"10.3.0.0/16"}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 3, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 3, 255, 0));
        assert_eq!(c.backend.kind, "udp", "no Backend: flannel's udp");
        let c = NetworkConfig::parse(r#"{"Network":"10.3.0.0/24"}"#).unwrap();
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 3, 0, 64));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 3, 0, 192));
        let c = NetworkConfig::parse(
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472, "DirectRouting": true}}"#,
        )
        .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig {
                kind: "vxlan".into(),
                vni: Some(1),
                port: Some(8472),
                direct_routing: true
            }
        );
    }

    #[test]
    fn bad_configs_say_why_in_flannels_words() {
        for (text, why) in [
            ("{}", "please define a correct Network"),
            (r#"{"Network":"10.0.0.0/29"}"#, "network is too small"),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#,
                "at least four subnets",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
                "less than /31",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
                "SubnetMin is not in the range",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.3.7"}"#,
                "SubnetMax is not on a SubnetLen boundary",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard"}}"#,
                "wireguard",
            ),
            ("[", "config"),
        ] {
            let e = NetworkConfig::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn leases_are_written_as_flannel_writes_them() {
        // flannel's Documentation/reservations.md example.
        let a = LeaseAttrs::own(
            Ipv4Addr::new(192, 168, 64, 3),
            "vxlan",
            1,
            "C6:D2:32:6F:8F:44",
        );
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let host_gw = LeaseAttrs::own(Ipv4Addr::new(1, 2, 3, 4), "host-gw", 1, "x");
        assert_eq!(
            host_gw.to_json(),
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        // flannel's registry_test.go: bare attributes; udp writes no type.
        let udp = LeaseAttrs::own(Ipv4Addr::new(1, 2, 3, 4), "udp", 1, "x");
        assert_eq!(udp.to_json(), r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#);
        assert_eq!(
            LeaseAttrs::parse(udp.to_json().as_bytes())
                .unwrap()
                .backend(),
            "udp"
        );
        let read = LeaseAttrs::parse(a.to_json().as_bytes()).unwrap();
        assert_eq!(read, a);
        assert_eq!(read.vxlan().unwrap().vni, 1);
        assert!(LeaseAttrs::parse(b"{\"PublicIP\":\"300.1.1.1\"}").is_err());
    }

    #[test]
    fn subnet_keys_round_trip() {
        assert_eq!(subnet_key(&p("10.244.1.0/24")), "10.244.1.0-24");
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.244.1.0-24"),
            Some(p("10.244.1.0/24"))
        );
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.244.1.0-24&fc00:0:0:1::-64"),
            Some(p("10.244.1.0/24"))
        );
        for bad in [
            "x/10.244.1.7-24",
            "x/10.244.1.0",
            "x/10.244.1.0-33",
            "x/config",
        ] {
            assert_eq!(parse_subnet_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn free_subnets_skip_taken_ones_and_stay_in_range() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let free = c.free_subnets(&[p("10.244.1.0/24"), p("10.244.3.0/24")], 3);
        assert_eq!(
            free,
            vec![p("10.244.2.0/24"), p("10.244.4.0/24"), p("10.244.5.0/24")]
        );
        assert_eq!(c.free_subnets(&[p("10.244.0.0/16")], 100), vec![]);
        let all = c.free_subnets(&[], 1000);
        assert_eq!(all.len(), 255);
        assert_eq!(all.last(), Some(&p("10.244.255.0/24")));
        assert!(all.iter().all(|s| c.fits(s)));
        assert!(!c.fits(&p("10.244.0.0/24")));
        assert!(!c.fits(&p("10.244.1.0/25")));
    }
}
