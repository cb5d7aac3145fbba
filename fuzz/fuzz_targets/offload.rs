//! The offload code (the wire-level byte work in encap/src/offload/, the
//! buffer state in engine/src/offload.rs) over untrusted bytes: the
//! virtio-net header an AF_PACKET or TAP port receives with a pod's frame,
//! the offloads recognised on a decapsulated packet, UDP GRO datagrams
//! merged back into a TCP super-frame, and the checksum
//! completion an AF_XDP port does.
//!
//! Why: a pod chooses both the header and the frame; a kernel peer (or
//! anyone on the underlay) chooses the datagrams. An offload the checks
//! let through is later segmented or checksummed at offsets they vouched
//! for.
//!
//! Byte 0 picks the entry point (`% 4`); the rest is its input:
//!
//! 0. a 10-byte virtio-net header and a frame: `accept_vnet_header`; an
//!    accepted one is handed back (`vnet_header_for`) and must be accepted
//!    again with the same state, then finished in software
//!    (`finish_in_software`: segments or a completed checksum), and cut
//!    by `Segmenter` directly into buffers of every size;
//! 1. two bytes of MTU, one of L3 offset and a frame: `recognise_offloads`
//!    (what the pipeline does after decapsulating), then finished in
//!    software;
//! 2. two bytes of segment size, one of inner L3 offset and a UDP GRO
//!    super-datagram: `coalesce_datagrams`;
//! 3. one byte of L3 offset and a frame: `check_l4` and
//!    `complete_partial_l4` (AF_XDP's receive).
//!
//! Invariants: no panic; every buffer back in the pool; a header handed
//! back is accepted again; segments and merged datagrams stay inside
//! their buffers and carry right IPv4 lengths and header checksums; a
//! completed checksum verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_engine::encap::checksum;
use podswitch_engine::offload::{
    accept_vnet_header, check_l4, coalesce_datagrams, complete_partial_l4, finish_in_software,
    recognise_offloads, vnet_header_for, Finished, L4Checksum, Segmenter, VnetHeader, VNET_HDR_LEN,
};
use podswitch_engine::packet::{PacketBuf, PacketPool, DEFAULT_BUF_SIZE};
use podswitch_engine::port::PortId;

const PORT: PortId = PortId(3);

/// The IPv4 header at `l3` of `frame` says the packet runs to the end of
/// the frame and its checksum verifies.
fn assert_ipv4_complete(frame: &[u8], l3: usize, what: &str) {
    let ip = &frame[l3..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(total, ip.len(), "{what}: IPv4 total length");
    assert_eq!(
        checksum::checksum(&ip[..ihl]),
        0,
        "{what}: IPv4 header checksum"
    );
}

/// Finishes `buf` as a port without offloads does; checks the segments.
fn finish(buf: PacketBuf, pool: &mut PacketPool) {
    let offload = *buf.offload();
    let segmenter = offload.gso.and_then(|gso| {
        let l3 = buf.frame_offset(offload.l3)?;
        Segmenter::at(buf.frame(), l3, gso.kind, gso.size).ok()
    });
    let mut out = Vec::new();
    match finish_in_software(buf, pool, &mut out) {
        Ok(Finished::Segmented(n)) => {
            let s = segmenter.expect("a segmented frame had a segmenter");
            assert_eq!(n, s.count());
            assert_eq!(out.len(), n);
            for seg in &out {
                assert!(seg.len() <= s.max_segment_len(), "segment too long");
                assert_ipv4_complete(seg.frame(), 14, "segment (outer) header");
            }
        }
        Ok(Finished::ChecksumCompleted) => {
            assert_eq!(out.len(), 1);
            assert!(out[0].offload().is_none());
        }
        Ok(Finished::Untouched) => assert_eq!(out.len(), 1),
        Err(_) => {}
    }
    for seg in out {
        pool.free(seg);
    }
}

fn vnet_header(pool: &mut PacketPool, data: &[u8]) {
    let Some((h, frame)) = data.split_first_chunk::<VNET_HDR_LEN>() else {
        return;
    };
    let hdr = VnetHeader::parse(h);
    assert_eq!(VnetHeader::parse(&hdr.to_bytes()), hdr);
    let Some(mut buf) = pool.alloc_with(PORT, frame) else {
        return;
    };
    if accept_vnet_header(&mut buf, &hdr).is_err() {
        pool.free(buf);
        return;
    }
    let accepted = *buf.offload();
    // Handed on whole to a port that takes offloads: the kernel (or the
    // next podswitch) must accept what we say.
    if let Some(back) = vnet_header_for(&buf) {
        let mut again = pool.alloc_with(PORT, buf.frame()).expect("a spare buffer");
        let result = accept_vnet_header(&mut again, &back);
        assert!(
            result.is_ok(),
            "{hdr:?} accepted, handed back as {back:?}, refused: {result:?}"
        );
        assert_eq!(again.offload().gso, accepted.gso, "{hdr:?} -> {back:?}");
        assert_eq!(
            again.offload().partial_csum.map(|c| c.offset),
            accepted.partial_csum.map(|c| c.offset)
        );
        pool.free(again);
    }
    // A super-frame cut straight into buffers of every size (as the
    // underlay's gather send does): never past the buffer.
    if let Ok(s) = Segmenter::new(buf.frame(), &hdr) {
        let mut dst = vec![0u8; s.max_segment_len()];
        for i in 0..s.count().min(64) {
            if let Some(n) = s.write(buf.frame(), i, &mut dst) {
                assert!(n <= dst.len());
                assert_ipv4_complete(&dst[..n], 14, "Segmenter::write");
            }
            let short = s.max_segment_len().saturating_sub(1 + i);
            let _ = s.write(buf.frame(), i, &mut dst[..short]);
            let mut headers = vec![0u8; s.header_bytes()];
            assert!(s.write_headers(buf.frame(), i, &mut headers).is_some());
        }
    }
    finish(buf, pool);
}

fn recognised(pool: &mut PacketPool, data: &[u8]) {
    let [m0, m1, l3, frame @ ..] = data else {
        return;
    };
    let mtu = u16::from_be_bytes([*m0, *m1]);
    let l3 = usize::from(*l3 % 64);
    let Some(mut buf) = pool.alloc_with(PORT, frame) else {
        return;
    };
    let verdict = recognise_offloads(&mut buf, l3, mtu);
    if !matches!(verdict, L4Checksum::Partial | L4Checksum::Valid) {
        assert!(buf.offload().is_none(), "{verdict:?} left offloads");
    }
    if let Some(gso) = buf.offload().gso {
        assert!(gso.size > 0, "segment size 0");
    }
    finish(buf, pool);
}

fn coalesced(data: &[u8]) {
    let [s0, s1, l3, datagrams @ ..] = data else {
        return;
    };
    let segment = usize::from(u16::from_be_bytes([*s0, *s1]));
    let inner_l3 = usize::from(*l3 % 64);
    let mut payload = datagrams.to_vec();
    let Some(m) = coalesce_datagrams(&mut payload, segment, inner_l3) else {
        assert_eq!(payload, datagrams, "a refused merge changed the datagrams");
        return;
    };
    assert!(m.len <= payload.len() && m.count >= 2);
    assert_eq!(m.count, datagrams.len().div_ceil(segment));
    let merged = &payload[..m.len];
    assert_ipv4_complete(merged, inner_l3, "merged datagram");
    let headers = inner_l3 + usize::from(m.gso.header_len);
    assert!(m.gso.size > 0);
    assert_eq!(
        (m.len - headers).div_ceil(usize::from(m.gso.size)),
        m.count,
        "the merged payload is not the datagrams' payloads"
    );
}

fn checked(data: &[u8]) {
    let [l3, frame @ ..] = data else {
        return;
    };
    let _ = check_l4(frame, usize::from(*l3));
    let mut frame = frame.to_vec();
    if complete_partial_l4(&mut frame) {
        assert_eq!(
            check_l4(&frame, 14),
            L4Checksum::Valid,
            "a completed checksum does not verify"
        );
    }
}

thread_local! {
    static POOL: std::cell::RefCell<PacketPool> =
        std::cell::RefCell::new(PacketPool::with_large(64, DEFAULT_BUF_SIZE, 4));
}

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    POOL.with_borrow_mut(|pool| {
        match which % 4 {
            0 => vnet_header(pool, rest),
            1 => recognised(pool, rest),
            2 => coalesced(rest),
            _ => checked(rest),
        }
        assert_eq!(pool.in_use(), 0, "buffers leaked");
    });
});
