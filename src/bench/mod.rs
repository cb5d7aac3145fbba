//! The bench behind `podswitchctl bench`: podswitch against the kernel
//! path, measured on the same lab topology in the same run.
//!
//! For each backend both dataplanes can do (vxlan, host-gw, directrouting) it builds a
//! kernel lab and a podswitch lab (two nodes, three pods each), then for
//! each case (cross-node: pod1-1 -> pod2-1; same-node: pod1-1 -> pod1-2)
//! and each metric runs rounds alternating kernel, podswitch, kernel,
//! podswitch..., so that a drift of the machine hits both alike, and
//! reports the median of each with the ratio podswitch / kernel:
//!
//! - TCP throughput, iperf3 with 1 and 4 streams, the first second (slow
//!   start, connection set-up) left out (Gbit/s), and for 4 streams what
//!   reordering costs: the segments the receiver queued out of order and
//!   those the sender sent again, per GB (a dataplane that reorders a
//!   flow shows there before it shows in the rate);
//! - small packets: trafgen (netsniff-ng, an AF_PACKET TX ring) sends
//!   64-byte UDP frames as fast as it can from the source pod to a socket
//!   in the destination pod that never reads; what counts is the
//!   datagrams per second the destination pod's UDP layer took for it
//!   (queued or refused by the full socket buffer: the same work either
//!   way, and a count of datagrams however many came in one skb); then
//!   the same with two generators at once, each pod of the case sending to
//!   the other side, each generator on its own CPU (two flows from two
//!   CPUs: what a dataplane does with more senders than one);
//! - latency: ping round trips every 2 ms, p50 and p99 (µs), on an idle
//!   lab, again while an iperf3 TCP stream runs between the same two
//!   pods (latency under load), while busy loops keep every CPU busy, and
//!   while a neighbour (node 1's third pod) floods node 2's third pod
//!   with 64-byte UDP from one generator (`flooded`: what one pod's flood
//!   costs the others);
//! - CPU: machine CPU seconds per million packets received during the
//!   small-packet run, the generator's own CPU taken out;
//! - memory: podswitchd's resident memory on a one-node lab with no pod
//!   and with `--memory-pods` pods (110, Kubernetes' default maxPods),
//!   and what each pod added (no kernel figure: the kernel path has no
//!   daemon).
//!
//! With `--ovs`, Open vSwitch's userspace datapath (`lab --dataplane
//! ovs`: AF_XDP ports, a PMD thread per node) is measured too, on the
//! vxlan backend, in the same rounds: a second table sets podswitch
//! against it.
//!
//! docs/benchmarks.md explains the method and records figures.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use podswitch_engine::config::Backend;
use podswitch_engine::kernel_port::PodPortKind;

use crate::lab::{self, UpArgs};

pub mod chart;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds per dataplane and case (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Backends to measure (both dataplanes must do them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "vxlan,host-gw,directrouting"
    )]
    backends: Vec<Backend>,
    /// podswitchd's worker counts to measure side by side, each on a
    /// podswitch lab of its own beside the kernel's, e.g. `1,2`, or
    /// `per-cpu` (a worker per CPU, pod ports and the underlay split among
    /// them), or `per-cpu-normal` (the same, forwarding in SCHED_OTHER)
    /// (default: one podswitch lab with podswitchd's default).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "N|per-cpu|per-cpu-normal,..."
    )]
    workers: Vec<WorkerChoice>,
    /// podswitchd's underlay kinds to measure side by side (socket,
    /// af-xdp), each on a podswitch lab of its own, for every worker
    /// count (default: podswitchd's default, socket).
    #[arg(long, value_delimiter = ',', value_name = "KIND,KIND...", value_parser = lab::UNDERLAY_KINDS)]
    underlay_kinds: Vec<String>,
    /// podswitchd's pod port kinds to measure side by side (af-packet,
    /// af-xdp), each on a podswitch lab of its own, for every worker count
    /// and underlay kind (default: podswitchd's default, af-packet).
    #[arg(long, value_delimiter = ',', value_name = "KIND,KIND...", value_parser = lab::veth_port_kinds())]
    port_kinds: Vec<PodPortKind>,
    /// Also measure Open vSwitch's userspace datapath (`lab --dataplane
    /// ovs`) on the vxlan backend, in the same rounds, and set podswitch
    /// against it.
    #[arg(long)]
    ovs: bool,
    /// Pods of the memory measurement (0 leaves it out).
    #[arg(long, default_value_t = lab::MAX_PODS_PER_NODE, value_name = "N")]
    memory_pods: u8,
    /// Write the run's record here as JSON: every sample, the medians and
    /// the memory figures (what `--json` prints instead of the table).
    #[arg(long, value_name = "FILE.json")]
    record: Option<std::path::PathBuf>,
    /// Draw the comparison as an SVG chart: each metric's values with
    /// error bars from the rounds, and every ratio on a log axis.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
    /// Draw the chart of a run saved with --record instead of measuring
    /// (needs --plot).
    #[arg(long, value_name = "FILE.json", requires = "plot")]
    plot_from: Option<std::path::PathBuf>,
}

/// One metric: its name, unit, and whether more is better.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

pub const METRICS: &[Metric] = &[
    Metric {
        name: "tcp-1-stream",
        unit: "Gbit/s",
        higher_is_better: true,
    },
    Metric {
        name: "tcp-4-streams",
        unit: "Gbit/s",
        higher_is_better: true,
    },
    Metric {
        name: "tcp-cpu-per-GB",
        unit: "CPU s",
        higher_is_better: false,
    },
    Metric {
        name: "tcp-ofo-per-GB",
        unit: "segments",
        higher_is_better: false,
    },
    Metric {
        name: "tcp-retrans-per-GB",
        unit: "segments",
        higher_is_better: false,
    },
    Metric {
        name: "udp-64B",
        unit: "Mpps",
        higher_is_better: true,
    },
    Metric {
        name: "udp-64B-2gen",
        unit: "Mpps",
        higher_is_better: true,
    },
    Metric {
        name: "cpu-per-Mpkt",
        unit: "CPU s",
        higher_is_better: false,
    },
    Metric {
        name: "cpu-per-Mpkt-paced",
        unit: "CPU s",
        higher_is_better: false,
    },
    Metric {
        name: "latency-p50",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        name: "latency-p99",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        name: "loaded-p50",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        name: "loaded-p99",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        name: "busy-p50",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        name: "busy-p99",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        name: "flooded-p50",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        name: "flooded-p99",
        unit: "µs",
        higher_is_better: false,
    },
];

/// Runs a command in a namespace (`ip netns exec`), failing with its stderr.
fn ns_run(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    crate::run("ip", &full)
}

/// The middle value of `v` (the upper one of an even count), sorting it.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

/// One iperf3 run.
#[derive(Debug, Clone, Copy)]
struct TcpRun {
    gbit_per_sec: f64,
    /// The whole machine's busy CPU seconds per GB moved.
    cpu_secs_per_gb: f64,
    /// Segments the receiver queued out of order (its TCP's
    /// `TCPOFOQueue`), per GB moved.
    out_of_order_per_gb: f64,
    /// Segments the sender sent again (iperf3's `retransmits`, the
    /// kernel's count for its sockets), per GB of the measured seconds.
    retransmits_per_gb: f64,
}

/// TCP throughput and its CPU cost; a run that moved nothing (the server
/// not listening yet) is tried once more.
fn tcp(src: &str, dst: &str, dst_ip: &str, streams: u32, seconds: u64) -> Result<TcpRun> {
    match tcp_once(src, dst, dst_ip, streams, seconds) {
        Ok(run) if run.gbit_per_sec > 0.0 => Ok(run),
        _ => tcp_once(src, dst, dst_ip, streams, seconds),
    }
}

/// Starts a one-shot iperf3 server in `ns` on `port` and gives it time to
/// listen.
fn iperf3_server(ns: &str, port: &str) -> Result<()> {
    ns_run(ns, &["iperf3", "-s", "-1", "-D", "-p", port])?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

fn tcp_once(src: &str, dst: &str, dst_ip: &str, streams: u32, seconds: u64) -> Result<TcpRun> {
    iperf3_server(dst, "5201")?;
    let out_of_order_before = tcp_ext_counter(dst, "TCPOFOQueue")?;
    let busy = BusyCpu::start();
    let out = ns_run(
        src,
        &[
            "iperf3",
            "-c",
            dst_ip,
            "-p",
            "5201",
            "-J",
            "-O",
            "1",
            "-P",
            &streams.to_string(),
            "-t",
            &seconds.to_string(),
        ],
    )?;
    let busy_secs = busy.secs();
    let out_of_order = tcp_ext_counter(dst, "TCPOFOQueue")?.saturating_sub(out_of_order_before);
    let v: Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    let gbit_per_sec = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    // The CPU and the receiver's counter were read over the second left
    // out (`-O 1`) too: the bytes are taken at the measured rate over the
    // whole run.
    let gigabytes = gbit_per_sec / 8.0 * (seconds + 1) as f64;
    let measured_gigabytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) / 1e9;
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
    let per = |count: f64, gigabytes: f64| {
        if gigabytes > 0.0 {
            count / gigabytes
        } else {
            0.0
        }
    };
    Ok(TcpRun {
        gbit_per_sec,
        cpu_secs_per_gb: per(busy_secs, gigabytes),
        out_of_order_per_gb: per(out_of_order as f64, gigabytes),
        retransmits_per_gb: per(retransmits, measured_gigabytes),
    })
}

/// A counter of `ns`'s TCP extended statistics (the `TcpExt:` lines of
/// /proc/net/netstat, one namespace's own).
fn tcp_ext_counter(ns: &str, name: &str) -> Result<u64> {
    let text = ns_run(ns, &["cat", "/proc/net/netstat"])?;
    parse_mib(&text, "TcpExt:", name)
        .with_context(|| format!("no TcpExt {name} in {ns}'s /proc/net/netstat"))
}

/// Datagrams `ns`'s UDP layer took for its sockets: read (`InDatagrams`)
/// or refused by a full receive buffer (`RcvbufErrors`), from the
/// namespace's own /proc/net/snmp. Counted per datagram after the kernel
/// cut a super-datagram for the socket (`udp_rcv_segment`), where the
/// interface's counters count skbs.
fn udp_datagrams_taken(ns: &str) -> Result<u64> {
    let text = ns_run(ns, &["cat", "/proc/net/snmp"])?;
    let counter = |name| {
        parse_mib(&text, "Udp:", name)
            .with_context(|| format!("no Udp {name} in {ns}'s /proc/net/snmp"))
    };
    Ok(counter("InDatagrams")? + counter("RcvbufErrors")?)
}

/// `name`'s value in a /proc/net/netstat or /proc/net/snmp text: a line
/// of names starting with `prefix` followed by one of values.
fn parse_mib(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// A UDP socket bound to `port` in namespace `ns` that nobody reads: what
/// the small-packet runs send to, so that the destination's kernel does
/// a socket's work for each datagram (and no ICMP error) in both
/// dataplanes.
fn unread_socket(ns: &str, port: u16) -> Result<std::net::UdpSocket> {
    let path = format!("/run/netns/{ns}");
    podswitch_host::netlink::in_netns(&path, || {
        std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
    })
    .with_context(|| format!("a UDP socket on port {port} in {ns}"))
}

/// A counter of `ns`'s eth0 (/sys/class/net/eth0/statistics).
fn eth0_counter(ns: &str, name: &str) -> Result<u64> {
    let path = format!("/sys/class/net/eth0/statistics/{name}");
    Ok(ns_run(ns, &["cat", &path])?.trim().parse()?)
}

/// Clock ticks a second in /proc's CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// The whole machine's busy CPU time from a start (/proc/stat).
struct BusyCpu {
    jiffies_at_start: u64,
}

impl BusyCpu {
    fn start() -> BusyCpu {
        BusyCpu {
            jiffies_at_start: busy_jiffies(),
        }
    }

    /// Busy CPU seconds since the start.
    fn secs(&self) -> f64 {
        busy_jiffies().saturating_sub(self.jiffies_at_start) as f64 / USER_HZ
    }
}

/// Busy jiffies of the whole machine (/proc/stat).
fn busy_jiffies() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal; guest and
    // guest_nice, after them, are already counted in user and nice.
    cpu.iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum()
}

/// The CPU jiffies (user and system) of each process of group `pgid`
/// still in /proc: one entry per process.
fn group_jiffies(pgid: u32) -> Vec<u64> {
    group_processes(pgid).into_iter().map(|(_, j)| j).collect()
}

/// Each process of group `pgid` still in /proc: its pid and CPU jiffies
/// (user and system).
fn group_processes(pgid: u32) -> Vec<(u32, u64)> {
    // After the ')' of the command: state (0), ppid (1), pgrp (2), ...,
    // utime (11), stime (12).
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, fs::read_to_string(e.path().join("stat")).ok()?))
        })
        .filter_map(|(pid, s)| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            (f.get(2)?.parse::<u32>().ok()? == pgid).then(|| {
                Some((
                    pid,
                    f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
                ))
            })?
        })
        .collect()
}

/// Stops every process of group `pgid`: trafgen runs its work in child
/// processes, which a signal to the parent alone leaves running (a
/// SIGKILLed trafgen's workers went on flooding the lab through the
/// measurements after it).
fn stop_group(pgid: u32) {
    let group = format!("-{pgid}");
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What one trafgen run delivered.
struct Blast {
    /// Datagrams the destinations' UDP layers took
    /// ([`udp_datagrams_taken`]).
    packets: f64,
    /// Per second, in millions.
    mpps: f64,
    /// Frames the generator put on the source's eth0.
    sent: f64,
    /// Those per second, in millions.
    sent_mpps: f64,
    /// Busy CPU of the whole machine during the run, in seconds.
    busy_secs: f64,
    /// CPU of the generator's processes (trafgen and its worker), in
    /// seconds: with the kernel's work done in its system calls, on a veth.
    generator_secs: f64,
}

/// One generator's stream: from `src_ns`'s eth0 to `dst_mac`/`dst_ip`,
/// counted by `dst_ns`'s UDP layer.
struct Flow<'a> {
    src_ns: &'a str,
    dst_ns: &'a str,
    dst_mac: String,
    src_ip: &'a str,
    dst_ip: &'a str,
}

/// trafgen's gap between two frames for `cpu-per-Mpkt-paced`, in µs:
/// 15,000-19,000 frames a second on the lab's veths, where trafgen
/// sleeps between frames. With gaps of some 10 µs it spins through them,
/// and its CPU would swamp the dataplane's.
const PACED_GAP_US: u64 = 30;

/// The shortest paced run, in seconds: /proc/stat counts busy time in
/// 10 ms ticks, and at the paced rate it takes this long to tell the
/// dataplanes' costs apart to a fraction of a microsecond a packet.
const PACED_MIN_SECONDS: u64 = 3;

/// Sends 64-byte UDP frames (60 bytes + FCS) along every flow at once for
/// `seconds`, one trafgen per flow, each on a CPU of its own while there
/// are CPUs enough ([`generator_cpu`]), as fast as it can or
/// `gap_us` apart, to port 9 where each destination has a socket nobody
/// reads ([`unread_socket`]), and counts the datagrams the flows'
/// destinations took for it, each destination once however many flows it
/// has.
fn blast(flows: &[Flow], seconds: u64, gap_us: Option<u64>) -> Result<Blast> {
    let mut destinations: Vec<&str> = flows.iter().map(|f| f.dst_ns).collect();
    destinations.sort_unstable();
    destinations.dedup();
    let _sinks = destinations
        .iter()
        .map(|ns| unread_socket(ns, 9))
        .collect::<Result<Vec<_>>>()?;
    // What the destinations took, and what the sources sent.
    let counters = || -> Result<(u64, u64)> {
        let mut total = (0, 0);
        for ns in &destinations {
            total.0 += udp_datagrams_taken(ns)?;
        }
        for f in flows {
            total.1 += eth0_counter(f.src_ns, "tx_packets")?;
        }
        Ok(total)
    };
    let before = counters()?;
    let busy = BusyCpu::start();
    let started = Instant::now();
    let generators = Generators::start(flows, gap_us)?;
    std::thread::sleep(Duration::from_secs(seconds));
    // trafgen and its worker process: the generators' whole CPU.
    let generator_cpu = generators.jiffies();
    let after = counters();
    let busy_secs = busy.secs();
    let elapsed = started.elapsed().as_secs_f64();
    drop(generators);
    let after = after?;
    let packets = after.0.saturating_sub(before.0) as f64;
    let sent = after.1.saturating_sub(before.1) as f64;
    Ok(Blast {
        packets,
        mpps: packets / elapsed / 1e6,
        sent,
        sent_mpps: sent / elapsed / 1e6,
        busy_secs,
        generator_secs: generator_cpu as f64 / USER_HZ,
    })
}

/// One trafgen per flow, the `i`-th sending from CPU [`generator_cpu`]`(i,
/// cpus)`, sending 64-byte UDP frames (60 bytes + FCS) to
/// port 9, as fast as it can or `gap_us` apart, for as long as this
/// lives: dropped, it stops every generator's process group and waits
/// until each is gone (the next measurement starts only once they are; a
/// worker dies a moment after the signal).
struct Generators {
    children: Vec<std::process::Child>,
    confs: Vec<std::path::PathBuf>,
}

impl Generators {
    fn start(flows: &[Flow], gap_us: Option<u64>) -> Result<Generators> {
        let mut generators = Generators {
            children: Vec::new(),
            confs: Vec::new(),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (i, f) in flows.iter().enumerate() {
            let cpu = generator_cpu(i, cpus);
            let conf = std::env::temp_dir().join(format!(
                "podswitch-bench-{}-{i}.trafgen",
                std::process::id()
            ));
            fs::write(
                &conf,
                format!(
                    "cpu({cpu}): {{ eth(da={}, type=0x0800), ipv4(saddr={}, daddr={}, ttl=64, df), udp(sp=9, dp=9), fill(0x42, 18) }}\n",
                    f.dst_mac, f.src_ip, f.dst_ip
                ),
            )?;
            generators.confs.push(conf.clone());
            let mut trafgen = Command::new("ip");
            trafgen
                .args(["netns", "exec", f.src_ns, "trafgen", "-o", "eth0", "-i"])
                .arg(&conf)
                // trafgen forks a sender for each of the first `-P` CPUs
                // and pins it there (`sched_setaffinity`, so `taskset`
                // cannot move it); the senders of CPUs the frame is not
                // for (`cpu(N):` above) have nothing to send and exit.
                .args(["-P", &(cpu + 1).to_string(), "-q"]);
            if let Some(gap) = gap_us {
                trafgen.args(["-t", &format!("{gap}us")]);
            }
            let child = trafgen
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .context("trafgen")?;
            generators.children.push(child);
        }
        Ok(generators)
    }

    /// The CPU jiffies the generators' processes have used.
    fn jiffies(&self) -> u64 {
        self.children
            .iter()
            .flat_map(|g| group_jiffies(g.id()))
            .sum()
    }
}

/// The CPU the `i`-th of several generators sends from, of `cpus`: each
/// its own while there are enough, CPU 0 for the first (the CPU the
/// one-generator runs always used). Two generators that trafgen pinned to
/// one CPU (as `-P 1` does, to CPU 0) would share it, and measure one
/// sender's CPU with two flows rather than two senders.
fn generator_cpu(i: usize, cpus: usize) -> usize {
    i % cpus.max(1)
}

impl Drop for Generators {
    fn drop(&mut self) {
        for g in &mut self.children {
            stop_group(g.id());
            let _ = g.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .children
            .iter()
            .any(|g| !group_jiffies(g.id()).is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        for conf in &self.confs {
            let _ = fs::remove_file(conf);
        }
    }
}

impl Blast {
    /// The dataplane's CPU seconds per million packets received: the
    /// machine's busy time less what generating the frames costs, the
    /// generator's CPU per frame measured alone (`generator_secs_per_frame`,
    /// the ceiling run) times the frames it sent. Not the generator's CPU
    /// in this run: on a veth the kernel dataplane forwards inside the
    /// generator's system calls, and that time is the kernel's cost, not
    /// the generator's.
    fn dataplane_secs_per_mpkt(&self, generator_secs_per_frame: f64) -> Result<f64> {
        if self.packets == 0.0 {
            bail!("no 64-byte packet reached its destination");
        }
        let dataplane_secs = (self.busy_secs - generator_secs_per_frame * self.sent).max(0.0);
        Ok(dataplane_secs / (self.packets / 1e6))
    }
}

/// 64-byte UDP: (received Mpps, dataplane CPU seconds per million packets).
fn small_packets(
    pairs: &[(&lab::Pod, &lab::Pod)],
    seconds: u64,
    ceiling: &Ceiling,
) -> Result<(f64, f64)> {
    let run = blast(&flows(pairs)?, seconds, None)?;
    Ok((
        run.mpps,
        run.dataplane_secs_per_mpkt(ceiling.secs_per_frame)?,
    ))
}

/// 64-byte UDP from `src` to `dst` sent [`PACED_GAP_US`] apart, a rate a
/// node meets every day rather than a flood: the dataplane's CPU seconds
/// per million packets, counted as for [`small_packets`] with the paced
/// generator's own cost taken out. At this rate a dataplane that batches
/// has little to batch, and what each packet costs on its own shows.
fn paced_packets_cpu(
    src: &lab::Pod,
    dst: &lab::Pod,
    seconds: u64,
    ceiling: &Ceiling,
) -> Result<f64> {
    let seconds = seconds.max(PACED_MIN_SECONDS);
    let run = blast(&flows(&[(src, dst)])?, seconds, Some(PACED_GAP_US))?;
    run.dataplane_secs_per_mpkt(ceiling.paced_secs_per_frame)
}

/// A generator's flow for each pair of pods, from the first to the second.
fn flows<'a>(pairs: &[(&'a lab::Pod, &'a lab::Pod)]) -> Result<Vec<Flow<'a>>> {
    pairs
        .iter()
        .map(|(src, dst)| {
            Ok(Flow {
                src_ns: &src.netns,
                dst_ns: &dst.netns,
                dst_mac: next_hop_mac(src, dst)?,
                src_ip: &src.ip,
                dst_ip: &dst.ip,
            })
        })
        .collect()
}

/// The MAC `src`'s own stack sends `dst`'s packets to, as its routes and
/// ARP table give it after a ping to `dst`: the gateway's for a
/// destination behind one, the destination pod's own for one on the same
/// link (two pods on one flannel node share `cni0`'s subnet, and the
/// kernel path bridges them; sent to the gateway instead, the kernel
/// would route them back out of `cni0`, a path pods never take).
fn next_hop_mac(src: &lab::Pod, dst: &lab::Pod) -> Result<String> {
    ns_run(&src.netns, &["ping", "-c", "1", "-W", "2", &dst.ip])?;
    let route = ns_run(&src.netns, &["ip", "route", "get", &dst.ip])?;
    let hop = next_hop(&route, &dst.ip);
    let neigh = ns_run(&src.netns, &["ip", "neigh", "show", hop])?;
    Ok(neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .with_context(|| {
            format!(
                "no ARP entry for {hop}, the next hop to {}: {neigh}",
                dst.ip
            )
        })?
        .to_string())
}

/// The next hop in `ip route get`'s answer for `dst`: the `via` address,
/// or `dst` itself when the route is on-link.
fn next_hop<'a>(route_get: &'a str, dst: &'a str) -> &'a str {
    route_get
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .unwrap_or(dst)
}

/// What the generator does alone.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    /// Frames per second it puts into a veth, in millions.
    mpps: f64,
    /// Its CPU seconds per frame sent.
    secs_per_frame: f64,
    /// The same, sending [`PACED_GAP_US`] apart.
    paced_secs_per_frame: f64,
}

/// The generator's own ceiling: trafgen into a veth whose other end drops
/// every frame (addressed to another MAC; no forwarding behind it): its
/// rate, counted where it sends (the dataplanes' figures are meaningful
/// only well below it), and its CPU per frame.
fn generator_ceiling(seconds: u64) -> Result<Ceiling> {
    let a = lab::Namespace::add(&format!("podswitch-gen-{}-a", std::process::id()))?;
    let b = lab::Namespace::add(&format!("podswitch-gen-{}-b", std::process::id()))?;
    lab::veth(a.name(), "eth0", b.name(), "eth0")?;
    crate::run("ip", &["-n", a.name(), "link", "set", "eth0", "up"])?;
    crate::run("ip", &["-n", b.name(), "link", "set", "eth0", "up"])?;
    let flow = [Flow {
        src_ns: a.name(),
        dst_ns: b.name(),
        dst_mac: "02:00:00:00:00:99".into(),
        src_ip: "10.244.1.2",
        dst_ip: "10.244.2.2",
    }];
    let run = blast(&flow, seconds, None)?;
    // Paced, its sleeps and wake-ups are its CPU too: the machine's
    // busy time, as the dataplanes' runs count it.
    let paced = blast(&flow, seconds.max(PACED_MIN_SECONDS), Some(PACED_GAP_US))?;
    Ok(Ceiling {
        mpps: run.sent_mpps,
        secs_per_frame: run.generator_secs / run.sent.max(1.0),
        paced_secs_per_frame: paced.busy_secs / paced.sent.max(1.0),
    })
}

/// Ping round trips: (p50, p99) in µs.
fn latency(src: &lab::Pod, dst: &lab::Pod, seconds: u64) -> Result<(f64, f64)> {
    let count = (seconds * 500).clamp(50, 5000).to_string();
    let out = ns_run(
        &src.netns,
        &[
            "ping", "-n", "-c", &count, "-i", "0.002", "-W", "1", &dst.ip,
        ],
    )?;
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|ms| ms * 1000.0)
        .collect();
    if rtts.is_empty() {
        bail!("no ping reply from {}", dst.ip);
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| rtts[((rtts.len() as f64 - 1.0) * q).round() as usize];
    Ok((p(0.5), p(0.99)))
}

/// Ping round trips while one iperf3 TCP stream runs from `src` to
/// `dst`: (p50, p99) in µs.
fn loaded_latency(src: &lab::Pod, dst: &lab::Pod, seconds: u64) -> Result<(f64, f64)> {
    iperf3_server(&dst.netns, "5202")?;
    // The stream outlasts the pings by a second on each side.
    let mut load = Command::new("ip")
        .args(["netns", "exec", &src.netns, "iperf3", "-c", &dst.ip])
        .args(["-p", "5202", "-t", &(seconds + 2).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting iperf3")?;
    std::thread::sleep(Duration::from_secs(1));
    let measured = latency(src, dst, seconds);
    // A stream that failed would leave an idle-lab figure labelled loaded.
    let status = load.wait().context("waiting for iperf3")?;
    if !status.success() {
        bail!("the iperf3 stream under the pings failed ({status})");
    }
    measured
}

/// Tasks that never sleep, two per CPU (as pods computing would be), for
/// as long as this lives, and each at most `limit` should its owner die
/// without dropping it: the bench's `busy-*` case and the test that a
/// busy CPU does not hold a spinning worker's packets.
#[derive(Debug)]
pub struct BusyLoops(Vec<std::process::Child>);

impl BusyLoops {
    /// Starts them; killed again if one cannot start.
    pub fn start(limit: Duration) -> std::io::Result<BusyLoops> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut loops = BusyLoops(Vec::new());
        // bash's own clock: no process between this one and the loop.
        let script = format!("while ((SECONDS < {})); do :; done", limit.as_secs().max(1));
        for _ in 0..2 * cpus {
            loops
                .0
                .push(Command::new("bash").args(["-c", &script]).spawn()?);
        }
        Ok(loops)
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Ping round trips while [`BusyLoops`] keep every CPU busy: (p50, p99)
/// in µs. A forwarder that waits for CPU time behind them shows here.
fn busy_latency(src: &lab::Pod, dst: &lab::Pod, seconds: u64) -> Result<(f64, f64)> {
    let _busy =
        BusyLoops::start(Duration::from_secs(seconds + 60)).context("starting busy loops")?;
    // The loops take their share of each CPU first.
    std::thread::sleep(Duration::from_secs(1));
    latency(src, dst, seconds)
}

/// Ping round trips from `src` to `dst` while a neighbour, another pod
/// pair (`flood`), sends 64-byte UDP as fast as one generator can: (p50,
/// p99) in µs. A forwarder that makes other pods' packets wait behind a
/// flood, or takes the CPU their processes need to forward it, shows
/// here.
fn flooded_latency(
    src: &lab::Pod,
    dst: &lab::Pod,
    flood: (&lab::Pod, &lab::Pod),
    seconds: u64,
) -> Result<(f64, f64)> {
    let flows = flows(&[flood])?;
    let _sink = unread_socket(&flood.1.netns, 9)?;
    let _generators = Generators::start(&flows, None)?;
    // The flood takes its share of the CPUs first.
    std::thread::sleep(Duration::from_secs(1));
    latency(src, dst, seconds)
}

/// How many workers a podswitch lab runs: a count, or one per CPU (in
/// podswitchd's default class, or in the normal one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerChoice {
    /// podswitchd's `workers`.
    Count(usize),
    /// podswitchd's `per_cpu`.
    PerCpu,
    /// podswitchd's `per_cpu` with `worker_priority = "normal"`.
    PerCpuNormal,
}

impl std::str::FromStr for WorkerChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<WorkerChoice, String> {
        match text {
            "per-cpu" => return Ok(WorkerChoice::PerCpu),
            "per-cpu-normal" => return Ok(WorkerChoice::PerCpuNormal),
            _ => {}
        }
        match text.parse() {
            Ok(n) if (1..=9).contains(&n) => Ok(WorkerChoice::Count(n)),
            _ => Err(format!(
                "{text:?}: a worker count from 1 to 9 (lab names are short), per-cpu or per-cpu-normal"
            )),
        }
    }
}

impl WorkerChoice {
    /// What labels and lab names carry: the count, "cpu" or "cpun".
    fn tag(self) -> String {
        match self {
            WorkerChoice::Count(n) => n.to_string(),
            WorkerChoice::PerCpu => "cpu".into(),
            WorkerChoice::PerCpuNormal => "cpun".into(),
        }
    }

    /// What a lab's name carries (at most 12 characters in all): the
    /// count, "c" or "n".
    fn lab_tag(self) -> String {
        match self {
            WorkerChoice::Count(n) => n.to_string(),
            WorkerChoice::PerCpu => "c".into(),
            WorkerChoice::PerCpuNormal => "n".into(),
        }
    }
}

/// A dataplane the bench measures: the kernel, or podswitch with a number
/// of workers, an underlay kind and a pod port kind.
struct Dataplane {
    label: String,
    /// The lab's `--dataplane`.
    kind: lab::Dataplane,
    workers: Option<WorkerChoice>,
    underlay_kind: Option<String>,
    port_kind: Option<PodPortKind>,
}

/// What a label puts before a pod port kind.
const PODS_MARK: &str = "-pods-";

/// The label of podswitch with `workers`, `underlay_kind` and `port_kind`
/// (when chosen): "podswitch", "podswitch-w2", "podswitch-wcpu",
/// "podswitch-af-xdp", "podswitch-w2-af-xdp", "podswitch-pods-af-xdp", ...
fn podswitch_label(
    workers: Option<WorkerChoice>,
    underlay_kind: Option<&str>,
    port_kind: Option<PodPortKind>,
) -> String {
    let mut label = "podswitch".to_string();
    if let Some(w) = workers {
        label.push_str(&format!("-w{}", w.tag()));
    }
    if let Some(k) = underlay_kind {
        label.push('-');
        label.push_str(k);
    }
    if let Some(k) = port_kind {
        label.push_str(PODS_MARK);
        label.push_str(&k.to_string());
    }
    label
}

/// The label of Open vSwitch's userspace datapath in a record.
pub const OVS_LABEL: &str = "ovs";

/// What a dataplane label adds to a case's name: " workers=2",
/// " workers=per-cpu", " underlay=af-xdp", " pods=af-xdp", several, or
/// nothing (the kernel,
/// podswitch's defaults). The chart reads labels back with it (records
/// from before pod port kinds have none).
pub fn case_suffix(label: &str) -> String {
    let (label, pods) = match label.find(PODS_MARK) {
        Some(at) => (&label[..at], Some(&label[at + PODS_MARK.len()..])),
        None => (label, None),
    };
    let pods = pods.map(|k| format!(" pods={k}")).unwrap_or_default();
    let Some(rest) = label.strip_prefix("podswitch-") else {
        return pods;
    };
    let (workers, underlay) = match rest.strip_prefix('w') {
        Some(w) => {
            let digits = w.find('-').unwrap_or(w.len());
            (Some(&w[..digits]), w[digits..].strip_prefix('-'))
        }
        None => (None, Some(rest)),
    };
    let mut suffix = String::new();
    match workers {
        Some("cpu") => suffix.push_str(" workers=per-cpu"),
        Some("cpun") => suffix.push_str(" workers=per-cpu-normal"),
        Some(w) => suffix.push_str(&format!(" workers={w}")),
        None => {}
    }
    if let Some(u) = underlay.filter(|u| !u.is_empty()) {
        suffix.push_str(&format!(" underlay={u}"));
    }
    suffix + &pods
}

struct Case {
    backend: Backend,
    scope: &'static str,
}

/// podswitchd's resident memory with no pod and with some.
struct Memory {
    pods: u8,
    /// Resident set (VmRSS) with no pod, in KiB.
    empty_kib: u64,
    /// With `pods` pods, in KiB.
    full_kib: u64,
}

impl Memory {
    /// What each pod added, in KiB.
    fn per_pod_kib(&self) -> f64 {
        self.full_kib.saturating_sub(self.empty_kib) as f64 / f64::from(self.pods.max(1))
    }
}

/// podswitchd's resident set size (/proc/PID/status, VmRSS), in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("podswitchd (pid {pid}) is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Brings up a one-node podswitch lab of `pods` pods, waits for its
/// daemon to settle, and reads its resident memory; the lab goes after.
fn lab_rss(pods: u8) -> Result<u64> {
    let lab =
        lab::up(&UpArgs::new("bmem", lab::Dataplane::Podswitch, Backend::Vxlan).sized(1, pods))?;
    let measured = (|| {
        let pid = lab.nodes[0].pid.context("the lab's node has no daemon")?;
        // Ports open in the worker a moment after their requests.
        std::thread::sleep(Duration::from_secs(1));
        rss_kib(pid)
    })();
    let _ = lab::down(&lab.name);
    measured
}

fn memory(pods: u8) -> Result<Memory> {
    Ok(Memory {
        pods,
        empty_kib: lab_rss(0)?,
        full_kib: lab_rss(pods)?,
    })
}

/// Runs the bench (or draws a saved run's chart); `json_out`: the record
/// on stdout instead of the table.
pub fn run(args: &BenchArgs, json_out: bool) -> Result<()> {
    if let (Some(from), Some(to)) = (&args.plot_from, &args.plot) {
        let text = fs::read_to_string(from).with_context(|| format!("{}", from.display()))?;
        let record: Value =
            serde_json::from_str(&text).with_context(|| format!("{}", from.display()))?;
        let svg = chart::render(&record, METRICS).with_context(|| format!("{}", from.display()))?;
        fs::write(to, svg).with_context(|| format!("{}", to.display()))?;
        return Ok(());
    }
    if args.rounds == 0 || args.seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    // The kernel, then podswitch once per worker count asked for.
    let mut dataplanes = vec![Dataplane {
        label: "kernel".into(),
        kind: lab::Dataplane::Kernel,
        workers: None,
        underlay_kind: None,
        port_kind: None,
    }];
    let worker_counts: Vec<Option<WorkerChoice>> = match args.workers.is_empty() {
        true => vec![None],
        false => args.workers.iter().copied().map(Some).collect(),
    };
    let underlay_kinds: Vec<Option<&str>> = match args.underlay_kinds.is_empty() {
        true => vec![None],
        false => args
            .underlay_kinds
            .iter()
            .map(|k| Some(k.as_str()))
            .collect(),
    };
    let port_kinds: Vec<Option<PodPortKind>> = match args.port_kinds.is_empty() {
        true => vec![None],
        false => args.port_kinds.iter().copied().map(Some).collect(),
    };
    for &workers in &worker_counts {
        for &underlay_kind in &underlay_kinds {
            for &port_kind in &port_kinds {
                dataplanes.push(Dataplane {
                    label: podswitch_label(workers, underlay_kind, port_kind),
                    kind: lab::Dataplane::Podswitch,
                    workers,
                    underlay_kind: underlay_kind.map(str::to_string),
                    port_kind,
                });
            }
        }
    }
    if args.ovs {
        if !args.backends.contains(&Backend::Vxlan) {
            bail!("--ovs measures Open vSwitch on the vxlan backend: add vxlan to --backends");
        }
        dataplanes.push(Dataplane {
            label: OVS_LABEL.into(),
            kind: lab::Dataplane::Ovs,
            workers: None,
            underlay_kind: None,
            port_kind: None,
        });
    }
    let cases: Vec<Case> = args
        .backends
        .iter()
        .flat_map(|b| ["cross-node", "same-node"].map(|scope| Case { backend: *b, scope }))
        .collect();
    // Time estimate: per case and round, each dataplane runs TCP twice,
    // small packets three times (once paced, at least
    // PACED_MIN_SECONDS) and latency four times, each about `seconds`
    // plus set-up.
    let per_round = (8 * (args.seconds + 1) + args.seconds.max(PACED_MIN_SECONDS) + 1)
        * dataplanes.len() as u64;
    let total = per_round * args.rounds as u64 * cases.len() as u64;
    let started = Instant::now();
    eprintln!("measuring the generator alone (trafgen into a counting veth)...");
    let ceiling = generator_ceiling(args.seconds)?;
    let memory = if args.memory_pods > 0 {
        eprintln!(
            "measuring podswitchd's memory with no pod and with {} pods...",
            args.memory_pods
        );
        Some(memory(args.memory_pods)?)
    } else {
        None
    };
    let mut raw = Vec::new();
    let mut table = Vec::new();
    let mut ovs_table = Vec::new();
    for backend in &args.backends {
        // Open vSwitch runs flannel's vxlan backend only.
        let dataplanes: Vec<&Dataplane> = dataplanes
            .iter()
            .filter(|dp| dp.kind != lab::Dataplane::Ovs || *backend == Backend::Vxlan)
            .collect();
        let mut labs = Vec::new();
        for dp in &dataplanes {
            eprintln!("building the {} lab for {backend}...", dp.label);
            let name = format!(
                "b{}{}{}{}{}",
                &dp.label[..1],
                dp.workers.map(WorkerChoice::lab_tag).unwrap_or_default(),
                match dp.underlay_kind.as_deref() {
                    Some("af-xdp") => "x",
                    _ => "",
                },
                match dp.port_kind {
                    Some(PodPortKind::AfXdp) => "a",
                    Some(PodPortKind::AfPacket) => "k",
                    Some(PodPortKind::Tap) | None => "",
                },
                &backend
                    .to_string()
                    .replace('-', "")
                    .chars()
                    .take(7)
                    .collect::<String>()
            );
            // Three pods a node: the third is the flooded case's neighbour.
            let mut up = UpArgs::new(&name, dp.kind, *backend).sized(2, 3);
            match dp.workers {
                Some(WorkerChoice::Count(w)) => up = up.workers(w),
                Some(WorkerChoice::PerCpu) => up = up.per_cpu(),
                Some(WorkerChoice::PerCpuNormal) => up = up.per_cpu().worker_priority("normal"),
                None => {}
            }
            if let Some(k) = &dp.underlay_kind {
                up = up.underlay_kind(k);
            }
            if let Some(k) = dp.port_kind {
                up = up.port_kind(k);
            }
            // An Open vSwitch lab is held, but in its own turns.
            let built = lab::up(&up).and_then(|lab| match lab::hold_ovs(&lab, true) {
                Ok(()) => Ok(lab),
                Err(e) => {
                    let _ = lab::down(&lab.name);
                    Err(e)
                }
            });
            match built {
                Ok(lab) => labs.push(lab),
                Err(e) => {
                    // lab::up removed its own half-built lab; the ones
                    // before it go too.
                    for lab in &labs {
                        let _ = lab::down(&lab.name);
                    }
                    return Err(e);
                }
            }
        }
        let outcome = (|| -> Result<()> {
            for case in cases.iter().filter(|c| c.backend == *backend) {
                // values[metric][dataplane] = samples
                let mut values = vec![vec![Vec::<f64>::new(); dataplanes.len()]; METRICS.len()];
                for round in 0..args.rounds {
                    for (d, lab) in labs.iter().enumerate() {
                        let elapsed = started.elapsed().as_secs();
                        eprint!(
                            "\r\x1b[K[{} {} {} round {}/{}] about {}s left",
                            case.backend,
                            case.scope,
                            dataplanes[d].label,
                            round + 1,
                            args.rounds,
                            total.saturating_sub(elapsed)
                        );
                        lab::hold_ovs(lab, false)?;
                        let src = lab.pod("pod1-1")?;
                        let dst = lab.pod(if case.scope == "cross-node" {
                            "pod2-1"
                        } else {
                            "pod1-2"
                        })?;
                        let t1 = tcp(&src.netns, &dst.netns, &dst.ip, 1, args.seconds)?;
                        let t4 = tcp(&src.netns, &dst.netns, &dst.ip, 4, args.seconds)?;
                        let (mpps, cpu) = small_packets(&[(src, dst)], args.seconds, &ceiling)?;
                        // The case's other pod sends too: across nodes
                        // pod1-2 to pod2-2, on one node back to pod1-1.
                        let (src2, dst2) = if case.scope == "cross-node" {
                            (lab.pod("pod1-2")?, lab.pod("pod2-2")?)
                        } else {
                            (dst, src)
                        };
                        let (mpps2, _) =
                            small_packets(&[(src, dst), (src2, dst2)], args.seconds, &ceiling)?;
                        let paced_cpu = paced_packets_cpu(src, dst, args.seconds, &ceiling)?;
                        let (p50, p99) = latency(src, dst, args.seconds)?;
                        let (loaded_p50, loaded_p99) = loaded_latency(src, dst, args.seconds)?;
                        let (busy_p50, busy_p99) = busy_latency(src, dst, args.seconds)?;
                        // The neighbour: node 1's third pod floods node 2's.
                        let flood = (lab.pod("pod1-3")?, lab.pod("pod2-3")?);
                        let (flooded_p50, flooded_p99) =
                            flooded_latency(src, dst, flood, args.seconds)?;
                        let figures = [
                            t1.gbit_per_sec,
                            t4.gbit_per_sec,
                            t4.cpu_secs_per_gb,
                            t4.out_of_order_per_gb,
                            t4.retransmits_per_gb,
                            mpps,
                            mpps2,
                            cpu,
                            paced_cpu,
                            p50,
                            p99,
                            loaded_p50,
                            loaded_p99,
                            busy_p50,
                            busy_p99,
                            flooded_p50,
                            flooded_p99,
                        ];
                        lab::hold_ovs(lab, true)?;
                        for (m, v) in figures.into_iter().enumerate() {
                            values[m][d].push(v);
                            raw.push(json!({
                                "backend": case.backend, "scope": case.scope, "dataplane": dataplanes[d].label,
                                "metric": METRICS[m].name, "unit": METRICS[m].unit, "round": round, "value": v,
                            }));
                        }
                    }
                }
                // Each podswitch variant against the same run's kernel, and
                // against Open vSwitch where it ran.
                let kernel: Vec<f64> = values.iter_mut().map(|v| median(&mut v[0])).collect();
                let ovs = dataplanes
                    .iter()
                    .position(|dp| dp.kind == lab::Dataplane::Ovs);
                for (d, dp) in dataplanes.iter().enumerate().skip(1) {
                    if Some(d) == ovs {
                        continue;
                    }
                    for (m, metric) in METRICS.iter().enumerate() {
                        let k = kernel[m];
                        let p = median(&mut values[m][d]);
                        let case =
                            format!("{} {}{}", case.scope, case.backend, case_suffix(&dp.label));
                        if let Some(o) = ovs {
                            let o = median(&mut values[m][o]);
                            ovs_table.push((case.clone(), *metric, k, o, p));
                        }
                        table.push((case, *metric, k, p));
                    }
                }
            }
            Ok(())
        })();
        for lab in &labs {
            let _ = lab::down(&lab.name);
        }
        outcome?;
    }
    eprintln!("\r\x1b[Kdone in {}s", started.elapsed().as_secs());
    let summary: Vec<Value> = table
        .iter()
        .map(|(case, m, k, p)| json!({ "case": case, "metric": m.name, "unit": m.unit, "kernel": k, "podswitch": p }))
        .collect();
    let record = json!({
        "generator_ceiling_mpps": ceiling.mpps,
        "generator_cpu_us_per_frame": ceiling.secs_per_frame * 1e6,
        "paced_gap_us": PACED_GAP_US,
        "generator_paced_cpu_us_per_frame": ceiling.paced_secs_per_frame * 1e6,
        "medians": summary,
        "ovs_medians": ovs_table.iter().map(|(case, m, k, o, p)| json!({
            "case": case, "metric": m.name, "unit": m.unit, "kernel": k, "ovs": o, "podswitch": p,
        })).collect::<Vec<_>>(),
        "samples": raw,
        "memory": memory.as_ref().map(|m| json!({
            "pods": m.pods,
            "rss_kib_no_pod": m.empty_kib,
            "rss_kib_with_pods": m.full_kib,
            "per_pod_kib": m.per_pod_kib(),
        })),
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print_table(&ceiling, &table, memory.as_ref());
        print_ovs_table(&ovs_table);
    }
    if let Some(path) = &args.record {
        fs::write(path, serde_json::to_string_pretty(&record)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        fs::write(path, chart::render(&record, METRICS)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// The run as a Markdown table of medians and ratios, for people.
fn print_table(ceiling: &Ceiling, table: &[(String, Metric, f64, f64)], memory: Option<&Memory>) {
    println!(
        "Generator ceiling: trafgen alone puts {:.3} Mpps of 64-byte frames into a veth, at {:.2} CPU µs a frame (taken out of cpu-per-Mpkt); the udp-64B figures below are the dataplanes' limits as long as they stay well under it. Sending {PACED_GAP_US} µs apart it costs the machine {:.2} CPU µs a frame (taken out of cpu-per-Mpkt-paced).\n",
        ceiling.mpps,
        ceiling.secs_per_frame * 1e6,
        ceiling.paced_secs_per_frame * 1e6
    );
    println!("| case | metric | kernel | podswitch | podswitch / kernel |");
    println!("|---|---|---|---|---|");
    for (case, metric, k, p) in table {
        println!(
            "| {case} | {} ({}) | {k:.3} | {p:.3} | {} |",
            metric.name,
            metric.unit,
            ratio_text(("kernel", *k), *p, metric.higher_is_better)
        );
    }
    if let Some(m) = memory {
        println!(
            "\nMemory: podswitchd holds {:.1} MiB resident with no pod and {:.1} MiB with {} pods: {:.0} KiB per pod.",
            m.empty_kib as f64 / 1024.0,
            m.full_kib as f64 / 1024.0,
            m.pods,
            m.per_pod_kib()
        );
    }
}

/// podswitch against Open vSwitch's userspace datapath and both against
/// the kernel, for the cases where Open vSwitch ran.
fn print_ovs_table(table: &[(String, Metric, f64, f64, f64)]) {
    if table.is_empty() {
        return;
    }
    println!("\n| case | metric | kernel | Open vSwitch | podswitch | Open vSwitch / kernel | podswitch / Open vSwitch |");
    println!("|---|---|---|---|---|---|---|");
    for (case, metric, k, o, p) in table {
        println!(
            "| {case} | {} ({}) | {k:.3} | {o:.3} | {p:.3} | {} | {} |",
            metric.name,
            metric.unit,
            ratio_text(("kernel", *k), *o, metric.higher_is_better),
            ratio_text(("Open vSwitch", *o), *p, metric.higher_is_better)
        );
    }
}

/// A ratio `measured` / the reference's figure (podswitch / kernel, say)
/// as the tables show it, better or worse for `measured`; none where the
/// reference's figure is 0 (no out-of-order segment, say).
fn ratio_text((reference, base): (&str, f64), measured: f64, higher_is_better: bool) -> String {
    if base <= 0.0 {
        return match measured > 0.0 {
            true => format!("- ({reference} 0)"),
            false => "- (both 0)".to_string(),
        };
    }
    let ratio = measured / base;
    let better = match (ratio >= 1.0) == higher_is_better {
        true => "better",
        false => "worse",
    };
    format!("{ratio:.2}x ({better})")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two generators send from two CPUs, each pinned to its own, and
    /// their frames arrive (trafgen pins the sender of `-P 1` to CPU 0,
    /// and two such runs once shared it). Needs root and trafgen, and a
    /// machine of two CPUs or more.
    #[test]
    fn two_generators_send_from_two_cpus() {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        assert!(
            status.lines().any(|l| l.starts_with("Uid:\t0\t")),
            "this test needs root (network namespaces); run the suite as root"
        );
        let on_path = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|d| d.join("trafgen").is_file())
        });
        assert!(
            on_path,
            "this test needs trafgen (netsniff-ng) on PATH: run scripts/setup.sh"
        );
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert!(
            cpus >= 2,
            "this test needs two CPUs, the machine has {cpus}"
        );
        let a = lab::Namespace::add(&format!("podswitch-gen2-{}-a", std::process::id())).unwrap();
        let b = lab::Namespace::add(&format!("podswitch-gen2-{}-b", std::process::id())).unwrap();
        lab::veth(a.name(), "eth0", b.name(), "eth0").unwrap();
        for ns in [a.name(), b.name()] {
            crate::run("ip", &["-n", ns, "link", "set", "eth0", "up"]).unwrap();
        }
        let flow = |src_ns, dst_ns, src_ip, dst_ip| Flow {
            src_ns,
            dst_ns,
            dst_mac: "02:00:00:00:00:99".into(),
            src_ip,
            dst_ip,
        };
        let flows = [
            flow(a.name(), b.name(), "10.244.1.2", "10.244.1.3"),
            flow(b.name(), a.name(), "10.244.1.3", "10.244.1.2"),
        ];
        let received = || [b.name(), a.name()].map(|ns| eth0_counter(ns, "rx_packets").unwrap());
        let before = received();
        let generators = Generators::start(&flows, None).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // Each generator's processes that sent (used CPU), and the CPUs
        // each may run on.
        let pinned: Vec<Vec<String>> = generators
            .children
            .iter()
            .map(|g| {
                group_processes(g.id())
                    .into_iter()
                    .filter(|&(_, jiffies)| jiffies > 0)
                    .filter_map(|(pid, _)| {
                        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                        let cpus = status
                            .lines()
                            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
                        Some(cpus.trim().to_string())
                    })
                    .collect()
            })
            .collect();
        drop(generators);
        let after = received();
        assert_eq!(pinned, [vec!["0".to_string()], vec!["1".to_string()]]);
        for (i, (before, after)) in before.iter().zip(after).enumerate() {
            assert!(
                after > before + 1000,
                "flow {i}: {before} -> {after} frames"
            );
        }
    }

    /// `ip route get` as iproute2 prints it in a lab's pods: on-link to a
    /// pod of the same node in bridge mode, through the gateway across
    /// nodes, and through Calico's link-local gateway in proxy-ARP mode.
    #[test]
    fn next_hop_is_the_via_address_or_the_destination_on_link() {
        let on_link = "10.244.1.3 dev eth0 src 10.244.1.2 uid 0 \n    cache \n";
        assert_eq!(next_hop(on_link, "10.244.1.3"), "10.244.1.3");
        let routed = "10.244.2.2 via 10.244.1.1 dev eth0 src 10.244.1.2 uid 0 \n    cache \n";
        assert_eq!(next_hop(routed, "10.244.2.2"), "10.244.1.1");
        let proxy_arp = "10.244.1.3 via 169.254.1.1 dev eth0 src 10.244.1.2 uid 0 \n    cache \n";
        assert_eq!(next_hop(proxy_arp, "10.244.1.3"), "169.254.1.1");
    }

    #[test]
    fn tcp_ext_counters_read_by_name() {
        let text = "TcpExt: SyncookiesSent TCPOFOQueue TCPOFODrop\n\
                    TcpExt: 0 1234 5\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 7\n";
        assert_eq!(parse_mib(text, "TcpExt:", "TCPOFOQueue"), Some(1234));
        assert_eq!(parse_mib(text, "TcpExt:", "TCPOFODrop"), Some(5));
        assert_eq!(parse_mib(text, "TcpExt:", "InNoRoutes"), None);
        assert_eq!(parse_mib(text, "IpExt:", "InNoRoutes"), Some(7));
        assert_eq!(
            parse_mib("TcpExt: TCPOFOQueue\n", "TcpExt:", "TCPOFOQueue"),
            None
        );
    }

    #[test]
    fn ratios_say_which_way_is_better_and_never_divide_by_zero() {
        assert_eq!(ratio_text(("kernel", 2.0), 3.0, true), "1.50x (better)");
        assert_eq!(ratio_text(("kernel", 2.0), 3.0, false), "1.50x (worse)");
        assert_eq!(ratio_text(("kernel", 0.0), 3.0, false), "- (kernel 0)");
        assert_eq!(
            ratio_text(("Open vSwitch", 0.0), 3.0, false),
            "- (Open vSwitch 0)"
        );
        assert_eq!(ratio_text(("kernel", 0.0), 0.0, false), "- (both 0)");
    }

    #[test]
    fn labels_name_their_variant_and_read_back() {
        for (workers, kind, pods, label, suffix) in [
            (None, None, None, "podswitch", ""),
            (
                Some(WorkerChoice::Count(2)),
                None,
                None,
                "podswitch-w2",
                " workers=2",
            ),
            (
                Some(WorkerChoice::PerCpu),
                None,
                None,
                "podswitch-wcpu",
                " workers=per-cpu",
            ),
            (
                Some(WorkerChoice::PerCpuNormal),
                None,
                None,
                "podswitch-wcpun",
                " workers=per-cpu-normal",
            ),
            (
                None,
                Some("af-xdp"),
                None,
                "podswitch-af-xdp",
                " underlay=af-xdp",
            ),
            (
                Some(WorkerChoice::Count(1)),
                Some("socket"),
                None,
                "podswitch-w1-socket",
                " workers=1 underlay=socket",
            ),
            (
                None,
                None,
                Some(PodPortKind::AfXdp),
                "podswitch-pods-af-xdp",
                " pods=af-xdp",
            ),
            (
                Some(WorkerChoice::Count(2)),
                Some("af-xdp"),
                Some(PodPortKind::AfPacket),
                "podswitch-w2-af-xdp-pods-af-packet",
                " workers=2 underlay=af-xdp pods=af-packet",
            ),
        ] {
            assert_eq!(podswitch_label(workers, kind, pods), label);
            assert_eq!(case_suffix(label), suffix);
        }
        assert_eq!(case_suffix("kernel"), "");
    }
}
