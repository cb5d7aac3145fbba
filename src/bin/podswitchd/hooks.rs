//! What podswitchd keeps beside the data path, as the control handler's
//! [`DaemonHooks`]: one log line per change, the state file a restart
//! reads (pod ports, runtime peers and routes), and the lease store's
//! health. Ports themselves are the engine's `Datapath`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use podswitch_control::handler::DaemonHooks;
use podswitch_control::protocol::{Request, StoreStatus};
use podswitch_engine::datapath::{AttachedPort, RemovedPort};
use podswitch_engine::kernel_port::PodPortKind;
use podswitch_engine::port::PortRole;
use podswitch_engine::sys::netdev;
use podswitch_engine::tables::PortSpec;

use crate::host_routes::HostRoutes;
use crate::state::{PodEnd, PortRecord, StateFile};

/// The daemon's side of control requests.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub state: StateFile,
    /// Peer and route requests are kept in the state file: off while the
    /// config file's peers are applied (the config says them again at
    /// every start, and wins), on for the control socket's.
    pub keep_runtime_changes: AtomicBool,
    /// The lease store's health, when peers come from one.
    pub store_health: Option<Arc<podswitch_lease::etcd::Health>>,
    /// The node's routes into the host port, which follow the FIB.
    pub host_routes: HostRoutes,
}

impl DaemonHooks for Daemon {
    fn changed(&self, what: &str) {
        tracing::info!("{what}");
    }

    fn applied(&self, request: &Request) {
        // Refusals are logged, and tried again at the next change.
        let _ = self.host_routes.sync();
        if !self.keep_runtime_changes.load(Ordering::Relaxed) {
            return;
        }
        // Peers made from leases come back from the store, not the file.
        if let Request::PeerAdd { name, .. } | Request::PeerDel { name } = request {
            if self.store_health.is_some() && crate::cluster::is_lease_peer(name) {
                return;
            }
        }
        if let Err(e) = self.state.apply(request) {
            tracing::warn!("state file: {e}: this change is lost at a restart");
        }
    }

    fn port_added(&self, spec: &PortSpec, requested: Option<PodPortKind>, port: &AttachedPort) {
        let name = spec.name.as_str();
        log_attached(name, spec.role, port);
        // A pod outside the node's subnet (a static port) needs its own.
        let _ = self.host_routes.sync();
        // Every pod port has its address and MAC.
        let (Some(ip), Some(mac)) = (spec.ip, spec.mac) else {
            return;
        };
        let record = PortRecord {
            interface: name.to_string(),
            ip,
            mac,
            container_id: spec.container_id.clone(),
            ifname: spec.ifname.clone(),
            // Text, so that a state file naming a kind this version does
            // not know loses that port only (main.rs drops it, saying so).
            kind: requested.map(|k| k.to_string()),
            anti_spoof: spec.anti_spoof,
            // The interface the port was opened on: the name may already
            // be another's, or no one's.
            ifindex: port.ifindex.or_else(|| netdev::ifindex(name).ok()),
            pod_end: PodEnd::of(name),
            egress_limit: spec
                .egress_limit
                .map(podswitch_control::handler::egress_limit),
        };
        if let Err(e) = self.state.put(record) {
            tracing::warn!(interface = name, "state file: {e}");
        }
    }

    fn port_removed(&self, name: &str, port: &RemovedPort) {
        let _ = self.host_routes.sync();
        for note in &port.notes {
            tracing::warn!(interface = name, "{note}");
        }
        tracing::info!(port = port.id.0, interface = name, "port detached");
        if let Err(e) = self.state.remove(name) {
            tracing::warn!(interface = name, "state file: {e}");
        }
    }

    fn store_status(&self) -> Option<StoreStatus> {
        self.store_health.as_ref().map(|h| h.status())
    }
}

/// The daemon's log lines for a port it attached: what did not go as
/// asked, then the port, its kind and its worker.
pub(crate) fn log_attached(name: &str, role: PortRole, port: &AttachedPort) {
    for note in &port.notes {
        tracing::warn!(interface = name, "{note}");
    }
    tracing::info!(
        port = port.id.0,
        interface = name,
        kind = port.kind.as_deref().unwrap_or("-"),
        %role,
        worker = port.worker,
        split = port.split,
        "port attached"
    );
}
