//! Ports: where batches of frames come from and go to.
//!
//! A port is a small table of operations over batches of up to
//! [`BATCH_SIZE`] frames, as in Open vSwitch's netdev providers: `recv`
//! fills a batch with buffers from the pool, `send` consumes a batch and
//! gives its buffers back. The pipeline only ever sees this trait, so the
//! in-memory port here and the kernel-facing ports (AF_XDP, AF_PACKET,
//! TAP/TUN, UDP and raw sockets) are interchangeable.

use std::collections::VecDeque;
use std::fmt;
use std::io;

use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE};

pub use crate::ids::PortId;
pub use podswitch_addr::PortRole;

/// How a port moves frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortKind {
    /// In memory: tests and benchmarks.
    Memory,
    /// AF_XDP socket on a veth.
    AfXdp,
    /// AF_PACKET socket on a veth.
    AfPacket,
    /// A TAP device.
    Tap,
    /// A TUN device (the host port).
    Tun,
    /// A UDP socket (VXLAN, IP-in-UDP underlay).
    UdpSocket,
    /// A raw IP socket (IPIP underlay).
    RawIp,
}

impl fmt::Display for PortKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortKind::Memory => "memory",
            PortKind::AfXdp => "af-xdp",
            PortKind::AfPacket => "af-packet",
            PortKind::Tap => "tap",
            PortKind::Tun => "tun",
            PortKind::UdpSocket => "udp-socket",
            PortKind::RawIp => "raw-ip",
        })
    }
}

/// The operations every port provides.
pub trait Port: Send {
    /// Its name (the interface name for kernel ports).
    fn name(&self) -> &str;

    /// How it moves frames.
    fn kind(&self) -> PortKind;

    /// Receives up to `BATCH_SIZE - batch.len()` frames into `batch`,
    /// taking buffers from `pool`, and returns how many it took from its
    /// source, kept or dropped: zero only when none was waiting (or no
    /// buffer was free to receive one), so that a batch the port dropped
    /// whole does not leave the frames behind it waiting for the next
    /// arrival. A frame that finds the pool empty is counted by the port
    /// and dropped.
    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize>;

    /// Sends every frame of `batch`, returning all buffers to `pool`
    /// (whether or not each was sent), and returns how many were sent.
    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize>;

    /// The file descriptors a worker polls for this port's receive side
    /// (none for in-memory ports).
    fn poll_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }

    /// Told by its worker that every frame of the last receive has been
    /// sent on or handed to another worker; the worker says so after each
    /// receive that gave frames, before the next. A port split among
    /// workers ([`fan_out`](Self::fan_out)) only then lets the flows of
    /// those frames move to another member, whose worker could otherwise
    /// send a flow's next frame first.
    fn forwarded(&mut self) {}

    /// True if the last receive found every kernel queue of the port
    /// empty after the frames it took (a `recvmmsg` that returned fewer
    /// messages than it asked for, a read that would block). Its worker
    /// may then wait for epoll to report the port again rather than read
    /// it once more only to find it empty: the port's descriptors are
    /// edge-triggered, and a frame queued after that receive raises a new
    /// event. False where the port cannot tell (the default).
    fn drained(&self) -> bool {
        false
    }

    /// The kernel devices whose drop counters count frames this port
    /// sent that the kernel took and then dropped, which no send call
    /// reports (a raw or UDP socket without `IP_RECVERR` says nothing of
    /// a full queue after it; a write to a TUN or TAP succeeds before the
    /// frame enters the stack). Counted as
    /// [`DropReason::TxDeviceDropped`](crate::drop::DropReason::TxDeviceDropped)
    /// by [`crate::datapath::Datapath::count_device_drops`].
    fn send_drop_counters(&self) -> Vec<DeviceCounter> {
        Vec::new()
    }

    /// Splits the port's receive side by CPU for `members` workers, one
    /// pinned to each CPU (docs/architecture.md, "A worker per CPU"):
    /// returns `members - 1` more ports on the same interface, counting
    /// as this one, such that with this port as member 0, member k
    /// receives the frames CPU k (modulo `members`) receives, except
    /// that a flow whose frames still wait in another member (or that
    /// is not yet quiet) stays there, and each member sends on its own.
    /// A port that cannot split answers [`io::ErrorKind::Unsupported`].
    fn fan_out(&mut self, _members: usize) -> io::Result<Vec<Box<dyn Port>>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "a {} port cannot split its receive side by CPU",
                self.kind()
            ),
        ))
    }
}

impl<P: Port + ?Sized> Port for Box<P> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn kind(&self) -> PortKind {
        (**self).kind()
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        (**self).recv(pool, batch)
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        (**self).send(batch, pool)
    }

    fn poll_fds(&self) -> Vec<std::os::fd::RawFd> {
        (**self).poll_fds()
    }

    fn forwarded(&mut self) {
        (**self).forwarded();
    }

    fn drained(&self) -> bool {
        (**self).drained()
    }

    fn fan_out(&mut self, members: usize) -> io::Result<Vec<Box<dyn Port>>> {
        (**self).fan_out(members)
    }

    fn send_drop_counters(&self) -> Vec<DeviceCounter> {
        (**self).send_drop_counters()
    }
}

/// One of a kernel device's drop counters (/proc/net/dev), which counts
/// frames a port sent and the kernel dropped after taking them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCounter {
    /// The device's `rx_dropped`: a TUN or TAP the port writes to.
    RxDropped(String),
    /// The device's `tx_dropped`: a device the port's sockets send out of.
    TxDropped(String),
}

impl DeviceCounter {
    /// The counter's value in `proc_net_dev` (/proc/net/dev's text);
    /// none if the device has gone.
    pub fn read(&self, proc_net_dev: &str) -> Option<u64> {
        let (DeviceCounter::RxDropped(name) | DeviceCounter::TxDropped(name)) = self;
        let drops = crate::sys::netdev::device_drops(proc_net_dev, name)?;
        Some(match self {
            DeviceCounter::RxDropped(_) => drops.rx,
            DeviceCounter::TxDropped(_) => drops.tx,
        })
    }
}

/// A port over two in-memory queues, with the pool copy a real NIC's DMA
/// would make.
#[derive(Debug)]
pub struct MemoryPort {
    name: String,
    id: crate::port::PortId,
    /// Frames waiting to be received.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames sent, if this port keeps them.
    pub tx: Vec<Vec<u8>>,
    keep_tx: bool,
    /// Frames sent since creation (kept or not).
    pub tx_count: u64,
    /// Frames that found the pool empty on receive.
    pub rx_no_buffer: u64,
    replay: Option<Vec<u8>>,
}

impl MemoryPort {
    /// A port that keeps every frame it sends in [`Self::tx`].
    pub fn new(name: &str, id: PortId) -> Self {
        MemoryPort {
            name: name.to_string(),
            id,
            rx: VecDeque::new(),
            tx: Vec::new(),
            keep_tx: true,
            tx_count: 0,
            rx_no_buffer: 0,
            replay: None,
        }
    }

    /// A port for benchmarks: it receives copies of `frame` forever and
    /// counts what it sends without keeping it.
    pub fn replaying(name: &str, id: PortId, frame: Vec<u8>) -> Self {
        MemoryPort {
            keep_tx: false,
            replay: Some(frame),
            ..MemoryPort::new(name, id)
        }
    }

    /// A port that counts what it sends without keeping it.
    pub fn discarding(name: &str, id: PortId) -> Self {
        MemoryPort {
            keep_tx: false,
            ..MemoryPort::new(name, id)
        }
    }

    /// Its id.
    pub fn id(&self) -> PortId {
        self.id
    }
}

impl Port for MemoryPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PortKind {
        PortKind::Memory
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        // Frames taken from the queue, kept or dropped.
        let mut received = 0;
        while batch.len() < BATCH_SIZE {
            let data = match &self.replay {
                Some(frame) => frame.as_slice(),
                None => match self.rx.front() {
                    Some(frame) => frame.as_slice(),
                    None => break,
                },
            };
            match pool.alloc_with(self.id, data) {
                Some(buf) => {
                    batch.push(buf);
                    received += 1;
                }
                None => {
                    self.rx_no_buffer += 1;
                    if self.replay.is_some() {
                        break;
                    }
                    received += 1;
                }
            }
            if self.replay.is_none() {
                self.rx.pop_front();
            }
        }
        Ok(received)
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        let sent = batch.len();
        for buf in batch.drain(..) {
            if self.keep_tx {
                self.tx.push(buf.frame().to_vec());
            }
            pool.free(buf);
        }
        self.tx_count += sent as u64;
        Ok(sent)
    }
}

/// A port over one end of a datagram socket pair, for the engine's own
/// tests: a worker polls it like a kernel port; with node 1's tables, two
/// of its pods and the frame between them.
#[cfg(test)]
pub(crate) mod socket_pair {
    use std::io;
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Port, PortId, PortKind};
    use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE};

    /// A port over one end of a datagram socket pair: a worker polls it
    /// like a kernel port, and the test writes and reads frames at the
    /// other end.
    pub(crate) struct SocketPort {
        name: String,
        id: PortId,
        socket: UnixDatagram,
        /// The other members it splits into, if made to split.
        spare_members: Vec<SocketPort>,
        /// Its receives so far, for the test to count.
        reads: Arc<AtomicUsize>,
        /// The last receive stopped at an empty socket.
        drained: bool,
    }

    impl Port for SocketPort {
        fn name(&self) -> &str {
            &self.name
        }

        fn kind(&self) -> PortKind {
            PortKind::Memory
        }

        fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.drained = false;
            let mut received = 0;
            let mut bytes = [0u8; 2048];
            while batch.len() < BATCH_SIZE {
                match self.socket.recv(&mut bytes) {
                    Ok(len) => {
                        batch.push(pool.alloc_with(self.id, &bytes[..len]).expect("a buffer"));
                        received += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.drained = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(received)
        }

        fn drained(&self) -> bool {
            self.drained
        }

        fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
            let sent = batch.len();
            for buf in batch.drain(..) {
                self.socket.send(buf.frame())?;
                pool.free(buf);
            }
            Ok(sent)
        }

        fn poll_fds(&self) -> Vec<RawFd> {
            vec![self.socket.as_raw_fd()]
        }

        fn fan_out(&mut self, members: usize) -> io::Result<Vec<Box<dyn Port>>> {
            if self.spare_members.is_empty() || self.spare_members.len() + 1 != members {
                return Err(io::ErrorKind::Unsupported.into());
            }
            Ok(std::mem::take(&mut self.spare_members)
                .into_iter()
                .map(|member| Box::new(member) as Box<dyn Port>)
                .collect())
        }
    }

    /// Two pods of node 1 (DESIGN.md's address plan).
    pub(crate) const MAC1: crate::encap::MacAddr =
        crate::encap::MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
    pub(crate) const MAC2: crate::encap::MacAddr =
        crate::encap::MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03]);
    pub(crate) const IP1: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 1, 2);
    pub(crate) const IP2: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 1, 3);

    /// Node 1's tables with flannel's defaults, room for 16 ports.
    pub(crate) fn node1_tables() -> std::sync::Arc<crate::tables::Tables> {
        let node = crate::config::NodeConfig::flannel(
            "node1",
            "10.244.1.0/24".parse().unwrap(),
            std::net::Ipv4Addr::new(192, 168, 100, 1),
        );
        crate::tables::Tables::new(node, 16)
    }

    /// A UDP frame from one pod to the other on the node's bridge.
    pub(crate) fn frame(
        src: (crate::encap::MacAddr, std::net::Ipv4Addr),
        dst: (crate::encap::MacAddr, std::net::Ipv4Addr),
    ) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[0..6].copy_from_slice(&dst.0 .0);
        f[6..12].copy_from_slice(&src.0 .0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&50u16.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&src.1.octets());
        f[30..34].copy_from_slice(&dst.1.octets());
        let c = crate::encap::checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&5201u16.to_be_bytes());
        f[38..40].copy_from_slice(&30u16.to_be_bytes());
        f
    }

    /// A port for `id` and the test's end of it.
    pub(crate) fn socket_port(name: &str, id: PortId) -> (Box<dyn Port>, UnixDatagram) {
        let (port, wire, _) = counted_socket_port(name, id);
        (port, wire)
    }

    /// [`socket_port`], with the count of its receives.
    pub(crate) fn counted_socket_port(
        name: &str,
        id: PortId,
    ) -> (Box<dyn Port>, UnixDatagram, Arc<AtomicUsize>) {
        let (port, wire) = socket_member(name, id);
        let reads = Arc::clone(&port.reads);
        (Box::new(port), wire, reads)
    }

    /// A port for `id` that splits into `members` ([`Port::fan_out`]), a
    /// socket pair each; the test's end of each member's, in order, and
    /// the count of each member's receives.
    pub(crate) fn split_socket_port(
        name: &str,
        id: PortId,
        members: usize,
    ) -> (Box<dyn Port>, Vec<UnixDatagram>, Vec<Arc<AtomicUsize>>) {
        let (mut first, wire) = socket_member(name, id);
        let mut wires = vec![wire];
        let mut reads = vec![Arc::clone(&first.reads)];
        for _ in 1..members {
            let (member, wire) = socket_member(name, id);
            reads.push(Arc::clone(&member.reads));
            first.spare_members.push(member);
            wires.push(wire);
        }
        (Box::new(first), wires, reads)
    }

    fn socket_member(name: &str, id: PortId) -> (SocketPort, UnixDatagram) {
        let (port, wire) = UnixDatagram::pair().unwrap();
        port.set_nonblocking(true).unwrap();
        wire.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = SocketPort {
            name: name.into(),
            id,
            socket: port,
            spare_members: Vec::new(),
            reads: Arc::default(),
            drained: false,
        };
        (port, wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_port_moves_batches() {
        let mut pool = PacketPool::new(64, 256);
        let mut port = MemoryPort::new("veth0", PortId(3));
        for i in 0..40u8 {
            port.rx.push_back(vec![i; 60]);
        }
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        assert_eq!(port.recv(&mut pool, &mut batch).unwrap(), BATCH_SIZE);
        assert_eq!(batch[5].frame(), &[5u8; 60][..]);
        assert_eq!(batch[5].in_port, PortId(3));
        assert_eq!(port.send(&mut batch, &mut pool).unwrap(), BATCH_SIZE);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(port.recv(&mut pool, &mut batch).unwrap(), 8);
        assert_eq!(port.tx.len(), BATCH_SIZE);
        pool.free_all(&mut batch);
        assert_eq!(pool.in_use(), 0);
    }

    /// Frames dropped for want of a buffer count as taken: the queue
    /// moved, though nothing was kept.
    #[test]
    fn frames_dropped_on_receive_count_as_taken() {
        let mut pool = PacketPool::new(2, 256);
        let held = [
            pool.alloc(PortId(0)).unwrap(),
            pool.alloc(PortId(0)).unwrap(),
        ];
        let mut port = MemoryPort::new("veth0", PortId(3));
        for i in 0..5u8 {
            port.rx.push_back(vec![i; 60]);
        }
        let mut batch = Vec::new();
        assert_eq!(port.recv(&mut pool, &mut batch).unwrap(), 5);
        assert!(batch.is_empty());
        assert_eq!((port.rx.len(), port.rx_no_buffer), (0, 5));
        for buf in held {
            pool.free(buf);
        }
    }
}
