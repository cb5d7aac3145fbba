//! `recvmmsg(2)` and `sendmmsg(2)`: one system call per batch.
//!
//! Callers describe each message as up to three byte slices (for example a
//! virtio-net header, a pool buffer and an overflow area); the iovecs,
//! addresses and control buffers live on the stack, so a batch allocates
//! nothing.

use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

use super::{cvt, from_sockaddr_in, sockaddr_in};

/// Most messages one call moves.
pub const MAX_BATCH: usize = 64;
/// Slices per message.
pub const MAX_PARTS: usize = 3;
/// Control bytes per message: room for every option podswitch asks a
/// socket for, `UDP_GRO`, `IP_TTL` and `IP_TOS`, `CMSG_SPACE(4)` = 24 bytes
/// each on 64-bit Linux, and to spare. (It was 64: a coalesced datagram's
/// third option, `IP_TOS` since `udp_recvmsg` writes `UDP_GRO` first, was
/// cut to its header, and its byte was read from the next message's
/// buffer.)
const CMSG_SPACE: usize = 128;

/// What the kernel said about one received message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Bytes the message had (more than the buffers held if `truncated`).
    pub len: usize,
    /// The message did not fit the buffers (`MSG_TRUNC`).
    pub truncated: bool,
    /// Its source address (IPv4 sockets).
    pub from: Option<SocketAddrV4>,
    /// The TOS byte of its IPv4 header (`IP_RECVTOS`).
    pub tos: Option<u8>,
    /// The TTL of its IPv4 header (`IP_RECVTTL`).
    pub ttl: Option<u8>,
    /// A coalesced datagram's segment size (`UDP_GRO`): the message is
    /// several datagrams of this many bytes (the last may be shorter).
    pub segment_size: Option<u16>,
    /// The kernel cut the message's control data (`MSG_CTRUNC`): what it
    /// says of TOS, TTL and segment size may be missing.
    pub control_truncated: bool,
}

/// Receive buffers: the slices of message `i`, in the order the kernel
/// fills them.
pub trait RecvBuffers {
    /// Messages to receive at most.
    fn count(&self) -> usize;
    /// The slices of message `i` (`i < count()`).
    fn parts(&mut self, i: usize) -> [&mut [u8]; MAX_PARTS];
}

/// Send buffers: the slices of message `i` and where it goes.
pub trait SendBuffers {
    /// Messages to send.
    fn count(&self) -> usize;
    /// The slices of message `i`.
    fn parts(&self, i: usize) -> [&[u8]; MAX_PARTS];
    /// Its destination, for unconnected sockets that need one.
    fn destination(&self, i: usize) -> Option<SocketAddrV4>;
}

/// What a receive asks the kernel for besides the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ancillary {
    /// The source address and the options (`Received::from`, `tos`,
    /// `ttl`, `segment_size`): an IP socket's.
    SourceAndOptions,
    /// Nothing: a packet socket's `sockaddr_ll` says nothing podswitch
    /// uses, and it asks for no option; the address would be copied out
    /// per message (`move_addr_to_user`): 2% of the CPU forwarding a
    /// same-node flood of 64-byte frames.
    None,
}

/// Receives up to `min(bufs.count(), MAX_BATCH)` messages without
/// blocking; returns how many arrived (0 when none was waiting).
/// `meta[i]` describes message `i`, its address and options only if
/// `ancillary` asks for them.
pub fn recv_batch(
    fd: BorrowedFd<'_>,
    bufs: &mut impl RecvBuffers,
    meta: &mut [Received],
    ancillary: Ancillary,
) -> io::Result<usize> {
    let n = bufs.count().min(MAX_BATCH).min(meta.len());
    if n == 0 {
        return Ok(0);
    }
    // Only the first `n` entries are filled in and handed to the kernel;
    // the rest stay uninitialised, so a call for one message does not
    // clear room for sixty-four (zeroing all four arrays cost 12 KiB of
    // memset per call, 1.6% of a worker's time under a TCP stream).
    let mut iovs = [[MaybeUninit::<libc::iovec>::uninit(); MAX_PARTS]; MAX_BATCH];
    let mut names = [MaybeUninit::<libc::sockaddr_in>::uninit(); MAX_BATCH];
    let mut controls = [[MaybeUninit::<u64>::uninit(); CMSG_SPACE / 8]; MAX_BATCH];
    let mut headers = [MaybeUninit::<libc::mmsghdr>::uninit(); MAX_BATCH];
    for i in 0..n {
        for (iov, part) in iovs[i].iter_mut().zip(bufs.parts(i)) {
            iov.write(libc::iovec {
                iov_base: part.as_mut_ptr().cast(),
                iov_len: part.len(),
            });
        }
        // SAFETY: mmsghdr is plain C data, for which all-zero bytes are a
        // valid value (null pointers, zero lengths and flags).
        let mut header: libc::mmsghdr = unsafe { zeroed() };
        let h = &mut header.msg_hdr;
        h.msg_iov = iovs[i].as_mut_ptr().cast();
        h.msg_iovlen = MAX_PARTS;
        if ancillary == Ancillary::SourceAndOptions {
            h.msg_name = names[i].as_mut_ptr().cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_control = controls[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE;
        }
        headers[i].write(header);
    }
    // SAFETY: every header points at iovecs, and unless `ancillary` is
    // `None` a name and a control buffer (else null, with lengths 0),
    // that live on this stack frame for the whole call, with their true
    // lengths. The iovecs point into slices `bufs` lent us; we hold `bufs`
    // mutably until we return, so no Rust reference reads or writes them
    // while the kernel does.
    let got = cvt(unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            headers.as_mut_ptr().cast(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            ptr::null_mut(),
        )
    });
    let got = match got {
        Ok(got) => got as usize,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        Err(e) => return Err(e),
    };
    for i in 0..got {
        // SAFETY: the first `n` headers were written above, and the kernel
        // answers for at most `n` messages.
        let h = unsafe { headers[i].assume_init_ref() };
        let mut m = Received {
            len: h.msg_len as usize,
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            from: None,
            tos: None,
            ttl: None,
            segment_size: None,
            control_truncated: h.msg_hdr.msg_flags & libc::MSG_CTRUNC != 0,
        };
        if h.msg_hdr.msg_namelen as usize >= size_of::<libc::sockaddr_in>() {
            // SAFETY: the kernel wrote `msg_namelen` bytes of the source
            // address, which is a whole sockaddr_in.
            let name = unsafe { names[i].assume_init_ref() };
            if name.sin_family == libc::AF_INET as libc::sa_family_t {
                m.from = Some(from_sockaddr_in(name));
            }
        }
        // SAFETY: the CMSG_* macros walk the control buffer the kernel
        // filled, bounded by the msg_controllen it set (nothing past what
        // it wrote is read); an option's data is read only when its length
        // says the kernel wrote all of it (put_cmsg cuts an option that
        // does not fit to what does: its header alone).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                let holds = |bytes: u32| (*c).cmsg_len as usize >= libc::CMSG_LEN(bytes) as usize;
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    // IP_TOS carries a byte (ip_cmsg_recv_tos), IP_TTL an
                    // int (ip_cmsg_recv_ttl): its low byte, little-endian.
                    (libc::IPPROTO_IP, libc::IP_TOS) if holds(1) => {
                        m.tos = Some(*libc::CMSG_DATA(c));
                    }
                    (libc::IPPROTO_IP, libc::IP_TTL) if holds(4) => {
                        let ttl =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        m.ttl = u8::try_from(ttl).ok();
                    }
                    // udp_cmsg_recv() puts the segment size as an int.
                    (libc::SOL_UDP, super::UDP_GRO) if holds(4) => {
                        let size =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        m.segment_size = u16::try_from(size).ok().filter(|s| *s > 0);
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        meta[i] = m;
    }
    Ok(got)
}

/// Sends up to `min(bufs.count(), MAX_BATCH)` messages without blocking;
/// returns how many the kernel took. A full socket buffer takes none
/// (`Ok(0)`); an error on the first message is returned.
pub fn send_batch(fd: BorrowedFd<'_>, bufs: &impl SendBuffers) -> io::Result<usize> {
    let n = bufs.count().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // As in recv_batch, only the first `n` entries are filled in.
    let mut iovs = [[MaybeUninit::<libc::iovec>::uninit(); MAX_PARTS]; MAX_BATCH];
    let mut names = [MaybeUninit::<libc::sockaddr_in>::uninit(); MAX_BATCH];
    let mut headers = [MaybeUninit::<libc::mmsghdr>::uninit(); MAX_BATCH];
    for i in 0..n {
        for (iov, part) in iovs[i].iter_mut().zip(bufs.parts(i)) {
            // The kernel only reads send buffers.
            iov.write(libc::iovec {
                iov_base: part.as_ptr().cast_mut().cast(),
                iov_len: part.len(),
            });
        }
        // SAFETY: mmsghdr is plain C data, for which all-zero bytes are a
        // valid value (no name, no control data, no flags).
        let mut header: libc::mmsghdr = unsafe { zeroed() };
        let h = &mut header.msg_hdr;
        h.msg_iov = iovs[i].as_mut_ptr().cast();
        h.msg_iovlen = MAX_PARTS;
        if let Some(dst) = bufs.destination(i) {
            let name = names[i].write(sockaddr_in(dst));
            h.msg_name = ptr::from_mut(name).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        headers[i].write(header);
    }
    // SAFETY: the headers point at iovecs and names on this stack frame;
    // the iovecs point into slices `bufs` lends for the whole call, which
    // the kernel only reads.
    let sent = cvt(unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            headers.as_mut_ptr().cast(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    });
    match sent {
        Ok(sent) => Ok(sent as usize),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::sys::inet::InetSocket;

    struct Buffers(Vec<Vec<u8>>);

    impl RecvBuffers for Buffers {
        fn count(&self) -> usize {
            self.0.len()
        }

        fn parts(&mut self, i: usize) -> [&mut [u8]; MAX_PARTS] {
            [&mut self.0[i], &mut [], &mut []]
        }
    }

    /// Coalesced datagrams (`UDP_GRO`) come with three options, TOS, TTL
    /// and segment size, each read from its own message: several such
    /// messages in one `recvmmsg` each tell their own, intact.
    #[test]
    fn each_coalesced_datagram_tells_its_own_tos_ttl_and_segment_size() {
        let receiver = InetSocket::udp_bound(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        receiver.enable_gro().unwrap();
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, receiver.local_port().unwrap());
        let (sender, _) = InetSocket::udp_segment_sender(Ipv4Addr::LOCALHOST).unwrap();
        // Over loopback a UDP_SEGMENT send reaches a UDP_GRO socket whole.
        let sends = [
            (0x00, 64, 100),
            (0x02, 63, 200),
            (0x01, 62, 300),
            (0xb8, 61, 400),
        ];
        for (tos, ttl, segment) in sends {
            let payload = vec![tos; 3 * segment];
            assert!(sender
                .send_segmented(&[&payload], to, segment as u16, tos, ttl)
                .unwrap());
        }
        let mut bufs = Buffers(vec![vec![0; 4096]; 8]);
        let mut meta = vec![Received::default(); 8];
        let got = receiver.recv_batch(&mut bufs, &mut meta).unwrap();
        assert_eq!(got, sends.len(), "one message per send");
        for ((tos, ttl, segment), m) in sends.iter().zip(&meta) {
            assert_eq!(m.len, 3 * segment);
            assert!(!m.control_truncated, "{m:?}");
            assert_eq!(m.segment_size, Some(*segment as u16), "{m:?}");
            assert_eq!(m.tos, Some(*tos), "{m:?}");
            assert_eq!(m.ttl, Some(*ttl), "{m:?}");
        }
    }
}
