//! Pod ports over AF_PACKET: one `recvmmsg` and one `sendmmsg` per batch.
//!
//! Each received message is scattered over three areas: its virtio-net
//! header, a pool buffer, and a per-worker overflow slot that only a
//! segmentation-offload super-frame (up to 64 KiB) reaches. Ordinary
//! frames therefore land in their pool buffer with no copy; super-frames
//! are segmented from the two parts into fresh pool buffers.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::{stage, Counter};
use crate::drop::DropReason;
use crate::offload::{complete_checksum, Segmenter, VnetHeader, VNET_HDR_LEN};
use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE};
use crate::port::{Port, PortId, PortKind};
use crate::sys::mmsg::{Received, RecvBuffers, SendBuffers, MAX_PARTS};
use crate::sys::packet_socket::{PacketOptions, PacketSocket};
use crate::tables::Tables;
use std::sync::Arc;

/// The largest frame the kernel can hand over: a 64 KiB GSO packet plus
/// its Ethernet and VLAN headers.
const MAX_FRAME: usize = 65536 + 64;

thread_local! {
    /// Overflow slots of the receiving thread: one per message of a batch.
    /// Ports are polled by one thread at a time, so they share it.
    static OVERFLOW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Where a super-frame is made contiguous before segmenting.
    static JOINED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The receive side shared by pod ports and the underlay's host-gw socket.
#[derive(Debug)]
pub(super) struct PacketRx {
    pub(super) sock: PacketSocket,
    hdrs: Vec<[u8; VNET_HDR_LEN]>,
    meta: Vec<Received>,
    staging: Vec<PacketBuf>,
}

struct RxBuffers<'a> {
    hdrs: &'a mut [[u8; VNET_HDR_LEN]],
    bufs: &'a mut [PacketBuf],
    overflow: &'a mut [u8],
    vnet: bool,
}

impl RecvBuffers for RxBuffers<'_> {
    fn count(&self) -> usize {
        self.bufs.len()
    }

    fn parts(&mut self, i: usize) -> [&mut [u8]; MAX_PARTS] {
        let hdr: &mut [u8] = if self.vnet {
            &mut self.hdrs[i]
        } else {
            &mut []
        };
        let slot = &mut self.overflow[i * MAX_FRAME..(i + 1) * MAX_FRAME];
        [hdr, self.bufs[i].receive_area(0), slot]
    }
}

impl PacketRx {
    pub(super) fn new(sock: PacketSocket) -> PacketRx {
        PacketRx {
            sock,
            hdrs: vec![[0; VNET_HDR_LEN]; BATCH_SIZE],
            meta: vec![Received::default(); BATCH_SIZE],
            staging: Vec::with_capacity(BATCH_SIZE),
        }
    }

    /// Receives up to a batch into `batch`, completing offloads.
    pub(super) fn recv(
        &mut self,
        counter: &Counter,
        pool: &mut PacketPool,
        batch: &mut Vec<PacketBuf>,
    ) -> io::Result<usize> {
        let want = BATCH_SIZE.saturating_sub(batch.len());
        stage(pool, &mut self.staging, want, counter.id);
        if self.staging.is_empty() {
            return Ok(0);
        }
        let vnet = self.sock.has_vnet_hdr();
        let got = OVERFLOW.with_borrow_mut(|overflow| {
            if overflow.len() < BATCH_SIZE * MAX_FRAME {
                overflow.resize(BATCH_SIZE * MAX_FRAME, 0);
            }
            let mut bufs = RxBuffers {
                hdrs: &mut self.hdrs,
                bufs: &mut self.staging,
                overflow,
                vnet,
            };
            let got = self.sock.recv_batch(&mut bufs, &mut self.meta)?;
            let before = batch.len();
            for (i, buf) in self.staging.drain(..got).enumerate() {
                let meta = self.meta[i];
                let hdr = if vnet {
                    VnetHeader::parse(&self.hdrs[i])
                } else {
                    VnetHeader::default()
                };
                let len = meta.len.saturating_sub(if vnet { VNET_HDR_LEN } else { 0 });
                let overflowed = &overflow[i * MAX_FRAME..(i + 1) * MAX_FRAME];
                complete_frame(
                    counter,
                    buf,
                    len,
                    meta.truncated,
                    &hdr,
                    overflowed,
                    pool,
                    batch,
                );
            }
            Ok::<usize, io::Error>(batch.len() - before)
        });
        // Buffers the kernel had no message for go back.
        pool.free_all(&mut self.staging);
        got
    }
}

/// Turns one received message into frames of `batch`: as it is, with its
/// checksum completed, or segmented.
#[allow(clippy::too_many_arguments)]
fn complete_frame(
    counter: &Counter,
    mut buf: PacketBuf,
    len: usize,
    truncated: bool,
    hdr: &VnetHeader,
    overflow: &[u8],
    pool: &mut PacketPool,
    batch: &mut Vec<PacketBuf>,
) {
    let area = buf.receive_area(0).len();
    if truncated {
        counter.drop(DropReason::RxTooLong);
        pool.free(buf);
        return;
    }
    if !hdr.is_gso() {
        if len > area {
            counter.drop(DropReason::RxTooLong);
            pool.free(buf);
            return;
        }
        buf.set_received(0, len);
        if hdr.needs_checksum()
            && complete_checksum(
                buf.frame_mut(),
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )
            .is_err()
        {
            counter.drop(DropReason::OffloadChecksum);
            pool.free(buf);
            return;
        }
        batch.push(buf);
        return;
    }
    JOINED.with_borrow_mut(|joined| {
        joined.clear();
        let head = len.min(area);
        joined.extend_from_slice(&buf.receive_area(0)[..head]);
        joined.extend_from_slice(&overflow[..len - head]);
        let in_port = buf.in_port;
        pool.free(buf);
        let segmenter = match Segmenter::new(joined, hdr) {
            Ok(s) => s,
            Err(crate::offload::OffloadError::GsoUnsupported(_)) => {
                counter.drop(DropReason::GsoUnsupported);
                return;
            }
            Err(_) => {
                counter.drop(DropReason::GsoMalformed);
                return;
            }
        };
        for i in 0..segmenter.count() {
            let Some(mut seg) = pool.alloc(in_port) else {
                counter.drop(DropReason::PoolExhausted);
                continue;
            };
            match segmenter.write(joined, i, seg.receive_area(0)) {
                Some(n) => {
                    seg.set_received(0, n);
                    batch.push(seg);
                }
                None => {
                    counter.drop(DropReason::RxTooLong);
                    pool.free(seg);
                }
            }
        }
    });
}

/// Frames to send, each behind an all-zero virtio-net header ("checksum
/// complete, no segmentation") when the socket uses one.
pub(super) struct TxBuffers<'a> {
    pub(super) frames: &'a [PacketBuf],
    pub(super) vnet: bool,
}

const NO_OFFLOAD: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

impl SendBuffers for TxBuffers<'_> {
    fn count(&self) -> usize {
        self.frames.len()
    }

    fn parts(&self, i: usize) -> [&[u8]; MAX_PARTS] {
        let hdr: &[u8] = if self.vnet { &NO_OFFLOAD } else { &[] };
        [hdr, self.frames[i].frame(), &[]]
    }

    fn destination(&self, _: usize) -> Option<std::net::SocketAddrV4> {
        None
    }
}

/// Sends every frame of `batch` through `send` (one batched call per
/// round), counting each frame the kernel refused as
/// [`DropReason::TxFailed`]; returns how many were sent. A refusal is a
/// counted drop, not a port failure: the other frames still go.
pub(super) fn send_counted(
    counter: &Counter,
    batch: &mut Vec<PacketBuf>,
    pool: &mut PacketPool,
    mut send: impl FnMut(&[PacketBuf]) -> io::Result<usize>,
) -> usize {
    let (mut next, mut sent) = (0, 0);
    while next < batch.len() {
        match send(&batch[next..]) {
            Ok(0) => break, // socket buffer full: the rest is refused
            Ok(n) => {
                next += n;
                sent += n;
            }
            Err(_) => {
                counter.drop(DropReason::TxFailed);
                next += 1;
            }
        }
    }
    counter.drop_n(DropReason::TxFailed, batch.len() - next);
    pool.free_all(batch);
    sent
}

/// A pod port: AF_PACKET on the host side of the pod's veth.
#[derive(Debug)]
pub struct AfPacketPort {
    name: String,
    counter: Counter,
    rx: PacketRx,
}

impl AfPacketPort {
    /// Opens the port on interface `name` with the pod offloads handled
    /// (virtio-net headers) and the qdisc bypassed.
    pub fn open(name: &str, id: PortId, tables: Arc<Tables>) -> io::Result<AfPacketPort> {
        let ifindex = crate::sys::netdev::ifindex(name)?;
        let sock = PacketSocket::open(ifindex, PacketOptions::default())
            .map_err(|e| io::Error::new(e.kind(), format!("AF_PACKET on {name}: {e}")))?;
        Ok(AfPacketPort {
            name: name.to_string(),
            counter: Counter { tables, id },
            rx: PacketRx::new(sock),
        })
    }
}

impl Port for AfPacketPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PortKind {
        PortKind::AfPacket
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        self.rx.recv(&self.counter, pool, batch)
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        let sock = &self.rx.sock;
        let vnet = sock.has_vnet_hdr();
        Ok(send_counted(&self.counter, batch, pool, |frames| {
            sock.send_batch(&TxBuffers { frames, vnet })
        }))
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        vec![std::os::fd::AsFd::as_fd(&self.rx.sock).as_raw_fd()]
    }
}
