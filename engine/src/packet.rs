//! Packet buffers with headroom and offload metadata, from a preallocated
//! pool.
//!
//! A [`PacketBuf`] owns a fixed-size byte buffer; the frame sits at
//! `bytes[start..end]` with at least [`HEADROOM`] free bytes in front, so a
//! tunnel header is written in place (see `podswitch_encap::FrameBuf`).
//! Buffers are allocated once, when the [`PacketPool`] is made; taking one
//! and giving it back moves a `Box` between the pool's free lists and the
//! caller, which allocates nothing. The pool counts buffers in use, so a
//! test can prove that nothing leaked (DPDK's mempools do the same).
//!
//! A pool has two sizes of buffer: small ones for wire-sized frames, and a
//! smaller number of [`LARGE_BUF_SIZE`] ones for GSO super-frames (a pod's
//! 64 KiB TCP segments, a kernel node's unsegmented VXLAN datagrams), so
//! that a super-frame travels through the pipeline as one packet and is
//! segmented, if at all, only by the port it leaves on (DESIGN.md, "Offloads").
//! Each buffer carries the [`Offload`] state the kernel reported with it.

use podswitch_encap::FrameBuf;

use crate::port::PortId;

/// Free bytes kept in front of a received frame: room for the largest outer
/// header (VXLAN's 50 bytes) with cache-line alignment to spare.
pub const HEADROOM: usize = 128;
/// Default buffer size: headroom plus a 1514-byte frame, rounded to 2 KiB.
pub const DEFAULT_BUF_SIZE: usize = 2048;
/// Size of a super-frame buffer: headroom, the largest GSO packet the
/// kernel hands over (64 KiB) and its link headers, or the largest UDP
/// datagram (65,507 bytes) behind the outer headers a socket port rebuilds.
pub const LARGE_BUF_SIZE: usize = HEADROOM + 65536 + 256;
/// Super-frame buffers a worker's pool holds by default: a batch being
/// received, a batch being sent and room to spare (about 17 MiB of address
/// space, resident only as far as frames touch it).
pub const DEFAULT_LARGE_BUFFERS: usize = 256;
/// Frames a port moves per call (Open vSwitch's NETDEV_MAX_BURST).
pub const BATCH_SIZE: usize = 32;

/// Which segmentation offload a super-frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4 (TSO): cut the payload at `size`, fix sequence numbers.
    TcpV4,
    /// UDP over IPv4 (`UDP_SEGMENT`): one datagram per `size` bytes.
    UdpL4,
}

/// A super-frame's segmentation: what the kernel (or podswitch's own
/// coalescing) left to be cut into wire-sized packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// Transport segmented.
    pub kind: GsoKind,
    /// Payload bytes per segment (the MSS for TCP).
    pub size: u16,
    /// The first segment carries CWR (virtio's `GSO_ECN`).
    pub ecn: bool,
    /// Bytes of the segmented packet's IPv4 and transport headers: a
    /// segment's IPv4 length is at most `header_len + size`.
    pub header_len: u16,
}

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
        if data.len() > self.bytes.len() - HEADROOM {
            self.end = HEADROOM;
            return false;
        }
        self.end = HEADROOM + data.len();
        self.bytes[HEADROOM..self.end].copy_from_slice(data);
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
#[derive(Debug)]
pub struct PacketPool {
    free: Vec<Box<[u8]>>,
    free_large: Vec<Box<[u8]>>,
    /// Buffers made so far, of each size.
    made: usize,
    made_large: usize,
    total: usize,
    total_large: usize,
    buf_size: usize,
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
        assert!(
            buf_size > HEADROOM && buf_size < LARGE_BUF_SIZE,
            "a buffer must hold more than its headroom and less than a super-frame buffer"
        );
        PacketPool {
            free: Vec::with_capacity(count),
            free_large: Vec::with_capacity(large),
            made: 0,
            made_large: 0,
            total: count,
            total_large: large,
            buf_size,
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
        }
    }

    /// A buffer with an empty frame after the headroom, or `None` if every
    /// buffer is in use.
    #[inline]
    pub fn alloc(&mut self, in_port: PortId) -> Option<PacketBuf> {
        let bytes = take_or_make(&mut self.free, &mut self.made, self.total, self.buf_size)?;
        Some(Self::wrap(bytes, in_port))
    }

    /// A super-frame buffer, or `None` if every one is in use.
    #[inline]
    pub fn alloc_large(&mut self, in_port: PortId) -> Option<PacketBuf> {
        // calloc maps a buffer this large on its own: pages no frame
        // reaches stay untouched.
        let bytes = take_or_make(
            &mut self.free_large,
            &mut self.made_large,
            self.total_large,
            LARGE_BUF_SIZE,
        )?;
        Some(Self::wrap(bytes, in_port))
    }

    /// A buffer holding a copy of `data` (a super-frame buffer if it needs
    /// one); `None` if the pool has no buffer it fits.
    #[inline]
    pub fn alloc_with(&mut self, in_port: PortId, data: &[u8]) -> Option<PacketBuf> {
        let mut buf = if data.len() <= self.buf_size - HEADROOM {
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
        Some(copy)
    }

    /// Gives a buffer back.
    #[inline]
    pub fn free(&mut self, buf: PacketBuf) {
        if buf.is_large() {
            self.free_large.push(buf.bytes);
        } else {
            debug_assert_eq!(buf.bytes.len(), self.buf_size, "buffer from another pool");
            self.free.push(buf.bytes);
        }
    }

    /// Gives back every buffer of a batch.
    pub fn free_all(&mut self, batch: &mut Vec<PacketBuf>) {
        for buf in batch.drain(..) {
            self.free(buf);
        }
    }

    /// Buffers currently taken, of both sizes.
    pub fn in_use(&self) -> usize {
        self.made - self.free.len() + self.made_large - self.free_large.len()
    }

    /// Buffers allocated so far, of both sizes (the most ever in use).
    pub fn allocated(&self) -> usize {
        self.made + self.made_large
    }

    /// Buffers in the pool, of both sizes.
    pub fn total(&self) -> usize {
        self.total + self.total_large
    }

    /// Size of each small buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
}

/// A free buffer of `free`, or a new one of `size` bytes while fewer than
/// `total` have been `made`.
#[inline]
fn take_or_make(
    free: &mut Vec<Box<[u8]>>,
    made: &mut usize,
    total: usize,
    size: usize,
) -> Option<Box<[u8]>> {
    if let Some(bytes) = free.pop() {
        return Some(bytes);
    }
    if *made == total {
        return None;
    }
    *made += 1;
    Some(vec![0u8; size].into_boxed_slice())
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
