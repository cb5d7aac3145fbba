//! podswitchd's Prometheus endpoint on a running two-node cluster, read
//! and parsed by the Prometheus project's own Python client (Debian's
//! python3-prometheus-client), not by anything of ours (needs root).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::cluster::Cluster;
use common::require;
use common::traffic::{ping, tcp_transfer, udp_datagrams};

const LISTEN: &str = "127.0.0.1:9469";

/// Scrapes the endpoint from inside the node's namespace and parses it with
/// the OpenMetrics parser; returns every sample as `name{labels} -> value`
/// and the families' types.
const SCRAPE: &str = r#"
import sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
with urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=5) as r:
    assert r.headers["Content-Type"].startswith("application/openmetrics-text"), r.headers["Content-Type"]
    text = r.read().decode()
for family in text_string_to_metric_families(text):
    print("TYPE", family.name, family.type)
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print("SAMPLE", s.name + "{" + labels + "}", s.value)
"#;

struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn value(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}; have {:?}", self.samples.keys()))
    }
}

fn scrape(cluster: &Cluster, node: usize) -> Scrape {
    let out = cluster.nodes[node]
        .ns
        .exec("/usr/bin/python3", &["-c", SCRAPE, LISTEN]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("TYPE"), Some(name), Some(kind)) => {
                types.insert(name.to_string(), kind.to_string());
            }
            (Some("SAMPLE"), Some(key), Some(value)) => {
                samples.insert(key.to_string(), value.parse().unwrap());
            }
            _ => panic!("unexpected scraper output: {line}"),
        }
    }
    Scrape { samples, types }
}

/// The endpoint parses as OpenMetrics with the Prometheus client's own
/// parser; counters, gauges and the batch histogram have their types; the
/// per-port counters rise by exactly the frames sent; the control request
/// counter counts requests; a client that connects and never reads holds
/// nothing up: pods keep talking and the next scrape is answered.
#[test]
fn metrics_parse_count_exactly_and_ignore_slow_clients() {
    require(&["ip", "ping", "/usr/bin/python3"]);
    let mut cluster = Cluster::new("vxlan", "bridge", 2);
    cluster.port_kind = "af-packet".into();
    for n in 0..2 {
        cluster.start(n, &["--metrics-listen", LISTEN]);
        cluster.attach_pods(n);
    }
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    // Warm the ARP caches, so the counted window carries only the datagrams.
    assert!(ping(&a.ns, &b.ip, 2), "same-node ping");
    assert!(
        ping(&a.ns, &cluster.pods[2].ip, 2),
        "cross-node ping\n{}",
        cluster.logs()
    );

    let before = scrape(&cluster, 0);
    for family in [
        "podswitch_port_rx_packets",
        "podswitch_port_tx_bytes",
        "podswitch_drops",
        "podswitch_worker_busy_seconds",
        "podswitch_worker_spins_preempted",
        "podswitch_worker_spins_rescued",
        "podswitch_worker_handed_off",
        "podswitch_worker_yields",
        "podswitch_control_requests",
        "podswitch_host_connections_evicted",
    ] {
        assert_eq!(
            before.types.get(family).map(String::as_str),
            Some("counter"),
            "{family}"
        );
    }
    for family in [
        "podswitch_routes",
        "podswitch_peers",
        "podswitch_fdb_entries",
        "podswitch_host_connections",
    ] {
        assert_eq!(
            before.types.get(family).map(String::as_str),
            Some("gauge"),
            "{family}"
        );
    }
    assert_eq!(
        before
            .types
            .get("podswitch_worker_batch_size")
            .map(String::as_str),
        Some("histogram")
    );
    // The worker forwards in SCHED_FIFO by default (worker_priority).
    assert_eq!(before.value("podswitch_worker_realtime{worker=0}"), 1.0);
    assert!(before.value("podswitch_worker_handed_off_total{worker=0}") >= 0.0);
    assert_eq!(before.value("podswitch_peers{}"), 1.0);
    assert!(before.value("podswitch_routes{}") >= 4.0);

    let sent = 200;
    let received = udp_datagrams(&a.ns, &b.ns, &b.ip, sent, 100);
    assert_eq!(received, sent, "every datagram arrived");
    let after = scrape(&cluster, 0);
    let rx = |s: &Scrape, port: &str| {
        s.value(&format!("podswitch_port_rx_packets_total{{port={port}}}"))
    };
    let tx = |s: &Scrape, port: &str| {
        s.value(&format!("podswitch_port_tx_packets_total{{port={port}}}"))
    };
    assert_eq!(
        rx(&after, &a.host_if) - rx(&before, &a.host_if),
        f64::from(sent),
        "the sender's port received exactly the datagrams"
    );
    assert_eq!(
        tx(&after, &b.host_if) - tx(&before, &b.host_if),
        f64::from(sent),
        "the receiver's port sent exactly the datagrams"
    );
    let requests = "podswitch_control_requests_total{outcome=ok}";
    assert!(after.value(requests) >= before.value(requests));
    // Whichever worker the datagrams' CPUs gave them to (a worker per
    // CPU by default).
    let batches = |s: &Scrape| -> f64 {
        s.samples
            .iter()
            .filter(|(key, _)| key.starts_with("podswitch_worker_batch_size_count{"))
            .map(|(_, value)| value)
            .sum()
    };
    assert!(batches(&after) > batches(&before), "batches counted");

    // Fifty clients that send a request and never read a byte.
    let mut stalled = cluster.nodes[0].ns.spawn(
        "/usr/bin/python3",
        &[
            "-c",
            "import socket, time, sys\n\
             conns = []\n\
             for _ in range(50):\n\
             \x20   s = socket.create_connection(('127.0.0.1', 9469))\n\
             \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)\n\
             \x20   s.sendall(b'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' * 20)\n\
             \x20   conns.append(s)\n\
             time.sleep(15)\n",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ping(&a.ns, &cluster.pods[2].ip, 20),
        "forwarding with stalled scrapers"
    );
    tcp_transfer(&a.ns, &cluster.pods[2].ns, &cluster.pods[2].ip, 4 << 20)
        .expect("TCP with stalled scrapers");
    // Threads stay bounded by the connections (tiny_http reads each on a
    // thread; a response waits on its own thread), not by the requests.
    let pid = cluster.nodes[0].daemon.as_ref().unwrap().pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        threads <= 2 * 50 + 10,
        "{threads} threads for 50 stalled clients"
    );
    let during = scrape(&cluster, 0);
    assert!(
        during.value(requests) >= after.value(requests),
        "a scrape is still answered"
    );
    let _ = stalled.kill();
    let _ = stalled.wait();

    // `top --once` shows the traffic of its window as rates.
    let pinger =
        a.ns.spawn("ping", &["-q", "-i", "0.01", "-c", "100", &b.ip]);
    let top = cluster.nodes[0].ctl(&["top", "--once", "--interval", "0.5"]);
    let text = String::from_utf8_lossy(&top.stdout).into_owned();
    let _ = pinger.wait_with_output();
    assert!(
        top.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with(&a.host_if))
        .unwrap_or_else(|| panic!("no row for {}: {text}", a.host_if));
    let rx_pps: f64 = row
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap_or(0.0);
    assert!(rx_pps > 10.0, "pings at 100/s show as a rate: {text}");
    assert!(
        text.contains("DROP REASON") && text.contains("WORKER") && text.contains("HANDOFFS/S"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("0 ") && l.contains('%')),
        "worker 0's load: {text}"
    );
}
