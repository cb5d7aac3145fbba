//! Simulated clusters for the daemon's integration tests, on the lab's
//! topology (`podswitch::lab`'s building blocks): node namespaces whose
//! `ul0` joins the underlay's bridge (192.168.100.0/24), pods as
//! namespaces behind each node (node X owns 10.244.X.0/24) made as a CNI
//! plugin makes them, and a podswitchd per node configured as each test
//! asks, all removed when the [`Cluster`] drops.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use podswitch::lab::pod_mtu;
use podswitch::lab::{join_underlay, pod_interface, underlay_bridge, PodInterface};

use super::traffic::{NodeSite, PodSite, Sites};
use super::{run, Netns, TempFile};

/// Gateway mode names as podswitchd takes them.
pub const MODES: [&str; 2] = ["bridge", "proxy-arp"];
/// Backends as podswitchd takes them.
pub const BACKENDS: [&str; 5] = ["vxlan", "ipip", "udp", "host-gw", "directrouting"];

/// A podswitchd process; stopped with SIGTERM on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: TempFile,
    pub config: TempFile,
    pub state: TempFile,
}

impl Daemon {
    /// Its process id (`ip netns exec` runs it in its own place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Stops the daemon where it is (SIGSTOP), or lets it go on (SIGCONT):
    /// what arrives meanwhile waits in its sockets' queues.
    pub fn hold(&self, stopped: bool) {
        let signal = if stopped { "-STOP" } else { "-CONT" };
        run("kill", &[signal, &self.pid().to_string()]);
    }

    /// `kill -9`: no cleanup at all; returns once every thread is gone.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        run("kill", &["-KILL", &child.id().to_string()]);
        let _ = child.wait();
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log.0).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        run("kill", &["-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "podswitchd ignored SIGTERM: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A simulated node.
pub struct Node {
    pub index: u8,
    pub ns: Netns,
    pub underlay_ip: String,
    pub daemon: Option<Daemon>,
    /// The first three octets of the node's pod /24 (10.244.`index` unless
    /// a lease store gave it another).
    pub pod_net: String,
    /// Where a daemon with a lease store writes flannel's subnet file.
    pub subnet_file: TempFile,
}

/// A pod: a namespace with eth0, behind a node.
pub struct Pod {
    pub ns: Netns,
    pub node: usize,
    /// The host-side interface in the node's namespace.
    pub host_if: String,
    pub ip: String,
    pub mac: String,
}

/// Nodes and pods; drop order removes pods, then nodes.
pub struct Cluster {
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    /// The underlay's bridge, between the nodes.
    pub underlay: Netns,
    pub backend: String,
    pub mode: String,
    /// VTEP MACs to configure, by node position (default: podswitchd's
    /// derived ones).
    pub vtep_macs: Vec<Option<String>>,
    /// How podswitchd reads pod veths: af-xdp (its default) or af-packet.
    pub port_kind: String,
    /// How podswitchd receives tunnel packets (`underlay_kind`), if not
    /// its default.
    pub underlay_kind: Option<String>,
    /// The TAP VXLAN super-frames leave through (`tunnel_tap`), if not
    /// the default; "none" sends them in `UDP_SEGMENT` bursts.
    pub tunnel_tap: Option<String>,
    /// `udp_batches`, if not the default.
    pub udp_batches: Option<bool>,
    /// Pods' veths carry BIG TCP, as podswitch's CNI plugin leaves them
    /// (the default); false: the kernel's 64 KiB.
    pub big_tcp_pods: bool,
    /// WARN and ERROR log lines a test provokes on purpose, by a piece of
    /// their text; any other one fails the test when the cluster stops
    /// (as Open vSwitch's tests check the daemon's log at exit).
    pub expected_warnings: Vec<&'static str>,
    /// A lease store's URL: the daemons lease their subnets and learn
    /// their peers there (`[cluster] store = "etcd"`). Several are joined
    /// by `", "` (the TOML array's separator).
    pub store: Option<String>,
    /// The lease store's CA, client certificate and key, for TLS.
    pub store_tls: Option<[String; 3]>,
}

/// The podswitchd binary under test.
pub fn podswitchd() -> &'static str {
    env!("CARGO_BIN_EXE_podswitchd")
}

/// The podswitchctl binary under test.
pub fn podswitchctl() -> &'static str {
    env!("CARGO_BIN_EXE_podswitchctl")
}

impl Node {
    /// The node's pod subnet.
    pub fn pod_cidr(&self) -> String {
        format!("{}.0/24", self.pod_net)
    }

    /// Runs podswitchctl against this node's daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let daemon = self.daemon.as_ref().expect("podswitchd running");
        Command::new(podswitchctl())
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .output()
            .expect("run podswitchctl")
    }

    /// Runs podswitchctl and returns its JSON output, panicking on failure.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        assert!(
            out.status.success(),
            "podswitchctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Counter `name` of port `port` in `podswitchctl stats` (0 while the
    /// port has counted nothing: `stats` lists ports with traffic only).
    pub fn port_counter(&self, port: &str, name: &str) -> u64 {
        let stats = self.ctl_json(&["stats"]);
        stats["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["port"] == port))
            .and_then(|p| p[name].as_u64())
            .unwrap_or(0)
    }
}

impl Cluster {
    /// A burst of 64 small numbered datagrams from pod `from` to pod `to`
    /// on another node, sent while `from`'s podswitchd is stopped, so that
    /// it finds them all waiting, and received while `to`'s is stopped, so
    /// that it reads the batches at once: every one must arrive intact,
    /// once and in order, and `from`'s underlay must have sent most of
    /// them in batches (one write each, `datagrams_batched`).
    pub fn burst_crosses_in_batches(&self, from: usize, to: usize, label: &str) {
        let (a, b) = (&self.pods[from], &self.pods[to]);
        assert_ne!(a.node, b.node, "{label}: a burst across nodes");
        let node = &self.nodes[a.node];
        let daemon = node.daemon.as_ref().expect("podswitchd running");
        let before = node.port_counter("ul0", "datagrams_batched");
        let count: u32 = 64;
        // The receiving node's daemon (none on a kernel node) is stopped
        // too until the batches wait in its socket, so that one read takes
        // them all: more datagrams for the pod's port than one read of
        // the port gives.
        let receiver = self.nodes[b.node].daemon.as_ref();
        let got = super::traffic::udp_burst(&a.ns, &b.ns, &b.ip, count, 200, |stop| {
            daemon.hold(stop);
            if let Some(receiver) = receiver {
                if !stop {
                    std::thread::sleep(Duration::from_millis(300));
                }
                receiver.hold(stop);
            }
        });
        let want: Vec<i64> = (0..i64::from(count)).collect();
        assert_eq!(
            got,
            want,
            "{label}: every datagram of the burst, intact, once, in order\n{}\n{}",
            node.ctl_json(&["stats"]),
            self.logs()
        );
        let batched = node.port_counter("ul0", "datagrams_batched") - before;
        assert!(
            batched >= u64::from(count) / 2,
            "{label}: {batched} of {count} datagrams left in batches\n{}",
            node.ctl_json(&["stats"])
        );
    }

    /// Two nodes on one underlay, `pods_per_node` pods each, no daemons yet.
    pub fn new(backend: &str, mode: &str, pods_per_node: u8) -> Cluster {
        // The lab's topology: both nodes' ul0 on the underlay's bridge.
        let underlay = Netns::new("ul");
        underlay_bridge(&underlay.name).expect("the underlay");
        let mut nodes = Vec::new();
        for index in 1..=2u8 {
            let ns = Netns::new(&format!("node{index}"));
            let underlay_ip =
                join_underlay(&ns.name, &underlay.name, index).expect("the node's ul0");
            nodes.push(Node {
                index,
                ns,
                underlay_ip,
                daemon: None,
                pod_net: format!("10.244.{index}"),
                subnet_file: TempFile::new("subnet.env"),
            });
        }
        let mut cluster = Cluster {
            pods: Vec::new(),
            nodes,
            underlay,
            backend: backend.into(),
            mode: mode.into(),
            vtep_macs: vec![None, None],
            port_kind: "af-xdp".into(),
            underlay_kind: None,
            tunnel_tap: None,
            udp_batches: None,
            big_tcp_pods: true,
            expected_warnings: Vec::new(),
            store: None,
            store_tls: None,
        };
        for n in 0..2 {
            for p in 0..pods_per_node {
                cluster.add_pod(n, p + 2, pod_mtu(backend.parse().expect("a backend")));
            }
        }
        cluster
    }

    /// Adds a pod with address 10.244.X.`host` behind node `n` (index in
    /// `nodes`), its veth keeping the kernel's default offloads.
    pub fn add_pod(&mut self, n: usize, host: u8, mtu: u32) -> usize {
        let node = &self.nodes[n];
        let x = node.index;
        let ns = Netns::new(&format!("pod{x}-{host}"));
        let host_if = format!("vp{x}x{host}");
        let ip = format!("{}.{host}", node.pod_net);
        let mac = format!("02:00:0a:f4:{x:02x}:{host:02x}");
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        pod_interface(&PodInterface {
            node_netns: &node.ns.name,
            pod_netns: &ns.name,
            host_if: &host_if,
            ip: &ip,
            mac: Some(&mac),
            mtu,
            gateway_mode: self.mode.parse().expect("a gateway mode"),
            gateway: &format!("{}.1", node.pod_net),
            big_tcp: self.big_tcp_pods,
        })
        .expect("the pod's interface");
        self.pods.push(Pod {
            ns,
            node: n,
            host_if,
            ip,
            mac,
        });
        self.pods.len() - 1
    }

    /// The TOML configuration of node `n`'s daemon, with the other node
    /// as a static peer; with a lease store, the subnet, network, backend
    /// and peers come from the store instead.
    pub fn config(&self, n: usize) -> String {
        let node = &self.nodes[n];
        if let Some(url) = &self.store {
            let tls = match &self.store_tls {
                Some([ca, cert, key]) => {
                    format!("ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n")
                }
                None => String::new(),
            };
            return format!(
                "[node]\nname = \"node{x}\"\nunderlay_interface = \"ul0\"\ngateway_mode = \"{mode}\"\n\n\
                 [cluster]\nstore = \"etcd\"\nendpoints = [\"{url}\"]\nsubnet_file = \"{file}\"\n{tls}\n\
                 [dataplane]\nbusy_poll_us = 50\npool_buffers = 4096\nport_kind = \"{kind}\"\n",
                x = node.index,
                mode = self.mode,
                file = node.subnet_file.0.display(),
                kind = self.port_kind,
            );
        }
        let mut text = format!(
            "[node]\nname = \"node{x}\"\npod_cidr = \"{cidr}\"\ncluster_cidr = \"10.244.0.0/16\"\n\
             underlay_interface = \"ul0\"\ngateway_mode = \"{mode}\"\n\n[backend]\ntype = \"{backend}\"\n\n\
             [dataplane]\nbusy_poll_us = 50\npool_buffers = 4096\nport_kind = \"{kind}\"\n",
            x = node.index,
            cidr = node.pod_cidr(),
            mode = self.mode,
            backend = self.backend,
            kind = self.port_kind,
        );
        if let Some(mac) = &self.vtep_macs[n] {
            text = text.replace("[backend]", &format!("vtep_mac = \"{mac}\"\n\n[backend]"));
        }
        if let Some(kind) = &self.underlay_kind {
            writeln!(text, "underlay_kind = \"{kind}\"").unwrap();
        }
        if let Some(tap) = &self.tunnel_tap {
            writeln!(text, "tunnel_tap = \"{tap}\"").unwrap();
        }
        if let Some(on) = self.udp_batches {
            writeln!(text, "udp_batches = {on}").unwrap();
        }
        for (o, other) in self.nodes.iter().enumerate().filter(|(o, _)| *o != n) {
            write!(
                text,
                "\n[[peer]]\nname = \"node{}\"\nunderlay_ip = \"{}\"\npod_cidr = \"{}\"\n",
                other.index,
                other.underlay_ip,
                other.pod_cidr()
            )
            .unwrap();
            if let Some(mac) = &self.vtep_macs[o] {
                writeln!(text, "vtep_mac = \"{mac}\"").unwrap();
            }
        }
        text
    }

    /// Starts podswitchd on node `n` with [`Self::config`] (plus `extra`
    /// arguments) and waits until its control socket answers.
    pub fn start(&mut self, n: usize, extra: &[&str]) {
        self.start_with_env(n, extra, &[]);
    }

    /// [`Self::start`] with `env` added to podswitchd's environment.
    pub fn start_with_env(&mut self, n: usize, extra: &[&str], env: &[(&str, &str)]) {
        let config = TempFile::new("podswitchd.toml");
        std::fs::write(&config.0, self.config(n)).unwrap();
        let log = TempFile::new("podswitchd.log");
        let socket = std::env::temp_dir().join(super::unique("ctl.sock"));
        let state = self.nodes[n]
            .daemon
            .take()
            .map(|mut d| std::mem::replace(&mut d.state, TempFile::new("unused")))
            .unwrap_or_else(|| TempFile::new("ports.json"));
        let node = &mut self.nodes[n];
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns.name, podswitchd(), "--config"])
            .arg(&config.0)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-file")
            .arg(&state.0)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log.0).unwrap())
            .spawn()
            .expect("spawn podswitchd");
        node.daemon = Some(Daemon {
            child: Some(child),
            socket,
            log,
            config,
            state,
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let daemon = node.daemon.as_mut().unwrap();
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("podswitchd exited ({status}): {}", daemon.log_text());
            }
            if daemon.log_text().contains("ready") && node.ctl(&["status"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "podswitchd did not become ready: {}",
                node.daemon.as_ref().unwrap().log_text()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Registers every pod of node `n` with its daemon through podswitchctl.
    pub fn attach_pods(&self, n: usize) {
        for pod in self.pods.iter().filter(|p| p.node == n) {
            let out = self.nodes[n].ctl(&[
                "port",
                "add",
                &pod.host_if,
                "--ip",
                &pod.ip,
                "--mac",
                &pod.mac,
            ]);
            assert!(
                out.status.success(),
                "port add {}: {}",
                pod.host_if,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Every pod port is of the kind asked for: a silent fallback (AF_XDP
        // to AF_PACKET) would test the other kind under this one's name.
        let ports = self.nodes[n].ctl_json(&["port", "list"]);
        for pod in self.pods.iter().filter(|p| p.node == n) {
            let kind = port_kind(&ports, &pod.host_if);
            assert_eq!(
                kind,
                Some(serde_json::json!(self.port_kind)),
                "{}: {ports}",
                pod.host_if
            );
        }
    }

    /// Starts both daemons and attaches every pod.
    pub fn start_all(&mut self) {
        for n in 0..self.nodes.len() {
            self.start(n, &[]);
            self.attach_pods(n);
        }
    }

    /// The logs of every daemon, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| {
                n.daemon.as_ref().map(|d| {
                    // The counters say where a lost packet went
                    // (a drop reason, a port's tx_failed), which a
                    // log of only attach and start lines cannot.
                    let stats = n.ctl(&["stats"]);
                    format!(
                        "--- node{} ---\n{}--- node{} stats ---\n{}{}",
                        n.index,
                        d.log_text(),
                        n.index,
                        String::from_utf8_lossy(&stats.stdout),
                        String::from_utf8_lossy(&stats.stderr)
                    )
                })
            })
            .collect()
    }
}

/// The kind (`af-xdp`, `af-packet`, ...) of `interface` in a `port list`
/// reply, if it is attached.
pub fn port_kind(ports: &serde_json::Value, interface: &str) -> Option<serde_json::Value> {
    ports
        .as_array()?
        .iter()
        .find(|p| p["interface"] == interface)
        .map(|p| p["kind"].clone())
}

/// The WARN and ERROR lines of a daemon log that `expected` does not name.
pub fn unexpected_warnings(log: &str, expected: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !expected.iter().any(|e| l.contains(e)))
        .map(str::to_string)
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut unexpected = Vec::new();
        for node in &mut self.nodes {
            let Some(mut daemon) = node.daemon.take() else {
                continue;
            };
            if std::thread::panicking() {
                continue; // the test failed already; just clean up
            }
            if daemon.child.is_some() {
                daemon.stop();
            }
            for line in unexpected_warnings(&daemon.log_text(), &self.expected_warnings) {
                unexpected.push(format!("node{}: {line}", node.index));
            }
        }
        self.pods.clear();
        assert!(
            unexpected.is_empty(),
            "unexpected WARN/ERROR lines in podswitchd's log:\n{}",
            unexpected.join("\n")
        );
    }
}

impl Sites for Cluster {
    fn pods(&self) -> Vec<PodSite> {
        self.pods
            .iter()
            .map(|p| PodSite {
                netns: p.ns.name.clone(),
                ip: p.ip.clone(),
                node: p.node,
            })
            .collect()
    }

    /// Pods on another node reach a node's stack at its pod gateway
    /// (10.244.X.1, on podswitchd's host port).
    fn nodes(&self) -> Vec<NodeSite> {
        self.nodes
            .iter()
            .map(|n| NodeSite {
                name: format!("node{}", n.index),
                netns: n.ns.name.clone(),
                address: format!("{}.1", n.pod_net),
                underlay_ip: n.underlay_ip.clone(),
            })
            .collect()
    }

    fn logs(&self) -> String {
        Cluster::logs(self)
    }
}
