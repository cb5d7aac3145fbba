//! Decapsulation of an outer IPv4 packet (what a raw socket delivers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::{DecapConfig, Decapsulator, Vni};

fuzz_target!(|data: &[u8]| {
    let decap = Decapsulator::new(DecapConfig {
        vxlan_port: Some(4789),
        vni: Vni::new(42).unwrap(),
        ip_in_udp_port: Some(8285),
        ipip: true,
        ignore_vxlan_reserved: false,
    });
    let mut packet = data.to_vec();
    if let Ok(d) = decap.decapsulate_ipv4(&mut packet) {
        assert!(d.inner_range.end <= packet.len());
    }
});
