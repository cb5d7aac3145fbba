//! Offloads on podswitch's packet buffers: the state a super-frame or a
//! partial checksum carries through the pipeline, and where it is handed
//! on whole or finished in software. The byte work (the virtio-net
//! header, checksum completion, segmentation, coalescing) is
//! podswitch-encap's [`podswitch_encap::offload`], re-exported here.
//!
//! podswitch does what the kernel's own path does with a pod's
//! super-frames: it carries one through the pipeline as one packet
//! ([`accept_vnet_header`] records the state in the buffer's [`Offload`])
//! and hands it on whole where the port it leaves on can take it
//! ([`vnet_header_for`]: an AF_PACKET pod port, the host-gw socket). Only a
//! port that cannot ([`finish_in_software`]) gets what a NIC would have
//! made: a completed checksum, or segments.
//!
//! Sockets say nothing of offloads: a kernel flannel node behind a veth
//! sends VXLAN whose inner checksum is partial, and whole 64 KiB GSO
//! datagrams. [`recognise_offloads`] recognises both after decapsulation.
//!
//! Open vSwitch's userspace datapath cannot do this and loses TCP unless
//! pods turn their offloads off; podswitch never asks that.

pub use podswitch_encap::offload::*;

use podswitch_encap::checksum;
use podswitch_encap::ethernet::HEADER_LEN as ETH_LEN;
use podswitch_encap::udp::HEADER_LEN as UDP_HEADER_LEN;

use crate::drop::DropReason;
use crate::packet::{Offload, PacketBuf, PacketPool, PartialChecksum};

// The offload tests' frames, written once for both crates.
#[cfg(test)]
#[path = "../../encap/src/offload/test_frames.rs"]
mod test_frames;

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
        let kind = segmenter.kind();
        // The checksum field's offset in the TCP or UDP header.
        let field = match kind {
            GsoKind::TcpV4 => 16,
            GsoKind::UdpL4 => 6,
        };
        let at_l4 = hdr.needs_checksum()
            && usize::from(hdr.csum_start) == segmenter.l4()
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
    vnet_header_with_l3_at(buf, ETH_LEN)
}

/// [`vnet_header_for`] a frame whose segmented IPv4 header is at frame
/// offset `l3` (behind an outer IPv4 header, say); `None` if it is not.
pub fn vnet_header_with_l3_at(buf: &PacketBuf, l3: usize) -> Option<VnetHeader> {
    let offload = buf.offload();
    let mut hdr = VnetHeader::default();
    if let Some(c) = offload.partial_csum {
        hdr.flags = FLAG_NEEDS_CSUM;
        hdr.csum_start = buf.frame_offset(c.start)? as u16;
        hdr.csum_offset = c.offset;
        hdr.hdr_len = hdr.csum_start + c.offset + 2;
    }
    if let Some(gso) = offload.gso {
        if buf.frame_offset(offload.l3)? != l3 || offload.partial_csum.is_none() {
            return None;
        }
        hdr.gso_type = match gso.kind {
            GsoKind::TcpV4 => GSO_TCPV4,
            GsoKind::UdpL4 => GSO_UDP_L4,
        } | if gso.ecn { GSO_ECN } else { 0 };
        hdr.gso_size = gso.size;
        hdr.hdr_len = l3 as u16 + gso.header_len;
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

/// True for a BIG TCP super-frame (Linux 6.3): a TCP super-frame whose
/// IPv4 packet is longer than a total length can say (it says 0). Only a
/// pod port whose veth allows it hands one over.
#[inline(always)]
pub fn is_big_tcp(buf: &PacketBuf) -> bool {
    // The frame's length first: one comparison settles every other frame.
    if buf.len() <= usize::from(u16::MAX) {
        return false;
    }
    let offload = buf.offload();
    match (offload.gso, buf.frame_offset(offload.l3)) {
        (Some(gso), Some(l3)) => {
            gso.kind == GsoKind::TcpV4 && buf.len() - l3 > usize::from(u16::MAX)
        }
        _ => false,
    }
}

/// Cuts a BIG TCP super-frame into super-frames an IPv4 total length can
/// say (at most 65535 bytes of IPv4 packet, each a whole number of
/// segments: [`Segmenter::write_piece_headers`]), for a next hop whose
/// lengths stop there: a tunnel's outer header, the host port, an
/// underlay NIC. `buf` becomes the first piece (its headers rewritten in
/// place, the frame cut after its payload: nothing moves); the others are
/// taken from `pool` and pushed onto `rest` in order. Returns the number
/// of pieces. On error nothing was pushed and `buf` is unchanged.
pub fn cut_big_tcp(
    buf: &mut PacketBuf,
    pool: &mut PacketPool,
    rest: &mut Vec<PacketBuf>,
) -> Result<usize, DropReason> {
    let offload = *buf.offload();
    let (Some(gso), Some(l3)) = (offload.gso, buf.frame_offset(offload.l3)) else {
        return Err(DropReason::GsoMalformed);
    };
    let segmenter =
        Segmenter::at(buf.frame(), l3, gso.kind, gso.size).map_err(|_| DropReason::GsoMalformed)?;
    let header_bytes = segmenter.header_bytes();
    let count = segmenter.piece_count();
    let piece_offload = |piece: &PacketBuf, j: usize| Offload {
        // A last piece of one segment is an ordinary frame.
        gso: (segmenter.piece(j).len() > usize::from(gso.size)).then_some(Gso {
            ecn: gso.ecn && j == 0,
            ..gso
        }),
        partial_csum: Some(PartialChecksum {
            start: piece.position(segmenter.l4()),
            offset: 16,
        }),
        l3: piece.position(l3),
    };
    // The first piece's headers first, while the frame is whole: if they
    // cannot be written, no other piece can.
    let mut first_headers = [0u8; 256];
    let first_headers = first_headers
        .get_mut(..header_bytes)
        .ok_or(DropReason::GsoMalformed)?;
    segmenter
        .write_piece_headers(buf.frame(), 0, first_headers)
        .ok_or(DropReason::GsoMalformed)?;
    let pushed = rest.len();
    for j in 1..count {
        let payload = segmenter.piece(j);
        let len = header_bytes + payload.len();
        let Some(mut piece) = pool.alloc_large(buf.in_port) else {
            for piece in rest.drain(pushed..) {
                pool.free(piece);
            }
            return Err(DropReason::PoolExhausted);
        };
        let area = &mut piece.receive_area(0)[..len];
        let (headers, data) = area.split_at_mut(header_bytes);
        // Cannot fail: the first piece's headers were written above.
        let _ = segmenter.write_piece_headers(buf.frame(), j, headers);
        data.copy_from_slice(&buf.frame()[payload]);
        piece.set_received(0, len);
        piece.set_offload(piece_offload(&piece, j));
        rest.push(piece);
    }
    buf.frame_mut()[..header_bytes].copy_from_slice(first_headers);
    buf.truncate(segmenter.piece(0).end);
    let offload = piece_offload(buf, 0);
    buf.set_offload(offload);
    Ok(count)
}

/// Merges each run of one flow's small UDP datagrams in `batch`
/// ([`udp_run_len`]) into one UDP super-datagram (`GSO_UDP_L4`), in
/// place of the run, for a port whose receiver cuts it back into the same
/// datagrams: an AF_PACKET pod port, whose pod's kernel cuts it where it
/// hands the datagrams to a socket (`udp_rcv_segment`), or the host-gw
/// socket. One skb then crosses the veth and the receiving stack where
/// each datagram took one, as the kernel's own UDP GRO hands a socket
/// that asked for it (`UDP_GRO`) one skb per flow and NAPI poll. Returns
/// `(super-datagrams made, datagrams merged into them)`; `datagrams`
/// gets how many datagrams each frame of `batch` now carries (1 for a
/// frame left alone), for a caller that counts what a refused send lost.
///
/// The run's payloads are copied behind the first datagram when its
/// buffer has room (small datagrams: no buffer taken), else into a
/// super-frame buffer; with none free, the run goes as it came.
pub fn coalesce_udp_runs(
    batch: &mut Vec<PacketBuf>,
    pool: &mut PacketPool,
    datagrams: &mut Vec<usize>,
) -> (usize, usize) {
    let (mut made, mut merged) = (0, 0);
    datagrams.clear();
    let mut at = 0;
    while at < batch.len() {
        let run = udp_run_len(
            batch[at..]
                .iter()
                .take_while(|buf| leaves_whole_as_a_datagram(buf))
                .map(PacketBuf::frame),
        );
        if run > 1 && merge_udp_run(batch, at, run, pool) {
            made += 1;
            merged += run;
            datagrams.push(run);
            at += 1;
        } else {
            let alone = run.max(1);
            datagrams.resize(datagrams.len() + alone, 1);
            at += alone;
        }
    }
    (made, merged)
}

/// True if a frame carries no offload a UDP super-datagram could not
/// keep: no segmentation, and a partial checksum only at the UDP
/// checksum of an untagged IPv4 frame without options.
#[inline]
fn leaves_whole_as_a_datagram(buf: &PacketBuf) -> bool {
    let offload = buf.offload();
    offload.gso.is_none()
        && offload.partial_csum.map_or(true, |c| {
            buf.frame_offset(c.start) == Some(ETH_LEN + 20) && c.offset == 6
        })
}

/// Replaces `batch[at..at + run]` with one super-datagram carrying every
/// payload behind the first's headers ([`udp_batch_headers`]), freeing
/// the others. False, with nothing changed, if no buffer can hold it.
fn merge_udp_run(batch: &mut Vec<PacketBuf>, at: usize, run: usize, pool: &mut PacketPool) -> bool {
    let members = &batch[at..at + run];
    let segment = members[0].len() - UDP_BATCH_HEADERS;
    let payload_len: usize = members.iter().map(|b| b.len() - UDP_BATCH_HEADERS).sum();
    let Some((headers, _)) = udp_batch_headers(members[0].frame(), payload_len, segment as u16)
    else {
        return false;
    };
    let whole_len = UDP_BATCH_HEADERS + payload_len;
    if !members[0].has_room_for(whole_len) {
        let Some(mut large) = pool.alloc_large(members[0].in_port) else {
            return false;
        };
        if !large.set(members[0].frame()) {
            pool.free(large);
            return false;
        }
        let first = std::mem::replace(&mut batch[at], large);
        pool.free(first);
    }
    let (first, rest) = batch[at..at + run].split_at_mut(1);
    let whole = &mut first[0];
    for member in rest.iter() {
        // Cannot fail: the buffer has room for the whole.
        let _ = whole.append(&member.frame()[UDP_BATCH_HEADERS..]);
    }
    whole.frame_mut()[..UDP_BATCH_HEADERS].copy_from_slice(&headers);
    let offload = Offload {
        gso: Some(Gso {
            kind: GsoKind::UdpL4,
            size: segment as u16,
            ecn: false,
            header_len: (UDP_BATCH_HEADERS - ETH_LEN) as u16,
        }),
        partial_csum: Some(PartialChecksum {
            start: whole.position(ETH_LEN + 20),
            offset: 6,
        }),
        l3: whole.position(ETH_LEN),
    };
    whole.set_offload(offload);
    for member in batch.drain(at + 1..at + run) {
        pool.free(member);
    }
    true
}

/// Marks what a socket could not say about the IPv4 packet at frame offset
/// `l3` of `buf` (a decapsulated packet from a UDP or raw socket, which
/// reports no offloads): a partial transport checksum becomes
/// `partial_csum`, and a TCP packet longer than `mtu` (a kernel node's
/// unsegmented GSO datagram) becomes a super-frame of `mtu`-sized
/// segments, so that the port it leaves on either hands it on whole or
/// segments it. A UDP packet becomes a super-datagram only where the
/// socket said its segment size: the underlay port leaves that in `buf`
/// as a `UdpL4` segmentation with no checksum state
/// ([`Offload::udp_segment_said`]); nothing in the bytes tells where a
/// pod's `UDP_SEGMENT` write is to be cut. Returns what the checksum said.
pub fn recognise_offloads(buf: &mut PacketBuf, l3: usize, mtu: u16) -> L4Checksum {
    let udp_segment = buf.offload().said_udp_segment();
    buf.set_offload(Offload::default());
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
    let gso = if tcp && total > usize::from(mtu) {
        let doff = usize::from(frame[l4 + 12] >> 4) * 4;
        let header_len = ihl + doff;
        // CWR on the first segment only, as the sender's TSO had it.
        let cwr = frame[l4 + 13] & 0x80 != 0;
        (doff >= 20 && header_len < usize::from(mtu) && l4 + doff <= frame.len()).then(|| Gso {
            kind: GsoKind::TcpV4,
            size: mtu - header_len as u16,
            ecn: cwr,
            header_len: header_len as u16,
        })
    } else {
        // check_l4 found the UDP header inside the packet.
        udp_segment
            .filter(|&size| !tcp && total - ihl - UDP_HEADER_LEN > usize::from(size))
            .map(|size| Gso {
                kind: GsoKind::UdpL4,
                size,
                ecn: false,
                header_len: (ihl + UDP_HEADER_LEN) as u16,
            })
    };
    if let Some(gso) = gso {
        if verdict == L4Checksum::Valid {
            // A super-frame travels with a partial checksum: put the
            // pseudo-header sum back (the full sum verified above).
            let pseudo = checksum::fold(pseudo_header(&frame[l3..], total - ihl));
            buf.frame_mut()[l4 + field..l4 + field + 2].copy_from_slice(&pseudo.to_be_bytes());
            offload.partial_csum = Some(PartialChecksum {
                start: buf.position(l4),
                offset: field as u16,
            });
        }
        offload.gso = Some(gso);
        offload.l3 = buf.position(l3);
    }
    buf.set_offload(offload);
    verdict
}

#[cfg(test)]
mod carried {
    //! Super-frames carried as one packet: the offload state a buffer
    //! takes from a virtio-net header, gives back to one, and what a port
    //! that cannot take it makes of it; checked with etherparse.
    use super::test_frames::{
        cut, encapsulated, refresh_ipv4_checksum, tcp_checksum_ok, tso_frame, udp_datagram,
    };
    use super::*;
    use crate::port::PortId;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

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

    /// What a kernel flannel node's pod writes with `UDP_SEGMENT` and its
    /// VXLAN device sends whole over a veth: one UDP datagram of
    /// `segments` pieces of `size` bytes (piece k all of byte k), its
    /// lengths the whole's and its checksum partial, as `udp_send_skb`
    /// leaves it.
    fn uso_datagram(segments: usize, size: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..segments * size).map(|i| (i / size) as u8).collect();
        let mut frame = udp_datagram(5300, 7, true, &payload);
        let partial = checksum::fold(pseudo_header(&frame[14..], frame.len() - 34));
        frame[40..42].copy_from_slice(&partial.to_be_bytes());
        frame
    }

    #[test]
    fn a_kernel_nodes_udp_gso_datagram_is_cut_where_its_socket_said() {
        let mut pool = pool();
        let frame = uso_datagram(10, 1000);
        let mut buf = received(&mut pool, &frame);
        let l3 = buf.position(14);
        buf.set_offload(Offload::udp_segment_said(1000, l3));
        assert_eq!(recognise_offloads(&mut buf, 14, 1450), L4Checksum::Partial);
        let gso = buf.offload().gso.unwrap();
        assert_eq!(
            (gso.kind, gso.size, gso.header_len),
            (GsoKind::UdpL4, 1000, 28)
        );
        assert_eq!(
            buf.offload().said_udp_segment(),
            None,
            "recognised, not said"
        );
        let hdr = vnet_header_for(&buf).unwrap();
        assert_eq!(
            (hdr.csum_start, hdr.csum_offset, hdr.gso_size),
            (34, 6, 1000)
        );
        // Cut as a pod port that cannot take it does: each piece is one
        // datagram, as the sending pod wrote it, checked by etherparse.
        let check = |buf: PacketBuf, pool: &mut PacketPool| {
            let mut out = Vec::new();
            let done = finish_in_software(buf, pool, &mut out).unwrap();
            assert_eq!(done, Finished::Segmented(10));
            for (k, seg) in out.iter().enumerate() {
                let p = SlicedPacket::from_ethernet(seg.frame()).unwrap();
                let Some(NetSlice::Ipv4(ip)) = &p.net else {
                    panic!("not IPv4")
                };
                let h = ip.header().to_header();
                assert_eq!(h.calc_header_checksum(), ip.header().header_checksum());
                let Some(TransportSlice::Udp(udp)) = &p.transport else {
                    panic!("not UDP")
                };
                let expected = udp
                    .to_header()
                    .calc_checksum_ipv4(&h, udp.payload())
                    .unwrap();
                assert_eq!(udp.checksum(), expected, "datagram {k}");
                assert_eq!(udp.payload(), &[k as u8; 1000][..], "datagram {k}");
            }
            pool.free_all(&mut out);
        };
        check(buf, &mut pool);
        // With its checksum complete it is carried with a partial one.
        let mut whole = frame.clone();
        complete_checksum(&mut whole, 34, 6).unwrap();
        let mut buf = received(&mut pool, &whole);
        let l3 = buf.position(14);
        buf.set_offload(Offload::udp_segment_said(1000, l3));
        assert_eq!(recognise_offloads(&mut buf, 14, 1450), L4Checksum::Valid);
        assert!(buf.is_gso() && buf.offload().partial_csum.is_some());
        check(buf, &mut pool);
        // What the size does not fit stays as it came, the size dropped:
        // one datagram no longer than it, a corrupt one, a TCP packet.
        let (tcp, _) = tso_frame(&[3u8; 500], false);
        let mut corrupt = whole.clone();
        corrupt[100] ^= 1;
        for (what, frame, size, verdict) in [
            (
                "one piece",
                uso_datagram(1, 1000),
                1000,
                L4Checksum::Partial,
            ),
            ("corrupt", corrupt, 1000, L4Checksum::Bad),
            ("TCP", tcp, 100, L4Checksum::Partial),
        ] {
            let mut buf = received(&mut pool, &frame);
            let l3 = buf.position(14);
            buf.set_offload(Offload::udp_segment_said(size, l3));
            assert_eq!(recognise_offloads(&mut buf, 14, 1450), verdict, "{what}");
            assert!(!buf.is_gso(), "{what}");
            assert_eq!(buf.offload().said_udp_segment(), None, "{what}");
            pool.free(buf);
        }
        assert_eq!(pool.in_use(), 0);
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

    /// What the receiving kernel cuts a frame sent with its virtio-net
    /// header into.
    fn cut_as_sent(buf: &PacketBuf) -> Vec<Vec<u8>> {
        cut(
            buf.frame(),
            &vnet_header_for(buf).expect("a virtio-net header describes it"),
        )
    }

    /// Runs of one flow's datagrams become one super-datagram each, the
    /// small one in its first buffer, the large one in a super-frame
    /// buffer; what a receiver cuts from them is what was sent (but for
    /// the identifications of DF datagrams); everything else keeps its
    /// place; no buffer is lost.
    #[test]
    fn a_flows_datagrams_leave_as_one_super_datagram_and_cut_back_as_they_were() {
        let mut pool = pool();
        let small: Vec<Vec<u8>> = (0..6)
            .map(|k| udp_datagram(5353, 0, true, &[k as u8; 18]))
            .collect();
        let large: Vec<Vec<u8>> = (0..3u16)
            .map(|k| udp_datagram(443, 900 + k, false, &vec![k as u8; 1400]))
            .collect();
        let (tcp, _) = tso_frame(&[7; 100], false);
        let mut batch: Vec<PacketBuf> = small[..5]
            .iter()
            .chain([&tcp])
            .chain(&large)
            .chain([&small[5]])
            .map(|f| received(&mut pool, f))
            .collect();
        // One of the small ones as a sender on the node leaves it: its
        // UDP checksum partial, and said so.
        let partial = &mut batch[2];
        let pseudo = checksum::fold(pseudo_header(&partial.frame()[14..34], 26));
        partial.frame_mut()[40..42].copy_from_slice(&pseudo.to_be_bytes());
        let start = partial.position(34);
        partial.set_offload(Offload {
            partial_csum: Some(PartialChecksum { start, offset: 6 }),
            ..Offload::default()
        });
        let mut datagrams = Vec::new();
        let made = coalesce_udp_runs(&mut batch, &mut pool, &mut datagrams);
        assert_eq!(made, (2, 8));
        assert_eq!(datagrams, [5, 1, 3, 1]);
        assert_eq!(batch.len(), 4);
        assert_eq!(pool.in_use(), 4, "the merged-away buffers are back");
        assert!(!batch[0].is_large() && batch[2].is_large());
        let hdr = vnet_header_for(&batch[0]).unwrap();
        assert_eq!(
            (
                hdr.gso_type,
                hdr.gso_size,
                hdr.hdr_len,
                hdr.csum_start,
                hdr.csum_offset
            ),
            (GSO_UDP_L4, 18, 42, 34, 6)
        );
        for (cut, sent) in cut_as_sent(&batch[0]).iter().zip(&small) {
            let mut cut = cut.clone();
            cut[18..20].fill(0);
            refresh_ipv4_checksum(&mut cut);
            assert_eq!(&cut, sent);
        }
        assert_eq!(cut_as_sent(&batch[0]).len(), 5);
        assert_eq!(batch[1].frame(), &tcp[..]);
        assert_eq!(cut_as_sent(&batch[2]), large);
        assert_eq!(batch[3].frame(), &small[5][..]);
        assert!(batch[3].offload().is_none());
        pool.free_all(&mut batch);
        assert_eq!(pool.in_use(), 0);
    }

    /// With no super-frame buffer free, a run too long for its first
    /// buffer goes as it came.
    #[test]
    fn a_run_with_no_buffer_to_hold_it_goes_as_it_came() {
        let mut pool = PacketPool::with_large(16, 2048, 0);
        let large: Vec<Vec<u8>> = (0..3u16)
            .map(|k| udp_datagram(443, 900 + k, false, &vec![k as u8; 1400]))
            .collect();
        let mut batch: Vec<PacketBuf> = large.iter().map(|f| received(&mut pool, f)).collect();
        let mut datagrams = Vec::new();
        assert_eq!(
            coalesce_udp_runs(&mut batch, &mut pool, &mut datagrams),
            (0, 0)
        );
        assert_eq!(datagrams, [1, 1, 1]);
        let frames: Vec<&[u8]> = batch.iter().map(PacketBuf::frame).collect();
        assert_eq!(frames, large.iter().map(Vec::as_slice).collect::<Vec<_>>());
        pool.free_all(&mut batch);
        assert_eq!(pool.in_use(), 0);
    }
}
