//! Finding a neighbour's MAC on an interface: host-gw and direct-routing
//! next hops are written with the peer's own underlay MAC, so a peer added
//! without one needs it found. The kernel's ARP table answers first
//! (`/proc/net/arp`); failing that, ARP itself (RFC 826).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use podswitch_encap::arp::{ArpOperation, ArpRepr};
use podswitch_encap::ethernet::{EtherType, EthernetRepr, HEADER_LEN as ETH};
use podswitch_encap::MacAddr;

use crate::sys::mmsg::{Received, RecvBuffers, SendBuffers, MAX_PARTS};
use crate::sys::packet_socket::{PacketOptions, PacketSocket, ETH_P_ARP};
use crate::sys::{netdev, wait_readable};

/// How many ARP requests are sent, a second apart, before giving up.
const ARP_ATTEMPTS: usize = 3;

/// The MAC of `ip` on `interface`: the kernel's complete ARP entry, or
/// the answer to an ARP request.
pub fn resolve_neighbour(interface: &str, ip: Ipv4Addr) -> io::Result<MacAddr> {
    match kernel_neighbour(ip) {
        Some(mac) => Ok(mac),
        None => arp(interface, ip),
    }
}

/// The kernel's ARP entry for `ip`, if complete (/proc/net/arp).
fn kernel_neighbour(ip: Ipv4Addr) -> Option<MacAddr> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // IP address, HW type, Flags (0x2 = complete), HW address, ...
        let complete = f.get(2).is_some_and(|fl| *fl == "0x2" || *fl == "0x6");
        (f.first()? == &ip.to_string().as_str() && complete)
            .then(|| f.get(3)?.parse().ok())
            .flatten()
    })
}

struct OneFrame<'a>(&'a [u8]);

impl SendBuffers for OneFrame<'_> {
    fn count(&self) -> usize {
        1
    }
    fn parts(&self, _: usize) -> [&[u8]; MAX_PARTS] {
        [self.0, &[], &[]]
    }
    fn destination(&self, _: usize) -> Option<std::net::SocketAddrV4> {
        None
    }
}

struct OneBuffer<'a>(&'a mut [u8]);

impl RecvBuffers for OneBuffer<'_> {
    fn count(&self) -> usize {
        1
    }
    fn parts(&mut self, _: usize) -> [&mut [u8]; MAX_PARTS] {
        [&mut *self.0, &mut [], &mut []]
    }
}

/// Asks for `ip`'s MAC with ARP on `interface` (RFC 826), up to
/// [`ARP_ATTEMPTS`] requests a second apart.
fn arp(interface: &str, ip: Ipv4Addr) -> io::Result<MacAddr> {
    let ifindex = netdev::ifindex(interface)?;
    let our_mac = MacAddr(netdev::mac(interface)?);
    let our_ip = netdev::ipv4(interface)?.map_or(Ipv4Addr::UNSPECIFIED, |(a, _)| a);
    let sock = PacketSocket::open(
        ifindex,
        PacketOptions {
            protocol: ETH_P_ARP,
            vnet_hdr: false,
            rcvbuf: 1 << 16,
        },
    )?;
    let mut request = [0u8; ETH + 28];
    EthernetRepr {
        src: our_mac,
        dst: MacAddr::BROADCAST,
        ethertype: EtherType::Arp,
    }
    .emit(&mut request);
    ArpRepr {
        operation: ArpOperation::Request,
        sender_mac: our_mac,
        sender_ip: our_ip,
        target_mac: MacAddr::ZERO,
        target_ip: ip,
    }
    .emit(&mut request[ETH..]);
    let mut buf = [0u8; 128];
    let mut meta = [Received::default()];
    for _ in 0..ARP_ATTEMPTS {
        sock.send_batch(&OneFrame(&request))?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Woken by the reply (or any other ARP frame), not by a timer.
            if !wait_readable(sock.as_fd(), left)?
                || sock.recv_batch(&mut OneBuffer(&mut buf), &mut meta)? == 0
            {
                continue;
            }
            let len = meta[0].len.min(buf.len());
            if let Ok(reply) = ArpRepr::parse(buf.get(ETH..len).unwrap_or(&[])) {
                if reply.operation == ArpOperation::Reply && reply.sender_ip == ip {
                    return Ok(reply.sender_mac);
                }
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no ARP reply"))
}
