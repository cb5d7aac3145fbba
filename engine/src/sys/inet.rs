//! IPv4 sockets of the underlay: a UDP socket bound to the node's tunnel
//! port, a raw socket receiving IPIP (protocol 4), and a raw sending socket
//! (`IPPROTO_RAW`, which implies `IP_HDRINCL`: the kernel routes the packet
//! podswitch built, outer IPv4 header included, filling only the header
//! checksum and total length, raw(7)).

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::flow_steer::{FlowSteering, Group};
use super::mmsg::{self, Received, RecvBuffers, SendBuffers};
use super::packet_socket::{set_program, BpfInstruction};
use super::{cvt, set_buffer, setsockopt, sockaddr_in, socket, Buffer};

/// An IPv4 datagram or raw socket.
#[derive(Debug)]
pub struct InetSocket {
    fd: OwnedFd,
}

/// IPv4 protocol number of IPIP (RFC 2003).
pub const IPPROTO_IPIP: libc::c_int = 4;

/// `SO_ATTACH_REUSEPORT_CBPF` and `_EBPF` (include/uapi/asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
/// The ancillary load of the receiving CPU in classic BPF
/// (include/uapi/linux/filter.h).
const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_CPU: i32 = 36;

impl InetSocket {
    /// A UDP socket bound to `addr`, reporting each datagram's TOS and TTL.
    pub fn udp_bound(addr: SocketAddrV4) -> io::Result<InetSocket> {
        InetSocket::udp_receiver(addr, false)
    }

    fn udp_receiver(addr: SocketAddrV4, reuse_port: bool) -> io::Result<InetSocket> {
        let sock = InetSocket {
            fd: socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?,
        };
        sock.report_tos_ttl()?;
        sock.buffers(8 << 20)?;
        if reuse_port {
            let one: libc::c_int = 1;
            setsockopt(sock.fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, &one)?;
        }
        sock.bind(addr)?;
        Ok(sock)
    }

    /// `members` UDP sockets bound to `addr` (as [`InetSocket::udp_bound`])
    /// in one `SO_REUSEPORT` group that hands each datagram to the socket
    /// numbered as the CPU that received it, modulo `members`: a classic
    /// BPF program on the group (`SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5)
    /// returns the CPU, which indexes the group's sockets in the order
    /// they were bound (`reuseport_select_sock`,
    /// net/core/sock_reuseport.c). A thread pinned to CPU k that reads
    /// socket k is woken on the CPU the datagram arrived on, as with a
    /// packet socket's CPU fanout
    /// ([`PacketSocket::fan_out_by_cpu`](super::packet_socket::PacketSocket::fan_out_by_cpu)).
    pub fn udp_bound_by_cpu(addr: SocketAddrV4, members: usize) -> io::Result<Vec<InetSocket>> {
        let modulo = u32::try_from(members)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{members} sockets in a reuseport group"),
                )
            })?;
        let group = (0..members)
            .map(|_| InetSocket::udp_receiver(addr, true))
            .collect::<io::Result<Vec<_>>>()?;
        let ins = BpfInstruction::new;
        let program = [
            ins(0x20, 0, 0, SKF_AD_OFF.wrapping_add(SKF_AD_CPU) as u32), // ld #cpu  the receiving CPU
            ins(0x94, 0, 0, modulo), // mod #members  a CPU past the last socket wraps around
            ins(0x16, 0, 0, 0),      // ret a  the index of the socket that gets it
        ];
        set_program(group[0].fd.as_fd(), SO_ATTACH_REUSEPORT_CBPF, &program)?;
        Ok(group)
    }

    /// `members` UDP sockets bound to `addr` in one `SO_REUSEPORT` group
    /// steered by flow with `steering` (made for a
    /// [`Group::Reuseport`] of `members`): socket k takes the datagrams
    /// CPU k receives, except that a flow stays on its socket until that
    /// socket's reader has sent it on and the flow has been quiet (see
    /// [`super::flow_steer`]). The program goes to the group through its
    /// first socket (`SO_ATTACH_REUSEPORT_EBPF`, Linux 4.6); it returns
    /// the index of a socket in the order they were bound.
    pub fn udp_bound_by_flow(
        addr: SocketAddrV4,
        steering: &FlowSteering,
    ) -> io::Result<Vec<InetSocket>> {
        steering.check_group(Group::Reuseport)?;
        let group = (0..steering.members())
            .map(|_| InetSocket::udp_receiver(addr, true))
            .collect::<io::Result<Vec<_>>>()?;
        let program: libc::c_int = steering.program().as_raw_fd();
        setsockopt(
            group[0].fd.as_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_EBPF,
            &program,
        )?;
        Ok(group)
    }

    /// A UDP socket for sending tunnel super-datagrams with `UDP_SEGMENT`
    /// (Linux 4.18): bound to `local` and a port the kernel picks from its
    /// ephemeral range, which becomes the outer source port of what it
    /// sends. It never reads: its receive buffer is the smallest the
    /// kernel allows. The outer IPv4 header goes without DF, as flannel.1
    /// sends it. Returns the socket and its port.
    pub fn udp_segment_sender(local: Ipv4Addr) -> io::Result<(InetSocket, u16)> {
        let sock = InetSocket {
            fd: socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?,
        };
        let smallest: libc::c_int = 0;
        setsockopt(
            sock.fd.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &smallest,
        )?;
        set_buffer(sock.fd.as_fd(), Buffer::Send, 4 << 20)?;
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        setsockopt(
            sock.fd.as_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &dont,
        )?;
        sock.bind(SocketAddrV4::new(local, 0))?;
        let port = sock.local_port()?;
        Ok((sock, port))
    }

    /// Asks the kernel to hand over coalesced datagrams whole, with their
    /// segment size (`UDP_GRO`, Linux 5.0): a peer's `UDP_SEGMENT`
    /// super-datagram crossing a veth arrives as one, as does what GRO
    /// merged on a NIC. [`Received::segment_size`] says so.
    pub fn enable_gro(&self) -> io::Result<()> {
        let one: libc::c_int = 1;
        setsockopt(self.fd.as_fd(), libc::SOL_UDP, super::UDP_GRO, &one)
    }

    pub(crate) fn local_port(&self) -> io::Result<u16> {
        // SAFETY: sockaddr_in is plain C data; zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sa` and `len` are valid for writes of the length given.
        cvt(unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut sa).cast(),
                &mut len,
            )
        })?;
        Ok(u16::from_be(sa.sin_port))
    }

    /// Most slices one [`Self::send_segmented`] gathers.
    pub const MAX_SEND_PARTS: usize = 256;

    /// Sends the payload gathered from `parts` (at most
    /// [`Self::MAX_SEND_PARTS`]) to `dst` as datagrams of `segment` bytes
    /// each (the last may be shorter), cut by the kernel (`UDP_SEGMENT`),
    /// with the outer IPv4 TOS and TTL given. Returns false if the socket
    /// buffer is full (nothing was sent).
    pub fn send_segmented(
        &self,
        parts: &[&[u8]],
        dst: SocketAddrV4,
        segment: u16,
        tos: u8,
        ttl: u8,
    ) -> io::Result<bool> {
        if parts.len() > Self::MAX_SEND_PARTS {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        const ROOM: usize = 96;
        let mut control = [0u64; ROOM / 8];
        // SAFETY: CMSG_SPACE only computes an aligned length.
        let space = unsafe { libc::CMSG_SPACE(2) + 2 * libc::CMSG_SPACE(4) } as usize;
        debug_assert!(space <= ROOM);
        let mut name = sockaddr_in(dst);
        let mut iov = super::gather::<{ Self::MAX_SEND_PARTS }>(parts);
        // SAFETY: msghdr is plain C data; zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = std::ptr::from_mut(&mut name).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = parts.len();
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space.min(ROOM);
        // SAFETY: the control buffer holds `space` bytes (72 on 64-bit
        // Linux), exactly the three headers written; CMSG_FIRSTHDR/NXTHDR
        // stay inside msg_controllen (the buffer is zeroed, so the length
        // NXTHDR reads ahead is 0) and each data write is the size its
        // header's length declares.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = super::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(2) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
            let c = libc::CMSG_NXTHDR(&msg, c);
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_TOS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), tos.into());
            let c = libc::CMSG_NXTHDR(&msg, c);
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_TTL;
            (*c).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), ttl.into());
        }
        // SAFETY: `msg` points at a name, iovecs and a control buffer on
        // this stack frame that outlive the call; the iovecs point into
        // `parts`, which the kernel only reads.
        match cvt(unsafe {
            libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) as libc::c_int
        }) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
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
        set_buffer(self.fd.as_fd(), Buffer::Receive, bytes)?;
        set_buffer(self.fd.as_fd(), Buffer::Send, bytes)
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
        mmsg::recv_batch(
            self.fd.as_fd(),
            bufs,
            meta,
            mmsg::Ancillary::SourceAndOptions,
        )
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
