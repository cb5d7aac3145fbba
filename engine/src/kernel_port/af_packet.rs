//! Pod ports over AF_PACKET: one `recvmmsg` and one `sendmmsg` per batch,
//! super-frames carried whole both ways.
//!
//! Each received message is scattered over three areas: its virtio-net
//! header, a small pool buffer, and a super-frame pool buffer that only a
//! GSO super-frame (up to 64 KiB) reaches. Ordinary frames therefore land
//! in their small buffer with no copy; a super-frame is made whole in its
//! large buffer by copying the small buffer's part in front (under 2 KiB)
//! and travels on as one packet with its offload state
//! ([`accept_vnet_header`]). On send, each frame's virtio-net header hands
//! its offloads to the kernel ([`vnet_header_for`]): a super-frame reaches
//! the pod as one skb, segmented late or never, as in the kernel's own
//! path (DESIGN.md, "Offloads"); and consecutive small datagrams of one
//! flow go as one super-datagram ([`coalesce_udp_runs`]), one skb where
//! each took one.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use super::{
    finish_offloads, give_back, has_offloads, offload_drop_reason, received_frame, stage,
    stage_large, Counter, KernelDrops, Steered,
};
use crate::drop::DropReason;
use crate::offload::{
    accept_vnet_header, coalesce_udp_runs, vnet_header_for, VnetHeader, VNET_HDR_LEN,
};
use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE, HEADROOM};
use crate::port::{DeviceCounter, Port, PortId, PortKind};
use crate::stats::{OffloadEvent, Stats};
use crate::sys::flow_steer::{self, FlowSteering};
use crate::sys::mmsg::{Received, RecvBuffers, SendBuffers, MAX_PARTS};
use crate::sys::packet_socket::{PacketOptions, PacketSocket};
use crate::sys::tcx::IngressStop;

/// The receive side shared by pod ports and the underlay's host-gw and
/// IPIP sockets.
#[derive(Debug)]
pub(super) struct PacketRx {
    pub(super) sock: PacketSocket,
    hdrs: Vec<[u8; VNET_HDR_LEN]>,
    meta: Vec<Received>,
    staging: Vec<PacketBuf>,
    /// Super-frame buffers behind the staged small ones, one per message
    /// while the pool has them.
    staging_large: Vec<Option<PacketBuf>>,
    /// What the kernel dropped for the socket.
    kernel_drops: KernelDrops,
    /// The last receive found the socket empty: it got fewer messages
    /// than it asked the kernel for (the buffers it could stage).
    pub(super) emptied: bool,
    /// Whether a flow's datagrams leave as one super-datagram
    /// ([`coalesce_udp_runs`]): on a socket with virtio-net headers, on a
    /// kernel that takes `GSO_UDP_L4` from one (Linux 6.2,
    /// `virtio_net_hdr_to_skb`); off for good once the kernel refused one.
    udp_batches: bool,
    /// A message longer than a small buffer goes on into a super-frame
    /// buffer though the socket has no virtio-net headers: the split IPIP
    /// underlay's, whose super-frames the pipeline recognises after
    /// decapsulation, as those from its raw socket (a virtio-net header
    /// would describe the outer header as the segments' own).
    whole_without_vnet: bool,
}

struct RxBuffers<'a> {
    hdrs: &'a mut [[u8; VNET_HDR_LEN]],
    bufs: &'a mut [PacketBuf],
    large: &'a mut [Option<PacketBuf>],
    vnet: bool,
    small_area: usize,
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
        let rest: &mut [u8] = match self.large.get_mut(i) {
            Some(Some(large)) => large.receive_area(self.small_area),
            _ => &mut [],
        };
        [hdr, self.bufs[i].receive_area(0), rest]
    }
}

impl PacketRx {
    /// The socket's receive and send side; a flow's small datagrams leave
    /// as one super-datagram if `udp_batches` and the socket and kernel
    /// allow it (see [`PacketRx::udp_batches`]).
    pub(super) fn new(sock: PacketSocket, udp_batches: bool) -> PacketRx {
        PacketRx {
            hdrs: vec![[0; VNET_HDR_LEN]; BATCH_SIZE],
            meta: vec![Received::default(); BATCH_SIZE],
            staging: Vec::with_capacity(BATCH_SIZE),
            staging_large: Vec::with_capacity(BATCH_SIZE),
            kernel_drops: KernelDrops::socket(),
            emptied: false,
            udp_batches: udp_batches && sock.has_vnet_hdr() && crate::sys::kernel_at_least(6, 2),
            whole_without_vnet: false,
            sock,
        }
    }

    /// The receive side of a socket without virtio-net headers that takes
    /// frames up to a super-frame buffer's length whole (see
    /// `whole_without_vnet`); it sends nothing.
    pub(super) fn whole_frames(sock: PacketSocket) -> PacketRx {
        PacketRx {
            whole_without_vnet: true,
            ..PacketRx::new(sock, false)
        }
    }

    /// Whether a flow's small datagrams leave as one super-datagram.
    pub(super) fn udp_batches(&self) -> bool {
        self.udp_batches
    }

    /// Receives up to a batch into `batch`, with each frame's offload
    /// state.
    pub(super) fn recv(
        &mut self,
        counter: &Counter,
        pool: &mut PacketPool,
        batch: &mut Vec<PacketBuf>,
    ) -> io::Result<usize> {
        let want = BATCH_SIZE.saturating_sub(batch.len());
        stage(pool, &mut self.staging, want, counter.id);
        let asked = self.staging.len();
        self.emptied = false;
        if self.staging.is_empty() {
            return Ok(0);
        }
        let vnet = self.sock.has_vnet_hdr();
        // Only a socket with virtio-net headers gets super-frames, but for
        // one asked to take them whole.
        if vnet || self.whole_without_vnet {
            stage_large(
                pool,
                &mut self.staging_large,
                self.staging.len(),
                counter.id,
            );
        }
        let small_area = pool.buf_size() - HEADROOM;
        let mut bufs = RxBuffers {
            hdrs: &mut self.hdrs,
            bufs: &mut self.staging,
            large: &mut self.staging_large,
            vnet,
            small_area,
        };
        let got = self.sock.recv_batch(&mut bufs, &mut self.meta);
        let got = match got {
            Ok(n) => n,
            Err(e) => {
                give_back(pool, &mut self.staging, &mut self.staging_large);
                return Err(e);
            }
        };
        self.emptied = got < asked;
        self.kernel_drops
            .after_socket_recv(counter, got, want, self.emptied, self.sock.as_fd());
        for (i, small) in self.staging.drain(..got).enumerate() {
            let meta = self.meta[i];
            let large = self.staging_large.get_mut(i).and_then(Option::take);
            let hdr = if vnet {
                VnetHeader::parse(&self.hdrs[i])
            } else {
                VnetHeader::default()
            };
            let len = meta.len.saturating_sub(if vnet { VNET_HDR_LEN } else { 0 });
            // Only a message longer than 64 KiB, or one that found no
            // super-frame buffer, is cut.
            let Some(mut buf) = received_frame(counter, pool, small, large, 0, len, meta.truncated)
            else {
                continue;
            };
            match accept_vnet_header(&mut buf, &hdr) {
                Ok(()) => {
                    if buf.is_gso() {
                        counter.offload(OffloadEvent::SuperFrameIn, 1);
                    }
                    batch.push(buf);
                }
                Err(e) => {
                    counter.drop(offload_drop_reason(e));
                    pool.free(buf);
                }
            }
        }
        give_back(pool, &mut self.staging, &mut self.staging_large);
        // Messages read, kept or dropped: a batch dropped whole does not
        // mean the socket is empty.
        Ok(got)
    }

    /// Sends `batch` with each frame's offloads in its virtio-net header
    /// (a socket without them gets complete frames), counting super-frames
    /// sent whole; returns how many frames were sent.
    pub(super) fn send(
        &mut self,
        counter: &Counter,
        tx: &mut TxScratch,
        batch: &mut Vec<PacketBuf>,
        pool: &mut PacketPool,
    ) -> usize {
        let vnet = self.sock.has_vnet_hdr();
        tx.hdrs.clear();
        if vnet {
            // A frame whose offloads no virtio-net header describes (an
            // encapsulated super-frame) is finished here first.
            finish_offloads(counter, batch, pool, &mut tx.finish, |b| {
                vnet_header_for(b).is_none()
            });
            // Then a flow's small datagrams go as one super-datagram.
            let batches = if self.udp_batches {
                coalesce_udp_runs(batch, pool, &mut tx.datagrams).0
            } else {
                tx.datagrams.clear();
                0
            };
            let mut super_frames = 0;
            for buf in batch.iter() {
                let hdr = vnet_header_for(buf).unwrap_or_default();
                super_frames += usize::from(hdr.is_gso());
                tx.hdrs.push(hdr.to_bytes());
            }
            counter.offload(OffloadEvent::SuperFrameOut, super_frames - batches);
        } else {
            finish_offloads(counter, batch, pool, &mut tx.finish, has_offloads);
            tx.datagrams.clear();
        }
        let sock = &self.sock;
        let (hdrs, datagrams) = (&tx.hdrs, &tx.datagrams);
        let mut batch_refused = false;
        let sent = send_counted(counter, batch, pool, datagrams, |from, frames| {
            let sent = sock.send_batch(&TxBuffers {
                frames,
                hdrs: if vnet { &hdrs[from..] } else { &[] },
            });
            // sendmmsg reports an error only for its first message.
            if matches!(&sent, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
                && datagrams.get(from).is_some_and(|&n| n > 1)
            {
                batch_refused = true;
            }
            sent
        });
        if batch_refused {
            // Its datagrams were counted as dropped; the kernel will not
            // take the next one either.
            self.udp_batches = false;
            tracing::warn!(
                ifindex = self.sock.ifindex(),
                "the interface refused a UDP super-datagram (GSO_UDP_L4): \
                 its datagrams leave one by one from now on"
            );
        }
        sent
    }
}

/// A packet socket port's reusable send state.
#[derive(Debug, Default)]
pub(super) struct TxScratch {
    hdrs: Vec<[u8; VNET_HDR_LEN]>,
    finish: Vec<PacketBuf>,
    /// Datagrams each frame carries once a flow's were merged
    /// ([`coalesce_udp_runs`]).
    datagrams: Vec<usize>,
}

/// Frames to send, each behind its virtio-net header when the socket
/// uses them (`hdrs[i]` for `frames[i]`; empty otherwise).
pub(super) struct TxBuffers<'a> {
    pub(super) frames: &'a [PacketBuf],
    pub(super) hdrs: &'a [[u8; VNET_HDR_LEN]],
}

impl SendBuffers for TxBuffers<'_> {
    fn count(&self) -> usize {
        self.frames.len()
    }

    fn parts(&self, i: usize) -> [&[u8]; MAX_PARTS] {
        let hdr: &[u8] = self.hdrs.get(i).map_or(&[], |h| h.as_slice());
        [hdr, self.frames[i].frame(), &[]]
    }

    fn destination(&self, _: usize) -> Option<std::net::SocketAddrV4> {
        None
    }
}

/// Sends every frame of `batch` through `send` (one batched call per
/// round, given the index of its first frame and the frames from there),
/// counting each frame the kernel refused as [`DropReason::TxFailed`]
/// (as many drops as it carries datagrams, `datagrams[i]` for frame `i`,
/// when given; one each otherwise) and the datagrams of each merged frame
/// sent as [`OffloadEvent::DatagramsBatched`]; returns how many frames
/// were sent. A refusal is a counted drop, not a port failure: the other
/// frames still go.
pub(super) fn send_counted(
    counter: &Counter,
    batch: &mut Vec<PacketBuf>,
    pool: &mut PacketPool,
    datagrams: &[usize],
    send: impl FnMut(usize, &[PacketBuf]) -> io::Result<usize>,
) -> usize {
    let sent = send_counted_run(counter, batch, datagrams, send);
    pool.free_all(batch);
    sent
}

/// [`send_counted`] for a run of frames the caller keeps (and frees).
pub(super) fn send_counted_run(
    counter: &Counter,
    frames: &[PacketBuf],
    datagrams: &[usize],
    mut send: impl FnMut(usize, &[PacketBuf]) -> io::Result<usize>,
) -> usize {
    let lost = |range: std::ops::Range<usize>| match datagrams.get(range.clone()) {
        Some(counts) => counts.iter().sum(),
        None => range.len(),
    };
    let (mut next, mut sent) = (0, 0);
    while next < frames.len() {
        match send(next, &frames[next..]) {
            Ok(0) => break, // socket buffer full: the rest is refused
            Ok(n) => {
                if let Some(counts) = datagrams.get(next..next + n) {
                    let batched: usize = counts.iter().filter(|&&c| c > 1).sum();
                    if batched > 0 {
                        counter.offload(OffloadEvent::DatagramsBatched, batched);
                    }
                }
                next += n;
                sent += n;
            }
            Err(_) => {
                counter.drop_n(DropReason::TxFailed, lost(next..next + 1));
                next += 1;
            }
        }
    }
    counter.drop_n(DropReason::TxFailed, lost(next..frames.len()));
    sent
}

/// A pod port: AF_PACKET on the host side of the pod's veth.
#[derive(Debug)]
pub struct AfPacketPort {
    name: String,
    counter: Counter,
    rx: PacketRx,
    tx: TxScratch,
    /// What ends the node kernel's own handling of the pod's frames once
    /// the socket has them ([`crate::sys::tcx`]), or why it could not be
    /// attached; `None` in the other members of a port split by CPU
    /// ([`Port::fan_out`]), which the first member's covers.
    kernel_stop: Option<io::Result<IngressStop>>,
    /// A member of a port split among workers reports its reads to the
    /// group's steering program ([`Port::fan_out`]).
    steered: Option<Steered>,
}

impl AfPacketPort {
    /// Opens the port on interface `name` with the pod offloads handled
    /// (virtio-net headers), and ends the pod's frames in podswitch: the
    /// node's kernel, which sees them first on the veth, does not go on
    /// with them where it has tcx (see [`AfPacketPort::kernel_stop_error`]).
    /// With `udp_batches`, a flow's small datagrams reach the pod as one
    /// super-datagram ([`coalesce_udp_runs`]) where the kernel allows it.
    pub fn open(
        name: &str,
        id: PortId,
        stats: Arc<Stats>,
        udp_batches: bool,
    ) -> io::Result<AfPacketPort> {
        let ifindex = crate::sys::netdev::ifindex(name)?;
        let sock = PacketSocket::open(ifindex, PacketOptions::default())
            .map_err(|e| io::Error::new(e.kind(), format!("AF_PACKET on {name}: {e}")))?;
        // After the socket is bound, so that no frame reaches neither.
        let kernel_stop = IngressStop::attach(ifindex);
        Ok(AfPacketPort {
            name: name.to_string(),
            counter: Counter { stats, id },
            rx: PacketRx::new(sock, udp_batches),
            tx: TxScratch::default(),
            kernel_stop: Some(kernel_stop),
            steered: None,
        })
    }

    /// Why the node's kernel still goes on with this pod's frames after
    /// the socket has them (a kernel before 6.6, BPF not allowed), if it
    /// does. Then a pod's Ethernet broadcast reaches the node's own stack
    /// past podswitch's checks, as it would with any tap.
    pub fn kernel_stop_error(&self) -> Option<&io::Error> {
        super::kernel_stop_failure(&self.kernel_stop)
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
        Steered::receive(self.steered.as_mut(), || {
            let got = self.rx.recv(&self.counter, pool, batch)?;
            Ok((got, self.rx.emptied))
        })
    }

    fn forwarded(&mut self) {
        if let Some(steered) = &mut self.steered {
            steered.release();
        }
    }

    fn drained(&self) -> bool {
        self.rx.emptied
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        Ok(self.rx.send(&self.counter, &mut self.tx, batch, pool))
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        vec![self.rx.sock.as_fd().as_raw_fd()]
    }

    /// The veth's `tx_dropped`: while the pod's end is down, the host end
    /// has no carrier and drops what podswitch sends it after the send
    /// has succeeded.
    fn send_drop_counters(&self) -> Vec<DeviceCounter> {
        vec![DeviceCounter::TxDropped(self.name.clone())]
    }

    /// A fanout group on the pod's veth steered by flow, this port's
    /// socket its first member
    /// ([`PacketSocket::fan_out_by_flow`](crate::sys::packet_socket::PacketSocket::fan_out_by_flow),
    /// with [`flow_steer::DEFAULT_GAP`]). Each member reports its reads
    /// when its worker says they are forwarded ([`Port::forwarded`]).
    /// The new members open their sockets in the calling thread's network
    /// namespace, which must be the port's.
    fn fan_out(&mut self, members: usize) -> io::Result<Vec<Box<dyn Port>>> {
        if members == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a port split by CPU has at least one member",
            ));
        }
        let splitting =
            |e: io::Error| io::Error::new(e.kind(), format!("splitting {} by CPU: {e}", self.name));
        let steering =
            FlowSteering::new(flow_steer::Group::Fanout, members, flow_steer::DEFAULT_GAP)
                .map_err(splitting)?;
        let sockets = self
            .rx
            .sock
            .fan_out_by_flow(members - 1, PacketOptions::default(), &steering)
            .map_err(splitting)?;
        self.steered = Some(Steered::new(steering.progress(0)));
        let others = sockets
            .into_iter()
            .enumerate()
            .map(|(i, sock)| {
                Box::new(AfPacketPort {
                    name: self.name.clone(),
                    counter: self.counter.clone(),
                    rx: PacketRx::new(sock, self.rx.udp_batches),
                    tx: TxScratch::default(),
                    kernel_stop: None,
                    steered: Some(Steered::new(steering.progress(i + 1))),
                }) as Box<dyn Port>
            })
            .collect();
        Ok(others)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::PortId;

    /// A send that the kernel partly refuses: the frames it took count
    /// the datagrams merged into them as batched, each it refused counts
    /// as many drops as it carried datagrams, and so does what a full
    /// socket left.
    #[test]
    fn refused_frames_count_every_datagram_they_carried() {
        let stats = Arc::new(Stats::new(4));
        let counter = Counter {
            stats: stats.clone(),
            id: PortId(1),
        };
        let mut pool = PacketPool::new(8, 2048);
        let frames: Vec<PacketBuf> = (0..5)
            .map(|_| pool.alloc_with(PortId(1), &[0; 60]).unwrap())
            .collect();
        // Frame 0 (a batch of 32) goes; frame 1 (a batch of 5) is
        // refused; frames 2 and 3 go; then the socket is full, leaving
        // frame 4 (a batch of 7).
        let datagrams = [32, 5, 1, 1, 7];
        let mut calls = 0;
        let sent = send_counted_run(&counter, &frames, &datagrams, |from, _| {
            calls += 1;
            match from {
                0 => Ok(1),
                1 => Err(io::Error::from_raw_os_error(libc::EINVAL)),
                2 => Ok(2),
                _ => Ok(0),
            }
        });
        assert_eq!((sent, calls), (3, 4));
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.drop_count(DropReason::TxFailed), 5 + 7);
        assert_eq!(snapshot.port(PortId(1)).datagrams_batched, 32);
        // Without counts, a frame is one drop.
        let sent = send_counted_run(&counter, &frames, &[], |_, _| Ok(0));
        assert_eq!(sent, 0);
        assert_eq!(stats.snapshot().drop_count(DropReason::TxFailed), 12 + 5);
        let mut frames = frames;
        pool.free_all(&mut frames);
    }
}
