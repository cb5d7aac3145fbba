//! The daemon's runtime state on disk: pod port attachments, and the
//! peers and routes programmed through the control socket, so that a
//! restarted podswitchd (after a crash or `kill -9`) brings them all back
//! by itself, with no CNI call and no operator. Peers and routes of the
//! config file are not kept here: the config says them again, and wins.
//! The file is JSON, rewritten whole on every change through a temporary
//! file, fsync and rename: a crash leaves the old file or the new one,
//! never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use podswitch_control::protocol::{EgressLimit, NextHopSpec, Request};
use podswitch_engine::encap::MacAddr;
use podswitch_engine::fib::Prefix;
use serde::{Deserialize, Serialize};

/// One attached pod port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PortRecord {
    pub(crate) interface: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) mac: MacAddr,
    pub(crate) container_id: Option<String>,
    pub(crate) ifname: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) anti_spoof: bool,
    /// The interface's index when it was attached: a restart restores the
    /// port only onto the same interface, not a new one of the same name.
    #[serde(default)]
    pub(crate) ifindex: Option<u32>,
    /// Where the pod's end of the veth was: a restart restores the port
    /// only if it is still there (not moved to another namespace).
    #[serde(default)]
    pub(crate) pod_end: Option<PodEnd>,
    /// The most the pod may send (absent: no limit, and in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) egress_limit: Option<EgressLimit>,
}

/// The pod's end of a veth, as the node's namespace sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodEnd {
    /// Its interface index in the pod's namespace.
    pub(crate) ifindex: u32,
    /// The node namespace's id for the pod's namespace (`link-netnsid`).
    pub(crate) netnsid: Option<i32>,
}

impl PodEnd {
    /// The other end of veth `interface`, if it is one.
    pub(crate) fn of(interface: &str) -> Option<PodEnd> {
        let link = podswitch_host::netlink::Netlink::open()
            .and_then(|mut nl| nl.link(interface))
            .ok()??;
        link.peer.map(|p| PodEnd {
            ifindex: p.index,
            netnsid: p.netnsid,
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Contents {
    version: u32,
    ports: Vec<PortRecord>,
    /// `peer-add` requests applied at runtime (absent in older files).
    #[serde(default)]
    peers: Vec<Request>,
    /// `route-add` requests applied at runtime.
    #[serde(default)]
    routes: Vec<Request>,
    /// Sysctls egress changed, with the values found before (put back on
    /// a clean stop).
    #[serde(default)]
    sysctls: BTreeMap<String, String>,
}

/// What a state file held when it was opened.
#[derive(Debug, Default)]
pub(crate) struct Saved {
    pub(crate) ports: Vec<PortRecord>,
    pub(crate) peers: Vec<Request>,
    pub(crate) routes: Vec<Request>,
    pub(crate) sysctls: BTreeMap<String, String>,
}

/// The records, by key: ports by interface, peers by name, routes by
/// prefix.
#[derive(Debug, Default)]
struct Records {
    ports: BTreeMap<String, PortRecord>,
    peers: BTreeMap<String, Request>,
    routes: BTreeMap<String, Request>,
    sysctls: BTreeMap<String, String>,
}

/// A route's key: its prefix written canonically.
fn route_key(prefix: &Prefix) -> String {
    prefix.to_string()
}

/// The state file and what it holds.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    records: Mutex<Records>,
}

impl StateFile {
    /// Opens `path` and returns what it lists (nothing if it does not
    /// exist). The in-memory set starts empty: restored entries are put
    /// back one by one as they are applied again.
    pub(crate) fn open(path: &Path) -> Result<(StateFile, Saved), String> {
        let saved = match fs::read_to_string(path) {
            Ok(text) => {
                let contents: Contents = serde_json::from_str(&text)
                    .map_err(|e| format!("state file {}: {e}", path.display()))?;
                Saved {
                    ports: contents.ports,
                    peers: contents.peers,
                    routes: contents.routes,
                    sysctls: contents.sysctls,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(format!("state file {}: {e}", path.display())),
        };
        let state = StateFile {
            path: path.to_path_buf(),
            records: Mutex::default(),
        };
        Ok((state, saved))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a port and saves.
    pub(crate) fn put(&self, record: PortRecord) -> io::Result<()> {
        let mut records = self.lock();
        records.ports.insert(record.interface.clone(), record);
        self.save(&records)
    }

    /// Forgets a port and saves.
    pub(crate) fn remove(&self, interface: &str) -> io::Result<()> {
        let mut records = self.lock();
        records.ports.remove(interface);
        self.save(&records)
    }

    /// Records an applied peer or route request (a removal forgets what it
    /// removes; a removed peer takes its routes along, as the tables do)
    /// and saves. Other requests are not kept.
    pub(crate) fn apply(&self, request: &Request) -> io::Result<()> {
        let mut records = self.lock();
        match request {
            Request::PeerAdd { name, .. } => {
                records.peers.insert(name.clone(), request.clone());
            }
            Request::PeerDel { name } => {
                records.peers.remove(name);
                records.routes.retain(|_, r| {
                    !matches!(r, Request::RouteAdd {
                        next_hop: NextHopSpec::Peer(p) | NextHopSpec::Direct(p),
                        ..
                    } if p == name)
                });
            }
            Request::RouteAdd { prefix, .. } => {
                records.routes.insert(route_key(prefix), request.clone());
            }
            Request::RouteDel { prefix } => {
                records.routes.remove(&route_key(prefix));
            }
            _ => return Ok(()),
        }
        self.save(&records)
    }

    /// Records the sysctls egress changed and their original values
    /// (empty once they are put back) and saves.
    pub(crate) fn set_sysctls(&self, sysctls: BTreeMap<String, String>) -> io::Result<()> {
        let mut records = self.lock();
        records.sysctls = sysctls;
        self.save(&records)
    }

    /// Saves what is recorded now.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.save(&self.lock())
    }

    fn save(&self, records: &Records) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let contents = Contents {
            version: 1,
            ports: records.ports.values().cloned().collect(),
            peers: records.peers.values().cloned().collect(),
            routes: records.routes.values().cloned().collect(),
            sysctls: records.sysctls.clone(),
        };
        let tmp = self.path.with_extension("tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(serde_json::to_string_pretty(&contents)?.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_a_bad_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("psw-state-{}", std::process::id()));
        let path = dir.join("ports.json");
        let (state, saved) = StateFile::open(&path).unwrap();
        assert!(saved.ports.is_empty());
        let record = PortRecord {
            interface: "psw0123".into(),
            ip: "10.244.1.2".parse().unwrap(),
            mac: "02:00:0a:f4:01:02".parse().unwrap(),
            container_id: Some("c0ffee".into()),
            ifname: Some("eth0".into()),
            kind: None,
            anti_spoof: true,
            ifindex: Some(7),
            pod_end: Some(PodEnd {
                ifindex: 2,
                netnsid: Some(3),
            }),
            egress_limit: Some(EgressLimit {
                rate_bits: 10_000_000,
                burst_bits: 800_000,
            }),
        };
        state.put(record.clone()).unwrap();
        let (_, saved) = StateFile::open(&path).unwrap();
        assert_eq!(saved.ports, vec![record]);
        state.remove("psw0123").unwrap();
        assert!(StateFile::open(&path).unwrap().1.ports.is_empty());
        // Peers and routes: kept, replaced, and a removed peer takes its
        // routes along.
        let peer = |name: &str, ip: &str| Request::PeerAdd {
            name: name.into(),
            underlay_ip: ip.parse().unwrap(),
            pod_cidr: "10.244.9.0/24".parse().unwrap(),
            vtep_mac: "02:00:00:00:00:09".parse().unwrap(),
            underlay_mac: None,
            backend: None,
            vni: None,
        };
        let route = |prefix: &str, next_hop: NextHopSpec| Request::RouteAdd {
            prefix: prefix.parse().unwrap(),
            next_hop,
        };
        state.apply(&peer("node9", "192.168.100.9")).unwrap();
        state.apply(&peer("node9", "192.168.100.19")).unwrap();
        state.apply(&peer("node8", "192.168.100.8")).unwrap();
        state
            .apply(&route("10.99.0.0/16", NextHopSpec::Peer("node9".into())))
            .unwrap();
        state
            .apply(&route("10.98.0.0/16", NextHopSpec::Blackhole))
            .unwrap();
        state
            .apply(&route("10.97.0.0/16", NextHopSpec::Host))
            .unwrap();
        state
            .apply(&Request::RouteDel {
                prefix: "10.97.0.0/16".parse().unwrap(),
            })
            .unwrap();
        state
            .apply(&Request::PeerDel {
                name: "node8".into(),
            })
            .unwrap();
        let saved = StateFile::open(&path).unwrap().1;
        assert_eq!(saved.peers, vec![peer("node9", "192.168.100.19")]);
        assert_eq!(
            saved.routes,
            vec![
                route("10.98.0.0/16", NextHopSpec::Blackhole),
                route("10.99.0.0/16", NextHopSpec::Peer("node9".into())),
            ]
        );
        state
            .apply(&Request::PeerDel {
                name: "node9".into(),
            })
            .unwrap();
        let saved = StateFile::open(&path).unwrap().1;
        assert!(saved.peers.is_empty());
        assert_eq!(
            saved.routes,
            vec![route("10.98.0.0/16", NextHopSpec::Blackhole)]
        );
        fs::write(&path, "{not json").unwrap();
        assert!(StateFile::open(&path).unwrap_err().contains("ports.json"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
