//! Kernel ports driven by the test directly, without a daemon: what a
//! receive reports to the worker (needs root; CI has it).

mod common;

use std::net::Ipv4Addr;

use common::{require, Netns};
use podswitch_engine::config::NodeConfig;
use podswitch_engine::drop::DropReason;
use podswitch_engine::kernel_port::{AfPacketPort, HostPort, HostPortOptions};
use podswitch_engine::packet::{PacketBuf, PacketPool, BATCH_SIZE, DEFAULT_BUF_SIZE};
use podswitch_engine::port::{Port, PortId};
use podswitch_engine::sys::mmsg::Received;
use podswitch_engine::tables::Tables;
use podswitch_host::netlink::in_netns;

/// The source MAC of [`frame`]: the made-up pod that sends.
const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// An Ethernet frame of `len` bytes from one made-up pod to another.
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&SENDER_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

/// Packet socket options for the tests' own frames: every protocol,
/// no virtio-net header.
fn raw_frames() -> podswitch_engine::sys::packet_socket::PacketOptions {
    use podswitch_engine::sys::packet_socket::{PacketOptions, ETH_P_ALL};
    PacketOptions {
        protocol: ETH_P_ALL,
        vnet_hdr: false,
        ..PacketOptions::default()
    }
}

/// A namespace with a veth pair rx0/tx0 (MTU 9000) and nothing else on
/// the link.
fn veth_pair() -> Netns {
    let ns = Netns::new("afp");
    ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    ns.ip(&["link", "add", "rx0", "type", "veth", "peer", "name", "tx0"]);
    for dev in ["rx0", "tx0"] {
        ns.ip(&["link", "set", dev, "mtu", "9000", "up"]);
    }
    ns
}

/// An AF_PACKET port on `rx0` of `ns`, and the tables it counts in.
fn af_packet_port(ns: &Netns) -> (std::sync::Arc<Tables>, AfPacketPort) {
    let node = NodeConfig::flannel(
        "node1",
        "10.244.1.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, 1),
    );
    let tables = Tables::new(node, 4);
    let path = format!("/var/run/netns/{}", ns.name);
    let stats = std::sync::Arc::clone(&tables.stats);
    let port = in_netns(&path, move || {
        AfPacketPort::open("rx0", PortId(1), stats, true)
    })
    .expect("an AF_PACKET port on the veth");
    (tables, port)
}

/// Reads `port` until it reports nothing read; returns the frames read.
fn read_all(port: &mut dyn Port) -> std::io::Result<usize> {
    let mut pool = PacketPool::with_large(256, DEFAULT_BUF_SIZE, 0);
    let mut batch = Vec::new();
    let mut read = 0;
    loop {
        let got = port.recv(&mut pool, &mut batch)?;
        pool.free_all(&mut batch);
        if got == 0 {
            return Ok(read);
        }
        read += got;
    }
}

/// Every one of `sent` frames was read or counted as dropped by the kernel
/// (`rx_queue_full`), and some were dropped.
fn assert_read_or_counted(tables: &Tables, read: usize, sent: usize) {
    let counted = tables.stats.snapshot().drop_count(DropReason::RxQueueFull);
    assert!(
        read < sent,
        "the queue never overflowed: read {read} of {sent}"
    );
    assert_eq!(
        read as u64 + counted,
        sent as u64,
        "read {read}, counted {counted} dropped by the kernel, of {sent} sent"
    );
}

/// Frames the kernel drops because the port's socket is full are counted
/// (`rx_queue_full`): every frame sent is either read or counted.
#[test]
fn frames_the_kernel_dropped_for_a_full_socket_are_counted() {
    require(&["ip", "sysctl", "/usr/bin/python3"]);
    let ns = veth_pair();
    let (tables, mut port) = af_packet_port(&ns);
    // Far more than the socket's receive buffer (4 MiB, doubled by the
    // kernel) holds while nobody reads.
    const SENT: usize = 12_000;
    send_into_tx0(&ns, &frame(1400), SENT, None);
    let read = read_all(&mut port).unwrap();
    assert_read_or_counted(&tables, read, SENT);
}

/// Packets the node's stack sends to the host port's TUN device while
/// podswitch does not read are dropped by the kernel at the device's
/// queue, and counted (`rx_queue_full`): every packet sent is read or
/// counted.
#[test]
fn packets_the_kernel_dropped_at_a_full_tun_queue_are_counted() {
    require(&["ip", "sysctl", "/usr/bin/python3"]);
    let ns = Netns::new("tunq");
    ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    let node = NodeConfig::flannel(
        "node1",
        "10.244.1.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, 1),
    );
    let gateway_mac = node.gateway_mac;
    let tables = Tables::new(node, 4);
    let stats = std::sync::Arc::clone(&tables.stats);
    let path = format!("/var/run/netns/{}", ns.name);
    let port = in_netns(&path, move || {
        HostPort::open(
            &HostPortOptions {
                name: "pswtun0".into(),
                mtu: 1450,
                address: Ipv4Addr::new(10, 244, 1, 1),
                tunnel_address: Some(Ipv4Addr::new(10, 244, 1, 0)),
                gateway_mac,
                multi_queue: false,
            },
            PortId(1),
            stats,
        )
    })
    .expect("a host port in the namespace");
    let route = ns.ip(&["route", "add", "10.244.0.0/16", "dev", "pswtun0"]);
    assert!(route.status.success(), "route: {route:?}");
    // Far more than the device's queue (tx_queue_len 500) holds.
    const SENT: usize = 3000;
    let count = SENT.to_string();
    ns.exec(
        "/usr/bin/python3",
        &[
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             for _ in range(int(sys.argv[1])): s.sendto(b'x' * 100, ('10.244.2.2', 9))",
            &count,
        ],
    );
    // Read as podswitchd's worker does: in the namespace of the device,
    // whose counters it reads.
    let mut port = port;
    let read = in_netns(&path, move || read_all(&mut port)).expect("reading the host port");
    assert_read_or_counted(&tables, read, SENT);
}

/// A whole batch the port had to drop (frames longer than a small buffer,
/// with no super-frame buffer left to take them) still counts as read, so
/// that the worker reads on: reported as nothing, it took the socket for
/// empty and left the frames behind the batch queued until the next
/// arrival.
#[test]
fn an_af_packet_port_reports_a_batch_it_dropped_whole_as_read() {
    require(&["ip", "sysctl", "/usr/bin/python3"]);
    // Nothing but the test's frames on the link.
    let ns = veth_pair();
    let (tables, mut port) = af_packet_port(&ns);
    let mut frames = vec![frame(3000); BATCH_SIZE + 1];
    frames.push(frame(100));
    ns.send_raw("tx0", &frames);

    // No super-frame buffer: each 3000-byte frame is cut and dropped.
    let mut pool = PacketPool::with_large(256, DEFAULT_BUF_SIZE, 0);
    let mut batch = Vec::new();
    assert_eq!(port.recv(&mut pool, &mut batch).unwrap(), BATCH_SIZE);
    assert!(batch.is_empty(), "every frame of the first batch dropped");
    assert_eq!(port.recv(&mut pool, &mut batch).unwrap(), 2);
    assert_eq!(batch.len(), 1, "the short frame behind them");
    assert_eq!(batch[0].frame(), &frame(100)[..]);
    let stats = tables.stats.snapshot();
    assert_eq!(
        stats.drop_count(DropReason::PoolExhausted),
        BATCH_SIZE as u64 + 1
    );
    assert_eq!(port.recv(&mut pool, &mut batch).unwrap(), 0, "then empty");
    pool.free_all(&mut batch);
}

/// Receive buffers for whole frames, one per message.
struct Frames(Vec<Vec<u8>>);

impl podswitch_engine::sys::mmsg::RecvBuffers for Frames {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn parts(&mut self, i: usize) -> [&mut [u8]; podswitch_engine::sys::mmsg::MAX_PARTS] {
        [&mut self.0[i], &mut [], &mut []]
    }
}

/// Up to 64 messages of up to 2 KiB that one `recv_batch` (of a packet
/// or an IPv4 socket) gives, each cut to its length.
fn received(
    recv_batch: impl FnOnce(&mut Frames, &mut [Received]) -> std::io::Result<usize>,
) -> Vec<Vec<u8>> {
    let mut bufs = Frames(vec![vec![0; 2048]; 64]);
    let mut meta = [Received::default(); 64];
    let got = recv_batch(&mut bufs, &mut meta).unwrap();
    bufs.0
        .into_iter()
        .zip(meta)
        .take(got)
        .map(|(mut buf, m)| {
            buf.truncate(m.len);
            buf
        })
        .collect()
}

/// The CPUs named in byte 14 of the test's own frames (from
/// [`SENDER_MAC`]) among `frames`.
fn sending_cpus<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    frames
        .into_iter()
        .filter(|f| f.len() > 14 && f[6..12] == SENDER_MAC)
        .map(|f| f[14])
        .collect()
}

/// The CPUs of this machine, after checking the test can tell them apart
/// (root, the tools to send from a pinned process, and at least two).
fn cpus_to_tell_apart() -> usize {
    require(&["ip", "sysctl", "taskset", "/usr/bin/python3"]);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        cpus >= 2,
        "this test needs at least 2 CPUs to tell the receivers of each CPU's frames apart (found {cpus})"
    );
    cpus
}

/// Receiver `member` got `per_cpu` frames from CPU `member` and none from
/// the others, given the CPU each frame it got came from.
fn assert_only_its_cpu(
    member: usize,
    cpus: usize,
    per_cpu: usize,
    origins: impl IntoIterator<Item = u8>,
) {
    let mut from_cpu = vec![0; cpus];
    for cpu in origins {
        from_cpu[usize::from(cpu)] += 1;
    }
    let mut want = vec![0; cpus];
    want[member] = per_cpu;
    assert_eq!(
        from_cpu, want,
        "receiver {member} got frames sent from these CPUs"
    );
}

/// A CPU-mode fanout group hands each frame to the member numbered as the
/// CPU that received it: a frame a process pinned to CPU k sends into a
/// veth reaches member k on the other end, and no other member. This is
/// what lets a worker pinned to CPU k be woken on the CPU the frame
/// arrived on.
#[test]
fn a_cpu_fanout_group_gives_each_cpu_its_own_member() {
    use podswitch_engine::sys::packet_socket::PacketSocket;

    let cpus = cpus_to_tell_apart();
    let ns = veth_pair();
    let path = format!("/var/run/netns/{}", ns.name);
    let members = in_netns(&path, move || {
        let options = raw_frames();
        let ifindex = podswitch_engine::sys::netdev::ifindex("rx0")?;
        let first = PacketSocket::open(ifindex, options)?;
        let others = first.fan_out_by_cpu(cpus - 1, options)?;
        Ok(std::iter::once(first).chain(others).collect::<Vec<_>>())
    })
    .expect("a fanout group on the veth");

    const PER_CPU: usize = 5;
    send_from_each_cpu(&ns, cpus, PER_CPU);
    for (member, sock) in members.iter().enumerate() {
        let frames = received(|bufs, meta| sock.recv_batch(bufs, meta));
        let cpus_seen = sending_cpus(frames.iter().map(Vec::as_slice));
        assert_only_its_cpu(member, cpus, PER_CPU, cpus_seen);
    }
}

/// A reuseport group steered by CPU hands each datagram to the socket
/// numbered as the CPU that received it: datagrams a process pinned to
/// CPU k sends reach socket k and no other (over loopback the receive
/// runs on the sender's CPU, as over a veth).
#[test]
fn a_udp_group_by_cpu_gives_each_cpu_its_own_socket() {
    use podswitch_engine::sys::inet::InetSocket;
    use std::net::SocketAddrV4;

    let cpus = cpus_to_tell_apart();
    let ns = Netns::new("reuse");
    ns.ip(&["link", "set", "lo", "up"]);
    let path = format!("/var/run/netns/{}", ns.name);
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8472);
    let group = in_netns(&path, move || InetSocket::udp_bound_by_cpu(addr, cpus))
        .expect("a reuseport group on the loopback");
    const PER_CPU: usize = 5;
    for cpu in 0..cpus {
        let (cpu_arg, count) = (cpu.to_string(), PER_CPU.to_string());
        ns.exec(
            "taskset",
            &[
                "-c",
                &cpu_arg,
                "/usr/bin/python3",
                "-c",
                "import socket, sys\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 for _ in range(int(sys.argv[2])): s.sendto(bytes([int(sys.argv[1])]), ('127.0.0.1', 8472))",
                &cpu_arg,
                &count,
            ],
        );
    }
    for (member, sock) in group.iter().enumerate() {
        let datagrams = received(|bufs, meta| sock.recv_batch(bufs, meta));
        assert_only_its_cpu(member, cpus, PER_CPU, datagrams.iter().map(|d| d[0]));
    }
}

/// From a process pinned to each CPU in turn, sends `per_cpu` frames
/// into `tx0` of `ns`, each naming in its byte 14 the CPU it was sent
/// from.
fn send_from_each_cpu(ns: &Netns, cpus: usize, per_cpu: usize) {
    for cpu in 0..cpus {
        let mut f = frame(64);
        f[14] = cpu as u8;
        send_into_tx0(ns, &f, per_cpu, Some(cpu));
    }
}

/// Sends `frame` `count` times into `tx0` of `ns` through a packet socket
/// of a Python process, pinned to `cpu` if one is given.
fn send_into_tx0(ns: &Netns, frame: &[u8], count: usize, cpu: Option<usize>) {
    let hex = podswitch_encap::hex::encode(frame);
    let count = count.to_string();
    let cpu = cpu.map(|c| c.to_string());
    let mut args: Vec<&str> = match &cpu {
        Some(cpu) => vec!["-c", cpu, "/usr/bin/python3"],
        None => Vec::new(),
    };
    args.extend([
        "-c",
        "import socket, sys\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind((sys.argv[1], 0))\n\
         f = bytes.fromhex(sys.argv[2])\n\
         for _ in range(int(sys.argv[3])): s.send(f)",
        "tx0",
        &hex,
        &count,
    ]);
    let program = if cpu.is_some() {
        "taskset"
    } else {
        "/usr/bin/python3"
    };
    ns.exec(program, &args);
}

/// An AF_PACKET pod port split by CPU ([`Port::fan_out`]): member k
/// receives the flows sent from CPU k and no others; a flow read by one
/// member stays there, even when its frames come from another CPU, until
/// that member's worker says it has forwarded them ([`Port::forwarded`]);
/// and every member sends.
#[test]
fn a_pod_port_split_by_cpu_gives_each_cpu_its_own_member() {
    use podswitch_engine::sys::packet_socket::{PacketOptions, PacketSocket};

    let cpus = cpus_to_tell_apart();
    let ns = veth_pair();
    let (_tables, port) = af_packet_port(&ns);
    let path = format!("/var/run/netns/{}", ns.name);
    let (port, others, peer) = in_netns(&path, move || {
        let mut port = port;
        let others = port.fan_out(cpus)?;
        // What the members send comes out of the veth's other end.
        let peer = PacketSocket::open(
            podswitch_engine::sys::netdev::ifindex("tx0")?,
            PacketOptions {
                vnet_hdr: false,
                ..PacketOptions::default()
            },
        )?;
        Ok((port, others, peer))
    })
    .expect("the pod port split by CPU");
    assert_eq!(others.len(), cpus - 1);
    let mut members: Vec<Box<dyn Port>> = vec![Box::new(port)];
    members.extend(others);

    // A flow per CPU, each frame marked with the CPU it is sent from.
    const PER_CPU: usize = 5;
    for cpu in 0..cpus {
        let flow = udp_frame(10 + cpu as u8, 1000, cpu as u8);
        send_into_tx0(&ns, &flow, PER_CPU, Some(cpu));
    }
    let mut pool = PacketPool::with_large(256, DEFAULT_BUF_SIZE, 0);
    let mut read = |port: &mut Box<dyn Port>| -> Vec<u8> {
        let mut batch = Vec::new();
        port.recv(&mut pool, &mut batch).unwrap();
        let frames: Vec<Vec<u8>> = batch.iter().map(|buf| buf.frame().to_vec()).collect();
        pool.free_all(&mut batch);
        markers(&frames)
    };
    for (member, port) in members.iter_mut().enumerate() {
        let cpus_seen = read(port);
        assert_only_its_cpu(member, cpus, PER_CPU, cpus_seen);
        port.forwarded();
    }

    // A flow member 0 has read but not yet forwarded stays with it.
    send_into_tx0(&ns, &udp_frame(30, 1000, 1), 1, Some(0));
    assert_eq!(read(&mut members[0]), [1]);
    send_into_tx0(&ns, &udp_frame(30, 1000, 2), 1, Some(1));
    assert_eq!(read(&mut members[1]), [0u8; 0], "held for member 0");
    assert_eq!(read(&mut members[0]), [2]);
    members[0].forwarded();
    std::thread::sleep(podswitch_engine::sys::flow_steer::DEFAULT_GAP);
    send_into_tx0(&ns, &udp_frame(30, 1000, 3), 1, Some(1));
    assert_eq!(read(&mut members[1]), [3], "forwarded: it follows its CPU");
    let mut pool = PacketPool::with_large(256, DEFAULT_BUF_SIZE, 0);

    for (member, port) in members.iter_mut().enumerate() {
        let mut f = frame(64);
        f[14] = member as u8;
        let mut batch = vec![pool.alloc_with(PortId(1), &f).unwrap()];
        assert_eq!(
            port.send(&mut batch, &mut pool).unwrap(),
            1,
            "member {member} sends"
        );
    }
    let frames = received(|bufs, meta| peer.recv_batch(bufs, meta));
    let mut senders = sending_cpus(frames.iter().map(Vec::as_slice));
    senders.sort_unstable();
    assert_eq!(senders, (0..cpus as u8).collect::<Vec<_>>());
}

/// A UDP frame from the made-up pod, from `10.244.1.<source>:<port>` to
/// 10.244.1.3:2000, whose first payload byte is `marker`.
fn udp_frame(source: u8, port: u16, marker: u8) -> Vec<u8> {
    let mut f = frame(64);
    f[14] = 0x45; // IPv4, a 20-byte header
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 244, 1, source]);
    f[30..34].copy_from_slice(&[10, 244, 1, 3]);
    f[34..36].copy_from_slice(&port.to_be_bytes());
    f[36..38].copy_from_slice(&2000u16.to_be_bytes());
    f[38..40].copy_from_slice(&30u16.to_be_bytes());
    f[42] = marker;
    f
}

/// The markers of the test's own UDP frames among `frames`.
fn markers(frames: &[Vec<u8>]) -> Vec<u8> {
    frames
        .iter()
        .filter(|f| f.len() > 42 && f[6..12] == SENDER_MAC)
        .map(|f| f[42])
        .collect()
}

/// A fanout group on `rx0` of `ns` with a member per CPU, steered by
/// flow with a quiet gap of `gap`; and a reader for each member that
/// reports its progress and returns the markers of what it read.
fn flow_group(ns: &Netns, cpus: usize, gap: std::time::Duration) -> impl Fn(usize) -> Vec<u8> {
    use podswitch_engine::sys::flow_steer::{self, FlowSteering};
    use podswitch_engine::sys::packet_socket::PacketSocket;

    let path = format!("/var/run/netns/{}", ns.name);
    let (members, steering) = in_netns(&path, move || {
        let options = raw_frames();
        let ifindex = podswitch_engine::sys::netdev::ifindex("rx0")?;
        let steering = FlowSteering::new(flow_steer::Group::Fanout, cpus, gap)?;
        let first = PacketSocket::open(ifindex, options)?;
        let others = first.fan_out_by_flow(cpus - 1, options, &steering)?;
        Ok((
            std::iter::once(first).chain(others).collect::<Vec<_>>(),
            steering,
        ))
    })
    .expect("a fanout group steered by flow on the veth");
    move |member: usize| -> Vec<u8> {
        let progress = steering.progress(member);
        let mark = progress.steered();
        let frames = received(|bufs, meta| members[member].recv_batch(bufs, meta));
        progress.read(mark, frames.len(), frames.len() < 64);
        markers(&frames)
    }
}

/// A fanout group steered by flow keeps a flow on the member that has its
/// frames until that member's reader has read them, and only then lets
/// it follow the CPU it arrives on: frames sent from CPU 1 after frames
/// of the same flow from CPU 0 wait behind them in member 0's queue, so
/// the flow stays in order; a new flow from CPU 1 goes to member 1; and
/// once member 0 has read, the first flow moves to member 1 too.
#[test]
fn a_flow_group_moves_a_flow_only_once_its_member_has_read_it() {
    let cpus = cpus_to_tell_apart();
    let ns = veth_pair();
    let read = flow_group(&ns, cpus, std::time::Duration::ZERO);

    // Flow A: three frames from CPU 0, then three from CPU 1.
    for (cpu, marker) in [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)] {
        send_into_tx0(&ns, &udp_frame(2, 1000, marker), 1, Some(cpu));
    }
    // Flow B, new, from CPU 1.
    for marker in [11, 12, 13] {
        send_into_tx0(&ns, &udp_frame(4, 1001, marker), 1, Some(1));
    }
    assert_eq!(
        read(0),
        [1, 2, 3, 4, 5, 6],
        "flow A, in order, on member 0 (its frames from CPU 1 wait behind those from CPU 0)"
    );
    // Member 0 has read flow A: its next frame from CPU 1 goes to member 1.
    send_into_tx0(&ns, &udp_frame(2, 1000, 7), 1, Some(1));
    assert_eq!(
        read(1),
        [11, 12, 13, 7],
        "member 1: the new flow B from CPU 1, then flow A once member 0 had read it"
    );
    for member in 0..cpus {
        assert_eq!(read(member), [0u8; 0], "member {member} has nothing left");
    }
}

/// Sends `frame` `count` times into `tx0` of `ns` from CPU `cpu` (of
/// `cpus`) through trafgen's packet ring: such a frame reaches the other
/// end with nothing past its Ethernet header in the skb's linear part
/// (`tpacket_fill_skb` puts the rest in pages), as the bench's
/// generators' frames do.
fn send_through_a_ring(ns: &Netns, frame: &[u8], count: usize, cpu: usize, cpus: usize) {
    let bytes: Vec<String> = frame.iter().map(|b| format!("{b:#04x}")).collect();
    let conf = common::TempFile::new("ring.trafgen");
    std::fs::write(&conf.0, format!("cpu({cpu}): {{ {} }}\n", bytes.join(", "))).unwrap();
    let conf_path = conf.0.to_str().unwrap().to_string();
    let (cpus, count) = (cpus.to_string(), count.to_string());
    ns.exec(
        "trafgen",
        &[
            "-o", "tx0", "-i", &conf_path, "-P", &cpus, "-n", &count, "-q",
        ],
    );
}

/// The steering program reads a flow's addresses and ports from a frame
/// whose headers are not in the skb's linear part too (a sender's packet
/// ring): a new flow from CPU 1 goes to member 1 while member 0 still
/// holds another flow's unread frames. Had the program failed to read
/// the headers, both flows would share bucket 0, and the new one would
/// wait behind the other on member 0.
#[test]
fn a_flow_group_tells_flows_apart_in_frames_sent_through_a_ring() {
    require(&["trafgen"]);
    let cpus = cpus_to_tell_apart();
    let ns = veth_pair();
    let read = flow_group(&ns, cpus, std::time::Duration::ZERO);
    send_through_a_ring(&ns, &udp_frame(2, 1000, 1), 3, 0, cpus);
    send_through_a_ring(&ns, &udp_frame(4, 1001, 11), 3, 1, cpus);
    assert_eq!(read(0), [1, 1, 1], "member 0: the first flow, from CPU 0");
    assert_eq!(read(1), [11, 11, 11], "member 1: the new flow, from CPU 1");
}

/// A flow moves to another member only after it has been quiet for the
/// group's gap, even once its member has read all of it: a frame still
/// on its way through the kernel from the old member's CPU could
/// otherwise be overtaken.
#[test]
fn a_flow_group_moves_a_flow_only_after_a_quiet_gap() {
    let cpus = cpus_to_tell_apart();
    let ns = veth_pair();
    let gap = std::time::Duration::from_millis(700);
    let read = flow_group(&ns, cpus, gap);

    let sent = std::time::Instant::now();
    send_into_tx0(&ns, &udp_frame(2, 1000, 1), 1, Some(0));
    assert_eq!(read(0), [1]);
    send_into_tx0(&ns, &udp_frame(2, 1000, 2), 1, Some(1));
    assert!(
        sent.elapsed() < gap,
        "sending two frames took {:?}, longer than the test's gap",
        sent.elapsed()
    );
    assert_eq!(
        read(0),
        [2],
        "within the gap the flow stays on member 0, though member 0 has read it"
    );
    std::thread::sleep(gap);
    send_into_tx0(&ns, &udp_frame(2, 1000, 3), 1, Some(1));
    assert_eq!(read(1), [3], "after a quiet gap the flow follows its CPU");
    assert_eq!(read(0), [0u8; 0]);
}

/// Frames to send in one batch, each behind nothing (no virtio-net
/// header), on the socket's bound interface.
struct Outgoing(Vec<Vec<u8>>);

impl podswitch_engine::sys::mmsg::SendBuffers for Outgoing {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn parts(&self, i: usize) -> [&[u8]; podswitch_engine::sys::mmsg::MAX_PARTS] {
        [&self.0[i], &[], &[]]
    }

    fn destination(&self, _: usize) -> Option<std::net::SocketAddrV4> {
        None
    }
}

/// A fanout group steered by flow gives each frame to one member, even
/// while it fills: the kernel lets only a bound socket join, and a bound
/// socket takes frames on its own until it has joined, so a member that
/// kept those would hold copies of frames the group gave another member
/// too. Frames numbered one by one flood the veth while groups are made,
/// and no number is read twice in a group.
#[test]
fn a_flow_group_filling_under_a_flood_reads_no_frame_twice() {
    use podswitch_engine::sys::flow_steer::{self, FlowSteering};
    use podswitch_engine::sys::packet_socket::{PacketOptions, PacketSocket};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    cpus_to_tell_apart();
    const GROUPS: usize = 20;
    const MEMBERS: usize = 4;
    let ns = veth_pair();
    let path = format!("/var/run/netns/{}", ns.name);
    let groups = in_netns(&path, move || {
        let listen = raw_frames();
        // Protocol 0: it sends, and takes no frame itself.
        let send_only = PacketOptions {
            protocol: 0,
            vnet_hdr: false,
            rcvbuf: 1 << 16,
        };
        let rx0 = podswitch_engine::sys::netdev::ifindex("rx0")?;
        let sender = PacketSocket::open(podswitch_engine::sys::netdev::ifindex("tx0")?, send_only)?;
        let mut groups = Vec::new();
        for _ in 0..GROUPS {
            let steering = FlowSteering::new(
                flow_steer::Group::Fanout,
                MEMBERS,
                std::time::Duration::ZERO,
            )?;
            let first = PacketSocket::open(rx0, listen)?;
            podswitch_engine::sys::sched::pin_to_cpu(0)?;
            let (stop, sent) = (AtomicBool::new(false), AtomicU32::new(0));
            let (members, during_joins) = std::thread::scope(|scope| {
                // The thread starts in this one's namespace. The two are
                // kept apart on CPUs 0 and 1: frames must flow while the
                // members join.
                scope.spawn(|| {
                    podswitch_engine::sys::sched::pin_to_cpu(1).expect("the sender on CPU 1");
                    let mut next = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let batch = Outgoing(
                            (next..next + 4)
                                .map(|n| {
                                    let mut f = udp_frame(2, 1000, 0);
                                    f[42..46].copy_from_slice(&n.to_be_bytes());
                                    f
                                })
                                .collect(),
                        );
                        next += sender.send_batch(&batch).unwrap_or(0) as u32;
                        sent.store(next, Ordering::Release);
                    }
                });
                let wait_for_frames = |from: u32| {
                    while sent.load(Ordering::Acquire) < from + 64 {
                        std::hint::spin_loop();
                    }
                };
                wait_for_frames(0);
                let before = sent.load(Ordering::Acquire);
                let others = first.fan_out_by_flow(MEMBERS - 1, listen, &steering);
                let during_joins = sent.load(Ordering::Acquire) - before;
                wait_for_frames(sent.load(Ordering::Acquire));
                stop.store(true, Ordering::Relaxed);
                (others, during_joins)
            });
            let members: Vec<PacketSocket> = std::iter::once(first).chain(members?).collect();
            // Each member read to the end: numbers and how many frames.
            let mut numbers = Vec::new();
            for member in &members {
                loop {
                    let frames = received(|bufs, meta| member.recv_batch(bufs, meta));
                    if frames.is_empty() {
                        break;
                    }
                    numbers.extend(
                        frames
                            .iter()
                            .filter(|f| f.len() >= 46 && f[6..12] == SENDER_MAC)
                            .map(|f| u32::from_be_bytes(f[42..46].try_into().unwrap())),
                    );
                }
            }
            groups.push((numbers, during_joins, sent.load(Ordering::Acquire)));
        }
        Ok(groups)
    })
    .expect("fanout groups made under a flood");
    // The sender shares the machine with the other tests: in some groups
    // it may not run while the members join, but it must in most.
    let flooded = groups.iter().filter(|(_, during, _)| *during > 0).count();
    assert!(
        flooded >= GROUPS / 2,
        "frames were sent while the members joined in only {flooded} of {GROUPS} groups"
    );
    for (i, (mut numbers, during_joins, sent)) in groups.into_iter().enumerate() {
        let read = numbers.len();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(
            read,
            numbers.len(),
            "group {i}: {} frames read twice (of {read} read, {sent} sent, {during_joins} while its members joined)",
            read - numbers.len()
        );
        assert!(read > 0, "group {i}: nothing read of {sent} frames sent");
    }
}

/// A reuseport group steered by flow does for UDP what a fanout group
/// does for frames: a flow's datagrams from CPU 1 wait behind those from
/// CPU 0 in socket 0 until its reader has sent them on, a new flow from
/// CPU 1 goes to socket 1, and after that (and a quiet gap) the first
/// flow follows CPU 1 too.
#[test]
fn a_udp_group_by_flow_moves_a_flow_only_once_its_socket_has_sent_it_on() {
    use podswitch_engine::sys::flow_steer::{self, FlowSteering};
    use podswitch_engine::sys::inet::InetSocket;
    use std::net::SocketAddrV4;

    let cpus = cpus_to_tell_apart();
    let ns = Netns::new("reuse");
    ns.ip(&["link", "set", "lo", "up"]);
    let path = format!("/var/run/netns/{}", ns.name);
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8472);
    let (group, steering) = in_netns(&path, move || {
        let steering =
            FlowSteering::new(flow_steer::Group::Reuseport, cpus, flow_steer::DEFAULT_GAP)?;
        Ok((InetSocket::udp_bound_by_flow(addr, &steering)?, steering))
    })
    .expect("a reuseport group steered by flow on the loopback");
    // One datagram from source port `port`, sent from `cpu`, carrying
    // `marker`.
    let send = |port: u16, cpu: usize, marker: u8| {
        let (cpu, port, marker) = (cpu.to_string(), port.to_string(), marker.to_string());
        ns.exec(
            "taskset",
            &[
                "-c",
                &cpu,
                "/usr/bin/python3",
                "-c",
                "import socket, sys\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.bind(('127.0.0.1', int(sys.argv[1])))\n\
                 s.sendto(bytes([int(sys.argv[2])]), ('127.0.0.1', 8472))",
                &port,
                &marker,
            ],
        );
    };
    let read = |member: usize| -> Vec<u8> {
        let progress = steering.progress(member);
        let mark = progress.steered();
        let datagrams = received(|bufs, meta| group[member].recv_batch(bufs, meta));
        progress.read(mark, datagrams.len(), datagrams.len() < 64);
        datagrams.iter().map(|d| d[0]).collect()
    };

    for (cpu, marker) in [(0, 1), (0, 2), (1, 3), (1, 4)] {
        send(40000, cpu, marker);
    }
    send(40001, 1, 11);
    assert_eq!(
        read(0),
        [1, 2, 3, 4],
        "flow A, in order, on socket 0 (its datagrams from CPU 1 wait behind those from CPU 0)"
    );
    std::thread::sleep(flow_steer::DEFAULT_GAP);
    send(40000, 1, 5);
    assert_eq!(
        read(1),
        [11, 5],
        "socket 1: the new flow B from CPU 1, then flow A once socket 0 had sent it on"
    );
    for member in 0..cpus {
        assert_eq!(read(member), [0u8; 0], "socket {member} has nothing left");
    }
}

/// The sequence number at which [`tcp_frame`]'s flow starts.
const FLOW_SEQ: u32 = 7_000_000;

/// A pod's TCP frame to a pod on node2 (10.244.1.2 → 10.244.2.5, port
/// `source_port` → 5201) with `payload_len` bytes from sequence number `seq`, its
/// TCP checksum left partial (the pseudo-header sum) as a pod's offloads
/// leave it. Built with etherparse, an encoder independent of podswitch.
fn tcp_frame(
    gateway: podswitch_encap::MacAddr,
    source_port: u16,
    seq: u32,
    payload_len: usize,
) -> Vec<u8> {
    use podswitch_engine::encap::checksum;
    let (src, dst) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 5));
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let mut f = Vec::with_capacity(54 + payload_len);
    etherparse::PacketBuilder::ethernet2([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02], gateway.octets())
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(source_port, 5201, seq, 0xffff)
        .ack(1)
        .write(&mut f, &payload)
        .expect("a TCP frame");
    let pseudo = checksum::pseudo_header_v4(src, dst, 6, (20 + payload_len) as u16);
    f[50..52].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    f
}

/// The inner TCP sequence numbers of the first two VXLAN datagrams `sock`
/// receives within a second, in the order they left (outer Ethernet,
/// IPv4, UDP and VXLAN, then the inner Ethernet and IPv4 headers before
/// the TCP header).
fn inner_tcp_seqs(sock: &podswitch_engine::sys::packet_socket::PacketSocket) -> Vec<u32> {
    const TCP: usize = 14 + 20 + 8 + 8 + 14 + 20;
    let mut seqs = Vec::new();
    for _ in 0..100 {
        for frame in received(|bufs, meta| sock.recv_batch(bufs, meta)) {
            assert!(frame.len() >= TCP + 8, "a short frame: {frame:02x?}");
            seqs.push(u32::from_be_bytes(
                frame[TCP + 4..TCP + 8].try_into().unwrap(),
            ));
        }
        if seqs.len() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    seqs.truncate(2);
    seqs
}

/// A pod's wire-sized TCP segment and the super-frame that follows it
/// leave the underlay in that order, in one send. The super-frame leaves
/// in its own write, here through the tunnel TAP, while the segment goes
/// in the raw socket's batched send; the segment used to be sent after
/// the super-frame, and the other node's TCP got the flow out of order.
#[test]
fn an_underlay_send_keeps_a_flow_in_order_around_a_super_frame() {
    flow_order_around_a_super_frame(Some("psw-order-gso"));
}

/// The same with the super-frame sent as `UDP_SEGMENT` bursts (no tunnel
/// TAP, as on a kernel before 6.17).
#[test]
fn an_underlay_send_keeps_a_flow_in_order_around_udp_segment_bursts() {
    flow_order_around_a_super_frame(None);
}

/// Sends a pod's segment and its flow's next super-frame through a VXLAN
/// underlay port with `tunnel_tap` and checks their order on the wire.
fn flow_order_around_a_super_frame(tunnel_tap: Option<&str>) {
    let mut lab = UnderlayLab::new(tunnel_tap, 1);
    let mut to_underlay = lab.segment_and_super_frame(40000);
    // Both sends from one CPU: frames sent from two would wait in two
    // CPUs' backlogs on their way to the wire, in either order.
    let cpu = podswitch_engine::sys::sched::allowed_cpus().unwrap()[0];
    podswitch_engine::sys::sched::pin_to_cpu(cpu).expect("the test thread pinned");
    let sent = lab
        .port
        .send(&mut to_underlay, &mut lab.pool)
        .expect("a send");
    assert_eq!(sent, 2);
    let counted = lab.tables.stats.snapshot().port(lab.underlay);
    assert_eq!(
        (counted.super_frames_out, counted.segmented),
        (1, 0),
        "the super-frame left in its own write, not cut in software"
    );

    assert_eq!(
        inner_tcp_seqs(&lab.wire),
        [FLOW_SEQ, FLOW_SEQ + 100],
        "the flow's segment and super-frame, in the order the pod sent them"
    );
}

/// Through an underlay interface with four transmit queues and no XPS
/// map, each flow's super-frame (through the tunnel TAP) and its segment
/// (through the raw socket) take one queue. The TAP's recorded receive
/// queue used to send every super-frame to queue 0, while the segments
/// took their flow's queue: two queues, which a NIC may send in either
/// order.
#[test]
fn a_flows_super_frame_takes_the_transmit_queue_of_its_other_packets() {
    let mut lab = UnderlayLab::new(Some("psw-queue-gso"), 4);
    lab.ns.exec(
        "tc",
        &["qdisc", "add", "dev", "ul0", "root", "handle", "1:", "mq"],
    );
    // Bytes each queue's class has sent (its packet count would leave out
    // a super-frame whose segments the kernel has not counted yet).
    let sent_per_queue = |ns: &Netns| -> Vec<u64> {
        tc_stats(ns, "class", "ul0")
            .iter()
            .map(|class| class.sent_bytes)
            .collect()
    };
    let mut queues_used = std::collections::BTreeSet::new();
    for flow in 0..8 {
        let mut frames = lab.segment_and_super_frame(40000 + flow);
        let before = sent_per_queue(&lab.ns);
        assert_eq!(before.len(), 4, "a class per transmit queue");
        assert_eq!(lab.port.send(&mut frames, &mut lab.pool).unwrap(), 2);
        let after = sent_per_queue(&lab.ns);
        let grown: Vec<(usize, u64)> = (0..4)
            .map(|q| (q, after[q] - before[q]))
            .filter(|&(_, n)| n > 0)
            .collect();
        assert_eq!(grown.len(), 1, "flow {flow} took one queue: {grown:?}");
        queues_used.insert(grown[0].0);
    }
    eprintln!("the 8 flows took transmit queues {queues_used:?}");
}

/// node1's underlay for the underlay port tests: a namespace with `ul0`
/// (192.168.100.1, `tx_queues` transmit queues) and its wire end `wire0`,
/// node2 (192.168.100.2) behind it as in DESIGN.md's address plan, a
/// VXLAN underlay port on `ul0` with `tunnel_tap`, a socket that reads
/// the wire, and the tables and pool of a node with one pod.
struct UnderlayLab {
    port: podswitch_engine::kernel_port::UnderlayPort,
    wire: podswitch_engine::sys::packet_socket::PacketSocket,
    tables: std::sync::Arc<Tables>,
    pool: PacketPool,
    underlay: PortId,
    pod: PortId,
    /// Dropped last: the port and sockets live in it.
    ns: Netns,
}

impl UnderlayLab {
    fn new(tunnel_tap: Option<&str>, tx_queues: u32) -> UnderlayLab {
        use podswitch_engine::config::Backend;
        use podswitch_engine::encap::Vni;
        use podswitch_engine::kernel_port::{UnderlayOptions, UnderlayPort};
        use podswitch_engine::peer::PeerSpec;
        use podswitch_engine::sys::packet_socket::{PacketOptions, PacketSocket, ETH_P_IP};
        use podswitch_engine::tables::PortSpec;
        require(&["ip", "sysctl", "tc"]);

        let ns = Netns::new("ulorder");
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        let queues = tx_queues.to_string();
        ns.ip(&[
            "link",
            "add",
            "ul0",
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            "wire0",
        ]);
        ns.ip(&["addr", "add", "192.168.100.1/24", "dev", "ul0"]);
        for dev in ["ul0", "wire0"] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        let node2_mac = "02:00:c0:a8:64:02";
        let neigh = ns.ip(&[
            "neigh",
            "add",
            "192.168.100.2",
            "lladdr",
            node2_mac,
            "dev",
            "ul0",
            "nud",
            "permanent",
        ]);
        assert!(neigh.status.success(), "ip neigh add: {neigh:?}");

        let tables = node1_tables(Backend::Vxlan, 16);
        let underlay = tables.attach_port(PortSpec::underlay("ul0")).unwrap();
        let pod = tables
            .attach_port(PortSpec::pod(
                "veth-bb1",
                Ipv4Addr::new(10, 244, 1, 2),
                podswitch_encap::MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]),
            ))
            .unwrap();
        tables
            .add_peer(PeerSpec {
                name: "node2".into(),
                underlay_ip: Ipv4Addr::new(192, 168, 100, 2),
                underlay_mac: node2_mac.parse().unwrap(),
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                backend: Backend::Vxlan,
                vni: Vni::FLANNEL,
                vtep_mac: podswitch_encap::MacAddr([0xd6, 0x8a, 0x5e, 0x47, 0x3c, 0x02]),
            })
            .unwrap();

        let path = format!("/var/run/netns/{}", ns.name);
        let stats = std::sync::Arc::clone(&tables.stats);
        let tunnel_tap_asked = tunnel_tap.is_some();
        let tunnel_tap = tunnel_tap.map(String::from);
        let (port, wire) = in_netns(&path, move || {
            let options = UnderlayOptions {
                tunnel_tap,
                udp_batches: true,
                ..node1_underlay("ul0", Backend::Vxlan)
            };
            let port = UnderlayPort::open(&options, underlay, stats)?;
            let wire_index = podswitch_engine::sys::netdev::ifindex("wire0")?;
            let wire = PacketSocket::open(
                wire_index,
                PacketOptions {
                    protocol: ETH_P_IP,
                    vnet_hdr: false,
                    ..PacketOptions::default()
                },
            )?;
            Ok::<_, std::io::Error>((port, wire))
        })
        .expect("the underlay port and a socket on the wire");
        match (tunnel_tap_asked, port.tunnel_tap_refused()) {
            (true, None) => assert!(port.tunnel_tap(), "the tunnel TAP is up"),
            (true, Some(why)) => panic!("the tunnel TAP (Linux 6.17+) was refused: {why}"),
            (false, _) => assert!(!port.tunnel_tap(), "UDP_SEGMENT bursts"),
        }
        UnderlayLab {
            port,
            wire,
            tables,
            pool: PacketPool::with_large(64, DEFAULT_BUF_SIZE, 4),
            underlay,
            pod,
            ns,
        }
    }

    /// A pod's TCP segment from `source_port` and the super-frame of three
    /// full segments after it in its flow, routed and encapsulated for
    /// node2: the two frames the pipeline hands the underlay port.
    fn segment_and_super_frame(&mut self, source_port: u16) -> Vec<PacketBuf> {
        use podswitch_engine::offload::{
            accept_vnet_header, VnetHeader, FLAG_NEEDS_CSUM, GSO_TCPV4,
        };
        use podswitch_engine::pipeline::{Outputs, Pipeline};
        let gateway = self.tables.load().node.gateway_mac;
        let pool = &mut self.pool;
        let mut segment = pool
            .alloc_with(self.pod, &tcp_frame(gateway, source_port, FLOW_SEQ, 100))
            .unwrap();
        let partial = VnetHeader {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHeader::default()
        };
        accept_vnet_header(&mut segment, &partial).expect("a partial checksum");
        let mut super_frame = pool
            .alloc_with(
                self.pod,
                &tcp_frame(gateway, source_port, FLOW_SEQ + 100, 3 * 1398),
            )
            .expect("a super-frame buffer");
        let tso = VnetHeader {
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1398,
            ..partial
        };
        accept_vnet_header(&mut super_frame, &tso).expect("a TSO super-frame");

        let mut pipeline = Pipeline::new(std::sync::Arc::clone(&self.tables));
        let mut outputs = Outputs::new();
        pipeline.process(&mut vec![segment, super_frame], pool, &mut outputs, 1000);
        let mut to_underlay = Vec::new();
        let underlay = self.underlay;
        outputs.drain(|out, batch| {
            assert_eq!(out, underlay, "only tunnel packets");
            to_underlay.append(batch);
        });
        assert_eq!(to_underlay.len(), 2, "both encapsulated");
        assert!(!to_underlay[0].is_gso() && to_underlay[1].is_gso());
        to_underlay
    }
}

/// Prints `ready`, then the type (`PACKET_OUTGOING` is 4) and bytes of
/// each frame a tap on interface `argv[1]` sees, as tcpdump's socket
/// would, for 20 seconds or until a frame going out holds `argv[2]`.
const TAP_SCRIPT: &str = "\
import select, socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
print('ready', flush=True)
end = time.time() + 20
while time.time() < end:
    if select.select([s], [], [], 0.1)[0]:
        data, addr = s.recvfrom(65535)
        print(addr[2], data.hex(), flush=True)
        if addr[2] == socket.PACKET_OUTGOING and sys.argv[2].encode() in data:
            break
";

/// A pod port sends through the transmit path of the pod veth's host end,
/// as the kernel's own forwarding would: its queueing discipline takes
/// the frame (here a TBF, which the CNI bandwidth plugin puts there to
/// limit what the pod receives) and its taps see it (tcpdump on the host
/// end shows both directions). Sent straight to the driver
/// (`PACKET_QDISC_BYPASS`), a frame skipped both.
#[test]
fn a_pod_port_sends_through_the_veths_qdisc_and_taps() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    require(&["ip", "sysctl", "tc", "/usr/bin/python3"]);
    let ns = veth_pair();
    ns.exec(
        "tc",
        &[
            "qdisc", "add", "dev", "rx0", "root", "tbf", "rate", "1gbit", "burst", "64k",
            "latency", "10ms",
        ],
    );
    let mut tap = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "/usr/bin/python3",
            "-c",
            TAP_SCRIPT,
        ])
        .args(["rx0", "tapped"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = std::io::BufReader::new(tap.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let (tables, mut port) = af_packet_port(&ns);
    let mut pool = PacketPool::with_large(16, DEFAULT_BUF_SIZE, 0);
    let mut sent = frame(100);
    sent[14..20].copy_from_slice(b"tapped");
    let buf = pool.alloc_with(PortId(1), &sent).unwrap();
    assert_eq!(port.send(&mut vec![buf], &mut pool).unwrap(), 1);
    assert_eq!(tables.stats.snapshot().total_drops(), 0);

    let qdisc = tc_stats(&ns, "qdisc", "rx0");
    assert!(
        qdisc
            .iter()
            .any(|q| (q.sent_bytes, q.sent_packets) == (100, 1)),
        "the TBF took the frame: {qdisc:?}"
    );
    let outgoing = format!("4 {}", podswitch_encap::hex::encode(&sent));
    let tapped: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = tap.wait();
    assert!(
        tapped.contains(&outgoing),
        "a tap on rx0 saw the frame leave: {tapped:?}"
    );
}

/// A qdisc on the pod veth that cannot take what podswitch sends (a TBF
/// far slower than the burst, as a low bandwidth limit makes it) loses no
/// frame uncounted: every frame is sent or counted as `tx_failed`, and
/// what the port counted as sent is what the TBF took.
#[test]
fn frames_a_pod_veths_qdisc_refuses_are_counted() {
    require(&["ip", "sysctl", "tc"]);
    let ns = veth_pair();
    ns.exec(
        "tc",
        &[
            "qdisc", "add", "dev", "rx0", "root", "tbf", "rate", "8kbit", "burst", "1600", "limit",
            "3000",
        ],
    );
    let (tables, mut port) = af_packet_port(&ns);
    let mut pool = PacketPool::with_large(2 * BATCH_SIZE, DEFAULT_BUF_SIZE, 0);
    let mut batch: Vec<_> = (0..BATCH_SIZE)
        .map(|_| pool.alloc_with(PortId(1), &frame(1000)).unwrap())
        .collect();
    let sent = port.send(&mut batch, &mut pool).unwrap();
    let failed = tables.stats.snapshot().drop_count(DropReason::TxFailed);
    assert_eq!(
        sent as u64 + failed,
        BATCH_SIZE as u64,
        "each frame sent or counted"
    );
    assert!(failed > 0 && sent > 0, "sent {sent}, refused {failed}");
    // What the port counted as sent is what the TBF holds or has passed
    // on. (Its own drop count is one higher: after a partial `sendmmsg`,
    // the frame that failed is tried again.)
    let qdisc = tc_stats(&ns, "qdisc", "rx0");
    assert_eq!(qdisc.len(), 1, "the TBF alone: {qdisc:?}");
    assert_eq!(
        qdisc[0].sent_packets + qdisc[0].backlog_packets,
        sent as u64,
        "the TBF took every frame the port sent: {qdisc:?}"
    );
}

/// What `tc -s` reports of one qdisc or class.
#[derive(Debug, Clone, Copy, Default)]
struct TcStats {
    sent_bytes: u64,
    sent_packets: u64,
    backlog_packets: u64,
}

/// The statistics of each qdisc or class (`object`) of interface `dev`,
/// in `tc -s` order: " Sent B bytes N pkt (...)" then " backlog Xb Mp ...".
fn tc_stats(ns: &Netns, object: &str, dev: &str) -> Vec<TcStats> {
    let out = ns.exec("tc", &["-s", object, "show", "dev", dev]);
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |word: Option<&str>, unit: &str| -> u64 {
        word.and_then(|w| w.strip_suffix(unit)?.parse().ok())
            .unwrap_or_else(|| panic!("a count in {text}"))
    };
    let mut stats: Vec<TcStats> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Sent") => stats.push(TcStats {
                sent_bytes: count(words.next(), ""),
                sent_packets: count(words.nth(1), ""),
                backlog_packets: 0,
            }),
            Some("backlog") => {
                let last = stats.last_mut().unwrap_or_else(|| panic!("{text}"));
                last.backlog_packets = count(words.nth(1), "p");
            }
            _ => {}
        }
    }
    stats
}

/// A host-gw underlay's packet socket takes what a host-gw peer sends:
/// IPv4 to this node's pods from the cluster's pods or from the
/// underlay's subnet (a peer node's own address, but for the gateway
/// address, to which the kernel delivers it). A reply from outside
/// both to a pod that kept its address is the kernel's, as are frames
/// to another subnet and anything not IPv4: put on the wire, they never
/// reach the port.
#[test]
fn a_host_gw_underlay_takes_only_what_a_peer_sends() {
    use podswitch_engine::config::Backend;
    use podswitch_engine::kernel_port::UnderlayPort;
    use podswitch_engine::tables::PortSpec;
    require(&["ip", "sysctl", "/usr/bin/python3"]);
    let ns = veth_pair();
    ns.ip(&["addr", "add", "192.168.100.1/24", "dev", "rx0"]);
    let tables = node1_tables(Backend::HostGw, 4);
    let id = tables.attach_port(PortSpec::underlay("rx0")).unwrap();
    let stats = std::sync::Arc::clone(&tables.stats);
    let path = format!("/var/run/netns/{}", ns.name);
    let mut port = in_netns(&path, move || {
        UnderlayPort::open(&node1_underlay("rx0", Backend::HostGw), id, stats)
    })
    .expect("a host-gw underlay port on the veth");

    // (source, destination, EtherType, taken), each frame marked by its
    // place in the list.
    let cases: [(&str, &str, u16, bool); 8] = [
        ("10.244.2.5", "10.244.1.2", 0x0800, true), // a peer's pod
        ("10.244.2.5", "10.244.1.1", 0x0800, true), // ... to the gateway
        ("192.168.100.2", "10.244.1.2", 0x0800, true), // a peer node itself
        ("192.168.100.2", "10.244.1.1", 0x0800, false), // ... to the gateway
        ("8.8.8.8", "10.244.1.2", 0x0800, false),   // a reply from outside
        ("10.244.2.5", "10.244.3.2", 0x0800, false), // to another node's pods
        ("10.244.2.5", "192.168.100.1", 0x0800, false), // to the node
        ("10.244.2.5", "10.244.1.2", 0x0806, false), // not IPv4
    ];
    for (marker, (src, dst, ethertype, _)) in cases.iter().enumerate() {
        let mut f = udp_frame(0, 1000, marker as u8);
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f[26..30].copy_from_slice(&src.parse::<Ipv4Addr>().unwrap().octets());
        f[30..34].copy_from_slice(&dst.parse::<Ipv4Addr>().unwrap().octets());
        send_into_tx0(&ns, &f, 1, None);
    }
    let mut pool = PacketPool::with_large(64, DEFAULT_BUF_SIZE, 0);
    let mut batch = Vec::new();
    let mut taken = Vec::new();
    while port.recv(&mut pool, &mut batch).unwrap() > 0 {
        taken.extend(batch.iter().map(|b| b.frame().to_vec()));
        pool.free_all(&mut batch);
    }
    let wanted: Vec<u8> = (0..cases.len() as u8)
        .filter(|&m| cases[usize::from(m)].3)
        .collect();
    assert_eq!(markers(&taken), wanted, "the frames the port took");
}

/// An IPIP packet from node 2 (192.168.100.2) to `outer_dst` in an
/// Ethernet frame from [`SENDER_MAC`] to the MAC [`frame`] sends to,
/// carrying UDP from `inner_src`:`port` to the pod 10.244.1.2:2000 with
/// `marker` for payload (see [`ipip_marker`]); as `fragments` of it (one:
/// whole), each with its outer header, cut at 8-byte multiples. Built
/// with etherparse, checksums included.
fn ipip_frames(
    outer_dst: [u8; 4],
    inner_src: [u8; 4],
    port: u16,
    marker: u8,
    fragments: usize,
) -> Vec<Vec<u8>> {
    use etherparse::{IpFragOffset, IpNumber, Ipv4Header, PacketBuilder};
    let mut inner = Vec::new();
    PacketBuilder::ipv4(inner_src, [10, 244, 1, 2], 64)
        .udp(port, 2000)
        .write(&mut inner, &[marker; 32])
        .unwrap();
    let piece = (inner.len() / fragments).div_ceil(8) * 8;
    inner
        .chunks(piece)
        .enumerate()
        .map(|(i, payload)| {
            let mut outer = Ipv4Header::new(
                payload.len() as u16,
                64,
                IpNumber::IPV4,
                [192, 168, 100, 2],
                outer_dst,
            )
            .unwrap();
            outer.identification = 7;
            outer.more_fragments = (i + 1) * piece < inner.len();
            outer.fragment_offset = IpFragOffset::try_new((i * piece / 8) as u16).unwrap();
            outer.header_checksum = outer.calc_header_checksum();
            let mut f = frame(14);
            outer.write(&mut f).unwrap();
            f.extend_from_slice(payload);
            f
        })
        .collect()
}

/// The marker of an IPIP frame from [`ipip_frames`], as the port hands
/// it over: behind Ethernet, the outer and inner IPv4 headers (20 bytes
/// each) and UDP.
fn ipip_marker(frame: &[u8]) -> Option<u8> {
    frame.get(14 + 20 + 20 + 8).copied()
}

/// An IPIP underlay split among a worker per CPU reads each IPIP packet
/// for the node once, on the member of the CPU its inner flow arrived on:
/// two flows between the same two nodes (one outer address pair) arriving
/// on two CPUs go to two members, which a hash of the outer header
/// would have put together. The kernel's own copy of what the packet
/// sockets took ends after their tap: the raw socket, kept open on the
/// first member, reads only the packet the kernel reassembled from
/// fragments. An IPIP packet to another address, or to another host's
/// MAC, is not taken.
#[test]
fn an_ipip_underlay_split_by_flow_reads_each_packet_once() {
    use podswitch_engine::config::Backend;
    use podswitch_engine::kernel_port::{UnderlayOptions, UnderlayPort};
    use podswitch_engine::tables::PortSpec;
    let cpus = cpus_to_tell_apart();
    let ns = veth_pair();
    ns.ip(&["link", "set", "rx0", "address", "02:00:00:00:00:02"]);
    ns.ip(&["addr", "add", "192.168.100.1/24", "dev", "rx0"]);
    let tables = node1_tables(Backend::Ipip, 4);
    let id = tables.attach_port(PortSpec::underlay("rx0")).unwrap();
    let stats = std::sync::Arc::clone(&tables.stats);
    let options = UnderlayOptions {
        receivers: cpus,
        ..node1_underlay("rx0", Backend::Ipip)
    };
    let path = format!("/var/run/netns/{}", ns.name);
    let mut members = in_netns(&path, move || {
        let mut first = UnderlayPort::open(&options, id, stats)?;
        if let Some(why) = first.split_refused() {
            return Err(std::io::Error::other(format!(
                "the split was refused: {why}"
            )));
        }
        let others = first.fan_out(cpus)?;
        Ok(std::iter::once(Box::new(first) as Box<dyn Port>)
            .chain(others)
            .collect::<Vec<_>>())
    })
    .expect("an IPIP underlay split among the CPUs (needs Linux 6.6 for tcx)");

    let node = [192, 168, 100, 1];
    for (cpu, inner_src, port, marker) in [(0, 5, 1000, 1), (1, 6, 1001, 11)] {
        for m in marker..marker + 3 {
            for f in ipip_frames(node, [10, 244, 2, inner_src], port, m, 1) {
                send_into_tx0(&ns, &f, 1, Some(cpu));
            }
        }
    }
    for f in ipip_frames([192, 168, 100, 3], [10, 244, 2, 5], 1000, 21, 1) {
        send_into_tx0(&ns, &f, 1, Some(0));
    }
    // To the node's address but another host's MAC: the kernel's IP
    // layer drops it (`PACKET_OTHERHOST`), and so does the filter.
    for mut f in ipip_frames(node, [10, 244, 2, 5], 1000, 41, 1) {
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 9]);
        send_into_tx0(&ns, &f, 1, Some(0));
    }
    for f in ipip_frames(node, [10, 244, 2, 5], 1000, 31, 2) {
        send_into_tx0(&ns, &f, 1, Some(0));
    }

    let mut pool = PacketPool::with_large(64, DEFAULT_BUF_SIZE, 0);
    let mut read = |member: &mut Box<dyn Port>| {
        let mut batch = Vec::new();
        let mut markers = Vec::new();
        while member.recv(&mut pool, &mut batch).unwrap() > 0 {
            markers.extend(batch.iter().filter_map(|b| ipip_marker(b.frame())));
            pool.free_all(&mut batch);
            member.forwarded();
        }
        markers.sort_unstable();
        markers
    };
    assert_eq!(
        read(&mut members[0]),
        [1, 2, 3, 31],
        "member 0: the flow from CPU 0, and the reassembled packet through the raw socket"
    );
    assert_eq!(
        read(&mut members[1]),
        [11, 12, 13],
        "member 1: the flow from CPU 1"
    );
    for member in members.iter_mut().skip(2) {
        assert_eq!(read(member), [0u8; 0]);
    }
}

/// Node 1's tables (pod subnet 10.244.1.0/24, underlay address
/// 192.168.100.1) for `backend`, room for `ports` ports.
fn node1_tables(
    backend: podswitch_engine::config::Backend,
    ports: usize,
) -> std::sync::Arc<Tables> {
    let mut config = NodeConfig::flannel(
        "node1",
        "10.244.1.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 168, 100, 1),
    );
    config.backend = backend;
    Tables::new(config, ports)
}

/// Node 1's underlay on `interface` for `backend`: flannel's ports, the
/// lab's addresses, no tunnel TAP, no batches, one receiver.
fn node1_underlay(
    interface: &str,
    backend: podswitch_engine::config::Backend,
) -> podswitch_engine::kernel_port::UnderlayOptions {
    podswitch_engine::kernel_port::UnderlayOptions {
        interface: interface.into(),
        local_ip: Ipv4Addr::new(192, 168, 100, 1),
        backend,
        vxlan_port: 8472,
        udp_port: 8285,
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        underlay_subnet: "192.168.100.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 244, 1, 1),
        af_xdp: false,
        tunnel_tap: None,
        udp_batches: false,
        receivers: 1,
    }
}
