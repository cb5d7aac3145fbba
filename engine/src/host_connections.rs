//! The connections the node's kernel forwarded from a pod to a pod
//! through the host port, so that their replies go back the same way.
//!
//! kube-proxy turns a pod's packet for a Service's ClusterIP into one for
//! a backend pod in the node's own kernel (a DNAT), which sends it back
//! into the host port; its conntrack entry must see the backend's replies
//! to turn them back into the Service's address. On a flannel node they
//! pass through it by themselves: the bridge's frames through
//! `br_netfilter`, another node's through `flannel.1` and the routing
//! stack. podswitch would carry them from the backend straight to the
//! client, which drops a reply from an address it never spoke to. So the
//! pipeline records here each connection that comes in from the host port
//! from a pod to a pod (what Antrea's connection tracking does in Open
//! vSwitch for the same reason), and sends a reply to one of them to the
//! host port instead of to the client: one for a local pod, from a local
//! pod or a tunnel, and one from a local pod for another node's pod (a
//! client there that reached a NodePort here). The backend sees the
//! client pod's own address, as on a flannel node.
//!
//! # Contract
//! - Writers and readers: the data path, from every worker, without
//!   locks. A connection is one 64-bit word, a keyed hash of its protocol,
//!   addresses and ports; slots are claimed with compare-and-swap.
//! - A hash that two connections share (one in 2^64) sends the other's
//!   replies through the host too, which forwards them unchanged
//!   (podswitchd's table lets the host port's own traffic back into it):
//!   slower, never wrong. A connection missing while the kernel still
//!   tracks it is what must not happen: its replies would reach the client
//!   untranslated, and the client's reset would end the connection. So
//!   entries outlive the kernel's conntrack timeouts: a TCP connection
//!   five days from its last packet (`nf_conntrack_tcp_timeout_established`),
//!   an hour and a minute once a FIN or RST was seen (kube-proxy sets
//!   `_close_wait` to an hour; a SYN opens the entry anew), anything else
//!   three minutes (`nf_conntrack_udp_timeout_stream` is two). Either
//!   direction's packets refresh an entry, once a second at most.
//! - Fragments: a fragment after the first carries no ports, and every
//!   fragment of a datagram must take one way (the kernel's conntrack
//!   reassembles them first). So each connection also records its pair of
//!   addresses and protocol, with no ports, and a fragmented reply goes
//!   back through the host port if any connection of that pair is
//!   recorded.
//! - ICMP errors about a connection's packets (a UDP port without a
//!   listener, a TTL run out) go back through the host port too: the
//!   packet an error quotes names the connection.
//! - Cost: a frame for a local pod is looked up only if its source could
//!   be a connection's server: one bit per server (address, port and
//!   protocol, hashed) is set when a connection is recorded and never
//!   cleared, and a frame whose source's bit is clear costs a read of the
//!   header and of that bit (`scripts/instructions.sh`, docs/benchmarks.md).
//!   ICMP packets and fragments, which have no ports to hash, skip the
//!   bitmap and are looked up in the table.
//! - Bounds: the table's memory is fixed when it is made
//!   ([`HostConnections::SLOTS`] slots, in buckets of eight). A new
//!   connection whose bucket is full of live entries replaces the closed
//!   one idle longest, else the one idle longest, and is counted
//!   ([`HostConnections::evicted`]); the kernel's own table
//!   (`nf_conntrack_max`) is of the same order.
//! - A restart loses the table while the kernel keeps its connections:
//!   podswitchd fills it again from the kernel's conntrack table when it
//!   starts.
//! - The hash is keyed with a secret drawn when the table is made, so a
//!   pod cannot pick ports that crowd one bucket and evict others'
//!   connections.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Slots per bucket: one 64-byte cache line of keys.
const BUCKET_SLOTS: usize = 8;
/// A slot being claimed: its key is written last, after its time, so
/// that no other writer takes the new key's slot for a timed-out one in
/// between. No key is this value.
const CLAIMING: u64 = u64::MAX;
/// Bits of the servers' filter: 65,536 (8 KiB); a cluster with 6,500
/// Service endpoints on this node's connections sets a tenth of them.
const SERVER_FILTER_BITS: u32 = 16;
const SERVER_FILTER_WORDS: usize = 1 << (SERVER_FILTER_BITS - 6);
/// In the last-seen word: a FIN or RST was seen.
const CLOSING: u32 = 1 << 31;
/// In the last-seen word: a TCP connection.
const TCP: u32 = 1 << 30;
/// The seconds in the last-seen word.
const SECONDS: u32 = TCP - 1;

/// `nf_conntrack_tcp_timeout_established`'s default, five days.
const TCP_IDLE_SECS: u32 = 432_000;
/// kube-proxy's `nf_conntrack_tcp_timeout_close_wait` (an hour), the
/// longest of the closing states', and a minute.
const CLOSING_IDLE_SECS: u32 = 3_660;
/// `nf_conntrack_udp_timeout_stream`'s 120 s and a minute; SCTP's
/// heartbeats (every 30 s) keep an association fresh.
const OTHER_IDLE_SECS: u32 = 180;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_ICMP: u8 = 1;

#[derive(Debug, Default)]
struct Bucket {
    /// A connection's hash; 0 is an empty slot (no hash is 0).
    keys: [AtomicU64; BUCKET_SLOTS],
    /// Last seen, in the caller's seconds, with [`CLOSING`] and [`TCP`].
    seen: [AtomicU32; BUCKET_SLOTS],
}

/// One direction of a connection, as an IPv4 packet carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// TCP, UDP or SCTP.
    pub protocol: u8,
    /// Source address and port.
    pub src: (Ipv4Addr, u16),
    /// Destination address and port.
    pub dst: (Ipv4Addr, u16),
    /// A TCP FIN or RST.
    pub closing: bool,
    /// A TCP SYN without ACK: a connection's first packet.
    pub opening: bool,
    /// A fragment (more follow, or it is not the first); after the first,
    /// the ports are 0.
    pub fragment: bool,
}

impl Flow {
    /// True for the protocols whose connections the table tells apart by
    /// their ports: TCP, UDP and SCTP.
    pub const fn has_ports(protocol: u8) -> bool {
        matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
    }

    /// The flow of the IPv4 packet `packet` (from its first byte), if it
    /// is TCP, UDP or SCTP (a fragment after the first has no ports).
    #[inline]
    pub fn of_ipv4(packet: &[u8]) -> Option<Flow> {
        let header_len = usize::from(packet.first()? & 0x0f) * 4;
        if header_len < 20 {
            return None;
        }
        if packet.len() < header_len {
            return None;
        }
        let protocol = packet[9];
        if !Self::has_ports(protocol) {
            return None;
        }
        // More fragments (0x2000), and the offset in 8-byte units.
        let flags_and_offset = u16::from_be_bytes([packet[6], packet[7]]);
        let fragment = flags_and_offset & 0x3fff != 0;
        let first = flags_and_offset & 0x1fff == 0;
        let ports = if first {
            packet.get(header_len..header_len + 4)?
        } else {
            &[0; 4]
        };
        let address =
            |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
        // FIN (0x01), SYN (0x02), RST (0x04) and ACK (0x10) in TCP's
        // flags byte, 13 bytes in (none in a later fragment).
        let flags = match protocol {
            IPPROTO_TCP if first => packet.get(header_len + 13).copied().unwrap_or(0),
            _ => 0,
        };
        Some(Flow {
            protocol,
            src: (address(12), u16::from_be_bytes([ports[0], ports[1]])),
            dst: (address(16), u16::from_be_bytes([ports[2], ports[3]])),
            closing: flags & 0x05 != 0,
            opening: flags & 0x12 == 0x02,
            fragment,
        })
    }

    /// The other direction.
    pub fn reversed(self) -> Flow {
        Flow {
            src: self.dst,
            dst: self.src,
            ..self
        }
    }
}

/// What recording a connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// It was there; its time was refreshed.
    Refreshed,
    /// A new entry.
    Added,
    /// A new entry, in place of the live connection idle longest in its
    /// bucket (counted).
    Evicted,
}

/// The connections the host port handed the data path from a pod to a
/// pod.
#[derive(Debug)]
pub struct HostConnections {
    buckets: Box<[Bucket]>,
    secret: u64,
    /// One bit per connection's server: see the module's "Cost".
    servers: Box<[AtomicU64; SERVER_FILTER_WORDS]>,
    held: AtomicUsize,
    evicted: AtomicU64,
}

impl Default for HostConnections {
    fn default() -> Self {
        HostConnections::new()
    }
}

impl HostConnections {
    /// Slots in the table: 262,144 (3 MiB), for connections and their
    /// pairs of addresses; kube-proxy sets `nf_conntrack_max` to 131,072
    /// or 32,768 a CPU, whichever is more.
    pub const SLOTS: usize = 1 << 18;

    /// An empty table of [`SLOTS`](Self::SLOTS) slots.
    pub fn new() -> Self {
        HostConnections::with_slots(Self::SLOTS)
    }

    /// An empty table of at least `slots` slots (tests use small ones).
    pub fn with_slots(slots: usize) -> Self {
        let buckets = slots.div_ceil(BUCKET_SLOTS).next_power_of_two();
        HostConnections {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            secret: RandomState::new().hash_one(0x686f_7374_u64),
            servers: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            held: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// The connection's key: a hash of the client's side (`client`, the
    /// pod that spoke first) and the server's, never 0; with `pair`, of
    /// its addresses and protocol only.
    #[inline]
    fn key(
        &self,
        protocol: u8,
        client: (Ipv4Addr, u16),
        server: (Ipv4Addr, u16),
        pair: bool,
    ) -> u64 {
        let addresses = u64::from(client.0.to_bits()) << 32 | u64::from(server.0.to_bits());
        let ports = if pair {
            1 << 63 | u64::from(protocol)
        } else {
            u64::from(client.1) << 32 | u64::from(server.1) << 16 | u64::from(protocol)
        };
        // Two rounds of a 64-bit finaliser (MurmurHash3's fmix64), the
        // first keyed, the second over the first and the ports.
        let h = mix(mix(addresses ^ self.secret) ^ ports);
        // Neither 0 (empty) nor CLAIMING.
        (h | u64::from(h == 0)) - u64::from(h == CLAIMING)
    }

    #[inline]
    fn bucket(&self, key: u64) -> &Bucket {
        &self.buckets[(key >> 40) as usize & (self.buckets.len() - 1)]
    }

    /// True while a connection last seen at `seen` has not timed out.
    #[inline]
    fn live(seen: u32, now: u32) -> bool {
        let idle = Self::idle(seen, now);
        let limit = if seen & CLOSING != 0 {
            CLOSING_IDLE_SECS
        } else if seen & TCP != 0 {
            TCP_IDLE_SECS
        } else {
            OTHER_IDLE_SECS
        };
        idle <= limit
    }

    /// Seconds since `seen` at `now`. Each worker reads the clock once a
    /// batch, so another may have refreshed an entry a second later than
    /// this one's `now`: a time ahead of `now` is no time idle, not the
    /// wrapped-around 34 years.
    #[inline]
    fn idle(seen: u32, now: u32) -> u32 {
        let idle = now.wrapping_sub(seen) & SECONDS;
        if idle > SECONDS / 2 {
            0
        } else {
            idle
        }
    }

    /// The last-seen word for `flow` at `now`, keeping a FIN or RST seen
    /// before (`old`).
    #[inline]
    fn seen_word(flow: &Flow, now: u32, old: u32) -> u32 {
        let tcp = if flow.protocol == IPPROTO_TCP { TCP } else { 0 };
        // A FIN or RST closes; a SYN opens anew (a client port reused).
        let closing = if flow.closing {
            CLOSING
        } else if flow.opening {
            0
        } else {
            old & CLOSING
        };
        (now & SECONDS) | tcp | closing
    }

    /// Refreshes slot `i` of `bucket` for `flow` at `now`; writes only
    /// when the second changes or a FIN or RST is new, so that a busy
    /// connection does not dirty the cache line on every packet.
    #[inline]
    fn refresh(bucket: &Bucket, i: usize, flow: &Flow, now: u32) {
        let old = bucket.seen[i].load(Ordering::Relaxed);
        let new = Self::seen_word(flow, now, old);
        if new != old {
            bucket.seen[i].store(new, Ordering::Relaxed);
        }
    }

    /// Records the connection of `flow`, a packet the host port sent from
    /// its client to its server, at `now` (seconds), and its pair of
    /// addresses; says what became of the connection's own entry (of the
    /// pair's for a fragment, which has no ports to tell its connection).
    pub fn record(&self, flow: &Flow, now: u32) -> Recorded {
        // A FIN or RST closes one connection, not the pair.
        let pair = Flow {
            closing: false,
            opening: false,
            ..*flow
        };
        let recorded_pair = self.record_key(
            self.key(flow.protocol, flow.src, flow.dst, true),
            &pair,
            now,
        );
        // A fragment after the first has no ports to tell its connection.
        if flow.fragment && flow.src.1 == 0 && flow.dst.1 == 0 {
            return recorded_pair;
        }
        let (word, bit) = self.server_bit(flow.protocol, flow.dst.0.to_bits(), flow.dst.1);
        if self.servers[word].load(Ordering::Relaxed) & bit == 0 {
            self.servers[word].fetch_or(bit, Ordering::Relaxed);
        }
        self.record_key(
            self.key(flow.protocol, flow.src, flow.dst, false),
            flow,
            now,
        )
    }

    /// The word and bit of the servers' filter for a server.
    #[inline(always)]
    fn server_bit(&self, protocol: u8, address: u32, port: u16) -> (usize, u64) {
        let x = u64::from(address) << 32 | u64::from(port) << 8 | u64::from(protocol);
        // A multiplicative hash (Knuth's): its top bits depend on all of
        // the keyed input.
        let bit = ((x ^ self.secret).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> (64 - SERVER_FILTER_BITS)) as usize;
        (bit / 64, 1 << (bit % 64))
    }

    /// [`is_reply`](Self::is_reply) for the IPv4 packet `packet` (from its
    /// first byte, its header checked): false at once if no connection
    /// was ever recorded, or if its source cannot be a connection's
    /// server.
    #[inline(always)]
    pub fn is_reply_packet(&self, packet: &[u8], now: u32) -> bool {
        if self.is_empty() {
            return false;
        }
        let Some(header) = packet.get(..20) else {
            return false;
        };
        // Not even the protocol is checked here: another's source and
        // "port" have their bit clear as often, and the slow path checks.
        let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0;
        if !fragment {
            if header[9] == IPPROTO_ICMP {
                return self.is_icmp_error_reply(packet, now);
            }
            let header_len = usize::from(header[0] & 0x0f) * 4;
            let Some(port) = packet.get(header_len..header_len + 2) else {
                return false;
            };
            let src = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
            let (word, bit) =
                self.server_bit(header[9], src, u16::from_be_bytes([port[0], port[1]]));
            if self.servers[word].load(Ordering::Relaxed) & bit == 0 {
                return false;
            }
        }
        self.is_reply_slow(packet, now)
    }

    #[inline(never)]
    fn is_reply_slow(&self, packet: &[u8], now: u32) -> bool {
        Flow::of_ipv4(packet).is_some_and(|flow| self.is_reply(&flow, now))
    }

    /// True for an ICMP error (destination unreachable, time exceeded,
    /// parameter problem) about a packet of a recorded connection: the
    /// packet it quotes (its IPv4 header and first 8 bytes, RFC 792) went
    /// from the client to the server, and the node's conntrack, which
    /// takes the error as related to the connection, turns it back as it
    /// turns the replies (a Service's UDP port without a listener answers
    /// "port unreachable" to the client from the Service's address).
    #[inline(never)]
    fn is_icmp_error_reply(&self, packet: &[u8], now: u32) -> bool {
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        let Some(icmp) = packet.get(header_len..) else {
            return false;
        };
        if !matches!(icmp.first(), Some(3 | 11 | 12)) {
            return false;
        }
        let Some(quoted) = icmp.get(8..) else {
            return false;
        };
        Flow::of_ipv4(quoted).is_some_and(|quoted| {
            let about = Flow {
                closing: false,
                opening: false,
                ..quoted.reversed()
            };
            self.is_reply(&about, now)
        })
    }

    fn record_key(&self, key: u64, flow: &Flow, now: u32) -> Recorded {
        let bucket = self.bucket(key);
        let seen = Self::seen_word(flow, now, 0);
        loop {
            // The connection itself, live (another worker may have
            // recorded it a moment ago); else the first empty or timed-out
            // slot, else the closed connection idle longest, else the
            // connection idle longest. A slot another writer is claiming
            // is left alone.
            let mut free = None;
            let mut victim: Option<(usize, u64, (bool, u32))> = None;
            for i in 0..BUCKET_SLOTS {
                let k = bucket.keys[i].load(Ordering::Acquire);
                if k == CLAIMING {
                    continue;
                }
                let was = bucket.seen[i].load(Ordering::Relaxed);
                let live = k != 0 && Self::live(was, now);
                if k == key && live {
                    Self::refresh(bucket, i, flow, now);
                    return Recorded::Refreshed;
                }
                if !live {
                    free = free.or(Some((i, k)));
                    continue;
                }
                let rank = (was & CLOSING != 0, Self::idle(was, now));
                if !matches!(victim, Some((_, _, best)) if best >= rank) {
                    victim = Some((i, k, rank));
                }
            }
            let (i, old, how) = match (free, victim) {
                (Some((i, k)), _) => (i, k, Recorded::Added),
                (None, Some((i, k, _))) => (i, k, Recorded::Evicted),
                // Every slot is being claimed: look again.
                (None, None) => continue,
            };
            if bucket.keys[i]
                .compare_exchange(old, CLAIMING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                bucket.seen[i].store(seen, Ordering::Relaxed);
                bucket.keys[i].store(key, Ordering::Release);
                if old == 0 {
                    self.held.fetch_add(1, Ordering::Relaxed);
                }
                if how == Recorded::Evicted {
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                return how;
            }
            // Another worker took the slot first: look again.
        }
    }

    /// True if `flow` is a reply of a recorded connection (its source the
    /// connection's server, its destination the client), or a fragment
    /// of one between the addresses of one: it must go back through the
    /// host port. Refreshes the connection.
    #[inline]
    pub fn is_reply(&self, flow: &Flow, now: u32) -> bool {
        let key = self.key(flow.protocol, flow.dst, flow.src, flow.fragment);
        let bucket = self.bucket(key);
        match Self::find(bucket, key, now) {
            Some(i) => {
                Self::refresh(bucket, i, flow, now);
                true
            }
            None => false,
        }
    }

    #[inline]
    fn find(bucket: &Bucket, key: u64, now: u32) -> Option<usize> {
        (0..BUCKET_SLOTS).find(|&i| {
            bucket.keys[i].load(Ordering::Acquire) == key
                && Self::live(bucket.seen[i].load(Ordering::Relaxed), now)
        })
    }

    /// Connections held (timed-out ones count until their slot is
    /// reused).
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// True if no connection was ever recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live connections replaced by new ones in a full bucket.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// MurmurHash3's 64-bit finaliser: every input bit moves every output
/// bit.
#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(src: &str, sport: u16, dst: &str, dport: u16, closing: bool) -> Flow {
        Flow {
            protocol: IPPROTO_TCP,
            src: (src.parse().unwrap(), sport),
            dst: (dst.parse().unwrap(), dport),
            closing,
            opening: false,
            fragment: false,
        }
    }

    #[test]
    fn a_recorded_connection_takes_its_replies_and_nothing_else() {
        let table = HostConnections::with_slots(64);
        let request = tcp("10.244.1.2", 40000, "10.244.2.5", 5201, false);
        assert_eq!(table.record(&request, 100), Recorded::Added);
        assert_eq!(table.record(&request, 101), Recorded::Refreshed);
        assert!(table.is_reply(&request.reversed(), 101));
        // Not the request's own direction, another client port, another
        // protocol, another server.
        assert!(!table.is_reply(&request, 101));
        assert!(!table.is_reply(&tcp("10.244.2.5", 5201, "10.244.1.2", 40001, false), 101));
        assert!(!table.is_reply(
            &Flow {
                protocol: IPPROTO_UDP,
                ..request.reversed()
            },
            101
        ));
        assert!(!table.is_reply(&tcp("10.244.2.6", 5201, "10.244.1.2", 40000, false), 101));
        assert_eq!(table.len(), 2, "the connection and its pair of addresses");
    }

    /// An IPv4 + UDP packet between the addresses and ports given, laid
    /// out field by field from RFC 791 and RFC 768.
    fn udp_packet(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut packet = vec![0u8; 28];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&28u16.to_be_bytes());
        packet[8] = 64;
        packet[9] = IPPROTO_UDP;
        packet[12..16].copy_from_slice(&src);
        packet[16..20].copy_from_slice(&dst);
        packet[20..22].copy_from_slice(&sport.to_be_bytes());
        packet[22..24].copy_from_slice(&dport.to_be_bytes());
        packet[24..26].copy_from_slice(&8u16.to_be_bytes());
        packet
    }

    #[test]
    fn a_packet_is_a_reply_only_from_a_recorded_server_to_its_client() {
        let table = HostConnections::with_slots(64);
        let reply = udp_packet([10, 244, 2, 5], 53, [10, 244, 1, 2], 53000);
        assert!(!table.is_reply_packet(&reply, 1), "an empty table");
        let request = Flow::of_ipv4(&udp_packet([10, 244, 1, 2], 53000, [10, 244, 2, 5], 53));
        table.record(&request.unwrap(), 1);
        assert!(table.is_reply_packet(&reply, 1));
        // The server's bit is set, but not for this client; another port
        // of the server has its own bit; a truncated packet is none.
        assert!(!table.is_reply_packet(&udp_packet([10, 244, 2, 5], 53, [10, 244, 1, 3], 53000), 1));
        assert!(!table.is_reply_packet(&udp_packet([10, 244, 2, 5], 54, [10, 244, 1, 2], 53000), 1));
        assert!(!table.is_reply_packet(&reply[..21], 1));
        // A later fragment of the reply, without ports.
        let mut later = reply.clone();
        later[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert!(table.is_reply_packet(&later, 1));

        // The server's "port unreachable" to the client, quoting the
        // request (RFC 792: the IPv4 header and 8 bytes); not an echo
        // request, not an error quoting another connection's packet.
        let icmp = |kind: u8, quoted: &[u8]| {
            let mut packet = udp_packet([10, 244, 2, 5], 0, [10, 244, 1, 2], 0);
            packet.truncate(20);
            packet[9] = IPPROTO_ICMP;
            packet.extend_from_slice(&[kind, 3, 0, 0, 0, 0, 0, 0]);
            packet.extend_from_slice(quoted);
            packet
        };
        let request = udp_packet([10, 244, 1, 2], 53000, [10, 244, 2, 5], 53);
        assert!(table.is_reply_packet(&icmp(3, &request), 1));
        assert!(!table.is_reply_packet(&icmp(8, &request), 1));
        let other = udp_packet([10, 244, 1, 2], 53001, [10, 244, 2, 5], 53);
        assert!(!table.is_reply_packet(&icmp(3, &other), 1));
        assert!(!table.is_reply_packet(&icmp(3, &request[..10]), 1));
    }

    #[test]
    fn connections_time_out_as_the_kernels_conntrack_does_or_later() {
        let table = HostConnections::with_slots(64);
        let open = tcp("10.244.1.2", 40000, "10.244.1.3", 80, false);
        table.record(&open, 0);
        assert!(table.is_reply(&open.reversed(), TCP_IDLE_SECS));
        // Refreshed by that reply: five days from it.
        assert!(table.is_reply(&open.reversed(), 2 * TCP_IDLE_SECS));
        assert!(!table.is_reply(&open.reversed(), 3 * TCP_IDLE_SECS + 1));

        // A FIN from either side: two minutes, which later packets without
        // one do not undo.
        let closing = tcp("10.244.1.2", 40001, "10.244.1.3", 80, false);
        table.record(&closing, 1000);
        assert!(table.is_reply(&tcp("10.244.1.3", 80, "10.244.1.2", 40001, true), 1001));
        table.record(&closing, 1002);
        assert!(table.is_reply(&closing.reversed(), 1002 + CLOSING_IDLE_SECS));
        assert!(!table.is_reply(&closing.reversed(), 1003 + 2 * CLOSING_IDLE_SECS));

        let udp = Flow {
            protocol: IPPROTO_UDP,
            ..tcp("10.244.1.2", 53000, "10.244.1.3", 53, false)
        };
        table.record(&udp, 5000);
        assert!(table.is_reply(&udp.reversed(), 5000 + OTHER_IDLE_SECS));
        assert!(!table.is_reply(&udp.reversed(), 5001 + 2 * OTHER_IDLE_SECS));
        // Time in the table wraps with the seconds word.
        table.record(&udp, SECONDS - 5);
        assert!(table.is_reply(&udp.reversed(), SECONDS + 10));
    }

    #[test]
    fn a_full_bucket_gives_way_to_the_newest_connection_and_counts_it() {
        // One bucket: every connection shares it, and their pair of
        // addresses takes a slot too (refreshed by each, never the oldest).
        let table = HostConnections::with_slots(BUCKET_SLOTS);
        let flows: Vec<Flow> = (0..BUCKET_SLOTS as u16)
            .map(|port| tcp("10.244.1.2", 40000 + port, "10.244.1.3", 80, false))
            .collect();
        for (second, flow) in flows.iter().enumerate() {
            let how = table.record(flow, second as u32);
            let expected = if second < BUCKET_SLOTS - 1 {
                Recorded::Added
            } else {
                Recorded::Evicted
            };
            assert_eq!(how, expected, "connection {second}");
        }
        assert_eq!(table.evicted(), 1);
        // The one idle longest (the first) gave way.
        assert!(!table.is_reply(&flows[0].reversed(), 20));
        for flow in &flows[1..] {
            assert!(table.is_reply(&flow.reversed(), 20));
        }
        // A closed connection gives way before an open one idle longer.
        table.is_reply(&tcp("10.244.1.3", 80, "10.244.1.2", 40005, true), 30);
        let newer = tcp("10.244.1.2", 40100, "10.244.1.3", 80, false);
        assert_eq!(table.record(&newer, 31), Recorded::Evicted);
        assert!(!table.is_reply(&flows[5].reversed(), 31));
        assert!(table.is_reply(&flows[1].reversed(), 31));
        assert_eq!(table.evicted(), 2);
        // A timed-out entry's slot is reused without an eviction.
        let late = tcp("10.244.1.2", 50000, "10.244.1.3", 80, false);
        assert_eq!(table.record(&late, 32 + TCP_IDLE_SECS), Recorded::Added);
        assert_eq!(table.evicted(), 2);
    }

    #[test]
    fn a_syn_opens_a_closed_connections_entry_anew() {
        let table = HostConnections::with_slots(64);
        let open = tcp("10.244.1.2", 40000, "10.244.1.3", 80, false);
        table.record(&open, 0);
        table.record(&tcp("10.244.1.2", 40000, "10.244.1.3", 80, true), 1);
        assert!(!table.is_reply(&open.reversed(), 2 + CLOSING_IDLE_SECS));
        // The client port again, soon after: the new connection lives as
        // long as an open one.
        table.record(&open, 10);
        table.record(&tcp("10.244.1.2", 40000, "10.244.1.3", 80, true), 11);
        let syn = Flow {
            opening: true,
            ..open
        };
        table.record(&syn, 12);
        assert!(table.is_reply(&open.reversed(), 13 + CLOSING_IDLE_SECS));
    }

    #[test]
    fn a_fragmented_request_records_its_connection_from_the_first_fragment() {
        let table = HostConnections::with_slots(64);
        let first = Flow {
            fragment: true,
            ..tcp("10.244.1.2", 40000, "10.244.2.5", 443, false)
        };
        table.record(&first, 1);
        assert!(table.is_reply(&tcp("10.244.2.5", 443, "10.244.1.2", 40000, false), 1));
    }

    #[test]
    fn a_fragmented_reply_goes_whole_where_its_pair_of_addresses_has_a_connection() {
        let table = HostConnections::with_slots(64);
        let request = Flow {
            protocol: IPPROTO_UDP,
            ..tcp("10.244.1.2", 53000, "10.244.2.5", 53, false)
        };
        table.record(&request, 10);
        // Every fragment of the reply, the first with its ports and the
        // later ones without.
        let first = Flow {
            fragment: true,
            ..request.reversed()
        };
        let later = Flow {
            src: ("10.244.2.5".parse().unwrap(), 0),
            dst: ("10.244.1.2".parse().unwrap(), 0),
            ..first
        };
        assert!(table.is_reply(&first, 11));
        assert!(table.is_reply(&later, 11));
        // Not between other addresses, not of another protocol, not the
        // request's direction.
        let elsewhere = Flow {
            dst: ("10.244.1.9".parse().unwrap(), 0),
            ..later
        };
        assert!(!table.is_reply(&elsewhere, 11));
        let tcp_fragment = Flow {
            protocol: IPPROTO_TCP,
            ..later
        };
        assert!(!table.is_reply(&tcp_fragment, 11));
        assert!(!table.is_reply(&later.reversed(), 11));
        // A FIN closes its connection, not the pair's other connections.
        let closing = tcp("10.244.1.2", 40000, "10.244.2.5", 80, true);
        table.record(&closing, 20);
        let tcp_later = Flow {
            fragment: true,
            ..tcp("10.244.2.5", 0, "10.244.1.2", 0, false)
        };
        assert!(!table.is_reply(&closing.reversed(), 21 + CLOSING_IDLE_SECS));
        assert!(table.is_reply(&tcp_later, 21 + CLOSING_IDLE_SECS));
    }

    /// Workers record and look up at once: a connection recorded by one
    /// is a connection for every other as soon as `record` returned (the
    /// request it was recorded for is sent after), and none is lost to
    /// another's claim of the same slot.
    #[test]
    fn connections_recorded_by_one_worker_are_found_by_every_other() {
        use std::sync::atomic::AtomicUsize;
        const WORKERS: usize = 4;
        const EACH: usize = 3000;
        // Late enough that a slot never used reads as timed out: a
        // writer must not take a slot another is claiming for that.
        const NOW: u32 = 3 * TCP_IDLE_SECS;
        // Room enough that no bucket of eight fills (12,004 entries in
        // 32,768 buckets).
        let table = HostConnections::with_slots(1 << 18);
        let flow = |worker: usize, i: usize| {
            tcp(
                &format!("10.244.1.{}", 2 + worker),
                10_000 + i as u16,
                "10.244.2.5",
                443,
                false,
            )
        };
        // How many of each worker's connections are recorded so far.
        let published: Vec<AtomicUsize> = (0..WORKERS).map(|_| AtomicUsize::new(0)).collect();
        std::thread::scope(|scope| {
            for worker in 0..WORKERS {
                let (table, published) = (&table, &published);
                scope.spawn(move || {
                    for i in 0..EACH {
                        table.record(&flow(worker, i), NOW);
                        published[worker].store(i + 1, Ordering::Release);
                        // Look up another worker's latest connection.
                        let other = (worker + 1 + i % (WORKERS - 1)) % WORKERS;
                        let done = published[other].load(Ordering::Acquire);
                        if done > 0 {
                            assert!(
                                table.is_reply(&flow(other, done - 1).reversed(), NOW),
                                "worker {worker}: worker {other}'s connection {}",
                                done - 1
                            );
                        }
                    }
                });
            }
        });
        for worker in 0..WORKERS {
            for i in 0..EACH {
                assert!(
                    table.is_reply(&flow(worker, i).reversed(), NOW + 1),
                    "{worker} {i}"
                );
            }
        }
        assert_eq!(table.evicted(), 0);
        // Each connection and each client's pair of addresses once, though
        // workers recorded the same pairs at once.
        assert_eq!(table.len(), WORKERS * EACH + WORKERS);
    }

    #[test]
    fn a_worker_whose_clock_is_a_second_behind_finds_what_another_refreshed() {
        let table = HostConnections::with_slots(64);
        let open = tcp("10.244.1.2", 40000, "10.244.1.3", 80, false);
        table.record(&open, 100);
        // Another worker, already at second 101, refreshes it.
        assert!(table.is_reply(&open.reversed(), 101));
        // This one still reads 100: the entry is fresh, not 34 years old.
        assert!(table.is_reply(&open.reversed(), 100));
        assert_eq!(table.record(&open, 100), Recorded::Refreshed);
    }

    #[test]
    fn flows_are_read_from_tcp_udp_and_sctp_only() {
        // 10.244.1.2:40000 -> 10.244.2.5:5201, TCP, FIN|ACK.
        let mut packet = vec![0u8; 40];
        packet[0] = 0x45;
        packet[9] = IPPROTO_TCP;
        packet[12..16].copy_from_slice(&[10, 244, 1, 2]);
        packet[16..20].copy_from_slice(&[10, 244, 2, 5]);
        packet[20..24].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        packet[33] = 0x11;
        assert_eq!(
            Flow::of_ipv4(&packet),
            Some(tcp("10.244.1.2", 40000, "10.244.2.5", 5201, true))
        );
        packet[33] = 0x10; // ACK only
        assert!(!Flow::of_ipv4(&packet).unwrap().closing);
        // The first fragment has its ports; a later one carries none.
        packet[6] = 0x20;
        let first = Flow::of_ipv4(&packet).unwrap();
        assert!(first.fragment);
        assert_eq!((first.src.1, first.dst.1), (40000, 5201));
        packet[6] = 0x00;
        packet[7] = 0xb9;
        let later = Flow::of_ipv4(&packet).unwrap();
        assert!(later.fragment);
        assert_eq!((later.src.1, later.dst.1), (0, 0));
        assert_eq!(later.dst.0, Ipv4Addr::new(10, 244, 2, 5));
        // ICMP has no ports.
        packet[7] = 0;
        packet[9] = 1;
        assert_eq!(Flow::of_ipv4(&packet), None);
        // Options move the ports; a header longer than the packet has none.
        packet[9] = IPPROTO_UDP;
        packet[0] = 0x46;
        packet[24..26].copy_from_slice(&[0x14, 0x51]);
        assert_eq!(
            Flow::of_ipv4(&packet).map(|f| f.src.1),
            Some(0x1451),
            "ports after 24 bytes of header"
        );
        packet[0] = 0x4f;
        assert_eq!(Flow::of_ipv4(&packet[..40]), None);
        assert_eq!(Flow::of_ipv4(&[]), None);
    }
}
