//! The CNI plugin's network configuration (control/cni/src/cni.rs): what
//! a container runtime writes on the plugin's stdin, parsed as ADD, DEL,
//! CHECK, STATUS and GC parse it; then, for a configuration it accepts,
//! the addressing CHECK reads from its `prevResult`, the copy an older
//! IPAM plugin is given, the result shaped for its version, and the
//! egress limit read from `runtimeConfig.bandwidth`.
//!
//! Why: the configuration comes from files any cluster admin (or a chained
//! plugin's `prevResult`) writes; the plugin must answer every bad one
//! with a CNI error (codes 1, 2, 6, 7), never a panic, which a runtime
//! reports as an unexplained failure with no error object.
//!
//! The plugin is a binary, so its module is compiled in here by path; it
//! depends on serde_json only.
//!
//! Invariants: no panic; an accepted configuration's copy for any
//! supported version parses again, to the same settings.
#![no_main]

#[allow(dead_code)]
#[path = "../../control/cni/src/cni.rs"]
mod cni;

use cni::{addressing, shape_result, version_key, NetConf, SUPPORTED};
use libfuzzer_sys::fuzz_target;

/// What the plugin takes from a configuration.
fn settings(c: &NetConf) -> (&str, u32, cni::GatewayMode, &str) {
    (&c.socket, c.mtu, c.gateway_mode, &c.ipam_type)
}

fuzz_target!(|data: &[u8]| {
    // The plugin reads stdin into a String: bytes that are not UTF-8 are
    // a read error there, before parsing.
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let conf = match NetConf::parse(input) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_json("1.1.0").to_string();
            let _ = e.to_string();
            return;
        }
    };
    assert!(SUPPORTED.contains(&conf.cni_version.as_str()));
    // The bandwidth capability: a limit, none, or an error; never a panic.
    let _ = cni::egress_limit(&conf);
    let _ = version_key(&conf.cni_version);
    for version in SUPPORTED {
        let copy = conf.with_version(version).to_string();
        let again = NetConf::parse(&copy).expect("the copy for an IPAM plugin parses");
        assert_eq!(again.cni_version, *version);
        assert_eq!(settings(&again), settings(&conf));
    }
    if let Some(prev) = &conf.prev_result {
        if let Ok(addr) = addressing(prev, conf.gateway_mode) {
            assert!(addr.interface_prefix() <= 32, "{addr:?}");
        }
        let _ = shape_result(prev.clone(), &conf.cni_version);
    }
});
