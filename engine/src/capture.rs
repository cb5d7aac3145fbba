//! Capture as a wrapper over any port: frames received and sent pass
//! through to the wrapped port unchanged and are written to a pcap file
//! (what `podswitchctl capture` asks for, and tcpdump on the port would
//! show), until a packet count or a deadline is reached.

use std::io::{self, Write};

use podswitch_encap::pcap::PcapWriter;

use crate::packet::{PacketBuf, PacketPool};
use crate::port::{Port, PortKind};

/// When a capture stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLimit {
    /// Stop after this many frames (both directions together).
    pub packets: Option<u64>,
    /// Stop at this time, in the clock's microseconds.
    pub until_micros: Option<u64>,
}

/// A port whose traffic is also written to a pcap file.
pub struct Capture<P: Port, W: Write + Send> {
    inner: P,
    writer: Option<PcapWriter<W>>,
    limit: CaptureLimit,
    captured: u64,
    clock: fn() -> u64,
    error: Option<io::Error>,
}

impl<P: Port, W: Write + Send> std::fmt::Debug for Capture<P, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("port", &self.inner.name())
            .field("limit", &self.limit)
            .field("captured", &self.captured)
            .field("active", &self.writer.is_some())
            .finish()
    }
}

impl<P: Port, W: Write + Send> Capture<P, W> {
    /// Wraps `inner`, writing to `out` (the pcap header is written now).
    /// `clock` gives microseconds since the epoch (frame timestamps and the
    /// deadline).
    pub fn new(inner: P, out: W, limit: CaptureLimit, clock: fn() -> u64) -> io::Result<Self> {
        Ok(Capture::wrap(inner, PcapWriter::new(out)?, limit, clock))
    }

    /// Wraps `inner`, writing to a pcap file whose header is written.
    pub fn wrap(inner: P, writer: PcapWriter<W>, limit: CaptureLimit, clock: fn() -> u64) -> Self {
        Capture {
            inner,
            writer: Some(writer),
            limit,
            captured: 0,
            clock,
            error: None,
        }
    }

    /// Frames written so far.
    pub fn captured(&self) -> u64 {
        self.captured
    }

    /// True while frames are still being written.
    pub fn is_active(&self) -> bool {
        self.writer.is_some()
    }

    /// Stops the capture if its deadline has passed (a port with no
    /// traffic never records a frame); returns whether it is
    /// still active.
    pub fn check_deadline(&mut self) -> bool {
        if self.limit.until_micros.is_some_and(|t| (self.clock)() >= t) {
            self.stop();
        }
        self.is_active()
    }

    /// Stops capturing (flushing the file) and returns the wrapped port and
    /// the first write error, if any.
    pub fn finish(mut self) -> (P, Option<io::Error>) {
        self.stop();
        (self.inner, self.error)
    }

    fn stop(&mut self) {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.finish() {
                self.error.get_or_insert(e);
            }
        }
    }

    fn record(&mut self, frames: &[PacketBuf]) {
        let now = (self.clock)();
        if self.limit.until_micros.is_some_and(|t| now >= t) {
            self.stop();
        }
        for frame in frames {
            if self.limit.packets.is_some_and(|n| self.captured >= n) {
                self.stop();
            }
            let Some(writer) = self.writer.as_mut() else {
                return;
            };
            if let Err(e) = writer.write_frame(now, frame.frame()) {
                // A full disk ends the capture, never the forwarding.
                self.error.get_or_insert(e);
                self.stop();
                return;
            }
            self.captured += 1;
        }
        if self.limit.packets.is_some_and(|n| self.captured >= n) {
            self.stop();
        }
    }
}

impl<P: Port, W: Write + Send> Port for Capture<P, W> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn kind(&self) -> PortKind {
        self.inner.kind()
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        let before = batch.len();
        let n = self.inner.recv(pool, batch)?;
        if self.writer.is_some() {
            self.record(&batch[before..]);
        }
        Ok(n)
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        if self.writer.is_some() {
            self.record(batch);
        }
        self.inner.send(batch, pool)
    }

    fn poll_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.inner.poll_fds()
    }

    fn forwarded(&mut self) {
        self.inner.forwarded();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{MemoryPort, PortId};
    use podswitch_encap::pcap::PcapReader;
    use std::sync::{Arc, Mutex};

    /// A `Write` whose bytes the test can read after the capture moved it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn clock() -> u64 {
        1_700_000_000_000_000
    }

    #[test]
    fn captures_both_directions_up_to_the_limit() {
        let mut pool = PacketPool::new(64, 512);
        let mut port = MemoryPort::new("veth0", PortId(1));
        for i in 0..5u8 {
            port.rx.push_back(vec![i; 60]);
        }
        let out = Shared::default();
        let limit = CaptureLimit {
            packets: Some(7),
            until_micros: None,
        };
        let mut cap = Capture::new(port, out.clone(), limit, clock).unwrap();
        let mut batch = Vec::new();
        assert_eq!(cap.recv(&mut pool, &mut batch).unwrap(), 5);
        assert_eq!(cap.captured(), 5);
        let mut tx: Vec<PacketBuf> = (0..4u8)
            .map(|i| pool.alloc_with(PortId(1), &[0x80 | i; 70]).unwrap())
            .collect();
        assert_eq!(
            cap.send(&mut tx, &mut pool).unwrap(),
            4,
            "every frame still leaves"
        );
        assert!(!cap.is_active(), "stopped at 7 frames");
        pool.free_all(&mut batch);
        let (port, error) = cap.finish();
        assert!(error.is_none());
        assert_eq!(port.tx.len(), 4);
        assert_eq!(pool.in_use(), 0);
        let records = PcapReader::new(&out.0.lock().unwrap()[..])
            .unwrap()
            .records()
            .unwrap();
        assert_eq!(records.len(), 7);
        assert_eq!(records[0].data, vec![0u8; 60]);
        assert_eq!(records[6].data, vec![0x81u8; 70]);
        assert_eq!(records[6].ts_sec, 1_700_000_000);
    }

    #[test]
    fn a_deadline_stops_the_capture() {
        let mut pool = PacketPool::new(8, 512);
        let mut port = MemoryPort::new("veth0", PortId(1));
        port.rx.push_back(vec![1; 60]);
        let limit = CaptureLimit {
            packets: None,
            until_micros: Some(clock()),
        };
        let mut cap = Capture::new(port, Shared::default(), limit, clock).unwrap();
        let mut batch = Vec::new();
        assert_eq!(
            cap.recv(&mut pool, &mut batch).unwrap(),
            1,
            "traffic passes"
        );
        assert_eq!(cap.captured(), 0);
        assert!(!cap.is_active());
        pool.free_all(&mut batch);
    }
}
