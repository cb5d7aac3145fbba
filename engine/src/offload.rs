//! What a veth's offloads leave undone, finished in userspace.
//!
//! A pod's eth0 keeps the kernel's default offloads: TX checksum offload
//! and TSO/GSO. Its TCP then reaches the host-side veth as frames of up to
//! 64 KiB whose TCP checksum holds only the pseudo-header sum
//! (`CHECKSUM_PARTIAL`), and an AF_PACKET socket with `PACKET_VNET_HDR`
//! receives them behind a virtio-net header saying so
//! (include/uapi/linux/virtio_net.h; virtio 1.2 §5.1.6.2). Before such a
//! frame can be routed or encapsulated podswitch must do what the NIC would
//! have done:
//!
//! - **checksum** ([`complete_checksum`]): sum from `csum_start` to the end
//!   and store the complement at `csum_start + csum_offset`, as the
//!   kernel's `skb_checksum_help` does;
//! - **segmentation** ([`Segmenter`]): cut the payload into `gso_size`
//!   pieces, each with copied headers; per segment the IPv4 total length,
//!   identification (+1 per segment, as `inet_gso_segment` does) and header
//!   checksum, the TCP sequence number, flags (FIN and PSH only on the
//!   last segment, CWR only on the first, as `tcp_gso_segment` does) and a
//!   full TCP or UDP checksum.
//!
//! Open vSwitch's userspace datapath cannot do this and loses TCP unless
//! pods turn their offloads off; podswitch never asks that.

use std::fmt;
use std::net::Ipv4Addr;

use podswitch_encap::checksum;

/// Length of the virtio-net header (`struct virtio_net_hdr`).
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at csum_start/offset is partial.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const FLAG_DATA_VALID: u8 = 2;
/// No segmentation.
pub const GSO_NONE: u8 = 0;
/// TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// UDP fragmentation offload (legacy UFO).
pub const GSO_UDP: u8 = 3;
/// TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// UDP segmentation (`UDP_SEGMENT`).
pub const GSO_UDP_L4: u8 = 5;
/// Set with a TCP type when the first segment carries CWR.
pub const GSO_ECN: u8 = 0x80;

/// A virtio-net header, in the byte order AF_PACKET uses (the host's:
/// the legacy virtio layout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// `GSO_*` type, with [`GSO_ECN`] possibly set.
    pub gso_type: u8,
    /// Length of the headers (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum field is, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Reads a header.
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> VnetHeader {
        let word = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
        }
    }

    /// True if the frame needs segmenting.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// True if the frame's checksum is partial.
    pub fn needs_checksum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }
}

/// Why an offloaded frame cannot be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// csum_start/csum_offset point outside the frame.
    ChecksumOutOfFrame,
    /// A segmentation type podswitch does not do (IPv6, legacy UFO).
    GsoUnsupported(u8),
    /// The frame's headers do not match its segmentation type.
    GsoMalformed(&'static str),
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffloadError::ChecksumOutOfFrame => {
                f.write_str("the partial checksum's offsets point outside the frame")
            }
            OffloadError::GsoUnsupported(t) => write!(f, "segmentation type {t} is not supported"),
            OffloadError::GsoMalformed(why) => write!(f, "segmentation offload frame: {why}"),
        }
    }
}

impl std::error::Error for OffloadError {}

/// Completes a partial checksum: the field at `start + offset` holds the
/// pseudo-header sum; the sum of everything from `start` is complemented
/// into it. A zero result is written as 0xffff (RFC 768: zero means "no
/// checksum" for UDP; the same value for TCP), as `skb_checksum_help` does.
pub fn complete_checksum(
    frame: &mut [u8],
    start: usize,
    offset: usize,
) -> Result<(), OffloadError> {
    let field = start + offset;
    if start >= frame.len() || field + 2 > frame.len() {
        return Err(OffloadError::ChecksumOutOfFrame);
    }
    let value = match !checksum::fold(checksum::accumulate(0, &frame[start..])) {
        0 => 0xffff,
        v => v,
    };
    frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Finishes the TCP or UDP checksum of an untagged IPv4 frame if it is
/// partial, and reports whether it was.
///
/// For interfaces that say nothing about offloads (an AF_XDP socket gets
/// the bare frame): a partial checksum is recognised by its value, the
/// folded pseudo-header sum that `CHECKSUM_PARTIAL` leaves in the field
/// (`~csum_tcpudp_magic(..., 0)`), together with a sum that does not
/// verify. A checksum that verifies, or that is wrong in any other way, is
/// left as the sender made it: a corrupt packet stays corrupt, and its
/// receiver drops it as it would have without podswitch.
pub fn complete_partial_l4(frame: &mut [u8]) -> bool {
    if frame.len() < ETH_LEN + 20 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() || fragment {
        return false;
    }
    let field = match ip[9] {
        6 => 16,
        17 => 6,
        _ => return false,
    };
    let l4 = ETH_LEN + ihl;
    let end = ETH_LEN + total;
    if end < l4 + field + 2 {
        return false;
    }
    let stored = u16::from_be_bytes([frame[l4 + field], frame[l4 + field + 1]]);
    if ip[9] == 17 && stored == 0 {
        return false; // UDP without a checksum (RFC 768)
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let pseudo = checksum::pseudo_header_v4(src, dst, ip[9], (end - l4) as u16);
    if checksum::fold(checksum::accumulate(pseudo, &frame[l4..end])) == 0xffff {
        return false; // complete and correct
    }
    if stored != checksum::fold(pseudo) {
        return false; // wrong, not partial
    }
    complete_checksum(&mut frame[..end], l4, field).is_ok()
}

/// Layer-4 protocol of a frame being segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// Cuts one GSO super-frame (untagged Ethernet, IPv4, TCP or UDP) into
/// wire-sized frames: [`Self::count`] of them, each written by
/// [`Self::write`].
#[derive(Debug, Clone, Copy)]
pub struct Segmenter {
    transport: Transport,
    l3: usize,
    l4: usize,
    payload: usize,
    len: usize,
    mss: usize,
    ident: u16,
    seq: u32,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

const ETH_LEN: usize = 14;

impl Segmenter {
    /// Checks `frame` against its header and prepares to segment it.
    pub fn new(frame: &[u8], hdr: &VnetHeader) -> Result<Segmenter, OffloadError> {
        let transport = match hdr.gso_type & !GSO_ECN {
            GSO_TCPV4 => Transport::Tcp,
            GSO_UDP_L4 => Transport::Udp,
            other => return Err(OffloadError::GsoUnsupported(other)),
        };
        let malformed = OffloadError::GsoMalformed;
        if frame.len() < ETH_LEN + 20 || frame[12..14] != [0x08, 0x00] {
            return Err(malformed("not untagged Ethernet carrying IPv4"));
        }
        let ip = &frame[ETH_LEN..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
            return Err(malformed("bad IPv4 header"));
        }
        let protocol = ip[9];
        let l4 = ETH_LEN + ihl;
        let l4_len = match (transport, protocol) {
            (Transport::Tcp, 6) => {
                let doff = frame
                    .get(l4 + 12)
                    .map(|b| usize::from(b >> 4) * 4)
                    .ok_or(malformed("truncated TCP header"))?;
                if doff < 20 {
                    return Err(malformed("TCP data offset below 5"));
                }
                doff
            }
            (Transport::Udp, 17) => 8,
            _ => {
                return Err(malformed(
                    "IPv4 protocol does not match the segmentation type",
                ))
            }
        };
        let payload = l4 + l4_len;
        if payload > frame.len() {
            return Err(malformed("headers run past the frame"));
        }
        if hdr.gso_size == 0 {
            return Err(malformed("segment size 0"));
        }
        let word = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
        let seq = match transport {
            Transport::Tcp => {
                u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]])
            }
            Transport::Udp => 0,
        };
        Ok(Segmenter {
            transport,
            l3: ETH_LEN,
            l4,
            payload,
            len: frame.len(),
            mss: usize::from(hdr.gso_size),
            ident: word(ETH_LEN + 4),
            seq,
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        })
    }

    /// Number of segments.
    pub fn count(&self) -> usize {
        (self.len - self.payload).div_ceil(self.mss).max(1)
    }

    /// Length of the longest segment.
    pub fn max_segment_len(&self) -> usize {
        self.payload + self.mss.min(self.len - self.payload)
    }

    /// Writes segment `i` of `frame` (the frame given to [`Self::new`])
    /// into `dst` and returns its length, or `None` if `dst` is too small.
    pub fn write(&self, frame: &[u8], i: usize, dst: &mut [u8]) -> Option<usize> {
        let from = self.payload + i * self.mss;
        let to = (from + self.mss).min(self.len);
        let chunk = frame.get(from..to)?;
        let total = self.payload + chunk.len();
        let out = dst.get_mut(..total)?;
        out[..self.payload].copy_from_slice(&frame[..self.payload]);
        out[self.payload..].copy_from_slice(chunk);
        let last = i + 1 == self.count();

        // IPv4: total length, identification, header checksum.
        let ip_len = (total - self.l3) as u16;
        out[self.l3 + 2..self.l3 + 4].copy_from_slice(&ip_len.to_be_bytes());
        let ident = self.ident.wrapping_add(i as u16);
        out[self.l3 + 4..self.l3 + 6].copy_from_slice(&ident.to_be_bytes());
        out[self.l3 + 10..self.l3 + 12].fill(0);
        let ip_sum = checksum::checksum(&out[self.l3..self.l4]);
        out[self.l3 + 10..self.l3 + 12].copy_from_slice(&ip_sum.to_be_bytes());

        let l4_len = (total - self.l4) as u16;
        let (protocol, field) = match self.transport {
            Transport::Tcp => {
                let seq = self.seq.wrapping_add((i * self.mss) as u32);
                out[self.l4 + 4..self.l4 + 8].copy_from_slice(&seq.to_be_bytes());
                let flags = &mut out[self.l4 + 13];
                if !last {
                    *flags &= !(0x01 | 0x08); // FIN, PSH: the last segment's
                }
                if i != 0 {
                    *flags &= !0x80; // CWR: the first segment's
                }
                (6, self.l4 + 16)
            }
            Transport::Udp => {
                out[self.l4 + 4..self.l4 + 6].copy_from_slice(&l4_len.to_be_bytes());
                (17, self.l4 + 6)
            }
        };
        out[field..field + 2].fill(0);
        let sum = checksum::accumulate(
            checksum::pseudo_header_v4(self.src, self.dst, protocol, l4_len),
            &out[self.l4..],
        );
        let value = match !checksum::fold(sum) {
            0 => 0xffff,
            v => v,
        };
        out[field..field + 2].copy_from_slice(&value.to_be_bytes());
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    /// A TSO super-frame as a veth hands it over: full-length headers and
    /// only the pseudo-header sum in the TCP checksum field.
    fn tso_frame(payload: &[u8], flags_fin_psh_cwr: bool) -> (Vec<u8>, VnetHeader) {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .tcp(40000, 5201, 1_000_000, 64000);
        let builder = if flags_fin_psh_cwr {
            builder.fin().psh().cwr().ack(7)
        } else {
            builder.ack(7)
        };
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
        let ip_sum = checksum::checksum(&{
            let mut h = frame[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        frame[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp_len = (frame.len() - 34) as u16;
        let pseudo = checksum::fold(checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 2, 2),
            6,
            tcp_len,
        ));
        frame[50..52].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHeader {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | if flags_fin_psh_cwr { GSO_ECN } else { 0 },
            hdr_len: 54,
            gso_size: 1398,
            csum_start: 34,
            csum_offset: 16,
        };
        (frame, hdr)
    }

    fn tcp_checksum_ok(seg: &[u8]) -> bool {
        let p = SlicedPacket::from_ethernet(seg).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!("not TCP")
        };
        let computed = tcp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
            .unwrap();
        computed == tcp.checksum()
            && ip.header().to_header().calc_header_checksum() == ip.header().header_checksum()
    }

    #[test]
    fn completes_a_partial_tcp_checksum_as_the_nic_would() {
        let payload: Vec<u8> = (0..999u32).map(|i| (i * 7) as u8).collect();
        let (mut frame, hdr) = tso_frame(&payload, false);
        assert!(
            !tcp_checksum_ok(&frame),
            "a partial checksum does not verify"
        );
        complete_checksum(
            &mut frame,
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_offset),
        )
        .unwrap();
        assert!(tcp_checksum_ok(&frame));
        assert_eq!(
            complete_checksum(&mut frame, 34, 2000),
            Err(OffloadError::ChecksumOutOfFrame)
        );
        assert_eq!(
            complete_checksum(&mut frame, 5000, 0),
            Err(OffloadError::ChecksumOutOfFrame)
        );
    }

    #[test]
    fn recognises_partial_checksums_and_leaves_others_alone() {
        let payload: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
        let (frame, _) = tso_frame(&payload, false);
        let mut partial = frame.clone();
        assert!(complete_partial_l4(&mut partial), "partial: completed");
        assert!(tcp_checksum_ok(&partial));
        let mut complete = partial.clone();
        assert!(!complete_partial_l4(&mut complete), "complete: untouched");
        assert_eq!(complete, partial);
        let mut corrupt = partial.clone();
        corrupt[60] ^= 0xff;
        let before = corrupt.clone();
        assert!(!complete_partial_l4(&mut corrupt), "corrupt: left corrupt");
        assert_eq!(corrupt, before);
        let mut short = frame[..30].to_vec();
        assert!(!complete_partial_l4(&mut short));
    }

    #[test]
    fn segments_tso_frames_like_the_kernel() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (frame, hdr) = tso_frame(&payload, true);
        let seg = Segmenter::new(&frame, &hdr).unwrap();
        assert_eq!(seg.count(), 10_000usize.div_ceil(1398));
        let mut joined = Vec::new();
        let mut buf = vec![0u8; 2048];
        for i in 0..seg.count() {
            let len = seg.write(&frame, i, &mut buf).unwrap();
            let s = &buf[..len];
            assert!(tcp_checksum_ok(s), "segment {i} checksums");
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let Some(NetSlice::Ipv4(ip)) = &p.net else {
                panic!()
            };
            let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
                panic!()
            };
            assert_eq!(
                ip.header().identification(),
                0x1234u16.wrapping_add(i as u16)
            );
            assert_eq!(tcp.sequence_number(), 1_000_000 + (i * 1398) as u32);
            assert_eq!(tcp.acknowledgment_number(), 7);
            let last = i + 1 == seg.count();
            assert_eq!(tcp.fin(), last, "FIN only on the last segment");
            assert_eq!(tcp.psh(), last, "PSH only on the last segment");
            assert_eq!(tcp.cwr(), i == 0, "CWR only on the first segment");
            assert!(len <= 14 + 1450);
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, payload);
        assert!(
            seg.write(&frame, 0, &mut [0u8; 100]).is_none(),
            "too small a buffer"
        );
    }

    #[test]
    fn segments_udp_gso_and_refuses_what_it_cannot() {
        let payload = vec![0xabu8; 3000];
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
            .udp(5000, 6000)
            .write(&mut frame, &payload)
            .unwrap();
        let hdr = VnetHeader {
            gso_type: GSO_UDP_L4,
            gso_size: 1000,
            ..VnetHeader::default()
        };
        let seg = Segmenter::new(&frame, &hdr).unwrap();
        assert_eq!(seg.count(), 3);
        let mut buf = vec![0u8; 2048];
        for i in 0..3 {
            let len = seg.write(&frame, i, &mut buf).unwrap();
            let p = SlicedPacket::from_ethernet(&buf[..len]).unwrap();
            let Some(NetSlice::Ipv4(ip)) = &p.net else {
                panic!()
            };
            let Some(TransportSlice::Udp(udp)) = &p.transport else {
                panic!()
            };
            assert_eq!(udp.payload().len(), 1000);
            assert_eq!(
                udp.to_header()
                    .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
                    .unwrap(),
                udp.checksum()
            );
        }
        let tcp6 = VnetHeader {
            gso_type: GSO_TCPV6,
            gso_size: 1000,
            ..hdr
        };
        assert_eq!(
            Segmenter::new(&frame, &tcp6).unwrap_err(),
            OffloadError::GsoUnsupported(GSO_TCPV6)
        );
        let wrong = VnetHeader {
            gso_type: GSO_TCPV4,
            ..hdr
        };
        assert!(matches!(
            Segmenter::new(&frame, &wrong),
            Err(OffloadError::GsoMalformed(_))
        ));
        assert!(matches!(
            Segmenter::new(&frame[..20], &hdr),
            Err(OffloadError::GsoMalformed(_))
        ));
        let zero = VnetHeader { gso_size: 0, ..hdr };
        assert!(Segmenter::new(&frame, &zero).is_err());
    }
}
