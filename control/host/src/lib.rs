//! # podswitch-host: setting up the host around the data path
//!
//! What podswitch does to the node rather than to packets: links,
//! addresses and routes through rtnetlink ([`netlink`]), the connections
//! the node's rules translated ([`conntrack`]), work inside a
//! pod's network namespace ([`netlink::in_netns`]), and flannel's subnet
//! file ([`subnet_file`]), which podswitchd writes and the CNI plugin reads.
//!
//! The CNI plugin, which a container runtime runs once per pod, links this
//! crate and `podswitch-protocol` and nothing of the data path; podswitchd
//! and `podswitchctl lab` use it for the same plumbing. The engine shares
//! its descriptor helpers ([`fd`]).
//!
//! Dependencies: libc; rust-netlink's `netlink-packet-route`,
//! `netlink-packet-core` and `netlink-sys` for rtnetlink's messages and
//! socket (synchronous; no async runtime); podswitch-addr for the
//! prefixes of the subnet file.

#![warn(missing_docs)]

pub mod conntrack;
pub mod fd;
pub mod netlink;
pub mod subnet_file;
