//! The CNI contract (CNI specification 1.1.0, SPEC.md): the environment,
//! the network configuration, errors and results, in each supported
//! version's shape, and the pod's addressing read from an IPAM result.
//!
//! The `cni_config` fuzz target compiles this file on its own (fuzz/), so
//! it uses nothing of the plugin's other modules.

use std::fmt;
use std::net::Ipv4Addr;

use podswitch_protocol::{EgressLimit, MacAddr, ParseMacError};
use serde_json::{json, Map, Value};

/// Versions this plugin speaks, oldest first.
pub(crate) const SUPPORTED: &[&str] = &["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Well-known error codes (SPEC.md, "Error").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    InvalidEnvironment = 4,
    DecodeFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    PluginNotAvailable = 50,
    /// Anything else that failed: the plugin's own range starts at 100.
    Failed = 100,
}

/// A CNI error: code, message, details.
#[derive(Debug, Clone)]
pub(crate) struct CniError {
    pub(crate) code: Code,
    pub(crate) msg: String,
    pub(crate) details: String,
}

impl CniError {
    pub(crate) fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub(crate) fn details(mut self, details: impl fmt::Display) -> CniError {
        self.details = details.to_string();
        self
    }

    /// The error object printed on stdout.
    pub(crate) fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code as u32, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::from(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// The operation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// What the runtime put in the environment.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) command: Command,
    pub(crate) container_id: String,
    pub(crate) netns: String,
    pub(crate) ifname: String,
    pub(crate) path: String,
    /// CNI_ARGS: `KEY=VALUE` pairs separated by `;` (SPEC.md, "Parameters").
    pub(crate) args: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Env {
    /// Reads the CNI_* variables each command needs (SPEC.md,
    /// "Parameters"): ADD and CHECK need all; DEL may run without a netns;
    /// VERSION needs only the command.
    pub(crate) fn read() -> Result<Env, CniError> {
        let missing =
            |name: &str| CniError::new(Code::InvalidEnvironment, format!("{name} is not set"));
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC"),
                ))
            }
            None => return Err(missing("CNI_COMMAND")),
        };
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let get = |name: &str, needed: bool| match var(name) {
            Some(v) => Ok(v),
            None if needed => Err(missing(name)),
            None => Ok(String::new()),
        };
        let env = Env {
            command,
            container_id: get("CNI_CONTAINERID", needs_attachment)?,
            netns: get(
                "CNI_NETNS",
                matches!(command, Command::Add | Command::Check),
            )?,
            ifname: get("CNI_IFNAME", needs_attachment)?,
            path: get(
                "CNI_PATH",
                !matches!(command, Command::Version | Command::Status),
            )?,
            args: get("CNI_ARGS", false)?,
        };
        if needs_attachment && (env.ifname.len() > 15 || env.ifname.contains(['/', ' '])) {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_IFNAME {:?} is not a valid interface name", env.ifname),
            ));
        }
        Ok(env)
    }
}

/// How the pod reaches its gateway: bridge (flannel: the pod's prefix and
/// `default via` the subnet's gateway) or proxy-arp (Calico: a /32,
/// `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1`).
pub(crate) use podswitch_addr::GatewayMode;

/// The network configuration (SPEC.md, "Network configuration"), with
/// podswitch's own keys.
#[derive(Debug, Clone)]
pub(crate) struct NetConf {
    pub(crate) cni_version: String,
    pub(crate) socket: String,
    pub(crate) mtu: u32,
    pub(crate) gateway_mode: GatewayMode,
    pub(crate) ipam_type: String,
    /// The whole configuration as given (IPAM plugins read it too).
    pub(crate) raw: Map<String, Value>,
    pub(crate) prev_result: Option<Value>,
}

/// Keys the specification defines, which a plugin accepts whatever they hold.
const STANDARD_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "disableCheck",
    "disableGC",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];
/// podswitch's keys.
const OWN_KEYS: &[&str] = &["socket", "mtu", "gatewayMode"];
/// The control socket when the configuration does not name one.
pub(crate) const DEFAULT_SOCKET: &str = "/run/podswitch/podswitchd.sock";

impl NetConf {
    /// Parses stdin: a JSON object (6 if not), a supported cniVersion (1
    /// if not), known keys with valid values (2 for an unknown key, 7 for
    /// a bad value).
    pub(crate) fn parse(input: &str) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_str(input).map_err(|e| {
            CniError::new(Code::DecodeFailure, "the network configuration is not JSON").details(e)
        })?;
        let Value::Object(raw) = value else {
            return Err(CniError::new(
                Code::DecodeFailure,
                "the network configuration is not a JSON object",
            ));
        };
        let invalid = |msg: String| CniError::new(Code::InvalidConfig, msg);
        let text = |key: &str| raw.get(key).and_then(Value::as_str).map(str::to_string);
        let cni_version = text("cniVersion")
            .ok_or_else(|| invalid("cniVersion is missing or not a string".into()))?;
        if !SUPPORTED.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("cniVersion {cni_version:?} is not supported"),
            )
            .details(format!("supported: {}", SUPPORTED.join(", "))));
        }
        for key in raw.keys() {
            if !STANDARD_KEYS.contains(&key.as_str()) && !OWN_KEYS.contains(&key.as_str()) {
                return Err(CniError::new(
                    Code::UnsupportedField,
                    format!("unknown configuration key {key:?}"),
                )
                .details(format!("podswitch's keys: {}", OWN_KEYS.join(", "))));
            }
        }
        if !text("name").is_some_and(|n| !n.is_empty()) {
            return Err(invalid("name is missing".into()));
        }
        let socket = match raw.get("socket") {
            None => DEFAULT_SOCKET.to_string(),
            Some(Value::String(s)) if s.starts_with('/') => s.clone(),
            Some(other) => return Err(invalid(format!("socket {other}: an absolute path"))),
        };
        let mtu = match raw.get("mtu") {
            None => 1450,
            Some(v) => match v.as_u64() {
                Some(m @ 576..=9000) => m as u32,
                _ => return Err(invalid(format!("mtu {v}: a number from 576 to 9000"))),
            },
        };
        let gateway_mode = match raw.get("gatewayMode") {
            None => GatewayMode::Bridge,
            Some(v) => v
                .as_str()
                .ok_or_else(|| format!("gateway mode {v}: a string"))
                .and_then(str::parse)
                .map_err(|e| invalid(format!("gatewayMode: {e}")))?,
        };
        let ipam_type = match raw
            .get("ipam")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
        {
            None | Some("") => {
                return Err(invalid(
                    "ipam.type is missing (for example \"host-local\")".into(),
                ))
            }
            // A plugin is found by name in CNI_PATH, never by path (the
            // specification's rule, and no way out of CNI_PATH).
            Some(t) if t.contains('/') => {
                return Err(invalid(format!(
                    "ipam.type {t:?} is a path: give a plugin name, found in CNI_PATH"
                )))
            }
            Some(t) => t.to_string(),
        };
        // A chained plugin's result: an object, which ADD extends and
        // CHECK reads (null is taken as absent).
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(invalid("prevResult is not a result object".into())),
        };
        Ok(NetConf {
            prev_result,
            cni_version,
            socket,
            mtu,
            gateway_mode,
            ipam_type,
            raw,
        })
    }

    /// True when the IPAM plugin is host-local and the configuration
    /// gives it no subnet (`ranges` or `subnet`): the node's own subnet is
    /// to be filled in, as flannel's CNI plugin fills it from its subnet
    /// file.
    pub(crate) fn wants_node_subnet(&self) -> bool {
        let ipam = &self.raw["ipam"];
        self.ipam_type == "host-local"
            && ipam.get("ranges").is_none()
            && ipam.get("subnet").is_none()
    }

    /// Gives host-local the node's subnet (`ipam.ranges`), and the pods
    /// the node's MTU when the configuration names none.
    pub(crate) fn fill_node_network(&mut self, subnet: &str, mtu: Option<u32>) {
        if let Some(Value::Object(ipam)) = self.raw.get_mut("ipam") {
            ipam.insert("ranges".into(), serde_json::json!([[{ "subnet": subnet }]]));
        }
        if let Some(mtu) = mtu.filter(|_| !self.raw.contains_key("mtu")) {
            self.mtu = mtu;
        }
    }

    /// The configuration with another cniVersion (for an IPAM plugin that
    /// speaks an older one).
    pub(crate) fn with_version(&self, version: &str) -> Value {
        let mut raw = self.raw.clone();
        raw.insert("cniVersion".into(), Value::from(version));
        Value::Object(raw)
    }
}

/// The proxy-ARP gateway (Calico's).
pub(crate) const PROXY_ARP_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The pod's addressing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addressing {
    pub(crate) ip: Ipv4Addr,
    pub(crate) prefix_len: u8,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) mode: GatewayMode,
}

impl Addressing {
    /// The address's prefix on the pod's interface: the subnet's in
    /// bridge mode, /32 with proxy ARP.
    pub(crate) fn interface_prefix(&self) -> u8 {
        match self.mode {
            GatewayMode::Bridge => self.prefix_len,
            GatewayMode::ProxyArp => 32,
        }
    }
}

/// The pod's address, prefix and gateway from an IPAM result.
pub(crate) fn addressing(ipam_result: &Value, mode: GatewayMode) -> Result<Addressing, CniError> {
    let ip = ipam_result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|ip| {
            let (addr, len) = ip["address"].as_str()?.split_once('/')?;
            Some((
                addr.parse::<Ipv4Addr>().ok()?,
                len.parse::<u8>().ok().filter(|&l| l <= 32)?,
                ip["gateway"].as_str(),
            ))
        })
        .ok_or_else(|| {
            CniError::new(Code::Failed, "the IPAM plugin returned no IPv4 address")
                .details(ipam_result)
        })?;
    let gateway = match (mode, ip.2) {
        (GatewayMode::ProxyArp, _) => PROXY_ARP_GATEWAY,
        (GatewayMode::Bridge, Some(gw)) => gw
            .parse()
            .map_err(|_| CniError::new(Code::Failed, format!("IPAM gateway {gw:?} is not IPv4")))?,
        (GatewayMode::Bridge, None) => {
            // host-local's default: the subnet's first address.
            let net = u32::from(ip.0) & podswitch_addr::mask(ip.1);
            net.checked_add(1).map(Ipv4Addr::from).ok_or_else(|| {
                CniError::new(
                    Code::Failed,
                    format!("{}/{} has no first address for a gateway", ip.0, ip.1),
                )
            })?
        }
    };
    Ok(Addressing {
        ip: ip.0,
        prefix_len: ip.1,
        gateway,
        mode,
    })
}

/// Compares versions "a.b.c" numerically.
pub(crate) fn version_key(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// A result in the shape of `version`: before 1.0.0 each IP carries
/// `"version": "4"`.
pub(crate) fn shape_result(mut result: Value, version: &str) -> Value {
    result["cniVersion"] = Value::from(version);
    if version_key(version) < (1, 0, 0) {
        if let Some(ips) = result.get_mut("ips").and_then(Value::as_array_mut) {
            for ip in ips {
                ip["version"] = Value::from("4");
            }
        }
    }
    result
}

/// Parses `aa:bb:cc:dd:ee:ff` as a MAC a pod's interface may take: one
/// interface's own (unicast) and not all zero.
fn pod_mac(text: &str) -> Result<[u8; 6], String> {
    let MacAddr(mac) = text.parse().map_err(|e: ParseMacError| e.to_string())?;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(format!(
            "{text} is multicast, broadcast or zero: no single interface owns it"
        ));
    }
    Ok(mac)
}

/// The MAC the runtime asks for the pod's interface, if any: the `mac`
/// capability (`runtimeConfig.mac`, CONVENTIONS.md; the configuration
/// must declare `"capabilities": {"mac": true}` for a runtime to pass it),
/// else `MAC=` in CNI_ARGS (what podman's `--mac-address` sets).
pub(crate) fn requested_mac(env: &Env, conf: &NetConf) -> Result<Option<[u8; 6]>, CniError> {
    if let Some(value) = conf.raw.get("runtimeConfig").and_then(|r| r.get("mac")) {
        let text = value.as_str().unwrap_or_default();
        return pod_mac(text)
            .map(Some)
            .map_err(|e| CniError::new(Code::InvalidConfig, format!("runtimeConfig.mac: {e}")));
    }
    let from_args = env.args.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == "MAC").then(|| value.trim())
    });
    match from_args {
        None => Ok(None),
        Some(text) => pod_mac(text)
            .map(Some)
            .map_err(|e| CniError::new(Code::InvalidEnvironment, format!("CNI_ARGS MAC: {e}"))),
    }
}

/// What the pod may send, from the `bandwidth` capability
/// (`runtimeConfig.bandwidth`, CONVENTIONS.md: `egressRate` in bits per
/// second, `egressBurst` in bits; the configuration must declare
/// `"capabilities": {"bandwidth": true}` for a runtime to pass it, and
/// Kubernetes fills it from the pod's `kubernetes.io/egress-bandwidth`).
/// As the bandwidth plugin reads them: a rate needs a burst, and both
/// zero or absent mean no limit. The ingress half is not podswitch's: the
/// bandwidth plugin's qdisc on the host end of the veth shapes what
/// podswitch sends the pod.
pub(crate) fn egress_limit(conf: &NetConf) -> Result<Option<EgressLimit>, CniError> {
    let Some(bandwidth) = conf
        .raw
        .get("runtimeConfig")
        .and_then(|r| r.get("bandwidth"))
    else {
        return Ok(None);
    };
    let invalid = |msg: String| CniError::new(Code::InvalidConfig, msg);
    let Some(bandwidth) = bandwidth.as_object() else {
        return Err(invalid(format!(
            "runtimeConfig.bandwidth: {bandwidth} is not an object"
        )));
    };
    let field = |name: &str| match bandwidth.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| {
            invalid(format!(
                "runtimeConfig.bandwidth.{name}: {v} is not a whole number of bits"
            ))
        }),
    };
    let (rate_bits, burst_bits) = (field("egressRate")?, field("egressBurst")?);
    match (rate_bits, burst_bits) {
        (0, 0) => Ok(None),
        (0, _) | (_, 0) => Err(invalid(format!(
            "runtimeConfig.bandwidth: egressRate ({rate_bits}) and egressBurst ({burst_bits}) must be set together"
        ))),
        (rate, burst) if rate < 8 || burst < 8 => Err(invalid(format!(
            "runtimeConfig.bandwidth: egressRate ({rate}) and egressBurst ({burst}) must each be at least 8 bits (one byte)"
        ))),
        _ => Ok(Some(EgressLimit {
            rate_bits,
            burst_bits,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_egress_limit_is_read_as_the_bandwidth_plugin_reads_it() {
        let limit = |bandwidth: &str| {
            let conf = NetConf::parse(&format!(
                r#"{{"cniVersion":"1.1.0","name":"n","ipam":{{"type":"host-local"}},"runtimeConfig":{{"bandwidth":{bandwidth}}}}}"#
            ))
            .unwrap();
            egress_limit(&conf)
        };
        assert_eq!(
            limit(r#"{"egressRate":10000000,"egressBurst":800000,"ingressRate":5}"#).unwrap(),
            Some(EgressLimit {
                rate_bits: 10_000_000,
                burst_bits: 800_000
            })
        );
        assert_eq!(
            limit(r#"{"ingressRate":1000,"ingressBurst":1000}"#).unwrap(),
            None
        );
        assert_eq!(limit(r#"{"egressRate":0,"egressBurst":0}"#).unwrap(), None);
        for bad in [
            r#"{"egressRate":1000000}"#,
            r#"{"egressBurst":1000000}"#,
            r#"{"egressRate":-1,"egressBurst":1000}"#,
            r#"{"egressRate":1.5e6,"egressBurst":1000}"#,
            r#"{"egressRate":"1M","egressBurst":1000}"#,
            r#"{"egressRate":7,"egressBurst":1000}"#,
            r#"[1,2]"#,
        ] {
            assert_eq!(limit(bad).unwrap_err().code, Code::InvalidConfig, "{bad}");
        }
        let none =
            NetConf::parse(r#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local"}}"#)
                .unwrap();
        assert_eq!(egress_limit(&none).unwrap(), None);
    }

    #[test]
    fn configuration_errors_have_the_spec_codes() {
        let code = |s: &str| NetConf::parse(s).unwrap_err().code;
        assert_eq!(code("{"), Code::DecodeFailure);
        assert_eq!(code("[]"), Code::DecodeFailure);
        assert_eq!(
            code(r#"{"cniVersion":"9.9.9","name":"n","ipam":{"type":"host-local"}}"#),
            Code::IncompatibleVersion
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local"},"gatewaymode":"x"}"#
            ),
            Code::UnsupportedField
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.1.0","name":"n"}"#),
            Code::InvalidConfig
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local"},"mtu":10}"#),
            Code::InvalidConfig
        );
        let ok = NetConf::parse(r#"{"cniVersion":"0.4.0","name":"podnet","type":"podswitch","gatewayMode":"proxy-arp","ipam":{"type":"host-local"}}"#).unwrap();
        assert_eq!(ok.gateway_mode, GatewayMode::ProxyArp);
        assert_eq!(ok.socket, DEFAULT_SOCKET);
        assert_eq!(ok.mtu, 1450);
    }

    /// Found by the `cni_config` fuzz target's inputs (a non-object
    /// prevResult made ADD's and shape_result's `result[key] = ...` panic;
    /// a prefix over 32 or the last address without a gateway overflowed).
    #[test]
    fn hostile_prev_results_are_errors_not_panics() {
        let conf = |prev: &str| {
            format!(
                r#"{{"cniVersion":"1.1.0","name":"n","ipam":{{"type":"host-local"}},"prevResult":{prev}}}"#
            )
        };
        for prev in ["5", "[]", r#""x""#, "true"] {
            let e = NetConf::parse(&conf(prev)).unwrap_err();
            assert_eq!(e.code, Code::InvalidConfig, "{prev}");
        }
        assert!(NetConf::parse(&conf("null")).unwrap().prev_result.is_none());
        let address = |a: &str| {
            let c = NetConf::parse(&conf(&format!(r#"{{"ips":[{{"address":"{a}"}}]}}"#))).unwrap();
            addressing(c.prev_result.as_ref().unwrap(), GatewayMode::Bridge)
        };
        assert_eq!(address("10.244.1.5/44").unwrap_err().code, Code::Failed);
        assert_eq!(
            address("255.255.255.255/32").unwrap_err().code,
            Code::Failed
        );
        let a = address("10.244.1.5/24").unwrap();
        assert_eq!(
            (a.prefix_len, a.gateway),
            (24, Ipv4Addr::new(10, 244, 1, 1))
        );
        assert_eq!(
            address("10.0.0.1/0").unwrap().gateway,
            Ipv4Addr::new(0, 0, 0, 1)
        );
    }

    #[test]
    fn results_take_the_requested_shape() {
        let r = json!({"ips":[{"address":"10.244.1.5/24","interface":1}]});
        assert_eq!(shape_result(r.clone(), "0.3.1")["ips"][0]["version"], "4");
        assert!(shape_result(r, "1.1.0")["ips"][0].get("version").is_none());
        assert!(version_key("0.4.0") < version_key("1.0.0"));
    }
}
