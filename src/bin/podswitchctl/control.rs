//! `podswitchctl` commands that talk to podswitchd's control socket.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use podswitch_control::client::{Client, ClientError};
use podswitch_control::protocol::{
    Backend, CaptureResult, EgressLimit, FdbTable, Flushed, FrameSpec, MacAddr, Neighbour,
    NextHopSpec, PeerInfo, PeerRef, PodPortKind, PortInfo, PortRef, Prefix, Request, RouteInfo,
    Stats, Status, StoreStatus, TraceResult, VersionInfo,
};
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub(crate) enum ControlCommand {
    /// Versions of podswitchctl, podswitchd and the protocol.
    Version,
    /// The node: name, pod subnet, underlay, backend, MTU, counts, uptime.
    Status,
    /// Pod ports: add, del, list.
    #[command(subcommand)]
    Port(PortCommand),
    /// Routes: add, del, list.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Peers (other nodes): add, del, list.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// The bridge's MAC table: show, flush.
    #[command(subcommand)]
    Fdb(FdbCommand),
    /// Pod addresses and their MACs.
    #[command(subcommand)]
    Neigh(NeighCommand),
    /// Counters per port and per drop reason.
    Stats,
    /// Run a frame through the pipeline without sending it, and print
    /// every decision (like `ovs-appctl ofproto/trace`).
    Trace(TraceArgs),
    /// Write the frames a port receives and sends to a pcap file (read it
    /// with tcpdump -r, tshark -r or `podswitchctl explain`).
    Capture {
        /// The port (interface name).
        interface: String,
        /// The pcap file the daemon writes.
        #[arg(long, short = 'w')]
        file: std::path::PathBuf,
        /// Stop after this many frames.
        #[arg(long, short = 'c')]
        packets: Option<u64>,
        /// Stop after this many seconds (default 10).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PortCommand {
    /// Attach a pod port.
    Add {
        /// Host-side interface name.
        interface: String,
        /// The pod's IPv4 address.
        #[arg(long)]
        ip: Ipv4Addr,
        /// The pod's MAC.
        #[arg(long)]
        mac: MacAddr,
        /// The container it belongs to.
        #[arg(long)]
        container_id: Option<String>,
        /// The interface name inside the container.
        #[arg(long)]
        ifname: Option<String>,
        /// Accept frames from any source MAC and IP.
        #[arg(long)]
        no_anti_spoof: bool,
        /// af-packet or af-xdp (the host side of a veth; default: the
        /// daemon's port_kind, af-packet) or tap (the daemon creates a TAP
        /// device of this name).
        #[arg(long)]
        kind: Option<PodPortKind>,
        /// The most the pod may send, in bits per second (as the CNI
        /// bandwidth capability's egressRate): past the burst, frames wait
        /// until the rate lets them leave, and one that would wait more
        /// than 25 ms is dropped, counted as egress_rate_limited.
        #[arg(long, requires = "egress_burst")]
        egress_rate: Option<u64>,
        /// The bits the pod may send at once after a quiet spell (as
        /// egressBurst).
        #[arg(long, requires = "egress_rate")]
        egress_burst: Option<u64>,
    },
    /// Detach a port.
    Del {
        /// Interface name.
        interface: String,
    },
    /// List ports.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RouteCommand {
    /// Add or replace a route. NEXT_HOP: local:IFACE, peer:NAME, direct:NAME, host or blackhole.
    Add {
        /// a.b.c.d/len
        prefix: Prefix,
        /// Where it goes.
        next_hop: String,
    },
    /// Remove a route.
    Del {
        /// a.b.c.d/len
        prefix: Prefix,
    },
    /// List routes.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PeerCommand {
    /// Add a peer and its route.
    Add {
        /// Node name.
        name: String,
        /// Its underlay address.
        #[arg(long)]
        underlay_ip: Ipv4Addr,
        /// Its pod subnet.
        #[arg(long)]
        pod_cidr: Prefix,
        /// Its VTEP MAC.
        #[arg(long)]
        vtep_mac: MacAddr,
        /// Its underlay MAC (host-gw).
        #[arg(long)]
        underlay_mac: Option<MacAddr>,
        /// vxlan, ipip, udp, host-gw or directrouting (default: the node's).
        #[arg(long)]
        backend: Option<Backend>,
        /// VNI (default: the node's).
        #[arg(long)]
        vni: Option<u32>,
    },
    /// Remove a peer and its routes.
    Del {
        /// Node name.
        name: String,
    },
    /// List peers.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FdbCommand {
    /// Show the entries.
    Show,
    /// Remove learned entries.
    Flush,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NeighCommand {
    /// Show the entries.
    Show,
}

#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// The port the frame arrives on (interface name).
    #[arg(long)]
    in_port: String,
    /// The frame as hex (instead of the fields below).
    #[arg(long, conflicts_with_all = ["dst_ip", "src_ip", "src_mac", "dst_mac", "protocol", "ttl", "payload_len", "gso_size"])]
    hex: Option<String>,
    /// Destination IPv4 address.
    #[arg(long, required_unless_present = "hex")]
    dst_ip: Option<Ipv4Addr>,
    /// Source IPv4 address (default: the port's pod).
    #[arg(long)]
    src_ip: Option<Ipv4Addr>,
    /// Source MAC (default: the port's pod).
    #[arg(long)]
    src_mac: Option<MacAddr>,
    /// Destination MAC (default: the gateway).
    #[arg(long)]
    dst_mac: Option<MacAddr>,
    /// icmp, udp or tcp (default icmp).
    #[arg(long)]
    protocol: Option<String>,
    /// TTL (default 64).
    #[arg(long)]
    ttl: Option<u8>,
    /// Payload bytes after the L4 header (default 32; up to 196554 with
    /// --gso-size: above 65495 a BIG TCP super-frame).
    #[arg(long)]
    payload_len: Option<usize>,
    /// Trace a TCP super-frame of this segment size (a pod's TSO frame:
    /// give --protocol tcp and a --payload-len of up to 196554), to see
    /// where it travels whole and where it is cut.
    #[arg(long, requires = "dst_ip")]
    gso_size: Option<u16>,
}

fn next_hop(text: &str) -> Result<NextHopSpec, String> {
    match text.split_once(':') {
        Some(("local", name)) => Ok(NextHopSpec::Local(name.into())),
        Some(("peer", name)) => Ok(NextHopSpec::Peer(name.into())),
        Some(("direct", name)) => Ok(NextHopSpec::Direct(name.into())),
        None if text == "host" => Ok(NextHopSpec::Host),
        None if text == "blackhole" => Ok(NextHopSpec::Blackhole),
        _ => Err(format!(
            "next hop {text:?}: local:IFACE, peer:NAME, direct:NAME, host or blackhole"
        )),
    }
}

fn request(command: &ControlCommand) -> Result<Request, String> {
    Ok(match command {
        ControlCommand::Version => Request::Version,
        ControlCommand::Status => Request::Status,
        ControlCommand::Port(PortCommand::Add {
            interface,
            ip,
            mac,
            container_id,
            ifname,
            no_anti_spoof,
            kind,
            egress_rate,
            egress_burst,
        }) => Request::PortAdd {
            interface: interface.clone(),
            ip: *ip,
            mac: *mac,
            container_id: container_id.clone(),
            ifname: ifname.clone(),
            anti_spoof: !no_anti_spoof,
            kind: *kind,
            egress_limit: egress_rate
                .zip(*egress_burst)
                .map(|(rate_bits, burst_bits)| EgressLimit {
                    rate_bits,
                    burst_bits,
                }),
        },
        ControlCommand::Port(PortCommand::Del { interface }) => Request::PortDel {
            interface: interface.clone(),
        },
        ControlCommand::Port(PortCommand::List) => Request::PortList,
        ControlCommand::Route(RouteCommand::Add {
            prefix,
            next_hop: nh,
        }) => Request::RouteAdd {
            prefix: *prefix,
            next_hop: next_hop(nh)?,
        },
        ControlCommand::Route(RouteCommand::Del { prefix }) => {
            Request::RouteDel { prefix: *prefix }
        }
        ControlCommand::Route(RouteCommand::List) => Request::RouteList,
        ControlCommand::Peer(PeerCommand::Add {
            name,
            underlay_ip,
            pod_cidr,
            vtep_mac,
            underlay_mac,
            backend,
            vni,
        }) => Request::PeerAdd {
            name: name.clone(),
            underlay_ip: *underlay_ip,
            pod_cidr: *pod_cidr,
            vtep_mac: *vtep_mac,
            underlay_mac: *underlay_mac,
            backend: *backend,
            vni: *vni,
        },
        ControlCommand::Peer(PeerCommand::Del { name }) => Request::PeerDel { name: name.clone() },
        ControlCommand::Peer(PeerCommand::List) => Request::PeerList,
        ControlCommand::Fdb(FdbCommand::Show) => Request::FdbShow,
        ControlCommand::Fdb(FdbCommand::Flush) => Request::FdbFlush,
        ControlCommand::Neigh(NeighCommand::Show) => Request::NeighShow,
        ControlCommand::Stats => Request::Stats,
        ControlCommand::Capture {
            interface,
            file,
            packets,
            seconds,
        } => {
            // The daemon writes the file: give it a path that does not
            // depend on its working directory.
            let file = std::path::absolute(file).map_err(|e| format!("{}: {e}", file.display()))?;
            Request::Capture {
                interface: interface.clone(),
                file: file.to_string_lossy().into_owned(),
                packets: *packets,
                seconds: *seconds,
            }
        }
        ControlCommand::Trace(t) => Request::Trace {
            in_port: t.in_port.clone(),
            hex: t.hex.clone(),
            frame: t.dst_ip.map(|dst_ip| FrameSpec {
                src_mac: t.src_mac,
                dst_mac: t.dst_mac,
                src_ip: t.src_ip,
                dst_ip,
                protocol: t.protocol.clone(),
                ttl: t.ttl,
                payload_len: t.payload_len,
                dont_frag: None,
                gso_size: t.gso_size,
            }),
        },
    })
}

/// Sends the command's request and prints the reply.
pub(crate) fn run(command: &ControlCommand, socket: &Path, json: bool) -> ExitCode {
    let request = match request(command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("podswitchctl: {e}");
            return ExitCode::from(2);
        }
    };
    // A capture answers when it ends.
    let timeout = match command {
        ControlCommand::Capture { seconds, .. } => {
            Duration::from_secs(seconds.unwrap_or(10).saturating_add(30))
        }
        _ => Duration::from_secs(30),
    };
    let result = Client::connect(socket, timeout)
        .map_err(ClientError::Io)
        .and_then(|mut c| c.call(&request));
    match result {
        Ok(value) if json => {
            emit(&(serde_json::to_string_pretty(&value).expect("JSON values serialise") + "\n"))
        }
        Ok(value) => match human(command, value) {
            Ok(text) => emit(&text),
            Err(e) => {
                eprintln!("podswitchctl: unexpected reply from the daemon: {e}");
                ExitCode::from(2)
            }
        },
        Err(ClientError::Daemon(reason)) => {
            eprintln!("podswitchctl: {reason}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("podswitchctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// An optional value as a table cell: `-` when absent.
fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Rows as an aligned table under these titles.
fn table(titles: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.into_iter().collect();
    let mut widths: Vec<usize> = titles.iter().map(|t| t.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| -> String {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", text.join("  ").trim_end())
    };
    let mut out = line(&titles.iter().map(|t| t.to_string()).collect::<Vec<_>>());
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// The lease store's line of `status`: static peers, or the etcd store's
/// health in a sentence.
fn store_health(store: Option<&StoreStatus>) -> String {
    let Some(s) = store else {
        return "static (peers from the config file and the control socket)".into();
    };
    let state = if s.connected {
        "etcd, connected".to_string()
    } else {
        format!(
            "etcd, UNREACHABLE ({}); forwarding with the last known peers",
            or_dash(s.last_error.as_deref())
        )
    };
    format!(
        "{state}; our lease {} (expires {}); {} other leases; {} resyncs, {} errors, {} bad leases",
        or_dash(s.subnet),
        or_dash(s.expires),
        s.leases,
        s.resyncs,
        s.errors,
        s.bad_leases,
    )
}

/// A route's next hop as `route list` shows it.
/// `n` with an SI prefix when it is a whole number of one (80000000 is
/// "80M", as tc writes rates), else as it is.
fn si(n: u64) -> String {
    for (unit, prefix) in [(1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")] {
        if n >= unit && n % unit == 0 {
            return format!("{}{prefix}", n / unit);
        }
    }
    n.to_string()
}

fn next_hop_text(next_hop: &NextHopSpec) -> String {
    match next_hop {
        NextHopSpec::Local(port) => format!("local:{port}"),
        NextHopSpec::Peer(peer) => format!("peer:{peer}"),
        NextHopSpec::Direct(peer) => format!("direct:{peer}"),
        NextHopSpec::Host => "host".into(),
        NextHopSpec::Blackhole => "blackhole".into(),
    }
}

/// Writes a reply to stdout. A reader that went away (`| head`,
/// `| grep -q`) is not an error: the reply was delivered as far as
/// anyone wanted it.
fn emit(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podswitchctl: writing the reply: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A reply's result for people, read as the request's reply type.
fn human(command: &ControlCommand, v: Value) -> Result<String, serde_json::Error> {
    use serde_json::from_value;
    Ok(match command {
        ControlCommand::Version => {
            let version: VersionInfo = from_value(v)?;
            format!(
                "podswitchctl {}\npodswitchd {}\nprotocol {}\n",
                env!("CARGO_PKG_VERSION"),
                version.podswitch,
                version.protocol
            )
        }
        ControlCommand::Status => {
            let s: Status = from_value(v)?;
            let rows = [
                ("node", s.node),
                ("pod_cidr", s.pod_cidr.to_string()),
                ("cluster_cidr", s.cluster_cidr.to_string()),
                ("gateway_mode", s.gateway_mode.to_string()),
                ("gateway", s.gateway.to_string()),
                ("underlay_ip", s.underlay_ip.to_string()),
                ("vtep_mac", s.vtep_mac.to_string()),
                ("backend", s.backend.to_string()),
                ("vni", s.vni.to_string()),
                ("mtu", s.mtu.to_string()),
                ("underlay_mtu", s.underlay_mtu.to_string()),
                ("ports", s.ports.to_string()),
                ("peers", s.peers.to_string()),
                ("routes", s.routes.to_string()),
                ("uptime_secs", s.uptime_secs.to_string()),
                ("store", store_health(s.store.as_ref())),
            ];
            rows.iter()
                .map(|(k, text)| format!("{:<14}{text}\n", format!("{k}:")))
                .collect()
        }
        ControlCommand::Port(PortCommand::List) => {
            let ports: Vec<PortInfo> = from_value(v)?;
            table(
                &[
                    "PORT",
                    "INTERFACE",
                    "ROLE",
                    "KIND",
                    "WORKER",
                    "IP",
                    "MAC",
                    "ANTI-SPOOF",
                    "EGRESS LIMIT",
                    "CONTAINER",
                ],
                ports.into_iter().map(|p| {
                    vec![
                        p.port.to_string(),
                        p.interface,
                        p.role.to_string(),
                        or_dash(p.kind),
                        match p.split {
                            true => "all".to_string(),
                            false => or_dash(p.worker),
                        },
                        or_dash(p.ip),
                        or_dash(p.mac),
                        p.anti_spoof.to_string(),
                        or_dash(p.egress_limit.map(|l| {
                            format!("{}bit/s, burst {}bit", si(l.rate_bits), si(l.burst_bits))
                        })),
                        or_dash(p.container_id),
                    ]
                }),
            )
        }
        ControlCommand::Route(RouteCommand::List) => {
            let routes: Vec<RouteInfo> = from_value(v)?;
            table(
                &["PREFIX", "NEXT HOP"],
                routes
                    .iter()
                    .map(|r| vec![r.prefix.to_string(), next_hop_text(&r.next_hop)]),
            )
        }
        ControlCommand::Peer(PeerCommand::List) => {
            let peers: Vec<PeerInfo> = from_value(v)?;
            table(
                &[
                    "NAME",
                    "UNDERLAY",
                    "POD CIDR",
                    "BACKEND",
                    "FORWARDING",
                    "VNI",
                    "VTEP MAC",
                ],
                peers.into_iter().map(|p| {
                    vec![
                        p.name,
                        p.underlay_ip.to_string(),
                        p.pod_cidr.to_string(),
                        p.backend.to_string(),
                        p.forwarding,
                        p.vni.to_string(),
                        p.vtep_mac.to_string(),
                    ]
                }),
            )
        }
        ControlCommand::Fdb(FdbCommand::Show) => {
            let fdb: FdbTable = from_value(v)?;
            format!(
                "{}{} entries, limit {}, learns refused {}\n",
                table(
                    &["MAC", "PORT", "STATIC", "AGE"],
                    fdb.entries.iter().map(|e| {
                        vec![
                            e.mac.to_string(),
                            e.port.clone(),
                            e.is_static.to_string(),
                            e.age_secs.to_string(),
                        ]
                    }),
                ),
                fdb.entries.len(),
                fdb.limit,
                fdb.refused
            )
        }
        ControlCommand::Fdb(FdbCommand::Flush) => {
            let flushed: Flushed = from_value(v)?;
            format!("ok: {} learned entries flushed\n", flushed.flushed)
        }
        ControlCommand::Neigh(NeighCommand::Show) => {
            let neighbours: Vec<Neighbour> = from_value(v)?;
            table(
                &["IP", "MAC", "PORT", "LEARNED"],
                neighbours.into_iter().map(|n| {
                    vec![
                        n.ip.to_string(),
                        n.mac.to_string(),
                        n.port,
                        n.learned.to_string(),
                    ]
                }),
            )
        }
        ControlCommand::Stats => stats_text(&from_value(v)?),
        ControlCommand::Capture { interface, .. } => {
            let capture: CaptureResult = from_value(v)?;
            format!(
                "{} frames of {interface} written to {}\n",
                capture.packets, capture.file
            )
        }
        ControlCommand::Trace(_) => {
            let trace: TraceResult = from_value(v)?;
            let mut out = String::new();
            for (i, step) in trace.steps.iter().enumerate() {
                out.push_str(&format!("{:>2}. {step}\n", i + 1));
            }
            for o in &trace.outputs {
                out.push_str(&format!("leaves on {}: {} bytes (--json shows them; `podswitchctl explain --hex` breaks them down)\n", o.port, o.hex.len() / 2));
            }
            out
        }
        ControlCommand::Port(PortCommand::Add { .. } | PortCommand::Del { .. }) => {
            let port: PortRef = from_value(v)?;
            match port.kind {
                Some(kind) => format!("ok: port {} ({kind})\n", port.port),
                None => format!("ok: port {}\n", port.port),
            }
        }
        ControlCommand::Peer(PeerCommand::Add { .. } | PeerCommand::Del { .. }) => {
            let peer: PeerRef = from_value(v)?;
            format!("ok: peer {}\n", peer.peer)
        }
        ControlCommand::Route(RouteCommand::Add { .. } | RouteCommand::Del { .. }) => "ok\n".into(),
    })
}

/// `stats` for people: traffic per port, then which offload path it
/// took, then drops by reason, then how each worker waited.
fn stats_text(stats: &Stats) -> String {
    let mut out = table(
        &[
            "PORT",
            "RX PACKETS",
            "RX BYTES",
            "TX PACKETS",
            "TX BYTES",
            "DROPS",
            "HELD",
        ],
        stats.ports.iter().map(|p| {
            vec![
                p.port.clone(),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
                p.drops.to_string(),
                p.egress_held.to_string(),
            ]
        }),
    );
    out.push('\n');
    out.push_str(&table(
        &[
            "PORT",
            "SUPER-FRAMES IN",
            "OUT WHOLE",
            "SEGMENTED",
            "SEGMENTS",
            "CSUM COMPLETED",
            "COALESCED",
            "BIG TCP CUT",
            "BATCHED OUT",
        ],
        stats.ports.iter().map(|p| {
            vec![
                p.port.clone(),
                p.super_frames_in.to_string(),
                p.super_frames_out.to_string(),
                p.segmented.to_string(),
                p.segments_made.to_string(),
                p.checksums_completed.to_string(),
                p.coalesced.to_string(),
                p.big_tcp_cut.to_string(),
                p.datagrams_batched.to_string(),
            ]
        }),
    ));
    out.push('\n');
    out.push_str(&table(
        &["DROP REASON", "COUNT"],
        stats
            .drops
            .iter()
            .map(|(reason, n)| vec![reason.clone(), n.to_string()]),
    ));
    out.push('\n');
    // How each worker waited for packets: slept (wake-ups), or spun and
    // caught one, ran out, or was preempted (and rescued by its guard).
    out.push_str(&table(
        &[
            "WORKER",
            "CLASS",
            "BUSY S",
            "WAKEUPS",
            "BATCHES",
            "SPINS CAUGHT",
            "EXPIRED",
            "PREEMPTED",
            "RESCUED",
            "HANDED OFF",
        ],
        stats.workers.iter().map(|w| {
            vec![
                w.worker.to_string(),
                if w.realtime { "fifo" } else { "other" }.to_string(),
                format!("{:.1}", w.busy_secs),
                w.wakeups.to_string(),
                w.batches.to_string(),
                w.spins_caught.to_string(),
                w.spins_expired.to_string(),
                w.spins_preempted.to_string(),
                w.spins_rescued.to_string(),
                w.handed_off.to_string(),
            ]
        }),
    ));
    out
}
