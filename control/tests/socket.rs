//! The control socket end to end, in-process: every request type, bad
//! input of every kind, many clients at once, mode 0600, peer credentials.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use podswitch_control::client::{Client, ClientError};
use podswitch_control::handler::Handler;
use podswitch_control::protocol::{FrameSpec, NextHopSpec, Request, MAX_LINE};
use podswitch_control::server::{Server, Stopper};
use podswitch_engine::config::NodeConfig;
use podswitch_engine::tables::{PortSpec, Tables};
use serde_json::Value;

struct Running {
    path: PathBuf,
    stopper: Stopper,
    thread: Option<thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tables of node1 (10.244.1.0/24 at 192.168.100.1, flannel's
/// layout), room for 64 ports.
fn node1_tables() -> Arc<Tables> {
    let config = NodeConfig::flannel(
        "node1",
        "10.244.1.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, 1),
    );
    Tables::new(config, 64)
}

fn start() -> Running {
    let dir =
        std::env::temp_dir().join(format!("psw-ctl-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("podswitchd.sock");
    let tables = node1_tables();
    tables.attach_port(PortSpec::underlay("eth0")).unwrap();
    tables.attach_port(PortSpec::host("podswitch0")).unwrap();
    let server = Server::bind(&path, Arc::new(Handler::new(tables, || 1000))).unwrap();
    let stopper = server.stopper();
    let thread = thread::spawn(move || server.run().unwrap());
    Running {
        path,
        stopper,
        thread: Some(thread),
        dir,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn client(r: &Running) -> Client {
    Client::connect(&r.path, Duration::from_secs(10)).unwrap()
}

fn ok(c: &mut Client, request: Request) -> Value {
    c.call(&request)
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

fn fails(c: &mut Client, request: Request, expect: &str) {
    match c.call(&request) {
        Err(ClientError::Daemon(e)) => {
            assert!(e.contains(expect), "{request:?}: {e:?} lacks {expect:?}")
        }
        other => panic!("{request:?}: expected an error, got {other:?}"),
    }
}

#[test]
fn every_request_type() {
    let r = start();
    let mode = std::fs::metadata(&r.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the socket is for root and the daemon's user only"
    );
    let mut c = client(&r);
    assert_eq!(ok(&mut c, Request::Version)["protocol"], 1);
    assert_eq!(ok(&mut c, Request::Status)["node"], "node1");

    let added = ok(
        &mut c,
        Request::PortAdd {
            interface: "veth-bb1".into(),
            ip: "10.244.1.2".parse().unwrap(),
            mac: "0a:58:0a:f4:01:02".parse().unwrap(),
            container_id: Some("c0ffee".into()),
            ifname: Some("eth0".into()),
            anti_spoof: true,
            kind: None,
            egress_limit: None,
        },
    );
    assert_eq!(added["port"], 2);
    fails(
        &mut c,
        Request::PortAdd {
            interface: "veth-x".into(),
            ip: "10.244.1.2".parse().unwrap(),
            mac: "0a:58:0a:f4:01:09".parse().unwrap(),
            container_id: None,
            ifname: None,
            anti_spoof: true,
            kind: None,
            egress_limit: None,
        },
        "already attached",
    );
    fails(
        &mut c,
        Request::PortAdd {
            interface: "veth-y".into(),
            ip: "10.9.9.9".parse().unwrap(),
            mac: "0a:58:0a:f4:01:09".parse().unwrap(),
            container_id: None,
            ifname: None,
            anti_spoof: true,
            kind: None,
            egress_limit: None,
        },
        "outside this node's pod subnet",
    );
    let ports = ok(&mut c, Request::PortList);
    assert!(ports
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["interface"] == "veth-bb1" && p["container_id"] == "c0ffee"));

    ok(
        &mut c,
        Request::PeerAdd {
            name: "node2".into(),
            underlay_ip: "192.168.100.2".parse().unwrap(),
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            vtep_mac: "d6:8a:5e:47:3c:02".parse().unwrap(),
            underlay_mac: None,
            backend: None,
            vni: None,
        },
    );
    fails(
        &mut c,
        Request::PeerAdd {
            name: "node3".into(),
            underlay_ip: "192.168.100.3".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            vtep_mac: "d6:8a:5e:47:3c:03".parse().unwrap(),
            underlay_mac: None,
            backend: None,
            vni: None,
        },
        "overlaps",
    );
    assert_eq!(ok(&mut c, Request::PeerList)[0]["forwarding"], "vxlan");

    ok(
        &mut c,
        Request::RouteAdd {
            prefix: "10.250.0.0/16".parse().unwrap(),
            next_hop: NextHopSpec::Peer("node2".into()),
        },
    );
    fails(
        &mut c,
        Request::RouteAdd {
            prefix: "10.251.0.0/16".parse().unwrap(),
            next_hop: NextHopSpec::Peer("nobody".into()),
        },
        "no peer nobody",
    );
    let routes = ok(&mut c, Request::RouteList);
    assert!(routes
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["prefix"] == "10.250.0.0/16" && r["next_hop"]["peer"] == "node2"));
    ok(
        &mut c,
        Request::RouteDel {
            prefix: "10.250.0.0/16".parse().unwrap(),
        },
    );
    fails(
        &mut c,
        Request::RouteDel {
            prefix: "10.250.0.0/16".parse().unwrap(),
        },
        "no route",
    );

    // Trace by fields: the pod pings node2's pod, encapsulated in VXLAN.
    let trace = ok(
        &mut c,
        Request::Trace {
            in_port: "veth-bb1".into(),
            hex: None,
            frame: Some(FrameSpec::to("10.244.2.5".parse().unwrap())),
        },
    );
    let steps: Vec<&str> = trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("encapsulate vxlan: 192.168.100.1 -> 192.168.100.2")),
        "{steps:?}"
    );
    assert_eq!(trace["outputs"][0]["port"], "eth0");
    // A pod's 20,000-byte TSO super-frame: routed and encapsulated as one
    // packet, leaving as 15 segments' worth (20000 / 1398).
    let sized = |payload_len, gso_size, protocol: &str| Request::Trace {
        in_port: "veth-bb1".into(),
        hex: None,
        frame: Some(FrameSpec {
            protocol: Some(protocol.into()),
            payload_len: Some(payload_len),
            gso_size: Some(gso_size),
            ..FrameSpec::to("10.244.2.5".parse().unwrap())
        }),
    };
    let super_frame = |gso_size, protocol: &str| sized(20_000, gso_size, protocol);
    let traced = ok(&mut c, super_frame(1398, "tcp"));
    let text = traced["steps"].to_string();
    assert!(text.contains("offload: a GSO super-frame"), "{text}");
    assert!(text.contains("gso size 1398"), "{text}");
    assert!(text.contains("encapsulate vxlan"), "{text}");
    assert!(text.contains("a super-frame of 15 segments"), "{text}");
    // Its segments, not its length, must fit the tunnel: 1460 does not.
    let too_big = ok(&mut c, super_frame(1460, "tcp"));
    assert!(
        too_big["steps"]
            .to_string()
            .contains("fragmentation_needed"),
        "{too_big}"
    );
    // A BIG TCP super-frame (150,000 bytes, longer than an IPv4 length
    // can say) is cut into three of at most 64 KiB before the tunnel.
    let big = ok(&mut c, sized(150_000, 1398, "tcp"));
    let text = big["steps"].to_string();
    assert!(text.contains("a BIG TCP super-frame"), "{text}");
    assert_eq!(big["outputs"].as_array().map(Vec::len), Some(3), "{big}");
    assert!(
        big["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["hex"].as_str().unwrap().len() / 2 <= 14 + 65535),
        "{big}"
    );
    fails(&mut c, sized(196_555, 1398, "tcp"), "above 196554");
    fails(&mut c, super_frame(1398, "udp"), "a super-frame is TCP");
    fails(&mut c, super_frame(0, "tcp"), "gso_size 0");
    // Trace by hex: the frame that just came out, replayed from the underlay,
    // is not for us (node2's VTEP) and is dropped with its reason.
    let hex = trace["outputs"][0]["hex"].as_str().unwrap().to_string();
    let replay = ok(
        &mut c,
        Request::Trace {
            in_port: "eth0".into(),
            hex: Some(hex),
            frame: None,
        },
    );
    assert!(
        replay["steps"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("drop: "),
        "{replay}"
    );
    fails(
        &mut c,
        Request::Trace {
            in_port: "eth0".into(),
            hex: None,
            frame: None,
        },
        "exactly one",
    );
    fails(
        &mut c,
        Request::Trace {
            in_port: "veth-nope".into(),
            hex: Some("00".into()),
            frame: None,
        },
        "no port veth-nope",
    );
    fails(
        &mut c,
        Request::Trace {
            in_port: "eth0".into(),
            hex: Some("0g".into()),
            frame: None,
        },
        "hex",
    );

    let stats = ok(&mut c, Request::Stats);
    assert!(stats["ports"].is_array() && stats["drops"].is_object());
    assert!(ok(&mut c, Request::FdbShow)["entries"].is_array());
    assert!(ok(&mut c, Request::FdbFlush)["flushed"].is_number());
    assert_eq!(ok(&mut c, Request::NeighShow)[0]["ip"], "10.244.1.2");
    ok(
        &mut c,
        Request::PeerDel {
            name: "node2".into(),
        },
    );
    fails(
        &mut c,
        Request::PeerDel {
            name: "node2".into(),
        },
        "no peer node2",
    );
    ok(
        &mut c,
        Request::PortDel {
            interface: "veth-bb1".into(),
        },
    );
    fails(
        &mut c,
        Request::PortDel {
            interface: "veth-bb1".into(),
        },
        "no port veth-bb1",
    );
}

#[test]
fn bad_input_gets_an_error_and_the_connection_keeps_working() {
    let r = start();
    let mut c = client(&r);
    let reply = |c: &mut Client, line: &str| -> Value {
        serde_json::from_str(&c.raw(line).unwrap()).unwrap()
    };
    for (line, expect) in [
        ("garbage", "not a JSON object"),
        (r#"{"v":1,"request":"status""#, "not a JSON object"),
        (r#"{"v":1,"request":"reboot"}"#, "unknown variant"),
        (r#"{"request":"status"}"#, "missing \"v\""),
        (r#"{"v":7,"request":"status"}"#, "version 7"),
        (
            r#"{"v":1,"request":"port-del","interfce":"x"}"#,
            "unknown field",
        ),
        ("[]", "not a JSON object"),
        // Malformed addresses, named in the error.
        (
            r#"{"v":1,"request":"port-add","interface":"veth-z","ip":"10.244.1.9","mac":"nope"}"#,
            "invalid MAC address \"nope\"",
        ),
        (
            r#"{"v":1,"request":"port-add","interface":"veth-z","ip":"10.244.1.300","mac":"0a:58:0a:f4:01:02"}"#,
            "\"10.244.1.300\" is not an IPv4 address",
        ),
        (
            r#"{"v":1,"request":"route-add","prefix":"10.250.0.1/16","next_hop":"host"}"#,
            "10.250.0.1/16 has host bits set; did you mean 10.250.0.0/16?",
        ),
        (
            r#"{"v":1,"request":"trace","in_port":"eth0","frame":{"dst_ip":"10.1.1.1","src_ip":"x"}}"#,
            "\"x\" is not an IPv4 address",
        ),
        // Unknown names, every choice named in the error.
        (
            r#"{"v":1,"request":"peer-add","name":"node4","underlay_ip":"192.168.100.4","pod_cidr":"10.244.4.0/24","vtep_mac":"d6:8a:5e:47:3c:04","backend":"gre"}"#,
            "backend \"gre\": one of vxlan, ipip, udp, host-gw, directrouting",
        ),
        (
            r#"{"v":1,"request":"port-add","interface":"veth-z","ip":"10.244.1.9","mac":"0a:58:0a:f4:01:09","kind":"af_xdp"}"#,
            "port kind \"af_xdp\": one of af-packet, af-xdp, tap",
        ),
    ] {
        let v = reply(&mut c, line);
        assert_eq!(v["ok"], false, "{line}");
        assert!(v["error"].as_str().unwrap().contains(expect), "{line}: {v}");
    }
    let huge = format!(
        r#"{{"v":1,"request":"port-del","interface":"{}"}}"#,
        "x".repeat(MAX_LINE + 100_000)
    );
    let v = reply(&mut c, &huge);
    assert!(v["error"].as_str().unwrap().contains("over the"), "{v}");
    // Raw bytes that are not UTF-8.
    let mut s = UnixStream::connect(&r.path).unwrap();
    s.write_all(b"\xff\xfe\n").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("not UTF-8"), "{line}");
    // Still serving, on the same connection.
    assert_eq!(c.call(&Request::Status).unwrap()["node"], "node1");
}

#[test]
fn many_clients_at_once() {
    let r = start();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let path = r.path.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&path, Duration::from_secs(10)).unwrap();
                for j in 0..50 {
                    let prefix = format!("10.{}.{}.0/24", 100 + i, j);
                    c.call(&Request::RouteAdd {
                        prefix: prefix.parse().unwrap(),
                        next_hop: NextHopSpec::Blackhole,
                    })
                    .unwrap();
                    assert!(c.raw("nonsense").unwrap().contains("\"ok\":false"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let routes = client(&r).call(&Request::RouteList).unwrap();
    let ours = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["next_hop"] == "blackhole" && r["prefix"].as_str().unwrap().starts_with("10.1")
        })
        .count();
    assert_eq!(ours, 16 * 50, "every client's routes are there");
}

#[test]
fn socket_file_lifecycle() {
    let r = start();
    // A second daemon on the same path is refused while the first serves.
    let tables = Tables::new(
        NodeConfig::flannel(
            "n",
            "10.244.1.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 100, 1),
        ),
        8,
    );
    let err = Server::bind(&r.path, Arc::new(Handler::new(tables.clone(), || 0))).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let path = r.path.clone();
    let dir = r.dir.clone();
    drop(r);
    assert!(
        !path.exists(),
        "the socket file is removed when the server stops"
    );
    // A stale socket file (its server gone without cleaning up) is replaced.
    std::fs::create_dir_all(&dir).unwrap();
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    let server = Server::bind(&path, Arc::new(Handler::new(tables, || 0))).unwrap();
    drop(server);
    // A regular file at the path is never replaced.
    std::fs::write(&path, b"not a socket").unwrap();
    let tables = Tables::new(
        NodeConfig::flannel(
            "n",
            "10.244.1.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 100, 1),
        ),
        8,
    );
    assert!(Server::bind(&path, Arc::new(Handler::new(tables, || 0))).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Even with the socket's mode opened by mistake, another user is refused
/// by the credential check (needs root to run a client as `nobody`).
#[test]
fn other_users_are_refused() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "this test needs root"
    );
    let r = start();
    std::fs::set_permissions(&r.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ntry:\n    s.sendall(b'{\"v\":1,\"request\":\"status\"}\\n')\nexcept BrokenPipeError:\n    pass  # refused and closed before our request arrived: the reason waits\nprint(s.makefile().readline())";
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(&r.path)
        .output()
        .expect("setpriv (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("uid 65534 may not use this socket"),
        "stdout {text:?} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Many peers added as one table change answer each as one request at a
/// time would: a bad request and a duplicate fail alone, the others are
/// in, in one new snapshot.
#[test]
fn peers_added_together_answer_one_by_one() {
    let tables = node1_tables();
    let handler = Handler::new(Arc::clone(&tables), || 0);
    let peer = |n: u8, vni: u32| Request::PeerAdd {
        name: format!("node{n}"),
        underlay_ip: Ipv4Addr::new(192, 168, 100, n),
        pod_cidr: format!("10.244.{n}.0/24").parse().unwrap(),
        vtep_mac: format!("02:0e:00:00:00:{n:02x}").parse().unwrap(),
        underlay_mac: None,
        backend: None,
        vni: Some(vni),
    };
    let version = tables.load().version;
    let answers = handler.add_peers(&[peer(2, 1), peer(3, 1 << 24), peer(2, 1), peer(4, 1)]);
    assert!(answers[0].is_ok(), "{answers:?}");
    assert!(
        answers[1].as_ref().unwrap_err().contains("24 bits"),
        "{answers:?}"
    );
    assert!(answers[2].is_err(), "a duplicate: {answers:?}");
    assert!(answers[3].is_ok(), "{answers:?}");
    let snap = tables.load();
    assert_eq!(snap.version, version + 1, "one snapshot for the batch");
    assert_eq!(snap.peers.len(), 2);
    assert_eq!(
        handler
            .handle(&Request::PeerList)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(tables.routes().1.len() >= 2, "routes to both peers");
}

/// A peer replaced (a lease whose VTEP or address changed) is one table
/// change: the very next snapshot has the new peer and its route, and no
/// snapshot was published without it. A peer that is not there cannot
/// be replaced.
#[test]
fn a_peer_is_replaced_in_one_change() {
    let tables = node1_tables();
    let handler = Handler::new(Arc::clone(&tables), || 0);
    let peer = |ip: &str, mac: &str| Request::PeerAdd {
        name: "node2".into(),
        underlay_ip: ip.parse().unwrap(),
        pod_cidr: "10.244.2.0/24".parse().unwrap(),
        vtep_mac: mac.parse().unwrap(),
        underlay_mac: None,
        backend: None,
        vni: None,
    };
    assert!(handler
        .replace_peer(&peer("192.168.100.2", "02:0e:00:00:00:02"))
        .is_err());
    handler
        .handle(&peer("192.168.100.2", "02:0e:00:00:00:02"))
        .unwrap();
    let version = tables.load().version;
    handler
        .replace_peer(&peer("192.168.100.22", "02:0e:00:00:00:22"))
        .unwrap();
    let snap = tables.load();
    assert_eq!(snap.version, version + 1, "one change");
    let list = handler.handle(&Request::PeerList).unwrap();
    assert_eq!(list[0]["underlay_ip"], "192.168.100.22", "{list}");
    assert_eq!(list[0]["vtep_mac"], "02:0e:00:00:00:22", "{list}");
    let routes = handler.handle(&Request::RouteList).unwrap().to_string();
    assert!(routes.contains("10.244.2.0/24"), "{routes}");
}
