//! The classic pcap file format (what tcpdump -w writes and Wireshark
//! opens): a 24-byte global header, then a 16-byte record header per frame.
//! Over any `io::Write` / `io::Read`; the format lives here so tests,
//! examples and `podswitchctl explain` share one implementation.

use std::io::{self, Read, Write};

/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Magic of a microsecond-resolution file, as written in host order.
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Magic of a nanosecond-resolution file.
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// Largest record we accept when reading (a 256 KiB snap length covers
/// 64 KiB GSO super-frames with room to spare).
const MAX_RECORD: u32 = 256 * 1024;

/// Writes frames to a pcap file (microsecond timestamps, Ethernet).
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes()); // version 2.4
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        header[16..20].copy_from_slice(&MAX_RECORD.to_le_bytes()); // snaplen
        header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out })
    }

    /// Appends one frame with a timestamp in microseconds since the epoch.
    pub fn write_frame(&mut self, timestamp_micros: u64, frame: &[u8]) -> io::Result<()> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l <= MAX_RECORD)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "frame larger than the pcap snap length",
                )
            })?;
        let mut record = [0u8; 16];
        record[0..4].copy_from_slice(&((timestamp_micros / 1_000_000) as u32).to_le_bytes());
        record[4..8].copy_from_slice(&((timestamp_micros % 1_000_000) as u32).to_le_bytes());
        record[8..12].copy_from_slice(&len.to_le_bytes());
        record[12..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&record)?;
        self.out.write_all(frame)
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One frame read from a pcap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapRecord {
    /// Seconds part of the timestamp.
    pub ts_sec: u32,
    /// Sub-second part (micro- or nanoseconds, per the file).
    pub ts_frac: u32,
    /// Length of the frame on the wire (may exceed `data.len()` if cut).
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// Reads a pcap file: either byte order, micro- or nanosecond stamps.
#[derive(Debug)]
pub struct PcapReader<R: Read> {
    input: R,
    swapped: bool,
    linktype: u32,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: Read> PcapReader<R> {
    /// Reads and checks the global header.
    pub fn new(mut input: R) -> io::Result<Self> {
        let mut header = [0u8; 24];
        input.read_exact(&mut header).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                invalid("not a pcap file: shorter than its 24-byte header".into())
            }
            _ => e,
        })?;
        let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let swapped = if magic == MAGIC_MICROS || magic == MAGIC_NANOS {
            false
        } else if magic.swap_bytes() == MAGIC_MICROS || magic.swap_bytes() == MAGIC_NANOS {
            true
        } else if magic == 0x0a0d_0d0a {
            return Err(invalid(
                "this is a pcapng file; write classic pcap (tcpdump -w, or editcap -F pcap)".into(),
            ));
        } else {
            return Err(invalid(format!("not a pcap file: magic 0x{magic:08x}")));
        };
        let mut reader = PcapReader {
            input,
            swapped,
            linktype: 0,
        };
        reader.linktype = reader.u32_at(&header, 20);
        Ok(reader)
    }

    fn u32_at(&self, bytes: &[u8], at: usize) -> u32 {
        let v = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        if self.swapped {
            v.swap_bytes()
        } else {
            v
        }
    }

    /// The link type (1 = Ethernet).
    pub fn linktype(&self) -> u32 {
        self.linktype
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> io::Result<Option<PcapRecord>> {
        let mut record = [0u8; 16];
        let mut got = 0;
        while got < record.len() {
            match self.input.read(&mut record[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err(invalid(format!("pcap record header cut after {got} bytes"))),
                n => got += n,
            }
        }
        let incl_len = self.u32_at(&record, 8);
        if incl_len > MAX_RECORD {
            return Err(invalid(format!(
                "pcap record of {incl_len} bytes is larger than any frame"
            )));
        }
        let mut data = vec![0u8; incl_len as usize];
        self.input
            .read_exact(&mut data)
            .map_err(|_| invalid(format!("pcap record cut short of its {incl_len} bytes")))?;
        Ok(Some(PcapRecord {
            ts_sec: self.u32_at(&record, 0),
            ts_frac: self.u32_at(&record, 4),
            orig_len: self.u32_at(&record, 12),
            data,
        }))
    }

    /// Reads every remaining record.
    pub fn records(mut self) -> io::Result<Vec<PcapRecord>> {
        let mut all = Vec::new();
        while let Some(r) = self.next_record()? {
            all.push(r);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_round_trip() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_frame(1_700_000_000_123_456, &[1, 2, 3]).unwrap();
        w.write_frame(5, &[]).unwrap();
        let bytes = w.finish().unwrap();
        let r = PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(r.linktype(), LINKTYPE_ETHERNET);
        let recs = r.records().unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].data, vec![1, 2, 3]);
        assert_eq!((recs[0].ts_sec, recs[0].ts_frac), (1_700_000_000, 123_456));
        assert!(recs[1].data.is_empty());
        // Every truncation of the file is an error or a shorter list, never a panic.
        for cut in 0..bytes.len() {
            if let Ok(r) = PcapReader::new(&bytes[..cut]) {
                let _ = r.records();
            }
        }
    }
}
