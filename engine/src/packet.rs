//! Packet buffers with headroom, from a preallocated pool.
//!
//! A [`PacketBuf`] owns a fixed-size byte buffer; the frame sits at
//! `bytes[start..end]` with at least [`HEADROOM`] free bytes in front, so a
//! tunnel header is written in place (see `podswitch_encap::FrameBuf`).
//! Buffers are allocated once, when the [`PacketPool`] is made; taking one
//! and giving it back moves a `Box` between the pool's free list and the
//! caller, which allocates nothing. The pool counts buffers in use, so a
//! test can prove that nothing leaked (DPDK's mempools do the same).

use podswitch_encap::FrameBuf;

use crate::port::PortId;

/// Free bytes kept in front of a received frame: room for the largest outer
/// header (VXLAN's 50 bytes) with cache-line alignment to spare.
pub const HEADROOM: usize = 128;
/// Default buffer size: headroom plus a 1514-byte frame, rounded to 2 KiB.
pub const DEFAULT_BUF_SIZE: usize = 2048;
/// Frames a port moves per call (Open vSwitch's NETDEV_MAX_BURST).
pub const BATCH_SIZE: usize = 32;

/// One frame in a pool buffer.
#[derive(Debug)]
pub struct PacketBuf {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
    /// The port the frame arrived on.
    pub in_port: PortId,
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

    /// Replaces the frame with `data`, placed after the standard headroom.
    /// Returns false (and leaves the buffer empty) if it does not fit.
    #[inline]
    pub fn set(&mut self, data: &[u8]) -> bool {
        self.start = HEADROOM;
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

/// A fixed set of equal buffers, allocated up front.
#[derive(Debug)]
pub struct PacketPool {
    free: Vec<Box<[u8]>>,
    total: usize,
    buf_size: usize,
}

impl PacketPool {
    /// A pool of `count` buffers of `buf_size` bytes.
    ///
    /// # Panics
    /// If `buf_size` does not exceed [`HEADROOM`].
    pub fn new(count: usize, buf_size: usize) -> Self {
        assert!(
            buf_size > HEADROOM,
            "a buffer must hold more than its headroom"
        );
        let free = (0..count)
            .map(|_| vec![0u8; buf_size].into_boxed_slice())
            .collect();
        PacketPool {
            free,
            total: count,
            buf_size,
        }
    }

    /// A buffer with an empty frame after the headroom, or `None` if every
    /// buffer is in use.
    #[inline]
    pub fn alloc(&mut self, in_port: PortId) -> Option<PacketBuf> {
        self.free.pop().map(|bytes| PacketBuf {
            bytes,
            start: HEADROOM,
            end: HEADROOM,
            in_port,
        })
    }

    /// A buffer holding a copy of `data`; `None` if the pool is empty or
    /// `data` does not fit a buffer.
    #[inline]
    pub fn alloc_with(&mut self, in_port: PortId, data: &[u8]) -> Option<PacketBuf> {
        let mut buf = self.alloc(in_port)?;
        if buf.set(data) {
            Some(buf)
        } else {
            self.free(buf);
            None
        }
    }

    /// Gives a buffer back.
    #[inline]
    pub fn free(&mut self, buf: PacketBuf) {
        debug_assert_eq!(buf.bytes.len(), self.buf_size, "buffer from another pool");
        self.free.push(buf.bytes);
    }

    /// Gives back every buffer of a batch.
    pub fn free_all(&mut self, batch: &mut Vec<PacketBuf>) {
        for buf in batch.drain(..) {
            self.free(buf);
        }
    }

    /// Buffers currently taken.
    pub fn in_use(&self) -> usize {
        self.total - self.free.len()
    }

    /// Buffers in the pool.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
