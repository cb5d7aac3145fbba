//! The AF_XDP underlay's XDP program: tunnel packets addressed to the
//! node go to podswitch's AF_XDP socket, everything else to the kernel.
//!
//! What is steered, per rule ([`Steer`]): an untagged IPv4 frame for the
//! interface's MAC, with no IP options and not a fragment, addressed to
//! the node's underlay address, carrying UDP to the tunnel port (VXLAN,
//! IP-in-UDP) or IP protocol 4 (IPIP). Everything else passes to the
//! kernel untouched: ARP, ICMP to the node, the node's own TCP and UDP,
//! fragments (the kernel reassembles them and the tunnel's socket, still
//! bound, receives them), frames with IP options, and tunnel packets that
//! do not end where their inner IPv4 packet does. Those are several
//! datagrams the kernel has not cut yet, crossing a veth whole (generic
//! XDP sees such an skb as one frame): a batch another podswitch node sent
//! as one write, or a kernel node's GSO datagram, whose outer headers give
//! the whole's length and whose first inner packet its own. An AF_XDP
//! socket would take one as a single packet, or drop it as longer than its
//! frames; the tunnel socket takes it whole (`UDP_GRO`) and podswitch
//! splits it. (A VXLAN frame whose inner frame is not IPv4, ARP, says no
//! such length and takes the socket too.) So does any frame longer than an
//! AF_XDP socket's frame ([`MAX_RX_FRAME`]): a kernel VXLAN node's whole
//! datagram around a pod's `UDP_SEGMENT` write, one tunnel packet whose
//! inner packet is the whole super-datagram, or a jumbo frame.
//!
//! Tunnel packets whose inner packet is TCP also pass to the kernel: the
//! kernel merges them (GRO) into super-datagrams for the tunnel socket,
//! which podswitch carries to the pod as 64 KiB super-frames. An AF_XDP
//! socket sees frames one by one, and attaching XDP to a veth takes GSO
//! off its peer (drivers/net/veth.c, `veth_xdp_set`), so TCP through the
//! socket would reach the pods MTU-sized. Within one TCP flow all
//! segments take the same path, so none overtakes another.
//!
//! The redirect is `bpf_redirect_map` into an `XSKMAP` indexed by the
//! receive queue, with `XDP_PASS` as the action when the queue has no
//! socket (Linux 5.3): a queue podswitch does not read still reaches the
//! kernel, and so the tunnel socket.
//!
//! The program is attached through a BPF link (`BPF_LINK_CREATE` with
//! `BPF_XDP`, Linux 5.9): it lives as long as its descriptor, so it goes
//! away when the underlay port closes and when podswitchd ends however it
//! ends (kill -9 included); nothing is left on the interface to clean up.
//! A link cannot replace an XDP program someone else attached: then the
//! attach fails with `EBUSY` and the daemon keeps the socket underlay.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use super::bpf::{
    add64_imm, add64_reg, and32_imm, call, exit, ja, jeq32_imm, jgt_reg, jne32_imm, load16, load32,
    load8, load_map, load_program, lsh32_imm, mov64_imm, mov64_reg, owned_fd, Assembler,
    Instruction, ETHERTYPE_IPV4, IPV4_FRAGMENT_BITS, PROTOCOL_IPIP, PROTOCOL_TCP, PROTOCOL_UDP,
    REDIRECT_MAP,
};
use super::xdp::{XdpMode, MAX_RX_FRAME};

/// The name the program shows under in `bpftool prog` and `ip link`.
pub const PROGRAM_NAME: &str = "podswitch_tun";

/// `XDP_PASS` (enum xdp_action).
const XDP_PASS: i32 = 2;
/// Ethernet + IPv4 (no options) + UDP: the bytes every rule reads.
const HEADERS: i32 = 14 + 20 + 8;
/// Offsets of the IPv4 header's fields in the frame.
const IP_VERSION_IHL: i16 = 14;
const IP_FRAGMENT: i16 = 14 + 6;
const IP_PROTOCOL: i16 = 14 + 9;
const IP_DESTINATION: i16 = 14 + 16;
const UDP_DESTINATION: i16 = 14 + 20 + 2;

/// Where in a frame the inner IPv4 header's protocol byte is, by tunnel.
pub mod inner_protocol {
    /// VXLAN: outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet, then IPv4.
    pub const VXLAN: usize = 14 + 20 + 8 + 8 + 14 + 9;
    /// IP-in-UDP (flannel's udp backend): the inner IPv4 follows the UDP header.
    pub const IP_IN_UDP: usize = 14 + 20 + 8 + 9;
    /// IPIP: the inner IPv4 follows the outer one.
    pub const IPIP: usize = 14 + 20 + 9;
}

/// Which tunnel packets go to the AF_XDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// UDP to the tunnel port `port`; the inner IPv4 protocol byte is at
    /// `inner_protocol` (see [`inner_protocol`]).
    Udp {
        /// The tunnel's UDP port.
        port: u16,
        /// Offset of the inner protocol byte in the frame.
        inner_protocol: usize,
    },
    /// IPv4 protocol 4.
    Ipip,
}

/// What the program is built for.
#[derive(Debug, Clone)]
pub struct SteerRules {
    /// The underlay interface's MAC (frames for another MAC pass).
    pub mac: [u8; 6],
    /// The node's underlay address.
    pub local_ip: Ipv4Addr,
    /// The tunnels steered; a frame matching none passes.
    pub steer: Vec<Steer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Pass,
    Redirect,
    Rule(usize),
}

/// A value as a load from packet memory reads the wire's `bytes`.
fn wire32(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}
fn wire16(bytes: [u8; 2]) -> u32 {
    u32::from(u16::from_ne_bytes(bytes))
}

/// The program for `rules`, redirecting into the XSKMAP `map_fd`.
///
/// Registers: r6 the context, r2/r3 the frame's start and end, r7 the IPv4
/// destination, r8 the IPv4 protocol, r4/r5 scratch.
pub fn program(rules: &SteerRules, map_fd: i32) -> Vec<Instruction> {
    let mut a = Assembler::default();
    let m = rules.mac;
    a.op(mov64_reg(6, 1));
    a.op(load32(2, 6, 0)); // xdp_md.data
    a.op(load32(3, 6, 4)); // xdp_md.data_end
    a.op(mov64_reg(4, 2));
    a.op(add64_imm(4, HEADERS));
    a.jump(jgt_reg(4, 3, 0), Label::Pass);
    // Longer than a socket's frame: the socket would drop it.
    a.op(add64_imm(4, MAX_RX_FRAME as i32 - HEADERS));
    a.jump(jgt_reg(3, 4, 0), Label::Pass);
    a.op(load32(5, 2, 0));
    a.jump(
        jne32_imm(5, wire32([m[0], m[1], m[2], m[3]]), 0),
        Label::Pass,
    );
    a.op(load16(5, 2, 4));
    a.jump(jne32_imm(5, wire16([m[4], m[5]]), 0), Label::Pass);
    a.op(load16(5, 2, 12));
    a.jump(jne32_imm(5, ETHERTYPE_IPV4, 0), Label::Pass);
    // Version 4, a 20-byte header: options go to the kernel.
    a.op(load8(5, 2, IP_VERSION_IHL));
    a.jump(jne32_imm(5, 0x45, 0), Label::Pass);
    // More-fragments flag or a fragment offset: the kernel reassembles.
    a.op(load16(5, 2, IP_FRAGMENT));
    a.op(and32_imm(5, IPV4_FRAGMENT_BITS));
    a.jump(jne32_imm(5, 0, 0), Label::Pass);
    a.op(load32(7, 2, IP_DESTINATION));
    a.op(load8(8, 2, IP_PROTOCOL));
    let local = wire32(rules.local_ip.octets());
    for (i, rule) in rules.steer.iter().enumerate() {
        a.place(Label::Rule(i));
        let next = if i + 1 < rules.steer.len() {
            Label::Rule(i + 1)
        } else {
            Label::Pass
        };
        a.jump(jne32_imm(7, local, 0), next);
        let inner = match *rule {
            Steer::Udp {
                port,
                inner_protocol,
            } => {
                a.jump(jne32_imm(8, PROTOCOL_UDP, 0), next);
                a.op(load16(5, 2, UDP_DESTINATION));
                a.jump(jne32_imm(5, wire16(port.to_be_bytes()), 0), next);
                inner_protocol
            }
            Steer::Ipip => {
                a.jump(jne32_imm(8, PROTOCOL_IPIP, 0), next);
                inner_protocol::IPIP
            }
        };
        // Inner TCP stays with the kernel (see the module's docs); so
        // does a packet too short to say.
        a.op(mov64_reg(4, 2));
        a.op(add64_imm(4, inner as i32 + 1));
        a.jump(jgt_reg(4, 3, 0), Label::Pass);
        a.op(load8(5, 2, inner as i16));
        a.jump(jeq32_imm(5, PROTOCOL_TCP, 0), Label::Pass);
        // One tunnel packet: the frame ends where the inner IPv4 packet's
        // total length says (r4 = data + its start + that length, against
        // data_end). A batch's or a GSO datagram's headers give the
        // whole's lengths outside and one packet's inside.
        let inner_l3 = inner - 9;
        a.op(load8(5, 2, (inner_l3 + 2) as i16));
        a.op(lsh32_imm(5, 8));
        a.op(load8(4, 2, (inner_l3 + 3) as i16));
        a.op(add64_reg(5, 4));
        a.op(mov64_reg(4, 2));
        a.op(add64_reg(4, 5));
        a.op(add64_imm(4, inner_l3 as i32));
        a.jump(jgt_reg(4, 3, 0), Label::Pass);
        a.jump(jgt_reg(3, 4, 0), Label::Pass);
        a.jump(ja(0), Label::Redirect);
    }
    a.place(Label::Pass);
    a.op(mov64_imm(0, XDP_PASS));
    a.op(exit());
    a.place(Label::Redirect);
    a.op(load32(2, 6, 16)); // xdp_md.rx_queue_index
    let [lo, hi] = load_map(1, map_fd);
    a.op(lo);
    a.op(hi);
    a.op(mov64_imm(3, XDP_PASS)); // the action when the queue has no socket
    a.op(call(REDIRECT_MAP));
    a.op(exit());
    a.finish()
}

/// The steering program attached to one interface, and its socket map.
#[derive(Debug)]
pub struct TunnelSteering {
    map: OwnedFd,
    /// Held, never read: closing it detaches the program.
    _link: OwnedFd,
    mode: XdpMode,
    queues: u32,
}

impl TunnelSteering {
    /// Builds the program for `rules`, with a socket map of `queues`
    /// entries, and attaches it to interface `ifindex`: in the driver if
    /// it takes it (and `native`), else generic.
    pub fn attach(
        ifindex: u32,
        rules: &SteerRules,
        queues: u32,
        native: bool,
    ) -> io::Result<TunnelSteering> {
        let queues = queues.max(1);
        let name = c"podswitch_xsks";
        // SAFETY: the name is NUL-terminated; null options mean none. The
        // return is a new map descriptor or a negative errno.
        let map = owned_fd(unsafe {
            libbpf_sys::bpf_map_create(
                libbpf_sys::BPF_MAP_TYPE_XSKMAP,
                name.as_ptr(),
                4,
                4,
                queues,
                std::ptr::null(),
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("XSKMAP: {e}")))?;
        let code = program(rules, map.as_raw_fd());
        let prog = load_program(libbpf_sys::BPF_PROG_TYPE_XDP, PROGRAM_NAME, &code)
            .map_err(|e| io::Error::new(e.kind(), format!("loading the XDP program: {e}")))?;
        let target = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        let modes: &[XdpMode] = if native {
            &[XdpMode::Native, XdpMode::Generic]
        } else {
            &[XdpMode::Generic]
        };
        let mut last = io::Error::other("no XDP mode tried");
        for &mode in modes {
            let opts = libbpf_sys::bpf_link_create_opts {
                sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
                flags: match mode {
                    XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
                    XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
                },
                ..Default::default()
            };
            // SAFETY: `prog` is a live XDP program descriptor and `opts` a
            // correctly sized option structure that outlives the call. The
            // return is a new link descriptor or a negative errno.
            let link = unsafe {
                libbpf_sys::bpf_link_create(prog.as_raw_fd(), target, libbpf_sys::BPF_XDP, &opts)
            };
            match owned_fd(link) {
                Ok(link) => {
                    return Ok(TunnelSteering {
                        map,
                        _link: link,
                        mode,
                        queues,
                    })
                }
                Err(e) => last = e,
            }
        }
        Err(io::Error::new(
            last.kind(),
            format!("attaching the XDP program: {last}"),
        ))
    }

    /// Native or generic XDP.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Sends the frames steered on receive queue `queue` to the AF_XDP
    /// socket `xsk_fd` (bound to that queue).
    pub fn insert(&self, queue: u32, xsk_fd: i32) -> io::Result<()> {
        if queue >= self.queues {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queue {queue}: the map has {}", self.queues),
            ));
        }
        // SAFETY: key and value are live u32/i32 of the map's key and
        // value sizes (4 bytes each).
        let ret = unsafe {
            libbpf_sys::bpf_map_update_elem(
                self.map.as_raw_fd(),
                (&queue as *const u32).cast(),
                (&xsk_fd as *const i32).cast(),
                u64::from(libbpf_sys::BPF_ANY),
            )
        };
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(steer: Vec<Steer>) -> SteerRules {
        SteerRules {
            mac: [0x02, 0, 0, 0, 0, 1],
            local_ip: Ipv4Addr::new(192, 168, 100, 1),
            steer,
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program_and_forward() {
        let p = program(
            &rules(vec![
                Steer::Udp {
                    port: 8472,
                    inner_protocol: inner_protocol::VXLAN,
                },
                Steer::Ipip,
            ]),
            3,
        );
        crate::sys::bpf::assert_jumps_forward_inside(&p);
        // It ends in the redirect: the call, then exit.
        assert_eq!(p[p.len() - 2].imm, REDIRECT_MAP);
        assert_eq!(p[p.len() - 1], exit());
    }

    #[test]
    fn constants_read_as_the_wire_does() {
        // 8472 on the wire is 0x21 0x18; a 16-bit load gives the bytes in
        // host order.
        let port = wire16(8472u16.to_be_bytes());
        assert_eq!(u16::try_from(port).unwrap().to_ne_bytes(), [0x21, 0x18]);
        assert_eq!(wire32([192, 168, 100, 1]).to_ne_bytes(), [192, 168, 100, 1]);
    }
}
