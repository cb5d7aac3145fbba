//! Route sets and a random source shared by the table benchmarks.

use std::net::Ipv4Addr;

use podswitch_engine::fib::{NextHop, Prefix};
use podswitch_engine::port::PortId;

/// xorshift64: the same sequence every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` realistic routes in 10.0.0.0/8: per node a /24, its four /26
/// Calico blocks and 45 pods as /32s (50 routes a node).
pub(crate) fn routes(n: usize) -> Vec<(Prefix, NextHop)> {
    let mut rng = Rng(0x5eed);
    let nodes = (n / 50).max(1);
    let mut node_nets = std::collections::BTreeSet::new();
    while node_nets.len() < nodes {
        node_nets.insert(0x0a00_0000 | (rng.next() as u32 & 0x00ff_ff00));
    }
    let mut out = Vec::with_capacity(n);
    for (i, net) in node_nets.into_iter().enumerate() {
        let peer = NextHop::Peer(podswitch_engine::peer::PeerId(i as u16));
        out.push((Prefix::new_truncating(Ipv4Addr::from(net), 24), peer));
        for block in 0..4u32 {
            out.push((
                Prefix::new_truncating(Ipv4Addr::from(net | block << 6), 26),
                peer,
            ));
        }
        let mut hosts = std::collections::BTreeSet::new();
        while hosts.len() < 45 {
            hosts.insert(rng.next() as u32 & 0xff);
        }
        for host in hosts {
            out.push((
                Prefix::new_truncating(Ipv4Addr::from(net | host), 32),
                NextHop::Local(PortId(host as u16)),
            ));
        }
    }
    out
}
