//! Traffic scenarios over network namespaces named by their names: ping,
//! TCP whose bytes the receiver checks, UDP datagrams counted whole, and
//! the matrix of all of them between every pod and node of a dataplane.
//! They take any namespace ([`InNetns`]: a test's [`Netns`] guard, or a
//! lab's namespace by name), so the same scenario runs against the
//! daemon tests' clusters and against `podswitchctl lab`'s kernel and
//! podswitch dataplanes.

use std::process::{Child, Command, Stdio};

use super::Netns;

/// Bytes of each TCP transfer of [`traffic_matrix`].
pub const TCP_BYTES: usize = 10 * 1024 * 1024;
/// UDP datagrams of each direction of [`traffic_matrix`].
pub const DATAGRAMS: u32 = 20;

/// Something that names a network namespace.
pub trait InNetns {
    /// The namespace's name (as `ip netns` lists it).
    fn netns(&self) -> &str;
}

impl InNetns for Netns {
    fn netns(&self) -> &str {
        &self.name
    }
}

impl InNetns for str {
    fn netns(&self) -> &str {
        self
    }
}

impl InNetns for String {
    fn netns(&self) -> &str {
        self
    }
}

/// A pod as a traffic scenario sees it.
#[derive(Debug, Clone)]
pub struct PodSite {
    pub netns: String,
    pub ip: String,
    /// Its node's position in [`Sites::nodes`].
    pub node: usize,
}

/// A node's own stack as a traffic scenario sees it.
#[derive(Debug, Clone)]
pub struct NodeSite {
    /// For failure messages.
    pub name: String,
    pub netns: String,
    /// An address of the node's own stack that pods on other nodes send
    /// to.
    pub address: String,
    /// The node's address on the underlay.
    pub underlay_ip: String,
}

/// A dataplane's pods and nodes, and its logs for failure messages.
pub trait Sites {
    fn pods(&self) -> Vec<PodSite>;
    fn nodes(&self) -> Vec<NodeSite>;
    /// What the dataplane logged, to show when a scenario fails.
    fn logs(&self) -> String;
}

/// `ping` from `ns` to `ip`; true if every echo came back. iputils exits
/// 0 once one reply arrives, so the summary line is what counts (as in
/// Open vSwitch's FORMAT_PING).
pub fn ping(ns: &(impl InNetns + ?Sized), ip: &str, count: u32) -> bool {
    ping_answered(ns, ip, count).is_ok()
}

/// As [`ping`], with what ping printed (which echo went unanswered) as
/// the error.
pub fn ping_answered(ns: &(impl InNetns + ?Sized), ip: &str, count: u32) -> Result<(), String> {
    ping_summary(ns, ip, count, "0.05").map(drop)
}

/// The average and the slowest round trip of `count` pings every 10 ms
/// from `ns` to `ip`, in milliseconds, if every echo came back.
pub fn ping_round_trips(
    ns: &(impl InNetns + ?Sized),
    ip: &str,
    count: u32,
) -> Result<(f64, f64), String> {
    let text = ping_summary(ns, ip, count, "0.01").map_err(|out| format!("echoes lost: {out}"))?;
    // rtt min/avg/max/mdev = 0.047/0.130/0.604/0.090 ms[, pipe 3]
    let rtt: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
        .and_then(|v| v.split_once(" ms"))
        .map(|(v, _)| v.split('/').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    match rtt[..] {
        [_, avg, max, _] => Ok((avg, max)),
        _ => Err(format!("no round-trip summary: {text}")),
    }
}

/// What one ping from `ns` to `ip` prints, answered or not (an ICMP
/// error's `From ADDRESS icmp_seq=1 ...` line included), waiting up to
/// `wait_secs` for it; `options` go before the address (`-t 2`).
pub fn ping_once_output(
    ns: &(impl InNetns + ?Sized),
    ip: &str,
    wait_secs: u32,
    options: &[&str],
) -> String {
    let wait = wait_secs.to_string();
    let args = [&["-c", "1", "-W", &wait][..], options].concat();
    let out = ping_in(ns, &args, ip).expect("run ping");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ping -n ARGS IP` in `ns`.
fn ping_in(
    ns: &(impl InNetns + ?Sized),
    args: &[&str],
    ip: &str,
) -> std::io::Result<std::process::Output> {
    Command::new("ip")
        .args(["netns", "exec", ns.netns(), "ping", "-n"])
        .args(args)
        .arg(ip)
        .output()
}

/// ping's summary of `count` echoes `interval` seconds apart if every
/// one came back; otherwise everything ping printed, each reply's line
/// included (which sequence numbers went unanswered).
fn ping_summary(
    ns: &(impl InNetns + ?Sized),
    ip: &str,
    count: u32,
    interval: &str,
) -> Result<String, String> {
    let count = count.to_string();
    let args = ["-c", count.as_str(), "-i", interval, "-W", "2"];
    let out = ping_in(ns, &args, ip).map_err(|e| format!("run ping: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && text.contains(", 0% packet loss") {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Python (Debian's) that receives one TCP stream on `port` and prints
/// `BYTES SHA256`.
const TCP_SINK: &str = "import socket, hashlib, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(1); s.settimeout(30)
print('ready', flush=True)
c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)";

/// Python that sends `BYTES` random bytes to `IP PORT` and prints
/// `BYTES SHA256` of what it sent.
const TCP_SOURCE: &str = "import socket, hashlib, os, sys
data = os.urandom(int(sys.argv[3]))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.sendall(data); s.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)";

/// Python that receives UDP datagrams on `PORT` until `WANT` intact ones
/// of `SIZE` bytes arrived or 3 s of silence, then for `EXTRA` seconds
/// more (copies of some that came twice; 0: none), and prints how many.
/// Its socket buffer is 8 MiB
/// (SO_RCVBUFFORCE, root in the test's namespace): a UDP_SEGMENT burst
/// reaches the pod as 16 datagrams in microseconds, and a Python reader
/// descheduled on a 2-core machine overflowed the default 208 KiB (the
/// pod's kernel counted them as `UdpRcvbufErrors`, not podswitch).
const UDP_SINK: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', int(sys.argv[1])))
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
s.settimeout(3); want, size, extra = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]); n = 0
def intact():
    d, _ = s.recvfrom(65535)
    return len(d) == size and d.count(d[:1]) == len(d)
print('ready', flush=True)
try:
    while n < want: n += intact()
    s.settimeout(extra)
    while extra > 0: n += intact()
except socket.timeout: pass
print(n, flush=True)";

/// How long [`udp_gso_datagrams`]' sink goes on listening once every
/// datagram sent has come, for one that came twice: a copy comes right
/// behind its original (the kernel and podswitch delivering the same
/// frame), and the source sends 1 ms apart.
const DUPLICATE_WAIT: &str = "0.05";

/// Python that sends `count` UDP datagrams of `size` bytes to `IP PORT`;
/// with `SEGMENTS` above 1, each send carries that many datagrams in one
/// buffer cut by the kernel's UDP segmentation offload (UDP_SEGMENT), and
/// leaves the pod as one super-frame where the veth allows it; with a
/// `SOURCE` after them, from a socket bound to that address.
const UDP_SOURCE: &str = "import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 6: s.bind((sys.argv[6], 0))
size, seg = int(sys.argv[4]), int(sys.argv[5])
if seg > 1: s.setsockopt(17, 103, size)  # SOL_UDP, UDP_SEGMENT
for i in range(int(sys.argv[3])):
    data = b''.join(bytes([(i * seg + j) % 256]) * size for j in range(seg))
    s.sendto(data, (sys.argv[1], int(sys.argv[2]))); time.sleep(0.001)";

/// Python that reads numbered datagrams on `PORT` ([`UDP_BURST`]'s) until
/// `WANT` came or 3 s passed without one, and prints the number of each
/// in the order read, -1 for one whose length or bytes are not what its
/// number says.
const UDP_NUMBERED_SINK: &str = "import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', int(sys.argv[1])))
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
s.settimeout(3); want, size = int(sys.argv[2]), int(sys.argv[3]); got = []
print('ready', flush=True)
try:
    while len(got) < want:
        d, _ = s.recvfrom(65535)
        n = struct.unpack('!I', d[:4])[0] if len(d) >= 4 else -1
        got.append(n if len(d) == size and d[4:] == bytes([n % 256]) * (size - 4) else -1)
except socket.timeout: pass
print(' '.join(map(str, got)), flush=True)";

/// Python that sends `COUNT` datagrams of `SIZE` bytes to `IP PORT` back
/// to back, each its number (4 bytes) and then that number's low byte.
const UDP_BURST: &str = "import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)  # SO_SNDBUFFORCE
size = int(sys.argv[4])
for n in range(int(sys.argv[3])):
    s.sendto(struct.pack('!I', n) + bytes([n % 256]) * (size - 4), (sys.argv[1], int(sys.argv[2])))";

/// Sends `count` numbered datagrams of `size` bytes from `from` to `to_ip`
/// back to back while `hold` holds them where they wait (`hold(true)`
/// before the burst, `hold(false)` after: a test stops the sending node's
/// dataplane, so that it finds the whole burst waiting and forwards it in
/// batches). Returns the numbers `to` read, in the order read (-1 for a
/// damaged datagram).
pub fn udp_burst(
    from: &(impl InNetns + ?Sized),
    to: &(impl InNetns + ?Sized),
    to_ip: &str,
    count: u32,
    size: usize,
    hold: impl Fn(bool),
) -> Vec<i64> {
    let mut sink = python(
        to,
        UDP_NUMBERED_SINK,
        &["5301", &count.to_string(), &size.to_string()],
    );
    let out = wait_ready(&mut sink);
    hold(true);
    udp_send(from, to_ip, 5301, count, size);
    hold(false);
    finish(sink, out)
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Sends `count` numbered datagrams of `size` bytes from `from` to
/// `to_ip`:`port` back to back, with no one to read them.
pub fn udp_send(from: &(impl InNetns + ?Sized), to_ip: &str, port: u16, count: u32, size: usize) {
    let source = python(
        from,
        UDP_BURST,
        &[
            to_ip,
            &port.to_string(),
            &count.to_string(),
            &size.to_string(),
        ],
    )
    .wait_with_output()
    .unwrap();
    assert!(
        source.status.success(),
        "{}",
        String::from_utf8_lossy(&source.stderr)
    );
}

fn python(ns: &(impl InNetns + ?Sized), script: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.netns(),
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3")
}

fn wait_ready(child: &mut Child) -> std::io::BufReader<std::process::ChildStdout> {
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "sink did not start");
    out
}

fn finish(child: Child, mut out: std::io::BufReader<std::process::ChildStdout>) -> String {
    use std::io::Read;
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    rest.trim().to_string()
}

/// Sends `bytes` over TCP from `from` to `to_ip` and checks that the
/// receiver got exactly those bytes (length and SHA-256). Returns an error
/// text instead of panicking so callers can add context.
pub fn tcp_transfer(
    from: &(impl InNetns + ?Sized),
    to: &(impl InNetns + ?Sized),
    to_ip: &str,
    bytes: usize,
) -> Result<(), String> {
    let mut sink = python(to, TCP_SINK, &["5201"]);
    let out = wait_ready(&mut sink);
    let source = python(from, TCP_SOURCE, &[to_ip, "5201", &bytes.to_string()])
        .wait_with_output()
        .unwrap();
    if !source.status.success() {
        let _ = sink.kill();
        return Err(format!(
            "sender: {}",
            String::from_utf8_lossy(&source.stderr)
        ));
    }
    let sent = String::from_utf8_lossy(&source.stdout).trim().to_string();
    let received = finish(sink, out);
    if sent != received {
        return Err(format!("sent {sent}, received {received}"));
    }
    Ok(())
}

/// Sends `count` UDP datagrams of `size` bytes and returns how many the
/// receiver counted.
pub fn udp_datagrams(
    from: &(impl InNetns + ?Sized),
    to: &(impl InNetns + ?Sized),
    to_ip: &str,
    count: u32,
    size: usize,
) -> u32 {
    udp_gso_datagrams(from, to, to_ip, count, 1, size)
}

/// Sends `sends` buffers of `segments` UDP datagrams of `size` bytes each
/// with UDP_SEGMENT (see [`UDP_SOURCE`]); returns how many whole, intact
/// datagrams the receiver counted, those that came twice twice (what
/// callers compare with the number sent).
pub fn udp_gso_datagrams(
    from: &(impl InNetns + ?Sized),
    to: &(impl InNetns + ?Sized),
    to_ip: &str,
    sends: u32,
    segments: u32,
    size: usize,
) -> u32 {
    send_udp_datagrams(from, None, to, to_ip, sends, segments, size)
}

/// [`udp_datagrams`] from a socket bound to `source_ip`, one of the
/// sending namespace's own addresses.
pub fn udp_datagrams_from(
    from: &(impl InNetns + ?Sized),
    source_ip: &str,
    to: &(impl InNetns + ?Sized),
    to_ip: &str,
    count: u32,
    size: usize,
) -> u32 {
    send_udp_datagrams(from, Some(source_ip), to, to_ip, count, 1, size)
}

fn send_udp_datagrams(
    from: &(impl InNetns + ?Sized),
    source_ip: Option<&str>,
    to: &(impl InNetns + ?Sized),
    to_ip: &str,
    sends: u32,
    segments: u32,
    size: usize,
) -> u32 {
    let sink = UdpSink::start_counting_extra(to, 5300, sends * segments, size, DUPLICATE_WAIT);
    let (sends, size, segments) = (sends.to_string(), size.to_string(), segments.to_string());
    let mut args = vec![to_ip, "5300", &sends, &size, &segments];
    args.extend(source_ip);
    let source = python(from, UDP_SOURCE, &args).wait_with_output().unwrap();
    assert!(
        source.status.success(),
        "{}",
        String::from_utf8_lossy(&source.stderr)
    );
    sink.count()
}

/// A UDP receiver in a namespace ([`UDP_SINK`]): counts intact datagrams
/// of one size (every byte the same) on one port.
pub struct UdpSink {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl UdpSink {
    /// Listens on `port` in `ns`, ready when this returns, until `want`
    /// datagrams of `size` bytes arrived or 3 s passed without one.
    pub fn start(ns: &(impl InNetns + ?Sized), port: u16, want: u32, size: usize) -> UdpSink {
        UdpSink::start_counting_extra(ns, port, want, size, "0")
    }

    /// [`UdpSink::start`], that goes on counting for `extra_secs` once
    /// `want` came (datagrams that came more than once).
    fn start_counting_extra(
        ns: &(impl InNetns + ?Sized),
        port: u16,
        want: u32,
        size: usize,
        extra_secs: &str,
    ) -> UdpSink {
        let mut child = python(
            ns,
            UDP_SINK,
            &[
                &port.to_string(),
                &want.to_string(),
                &size.to_string(),
                extra_secs,
            ],
        );
        let out = wait_ready(&mut child);
        UdpSink { child, out }
    }

    /// How many arrived.
    pub fn count(self) -> u32 {
        finish(self.child, self.out).parse().unwrap_or(0)
    }
}

/// The matrix's checks on one dataplane, each naming its path (the
/// sender's name, the destination's address) and, only when it fails, the
/// dataplane's logs.
struct Checks<'a, S: Sites> {
    dataplane: &'a S,
    label: &'a str,
}

impl<S: Sites> Checks<'_, S> {
    fn failed(&self, what: &str, from: &str, to: &str) -> String {
        format!(
            "{what} {}: {from} -> {to}\n{}",
            self.label,
            self.dataplane.logs()
        )
    }

    fn ping(&self, from: &str, from_name: &str, to_ip: &str) {
        if let Err(out) = ping_answered(from, to_ip, 2) {
            panic!("{out}{}", self.failed("ping", from_name, to_ip));
        }
    }

    fn udp(&self, from: &str, from_name: &str, to: &str, to_ip: &str) {
        let got = udp_datagrams(from, to, to_ip, DATAGRAMS, 1000);
        assert_eq!(got, DATAGRAMS, "{}", self.failed("UDP", from_name, to_ip));
    }

    fn tcp(&self, from: &str, from_name: &str, to: &str, to_ip: &str) {
        tcp_transfer(from, to, to_ip, TCP_BYTES)
            .unwrap_or_else(|e| panic!("{e}: {}", self.failed("TCP", from_name, to_ip)));
    }
}

/// Between every pair of pods, on one node and across nodes: ping, UDP
/// both ways, TCP with its checksum (the first half of
/// [`traffic_matrix`], for a dataplane that carries only pods' traffic).
pub fn pods_reach_each_other(dataplane: &impl Sites, label: &str) {
    let check = Checks { dataplane, label };
    let pods = dataplane.pods();
    for a in &pods {
        for b in pods.iter().filter(|b| b.ip != a.ip) {
            check.ping(&a.netns, &a.ip, &b.ip);
            check.udp(&a.netns, &a.ip, &b.netns, &b.ip);
        }
    }
    for (i, a) in pods.iter().enumerate() {
        for b in &pods[i + 1..] {
            check.tcp(&a.netns, &a.ip, &b.netns, &b.ip);
        }
    }
}

/// Between every pair of pods (same node and across nodes) and between
/// each node's own stack and pods: ping, UDP both ways, TCP with its
/// checksum. The same scenario runs against every dataplane that can
/// describe itself as [`Sites`], podswitch's and the kernel's alike (as
/// Open vSwitch runs system-traffic.at against each datapath).
pub fn traffic_matrix(dataplane: &impl Sites, label: &str) {
    let check = Checks { dataplane, label };
    pods_reach_each_other(dataplane, label);
    let pods = dataplane.pods();
    // The node's own stack reaches pods on every node (what `curl <pod
    // IP>` on a node does), and a pod on another node reaches it back.
    for (n, node) in dataplane.nodes().iter().enumerate() {
        for pod in &pods {
            check.ping(&node.netns, &node.name, &pod.ip);
        }
        let remote = pods
            .iter()
            .find(|p| p.node != n)
            .expect("a pod on another node");
        check.tcp(&node.netns, &node.name, &remote.netns, &remote.ip);
        check.udp(&node.netns, &node.name, &remote.netns, &remote.ip);
        check.udp(&remote.netns, &remote.ip, &node.netns, &node.address);
        // A process of the node's bound to the node's underlay address (a
        // host-network pod, say) reaches a pod on another node, once each.
        let got = udp_datagrams_from(
            &node.netns,
            &node.underlay_ip,
            &remote.netns,
            &remote.ip,
            DATAGRAMS,
            1000,
        );
        let from = format!("{} bound to {}", node.name, node.underlay_ip);
        assert_eq!(got, DATAGRAMS, "{}", check.failed("UDP", &from, &remote.ip));
    }
}

/// Path MTU across a tunnel of `tunnel_mtu` (DESIGN.md: 1450 for
/// VXLAN): with a pod's own MTU raised to 1500 so that the oversized
/// packet leaves the pod, a ping with DF set of exactly `tunnel_mtu`
/// bytes crosses to a pod on another node and one byte more is answered
/// by the gateway with ICMP "fragmentation needed" naming `tunnel_mtu`
/// (RFC 1191), as the kernel's vxlan device does. The pod's own MTU is
/// put back after.
pub fn path_mtu_is_told(dataplane: &impl Sites, tunnel_mtu: u32, label: &str) {
    let pods = dataplane.pods();
    let a = &pods[0];
    let b = pods
        .iter()
        .find(|p| p.node != a.node)
        .expect("a pod on another node");
    let eth0_mtu = |mtu: u32| {
        super::run(
            "ip",
            &[
                "-n",
                &a.netns,
                "link",
                "set",
                "eth0",
                "mtu",
                &mtu.to_string(),
            ],
        )
    };
    let ping_df = |payload: u32| {
        Command::new("ip")
            .args([
                "netns", "exec", &a.netns, "ping", "-n", "-c", "1", "-W", "2",
            ])
            .args(["-M", "do", "-s", &payload.to_string(), &b.ip])
            .output()
            .unwrap()
    };
    let shown = super::stdout_of("ip", &["-n", &a.netns, "-o", "link", "show", "eth0"]);
    let pod_mtu: u32 = shown
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MTU in {shown:?}"));
    eth0_mtu(1500);
    // 20 bytes of IPv4 header and 8 of ICMP around the payload.
    let fits = ping_df(tunnel_mtu - 28);
    let too_big = ping_df(tunnel_mtu - 27);
    eth0_mtu(pod_mtu);
    assert!(
        fits.status.success(),
        "{label}: {tunnel_mtu} bytes with DF must cross: {}\n{}",
        String::from_utf8_lossy(&fits.stdout),
        dataplane.logs()
    );
    let text = String::from_utf8_lossy(&too_big.stdout);
    assert!(
        !too_big.status.success()
            && text.contains(&format!("Frag needed and DF set (mtu = {tunnel_mtu})")),
        "{label}: one byte more must get ICMP fragmentation needed with MTU {tunnel_mtu}: {text}\n{}",
        dataplane.logs()
    );
}

/// One of a namespace's kernel counters (`nstat -az NAME`), since the
/// namespace was made.
pub fn kernel_counter(ns: &(impl InNetns + ?Sized), name: &str) -> u64 {
    let nstat = super::run("ip", &["netns", "exec", ns.netns(), "nstat", "-az", name]);
    String::from_utf8_lossy(&nstat.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
