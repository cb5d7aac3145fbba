//! The CNI contract (CNI specification 1.1.0, SPEC.md): the environment,
//! the network configuration, errors and results, in each supported
//! version's shape.

use std::fmt;

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

/// How the pod reaches its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GatewayMode {
    /// flannel: the pod's prefix and `default via` the subnet's gateway.
    Bridge,
    /// Calico: a /32, `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1`.
    ProxyArp,
}

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
        let gateway_mode = match raw.get("gatewayMode").map(|v| v.as_str()) {
            None | Some(Some("bridge")) => GatewayMode::Bridge,
            Some(Some("proxy-arp")) => GatewayMode::ProxyArp,
            Some(_) => {
                return Err(invalid(format!(
                    "gatewayMode {}: \"bridge\" or \"proxy-arp\"",
                    raw["gatewayMode"]
                )))
            }
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
        Ok(NetConf {
            prev_result: raw.get("prevResult").cloned(),
            cni_version,
            socket,
            mtu,
            gateway_mode,
            ipam_type,
            raw,
        })
    }

    /// The configuration with another cniVersion (for an IPAM plugin that
    /// speaks an older one).
    pub(crate) fn with_version(&self, version: &str) -> Value {
        let mut raw = self.raw.clone();
        raw.insert("cniVersion".into(), Value::from(version));
        Value::Object(raw)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn results_take_the_requested_shape() {
        let r = json!({"ips":[{"address":"10.244.1.5/24","interface":1}]});
        assert_eq!(shape_result(r.clone(), "0.3.1")["ips"][0]["version"], "4");
        assert!(shape_result(r, "1.1.0")["ips"][0].get("version").is_none());
        assert!(version_key("0.4.0") < version_key("1.0.0"));
    }
}
