//! Tracing: every decision the pipeline makes about one frame, like
//! `ovs-appctl ofproto/trace`. The pipeline is generic over [`Tracer`]: the
//! data path runs with [`NoTrace`], whose calls compile to nothing; `trace`
//! runs the same code with a [`Recorder`].

use std::fmt;
use std::net::Ipv4Addr;

use podswitch_encap::{MacAddr, TunnelMode, Vni};

use crate::drop::DropReason;
use crate::fdb::Learned;
use crate::fib::{NextHop, Prefix};
use crate::peer::PeerId;
use crate::port::PortId;

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The frame arrived.
    Received {
        /// On this port.
        port: PortId,
        /// Its length.
        len: usize,
    },
    /// What the frame is.
    Classified(&'static str),
    /// A source check passed.
    SourceOk {
        /// Which check.
        what: &'static str,
    },
    /// The pod's egress limit (the CNI bandwidth capability).
    EgressLimit {
        /// Within it now; if not, podswitchd holds the frame until it is
        /// (at most 25 ms) or drops it as `egress_rate_limited`.
        conforms: bool,
    },
    /// FDB learning of the source MAC.
    FdbLearn {
        /// The MAC.
        mac: MacAddr,
        /// Its port.
        port: PortId,
        /// What the table did (`None` in a trace, which does not learn).
        result: Option<Learned>,
    },
    /// FDB lookup of the destination MAC.
    FdbLookup {
        /// The MAC.
        mac: MacAddr,
        /// The port, if known.
        port: Option<PortId>,
    },
    /// An ARP request answered by podswitch.
    ArpReply {
        /// The address asked for.
        target: Ipv4Addr,
        /// The MAC answered.
        mac: MacAddr,
    },
    /// A FIB lookup.
    FibLookup {
        /// The destination looked up.
        dst: Ipv4Addr,
        /// The route that matched.
        route: Option<(Prefix, NextHop)>,
    },
    /// The peer a route leads to.
    Peer {
        /// Its id.
        id: PeerId,
        /// Its name.
        name: String,
        /// Its underlay address.
        underlay_ip: Ipv4Addr,
        /// Tunnel mode, `None` for direct.
        mode: Option<TunnelMode>,
    },
    /// The neighbour (MAC) of a local destination.
    Neighbour {
        /// The address.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: Option<MacAddr>,
    },
    /// TTL decremented.
    Ttl {
        /// Before.
        from: u8,
        /// After.
        to: u8,
    },
    /// MAC addresses rewritten.
    Rewrite {
        /// New source.
        src: MacAddr,
        /// New destination.
        dst: MacAddr,
    },
    /// Encapsulated.
    Encapsulated {
        /// Tunnel mode.
        mode: TunnelMode,
        /// Outer source.
        src: Ipv4Addr,
        /// Outer destination.
        dst: Ipv4Addr,
        /// Outer UDP ports (VXLAN, IP-in-UDP).
        ports: Option<(u16, u16)>,
        /// VNI (VXLAN).
        vni: Option<Vni>,
        /// Outer frame length.
        len: usize,
    },
    /// Decapsulated.
    Decapsulated {
        /// Tunnel mode.
        mode: TunnelMode,
        /// Outer source (the peer).
        src: Ipv4Addr,
        /// VNI (VXLAN).
        vni: Option<Vni>,
        /// Inner length.
        inner_len: usize,
    },
    /// An ICMP error was generated.
    IcmpError {
        /// What kind.
        what: &'static str,
        /// To whom.
        to: Ipv4Addr,
    },
    /// Padding past the IPv4 total length was cut.
    Trimmed {
        /// Bytes cut.
        bytes: usize,
    },
    /// What the frame's offloads leave to do, and what podswitch does.
    Offload {
        /// What was found and done.
        what: &'static str,
        /// The GSO segment size of a super-frame.
        gso_size: Option<u16>,
        /// Its transport checksum is partial.
        partial_checksum: bool,
    },
    /// A super-frame leaves: whole where the port takes super-frames,
    /// cut into `segments` frames where it cannot.
    LeavesWhole {
        /// The port.
        port: PortId,
        /// Segments it makes on the wire.
        segments: usize,
    },
    /// A connection the host port handed on from a pod to a pod (a
    /// Service's, after kube-proxy's DNAT): recorded, or a reply of one
    /// sent back through the host port (`host_connections`).
    HostConnection {
        /// What was done.
        what: &'static str,
    },
    /// Flooded to these ports.
    Flood(Vec<PortId>),
    /// Leaves on this port.
    Output(PortId),
    /// Dropped.
    Drop(DropReason),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Received { port, len } => write!(f, "received {len} bytes on port {port}"),
            Step::Classified(what) => write!(f, "classified: {what}"),
            Step::SourceOk { what } => write!(f, "source check passed: {what}"),
            Step::EgressLimit { conforms: true } => {
                write!(f, "egress limit: within the pod's rate")
            }
            Step::EgressLimit { conforms: false } => write!(
                f,
                "egress limit: beyond the pod's rate now; podswitchd holds the frame until it conforms (at most 25 ms), else drops it (egress_rate_limited)"
            ),
            Step::FdbLearn {
                mac,
                port,
                result: Some(r),
            } => write!(f, "fdb learn {mac} -> port {port}: {r:?}"),
            Step::FdbLearn {
                mac,
                port,
                result: None,
            } => write!(f, "fdb learn {mac} -> port {port} (not applied in a trace)"),
            Step::FdbLookup { mac, port: Some(p) } => write!(f, "fdb lookup {mac}: port {p}"),
            Step::FdbLookup { mac, port: None } => write!(f, "fdb lookup {mac}: unknown"),
            Step::ArpReply { target, mac } => {
                write!(f, "arp: answering who-has {target} with {mac}")
            }
            Step::FibLookup {
                dst,
                route: Some((p, nh)),
            } => write!(f, "fib lookup {dst}: {p} -> {nh}"),
            Step::FibLookup { dst, route: None } => write!(f, "fib lookup {dst}: no route"),
            Step::Peer {
                id,
                name,
                underlay_ip,
                mode: Some(m),
            } => {
                write!(f, "peer {id} {name} at {underlay_ip}, {m} tunnel")
            }
            Step::Peer {
                id,
                name,
                underlay_ip,
                mode: None,
            } => {
                write!(f, "peer {id} {name} at {underlay_ip}, direct (host-gw)")
            }
            Step::Neighbour { ip, mac: Some(m) } => write!(f, "neighbour {ip} is at {m}"),
            Step::Neighbour { ip, mac: None } => write!(f, "neighbour {ip}: unknown"),
            Step::Ttl { from, to } => write!(f, "ttl {from} -> {to}"),
            Step::Rewrite { src, dst } => write!(f, "rewrite ethernet: src {src} dst {dst}"),
            Step::Encapsulated {
                mode,
                src,
                dst,
                ports,
                vni,
                len,
            } => {
                write!(f, "encapsulate {mode}: {src} -> {dst}")?;
                if let Some((s, d)) = ports {
                    write!(f, " udp {s} -> {d}")?;
                }
                if let Some(v) = vni {
                    write!(f, " vni {v}")?;
                }
                write!(f, ", {len} bytes")
            }
            Step::Decapsulated {
                mode,
                src,
                vni,
                inner_len,
            } => {
                write!(f, "decapsulate {mode} from {src}")?;
                if let Some(v) = vni {
                    write!(f, " vni {v}")?;
                }
                write!(f, ", inner {inner_len} bytes")
            }
            Step::IcmpError { what, to } => write!(f, "icmp {what} sent to {to}"),
            Step::Trimmed { bytes } => write!(
                f,
                "trimmed {bytes} bytes of padding after the IPv4 total length"
            ),
            Step::Offload {
                what,
                gso_size,
                partial_checksum,
            } => {
                write!(f, "offload: {what}")?;
                if let Some(size) = gso_size {
                    write!(f, "; gso size {size}")?;
                }
                if *partial_checksum {
                    write!(f, "; checksum partial (pseudo-header sum)")?;
                }
                Ok(())
            }
            Step::LeavesWhole { port, segments } => write!(
                f,
                "port {port} gets a super-frame of {segments} segments: sent whole where it takes them (AF_PACKET and TUN/TAP ports, the UDP-tunnel underlay, whole through the tunnel TAP or in UDP_SEGMENT bursts, host-gw), cut into {segments} frames where it cannot (AF_XDP, IPIP)"
            ),
            Step::Flood(ports) => {
                let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
                write!(f, "flood to ports [{}]", list.join(", "))
            }
            Step::HostConnection { what } => write!(f, "host connection: {what}"),
            Step::Output(p) => write!(f, "output to port {p}"),
            Step::Drop(r) => write!(f, "drop: {} ({})", r.name(), r.describe()),
        }
    }
}

/// Receives the pipeline's decisions.
pub trait Tracer {
    /// True if steps are recorded (lets the pipeline skip work for traces).
    const ENABLED: bool;
    /// Records a step; `step` is only called when [`Self::ENABLED`].
    fn step(&mut self, step: impl FnOnce() -> Step);
}

/// The data path's tracer: records nothing, costs nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTrace;

impl Tracer for NoTrace {
    const ENABLED: bool = false;
    #[inline(always)]
    fn step(&mut self, _step: impl FnOnce() -> Step) {}
}

/// Records every step.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Tracer for Recorder {
    const ENABLED: bool = true;
    fn step(&mut self, step: impl FnOnce() -> Step) {
        self.steps.push(step());
    }
}

/// The result of a trace: the steps, and the frames that would leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceResult {
    /// Every decision.
    pub steps: Vec<Step>,
    /// Frames that would leave, with their port.
    pub outputs: Vec<(PortId, Vec<u8>)>,
}

impl fmt::Display for TraceResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "{:>2}. {s}", i + 1)?;
        }
        Ok(())
    }
}
