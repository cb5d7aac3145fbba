//! Offloads on the wire: what a veth's (or a kernel node's) offloads
//! leave undone, described and finished byte by byte. No buffers, no I/O:
//! the engine's `offload` module carries this state on its packet buffers
//! and decides where it is finished.
//!
//! A pod's eth0 keeps the kernel's default offloads: TX checksum offload
//! and TSO/GSO. Its TCP then reaches the host-side veth as super-frames of
//! up to 64 KiB whose TCP checksum holds only the pseudo-header sum
//! (`CHECKSUM_PARTIAL`), and an AF_PACKET socket with `PACKET_VNET_HDR`
//! receives them behind a virtio-net header saying so
//! (include/uapi/linux/virtio_net.h; virtio 1.2 §5.1.6.2): [`VnetHeader`].
//!
//! What a NIC would do with them, done here for a port that cannot take
//! them:
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
//! And the other way: [`check_l4`] tells a partial checksum from a bad one
//! (sockets say nothing of offloads: a kernel flannel node behind a veth
//! sends VXLAN whose inner checksum is partial),
//! [`settle_outer_udp_checksum`] settles a tunnel's outer UDP checksum as
//! the receiving kernel would, and [`coalesce_datagrams`] merges a UDP GRO
//! burst of one TCP flow back into one super-frame, as the kernel's TCP GRO
//! and wireguard-go do. On send, [`udp_run_len`] finds the consecutive
//! datagrams of one UDP flow that can leave as one super-datagram
//! ([`udp_batch_headers`]), under the rules of the kernel's UDP GRO.

use core::fmt;
use std::net::Ipv4Addr;

use crate::checksum;
use crate::ipv4::Ipv4Packet;

#[cfg(test)]
mod test_frames;
#[cfg(test)]
mod tests;

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

/// Length of `struct virtio_net_hdr_v1_hash_tunnel`
/// (include/uapi/linux/virtio_net.h, Linux 6.17): the legacy header's ten
/// bytes, `num_buffers`, the hash fields, then where the outer transport
/// header and the inner network header start.
pub const TUNNEL_VNET_HDR_LEN: usize = 24;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`: the segmented packet travels in a
/// UDP tunnel over IPv4; or'ed with the inner type (`GSO_TCPV4`).
pub const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;

/// The virtio-net header of a UDP-tunnel super-frame (a VXLAN datagram
/// carrying a TCP super-frame), as a TAP with `TUN_F_UDP_TUNNEL_GSO`
/// takes it: the kernel cuts the inner TCP payload at `gso_size` and
/// repeats every header, outer ones included, in each datagram
/// (`skb_udp_tunnel_segment`), or hands the whole datagram to a device
/// that does that itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelVnetHeader {
    /// The legacy part: type, sizes and the inner TCP checksum's place.
    pub inner: VnetHeader,
    /// Where the outer UDP header starts.
    pub outer_th_offset: u16,
    /// Where the inner IPv4 header starts.
    pub inner_nh_offset: u16,
}

impl TunnelVnetHeader {
    /// The header for `frame`, an Ethernet/IPv4/UDP datagram whose inner
    /// IPv4 packet starts at `inner_l3` and is a TCP super-frame segmented
    /// as `gso` says, its TCP checksum partial. `None` for what this
    /// header cannot describe: not IPv4/UDP outside or IPv4/TCP inside, an
    /// outer UDP checksum (the tunnel checksum offload is not asked for;
    /// flannel's VXLAN sends none), IP options inside, a datagram longer
    /// than an IPv4 length can say.
    pub fn for_frame(frame: &[u8], inner_l3: usize, gso: &Gso) -> Option<TunnelVnetHeader> {
        if gso.kind != GsoKind::TcpV4 || gso.size == 0 {
            return None;
        }
        if frame.len() < ETH_LEN + 20 || frame[12..14] != [0x08, 0x00] {
            return None;
        }
        let outer = &frame[ETH_LEN..];
        let outer_ihl = usize::from(outer[0] & 0x0f) * 4;
        if outer[0] >> 4 != 4 || outer[9] != 17 || outer_ihl < 20 {
            return None;
        }
        let udp = ETH_LEN + outer_ihl;
        if frame.len() < udp + 8 || frame[udp + 6..udp + 8] != [0, 0] || inner_l3 < udp + 8 {
            return None;
        }
        let udp_len = usize::from(u16::from_be_bytes([frame[udp + 4], frame[udp + 5]]));
        // Equal lengths also bound the datagram to what IPv4 can say.
        let outer_len = usize::from(u16::from_be_bytes([outer[2], outer[3]]));
        if outer_len != outer.len() || udp_len != frame.len() - udp {
            return None;
        }
        let inner = frame.get(inner_l3..inner_l3 + 20)?;
        let inner_len = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
        if inner[0] != 0x45 || inner[9] != 6 || inner_len != frame.len() - inner_l3 {
            return None;
        }
        let l4 = inner_l3 + 20;
        let doff = usize::from(frame.get(l4 + 12)? >> 4) * 4;
        if doff < 20 || l4 + doff > frame.len() {
            return None;
        }
        let ecn = if gso.ecn { GSO_ECN } else { 0 };
        Some(TunnelVnetHeader {
            inner: VnetHeader {
                flags: FLAG_NEEDS_CSUM,
                gso_type: GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4 | ecn,
                hdr_len: u16::try_from(l4 + doff).ok()?,
                gso_size: gso.size,
                csum_start: u16::try_from(l4).ok()?,
                csum_offset: 16,
            },
            outer_th_offset: u16::try_from(udp).ok()?,
            inner_nh_offset: u16::try_from(inner_l3).ok()?,
        })
    }

    /// Writes the header (host byte order, as [`VnetHeader`]; `num_buffers`
    /// and the hash fields zero).
    pub fn to_bytes(&self) -> [u8; TUNNEL_VNET_HDR_LEN] {
        let mut b = [0u8; TUNNEL_VNET_HDR_LEN];
        b[..VNET_HDR_LEN].copy_from_slice(&self.inner.to_bytes());
        b[20..22].copy_from_slice(&self.outer_th_offset.to_ne_bytes());
        b[22..24].copy_from_slice(&self.inner_nh_offset.to_ne_bytes());
        b
    }
}

/// Bytes of the headers [`udp_batch_headers`] writes: Ethernet, IPv4
/// without options, UDP.
pub const UDP_BATCH_HEADERS: usize = ETH_LEN + 20 + 8;

/// The headers of a batch of UDP datagrams written as one super-datagram
/// for the kernel to cut, as it cuts a `UDP_SEGMENT` send
/// (`SKB_GSO_UDP_L4`, `__udp_gso_segment`): `first`'s Ethernet, IPv4 (no
/// options) and UDP headers, with the lengths of `payload_len` bytes of
/// UDP payload in all, the IPv4 checksum recomputed and the UDP checksum
/// left partial (the pseudo-header's sum over the whole length, which the
/// kernel adjusts to each datagram's length before it finishes it); and
/// the virtio-net header that asks for that, cutting every `segment`
/// bytes of payload (`GSO_UDP_L4`, `NEEDS_CSUM`). `None` if `first` is
/// not an Ethernet/IPv4/UDP datagram without IPv4 options, or the whole
/// would be longer than an IPv4 length can say.
pub fn udp_batch_headers(
    first: &[u8],
    payload_len: usize,
    segment: u16,
) -> Option<([u8; UDP_BATCH_HEADERS], VnetHeader)> {
    let mut h: [u8; UDP_BATCH_HEADERS] = first.get(..UDP_BATCH_HEADERS)?.try_into().ok()?;
    if h[12..14] != [0x08, 0x00] || h[ETH_LEN] != 0x45 || h[ETH_LEN + 9] != 17 {
        return None;
    }
    let udp_len = u16::try_from(8 + payload_len).ok()?;
    let total = udp_len.checked_add(20)?;
    let ip = ETH_LEN;
    h[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    h[ip + 10..ip + 12].fill(0);
    let ip_check = checksum::checksum(&h[ip..ip + 20]);
    h[ip + 10..ip + 12].copy_from_slice(&ip_check.to_be_bytes());
    let udp = ip + 20;
    h[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
    let addr = |at: usize| Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]);
    let pseudo = checksum::pseudo_header_v4(addr(ip + 12), addr(ip + 16), 17, udp_len);
    h[udp + 6..udp + 8].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    let vnet = VnetHeader {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: UDP_BATCH_HEADERS as u16,
        gso_size: segment,
        csum_start: udp as u16,
        csum_offset: 6,
    };
    Some((h, vnet))
}

/// Most datagrams one UDP super-datagram may carry: what `UDP_SEGMENT`
/// takes on every kernel that has it (`UDP_MAX_SEGMENTS`, 64 before
/// Linux 5.7 and 128 since).
pub const MAX_UDP_SEGMENTS: usize = 64;
/// Most UDP payload bytes one IPv4 datagram can carry.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// The fields of an untagged Ethernet/IPv4/UDP datagram that decide
/// whether it continues a run of its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagramView {
    /// Its IPv4 identification.
    pub ident: u16,
    /// DF is set.
    pub dont_fragment: bool,
    /// Bytes of UDP payload.
    pub payload_len: usize,
}

/// The datagram `frame` holds, if it is one a UDP super-datagram (or a
/// `UDP_SEGMENT` send) can carry: IPv4 without options, not a fragment,
/// UDP with a payload, and lengths that agree with the frame's (no
/// Ethernet padding).
pub fn udp_datagram_view(frame: &[u8]) -> Option<UdpDatagramView> {
    let ip = frame.get(ETH_LEN..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.len() <= 28 || ip[0] != 0x45 || ip[9] != 17 {
        return None;
    }
    // Reserved bit, MF and fragment offset all zero; DF either way.
    if u16::from_be_bytes([ip[6], ip[7]]) & !0x4000 != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let udp_len = usize::from(u16::from_be_bytes([ip[24], ip[25]]));
    if total != ip.len() || udp_len + 20 != total {
        return None;
    }
    Some(UdpDatagramView {
        ident: u16::from_be_bytes([ip[4], ip[5]]),
        dont_fragment: ip[6] & 0x40 != 0,
        payload_len: udp_len - 8,
    })
}

/// True if `frame` carries what `first` does in every header field a UDP
/// super-datagram's datagrams share: Ethernet addresses, IPv4 TOS
/// (ECN included), flags, TTL, protocol and addresses, UDP ports.
fn same_udp_flow(first: &[u8], frame: &[u8]) -> bool {
    let ip = ETH_LEN;
    frame[..ETH_LEN] == first[..ETH_LEN]
        && frame[ip + 1] == first[ip + 1]
        && frame[ip + 6] == first[ip + 6]
        && frame[ip + 8..ip + 10] == first[ip + 8..ip + 10]
        && frame[ip + 12..ip + 24] == first[ip + 12..ip + 24]
}

/// True if the IPv4 header checksum of a datagram [`udp_datagram_view`]
/// accepted verifies, and its UDP checksum verifies or is partial (left
/// for the device by a sender on this node). A datagram without a UDP
/// checksum, or with a wrong one, is not merged: the merged whole gets a
/// checksum that would vouch for bytes nobody vouched for.
fn udp_checksums_hold(frame: &[u8]) -> bool {
    let ip = &frame[ETH_LEN..ETH_LEN + 20];
    checksum::fold(checksum::accumulate(0, ip)) == 0xffff
        && matches!(
            check_l4(frame, ETH_LEN),
            L4Checksum::Valid | L4Checksum::Partial
        )
}

/// True if the `index`-th datagram of a run (the first is 0) may carry
/// the IPv4 identification `ident` when the first carries `first_ident`,
/// for the run to go as one super-frame or super-datagram. Segmentation
/// gives the datagrams the first's identification plus one each
/// (`inet_gso_segment`), so without DF the identifications must already
/// run so, or a datagram that is fragmented later would be reassembled
/// with another's fragments. With DF (atomic datagrams) they may be
/// anything: an atomic datagram's identification means nothing and may be
/// rewritten (RFC 6864 §4.1), and a Linux socket that is not connected
/// sends them all with identification 0.
fn identification_continues(
    dont_fragment: bool,
    first_ident: u16,
    ident: u16,
    index: usize,
) -> bool {
    dont_fragment || ident == first_ident.wrapping_add(index as u16)
}

/// How many of `frames`, from the first, can go as one UDP
/// super-datagram that the receiving kernel cuts back into the same
/// datagrams (`SKB_GSO_UDP_L4`; [`udp_batch_headers`] writes its
/// headers): consecutive datagrams of one flow (one Ethernet header;
/// one IPv4 TOS, flags byte, TTL and pair of addresses; one pair of UDP
/// ports) with one payload length, but for the last, which may be shorter, whose
/// checksums hold, at most [`MAX_UDP_SEGMENTS`] of them and
/// [`MAX_UDP_PAYLOAD`] bytes in all, whose IPv4 identifications run on
/// by one from the first's unless DF is set (atomic datagrams, RFC 6864:
/// see `identification_continues`). The rules are the
/// kernel's UDP GRO's (`udp_gro_receive_segment`, `inet_gro_flush`). 1 if
/// the first goes alone, 0 if there is none.
pub fn udp_run_len<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> usize {
    let mut frames = frames.into_iter();
    let Some(first_frame) = frames.next() else {
        return 0;
    };
    let Some(first) = udp_datagram_view(first_frame) else {
        return 1;
    };
    let (mut count, mut bytes) = (1, first.payload_len);
    for frame in frames {
        let Some(view) = udp_datagram_view(frame) else {
            break;
        };
        let continues = count < MAX_UDP_SEGMENTS
            && same_udp_flow(first_frame, frame)
            && identification_continues(first.dont_fragment, first.ident, view.ident, count)
            && view.payload_len <= first.payload_len
            && bytes + view.payload_len <= MAX_UDP_PAYLOAD;
        if !continues {
            break;
        }
        // Checksums last, and the first's only once a second continues
        // it: a datagram that goes alone costs no pass over its payload.
        if count == 1 && !udp_checksums_hold(first_frame) {
            return 1;
        }
        if !udp_checksums_hold(frame) {
            break;
        }
        count += 1;
        bytes += view.payload_len;
        if view.payload_len < first.payload_len {
            break;
        }
    }
    count
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
/// The longest IPv4 packet a total length can say.
const MAX_IPV4_LEN: usize = u16::MAX as usize;
/// What a tunnel puts around a packet at most: VXLAN's outer IPv4, UDP
/// and VXLAN headers and the inner Ethernet header (IPIP's is 20).
const TUNNEL_ROOM: usize = 20 + 8 + 8 + ETH_LEN;
/// The longest piece a BIG TCP super-frame is cut into: one that still
/// fits an outer IPv4 total length once a tunnel has put its headers
/// around it.
const MAX_PIECE_LEN: usize = MAX_IPV4_LEN - TUNNEL_ROOM;

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
        // A BIG TCP super-frame (Linux 6.3) says 0 and ends with the frame.
        let big_tcp = Ipv4Packet::new_unchecked(&frame[l3..]).is_big_tcp();
        if l3 + total != frame.len() && !big_tcp {
            return Err(malformed("IPv4 total length does not match the frame"));
        }
        if mss == 0 {
            return Err(malformed("segment size 0"));
        }
        if payload - l3 + usize::from(mss) > MAX_IPV4_LEN {
            return Err(malformed("a segment would be longer than IPv4 can say"));
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

    /// What it segments: TCP or UDP over IPv4.
    pub fn kind(&self) -> GsoKind {
        match self.transport {
            Transport::Tcp => GsoKind::TcpV4,
            Transport::Udp => GsoKind::UdpL4,
        }
    }

    /// Where the transport header starts in the frame.
    pub fn l4(&self) -> usize {
        self.l4
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

    /// Segments per piece when a BIG TCP super-frame is cut into
    /// super-frames an IPv4 total length can say ([`Self::write_piece_headers`]):
    /// as many as fit 65,485 bytes of IPv4 packet, so that a tunnel's outer
    /// headers (VXLAN's 50 bytes) still fit the outer total length; at
    /// least one.
    pub fn segments_per_piece(&self) -> usize {
        (MAX_PIECE_LEN.saturating_sub(self.payload - self.l3) / self.mss).max(1)
    }

    /// Number of pieces [`Self::write_piece_headers`] cuts the frame into.
    pub fn piece_count(&self) -> usize {
        self.count().div_ceil(self.segments_per_piece())
    }

    /// Where piece `j`'s payload is in the super-frame.
    pub fn piece(&self, j: usize) -> std::ops::Range<usize> {
        let size = self.segments_per_piece() * self.mss;
        let from = (self.payload + j * size).min(self.len);
        from..(from + size).min(self.len)
    }

    /// Writes the headers of piece `j`: segments `j * k ..` of a TCP
    /// super-frame ([`Self::segments_per_piece`] `k` of them) as one
    /// super-frame of their own, which a port or the kernel segments in
    /// turn into exactly the segments [`Self::write`] would make. Its IPv4
    /// total length and header checksum say its own length, its
    /// identification is the one its first segment would carry, its
    /// sequence number its first byte's; FIN and PSH stay on the last
    /// piece and CWR on the first, as `tcp_gso_segment` leaves them; its
    /// TCP checksum is partial (the pseudo-header sum, as a sender's TSO
    /// leaves it). This is how a BIG TCP super-frame leaves on a port or
    /// through a tunnel whose IPv4 lengths stop at 65535. `None` for UDP,
    /// an encapsulated super-frame, or `dst` not [`Self::header_bytes`] long.
    pub fn write_piece_headers(&self, frame: &[u8], j: usize, dst: &mut [u8]) -> Option<()> {
        if self.transport != Transport::Tcp || self.outer.is_some() || dst.len() != self.payload {
            return None;
        }
        let data_len = self.piece(j).len();
        let total = self.payload + data_len;
        let first_segment = j * self.segments_per_piece();
        dst.copy_from_slice(frame.get(..self.payload)?);
        write_ipv4_lengths(
            dst,
            self.l3,
            self.l4,
            total,
            self.ident.wrapping_add(first_segment as u16),
        );
        let seq = self.seq.wrapping_add((first_segment * self.mss) as u32);
        dst[self.l4 + 4..self.l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let flags = &mut dst[self.l4 + 13];
        if j + 1 != self.piece_count() {
            *flags &= !(0x01 | 0x08); // FIN, PSH: the last piece's
        }
        if j != 0 {
            *flags &= !0x80; // CWR: the first piece's
        }
        let l4_len = (total - self.l4) as u16;
        let partial = checksum::fold(checksum::pseudo_header_v4(self.src, self.dst, 6, l4_len));
        dst[self.l4 + 16..self.l4 + 18].copy_from_slice(&partial.to_be_bytes());
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
pub fn pseudo_header(ip: &[u8], len: usize) -> u32 {
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
    // The partial case first: it needs no pass over the payload, which a
    // whole 64 KiB GSO datagram would cost. (A complete checksum that
    // happens to equal the pseudo-header sum is taken as partial: either
    // way the receiver gets the right bytes once it is finished.)
    if stored == checksum::fold(pseudo) {
        L4Checksum::Partial
    } else if checksum::fold(checksum::accumulate(pseudo, l4)) == 0xffff {
        L4Checksum::Valid
    } else {
        L4Checksum::Bad
    }
}

// ---- receive coalescing ----------------------------------------------------

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// True if `payload`, what a `UDP_GRO` socket read as one super-datagram,
/// is one tunnel datagram whose inner IPv4 packet (at `inner_l3`) fills
/// it, not a burst of datagrams. A kernel VXLAN device behind a veth sends
/// a pod's `UDP_SEGMENT` write as one such datagram around the whole inner
/// super-datagram (`SKB_GSO_UDP_TUNNEL | SKB_GSO_UDP_L4`), and the socket
/// reports the *inner* segment size for it (`udp_cmsg_recv` looks only at
/// the `SKB_GSO_UDP_L4` bit). A burst cannot look like this: its first
/// datagram is one segment long, shorter than the whole, and the inner
/// packet it carries fits in it.
pub fn is_one_tunnel_datagram(payload: &[u8], inner_l3: usize) -> bool {
    let Some(ip) = payload.get(inner_l3..) else {
        return false;
    };
    ip.len() >= 20 && ip[0] >> 4 == 4 && usize::from(u16::from_be_bytes([ip[2], ip[3]])) == ip.len()
}

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
    ident: u16,
    dont_fragment: bool,
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
        ident: u16::from_be_bytes([ip[4], ip[5]]),
        dont_fragment: ip[6] & 0x40 != 0,
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
/// numbers; PSH and FIN on the last, CWR on the first), IPv4
/// identifications that run on by one from the first's unless DF is set
/// (as for [`udp_run_len`]), and transport
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
            && identification_continues(first.dont_fragment, first.ident, view.ident, k)
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
