//! A small rtnetlink client (rtnetlink(7), include/uapi/linux/rtnetlink.h):
//! the link, address and route requests the CNI plugin needs, and
//! [`in_netns`] to run them inside a pod's network namespace.
//!
//! Messages are built and parsed here in safe Rust; the only system calls
//! are the socket's and `setns(2)`.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::fd::{cvt, socket};

const NETLINK_ROUTE: libc::c_int = 0;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
/// Route scope: reachable anywhere.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// Route scope: on the link (no gateway).
pub const RT_SCOPE_LINK: u8 = 253;
const IFF_UP: u32 = 1;

/// One link as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address (Ethernet-like links).
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// `IFF_UP` set.
    pub up: bool,
    /// The other end of a veth: its interface index, and the id this
    /// namespace gives the namespace it is in (absent when it is here).
    pub peer: Option<LinkPeer>,
}

/// Where the other end of a veth is (`link-netnsid` and `@if<N>` in
/// `ip link`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkPeer {
    /// Its interface index, in its namespace.
    pub index: u32,
    /// This namespace's id for its namespace, if another.
    pub netnsid: Option<i32>,
}

/// One IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination and prefix length.
    pub dst: (Ipv4Addr, u8),
    /// Gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Scope.
    pub scope: u8,
}

/// Builds one netlink message: header, fixed part, attributes.
struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    fn new(ty: u16, flags: u16, fixed: &[u8]) -> Message {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(fixed);
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    fn align(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        self.align();
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self
    }

    fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(ty, &data)
    }

    fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.align();
        self.buf.extend_from_slice(data);
        self
    }

    fn begin(&mut self, ty: u16) -> &mut Self {
        self.align();
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("balanced nests");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        self.align();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Attributes of a message body after `fixed` bytes: (type, data).
fn attrs(body: &[u8], fixed: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = fixed;
    while at + 4 <= body.len() {
        let len = usize::from(u16::from_ne_bytes([body[at], body[at + 1]]));
        let ty = u16::from_ne_bytes([body[at + 2], body[at + 3]]) & 0x3fff;
        if len < 4 || at + len > body.len() {
            break;
        }
        out.push((ty, &body[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

/// A NETLINK_ROUTE socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let fd = socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_ROUTE)?;
        // The socket is non-blocking (as every socket we make); netlink
        // answers come from the kernel synchronously, so wait with poll.
        Ok(Netlink { fd, seq: 1 })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: `msg` is a live buffer of the length passed; a null
        // destination sends to the kernel (netlink's default peer).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let ready = cvt(unsafe { libc::poll(&mut pfd, 1, 5000) })?;
            if ready == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "netlink: no answer",
                ));
            }
            // SAFETY: `buf` is a live, exclusively borrowed buffer of the
            // length passed.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Sends a request and collects the data messages of the answer (for
    /// a dump, every part) until the kernel's acknowledgement or error.
    fn request(&mut self, msg: Message) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.send(&msg.finish(seq))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            let mut at = 0;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let got_seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
                if len < 16 || at + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink: bad message",
                    ));
                }
                let body = &buf[at + 16..at + len];
                at += (len + 3) & !3;
                if got_seq != seq {
                    continue;
                }
                match ty {
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(body[0..4].try_into().unwrap());
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => out.push((ty, body.to_vec())),
                }
            }
        }
    }

    /// Creates a veth pair: `name` here, `peer_name` directly inside the
    /// namespace of `peer_netns` (so the pod's name never clashes with the
    /// node's interfaces), both with `mtu`.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_netns: RawFd,
        mtu: u32,
    ) -> io::Result<()> {
        let mut m = Message::new(
            RTM_NEWLINK,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, 0, 0),
        );
        m.attr_str(IFLA_IFNAME, name)
            .attr(IFLA_MTU, &mtu.to_ne_bytes());
        m.begin(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "veth");
        m.begin(IFLA_INFO_DATA)
            .begin(VETH_INFO_PEER)
            .raw(&ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, peer_name)
            .attr(IFLA_MTU, &mtu.to_ne_bytes())
            .attr(IFLA_NET_NS_FD, &(peer_netns as u32).to_ne_bytes());
        m.end().end().end();
        self.request(m).map(|_| ())
    }

    /// Deletes a link by name; false if there was none.
    pub fn del_link(&mut self, name: &str) -> io::Result<bool> {
        let mut m = Message::new(RTM_DELLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.request(m) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The link called `name`, if any.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = Message::new(RTM_GETLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.request(m) {
            Ok(msgs) => Ok(msgs.iter().find_map(|(_, body)| parse_link(body))),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let m = Message::new(RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(0, 0, 0));
        Ok(self
            .request(m)?
            .iter()
            .filter_map(|(_, b)| parse_link(b))
            .collect())
    }

    /// Sets a link's MAC address (`ip link set dev X address M`).
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = Message::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        m.attr(IFLA_ADDRESS, &mac);
        self.request(m).map(|_| ())
    }

    /// Brings a link up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let m = Message::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, IFF_UP, IFF_UP));
        self.request(m).map(|_| ())
    }

    /// Adds an IPv4 address with its prefix length to a link.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut fixed = [0u8; 8];
        fixed[0] = libc::AF_INET as u8;
        fixed[1] = prefix_len;
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut m = Message::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed);
        m.attr(IFA_LOCAL, &ip.octets())
            .attr(IFA_ADDRESS, &ip.octets());
        self.request(m).map(|_| ())
    }

    /// The IPv4 addresses of a link.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut fixed = [0u8; 8];
        fixed[0] = libc::AF_INET as u8;
        let m = Message::new(RTM_GETADDR, NLM_F_DUMP, &fixed);
        let mut out = Vec::new();
        for (_, body) in self.request(m)? {
            if body.len() < 8 || u32::from_ne_bytes(body[4..8].try_into().unwrap()) != index {
                continue;
            }
            let ip = attrs(&body, 8)
                .into_iter()
                .find(|(t, _)| *t == IFA_LOCAL)
                .and_then(|(_, d)| ipv4(d));
            if let Some(ip) = ip {
                out.push((ip, body[1]));
            }
        }
        Ok(out)
    }

    /// Adds a route in the main table: `dst/len` via `gateway` (if any) out
    /// of link `oif`, with `scope`.
    pub fn add_route(
        &mut self,
        dst: Ipv4Addr,
        len: u8,
        gateway: Option<Ipv4Addr>,
        oif: u32,
        scope: u8,
    ) -> io::Result<()> {
        let fixed = [
            libc::AF_INET as u8,
            len,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            scope,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let mut m = Message::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed);
        if len > 0 {
            m.attr(RTA_DST, &dst.octets());
        }
        if let Some(gw) = gateway {
            m.attr(RTA_GATEWAY, &gw.octets());
        }
        m.attr(RTA_OIF, &oif.to_ne_bytes());
        self.request(m).map(|_| ())
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let fixed = [libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let m = Message::new(RTM_GETROUTE, NLM_F_DUMP, &fixed);
        let mut out = Vec::new();
        for (_, body) in self.request(m)? {
            if body.len() < 12 {
                continue;
            }
            let mut table = u32::from(body[4]);
            let mut route = Route {
                dst: (Ipv4Addr::UNSPECIFIED, body[1]),
                gateway: None,
                oif: None,
                scope: body[6],
            };
            for (ty, data) in attrs(&body, 12) {
                match ty {
                    RTA_DST => route.dst.0 = ipv4(data).unwrap_or(Ipv4Addr::UNSPECIFIED),
                    RTA_GATEWAY => route.gateway = ipv4(data),
                    RTA_OIF => route.oif = data.try_into().ok().map(u32::from_ne_bytes),
                    RTA_TABLE => table = data.try_into().map(u32::from_ne_bytes).unwrap_or(table),
                    _ => {}
                }
            }
            if table == u32::from(RT_TABLE_MAIN) {
                out.push(route);
            }
        }
        Ok(out)
    }
}

fn parse_link(body: &[u8]) -> Option<Link> {
    if body.len() < 16 {
        return None;
    }
    let index = u32::from_ne_bytes(body[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(body[8..12].try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: flags & IFF_UP != 0,
        peer: None,
    };
    let mut netnsid = None;
    for (ty, data) in attrs(body, 16) {
        match ty {
            IFLA_IFNAME => {
                link.name = String::from_utf8_lossy(data.split(|b| *b == 0).next()?).into_owned()
            }
            IFLA_ADDRESS => link.mac = data.try_into().ok(),
            IFLA_MTU => link.mtu = data.try_into().ok().map(u32::from_ne_bytes),
            IFLA_LINK => {
                link.peer = data.try_into().ok().map(|b| LinkPeer {
                    index: u32::from_ne_bytes(b),
                    netnsid: None,
                })
            }
            IFLA_LINK_NETNSID => netnsid = data.try_into().ok().map(i32::from_ne_bytes),
            _ => {}
        }
    }
    if let Some(peer) = &mut link.peer {
        peer.netnsid = netnsid;
    }
    Some(link)
}

/// Runs `f` with the calling code in the network namespace at `path`
/// (a bind mount such as /var/run/netns/NAME, or /proc/PID/ns/net): on a
/// thread of its own, since `setns(2)` moves only the calling thread.
pub fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns =
        File::open(path).map_err(|e| io::Error::new(e.kind(), format!("netns {path}: {e}")))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: `ns` is an open namespace file; setns only
                // changes this (short-lived) thread's network namespace.
                cvt(unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) })
                    .map_err(|e| io::Error::new(e.kind(), format!("setns {path}: {e}")))?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}
