//! A frame inside a larger buffer, with headroom before it, so tunnel
//! headers are written in front of the frame instead of copying it.
//!
//! The engine's packet buffers lend one of these to the encapsulation code;
//! the encap crate never allocates.

/// A frame at `bytes[start..end]`; `bytes[..start]` is free headroom.
#[derive(Debug)]
pub struct FrameBuf<'a> {
    bytes: &'a mut [u8],
    start: usize,
    end: usize,
}

impl<'a> FrameBuf<'a> {
    /// The frame `bytes[start..end]`.
    ///
    /// # Panics
    /// If `start > end` or `end > bytes.len()`: the caller's bookkeeping is
    /// wrong, which is a bug and not a property of any packet.
    #[inline]
    pub fn new(bytes: &'a mut [u8], start: usize, end: usize) -> Self {
        assert!(
            start <= end && end <= bytes.len(),
            "frame {start}..{end} outside a {}-byte buffer",
            bytes.len()
        );
        FrameBuf { bytes, start, end }
    }

    /// Free bytes before the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Where the frame starts in the buffer.
    #[inline]
    pub fn start(&self) -> usize {
        self.start
    }

    /// Where the frame ends in the buffer.
    #[inline]
    pub fn end(&self) -> usize {
        self.end
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

    /// The whole underlying buffer, headroom included.
    #[inline]
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        self.bytes
    }

    /// Moves the frame's bounds within the buffer.
    ///
    /// # Panics
    /// If `start > end` or `end` is past the buffer (a caller bug).
    #[inline]
    pub fn set_bounds(&mut self, start: usize, end: usize) {
        assert!(
            start <= end && end <= self.bytes.len(),
            "frame {start}..{end} outside a {}-byte buffer",
            self.bytes.len()
        );
        self.start = start;
        self.end = end;
    }

    /// Moves the bounds where the caller has already proved
    /// `start <= end <= buffer length` (the encapsulator computes them from
    /// the current bounds and checked headroom).
    #[inline]
    pub(crate) fn set_bounds_trusted(&mut self, start: usize, end: usize) {
        debug_assert!(start <= end && end <= self.bytes.len());
        self.start = start;
        self.end = end;
    }
}
