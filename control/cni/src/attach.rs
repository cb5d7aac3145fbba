//! The per-pod kernel work: the veth pair, the pod side's address and
//! routes, and taking them away again. All through rtnetlink
//! (`podswitch_host::netlink`), never by running `ip`.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use podswitch_host::netlink::{
    in_netns, Link, Netlink, POD_GSO_IPV4_MAX_SIZE, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE,
};

use crate::cni::{Addressing, GatewayMode, PROXY_ARP_GATEWAY};

/// The host-side name of an attachment: `psw` and 11 hex digits of a hash
/// of the container id and interface name (15 characters at most, the
/// kernel's limit; the same every time, so DEL finds it without state).
pub(crate) fn host_interface(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a 64
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("psw{:011x}", h >> 20)
}

/// What the pod side ended up with.
#[derive(Debug, Clone)]
pub(crate) struct PodSide {
    pub(crate) host_mac: [u8; 6],
    pub(crate) pod_mac: [u8; 6],
}

/// Creates the veth pair (`host` here, `ifname` in `netns`), brings both
/// up and configures the pod side, with the MAC the runtime asked for if
/// it did. Leaves nothing behind on failure.
pub(crate) fn create(
    host: &str,
    netns: &str,
    ifname: &str,
    mtu: u32,
    addr: Addressing,
    mac: Option<[u8; 6]>,
) -> io::Result<PodSide> {
    let ns =
        File::open(netns).map_err(|e| io::Error::new(e.kind(), format!("netns {netns}: {e}")))?;
    let mut nl = Netlink::open()?;
    nl.add_veth(host, ifname, ns.as_raw_fd(), mtu)
        .map_err(|e| io::Error::new(e.kind(), format!("veth {host} / {ifname}: {e}")))?;
    let result = (|| {
        let link = nl
            .link(host)?
            .ok_or_else(|| io::Error::other(format!("{host} vanished")))?;
        big_tcp(&mut nl, &link)?;
        nl.set_up(link.index)?;
        let pod_mac = in_netns(netns, || configure_pod(ifname, addr, mac))?;
        Ok(PodSide {
            host_mac: link.mac.unwrap_or_default(),
            pod_mac,
        })
    })();
    if result.is_err() {
        let _ = nl.del_link(host);
    }
    result
}

/// Lets a veth end carry BIG TCP super-frames (`POD_GSO_IPV4_MAX_SIZE`):
/// the pod's end so that its TCP builds them, the node's end so that the
/// kernel takes them whole when podswitch writes them to the pod.
fn big_tcp(nl: &mut Netlink, link: &Link) -> io::Result<()> {
    nl.set_gso_ipv4_max_size(link.index, POD_GSO_IPV4_MAX_SIZE)
        .map_err(|e| io::Error::new(e.kind(), format!("BIG TCP size on {}: {e}", link.name)))
}

fn configure_pod(ifname: &str, addr: Addressing, mac: Option<[u8; 6]>) -> io::Result<[u8; 6]> {
    let mut nl = Netlink::open()?;
    let mut link = nl
        .link(ifname)?
        .ok_or_else(|| io::Error::other(format!("{ifname} is not in the pod's namespace")))?;
    if let Some(mac) = mac {
        // Before the link is up: no frame ever leaves with the other MAC.
        nl.set_mac(link.index, mac)?;
        link.mac = Some(mac);
    }
    big_tcp(&mut nl, &link)?;
    nl.set_up(link.index)?;
    nl.add_address(link.index, addr.ip, addr.interface_prefix())?;
    match addr.mode {
        GatewayMode::Bridge => {
            nl.add_route(
                Ipv4Addr::UNSPECIFIED,
                0,
                Some(addr.gateway),
                link.index,
                RT_SCOPE_UNIVERSE,
                None,
            )?;
        }
        GatewayMode::ProxyArp => {
            nl.add_route(PROXY_ARP_GATEWAY, 32, None, link.index, RT_SCOPE_LINK, None)?;
            nl.add_route(
                Ipv4Addr::UNSPECIFIED,
                0,
                Some(PROXY_ARP_GATEWAY),
                link.index,
                RT_SCOPE_UNIVERSE,
                None,
            )?;
        }
    }
    Ok(link.mac.unwrap_or_default())
}

/// Deletes the host side (and with it the pod side); false if it was gone.
pub(crate) fn delete(host: &str) -> io::Result<bool> {
    Netlink::open()?.del_link(host)
}

/// What CHECK verifies in the pod's namespace: the interface, its address
/// and the default route through the gateway.
pub(crate) fn check_pod(netns: &str, ifname: &str, addr: Addressing) -> Result<(), String> {
    let ifname_owned = ifname.to_string();
    in_netns(netns, move || {
        let mut nl = Netlink::open()?;
        let Some(link) = nl.link(&ifname_owned)? else {
            return Ok(Err(format!(
                "{ifname_owned} is missing from the pod's namespace"
            )));
        };
        let addresses = nl.addresses(link.index)?;
        if !addresses.contains(&(addr.ip, addr.interface_prefix())) {
            return Ok(Err(format!(
                "{ifname_owned} lacks {}/{} (has {addresses:?})",
                addr.ip,
                addr.interface_prefix()
            )));
        }
        let gateway = match addr.mode {
            GatewayMode::Bridge => addr.gateway,
            GatewayMode::ProxyArp => PROXY_ARP_GATEWAY,
        };
        let default = nl
            .routes()?
            .into_iter()
            .any(|r| r.dst.1 == 0 && r.gateway == Some(gateway) && r.oif == Some(link.index));
        if !default {
            return Ok(Err(format!(
                "no default route via {gateway} on {ifname_owned}"
            )));
        }
        Ok(Ok(()))
    })
    .map_err(|e| e.to_string())?
}

/// True if the host side exists.
pub(crate) fn host_exists(host: &str) -> io::Result<bool> {
    Ok(Netlink::open()?.link(host)?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_interface("c0ffee", "eth0");
        assert_eq!(a, host_interface("c0ffee", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("psw"), "{a}");
        assert_ne!(a, host_interface("c0ffee", "eth1"));
        assert_ne!(a, host_interface("c0ffef", "eth0"));
    }
}
