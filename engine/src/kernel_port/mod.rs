//! Ports over the kernel's interfaces: what podswitchd attaches.
//!
//! | port | kernel interface | frames |
//! |---|---|---|
//! | [`AfPacketPort`] | AF_PACKET socket on a pod veth's host side (the default) | Ethernet; super-frames and partial checksums carried both ways ([`crate::offload`]) |
//! | [`AfXdpPort`] | AF_XDP socket on a pod veth's host side | Ethernet, partial checksums completed |
//! | [`TapPort`] | a TAP device a pod uses as its interface | Ethernet |
//! | [`HostPort`] | the TUN device `podswitch0` | IPv4 to and from the node's own stack |
//! | [`UnderlayPort`] | UDP socket (VXLAN, IP-in-UDP), raw IPIP socket, raw sending socket, AF_PACKET for host-gw; optionally AF_XDP sockets fed by an XDP program for the tunnel's small packets; a TAP whose frames leave by the underlay interface, for VXLAN super-frames whole | outer frames |
//!
//! Every port speaks Ethernet frames to the pipeline, whatever its kernel
//! interface carries: a TUN port adds and strips an Ethernet header, and
//! the socket-backed underlay rebuilds the outer headers the kernel
//! consumed, so the pipeline, `trace` and `capture` see the same frames an
//! AF_XDP underlay will give them. Frames a port cannot take or deliver
//! are dropped with a [`DropReason`] counted on that port, and so are the
//! frames the kernel dropped before podswitch could read them
//! (`rx_queue_full`, read from the kernel's own counters). A port whose
//! kernel interface cannot take a super-frame or a partial checksum
//! finishes it in software before sending (`finish_offloads`), counted
//! under [`OffloadEvent`].

mod af_packet;
mod af_xdp;
mod neighbour;
mod pod_port;
mod tunnel_tap;
mod tuntap;
mod underlay;

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use af_packet::AfPacketPort;
pub use af_xdp::AfXdpPort;
pub use neighbour::resolve_neighbour;
pub use pod_port::{open_pod_port, OpenedKind, OpenedPort, PodPortKind};
pub use tunnel_tap::DEFAULT_TUNNEL_TAP;
pub use tuntap::{HostPort, HostPortOptions, TapPort};
pub use underlay::{UnderlayOptions, UnderlayPort};

use crate::drop::DropReason;
use crate::offload::{finish_in_software, Finished, OffloadError};
use crate::packet::{PacketBuf, PacketPool};
use crate::port::PortId;
use crate::stats::{OffloadEvent, Stats};
use crate::sys::flow_steer::MemberProgress;
use crate::sys::socket_drops;

/// What every kernel port needs to count its own drops.
#[derive(Debug, Clone)]
struct Counter {
    stats: Arc<Stats>,
    id: PortId,
}

impl Counter {
    fn drop(&self, reason: DropReason) {
        self.stats.add_drop(self.id, reason);
    }

    fn drop_n(&self, reason: DropReason, n: usize) {
        self.stats.add_drops(self.id, reason, n as u64);
    }

    fn offload(&self, event: OffloadEvent, n: usize) {
        self.stats.add_offload(self.id, event, n as u64);
    }
}

/// Busy reads between two looks at a socket's kernel drop counter.
const READS_PER_LOOK: u32 = 64;

/// A member of a port split among workers ([`crate::port::Port::fan_out`]):
/// its report to the group's steering program of how far its frames have
/// been sent on ([`MemberProgress`]), and the receive not yet reported.
#[derive(Debug)]
struct Steered {
    progress: MemberProgress,
    /// The steering mark before the receive, the messages it read and
    /// whether it found the socket empty.
    held: Option<(u32, usize, bool)>,
}

impl Steered {
    fn new(progress: MemberProgress) -> Steered {
        Steered {
            progress,
            held: None,
        }
    }

    /// Before a receive: a worker that receives again has sent on what it
    /// read before. Returns the mark the receive is reported against.
    fn before_recv(&mut self) -> u32 {
        self.release();
        self.progress.steered()
    }

    /// After a receive of `got` messages (`emptied`: it found the socket
    /// empty), held until the worker says they are forwarded; a receive
    /// of none is reported at once, so that its flows may move.
    fn after_recv(&mut self, mark: u32, got: usize, emptied: bool) {
        self.held = Some((mark, got, emptied));
        if got == 0 {
            self.release();
        }
    }

    /// Runs `recv`, a receive that returns the messages it read and
    /// whether it found its socket empty, reported to `steered`'s
    /// program if the port is split.
    fn receive(
        steered: Option<&mut Steered>,
        recv: impl FnOnce() -> io::Result<(usize, bool)>,
    ) -> io::Result<usize> {
        let Some(steered) = steered else {
            return recv().map(|(got, _)| got);
        };
        let mark = steered.before_recv();
        let (got, emptied) = recv()?;
        steered.after_recv(mark, got, emptied);
        Ok(got)
    }

    /// Reports the held receive: its frames have been sent on.
    fn release(&mut self) {
        if let Some((mark, got, emptied)) = self.held.take() {
            self.progress.read(mark, got, emptied);
        }
    }
}

/// Frames the kernel dropped for one of a port's sockets or devices
/// before podswitch read them (its receive queue or ring full), counted
/// as [`DropReason::RxQueueFull`]. The kernel's counter is read every
/// `READS_PER_LOOK` reads that found frames and once when the traffic
/// stops (a read that found the queue empty, whether or not it found
/// frames first), so a drop is counted by the end of its burst without a
/// system call per read.
#[derive(Debug)]
struct KernelDrops {
    /// The kernel's count at the last look.
    seen: Seen,
    /// Width of the kernel's counter (`sk_drops` is 32 bits and wraps).
    bits: u32,
    reads: u32,
    busy: bool,
    /// The counter is costly to read (a device's line of /proc/net/dev,
    /// some 200 µs with a hundred pods' veths): look only if a read since
    /// the last look took all the room it had. A queue that dropped was
    /// full, and stays full until podswitch reads it, so that read is
    /// sure to come.
    only_after_full_reads: bool,
    full_read: bool,
}

/// Where a [`KernelDrops`] keeps the kernel's count at its last look.
#[derive(Debug)]
enum Seen {
    /// Its own: a socket's count, or a device's read by one port.
    Own(u64),
    /// Shared by the members of a port split among workers, each reading
    /// its own queue of one device, whose count is the device's: whichever
    /// member looks first counts what is new, once.
    Shared(Arc<AtomicU64>),
}

impl KernelDrops {
    fn with(bits: u32, seen: u64, only_after_full_reads: bool) -> KernelDrops {
        KernelDrops {
            seen: Seen::Own(seen),
            bits,
            reads: 0,
            busy: false,
            only_after_full_reads,
            full_read: false,
        }
    }

    /// A socket's `sk_drops` (UDP, raw, AF_PACKET): 32 bits, zero when it
    /// opens, cheap to read.
    fn socket() -> KernelDrops {
        KernelDrops::with(32, 0, false)
    }

    /// An AF_XDP socket's `XDP_STATISTICS`: 64 bits, zero when it opens.
    fn xdp() -> KernelDrops {
        KernelDrops::with(64, 0, false)
    }

    /// A device's `tx_dropped`, which stands at `seen` when the port opens
    /// and is costly to read.
    fn device(seen: u64) -> KernelDrops {
        KernelDrops::with(64, seen, true)
    }

    /// After a read that found `got` frames and had room for `room`
    /// (`emptied`: it found the queue empty after them, so it ends a
    /// burst as an empty read would): when a look is due, reads the
    /// kernel's count with `total` and counts what is new on `counter`.
    fn after_recv(
        &mut self,
        counter: &Counter,
        got: usize,
        room: usize,
        emptied: bool,
        total: impl FnOnce() -> Option<u64>,
    ) {
        if got > 0 && got >= room {
            self.full_read = true;
        }
        let due = if got == 0 {
            std::mem::take(&mut self.busy)
        } else if emptied {
            self.busy = false;
            true
        } else {
            self.busy = true;
            self.reads += 1;
            self.reads >= READS_PER_LOOK
        };
        if !due {
            return;
        }
        self.reads = 0;
        if !std::mem::take(&mut self.full_read) && self.only_after_full_reads {
            return;
        }
        let Some(total) = total() else { return };
        let mask = u64::MAX >> (64 - self.bits);
        let last = match &mut self.seen {
            Seen::Own(seen) => std::mem::replace(seen, total),
            // A device's count is 64 bits and never wraps: a member that
            // read an older total than another's finds nothing new.
            Seen::Shared(seen) => seen.fetch_max(total, Ordering::Relaxed).min(total),
        };
        let new = total.wrapping_sub(last) & mask;
        if new > 0 {
            counter.drop_n(DropReason::RxQueueFull, new as usize);
        }
    }

    /// The same count for another member of a split port, reading another
    /// queue of the same device: from now on both share the last look.
    fn share(&mut self) -> KernelDrops {
        let seen = match &self.seen {
            Seen::Own(seen) => Arc::new(AtomicU64::new(*seen)),
            Seen::Shared(seen) => Arc::clone(seen),
        };
        self.seen = Seen::Shared(Arc::clone(&seen));
        KernelDrops {
            seen: Seen::Shared(seen),
            ..KernelDrops::with(self.bits, 0, self.only_after_full_reads)
        }
    }

    /// [`Self::after_recv`] for socket `sock`'s `sk_drops`.
    fn after_socket_recv(
        &mut self,
        counter: &Counter,
        got: usize,
        room: usize,
        emptied: bool,
        sock: BorrowedFd,
    ) {
        self.after_recv(counter, got, room, emptied, || {
            socket_drops(sock).ok().map(u64::from)
        });
    }
}

/// Why a port's tcx program that ends the kernel's own handling of its
/// frames could not be attached, if it was asked for and failed.
fn kernel_stop_failure<T>(stop: &Option<io::Result<T>>) -> Option<&io::Error> {
    stop.as_ref().and_then(|stop| stop.as_ref().err())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::DEFAULT_BUF_SIZE;

    fn counter() -> Counter {
        Counter {
            stats: Arc::new(Stats::new(4)),
            id: PortId(1),
        }
    }

    /// Kernel drops are looked at after READS_PER_LOOK busy reads and when
    /// the traffic stops, counted once, across a 32-bit counter's wrap.
    #[test]
    fn kernel_drops_are_counted_by_the_end_of_a_burst_once() {
        let counter = counter();
        let count = |c: &Counter| c.stats.snapshot().drop_count(DropReason::RxQueueFull);
        let mut drops = KernelDrops::socket();
        let mut looks = 0;
        let mut kernel = u64::from(u32::MAX) - 2;
        for _ in 0..READS_PER_LOOK - 1 {
            drops.after_recv(&counter, 8, 32, false, || {
                looks += 1;
                Some(kernel)
            });
        }
        assert_eq!(looks, 0, "no look before READS_PER_LOOK busy reads");
        drops.after_recv(&counter, 8, 32, false, || {
            looks += 1;
            Some(kernel)
        });
        assert_eq!((looks, count(&counter)), (1, u64::from(u32::MAX) - 2));
        // The counter wraps: 5 more drops read as 2.
        kernel = 2;
        drops.after_recv(&counter, 0, 32, false, || {
            looks += 1;
            Some(kernel)
        });
        assert_eq!((looks, count(&counter)), (2, u64::from(u32::MAX) + 3));
        // Idle reads after that look no more.
        drops.after_recv(&counter, 0, 32, false, || {
            looks += 1;
            Some(kernel)
        });
        assert_eq!(looks, 2);
    }

    /// A read that found frames and then the queue empty ends the burst:
    /// the look is made then, and the empty read after it (a worker that
    /// reads until one) makes none.
    #[test]
    fn kernel_drops_are_counted_by_a_read_that_emptied_the_queue() {
        let counter = counter();
        let mut drops = KernelDrops::socket();
        let mut looks = 0;
        drops.after_recv(&counter, 32, 32, false, || {
            looks += 1;
            Some(3)
        });
        assert_eq!(looks, 0);
        drops.after_recv(&counter, 5, 32, true, || {
            looks += 1;
            Some(3)
        });
        assert_eq!(looks, 1, "the read that emptied the queue looks");
        assert_eq!(
            counter.stats.snapshot().drop_count(DropReason::RxQueueFull),
            3
        );
        drops.after_recv(&counter, 0, 32, false, || {
            looks += 1;
            Some(3)
        });
        assert_eq!(looks, 1, "an empty read after it does not look again");
    }

    /// A device's costly counter is looked at only after a read that
    /// filled its room: the end of a burst of short reads passes it by,
    /// the end of one with a full read does not.
    #[test]
    fn a_device_counter_is_read_only_after_a_full_read() {
        let counter = counter();
        let mut drops = KernelDrops::device(7);
        let mut looks = 0;
        drops.after_recv(&counter, 3, 32, false, || {
            looks += 1;
            Some(7)
        });
        drops.after_recv(&counter, 0, 32, false, || {
            looks += 1;
            Some(7)
        });
        assert_eq!(looks, 0, "a burst that never filled a read: no look");
        drops.after_recv(&counter, 32, 32, false, || {
            looks += 1;
            Some(9)
        });
        drops.after_recv(&counter, 0, 32, false, || {
            looks += 1;
            Some(9)
        });
        assert_eq!(looks, 1);
        let counted = counter.stats.snapshot().drop_count(DropReason::RxQueueFull);
        assert_eq!(counted, 2, "counted from where the device stood at open");
    }

    /// A message the kernel cut (MSG_TRUNC) is counted, under rx_too_long
    /// when a super-frame buffer was there and still too short, under
    /// pool_exhausted when none was free; both buffers go back.
    #[test]
    fn a_cut_message_is_counted_and_its_buffers_returned() {
        let counter = counter();
        let mut pool = PacketPool::with_large(4, DEFAULT_BUF_SIZE, 2);
        let small = pool.alloc(PortId(1)).unwrap();
        let large = pool.alloc_large(PortId(1));
        assert!(large.is_some());
        let got = received_frame(&counter, &mut pool, small, large, 0, 70_000, true);
        assert!(got.is_none());
        let small = pool.alloc(PortId(1)).unwrap();
        let got = received_frame(&counter, &mut pool, small, None, 0, 3000, true);
        assert!(got.is_none());
        assert_eq!(pool.in_use(), 0, "every buffer back in the pool");
        let stats = counter.stats.snapshot();
        assert_eq!(stats.drop_count(DropReason::RxTooLong), 1);
        assert_eq!(stats.drop_count(DropReason::PoolExhausted), 1);
    }

    /// A whole message longer than the small buffer is joined into the
    /// super-frame buffer, the small part in front; a short one stays in
    /// the small buffer and the large one goes back.
    #[test]
    fn a_long_message_is_joined_and_a_short_one_kept_small() {
        let counter = counter();
        let mut pool = PacketPool::with_large(4, DEFAULT_BUF_SIZE, 2);
        let mut small = pool.alloc(PortId(1)).unwrap();
        let split = small.receive_area(0).len();
        small.receive_area(0).fill(0xab);
        let mut large = pool.alloc_large(PortId(1)).unwrap();
        // The kernel continues the message in the large buffer's area
        // after the room the small part will take.
        large.receive_area(0)[split..split + 10].fill(0xcd);
        let len = split + 10;
        let got = received_frame(&counter, &mut pool, small, Some(large), 0, len, false).unwrap();
        assert_eq!(got.len(), len);
        assert!(got.frame()[..split].iter().all(|b| *b == 0xab));
        assert!(got.frame()[split..].iter().all(|b| *b == 0xcd));
        pool.free(got);
        let small = pool.alloc(PortId(1)).unwrap();
        let large = pool.alloc_large(PortId(1));
        let got = received_frame(&counter, &mut pool, small, large, 0, 60, false).unwrap();
        assert_eq!(got.len(), 60);
        assert!(!got.is_large());
        pool.free(got);
        assert_eq!(pool.in_use(), 0);
    }
}
