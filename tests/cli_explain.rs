//! `podswitchctl explain` as a user runs it: on a pcap file, on hex, on a
//! malformed frame, and on bad input.

mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Output};

use podswitch_encap::pcap::PcapWriter;
use podswitch_encap::{hex, FrameBuf, MacAddr, OuterPath, Tunnel, TunnelConfig};

fn podswitchctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podswitchctl"))
        .args(args)
        .output()
        .expect("run podswitchctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An inner ping 10.244.2.2 -> 10.244.1.2 from the Scapy fixture.
fn inner() -> Vec<u8> {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/scapy_vectors.json")).unwrap();
    hex::decode(doc["vectors"][0]["inner"].as_str().unwrap()).unwrap()
}

fn vxlan_frame() -> Vec<u8> {
    let inner = inner();
    let mut buf = vec![0u8; 64 + inner.len()];
    buf[64..].copy_from_slice(&inner);
    let mut frame = FrameBuf::new(&mut buf, 64, 64 + inner.len());
    let path = OuterPath {
        src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        dst_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        src_ip: Ipv4Addr::new(192, 168, 100, 2),
        dst_ip: Ipv4Addr::new(192, 168, 100, 1),
    };
    Tunnel::new(TunnelConfig::vxlan())
        .encapsulate(&path, &mut frame, 1)
        .unwrap();
    frame.frame().to_vec()
}

#[test]
fn explains_a_pcap_layer_by_layer() {
    let file = common::TempFile::new("explain.pcap");
    let mut w = PcapWriter::new(std::fs::File::create(&file.0).unwrap()).unwrap();
    w.write_frame(0, &vxlan_frame()).unwrap();
    w.write_frame(1, &inner()).unwrap();
    w.finish().unwrap();
    let out = podswitchctl(&["explain", file.0.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "=== frame 1",
        "outer Ethernet II  (offset 0, 14 bytes)",
        "outer IPv4  (offset 14, 20 bytes)",
        "8472 (VXLAN, flannel/Linux)",
        "VXLAN  (offset 42, 8 bytes)",
        "  002e  VNI               1 ",
        "inner IPv4  (offset 64, 20 bytes)",
        "10.244.1.2",
        "8 (echo request), 0",
        "=== frame 2",
        "no problems found",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // --frame picks one.
    let one = stdout(&podswitchctl(&[
        "explain",
        file.0.to_str().unwrap(),
        "--frame",
        "2",
    ]));
    assert!(
        !one.contains("VXLAN") && one.contains("echo request"),
        "{one}"
    );
}

#[test]
fn explains_what_is_wrong_with_a_malformed_frame() {
    let mut frame = vxlan_frame();
    frame[42] = 0x00; // VXLAN I flag cleared
    frame[24] ^= 0xff; // outer IPv4 checksum broken
    let out = podswitchctl(&["explain", "--hex", &hex::encode(&frame)]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a malformed frame exits 1:\n{text}"
    );
    assert!(text.contains("I flag is clear"), "{text}");
    assert!(
        text.contains("header checksum") && text.contains("is wrong, should be"),
        "{text}"
    );
    assert!(text.contains("2 problem(s) found"), "{text}");

    // Truncated mid-IPv4 header.
    let out = podswitchctl(&["explain", "--hex", &hex::encode(&frame[..20])]);
    assert!(
        stdout(&out).contains("IPv4: truncated, needs 20 bytes but 6 are there"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let out = podswitchctl(&["explain", "/nonexistent/x.pcap"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/x.pcap"));

    let out = podswitchctl(&["explain", "--hex", "0x08zz"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a hex digit"));

    let pcapng = common::TempFile::new("x.pcapng");
    std::fs::write(
        &pcapng.0,
        [
            0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    )
    .unwrap();
    let out = podswitchctl(&["explain", pcapng.0.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pcapng"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = podswitchctl(&["explain", "--hex", "00", "--frame", "3"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("frame 3 does not exist"));

    let out = podswitchctl(&["explain"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}
