//! The node's routes into podswitch: the prefixes the node's own kernel
//! sends through the host port, kept equal to what the FIB routes away
//! from the node ([`Tables::host_routes`]) as peers and routes come and
//! go, as flanneld adds and removes one route per lease.

use std::collections::BTreeSet;
use std::io;
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
    /// The routes podswitchd added, behind the lock that orders syncs
    /// from the control socket's and the lease store's threads.
    installed: Mutex<BTreeSet<Prefix>>,
}

impl HostRoutes {
    /// Follows `tables` for the host port `interface`, which was opened
    /// with the routes `installed`.
    pub(crate) fn new(interface: &str, tables: Arc<Tables>, installed: &[Prefix]) -> HostRoutes {
        HostRoutes {
            interface: interface.to_string(),
            tables,
            installed: Mutex::new(installed.iter().copied().collect()),
        }
    }

    /// Adds the routes the FIB now asks for, then removes those it no
    /// longer does (a subnet that moves to a shorter prefix is never
    /// without a route). A route the kernel refuses is logged and tried
    /// again at the next sync.
    pub(crate) fn sync(&self) {
        let mut installed = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: BTreeSet<Prefix> = self.tables.host_routes().into_iter().collect();
        if *installed == wanted {
            return;
        }
        let kernel =
            netdev::ifindex(&self.interface).and_then(|index| Ok((index, Netlink::open()?)));
        let (index, mut netlink) = match kernel {
            Ok(kernel) => kernel,
            Err(e) => {
                tracing::warn!(interface = %self.interface, "host routes not updated: {e}");
                return;
            }
        };
        let to_add: Vec<Prefix> = wanted.difference(&installed).copied().collect();
        let to_remove: Vec<Prefix> = installed.difference(&wanted).copied().collect();
        for prefix in to_add {
            let added = netlink.add_route(
                prefix.addr(),
                prefix.prefix_len(),
                None,
                index,
                RT_SCOPE_LINK,
            );
            match added {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    self.refused("added", prefix, &e);
                    continue;
                }
            }
            tracing::info!(route = %prefix, interface = %self.interface, "host route added");
            installed.insert(prefix);
        }
        for prefix in to_remove {
            match netlink.del_route(prefix.addr(), prefix.prefix_len(), index) {
                Ok(_) => {}
                Err(e) => {
                    self.refused("removed", prefix, &e);
                    continue;
                }
            }
            tracing::info!(route = %prefix, interface = %self.interface, "host route removed");
            installed.remove(&prefix);
        }
    }

    fn refused(&self, what: &str, prefix: Prefix, e: &io::Error) {
        tracing::warn!(
            route = %prefix,
            interface = %self.interface,
            "host route not {what}: {e} (tried again at the next peer or route change)"
        );
    }
}
