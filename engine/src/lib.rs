//! # podswitch-engine: from "a batch arrived" to "batches leave"
//!
//! The data path of podswitch. Read it top-down:
//!
//! 1. **Ports** ([`port`]) move batches of up to 32 frames. Each frame sits
//!    in a [`packet::PacketBuf`] from a preallocated [`packet::PacketPool`],
//!    with headroom for tunnel headers.
//! 2. **Classify** ([`pipeline`]): by the port it came from (pod, underlay,
//!    host) and the frame's EtherType: ARP, IPv4 to route, other L2 to
//!    switch; underlay frames are decapsulated first
//!    (`podswitch_encap::Decapsulator`) and must come from a known peer.
//! 3. **Tables** ([`tables`]), read without locks from one published
//!    [`tables::Snapshot`]: the [`fib`] (longest-prefix match, a copy-on-write stride-8 trie),
//!    [`peer`]s, ports and neighbours; plus the [`fdb`], which the data path
//!    itself learns into with atomics.
//! 4. **Rewrite or encapsulate**: TTL decrement with an incremental
//!    checksum, MAC rewrite, or a tunnel header pushed from the peer's
//!    prebuilt template; ICMP errors for expired TTLs and oversized DF
//!    packets.
//! 5. **Transmit**: frames are sorted into per-port output batches.
//!
//! [`capture::Capture`] wraps any port and writes its traffic to a pcap
//! file. Every frame either leaves or is dropped with a [`drop::DropReason`],
//! counted in [`stats`]. [`pipeline::Pipeline::trace`] runs one frame
//! through the same code and returns every decision ([`trace`]).
//!
//! The core is deterministic: it takes the time as an argument and owns no
//! threads or sockets, so scenario tests drive it in-process. Around it,
//! for podswitchd: [`kernel_port`] (AF_XDP, AF_PACKET, TAP, TUN and the
//! socket underlay behind the same [`port::Port`] trait), [`offload`]
//! (finishing the checksums and segmentation a veth leaves undone),
//! [`worker`] (the polling thread) and [`sys`], the one module allowed
//! `unsafe`, each block a system call with its `// SAFETY:` comment.

// Only `sys` (system calls) may use `unsafe`; it allows it explicitly.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod capture;
pub mod config;
pub mod datapath;
pub mod drop;
pub mod egress_limit;
pub mod fdb;
pub mod fib;
pub mod host_connections;
pub mod ids;
pub mod ipmap;
pub mod kernel_port;
pub mod offload;
pub mod packet;
pub mod peer;
pub mod pipeline;
pub mod port;
pub mod stats;
pub mod sys;
pub mod tables;
pub mod trace;
pub mod worker;

pub use podswitch_encap as encap;
