//! An rtnetlink client (rtnetlink(7)): the link, address and route
//! requests the CNI plugin and podswitchd need, and [`in_netns`] to run
//! them inside a pod's network namespace.
//!
//! The messages are the rust-netlink project's (`netlink-packet-route`
//! builds and parses them, `netlink-sys` is the socket): a well-kept
//! description of rtnetlink's structures and attributes rather than our
//! own byte offsets. What stays here is the request and answer loop
//! (acknowledgement, multi-part dumps, the kernel's errno as an
//! `io::Error`) and the few shapes podswitch asks for. The crates are
//! synchronous (no async runtime), as a CNI plugin that runs once per pod
//! wants.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::fd::{cvt, set_buffer, Buffer};

/// Route scope: anywhere (routes via a gateway).
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// Route scope: on the link (no gateway).
pub const RT_SCOPE_LINK: u8 = 253;

/// The largest IPv4 GSO and GRO packet podswitch gives both ends of a
/// pod's veth (`IFLA_GSO_IPV4_MAX_SIZE`, `IFLA_GRO_IPV4_MAX_SIZE`: BIG
/// TCP, Linux 6.3): 192 KiB. The pod's TCP then hands over super-frames
/// three times as long as 64 KiB, which podswitch reads, switches and
/// writes whole (its super-frame buffers are sized for this); the IPv4
/// total length of such a packet is 0 (the kernel's `iph_set_totlen`).
pub const POD_GSO_IPV4_MAX_SIZE: u32 = 196_608;

/// How long the kernel may take to answer before a request fails (it
/// answers rtnetlink synchronously: this guards against a lost answer).
const ANSWER_TIMEOUT_MS: libc::c_int = 5000;

/// Receives the next datagram of an answer on the non-blocking netlink
/// `socket` into `buf`, waiting at most [`ANSWER_TIMEOUT_MS`] for it: a
/// lost answer is an error after a while rather than a hung caller.
pub(crate) fn receive(socket: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut pfd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = cvt(unsafe { libc::poll(&mut pfd, 1, ANSWER_TIMEOUT_MS) })?;
        if ready == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "netlink: no answer",
            ));
        }
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => return Ok(n),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

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
    /// The largest IPv4 GSO packet it takes (`gso_ipv4_max_size`, Linux
    /// 6.3; absent on older kernels).
    pub gso_ipv4_max_size: Option<u32>,
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

impl Link {
    fn from_message(message: &LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: message.header.flags.contains(LinkFlags::Up),
            gso_ipv4_max_size: None,
            peer: None,
        };
        let mut netnsid = None;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Address(mac) => link.mac = mac.as_slice().try_into().ok(),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Link(index) => {
                    link.peer = Some(LinkPeer {
                        index: *index,
                        netnsid: None,
                    })
                }
                LinkAttribute::LinkNetNsId(id) => netnsid = Some(*id),
                LinkAttribute::GsoIpv4MaxSize(size) => link.gso_ipv4_max_size = Some(*size),
                _ => {}
            }
        }
        if let Some(peer) = &mut link.peer {
            peer.netnsid = netnsid;
        }
        link
    }
}

fn invalid_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}"))
}

/// A link message naming a link (by name or, with `index`, by number).
fn link_message(name: Option<&str>, index: u32) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    if let Some(name) = name {
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
    }
    message
}

/// A NETLINK_ROUTE socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    answer: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Non-blocking, waited on with poll: a lost answer is an error
        // after a while rather than a hung CNI plugin.
        socket.set_non_blocking(true)?;
        Ok(Netlink {
            socket,
            seq: 1,
            // A dump's part fits in a page or two; 64 KiB holds any.
            answer: vec![0; 64 * 1024],
        })
    }

    /// Sends a request and collects the messages of the answer (for a
    /// dump, every part) until the kernel's acknowledgement, the end of
    /// the dump, or its error (the errno it carries).
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let n = receive(&self.socket, &mut self.answer)?;
            // One datagram holds one or more messages, each aligned to 4.
            let mut at = 0;
            while at < n {
                let bytes = &self.answer[at..n];
                // The checked header is at least 16 bytes long.
                let header = NetlinkBuffer::new_checked(bytes).map_err(invalid_data)?;
                let (len, answer_seq) = (header.length() as usize, header.sequence_number());
                at += (len + 3) & !3;
                // An earlier request's answer (one that timed out) is not
                // this one's, and is not read.
                if answer_seq != seq {
                    continue;
                }
                let answer = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                    Ok(answer) => answer,
                    // A part of a dump the crate cannot read (a kernel newer
                    // than its description of some attribute) is left out,
                    // as `ip` passes over what it does not know; the answer
                    // to a single request must be read.
                    Err(_) if dump => continue,
                    Err(e) => return Err(invalid_data(e)),
                };
                match answer.payload {
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(out),
                            Some(_) => Err(error.to_io()),
                        }
                    }
                    NetlinkPayload::Done(done) if done.code != 0 => {
                        let errno = i32::try_from(done.code.unsigned_abs()).unwrap_or(libc::EIO);
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(message) => out.push(message),
                    NetlinkPayload::Overrun(_) => {
                        return Err(io::Error::other(
                            "netlink: the answer overran the socket's buffer",
                        ))
                    }
                    NetlinkPayload::Noop => {}
                    // The enum is non-exhaustive: anything newer says nothing
                    // about this request's outcome.
                    _ => {}
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
        let mut peer = link_message(Some(peer_name), 0);
        peer.attributes.push(LinkAttribute::Mtu(mtu));
        peer.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut link = link_message(Some(name), 0);
        link.attributes.push(LinkAttribute::Mtu(mtu));
        // The kind before its data: the crate reads the data by the kind
        // it has already seen (the kernel takes them in any order).
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes a link by name; false if there was none.
    pub fn del_link(&mut self, name: &str) -> io::Result<bool> {
        let link = link_message(Some(name), 0);
        match self.request(RouteNetlinkMessage::DelLink(link), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The link called `name`, if any.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let link = link_message(Some(name), 0);
        match self.request(RouteNetlinkMessage::GetLink(link), NLM_F_ACK) {
            Ok(answer) => Ok(answer.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answer = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answer
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })
            .collect())
    }

    /// Sets a link's MAC address (`ip link set dev X address M`).
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut link = link_message(None, index);
        link.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(RouteNetlinkMessage::NewLink(link), NLM_F_ACK)
            .map(drop)
    }

    /// Sets the largest IPv4 GSO and GRO packet of a link (BIG TCP above
    /// 65536, Linux 6.3; older kernels ignore both attributes, as rtnetlink
    /// ignores any it does not know). The kernel refuses a size above
    /// what the device can segment (`tso_max_size`).
    pub fn set_gso_ipv4_max_size(&mut self, index: u32, size: u32) -> io::Result<()> {
        let mut link = link_message(None, index);
        link.attributes.push(LinkAttribute::GsoIpv4MaxSize(size));
        link.attributes.push(LinkAttribute::GroIpv4MaxSize(size));
        self.request(RouteNetlinkMessage::NewLink(link), NLM_F_ACK)
            .map(drop)
    }

    /// Brings a link up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut link = link_message(None, index);
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::NewLink(link), NLM_F_ACK)
            .map(drop)
    }

    /// Adds an IPv4 address with its prefix length to a link.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut address = AddressMessage::default();
        address.header.family = AddressFamily::Inet;
        address.header.prefix_len = prefix_len;
        address.header.index = index;
        address
            .attributes
            .push(AddressAttribute::Local(IpAddr::V4(ip)));
        address
            .attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        self.request(
            RouteNetlinkMessage::NewAddress(address),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// The IPv4 addresses of a link.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut request = AddressMessage::default();
        request.header.family = AddressFamily::Inet;
        // A dump is of every link's addresses (the kernel filters only
        // with strict checking on): this one's are picked out here.
        let answer = self.request(RouteNetlinkMessage::GetAddress(request), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for message in &answer {
            let RouteNetlinkMessage::NewAddress(address) = message else {
                continue;
            };
            if address.header.index != index {
                continue;
            }
            let local = address.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local {
                out.push((ip, address.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Adds a route in the main table: `dst/len` via `gateway` (if any) out
    /// of link `oif`, with `scope`, sending from `source` (if any: `src`,
    /// else the kernel picks the link's address).
    pub fn add_route(
        &mut self,
        dst: Ipv4Addr,
        len: u8,
        gateway: Option<Ipv4Addr>,
        oif: u32,
        scope: u8,
        source: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        let mut route = route_message(dst, len, oif);
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::from(scope);
        route.header.kind = RouteType::Unicast;
        if let Some(gateway) = gateway {
            route
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        }
        if let Some(source) = source {
            route
                .attributes
                .push(RouteAttribute::PrefSource(RouteAddress::Inet(source)));
        }
        self.request(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes the main table's route to `dst/len` out of link `oif`;
    /// false if there was none.
    pub fn del_route(&mut self, dst: Ipv4Addr, len: u8, oif: u32) -> io::Result<bool> {
        // Scope "nowhere" matches a route of any scope (fib_table_delete).
        let mut route = route_message(dst, len, oif);
        route.header.scope = RouteScope::NoWhere;
        match self.request(RouteNetlinkMessage::DelRoute(route), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let answer = self.request(RouteNetlinkMessage::GetRoute(request), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for message in &answer {
            let RouteNetlinkMessage::NewRoute(message) = message else {
                continue;
            };
            // RTA_TABLE holds tables above 255; the header's byte, the rest.
            let mut table = u32::from(message.header.table);
            let mut route = Route {
                dst: (
                    Ipv4Addr::UNSPECIFIED,
                    message.header.destination_prefix_length,
                ),
                gateway: None,
                oif: None,
                scope: u8::from(message.header.scope),
            };
            for attribute in &message.attributes {
                match attribute {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => route.dst.0 = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(*ip),
                    RouteAttribute::Oif(index) => route.oif = Some(*index),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if table == u32::from(RouteHeader::RT_TABLE_MAIN) {
                out.push(route);
            }
        }
        Ok(out)
    }
}

/// A main-table IPv4 route message to `dst/len` out of link `oif`, the
/// part a route's addition and deletion share.
fn route_message(dst: Ipv4Addr, len: u8, oif: u32) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.destination_prefix_length = len;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    if len > 0 {
        route
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
    }
    route.attributes.push(RouteAttribute::Oif(oif));
    route
}

/// A link change a [`LinkWatch`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// A link was deleted, or moved out of this namespace (rtnetlink says
    /// `RTM_DELLINK` for both; a port leaving a bridge, which rtnetlink
    /// also says with an `RTM_DELLINK` of the bridge family, is not
    /// reported).
    Deleted {
        /// Its interface index.
        index: u32,
        /// Its name, if the message gave one.
        name: String,
    },
    /// The kernel dropped notifications: the socket's queue overflowed
    /// (`ENOBUFS`). What changed meanwhile is unknown; look again.
    Lost,
}

/// A subscription to the link changes of the calling thread's network
/// namespace (rtnetlink's `RTNLGRP_LINK` group, as `ip monitor link`).
pub struct LinkWatch {
    socket: Socket,
    /// An eventfd that [`LinkWatchWaker::wake`] makes readable for good.
    wake: Arc<OwnedFd>,
    buffer: Vec<u8>,
}

/// Ends the [`LinkWatch::wait`] another thread is in, and every later
/// one at once: a thread that waits with no timeout (and so no wake-up
/// while nothing changes) is stopped with it.
#[derive(Debug, Clone)]
pub struct LinkWatchWaker(Arc<OwnedFd>);

impl LinkWatchWaker {
    /// Wakes the watch's waits, now and from now on.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: an eventfd takes an 8-byte counter increment from a
        // buffer that lives for the call. An error (EAGAIN once the
        // counter is full) leaves it readable, which is all a wake needs.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl std::fmt::Debug for LinkWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWatch").finish_non_exhaustive()
    }
}

impl LinkWatch {
    /// The receive queue: a burst of link changes (fifty pods deleted at
    /// once is a few hundred messages of about 1.5 KB) fits in it, and an
    /// overflow is reported, never silent ([`LinkChange::Lost`]).
    const QUEUE_BYTES: libc::c_int = 4 << 20;

    /// Subscribes the calling thread's namespace's link changes.
    pub fn open() -> io::Result<LinkWatch> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_LINK)?;
        socket.set_non_blocking(true)?;
        // Best effort: a smaller queue still reports its overflows.
        let _ = set_buffer(socket.as_fd(), Buffer::Receive, Self::QUEUE_BYTES);
        // SAFETY: eventfd(2) takes no pointers; a non-negative return is
        // a new descriptor that nothing else owns.
        let wake = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `wake` was just returned by eventfd(2), owned by no one.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
        Ok(LinkWatch {
            socket,
            wake,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// What ends this watch's waits from another thread.
    pub fn waker(&self) -> LinkWatchWaker {
        LinkWatchWaker(Arc::clone(&self.wake))
    }

    /// Waits for link changes, for at most `timeout` if given, then
    /// returns the deletions among all that came (none if the time passed
    /// first); `None` once the watch is woken ([`LinkWatchWaker`]).
    pub fn wait(
        &mut self,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<Option<Vec<LinkChange>>> {
        let mut pfds = [
            libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let millis = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX)
        });
        // SAFETY: two valid pollfds, for the duration of the call.
        match cvt(unsafe { libc::poll(pfds.as_mut_ptr(), 2, millis) }) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some(Vec::new())),
            Err(e) => return Err(e),
        }
        if pfds[1].revents != 0 {
            return Ok(None);
        }
        let mut changes = Vec::new();
        loop {
            let n = match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(changes)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // netlink(7): the queue overflowed and messages were lost;
                // the socket goes on with what comes next.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    changes.push(LinkChange::Lost);
                    continue;
                }
                Err(e) => return Err(e),
            };
            changes.extend(deleted_links(&self.buffer[..n]));
        }
    }
}

/// The links a datagram of link notifications says were deleted. A
/// message the crate cannot read (a newer kernel's attribute) is read for
/// its header alone: the index is what matters.
fn deleted_links(datagram: &[u8]) -> Vec<LinkChange> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        let bytes = &datagram[at..];
        let Ok(header) = NetlinkBuffer::new_checked(bytes) else {
            break;
        };
        let len = header.length() as usize;
        at += (len + 3) & !3;
        // A link's own RTM_DELLINK has family AF_UNSPEC; the bridge sends
        // one of family AF_BRIDGE when a port merely leaves it
        // (br_ifinfo_notify), and the link stays.
        if header.message_type() != libc::RTM_DELLINK
            || header.payload().first() != Some(&(libc::AF_UNSPEC as u8))
        {
            continue;
        }
        let change = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            Ok(NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)),
                ..
            }) => {
                let link = Link::from_message(&link);
                LinkChange::Deleted {
                    index: link.index,
                    name: link.name,
                }
            }
            // struct ifinfomsg after the 16-byte header: family, pad,
            // type (2 bytes), then the index (rtnetlink(7)).
            _ => match header.payload().get(4..8) {
                Some(index) => LinkChange::Deleted {
                    index: u32::from_ne_bytes(index.try_into().expect("four bytes")),
                    name: String::new(),
                },
                None => continue,
            },
        };
        out.push(change);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::{deleted_links, LinkChange};

    /// A netlink message: header (length, type, flags, sequence, port)
    /// and `payload`, padded to 4 bytes.
    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::with_capacity(len + 3);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        m.resize((len + 3) & !3, 0);
        m
    }

    /// `struct ifinfomsg` (16 bytes) of `family` and `index`, then an
    /// IFLA_IFNAME attribute naming `name`.
    fn ifinfo(family: u8, index: u32, name: &str) -> Vec<u8> {
        let mut p = vec![family, 0, 1, 0];
        p.extend_from_slice(&index.to_ne_bytes());
        p.extend_from_slice(&[0; 8]);
        let attr_len = 4 + name.len() + 1;
        p.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        p.extend_from_slice(&3u16.to_ne_bytes()); // IFLA_IFNAME
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.resize((p.len() + 3) & !3, 0);
        p
    }

    #[test]
    fn deletions_are_read_from_a_datagram_of_several_messages() {
        let mut datagram = message(libc::RTM_NEWLINK, &ifinfo(0, 7, "made0"));
        datagram.extend(message(libc::RTM_DELLINK, &ifinfo(0, 9, "gone0")));
        // A port leaving a bridge: the bridge family, not a deletion.
        datagram.extend(message(libc::RTM_DELLINK, &ifinfo(7, 9, "gone0")));
        // An ifinfomsg too short to hold an index: passed over.
        datagram.extend(message(libc::RTM_DELLINK, &[0, 0, 1]));
        assert_eq!(
            deleted_links(&datagram),
            [LinkChange::Deleted {
                index: 9,
                name: "gone0".into()
            }]
        );
    }

    /// No input makes the reader panic or loop: random bytes, and
    /// headers whose length field runs short, past the end, or to zero.
    #[test]
    fn any_bytes_are_read_without_a_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 96) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 6 && next() % 2 == 0 {
                // A plausible header, so that the message parsers run.
                let claimed = (next() % 120) as u32;
                bytes[..4].copy_from_slice(&claimed.to_ne_bytes());
                bytes[4..6].copy_from_slice(&libc::RTM_DELLINK.to_ne_bytes());
                if len > 16 {
                    bytes[16] = 0;
                }
            }
            let _ = deleted_links(&bytes);
        }
    }
}
