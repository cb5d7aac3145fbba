//! Decapsulation of an outer Ethernet frame, every tunnel accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::{DecapConfig, Decapsulator, Vni};

fuzz_target!(|data: &[u8]| {
    let decap = Decapsulator::new(DecapConfig {
        vxlan_port: Some(8472),
        vni: Vni::FLANNEL,
        ip_in_udp_port: Some(8285),
        ipip: true,
        ignore_vxlan_reserved: data.first().is_some_and(|b| b & 1 == 1),
    });
    let mut frame = data.to_vec();
    if let Ok(d) = decap.decapsulate_frame(&mut frame) {
        assert!(d.inner_range.start <= d.inner_range.end && d.inner_range.end <= frame.len());
    }
});
