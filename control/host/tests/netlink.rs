//! The rtnetlink client against the running kernel, in two network
//! namespaces of its own (needs root; CI has it): every request the CNI
//! plugin and podswitchd make, read back both through the client and
//! through `ip`, and the kernel's errors as the errno they carry.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

mod support;

use podswitch_host::netlink::{
    in_netns, LinkChange, LinkWatch, Netlink, POD_GSO_IPV4_MAX_SIZE, RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
};
use support::Namespace;

#[test]
fn every_request_against_the_kernel() {
    let (node, pod) = (Namespace::new("node"), Namespace::new("pod"));
    let pod_file = std::fs::File::open(pod.path()).unwrap();
    let pod_fd = pod_file.as_raw_fd();

    let (host, peer) = in_netns(&node.path(), move || {
        let mut nl = Netlink::open()?;
        nl.add_veth("vhost0", "eth0", pod_fd, 1450)?;
        // The same name again: the kernel's EEXIST, as an io::Error.
        let again = nl.add_veth("vhost0", "eth1", pod_fd, 1450).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EEXIST), "{again}");
        let host = nl.link("vhost0")?.expect("the host end");
        nl.set_mac(host.index, [0x02, 0, 0x0a, 0xf4, 1, 1])?;
        nl.set_up(host.index)?;
        nl.set_gso_ipv4_max_size(host.index, POD_GSO_IPV4_MAX_SIZE)?;
        let host = nl.link("vhost0")?.expect("the host end");
        assert!(nl.links()?.iter().any(|l| l.name == "lo"));
        Ok((host, nl.link("eth0")?))
    })
    .unwrap();
    assert_eq!(host.mtu, Some(1450));
    assert_eq!(host.mac, Some([0x02, 0, 0x0a, 0xf4, 1, 1]));
    assert!(host.up);
    let host_peer = host.peer.expect("a veth names its peer");
    assert!(
        host_peer.netnsid.is_some(),
        "the peer is in another namespace"
    );
    assert!(
        peer.is_none(),
        "the pod's end was made in the pod's namespace"
    );
    assert!(node
        .ip(&["link", "show", "vhost0"])
        .contains("02:00:0a:f4:01:01"));
    // BIG TCP (Linux 6.3), read back (iproute2 6.1 does not print it; the
    // daemon tests see a pod's TCP use it).
    assert_eq!(host.gso_ipv4_max_size, Some(POD_GSO_IPV4_MAX_SIZE));

    let (eth0, addresses, routes) = in_netns(&pod.path(), || {
        let mut nl = Netlink::open()?;
        let eth0 = nl.link("eth0")?.expect("eth0 in the pod");
        nl.set_up(eth0.index)?;
        nl.add_address(eth0.index, Ipv4Addr::new(10, 244, 1, 2), 24)?;
        let gateway = Ipv4Addr::new(10, 244, 1, 1);
        nl.add_route(
            Ipv4Addr::UNSPECIFIED,
            0,
            Some(gateway),
            eth0.index,
            RT_SCOPE_UNIVERSE,
            None,
        )?;
        nl.add_route(
            Ipv4Addr::new(169, 254, 1, 1),
            32,
            None,
            eth0.index,
            RT_SCOPE_LINK,
            None,
        )?;
        // A route via a gateway it cannot reach: the kernel's ENETUNREACH.
        let unreachable = nl
            .add_route(
                Ipv4Addr::new(10, 9, 0, 0),
                16,
                Some(Ipv4Addr::new(192, 0, 2, 1)),
                eth0.index,
                RT_SCOPE_UNIVERSE,
                None,
            )
            .unwrap_err();
        assert_eq!(unreachable.raw_os_error(), Some(libc::ENETUNREACH));
        let (addresses, routes) = (nl.addresses(eth0.index)?, nl.routes()?);
        Ok((eth0, addresses, routes))
    })
    .unwrap();
    assert_eq!(eth0.index, host_peer.index, "the host end's peer is eth0");
    assert_eq!(addresses, [(Ipv4Addr::new(10, 244, 1, 2), 24)]);
    let default = routes
        .iter()
        .find(|r| r.dst == (Ipv4Addr::UNSPECIFIED, 0))
        .expect("the default route");
    assert_eq!(default.gateway, Some(Ipv4Addr::new(10, 244, 1, 1)));
    assert_eq!(default.oif, Some(eth0.index));
    let link_route = routes
        .iter()
        .find(|r| r.dst == (Ipv4Addr::new(169, 254, 1, 1), 32))
        .expect("the on-link route");
    assert_eq!(
        (link_route.gateway, link_route.scope),
        (None, RT_SCOPE_LINK)
    );
    let shown = pod.ip(&["route", "show"]);
    assert!(shown.contains("default via 10.244.1.1 dev eth0"), "{shown}");
    assert!(shown.contains("169.254.1.1 dev eth0 scope link"), "{shown}");

    in_netns(&node.path(), || {
        let mut nl = Netlink::open()?;
        assert!(nl.del_link("vhost0")?);
        assert!(!nl.del_link("vhost0")?, "a second delete finds nothing");
        assert_eq!(nl.link("vhost0")?, None);
        Ok(())
    })
    .unwrap();
    assert!(
        !pod.ip(&["link", "show"])
            .contains(&format!("{}: eth0", eth0.index)),
        "the pair went"
    );
}

/// A link watch reports what the kernel says of deleted links: both ends
/// of a deleted veth, and a link moved to another namespace, each by its
/// index and name; a link made, or a port leaving a bridge (an
/// `RTM_DELLINK` of the bridge family), is not a deletion.
#[test]
fn a_link_watch_sees_deletions_and_moves() {
    let (node, other) = (Namespace::new("watch"), Namespace::new("elsewhere"));
    let (node_name, other_name) = (node.0.clone(), other.0.clone());
    let (seen, indexes) = in_netns(&node.path(), move || {
        let mut watch = LinkWatch::open()?;
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(["-n", &node_name])
                .args(args)
                .output()?;
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok::<_, std::io::Error>(())
        };
        ip(&["link", "add", "wa0", "type", "veth", "peer", "name", "wa1"])?;
        ip(&["link", "add", "wb0", "type", "veth", "peer", "name", "wb1"])?;
        ip(&["link", "add", "wbr0", "type", "bridge"])?;
        ip(&["link", "set", "wb0", "master", "wbr0"])?;
        ip(&["link", "set", "wb0", "nomaster"])?;
        let mut nl = Netlink::open()?;
        let index = |nl: &mut Netlink, name: &str| nl.link(name).map(|l| l.expect(name).index);
        let indexes = [
            index(&mut nl, "wa0")?,
            index(&mut nl, "wa1")?,
            index(&mut nl, "wb1")?,
        ];
        ip(&["link", "del", "wa0"])?;
        ip(&["link", "set", "wb1", "netns", &other_name])?;
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.len() < 3 && std::time::Instant::now() < deadline {
            let changes = watch.wait(Some(std::time::Duration::from_millis(100)))?;
            seen.extend(changes.expect("a watch nobody woke"));
        }
        Ok((seen, indexes))
    })
    .unwrap();
    let deleted = |index: u32, name: &str| LinkChange::Deleted {
        index,
        name: name.to_string(),
    };
    assert!(seen.contains(&deleted(indexes[0], "wa0")), "{seen:?}");
    assert!(seen.contains(&deleted(indexes[1], "wa1")), "{seen:?}");
    assert!(seen.contains(&deleted(indexes[2], "wb1")), "{seen:?}");
    assert_eq!(seen.len(), 3, "only the three deletions: {seen:?}");
}

/// A wait ends when the watch is woken from another thread, and every
/// wait after it returns at once, each saying it was woken.
#[test]
fn a_woken_link_watch_stops_waiting() {
    let ns = Namespace::new("wake");
    let waited = in_netns(&ns.path(), || {
        let mut watch = LinkWatch::open()?;
        let waker = watch.waker();
        let started = std::time::Instant::now();
        let waking = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            waker.wake();
        });
        // Bounded, so that a wake that does not work fails rather than
        // hangs: the first wait would run to 5 s.
        let bound = Some(std::time::Duration::from_secs(5));
        let first = watch.wait(bound)?;
        let second = watch.wait(bound)?;
        waking.join().unwrap();
        assert!(first.is_none() && second.is_none(), "{first:?} {second:?}");
        Ok(started.elapsed())
    })
    .unwrap();
    assert!(
        waited >= std::time::Duration::from_millis(200),
        "the wait ended before the wake: {waited:?}"
    );
    assert!(
        waited < std::time::Duration::from_secs(5),
        "the wake did not end the wait: {waited:?}"
    );
}
