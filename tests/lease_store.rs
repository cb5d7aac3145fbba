//! podswitchd with a lease store (`[cluster] store = "etcd"`): a real
//! etcd in the first node's namespace, read and written by these tests
//! through etcd's own JSON gateway. Nodes start with no pod subnet, lease
//! one in flannel's layout, follow each other's leases (and a flanneld
//! node's, written here as flanneld writes it), and keep forwarding while
//! the store is away.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::etcd::Etcd;
use common::flannel::{kernel_flannel_node, kernel_flannel_peer};
use common::require;
use common::traffic::{ping, tcp_transfer};
use serde_json::Value;

const PREFIX: &str = "/coreos.com/network";
const NETWORK: &str =
    r#"{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}"#;
/// Subnets the tests write leases for by hand are above 10.244.200.0:
/// a node picks among the first hundred free subnets (flannel's rule), so
/// it never holds one of these, and a hand-written lease never lands on a
/// node's own key.
/// A flanneld vxlan node's lease, as flannel's documentation shows one.
const FLANNELD_LEASE: &str = r#"{"PublicIP":"192.168.100.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:77"}}"#;

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    assert!(common::eventually(10, done), "timed out waiting: {what}");
}

fn peer(cluster: &Cluster, n: usize, name: &str) -> Option<Value> {
    cluster.nodes[n]
        .ctl_json(&["peer", "list"])
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["name"] == name).cloned())
}

/// The network config for one of podswitch's backends.
fn network_for(backend: &str) -> String {
    match backend {
        "directrouting" => NETWORK.replace(
            r#""Type": "vxlan""#,
            r#""Type": "vxlan", "DirectRouting": true"#,
        ),
        other => NETWORK.replace("vxlan", other),
    }
}

/// A cluster of two nodes that lease their subnets from a fresh etcd.
/// Drop the cluster first: daemons that outlive their store say so.
fn leased_cluster(backend: &str) -> (Cluster, Etcd) {
    require(&["ip", "ping", "etcd", "/usr/bin/python3"]);
    let mut cluster = Cluster::new(backend, "bridge", 0);
    cluster.port_kind = "af-packet".into();
    let etcd = Etcd::start(&cluster.nodes[0].ns, "192.168.100.1");
    etcd.put(&format!("{PREFIX}/config"), &network_for(backend));
    cluster.store = Some(etcd.url.clone());
    for n in 0..2 {
        cluster.start(n, &["--metrics-listen", "127.0.0.1:9469"]);
    }
    (cluster, etcd)
}

/// Once both daemons run: notes the subnet each leased, waits until each
/// made the other a peer, and gives each node one attached pod (MTU
/// `mtu`) in its subnet.
fn meet_and_add_pods(cluster: &mut Cluster, mtu: u32) {
    for n in 0..2 {
        let status = cluster.nodes[n].ctl_json(&["status"]);
        let subnet = status["pod_cidr"].as_str().unwrap().to_string();
        cluster.nodes[n].pod_net = subnet.trim_end_matches(".0/24").to_string();
    }
    for n in 0..2 {
        wait_until("the other node's lease applied", || {
            cluster.nodes[n]
                .ctl_json(&["peer", "list"])
                .as_array()
                .map(Vec::len)
                == Some(1)
        });
        cluster.add_pod(n, 2, mtu);
        cluster.attach_pods(n);
    }
}

#[test]
fn nodes_lease_subnets_in_flannels_layout_and_follow_each_other() {
    let (mut cluster, etcd) = leased_cluster("vxlan");
    let (leases, _) = etcd.range(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), 2, "{leases:?}");
    let mut subnets = Vec::new();
    for n in 0..2 {
        let status = cluster.nodes[n].ctl_json(&["status"]);
        let subnet = status["pod_cidr"].as_str().unwrap().to_string();
        assert!(
            subnet.starts_with("10.244.") && subnet.ends_with(".0/24"),
            "{status}"
        );
        assert_eq!(status["cluster_cidr"], "10.244.0.0/16");
        // The lease, as flanneld writes its own.
        let key = format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"));
        let (_, value, etcd_lease) = leases
            .iter()
            .find(|(k, _, _)| *k == key)
            .unwrap_or_else(|| panic!("no {key} in {leases:?}"));
        let lease: Value = serde_json::from_str(value).unwrap();
        assert_eq!(lease["PublicIP"], cluster.nodes[n].underlay_ip.as_str());
        assert!(lease["PublicIPv6"].is_null() && lease.get("PublicIPv6").is_some());
        assert_eq!(lease["BackendType"], "vxlan");
        assert_eq!(lease["BackendData"]["VNI"], 1);
        assert_eq!(lease["BackendData"]["VtepMAC"], status["vtep_mac"]);
        assert_ne!(etcd_lease, "0", "attached to an etcd lease (with a TTL)");
        // flannel's subnet file.
        let net = subnet.trim_end_matches(".0/24").to_string();
        let env = std::fs::read_to_string(&cluster.nodes[n].subnet_file.0).unwrap();
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={net}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
            )
        );
        assert_eq!(status["store"]["connected"], true, "{status}");
        cluster.nodes[n].pod_net = net;
        subnets.push(subnet);
    }
    assert_ne!(subnets[0], subnets[1]);
    // Each node made the other a peer from its lease; pods in the leased
    // subnets reach each other.
    for n in 0..2 {
        let other = subnets[1 - n].replace('/', "-");
        wait_until("the other node's lease applied", || {
            peer(&cluster, n, &other).is_some()
        });
        let status = cluster.nodes[n].ctl_json(&["status"]);
        assert_eq!(status["store"]["leases"], 1, "{status}");
        // The same health in the node's metrics.
        let scrape = cluster.nodes[n].ns.exec(
            "/usr/bin/python3",
            &[
                "-c",
                "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9469/metrics', timeout=5).read().decode())",
            ],
        );
        let text = String::from_utf8_lossy(&scrape.stdout);
        for line in [
            "podswitch_lease_store_connected 1",
            "podswitch_lease_store_leases 1",
            "podswitch_lease_store_errors_total 0",
            "podswitch_lease_store_resyncs_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
    cluster.add_pod(0, 2, 1450);
    cluster.add_pod(1, 2, 1450);
    cluster.attach_pods(0);
    cluster.attach_pods(1);
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(ping(&a.ns, &b.ip, 3), "{}", cluster.logs());

    // A flanneld node's lease: a peer with its VTEP, changed live, then
    // removed.
    let key = format!("{PREFIX}/subnets/10.244.207.0-24");
    etcd.put(&key, FLANNELD_LEASE);
    for n in 0..2 {
        wait_until("a flanneld lease applied", || {
            peer(&cluster, n, "10.244.207.0-24").is_some_and(|p| {
                p["vtep_mac"] == "0e:00:00:00:00:77"
                    && p["underlay_ip"] == "192.168.100.77"
                    && p["pod_cidr"] == "10.244.207.0/24"
                    && p["forwarding"] == "vxlan"
            })
        });
    }
    etcd.put(&key, &FLANNELD_LEASE.replace(":77\"", ":78\""));
    wait_until("a changed VtepMAC applied", || {
        peer(&cluster, 0, "10.244.207.0-24").is_some_and(|p| p["vtep_mac"] == "0e:00:00:00:00:78")
    });
    etcd.delete(&key);
    wait_until("a removed lease's peer removed", || {
        peer(&cluster, 0, "10.244.207.0-24").is_none()
    });
    // One log line per change: added, changed, removed.
    let log = cluster.nodes[0].daemon.as_ref().unwrap().log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("peer 10.244.207.0-24"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[1].contains("changed: now at 192.168.100.77, VTEP 0e:00:00:00:00:78"),
        "{lines:#?}"
    );
    // A value that is no lease is skipped and counted, not applied.
    etcd.put(&format!("{PREFIX}/subnets/10.244.208.0-24"), "not json");
    wait_until("a bad lease counted", || {
        cluster.nodes[0].ctl_json(&["status"])["store"]["bad_leases"] == 1
    });
    assert!(peer(&cluster, 0, "10.244.208.0-24").is_none());

    // A restarted node takes its own lease back (same PublicIP), and its
    // peers from the store, not from its state file.
    cluster.nodes[0].daemon.as_mut().unwrap().stop();
    cluster.start(0, &[]);
    let status = cluster.nodes[0].ctl_json(&["status"]);
    assert_eq!(status["pod_cidr"], subnets[0].as_str());
    assert_eq!(etcd.range(&format!("{PREFIX}/subnets/")).0.len(), 3);
    wait_until("peers back from the store", || {
        peer(&cluster, 0, &subnets[1].replace('/', "-")).is_some()
    });
    // (The pod's port comes back from the state file.)
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(ping(&a.ns, &b.ip, 3), "after a restart\n{}", cluster.logs());
    // The daemons stop (and their logs are checked) while etcd still runs.
    drop(cluster);
    drop(etcd);
}

/// etcd stopped for 30 s: forwarding between existing pods goes on
/// (the last known peers stay), status says the store is away, and a node
/// that joined meanwhile is learned once etcd is back, from a full read
/// since the history it missed was compacted.
#[test]
fn forwarding_goes_on_while_the_store_is_away_and_resyncs_after() {
    let (mut cluster, mut etcd) = leased_cluster("host-gw");
    meet_and_add_pods(&mut cluster, 1500);
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(ping(&a.ns, &b.ip, 2), "{}", cluster.logs());

    etcd.kill();
    wait_until("status says the store is away", || {
        cluster.nodes[1].ctl_json(&["status"])["store"]["connected"] == false
    });
    // 30 s without the store, a ping every 50 ms: none lost.
    assert!(ping(&a.ns, &b.ip, 600), "forwarding with the store away");

    // Changes made while the nodes were away reach them when the store is
    // back: here the history they missed is compacted before they return,
    // so they must read it all again (a second full read each).
    etcd.cut_off(true);
    etcd.resume();
    // (Two writes: a watch may resume at the compaction's own revision.)
    etcd.put(&format!("{PREFIX}/subnets/10.244.206.0-24"), FLANNELD_LEASE);
    etcd.delete(&format!("{PREFIX}/subnets/10.244.206.0-24"));
    let revision = etcd.put(&format!("{PREFIX}/subnets/10.244.207.0-24"), FLANNELD_LEASE);
    etcd.compact(revision);
    etcd.cut_off(false);
    for n in 0..2 {
        wait_until("a lease written while away applied", || {
            peer(&cluster, n, "10.244.207.0-24").is_some()
        });
        let status = cluster.nodes[n].ctl_json(&["status"]);
        assert_eq!(status["store"]["connected"], true, "{status}");
        assert_eq!(status["store"]["resyncs"], 2, "{status}");
        assert_eq!(status["store"]["leases"], 2, "{status}");
    }
    assert!(ping(&a.ns, &b.ip, 2), "{}", cluster.logs());
    cluster.expected_warnings.push("lease store unreachable");
}

/// Ten nodes that ask for a lease at the same moment, from a network of
/// fifteen subnets, each get one, and no two the same: a lease is written
/// by a transaction that fails when another node wrote the key first, and
/// the loser picks again. (The test runs itself a second time inside the
/// namespace etcd serves, where its threads are the ten nodes.)
#[test]
fn ten_nodes_starting_at_once_never_share_a_subnet() {
    const ENV: &str = "PODSWITCH_TEST_ETCD_URL";
    if let Ok(url) = std::env::var(ENV) {
        return race_for_leases(&url);
    }
    require(&["ip", "etcd", "/usr/bin/python3"]);
    let ns = common::Netns::new("etcd");
    let etcd = Etcd::start(&ns, "127.0.0.1");
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network": "10.244.0.0/20", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#,
    );
    let me = std::env::current_exe().unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(me)
        .args([
            "--exact",
            "ten_nodes_starting_at_once_never_share_a_subnet",
            "--nocapture",
        ])
        .env(ENV, &etcd.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (leases, _) = etcd.range(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), 10, "{leases:?}");
    let mut owners: Vec<String> = leases
        .iter()
        .map(|(_, v, _)| serde_json::from_str::<Value>(v).unwrap()["PublicIP"].to_string())
        .collect();
    owners.sort();
    owners.dedup();
    assert_eq!(owners.len(), 10, "one lease per node: {leases:?}");
}

fn race_for_leases(url: &str) {
    use podswitch_lease::etcd::{EtcdOptions, Store};
    use podswitch_lease::flannel::LeaseAttrs;
    let options = EtcdOptions {
        endpoints: vec![url.to_string()],
        prefix: PREFIX.into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        timeout: Duration::from_secs(5),
    };
    let start = std::sync::Arc::new(std::sync::Barrier::new(10));
    let nodes: Vec<_> = (1..=10u8)
        .map(|i| {
            let (options, start) = (options.clone(), std::sync::Arc::clone(&start));
            std::thread::spawn(move || {
                let store = Store::connect(options).unwrap();
                let network = store.network().unwrap();
                let attrs = LeaseAttrs::own(
                    std::net::Ipv4Addr::new(192, 168, 100, i),
                    "vxlan",
                    1,
                    &format!("0e:00:00:00:00:{i:02x}"),
                );
                start.wait();
                store.acquire(&network, &attrs, None, None).unwrap().subnet
            })
        })
        .collect();
    let mut subnets: Vec<_> = nodes.into_iter().map(|n| n.join().unwrap()).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 10, "two nodes hold one subnet: {subnets:?}");
}

/// A podswitch node joins a cluster whose other node runs flannel's
/// kernel data path, through the store alone: the kernel node's lease is
/// in etcd as flanneld writes it; podswitchd leases a subnet beside it and
/// makes it a peer; the kernel node gets flanneld's three entries from
/// podswitch's lease, read from etcd as flanneld reads it. Pods reach each
/// other both ways, TCP included, with every default offload on.
#[test]
fn a_podswitch_node_joins_a_kernel_flannel_node_through_etcd() {
    require(&["ip", "bridge", "ping", "etcd", "/usr/bin/python3", "sysctl"]);
    const KERNEL_VTEP: &str = "42:88:6a:88:a9:3f";
    let mut cluster = Cluster::new("vxlan", "bridge", 0);
    cluster.port_kind = "af-packet".into();
    let etcd = Etcd::start(&cluster.nodes[0].ns, "192.168.100.1");
    etcd.put(&format!("{PREFIX}/config"), NETWORK);
    let kernel_pod = cluster.add_pod(1, 2, 1450);
    kernel_flannel_node(
        &cluster.nodes[1].ns,
        "10.244.2",
        KERNEL_VTEP,
        "192.168.100.2",
        &[&cluster.pods[kernel_pod].host_if],
    );
    etcd.put(
        &format!("{PREFIX}/subnets/10.244.2.0-24"),
        &format!(
            r#"{{"PublicIP":"192.168.100.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{KERNEL_VTEP}"}}}}"#
        ),
    );
    cluster.store = Some(etcd.url.clone());
    cluster.start(0, &[]);

    let subnet = cluster.nodes[0].ctl_json(&["status"])["pod_cidr"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(subnet, "10.244.2.0/24", "the kernel node's subnet is taken");
    let lease: Value = serde_json::from_str(
        &etcd
            .get(&format!("{PREFIX}/subnets/{}", subnet.replace('/', "-")))
            .expect("podswitch's lease"),
    )
    .unwrap();
    let net = subnet.trim_end_matches(".0/24").to_string();
    kernel_flannel_peer(
        &cluster.nodes[1].ns,
        &net,
        lease["BackendData"]["VtepMAC"].as_str().unwrap(),
        lease["PublicIP"].as_str().unwrap(),
    );
    wait_until("the kernel node's lease applied", || {
        peer(&cluster, 0, "10.244.2.0-24").is_some_and(|p| p["vtep_mac"] == KERNEL_VTEP)
    });
    cluster.nodes[0].pod_net = net;
    let ours = cluster.add_pod(0, 2, 1450);
    cluster.attach_pods(0);
    let (a, b) = (&cluster.pods[ours], &cluster.pods[kernel_pod]);
    assert!(
        ping(&a.ns, &b.ip, 3),
        "podswitch -> kernel\n{}",
        cluster.logs()
    );
    assert!(
        ping(&b.ns, &a.ip, 3),
        "kernel -> podswitch\n{}",
        cluster.logs()
    );
    tcp_transfer(&a.ns, &b.ns, &b.ip, 4 << 20)
        .unwrap_or_else(|e| panic!("TCP podswitch -> kernel: {e}\n{}", cluster.logs()));
    tcp_transfer(&b.ns, &a.ns, &a.ip, 4 << 20)
        .unwrap_or_else(|e| panic!("TCP kernel -> podswitch: {e}\n{}", cluster.logs()));
    drop(cluster);
    drop(etcd);
}

/// Nodes started with no peers find each other through the store and
/// carry ping and SHA-256-checked TCP in every backend; a node killed
/// whose lease is then revoked disappears from the other's peers.
#[test]
fn every_backend_carries_traffic_between_nodes_that_met_in_the_store() {
    for backend in ["vxlan", "host-gw", "udp", "ipip", "directrouting"] {
        let (mut cluster, etcd) = leased_cluster(backend);
        meet_and_add_pods(
            &mut cluster,
            common::cluster::pod_mtu(backend.parse().unwrap()),
        );
        let keys: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| {
                let status = node.ctl_json(&["status"]);
                assert_eq!(status["backend"], backend, "{status}");
                status["pod_cidr"].as_str().unwrap().replace('/', "-")
            })
            .collect();
        let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
        assert!(ping(&a.ns, &b.ip, 2), "{backend}\n{}", cluster.logs());
        tcp_transfer(&a.ns, &b.ns, &b.ip, 4 << 20)
            .unwrap_or_else(|e| panic!("{backend}: {e}\n{}", cluster.logs()));
        tcp_transfer(&b.ns, &a.ns, &a.ip, 4 << 20)
            .unwrap_or_else(|e| panic!("{backend}: {e}\n{}", cluster.logs()));

        cluster.nodes[1].daemon.as_mut().unwrap().kill_9();
        etcd.delete(&format!("{PREFIX}/subnets/{}", keys[1]));
        wait_until("a revoked lease's peer removed", || {
            peer(&cluster, 0, &keys[1]).is_none()
        });
        drop(cluster);
        drop(etcd);
    }
}

/// The store over TLS with client certificates, as production etcd runs:
/// podswitchd checks the server against the CA it is given and shows its
/// own certificate; nodes lease and find each other as over plain HTTP.
#[test]
fn the_store_over_tls_with_client_certificates() {
    require(&["ip", "ping", "etcd", "openssl", "/usr/bin/python3"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 0);
    cluster.port_kind = "af-packet".into();
    let certs = common::etcd::Certs::new("192.168.100.1");
    let etcd = Etcd::start_tls(&cluster.nodes[0].ns, "192.168.100.1", &certs);
    etcd.put(&format!("{PREFIX}/config"), NETWORK);
    let d = certs.dir.display();
    cluster.store = Some(etcd.url.clone());
    cluster.store_tls = Some([
        format!("{d}/ca.pem"),
        format!("{d}/client.pem"),
        format!("{d}/client-key.pem"),
    ]);
    cluster.start(0, &[]);
    cluster.start(1, &[]);
    assert_eq!(etcd.range(&format!("{PREFIX}/subnets/")).0.len(), 2);
    for n in 0..2 {
        wait_until("the other node's lease applied over TLS", || {
            cluster.nodes[n].ctl_json(&["status"])["store"]["leases"] == 1
        });
    }
    drop(cluster);
    drop(etcd);
}

/// A three-member etcd whose leader is killed while pods ping across
/// nodes: no ping is lost (forwarding never waits for the store), and a
/// node that joins after the failover is still learned by both nodes,
/// through a surviving member.
#[test]
fn the_stores_leader_dies_and_nothing_is_lost() {
    require(&["ip", "ping", "etcd", "/usr/bin/python3"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 0);
    cluster.port_kind = "af-packet".into();
    let ips = ["192.168.100.11", "192.168.100.12", "192.168.100.13"];
    for ip in ips {
        cluster.nodes[0]
            .ns
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", "ul0"]);
    }
    let mut members = Etcd::start_cluster(&cluster.nodes[0].ns, &ips);
    members[0].put(&format!("{PREFIX}/config"), NETWORK);
    // The config's endpoints array, all three members.
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    cluster.store = Some(urls.join("\", \""));
    cluster.expected_warnings.push("lease store unreachable");
    for n in 0..2 {
        cluster.start(n, &[]);
    }
    meet_and_add_pods(&mut cluster, 1450);
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(ping(&a.ns, &b.ip, 2), "{}", cluster.logs());

    let leader = members.iter().position(Etcd::is_leader).expect("a leader");
    std::thread::scope(|scope| {
        let pinging = scope.spawn(|| ping(&a.ns, &b.ip, 100));
        std::thread::sleep(Duration::from_secs(1));
        members[leader].kill();
        assert!(pinging.join().unwrap(), "pings lost while the leader died");
    });
    let survivor = members.iter().position(|m| m.child_alive()).unwrap();
    wait_until("a new leader", || members.iter().any(Etcd::is_leader));
    members[survivor].put(&format!("{PREFIX}/subnets/10.244.207.0-24"), FLANNELD_LEASE);
    for n in 0..2 {
        wait_until("a lease written after the failover applied", || {
            peer(&cluster, n, "10.244.207.0-24").is_some()
        });
    }
    drop(cluster);
    drop(members);
}
