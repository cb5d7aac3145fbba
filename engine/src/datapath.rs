//! The node's data path as one owner: its tables, its workers and the
//! ports they poll, behind typed operations.
//!
//! A port is added to the tables, opened on the kernel, handed to a
//! worker, and taken back, here and nowhere else: the control handler
//! (`port-add`, `port-del`, `capture`), podswitchd's start-up (its config
//! file's ports and its state file's) and tests all call the same
//! [`Datapath::add_pod_port`]. A step that fails undoes the steps before
//! it, so the tables never name a port no worker polls.
//!
//! What the data path asks of the machine it runs on (open a pod's port,
//! find a neighbour's MAC) goes through [`Kernel`]: [`LinuxKernel`] in
//! podswitchd, a kernel of in-memory ports in tests, so that port add,
//! remove and capture are tested without a daemon or root.
//!
//! | who | owns |
//! |---|---|
//! | [`Datapath`] | the [`Tables`], the [`Workers`], how each port was opened |
//! | each worker | the ports it polls (docs/architecture.md, "Threads") |
//! | the control handler | nothing: it translates requests into calls here |

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use podswitch_encap::MacAddr;

use crate::capture::CaptureLimit;
use crate::drop::DropReason;
use crate::kernel_port::{open_pod_port, resolve_neighbour, OpenedPort, PodPortKind};
use crate::port::{DeviceCounter, Port, PortId, PortRole};
use crate::stats::Stats;
use crate::sys::netdev;
use crate::tables::{PortSpec, TableError, Tables};
use crate::worker::{WorkerOptions, WorkerStats, Workers};

/// What the data path asks of the machine it runs on.
pub trait Kernel: Send + Sync + fmt::Debug {
    /// Opens pod port `id` on interface `name` as `kind` (or what the
    /// kernel allows of it: see [`OpenedPort::notes`]).
    fn open_pod_port(
        &self,
        kind: PodPortKind,
        name: &str,
        id: PortId,
        stats: &Arc<Stats>,
    ) -> io::Result<OpenedPort>;

    /// The MAC of `ip`, a neighbour on `interface`.
    fn resolve_neighbour(&self, interface: &str, ip: Ipv4Addr) -> io::Result<MacAddr>;
}

/// Linux: pod ports over AF_PACKET, AF_XDP or TAP
/// ([`open_pod_port`]), neighbours from the ARP table or ARP
/// ([`resolve_neighbour`]).
#[derive(Debug, Clone, Copy)]
pub struct LinuxKernel {
    /// Whether a flow's small datagrams reach an AF_PACKET pod as one
    /// super-datagram ([`crate::offload::coalesce_udp_runs`]; the
    /// default).
    pub pod_udp_batches: bool,
}

impl Default for LinuxKernel {
    fn default() -> Self {
        LinuxKernel {
            pod_udp_batches: true,
        }
    }
}

impl Kernel for LinuxKernel {
    fn open_pod_port(
        &self,
        kind: PodPortKind,
        name: &str,
        id: PortId,
        stats: &Arc<Stats>,
    ) -> io::Result<OpenedPort> {
        open_pod_port(kind, name, id, stats, self.pod_udp_batches)
    }

    fn resolve_neighbour(&self, interface: &str, ip: Ipv4Addr) -> io::Result<MacAddr> {
        resolve_neighbour(interface, ip)
    }
}

/// How a data path with workers runs.
#[derive(Debug, Clone)]
pub struct DatapathOptions {
    /// Each worker's settings.
    pub worker: WorkerOptions,
    /// How many workers (1 to [`crate::worker::MAX_WORKERS`]).
    pub workers: usize,
    /// CPUs to pin workers to, round robin (empty: no pinning).
    pub worker_cpus: Vec<usize>,
    /// How a pod port is opened when its request names no kind.
    pub pod_port: PodPortKind,
}

/// Why a data path operation failed. Nothing changed: a failed step
/// undoes the steps before it.
#[derive(Debug)]
pub enum DatapathError {
    /// The tables refused the change.
    Table(TableError),
    /// The operation is for pod ports, and this one is not.
    NotAPodPort {
        /// The port's interface.
        name: String,
        /// What it is.
        role: PortRole,
    },
    /// The operation needs workers and kernel ports, and this data path
    /// has tables only.
    NotRunning(&'static str),
    /// The kernel side of a port could not be opened.
    Open {
        /// The port's interface.
        name: String,
        /// Why.
        error: io::Error,
    },
    /// A worker did not take or capture a port.
    Worker {
        /// The port's interface.
        name: String,
        /// Why.
        error: io::Error,
    },
    /// A capture could not start, or stopped on an error.
    Capture {
        /// The capture file.
        file: String,
        /// Frames written before the error.
        packets: u64,
        /// Why.
        error: io::Error,
    },
    /// A neighbour's MAC could not be found.
    Neighbour {
        /// The neighbour.
        ip: Ipv4Addr,
        /// Where it was looked for.
        interface: String,
        /// Why.
        error: io::Error,
    },
}

impl fmt::Display for DatapathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatapathError::Table(e) => e.fmt(f),
            DatapathError::NotAPodPort { name, role } => {
                write!(
                    f,
                    "{name} is the {role} port: it stays while the daemon runs"
                )
            }
            DatapathError::NotRunning(what) => write!(f, "{what} needs a running data plane"),
            DatapathError::Open { name, error } | DatapathError::Worker { name, error } => {
                write!(f, "{name}: {error}")
            }
            DatapathError::Capture {
                file,
                packets,
                error,
            } => write!(f, "{file}: {error} (after {packets} frames)"),
            DatapathError::Neighbour {
                ip,
                interface,
                error,
            } => write!(
                f,
                "cannot find the underlay MAC of {ip} on {interface}: {error} (give underlay_mac)"
            ),
        }
    }
}

impl std::error::Error for DatapathError {}

impl From<TableError> for DatapathError {
    fn from(e: TableError) -> Self {
        DatapathError::Table(e)
    }
}

/// A port the data path took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPort {
    /// Its id in the tables.
    pub id: PortId,
    /// How it moves frames (`af-packet`, `af-xdp-generic`, `udp-socket`...);
    /// none on a data path of tables only.
    pub kind: Option<String>,
    /// The worker that polls it; none for a port split among every
    /// worker ([`AttachedPort::split`]) and on a data path of tables
    /// only.
    pub worker: Option<usize>,
    /// Split among every worker, each polling its own member
    /// ([`Datapath::port_split`]).
    pub split: bool,
    /// What did not go as asked (a fallback, a weaker guarantee), as
    /// sentences for the daemon's log.
    pub notes: Vec<String>,
    /// The index of the interface it was opened on, for a port that goes
    /// with that interface ([`OpenedPort::ifindex`]): what a record of
    /// the port should name, rather than what the name means by the time
    /// it is written.
    pub ifindex: Option<u32>,
}

/// A port the data path let go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedPort {
    /// The id it had.
    pub id: PortId,
    /// What did not go as asked, as sentences for the daemon's log.
    pub notes: Vec<String>,
}

/// How a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captured {
    /// Frames written to the file.
    pub packets: u64,
}

/// How a port was opened.
#[derive(Debug, Clone)]
struct Opened {
    /// How it moves frames (`af-packet`, `udp-socket`...).
    kind: String,
    /// The index of the interface the port was opened on, for a port
    /// that goes with it ([`OpenedPort::ifindex`]; the underlay and host
    /// ports). Indexes are not reused: an interface deleted and made again
    /// under the same name has another, and the port is not on it.
    ifindex: Option<u32>,
}

/// The workers and the kernel of a data path that forwards.
#[derive(Debug)]
struct Running {
    workers: Workers,
    kernel: Box<dyn Kernel>,
    pod_port: PodPortKind,
    clock_micros: fn() -> u64,
}

/// One node's data path: see the module's documentation.
#[derive(Debug)]
pub struct Datapath {
    tables: Arc<Tables>,
    running: Option<Running>,
    /// How each attached port was opened.
    opened: Mutex<HashMap<PortId, Opened>>,
    /// Held while a port comes or goes (added, removed, or found off its
    /// interface and removed): a port id freed by one is not given to
    /// another before the first is done with its worker, and a port found
    /// off its interface is the port removed.
    port_changes: Mutex<()>,
    /// The device counters each attached port's sends are dropped
    /// under ([`Port::send_drop_counters`]), each with the value
    /// counted up to.
    device_drops: Mutex<Vec<(PortId, DeviceCounter, u64)>>,
}

impl Datapath {
    /// A data path of tables only: ports are added to the tables and
    /// nothing polls them (the control socket's tests, `podswitchctl`
    /// against an in-process server, fuzzing).
    pub fn tables_only(tables: Arc<Tables>) -> Datapath {
        Datapath {
            tables,
            running: None,
            opened: Mutex::default(),
            port_changes: Mutex::default(),
            device_drops: Mutex::default(),
        }
    }

    /// Starts the workers over `tables`; pod ports are opened through
    /// `kernel`.
    pub fn start(
        tables: Arc<Tables>,
        options: DatapathOptions,
        kernel: Box<dyn Kernel>,
    ) -> io::Result<Datapath> {
        let workers = Workers::spawn(
            "podswitch-worker",
            Arc::clone(&tables),
            options.worker.clone(),
            options.workers,
            &options.worker_cpus,
        )?;
        Ok(Datapath {
            tables,
            running: Some(Running {
                workers,
                kernel,
                pod_port: options.pod_port,
                clock_micros: options.worker.clock_micros,
            }),
            opened: Mutex::default(),
            port_changes: Mutex::default(),
            device_drops: Mutex::default(),
        })
    }

    /// The tables the workers read.
    pub fn tables(&self) -> &Arc<Tables> {
        &self.tables
    }

    /// Whether workers forward (false: tables only).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// What each worker's loop did, in worker order (none without workers).
    pub fn worker_stats(&self) -> Vec<Arc<WorkerStats>> {
        self.running
            .as_ref()
            .map(|r| r.workers.stats())
            .unwrap_or_default()
    }

    /// How port `id` moves frames, if it was opened here.
    pub fn port_kind(&self, id: PortId) -> Option<String> {
        self.lock_opened().get(&id).map(|o| o.kind.clone())
    }

    /// The worker that polls port `id`; none for a port split among
    /// every worker ([`Datapath::port_split`]).
    pub fn port_worker(&self, id: PortId) -> Option<usize> {
        let workers = &self.running.as_ref()?.workers;
        match workers.is_split(id) {
            true => None,
            false => workers.owner(id),
        }
    }

    /// True if port `id` is split among every worker, each polling its
    /// own member (`per_cpu`, [`crate::port::Port::fan_out`]).
    pub fn port_split(&self, id: PortId) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.workers.is_split(id))
    }

    fn lock_port_changes(&self) -> MutexGuard<'_, ()> {
        self.port_changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_opened(&self) -> MutexGuard<'_, HashMap<PortId, Opened>> {
        self.opened.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_device_drops(&self) -> MutexGuard<'_, Vec<(PortId, DeviceCounter, u64)>> {
        self.device_drops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts, as [`DropReason::TxDeviceDropped`] of their ports, the
    /// frames the ports' devices dropped after the kernel took them
    /// ([`Port::send_drop_counters`]) since the last count: one read of
    /// /proc/net/dev in the calling thread's network namespace, which
    /// must be the ports'. Called before the counters are read (`stats`,
    /// metrics) and when a port goes.
    pub fn count_device_drops(&self) {
        let mut counters = self.lock_device_drops();
        if counters.is_empty() {
            return;
        }
        let Ok(text) = netdev::proc_net_dev() else {
            return;
        };
        for (port, counter, counted) in counters.iter_mut() {
            let Some(now) = counter.read(&text) else {
                continue;
            };
            // A device made again starts from 0: count from there.
            let new = now.checked_sub(*counted).unwrap_or(now);
            if new > 0 {
                self.tables
                    .stats
                    .add_drops(*port, DropReason::TxDeviceDropped, new);
            }
            *counted = now;
        }
    }

    /// Adds a port the caller opens itself (the underlay and the host
    /// port, whose options are the daemon's): `open` gets the port's id.
    /// On a data path of tables only, the port goes in the tables and
    /// `open` is not called.
    pub fn attach_port(
        &self,
        spec: PortSpec,
        open: impl FnOnce(PortId) -> io::Result<Box<dyn Port>>,
    ) -> Result<AttachedPort, DatapathError> {
        let _changing = self.lock_port_changes();
        let name = spec.name.clone();
        let id = self.tables.attach_port(spec)?;
        self.hand_to_worker(id, &name, |_| {
            let port = open(id)?;
            let kind = port.kind().to_string();
            let ifindex = netdev::ifindex(&name).ok();
            Ok((port, Opened { kind, ifindex }, Vec::new()))
        })
    }

    /// Adds a pod port, opened as `kind` (none: the data path's default),
    /// and calls `attached` with it before another port comes or goes: what
    /// the caller records of the port (a state file's entry) then follows
    /// the order of the changes, and cannot outlive a removal of the same
    /// name that came after it.
    pub fn add_pod_port(
        &self,
        spec: PortSpec,
        kind: Option<PodPortKind>,
        attached: impl FnOnce(&AttachedPort),
    ) -> Result<AttachedPort, DatapathError> {
        if spec.role != PortRole::Pod {
            return Err(DatapathError::NotAPodPort {
                name: spec.name,
                role: spec.role,
            });
        }
        let _changing = self.lock_port_changes();
        let name = spec.name.clone();
        let id = self.tables.attach_port(spec)?;
        let port = self.hand_to_worker(id, &name, |running| {
            let kind = kind.unwrap_or(running.pod_port);
            let opened = running
                .kernel
                .open_pod_port(kind, &name, id, &self.tables.stats)?;
            let kind = opened.kind.to_string();
            let ifindex = opened.ifindex;
            Ok((opened.port, Opened { kind, ifindex }, opened.notes))
        })?;
        attached(&port);
        Ok(port)
    }

    /// Opens port `id` (just added to the tables as `name`) with `open`,
    /// which says how the port moves frames, and hands it to a worker; takes it out of the tables again if
    /// either fails.
    fn hand_to_worker(
        &self,
        id: PortId,
        name: &str,
        open: impl FnOnce(&Running) -> io::Result<(Box<dyn Port>, Opened, Vec<String>)>,
    ) -> Result<AttachedPort, DatapathError> {
        let Some(running) = &self.running else {
            return Ok(AttachedPort {
                id,
                kind: None,
                worker: None,
                split: false,
                notes: Vec::new(),
                ifindex: None,
            });
        };
        let undo = |error| {
            let _ = self.tables.detach_port(name);
            error
        };
        let (port, opened, notes) = open(running).map_err(|error| {
            undo(DatapathError::Open {
                name: name.to_string(),
                error,
            })
        })?;
        // Before the port is split (its members share its devices) and
        // sends: what the devices dropped before is not the port's.
        let counters = port.send_drop_counters();
        let text = if counters.is_empty() {
            String::new()
        } else {
            netdev::proc_net_dev().unwrap_or_default()
        };
        let device_counters: Vec<(PortId, DeviceCounter, u64)> = counters
            .into_iter()
            .map(|counter| {
                let now = counter.read(&text).unwrap_or(0);
                (id, counter, now)
            })
            .collect();
        let worker = running.workers.attach(id, port).map_err(|error| {
            undo(DatapathError::Worker {
                name: name.to_string(),
                error,
            })
        })?;
        let (kind, ifindex) = (opened.kind.clone(), opened.ifindex);
        self.lock_opened().insert(id, opened);
        if !device_counters.is_empty() {
            let mut counted = self.lock_device_drops();
            counted.retain(|(port, _, _)| *port != id);
            counted.extend(device_counters);
        }
        Ok(AttachedPort {
            id,
            kind: Some(kind),
            worker,
            split: worker.is_none(),
            notes,
            ifindex,
        })
    }

    /// Takes pod port `name` out of the tables and from its worker, which
    /// closes its kernel side, and calls `removed` with it before another
    /// port comes or goes (as [`Datapath::add_pod_port`] does).
    pub fn remove_pod_port(
        &self,
        name: &str,
        removed: impl FnOnce(&RemovedPort),
    ) -> Result<RemovedPort, DatapathError> {
        let _changing = self.lock_port_changes();
        let port = self.remove_pod_port_now(name)?;
        removed(&port);
        Ok(port)
    }

    /// [`Datapath::remove_pod_port`], with the port changes held.
    fn remove_pod_port_now(&self, name: &str) -> Result<RemovedPort, DatapathError> {
        if let Some(port) = self.tables.load().ports.by_name(name) {
            if port.spec.role != PortRole::Pod {
                return Err(DatapathError::NotAPodPort {
                    name: name.to_string(),
                    role: port.spec.role,
                });
            }
        }
        let id = self.tables.detach_port(name)?;
        self.lock_opened().remove(&id);
        // A port with device counters has its last drops counted first
        // (one read of /proc/net/dev, for the interface's that remain).
        if self
            .lock_device_drops()
            .iter()
            .any(|(port, _, _)| *port == id)
        {
            self.count_device_drops();
            self.lock_device_drops().retain(|(port, _, _)| *port != id);
        }
        let mut notes = Vec::new();
        if let Some(running) = &self.running {
            // Out of the tables first: no worker sends to it any more when
            // its owner lets it go. The port closes when dropped here.
            if let Err(e) = running.workers.detach(id) {
                notes.push(format!(
                    "its worker did not give it back ({e}): it closes when the workers stop"
                ));
            }
        }
        Ok(RemovedPort { id, notes })
    }

    /// Takes out every pod port whose interface has gone since the port
    /// was opened on it: deleted (its pod's network namespace destroyed
    /// before the CNI DEL, a runtime that crashed, `ip link del`), or
    /// moved to another namespace. A bridge lets a port go in the same way
    /// when its device is unregistered (`br_device_event`,
    /// net/bridge/br.c). Calls `removed` with each port taken out and its
    /// interface's name, while no other port comes or goes (so that what
    /// the caller records of it, such as a state file's entry, is not
    /// about a new port of the same name).
    ///
    /// A port is known by the index of its interface, not its name: a
    /// renamed interface keeps its port, and an interface made anew under
    /// the same name has another index, on which the port is not. A TAP
    /// pod port goes with no interface here ([`OpenedPort::ifindex`]).
    /// Looks in the calling thread's network namespace, which must be the
    /// ports'; an index it cannot look up (no descriptor left) counts as
    /// there, until a later call finds it gone.
    pub fn remove_vanished_pod_ports(&self, mut removed: impl FnMut(&str, &RemovedPort)) {
        let _changing = self.lock_port_changes();
        for (name, _) in self.off_their_interface(true) {
            // Only this thread removes ports while it holds the changes.
            if let Ok(port) = self.remove_pod_port_now(&name) {
                removed(&name, &port);
            }
        }
    }

    /// The underlay and host ports whose interface has gone since they
    /// were opened (deleted or moved to another namespace), by name.
    /// Without them the node cannot reach its peers or its own stack,
    /// and they are not opened again while the daemon runs. Looks in the
    /// calling thread's network namespace, which must be the ports'.
    pub fn vanished_node_ports(&self) -> Vec<(String, PortRole)> {
        self.off_their_interface(false)
    }

    /// The pod ports (`pods`), or the others, whose interface's index no
    /// longer names an interface here, with their roles.
    fn off_their_interface(&self, pods: bool) -> Vec<(String, PortRole)> {
        let snapshot = self.tables.load();
        let opened = self.lock_opened();
        snapshot
            .ports
            .iter()
            .filter(|port| (port.spec.role == PortRole::Pod) == pods)
            .filter_map(|port| {
                let ifindex = opened.get(&port.id)?.ifindex?;
                let gone = matches!(netdev::index_exists(ifindex), Ok(false));
                gone.then(|| (port.spec.name.clone(), port.spec.role))
            })
            .collect()
    }

    /// Writes the frames port `name` receives and sends to `file` (pcap)
    /// until `packets` frames or `duration` have passed, and returns when
    /// done.
    pub fn capture(
        &self,
        name: &str,
        file: &Path,
        packets: Option<u64>,
        duration: Duration,
    ) -> Result<Captured, DatapathError> {
        let running = self
            .running
            .as_ref()
            .ok_or(DatapathError::NotRunning("capture"))?;
        let id = self
            .tables
            .load()
            .ports
            .by_name(name)
            .map(|p| p.id)
            .ok_or_else(|| TableError::NoSuchPort(name.to_string()))?;
        let failed = |packets, error| DatapathError::Capture {
            file: file.display().to_string(),
            packets,
            error,
        };
        let out = File::create(file).map_err(|e| failed(0, e))?;
        let limit = CaptureLimit {
            packets,
            until_micros: Some(
                (running.clock_micros)().saturating_add(duration.as_micros() as u64),
            ),
        };
        let done =
            running
                .workers
                .capture(id, out, limit)
                .map_err(|error| DatapathError::Worker {
                    name: name.to_string(),
                    error,
                })?;
        // The worker stops the capture at its deadline; a little more for
        // it to notice and answer.
        let result = done
            .recv_timeout(duration + Duration::from_secs(5))
            .map_err(|_| {
                failed(
                    0,
                    io::Error::new(io::ErrorKind::TimedOut, "the capture did not finish"),
                )
            })?
            .map_err(|e| failed(0, e))?;
        match result.error {
            Some(e) => Err(failed(result.packets, e)),
            None => Ok(Captured {
                packets: result.packets,
            }),
        }
    }

    /// The MAC of `ip`, a neighbour on the underlay.
    pub fn resolve_neighbour(&self, ip: Ipv4Addr) -> Result<MacAddr, DatapathError> {
        let running = self
            .running
            .as_ref()
            .ok_or(DatapathError::NotRunning("finding a neighbour"))?;
        let snap = self.tables.load();
        let interface = snap
            .ports
            .underlay
            .and_then(|id| snap.ports.get(id))
            .map(|p| p.spec.name.clone())
            .ok_or(DatapathError::NotRunning(
                "finding a neighbour (no underlay)",
            ))?;
        running
            .kernel
            .resolve_neighbour(&interface, ip)
            .map_err(|error| DatapathError::Neighbour {
                ip,
                interface,
                error,
            })
    }

    /// Stops the workers, closing every port (sockets, XDP programs, TUN
    /// devices) before it returns.
    pub fn stop(self) {
        if let Some(running) = self.running {
            running.workers.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use super::*;

    use crate::kernel_port::OpenedKind;
    use crate::port::socket_pair::{
        frame, node1_tables as tables, socket_port, IP1, IP2, MAC1, MAC2,
    };

    const PEER_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x02]);

    /// A kernel of socket-pair ports: the test keeps each port's other
    /// end. Interfaces named `gone*` do not exist.
    #[derive(Debug, Default)]
    struct SocketKernel {
        wires: Mutex<HashMap<String, UnixDatagram>>,
        asked_on: Mutex<Vec<String>>,
    }

    impl SocketKernel {
        fn wire(&self, name: &str) -> UnixDatagram {
            self.wires.lock().unwrap().remove(name).expect("opened")
        }
    }

    impl Kernel for Arc<SocketKernel> {
        fn open_pod_port(
            &self,
            _kind: PodPortKind,
            name: &str,
            id: PortId,
            _stats: &Arc<Stats>,
        ) -> io::Result<OpenedPort> {
            if name.starts_with("gone") {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            let (port, wire) = socket_port(name, id);
            self.wires.lock().unwrap().insert(name.to_string(), wire);
            Ok(OpenedPort {
                port,
                kind: OpenedKind::Memory,
                notes: vec![format!("{name} is in memory")],
                ifindex: None,
            })
        }

        fn resolve_neighbour(&self, interface: &str, _ip: Ipv4Addr) -> io::Result<MacAddr> {
            self.asked_on.lock().unwrap().push(interface.to_string());
            Ok(PEER_MAC)
        }
    }

    fn micros() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }

    fn start() -> (Datapath, Arc<SocketKernel>) {
        let kernel = Arc::new(SocketKernel::default());
        let options = DatapathOptions {
            worker: WorkerOptions {
                pool_buffers: 256,
                large_buffers: 2,
                busy_poll: Duration::ZERO,
                realtime: false,
                clock_secs: || 1,
                clock_micros: micros,
                split_ports: false,
            },
            workers: 2,
            worker_cpus: Vec::new(),
            pod_port: PodPortKind::AfPacket,
        };
        let datapath = Datapath::start(tables(), options, Box::new(Arc::clone(&kernel))).unwrap();
        (datapath, kernel)
    }

    #[test]
    fn pod_ports_added_here_are_polled_and_switch_frames() {
        let (datapath, kernel) = start();
        let a = datapath
            .add_pod_port(PortSpec::pod("veth1", IP1, MAC1), None, |_| {})
            .unwrap();
        let b = datapath
            .add_pod_port(
                PortSpec::pod("veth2", IP2, MAC2),
                Some(PodPortKind::Tap),
                |_| {},
            )
            .unwrap();
        assert_eq!(a.kind.as_deref(), Some("memory"));
        assert_eq!(a.notes, ["veth1 is in memory"]);
        // Spread over the two workers, and each says so.
        assert_eq!((a.worker, b.worker), (Some(0), Some(1)));
        assert_eq!(datapath.port_worker(b.id), Some(1));
        assert_eq!(datapath.port_kind(b.id).as_deref(), Some("memory"));
        datapath.tables().fdb.learn(MAC2, b.id, 1);

        let (a_wire, b_wire) = (kernel.wire("veth1"), kernel.wire("veth2"));
        b_wire
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sent = frame((MAC1, IP1), (MAC2, IP2));
        a_wire.send(&sent).unwrap();
        let mut got = [0u8; 2048];
        let n = b_wire.recv(&mut got).expect("switched from veth1 to veth2");
        assert_eq!(&got[..n], &sent[..]);
        datapath.stop();
    }

    #[test]
    fn a_port_the_kernel_cannot_open_leaves_the_tables_as_they_were() {
        let (datapath, _kernel) = start();
        let before = datapath.tables().load().ports.iter().count();
        let e = datapath
            .add_pod_port(PortSpec::pod("gone1", IP1, MAC1), None, |_| {})
            .unwrap_err();
        assert!(matches!(e, DatapathError::Open { .. }), "{e:?}");
        assert!(e.to_string().starts_with("gone1: "), "{e}");
        assert_eq!(datapath.tables().load().ports.iter().count(), before);
        // The name is free for the next try.
        assert!(datapath.tables().load().ports.by_name("gone1").is_none());
    }

    #[test]
    fn removing_a_pod_port_lets_its_worker_go_and_keeps_the_underlay() {
        let (datapath, kernel) = start();
        let underlay = datapath
            .attach_port(PortSpec::underlay("eth0"), |id| {
                Ok(socket_port("eth0", id).0)
            })
            .unwrap();
        assert_eq!(underlay.kind.as_deref(), Some("memory"));
        let pod = datapath
            .add_pod_port(PortSpec::pod("veth1", IP1, MAC1), None, |_| {})
            .unwrap();
        drop(kernel.wire("veth1"));

        let e = datapath.remove_pod_port("eth0", |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "eth0 is the underlay port: it stays while the daemon runs"
        );
        let e = datapath
            .add_pod_port(PortSpec::underlay("eth1"), None, |_| {})
            .unwrap_err();
        assert!(matches!(e, DatapathError::NotAPodPort { .. }), "{e:?}");

        assert_eq!(
            datapath.remove_pod_port("veth1", |_| {}).unwrap(),
            RemovedPort {
                id: pod.id,
                notes: Vec::new()
            }
        );
        assert_eq!(datapath.port_worker(pod.id), None);
        assert_eq!(datapath.port_kind(pod.id), None);
        assert!(datapath.tables().load().ports.by_name("veth1").is_none());
        assert!(matches!(
            datapath.remove_pod_port("veth1", |_| {}),
            Err(DatapathError::Table(TableError::NoSuchPort(_)))
        ));
        assert_eq!(datapath.port_worker(underlay.id), Some(0));
    }

    /// What the caller records of a port added or removed (podswitchd's
    /// state file) is recorded before another change can start: a DEL or
    /// a sweep of the same name cannot slip between a change and its
    /// record. A port that fails to open is not recorded.
    #[test]
    fn a_port_change_is_recorded_before_the_next_change_starts() {
        let (datapath, _kernel) = start();
        let mut recorded = Vec::new();
        let added = datapath
            .add_pod_port(PortSpec::pod("veth1", IP1, MAC1), None, |port| {
                assert!(datapath.port_changes.try_lock().is_err(), "added unheld");
                recorded.push(("added", port.id));
            })
            .unwrap();
        datapath
            .add_pod_port(PortSpec::pod("gone1", IP2, MAC2), None, |_| {
                panic!("a port that failed to open was recorded")
            })
            .unwrap_err();
        let removed = datapath
            .remove_pod_port("veth1", |port| {
                assert!(datapath.port_changes.try_lock().is_err(), "removed unheld");
                recorded.push(("removed", port.id));
            })
            .unwrap();
        assert_eq!(recorded, [("added", added.id), ("removed", removed.id)]);
        assert_eq!(added.id, removed.id);
    }

    #[test]
    fn a_capture_writes_what_the_port_receives() {
        let (datapath, kernel) = start();
        let a = datapath
            .add_pod_port(PortSpec::pod("veth1", IP1, MAC1), None, |_| {})
            .unwrap();
        let a_wire = kernel.wire("veth1");
        let file = std::env::temp_dir().join(format!("podswitch-capture-{}.pcap", a.id));
        let done = AtomicBool::new(false);
        let captured = std::thread::scope(|s| {
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let _ = a_wire.send(&frame((MAC1, IP1), (MAC2, IP2)));
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            let captured = datapath.capture("veth1", &file, Some(2), Duration::from_secs(8));
            done.store(true, Ordering::Relaxed);
            captured
        });
        assert_eq!(captured.unwrap(), Captured { packets: 2 });
        let pcap = std::fs::read(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        // pcap file header, then two records of a header and 64 bytes.
        assert_eq!(pcap.len(), 24 + 2 * (16 + 64));
        assert_eq!(&pcap[..4], &0xa1b2_c3d4u32.to_le_bytes());

        let e = datapath
            .capture("veth9", &file, Some(1), Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(e.to_string(), "no port veth9");
    }

    #[test]
    fn neighbours_are_looked_for_on_the_underlay() {
        let (datapath, kernel) = start();
        let e = datapath
            .resolve_neighbour(Ipv4Addr::new(192, 168, 100, 2))
            .unwrap_err();
        assert!(e.to_string().contains("no underlay"), "{e}");
        datapath
            .attach_port(PortSpec::underlay("eth0"), |id| {
                Ok(socket_port("eth0", id).0)
            })
            .unwrap();
        let mac = datapath
            .resolve_neighbour(Ipv4Addr::new(192, 168, 100, 2))
            .unwrap();
        assert_eq!(mac, PEER_MAC);
        assert_eq!(*kernel.asked_on.lock().unwrap(), ["eth0"]);
    }

    #[test]
    fn a_data_path_of_tables_only_programs_tables_and_captures_nothing() {
        let datapath = Datapath::tables_only(tables());
        let added = datapath
            .add_pod_port(PortSpec::pod("veth1", IP1, MAC1), None, |_| {})
            .unwrap();
        assert_eq!((added.kind, added.worker), (None, None));
        assert!(datapath.tables().load().ports.by_name("veth1").is_some());
        let e = datapath
            .capture(
                "veth1",
                Path::new("/nonexistent"),
                None,
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "capture needs a running data plane");
        assert_eq!(
            datapath.remove_pod_port("veth1", |_| {}).unwrap().id,
            added.id
        );
        assert!(datapath.worker_stats().is_empty());
    }
}
