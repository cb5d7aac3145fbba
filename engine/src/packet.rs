//! Packet buffers with headroom and offload metadata, from a bounded pool.
//!
//! A [`PacketBuf`] owns a fixed-size byte buffer; the frame sits at
//! `bytes[start..end]` with at least [`HEADROOM`] free bytes in front, so a
//! tunnel header is written in place (see `podswitch_encap::FrameBuf`).
//! Each buffer is allocated once, the first time the [`PacketPool`] needs
//! it; taking one and giving it back moves a `Box` between the pool's free
//! lists and the caller, which allocates nothing. Workers share buffers
//! through a [`BufferDepot`], each one's pool a cache in front of it. The
//! pool counts buffers in use, so a test can prove that nothing leaked
//! (DPDK's mempools do the same).
//!
//! A pool has two sizes of buffer: small ones for wire-sized frames, and a
//! smaller number of [`LARGE_BUF_SIZE`] ones for GSO super-frames (a pod's
//! 64 KiB or BIG TCP segments, a kernel node's unsegmented VXLAN datagrams), so
//! that a super-frame travels through the pipeline as one packet and is
//! segmented, if at all, only by the port it leaves on (DESIGN.md, "Offloads").
//! Each buffer carries the [`Offload`] state the kernel reported with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use podswitch_encap::FrameBuf;

use crate::ids::PortId;

/// Free bytes kept in front of a received frame: room for the largest outer
/// header (VXLAN's 50 bytes) with cache-line alignment to spare.
pub const HEADROOM: usize = 128;
/// Default buffer size: headroom plus a 1514-byte frame, rounded to 2 KiB.
pub const DEFAULT_BUF_SIZE: usize = 2048;
/// Size of a super-frame buffer: headroom, the largest GSO packet a pod's
/// veth hands over (BIG TCP's 192 KiB, as podswitch's CNI plugin sets
/// it: `POD_GSO_IPV4_MAX_SIZE`; 64 KiB without BIG TCP) and its link
/// headers; it also holds the largest UDP datagram (65,507 bytes) behind
/// the outer headers a socket port rebuilds.
pub const LARGE_BUF_SIZE: usize =
    HEADROOM + podswitch_host::netlink::POD_GSO_IPV4_MAX_SIZE as usize + 256;
/// Super-frame buffers a worker's pool holds by default: a batch being
/// received, a batch being sent and room to spare (about 49 MiB of address
/// space, resident only as far as frames touch it).
pub const DEFAULT_LARGE_BUFFERS: usize = 256;
/// Frames a port moves per call (Open vSwitch's NETDEV_MAX_BURST).
pub const BATCH_SIZE: usize = 32;

pub use podswitch_encap::offload::{Gso, GsoKind};

/// What offloads left undone on a frame. Offsets are absolute positions in
/// the buffer, so encapsulation and decapsulation, which only move the
/// frame's start, leave them valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    /// Set on a super-frame, whose IPv4 header starts at `l3`.
    pub gso: Option<Gso>,
    /// A partial transport checksum (`CHECKSUM_PARTIAL`): the field at
    /// `csum_start + csum_offset` holds only the pseudo-header sum.
    pub partial_csum: Option<PartialChecksum>,
    /// Where the IPv4 header that `gso` segments starts (the inner one of
    /// an encapsulated super-frame).
    pub l3: u32,
}

/// Where a partial checksum is, as absolute buffer positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialChecksum {
    /// Where summing starts (the transport header).
    pub start: u32,
    /// Where the checksum field is, from `start`.
    pub offset: u16,
}

impl Offload {
    /// True if nothing is left to do.
    #[inline]
    pub fn is_none(&self) -> bool {
        self.gso.is_none() && self.partial_csum.is_none()
    }

    /// What a `UDP_GRO` socket said of a whole tunnel datagram before
    /// anything looked at its inner packet (starting at buffer position
    /// `l3`): the segment size of the inner UDP super-datagram. Read by
    /// [`crate::offload::recognise_offloads`], which decides what the
    /// datagram is.
    pub fn udp_segment_said(size: u16, l3: u32) -> Offload {
        Offload {
            gso: Some(Gso {
                kind: GsoKind::UdpL4,
                size,
                ecn: false,
                header_len: 0,
            }),
            partial_csum: None,
            l3,
        }
    }

    /// The segment size [`Offload::udp_segment_said`] left, if that is
    /// what this is.
    pub fn said_udp_segment(&self) -> Option<u16> {
        match self.gso {
            Some(g) if g.kind == GsoKind::UdpL4 && self.partial_csum.is_none() => Some(g.size),
            _ => None,
        }
    }
}

/// One frame in a pool buffer.
#[derive(Debug)]
pub struct PacketBuf {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
    /// The port the frame arrived on.
    pub in_port: PortId,
    offload: Offload,
    /// Set once the pipeline has put the frame inside a tunnel's outer
    /// headers; see [`Self::is_encapsulated`].
    encapsulated: bool,
}

impl PacketBuf {
    /// The frame.
    #[inline]
    pub fn frame(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// The frame, writable.
    #[inline]
    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.end]
    }

    /// Length of the frame.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True for an empty frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Free bytes in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// What offloads left undone on the frame.
    #[inline]
    pub fn offload(&self) -> &Offload {
        &self.offload
    }

    /// Sets what offloads left undone on the frame.
    #[inline]
    pub fn set_offload(&mut self, offload: Offload) {
        self.offload = offload;
    }

    /// True once the pipeline has encapsulated the frame for a peer's
    /// tunnel. The underlay port sends such a frame through its tunnel
    /// sockets and every other one (host-gw) as the frame it is: what a
    /// frame carries cannot tell them apart, as a node's own process bound
    /// to the node's address sends UDP with the outer header's source.
    #[inline]
    pub fn is_encapsulated(&self) -> bool {
        self.encapsulated
    }

    /// Marks the frame as encapsulated (see [`Self::is_encapsulated`]).
    #[inline]
    pub fn set_encapsulated(&mut self) {
        self.encapsulated = true;
    }

    /// True for a super-frame (it carries segmentation offload).
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.offload.gso.is_some()
    }

    /// An absolute buffer position as an offset into the frame, if it lies
    /// inside it.
    #[inline]
    pub fn frame_offset(&self, position: u32) -> Option<usize> {
        let p = position as usize;
        (self.start..self.end).contains(&p).then(|| p - self.start)
    }

    /// The absolute buffer position of frame offset `offset`.
    #[inline]
    pub fn position(&self, offset: usize) -> u32 {
        (self.start + offset) as u32
    }

    /// True for a super-frame buffer.
    #[inline]
    pub fn is_large(&self) -> bool {
        self.bytes.len() == LARGE_BUF_SIZE
    }

    /// Replaces the frame with `data`, placed after the standard headroom,
    /// with no offload left to do. Returns false (and leaves the buffer
    /// empty) if it does not fit.
    #[inline]
    pub fn set(&mut self, data: &[u8]) -> bool {
        self.start = HEADROOM;
        self.offload = Offload::default();
        self.encapsulated = false;
        if data.len() > self.bytes.len() - HEADROOM {
            self.end = HEADROOM;
            return false;
        }
        self.end = HEADROOM + data.len();
        self.bytes[HEADROOM..self.end].copy_from_slice(data);
        true
    }
    /// True if the buffer can hold a frame of `len` bytes where this one
    /// starts.
    #[inline]
    pub fn has_room_for(&self, len: usize) -> bool {
        self.start + len <= self.bytes.len()
    }

    /// Grows the frame by `data` at its end. Returns false (and leaves the
    /// frame as it was) if the buffer has no room for it.
    #[inline]
    pub fn append(&mut self, data: &[u8]) -> bool {
        let Some(area) = self.bytes.get_mut(self.end..self.end + data.len()) else {
            return false;
        };
        area.copy_from_slice(data);
        self.end += data.len();
        true
    }

    /// Cuts the frame to `len` bytes (Ethernet padding after an IPv4
    /// packet's total length, for instance).
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        self.end = self.start + len.min(self.len());
    }

    /// Drops `n` bytes from the front (a decapsulated outer header).
    ///
    /// # Panics
    /// If `n` exceeds the frame length (a caller bug).
    #[inline]
    pub fn advance(&mut self, n: usize) {
        assert!(
            n <= self.len(),
            "advance {n} past a {}-byte frame",
            self.len()
        );
        self.start += n;
    }

    /// Grows the frame by `n` bytes at the front and returns them.
    /// `None` if the headroom is smaller.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.start {
            return None;
        }
        self.start -= n;
        Some(&mut self.bytes[self.start..self.start + n])
    }

    /// Selects `range` (relative to the current frame) as the frame.
    ///
    /// # Panics
    /// If the range is not inside the frame.
    #[inline]
    pub fn narrow(&mut self, range: core::ops::Range<usize>) {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "narrow outside the frame"
        );
        self.end = self.start + range.end;
        self.start += range.start;
    }

    /// Lends the buffer to the encapsulation code as a frame with headroom;
    /// the pipeline adopts its new bounds afterwards.
    #[inline]
    pub fn frame_buf(&mut self) -> FrameBuf<'_> {
        FrameBuf::new(&mut self.bytes, self.start, self.end)
    }

    /// The bytes a port may receive into: everything after the headroom
    /// and `reserve` more bytes (kept for headers the port writes in front,
    /// such as the Ethernet header of a TUN packet).
    #[inline]
    pub(crate) fn receive_area(&mut self, reserve: usize) -> &mut [u8] {
        &mut self.bytes[HEADROOM + reserve..]
    }

    /// Makes the frame `len` bytes received at `reserve` plus the `reserve`
    /// bytes in front of them (which the caller fills).
    #[inline]
    pub(crate) fn set_received(&mut self, reserve: usize, len: usize) {
        self.start = HEADROOM;
        self.end = (HEADROOM + reserve + len).min(self.bytes.len());
        self.offload = Offload::default();
        self.encapsulated = false;
    }

    /// Makes this (super-frame) buffer hold a message the kernel scattered
    /// over a small buffer's receive area (`head`, its first bytes) and
    /// this buffer's area after them: copies `head` in front, so the
    /// frame is `len` bytes at `reserve`, as [`Self::set_received`] makes it.
    #[inline]
    pub(crate) fn join_received(&mut self, head: &[u8], reserve: usize, len: usize) {
        let at = HEADROOM + reserve;
        self.bytes[at..at + head.len()].copy_from_slice(head);
        self.set_received(reserve, len);
    }

    /// Adopts the bounds a [`FrameBuf`] lent by [`Self::frame_buf`] ended
    /// with (a `FrameBuf` keeps its bounds inside the buffer).
    #[inline]
    pub(crate) fn adopt_bounds(&mut self, start: usize, end: usize) {
        debug_assert!(
            start <= end && end <= self.bytes.len(),
            "bounds outside the buffer"
        );
        self.start = start;
        self.end = end;
    }
}

/// A fixed number of buffers of two sizes, each allocated the first time
/// the pool runs short of free ones and kept for good: the pool holds as
/// much memory as the most frames it ever had in flight, and in steady
/// state a packet costs no allocation.
///
/// Allocating all of them up front made every buffer resident at once,
/// used or not (32 MiB for the default 16,384: the allocator writes a
/// header beside each 2 KiB chunk, so every page of the pool is touched),
/// which was most of an idle podswitchd's memory.
///
/// Workers that hand frames to each other share their buffers through a
/// [`BufferDepot`]: each worker's pool is then a cache in front of it, as
/// each core's cache sits in front of a DPDK mempool's ring. A buffer one
/// worker filled and another freed stays with the second; a cache grown
/// past its bound gives half back to the depot, where any worker's pool
/// finds it, so the buffers follow the traffic and the total stays bound.
#[derive(Debug)]
pub struct PacketPool {
    small: SizeClass,
    large: SizeClass,
}

impl PacketPool {
    /// A pool of `count` buffers of `buf_size` bytes and no super-frame
    /// buffers.
    ///
    /// # Panics
    /// If `buf_size` does not exceed [`HEADROOM`].
    pub fn new(count: usize, buf_size: usize) -> Self {
        Self::with_large(count, buf_size, 0)
    }

    /// A pool of `count` buffers of `buf_size` bytes and `large` buffers
    /// of [`LARGE_BUF_SIZE`] bytes for super-frames.
    ///
    /// # Panics
    /// If `buf_size` does not exceed [`HEADROOM`] or is not smaller than
    /// [`LARGE_BUF_SIZE`].
    pub fn with_large(count: usize, buf_size: usize, large: usize) -> Self {
        check_buf_size(buf_size);
        PacketPool {
            small: SizeClass::own(count, buf_size),
            large: SizeClass::own(large, LARGE_BUF_SIZE),
        }
    }

    /// A pool that caches buffers of `depot`, shared with the other pools
    /// made from it.
    pub fn from_depot(depot: &Arc<BufferDepot>) -> Self {
        PacketPool {
            small: SizeClass::shared(Arc::clone(&depot.small), depot.small_cache),
            large: SizeClass::shared(Arc::clone(&depot.large), depot.large_cache),
        }
    }

    #[inline]
    fn wrap(bytes: Box<[u8]>, in_port: PortId) -> PacketBuf {
        PacketBuf {
            bytes,
            start: HEADROOM,
            end: HEADROOM,
            in_port,
            offload: Offload::default(),
            encapsulated: false,
        }
    }

    /// A buffer with an empty frame after the headroom, or `None` if every
    /// buffer is in use.
    #[inline]
    pub fn alloc(&mut self, in_port: PortId) -> Option<PacketBuf> {
        Some(Self::wrap(self.small.take()?, in_port))
    }

    /// A super-frame buffer, or `None` if every one is in use.
    #[inline]
    pub fn alloc_large(&mut self, in_port: PortId) -> Option<PacketBuf> {
        // calloc maps a buffer this large on its own: pages no frame
        // reaches stay untouched.
        Some(Self::wrap(self.large.take()?, in_port))
    }

    /// A buffer holding a copy of `data` (a super-frame buffer if it needs
    /// one); `None` if the pool has no buffer it fits.
    #[inline]
    pub fn alloc_with(&mut self, in_port: PortId, data: &[u8]) -> Option<PacketBuf> {
        let mut buf = if data.len() <= self.small.size - HEADROOM {
            self.alloc(in_port)?
        } else {
            self.alloc_large(in_port)?
        };
        if buf.set(data) {
            Some(buf)
        } else {
            self.free(buf);
            None
        }
    }

    /// A copy of `buf`: its frame and its offload state (a flooded frame).
    pub fn copy(&mut self, buf: &PacketBuf) -> Option<PacketBuf> {
        let mut copy = self.alloc_with(buf.in_port, buf.frame())?;
        // Positions are absolute: move them by the distance between the
        // two frames' starts.
        let shift = |p: u32| (i64::from(p) + copy.start as i64 - buf.start as i64) as u32;
        let mut offload = buf.offload;
        if offload.gso.is_some() {
            offload.l3 = shift(offload.l3);
        }
        if let Some(c) = offload.partial_csum.as_mut() {
            c.start = shift(c.start);
        }
        copy.offload = offload;
        copy.encapsulated = buf.encapsulated;
        Some(copy)
    }

    /// Gives a buffer back.
    #[inline]
    pub fn free(&mut self, buf: PacketBuf) {
        if buf.is_large() {
            self.large.give(buf.bytes);
        } else {
            debug_assert_eq!(buf.bytes.len(), self.small.size, "buffer from another pool");
            self.small.give(buf.bytes);
        }
    }

    /// Gives back every buffer of a batch.
    pub fn free_all(&mut self, batch: &mut Vec<PacketBuf>) {
        for buf in batch.drain(..) {
            self.free(buf);
        }
    }

    /// Buffers currently taken, of both sizes. A pool from a depot counts
    /// those cached by the depot's other pools as taken.
    pub fn in_use(&self) -> usize {
        self.small.in_use() + self.large.in_use()
    }

    /// Buffers allocated so far, of both sizes (the most ever in use); a
    /// pool from a depot counts the depot's.
    pub fn allocated(&self) -> usize {
        self.small.made() + self.large.made()
    }

    /// Buffers in the pool (or its depot), of both sizes.
    pub fn total(&self) -> usize {
        self.small.total() + self.large.total()
    }

    /// Size of each small buffer.
    pub fn buf_size(&self) -> usize {
        self.small.size
    }
}

fn check_buf_size(buf_size: usize) {
    assert!(
        buf_size > HEADROOM && buf_size < LARGE_BUF_SIZE,
        "a buffer must hold more than its headroom and less than a super-frame buffer"
    );
}

/// The buffers several workers' pools share ([`PacketPool::from_depot`]):
/// made on demand up to a fixed number, kept in a lock-free queue while no
/// pool caches them.
#[derive(Debug)]
pub struct BufferDepot {
    small: Arc<SharedBuffers>,
    large: Arc<SharedBuffers>,
    small_cache: usize,
    large_cache: usize,
}

impl BufferDepot {
    /// A depot of `count` buffers of `buf_size` bytes and `large`
    /// super-frame buffers, for the pools of `workers` workers: each pool
    /// caches at most about a quarter of its share, so no worker hoards
    /// what another one needs.
    ///
    /// # Panics
    /// As [`PacketPool::with_large`].
    pub fn new(count: usize, buf_size: usize, large: usize, workers: usize) -> Arc<Self> {
        check_buf_size(buf_size);
        let share = |total: usize, floor: usize| (total / (4 * workers.max(1))).max(floor);
        Arc::new(BufferDepot {
            small: Arc::new(SharedBuffers::new(count, buf_size)),
            large: Arc::new(SharedBuffers::new(large, LARGE_BUF_SIZE)),
            small_cache: share(count, BATCH_SIZE),
            large_cache: share(large, 2),
        })
    }
}

/// Buffers of one size shared by several pools.
#[derive(Debug)]
struct SharedBuffers {
    /// Buffers no pool caches. It can hold every buffer, so a push never
    /// fails.
    spare: ArrayQueue<Box<[u8]>>,
    made: AtomicUsize,
    total: usize,
    size: usize,
}

impl SharedBuffers {
    fn new(total: usize, size: usize) -> Self {
        SharedBuffers {
            spare: ArrayQueue::new(total.max(1)),
            made: AtomicUsize::new(0),
            total,
            size,
        }
    }
}

/// A pool's buffers of one size: its free list, and where a new one comes
/// from when that is empty.
#[derive(Debug)]
struct SizeClass {
    free: Vec<Box<[u8]>>,
    size: usize,
    supply: Supply,
}

#[derive(Debug)]
enum Supply {
    /// The pool makes them, up to `total`.
    Own { made: usize, total: usize },
    /// A depot: the free list is a cache of at most `cache` buffers.
    Shared {
        depot: Arc<SharedBuffers>,
        cache: usize,
    },
}

impl SizeClass {
    fn own(total: usize, size: usize) -> Self {
        SizeClass {
            free: Vec::with_capacity(total),
            size,
            supply: Supply::Own { made: 0, total },
        }
    }

    fn shared(depot: Arc<SharedBuffers>, cache: usize) -> Self {
        SizeClass {
            free: Vec::with_capacity(cache + 1),
            size: depot.size,
            supply: Supply::Shared { depot, cache },
        }
    }

    /// A free buffer, else a spare one from the depot, else a new one
    /// while fewer than the total have been made.
    #[inline]
    fn take(&mut self) -> Option<Box<[u8]>> {
        if let Some(bytes) = self.free.pop() {
            return Some(bytes);
        }
        match &mut self.supply {
            Supply::Own { made, total } => {
                if *made == *total {
                    return None;
                }
                *made += 1;
            }
            Supply::Shared { depot, .. } => {
                if let Some(bytes) = depot.spare.pop() {
                    return Some(bytes);
                }
                depot
                    .made
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |made| {
                        (made < depot.total).then_some(made + 1)
                    })
                    .ok()?;
            }
        }
        Some(vec![0u8; self.size].into_boxed_slice())
    }

    #[inline]
    fn give(&mut self, bytes: Box<[u8]>) {
        self.free.push(bytes);
        if let Supply::Shared { depot, cache } = &self.supply {
            if self.free.len() > *cache {
                // Half back to the depot: the cache keeps room both ways.
                for bytes in self.free.drain(*cache / 2..) {
                    // The queue holds every buffer the depot made: only a
                    // buffer from elsewhere can find it full, and goes.
                    let pushed = depot.spare.push(bytes);
                    debug_assert!(pushed.is_ok(), "a buffer from outside the depot");
                }
            }
        }
    }

    fn made(&self) -> usize {
        match &self.supply {
            Supply::Own { made, .. } => *made,
            Supply::Shared { depot, .. } => depot.made.load(Ordering::Relaxed),
        }
    }

    fn total(&self) -> usize {
        match &self.supply {
            Supply::Own { total, .. } => *total,
            Supply::Shared { depot, .. } => depot.total,
        }
    }

    fn in_use(&self) -> usize {
        let spare = match &self.supply {
            Supply::Own { .. } => 0,
            Supply::Shared { depot, .. } => depot.spare.len(),
        };
        self.made().saturating_sub(self.free.len() + spare)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_made_when_first_needed_and_then_reused() {
        let mut pool = PacketPool::with_large(1000, 256, 10);
        assert_eq!((pool.allocated(), pool.total()), (0, 1010));
        let a = pool.alloc(PortId(1)).unwrap();
        let b = pool.alloc(PortId(1)).unwrap();
        let big = pool.alloc_large(PortId(1)).unwrap();
        assert_eq!(pool.allocated(), 3);
        pool.free(a);
        pool.free(big);
        // Freed buffers come back before any new one is made.
        let c = pool.alloc(PortId(1)).unwrap();
        let big = pool.alloc_large(PortId(1)).unwrap();
        assert_eq!((pool.allocated(), pool.in_use()), (3, 3));
        for buf in [b, c, big] {
            pool.free(buf);
        }
        assert_eq!(pool.in_use(), 0);
        // Never more than the pool's size.
        let taken: Vec<_> = std::iter::from_fn(|| pool.alloc(PortId(1))).collect();
        assert_eq!(taken.len(), 1000);
        assert_eq!(pool.allocated(), 1001);
    }

    #[test]
    fn buffers_one_worker_fills_and_another_frees_come_back_through_the_depot() {
        let depot = BufferDepot::new(256, 256, 8, 2);
        let (mut rx, mut tx) = (
            PacketPool::from_depot(&depot),
            PacketPool::from_depot(&depot),
        );
        assert_eq!(rx.total(), 264);
        // One worker receives everything, the other sends (and frees) it,
        // many times the depot's size over.
        for round in 0..100u8 {
            let batch: Vec<_> = (0..32)
                .map(|_| rx.alloc_with(PortId(1), &[round; 60]).expect("a buffer"))
                .collect();
            let big = rx
                .alloc_with(PortId(1), &[round; 3000])
                .expect("a super-frame buffer");
            for buf in batch {
                assert_eq!(buf.frame(), &[round; 60][..]);
                tx.free(buf);
            }
            tx.free(big);
        }
        // No more buffers made than one round needed and the second pool
        // caches: the rest came back.
        let made = rx.allocated();
        assert!(made <= 32 + 32 + 2 + 2, "{made} buffers made");
        assert_eq!(tx.allocated(), made, "one count for the depot");
        // The bound holds for the pools together.
        let mut held: Vec<_> = std::iter::from_fn(|| rx.alloc(PortId(1))).collect();
        held.extend(std::iter::from_fn(|| tx.alloc(PortId(1))));
        assert_eq!(held.len(), 256);
        for buf in held {
            tx.free(buf);
        }
        assert_eq!(tx.in_use(), 0);
        let cached = rx.in_use();
        assert!(
            cached > 0 && cached <= 256 / (4 * 2),
            "{cached}: only what the other pool caches counts as taken"
        );
    }

    #[test]
    fn alloc_free_counts_and_headroom() {
        let mut pool = PacketPool::new(2, 256);
        let mut a = pool.alloc_with(PortId(1), b"abc").unwrap();
        assert_eq!(a.frame(), b"abc");
        assert_eq!(a.headroom(), HEADROOM);
        let b = pool.alloc(PortId(1)).unwrap();
        assert!(pool.alloc(PortId(1)).is_none(), "pool exhausted");
        assert_eq!(pool.in_use(), 2);
        a.prepend(2).unwrap().copy_from_slice(b"xy");
        assert_eq!(a.frame(), b"xyabc");
        a.advance(3);
        assert_eq!(a.frame(), b"bc");
        assert!(a.prepend(HEADROOM + 10).is_none());
        assert!(pool.alloc_with(PortId(0), &[0; 300]).is_none());
        pool.free(a);
        pool.free(b);
        assert_eq!(pool.in_use(), 0);
        let too_big = vec![0u8; 256 - HEADROOM + 1];
        assert!(pool.alloc_with(PortId(0), &too_big).is_none());
        assert_eq!(pool.in_use(), 0, "a refused copy returns its buffer");
    }

    #[test]
    fn super_frames_take_large_buffers_and_keep_their_offload_through_copies() {
        let mut pool = PacketPool::with_large(2, 256, 1);
        assert_eq!(pool.total(), 3);
        let big = vec![7u8; 30_000];
        let mut a = pool.alloc_with(PortId(1), &big).unwrap();
        assert!(a.is_large());
        assert!(
            pool.alloc_with(PortId(1), &big).is_none(),
            "one large buffer"
        );
        let offload = Offload {
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                size: 1398,
                ecn: false,
                header_len: 52,
            }),
            partial_csum: Some(PartialChecksum {
                start: a.position(34),
                offset: 16,
            }),
            l3: a.position(14),
        };
        a.set_offload(offload);
        // Encapsulating moves the frame's start, not the offsets.
        a.prepend(50).unwrap();
        assert_eq!(a.frame_offset(offload.l3), Some(64));
        a.advance(50);
        pool.free(a);
        let mut small = pool.alloc_with(PortId(2), &[1u8; 100]).unwrap();
        small.set_offload(Offload {
            partial_csum: Some(PartialChecksum {
                start: small.position(34),
                offset: 6,
            }),
            l3: small.position(14),
            ..Offload::default()
        });
        small.advance(4);
        let copy = pool.copy(&small).unwrap();
        assert_eq!(copy.frame(), small.frame());
        assert_eq!(
            copy.frame_offset(copy.offload().partial_csum.unwrap().start),
            Some(30),
            "offsets follow the copy"
        );
        assert!(!copy.is_large());
        let mut copy = copy;
        assert!(copy.set(b"x"));
        assert!(copy.offload().is_none(), "a new frame has no offload");
        pool.free(copy);
        pool.free(small);
        assert_eq!(pool.in_use(), 0);
    }
}
