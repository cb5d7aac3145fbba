//! The underlay port: how tunnel packets and host-gw frames leave and
//! arrive through the node's kernel.
//!
//! - **Send**: every encapsulated packet goes out through one raw socket
//!   (`IPPROTO_RAW`): the outer IPv4 header is the one the engine's
//!   template built — flow-hashed UDP source port, TTL, DF, ECN, as the
//!   kernel's flannel.1 and tunl0 make them — and the kernel routes it.
//!   host-gw frames, which keep the pod addresses and need the peer's
//!   MAC, go out through an AF_PACKET socket on the underlay interface.
//! - **Receive**: VXLAN and IP-in-UDP through a UDP socket bound to the
//!   node's address and the tunnel port (8472 / 8285), so the kernel
//!   neither answers "port unreachable" nor sees the port as free; IPIP
//!   through a raw socket for protocol 4 (which also keeps the kernel from
//!   answering "protocol unreachable"); host-gw frames through the
//!   AF_PACKET socket, filtered in the kernel (classic BPF) to IPv4 for
//!   our pod CIDR.
//!
//! A socket hands over the payload, not the outer headers; the port
//! rebuilds them from what the kernel reports (source address and port,
//! TOS with its ECN bits, TTL) so that the pipeline decapsulates, and
//! `trace`/`capture` show, the same frame a wire capture would. The
//! rebuilt UDP header carries checksum 0: the kernel already verified it.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use podswitch_encap::ethernet::{EtherType, EthernetRepr, HEADER_LEN as ETH};
use podswitch_encap::ipv4::{Ipv4Repr, HEADER_LEN as IPV4};
use podswitch_encap::{IpProtocol, MacAddr};

use super::af_packet::{send_counted, PacketRx, TxBuffers};
use super::{stage, Counter};
use crate::config::Backend;
use crate::drop::DropReason;
use crate::fib::Prefix;
use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE};
use crate::port::{Port, PortId, PortKind};
use crate::sys::inet::{InetSocket, IPPROTO_IPIP};
use crate::sys::mmsg::{Received, RecvBuffers, SendBuffers, MAX_PARTS};
use crate::sys::netdev;
use crate::sys::packet_socket::{BpfInstruction, PacketOptions, PacketSocket, ETH_P_IP};
use crate::tables::Tables;

const UDP: usize = 8;

/// What the underlay port needs to know.
#[derive(Debug, Clone)]
pub struct UnderlayOptions {
    /// The underlay interface.
    pub interface: String,
    /// The node's address on it.
    pub local_ip: Ipv4Addr,
    /// The backend, which decides the sockets.
    pub backend: Backend,
    /// VXLAN port.
    pub vxlan_port: u16,
    /// IP-in-UDP port.
    pub udp_port: u16,
    /// The node's pod CIDR (host-gw frames to receive).
    pub pod_cidr: Prefix,
}

/// The node's underlay.
#[derive(Debug)]
pub struct UnderlayPort {
    name: String,
    counter: Counter,
    local_ip: Ipv4Addr,
    local_mac: MacAddr,
    /// VXLAN / IP-in-UDP receiver and its port.
    udp: Option<(InetSocket, u16)>,
    ipip: Option<InetSocket>,
    sender: Option<InetSocket>,
    direct: Option<PacketRx>,
    meta: Vec<Received>,
    staging: Vec<PacketBuf>,
    tunnel_out: Vec<PacketBuf>,
    direct_out: Vec<PacketBuf>,
}

/// Classic BPF: accept untagged IPv4 frames whose destination is inside
/// `cidr`, reject the rest (what `tcpdump -dd 'ip dst net CIDR'` gives).
fn host_gw_filter(cidr: Prefix) -> [BpfInstruction; 7] {
    let ins = |code, jt, jf, k| BpfInstruction { code, jt, jf, k };
    let mask = u32::MAX
        .checked_shl(32 - u32::from(cidr.prefix_len()))
        .unwrap_or(0);
    [
        ins(0x28, 0, 0, 12),                     // ldh [12]           EtherType
        ins(0x15, 0, 4, 0x0800),                 // jeq #IPv4, next, reject
        ins(0x20, 0, 0, 30),                     // ld [30]            IPv4 destination
        ins(0x54, 0, 0, mask),                   // and #mask
        ins(0x15, 0, 1, u32::from(cidr.addr())), // jeq #net, accept, reject
        ins(0x06, 0, 0, 0x0004_0000),            // accept (up to 256 KiB)
        ins(0x06, 0, 0, 0),                      // reject
    ]
}

impl UnderlayPort {
    /// Opens the sockets the backend needs.
    pub fn open(
        options: &UnderlayOptions,
        id: PortId,
        tables: Arc<Tables>,
    ) -> io::Result<UnderlayPort> {
        let local_mac = MacAddr(netdev::mac(&options.interface)?);
        let ifindex = netdev::ifindex(&options.interface)?;
        let tunnel_port = match options.backend {
            Backend::Vxlan | Backend::DirectRouting => Some(options.vxlan_port),
            Backend::Udp => Some(options.udp_port),
            Backend::Ipip | Backend::HostGw => None,
        };
        let udp = match tunnel_port {
            Some(port) => Some((
                InetSocket::udp_bound(SocketAddrV4::new(options.local_ip, port))?,
                port,
            )),
            None => None,
        };
        let ipip = match options.backend {
            Backend::Ipip => Some(InetSocket::raw_receiver(IPPROTO_IPIP, options.local_ip)?),
            _ => None,
        };
        let sender = match options.backend {
            Backend::HostGw => None,
            _ => Some(InetSocket::raw_sender()?),
        };
        let direct = match options.backend {
            Backend::HostGw | Backend::DirectRouting => {
                let sock = PacketSocket::open(
                    ifindex,
                    PacketOptions {
                        protocol: ETH_P_IP,
                        ..PacketOptions::default()
                    },
                )?;
                sock.attach_filter(&host_gw_filter(options.pod_cidr))?;
                Some(PacketRx::new(sock))
            }
            _ => None,
        };
        Ok(UnderlayPort {
            name: options.interface.clone(),
            counter: Counter { tables, id },
            local_ip: options.local_ip,
            local_mac,
            udp,
            ipip,
            sender,
            direct,
            meta: vec![Received::default(); BATCH_SIZE],
            staging: Vec::with_capacity(BATCH_SIZE),
            tunnel_out: Vec::with_capacity(BATCH_SIZE),
            direct_out: Vec::with_capacity(BATCH_SIZE),
        })
    }

    /// Receives datagrams from `sock`, each at `reserve` bytes into its
    /// buffer, and rebuilds the headers in front with `rebuild`.
    fn recv_socket(
        &mut self,
        which: Socket,
        pool: &mut PacketPool,
        batch: &mut Vec<PacketBuf>,
    ) -> io::Result<usize> {
        let reserve = match which {
            Socket::Udp => ETH + IPV4 + UDP,
            Socket::Ipip => ETH,
        };
        let sock = match which {
            Socket::Udp => self.udp.as_ref().map(|(s, _)| s),
            Socket::Ipip => self.ipip.as_ref(),
        };
        // A backend has one of the two sockets: no buffers for the other.
        let Some(sock) = sock else { return Ok(0) };
        let want = BATCH_SIZE.saturating_sub(batch.len());
        stage(pool, &mut self.staging, want, self.counter.id);
        let mut bufs = AreaBuffers {
            bufs: &mut self.staging,
            reserve,
        };
        let got = sock.recv_batch(&mut bufs, &mut self.meta);
        let got = match got {
            Ok(n) => n,
            Err(e) => {
                pool.free_all(&mut self.staging);
                return Err(e);
            }
        };
        let tunnel_port = self.udp.as_ref().map_or(0, |(_, p)| *p);
        for (i, mut buf) in self.staging.drain(..got).enumerate() {
            let meta = self.meta[i];
            if meta.truncated || meta.len + reserve > buf.receive_area(0).len() {
                self.counter.drop(DropReason::RxTooLong);
                pool.free(buf);
                continue;
            }
            buf.set_received(reserve, meta.len);
            let frame = buf.frame_mut();
            EthernetRepr {
                src: MacAddr::ZERO,
                dst: self.local_mac,
                ethertype: EtherType::Ipv4,
            }
            .emit(frame);
            if which == Socket::Udp {
                let Some(from) = meta.from else {
                    self.counter.drop(DropReason::OuterMalformed);
                    pool.free(buf);
                    continue;
                };
                Ipv4Repr {
                    src: *from.ip(),
                    dst: self.local_ip,
                    protocol: IpProtocol::Udp,
                    payload_len: UDP + meta.len,
                    ttl: meta.ttl.unwrap_or(64),
                    tos: meta.tos.unwrap_or(0),
                    ident: 0,
                    dont_frag: false,
                }
                .emit(&mut frame[ETH..]);
                let udp = &mut frame[ETH + IPV4..ETH + IPV4 + UDP];
                udp[0..2].copy_from_slice(&from.port().to_be_bytes());
                udp[2..4].copy_from_slice(&tunnel_port.to_be_bytes());
                udp[4..6].copy_from_slice(&((UDP + meta.len) as u16).to_be_bytes());
                udp[6..8].fill(0);
            }
            batch.push(buf);
        }
        pool.free_all(&mut self.staging);
        Ok(got)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socket {
    Udp,
    Ipip,
}

/// Pool buffers as receive areas, `reserve` bytes in.
struct AreaBuffers<'a> {
    bufs: &'a mut [PacketBuf],
    reserve: usize,
}

impl RecvBuffers for AreaBuffers<'_> {
    fn count(&self) -> usize {
        self.bufs.len()
    }

    fn parts(&mut self, i: usize) -> [&mut [u8]; MAX_PARTS] {
        [self.bufs[i].receive_area(self.reserve), &mut [], &mut []]
    }
}

/// Encapsulated frames as outer IPv4 packets for the raw socket.
struct RawPackets<'a> {
    frames: &'a [PacketBuf],
}

impl SendBuffers for RawPackets<'_> {
    fn count(&self) -> usize {
        self.frames.len()
    }

    fn parts(&self, i: usize) -> [&[u8]; MAX_PARTS] {
        [&self.frames[i].frame()[ETH..], &[], &[]]
    }

    fn destination(&self, i: usize) -> Option<SocketAddrV4> {
        let f = self.frames[i].frame();
        let dst = Ipv4Addr::new(f[ETH + 16], f[ETH + 17], f[ETH + 18], f[ETH + 19]);
        Some(SocketAddrV4::new(dst, 0))
    }
}

impl Port for UnderlayPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PortKind {
        if self.udp.is_some() {
            PortKind::UdpSocket
        } else if self.ipip.is_some() {
            PortKind::RawIp
        } else {
            PortKind::AfPacket
        }
    }

    fn recv(&mut self, pool: &mut PacketPool, batch: &mut Vec<PacketBuf>) -> io::Result<usize> {
        let mut got = self.recv_socket(Socket::Udp, pool, batch)?;
        got += self.recv_socket(Socket::Ipip, pool, batch)?;
        if let Some(direct) = self.direct.as_mut() {
            got += direct.recv(&self.counter, pool, batch)?;
        }
        Ok(got)
    }

    fn send(&mut self, batch: &mut Vec<PacketBuf>, pool: &mut PacketPool) -> io::Result<usize> {
        let local = self.local_ip.octets();
        for buf in batch.drain(..) {
            let f = buf.frame();
            let tunnel = f.len() >= ETH + IPV4
                && f[12..14] == [0x08, 0x00]
                && f[ETH + 12..ETH + 16] == local
                && matches!(f[ETH + 9], 17 | 4);
            if tunnel {
                self.tunnel_out.push(buf);
            } else {
                self.direct_out.push(buf);
            }
        }
        let mut sent = 0;
        if !self.tunnel_out.is_empty() {
            match &self.sender {
                Some(sock) => {
                    sent += send_counted(&self.counter, &mut self.tunnel_out, pool, |frames| {
                        sock.send_batch(&RawPackets { frames })
                    });
                }
                None => {
                    self.counter
                        .drop_n(DropReason::TxFailed, self.tunnel_out.len());
                    pool.free_all(&mut self.tunnel_out);
                }
            }
        }
        if !self.direct_out.is_empty() {
            match &self.direct {
                Some(rx) => {
                    let sock = &rx.sock;
                    sent += send_counted(&self.counter, &mut self.direct_out, pool, |frames| {
                        sock.send_batch(&TxBuffers { frames, vnet: true })
                    });
                }
                None => {
                    self.counter
                        .drop_n(DropReason::TxFailed, self.direct_out.len());
                    pool.free_all(&mut self.direct_out);
                }
            }
        }
        Ok(sent)
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        if let Some((s, _)) = &self.udp {
            fds.push(s.as_fd().as_raw_fd());
        }
        if let Some(s) = &self.ipip {
            fds.push(s.as_fd().as_raw_fd());
        }
        if let Some(rx) = &self.direct {
            fds.push(rx.sock.as_fd().as_raw_fd());
        }
        fds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_gw_filter_matches_the_pod_cidr() {
        let p = host_gw_filter("10.244.2.0/24".parse().unwrap());
        assert_eq!(p[3].k, 0xffff_ff00);
        assert_eq!(p[4].k, u32::from(Ipv4Addr::new(10, 244, 2, 0)));
        // Both jumps to "reject" land on the last instruction.
        assert_eq!(1 + 1 + usize::from(p[1].jf), 6);
        assert_eq!(4 + 1 + usize::from(p[4].jf), 6);
    }
}
