//! Pod ports over AF_XDP: the XDP program takes every frame the pod sends
//! before the kernel's stack sees it, so the node's kernel never acts on
//! pod traffic.
//!
//! What the kernel hands over on a veth (checked on this kernel): attaching
//! an XDP program without multi-buffer support makes veth drop TSO/GSO
//! from its peer's features (`veth_xdp_set`), so the pod's stack segments
//! in software and frames arrive MTU-sized; TX checksum offload stays on,
//! so TCP and UDP frames arrive with partial checksums and nothing says
//! so. [`complete_partial_l4`] finishes them.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::{finish_offloads, has_offloads, Counter, KernelDrops};
use crate::drop::DropReason;
use crate::offload::complete_partial_l4;
use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE};
use crate::port::{DeviceCounter, Port, PortId, PortKind};
use crate::stats::Stats;
use crate::sys::xdp::{XdpMode, XdpSocket};

/// An AF_XDP socket read into pool buffers: what the pod ports and the
/// AF_XDP underlay share.
#[derive(Debug)]
pub(super) struct XdpRx {
    pub(super) sock: XdpSocket,
    kernel_drops: KernelDrops,
}

impl XdpRx {
    pub(super) fn new(sock: XdpSocket) -> XdpRx {
        XdpRx {
            sock,
            kernel_drops: KernelDrops::xdp(),
        }
    }

    /// Reads up to a batch's room of frames, each copied into a pool
    /// buffer and handed to `fix` before it joins `batch`; counts the
    /// frames the pool could not take and those the kernel dropped.
    /// Returns the frames read, kept or dropped (the `Port::recv`
    /// contract).
    pub(super) fn recv(
        &mut self,
        counter: &Counter,
        pool: &mut PacketPool,
        batch: &mut Vec<PacketBuf>,
        fix: impl Fn(&mut [u8]),
    ) -> usize {
        let want = BATCH_SIZE.saturating_sub(batch.len());
        let read = self
            .sock
            .recv(want, |frame| match pool.alloc_with(counter.id, frame) {
                Some(mut buf) => {
                    fix(buf.frame_mut());
                    batch.push(buf);
                }
                None if frame.len() > pool.buf_size() => counter.drop(DropReason::RxTooLong),
                None => counter.drop(DropReason::PoolExhausted),
            });
        let sock = &self.sock;
        self.kernel_drops
            .after_recv(counter, read, want, false, || sock.kernel_drops().ok());
        read
    }
}

/// A pod port: AF_XDP on the host side of the pod's veth.
#[derive(Debug)]
pub struct AfXdpPort {
    name: String,
    counter: Counter,
    rx: XdpRx,
    scratch: Vec<PacketBuf>,
}

impl AfXdpPort {
    /// Opens the port on interface `name`: native XDP if the driver takes
    /// it (and `native`), generic otherwise; [`Self::mode`] says which.
    pub fn open(name: &str, id: PortId, stats: Arc<Stats>, native: bool) -> io::Result<AfXdpPort> {
        Ok(AfXdpPort {
            name: name.to_string(),
            counter: Counter { stats, id },
            rx: XdpRx::new(XdpSocket::open(name, native)?),
            scratch: Vec::new(),
        })
    }

    /// Native or generic XDP.
    pub fn mode(&self) -> XdpMode {
        self.rx.sock.mode()
    }
}

impl Port for AfXdpPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PortKind {
        PortKind::AfXdp
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        // The kernel leaves TCP and UDP checksums partial (see above).
        let read = self.rx.recv(&self.counter, pool, batch, |frame| {
            complete_partial_l4(frame);
        });
        Ok(read)
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        // An XDP frame is one wire-sized packet with nothing left to do.
        finish_offloads(&self.counter, batch, pool, &mut self.scratch, has_offloads);
        let sent = self.rx.sock.send(batch.iter().map(PacketBuf::frame));
        self.counter
            .drop_n(DropReason::TxFailed, batch.len() - sent);
        pool.free_all(batch);
        Ok(sent)
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        vec![self.rx.sock.fd()]
    }

    /// The veth's `tx_dropped`: while the pod's end is down, the host end
    /// has no carrier, and the kernel drops each frame of the TX ring
    /// there (`__dev_direct_xmit`) after the ring took it.
    fn send_drop_counters(&self) -> Vec<DeviceCounter> {
        vec![DeviceCounter::TxDropped(self.name.clone())]
    }
}
