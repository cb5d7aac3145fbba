//! `podswitch`: the CNI plugin that attaches pods to podswitchd.
//!
//! A thin shim, run by the container runtime per pod (CNI specification
//! 1.1.0; results also in the 0.3.1, 0.4.0 and 1.0.0 shapes). ADD takes an
//! address from the IPAM plugin (host-local), creates the pod's veth pair
//! through netlink, configures the pod side (bridge mode: the address with
//! its prefix and `default via` the gateway; proxy-ARP mode: a /32,
//! `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1`) and
//! registers the host side with podswitchd over its control socket; any
//! failure undoes every step. DEL undoes it all and is idempotent. CHECK,
//! VERSION, STATUS and GC do what the specification says. The daemon keeps
//! its ports across restarts itself; the plugin talks to it only through
//! the control client.
//!
//! The plugin is its own package and links only the protocol
//! (`podswitch-protocol`) and the host plumbing (`podswitch-host`): a
//! runtime starts it once per pod, and it has no use for the data path.
//!
//! Configuration keys, besides the specification's (`cniVersion`, `name`,
//! `type`, `ipam`, `prevResult`, ...):
//!
//! - `socket`: podswitchd's control socket (default
//!   /run/podswitch/podswitchd.sock);
//! - `mtu`: the pod interface's MTU (default 1450, VXLAN over 1500);
//! - `gatewayMode`: `bridge` (default, flannel) or `proxy-arp` (Calico).

mod attach;
mod cni;
mod ipam;

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use podswitch_host::subnet_file;
use podswitch_protocol::client::{Client, ClientError};
use podswitch_protocol::{EgressLimit, MacAddr, PortInfo, PortRef, Request, Status};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use cni::{
    addressing, shape_result, Addressing, CniError, Code, Command, Env, GatewayMode, NetConf,
    SUPPORTED,
};
use ipam::Ipam;

fn main() -> ExitCode {
    let mut input = String::new();
    let env = Env::read();
    let needs_stdin = !matches!(&env, Ok(e) if e.command == Command::Version);
    if needs_stdin || std::env::var_os("CNI_COMMAND").is_some() {
        let _ = std::io::stdin().read_to_string(&mut input);
    }
    let version = serde_json::from_str::<Value>(&input)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".into());
    let result = env.and_then(|env| run(&env, &input));
    match result {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            ExitCode::from(1)
        }
    }
}

fn run(env: &Env, input: &str) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        let asked = serde_json::from_str::<Value>(input)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .unwrap_or_else(|| "1.1.0".into());
        return Ok(Some(
            json!({ "cniVersion": asked, "supportedVersions": SUPPORTED }),
        ));
    }
    let mut conf = NetConf::parse(input)?;
    if conf.wants_node_subnet() {
        match node_network(&conf) {
            Ok((subnet, mtu)) => conf.fill_node_network(&subnet, mtu),
            // host-local's DEL releases by container id whatever the
            // range (its store is per network name): any range will do,
            // and DEL never fails on the daemon's account.
            Err(_) if env.command == Command::Del => conf.fill_node_network("169.254.0.0/16", None),
            Err(e) => return Err(e),
        }
    }
    match env.command {
        Command::Add => add(env, &conf).map(Some),
        Command::Del => del(env, &conf).map(|()| None),
        Command::Check => check(env, &conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc => gc(env, &conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// The node's pod subnet and pods' MTU, for a host-local configuration
/// that names no subnet: from podswitchd (which leased it, or was given
/// it), else from the subnet file it wrote (flannel's format, so that DEL
/// still works while the daemon is down, and a flanneld node's file
/// serves as well).
fn node_network(conf: &NetConf) -> Result<(String, Option<u32>), CniError> {
    let from_daemon = Client::connect(Path::new(&conf.socket), Duration::from_secs(5))
        .ok()
        .and_then(|mut c| c.call_for::<Status>(&Request::Status).ok())
        .map(|status| (status.pod_cidr.to_string(), Some(u32::from(status.mtu))));
    if let Some(found) = from_daemon {
        return Ok(found);
    }
    let text = std::fs::read_to_string(SUBNET_FILE).unwrap_or_default();
    let file = subnet_file::parse(&text);
    match file.subnet {
        Some(subnet) => Ok((subnet.to_string(), file.mtu.map(u32::from))),
        None => Err(CniError::new(
            Code::TryAgainLater,
            format!(
                "ipam gives host-local no subnet, and neither podswitchd at {} nor {SUBNET_FILE} says the node's",
                conf.socket
            ),
        )),
    }
}

/// Where podswitchd writes the node's lease (flannel's subnet file).
const SUBNET_FILE: &str = subnet_file::DEFAULT_PATH;

fn connect(conf: &NetConf) -> Result<Client, CniError> {
    Client::connect(Path::new(&conf.socket), Duration::from_secs(30)).map_err(|e| {
        CniError::new(
            Code::TryAgainLater,
            format!("podswitchd is not reachable at {}", conf.socket),
        )
        .details(e)
    })
}

/// A request's result, read as its reply type.
fn call<T: DeserializeOwned>(client: &mut Client, request: &Request) -> Result<T, CniError> {
    client.call_for(request).map_err(|e| match e {
        ClientError::Daemon(reason) => CniError::new(Code::Failed, format!("podswitchd: {reason}")),
        other => CniError::new(Code::TryAgainLater, "podswitchd stopped answering").details(other),
    })
}

fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    if !Path::new(&env.netns).exists() {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_NETNS {} does not exist", env.netns),
        ));
    }
    if same_file(Path::new(&env.netns), Path::new("/proc/self/ns/net")) {
        // The pod's end would land in the node's own namespace, as eth0
        // with the pod's address: never what a runtime means.
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!(
                "CNI_NETNS {} is the node's own network namespace, not a pod's",
                env.netns
            ),
        ));
    }
    let mac = cni::requested_mac(env, conf)?;
    let egress_limit = cni::egress_limit(conf)?;
    // The daemon first: if it is down, nothing has been done yet.
    let mut client = connect(conf)?;
    let ipam = Ipam::find(conf, env)?;
    let host = attach::host_interface(&env.container_id, &env.ifname);
    let ipam_result = ipam.run("ADD", conf, &env.container_id, &env.ifname)?;
    // Every step from here has an undo, run in reverse if a later one fails.
    let release = || {
        let _ = ipam.run("DEL", conf, &env.container_id, &env.ifname);
    };
    let addr = match addressing(&ipam_result, conf.gateway_mode) {
        Ok(a) => a,
        Err(e) => {
            release();
            return Err(e);
        }
    };
    let side = match attach::create(&host, &env.netns, &env.ifname, conf.mtu, addr, mac) {
        Ok(side) => side,
        Err(e) => {
            release();
            return Err(
                CniError::new(Code::Failed, "cannot create the pod's interface").details(e),
            );
        }
    };
    let request = Request::PortAdd {
        interface: host.clone(),
        ip: addr.ip,
        mac: MacAddr(side.pod_mac),
        container_id: Some(env.container_id.clone()),
        ifname: Some(env.ifname.clone()),
        anti_spoof: true,
        kind: None,
        egress_limit,
    };
    if let Err(e) = call::<PortRef>(&mut client, &request) {
        let _ = attach::delete(&host);
        release();
        return Err(e);
    }
    // Chained: what earlier plugins reported comes first.
    let mut result = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    let interfaces = result["interfaces"].as_array().map_or(0, Vec::len);
    let mut list = result["interfaces"].as_array().cloned().unwrap_or_default();
    list.push(json!({ "name": host, "mac": MacAddr(side.host_mac).to_string() }));
    list.push(
        json!({ "name": env.ifname, "mac": MacAddr(side.pod_mac).to_string(), "sandbox": env.netns }),
    );
    result["interfaces"] = Value::Array(list);
    let mut ips = result["ips"].as_array().cloned().unwrap_or_default();
    ips.push(json!({
        "address": format!("{}/{}", addr.ip, addr.interface_prefix()),
        "gateway": addr.gateway.to_string(),
        "interface": interfaces + 1,
    }));
    result["ips"] = Value::Array(ips);
    let mut routes = result["routes"].as_array().cloned().unwrap_or_default();
    if addr.mode == GatewayMode::ProxyArp {
        routes.push(json!({ "dst": "169.254.1.1/32" }));
    }
    routes.push(json!({ "dst": "0.0.0.0/0", "gw": addr.gateway.to_string() }));
    result["routes"] = Value::Array(routes);
    if result.get("dns").is_none() {
        result["dns"] = ipam_result.get("dns").cloned().unwrap_or_else(|| json!({}));
    }
    Ok(shape_result(result, &conf.cni_version))
}

/// True if both paths name the same file (a namespace: same device and
/// inode, as `ip netns identify` compares them).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host = attach::host_interface(&env.container_id, &env.ifname);
    // Each step runs whatever the others found; missing pieces are fine.
    detach_from_daemon(conf, &host);
    let link = attach::delete(&host)
        .map_err(|e| CniError::new(Code::Failed, format!("deleting {host}")).details(e));
    let ipam =
        Ipam::find(conf, env).and_then(|i| i.run("DEL", conf, &env.container_id, &env.ifname));
    link?;
    ipam.map(|_| ())
}

/// Asks podswitchd to detach the pod's port. A daemon that is down, or that
/// dies while it answers (the CNI fault campaign kills it mid-DEL), fails
/// nothing: once the veth is gone nothing of the pod is left that a DEL
/// could free, and a restarted podswitchd drops a port whose interface is
/// gone. A runtime does not retry a failed DEL (podman's result cache
/// would leak), so DEL never fails on the daemon's account. One retry
/// reaches a daemon that was restarted meanwhile.
fn detach_from_daemon(conf: &NetConf, host: &str) {
    let request = Request::PortDel {
        interface: host.to_string(),
    };
    for attempt in 0..2 {
        let outcome = match connect(conf) {
            Ok(mut client) => match client.call(&request) {
                // Detached now, or never attached.
                Ok(_) | Err(ClientError::Daemon(_)) => return,
                Err(e) => format!("podswitchd stopped answering: {e}"),
            },
            Err(e) => format!("{} ({})", e.msg, e.details),
        };
        if attempt == 1 || outcome.contains("not reachable") {
            eprintln!("podswitch: DEL without podswitchd: {outcome}");
            return;
        }
    }
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult"))?;
    let addr = addressing(prev, conf.gateway_mode)?;
    let failed = |msg: String| CniError::new(Code::Failed, msg);
    let host = attach::host_interface(&env.container_id, &env.ifname);
    if !attach::host_exists(&host).map_err(|e| failed(e.to_string()))? {
        return Err(failed(format!("host interface {host} is missing")));
    }
    // The prevResult's address carries the interface's prefix already.
    let addr = Addressing {
        prefix_len: addr.prefix_len,
        ..addr
    };
    let on_pod = match addr.mode {
        GatewayMode::Bridge => addr,
        GatewayMode::ProxyArp => Addressing {
            prefix_len: 32,
            ..addr
        },
    };
    attach::check_pod(&env.netns, &env.ifname, on_pod).map_err(failed)?;
    let mut client = connect(conf)?;
    let ports: Vec<PortInfo> = call(&mut client, &Request::PortList)?;
    let Some(port) = ports.iter().find(|p| {
        p.interface == host
            && p.container_id.as_deref() == Some(env.container_id.as_str())
            && p.ip == Some(addr.ip)
    }) else {
        return Err(failed(format!(
            "podswitchd has no port {host} for container {}",
            env.container_id
        )));
    };
    // The daemon keeps the limit in whole bytes.
    let wanted = cni::egress_limit(conf)?.map(|l| EgressLimit {
        rate_bits: l.rate_bits / 8 * 8,
        burst_bits: l.burst_bits / 8 * 8,
    });
    if port.egress_limit != wanted {
        let text = |l: Option<EgressLimit>| {
            l.map_or("no limit".to_string(), |l| {
                format!("{} bit/s, burst {} bit", l.rate_bits, l.burst_bits)
            })
        };
        return Err(failed(format!(
            "podswitchd limits what port {host} sends to {}, the configuration asks {}",
            text(port.egress_limit),
            text(wanted)
        )));
    }
    let ipam = Ipam::find(conf, env)?;
    if cni::version_key(&ipam.version) >= (0, 4, 0) {
        let mut with_prev = conf.clone();
        with_prev.raw.insert("prevResult".into(), prev.clone());
        ipam.run("CHECK", &with_prev, &env.container_id, &env.ifname)?;
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |e: String| {
        CniError::new(
            Code::PluginNotAvailable,
            format!("podswitchd is not ready at {}", conf.socket),
        )
        .details(e)
    };
    let mut client = Client::connect(Path::new(&conf.socket), Duration::from_secs(5))
        .map_err(|e| unavailable(e.to_string()))?;
    client
        .call(&Request::Status)
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(())
}

fn gc(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let listed = conf
        .raw
        .get("cni.dev/valid-attachments")
        .or_else(|| conf.raw.get("cni.dev/attachments"));
    let valid: HashSet<(String, String)> = listed
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["containerID"].as_str()?.to_string(),
                a["ifname"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut client = connect(conf)?;
    let ports: Vec<PortInfo> = call(&mut client, &Request::PortList)?;
    let ipam = Ipam::find(conf, env)?;
    for port in &ports {
        let (Some(cid), Some(ifname)) = (&port.container_id, &port.ifname) else {
            continue; // not a CNI attachment (static ports, TAP pods)
        };
        if valid.contains(&(cid.clone(), ifname.clone())) {
            continue;
        }
        let host = &port.interface;
        call::<PortRef>(
            &mut client,
            &Request::PortDel {
                interface: host.clone(),
            },
        )?;
        attach::delete(host)
            .map_err(|e| CniError::new(Code::Failed, format!("deleting {host}")).details(e))?;
        // An IPAM plugin without GC (host-local before CNI 1.1) releases
        // the stale attachment's address on DEL.
        if !ipam.has_gc {
            ipam.run("DEL", conf, cid, ifname)?;
        }
    }
    if ipam.has_gc {
        ipam.run("GC", conf, "", "")?;
    }
    Ok(())
}
