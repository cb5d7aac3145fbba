//! Pod ports whose interface goes without a CNI DEL leave podswitch when
//! the kernel says so.
//!
//! A pod's veth can vanish before its DEL comes, or with none at all: the
//! runtime destroys the pod's network namespace first (the kernel deletes
//! the veth with it), a runtime crashes between the two, someone runs
//! `ip link del`. A port left on the vanished interface would keep the
//! pod's address, MAC and state-file entry, and every frame for it would
//! be refused by the kernel (`tx_failed`) until a DEL that may never
//! come. A bridge lets its port go when the device is unregistered
//! (`br_device_event`, net/bridge/br.c), and podswitchd does the same: a
//! thread follows the namespace's link deletions (rtnetlink's
//! `RTNLGRP_LINK`, as `ip monitor link`) and takes out each pod port whose
//! interface has gone ([`Datapath::remove_vanished_pod_ports`]). The DEL
//! that may come later finds nothing to detach, which the CNI plugin
//! takes as done.
//!
//! The underlay and host interfaces are the node's, not a pod's: without
//! either, no pod reaches another node or the node itself, and podswitchd
//! does not open them again while it runs. When one goes, podswitchd
//! stops with an error, as it does when a thread panics, so that its
//! supervisor starts it again; the new daemon opens the interface once it
//! exists again.

use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use podswitch_control::handler::DaemonHooks;
use podswitch_engine::datapath::Datapath;
use podswitch_host::netlink::{LinkChange, LinkWatch, LinkWatchWaker};

/// The thread that takes out pod ports whose interface has gone.
#[derive(Debug)]
pub(crate) struct VanishedPorts {
    /// Ends the thread: its wait has no timeout (an idle node's thread
    /// sleeps until a link changes), and returns nothing once woken.
    waker: LinkWatchWaker,
    thread: Option<JoinHandle<()>>,
    /// The node's interfaces (underlay, host) that went, said as a
    /// sentence, once one has.
    node_port_gone: Arc<Mutex<Option<String>>>,
}

impl VanishedPorts {
    /// Subscribes to the link changes of the calling thread's namespace
    /// (the ports'), takes out the pod ports whose interface has already
    /// gone, and follows the changes from then on in a thread of its own.
    /// Each port taken out goes through `hooks` as a DEL's does (log line,
    /// state file). When the underlay or host interface goes, the thread
    /// calls `stop_daemon` and ends, unless `stopping` says the daemon is
    /// already on its way down (a panicking worker closes the TUN device
    /// of the host port it owns).
    pub(crate) fn follow(
        datapath: Arc<Datapath>,
        hooks: Arc<dyn DaemonHooks>,
        stop_daemon: fn(),
        stopping: fn() -> bool,
    ) -> io::Result<VanishedPorts> {
        let mut watch = LinkWatch::open()?;
        let waker = watch.waker();
        let node_port_gone = Arc::new(Mutex::new(None));
        let gone = Arc::clone(&node_port_gone);
        let look = move |why: &str| {
            remove_vanished(&datapath, hooks.as_ref(), why);
            let lost = datapath.vanished_node_ports();
            if lost.is_empty() {
                return false;
            }
            if stopping() {
                return true;
            }
            let what = lost
                .iter()
                .map(|(name, role)| format!("the {role} interface {name}"))
                .collect::<Vec<_>>()
                .join(" and ");
            let what = format!("{what} is {why}");
            tracing::error!(
                "{what}: no pod reaches other nodes or the node without it, and podswitchd does \
                 not open it again while it runs; it stops, to be started again once it exists"
            );
            *gone.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
            stop_daemon();
            true
        };
        // After the subscription: a link deleted from here on is seen
        // either by this look or by the thread.
        if look("gone since it was opened") {
            return Ok(VanishedPorts {
                waker,
                thread: None,
                node_port_gone,
            });
        }
        let thread = std::thread::Builder::new()
            .name("podswitch-links".into())
            .spawn(move || loop {
                let changes = match watch.wait(None) {
                    Ok(Some(changes)) => changes,
                    // Woken: the daemon stops.
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(
                            "link changes can no longer be read ({e}): a pod port whose \
                             interface goes now stays until its CNI DEL"
                        );
                        return;
                    }
                };
                let why = if changes.contains(&LinkChange::Lost) {
                    // Which links went is unknown: every port is looked at.
                    "gone while link changes were lost"
                } else if changes.is_empty() {
                    continue;
                } else {
                    "deleted, or moved to another namespace"
                };
                if look(why) {
                    return;
                }
            })?;
        Ok(VanishedPorts {
            waker,
            thread: Some(thread),
            node_port_gone,
        })
    }

    /// Stops the thread, and says which of the node's interfaces went, as
    /// a sentence, if one has.
    pub(crate) fn finish(mut self) -> Option<String> {
        self.join();
        self.node_port_gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn join(&mut self) {
        self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for VanishedPorts {
    fn drop(&mut self) {
        self.join();
    }
}

/// Takes out the pod ports whose interface has gone, each with a line
/// that says `why` and what follows: at INFO, as a bridge says a port
/// left (a runtime that destroys a pod's network namespace before its
/// DEL is doing nothing wrong).
fn remove_vanished(datapath: &Datapath, hooks: &dyn DaemonHooks, why: &str) {
    datapath.remove_vanished_pod_ports(|name, port| {
        tracing::info!(
            interface = %name,
            port = port.id.0,
            "the pod port's interface is {why}: the port is detached without a CNI DEL \
             (its pod's address now answers as unassigned; a DEL later finds nothing to do)"
        );
        hooks.port_removed(name, port);
    });
}
