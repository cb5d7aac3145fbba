//! The FIB: IPv4 longest-prefix match, what `ip route` shows.
//!
//! # Contract
//! A [`Fib`] never changes once published. The control side keeps the
//! routes in a [`RouteTable`], which edits its own copy of the lookup table
//! in step with each route change; publishing hands out an `Arc` to that
//! copy in a [`crate::tables::Snapshot`]. The next change copies only the
//! chunks it touches (path copying), so a published `Fib` stays intact for
//! the readers that hold it and shares every other chunk with its
//! successor. Readers never lock; a chunk is freed when the last table that
//! points to it is. A route add or delete costs a few chunk copies
//! (microseconds), not a rebuild of the table: the etcd lease store will
//! churn routes at thousands of nodes, and each change used to rebuild
//! everything (5 ms at 48k routes).
//!
//! # Layout: a multibit trie of stride 8, with leaf pushing
//! Four levels of 256-entry chunks, each indexed by one byte of the
//! address (the 8-8-8-8 trie of Srinivasan & Varghese's controlled prefix
//! expansion; DPDK's `rte_lpm` is the same idea with a 2^24 first level,
//! which no copy-on-write table can afford to copy).
//!
//! An entry is empty, a route, or a chunk for the next byte. A prefix is
//! written into every entry its range covers at the level where it ends
//! (a /20 fills 16 entries of a level-2 chunk); a shorter prefix in the way
//! of a longer one is pushed down into the chunk the longer one creates
//! (leaf pushing), so a lookup is at most four dependent loads and never
//! backtracks. Every route entry carries its prefix, which tells an insert
//! which entries it may overwrite (those holding a shorter prefix) and a
//! delete which entries were its own (they get the next shorter covering
//! route, as in `rte_lpm`'s delete). A chunk left holding one route
//! everywhere collapses back into its parent entry, so churn never grows
//! the table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::ids::{PeerId, PortId};
// The prefix is podswitch's vocabulary, shared with the control protocol.
pub use podswitch_addr::{mask, Prefix, PrefixError};

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

/// A route as the lookup table stores it: the matched prefix travels with
/// the next hop, for `trace` and for edits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    prefix: Prefix,
    next_hop: NextHop,
}

/// One slot of a chunk.
#[derive(Debug, Clone)]
enum Entry {
    Empty,
    Route(Route),
    Chunk(Arc<Chunk>),
}

type Chunk = [Entry; 256];

/// Levels of the trie; level `l` is indexed by address byte `l` (from the top).
const LEVELS: usize = 4;

/// The index of `addr` in a chunk of `level`.
#[inline]
fn index(addr: u32, level: usize) -> usize {
    ((addr >> (24 - 8 * level)) & 0xff) as usize
}

/// The level whose chunk a prefix of length `len` ends in: /0-/8 in the
/// root, /9-/16 in level 1, and so on.
fn end_level(len: u8) -> usize {
    usize::from(len.max(1) - 1) / 8
}

/// How many entries of its end level a prefix of length `len` covers.
fn span(len: u8) -> usize {
    1 << (8 * (end_level(len) + 1) - usize::from(len))
}

fn chunk_filled(entry: &Entry) -> Chunk {
    std::array::from_fn(|_| entry.clone())
}

impl Entry {
    /// The chunk below this entry, made first (filled with the entry's route:
    /// leaf pushing) if the entry is a leaf.
    fn chunk_mut(&mut self) -> &mut Chunk {
        if !matches!(self, Entry::Chunk(_)) {
            *self = Entry::Chunk(Arc::new(chunk_filled(self)));
        }
        match self {
            Entry::Chunk(c) => Arc::make_mut(c),
            _ => unreachable!("made a chunk above"),
        }
    }

    /// Writes `route` here and below wherever it is the longer prefix.
    fn overwrite(&mut self, route: Route) {
        match self {
            Entry::Empty => *self = Entry::Route(route),
            Entry::Route(r) if r.prefix.prefix_len() <= route.prefix.prefix_len() => {
                *self = Entry::Route(route)
            }
            Entry::Route(_) => {}
            Entry::Chunk(c) => {
                Arc::make_mut(c).iter_mut().for_each(|e| e.overwrite(route));
                self.collapse();
            }
        }
    }

    /// Replaces `prefix`'s entries here and below with `fallback`.
    fn replace(&mut self, prefix: Prefix, fallback: &Entry) {
        match self {
            Entry::Route(r) if r.prefix == prefix => *self = fallback.clone(),
            Entry::Chunk(c) => {
                Arc::make_mut(c)
                    .iter_mut()
                    .for_each(|e| e.replace(prefix, fallback));
                self.collapse();
            }
            _ => {}
        }
    }

    /// Turns a chunk that holds one leaf everywhere back into that leaf.
    fn collapse(&mut self) {
        let Entry::Chunk(c) = self else { return };
        let uniform = match &c[0] {
            Entry::Empty => c.iter().all(|e| matches!(e, Entry::Empty)),
            Entry::Route(first) => c.iter().all(|e| matches!(e, Entry::Route(r) if r == first)),
            Entry::Chunk(_) => false,
        };
        if uniform {
            *self = c[0].clone();
        }
    }

    fn count_chunks(&self) -> usize {
        match self {
            Entry::Chunk(c) => 1 + c.iter().map(Entry::count_chunks).sum::<usize>(),
            _ => 0,
        }
    }
}

/// A longest-prefix-match table; see the module docs. Cloning one copies
/// its root chunk and shares the rest.
#[derive(Debug, Clone)]
pub struct Fib {
    root: Chunk,
    routes: usize,
}

impl Default for Fib {
    fn default() -> Self {
        Fib {
            root: chunk_filled(&Entry::Empty),
            routes: 0,
        }
    }
}

impl Fib {
    /// Writes `route` (a new prefix, or a new next hop for a known one).
    fn set(&mut self, route: Route) {
        let Route { prefix, .. } = route;
        let end = end_level(prefix.prefix_len());
        let mut chunk = &mut self.root;
        for level in 0..end {
            chunk = chunk[index(prefix.bits(), level)].chunk_mut();
        }
        let first = index(prefix.bits(), end);
        for entry in &mut chunk[first..first + span(prefix.prefix_len())] {
            entry.overwrite(route);
        }
        self.collapse_along(prefix);
    }

    /// Takes `prefix` out: its entries get `fallback`, the longest route
    /// that covers it (or nothing).
    fn unset(&mut self, prefix: Prefix, fallback: Option<Route>) {
        let fallback = fallback.map_or(Entry::Empty, Entry::Route);
        let end = end_level(prefix.prefix_len());
        let mut chunk = &mut self.root;
        for level in 0..end {
            match &mut chunk[index(prefix.bits(), level)] {
                Entry::Chunk(c) => chunk = Arc::make_mut(c),
                // A leaf above the prefix's level: the prefix was never
                // written below it.
                _ => return,
            }
        }
        let first = index(prefix.bits(), end);
        for entry in &mut chunk[first..first + span(prefix.prefix_len())] {
            entry.replace(prefix, &fallback);
        }
        self.collapse_along(prefix);
    }

    /// Collapses the chunks on `prefix`'s path that an edit left uniform,
    /// deepest first (a collapsed child can make its parent uniform).
    fn collapse_along(&mut self, prefix: Prefix) {
        fn walk(entry: &mut Entry, addr: u32, level: usize, end: usize) {
            if let Entry::Chunk(c) = entry {
                if level < end {
                    walk(
                        &mut Arc::make_mut(c)[index(addr, level)],
                        addr,
                        level + 1,
                        end,
                    );
                }
                entry.collapse();
            }
        }
        let end = end_level(prefix.prefix_len());
        if end > 0 {
            walk(
                &mut self.root[index(prefix.bits(), 0)],
                prefix.bits(),
                1,
                end,
            );
        }
    }

    #[inline]
    fn route(&self, ip: Ipv4Addr) -> Option<&Route> {
        let ip = u32::from(ip);
        let mut entry = &self.root[index(ip, 0)];
        for level in 1..LEVELS {
            match entry {
                Entry::Chunk(c) => entry = &c[index(ip, level)],
                _ => break,
            }
        }
        match entry {
            Entry::Route(r) => Some(r),
            _ => None,
        }
    }

    /// The next hop for `ip`, by longest prefix.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<NextHop> {
        self.route(ip).map(|r| r.next_hop)
    }

    /// The matching route: prefix and next hop.
    pub fn lookup_route(&self, ip: Ipv4Addr) -> Option<(Prefix, NextHop)> {
        self.route(ip).map(|r| (r.prefix, r.next_hop))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes
    }

    /// True with no routes.
    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// Chunks below the root.
    pub fn chunks(&self) -> usize {
        self.root.iter().map(Entry::count_chunks).sum()
    }

    /// Bytes the lookup structure takes (root and chunks; a chunk shared
    /// with another table counts in full).
    pub fn memory_bytes(&self) -> usize {
        (1 + self.chunks()) * std::mem::size_of::<Chunk>()
    }
}

/// The routes, as the control side edits them, with the lookup table kept
/// in step (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: BTreeMap<Prefix, NextHop>,
    /// The prefixes routed through each next hop: removing a peer or a port
    /// takes its routes out without scanning every route.
    by_next_hop: HashMap<NextHop, BTreeSet<Prefix>>,
    fib: Arc<Fib>,
}

impl RouteTable {
    /// An empty route set.
    pub fn new() -> Self {
        RouteTable::default()
    }

    /// Adds or replaces a route; returns the next hop it replaced.
    pub fn insert(&mut self, prefix: Prefix, next_hop: NextHop) -> Option<NextHop> {
        let old = self.routes.insert(prefix, next_hop);
        if old == Some(next_hop) {
            return old;
        }
        if let Some(old) = old {
            self.unindex(old, prefix);
        }
        self.by_next_hop.entry(next_hop).or_default().insert(prefix);
        let fib = Arc::make_mut(&mut self.fib);
        fib.set(Route { prefix, next_hop });
        fib.routes = self.routes.len();
        old
    }

    /// Removes a route; returns its next hop.
    pub fn remove(&mut self, prefix: &Prefix) -> Option<NextHop> {
        let old = self.routes.remove(prefix)?;
        self.unindex(old, *prefix);
        let fallback = self.covering(*prefix);
        let fib = Arc::make_mut(&mut self.fib);
        fib.unset(*prefix, fallback);
        fib.routes = self.routes.len();
        Some(old)
    }

    /// Removes every route through `next_hop`; returns their prefixes.
    pub fn remove_via(&mut self, next_hop: NextHop) -> Vec<Prefix> {
        let prefixes: Vec<Prefix> = self
            .by_next_hop
            .get(&next_hop)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        for prefix in &prefixes {
            self.remove(prefix);
        }
        prefixes
    }

    fn unindex(&mut self, next_hop: NextHop, prefix: Prefix) {
        if let Some(set) = self.by_next_hop.get_mut(&next_hop) {
            set.remove(&prefix);
            if set.is_empty() {
                self.by_next_hop.remove(&next_hop);
            }
        }
    }

    /// The longest route strictly shorter than `prefix` that covers it.
    fn covering(&self, prefix: Prefix) -> Option<Route> {
        (0..prefix.prefix_len()).rev().find_map(|len| {
            let shorter = Prefix::new_truncating(prefix.addr(), len);
            self.routes.get(&shorter).map(|&next_hop| Route {
                prefix: shorter,
                next_hop,
            })
        })
    }

    /// The routes, by prefix.
    pub fn routes(&self) -> &BTreeMap<Prefix, NextHop> {
        &self.routes
    }

    /// The lookup table as of now, to publish: later edits copy what they
    /// change and leave this one intact.
    pub fn fib(&self) -> Arc<Fib> {
        Arc::clone(&self.fib)
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
        let mut b = RouteTable::new();
        b.insert(p("0.0.0.0/0"), NextHop::Host);
        b.insert(p("10.244.0.0/16"), NextHop::Blackhole);
        b.insert(p("10.244.2.0/24"), NextHop::Peer(PeerId(2)));
        b.insert(p("10.244.1.64/26"), NextHop::Blackhole);
        b.insert(p("10.244.1.65/32"), NextHop::Local(PortId(5)));
        b.insert(p("10.244.1.66/32"), NextHop::Local(PortId(6)));
        b.insert(p("10.246.0.0/15"), NextHop::Direct(PeerId(9)));
        let fib = b.fib();
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
        let empty = RouteTable::new().fib();
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
            let mut b = RouteTable::new();
            for i in 0..300 {
                let addr = Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff));
                let len = [8u8, 12, 16, 20, 23, 24, 25, 26, 28, 30, 32][next() as usize % 11];
                b.insert(Prefix::new_truncating(addr, len), NextHop::Local(PortId(i)));
            }
            let fib = b.fib();
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
    /// Random inserts, replacements and deletes, one at a time, each
    /// checked against the reference; the table returns to its empty size
    /// once every route is gone (uniform chunks collapse).
    #[test]
    fn incremental_edits_match_naive_lpm() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut table = RouteTable::new();
        let mut probes: Vec<Ipv4Addr> = Vec::new();
        for step in 0..4000u32 {
            let addr = Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff));
            let len = [0u8, 7, 8, 9, 15, 16, 17, 23, 24, 25, 26, 31, 32][next() as usize % 13];
            let prefix = Prefix::new_truncating(addr, len);
            probes.push(addr);
            if next() % 3 == 0 {
                // Delete a known route (or a missing one: nothing changes).
                let victim = table
                    .routes()
                    .keys()
                    .nth(next() as usize % (table.routes().len() + 1));
                let victim = victim.copied().unwrap_or(prefix);
                table.remove(&victim);
            } else {
                table.insert(prefix, NextHop::Local(PortId(step as u16)));
            }
            let fib = table.fib();
            assert_eq!(fib.len(), table.routes().len());
            for probe in probes.iter().rev().take(20).chain([&addr]) {
                assert_eq!(
                    fib.lookup(*probe),
                    naive(table.routes(), *probe),
                    "{probe} after step {step}"
                );
            }
        }
        let prefixes: Vec<Prefix> = table.routes().keys().copied().collect();
        for prefix in prefixes {
            table.remove(&prefix);
        }
        assert!(table.fib().is_empty());
        assert_eq!(table.fib().chunks(), 0, "every chunk collapsed");
    }

    /// A published table is a snapshot: later edits copy what they change.
    #[test]
    fn published_table_never_changes() {
        let mut table = RouteTable::new();
        table.insert(p("10.244.0.0/16"), NextHop::Blackhole);
        table.insert(p("10.244.1.5/32"), NextHop::Local(PortId(1)));
        let before = table.fib();
        table.insert(p("10.244.1.6/32"), NextHop::Local(PortId(2)));
        table.remove(&p("10.244.1.5/32"));
        table.insert(p("10.244.0.0/16"), NextHop::Host);
        assert_eq!(
            before.lookup(ip("10.244.1.5")),
            Some(NextHop::Local(PortId(1)))
        );
        assert_eq!(before.lookup(ip("10.244.1.6")), Some(NextHop::Blackhole));
        assert_eq!(before.len(), 2);
        let after = table.fib();
        assert_eq!(after.lookup(ip("10.244.1.5")), Some(NextHop::Host));
        assert_eq!(
            after.lookup(ip("10.244.1.6")),
            Some(NextHop::Local(PortId(2)))
        );
    }

    /// Removing a next hop's routes leaves the covering ones.
    #[test]
    fn remove_via_takes_only_that_next_hops_routes() {
        let mut table = RouteTable::new();
        table.insert(p("10.244.0.0/16"), NextHop::Blackhole);
        table.insert(p("10.244.2.0/24"), NextHop::Peer(PeerId(2)));
        table.insert(p("10.244.2.128/25"), NextHop::Peer(PeerId(2)));
        table.insert(p("10.244.3.0/24"), NextHop::Peer(PeerId(3)));
        let mut gone = table.remove_via(NextHop::Peer(PeerId(2)));
        gone.sort();
        assert_eq!(gone, vec![p("10.244.2.0/24"), p("10.244.2.128/25")]);
        let fib = table.fib();
        assert_eq!(fib.lookup(ip("10.244.2.200")), Some(NextHop::Blackhole));
        assert_eq!(fib.lookup(ip("10.244.3.1")), Some(NextHop::Peer(PeerId(3))));
        assert!(table.remove_via(NextHop::Peer(PeerId(2))).is_empty());
    }
}
