//! IPv4 sockets of the underlay: a UDP socket bound to the node's tunnel
//! port, a raw socket receiving IPIP (protocol 4), and a raw sending socket
//! (`IPPROTO_RAW`, which implies `IP_HDRINCL`: the kernel routes the packet
//! podswitch built, outer IPv4 header included, filling only the header
//! checksum and total length, raw(7)).

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::mmsg::{self, Received, RecvBuffers, SendBuffers};
use super::{cvt, setsockopt, sockaddr_in, socket};

/// An IPv4 datagram or raw socket.
#[derive(Debug)]
pub struct InetSocket {
    fd: OwnedFd,
}

/// IPv4 protocol number of IPIP (RFC 2003).
pub const IPPROTO_IPIP: libc::c_int = 4;

impl InetSocket {
    /// A UDP socket bound to `addr`, reporting each datagram's TOS and TTL.
    pub fn udp_bound(addr: SocketAddrV4) -> io::Result<InetSocket> {
        let sock = InetSocket {
            fd: socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?,
        };
        sock.report_tos_ttl()?;
        sock.buffers(8 << 20)?;
        sock.bind(addr)?;
        Ok(sock)
    }

    /// A raw socket receiving every IPv4 packet of `protocol` addressed to
    /// `local` (the kernel hands raw sockets the whole packet, IPv4 header
    /// included).
    pub fn raw_receiver(protocol: libc::c_int, local: Ipv4Addr) -> io::Result<InetSocket> {
        let sock = InetSocket {
            fd: socket(libc::AF_INET, libc::SOCK_RAW, protocol)?,
        };
        sock.buffers(8 << 20)?;
        sock.bind(SocketAddrV4::new(local, 0))?;
        Ok(sock)
    }

    /// A raw socket for sending complete IPv4 packets.
    pub fn raw_sender() -> io::Result<InetSocket> {
        let sock = InetSocket {
            fd: socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?,
        };
        sock.buffers(8 << 20)?;
        Ok(sock)
    }

    fn report_tos_ttl(&self) -> io::Result<()> {
        let one: libc::c_int = 1;
        setsockopt(self.fd.as_fd(), libc::IPPROTO_IP, libc::IP_RECVTOS, &one)?;
        setsockopt(self.fd.as_fd(), libc::IPPROTO_IP, libc::IP_RECVTTL, &one)
    }

    fn buffers(&self, bytes: libc::c_int) -> io::Result<()> {
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt(self.fd.as_fd(), libc::SOL_SOCKET, force, &bytes).is_err() {
                setsockopt(self.fd.as_fd(), libc::SOL_SOCKET, plain, &bytes)?;
            }
        }
        Ok(())
    }

    fn bind(&self, addr: SocketAddrV4) -> io::Result<()> {
        let sa = sockaddr_in(addr);
        // SAFETY: `sa` is a valid sockaddr_in of the length passed, read
        // by the kernel only.
        cvt(unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                std::ptr::from_ref(&sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        Ok(())
    }

    /// Receives a batch (see [`mmsg::recv_batch`]).
    pub fn recv_batch(
        &self,
        bufs: &mut impl RecvBuffers,
        meta: &mut [Received],
    ) -> io::Result<usize> {
        mmsg::recv_batch(self.fd.as_fd(), bufs, meta)
    }

    /// Sends a batch (see [`mmsg::send_batch`]).
    pub fn send_batch(&self, bufs: &impl SendBuffers) -> io::Result<usize> {
        mmsg::send_batch(self.fd.as_fd(), bufs)
    }
}

impl AsFd for InetSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
