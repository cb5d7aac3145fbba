//! podswitchd's side of the lease store (`[cluster] store = "etcd"`):
//! taking this node's subnet lease at start, writing flannel's subnet
//! file, and turning the other nodes' leases into peers and routes for as
//! long as the daemon runs (podswitch-lease does the etcd part).
//!
//! Each lease becomes one peer named after its subnet key
//! (`10.244.2.0-24`), whose pod subnet is routed to it. The backend is
//! the lease's, as flanneld's nodes apply it: a vxlan lease is tunnelled
//! to its VtepMAC (or routed directly when the network config sets
//! `DirectRouting` and the node is on our underlay subnet), host-gw is
//! routed to the node's address, udp and ipip are tunnelled. Peers from
//! the store are not written to the state file: the store is where they
//! come back from.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podswitch_control::handler::Handler;
use podswitch_control::protocol::Request;
use podswitch_engine::config::Backend;
use podswitch_engine::fib::Prefix;
use podswitch_host::subnet_file;
use podswitch_lease::etcd::{Health, Lease, LeaseEvent, Store};
use podswitch_lease::flannel::{
    podswitch_backend, subnet_key, LeaseAttrs, NetworkConfig, DEFAULT_VNI,
};

use crate::config::{Assignment, LeaseRequest, StoreSettings};

/// How long podswitchd waits for the store at start, when it must lease
/// its subnet before it can run.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// The lease taken at start, and the connection to follow the others with.
#[derive(Debug)]
pub(crate) struct Leased {
    store: Store,
    pub lease: Lease,
    pub network: NetworkConfig,
    pub settings: StoreSettings,
}

/// The node's backend for the network config's `Backend`.
fn node_backend(network: &NetworkConfig) -> Backend {
    // The config was checked when it was read: its type is one of them.
    podswitch_backend(&network.backend.kind, network.backend.direct_routing).unwrap_or(Backend::Udp)
}

/// `FLANNEL_SUBNET` of an earlier subnet file, as flanneld reads it back
/// at start.
fn previous_subnet(path: &Path) -> Option<Prefix> {
    subnet_file::parse(&std::fs::read_to_string(path).ok()?).subnet
}

/// Connects to the store (retrying for up to a minute: a node that
/// starts with its store cannot run without a subnet), reads the network
/// config and takes a lease, as flanneld does.
pub(crate) fn acquire(request: &LeaseRequest<'_>) -> Result<(Assignment, Leased), String> {
    let settings = request.store.clone();
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let (store, network) = loop {
        let attempt = Store::connect(settings.etcd.clone()).and_then(|store| {
            let network = store.network()?;
            Ok((store, network))
        });
        match attempt {
            Ok(done) => break done,
            Err(e) if started.elapsed() < START_PATIENCE => {
                tracing::warn!("lease store: {e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(format!("lease store: {e}")),
        }
    };
    let backend = node_backend(&network);
    let flannel_type = match backend {
        Backend::Vxlan | Backend::DirectRouting => "vxlan",
        Backend::HostGw => "host-gw",
        Backend::Ipip => "ipip",
        Backend::Udp => "udp",
    };
    let vni = network.backend.vni.unwrap_or(DEFAULT_VNI);
    let attrs = LeaseAttrs::own(
        request.underlay_ip,
        flannel_type,
        vni,
        &request.vtep_mac.to_string(),
    );
    if let Some(wanted) = request.pod_cidr {
        if !network.fits(&wanted) {
            return Err(format!(
                "node.pod_cidr {wanted} is not a /{} between {} and {} of the store's network {}",
                network.subnet_len, network.subnet_min, network.subnet_max, network.network
            ));
        }
    }
    let previous = previous_subnet(&settings.subnet_file);
    let lease = store
        .acquire(&network, &attrs, request.pod_cidr, previous)
        .map_err(|e| format!("lease store: {e}"))?;
    tracing::info!(
        subnet = %lease.subnet,
        network = %network.network,
        backend = %backend,
        "lease taken: {}",
        subnet_key(&lease.subnet)
    );
    let assignment = Assignment {
        pod_cidr: lease.subnet,
        network: network.network,
        backend,
        vni: network.backend.vni,
        port: network.backend.port,
    };
    Ok((
        assignment,
        Leased {
            store,
            lease,
            network,
            settings,
        },
    ))
}

/// Writes flannel's subnet file as flanneld does: a temporary file in the
/// same directory renamed over the old one, mode 0644.
pub(crate) fn write_subnet_file(
    path: &Path,
    network: &Prefix,
    subnet: &Prefix,
    mtu: u16,
    ip_masq: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("env.tmp");
    std::fs::write(
        &temporary,
        subnet_file::render(network, subnet, mtu, ip_masq),
    )?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&temporary, path)
}

/// The peer a lease makes.
fn peer_request(
    subnet: Prefix,
    attrs: &LeaseAttrs,
    network: &NetworkConfig,
) -> Result<Request, String> {
    let name = subnet_key(&subnet);
    let backend = podswitch_backend(attrs.backend(), network.backend.direct_routing)
        .ok_or_else(|| format!("backend {:?} is not one podswitch carries", attrs.backend()))?;
    let vxlan = match backend {
        Backend::Vxlan | Backend::DirectRouting => Some(attrs.vxlan()?),
        _ => None,
    };
    Ok(Request::PeerAdd {
        name: name.clone(),
        underlay_ip: attrs.public_ip,
        pod_cidr: subnet,
        vtep_mac: match &vxlan {
            Some(data) => data.vtep_mac.parse().map_err(|e| format!("VtepMAC: {e}"))?,
            // Unused without VXLAN; the engine wants one all the same.
            None => podswitch_engine::config::derived_mac(0x0e, &name),
        },
        underlay_mac: None,
        backend: Some(backend),
        vni: vxlan.map(|d| d.vni),
    })
}

/// The peers made from leases so far, kept in step with the store.
struct LeasePeers {
    handler: Arc<Handler>,
    network: NetworkConfig,
    known: HashMap<Prefix, LeaseAttrs>,
}

impl LeasePeers {
    fn apply(&mut self, event: LeaseEvent) {
        match event {
            LeaseEvent::Snapshot(leases) => {
                let now: HashMap<Prefix, LeaseAttrs> = leases.into_iter().collect();
                let gone: Vec<Prefix> = self
                    .known
                    .keys()
                    .filter(|s| !now.contains_key(s))
                    .copied()
                    .collect();
                for subnet in gone {
                    self.remove(subnet);
                }
                // New leases (all of them at start) as one table change;
                // changed ones one by one.
                let mut new = Vec::new();
                for (subnet, attrs) in now {
                    if self.known.contains_key(&subnet) {
                        self.set(subnet, attrs);
                    } else {
                        match peer_request(subnet, &attrs, &self.network) {
                            Ok(request) => new.push((subnet, attrs, request)),
                            Err(e) => {
                                tracing::warn!(lease = %subnet_key(&subnet), "lease ignored: {e}")
                            }
                        }
                    }
                }
                let requests: Vec<Request> = new.iter().map(|(_, _, r)| r.clone()).collect();
                let answers = self.handler.add_peers(&requests);
                for ((subnet, attrs, _), answer) in new.into_iter().zip(answers) {
                    match answer {
                        Ok(_) => {
                            self.known.insert(subnet, attrs);
                        }
                        Err(e) => {
                            tracing::warn!(lease = %subnet_key(&subnet), "lease not applied: {e}")
                        }
                    }
                }
            }
            LeaseEvent::Set(subnet, attrs) => self.set(subnet, attrs),
            LeaseEvent::Removed(subnet) => self.remove(subnet),
        }
    }

    /// A new or changed lease (a renewal that changes nothing is not a
    /// change: nothing is done or logged).
    fn set(&mut self, subnet: Prefix, attrs: LeaseAttrs) {
        if self.known.get(&subnet) == Some(&attrs) {
            return;
        }
        let request = match peer_request(subnet, &attrs, &self.network) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(lease = %subnet_key(&subnet), "lease ignored: {e}");
                return;
            }
        };
        let answer = if self.known.contains_key(&subnet) {
            // One table change: the subnet's traffic never meets a moment
            // without its peer.
            self.handler.replace_peer(&request)
        } else {
            self.handler.handle(&request)
        };
        match answer {
            Ok(_) => {
                self.known.insert(subnet, attrs);
            }
            Err(e) => {
                self.known.remove(&subnet);
                tracing::warn!(lease = %subnet_key(&subnet), "lease not applied: {e}");
            }
        }
    }

    fn remove(&mut self, subnet: Prefix) {
        if self.known.remove(&subnet).is_none() {
            return;
        }
        if let Err(e) = self.handler.handle(&Request::PeerDel {
            name: subnet_key(&subnet),
        }) {
            tracing::warn!(lease = %subnet_key(&subnet), "peer of a removed lease: {e}");
        }
    }
}

/// Whether a peer name is one this module makes (a subnet key), so that
/// the daemon does not keep it in its state file.
pub(crate) fn is_lease_peer(name: &str) -> bool {
    podswitch_lease::flannel::parse_subnet_key(name)
        .is_some_and(|subnet| subnet_key(&subnet) == name)
}

/// Follows the other nodes' leases on a thread of its own until the
/// returned sender says stop.
pub(crate) fn follow(
    leased: Leased,
    handler: Arc<Handler>,
    health: Arc<Health>,
) -> std::io::Result<(
    std::thread::JoinHandle<()>,
    tokio::sync::watch::Sender<bool>,
)> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut peers = LeasePeers {
        handler,
        network: leased.network.clone(),
        known: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("podswitch-leases".into())
        .spawn(move || {
            leased
                .store
                .follow(leased.lease, health, stopped, |event| peers.apply(event));
        })?;
    Ok((thread, stop))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(text: &str) -> NetworkConfig {
        NetworkConfig::parse(text).unwrap()
    }

    #[test]
    fn leases_become_the_peers_flannel_nodes_would_program() {
        let vxlan = network(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let attrs = LeaseAttrs::parse(
            br#"{"PublicIP":"192.168.100.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}"#,
        )
        .unwrap();
        let subnet: Prefix = "10.244.2.0/24".parse().unwrap();
        let Request::PeerAdd {
            name,
            underlay_ip,
            pod_cidr,
            vtep_mac,
            backend,
            vni,
            ..
        } = peer_request(subnet, &attrs, &vxlan).unwrap()
        else {
            panic!("not a peer add")
        };
        assert_eq!(name, "10.244.2.0-24");
        assert_eq!(underlay_ip.to_string(), "192.168.100.2");
        assert_eq!(pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(vtep_mac.to_string(), "aa:bb:cc:dd:ee:02");
        assert_eq!(backend, Some(Backend::Vxlan));
        assert_eq!(vni, Some(1));
        assert!(is_lease_peer(&name));
        assert!(!is_lease_peer("node2"));

        let direct = network(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
        );
        let Request::PeerAdd { backend, .. } = peer_request(subnet, &attrs, &direct).unwrap()
        else {
            panic!()
        };
        assert_eq!(backend, Some(Backend::DirectRouting));

        let host_gw =
            LeaseAttrs::parse(br#"{"PublicIP":"192.168.100.2","BackendType":"host-gw"}"#).unwrap();
        let Request::PeerAdd { backend, vni, .. } = peer_request(subnet, &host_gw, &vxlan).unwrap()
        else {
            panic!()
        };
        assert_eq!((backend, vni), (Some(Backend::HostGw), None));

        let udp = LeaseAttrs::parse(br#"{"PublicIP":"192.168.100.2"}"#).unwrap();
        let Request::PeerAdd { backend, .. } = peer_request(subnet, &udp, &vxlan).unwrap() else {
            panic!()
        };
        assert_eq!(backend, Some(Backend::Udp));

        let broken =
            LeaseAttrs::parse(br#"{"PublicIP":"192.168.100.2","BackendType":"vxlan"}"#).unwrap();
        assert!(peer_request(subnet, &broken, &vxlan).is_err());
        let alien = LeaseAttrs::parse(br#"{"PublicIP":"192.168.100.2","BackendType":"wireguard"}"#)
            .unwrap();
        assert!(peer_request(subnet, &alien, &vxlan).is_err());
    }

    #[test]
    fn the_subnet_file_is_flannels_and_is_read_back() {
        let dir = std::env::temp_dir().join(format!("psw-subnet-{}", std::process::id()));
        let path = dir.join("run/flannel/subnet.env");
        let network: Prefix = "10.244.0.0/16".parse().unwrap();
        let subnet: Prefix = "10.244.7.0/24".parse().unwrap();
        write_subnet_file(&path, &network, &subnet, 1450, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(previous_subnet(&path), Some(subnet));
        assert_eq!(previous_subnet(&dir.join("none")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
