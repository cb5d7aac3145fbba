//! # podswitch-encap: the wire formats of a pod network
//!
//! Everything podswitch knows about bytes on the wire, and nothing about
//! ports, tables or sockets. A packet's life in podswitch, as far as this
//! crate is concerned:
//!
//! 1. A pod sends an Ethernet frame. The engine reads its headers through
//!    the zero-copy views here: [`ethernet`] (802.1Q tags skipped), [`arp`],
//!    [`ipv4`] (IHL, options, total length, checksum), [`ipv6`] (fixed
//!    header), [`udp`], [`icmpv4`]. Each view has a checked constructor for
//!    untrusted bytes, which returns a small `Copy` [`WireError`] naming the
//!    layer and the length that was wrong, and never panics.
//! 2. Routing decrements the TTL and patches the header checksum with the
//!    incremental update of RFC 1624 ([`checksum`]).
//! 3. Towards another node, [`tunnel::Tunnel::encapsulate`] writes VXLAN
//!    (RFC 7348, flannel), IPIP (RFC 2003, Calico) or IP-in-UDP (flannel's
//!    `udp` backend) headers into the buffer's headroom ([`FrameBuf`]),
//!    without copying the frame. The outer UDP source port comes from a
//!    [`flow`] hash; the outer ECN follows RFC 6040 ([`ecn`]).
//! 4. From the underlay, [`tunnel::Decapsulator`] validates every outer
//!    header and returns where the inner frame is, or a [`DecapError`] with
//!    one variant per cause, which the engine counts as a drop reason.
//!
//! For people rather than packets: each wire view describes its header
//! field by field ([`describe`]; TCP's in [`tcp`]), [`dissect`] walks a
//! frame through them into any tunnel (what `podswitchctl explain`
//! prints), and [`pcap`] reads and writes capture files.
//!
//! No I/O, no allocation per packet, no `unsafe`.
//!
//! The views are our own rather than etherparse's, because the data path
//! writes headers in place in front of a frame and cannot allocate; the
//! tests use etherparse as the independent parser that checks them, next to
//! Scapy, tshark and the Linux kernel's own vxlan device.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod arp;
pub mod buffer;
pub mod checksum;
pub mod describe;
pub mod dissect;
pub mod ecn;
pub mod error;
pub mod ethernet;
pub mod flow;
pub mod hex;
pub mod icmpv4;
pub mod ipv4;
pub mod ipv6;
pub mod offload;
pub mod pcap;
pub mod tcp;
pub mod tunnel;
pub mod udp;
pub mod vxlan;

pub use buffer::FrameBuf;
pub use error::{Layer, WireError, WireResult};
pub use ethernet::{EtherType, MacAddr};
pub use ipv4::IpProtocol;
pub use tunnel::{
    DecapConfig, DecapError, Decapsulated, Decapsulator, DontFragment, Dscp, EncapError, Inner,
    OuterPath, SourcePort, Ttl, Tunnel, TunnelConfig, TunnelMode,
};
pub use vxlan::Vni;
