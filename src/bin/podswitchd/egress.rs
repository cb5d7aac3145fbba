//! Pod egress and Services in the node's kernel: traffic from pods to
//! addresses outside the cluster leaves through the node with the node's
//! address, as flannel's `--ip-masq` and kindnet's MASQUERADE rule make it
//! leave (`masquerade`, on by default); and a pod's connection that the
//! node's own rules turn towards a Service's backend gets its replies
//! back (always: on a flannel node Services work whatever `--ip-masq`
//! says).
//!
//! Why the node's kernel translates, not the engine: a pod's packet to an
//! address outside the cluster CIDR already goes to the host port (the
//! FIB's default route), into the node's own stack, which owns the node's
//! address and its ports. Source translation has to pick ports that no
//! local socket uses and keep per-flow state for the replies; the kernel's
//! conntrack does both for every socket on the node, and a translator in
//! the engine would have to reserve ports against it. So podswitchd
//! programs the kernel, in an nftables table of its own:
//!
//! - `postrouting` (NAT), with `masquerade`: from the node's pod subnet,
//!   to anything outside the cluster CIDR and the extra non-masquerade
//!   CIDRs (ip-masq-agent's `nonMasqueradeCIDRs`), not out of the host
//!   port: `masquerade`. Traffic between pods never reaches the kernel,
//!   and keeps the pod's address. Without `masquerade` a pod's traffic
//!   leaves with its own address (a pod network the rest of the world
//!   routes to), and the rules below stay.
//! - Services: kube-proxy sends a pod's packet for a Service's ClusterIP
//!   to one of its backends (a DNAT in the node's rules, in iptables,
//!   nftables or IPVS mode; `ct status dnat`), back into the host port.
//!   The backend's reply must come back through the node, whose conntrack
//!   turns the addresses back. On a kernel flannel node it does by itself
//!   (cni0 and flannel.1 route through the node; one node's pods through
//!   `br_netfilter`); podswitch records the connections the host port
//!   hands it from a pod to a pod and sends their replies to the host port
//!   (the engine's `host_connections`), so the backend sees the client
//!   pod's own address, as on a flannel node. The node's own connections
//!   to a Service (`fib saddr type local`) are masqueraded in
//!   `postrouting` (NAT), to the node's address in the host port: from
//!   its underlay address, the backend's node would masquerade the reply,
//!   not having seen the request. A client outside the cluster keeps its
//!   address (a Service with `externalTrafficPolicy: Local`), its replies
//!   going through the node anyway.
//! - `forward` (filter): into the host port only replies
//!   (`ct state established,related`), Service traffic (`ct status
//!   dnat`, above) and what podswitch itself sent in (a frame it took for
//!   a Service connection's reply and was not, which the kernel hands
//!   back unchanged); everything else the kernel would forward towards pods
//!   is dropped, so forwarding never makes the kernel a second, unchecked
//!   path into pods (a host-gw peer's packets for our pods reach the
//!   underlay interface too; where tcx exists they end there, after
//!   podswitch's tap: `engine/src/sys/tcx.rs`).
//! - `prerouting` and `output` (raw): `notrack` for what never needs
//!   translating: traffic with both ends in the cluster CIDR (the kernel
//!   sees every pod frame on the host side of an AF_PACKET pod's veth),
//!   except what comes in from the host port (a Service backend's reply
//!   to the node, which conntrack must turn back), and the tunnel's own
//!   packets (VXLAN or IP-in-UDP port, IP protocol 4). A NAT table turns
//!   on connection tracking for the whole namespace; left alone it would
//!   track every packet podswitch forwards.
//!
//! Forwarding is turned on only where egress needs it: on the host port
//! (the pods' packets come in there) and on the interfaces replies come
//! back through (the underlay and the default route's). The values found
//! are kept in the state file and put back on a clean stop; a restart
//! after `kill -9` finds the table and replaces it whole (never twice) and
//! keeps the first originals.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use podswitch_engine::fib::Prefix;
use podswitch_engine::sys::netdev;

/// The nftables table podswitchd owns (family `ip`).
pub(crate) const TABLE: &str = "podswitch";

/// What egress needs to know.
#[derive(Debug, Clone)]
pub(crate) struct EgressConfig {
    pub pod_cidr: Prefix,
    pub cluster_cidr: Prefix,
    /// More destinations that keep the pod's address.
    pub no_masquerade: Vec<Prefix>,
    pub host_interface: String,
    pub underlay_interface: String,
    /// The tunnel's UDP ports (VXLAN, IP-in-UDP), whose packets are not
    /// tracked.
    pub tunnel_ports: Vec<u16>,
    /// Pods' traffic to outside the cluster takes the node's address.
    pub masquerade: bool,
}

/// The ruleset, as `nft -f` reads it. Deleting the table first makes the
/// load replace whatever an earlier daemon left (one transaction: the
/// `table` line before the delete creates it if it is missing).
pub(crate) fn ruleset(config: &EgressConfig) -> String {
    let egress = if config.masquerade {
        let mut keep = vec![config.cluster_cidr.to_string()];
        keep.extend(config.no_masquerade.iter().map(ToString::to_string));
        format!(
            "\t\tip saddr {pod} ip daddr != {{ {keep} }} oifname != \"{host}\" masquerade\n",
            pod = config.pod_cidr,
            keep = keep.join(", "),
            host = config.host_interface,
        )
    } else {
        String::new()
    };
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {egress}\
         \t\tfib saddr type local ct status dnat oifname \"{host}\" masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\toifname \"{host}\" ct state established,related accept\n\
         \t\toifname \"{host}\" ct status dnat accept\n\
         \t\tiifname \"{host}\" oifname \"{host}\" accept\n\
         \t\toifname \"{host}\" drop\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname != \"{host}\" {untracked}\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority raw; policy accept;\n\
         \t\t{untracked}\
         \t}}\n\
         }}\n",
        host = config.host_interface,
        untracked = untracked(config),
    )
}

/// The `notrack` rules of the raw chains, the first without its
/// indentation (a chain may put a condition before it); see the module
/// docs.
fn untracked(config: &EgressConfig) -> String {
    let cluster = config.cluster_cidr;
    let mut rules = format!("ip saddr {cluster} ip daddr {cluster} notrack\n");
    if !config.tunnel_ports.is_empty() {
        let ports: Vec<String> = config.tunnel_ports.iter().map(u16::to_string).collect();
        let ports = ports.join(", ");
        rules +=
            &format!("\t\tudp dport {{ {ports} }} notrack\n\t\tudp sport {{ {ports} }} notrack\n");
    }
    rules += "\t\tip protocol 4 notrack\n";
    rules
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("nft: {e} (podswitchd's table for pod egress and Services needs nftables' nft: install nftables)")
        })?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The interface of the IPv4 default route, if there is one.
fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface, Destination (hex), Gateway, Flags, ..., Mask at 7.
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// The forwarding sysctls egress turns on.
fn forwarding_keys(config: &EgressConfig) -> Vec<String> {
    let mut interfaces = vec![
        config.host_interface.clone(),
        config.underlay_interface.clone(),
    ];
    if let Some(default) = default_route_interface() {
        interfaces.push(default);
    }
    interfaces.sort();
    interfaces.dedup();
    interfaces
        .into_iter()
        .map(|i| format!("ipv4/conf/{i}/forwarding"))
        .collect()
}

/// Installs the table and turns forwarding on. `originals` holds the
/// values a previous daemon found (from the state file); the values found
/// now are added for keys it lacks. Returns the originals to keep.
pub(crate) fn install(
    config: &EgressConfig,
    mut originals: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    nft(&ruleset(config))?;
    for key in forwarding_keys(config) {
        let found = netdev::net_sysctl(&key).map_err(|e| format!("sysctl net.{key}: {e}"))?;
        originals.entry(key.clone()).or_insert(found);
        netdev::set_net_sysctl(&key, "1").map_err(|e| e.to_string())?;
    }
    Ok(originals)
}

/// Removes the table and puts the forwarding sysctls back; says what it
/// could not undo.
pub(crate) fn remove(originals: &BTreeMap<String, String>) -> Vec<String> {
    let mut failed = Vec::new();
    if let Err(e) = nft(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n")) {
        failed.push(e);
    }
    for (key, value) in originals {
        // An interface that is gone took its setting with it.
        if std::path::Path::new(&format!("/proc/sys/net/{key}")).exists() {
            if let Err(e) = netdev::set_net_sysctl(key, value) {
                failed.push(e.to_string());
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_only_outside_the_cluster() {
        let config = EgressConfig {
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            no_masquerade: vec!["172.16.0.0/12".parse().unwrap()],
            host_interface: "podswitch0".into(),
            underlay_interface: "ul0".into(),
            tunnel_ports: vec![8472],
            masquerade: true,
        };
        let rules = ruleset(&config);
        assert!(rules.starts_with("table ip podswitch\ndelete table ip podswitch\n"));
        assert!(rules.contains(
            "ip saddr 10.244.1.0/24 ip daddr != { 10.244.0.0/16, 172.16.0.0/12 } \
             oifname != \"podswitch0\" masquerade"
        ));
        assert!(rules.contains("oifname \"podswitch0\" ct state established,related accept"));
        assert!(rules.contains("oifname \"podswitch0\" drop"));
        assert!(rules.contains("iifname \"podswitch0\" oifname \"podswitch0\" accept"));
        // Service traffic: the node's own into the host port from the
        // node's address there; a pod's keeps the pod's (host_connections).
        assert!(!rules.contains("ip saddr 10.244.0.0/16 ct status dnat"));
        assert!(
            rules.contains("fib saddr type local ct status dnat oifname \"podswitch0\" masquerade")
        );
        assert!(rules.contains("oifname \"podswitch0\" ct status dnat accept"));
        assert!(rules.contains(
            "iifname != \"podswitch0\" ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 notrack"
        ));
        assert_eq!(
            rules
                .matches("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 notrack")
                .count(),
            2,
            "prerouting and output"
        );
        assert!(rules.contains("udp dport { 8472 } notrack"));
        assert!(rules.contains("ip protocol 4 notrack"));

        // Without masquerade: pods' egress keeps their addresses, and
        // everything Services need stays.
        let rules = ruleset(&EgressConfig {
            masquerade: false,
            ..config
        });
        assert!(!rules.contains("ip daddr !="), "{rules}");
        assert_eq!(rules.matches("masquerade").count(), 1, "{rules}");
        assert!(
            rules.contains("fib saddr type local ct status dnat oifname \"podswitch0\" masquerade")
        );
        assert!(rules.contains("oifname \"podswitch0\" ct status dnat accept"));
        assert!(rules.contains("oifname \"podswitch0\" drop"));
    }
}
