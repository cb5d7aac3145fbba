//! `podswitchctl lab`: simulated clusters for each dataplane and backend,
//! side by side, and nothing left behind (needs root; CI has it).

mod common;

use std::process::Command;

use common::require;
use serde_json::Value;

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_podswitchctl"))
        .args(args)
        .output()
        .expect("run podswitchctl")
}

/// A unique lab name for this test process.
fn name(what: &str) -> String {
    format!("t{}{what}", std::process::id() % 10000)
}

/// Takes a lab down when dropped, a failing test included.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = ctl(&["lab", "down", "--name", &self.0]);
    }
}

fn up(name: &str, dataplane: &str, backend: &str, mode: &str) -> Value {
    let out = ctl(&[
        "lab",
        "up",
        "--name",
        name,
        "--dataplane",
        dataplane,
        "--backend",
        backend,
        "--gateway-mode",
        mode,
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "lab up {dataplane}/{backend}/{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("lab status JSON")
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

/// No namespace, process or file of the lab is left.
fn assert_gone(name: &str) {
    let list = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !list.contains(&format!("lab-{name}-")),
        "namespaces left: {list}"
    );
    assert!(
        !std::path::Path::new(&format!("/run/podswitch-lab/{name}")).exists(),
        "state left"
    );
    let ps = String::from_utf8_lossy(
        &Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !ps.contains(&format!("/run/podswitch-lab/{name}/")),
        "daemons left: {ps}"
    );
}

#[test]
fn every_dataplane_and_backend_builds_a_working_lab_and_leaves_nothing() {
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

#[test]
fn labs_side_by_side_do_not_interfere_and_missing_features_are_named() {
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
