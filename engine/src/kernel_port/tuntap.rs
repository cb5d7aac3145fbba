//! TAP pod ports and the TUN host port. A character device moves one
//! packet per `read`/`write` (there is no batched call for it); both are
//! non-blocking and drained to `EAGAIN` by the worker.
//!
//! Both devices are opened with virtio-net headers and TCP offloads
//! ([`TunDevice::open_with_offloads`]; without them where the kernel
//! refuses): the node's stack (or a TAP pod) hands podswitch its 64 KiB
//! TCP super-frames whole, scattered into a small and a super-frame pool
//! buffer as on an AF_PACKET port, and takes them whole back.
//!
//! The host port may be split among workers ([`Port::fan_out`],
//! [`HostPortOptions::multi_queue`]): its TUN gets a queue per worker,
//! the kernel steers each packet it sends into the TUN to the queue of
//! the sender's CPU, flows kept in order ([`crate::sys::flow_steer`]), and
//! each worker reads and writes its own queue.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use podswitch_encap::ethernet::{EtherType, EthernetRepr, HEADER_LEN as ETH};
use podswitch_encap::MacAddr;

use super::{
    finish_offloads, has_offloads, offload_drop_reason, received_frame, stage, Counter,
    KernelDrops, Steered,
};
use crate::drop::DropReason;
use crate::offload::{accept_vnet_header, vnet_header_for, VnetHeader, VNET_HDR_LEN};
use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE};
use crate::port::{DeviceCounter, Port, PortId, PortKind};
use crate::stats::{OffloadEvent, Stats};
use crate::sys::flow_steer::{FlowSteering, Group, DEFAULT_GAP};
use crate::sys::netdev;
use crate::sys::tun::{TunDevice, TunKind};

/// A TUN or TAP device as a port sees it.
#[derive(Debug)]
struct Device {
    dev: TunDevice,
    /// Packets carry virtio-net headers.
    vnet: bool,
    /// Bytes podswitch keeps in front of what the device carries (the
    /// Ethernet header it gives a TUN packet); a virtio-net header's
    /// offsets count from the device's packet, the engine's from the frame.
    shift: usize,
    /// Packets the kernel dropped because the device's queue to
    /// podswitch was full (read while the device is in the daemon's
    /// namespace; a TAP device moved into a pod's is not seen).
    kernel_drops: KernelDrops,
    /// The last read found the queue empty.
    emptied: bool,
}

impl Device {
    /// Opens `name` with offloads if the kernel takes them; able to take
    /// more queues ([`Device::another_queue`]) if `multi_queue`.
    fn open(name: &str, kind: TunKind, multi_queue: bool) -> io::Result<Device> {
        let shift = match kind {
            TunKind::Tun => ETH,
            TunKind::Tap => 0,
        };
        let open = |offloads| match (multi_queue, offloads) {
            (true, _) => TunDevice::open_multi_queue(name, kind, offloads),
            (false, true) => TunDevice::open_with_offloads(name, kind),
            (false, false) => TunDevice::open(name, kind),
        };
        let (dev, vnet) = match open(true) {
            Ok(dev) => (dev, true),
            Err(_) => (open(false)?, false),
        };
        let dropped_before = netdev::tx_dropped(name).unwrap_or(0);
        Ok(Device {
            dev,
            vnet,
            shift,
            kernel_drops: KernelDrops::device(dropped_before),
            emptied: false,
        })
    }

    /// Another queue of this device. The device counts every queue's
    /// drops together: its queues share one look at the count.
    fn another_queue(&mut self) -> io::Result<Device> {
        Ok(Device {
            dev: self.dev.another_queue()?,
            vnet: self.vnet,
            shift: self.shift,
            kernel_drops: self.kernel_drops.share(),
            emptied: false,
        })
    }
}

/// Moves a virtio-net header's offsets by `by` bytes (positive: from the
/// device's packet to the engine's frame).
fn shift_header(hdr: &mut VnetHeader, by: i32) {
    let shift = |v: u16| (i32::from(v) + by).clamp(0, i32::from(u16::MAX)) as u16;
    if hdr.needs_checksum() {
        hdr.csum_start = shift(hdr.csum_start);
    }
    if hdr.hdr_len != 0 {
        hdr.hdr_len = shift(hdr.hdr_len);
    }
}

/// Reads up to a batch of packets from `dev`, each at the device's shift
/// into a pool buffer (a super-frame continuing into a large one);
/// `finish` completes each frame (or refuses it with a reason), then its
/// offload state is taken from its virtio-net header.
fn read_batch(
    dev: &mut Device,
    counter: &Counter,
    staging: &mut Vec<PacketBuf>,
    pool: &mut PacketPool,
    batch: &mut Vec<PacketBuf>,
    mut finish: impl FnMut(&mut PacketBuf) -> Result<(), DropReason>,
) -> io::Result<usize> {
    let want = BATCH_SIZE.saturating_sub(batch.len());
    let reserve = dev.shift;
    let mut got = 0;
    dev.emptied = false;
    while got < want {
        stage(pool, staging, 1, counter.id);
        let Some(mut small) = staging.pop() else {
            break;
        };
        let mut large = if dev.vnet {
            pool.alloc_large(counter.id)
        } else {
            None
        };
        let small_area = small.receive_area(reserve).len();
        let mut hdr = [0u8; VNET_HDR_LEN];
        let head: &mut [u8] = if dev.vnet { &mut hdr } else { &mut [] };
        let (capacity, read) = {
            let rest: &mut [u8] = match large.as_mut() {
                Some(l) => l.receive_area(reserve + small_area),
                None => &mut [],
            };
            let capacity = head.len() + small_area + rest.len();
            (
                capacity,
                dev.dev
                    .read_parts([head, small.receive_area(reserve), rest]),
            )
        };
        let n = match read {
            Ok(Some(n)) if n < capacity && n >= head_len(dev) => n,
            other => {
                pool.free(small);
                if let Some(l) = large {
                    pool.free(l);
                }
                match other {
                    Ok(None) => {
                        dev.emptied = true;
                        break;
                    }
                    Err(e) => return Err(e),
                    // Filled to the brim: the packet may have been cut.
                    _ => {
                        got += 1;
                        counter.drop(DropReason::RxTooLong);
                        continue;
                    }
                }
            }
        };
        got += 1;
        let len = n - head_len(dev);
        let Some(mut buf) = received_frame(counter, pool, small, large, reserve, len, false) else {
            continue;
        };
        if let Err(reason) = finish(&mut buf) {
            counter.drop(reason);
            pool.free(buf);
            continue;
        }
        if dev.vnet {
            let mut header = VnetHeader::parse(&hdr);
            shift_header(&mut header, reserve as i32);
            if let Err(e) = accept_vnet_header(&mut buf, &header) {
                counter.drop(offload_drop_reason(e));
                pool.free(buf);
                continue;
            }
            if buf.is_gso() {
                counter.offload(OffloadEvent::SuperFrameIn, 1);
            }
        }
        batch.push(buf);
    }
    let name = dev.dev.name();
    dev.kernel_drops
        .after_recv(counter, got, want, dev.emptied, || {
            netdev::tx_dropped(name).ok()
        });
    Ok(got)
}

fn head_len(dev: &Device) -> usize {
    if dev.vnet {
        VNET_HDR_LEN
    } else {
        0
    }
}

/// Writes each frame of `batch` (from the device's shift on): whole with
/// its virtio-net header where the device takes them, its offloads
/// finished first otherwise; counts refusals.
fn write_batch(
    dev: &Device,
    counter: &Counter,
    batch: &mut Vec<PacketBuf>,
    pool: &mut PacketPool,
    scratch: &mut Vec<PacketBuf>,
) -> usize {
    if dev.vnet {
        finish_offloads(counter, batch, pool, scratch, |b| {
            vnet_header_for(b).is_none()
        });
    } else {
        finish_offloads(counter, batch, pool, scratch, has_offloads);
    }
    let mut sent = 0;
    let mut super_frames = 0;
    for buf in batch.iter() {
        let Some(packet) = buf.frame().get(dev.shift..) else {
            counter.drop(DropReason::TxFailed);
            continue;
        };
        let result = if dev.vnet {
            let mut hdr = vnet_header_for(buf).unwrap_or_default();
            shift_header(&mut hdr, -(dev.shift as i32));
            super_frames += usize::from(hdr.is_gso());
            dev.dev.write(&[&hdr.to_bytes(), packet])
        } else {
            dev.dev.write(&[packet])
        };
        match result {
            Ok(_) => sent += 1,
            Err(_) => counter.drop(DropReason::TxFailed),
        }
    }
    counter.offload(OffloadEvent::SuperFrameOut, super_frames);
    pool.free_all(batch);
    sent
}

/// A pod attached through a TAP device: Ethernet frames both ways.
#[derive(Debug)]
pub struct TapPort {
    dev: Device,
    counter: Counter,
    staging: Vec<PacketBuf>,
    scratch: Vec<PacketBuf>,
}

impl TapPort {
    /// Creates (or attaches to) the TAP device `name` and brings it up.
    /// The device can then be moved into the pod's network namespace; the
    /// port keeps working through its file descriptor.
    pub fn open(name: &str, id: PortId, stats: Arc<Stats>) -> io::Result<TapPort> {
        let dev = Device::open(name, TunKind::Tap, false)?;
        netdev::set_up(name)?;
        Ok(TapPort {
            dev,
            counter: Counter { stats, id },
            staging: Vec::with_capacity(1),
            scratch: Vec::new(),
        })
    }
}

impl Port for TapPort {
    fn name(&self) -> &str {
        self.dev.dev.name()
    }

    fn kind(&self) -> PortKind {
        PortKind::Tap
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        read_batch(
            &mut self.dev,
            &self.counter,
            &mut self.staging,
            pool,
            batch,
            |_| Ok(()),
        )
    }

    fn drained(&self) -> bool {
        self.dev.emptied
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        Ok(write_batch(
            &self.dev,
            &self.counter,
            batch,
            pool,
            &mut self.scratch,
        ))
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        vec![self.dev.dev.as_fd().as_raw_fd()]
    }
}

/// The node's host port: a TUN device (default `podswitch0`) carrying IPv4
/// between the node's own stack and the pods; podswitchd routes the pods'
/// subnets through it (`host_routes.rs`). Packets from the stack get an
/// Ethernet header with the gateway MAC on both sides (the pipeline routes
/// them by IP); frames to the stack lose theirs.
#[derive(Debug)]
pub struct HostPort {
    dev: Device,
    counter: Counter,
    staging: Vec<PacketBuf>,
    scratch: Vec<PacketBuf>,
    gateway_mac: MacAddr,
    /// A member of a port split among workers reports its reads to the
    /// queues' steering program.
    steered: Option<Steered>,
}

/// How the host port is set up.
#[derive(Debug, Clone)]
pub struct HostPortOptions {
    /// Device name.
    pub name: String,
    /// MTU (the pods' MTU: what fits a tunnel).
    pub mtu: u32,
    /// The address the node uses towards pods (the gateway's in bridge
    /// mode), given to the device as a /32.
    pub address: std::net::Ipv4Addr,
    /// The node's tunnel end's address ([`crate::config::NodeConfig::tunnel_address`],
    /// flannel.1's), given to the device as a second /32, so the node
    /// takes what is sent to it.
    pub tunnel_address: Option<std::net::Ipv4Addr>,
    /// The MAC the node's packets come from, as the pipeline sees them
    /// (the gateway's).
    pub gateway_mac: MacAddr,
    /// The port may be split among workers ([`Port::fan_out`]): the TUN
    /// is opened able to take a queue per worker (`IFF_MULTI_QUEUE`),
    /// and when it splits a program steers each packet the node sends to
    /// the queue of its CPU by flow ([`FlowSteering`]).
    pub multi_queue: bool,
}

impl HostPort {
    /// Creates the TUN device, sets its MTU and address and brings it up.
    /// IPv6 is disabled on it: IPv6 is not configured, and the stack would
    /// otherwise send router solicitations into it.
    pub fn open(options: &HostPortOptions, id: PortId, stats: Arc<Stats>) -> io::Result<HostPort> {
        let name = options.name.as_str();
        let dev = Device::open(name, TunKind::Tun, options.multi_queue)?;
        let _ = netdev::disable_ipv6(name);
        netdev::set_mtu(name, options.mtu)?;
        netdev::set_ipv4(name, options.address, 32)?;
        if let Some(address) = options.tunnel_address {
            let index = netdev::ifindex(name)?;
            podswitch_host::netlink::Netlink::open()?.add_address(index, address, 32)?;
        }
        netdev::set_up(name)?;
        Ok(HostPort {
            dev,
            counter: Counter { stats, id },
            staging: Vec::with_capacity(1),
            scratch: Vec::new(),
            gateway_mac: options.gateway_mac,
            steered: None,
        })
    }
}

impl Port for HostPort {
    fn name(&self) -> &str {
        self.dev.dev.name()
    }

    fn kind(&self) -> PortKind {
        PortKind::Tun
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        let mac = self.gateway_mac;
        Steered::receive(self.steered.as_mut(), || {
            let got = read_batch(
                &mut self.dev,
                &self.counter,
                &mut self.staging,
                pool,
                batch,
                |buf| {
                    let ethertype = match buf.frame().get(ETH).map(|b| b >> 4) {
                        Some(4) => EtherType::Ipv4,
                        Some(6) => EtherType::Ipv6,
                        _ => return Err(DropReason::HostNotIp),
                    };
                    EthernetRepr {
                        src: mac,
                        dst: mac,
                        ethertype,
                    }
                    .emit(buf.frame_mut());
                    Ok(())
                },
            )?;
            Ok((got, self.dev.emptied))
        })
    }

    fn forwarded(&mut self) {
        if let Some(steered) = &mut self.steered {
            steered.release();
        }
    }

    fn drained(&self) -> bool {
        self.dev.emptied
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        Ok(write_batch(
            &self.dev,
            &self.counter,
            batch,
            pool,
            &mut self.scratch,
        ))
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        vec![self.dev.dev.as_fd().as_raw_fd()]
    }

    /// The TUN's `rx_dropped`: a write succeeds before the packet enters
    /// the node's stack, whose backlog may have no room for it.
    fn send_drop_counters(&self) -> Vec<DeviceCounter> {
        vec![DeviceCounter::RxDropped(self.dev.dev.name().to_string())]
    }

    /// Opens a queue of the TUN for each other member, and steers the
    /// node's packets among the queues by flow: member k reads and writes
    /// queue k. A host port opened without
    /// [`HostPortOptions::multi_queue`] answers
    /// [`io::ErrorKind::Unsupported`].
    fn fan_out(&mut self, members: usize) -> io::Result<Vec<Box<dyn Port>>> {
        if members == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a port split by CPU has at least one member",
            ));
        }
        let queues = (1..members)
            .map(|_| self.dev.another_queue())
            .collect::<io::Result<Vec<_>>>()?;
        // Set once every queue is open (its choice is taken modulo the
        // queues attached). Until then the kernel spreads the node's
        // packets by hash, and those in a queue not yet polled wait for
        // its worker.
        let steering = FlowSteering::new(Group::Fanout, members, DEFAULT_GAP)?;
        self.dev.dev.set_steering_program(steering.program())?;
        self.steered = Some(Steered::new(steering.progress(0)));
        Ok(queues
            .into_iter()
            .zip(1..)
            .map(|(dev, member)| {
                Box::new(HostPort {
                    dev,
                    counter: self.counter.clone(),
                    staging: Vec::with_capacity(1),
                    scratch: Vec::new(),
                    gateway_mac: self.gateway_mac,
                    steered: Some(Steered::new(steering.progress(member))),
                }) as Box<dyn Port>
            })
            .collect())
    }
}
