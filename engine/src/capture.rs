//! Capture as a wrapper over any port: frames received and sent pass
//! through to the wrapped port unchanged and are written to a pcap file
//! (what `podswitchctl capture` asks for, and tcpdump on the port would
//! show), until a packet count or a deadline is reached.
//!
//! What is written, and when it stops, is a [`Recording`], which several
//! captures may share: the members of a port split among workers
//! ([`Port::fan_out`]) each wrap their own and write one file, every
//! record whole (under the recording's lock), up to one limit.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// A pcap file being written, its limit, and how far it got: shared by
/// the captures that write to it.
pub struct Recording<W: Write + Send> {
    state: Mutex<RecordingState<W>>,
    limit: CaptureLimit,
    clock: fn() -> u64,
}

struct RecordingState<W: Write + Send> {
    /// None once stopped (the file flushed).
    writer: Option<PcapWriter<W>>,
    captured: u64,
    /// The first write error.
    error: Option<io::Error>,
}

impl<W: Write + Send> std::fmt::Debug for Recording<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Recording")
            .field("limit", &self.limit)
            .field("captured", &state.captured)
            .field("active", &state.writer.is_some())
            .finish()
    }
}

impl<W: Write + Send> Recording<W> {
    /// A recording into a pcap file whose header is written. `clock`
    /// gives microseconds since the epoch (frame timestamps and the
    /// deadline).
    pub fn new(writer: PcapWriter<W>, limit: CaptureLimit, clock: fn() -> u64) -> Arc<Self> {
        Arc::new(Recording {
            state: Mutex::new(RecordingState {
                writer: Some(writer),
                captured: 0,
                error: None,
            }),
            limit,
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, RecordingState<W>> {
        // A writer that panicked left whole records behind it: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames written so far.
    pub fn captured(&self) -> u64 {
        self.lock().captured
    }

    /// True while frames are still being written.
    pub fn is_active(&self) -> bool {
        self.lock().writer.is_some()
    }

    /// Stops the recording if its deadline has passed (a port with no
    /// traffic never records a frame); returns whether it is still
    /// active.
    pub fn check_deadline(&self) -> bool {
        let mut state = self.lock();
        if self.limit.until_micros.is_some_and(|t| (self.clock)() >= t) {
            state.stop();
        }
        state.writer.is_some()
    }

    /// Stops writing (flushing the file) and hands over the first write
    /// error, if any and not handed over before.
    pub fn stop(&self) -> Option<io::Error> {
        let mut state = self.lock();
        state.stop();
        state.error.take()
    }

    /// Writes `frames`, each record whole, until the limit.
    fn record(&self, frames: &[PacketBuf]) {
        let now = (self.clock)();
        let mut state = self.lock();
        if self.limit.until_micros.is_some_and(|t| now >= t) {
            state.stop();
        }
        for frame in frames {
            if self.limit.packets.is_some_and(|n| state.captured >= n) {
                state.stop();
            }
            let Some(writer) = state.writer.as_mut() else {
                return;
            };
            if let Err(e) = writer.write_frame(now, frame.frame()) {
                // A full disk ends the capture, never the forwarding.
                state.error.get_or_insert(e);
                state.stop();
                return;
            }
            state.captured += 1;
        }
        if self.limit.packets.is_some_and(|n| state.captured >= n) {
            state.stop();
        }
    }
}

impl<W: Write + Send> RecordingState<W> {
    fn stop(&mut self) {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.finish() {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// A port whose traffic is also written to a [`Recording`].
pub struct Capture<P: Port, W: Write + Send> {
    inner: P,
    recording: Arc<Recording<W>>,
}

impl<P: Port, W: Write + Send> std::fmt::Debug for Capture<P, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("port", &self.inner.name())
            .field("recording", &self.recording)
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
        Capture::join(inner, Recording::new(writer, limit, clock))
    }

    /// Wraps `inner`, writing to `recording` beside the captures already
    /// writing to it.
    pub fn join(inner: P, recording: Arc<Recording<W>>) -> Self {
        Capture { inner, recording }
    }

    /// Frames written so far (by every capture of the recording).
    pub fn captured(&self) -> u64 {
        self.recording.captured()
    }

    /// True while frames are still being written.
    pub fn is_active(&self) -> bool {
        self.recording.is_active()
    }

    /// Stops the recording if its deadline has passed (a port with no
    /// traffic never records a frame); returns whether it is
    /// still active.
    pub fn check_deadline(&mut self) -> bool {
        self.recording.check_deadline()
    }

    /// Stops the recording (flushing the file, for every capture of it)
    /// and returns the wrapped port and the first write error, if no
    /// capture of the recording finished before with it.
    pub fn finish(self) -> (P, Option<io::Error>) {
        let error = self.recording.stop();
        (self.inner, error)
    }

    fn record(&mut self, frames: &[PacketBuf]) {
        self.recording.record(frames);
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
        if batch.len() > before {
            self.record(&batch[before..]);
        }
        Ok(n)
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        if !batch.is_empty() {
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

    fn drained(&self) -> bool {
        self.inner.drained()
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
    fn captures_of_one_recording_write_one_file_of_whole_records_up_to_one_limit() {
        let out = Shared::default();
        let limit = CaptureLimit {
            packets: Some(150),
            until_micros: None,
        };
        let recording = Recording::new(PcapWriter::new(out.clone()).unwrap(), limit, clock);
        // Two members of one split port, in two threads, 100 frames each;
        // member m's frames are 60 + m bytes of m.
        let members: Vec<_> = (0..2u8)
            .map(|member| {
                let recording = Arc::clone(&recording);
                std::thread::spawn(move || {
                    let mut pool = PacketPool::new(64, 512);
                    let mut port = MemoryPort::new("veth0", PortId(1));
                    for _ in 0..100 {
                        port.rx.push_back(vec![member; 60 + usize::from(member)]);
                    }
                    let mut cap = Capture::join(port, recording);
                    let mut batch = Vec::new();
                    while cap.recv(&mut pool, &mut batch).unwrap() > 0 {
                        pool.free_all(&mut batch);
                    }
                    cap
                })
            })
            .collect();
        let captures: Vec<_> = members.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(recording.captured(), 150);
        assert!(!recording.is_active(), "stopped at the shared limit");
        for capture in captures {
            assert!(capture.finish().1.is_none());
        }
        let records = PcapReader::new(&out.0.lock().unwrap()[..])
            .unwrap()
            .records()
            .unwrap();
        assert_eq!(records.len(), 150);
        for r in &records {
            let member = r.data[0];
            assert_eq!(
                r.data,
                vec![member; 60 + usize::from(member)],
                "a whole record"
            );
        }
        for member in 0..2 {
            assert!(
                records.iter().any(|r| r.data[0] == member),
                "member {member} wrote into the one file"
            );
        }
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
