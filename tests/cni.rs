//! The CNI plugin driven exactly as a container runtime drives it: CNI_*
//! environment variables, the network configuration on stdin, JSON on
//! stdout, with the real host-local IPAM plugin from Debian's
//! containernetworking-plugins (needs root; CI has it).

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, MODES};
use common::traffic::{ping, tcp_transfer, udp_burst};
use common::{require, unique, Netns};
use serde_json::{json, Value};

const CNI_PATH: &str = "/usr/lib/cni";

/// host-local's store for one test, removed on drop.
struct IpamDir(PathBuf);

impl IpamDir {
    fn new() -> IpamDir {
        IpamDir(std::env::temp_dir().join(unique("ipam")))
    }

    /// Addresses host-local holds (one file per address).
    fn allocated(&self) -> Vec<String> {
        let dir = self.0.join("podnet");
        std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for IpamDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn conf(version: &str, socket: &str, mode: &str, subnet: &str, ipam: &IpamDir) -> Value {
    json!({
        "cniVersion": version, "name": "podnet", "type": "podswitch",
        "socket": socket, "mtu": 1450, "gatewayMode": mode,
        "ipam": {
            "type": "host-local", "dataDir": ipam.0.to_str().unwrap(),
            "ranges": [[{ "subnet": subnet }]], "routes": [{ "dst": "0.0.0.0/0" }]
        }
    })
}

/// Runs the plugin in the node's namespace; returns (exit code, stdout as JSON or Null).
fn cni(
    node: &Netns,
    command: &str,
    container: &str,
    netns: Option<&Netns>,
    config: &str,
) -> (i32, Value) {
    cni_with_env(node, command, container, netns, config, &[])
}

/// [`cni`] with more environment variables (CNI_ARGS).
fn cni_with_env(
    node: &Netns,
    command: &str,
    container: &str,
    netns: Option<&Netns>,
    config: &str,
    extra: &[(&str, &str)],
) -> (i32, Value) {
    let plugin = common::cni_plugin();
    run_plugin(&plugin, node, command, container, netns, config, extra)
}

/// Runs `plugin` as a runtime does, in the node's namespace.
fn run_plugin(
    plugin: &std::path::Path,
    node: &Netns,
    command: &str,
    container: &str,
    netns: Option<&Netns>,
    config: &str,
    extra: &[(&str, &str)],
) -> (i32, Value) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.name])
        .arg(plugin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !command.is_empty() {
        cmd.env("CNI_COMMAND", command);
    }
    if !container.is_empty() {
        cmd.env("CNI_CONTAINERID", container)
            .env("CNI_IFNAME", "eth0");
    }
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", format!("/var/run/netns/{}", ns.name));
    }
    cmd.envs(extra.iter().copied());
    let mut child = cmd.spawn().expect("run the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), value)
}

fn host_links(node: &Netns) -> Vec<String> {
    let out = node.ip(&["-br", "link"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(['@', ' ']).next())
        .filter(|n| n.starts_with("psw"))
        .map(str::to_string)
        .collect()
}

fn pod_ports(cluster: &Cluster, n: usize) -> Vec<Value> {
    cluster.nodes[n]
        .ctl_json(&["port", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "pod")
        .cloned()
        .collect()
}

fn socket(cluster: &Cluster, n: usize) -> String {
    cluster.nodes[n]
        .daemon
        .as_ref()
        .unwrap()
        .socket
        .to_str()
        .unwrap()
        .to_string()
}

/// Nothing of an attachment is left: no host veth, no address held, no port.
fn assert_nothing_left(cluster: &Cluster, n: usize, ipam: &IpamDir, what: &str) {
    assert_eq!(
        host_links(&cluster.nodes[n].ns),
        Vec::<String>::new(),
        "{what}: veths left"
    );
    assert_eq!(
        ipam.allocated(),
        Vec::<String>::new(),
        "{what}: addresses left in host-local"
    );
    assert_eq!(
        pod_ports(cluster, n),
        Vec::<Value>::new(),
        "{what}: ports left in podswitchd"
    );
}

#[test]
fn add_check_del_in_both_gateway_modes_and_every_result_version() {
    require(&["ip", "ping", "/usr/bin/python3"]);
    for mode in MODES {
        let mut cluster = Cluster::new("vxlan", mode, 0);
        cluster.start(0, &[]);
        cluster.start(1, &[]);
        let ipams = [IpamDir::new(), IpamDir::new()];
        let pods = [Netns::new("cni-a"), Netns::new("cni-b")];
        let mut results = Vec::new();
        for n in 0..2 {
            let subnet = format!("10.244.{}.0/24", n + 1);
            let config = conf("1.1.0", &socket(&cluster, n), mode, &subnet, &ipams[n]).to_string();
            let (code, result) = cni(
                &cluster.nodes[n].ns,
                "ADD",
                &format!("pod{n}"),
                Some(&pods[n]),
                &config,
            );
            assert_eq!(code, 0, "{mode} ADD: {result}\n{}", cluster.logs());
            let ip = &result["ips"][0];
            let prefix = if mode == "bridge" { "/24" } else { "/32" };
            assert!(
                ip["address"].as_str().unwrap().ends_with(prefix),
                "{result}"
            );
            assert_eq!(
                result["interfaces"][ip["interface"].as_u64().unwrap() as usize]["sandbox"],
                format!("/var/run/netns/{}", pods[n].name)
            );
            assert_eq!(result["cniVersion"], "1.1.0");
            let routes = pods[n].ip(&["route"]);
            let routes = String::from_utf8_lossy(&routes.stdout);
            let gw = if mode == "bridge" {
                format!("default via 10.244.{}.1", n + 1)
            } else {
                "default via 169.254.1.1".into()
            };
            assert!(routes.contains(&gw), "{mode}: {routes}");
            results.push((config, result));
        }
        let ip_of = |r: &Value| {
            r["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        };
        let (a, b) = (ip_of(&results[0].1), ip_of(&results[1].1));
        assert!(
            ping(&pods[0], &b, 2) && ping(&pods[1], &a, 2),
            "{mode}: pods made by the plugin reach each other\n{}",
            cluster.logs()
        );
        tcp_transfer(&pods[0], &pods[1], &b, 1 << 20).unwrap();
        for n in 0..2 {
            let (config, result) = &results[n];
            let mut with_prev: Value = serde_json::from_str(config).unwrap();
            with_prev["prevResult"] = result.clone();
            let (code, out) = cni(
                &cluster.nodes[n].ns,
                "CHECK",
                &format!("pod{n}"),
                Some(&pods[n]),
                &with_prev.to_string(),
            );
            assert_eq!(code, 0, "{mode} CHECK: {out}");
            // CHECK notices a missing route.
            pods[n].ip(&["route", "del", "default"]);
            let (code, out) = cni(
                &cluster.nodes[n].ns,
                "CHECK",
                &format!("pod{n}"),
                Some(&pods[n]),
                &with_prev.to_string(),
            );
            assert_ne!(code, 0, "CHECK without the default route: {out}");
            for round in 0..2 {
                let (code, out) = cni(
                    &cluster.nodes[n].ns,
                    "DEL",
                    &format!("pod{n}"),
                    Some(&pods[n]),
                    config,
                );
                assert_eq!(code, 0, "{mode} DEL #{round}: {out}");
            }
            assert_nothing_left(&cluster, n, &ipams[n], "after DEL");
        }
        // Older result shapes: IPs carry "version": "4" before 1.0.0.
        for version in ["0.3.1", "0.4.0", "1.0.0"] {
            let config = conf(
                version,
                &socket(&cluster, 0),
                mode,
                "10.244.1.0/24",
                &ipams[0],
            )
            .to_string();
            let (code, result) = cni(&cluster.nodes[0].ns, "ADD", "old", Some(&pods[0]), &config);
            assert_eq!(code, 0, "{version}: {result}");
            assert_eq!(result["cniVersion"], version);
            assert_eq!(
                result["ips"][0].get("version").is_some(),
                version != "1.0.0",
                "{version}: {result}"
            );
            assert_eq!(
                cni(&cluster.nodes[0].ns, "DEL", "old", Some(&pods[0]), &config).0,
                0
            );
        }
        assert_nothing_left(&cluster, 0, &ipams[0], "after the version round");
    }
}

#[test]
fn every_failure_has_its_code_and_leaves_nothing_behind() {
    require(&["ip"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 0);
    cluster.start(0, &[]);
    let node = &cluster.nodes[0].ns;
    let ipam = IpamDir::new();
    let pod = Netns::new("cni-bad");
    let good = conf(
        "1.1.0",
        &socket(&cluster, 0),
        "bridge",
        "10.244.1.0/24",
        &ipam,
    )
    .to_string();
    let code_of = |v: &Value| v["code"].as_u64();

    let (rc, out) = cni(node, "DEL", "never-added", Some(&pod), &good);
    assert_eq!(rc, 0, "DEL without ADD: {out}");
    let (rc, out) = cni(node, "DEL", "never-added", None, &good);
    assert_eq!(rc, 0, "DEL without a netns: {out}");

    let (rc, out) = cni(
        node,
        "ADD",
        "c1",
        Some(&pod),
        "{\"cniVersion\": \"1.1.0\", ",
    );
    assert_eq!((rc, code_of(&out)), (1, Some(6)), "bad JSON: {out}");
    let (rc, out) = cni(node, "", "c1", Some(&pod), &good);
    assert_eq!((rc, code_of(&out)), (1, Some(4)), "no CNI_COMMAND: {out}");
    let (rc, out) = cni(node, "ADD", "c1", None, &good);
    assert_eq!((rc, code_of(&out)), (1, Some(4)), "no CNI_NETNS: {out}");
    // The node's own namespace (where the plugin runs) is no pod's
    // (issue 15): refused, nothing made.
    let (rc, out) = cni(node, "ADD", "c1", Some(node), &good);
    assert_eq!(
        (rc, code_of(&out)),
        (1, Some(4)),
        "CNI_NETNS = the node's: {out}"
    );
    let mut v: Value = serde_json::from_str(&good).unwrap();
    v["cniVersion"] = json!("2.0.0");
    let (rc, out) = cni(node, "ADD", "c1", Some(&pod), &v.to_string());
    assert_eq!(
        (rc, code_of(&out)),
        (1, Some(1)),
        "unknown cniVersion: {out}"
    );
    let mut v: Value = serde_json::from_str(&good).unwrap();
    v["ipam"]["type"] = json!("/usr/lib/cni/host-local");
    let (rc, out) = cni(node, "ADD", "c1", Some(&pod), &v.to_string());
    assert_eq!((rc, code_of(&out)), (1, Some(7)), "an IPAM path: {out}");
    assert!(out.to_string().contains("is a path"), "{out}");
    let mut v: Value = serde_json::from_str(&good).unwrap();
    v["gatewaymode"] = json!("bridge");
    let (rc, out) = cni(node, "ADD", "c1", Some(&pod), &v.to_string());
    assert_eq!((rc, code_of(&out)), (1, Some(2)), "a misspelt key: {out}");
    let down = conf(
        "1.1.0",
        "/run/podswitch-test-nothing-here.sock",
        "bridge",
        "10.244.1.0/24",
        &ipam,
    )
    .to_string();
    let (rc, out) = cni(node, "ADD", "c1", Some(&pod), &down);
    assert_eq!((rc, code_of(&out)), (1, Some(11)), "daemon down: {out}");
    // DEL while the daemon is down succeeds once the veth and the address
    // are gone (a runtime never retries a failed DEL, and its cache would
    // leak); the port it leaves is the daemon's to drop (issue 15).
    let (rc, out) = cni(node, "ADD", "c2", Some(&pod), &good);
    assert_eq!(rc, 0, "ADD c2: {out}");
    let (rc, out) = cni(node, "DEL", "c2", Some(&pod), &down);
    assert_eq!(rc, 0, "DEL, daemon down: {out}");
    assert_eq!(
        host_links(node),
        Vec::<String>::new(),
        "DEL, daemon down: veth left"
    );
    assert_eq!(
        ipam.allocated(),
        Vec::<String>::new(),
        "DEL, daemon down: address left"
    );
    // The port is still in the running daemon of this test: DEL again,
    // with the daemon reachable, takes it out.
    let (rc, out) = cni(node, "DEL", "c2", Some(&pod), &good);
    assert_eq!(rc, 0, "DEL c2 again: {out}");
    let (rc, out) = cni(node, "STATUS", "", None, &down);
    assert_eq!(
        (rc, code_of(&out)),
        (1, Some(50)),
        "STATUS, daemon down: {out}"
    );
    assert_eq!(
        cni(node, "STATUS", "", None, &good).0,
        0,
        "STATUS, daemon up"
    );
    // A failure after IPAM and the veth: podswitchd refuses an address
    // outside its pod CIDR, and ADD undoes everything before it.
    let outside = conf(
        "1.1.0",
        &socket(&cluster, 0),
        "bridge",
        "10.244.9.0/24",
        &ipam,
    )
    .to_string();
    let (rc, out) = cni(node, "ADD", "c1", Some(&pod), &outside);
    assert_eq!(rc, 1, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("podswitchd"), "{out}");
    assert_nothing_left(&cluster, 0, &ipam, "after failed ADDs");
    let links = pod.ip(&["-br", "link"]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("eth0"),
        "pod side removed"
    );

    let (rc, out) = cni(node, "VERSION", "", None, "{\"cniVersion\":\"1.0.0\"}");
    assert_eq!(rc, 0);
    assert_eq!(
        out["supportedVersions"],
        json!(["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn fifty_concurrent_adds_then_dels_and_gc() {
    require(&["ip"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 0);
    cluster.start(0, &[]);
    let ipam = IpamDir::new();
    let config = conf(
        "1.1.0",
        &socket(&cluster, 0),
        "bridge",
        "10.244.1.0/24",
        &ipam,
    )
    .to_string();
    let pods: Vec<Netns> = (0..50).map(|i| Netns::new(&format!("many{i}"))).collect();
    let node = &cluster.nodes[0].ns;
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let config = &config;
                s.spawn(move || {
                    let (rc, out) = cni(node, "ADD", &format!("ctr{i}"), Some(pod), config);
                    assert_eq!(rc, 0, "ADD {i}: {out}");
                    out["ips"][0]["address"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        ips.iter().collect::<HashSet<_>>().len(),
        50,
        "50 distinct addresses"
    );
    assert_eq!(pod_ports(&cluster, 0).len(), 50);
    assert_eq!(host_links(node).len(), 50);

    // GC keeps the attachments it is told are valid.
    let mut gc: Value = serde_json::from_str(&config).unwrap();
    gc["cni.dev/valid-attachments"] = json!((0..40)
        .map(|i| json!({"containerID": format!("ctr{i}"), "ifname": "eth0"}))
        .collect::<Vec<_>>());
    let (rc, out) = cni(node, "GC", "", None, &gc.to_string());
    assert_eq!(rc, 0, "GC: {out}\n{}", cluster.logs());
    assert_eq!(
        pod_ports(&cluster, 0).len(),
        40,
        "GC removed the 10 stale ports"
    );
    assert_eq!(host_links(node).len(), 40);
    assert_eq!(ipam.allocated().len(), 40, "GC released their addresses");

    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let config = &config;
            s.spawn(move || {
                let (rc, out) = cni(node, "DEL", &format!("ctr{i}"), Some(pod), config);
                assert_eq!(rc, 0, "DEL {i}: {out}");
            });
        }
    });
    assert_nothing_left(&cluster, 0, &ipam, "after 50 DELs");
}

#[test]
fn pods_survive_a_killed_daemon_without_any_cni_call() {
    require(&["ip", "ping", "/usr/bin/python3", "kill"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 0);
    cluster.start(0, &[]);
    cluster.start(1, &[]);
    let ipams = [IpamDir::new(), IpamDir::new()];
    let pods = [Netns::new("keep-a"), Netns::new("keep-b")];
    let mut ips = Vec::new();
    for n in 0..2 {
        let config = conf(
            "1.1.0",
            &socket(&cluster, n),
            "bridge",
            &format!("10.244.{}.0/24", n + 1),
            &ipams[n],
        )
        .to_string();
        let (rc, out) = cni(
            &cluster.nodes[n].ns,
            "ADD",
            &format!("keep{n}"),
            Some(&pods[n]),
            &config,
        );
        assert_eq!(rc, 0, "{out}");
        ips.push(
            out["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert!(ping(&pods[0], &ips[1], 2));
    tcp_transfer(&pods[0], &pods[1], &ips[1], 1 << 20).unwrap();

    // kill -9: no cleanup at all, then a fresh daemon with the same state.
    cluster.nodes[0].daemon.as_mut().unwrap().kill_9();
    assert!(!ping(&pods[0], &ips[1], 1), "no daemon, no forwarding");
    cluster.start(0, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ping(&pods[0], &ips[1], 1) {
        assert!(
            Instant::now() < deadline,
            "traffic did not resume\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ping(&pods[1], &ips[0], 2));
    tcp_transfer(&pods[1], &pods[0], &ips[0], 1 << 20).unwrap();
    assert!(
        cluster.logs().contains("saved port restored"),
        "{}",
        cluster.logs()
    );
}

/// The address a successful ADD gave the pod.
fn pod_ip(result: &Value) -> String {
    let address = result["ips"][0]["address"].as_str().expect("an address");
    address.split('/').next().unwrap().to_string()
}

/// The egress limit of node 0's port for the pod at `ip` (null: none).
fn limit_of(cluster: &Cluster, ip: &str) -> Option<Value> {
    pod_ports(cluster, 0)
        .into_iter()
        .find(|p| p["ip"] == ip)
        .map(|p| p["egress_limit"].clone())
}

/// A reason's drop count on node `n`.
fn drops(cluster: &Cluster, n: usize, reason: &str) -> u64 {
    cluster.nodes[n].ctl_json(&["stats"])["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// The `bandwidth` capability (what Kubernetes makes of a pod's
/// `kubernetes.io/egress-bandwidth`) limits what the pod sends, which the
/// bandwidth plugin's own IFB redirect cannot do here (podswitch reads the
/// pod's frames before that hook): the port shows the limit; of a burst
/// of datagrams, what the burst and the rate allow arrives intact and the
/// rest is counted as `egress_rate_limited`; TCP whose super-frames are
/// larger than the burst still completes (shaped, not policed: see
/// engine/src/egress_limit.rs); a daemon restarted after kill -9 keeps the
/// limit; a bad limit is refused with nothing left. The limit is the
/// worker's, whatever reads the pod: both pod port kinds.
#[test]
fn the_bandwidth_capability_limits_what_an_af_packet_pod_sends() {
    bandwidth_limits_what_a_pod_sends("af-packet");
}

/// [`the_bandwidth_capability_limits_what_an_af_packet_pod_sends`] with
/// AF_XDP pod ports.
#[test]
fn the_bandwidth_capability_limits_what_an_af_xdp_pod_sends() {
    bandwidth_limits_what_a_pod_sends("af-xdp");
}

fn bandwidth_limits_what_a_pod_sends(kind: &str) {
    require(&[
        "ip",
        "ping",
        "tc",
        "/usr/bin/python3",
        "/usr/lib/cni/bandwidth",
    ]);
    let mut cluster = Cluster::new("vxlan", "bridge", 0);
    cluster.port_kind = kind.into();
    cluster.start(0, &[]);
    let ipam = IpamDir::new();
    // One version for the whole chain, as in a configuration list: the
    // newest Debian's bandwidth plugin speaks.
    let base = conf(
        "1.0.0",
        &socket(&cluster, 0),
        "bridge",
        "10.244.1.0/24",
        &ipam,
    );
    let with_bandwidth = |base: &Value, bandwidth: Value| {
        let mut config = base.clone();
        config["capabilities"] = json!({ "bandwidth": true });
        config["runtimeConfig"] = json!({ "bandwidth": bandwidth });
        config.to_string()
    };
    // 400 kbit/s (50 kB/s) and a 320 kbit (40 kB) burst: about 38 of the
    // 1,042-byte frames below at once, then 48 a second; a frame that would
    // wait more than 25 ms is dropped.
    let slow = with_bandwidth(
        &base,
        json!({
            "egressRate": 400_000, "egressBurst": 320_000,
            "ingressRate": 1_000_000_000u64, "ingressBurst": 1_000_000_000u64
        }),
    );
    // 80 Mbit/s and a 160 kbit (20 kB) burst, under a 64 kB super-frame.
    let fast = with_bandwidth(
        &base,
        json!({ "egressRate": 80_000_000, "egressBurst": 160_000 }),
    );
    let pods = [
        Netns::new("bw-slow"),
        Netns::new("bw-fast"),
        Netns::new("bw-free"),
    ];
    let mut ips = Vec::new();
    let mut results = Vec::new();
    for (i, config) in [&slow, &fast, &base.to_string()].into_iter().enumerate() {
        let (rc, out) = cni(
            &cluster.nodes[0].ns,
            "ADD",
            &format!("bw{i}"),
            Some(&pods[i]),
            config,
        );
        assert_eq!(rc, 0, "{out}");
        ips.push(pod_ip(&out));
        results.push(out);
    }
    assert_eq!(
        limit_of(&cluster, &ips[0]),
        Some(json!({ "rate_bits": 400_000, "burst_bits": 320_000 }))
    );
    assert_eq!(
        limit_of(&cluster, &ips[2]),
        Some(Value::Null),
        "no limit asked"
    );
    // CHECK holds the port to the limit the configuration asks.
    let check = |config: &str, prev: &Value| {
        let mut with_prev: Value = serde_json::from_str(config).unwrap();
        with_prev["prevResult"] = prev.clone();
        cni(
            &cluster.nodes[0].ns,
            "CHECK",
            "bw0",
            Some(&pods[0]),
            &with_prev.to_string(),
        )
    };
    let (rc, out) = check(&slow, &results[0]);
    assert_eq!(rc, 0, "CHECK with the limit asked: {out}");
    let (rc, out) = check(&fast, &results[0]);
    assert_ne!(rc, 0, "CHECK with another limit: {out}");
    assert!(
        out["msg"].as_str().unwrap_or("").contains("320000 bit"),
        "{out}"
    );
    let (rc, out) = check(&base.to_string(), &results[0]);
    assert_ne!(rc, 0, "CHECK without the limit: {out}");
    let table = cluster.nodes[0].ctl(&["port", "list"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("400kbit/s, burst 320kbit"), "{table}");
    assert!(table.contains("80Mbit/s, burst 160kbit"), "{table}");
    assert!(ping(&pods[2], &ips[0], 2), "the limited pod answers");

    // 500 datagrams at once from the slow pod.
    let (before, full_before) = (
        drops(&cluster, 0, "egress_rate_limited"),
        drops(&cluster, 0, "rx_queue_full"),
    );
    let got = udp_burst(&pods[0], &pods[2], &ips[2], 500, 1000, |_| {});
    let limited = (drops(&cluster, 0, "egress_rate_limited") - before) as usize;
    let queue_full = (drops(&cluster, 0, "rx_queue_full") - full_before) as usize;
    assert!(got.iter().all(|&n| n >= 0), "damaged datagrams: {got:?}");
    let slow_port = pod_ports(&cluster, 0)
        .into_iter()
        .find(|p| p["ip"] == ips[0].as_str())
        .map(|p| p["interface"].as_str().unwrap().to_string())
        .unwrap();
    let held = cluster.nodes[0].port_counter(&slow_port, "egress_held");
    assert!(
        held >= 1 && (held as usize) < got.len(),
        "{held} frames held of the {} that arrived",
        got.len()
    );
    assert!(
        (25..=100).contains(&got.len()),
        "{kind}: {} of 500 datagrams arrived; the burst allows about 38, the rate 48 a second",
        got.len()
    );
    assert!(
        limited + got.len() <= 500 && limited + got.len() + queue_full >= 500,
        "500 sent: {} arrived, {limited} counted as egress_rate_limited, {queue_full} as rx_queue_full",
        got.len()
    );
    // The unlimited pod's burst is not policed: what does not arrive, the
    // kernel dropped before podswitch read it (a burst from Python can
    // outrun a worker on two busy CPUs), counted as such. A ping first:
    // while the pod's kernel resolves its neighbour it queues only 208 kB
    // (unres_qlen_bytes) and drops the rest itself.
    assert!(ping(&pods[2], &ips[1], 1));
    let (limited_before, full_before) = (
        drops(&cluster, 0, "egress_rate_limited"),
        drops(&cluster, 0, "rx_queue_full"),
    );
    let free = udp_burst(&pods[2], &pods[1], &ips[1], 200, 1000, |_| {});
    let full = drops(&cluster, 0, "rx_queue_full") - full_before;
    assert_eq!(
        drops(&cluster, 0, "egress_rate_limited"),
        limited_before,
        "the pod without a limit was policed"
    );
    assert_eq!(
        free.len() as u64 + full,
        200,
        "{} of 200 arrived, {full} dropped as rx_queue_full",
        free.len()
    );

    // The bandwidth plugin chained after podswitch, as a cluster that
    // limits pods configures it: it finds podswitch's host interface in
    // the result and puts its IFB redirect and TBFs there, where they
    // leave podswitch's port working (and its limit podswitch's).
    let bandwidth = |command: &str, prev: &Value| {
        let config = json!({
            "cniVersion": "1.0.0", "name": "podnet", "type": "bandwidth",
            "capabilities": { "bandwidth": true },
            "runtimeConfig": { "bandwidth": { "egressRate": 80_000_000, "egressBurst": 160_000 } },
            "prevResult": prev,
        });
        let plugin = std::path::Path::new(CNI_PATH).join("bandwidth");
        let pod = &pods[1];
        run_plugin(
            &plugin,
            &cluster.nodes[0].ns,
            command,
            "bw1",
            Some(pod),
            &config.to_string(),
            &[],
        )
    };
    let (rc, out) = bandwidth("ADD", &results[1]);
    assert_eq!(rc, 0, "the bandwidth plugin after podswitch: {out}");
    let qdiscs = cluster.nodes[0].ns.exec("tc", &["qdisc", "show"]);
    assert!(
        String::from_utf8_lossy(&qdiscs.stdout).contains("tbf"),
        "the bandwidth plugin made no TBF: {qdiscs:?}"
    );
    // TCP from the fast pod, whose super-frames outgrow its burst.
    tcp_transfer(&pods[1], &pods[2], &ips[2], 4 << 20).unwrap();
    let (rc, out) = bandwidth("DEL", &results[1]);
    assert_eq!(rc, 0, "{out}");

    // kill -9 and a fresh daemon: the limit comes back with the port.
    cluster.nodes[0].daemon.as_mut().unwrap().kill_9();
    cluster.start(0, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ping(&pods[2], &ips[0], 1) {
        assert!(
            Instant::now() < deadline,
            "traffic did not resume\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        limit_of(&cluster, &ips[0]),
        Some(json!({ "rate_bits": 400_000, "burst_bits": 320_000 })),
        "after a restart"
    );
    let before = drops(&cluster, 0, "egress_rate_limited");
    let got = udp_burst(&pods[0], &pods[2], &ips[2], 300, 1000, |_| {});
    assert!(
        got.len() <= 100,
        "{} of 300 arrived after a restart",
        got.len()
    );
    assert!(drops(&cluster, 0, "egress_rate_limited") - before >= 150);

    // The restarted daemon listens on a socket of its own.
    let base = conf(
        "1.0.0",
        &socket(&cluster, 0),
        "bridge",
        "10.244.1.0/24",
        &ipam,
    );
    for (i, pod) in pods.iter().enumerate() {
        let (rc, out) = cni(
            &cluster.nodes[0].ns,
            "DEL",
            &format!("bw{i}"),
            Some(pod),
            &base.to_string(),
        );
        assert_eq!(rc, 0, "{out}");
    }
    // A rate without a burst is refused, as the bandwidth plugin refuses it.
    let pod = Netns::new("bw-bad");
    let (rc, out) = cni(
        &cluster.nodes[0].ns,
        "ADD",
        "bw-bad",
        Some(&pod),
        &with_bandwidth(&base, json!({ "egressRate": 1_000_000 })),
    );
    assert_ne!(rc, 0, "{out}");
    assert_eq!(out["code"], 7, "{out}");
    assert!(
        out["msg"].as_str().unwrap_or("").contains("egressBurst"),
        "{out}"
    );
    assert_nothing_left(&cluster, 0, &ipam, "a refused bandwidth limit");
}

/// The runtime chooses the pod's MAC: `MAC=` in CNI_ARGS (podman's
/// `--mac-address`) or the `mac` capability in runtimeConfig, which wins.
/// The pod's interface, the result and the daemon's port all carry it,
/// and traffic flows; a MAC no interface can own is refused before
/// anything is made (issue 15, item 6).
#[test]
fn the_runtime_chooses_the_pod_mac() {
    require(&["ip", "ping"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 0);
    cluster.start(0, &[]);
    let ipam = IpamDir::new();
    let base = conf(
        "1.1.0",
        &socket(&cluster, 0),
        "bridge",
        "10.244.1.0/24",
        &ipam,
    );
    let cases: [(&str, Option<&str>, &str); 2] = [
        (
            "IgnoreUnknown=1;MAC=0a:58:0a:f4:01:63",
            None,
            "0a:58:0a:f4:01:63",
        ),
        (
            "IgnoreUnknown=1;MAC=0a:58:0a:f4:01:64",
            Some("0a:58:0a:f4:01:65"),
            "0a:58:0a:f4:01:65",
        ),
    ];
    for (i, (args, runtime_mac, expected)) in cases.into_iter().enumerate() {
        let mut config = base.clone();
        if let Some(mac) = runtime_mac {
            config["runtimeConfig"] = json!({ "mac": mac });
        }
        let pod = Netns::new("mac");
        let container = format!("mac{i}");
        let (rc, out) = cni_with_env(
            &cluster.nodes[0].ns,
            "ADD",
            &container,
            Some(&pod),
            &config.to_string(),
            &[("CNI_ARGS", args)],
        );
        assert_eq!(rc, 0, "{out}");
        let result_mac = out["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "eth0")
            .map(|i| i["mac"].clone());
        assert_eq!(result_mac, Some(json!(expected)), "{out}");
        let link = pod.ip(&["-br", "link", "show", "eth0"]);
        assert!(
            String::from_utf8_lossy(&link.stdout).contains(expected),
            "{link:?}"
        );
        let ports = pod_ports(&cluster, 0);
        assert!(ports.iter().any(|p| p["mac"] == expected), "{ports:?}");
        assert!(ping(&pod, "10.244.1.1", 2), "the pod reaches its gateway");
        let (rc, out) = cni(
            &cluster.nodes[0].ns,
            "DEL",
            &container,
            Some(&pod),
            &config.to_string(),
        );
        assert_eq!(rc, 0, "{out}");
    }
    for (args, runtime_mac, code) in [
        ("MAC=01:00:5e:00:00:01", None, 4),
        ("MAC=0a:58:zz:f4:01:02", None, 4),
        ("", Some("ff:ff:ff:ff:ff:ff"), 7),
    ] {
        let mut config = base.clone();
        if let Some(mac) = runtime_mac {
            config["runtimeConfig"] = json!({ "mac": mac });
        }
        let pod = Netns::new("badmac");
        let (rc, out) = cni_with_env(
            &cluster.nodes[0].ns,
            "ADD",
            "badmac",
            Some(&pod),
            &config.to_string(),
            &[("CNI_ARGS", args)],
        );
        assert_ne!(rc, 0, "{args} {runtime_mac:?}: {out}");
        assert_eq!(out["code"], code, "{args} {runtime_mac:?}: {out}");
        assert!(
            out["msg"].as_str().unwrap_or("").contains("MAC")
                || out["msg"].as_str().unwrap_or("").contains("mac"),
            "{out}"
        );
        assert_nothing_left(&cluster, 0, &ipam, "a refused MAC");
    }
}

/// host-local behind a wrapper that fails one ADD in eight before it
/// allocates and one in eight after (the address stays held, as an IPAM
/// plugin that crashes half-way leaves it, until a DEL releases it).
const FLAKY_IPAM: &str = r#"#!/bin/sh
roll=$(od -An -N1 -tu1 /dev/urandom | tr -d ' ')
if [ "$CNI_COMMAND" = ADD ] && [ $((roll % 8)) -eq 0 ]; then
  echo '{"cniVersion":"1.0.0","code":11,"msg":"injected IPAM failure before allocating"}'
  exit 1
fi
if [ "$CNI_COMMAND" = ADD ] && [ $((roll % 8)) -eq 1 ]; then
  /usr/lib/cni/host-local >/dev/null
  echo '{"cniVersion":"1.0.0","code":11,"msg":"injected IPAM failure after allocating"}'
  exit 1
fi
exec /usr/lib/cni/host-local
"#;

/// What went wrong in the campaign's ADDs, by cause.
#[derive(Debug, Default)]
struct Faults {
    adds_ok: usize,
    netns_gone_before_add: usize,
    ipam_injected: usize,
    daemon_unreachable: usize,
    other_add_failures: Vec<String>,
    netns_gone_before_del: usize,
    daemon_kills: usize,
    gcs: usize,
}

/// The CNI fault campaign (issue 15): ADD/DEL cycles (1000, or
/// PODSWITCH_CNI_CYCLES) from four concurrent "runtimes" while faults are
/// injected: podswitchd killed with SIGKILL and restarted every 1.5 s
/// (mid-ADD, mid-DEL, between), an IPAM plugin failing before and after it
/// allocates, pod namespaces that vanish before ADD or before DEL, and GC
/// running beside it all with the attachments the runtime knows. Every DEL
/// succeeds (a runtime does not retry one), every ADD failure has a known
/// cause, and at the end nothing is left: no veth, no address held, no
/// port in the daemon.
#[test]
fn cni_fault_campaign_leaves_nothing_behind() {
    require(&["ip", "kill", "od"]);
    let cycles: usize = std::env::var("PODSWITCH_CNI_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut cluster = Cluster::new("vxlan", "bridge", 0);
    // Restarts drop the ports whose veth went while the daemon was down.
    cluster
        .expected_warnings
        .push("saved port dropped: the interface is gone");
    cluster.start(0, &[]);
    let ipam = IpamDir::new();
    let plugins = std::env::temp_dir().join(unique("cni-path"));
    std::fs::create_dir_all(&plugins).unwrap();
    let flaky = plugins.join("flaky-ipam");
    std::fs::write(&flaky, FLAKY_IPAM).unwrap();
    std::fs::set_permissions(&flaky, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cni_path = format!("{}:{CNI_PATH}", plugins.display());
    let mut config = conf(
        "1.1.0",
        &socket(&cluster, 0),
        "bridge",
        "10.244.1.0/24",
        &ipam,
    );
    config["ipam"]["type"] = json!("flaky-ipam");
    let config = config.to_string();

    // The daemon, restarted by hand on the same socket and state file.
    let mut daemon = cluster.nodes[0].daemon.take().unwrap();
    let node_ns = cluster.nodes[0].ns.name.clone();
    let spawn_daemon = |daemon: &common::cluster::Daemon| {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&daemon.log.0)
            .unwrap();
        Command::new("ip")
            .args(["netns", "exec", &node_ns, common::cluster::podswitchd()])
            .arg("--config")
            .arg(&daemon.config.0)
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--state-file")
            .arg(&daemon.state.0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let daemon_ready = |daemon: &common::cluster::Daemon| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !Command::new(common::cluster::podswitchctl())
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "{}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let known = std::sync::Mutex::new(HashSet::<String>::new());
    let faults = std::sync::Mutex::new(Faults::default());
    let next_cycle = std::sync::atomic::AtomicUsize::new(0);
    let running = std::sync::atomic::AtomicUsize::new(4);
    let node = &cluster.nodes[0].ns;
    std::thread::scope(|s| {
        for worker in 0..4u64 {
            let (config, cni_path) = (&config, &cni_path);
            let (known, faults, next_cycle, running) = (&known, &faults, &next_cycle, &running);
            s.spawn(move || {
                // Counts this worker out even if it panics, so the fault
                // loop below ends and the panic is reported.
                struct Done<'a>(&'a std::sync::atomic::AtomicUsize);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                let _done = Done(running);
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (worker + 1);
                let mut roll = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % 10
                };
                let env = [("CNI_PATH", cni_path.as_str())];
                loop {
                    let cycle = next_cycle.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if cycle >= cycles {
                        break;
                    }
                    let id = format!("fault{cycle}");
                    known.lock().unwrap().insert(id.clone());
                    let mut pod = Some(Netns::new("fault"));
                    let vanish_before_add = roll() == 0;
                    if vanish_before_add {
                        pod.take();
                    }
                    let netns = pod
                        .as_ref()
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| unique("gone"));
                    let run = |command: &str| {
                        let mut full = vec![("CNI_NETNS", format!("/var/run/netns/{netns}"))];
                        full.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
                        let extra: Vec<(&str, &str)> =
                            full.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        cni_with_env(node, command, &id, None, config, &extra)
                    };
                    let (rc, out) = run("ADD");
                    {
                        let mut f = faults.lock().unwrap();
                        let msg = out.to_string();
                        if rc == 0 {
                            f.adds_ok += 1;
                        } else if vanish_before_add && msg.contains("does not exist") {
                            f.netns_gone_before_add += 1;
                        } else if msg.contains("injected IPAM failure") {
                            f.ipam_injected += 1;
                        } else if msg.contains("podswitchd") {
                            f.daemon_unreachable += 1;
                        } else {
                            f.other_add_failures.push(msg);
                        }
                    }
                    if roll() == 0 && pod.take().is_some() {
                        faults.lock().unwrap().netns_gone_before_del += 1;
                    }
                    // A runtime calls DEL after every ADD, failed or not.
                    let (rc, out) = run("DEL");
                    assert_eq!(rc, 0, "DEL {id}: {out}");
                    drop(pod);
                    known.lock().unwrap().remove(&id);
                }
            });
        }
        // Faults: kill -9 and restart every 1.5 s; GC every 0.5 s with the
        // attachments the runtime knows (no ADD starts meanwhile: a
        // runtime lists every attachment it is making).
        let mut last_kill = Instant::now();
        while running.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            std::thread::sleep(Duration::from_millis(500));
            {
                let known = known.lock().unwrap_or_else(|e| e.into_inner());
                let mut gc: Value = serde_json::from_str(&config).unwrap();
                gc["cni.dev/valid-attachments"] = json!(known
                    .iter()
                    .map(|id| json!({"containerID": id, "ifname": "eth0"}))
                    .collect::<Vec<_>>());
                let env = [("CNI_PATH", cni_path.as_str())];
                let (rc, out) = cni_with_env(node, "GC", "", None, &gc.to_string(), &env);
                // GC with the daemon down is an error the runtime retries.
                assert!(
                    rc == 0 || out.to_string().contains("podswitchd"),
                    "GC: {out}"
                );
                faults.lock().unwrap().gcs += usize::from(rc == 0);
            }
            if last_kill.elapsed() >= Duration::from_millis(1500) {
                daemon.kill_9();
                faults.lock().unwrap().daemon_kills += 1;
                daemon.child = Some(spawn_daemon(&daemon));
                last_kill = Instant::now();
            }
        }
    });
    daemon_ready(&daemon);
    cluster.nodes[0].daemon = Some(daemon);
    let faults = faults.into_inner().unwrap();
    eprintln!("CNI fault campaign, {cycles} cycles: {faults:?}");
    assert!(
        faults.other_add_failures.is_empty(),
        "ADD failures of no known cause: {:?}",
        faults.other_add_failures
    );
    assert!(
        faults.adds_ok > 0
            && faults.netns_gone_before_add > 0
            && faults.ipam_injected > 0
            && faults.netns_gone_before_del > 0
            && faults.daemon_kills > 0
            && faults.gcs > 0,
        "every fault was injected at least once: {faults:?}"
    );
    // The restarted daemon drops the ports whose veth went while it was
    // down as it restores them; give it the moment that takes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pod_ports(&cluster, 0).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_nothing_left(&cluster, 0, &ipam, "after the fault campaign");
    let _ = std::fs::remove_dir_all(&plugins);
}

/// A host-local configuration with no subnet gets the node's, asked of
/// podswitchd (as flannel's plugin reads its subnet file; with a lease
/// store the subnet is the one the node leased), and the pods get the
/// node's MTU when the configuration names none. DEL still releases the
/// address with the daemon stopped.
#[test]
fn host_local_without_a_subnet_gets_the_nodes() {
    require(&["ip", "ping", "/usr/lib/cni/host-local"]);
    let mut cluster = Cluster::new("host-gw", "bridge", 0);
    cluster.port_kind = "af-packet".into();
    cluster.start(0, &[]);
    let ipam = IpamDir::new();
    let mut config = conf("1.1.0", &socket(&cluster, 0), "bridge", "unused", &ipam);
    config["ipam"].as_object_mut().unwrap().remove("ranges");
    config.as_object_mut().unwrap().remove("mtu");
    let pod = Netns::new("pod");
    let node = &cluster.nodes[0].ns;
    let (code, result) = cni(node, "ADD", "c1", Some(&pod), &config.to_string());
    assert_eq!(code, 0, "{result}");
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    assert!(
        address.starts_with("10.244.1.") && address.ends_with("/24"),
        "{result}"
    );
    let link =
        String::from_utf8_lossy(&pod.ip(&["-o", "link", "show", "eth0"]).stdout).into_owned();
    assert!(link.contains("mtu 1500"), "host-gw's pod MTU: {link}");
    assert!(ping(&pod, "10.244.1.1", 1), "the pod reaches its gateway");
    assert_eq!(ipam.allocated().len(), 1);

    cluster.nodes[0].daemon.as_mut().unwrap().stop();
    let node = &cluster.nodes[0].ns;
    let (code, result) = cni(node, "DEL", "c1", Some(&pod), &config.to_string());
    assert_eq!(code, 0, "{result}");
    assert!(ipam.allocated().is_empty(), "{:?}", ipam.allocated());
}
