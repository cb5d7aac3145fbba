//! TCP's header, as far as podswitch reads it outside the data path: the
//! fields a person looks at, described for [`crate::dissect`]. The data
//! path's TCP work (completing checksums, segmenting and merging
//! segments) lives in [`crate::offload`].

use std::net::Ipv4Addr;

use crate::checksum;
use crate::describe::Section;
use crate::ipv4::IpProtocol;

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;

/// Longer than any link here carries: a segment this long is a GSO
/// super-frame, to be cut at the sender's MSS (which is not in the frame).
const SUPER_FRAME_OVER: usize = 9000;

/// The header length the data offset field gives (it may be out of
/// range: [`describe`] says so).
///
/// # Panics
///
/// If `segment` is shorter than [`HEADER_LEN`].
pub fn header_len(segment: &[u8]) -> usize {
    usize::from(segment[12] >> 4) * 4
}

/// The header of `segment` (the whole TCP segment, at `offset` in its
/// frame, from `src` to `dst`) described field by field: a checksum left
/// partial by offload told apart from a wrong one, a super-frame named,
/// and a data offset outside the segment as a problem.
///
/// # Panics
///
/// If `segment` is shorter than [`HEADER_LEN`] (the caller checks).
pub fn describe(segment: &[u8], offset: usize, src: Ipv4Addr, dst: Ipv4Addr) -> Section {
    let b = segment;
    let data_offset = header_len(b);
    let stored = u16::from_be_bytes([b[16], b[17]]);
    // A segment longer than 64 KiB is a BIG TCP super-frame's: its length
    // is summed 32 bits wide, as the kernel does.
    let pseudo =
        checksum::pseudo_header_v4_long(src, dst, u8::from(IpProtocol::Tcp), b.len() as u32);
    let verifies = checksum::fold(checksum::accumulate(pseudo, b)) == 0xffff;
    let partial = !verifies && checksum::is_partial(stored, pseudo);
    let checksum_value = if verifies {
        format!("0x{stored:04x} (correct)")
    } else if partial {
        format!("0x{stored:04x} ({})", checksum::PARTIAL_IN_WORDS)
    } else {
        // The sum without the field (it sits at an even offset).
        let without = checksum::accumulate(checksum::accumulate(pseudo, &b[..16]), &b[18..]);
        let should = !checksum::fold(without);
        format!("0x{stored:04x} (WRONG, should be 0x{should:04x})")
    };
    let mut s = Section::new("TCP", offset, data_offset.clamp(HEADER_LEN, b.len()));
    s.field(
        "source port",
        offset,
        2,
        u16::from_be_bytes([b[0], b[1]]).to_string(),
    );
    s.field(
        "destination port",
        offset + 2,
        2,
        u16::from_be_bytes([b[2], b[3]]).to_string(),
    );
    s.field(
        "sequence",
        offset + 4,
        4,
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]).to_string(),
    );
    s.field(
        "header length",
        offset + 12,
        1,
        format!("{data_offset} bytes"),
    );
    s.field("checksum", offset + 16, 2, checksum_value);
    if !verifies && !partial {
        s.problem("checksum is wrong (a receiver drops this)");
    }
    if b.len() > SUPER_FRAME_OVER {
        s.field(
            "segmentation",
            offset,
            b.len(),
            format!(
                "a GSO super-frame of {} bytes of TCP: cut into MSS-sized segments late, by the kernel or a port that cannot take it whole",
                b.len()
            ),
        );
    }
    if data_offset < HEADER_LEN || data_offset > b.len() {
        s.problem(format!(
            "data offset {data_offset} is outside 20..={}",
            b.len()
        ));
    }
    s
}
