//! `podswitchctl lab`: simulated clusters for each dataplane and backend,
//! side by side, and nothing left behind (needs root; CI has it).

mod common;

use std::process::Command;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use common::require;
use common::traffic::{
    path_mtu_is_told, ping, ping_once_output, traffic_matrix, NodeSite, PodSite, Sites,
};
use serde_json::Value;

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_podswitchctl"))
        .args(args)
        .output()
        .expect("run podswitchctl")
}

/// The machine's CPUs, shared by the lab tests and taken whole by the
/// Open vSwitch one. Open vSwitch's polling threads never sleep, one
/// pinned to each CPU of this two-CPU VM, and its guide gives them CPUs
/// of their own. Beside the other lab tests (podswitchd's realtime
/// workers, iperf3, namespaces made and torn down), its datapath
/// accepted frames that its ports then did not put on the wire for more
/// than 3 s (7 of 20 datagrams in one run: its datapath counted all 20
/// pushed into the tunnel, the underlay device sent 13). That failed
/// this test in one CI run of about eight (two tests at a time), and in
/// two of three runs of the file with four at a time and a busy loop on
/// one CPU. Taking the CPUs whole, it failed in none of eight runs under
/// that same load. This is Open vSwitch's operating condition, not a
/// check made easier: every assertion stays as strict.
static CPUS: RwLock<()> = RwLock::new(());

/// For a lab test that runs beside the others.
fn cpus_shared() -> RwLockReadGuard<'static, ()> {
    CPUS.read().unwrap_or_else(PoisonError::into_inner)
}

/// For the Open vSwitch test: no other lab test runs while it does.
fn cpus_alone() -> RwLockWriteGuard<'static, ()> {
    CPUS.write().unwrap_or_else(PoisonError::into_inner)
}

/// A unique lab name for this test process.
fn name(what: &str) -> String {
    format!("t{}{what}", std::process::id() % 10000)
}

/// The daemons' logs of lab `name`: (path, text).
fn lab_logs(name: &str) -> Vec<(String, String)> {
    let dir = format!("/run/podswitch-lab/{name}");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .map(|path| {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            (path.display().to_string(), log)
        })
        .collect()
}

/// Takes a lab down when dropped, a failing test included; a passing
/// test's daemons must have logged no WARN or ERROR line (checked before
/// the lab and its logs go).
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let mut unexpected = Vec::new();
        if !std::thread::panicking() {
            for (path, log) in lab_logs(&self.0) {
                for line in common::cluster::unexpected_warnings(&log, &[]) {
                    unexpected.push(format!("{path}: {line}"));
                }
            }
        }
        let _ = ctl(&["lab", "down", "--name", &self.0]);
        assert!(
            unexpected.is_empty(),
            "unexpected WARN/ERROR lines in the lab's logs:\n{}",
            unexpected.join("\n")
        );
    }
}

fn up(name: &str, dataplane: &str, backend: &str, mode: &str) -> Value {
    up_with(
        name,
        &[
            "--dataplane",
            dataplane,
            "--backend",
            backend,
            "--gateway-mode",
            mode,
        ],
    )
}

/// `lab up` of two nodes with two pods each, and `options`.
fn up_with(name: &str, options: &[&str]) -> Value {
    let mut args = vec![
        "lab",
        "up",
        "--name",
        name,
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
    ];
    args.extend_from_slice(options);
    args.push("--json");
    let out = ctl(&args);
    assert!(
        out.status.success(),
        "lab up {options:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("lab status JSON")
}

/// podswitchd's nftables table in namespace `netns`, as `nft list`
/// prints it (the test fails if there is none).
fn podswitch_table(netns: &str) -> String {
    common::stdout_of(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "nft",
            "list",
            "table",
            "ip",
            "podswitch",
        ],
    )
}

/// `port list` of a lab node's podswitchd, as `lab status --json` names
/// the node.
fn node_ports(node: &Value) -> Value {
    let socket = node["socket"].as_str().expect("a daemon's socket");
    let out = ctl(&["--socket", socket, "--json", "port", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("port list JSON")
}

fn exec_ok(name: &str, pod: &str, cmd: &[&str]) -> bool {
    let mut args = vec!["lab", "exec", "--name", name, pod, "--"];
    args.extend_from_slice(cmd);
    ctl(&args).status.success()
}

/// Every pod pings every other pod.
fn all_reach(name: &str, status: &Value) {
    let pods = status["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 4);
    for a in pods {
        for b in pods.iter().filter(|b| b["name"] != a["name"]) {
            let ok = exec_ok(
                name,
                a["name"].as_str().unwrap(),
                &["ping", "-c", "1", "-W", "2", b["ip"].as_str().unwrap()],
            );
            assert!(ok, "lab {name}: {} -> {}", a["name"], b["ip"]);
        }
    }
}

/// `lab up --name name options` fails, its error naming `naming` (the
/// option that would make it work).
fn refused(name: &str, options: &[&str], naming: &str) {
    let mut args = vec!["lab", "up", "--name", name];
    args.extend_from_slice(options);
    let out = ctl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lab up {options:?} was built");
    assert!(stderr.contains(naming), "{stderr}");
}

/// No namespace, process or file of the lab is left.
fn assert_gone(name: &str) {
    let list = common::stdout_of("ip", &["netns", "list"]);
    assert!(
        !list.contains(&format!("lab-{name}-")),
        "namespaces left: {list}"
    );
    assert!(
        !std::path::Path::new(&format!("/run/podswitch-lab/{name}")).exists(),
        "state left"
    );
    let ps = common::stdout_of("ps", &["-eo", "args"]);
    assert!(
        !ps.contains(&format!("/run/podswitch-lab/{name}/")),
        "daemons left: {ps}"
    );
}

#[test]
fn every_dataplane_and_backend_builds_a_working_lab_and_leaves_nothing() {
    let _cpus = cpus_shared();
    require(&["ip", "ping", "bridge", "sysctl", "ps"]);
    let cases = [
        ("podswitch", "vxlan", "bridge"),
        ("podswitch", "ipip", "proxy-arp"),
        ("podswitch", "udp", "bridge"),
        ("podswitch", "host-gw", "proxy-arp"),
        ("podswitch", "directrouting", "bridge"),
        ("kernel", "vxlan", "bridge"),
        ("kernel", "host-gw", "bridge"),
        ("kernel", "vxlan", "proxy-arp"),
        ("kernel", "directrouting", "bridge"),
    ];
    for (i, (dataplane, backend, mode)) in cases.into_iter().enumerate() {
        let lab = name(&format!("m{i}"));
        let _guard = LabGuard(lab.clone());
        let status = up(&lab, dataplane, backend, mode);
        assert_eq!(status["nodes"].as_array().unwrap().len(), 2);
        if dataplane == "podswitch" {
            assert!(
                status["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|n| n["daemon"] == "running"),
                "{status}"
            );
        }
        all_reach(&lab, &status);
        assert!(ctl(&["lab", "down", "--name", &lab]).status.success());
        assert_gone(&lab);
    }
}

/// `lab up --workers 2`: each node's podswitchd runs two workers, and its
/// ports are spread over both.
#[test]
fn a_lab_of_two_workers_per_node() {
    let _cpus = cpus_shared();
    require(&["ip", "ping", "bridge", "sysctl", "ps"]);
    let lab = name("w2");
    let _guard = LabGuard(lab.clone());
    let status = up_with(&lab, &["--backend", "vxlan", "--workers", "2"]);
    all_reach(&lab, &status);
    for node in status["nodes"].as_array().unwrap() {
        let ports = node_ports(node);
        let mut workers: Vec<u64> = ports
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["worker"].as_u64().expect("each port has a worker"))
            .collect();
        workers.sort_unstable();
        assert_eq!(workers, [0, 0, 1, 1], "{ports}");
    }
    assert!(ctl(&["lab", "down", "--name", &lab]).status.success());
    assert_gone(&lab);
}

/// `lab up --store etcd`: an etcd on the underlay holds flannel's network
/// config; nodes start with no subnet and no peers, lease distinct
/// subnets, learn each other there, and their pods reach each other; the
/// lab goes down with its etcd. With `--kernel-nodes 1`, a kernel flannel
/// node joins through the same store.
#[test]
fn a_lab_whose_nodes_meet_in_etcd() {
    let _cpus = cpus_shared();
    require(&["ip", "ping", "etcd", "ps"]);
    let lab = name("etcd");
    let _guard = LabGuard(lab.clone());
    let status = up_with(&lab, &["--store", "etcd"]);
    assert_eq!(status["store"], "http://192.168.100.254:2379", "{status}");
    let nodes = status["nodes"].as_array().unwrap();
    assert_ne!(nodes[0]["pod_cidr"], nodes[1]["pod_cidr"], "{status}");
    for node in nodes {
        let env = std::fs::read_to_string(format!(
            "/run/podswitch-lab/{lab}/{}.subnet.env",
            node["name"].as_str().unwrap()
        ))
        .unwrap();
        let gateway = node["pod_cidr"].as_str().unwrap().replace(".0/24", ".1/24");
        assert!(env.contains(&format!("FLANNEL_SUBNET={gateway}")), "{env}");
    }
    all_reach(&lab, &status);
    assert!(ctl(&["lab", "down", "--name", &lab]).status.success());
    assert_gone(&lab);

    // A mixed lab: node2 runs flannel's kernel data path, its lease
    // written as flanneld writes it; node1, podswitch, leases around it.
    let status = up_with(&lab, &["--store", "etcd", "--kernel-nodes", "1"]);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["dataplane"], "podswitch", "{status}");
    assert_eq!(nodes[1]["dataplane"], "kernel", "{status}");
    assert_eq!(nodes[1]["pod_cidr"], "10.244.2.0/24", "{status}");
    assert_ne!(nodes[0]["pod_cidr"], nodes[1]["pod_cidr"], "{status}");
    all_reach(&lab, &status);
    assert!(ctl(&["lab", "down", "--name", &lab]).status.success());
    assert_gone(&lab);
    // flannel's kernel nodes alone, each programmed from the other's
    // lease in etcd.
    let status = up_with(&lab, &["--store", "etcd", "--dataplane", "kernel"]);
    all_reach(&lab, &status);
    assert!(ctl(&["lab", "down", "--name", &lab]).status.success());
    assert_gone(&lab);

    // Three etcd members, every node given all three.
    let status = up_with(&lab, &["--store", "etcd", "--etcd-members", "3"]);
    assert_eq!(
        status["store"],
        "http://192.168.100.254:2379,http://192.168.100.253:2379,http://192.168.100.252:2379",
        "{status}"
    );
    all_reach(&lab, &status);
    assert!(ctl(&["lab", "down", "--name", &lab]).status.success());
    assert_gone(&lab);
    refused(&lab, &["--kernel-nodes", "1"], "--store etcd");
    assert_gone(&lab);
}

#[test]
fn labs_side_by_side_do_not_interfere_and_missing_features_are_named() {
    let _cpus = cpus_shared();
    require(&["ip", "ping", "bridge", "sysctl", "ps"]);
    let (a, b) = (name("a"), name("b"));
    let _guards = [
        LabGuard(a.clone()),
        LabGuard(b.clone()),
        LabGuard(name("c")),
    ];
    let status_a = up(&a, "podswitch", "vxlan", "bridge");
    let status_b = up(&b, "kernel", "vxlan", "bridge");
    all_reach(&a, &status_a);
    all_reach(&b, &status_b);
    // `lab up` again on a stale lab of the same name cleans it first.
    let again = up(&a, "podswitch", "vxlan", "bridge");
    all_reach(&a, &again);
    assert!(ctl(&["lab", "down", "--name", &a]).status.success());
    assert_gone(&a);
    all_reach(&b, &status_b);
    let human = ctl(&["lab", "status", "--name", &b]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("pod1-1"));
    assert!(ctl(&["lab", "down", "--name", &b]).status.success());
    assert_gone(&b);

    // This machine's kernel has no ipip module: said plainly, nothing left.
    let c = name("c");
    let out = ctl(&[
        "lab",
        "up",
        "--name",
        &c,
        "--dataplane",
        "kernel",
        "--backend",
        "ipip",
    ]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no IPIP support"), "{err}");
    }
    assert!(ctl(&["lab", "down", "--name", &c]).status.success());
    assert_gone(&c);
    let out = ctl(&[
        "lab",
        "up",
        "--name",
        &c,
        "--dataplane",
        "kernel",
        "--backend",
        "udp",
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("udp"));
    assert_gone(&c);
}

/// A lab as the traffic scenarios see it, from its `lab up --json`.
struct LabSites<'a> {
    name: &'a str,
    status: &'a Value,
}

impl LabSites<'_> {
    fn field<'v>(value: &'v Value, key: &str) -> &'v str {
        value[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {value}"))
    }
}

impl Sites for LabSites<'_> {
    fn pods(&self) -> Vec<PodSite> {
        let nodes = self.status["nodes"].as_array().unwrap();
        self.status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| PodSite {
                netns: Self::field(p, "netns").to_string(),
                ip: Self::field(p, "ip").to_string(),
                node: nodes
                    .iter()
                    .position(|n| n["name"] == p["node"])
                    .unwrap_or_else(|| panic!("pod on no node: {p}")),
            })
            .collect()
    }

    /// Pods on another node reach a node's stack at its underlay address:
    /// every lab node has one, where a kernel node in proxy-arp mode has
    /// no pod gateway address (Calico gives the node none).
    fn nodes(&self) -> Vec<NodeSite> {
        self.status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| NodeSite {
                name: Self::field(n, "name").to_string(),
                netns: Self::field(n, "netns").to_string(),
                address: Self::field(n, "underlay_ip").to_string(),
                underlay_ip: Self::field(n, "underlay_ip").to_string(),
            })
            .collect()
    }

    fn logs(&self) -> String {
        let mut text: String = lab_logs(self.name)
            .into_iter()
            .map(|(path, log)| format!("--- {path} ---\n{log}"))
            .collect();
        text.push_str(&open_vswitch_state(self.status));
        text
    }
}

/// On an Open vSwitch lab, each node's switch log, its OpenFlow rules
/// with their packet counts (which rule a lost packet last matched), its
/// datapath flows, ports' counters, tunnel neighbours and event counters
/// (where the datapath counts a drop), for a failing check to show;
/// nothing on other labs.
fn open_vswitch_state(status: &Value) -> String {
    let mut text = String::new();
    if status["dataplane"] != "ovs" {
        return text;
    }
    for node in status["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        let dir = format!(
            "/run/podswitch-lab/{}/ovs-{name}",
            status["name"].as_str().unwrap()
        );
        let log = std::fs::read_to_string(format!("{dir}/ovs-vswitchd.log")).unwrap_or_default();
        text.push_str(&format!("--- {dir}/ovs-vswitchd.log ---\n{log}"));
        let views: [&[&str]; 7] = [
            &["ovs-ofctl", "dump-flows", "br-int"],
            &["ovs-ofctl", "dump-flows", "br-phy"],
            &["ovs-appctl", "dpctl/dump-flows"],
            &["ovs-appctl", "dpif-netdev/pmd-stats-show"],
            &["ovs-appctl", "tnl/neigh/show"],
            &["ovs-appctl", "coverage/show"],
            &[
                "ovs-vsctl",
                "--columns=name,statistics",
                "list",
                "interface",
            ],
        ];
        for view in views {
            let out = Command::new("ip")
                .args(["netns", "exec", node["netns"].as_str().unwrap()])
                .args(view)
                .env("OVS_RUNDIR", &dir)
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
            text.push_str(&format!("--- {name}: {} ---\n{out}", view.join(" ")));
        }
    }
    // The kernel's own counters on every veth end, read at once (Open
    // vSwitch refreshes its interface statistics every 5 s): whether a
    // frame the switch sent reached the pod.
    let spaces = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .chain(status["pods"].as_array().unwrap())
        .filter_map(|site| site["netns"].as_str());
    for netns in spaces {
        let out = Command::new("ip")
            .args(["-n", netns, "-s", "-s", "link", "show"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        text.push_str(&format!("--- {netns}: ip -s -s link ---\n{out}"));
    }
    text
}

/// The daemon tests' traffic matrix (ping, UDP both ways and TCP whose
/// bytes the receiver checks, between every pod and every node's stack)
/// and, over VXLAN, the path MTU scenario hold on the kernel's dataplane
/// as on podswitch's, on the same topology: what the daemon tests ask of
/// podswitch is what the kernel does.
#[test]
fn the_traffic_matrix_holds_on_the_kernel_dataplane_and_on_podswitch() {
    let _cpus = cpus_shared();
    require(&["ip", "ping", "bridge", "sysctl", "nft", "/usr/bin/python3"]);
    let cases: [&[&str]; 7] = [
        &["--dataplane", "kernel", "--backend", "vxlan"],
        &["--dataplane", "kernel", "--backend", "host-gw"],
        &["--dataplane", "kernel", "--gateway-mode", "proxy-arp"],
        &["--dataplane", "podswitch", "--backend", "vxlan"],
        &["--backend", "host-gw", "--gateway-mode", "proxy-arp"],
        &["--backend", "vxlan", "--port-kind", "af-xdp"],
        // Pods' egress keeping their addresses: Services work as they do
        // on a flannel node run without --ip-masq.
        &["--backend", "vxlan", "--masquerade", "false"],
    ];
    for (i, options) in cases.into_iter().enumerate() {
        let lab = name(&format!("x{i}"));
        let _guard = LabGuard(lab.clone());
        let status = up_with(&lab, options);
        if let Some(kind) = options.iter().skip_while(|o| **o != "--port-kind").nth(1) {
            // Every pod port is of the kind the lab asked for.
            assert_eq!(status["port_kind"], *kind, "{status}");
            for node in status["nodes"].as_array().unwrap() {
                let ports = node_ports(node);
                let pods: Vec<&Value> = ports
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["role"] == "pod")
                    .collect();
                assert_eq!(pods.len(), 2, "{ports}");
                assert!(pods.iter().all(|p| p["kind"] == *kind), "{ports}");
            }
        }
        if options.contains(&"--masquerade") {
            for node in status["nodes"].as_array().unwrap() {
                let netns = LabSites::field(node, "netns");
                let table = podswitch_table(netns);
                // No egress rule (it names what keeps the pod's address);
                // the Services' rules are there.
                assert!(!table.contains("daddr !="), "{netns}: {table}");
                assert!(table.contains("ct status dnat"), "{netns}: {table}");
            }
        }
        let sites = LabSites {
            name: &lab,
            status: &status,
        };
        let label = format!("lab {}", options.join(" "));
        traffic_matrix(&sites, &label);
        if status["backend"] == "vxlan" {
            // Path MTU: the kernel's flannel.1 and podswitch both answer
            // one byte too many with "fragmentation needed" at 1450.
            path_mtu_is_told(&sites, 1450, &label);
        }
        hops_answer_from_the_kernels_addresses(&status, &label);
        addresses_no_pod_has_answer_as_the_kernels_do(&status, &label);
        nodes_send_from_the_kernels_addresses(&status, &label);
        services_reach_their_backends(&status, &label);
        if status["backend"] == "vxlan" {
            tunnel_ends_answer(&status, &label);
        }
    }
    // The choice is podswitchd's: the kernel's dataplane refuses it.
    refused(
        &name("x9"),
        &["--dataplane", "kernel", "--port-kind", "af-xdp"],
        "--dataplane podswitch",
    );
    refused(
        &name("x9"),
        &["--dataplane", "kernel", "--masquerade", "false"],
        "--dataplane podswitch",
    );
    // Every podswitchd option given is named.
    refused(
        &name("x9"),
        &[
            "--dataplane",
            "kernel",
            "--workers",
            "2",
            "--underlay-kind",
            "af-xdp",
        ],
        "--workers, --underlay-kind: podswitchd's settings",
    );
}

/// `lab up --dataplane ovs`: Open vSwitch's userspace datapath, the
/// bench's second reference, carries every pod's traffic as flannel's
/// vxlan backend does: bridged on a node, routed across nodes (one hop on
/// each, as the replies' TTL shows), over VXLAN with VNI 1 on port 8472
/// (read by tshark on the underlay); its daemons go with `lab down`; a
/// backend it does not run is refused by name.
#[test]
fn an_open_vswitch_lab_carries_pods_traffic_as_flannel_does() {
    let _cpus = cpus_alone();
    require(&[
        "ip",
        "ping",
        "ps",
        "tcpdump",
        "tshark",
        "ethtool",
        "ovs-vswitchd",
        "/usr/bin/python3",
    ]);
    let lab = name("ovs");
    let _guard = LabGuard(lab.clone());
    let status = up_with(&lab, &["--dataplane", "ovs"]);
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["dataplane"] == "ovs"),
        "{status}"
    );
    let sites = LabSites {
        name: &lab,
        status: &status,
    };
    common::traffic::pods_reach_each_other(&sites, "lab --dataplane ovs");

    let netns = |pod: &str| format!("lab-{lab}-{pod}");
    let reply_ttl = |from: &str, to: &str| {
        let to_ip = status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == to)
            .and_then(|p| p["ip"].as_str())
            .unwrap()
            .to_string();
        let out = ping_once_output(netns(from).as_str(), &to_ip, 2, &[]);
        out.split("ttl=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|ttl| ttl.parse::<u8>().ok())
            .unwrap_or_else(|| panic!("no reply from {to}: {out}"))
    };
    assert_eq!(reply_ttl("pod1-1", "pod1-2"), 64, "bridged on the node");
    assert_eq!(reply_ttl("pod1-1", "pod2-1"), 62, "a hop on each node");

    let capture =
        common::Capture::start_in(&format!("lab-{lab}-ul"), "br0", 2, "udp dst port 8472");
    assert!(ping(netns("pod1-1").as_str(), "10.244.2.2", 1));
    let frames = capture.finish(std::time::Duration::from_secs(5));
    let fields = common::tshark_fields(
        &frames,
        &["udp.port==8472,vxlan"],
        &["vxlan.vni", "ip.src", "ip.dst"],
    );
    for frame in &fields {
        assert_eq!(frame[0], "1", "VNI: {fields:?}");
        for ends in &frame[1..] {
            assert!(
                ends.starts_with("192.168.100.") && ends.contains(",10.244."),
                "outer and inner addresses: {fields:?}"
            );
        }
    }

    // The bench holds a lab of Open vSwitch outside its turns: its
    // switches stopped (their PMD threads would poll on), nothing
    // forwarded; released, it forwards again.
    let record = podswitch::lab::Lab::load(&lab).expect("the lab's record");
    // The processes in the two nodes' namespaces.
    let node_pids = || -> Vec<String> {
        (1..=2)
            .flat_map(|n| {
                common::stdout_of("ip", &["netns", "pids", &format!("lab-{lab}-n{n}")])
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let switch_states = || -> Vec<char> {
        node_pids()
            .iter()
            .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
            .filter(|stat| stat.contains("(ovs-vswitchd)"))
            .filter_map(|stat| stat.rsplit(") ").next().and_then(|s| s.chars().next()))
            .collect()
    };
    podswitch::lab::hold_ovs(&record, true).unwrap();
    assert_eq!(switch_states(), ['T', 'T'], "held switches are stopped");
    assert!(!ping(netns("pod1-1").as_str(), "10.244.2.2", 1));
    podswitch::lab::hold_ovs(&record, false).unwrap();
    assert!(!switch_states().contains(&'T'), "{:?}", switch_states());
    assert!(ping(netns("pod1-1").as_str(), "10.244.2.2", 2));

    // Both nodes' ovsdb-server and ovs-vswitchd run in the nodes'
    // namespaces, and stop with the lab.
    let daemons = node_pids();
    let names: Vec<String> = daemons
        .iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.trim() == "ovs-vswitchd").count(),
        2,
        "{names:?}"
    );
    assert!(ctl(&["lab", "down", "--name", &lab]).status.success());
    assert_gone(&lab);
    for pid in &daemons {
        // A zombie has stopped; its parent (init, for a daemon) reaps it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "process {pid} of the lab's nodes is left: {stat}"
        );
    }

    refused(
        &name("ovsx"),
        &["--dataplane", "ovs", "--backend", "host-gw"],
        "--backend vxlan",
    );
}

/// What `traceroute` from a pod on node 1 to a pod on node 2 shows: the
/// address each hop's "time exceeded" comes from. The kernel's nodes send
/// it from the interface it leaves by: node 1 from cni0's 10.244.X.1 in
/// bridge mode and from its underlay address in proxy-arp mode (a cali
/// interface has none); node 2 from flannel.1's 10.244.Y.0 over VXLAN and
/// from its underlay address over host-gw. podswitch must answer alike.
fn hops_answer_from_the_kernels_addresses(status: &Value, label: &str) {
    let nodes = status["nodes"].as_array().unwrap();
    let field = |v: &Value, key: &str| LabSites::field(v, key).to_string();
    let (from, to) = (pods_on(status, &nodes[0])[0], pods_on(status, &nodes[1])[0]);
    let first_hop = address_towards_own_pods(status, &nodes[0]);
    let second_hop = far_node_address(status);
    for (ttl, expected) in [("1", first_hop), ("2", second_hop)] {
        let out = ping_once_output(
            LabSites::field(from, "netns"),
            &field(to, "ip"),
            2,
            &["-t", ttl],
        );
        assert!(
            out.contains(&format!("From {expected} icmp_seq=1 Time to live exceeded")),
            "{label}: TTL {ttl} from {} to {} should expire at {expected}:\n{out}",
            field(from, "ip"),
            field(to, "ip")
        );
    }
}

/// The address node 2 sends its errors to node 1's pods from.
fn far_node_address(status: &Value) -> String {
    address_towards_peers(status, &status["nodes"][1])
}

/// The address `node` sends from towards the other nodes' pods:
/// flannel.1's 10.244.X.0 over VXLAN, its underlay address over host-gw.
fn address_towards_peers(status: &Value, node: &Value) -> String {
    match status["backend"].as_str() {
        Some("vxlan") => pod_subnet_address(node, 0),
        _ => LabSites::field(node, "underlay_ip").to_string(),
    }
}

/// The address `node` sends from towards its own pods: cni0's 10.244.X.1
/// in bridge mode; in proxy-arp mode its underlay address (a cali
/// interface has none).
fn address_towards_own_pods(status: &Value, node: &Value) -> String {
    match status["gateway_mode"].as_str() {
        Some("proxy-arp") => LabSites::field(node, "underlay_ip").to_string(),
        _ => pod_subnet_address(node, 1),
    }
}

/// The source each node's own kernel picks for its traffic to a pod, on
/// its node and on the other (`ip route get`): a kernel flannel or Calico
/// node's, which a pod sees the node's connections come from. But for one
/// difference: a podswitch node sends to a host-gw peer's pods from its
/// pod-side address, 10.244.X.1, where a kernel node sends from its
/// underlay address (the peer's kernel would masquerade the replies,
/// never having seen the requests: `Tables::host_routes`).
fn nodes_send_from_the_kernels_addresses(status: &Value, label: &str) {
    let pods = status["pods"].as_array().unwrap();
    let host_gw = status["backend"].as_str() != Some("vxlan");
    for node in status["nodes"].as_array().unwrap() {
        let podswitch_host_gw = host_gw && node["dataplane"] == "podswitch";
        for pod in pods {
            let expected = if pod["node"] == node["name"] {
                address_towards_own_pods(status, node)
            } else if podswitch_host_gw {
                pod_subnet_address(node, 1)
            } else {
                address_towards_peers(status, node)
            };
            let ns = LabSites::field(node, "netns");
            let ip = LabSites::field(pod, "ip");
            let route = common::stdout_of("ip", &["-n", ns, "-4", "route", "get", ip]);
            assert!(
                route.contains(&format!(" src {expected} ")),
                "{label}: {} should send to {ip} from {expected}: {route}",
                LabSites::field(node, "name")
            );
        }
    }
}

/// A pod on node 1 pings an address of node 2's pod subnet that no pod
/// has. A flannel node's kernel routes it to cni0, its ARP goes
/// unanswered, and after about 3 seconds it answers Host Unreachable from
/// the way back's address; a Calico node blackholes its block and answers
/// nothing. podswitch must answer alike (at once: it needs no ARP).
///
/// Then an address of a subnet no node holds: node 1's kernel has no route
/// for it (the lab's nodes have no default route) and answers Net
/// Unreachable, in bridge mode from cni0's 10.244.X.1. podswitch's node
/// must not route it back into podswitch (an ICMP redirect to the pod, a
/// silent drop): in proxy-arp mode its answer comes from podswitch0's
/// 10.244.X.1, where a Calico node's comes from its underlay address.
fn addresses_no_pod_has_answer_as_the_kernels_do(status: &Value, label: &str) {
    let far = &status["nodes"][1];
    let from = pods_on(status, &status["nodes"][0])[0];
    let nobody = pod_subnet_address(far, 99);
    let from = LabSites::field(from, "netns");
    let out = ping_once_output(from, &nobody, 5, &[]);
    let expected = match status["gateway_mode"].as_str() {
        Some("proxy-arp") => "1 packets transmitted, 0 received, 100% packet loss".to_string(),
        _ => format!(
            "From {} icmp_seq=1 Destination Host Unreachable",
            far_node_address(status)
        ),
    };
    assert!(
        out.contains(&expected) && (expected.starts_with("From") || !out.contains("From")),
        "{label}: {nobody}, which no pod has, should answer {expected:?}:\n{out}"
    );

    let unleased = "10.244.99.5";
    let out = ping_once_output(from, unleased, 2, &[]);
    let expected = match status["gateway_mode"].as_str() {
        Some("proxy-arp") => "icmp_seq=1 Destination Net Unreachable".to_string(),
        _ => format!(
            "From {} icmp_seq=1 Destination Net Unreachable",
            pod_subnet_address(&status["nodes"][0], 1)
        ),
    };
    assert!(
        out.contains(&expected) && !out.contains("Redirect"),
        "{label}: {unleased}, in no node's subnet, should answer {expected:?}:\n{out}"
    );
}

/// A Service, as kube-proxy makes one (nftables mode: a DNAT in the
/// node's `prerouting` and `output` NAT hooks), from a pod on node 1 and
/// from node 1 itself, to a backend on node 2 and one on node 1: every
/// connection reaches its backend, and its replies come back from the
/// Service's address. The backend sees a pod client from the pod's own
/// address, through podswitch as through the kernel's dataplane
/// (podswitch sends the replies of a connection the host port handed it
/// back to the host port: engine/src/host_connections.rs).
fn services_reach_their_backends(status: &Value, label: &str) {
    const SERVICE: &str = "10.96.0.10";
    let nodes = status["nodes"].as_array().unwrap();
    let node1 = &nodes[0];
    let node1_ns = LabSites::field(node1, "netns");
    let (client, local_backend) = (pods_on(status, node1)[0], pods_on(status, node1)[1]);
    let remote_backend = pods_on(status, &nodes[1])[0];
    // The node's own connections need a route to the Service range, as a
    // node's default route gives it (the lab's nodes have none).
    let route = ["route", "add", "10.96.0.0/12", "dev", "ul0"];
    common::run("ip", &[&["-n", node1_ns], &route[..]].concat());
    for backend in [remote_backend, local_backend] {
        let backend_ip = LabSites::field(backend, "ip");
        let rule = format!("ip daddr {SERVICE} tcp dport 5201 dnat to {backend_ip}");
        let table = format!(
            "table ip lab-service {{\n\
             chain prerouting {{ type nat hook prerouting priority -100; {rule}; }}\n\
             chain output {{ type nat hook output priority -100; {rule}; }}\n}}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", node1_ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(nft.stdin.as_mut().unwrap(), table.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "{label}: nft");
        let clients = [
            (
                LabSites::field(client, "netns"),
                LabSites::field(client, "ip"),
            ),
            (node1_ns, "the node"),
        ];
        for (client_ns, client_ip) in clients {
            let mut server = Command::new("ip")
                .args(["netns", "exec", LabSites::field(backend, "netns")])
                .args(["/usr/bin/python3", "-c", PEER_ADDRESS])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let seen = seen_address(&mut server, client_ns, SERVICE);
            let what = format!("{label}: {client_ip} to a Service backed by {backend_ip}");
            let seen = seen.unwrap_or_else(|| panic!("{what}: no connection"));
            if client_ip != "the node" {
                assert_eq!(seen, client_ip, "{what}: seen from");
            }
        }
        common::run(
            "ip",
            &[
                "netns",
                "exec",
                node1_ns,
                "nft",
                "delete",
                "table",
                "ip",
                "lab-service",
            ],
        );
    }
    common::run(
        "ip",
        &[&["-n", node1_ns, "route", "del"], &route[2..]].concat(),
    );
}

/// Every node answers at its tunnel end's address, flannel.1's
/// 10.244.X.0, from every pod and every node, on one node and across.
fn tunnel_ends_answer(status: &Value, label: &str) {
    let namespaces = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .chain(status["pods"].as_array().unwrap())
        .map(|site| LabSites::field(site, "netns").to_string());
    let namespaces: Vec<String> = namespaces.collect();
    for node in status["nodes"].as_array().unwrap() {
        let end = pod_subnet_address(node, 0);
        for ns in &namespaces {
            assert!(
                ping(ns.as_str(), &end, 1),
                "{label}: {end}, {}'s tunnel end, from {ns}",
                LabSites::field(node, "name")
            );
        }
    }
}

/// A lab's pods on `node`, in the lab's order (at least two: the checks
/// that take them need a client and a backend on one node).
fn pods_on<'a>(status: &'a Value, node: &Value) -> Vec<&'a Value> {
    let pods = status["pods"].as_array().unwrap();
    let on: Vec<&Value> = pods.iter().filter(|p| p["node"] == node["name"]).collect();
    assert!(on.len() >= 2, "two pods on {node}: {pods:?}");
    on
}

/// The address numbered `last` in a lab node's pod subnet (a /24):
/// 10.244.X.`last`.
fn pod_subnet_address(node: &Value, last: u8) -> String {
    let cidr = LabSites::field(node, "pod_cidr");
    let network: std::net::Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
    let [a, b, c, _] = network.octets();
    std::net::Ipv4Addr::new(a, b, c, last).to_string()
}

/// Runs `cmd` in a lab pod; its stdout.
fn exec_out(name: &str, pod: &str, cmd: &[&str]) -> String {
    let mut args = vec!["lab", "exec", "--name", name, pod, "--"];
    args.extend_from_slice(cmd);
    let out = ctl(&args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Python: accepts one TCP connection on 5201 and prints the address it
/// came from.
const PEER_ADDRESS: &str = "import socket\n\
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('0.0.0.0', 5201)); s.listen(1); print('listening', flush=True)\n\
c, a = s.accept(); c.recv(16); print(a[0], flush=True)\n";

/// Which address `server` (running [`PEER_ADDRESS`]) sees a TCP
/// connection from the namespace `client_netns` to `to_ip` come from; None
/// if the connection failed.
fn seen_address(
    server: &mut std::process::Child,
    client_netns: &str,
    to_ip: &str,
) -> Option<String> {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let client =
        format!("import socket; socket.create_connection(('{to_ip}', 5201), timeout=5).send(b'x')");
    let connected = Command::new("ip")
        .args([
            "netns",
            "exec",
            client_netns,
            "/usr/bin/python3",
            "-c",
            &client,
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !connected {
        let _ = server.kill();
        let _ = server.wait();
        return None;
    }
    let seen = lines.next().unwrap().unwrap();
    let _ = server.wait();
    Some(seen)
}

/// Pod egress (issue 13): a pod reaches an "outside" host on the underlay
/// that has no route to the pods (ping and TCP) and is seen with its
/// node's address; pod-to-pod traffic keeps the pod's address. The
/// nftables table is replaced, not duplicated, by a daemon restarted after
/// kill -9, and a SIGTERM removes it and puts forwarding back.
#[test]
fn pods_reach_outside_masqueraded_and_nothing_stays() {
    let _cpus = cpus_shared();
    require(&["ip", "ping", "nft", "/usr/bin/python3", "pgrep", "tcpdump"]);
    let name = name("egr");
    let _guard = LabGuard(name.clone());
    let _status = up(&name, "podswitch", "vxlan", "bridge");
    let node1 = format!("lab-{name}-n1");
    let forwarding = |key: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &node1, "sysctl", "-n", key])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(forwarding("net.ipv4.conf.ul0.forwarding"), "1");

    // The outside host: on the underlay bridge, no route to 10.244.0.0/16.
    let outside = common::Netns::new("outside");
    common::run(
        "ip",
        &[
            "link",
            "add",
            "eth0",
            "netns",
            &outside.name,
            "type",
            "veth",
            "peer",
            "name",
            "out0",
            "netns",
            &format!("lab-{name}-ul"),
        ],
    );
    common::run(
        "ip",
        &[
            "-n",
            &format!("lab-{name}-ul"),
            "link",
            "set",
            "out0",
            "master",
            "br0",
            "up",
        ],
    );
    outside.ip(&["addr", "add", "192.168.100.200/24", "dev", "eth0"]);
    outside.ip(&["link", "set", "eth0", "up"]);

    let ping = exec_out(
        &name,
        "pod1-1",
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "192.168.100.200"],
    );
    assert!(ping.contains(", 0% packet loss"), "{ping}");
    let in_outside = |args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &outside.name]).args(args);
        cmd
    };
    let in_pod2 = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_podswitchctl"));
        cmd.args(["lab", "exec", "--name", &name, "pod2-1", "--"])
            .args(args);
        cmd
    };
    // (runs a command at the receiver, its address, the source it must see, what that says)
    type Receiver<'a> = &'a dyn Fn(&[&str]) -> Command;
    let receivers: [(Receiver, &str, &str, &str); 2] = [
        (
            &in_outside,
            "192.168.100.200",
            "192.168.100.1",
            "the outside sees the node's address",
        ),
        (
            &in_pod2,
            "10.244.2.2",
            "10.244.1.2",
            "another pod sees the pod's address",
        ),
    ];
    for (receiver, to_ip, expected, what) in receivers {
        // Seen twice at the receiver: by tcpdump on its interface, and by
        // the server's socket.
        let capture = SynCapture::start(receiver(&[]));
        let mut server = receiver(&["/usr/bin/python3", "-c", PEER_ADDRESS])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert_eq!(
            seen_address(&mut server, &format!("lab-{name}-pod1-1"), to_ip).as_deref(),
            Some(expected),
            "{what}"
        );
        assert_eq!(capture.source(), expected, "{what} (tcpdump)");
    }

    // A connection to a Service (backed on node 2) that stays open across
    // the restart, and whose next packet is the server's.
    let service = ServiceConnection::open(&name);

    // kill -9 and a new daemon on the same files: one table, one rule.
    let pid = common::stdout_of(
        "pgrep",
        &["-f", &format!("podswitch-lab/{name}/node1.toml")],
    )
    .trim()
    .to_string();
    common::run("kill", &["-KILL", &pid]);
    // Its parent is init, which reaps it only once every thread has exited
    // and closed its sockets (the leader alone shows as a zombie before):
    // gone from /proc is dead, as a supervisor would see it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "kill -9 did not kill");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dir = format!("/run/podswitch-lab/{name}");
    let socket = format!("{dir}/node1.sock");
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", &node1, env!("CARGO_BIN_EXE_podswitchd")])
        .args([
            "--config",
            &format!("{dir}/node1.toml"),
            "--socket",
            &socket,
        ])
        .args(["--state-file", &format!("{dir}/node1.ports.json")])
        .stderr(std::fs::File::create(format!("{dir}/restarted.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !ctl(&["--socket", &socket, "status"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted daemon never answered: {}",
            std::fs::read_to_string(format!("{dir}/restarted.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let table = podswitch_table(&node1);
    assert_eq!(
        table
            .matches("oifname != \"podswitch0\" masquerade")
            .count(),
        1,
        "{table}"
    );
    // The restarted daemon read the connection from the kernel's
    // conntrack table: the server's packet reaches the client translated.
    service.server_speaks_first();
    let ping = exec_out(
        &name,
        "pod1-1",
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "192.168.100.200"],
    );
    assert!(
        ping.contains(", 0% packet loss"),
        "after the restart: {ping}"
    );

    // SIGTERM: the table goes and forwarding is what it was before podswitch.
    common::run("kill", &["-TERM", &daemon.id().to_string()]);
    daemon.wait().unwrap();
    let tables = Command::new("ip")
        .args(["netns", "exec", &node1, "nft", "list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(!tables.contains("podswitch"), "{tables}");
    assert_eq!(forwarding("net.ipv4.conf.ul0.forwarding"), "0");
}

/// A pod's TCP connection to a Service, from pod1-1 through a DNAT on
/// node 1 (as kube-proxy's nftables mode makes one) to pod2-1, open and
/// quiet until [`server_speaks_first`](Self::server_speaks_first).
struct ServiceConnection {
    server: std::process::Child,
    client: std::process::Child,
}

impl ServiceConnection {
    fn open(lab: &str) -> ServiceConnection {
        use std::io::BufRead;
        let node1 = format!("lab-{lab}-n1");
        let table =
            "table ip lab-service {\n chain prerouting { type nat hook prerouting priority -100; \
                     ip daddr 10.96.0.10 tcp dport 5201 dnat to 10.244.2.2; }\n}\n";
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &node1, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(nft.stdin.as_mut().unwrap(), table.as_bytes()).unwrap();
        drop(nft.stdin.take());
        assert!(nft.wait().unwrap().success(), "nft");
        let python = |pod: &str, script: &str| {
            Command::new("ip")
                .args(["netns", "exec", &format!("lab-{lab}-{pod}")])
                .args(["timeout", "60", "/usr/bin/python3", "-c", script])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let first_line = |child: &mut std::process::Child| {
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            line
        };
        // The server sends "pong" once told to on its stdin.
        let mut server = python(
            "pod2-1",
            "import socket, sys\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', 5201)); s.listen(1); print('listening', flush=True)\n\
             c, _ = s.accept(); sys.stdin.readline(); c.sendall(b'pong\\n')\n",
        );
        assert_eq!(first_line(&mut server), "listening\n");
        let mut client = python(
            "pod1-1",
            "import socket\n\
             c = socket.create_connection(('10.96.0.10', 5201), timeout=30)\n\
             print('connected', flush=True)\n\
             try:\n    print(c.makefile().readline().strip() or 'closed', flush=True)\n\
             except OSError as e:\n    print(e, flush=True)\n",
        );
        assert_eq!(
            first_line(&mut client),
            "connected\n",
            "through the Service"
        );
        ServiceConnection { server, client }
    }

    fn server_speaks_first(mut self) {
        use std::io::Write;
        writeln!(self.server.stdin.as_mut().unwrap(), "go").unwrap();
        let out = self.client.wait_with_output().unwrap();
        let _ = self.server.kill();
        let _ = self.server.wait();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "pong",
            "the server's first packet after the restart, through the Service"
        );
    }
}

/// tcpdump on a receiver's eth0, waiting for the first TCP SYN to 5201.
struct SynCapture(std::process::Child);

impl SynCapture {
    /// Starts tcpdump through `receiver` (a command that runs its
    /// arguments where the receiver is) and returns once it listens.
    fn start(mut receiver: Command) -> SynCapture {
        use std::io::BufRead;
        let mut child = receiver
            .args(["tcpdump", "-n", "-l", "-i", "eth0", "-c", "1"])
            .arg("tcp dst port 5201 and tcp[tcpflags] & tcp-syn != 0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "tcpdump did not start"
            );
        }
        SynCapture(child)
    }

    /// The source address of the SYN it saw.
    fn source(self) -> String {
        let out = self.0.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // "12:00:00.000000 IP 10.244.1.2.40000 > 10.244.2.2.5201: Flags [S], ..."
        let source = text.split_whitespace().skip_while(|w| *w != "IP").nth(1);
        let source = source.unwrap_or_else(|| panic!("no SYN captured: {text}"));
        source
            .rsplit_once('.')
            .map(|(ip, _)| ip.to_string())
            .unwrap()
    }
}
