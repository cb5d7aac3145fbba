//! The plugin's side of the CNI contract that needs no root and no
//! daemon: what a runtime reads back from VERSION and from a
//! configuration or environment it cannot accept (CNI specification
//! 1.1.0, "Error" section: a JSON error on stdout, exit code 1). Attaching
//! pods, which needs network namespaces, is tests/cni.rs at the top.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Runs the plugin with exactly `env` and `stdin`; (exit code, stdout).
fn plugin(env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_podswitch"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().expect("exited"), stdout)
}

const ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c1"),
    ("CNI_NETNS", "/var/run/netns/nothing"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/usr/lib/cni"),
];

#[test]
fn version_lists_every_supported_version() {
    let (code, out) = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["cniVersion"], "0.4.0", "answered in the version asked");
    let supported: Vec<&str> = out["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(&version), "{version} in {supported:?}");
    }
}

#[test]
fn bad_input_gets_the_specifications_error_codes() {
    let good = r#"{"cniVersion":"1.1.0","name":"podnet","type":"podswitch","ipam":{"type":"host-local","subnet":"10.244.1.0/24"}}"#;
    for (what, env, stdin, code) in [
        ("no CNI_COMMAND", &[][..], good, 4),
        (
            "an unknown command",
            &[("CNI_COMMAND", "FROB")][..],
            good,
            4,
        ),
        ("ADD without CNI_CONTAINERID", &ADD[..1], good, 4),
        ("configuration not JSON", ADD, "{not json", 6),
        (
            "an unsupported version",
            ADD,
            r#"{"cniVersion":"9.9.9","name":"podnet","type":"podswitch","ipam":{"type":"host-local"}}"#,
            1,
        ),
        (
            "a misspelt key of podswitch's",
            ADD,
            r#"{"cniVersion":"1.1.0","name":"podnet","type":"podswitch","gatewaymode":"bridge","ipam":{"type":"host-local","subnet":"10.244.1.0/24"}}"#,
            2,
        ),
        (
            "an unknown gateway mode",
            ADD,
            r#"{"cniVersion":"1.1.0","name":"podnet","type":"podswitch","gatewayMode":"tunnel","ipam":{"type":"host-local","subnet":"10.244.1.0/24"}}"#,
            7,
        ),
    ] {
        let (exit, out) = plugin(env, stdin);
        assert_eq!(exit, 1, "{what}: exit code; {out}");
        assert_eq!(out["code"], code, "{what}: {out}");
        assert!(
            !out["msg"].as_str().unwrap_or_default().is_empty(),
            "{what}: a message for the operator; {out}"
        );
    }
}
