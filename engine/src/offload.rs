//! Offloads: what a veth's (or a kernel node's) offloads leave undone,
//! carried on or finished in userspace.
//!
//! A pod's eth0 keeps the kernel's default offloads: TX checksum offload
//! and TSO/GSO. Its TCP then reaches the host-side veth as super-frames of
//! up to 64 KiB whose TCP checksum holds only the pseudo-header sum
//! (`CHECKSUM_PARTIAL`), and an AF_PACKET socket with `PACKET_VNET_HDR`
//! receives them behind a virtio-net header saying so
//! (include/uapi/linux/virtio_net.h; virtio 1.2 §5.1.6.2).
//!
//! podswitch does what the kernel's own path does with them: it carries a
//! super-frame through the pipeline as one packet ([`accept_vnet_header`]
//! records the state in the buffer's [`Offload`]) and hands it on whole
//! where the port it leaves on can take it ([`vnet_header_for`]: an
//! AF_PACKET pod port, the host-gw socket). Only a port that cannot
//! ([`finish_in_software`]) gets what a NIC would have made:
//!
//! - **checksum** ([`complete_checksum`]): sum from `csum_start` to the end
//!   and store the complement at `csum_start + csum_offset`, as the
//!   kernel's `skb_checksum_help` does;
//! - **segmentation** ([`Segmenter`]): cut the payload into `gso_size`
//!   pieces, each with copied headers; per segment the IPv4 total length,
//!   identification (+1 per segment, as `inet_gso_segment` does) and header
//!   checksum, the TCP sequence number, flags (FIN and PSH only on the
//!   last segment, CWR only on the first, as `tcp_gso_segment` does) and a
//!   full TCP or UDP checksum; for an encapsulated super-frame the outer
//!   IPv4 and UDP headers are rewritten per segment too, as the kernel's
//!   `skb_udp_tunnel_segment` does for a tunnel device.
//!
//! Sockets say nothing of offloads: a kernel flannel node behind a veth
//! sends VXLAN whose inner checksum is partial, and whole 64 KiB GSO
//! datagrams. [`recognise_offloads`] recognises both after decapsulation.
//!
//! Open vSwitch's userspace datapath cannot do this and loses TCP unless
//! pods turn their offloads off; podswitch never asks that.

use std::fmt;
use std::net::Ipv4Addr;

use podswitch_encap::checksum;

use crate::drop::DropReason;
use crate::packet::{Gso, GsoKind, Offload, PacketBuf, PacketPool, PartialChecksum};

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

    /// Writes the header.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
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
    let value = transport_checksum(checksum::accumulate(0, &frame[start..]));
    frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Completes `buf`'s partial transport checksum in place and clears it
/// from its offload state: `Ok(true)` if it had one, `Ok(false)` if not,
/// an error (the frame untouched) if its offsets leave the frame.
pub fn complete_partial_checksum(buf: &mut PacketBuf) -> Result<bool, OffloadError> {
    let Some(c) = buf.offload().partial_csum else {
        return Ok(false);
    };
    let start = buf
        .frame_offset(c.start)
        .ok_or(OffloadError::ChecksumOutOfFrame)?;
    complete_checksum(buf.frame_mut(), start, usize::from(c.offset))?;
    let offload = Offload {
        partial_csum: None,
        ..*buf.offload()
    };
    buf.set_offload(offload);
    Ok(true)
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
    if frame.len() < ETH_LEN || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    if check_l4(frame, ETH_LEN) != L4Checksum::Partial {
        return false;
    }
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let field = if ip[9] == 6 { 16 } else { 6 };
    complete_checksum(&mut frame[..ETH_LEN + total], ETH_LEN + ihl, field).is_ok()
}

/// Settles the outer UDP checksum of a tunnel datagram read off the wire
/// (the IPv4 packet at `l3` of `frame`, its inner IPv4 packet at
/// `inner_l3`) the way the receiving kernel would, and clears it when it
/// holds: over IPv4 a zero UDP checksum means none (RFC 768), so the
/// pipeline does not check it a second time. It holds when
///
/// - it verifies;
/// - it is the pseudo-header sum alone: the sender's kernel left it for
///   the NIC (`CHECKSUM_PARTIAL`), and a veth carries it so to the other
///   namespace;
/// - it does not verify but the inner transport checksum is partial: the
///   sender's kernel computed the outer one as if the inner one were done
///   (local checksum offload, Documentation/networking/checksum-offloads.rst),
///   which the inner one will be where it leaves (the pipeline carries it
///   as partial).
///
/// A checksum that is wrong otherwise is left for the pipeline to drop
/// (`udp_checksum`). Returns false only then.
pub fn settle_outer_udp_checksum(frame: &mut [u8], l3: usize, inner_l3: usize) -> bool {
    let field = match frame.get(l3..l3 + 20) {
        Some(ip) if ip[9] == 17 => l3 + usize::from(ip[0] & 0x0f) * 4 + 6,
        _ => return true,
    };
    let holds = match check_l4(frame, l3) {
        L4Checksum::NotChecked => return true,
        L4Checksum::Valid | L4Checksum::Partial => true,
        L4Checksum::Bad => check_l4(frame, inner_l3) == L4Checksum::Partial,
    };
    if holds {
        frame[field..field + 2].fill(0);
    }
    holds
}

/// Layer-4 protocol of a frame being segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// The outer headers of an encapsulated super-frame, rewritten per
/// segment: IPv4 total length, identification and header checksum, and
/// the UDP length (and checksum, if the sender used one), as the kernel's
/// `skb_udp_tunnel_segment` and `inet_gso_segment` do for a tunnel device.
#[derive(Debug, Clone, Copy)]
struct Outer {
    ihl: usize,
    ident: u16,
    /// Offset of the outer UDP header, for VXLAN and IP-in-UDP.
    udp: Option<usize>,
    udp_checksum: bool,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

/// Cuts one GSO super-frame (IPv4 carrying TCP or UDP, behind an Ethernet
/// header or behind a tunnel's outer headers) into wire-sized frames:
/// [`Self::count`] of them, each written by [`Self::write`].
#[derive(Debug, Clone, Copy)]
pub struct Segmenter {
    transport: Transport,
    outer: Option<Outer>,
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

/// Reads an IPv4 header at `at`: its length, protocol and addresses.
fn ipv4_header(frame: &[u8], at: usize) -> Result<(usize, u8, Ipv4Addr, Ipv4Addr), OffloadError> {
    let ip = frame
        .get(at..at + 20)
        .ok_or(OffloadError::GsoMalformed("truncated IPv4 header"))?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || at + ihl > frame.len() {
        return Err(OffloadError::GsoMalformed("bad IPv4 header"));
    }
    Ok((
        ihl,
        ip[9],
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    ))
}

impl Segmenter {
    /// Checks an untagged Ethernet super-frame against its virtio-net
    /// header and prepares to segment it.
    pub fn new(frame: &[u8], hdr: &VnetHeader) -> Result<Segmenter, OffloadError> {
        let kind = match hdr.gso_type & !GSO_ECN {
            GSO_TCPV4 => GsoKind::TcpV4,
            GSO_UDP_L4 => GsoKind::UdpL4,
            other => return Err(OffloadError::GsoUnsupported(other)),
        };
        Segmenter::at(frame, ETH_LEN, kind, hdr.gso_size)
    }

    /// Prepares to segment the IPv4 packet at `l3` of `frame` into pieces
    /// of `mss` payload bytes. With `l3` past the Ethernet header the
    /// frame is an encapsulated super-frame: an outer IPv4 header at 14
    /// (and a UDP header behind it for VXLAN and IP-in-UDP) is repeated on
    /// every segment with its lengths and checksums rewritten.
    pub fn at(frame: &[u8], l3: usize, kind: GsoKind, mss: u16) -> Result<Segmenter, OffloadError> {
        let malformed = OffloadError::GsoMalformed;
        if frame.len() < ETH_LEN || frame[12..14] != [0x08, 0x00] {
            return Err(malformed("not untagged Ethernet carrying IPv4"));
        }
        let transport = match kind {
            GsoKind::TcpV4 => Transport::Tcp,
            GsoKind::UdpL4 => Transport::Udp,
        };
        let outer = if l3 > ETH_LEN {
            let (ihl, protocol, src, dst) = ipv4_header(frame, ETH_LEN)?;
            let udp = match protocol {
                17 => Some(ETH_LEN + ihl),
                4 => None,
                _ => return Err(malformed("outer header is neither UDP nor IPIP")),
            };
            if ETH_LEN + ihl + udp.map_or(0, |_| 8) > l3 {
                return Err(malformed("outer headers overlap the inner packet"));
            }
            Some(Outer {
                ihl,
                ident: u16::from_be_bytes([frame[ETH_LEN + 4], frame[ETH_LEN + 5]]),
                udp,
                udp_checksum: udp.is_some_and(|u| frame[u + 6..u + 8] != [0, 0]),
                src,
                dst,
            })
        } else if l3 == ETH_LEN {
            None
        } else {
            return Err(malformed("IPv4 header inside the Ethernet header"));
        };
        let (ihl, protocol, src, dst) = ipv4_header(frame, l3)?;
        let l4 = l3 + ihl;
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
        let total = usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]));
        if l3 + total != frame.len() {
            return Err(malformed("IPv4 total length does not match the frame"));
        }
        if mss == 0 {
            return Err(malformed("segment size 0"));
        }
        let seq = match transport {
            Transport::Tcp => {
                u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]])
            }
            Transport::Udp => 0,
        };
        Ok(Segmenter {
            transport,
            outer,
            l3,
            l4,
            payload,
            len: frame.len(),
            mss: usize::from(mss),
            ident: u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]),
            seq,
            src,
            dst,
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

    /// Bytes of the segmented packet's IPv4 and transport headers.
    pub fn header_len(&self) -> usize {
        self.payload - self.l3
    }

    /// Writes segment `i` of `frame` (the frame given to [`Self::new`])
    /// into `dst` and returns its length, or `None` if `dst` is too small.
    pub fn write(&self, frame: &[u8], i: usize, dst: &mut [u8]) -> Option<usize> {
        let chunk = self.chunk(i);
        let total = self.payload + chunk.len();
        let out = dst.get_mut(..total)?;
        self.write_headers(frame, i, &mut out[..self.payload])?;
        out[self.payload..].copy_from_slice(frame.get(chunk)?);
        Some(total)
    }

    /// Where segment `i`'s payload is in the super-frame.
    pub fn chunk(&self, i: usize) -> std::ops::Range<usize> {
        let from = (self.payload + i * self.mss).min(self.len);
        from..(from + self.mss).min(self.len)
    }

    /// Writes the headers of segment `i` (the super-frame's headers with
    /// its lengths, identification, sequence number, flags and checksums,
    /// which cover its payload, [`Self::chunk`]) into `dst`, exactly
    /// [`Self::header_bytes`] long; the payload itself is not copied, so
    /// a sender can gather headers and payload straight from the
    /// super-frame. `None` if `dst` has the wrong length.
    pub fn write_headers(&self, frame: &[u8], i: usize, dst: &mut [u8]) -> Option<()> {
        if dst.len() != self.payload {
            return None;
        }
        let data = frame.get(self.chunk(i))?;
        let total = self.payload + data.len();
        let out = dst;
        out.copy_from_slice(frame.get(..self.payload)?);
        let last = i + 1 == self.count();

        // IPv4: total length, identification, header checksum.
        write_ipv4_lengths(
            out,
            self.l3,
            self.l4,
            total,
            self.ident.wrapping_add(i as u16),
        );

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
        // Transport headers are a whole number of 16-bit words, so the sum
        // of headers and payload is the sum of the two.
        let sum = checksum::accumulate(
            checksum::accumulate(
                checksum::pseudo_header_v4(self.src, self.dst, protocol, l4_len),
                &out[self.l4..],
            ),
            data,
        );
        out[field..field + 2].copy_from_slice(&transport_checksum(sum).to_be_bytes());

        if let Some(outer) = self.outer {
            let ident = outer.ident.wrapping_add(i as u16);
            write_ipv4_lengths(out, ETH_LEN, ETH_LEN + outer.ihl, total, ident);
            if let Some(udp) = outer.udp {
                let udp_len = (total - udp) as u16;
                out[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
                if outer.udp_checksum {
                    out[udp + 6..udp + 8].fill(0);
                    let sum = checksum::accumulate(
                        checksum::accumulate(
                            checksum::pseudo_header_v4(outer.src, outer.dst, 17, udp_len),
                            &out[udp..],
                        ),
                        data,
                    );
                    out[udp + 6..udp + 8].copy_from_slice(&transport_checksum(sum).to_be_bytes());
                }
            }
        }
        Some(())
    }

    /// Bytes of headers in front of each segment's payload (outer headers
    /// included).
    pub fn header_bytes(&self) -> usize {
        self.payload
    }

    /// Bytes of one full segment's datagram: what follows the outer UDP
    /// header at `udp_payload` (an encapsulated super-frame's VXLAN or
    /// IP-in-UDP payload).
    pub fn datagram_len(&self, udp_payload: usize) -> usize {
        self.max_segment_len() - udp_payload
    }
}

/// Writes an IPv4 header's total length (of a `frame_len`-byte frame) and
/// identification and recomputes its checksum.
fn write_ipv4_lengths(out: &mut [u8], l3: usize, l4: usize, frame_len: usize, ident: u16) {
    let ip_len = (frame_len - l3) as u16;
    out[l3 + 2..l3 + 4].copy_from_slice(&ip_len.to_be_bytes());
    out[l3 + 4..l3 + 6].copy_from_slice(&ident.to_be_bytes());
    out[l3 + 10..l3 + 12].fill(0);
    let ip_sum = checksum::checksum(&out[l3..l4]);
    out[l3 + 10..l3 + 12].copy_from_slice(&ip_sum.to_be_bytes());
}

/// The pseudo-header sum (RFC 768, RFC 793) of a `len`-byte transport
/// segment of the IPv4 packet whose header is `ip`: its addresses and
/// protocol.
fn pseudo_header(ip: &[u8], len: usize) -> u32 {
    checksum::pseudo_header_v4(
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        ip[9],
        len as u16,
    )
}

/// A TCP or UDP checksum field from the sum over pseudo-header and
/// segment: its complement, with a computed zero sent as 0xffff (RFC 768).
fn transport_checksum(sum: u32) -> u16 {
    match !checksum::fold(sum) {
        0 => 0xffff,
        v => v,
    }
}

// ---- offload state of pool buffers ----------------------------------------

/// Takes the offload state a virtio-net header reports for the untagged
/// Ethernet frame in `buf` (an AF_PACKET receive) after checking it
/// against the frame: a partial checksum must lie inside the frame; a
/// super-frame must be TCP or UDP over IPv4 with its partial checksum on
/// its transport header. A "super-frame" whose payload fits one segment is
/// an ordinary frame (the kernel's `virtio_net_hdr_to_skb` does the same).
pub fn accept_vnet_header(buf: &mut PacketBuf, hdr: &VnetHeader) -> Result<(), OffloadError> {
    let frame = buf.frame();
    let mut offload = Offload::default();
    if hdr.needs_checksum() {
        let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
        if start + offset + 2 > frame.len() || offset + 2 > 256 {
            return Err(OffloadError::ChecksumOutOfFrame);
        }
        offload.partial_csum = Some(PartialChecksum {
            start: buf.position(start),
            offset: hdr.csum_offset,
        });
    }
    if hdr.is_gso() {
        let segmenter = Segmenter::new(frame, hdr)?;
        let (kind, field) = match segmenter.transport {
            Transport::Tcp => (GsoKind::TcpV4, 16),
            Transport::Udp => (GsoKind::UdpL4, 6),
        };
        let at_l4 = hdr.needs_checksum()
            && usize::from(hdr.csum_start) == segmenter.l4
            && usize::from(hdr.csum_offset) == field;
        if !at_l4 {
            return Err(OffloadError::GsoMalformed(
                "the partial checksum is not the transport header's",
            ));
        }
        if segmenter.count() > 1 {
            offload.gso = Some(Gso {
                kind,
                size: hdr.gso_size,
                ecn: hdr.gso_type & GSO_ECN != 0,
                header_len: segmenter.header_len() as u16,
            });
            offload.l3 = buf.position(ETH_LEN);
        }
    }
    buf.set_offload(offload);
    Ok(())
}

/// The virtio-net header that hands `buf`'s offload state to the kernel on
/// an AF_PACKET (or TAP) send: a super-frame as one write that the kernel
/// (or the receiving pod) segments, a partial checksum as `NEEDS_CSUM`.
/// `None` if the frame cannot go whole: an encapsulated super-frame, whose
/// outer headers virtio's TCP and UDP types do not describe.
pub fn vnet_header_for(buf: &PacketBuf) -> Option<VnetHeader> {
    let offload = buf.offload();
    let mut hdr = VnetHeader::default();
    if let Some(c) = offload.partial_csum {
        hdr.flags = FLAG_NEEDS_CSUM;
        hdr.csum_start = buf.frame_offset(c.start)? as u16;
        hdr.csum_offset = c.offset;
        hdr.hdr_len = hdr.csum_start + c.offset + 2;
    }
    if let Some(gso) = offload.gso {
        if buf.frame_offset(offload.l3)? != ETH_LEN || offload.partial_csum.is_none() {
            return None;
        }
        hdr.gso_type = match gso.kind {
            GsoKind::TcpV4 => GSO_TCPV4,
            GsoKind::UdpL4 => GSO_UDP_L4,
        } | if gso.ecn { GSO_ECN } else { 0 };
        hdr.gso_size = gso.size;
        hdr.hdr_len = ETH_LEN as u16 + gso.header_len;
    }
    Some(hdr)
}

/// What a port that cannot take offloads does to a frame before sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Nothing was left to do.
    Untouched,
    /// Its partial checksum was completed.
    ChecksumCompleted,
    /// The super-frame was cut into this many frames.
    Segmented(usize),
}

/// Finishes in software what `buf`'s offloads left undone, for a port
/// that can only send complete wire-sized frames: completes a partial
/// checksum in place, or cuts a super-frame into segments taken from
/// `pool` and pushed onto `out` (then `buf` is given back to the pool). A
/// frame that stays whole is pushed onto `out` too. On error `buf` has
/// been given back and nothing was pushed.
pub fn finish_in_software(
    mut buf: PacketBuf,
    pool: &mut PacketPool,
    out: &mut Vec<PacketBuf>,
) -> Result<Finished, DropReason> {
    let offload = *buf.offload();
    if let Some(gso) = offload.gso {
        let Some(l3) = buf.frame_offset(offload.l3) else {
            pool.free(buf);
            return Err(DropReason::GsoMalformed);
        };
        let segmenter = match Segmenter::at(buf.frame(), l3, gso.kind, gso.size) {
            Ok(s) => s,
            Err(_) => {
                pool.free(buf);
                return Err(DropReason::GsoMalformed);
            }
        };
        let count = segmenter.count();
        let mut made = 0;
        for i in 0..count {
            let Some(mut seg) = pool.alloc(buf.in_port) else {
                break;
            };
            match segmenter.write(buf.frame(), i, seg.receive_area(0)) {
                Some(n) => {
                    seg.set_received(0, n);
                    out.push(seg);
                    made += 1;
                }
                None => {
                    pool.free(seg);
                    break;
                }
            }
        }
        pool.free(buf);
        if made < count {
            // Segments already pushed still go: TCP retransmits the rest.
            return Err(DropReason::PoolExhausted);
        }
        return Ok(Finished::Segmented(count));
    }
    match complete_partial_checksum(&mut buf) {
        Ok(completed) => {
            out.push(buf);
            Ok(if completed {
                Finished::ChecksumCompleted
            } else {
                Finished::Untouched
            })
        }
        Err(_) => {
            pool.free(buf);
            Err(DropReason::OffloadChecksum)
        }
    }
}

/// What the transport checksum of an IPv4 packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// It verifies.
    Valid,
    /// It holds only the pseudo-header sum: a `CHECKSUM_PARTIAL` packet
    /// the sender's device did not finish (a kernel node behind a veth).
    Partial,
    /// Not TCP or UDP, a fragment, UDP without a checksum, or malformed.
    NotChecked,
    /// Wrong in some other way: left as it is, for the receiver to drop.
    Bad,
}

/// Checks the TCP or UDP checksum of the IPv4 packet at `l3` of `frame`.
pub fn check_l4(frame: &[u8], l3: usize) -> L4Checksum {
    let Some(ip) = frame.get(l3..) else {
        return L4Checksum::NotChecked;
    };
    if ip.len() < 20 {
        return L4Checksum::NotChecked;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() || fragment {
        return L4Checksum::NotChecked;
    }
    let field = match ip[9] {
        6 => 16,
        17 => 6,
        _ => return L4Checksum::NotChecked,
    };
    if total < ihl + field + 2 {
        return L4Checksum::NotChecked;
    }
    let l4 = &ip[ihl..total];
    let stored = u16::from_be_bytes([l4[field], l4[field + 1]]);
    if ip[9] == 17 && stored == 0 {
        return L4Checksum::NotChecked; // UDP without a checksum (RFC 768)
    }
    let pseudo = pseudo_header(ip, l4.len());
    if checksum::fold(checksum::accumulate(pseudo, l4)) == 0xffff {
        L4Checksum::Valid
    } else if stored == checksum::fold(pseudo) {
        L4Checksum::Partial
    } else {
        L4Checksum::Bad
    }
}

/// Marks what a socket could not say about the IPv4 packet at frame offset
/// `l3` of `buf` (a decapsulated packet from a UDP or raw socket, which
/// reports no offloads): a partial transport checksum becomes
/// `partial_csum`, and a TCP packet longer than `mtu` (a kernel node's
/// unsegmented GSO datagram) becomes a super-frame of `mtu`-sized
/// segments, so that the port it leaves on either hands it on whole or
/// segments it. Returns what the checksum said.
pub fn recognise_offloads(buf: &mut PacketBuf, l3: usize, mtu: u16) -> L4Checksum {
    let verdict = check_l4(buf.frame(), l3);
    if !matches!(verdict, L4Checksum::Partial | L4Checksum::Valid) {
        return verdict;
    }
    let frame = buf.frame();
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]));
    let tcp = frame[l3 + 9] == 6;
    let field = if tcp { 16 } else { 6 };
    let l4 = l3 + ihl;
    let mut offload = Offload::default();
    if verdict == L4Checksum::Partial {
        offload.partial_csum = Some(PartialChecksum {
            start: buf.position(l4),
            offset: field as u16,
        });
    }
    if tcp && total > usize::from(mtu) {
        let doff = usize::from(frame[l4 + 12] >> 4) * 4;
        let header_len = ihl + doff;
        if doff >= 20 && header_len < usize::from(mtu) && l4 + doff <= frame.len() {
            if verdict == L4Checksum::Valid {
                // A super-frame travels with a partial checksum: put the
                // pseudo-header sum back (the full sum verified above).
                let pseudo = checksum::fold(pseudo_header(&frame[l3..], total - ihl));
                buf.frame_mut()[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
                offload.partial_csum = Some(PartialChecksum {
                    start: buf.position(l4),
                    offset: 16,
                });
            }
            offload.gso = Some(Gso {
                kind: GsoKind::TcpV4,
                size: mtu - header_len as u16,
                ecn: false,
                header_len: header_len as u16,
            });
            offload.l3 = buf.position(l3);
        }
    }
    buf.set_offload(offload);
    verdict
}

// ---- receive coalescing ----------------------------------------------------

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// What [`coalesce_datagrams`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesced {
    /// Length of the merged datagram.
    pub len: usize,
    /// Datagrams merged.
    pub count: usize,
    /// The merged TCP segment's segmentation.
    pub gso: Gso,
}

/// The fields of one datagram's inner IPv4/TCP headers that decide
/// whether it continues the first.
struct TcpSegmentView {
    ihl: usize,
    doff: usize,
    flags: u8,
    seq: u32,
    data_len: usize,
}

fn tcp_segment_view(datagram: &[u8], inner_l3: usize) -> Option<TcpSegmentView> {
    let ip = datagram.get(inner_l3..)?;
    if ip.len() < 40 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ihl < 20 || total != ip.len() || fragment || ihl + 20 > total {
        return None;
    }
    if checksum::fold(checksum::accumulate(0, &ip[..ihl])) != 0xffff {
        return None;
    }
    let tcp = &ip[ihl..];
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || ihl + doff >= total {
        return None; // no payload: nothing to merge
    }
    Some(TcpSegmentView {
        ihl,
        doff,
        flags: tcp[13],
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        data_len: total - ihl - doff,
    })
}

/// Merges a UDP GRO super-datagram in place: `payload` holds datagrams of
/// `segment` bytes (the last may be shorter), each a tunnel payload whose
/// inner IPv4 packet starts `inner_l3` bytes in (after the VXLAN header and
/// inner Ethernet header, or at 0 for IP-in-UDP). When they are in-order
/// segments of one TCP flow, with identical headers but for what
/// segmentation changes (lengths, identification, checksums, sequence
/// numbers; PSH and FIN on the last, CWR on the first) and transport
/// checksums that verify (or are partial, as a kernel peer leaves them),
/// the first datagram becomes one TCP super-frame carrying every payload,
/// with a partial checksum, ready for a receiver that takes GSO: what
/// wireguard-go's and the kernel's TCP GRO do. Otherwise nothing changes
/// and `None` is returned.
pub fn coalesce_datagrams(
    payload: &mut [u8],
    segment: usize,
    inner_l3: usize,
) -> Option<Coalesced> {
    if segment == 0 || payload.len() <= segment {
        return None;
    }
    let count = payload.len().div_ceil(segment);
    let first = tcp_segment_view(&payload[..segment], inner_l3)?;
    let headers = inner_l3 + first.ihl + first.doff;
    let mss = first.data_len;
    if headers + mss != segment {
        return None;
    }
    // Pass 1: read only, so a refusal leaves the datagrams as they came.
    let mut expected_seq = first.seq;
    let mut last_flags = first.flags;
    for k in 0..count {
        let datagram = &payload[k * segment..((k + 1) * segment).min(payload.len())];
        let view = tcp_segment_view(datagram, inner_l3)?;
        let last = k + 1 == count;
        let same_shape = view.ihl == first.ihl
            && view.doff == first.doff
            && view.seq == expected_seq
            && (view.data_len == mss || (last && view.data_len < mss));
        if !same_shape {
            return None;
        }
        let first_bytes = &payload[..segment];
        let ip = inner_l3;
        let tcp = inner_l3 + view.ihl;
        // Tunnel and Ethernet headers; IPv4 TOS, flags, TTL, protocol,
        // addresses and options; TCP ports, ack, window and options.
        let same_headers = datagram[..inner_l3] == first_bytes[..inner_l3]
            && datagram[ip + 1] == first_bytes[ip + 1]
            && datagram[ip + 6..ip + 10] == first_bytes[ip + 6..ip + 10]
            && datagram[ip + 12..tcp] == first_bytes[ip + 12..tcp]
            && datagram[tcp..tcp + 4] == first_bytes[tcp..tcp + 4]
            && datagram[tcp + 8..tcp + 12] == first_bytes[tcp + 8..tcp + 12]
            && datagram[tcp + 14..tcp + 16] == first_bytes[tcp + 14..tcp + 16]
            && datagram[tcp + 20..tcp + view.doff] == first_bytes[tcp + 20..tcp + view.doff];
        let never = TCP_SYN | TCP_RST | TCP_URG | if last { 0 } else { TCP_FIN | TCP_PSH };
        let varying = TCP_FIN | TCP_PSH | TCP_CWR;
        let flags_ok = view.flags & never == 0
            && view.flags & !varying == first.flags & !varying
            && (k == 0 || view.flags & TCP_CWR == 0);
        if !same_headers || !flags_ok {
            return None;
        }
        if !matches!(
            check_l4(datagram, inner_l3),
            L4Checksum::Valid | L4Checksum::Partial
        ) {
            return None;
        }
        expected_seq = expected_seq.wrapping_add(view.data_len as u32);
        last_flags = view.flags;
    }
    // Pass 2: move every payload behind the first.
    let mut end = segment;
    for k in 1..count {
        let from = k * segment + headers;
        let to = ((k + 1) * segment).min(payload.len());
        payload.copy_within(from..to, end);
        end += to - from;
    }
    let ip = inner_l3;
    let tcp = inner_l3 + first.ihl;
    // The first datagram's identification stays.
    let ident = u16::from_be_bytes([payload[ip + 4], payload[ip + 5]]);
    write_ipv4_lengths(payload, ip, tcp, end, ident);
    payload[tcp + 13] = (first.flags & !(TCP_FIN | TCP_PSH)) | (last_flags & (TCP_FIN | TCP_PSH));
    let pseudo = checksum::fold(pseudo_header(&payload[ip..], end - tcp));
    payload[tcp + 16..tcp + 18].copy_from_slice(&pseudo.to_be_bytes());
    Some(Coalesced {
        len: end,
        count,
        gso: Gso {
            kind: GsoKind::TcpV4,
            size: mss as u16,
            ecn: first.flags & TCP_CWR != 0,
            header_len: (first.ihl + first.doff) as u16,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    /// An outer UDP checksum that verifies, is left partial, or was
    /// computed over an inner checksum still partial (LCO) is settled and
    /// cleared; a wrong one is kept for the pipeline to drop.
    #[test]
    fn outer_udp_checksums_are_settled_as_the_kernel_would() {
        // VXLAN around an inner UDP datagram.
        let mut inner = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
            .ipv4([10, 244, 2, 2], [10, 244, 1, 2], 64)
            .udp(5000, 6000)
            .write(&mut inner, &[0x5a; 64])
            .unwrap();
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vxlan.extend_from_slice(&inner);
        let mut complete = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([192, 168, 100, 2], [192, 168, 100, 1], 64)
            .udp(40000, 8472)
            .write(&mut complete, &vxlan)
            .unwrap();
        const INNER_L3: usize = 14 + 20 + 8 + 8 + 14;
        let outer_len = (complete.len() - 34) as u16;
        let cleared = |mut f: Vec<u8>| {
            assert!(settle_outer_udp_checksum(&mut f, 14, INNER_L3));
            assert_eq!(&f[40..42], &[0, 0]);
            assert_eq!(f[42..], complete[42..], "nothing else touched");
        };
        cleared(complete.clone());
        // Left partial by the sender's kernel.
        let pseudo = checksum::fold(checksum::pseudo_header_v4(
            Ipv4Addr::new(192, 168, 100, 2),
            Ipv4Addr::new(192, 168, 100, 1),
            17,
            outer_len,
        ));
        let mut partial = complete.clone();
        partial[40..42].copy_from_slice(&pseudo.to_be_bytes());
        cleared(partial);
        // Wrong, with a complete inner checksum: kept, and not cleared.
        let mut wrong = complete.clone();
        wrong[40] ^= 0x01;
        assert!(!settle_outer_udp_checksum(&mut wrong, 14, INNER_L3));
        assert_ne!(&wrong[40..42], &[0, 0]);
        // LCO: the outer checksum was computed as if the inner one were
        // complete, and the inner one is left partial.
        let inner_field = INNER_L3 + 20 + 6;
        let inner_pseudo = checksum::fold(checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 244, 2, 2),
            Ipv4Addr::new(10, 244, 1, 2),
            17,
            8 + 64,
        ));
        let mut lco = complete.clone();
        lco[inner_field..inner_field + 2].copy_from_slice(&inner_pseudo.to_be_bytes());
        assert!(settle_outer_udp_checksum(&mut lco, 14, INNER_L3));
        assert_eq!(&lco[40..42], &[0, 0]);
        assert_eq!(
            &lco[inner_field..inner_field + 2],
            &inner_pseudo.to_be_bytes(),
            "the inner checksum stays partial, for the pipeline to carry"
        );
    }

    /// A TSO super-frame as a veth hands it over: full-length headers and
    /// only the pseudo-header sum in the TCP checksum field.
    pub(super) fn tso_frame(payload: &[u8], flags_fin_psh_cwr: bool) -> (Vec<u8>, VnetHeader) {
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

    pub(super) fn tcp_checksum_ok(seg: &[u8]) -> bool {
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
        // A computed 0 may be sent as 0xffff (its ones' complement twin,
        // as skb_checksum_help does); a receiver's sum verifies either.
        let field = tcp.checksum();
        (computed == field || (computed == 0 && field == 0xffff))
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

#[cfg(test)]
mod carried {
    //! Super-frames carried as one packet: the offload state a buffer
    //! takes from a virtio-net header, gives back to one, and what a port
    //! that cannot take it makes of it; checked with etherparse.
    use super::tests::{tcp_checksum_ok, tso_frame};
    use super::*;
    use crate::port::PortId;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    fn pool() -> PacketPool {
        PacketPool::with_large(256, 2048, 4)
    }

    fn received(pool: &mut PacketPool, frame: &[u8]) -> PacketBuf {
        pool.alloc_with(PortId(1), frame).unwrap()
    }

    #[test]
    fn a_tso_frame_is_carried_whole_and_handed_back_exactly() {
        let mut pool = pool();
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let (frame, hdr) = tso_frame(&payload, true);
        let mut buf = received(&mut pool, &frame);
        accept_vnet_header(&mut buf, &hdr).unwrap();
        let gso = buf.offload().gso.expect("a super-frame");
        assert_eq!(gso.size, 1398);
        assert_eq!(gso.header_len, 40);
        assert!(gso.ecn);
        // What goes back to the kernel is what came from it, hdr_len exact.
        assert_eq!(vnet_header_for(&buf), Some(hdr));
        // Encapsulated (the frame's start moves), it can no longer go
        // whole through a virtio-net header.
        buf.prepend(50).unwrap();
        assert_eq!(vnet_header_for(&buf), None);
        pool.free(buf);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn hostile_offload_metadata_is_refused() {
        let mut pool = pool();
        let payload = vec![1u8; 5000];
        let (frame, good) = tso_frame(&payload, false);
        let cases: Vec<(VnetHeader, &str)> = vec![
            (
                VnetHeader {
                    gso_size: 0,
                    ..good
                },
                "gso_size 0",
            ),
            (
                VnetHeader {
                    csum_start: 6000,
                    ..good
                },
                "csum_start past the end",
            ),
            (
                VnetHeader {
                    csum_offset: 4990,
                    ..good
                },
                "csum_offset outside the header",
            ),
            (
                VnetHeader {
                    csum_start: 20,
                    ..good
                },
                "partial checksum not on the TCP header",
            ),
            (VnetHeader { flags: 0, ..good }, "GSO without NEEDS_CSUM"),
            (
                VnetHeader {
                    gso_type: GSO_TCPV6,
                    ..good
                },
                "TCP over IPv6",
            ),
            (
                VnetHeader {
                    gso_type: GSO_UDP_L4,
                    csum_offset: 6,
                    ..good
                },
                "UDP type on a TCP packet",
            ),
        ];
        for (hdr, what) in cases {
            let mut buf = received(&mut pool, &frame);
            assert!(accept_vnet_header(&mut buf, &hdr).is_err(), "{what}");
            pool.free(buf);
        }
        // Truncated: the IPv4 total length runs past what arrived.
        let mut buf = received(&mut pool, &frame[..3000]);
        assert_eq!(
            accept_vnet_header(&mut buf, &good),
            Err(OffloadError::GsoMalformed(
                "IPv4 total length does not match the frame"
            ))
        );
        pool.free(buf);
        // A "super-frame" that fits one segment is an ordinary frame with
        // a partial checksum, as the kernel treats it.
        let (small, _) = tso_frame(&[5u8; 100], false);
        let mut buf = received(&mut pool, &small);
        accept_vnet_header(&mut buf, &good).unwrap();
        assert!(!buf.is_gso());
        assert!(buf.offload().partial_csum.is_some());
        pool.free(buf);
        assert_eq!(pool.in_use(), 0);
    }

    /// `inner` behind outer Ethernet/IPv4/UDP/VXLAN headers (or IPv4
    /// protocol 4 for IPIP, which carries the inner IPv4 packet only).
    fn encapsulated(inner: &[u8], vxlan: bool) -> (Vec<u8>, usize) {
        let mut outer = Vec::new();
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]).ipv4(
            [192, 168, 100, 1],
            [192, 168, 100, 2],
            64,
        );
        if vxlan {
            let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
            payload.extend_from_slice(inner);
            builder
                .udp(40000, 8472)
                .write(&mut outer, &payload)
                .unwrap();
            // flannel.1 sends no UDP checksum.
            outer[40..42].fill(0);
            (outer, 14 + 20 + 8 + 8 + 14)
        } else {
            let ip = &inner[14..];
            let mut packet = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb])
                .ipv4([192, 168, 100, 1], [192, 168, 100, 2], 64)
                .write(&mut packet, etherparse::IpNumber::IPV4, ip)
                .unwrap();
            (packet, 14 + 20)
        }
    }

    #[test]
    fn an_encapsulated_super_frame_is_cut_with_its_outer_headers() {
        for vxlan in [true, false] {
            let mut pool = pool();
            let payload: Vec<u8> = (0..30_000u32).map(|i| (i * 31 % 253) as u8).collect();
            let (inner, hdr) = tso_frame(&payload, false);
            let (outer, l3) = encapsulated(&inner, vxlan);
            let mut buf = received(&mut pool, &outer);
            buf.set_offload(Offload {
                gso: Some(Gso {
                    kind: GsoKind::TcpV4,
                    size: hdr.gso_size,
                    ecn: false,
                    header_len: 40,
                }),
                partial_csum: Some(PartialChecksum {
                    start: buf.position(l3 + 20),
                    offset: 16,
                }),
                l3: buf.position(l3),
            });
            let mut out = Vec::new();
            let done = finish_in_software(buf, &mut pool, &mut out).unwrap();
            assert_eq!(done, Finished::Segmented(30_000usize.div_ceil(1398)));
            let mut joined = Vec::new();
            for (i, seg) in out.iter().enumerate() {
                let p = SlicedPacket::from_ethernet(seg.frame()).unwrap();
                let Some(NetSlice::Ipv4(ip)) = &p.net else {
                    panic!("outer not IPv4")
                };
                let h = ip.header().to_header();
                assert_eq!(h.calc_header_checksum(), ip.header().header_checksum());
                assert_eq!(usize::from(h.total_len), seg.len() - 14, "outer length");
                let inner_frame = if vxlan {
                    let Some(TransportSlice::Udp(udp)) = &p.transport else {
                        panic!("outer not UDP")
                    };
                    assert_eq!(usize::from(udp.length()), seg.len() - 34);
                    assert_eq!(udp.checksum(), 0);
                    assert_eq!(udp.destination_port(), 8472);
                    udp.payload()[8..].to_vec()
                } else {
                    let mut f = inner[..14].to_vec();
                    f.extend_from_slice(ip.payload().payload);
                    f
                };
                assert!(inner_frame.len() <= 14 + 1450, "wire-sized");
                assert!(tcp_checksum_ok(&inner_frame), "segment {i}");
                let p = SlicedPacket::from_ethernet(&inner_frame).unwrap();
                let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
                    panic!()
                };
                assert_eq!(tcp.sequence_number(), 1_000_000 + (i * 1398) as u32);
                joined.extend_from_slice(tcp.payload());
            }
            assert_eq!(joined, payload);
            pool.free_all(&mut out);
            assert_eq!(pool.in_use(), 0);
        }
    }

    #[test]
    fn a_partial_checksum_is_completed_and_an_empty_pool_counted() {
        let mut pool = PacketPool::with_large(8, 2048, 1);
        let (frame, hdr) = tso_frame(&[9u8; 600], false);
        let mut buf = received(&mut pool, &frame);
        accept_vnet_header(&mut buf, &hdr).unwrap();
        assert!(!buf.is_gso());
        let mut out = Vec::new();
        assert_eq!(
            finish_in_software(buf, &mut pool, &mut out),
            Ok(Finished::ChecksumCompleted)
        );
        assert!(tcp_checksum_ok(out[0].frame()));
        assert!(out[0].offload().is_none());
        pool.free_all(&mut out);
        // 20 segments from a pool of 8 small buffers.
        let (frame, hdr) = tso_frame(&vec![3u8; 1398 * 20], false);
        let mut buf = received(&mut pool, &frame);
        accept_vnet_header(&mut buf, &hdr).unwrap();
        assert_eq!(
            finish_in_software(buf, &mut pool, &mut out),
            Err(DropReason::PoolExhausted)
        );
        assert_eq!(out.len(), 8, "what fitted still goes");
        pool.free_all(&mut out);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_kernel_nodes_gso_datagram_is_recognised_after_decapsulation() {
        let mut pool = pool();
        let payload: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        // What a kernel flannel node behind a veth sends inside VXLAN: a
        // whole TSO frame with a partial checksum, and nothing saying so.
        let (frame, _) = tso_frame(&payload, false);
        let mut buf = received(&mut pool, &frame);
        assert_eq!(recognise_offloads(&mut buf, 14, 1450), L4Checksum::Partial);
        let gso = buf.offload().gso.unwrap();
        assert_eq!(gso.size, 1450 - 40);
        assert!(buf.offload().partial_csum.is_some());
        let hdr = vnet_header_for(&buf).unwrap();
        assert_eq!((hdr.csum_start, hdr.csum_offset, hdr.hdr_len), (34, 16, 54));
        // The same with a complete checksum: carried with a partial one.
        let mut out = Vec::new();
        finish_in_software(buf, &mut pool, &mut out).unwrap();
        let seg_count = out.len();
        assert_eq!(seg_count, 9000usize.div_ceil(1410));
        pool.free_all(&mut out);
        let (mut whole, hdr) = tso_frame(&payload, false);
        complete_checksum(&mut whole, 34, 16).unwrap();
        let mut buf = received(&mut pool, &whole);
        assert_eq!(recognise_offloads(&mut buf, 14, 1450), L4Checksum::Valid);
        assert!(buf.is_gso());
        finish_in_software(buf, &mut pool, &mut out).unwrap();
        assert!(out.iter().all(|s| tcp_checksum_ok(s.frame())));
        pool.free_all(&mut out);
        // Small packets: a partial checksum is marked, a valid one left,
        // a corrupt one left for the receiver to drop.
        let (small, _) = tso_frame(&payload[..500], false);
        let mut buf = received(&mut pool, &small);
        assert_eq!(recognise_offloads(&mut buf, 14, 1450), L4Checksum::Partial);
        assert!(!buf.is_gso() && buf.offload().partial_csum.is_some());
        pool.free(buf);
        let mut corrupt = small.clone();
        corrupt[100] ^= 1;
        complete_checksum(&mut corrupt, 34, 16).unwrap();
        corrupt[101] ^= 1;
        let mut buf = received(&mut pool, &corrupt);
        assert_eq!(recognise_offloads(&mut buf, 14, 1450), L4Checksum::Bad);
        assert!(buf.offload().is_none());
        pool.free(buf);
        let _ = hdr;
        assert_eq!(pool.in_use(), 0);
    }

    /// A VXLAN super-frame's datagrams as a `UDP_SEGMENT` send carries
    /// them, and as a `UDP_GRO` socket hands them over: back to back.
    fn burst(payload: &[u8], mss: u16) -> (Vec<u8>, usize, Vec<u8>) {
        let (inner, _) = tso_frame(payload, false);
        let (outer, l3) = encapsulated(&inner, true);
        let segmenter = Segmenter::at(&outer, l3, GsoKind::TcpV4, mss).unwrap();
        let udp_payload = 42;
        // Gathered as the underlay port gathers them: each datagram is its
        // headers (from write_headers) and its payload (from the frame).
        let mut datagrams = Vec::new();
        let mut headers = vec![0u8; segmenter.header_bytes()];
        for i in 0..segmenter.count() {
            segmenter.write_headers(&outer, i, &mut headers).unwrap();
            datagrams.extend_from_slice(&headers[udp_payload..]);
            datagrams.extend_from_slice(&outer[segmenter.chunk(i)]);
        }
        let each = segmenter.datagram_len(udp_payload);
        (datagrams, each, inner)
    }

    #[test]
    fn datagrams_of_one_flow_merge_back_into_the_super_frame() {
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 255) as u8).collect();
        let (mut datagrams, each, inner) = burst(&payload, 1398);
        let count = datagrams.len().div_ceil(each);
        assert_eq!(count, 20_000usize.div_ceil(1398));
        // Every datagram is a complete VXLAN payload a kernel would take.
        for k in 0..count {
            let d = &datagrams[k * each..((k + 1) * each).min(datagrams.len())];
            assert_eq!(&d[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0], "VXLAN header");
            assert!(tcp_checksum_ok(&d[8..]), "datagram {k}");
        }
        let merged = coalesce_datagrams(&mut datagrams, each, VXLAN_L3).unwrap();
        assert_eq!(merged.count, count);
        assert_eq!(merged.gso.size, 1398);
        assert_eq!(merged.gso.header_len, 40);
        let frame = &datagrams[8..merged.len];
        // The original super-frame, with its partial checksum.
        assert_eq!(frame, &inner[..]);
    }

    const VXLAN_L3: usize = 8 + 14;

    #[test]
    fn datagrams_that_are_not_one_flow_in_order_stay_as_they_came() {
        let payload: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        let (good, each, _) = burst(&payload, 1398);
        let tcp = VXLAN_L3 + 20;
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Damage)> = vec![
            (
                "second out of order",
                Box::new(move |d| d[each + tcp + 4..each + tcp + 8].copy_from_slice(&[0, 0, 0, 1])),
            ),
            (
                "a corrupt payload byte",
                Box::new(move |d| d[each + 100] ^= 0x40),
            ),
            (
                "another destination port",
                Box::new(move |d| d[2 * each + tcp + 3] ^= 1),
            ),
            ("a SYN", Box::new(move |d| d[tcp + 13] |= 0x02)),
            ("another VNI", Box::new(move |d| d[each + 6] ^= 1)),
            (
                "a truncated last datagram",
                Box::new(|d| {
                    let n = d.len() - 10;
                    d.truncate(n)
                }),
            ),
        ];
        for (what, damage) in cases {
            let mut d = good.clone();
            damage(&mut d);
            let before = d.clone();
            assert!(
                coalesce_datagrams(&mut d, each, VXLAN_L3).is_none(),
                "{what}"
            );
            assert_eq!(d, before, "{what}: left as it came");
        }
        let mut single = good[..each].to_vec();
        assert!(coalesce_datagrams(&mut single, each, VXLAN_L3).is_none());
        assert!(coalesce_datagrams(&mut good.clone(), 0, VXLAN_L3).is_none());
    }

    proptest::proptest! {
        /// Cut for the wire, merged again: the same super-frame, for any
        /// size and segment size, and every datagram checks with
        /// etherparse.
        #[test]
        fn cut_then_merged_is_the_same_super_frame(len in 1500usize..40_000, mss in 536u16..1410) {
            let payload: Vec<u8> = (0..len as u32).map(|i| (i ^ (i >> 8)) as u8).collect();
            let (mut datagrams, each, inner) = burst(&payload, mss);
            let count = datagrams.len().div_ceil(each);
            for k in 0..count {
                let d = &datagrams[k * each..((k + 1) * each).min(datagrams.len())];
                proptest::prop_assert!(tcp_checksum_ok(&d[8..]));
            }
            if count > 1 {
                let merged = coalesce_datagrams(&mut datagrams, each, VXLAN_L3).unwrap();
                proptest::prop_assert_eq!(&datagrams[8..merged.len], &inner[..]);
            }
        }
    }
}
