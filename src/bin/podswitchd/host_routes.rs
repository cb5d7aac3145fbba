//! The node's routes into podswitch: the prefixes the node's own kernel
//! sends through the host port, each with the address it sends from, kept
//! equal to what the FIB routes away from the node
//! ([`Tables::host_routes`]) as peers, routes and ports come and go, as
//! flanneld adds and removes one route per lease.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use podswitch_engine::fib::Prefix;
use podswitch_engine::sys::netdev;
use podswitch_engine::tables::Tables;
use podswitch_host::netlink::{Netlink, RT_SCOPE_LINK};

/// The host port's routes in the node's main table.
#[derive(Debug)]
pub(crate) struct HostRoutes {
    interface: String,
    tables: Arc<Tables>,
    /// What podswitchd added, behind the lock that orders syncs from the
    /// control socket's and the lease store's threads.
    installed: Mutex<Installed>,
}

/// The routes podswitchd added, and when they were last whole.
#[derive(Debug, Default)]
struct Installed {
    /// Each route and its source.
    routes: BTreeMap<Prefix, Ipv4Addr>,
    /// The tables' version at which every route the FIB asked for was in
    /// place. A sync at that version has nothing to do: the lease store
    /// applies a full read of thousands of leases as one table change,
    /// and then asks for a sync per lease.
    whole_at: Option<u64>,
}

impl HostRoutes {
    /// Follows `tables` for the host port `interface`, which has no
    /// route yet.
    pub(crate) fn new(interface: &str, tables: Arc<Tables>) -> HostRoutes {
        HostRoutes {
            interface: interface.to_string(),
            tables,
            installed: Mutex::default(),
        }
    }

    /// Adds the routes the FIB now asks for, then removes those it no
    /// longer does (a subnet that moves to a shorter prefix is never
    /// without a route); a route whose source changed is replaced. Every
    /// route the kernel refuses is logged, and tried again at the next
    /// sync; the first refusal is the error.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let mut guard = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        // Read before the routes: a change published meanwhile has a later
        // version, and its own sync will not be skipped.
        let version = self.tables.load().version;
        if guard.whole_at == Some(version) {
            return Ok(());
        }
        let installed = &mut guard.routes;
        let wanted: BTreeMap<Prefix, Ipv4Addr> = self
            .tables
            .host_routes()
            .into_iter()
            .map(|route| (route.prefix, route.source))
            .collect();
        if *installed == wanted {
            guard.whole_at = Some(version);
            return Ok(());
        }
        let index = netdev::ifindex(&self.interface)?;
        let mut netlink = Netlink::open()?;
        let mut first_error = None;
        let mut refused = |what: &str, prefix: Prefix, e: io::Error| {
            tracing::warn!(
                route = %prefix,
                interface = %self.interface,
                "host route not {what}: {e} (tried again at the next peer, route or port change)"
            );
            first_error.get_or_insert(e);
        };
        for (&prefix, &source) in &wanted {
            if installed.get(&prefix) == Some(&source) {
                continue;
            }
            if installed.contains_key(&prefix) {
                match netlink.del_route(prefix.addr(), prefix.prefix_len(), index) {
                    Ok(_) => {
                        installed.remove(&prefix);
                    }
                    Err(e) => {
                        refused("replaced", prefix, e);
                        continue;
                    }
                }
            }
            let added = netlink.add_route(
                prefix.addr(),
                prefix.prefix_len(),
                None,
                index,
                RT_SCOPE_LINK,
                Some(source),
            );
            match added {
                Ok(()) => {
                    tracing::info!(route = %prefix, %source, interface = %self.interface, "host route added");
                    installed.insert(prefix, source);
                }
                Err(e) => refused("added", prefix, e),
            }
        }
        let gone: Vec<Prefix> = installed
            .keys()
            .filter(|prefix| !wanted.contains_key(prefix))
            .copied()
            .collect();
        for prefix in gone {
            match netlink.del_route(prefix.addr(), prefix.prefix_len(), index) {
                Ok(_) => {
                    tracing::info!(route = %prefix, interface = %self.interface, "host route removed");
                    installed.remove(&prefix);
                }
                Err(e) => refused("removed", prefix, e),
            }
        }
        match first_error {
            None => {
                guard.whole_at = Some(version);
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}
