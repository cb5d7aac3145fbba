//! AF_PACKET sockets bound to one interface (packet(7)).
//!
//! Options used, each from include/uapi/linux/if_packet.h:
//! - `PACKET_VNET_HDR`: every frame is preceded by a 10-byte virtio-net
//!   header, which carries what checksum and segmentation offloads left
//!   undone (a pod's TCP arrives as 64 KiB TSO frames with a partial
//!   checksum; see [`crate::offload`]).
//! - Sends go through the device's transmit path, not straight to the
//!   driver (no `PACKET_QDISC_BYPASS`). `dev_direct_xmit` would skip the
//!   queueing discipline, the tc egress hook and the taps, and so what
//!   the node's tools and the pod's other plugins expect of the host end
//!   of a pod's veth: tcpdump would see no frame podswitch sends to the
//!   pod, and the CNI bandwidth plugin's TBF qdisc, which limits what the
//!   pod receives, would limit nothing.
//! - `PACKET_IGNORE_OUTGOING` (Linux 4.20): our own transmissions are not
//!   looped back to us as received frames.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::flow_steer::{FlowSteering, Group};
use super::mmsg::{self, Received, RecvBuffers, SendBuffers};
use super::{cvt, getsockopt, set_buffer, setsockopt, socket, Buffer};

const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// `PACKET_FANOUT`, its modes `PACKET_FANOUT_CPU` and `_EBPF`, and the flag
/// `PACKET_FANOUT_FLAG_UNIQUEID`, as the option's argument holds them
/// (mode and flags above the group id: include/uapi/linux/if_packet.h).
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_FANOUT_CPU: u32 = 2 << 16;
/// `PACKET_FANOUT_EBPF`: a BPF program picks the member; it is handed to
/// the group with `PACKET_FANOUT_DATA`.
const PACKET_FANOUT_EBPF: u32 = 7 << 16;
const PACKET_FANOUT_DATA: libc::c_int = 22;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000 << 16;
/// Every protocol (`ETH_P_ALL`).
pub const ETH_P_ALL: u16 = 0x0003;
/// ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// IPv4.
pub const ETH_P_IP: u16 = 0x0800;

/// A classic BPF filter that takes no frame: `ret #0` (the bytes of the
/// frame to keep).
const TAKE_NOTHING: [BpfInstruction; 1] = [BpfInstruction::new(0x06, 0, 0, 0)];

/// Returns once every receive path that was running when it was called
/// has finished, so none still holds a packet hook that was taken off a
/// device's list before the call.
///
/// Closing a packet socket waits for exactly that (`synchronize_net` in
/// `packet_release`, net/packet/af_packet.c: "no more input will
/// appear"), whether or not the socket was bound: so this opens an
/// unbound one, which takes no frame, and closes it. The close is
/// finished when `close` returns (the last reference to the file is
/// put before the call returns to user space). It takes an RCU grace
/// period: about 17 ms on the 2-vCPU VM we test on, once a fanout group.
fn wait_for_receive_paths() -> io::Result<()> {
    drop(socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?);
    Ok(())
}

/// How to open a packet socket.
#[derive(Debug, Clone, Copy)]
pub struct PacketOptions {
    /// EtherType to receive (host order), or [`ETH_P_ALL`].
    pub protocol: u16,
    /// Exchange virtio-net headers with the kernel.
    pub vnet_hdr: bool,
    /// Receive buffer size to ask for (bytes).
    pub rcvbuf: usize,
}

impl Default for PacketOptions {
    fn default() -> Self {
        PacketOptions {
            protocol: ETH_P_ALL,
            vnet_hdr: true,
            rcvbuf: 4 << 20,
        }
    }
}

/// One instruction of a classic BPF socket filter (`struct sock_filter`).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BpfInstruction {
    /// Operation.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

impl BpfInstruction {
    /// An instruction from its four fields, in the order `tcpdump -dd`
    /// prints them.
    pub const fn new(code: u16, jt: u8, jf: u8, k: u32) -> BpfInstruction {
        BpfInstruction { code, jt, jf, k }
    }
}

/// Hands a classic BPF program to socket option `option` of `fd`
/// (`SO_ATTACH_FILTER`, `SO_ATTACH_REUSEPORT_CBPF`); the kernel copies it.
pub(super) fn set_program(
    fd: BorrowedFd<'_>,
    option: libc::c_int,
    program: &[BpfInstruction],
) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        // The kernel copies the program and never writes it.
        filter: program.as_ptr().cast_mut().cast(),
    };
    setsockopt(fd, libc::SOL_SOCKET, option, &prog)
}

/// An AF_PACKET socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    vnet_hdr: bool,
    /// The classic BPF filter the socket was opened with, which the
    /// members of a fanout group it starts take too.
    filter: Option<Vec<BpfInstruction>>,
}

impl PacketSocket {
    /// Opens a socket on interface `ifindex`.
    pub fn open(ifindex: u32, options: PacketOptions) -> io::Result<PacketSocket> {
        PacketSocket::open_filtered(ifindex, options, None)
    }

    /// Opens a socket on interface `ifindex` that takes only the frames
    /// classic BPF `filter` accepts, if given. The filter is attached
    /// before the socket is bound, so no frame it rejects ever reaches
    /// the socket's queue.
    pub fn open_filtered(
        ifindex: u32,
        options: PacketOptions,
        filter: Option<&[BpfInstruction]>,
    ) -> io::Result<PacketSocket> {
        // Protocol 0 until the bind: a packet socket opened with a
        // protocol takes that protocol's frames from every interface at
        // once (`packet_create`, net/packet/af_packet.c), before its filter
        // is attached and before the bind names its interface.
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let one: libc::c_int = 1;
        if options.vnet_hdr {
            setsockopt(fd.as_fd(), SOL_PACKET, PACKET_VNET_HDR, &one)?;
        }
        // Without it (kernels before 4.20) outgoing frames come back with
        // sll_pkttype PACKET_OUTGOING; we need 4.20 for veth XDP anyway.
        setsockopt(fd.as_fd(), SOL_PACKET, PACKET_IGNORE_OUTGOING, &one)?;
        // Both buffers of the size asked for.
        let bytes = options.rcvbuf as libc::c_int;
        set_buffer(fd.as_fd(), Buffer::Receive, bytes)?;
        set_buffer(fd.as_fd(), Buffer::Send, bytes)?;
        if let Some(filter) = filter {
            set_program(fd.as_fd(), libc::SO_ATTACH_FILTER, filter)?;
        }
        let sock = PacketSocket {
            fd,
            ifindex,
            vnet_hdr: options.vnet_hdr,
            filter: filter.map(<[BpfInstruction]>::to_vec),
        };
        sock.bind(options.protocol)?;
        Ok(sock)
    }

    fn bind(&self, protocol: u16) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain C data; zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = self.ifindex as libc::c_int;
        // SAFETY: `sll` is a valid sockaddr_ll of the length passed, read
        // by the kernel only.
        cvt(unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                std::ptr::from_ref(&sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    /// Makes this socket the first member of a new fanout group in CPU
    /// mode and opens `more` sockets on its interface with `options`,
    /// which join it in order: member k (this socket being member 0)
    /// takes the frames CPU k receives.
    ///
    /// In CPU mode each frame goes to the one member whose index is the
    /// CPU that received it, modulo the members (`fanout_demux_cpu`,
    /// net/packet/af_packet.c); members are numbered as they join. A
    /// thread pinned to CPU k that reads member k is therefore woken on
    /// the CPU the frame arrived on, which for a veth is the sender's
    /// (`veth_xmit` queues to the sending CPU's backlog), and never wakes
    /// another, possibly halted, CPU. The new sockets are opened in the
    /// calling thread's network namespace, which must be this socket's.
    ///
    /// CPU mode reorders a flow whose frames arrive on two CPUs;
    /// [`fan_out_by_flow`](Self::fan_out_by_flow) does not. No frame is
    /// read twice, but the kernel hands a member frames as soon as it has
    /// joined, before it takes any (a member is bound taking nothing, so
    /// that it keeps no copies of the group's frames before it joins):
    /// the few that reach it in that instant are lost. A group steered by
    /// flow loses none: its program, set last, is what sends frames to
    /// the members.
    pub fn fan_out_by_cpu(
        &self,
        more: usize,
        options: PacketOptions,
    ) -> io::Result<Vec<PacketSocket>> {
        self.fan_out(more, options, PACKET_FANOUT_CPU, None)
    }

    /// As [`fan_out_by_cpu`](Self::fan_out_by_cpu), but member k takes
    /// the frames CPU k receives only while no frame of the same flow
    /// waits in another member's queue: `steering`'s program picks
    /// (`PACKET_FANOUT_EBPF`, Linux 4.3; see [`super::flow_steer`]), and
    /// each member's reader reports its progress through
    /// [`FlowSteering::progress`]. `steering` must be made for `more + 1`
    /// members.
    pub fn fan_out_by_flow(
        &self,
        more: usize,
        options: PacketOptions,
        steering: &FlowSteering,
    ) -> io::Result<Vec<PacketSocket>> {
        steering.check_group(Group::Fanout)?;
        if steering.members() != more + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a steering program for {} members steers a group of {}",
                    steering.members(),
                    more + 1
                ),
            ));
        }
        self.fan_out(more, options, PACKET_FANOUT_EBPF, Some(steering))
    }

    /// Starts a fanout group in `mode` with this socket as its first
    /// member (the group's id is one the kernel picks,
    /// `PACKET_FANOUT_FLAG_UNIQUEID`, Linux 4.20), opens `more` members
    /// that join it in order, each with this socket's filter (a frame the
    /// group steers to a member is filtered by that member's own), and
    /// then hands the group `steering`'s program if given.
    ///
    /// No frame is read twice. The kernel lets only a bound socket join
    /// (`fanout_add`, net/packet/af_packet.c), and a bound socket takes
    /// every frame of its interface on its own until it has joined: a
    /// member that did so would keep copies of frames the group gave
    /// another member too. So a member is bound with a filter that takes
    /// nothing ([`TAKE_NOTHING`]), and gets its own filter only once no
    /// receive path can still deliver to it on its own. Joining takes the
    /// member's own hook off the device's list without waiting
    /// (`__dev_remove_pack`): a receive path on another CPU that had
    /// already passed it hands the frame to the member directly, and then
    /// to the group as well, whose hook is further down the list. The
    /// member's filter is read at that delivery, so it must still take
    /// nothing until every such path has finished:
    /// [`wait_for_receive_paths`] waits, once for all the members.
    ///
    /// In a steered group the program comes last: until then the group
    /// gives every frame to this socket (`fanout_demux_bpf` picks member
    /// 0 while the group has no program), so none is lost to a member
    /// still taking nothing either. In CPU mode the kernel picks a member
    /// as soon as it has joined: a frame it picks for one before its
    /// filter is set is lost.
    fn fan_out(
        &self,
        more: usize,
        options: PacketOptions,
        mode: u32,
        steering: Option<&FlowSteering>,
    ) -> io::Result<Vec<PacketSocket>> {
        setsockopt(
            self.fd.as_fd(),
            SOL_PACKET,
            PACKET_FANOUT,
            &(mode | PACKET_FANOUT_FLAG_UNIQUEID),
        )?;
        let mut arg: u32 = 0;
        getsockopt(self.fd.as_fd(), SOL_PACKET, PACKET_FANOUT, &mut arg)?;
        // The group's id in the low 16 bits, its mode and flags above.
        let group = arg & 0xffff;
        let mut members = (0..more)
            .map(|_| {
                let member =
                    PacketSocket::open_filtered(self.ifindex, options, Some(&TAKE_NOTHING))?;
                setsockopt(
                    member.fd.as_fd(),
                    SOL_PACKET,
                    PACKET_FANOUT,
                    &(group | mode),
                )?;
                Ok(member)
            })
            .collect::<io::Result<Vec<_>>>()?;
        if more > 0 {
            wait_for_receive_paths()?;
        }
        for member in &mut members {
            member.set_filter(self.filter.as_deref())?;
        }
        if let Some(steering) = steering {
            // The program is the group's, set through any member
            // (`fanout_set_data`); the group takes its own reference.
            let program: libc::c_int = steering.program().as_raw_fd();
            setsockopt(self.fd.as_fd(), SOL_PACKET, PACKET_FANOUT_DATA, &program)?;
        }
        Ok(members)
    }

    /// Replaces the socket's filter with `filter`, or takes it off.
    fn set_filter(&mut self, filter: Option<&[BpfInstruction]>) -> io::Result<()> {
        match filter {
            Some(filter) => set_program(self.fd.as_fd(), libc::SO_ATTACH_FILTER, filter)?,
            None => {
                let unused: libc::c_int = 0;
                setsockopt(
                    self.fd.as_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_DETACH_FILTER,
                    &unused,
                )?;
            }
        }
        self.filter = filter.map(<[BpfInstruction]>::to_vec);
        Ok(())
    }

    /// True if frames carry a virtio-net header.
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The interface it is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Receives a batch (see [`mmsg::recv_batch`]).
    pub fn recv_batch(
        &self,
        bufs: &mut impl RecvBuffers,
        meta: &mut [Received],
    ) -> io::Result<usize> {
        mmsg::recv_batch(self.fd.as_fd(), bufs, meta, mmsg::Ancillary::None)
    }

    /// Sends a batch on the bound interface (see [`mmsg::send_batch`]).
    pub fn send_batch(&self, bufs: &impl SendBuffers) -> io::Result<usize> {
        mmsg::send_batch(self.fd.as_fd(), bufs)
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
