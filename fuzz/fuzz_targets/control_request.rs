//! The control socket: request lines parsed (control/protocol/src/lib.rs) and
//! applied by the handler (control/src/handler.rs) to the in-memory
//! tables of a flannel node, one line after another, as
//! `control::server` serves a client.
//!
//! Why: the socket is podswitchd's whole control surface (the CNI plugin
//! and podswitchctl speak it); the handler promises that nothing in a
//! request can make it panic, whatever the tables hold after the requests
//! before it. Without a data plane the handler programs the tables only
//! (port, capture and peer requests touch no interface or file).
//!
//! The input is split into lines as the server splits a stream: each line
//! that is UTF-8 is parsed (with trailing whitespace trimmed), and each
//! request handled.
//!
//! Invariants: no panic; a parsed request serialises to a line that parses
//! back to the same request; every reply serialises to one line of JSON.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use podswitch_control::engine::config::NodeConfig;
use podswitch_control::engine::tables::{PortSpec, Tables};
use podswitch_control::handler::Handler;
use podswitch_control::protocol::{Reply, Request, MAX_LINE};

fn clock() -> u32 {
    1000
}

fuzz_target!(|data: &[u8]| {
    let config = NodeConfig::flannel(
        "node1",
        "10.244.1.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, 1),
    );
    let tables = Tables::new(config, 16);
    tables.attach_port(PortSpec::underlay("eth0")).unwrap();
    tables.attach_port(PortSpec::host("podswitch0")).unwrap();
    let handler = Handler::new(tables, clock);
    // The server's limit on what one client may ask of one connection is
    // the line length; a fuzz input of many lines is one client.
    for line in data.split(|&b| b == b'\n').take(32) {
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let request = match Request::parse(text.trim_end()) {
            Ok(r) => r,
            Err(e) => {
                let _ = Reply::error(e.to_string()).to_line();
                continue;
            }
        };
        let again = request.to_line();
        if again.len() <= MAX_LINE {
            assert_eq!(
                Request::parse(&again).as_ref(),
                Ok(&request),
                "{again} does not parse back"
            );
        }
        let reply = match handler.handle(&request) {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::error(e),
        };
        let line = reply.to_line();
        assert!(!line.contains('\n'), "a reply spans lines: {line}");
        assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
    }
});
