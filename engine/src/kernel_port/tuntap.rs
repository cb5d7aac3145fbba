//! TAP pod ports and the TUN host port. A character device moves one
//! packet per `read`/`write` (there is no batched call for it); both are
//! non-blocking and drained to `EAGAIN` by the worker.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use podswitch_encap::ethernet::{EtherType, EthernetRepr, HEADER_LEN as ETH};
use podswitch_encap::MacAddr;

use super::{finish_offloads, has_offloads, stage, Counter};
use crate::drop::DropReason;
use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE};
use crate::port::{Port, PortId, PortKind};
use crate::sys::netdev;
use crate::sys::tun::{TunDevice, TunKind};
use crate::tables::Tables;

/// Reads up to a batch of packets from `dev`, each at `reserve` bytes into
/// a pool buffer; `finish` completes each frame (or refuses it with a
/// reason).
fn read_batch(
    dev: &TunDevice,
    counter: &Counter,
    staging: &mut Vec<PacketBuf>,
    pool: &mut PacketPool,
    batch: &mut Vec<PacketBuf>,
    reserve: usize,
    mut finish: impl FnMut(&mut PacketBuf) -> Result<(), DropReason>,
) -> io::Result<usize> {
    let want = BATCH_SIZE.saturating_sub(batch.len());
    let mut got = 0;
    while got < want {
        stage(pool, staging, 1, counter.id);
        let Some(mut buf) = staging.pop() else { break };
        let area = buf.receive_area(reserve);
        let capacity = area.len();
        match dev.read(area) {
            Ok(Some(n)) if n < capacity => {
                buf.set_received(reserve, n);
                got += 1;
                match finish(&mut buf) {
                    Ok(()) => batch.push(buf),
                    Err(reason) => {
                        counter.drop(reason);
                        pool.free(buf);
                    }
                }
            }
            Ok(Some(_)) => {
                // Filled to the brim: the packet may have been cut.
                counter.drop(DropReason::RxTooLong);
                pool.free(buf);
            }
            Ok(None) => {
                pool.free(buf);
                break;
            }
            Err(e) => {
                pool.free(buf);
                return Err(e);
            }
        }
    }
    Ok(got)
}

/// Writes each frame of `batch` (from `skip` bytes on), its offloads
/// finished first, counting refusals.
fn write_batch(
    dev: &TunDevice,
    counter: &Counter,
    batch: &mut Vec<PacketBuf>,
    pool: &mut PacketPool,
    scratch: &mut Vec<PacketBuf>,
    skip: usize,
) -> usize {
    finish_offloads(counter, batch, pool, scratch, has_offloads);
    let mut sent = 0;
    for buf in batch.iter() {
        match buf.frame().get(skip..).map(|p| dev.write(&[p])) {
            Some(Ok(_)) => sent += 1,
            _ => counter.drop(DropReason::TxFailed),
        }
    }
    pool.free_all(batch);
    sent
}

/// A pod attached through a TAP device: Ethernet frames both ways.
#[derive(Debug)]
pub struct TapPort {
    dev: TunDevice,
    counter: Counter,
    staging: Vec<PacketBuf>,
    scratch: Vec<PacketBuf>,
}

impl TapPort {
    /// Creates (or attaches to) the TAP device `name` and brings it up.
    /// The device can then be moved into the pod's network namespace; the
    /// port keeps working through its file descriptor.
    pub fn open(name: &str, id: PortId, tables: Arc<Tables>) -> io::Result<TapPort> {
        let dev = TunDevice::open(name, TunKind::Tap)?;
        netdev::set_up(name)?;
        Ok(TapPort {
            dev,
            counter: Counter { tables, id },
            staging: Vec::with_capacity(1),
            scratch: Vec::new(),
        })
    }
}

impl Port for TapPort {
    fn name(&self) -> &str {
        self.dev.name()
    }

    fn kind(&self) -> PortKind {
        PortKind::Tap
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        read_batch(
            &self.dev,
            &self.counter,
            &mut self.staging,
            pool,
            batch,
            0,
            |_| Ok(()),
        )
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        Ok(write_batch(
            &self.dev,
            &self.counter,
            batch,
            pool,
            &mut self.scratch,
            0,
        ))
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        vec![self.dev.as_fd().as_raw_fd()]
    }
}

/// The node's host port: a TUN device (default `podswitch0`) carrying IPv4
/// between the node's own stack and the pods, with a route for the cluster
/// CIDR through it. Packets from the stack get an Ethernet header with the
/// gateway MAC on both sides (the pipeline routes them by IP); frames to the
/// stack lose theirs.
#[derive(Debug)]
pub struct HostPort {
    dev: TunDevice,
    counter: Counter,
    staging: Vec<PacketBuf>,
    scratch: Vec<PacketBuf>,
    gateway_mac: MacAddr,
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
    /// Routed through the device: the cluster CIDR.
    pub routes: Vec<crate::fib::Prefix>,
}

impl HostPort {
    /// Creates the TUN device, sets its MTU and address, brings it up and
    /// adds the routes. IPv6 is disabled on it: IPv6 is not configured,
    /// and the stack would otherwise send router solicitations into it.
    pub fn open(
        options: &HostPortOptions,
        id: PortId,
        tables: Arc<Tables>,
    ) -> io::Result<HostPort> {
        let name = options.name.as_str();
        let dev = TunDevice::open(name, TunKind::Tun)?;
        let _ = netdev::set_net_sysctl(&format!("ipv6/conf/{name}/disable_ipv6"), "1");
        netdev::set_mtu(name, options.mtu)?;
        netdev::set_ipv4(name, options.address, 32)?;
        netdev::set_up(name)?;
        for route in &options.routes {
            netdev::add_device_route(route.addr(), route.prefix_len(), name)?;
        }
        let gateway_mac = tables.load().node.gateway_mac;
        Ok(HostPort {
            dev,
            counter: Counter { tables, id },
            staging: Vec::with_capacity(1),
            scratch: Vec::new(),
            gateway_mac,
        })
    }
}

impl Port for HostPort {
    fn name(&self) -> &str {
        self.dev.name()
    }

    fn kind(&self) -> PortKind {
        PortKind::Tun
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        let mac = self.gateway_mac;
        read_batch(
            &self.dev,
            &self.counter,
            &mut self.staging,
            pool,
            batch,
            ETH,
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
        )
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        Ok(write_batch(
            &self.dev,
            &self.counter,
            batch,
            pool,
            &mut self.scratch,
            ETH,
        ))
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        vec![self.dev.as_fd().as_raw_fd()]
    }
}
