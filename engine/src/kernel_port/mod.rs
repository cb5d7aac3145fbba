//! Ports over the kernel's interfaces: what podswitchd attaches.
//!
//! | port | kernel interface | frames |
//! |---|---|---|
//! | [`AfXdpPort`] | AF_XDP socket on a pod veth's host side (the default) | Ethernet, partial checksums completed |
//! | [`AfPacketPort`] | AF_PACKET socket on a pod veth's host side | Ethernet; super-frames and partial checksums carried both ways ([`crate::offload`]) |
//! | [`TapPort`] | a TAP device a pod uses as its interface | Ethernet |
//! | [`HostPort`] | the TUN device `podswitch0` | IPv4 to and from the node's own stack |
//! | [`UnderlayPort`] | UDP socket (VXLAN, IP-in-UDP), raw IPIP socket, raw sending socket, AF_PACKET for host-gw | outer frames |
//!
//! Every port speaks Ethernet frames to the pipeline, whatever its kernel
//! interface carries: a TUN port adds and strips an Ethernet header, and
//! the socket-backed underlay rebuilds the outer headers the kernel
//! consumed, so the pipeline, `trace` and `capture` see the same frames an
//! AF_XDP underlay will give them. Frames a port cannot take or deliver
//! are dropped with a [`DropReason`] counted on that port. A port whose
//! kernel interface cannot take a super-frame or a partial checksum
//! finishes it in software before sending (`finish_offloads`), counted
//! under [`OffloadEvent`].

mod af_packet;
mod af_xdp;
mod tuntap;
mod underlay;

use std::sync::Arc;

pub use af_packet::AfPacketPort;
pub use af_xdp::AfXdpPort;
pub use tuntap::{HostPort, HostPortOptions, TapPort};
pub use underlay::{UnderlayOptions, UnderlayPort};

use crate::drop::DropReason;
use crate::offload::{finish_in_software, Finished, OffloadError};
use crate::packet::{PacketBuf, PacketPool};
use crate::port::PortId;
use crate::stats::OffloadEvent;
use crate::tables::Tables;

/// What every kernel port needs to count its own drops.
#[derive(Debug, Clone)]
struct Counter {
    tables: Arc<Tables>,
    id: PortId,
}

impl Counter {
    fn drop(&self, reason: DropReason) {
        self.tables.stats.add_drop(self.id, reason);
    }

    fn drop_n(&self, reason: DropReason, n: usize) {
        for _ in 0..n {
            self.tables.stats.add_drop(self.id, reason);
        }
    }

    fn offload(&self, event: OffloadEvent, n: usize) {
        self.tables.stats.add_offload(self.id, event, n as u64);
    }
}

/// Finishes in software what the offloads of each frame of `batch` for
/// which `must_finish` holds left undone (segments super-frames, completes
/// partial checksums), counting it, and leaves in `batch`, in order, the
/// frames to send. `scratch` is the port's spare batch (its capacity is
/// kept). A port that sends only complete wire-sized frames passes
/// [`has_offloads`].
fn finish_offloads(
    counter: &Counter,
    batch: &mut Vec<PacketBuf>,
    pool: &mut PacketPool,
    scratch: &mut Vec<PacketBuf>,
    must_finish: impl Fn(&PacketBuf) -> bool,
) {
    if !batch.iter().any(&must_finish) {
        return;
    }
    scratch.clear();
    for buf in batch.drain(..) {
        if !must_finish(&buf) {
            scratch.push(buf);
            continue;
        }
        match finish_in_software(buf, pool, scratch) {
            Ok(Finished::Untouched) => {}
            Ok(Finished::ChecksumCompleted) => counter.offload(OffloadEvent::ChecksumCompleted, 1),
            Ok(Finished::Segmented(n)) => {
                counter.offload(OffloadEvent::Segmented, 1);
                counter.offload(OffloadEvent::SegmentsMade, n);
            }
            Err(reason) => counter.drop(reason),
        }
    }
    std::mem::swap(batch, scratch);
}

/// The drop reason for offload metadata a port refused.
fn offload_drop_reason(e: OffloadError) -> DropReason {
    match e {
        OffloadError::ChecksumOutOfFrame => DropReason::OffloadChecksum,
        OffloadError::GsoUnsupported(_) => DropReason::GsoUnsupported,
        OffloadError::GsoMalformed(_) => DropReason::GsoMalformed,
    }
}

/// True if a frame has offload work left (a super-frame or a partial
/// checksum).
fn has_offloads(buf: &PacketBuf) -> bool {
    !buf.offload().is_none()
}

/// Makes one received message a frame of `len` bytes at `reserve`: in its
/// small buffer, or, when longer, joined into the super-frame buffer the
/// kernel continued it in (the small buffer's part copied in front). A
/// message the kernel cut (`truncated`: longer than both, or no
/// super-frame buffer was free) is counted and gives `None`. The buffer
/// not used goes back to the pool.
fn received_frame(
    counter: &Counter,
    pool: &mut PacketPool,
    mut small: PacketBuf,
    large: Option<PacketBuf>,
    reserve: usize,
    len: usize,
    truncated: bool,
) -> Option<PacketBuf> {
    let small_area = small.receive_area(reserve).len();
    if truncated {
        counter.drop(if large.is_some() {
            DropReason::RxTooLong
        } else {
            DropReason::PoolExhausted
        });
        pool.free(small);
        if let Some(large) = large {
            pool.free(large);
        }
        return None;
    }
    match large {
        Some(mut large) if len > small_area => {
            large.join_received(&small.receive_area(reserve)[..small_area], reserve, len);
            pool.free(small);
            Some(large)
        }
        large => {
            if let Some(large) = large {
                pool.free(large);
            }
            small.set_received(reserve, len);
            Some(small)
        }
    }
}

/// Puts a super-frame buffer behind each staged small one, while the pool
/// has them: the area a message longer than a small buffer continues in.
fn stage_large(
    pool: &mut PacketPool,
    staging_large: &mut Vec<Option<PacketBuf>>,
    staged: usize,
    id: PortId,
) {
    while staging_large.len() < staged {
        match pool.alloc_large(id) {
            Some(buf) => staging_large.push(Some(buf)),
            None => break,
        }
    }
}

/// Staged buffers the kernel had no message for go back to the pool.
fn give_back(
    pool: &mut PacketPool,
    staging: &mut Vec<PacketBuf>,
    staging_large: &mut Vec<Option<PacketBuf>>,
) {
    pool.free_all(staging);
    for buf in staging_large.drain(..).flatten() {
        pool.free(buf);
    }
}

/// Takes up to `want` buffers from `pool` into `staging` for a receive.
fn stage(pool: &mut PacketPool, staging: &mut Vec<PacketBuf>, want: usize, id: PortId) {
    while staging.len() < want {
        match pool.alloc(id) {
            Some(buf) => staging.push(buf),
            None => break,
        }
    }
}
