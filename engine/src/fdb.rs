//! The FDB: which MAC is behind which port, what `bridge fdb show dev cni0`
//! shows for flannel's bridge.
//!
//! # Contract
//! - Writers: the data path learns source MACs (one learning worker per
//!   FDB); the control side adds and removes static entries and flushes.
//!   Writers claim and update slots with atomic compare-and-swap.
//! - Readers: the data path, without locks. A slot's MAC and port are one
//!   64-bit word, so a reader never sees a MAC with another MAC's port.
//!   Its last-seen time is a second word: a reader racing an update may see
//!   the older time, which at worst makes an entry age out one period late.
//! - Removal: an entry whose last-seen time is older than the aging time is
//!   absent for lookups at once, and its slot is reused by the next learn
//!   in its bucket or cleared by [`Fdb::sweep`]. Nothing is freed: the
//!   table's memory is fixed when it is made.
//!
//! # Bounds
//! At most `limit` entries (8192 by default, the Linux bridge has no default
//! limit). Learning beyond the limit, or into a bucket whose slots are all
//! live, is refused and counted; known MACs keep forwarding. The table has
//! twice `limit` slots in buckets of eight, so refusals for a full bucket
//! are rare below the limit.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use podswitch_encap::MacAddr;

use crate::port::PortId;

/// Slots per bucket: one 64-byte cache line of keys.
const BUCKET_SLOTS: usize = 8;
/// Marks a static entry in the last-seen word.
const STATIC_FLAG: u32 = 1 << 31;

#[derive(Debug, Default)]
struct Bucket {
    /// MAC (upper 48 bits) and port (lower 16); 0 is an empty slot (MAC
    /// 00:00:00:00:00:00 is never learned: it is not a valid source).
    keys: [AtomicU64; BUCKET_SLOTS],
    /// Last seen, in the caller's seconds, with [`STATIC_FLAG`].
    seen: [AtomicU32; BUCKET_SLOTS],
}

/// What a learn did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The entry was there with this port; its time was refreshed.
    Refreshed,
    /// A new entry.
    Added,
    /// The MAC moved from another port.
    Moved(PortId),
    /// A static entry for this MAC points elsewhere; it stays.
    Static,
    /// Refused: the table is at its limit, or the bucket is full.
    Refused,
}

/// One entry, for `fdb show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The MAC.
    pub mac: MacAddr,
    /// Its port.
    pub port: PortId,
    /// Static (never ages, never moves).
    pub is_static: bool,
    /// Seconds since last seen (0 for static).
    pub age_secs: u32,
}

/// The MAC learning table of the bridge segment.
#[derive(Debug)]
pub struct Fdb {
    buckets: Box<[Bucket]>,
    limit: usize,
    aging_secs: u32,
    entries: AtomicUsize,
    refused: AtomicU64,
}

#[inline]
fn mac_bits(mac: MacAddr) -> u64 {
    let m = mac.0;
    u64::from_be_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0])
}

#[inline]
fn key(mac: MacAddr, port: PortId) -> u64 {
    mac_bits(mac) | u64::from(port.0)
}

#[inline]
fn key_mac(key: u64) -> u64 {
    key & !0xffff
}

#[inline]
fn key_port(key: u64) -> PortId {
    PortId(key as u16)
}

impl Fdb {
    /// An empty table for at most `limit` entries that age after
    /// `aging_secs` seconds.
    pub fn new(limit: usize, aging_secs: u32) -> Self {
        let buckets = (limit.max(1) * 2)
            .div_ceil(BUCKET_SLOTS)
            .next_power_of_two();
        Fdb {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            limit,
            aging_secs,
            entries: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    #[inline]
    fn bucket(&self, mac: MacAddr) -> &Bucket {
        let h = mac_bits(mac).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.buckets[(h >> 32) as usize & (self.buckets.len() - 1)]
    }

    #[inline]
    fn live(&self, seen: u32, now: u32) -> bool {
        seen & STATIC_FLAG != 0 || now.wrapping_sub(seen) <= self.aging_secs
    }

    /// The port behind `mac`, if known and not aged out.
    #[inline]
    pub fn lookup(&self, mac: MacAddr, now: u32) -> Option<PortId> {
        let want = mac_bits(mac);
        let b = self.bucket(mac);
        for i in 0..BUCKET_SLOTS {
            let k = b.keys[i].load(Ordering::Acquire);
            if k != 0 && key_mac(k) == want && self.live(b.seen[i].load(Ordering::Relaxed), now) {
                return Some(key_port(k));
            }
        }
        None
    }

    /// Learns that `mac` is behind `port` at time `now` (seconds).
    #[inline]
    pub fn learn(&self, mac: MacAddr, port: PortId, now: u32) -> Learned {
        let want = mac_bits(mac);
        let new_key = key(mac, port);
        let b = self.bucket(mac);
        let now = now & !STATIC_FLAG;
        for i in 0..BUCKET_SLOTS {
            let k = b.keys[i].load(Ordering::Acquire);
            if k == 0 || key_mac(k) != want {
                continue;
            }
            let seen = b.seen[i].load(Ordering::Relaxed);
            if seen & STATIC_FLAG != 0 {
                return if key_port(k) == port {
                    Learned::Refreshed
                } else {
                    Learned::Static
                };
            }
            if k == new_key {
                // Write only when the second changes: a hot MAC must not
                // dirty the cache line on every frame.
                if seen != now {
                    b.seen[i].store(now, Ordering::Relaxed);
                }
                return Learned::Refreshed;
            }
            if b.keys[i]
                .compare_exchange(k, new_key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                b.seen[i].store(now, Ordering::Relaxed);
                return Learned::Moved(key_port(k));
            }
            return Learned::Refreshed; // another writer just updated it
        }
        self.claim(b, new_key, now, false)
    }

    /// Puts `new_key` into an empty or expired slot of `b`.
    fn claim(&self, b: &Bucket, new_key: u64, now: u32, is_static: bool) -> Learned {
        let seen_word = if is_static { STATIC_FLAG } else { now };
        for i in 0..BUCKET_SLOTS {
            let k = b.keys[i].load(Ordering::Acquire);
            let expired = k != 0 && !self.live(b.seen[i].load(Ordering::Relaxed), now);
            if k == 0 {
                if !is_static && self.entries.load(Ordering::Relaxed) >= self.limit {
                    break;
                }
                if b.keys[i]
                    .compare_exchange(0, new_key, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    b.seen[i].store(seen_word, Ordering::Release);
                    self.entries.fetch_add(1, Ordering::Relaxed);
                    return Learned::Added;
                }
            } else if expired
                && b.keys[i]
                    .compare_exchange(k, new_key, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                b.seen[i].store(seen_word, Ordering::Release);
                return Learned::Added;
            }
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Learned::Refused
    }

    /// Adds a static entry (never ages, never moves). Returns false if its
    /// bucket is full of static entries.
    pub fn add_static(&self, mac: MacAddr, port: PortId) -> bool {
        self.remove(mac);
        self.claim(self.bucket(mac), key(mac, port), 0, true) == Learned::Added
    }

    /// Removes `mac`'s entry; true if there was one.
    pub fn remove(&self, mac: MacAddr) -> bool {
        let want = mac_bits(mac);
        let b = self.bucket(mac);
        let mut removed = false;
        for i in 0..BUCKET_SLOTS {
            let k = b.keys[i].load(Ordering::Acquire);
            if k != 0
                && key_mac(k) == want
                && b.keys[i]
                    .compare_exchange(k, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                self.entries.fetch_sub(1, Ordering::Relaxed);
                removed = true;
            }
        }
        removed
    }

    fn clear_where(&self, mut pred: impl FnMut(u64, u32) -> bool) -> usize {
        let mut n = 0;
        for b in self.buckets.iter() {
            for i in 0..BUCKET_SLOTS {
                let k = b.keys[i].load(Ordering::Acquire);
                if k != 0
                    && pred(k, b.seen[i].load(Ordering::Relaxed))
                    && b.keys[i]
                        .compare_exchange(k, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                    n += 1;
                }
            }
        }
        n
    }

    /// Removes every entry of `port` (the port was detached).
    pub fn remove_port(&self, port: PortId) -> usize {
        self.clear_where(|k, _| key_port(k) == port)
    }

    /// Removes every learned entry (`bridge fdb flush dynamic`).
    pub fn flush(&self) -> usize {
        self.clear_where(|_, seen| seen & STATIC_FLAG == 0)
    }

    /// Clears aged-out entries; returns how many.
    pub fn sweep(&self, now: u32) -> usize {
        self.clear_where(|_, seen| !self.live(seen, now))
    }

    /// Live entries.
    pub fn entries(&self, now: u32) -> Vec<FdbEntry> {
        let mut out = Vec::new();
        for b in self.buckets.iter() {
            for i in 0..BUCKET_SLOTS {
                let k = b.keys[i].load(Ordering::Acquire);
                let seen = b.seen[i].load(Ordering::Relaxed);
                if k != 0 && self.live(seen, now) {
                    let bytes = k.to_be_bytes();
                    let is_static = seen & STATIC_FLAG != 0;
                    out.push(FdbEntry {
                        mac: MacAddr([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]]),
                        port: key_port(k),
                        is_static,
                        age_secs: if is_static { 0 } else { now.wrapping_sub(seen) },
                    });
                }
            }
        }
        out.sort_by_key(|e| e.mac);
        out
    }

    /// Entries held (aged-out ones count until reused or swept).
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The size limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Learns refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Bytes the table takes; fixed at creation.
    pub fn memory_bytes(&self) -> usize {
        self.buckets.len() * core::mem::size_of::<Bucket>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u32) -> MacAddr {
        let b = i.to_be_bytes();
        MacAddr([0x02, 0x42, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn learn_lookup_move_age() {
        let fdb = Fdb::new(16, 300);
        assert_eq!(fdb.lookup(mac(1), 0), None);
        assert_eq!(fdb.learn(mac(1), PortId(3), 10), Learned::Added);
        assert_eq!(fdb.learn(mac(1), PortId(3), 11), Learned::Refreshed);
        assert_eq!(fdb.lookup(mac(1), 12), Some(PortId(3)));
        assert_eq!(fdb.learn(mac(1), PortId(4), 20), Learned::Moved(PortId(3)));
        assert_eq!(fdb.lookup(mac(1), 20), Some(PortId(4)));
        assert_eq!(
            fdb.lookup(mac(1), 320),
            Some(PortId(4)),
            "300 s is still live"
        );
        assert_eq!(fdb.lookup(mac(1), 321), None, "aged out");
        assert_eq!(fdb.len(), 1, "held until swept or reused");
        assert_eq!(fdb.sweep(321), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn static_entries_stay_and_do_not_move() {
        let fdb = Fdb::new(16, 300);
        assert!(fdb.add_static(mac(7), PortId(1)));
        assert_eq!(fdb.learn(mac(7), PortId(2), 5), Learned::Static);
        assert_eq!(fdb.lookup(mac(7), 1_000_000), Some(PortId(1)));
        assert_eq!(fdb.flush(), 0, "flush keeps static entries");
        assert_eq!(
            fdb.entries(9)[0],
            FdbEntry {
                mac: mac(7),
                port: PortId(1),
                is_static: true,
                age_secs: 0
            }
        );
        assert!(fdb.remove(mac(7)));
        assert_eq!(fdb.lookup(mac(7), 9), None);
    }

    #[test]
    fn limit_is_hard_and_counted() {
        let fdb = Fdb::new(100, 300);
        let mut added = 0;
        for i in 0..1000 {
            if fdb.learn(mac(i), PortId(1), 0) == Learned::Added {
                added += 1;
            }
        }
        assert_eq!(added, 100);
        assert_eq!(fdb.len(), 100);
        assert_eq!(fdb.refused(), 900);
        assert_eq!(fdb.remove_port(PortId(1)), 100);
        assert!(fdb.is_empty());
    }
}
