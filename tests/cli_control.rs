//! `podswitchctl` against a control socket served in-process: every
//! command, human tables and `--json`, and the exit codes and messages of
//! failures.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use podswitch_control::handler::Handler;
use podswitch_control::server::{Server, Stopper};
use podswitch_engine::config::NodeConfig;
use podswitch_engine::tables::{PortSpec, Tables};

struct Daemon {
    path: PathBuf,
    stopper: Stopper,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stopper.stop();
        self.thread.take().unwrap().join().unwrap();
        let _ = std::fs::remove_dir_all(self.path.parent().unwrap());
    }
}

fn daemon() -> Daemon {
    // One directory per daemon: tests run in parallel.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("psw-cli-{}-{n}", std::process::id()));
    let path = dir.join("podswitchd.sock");
    let config = NodeConfig::flannel(
        "node1",
        "10.244.1.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, 1),
    );
    let tables = Tables::new(config, 64);
    tables.attach_port(PortSpec::underlay("eth0")).unwrap();
    tables.attach_port(PortSpec::host("podswitch0")).unwrap();
    let server = Server::bind(&path, Arc::new(Handler::new(tables, || 0))).unwrap();
    let stopper = server.stopper();
    let thread = std::thread::spawn(move || server.run().unwrap());
    Daemon {
        path,
        stopper,
        thread: Some(thread),
    }
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podswitchctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn ok(socket: &Path, args: &[&str]) -> String {
    let out = ctl(socket, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn podswitchctl_drives_the_daemon() {
    let d = daemon();
    let s = d.path.as_path();
    assert!(ok(s, &["version"]).contains("protocol 1"));
    assert!(ok(s, &["status"]).contains("node:         node1"));
    assert_eq!(
        ok(
            s,
            &[
                "port",
                "add",
                "veth-bb1",
                "--ip",
                "10.244.1.2",
                "--mac",
                "0a:58:0a:f4:01:02"
            ]
        ),
        "ok: port 2\n"
    );
    let ports = ok(s, &["port", "list"]);
    assert!(ports.starts_with("PORT  INTERFACE"), "{ports}");
    assert!(
        ports.contains("veth-bb1") && ports.contains("10.244.1.2"),
        "{ports}"
    );
    ok(
        s,
        &[
            "peer",
            "add",
            "node2",
            "--underlay-ip",
            "192.168.100.2",
            "--pod-cidr",
            "10.244.2.0/24",
            "--vtep-mac",
            "d6:8a:5e:47:3c:02",
        ],
    );
    assert!(ok(s, &["peer", "list"]).contains("node2"));
    ok(s, &["route", "add", "10.244.9.0/24", "peer:node2"]);
    let routes = ok(s, &["route", "list"]);
    assert!(
        routes.contains("10.244.9.0/24") && routes.contains("peer:node2"),
        "{routes}"
    );
    let trace = ok(
        s,
        &["trace", "--in-port", "veth-bb1", "--dst-ip", "10.244.9.7"],
    );
    assert!(
        trace.contains("encapsulate vxlan: 192.168.100.1 -> 192.168.100.2"),
        "{trace}"
    );
    assert!(trace.contains("leaves on eth0:"), "{trace}");
    let json: serde_json::Value = serde_json::from_str(&ok(
        s,
        &[
            "--json",
            "trace",
            "--in-port",
            "veth-bb1",
            "--dst-ip",
            "10.244.9.7",
        ],
    ))
    .unwrap();
    assert_eq!(json["outputs"][0]["port"], "eth0");
    assert!(ok(s, &["stats"]).contains("DROP REASON"));
    assert!(ok(s, &["fdb", "show"]).contains("entries, limit 8192"));
    ok(s, &["fdb", "flush"]);
    assert!(
        ok(s, &["fdb", "show"])
            .lines()
            .any(|l| l.trim_start().starts_with("0 entries,")),
        "the table is empty after a flush"
    );
    assert!(ok(s, &["neigh", "show"]).contains("0a:58:0a:f4:01:02"));
    ok(s, &["route", "del", "10.244.9.0/24"]);
    ok(s, &["peer", "del", "node2"]);
    ok(s, &["port", "del", "veth-bb1"]);

    // The daemon's reason, exit 1.
    let out = ctl(s, &["port", "del", "veth-bb1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "podswitchctl: no port veth-bb1\n"
    );
    let out = ctl(s, &["route", "add", "10.244.9.1/24", "blackhole"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean 10.244.9.0/24?"));
    // Bad arguments caught before asking, exit 2.
    let out = ctl(s, &["route", "add", "10.244.9.0/24", "somewhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("local:IFACE, peer:NAME"));
}

#[test]
fn an_unreachable_daemon_is_reported() {
    let out = ctl(Path::new("/nonexistent/podswitchd.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot reach podswitchd at /nonexistent/podswitchd.sock"));
}

/// A reader that stops early (`podswitchctl status | grep -q ...`, `|
/// head`) is no error: podswitchctl exits 0 and says nothing, where it
/// used to panic on the broken pipe.
#[test]
fn a_reader_that_goes_away_is_no_error() {
    let d = daemon();
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["--json", "peer", "list"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_podswitchctl"))
            .arg("--socket")
            .arg(&d.path)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the reply can be written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
