//! The ctnetlink reader against the running kernel (needs root and
//! nftables' `nft`; CI has both): a connection the namespace's own DNAT
//! rule translated is read back with both its tuples as the kernel keeps
//! them, and one it did not translate is not.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};

use podswitch_host::conntrack::{translated_connections, Tuple};
use podswitch_host::netlink::in_netns;
use support::Namespace;

mod support;

fn run(ns: &str, command: &str, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, command])
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command}: {e} (this test needs iproute2 and nft)"));
    if let Some(input) = stdin {
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{command} {args:?} (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_connection_the_namespaces_dnat_translated_is_read_back_whole() {
    let ns = Namespace::new("ct");
    run(&ns.0, "ip", &["link", "set", "lo", "up"], None);
    run(
        &ns.0,
        "ip",
        &[
            "route",
            "add",
            "10.96.0.0/12",
            "dev",
            "lo",
            "src",
            "127.0.0.1",
        ],
        None,
    );
    // A Service's address translated as kube-proxy's nftables mode does
    // for the node's own connections (the output hook).
    run(
        &ns.0,
        "nft",
        &["-f", "-"],
        Some(
            "table ip t {\n chain output { type nat hook output priority -100; \
             ip daddr 10.96.0.10 tcp dport 80 dnat to 127.0.0.1:8080; }\n}\n",
        ),
    );
    let path = ns.path();
    let (client_port, found) = in_netns(&path, || {
        let listener = TcpListener::bind("127.0.0.1:8080")?;
        let direct = TcpStream::connect("127.0.0.1:8080")?;
        let through = TcpStream::connect("10.96.0.10:80")?;
        // Both handshakes done: the kernel tracks both connections.
        let _accepted = (listener.accept()?, listener.accept()?);
        let found = translated_connections()?;
        drop(direct);
        Ok((through.local_addr()?.port(), found))
    })
    .expect("connections in the namespace, and its conntrack table read");
    let localhost = Ipv4Addr::LOCALHOST;
    assert_eq!(found.len(), 1, "only the translated one: {found:?}");
    let connection = found[0];
    assert_eq!(
        connection.original,
        Tuple {
            protocol: 6,
            src: (localhost, client_port),
            dst: (Ipv4Addr::new(10, 96, 0, 10), 80),
        }
    );
    assert_eq!(
        connection.reply,
        Tuple {
            protocol: 6,
            src: (localhost, 8080),
            dst: (localhost, client_port),
        }
    );
}
