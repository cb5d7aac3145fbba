//! Opening a pod's port: the kind asked for, what to fall back to when the
//! kernel refuses it, and the settings the pod veth's host side needs so
//! that the node's kernel has no reason to act on pod frames (DESIGN.md).
//! podswitchd opens every pod port through [`open_pod_port`], for the
//! control socket's `port-add` and for its config file alike.

use std::fmt;
use std::io;
use std::sync::Arc;

use super::{AfPacketPort, AfXdpPort, TapPort};
use crate::port::{Port, PortId};
use crate::stats::Stats;
use crate::sys::netdev;
use crate::sys::xdp::{self, StaleProgram, XdpMode};

pub use podswitch_addr::PodPortKind;

/// How an opened pod port moves frames: the kind asked for, or what the
/// kernel left of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedKind {
    /// AF_PACKET (asked for, or the fallback from AF_XDP).
    AfPacket,
    /// AF_XDP, in the driver or on the skb (generic XDP, slower).
    AfXdp(XdpMode),
    /// A TAP device.
    Tap,
    /// In memory: a test's [`Kernel`](crate::datapath::Kernel).
    Memory,
}

impl fmt::Display for OpenedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpenedKind::AfPacket => "af-packet",
            OpenedKind::AfXdp(XdpMode::Native) => "af-xdp",
            OpenedKind::AfXdp(XdpMode::Generic) => "af-xdp-generic",
            OpenedKind::Tap => "tap",
            OpenedKind::Memory => "memory",
        })
    }
}

/// A pod port, opened, with what happened on the way: each fallback or
/// weakened guarantee as a sentence for the daemon's log.
pub struct OpenedPort {
    /// The port, ready for a worker.
    pub port: Box<dyn Port>,
    /// How it moves frames.
    pub kind: OpenedKind,
    /// What did not go as asked, in order.
    pub notes: Vec<String>,
    /// The index of the interface in this namespace the port is bound
    /// to and goes with (a veth's host side); none for a port that keeps
    /// working wherever its device is (a TAP moved into its pod).
    pub ifindex: Option<u32>,
}

impl fmt::Debug for OpenedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedPort")
            .field("port", &self.port.name())
            .field("kind", &self.kind)
            .field("notes", &self.notes)
            .field("ifindex", &self.ifindex)
            .finish()
    }
}

/// Opens pod port `id` on interface `name` as `kind`, falling back from
/// AF_XDP to AF_PACKET when the kernel refuses AF_XDP (after taking off an
/// XDP program a killed podswitchd left on the interface).
pub fn open_pod_port(
    kind: PodPortKind,
    name: &str,
    id: PortId,
    stats: &Arc<Stats>,
    udp_batches: bool,
) -> io::Result<OpenedPort> {
    let mut notes = Vec::new();
    // Before and after the open of a socket on the pod's veth: the same
    // index both times is the interface it was bound to (indexes are not
    // reused). A TAP port makes its device.
    let before = match kind {
        PodPortKind::Tap => None,
        PodPortKind::AfXdp | PodPortKind::AfPacket => Some(netdev::ifindex(name)?),
    };
    let (port, kind): (Box<dyn Port>, OpenedKind) = match kind {
        PodPortKind::AfXdp => match open_af_xdp(name, id, stats, &mut notes) {
            Ok(port) => {
                let mode = port.mode();
                (Box::new(port), OpenedKind::AfXdp(mode))
            }
            Err(e) => {
                notes.push(format!("AF_XDP unavailable ({e}): fallback to AF_PACKET"));
                (
                    Box::new(open_af_packet(name, id, stats, udp_batches, &mut notes)?),
                    OpenedKind::AfPacket,
                )
            }
        },
        PodPortKind::AfPacket => (
            Box::new(open_af_packet(name, id, stats, udp_batches, &mut notes)?),
            OpenedKind::AfPacket,
        ),
        PodPortKind::Tap => (
            Box::new(TapPort::open(name, id, Arc::clone(stats))?),
            OpenedKind::Tap,
        ),
    };
    let ifindex = match before {
        None => None,
        Some(before) => match netdev::ifindex(name) {
            Ok(after) if after == before => Some(before),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("interface {name} was deleted or made anew while its port opened"),
                ))
            }
        },
    };
    Ok(OpenedPort {
        port,
        kind,
        notes,
        ifindex,
    })
}

fn open_af_xdp(
    name: &str,
    id: PortId,
    stats: &Arc<Stats>,
    notes: &mut Vec<String>,
) -> io::Result<AfXdpPort> {
    if let Err(e) = xdp::ensure_bpffs() {
        notes.push(format!(
            "{e}: libxdp loads its program without a dispatcher"
        ));
    }
    let port = AfXdpPort::open(name, id, Arc::clone(stats), true).or_else(|e| {
        // A podswitchd killed without its cleanup leaves its XDP program
        // on the veth: take it off and try again.
        if remove_stale_xdp(name, notes) {
            notes.push(format!(
                "AF_XDP refused ({e}): detached the XDP program left on it, retried"
            ));
            AfXdpPort::open(name, id, Arc::clone(stats), true)
        } else {
            Err(e)
        }
    })?;
    // While the XDP program is on, the node's kernel sees no pod frame;
    // while podswitchd is down it sees them all.
    quiet_host_side(name)?;
    if port.mode() == XdpMode::Generic {
        notes.push("native XDP refused: fallback to generic (skb) XDP".into());
    }
    Ok(port)
}

fn open_af_packet(
    name: &str,
    id: PortId,
    stats: &Arc<Stats>,
    udp_batches: bool,
    notes: &mut Vec<String>,
) -> io::Result<AfPacketPort> {
    // With AF_PACKET the kernel still receives every pod frame.
    quiet_host_side(name)?;
    let port = AfPacketPort::open(name, id, Arc::clone(stats), udp_batches)?;
    if let Some(e) = port.kernel_stop_error() {
        notes.push(format!(
            "tcx unavailable ({e}): the node's kernel also takes this pod's frames, broadcasts to the node's own addresses included"
        ));
    }
    Ok(port)
}

/// Brings up the host side `name` of a pod veth giving the node's kernel,
/// which sees the pod's frames (every one with AF_PACKET; every one while
/// podswitchd is down with AF_XDP), no reason to act on them:
///
/// - no ARP answers: it would answer for the node's addresses, the
///   gateway's on the TUN port included, with the veth's own MAC, and a
///   pod that kept that MAC would stay cut off once podswitchd is back,
///   which takes gateway frames for the gateway's MAC only, until the
///   pod's neighbour entry failed (seen after a worker panic, with
///   AF_XDP);
/// - no IPv6 of its own: the node would send router solicitations into
///   the pod.
fn quiet_host_side(name: &str) -> io::Result<()> {
    netdev::set_noarp(name)?;
    let _ = netdev::disable_ipv6(name);
    netdev::set_up(name)
}

/// Detaches the XDP program a killed podswitchd left on `name`; true if
/// there was one to take off. A program podswitch did not attach stays
/// where it is, with a note.
fn remove_stale_xdp(name: &str, notes: &mut Vec<String>) -> bool {
    let Ok(index) = netdev::ifindex(name) else {
        return false;
    };
    match xdp::remove_stale_program(index) {
        Ok(StaleProgram::Removed) => true,
        Ok(StaleProgram::None) => false,
        Ok(StaleProgram::Foreign(names)) => {
            notes.push(format!(
                "{names:?}: the interface carries XDP programs podswitch did not attach: left in place"
            ));
            false
        }
        Err(e) => {
            notes.push(e.to_string());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_as_they_print() {
        for kind in PodPortKind::ALL {
            assert_eq!(kind.to_string().parse::<PodPortKind>(), Ok(kind));
        }
        assert_eq!(PodPortKind::default(), PodPortKind::AfPacket);
        let e = "af_xdp".parse::<PodPortKind>().unwrap_err();
        assert_eq!(e, "port kind \"af_xdp\": one of af-packet, af-xdp, tap");
    }

    #[test]
    fn opened_kinds_say_how_frames_move() {
        assert_eq!(
            OpenedKind::AfXdp(XdpMode::Generic).to_string(),
            "af-xdp-generic"
        );
        assert_eq!(OpenedKind::AfXdp(XdpMode::Native).to_string(), "af-xdp");
        assert_eq!(OpenedKind::AfPacket.to_string(), "af-packet");
    }

    #[test]
    fn a_missing_interface_is_an_error_for_every_kind() {
        let stats = Arc::new(Stats::new(16));
        for kind in PodPortKind::ALL {
            if kind == PodPortKind::Tap {
                continue; // a TAP device is created, not found
            }
            let e = open_pod_port(kind, "psw-no-such-if", PortId(9), &stats, true).unwrap_err();
            assert!(!e.to_string().is_empty(), "{kind}");
        }
    }
}
