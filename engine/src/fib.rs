//! The FIB: IPv4 longest-prefix match, what `ip route` shows.
//!
//! # Contract
//! A [`Fib`] is immutable once built. The control side keeps the routes in
//! a [`FibBuilder`], builds a new `Fib` for each change (or batch of
//! changes) and publishes it in a [`crate::tables::Snapshot`]; data-path
//! readers hold an `Arc` to the snapshot they loaded, so a `Fib` is freed
//! when the last reader that saw it lets go. Readers never lock.
//!
//! # Layout: DIR-16-8-8
//! The lookup table is three levels of direct-indexed arrays (Gupta,
//! Lin & McKeown's DIR-24-8 with a smaller first level, as in DPDK's
//! `rte_lpm` but 16-8-8 so that the first level is 256 KiB, not 64 MiB):
//!
//! - level 1: 65 536 entries indexed by the top 16 bits of the address;
//! - level 2 and 3: 256-entry chunks indexed by the next byte.
//!
//! An entry is either a next-hop index or, with [`CHUNK_FLAG`] set, the
//! index of the chunk that resolves the next byte. Shorter prefixes are
//! pushed down into the chunks longer prefixes create (leaf pushing), so a
//! lookup is at most three dependent loads and never backtracks. Routes are
//! inserted shortest first when the table is built, which makes leaf pushing
//! a plain copy of the parent entry into a new chunk.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::peer::PeerId;
use crate::port::PortId;

/// An IPv4 prefix with its host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: u32,
    len: u8,
}

/// Why a prefix is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixError {
    /// The text is not `a.b.c.d/len`.
    Syntax(String),
    /// The length exceeds 32.
    Length(u8),
    /// Bits are set past the prefix length (`10.244.1.5/24`).
    HostBits(Ipv4Addr, u8),
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixError::Syntax(s) => write!(f, "{s:?} is not a prefix like 10.244.1.0/24"),
            PrefixError::Length(l) => write!(f, "prefix length {l} is above 32"),
            PrefixError::HostBits(a, l) => {
                let p = Prefix::new_truncating(*a, *l);
                write!(f, "{a}/{l} has host bits set; did you mean {p}?")
            }
        }
    }
}

impl std::error::Error for PrefixError {}

impl Prefix {
    /// A prefix; host bits must be zero.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Prefix, PrefixError> {
        if len > 32 {
            return Err(PrefixError::Length(len));
        }
        let p = Prefix::new_truncating(addr, len);
        if p.addr != u32::from(addr) {
            return Err(PrefixError::HostBits(addr, len));
        }
        Ok(p)
    }

    /// A prefix, clearing host bits. Lengths above 32 count as 32.
    pub fn new_truncating(addr: Ipv4Addr, len: u8) -> Prefix {
        let len = len.min(32);
        Prefix {
            addr: u32::from(addr) & mask(len),
            len,
        }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for 0.0.0.0/0.
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// True if `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.addr
    }

    /// True if `other` is inside (or equal).
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && other.addr & mask(self.len) == self.addr
    }

    /// The n-th address of the prefix (n = 1 is a bridge's usual gateway).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.addr.wrapping_add(n))
    }
}

const fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (
                a,
                l.parse::<u8>()
                    .map_err(|_| PrefixError::Syntax(s.to_string()))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| PrefixError::Syntax(s.to_string()))?;
        Prefix::new(addr, len)
    }
}

/// Where a route sends packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// A local pod's port (`10.244.1.2 dev veth...` / Calico's `/32 dev cali...`).
    Local(PortId),
    /// A remote node, through its tunnel (`10.244.2.0/24 via 10.244.2.0 dev
    /// flannel.1 onlink`, `block/26 via node dev tunl0 onlink`).
    Peer(PeerId),
    /// A remote node on the same L2 underlay, without encapsulation
    /// (flannel host-gw: `10.244.2.0/24 via <node IP>`).
    Direct(PeerId),
    /// The node itself, through its host port.
    Host,
    /// Drop (Calico's `blackhole <block>/26`).
    Blackhole,
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Local(p) => write!(f, "local port {p}"),
            NextHop::Peer(p) => write!(f, "peer {p} (tunnel)"),
            NextHop::Direct(p) => write!(f, "peer {p} (direct)"),
            NextHop::Host => f.write_str("host"),
            NextHop::Blackhole => f.write_str("blackhole"),
        }
    }
}

/// Set in an entry that points to a chunk.
pub const CHUNK_FLAG: u32 = 1 << 31;
/// An entry with no route.
const NO_ROUTE: u32 = 0;

/// The routes, as the control side edits them.
#[derive(Debug, Clone, Default)]
pub struct FibBuilder {
    routes: BTreeMap<Prefix, NextHop>,
}

impl FibBuilder {
    /// An empty route set.
    pub fn new() -> Self {
        FibBuilder::default()
    }

    /// Adds or replaces a route; returns the next hop it replaced.
    pub fn insert(&mut self, prefix: Prefix, next_hop: NextHop) -> Option<NextHop> {
        self.routes.insert(prefix, next_hop)
    }

    /// Removes a route; returns its next hop.
    pub fn remove(&mut self, prefix: &Prefix) -> Option<NextHop> {
        self.routes.remove(prefix)
    }

    /// Removes every route whose next hop matches.
    pub fn retain(&mut self, keep: impl FnMut(&Prefix, &mut NextHop) -> bool) {
        self.routes.retain(keep);
    }

    /// The routes, by prefix.
    pub fn routes(&self) -> &BTreeMap<Prefix, NextHop> {
        &self.routes
    }

    /// Builds the lookup table.
    pub fn build(&self) -> Fib {
        let mut fib = Fib {
            level1: vec![NO_ROUTE; 1 << 16].into_boxed_slice(),
            chunks: Vec::new(),
            next_hops: Vec::new(),
            prefixes: Vec::new(),
            routes: self.routes.clone(),
        };
        let mut by_len: Vec<(&Prefix, &NextHop)> = self.routes.iter().collect();
        by_len.sort_by_key(|(p, _)| p.len);
        for (prefix, next_hop) in by_len {
            // Each route gets its own entry value, so a lookup can tell which
            // prefix matched (for `trace`), not only where it goes.
            fib.next_hops.push(*next_hop);
            fib.prefixes.push(*prefix);
            let value = fib.next_hops.len() as u32;
            fib.insert(*prefix, value);
        }
        fib
    }
}

/// An immutable longest-prefix-match table; see the module docs.
#[derive(Debug, Clone)]
pub struct Fib {
    level1: Box<[u32]>,
    chunks: Vec<[u32; 256]>,
    /// Entry value v (1-based) -> next hop `next_hops[v - 1]`.
    next_hops: Vec<NextHop>,
    prefixes: Vec<Prefix>,
    routes: BTreeMap<Prefix, NextHop>,
}

impl Default for Fib {
    fn default() -> Self {
        FibBuilder::new().build()
    }
}

impl Fib {
    fn new_chunk(&mut self, fill: u32) -> u32 {
        self.chunks.push([fill; 256]);
        (self.chunks.len() - 1) as u32 | CHUNK_FLAG
    }

    /// The chunk an entry points to, creating it (filled with the entry's
    /// route: leaf pushing) if the entry is a leaf.
    fn chunk_of(&mut self, entry: u32) -> (u32, bool) {
        if entry & CHUNK_FLAG != 0 {
            (entry, false)
        } else {
            (self.new_chunk(entry), true)
        }
    }

    fn insert(&mut self, prefix: Prefix, value: u32) {
        let addr = prefix.addr;
        let len = prefix.len;
        let top = (addr >> 16) as usize;
        if len <= 16 {
            let span = 1usize << (16 - len);
            self.level1[top..top + span].fill(value);
            return;
        }
        let (l2, created) = self.chunk_of(self.level1[top]);
        if created {
            self.level1[top] = l2;
        }
        let l2 = (l2 & !CHUNK_FLAG) as usize;
        let second = ((addr >> 8) & 0xff) as usize;
        if len <= 24 {
            let span = 1usize << (24 - len);
            self.chunks[l2][second..second + span].fill(value);
            return;
        }
        let (l3, created) = self.chunk_of(self.chunks[l2][second]);
        if created {
            self.chunks[l2][second] = l3;
        }
        let l3 = (l3 & !CHUNK_FLAG) as usize;
        let third = (addr & 0xff) as usize;
        let span = 1usize << (32 - len);
        self.chunks[l3][third..third + span].fill(value);
    }

    #[inline]
    fn entry(&self, ip: u32) -> u32 {
        let mut e = self.level1[(ip >> 16) as usize];
        if e & CHUNK_FLAG != 0 {
            e = self.chunks[(e & !CHUNK_FLAG) as usize][((ip >> 8) & 0xff) as usize];
            if e & CHUNK_FLAG != 0 {
                e = self.chunks[(e & !CHUNK_FLAG) as usize][(ip & 0xff) as usize];
            }
        }
        e
    }

    /// The next hop for `ip`, by longest prefix.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<NextHop> {
        match self.entry(u32::from(ip)) {
            NO_ROUTE => None,
            v => Some(self.next_hops[v as usize - 1]),
        }
    }

    /// The matching route: prefix and next hop.
    pub fn lookup_route(&self, ip: Ipv4Addr) -> Option<(Prefix, NextHop)> {
        match self.entry(u32::from(ip)) {
            NO_ROUTE => None,
            v => Some((
                self.prefixes[v as usize - 1],
                self.next_hops[v as usize - 1],
            )),
        }
    }

    /// The routes, by prefix.
    pub fn routes(&self) -> &BTreeMap<Prefix, NextHop> {
        &self.routes
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True with no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Bytes the lookup structure takes (level 1, chunks, next hops).
    pub fn memory_bytes(&self) -> usize {
        self.level1.len() * 4
            + self.chunks.len() * 256 * 4
            + self.next_hops.len()
                * (core::mem::size_of::<NextHop>() + core::mem::size_of::<Prefix>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A reference LPM: scan every route.
    fn naive(routes: &BTreeMap<Prefix, NextHop>, addr: Ipv4Addr) -> Option<NextHop> {
        routes
            .iter()
            .filter(|(pfx, _)| pfx.contains(addr))
            .max_by_key(|(pfx, _)| pfx.prefix_len())
            .map(|(_, nh)| *nh)
    }

    #[test]
    fn prefix_parsing() {
        assert_eq!(p("10.244.1.0/24").to_string(), "10.244.1.0/24");
        assert_eq!(p("10.244.1.7").prefix_len(), 32);
        assert!(matches!(
            "10.244.1.7/24".parse::<Prefix>(),
            Err(PrefixError::HostBits(..))
        ));
        assert!(matches!(
            "10.244.1.0/33".parse::<Prefix>(),
            Err(PrefixError::Length(33))
        ));
        assert!(matches!(
            "10.244.1/24".parse::<Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
        assert!(p("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(p("10.244.0.0/16").covers(&p("10.244.7.64/26")));
        assert!(!p("10.244.7.64/26").covers(&p("10.244.0.0/16")));
        assert_eq!(p("10.244.1.0/24").nth(1), ip("10.244.1.1"));
    }

    /// The flannel node01 table of the seed plus Calico-style blocks and /32s.
    #[test]
    fn longest_prefix_wins_at_every_level() {
        let mut b = FibBuilder::new();
        b.insert(p("0.0.0.0/0"), NextHop::Host);
        b.insert(p("10.244.0.0/16"), NextHop::Blackhole);
        b.insert(p("10.244.2.0/24"), NextHop::Peer(PeerId(2)));
        b.insert(p("10.244.1.64/26"), NextHop::Blackhole);
        b.insert(p("10.244.1.65/32"), NextHop::Local(PortId(5)));
        b.insert(p("10.244.1.66/32"), NextHop::Local(PortId(6)));
        b.insert(p("10.246.0.0/15"), NextHop::Direct(PeerId(9)));
        let fib = b.build();
        assert_eq!(fib.lookup(ip("8.8.8.8")), Some(NextHop::Host));
        assert_eq!(fib.lookup(ip("10.244.9.9")), Some(NextHop::Blackhole));
        assert_eq!(
            fib.lookup(ip("10.244.2.77")),
            Some(NextHop::Peer(PeerId(2)))
        );
        assert_eq!(
            fib.lookup(ip("10.244.1.65")),
            Some(NextHop::Local(PortId(5)))
        );
        assert_eq!(
            fib.lookup(ip("10.244.1.66")),
            Some(NextHop::Local(PortId(6)))
        );
        assert_eq!(fib.lookup(ip("10.244.1.67")), Some(NextHop::Blackhole));
        assert_eq!(
            fib.lookup(ip("10.244.1.200")),
            Some(NextHop::Blackhole),
            "the /16 pushed into the chunk"
        );
        assert_eq!(
            fib.lookup(ip("10.246.1.1")),
            Some(NextHop::Direct(PeerId(9)))
        );
        assert_eq!(
            fib.lookup_route(ip("10.244.1.67")).unwrap().0,
            p("10.244.1.64/26")
        );
        let empty = FibBuilder::new().build();
        assert_eq!(empty.lookup(ip("10.0.0.1")), None);
    }

    /// Random route sets against the scan-everything reference.
    #[test]
    fn matches_naive_lpm_on_random_tables() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20 {
            let mut b = FibBuilder::new();
            for i in 0..300 {
                let addr = Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff));
                let len = [8u8, 12, 16, 20, 23, 24, 25, 26, 28, 30, 32][next() as usize % 11];
                b.insert(Prefix::new_truncating(addr, len), NextHop::Local(PortId(i)));
            }
            let fib = b.build();
            for _ in 0..3000 {
                let addr = Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff));
                assert_eq!(fib.lookup(addr), naive(b.routes(), addr), "{addr}");
            }
            // Every route's first and last address.
            for pfx in b.routes().keys() {
                let last = Ipv4Addr::from(u32::from(pfx.addr()) | !mask(pfx.prefix_len()));
                assert_eq!(fib.lookup(pfx.addr()), naive(b.routes(), pfx.addr()));
                assert_eq!(fib.lookup(last), naive(b.routes(), last));
            }
        }
    }
}
