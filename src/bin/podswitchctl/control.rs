//! `podswitchctl` commands that talk to podswitchd's control socket.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use podswitch_control::client::{Client, ClientError};
use podswitch_control::protocol::{FrameSpec, NextHopSpec, Request};
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
        ip: String,
        /// The pod's MAC.
        #[arg(long)]
        mac: String,
        /// The container it belongs to.
        #[arg(long)]
        container_id: Option<String>,
        /// The interface name inside the container.
        #[arg(long)]
        ifname: Option<String>,
        /// Accept frames from any source MAC and IP.
        #[arg(long)]
        no_anti_spoof: bool,
        /// af-xdp or af-packet (the host side of a veth; default: the
        /// daemon's port_kind, af-xdp) or tap (the daemon creates a TAP
        /// device of this name).
        #[arg(long)]
        kind: Option<String>,
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
        prefix: String,
        /// Where it goes.
        next_hop: String,
    },
    /// Remove a route.
    Del {
        /// a.b.c.d/len
        prefix: String,
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
        underlay_ip: String,
        /// Its pod subnet.
        #[arg(long)]
        pod_cidr: String,
        /// Its VTEP MAC.
        #[arg(long)]
        vtep_mac: String,
        /// Its underlay MAC (host-gw).
        #[arg(long)]
        underlay_mac: Option<String>,
        /// vxlan, ipip, udp, host-gw or directrouting (default: the node's).
        #[arg(long)]
        backend: Option<String>,
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
    dst_ip: Option<String>,
    /// Source IPv4 address (default: the port's pod).
    #[arg(long)]
    src_ip: Option<String>,
    /// Source MAC (default: the port's pod).
    #[arg(long)]
    src_mac: Option<String>,
    /// Destination MAC (default: the gateway).
    #[arg(long)]
    dst_mac: Option<String>,
    /// icmp, udp or tcp (default icmp).
    #[arg(long)]
    protocol: Option<String>,
    /// TTL (default 64).
    #[arg(long)]
    ttl: Option<u8>,
    /// Payload bytes after the L4 header (default 32; up to 65000 with
    /// --gso-size).
    #[arg(long)]
    payload_len: Option<usize>,
    /// Trace a TCP super-frame of this segment size (a pod's TSO frame:
    /// give --protocol tcp and a --payload-len of up to 65000), to see
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
        }) => Request::PortAdd {
            interface: interface.clone(),
            ip: ip.clone(),
            mac: mac.clone(),
            container_id: container_id.clone(),
            ifname: ifname.clone(),
            anti_spoof: !no_anti_spoof,
            kind: kind.clone(),
        },
        ControlCommand::Port(PortCommand::Del { interface }) => Request::PortDel {
            interface: interface.clone(),
        },
        ControlCommand::Port(PortCommand::List) => Request::PortList,
        ControlCommand::Route(RouteCommand::Add {
            prefix,
            next_hop: nh,
        }) => Request::RouteAdd {
            prefix: prefix.clone(),
            next_hop: next_hop(nh)?,
        },
        ControlCommand::Route(RouteCommand::Del { prefix }) => Request::RouteDel {
            prefix: prefix.clone(),
        },
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
            underlay_ip: underlay_ip.clone(),
            pod_cidr: pod_cidr.clone(),
            vtep_mac: vtep_mac.clone(),
            underlay_mac: underlay_mac.clone(),
            backend: backend.clone(),
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
            frame: t.dst_ip.as_ref().map(|dst| FrameSpec {
                src_mac: t.src_mac.clone(),
                dst_mac: t.dst_mac.clone(),
                src_ip: t.src_ip.clone(),
                dst_ip: dst.clone(),
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
        Ok(value) => {
            let text = if json {
                serde_json::to_string_pretty(&value).expect("JSON values serialise") + "\n"
            } else {
                human(command, &value)
            };
            emit(&text)
        }
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

/// A JSON value as a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k}:{}", cell(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Rows of objects as an aligned table with these columns.
fn table(rows: &Value, columns: &[(&str, &str)]) -> String {
    let rows: Vec<Vec<String>> = rows
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| columns.iter().map(|(key, _)| cell(&r[*key])).collect())
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|(_, title)| title.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", text.join("  ").trim_end())
    };
    let mut out = line(columns.iter().map(|(_, t)| t.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// The lease store's line of `status`: static peers, or the etcd store's
/// health in a sentence.
fn store_health(v: &Value) -> String {
    if v.is_null() {
        return "static (peers from the config file and the control socket)".into();
    }
    let state = if v["connected"] == true {
        "etcd, connected".to_string()
    } else {
        format!(
            "etcd, UNREACHABLE ({}); forwarding with the last known peers",
            cell(&v["last_error"])
        )
    };
    format!(
        "{state}; our lease {} (expires {}); {} other leases; {} resyncs, {} errors, {} bad leases",
        cell(&v["subnet"]),
        cell(&v["expires"]),
        cell(&v["leases"]),
        cell(&v["resyncs"]),
        cell(&v["errors"]),
        cell(&v["bad_leases"]),
    )
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

fn human(command: &ControlCommand, v: &Value) -> String {
    match command {
        ControlCommand::Version => format!(
            "podswitchctl {}\npodswitchd {}\nprotocol {}\n",
            env!("CARGO_PKG_VERSION"),
            cell(&v["podswitch"]),
            cell(&v["protocol"])
        ),
        ControlCommand::Status => v
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, val)| {
                        let text = if k == "store" {
                            store_health(val)
                        } else {
                            cell(val)
                        };
                        format!("{:<14}{text}\n", format!("{k}:"))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        ControlCommand::Port(PortCommand::List) => table(
            v,
            &[
                ("port", "PORT"),
                ("interface", "INTERFACE"),
                ("role", "ROLE"),
                ("kind", "KIND"),
                ("worker", "WORKER"),
                ("ip", "IP"),
                ("mac", "MAC"),
                ("anti_spoof", "ANTI-SPOOF"),
                ("container_id", "CONTAINER"),
            ],
        ),
        ControlCommand::Route(RouteCommand::List) => {
            table(v, &[("prefix", "PREFIX"), ("next_hop", "NEXT HOP")])
        }
        ControlCommand::Peer(PeerCommand::List) => table(
            v,
            &[
                ("name", "NAME"),
                ("underlay_ip", "UNDERLAY"),
                ("pod_cidr", "POD CIDR"),
                ("backend", "BACKEND"),
                ("forwarding", "FORWARDING"),
                ("vni", "VNI"),
                ("vtep_mac", "VTEP MAC"),
            ],
        ),
        ControlCommand::Fdb(FdbCommand::Show) => format!(
            "{}{} entries, limit {}, learns refused {}\n",
            table(
                &v["entries"],
                &[
                    ("mac", "MAC"),
                    ("port", "PORT"),
                    ("static", "STATIC"),
                    ("age_secs", "AGE")
                ]
            ),
            v["entries"].as_array().map_or(0, Vec::len),
            cell(&v["limit"]),
            cell(&v["refused"])
        ),
        ControlCommand::Neigh(NeighCommand::Show) => table(
            v,
            &[
                ("ip", "IP"),
                ("mac", "MAC"),
                ("port", "PORT"),
                ("learned", "LEARNED"),
            ],
        ),
        ControlCommand::Stats => {
            let mut out = table(
                &v["ports"],
                &[
                    ("port", "PORT"),
                    ("rx_packets", "RX PACKETS"),
                    ("rx_bytes", "RX BYTES"),
                    ("tx_packets", "TX PACKETS"),
                    ("tx_bytes", "TX BYTES"),
                    ("drops", "DROPS"),
                ],
            );
            // Which offload path the traffic took, per port.
            out.push('\n');
            out.push_str(&table(
                &v["ports"],
                &[
                    ("port", "PORT"),
                    ("super_frames_in", "SUPER-FRAMES IN"),
                    ("super_frames_out", "OUT WHOLE"),
                    ("segmented", "SEGMENTED"),
                    ("segments_made", "SEGMENTS"),
                    ("checksums_completed", "CSUM COMPLETED"),
                    ("coalesced", "COALESCED"),
                ],
            ));
            let drops: Vec<Value> = v["drops"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, n)| serde_json::json!({ "reason": k, "count": n }))
                        .collect()
                })
                .unwrap_or_default();
            out.push('\n');
            out.push_str(&table(
                &Value::Array(drops),
                &[("reason", "DROP REASON"), ("count", "COUNT")],
            ));
            out
        }
        ControlCommand::Capture { interface, .. } => format!(
            "{} frames of {interface} written to {}\n",
            cell(&v["packets"]),
            cell(&v["file"])
        ),
        ControlCommand::Trace(_) => {
            let mut out = String::new();
            for (i, step) in v["steps"].as_array().into_iter().flatten().enumerate() {
                out.push_str(&format!("{:>2}. {}\n", i + 1, cell(step)));
            }
            for o in v["outputs"].as_array().into_iter().flatten() {
                let len = o["hex"].as_str().map_or(0, |h| h.len() / 2);
                out.push_str(&format!("leaves on {}: {len} bytes (--json shows them; `podswitchctl explain --hex` breaks them down)\n", cell(&o["port"])));
            }
            out
        }
        _ => match v {
            Value::Null => "ok\n".into(),
            other => format!("ok: {}\n", cell(other)),
        },
    }
}
