//! Limits on what a pod sends: the CNI bandwidth capability's egress rate
//! and burst (`kubernetes.io/egress-bandwidth`), enforced where podswitch
//! reads the pod's frames.
//!
//! The kernel path enforces that limit with the bandwidth plugin's IFB
//! redirect at the tc ingress hook of the pod's host-side veth. podswitch
//! reads a pod's frames before that hook (an AF_PACKET tap, or XDP) and
//! ends them there, so the hook never sees them: the limit has to be
//! podswitch's own. It polices, as Open vSwitch's `ingress_policing_rate`
//! does for the same place: a frame beyond the limit is dropped and
//! counted (`egress_rate_limited`), not queued. TCP reads the drops as
//! congestion and settles under the rate.
//!
//! A policer gives TCP less than a shaper does. The plugin's TBF queues a
//! frame beyond the bucket (up to 25 ms at the rate) and TCP sees a longer
//! round trip; here TCP sees only losses, and on a round trip of tens of
//! microseconds its window outgrows the bucket by far. So the bucket
//! allows the burst plus [`TCP_ALLOWANCE`] at the rate, as Open vSwitch
//! advises for its policer (a burst of at least 10 % of the rate "helps
//! TCP come closer to achieving the full rate"). Measured on a lab node
//! (tests/cni.rs, an 80 Mbit/s limit, a 20 kB burst, 32 MiB over TCP):
//! 10 Mbit/s with the allowance at the plugin's 25 ms, 38 Mbit/s with 100
//! ms. Shaping (holding a frame until it conforms) is what would give TCP
//! the whole rate.
//!
//! The bucket is the Generic Cell Rate Algorithm (ITU-T I.371, the
//! "virtual scheduling" form): one number, the theoretical arrival time of
//! the next frame, kept in an atomic so that every worker reading one of a
//! pod's fanned-out sockets draws on the same bucket without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::packet::PacketBuf;

/// What the bucket allows beyond the burst, as time at the rate: 10 %
/// of the rate, Open vSwitch's advice for TCP under a policer.
pub const TCP_ALLOWANCE: Duration = Duration::from_millis(100);

/// A rate and a burst, in bytes, as the control side gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Long-term bytes per second; at least 1.
    pub bytes_per_sec: u64,
    /// Bytes that may pass at once after a quiet spell; at least 1.
    pub burst_bytes: u64,
}

impl RateLimit {
    /// From the CNI bandwidth capability's units: bits per second and
    /// bits (CONVENTIONS.md, "Bandwidth"). `None` if either is zero once
    /// in bytes (under 8 bits), which would drop every frame.
    pub fn from_bits(rate_bits: u64, burst_bits: u64) -> Option<RateLimit> {
        let limit = RateLimit {
            bytes_per_sec: rate_bits / 8,
            burst_bytes: burst_bits / 8,
        };
        (limit.bytes_per_sec > 0 && limit.burst_bytes > 0).then_some(limit)
    }

    /// Nanoseconds the bucket takes to earn `bytes`.
    fn nanos_for(&self, bytes: u64) -> u64 {
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_sec);
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }
}

/// One pod's egress bucket, shared by every worker that reads the pod.
#[derive(Debug)]
pub struct Policer {
    limit: RateLimit,
    /// The burst and the TCP allowance as time: how far ahead of now
    /// the next frame's theoretical arrival may be.
    tolerance_ns: u64,
    /// When the next frame would conform if the pod sent at exactly the
    /// rate, in nanoseconds since `epoch`. At or before now: the bucket is
    /// full.
    next_ns: AtomicU64,
    epoch: Instant,
}

/// Two policers are equal when they enforce the same limit: a port's
/// table entry compares its configuration, not the bucket's fill.
impl PartialEq for Policer {
    fn eq(&self, other: &Policer) -> bool {
        self.limit == other.limit
    }
}

impl Eq for Policer {}

impl Policer {
    /// A full bucket for `limit`.
    pub fn new(limit: RateLimit) -> Policer {
        Policer {
            limit,
            tolerance_ns: limit
                .nanos_for(limit.burst_bytes)
                .saturating_add(TCP_ALLOWANCE.as_nanos() as u64),
            next_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The limit it enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn since_epoch(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    /// Whether `bytes` sent at `now` conform, without drawing on the bucket
    /// (a trace asks this).
    pub fn conforms(&self, bytes: u64, now: Instant) -> bool {
        self.next_after(
            self.next_ns.load(Ordering::Relaxed),
            bytes,
            self.since_epoch(now),
        )
        .is_some()
    }

    /// Draws `bytes` sent at `now` from the bucket: true if they conform
    /// (and are now paid for), false if they must be dropped.
    pub fn admit(&self, bytes: u64, now: Instant) -> bool {
        let now = self.since_epoch(now);
        let mut next = self.next_ns.load(Ordering::Relaxed);
        loop {
            let Some(after) = self.next_after(next, bytes, now) else {
                return false;
            };
            match self.next_ns.compare_exchange_weak(
                next,
                after,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => next = current,
            }
        }
    }

    /// The next theoretical arrival once `bytes` pass at `now`, or `None`
    /// if they would overdraw the bucket. A frame larger than the whole
    /// burst (a pod's TSO super-frame under a small burst) passes when the
    /// bucket is full; the bucket then owes what the frame took beyond the
    /// burst, and nothing passes until the rate has paid it back: the
    /// long-term rate holds, and no frame is refused for ever.
    fn next_after(&self, next: u64, bytes: u64, now: u64) -> Option<u64> {
        let start = next.max(now);
        let after = start.saturating_add(self.limit.nanos_for(bytes));
        let full = next <= now;
        (full || after - now <= self.tolerance_ns).then_some(after)
    }
}

/// The bytes a frame puts on the pod's link: a super-frame counts the
/// headers each of its segments would carry, as the kernel's qdiscs count
/// a GSO packet (`qdisc_pkt_len_init`, net/core/dev.c).
pub fn wire_bytes(buf: &PacketBuf) -> u64 {
    let len = buf.len() as u64;
    let Some(gso) = buf.offload().gso else {
        return len;
    };
    let Some(l3) = buf.frame_offset(buf.offload().l3) else {
        return len;
    };
    let headers = l3 as u64 + u64::from(gso.header_len);
    let payload = len.saturating_sub(headers);
    let size = u64::from(gso.size.max(1));
    let segments = payload.div_ceil(size).max(1);
    len + (segments - 1) * headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 MB/s with a 10 kB burst.
    const LIMIT: RateLimit = RateLimit {
        bytes_per_sec: 1_000_000,
        burst_bytes: 10_000,
    };
    /// What passes at once: the burst and 100 ms at the rate.
    const AT_ONCE: u64 = 10_000 + 100_000;

    #[test]
    fn a_full_bucket_passes_the_burst_then_drops() {
        let p = Policer::new(LIMIT);
        let now = Instant::now();
        let passed = (0..1_000).filter(|_| p.admit(1_000, now)).count() as u64;
        assert_eq!(
            passed,
            AT_ONCE / 1_000,
            "the burst and the TCP allowance in 1 kB frames"
        );
        assert!(!p.conforms(1_000, now));
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let p = Policer::new(LIMIT);
        let start = Instant::now();
        while p.admit(1_000, start) {}
        // 1 MB/s earns 1 kB per millisecond.
        assert!(!p.admit(1_000, start + Duration::from_micros(900)));
        assert!(p.admit(1_000, start + Duration::from_micros(1_000)));
        assert!(!p.admit(1_000, start + Duration::from_micros(1_500)));
        // Quiet for a second: the bucket holds no more than its burst.
        let later = start + Duration::from_secs(2);
        let passed = (0..1_000).filter(|_| p.admit(1_000, later)).count() as u64;
        assert_eq!(passed, AT_ONCE / 1_000);
    }

    #[test]
    fn over_time_it_passes_the_burst_and_the_rate_and_no_more() {
        let p = Policer::new(LIMIT);
        let start = Instant::now();
        let mut passed = 0u64;
        // 4 MB/s offered for 1 s: 100-byte frames every 25 µs.
        for i in 0..40_000u64 {
            if p.admit(100, start + Duration::from_micros(i * 25)) {
                passed += 100;
            }
        }
        let most = AT_ONCE + LIMIT.bytes_per_sec;
        assert!(passed <= most, "{passed} bytes passed, at most {most}");
        assert!(
            passed >= most - 1_000,
            "{passed} bytes passed, about {most}"
        );
    }

    #[test]
    fn a_frame_larger_than_the_burst_passes_only_from_a_full_bucket() {
        let p = Policer::new(LIMIT);
        let now = Instant::now();
        assert!(
            p.admit(150_000, now),
            "a full bucket lets a frame larger than all it allows through"
        );
        assert!(!p.admit(100, now), "then it is empty");
        // It owes 40 kB beyond its 110 kB at once: 40 ms at 1 MB/s.
        assert!(!p.admit(100, now + Duration::from_millis(39)));
        assert!(p.admit(100, now + Duration::from_millis(41)));
        // Full again only 150.1 ms after the large frame.
        assert!(
            !p.admit(150_000, now + Duration::from_millis(140)),
            "not full yet"
        );
        assert!(p.admit(150_000, now + Duration::from_millis(151)));
    }

    #[test]
    fn workers_sharing_a_bucket_pass_the_burst_once() {
        let p = std::sync::Arc::new(Policer::new(LIMIT));
        let now = Instant::now();
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..2_000).filter(|_| p.admit(100, now)).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(
            passed as u64,
            AT_ONCE / 100,
            "110 kB of 100-byte frames, whichever thread drew them"
        );
    }

    #[test]
    fn limits_below_a_byte_are_refused() {
        assert_eq!(RateLimit::from_bits(7, 80_000), None);
        assert_eq!(RateLimit::from_bits(8_000_000, 7), None);
        assert_eq!(
            RateLimit::from_bits(8_000_000, 80_000),
            Some(RateLimit {
                bytes_per_sec: 1_000_000,
                burst_bytes: 10_000
            })
        );
    }
}
