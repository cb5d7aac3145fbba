//! Limits on what a pod sends: the CNI bandwidth capability's egress rate
//! and burst (`kubernetes.io/egress-bandwidth`), enforced where podswitch
//! reads the pod's frames.
//!
//! The kernel path enforces that limit with the bandwidth plugin's IFB
//! redirect at the tc ingress hook of the pod's host-side veth. podswitch
//! reads a pod's frames before that hook (an AF_PACKET tap, or XDP) and
//! ends them there, so the hook never sees them: the limit has to be
//! podswitch's own. It shapes, as the plugin's TBF does: a frame beyond
//! the burst waits until the rate allows it, for up to [`QUEUE_LIMIT`]
//! (the plugin's `LatencyInMillis`, plugins/meta/bandwidth), and is
//! dropped past that, counted as `egress_rate_limited`. The waiting is the
//! worker's (`worker::shaper`); this module decides when each frame may
//! leave.
//!
//! Shaping, not policing, because of TCP. A policer (drop what does not
//! conform now, as Open vSwitch's `ingress_policing_rate`) was tried
//! first: on a round trip of tens of microseconds TCP's window outgrows
//! any bucket, it sees only losses, and a 32 MiB transfer under an 80
//! Mbit/s limit with a 20 kB burst moved at 10 Mbit/s (38 Mbit/s with
//! Open vSwitch's advice of a burst of 10 % of the rate). A wait instead
//! lengthens TCP's round trip, which its window follows.
//!
//! The bucket is the Generic Cell Rate Algorithm (ITU-T I.371, the
//! "virtual scheduling" form): one number, the theoretical arrival time of
//! the next frame, kept in an atomic so that every worker reading one of a
//! pod's fanned-out sockets draws on the same bucket without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::packet::PacketBuf;

/// The longest a frame waits for the rate before it is dropped: the
/// bandwidth plugin's TBF queues 25 ms at the rate (`LatencyInMillis`).
pub const QUEUE_LIMIT: Duration = Duration::from_millis(25);

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
pub struct EgressBucket {
    limit: RateLimit,
    /// The burst as time at the rate.
    burst_ns: u64,
    /// The theoretical arrival time of the next frame (GCRA's TAT), in
    /// nanoseconds since `epoch`: how far the pod has sent ahead of the
    /// rate. At or before now the bucket is full; a frame of `n` bytes
    /// conforms while it is at most the burst less `n` bytes' time ahead.
    next_ns: AtomicU64,
    epoch: Instant,
}

/// Two buckets are equal when they enforce the same limit: a port's
/// table entry compares its configuration, not the bucket's fill.
impl PartialEq for EgressBucket {
    fn eq(&self, other: &EgressBucket) -> bool {
        self.limit == other.limit
    }
}

impl Eq for EgressBucket {}

/// When a frame may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Now: it conforms.
    Now,
    /// After this wait (paid for: it must leave then, not be asked again).
    After(Duration),
    /// Never: it would wait longer than [`QUEUE_LIMIT`]; nothing was paid.
    Dropped,
}

impl EgressBucket {
    /// A full bucket for `limit`.
    pub fn new(limit: RateLimit) -> EgressBucket {
        EgressBucket {
            limit,
            burst_ns: limit.nanos_for(limit.burst_bytes),
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

    /// Whether `bytes` sent at `now` would leave at once, without drawing
    /// on the bucket (a trace asks this).
    pub fn conforms(&self, bytes: u64, now: Instant) -> bool {
        let next = self.next_ns.load(Ordering::Relaxed);
        let now = self.since_epoch(now);
        self.leaves_at(next, bytes, now) <= now
    }

    /// When `bytes` sent at `now` may leave, waiting at most `longest`;
    /// a frame that may leave (now or later) is paid for.
    pub fn schedule(&self, bytes: u64, now: Instant, longest: Duration) -> Departure {
        let now_ns = self.since_epoch(now);
        let longest = u64::try_from(longest.as_nanos()).unwrap_or(u64::MAX);
        let cost = self.limit.nanos_for(bytes);
        let mut next = self.next_ns.load(Ordering::Relaxed);
        loop {
            let leaves = self.leaves_at(next, bytes, now_ns);
            let wait = leaves - now_ns;
            if wait > longest {
                return Departure::Dropped;
            }
            let after = next.max(leaves).saturating_add(cost);
            match self.next_ns.compare_exchange_weak(
                next,
                after,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) if wait == 0 => return Departure::Now,
                Ok(_) => return Departure::After(Duration::from_nanos(wait)),
                Err(current) => next = current,
            }
        }
    }

    /// The earliest instant (at or after `now`) at which `bytes` conform:
    /// once the bucket holds them, which is `next` less what the burst
    /// holds beyond them. A frame larger than the whole burst (a pod's TSO
    /// super-frame under a small burst) leaves once the bucket is full,
    /// at `next`, and the bucket then owes what it took beyond the burst:
    /// the long-term rate holds, and no frame waits for ever.
    fn leaves_at(&self, next: u64, bytes: u64, now: u64) -> u64 {
        let room = self.burst_ns.saturating_sub(self.limit.nanos_for(bytes));
        next.saturating_sub(room).max(now)
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Whether `bytes` leave at once (paying), at no wait allowed.
    fn now_or_never(p: &EgressBucket, bytes: u64, at: Instant) -> bool {
        p.schedule(bytes, at, Duration::ZERO) == Departure::Now
    }

    #[test]
    fn a_full_bucket_passes_the_burst_then_paces() {
        let p = EgressBucket::new(LIMIT);
        let now = Instant::now();
        let at_once = (0..100)
            .take_while(|_| now_or_never(&p, 1_000, now))
            .count();
        assert_eq!(at_once, 10, "a 10 kB burst of 1 kB frames");
        // 1 MB/s: the next 1 kB frames leave a millisecond apart.
        for n in 1..=25 {
            assert_eq!(
                p.schedule(1_000, now, QUEUE_LIMIT),
                Departure::After(ms(n)),
                "frame {n} past the burst"
            );
        }
        assert_eq!(
            p.schedule(1_000, now, QUEUE_LIMIT),
            Departure::Dropped,
            "past 25 ms of waiting"
        );
        assert!(!p.conforms(1_000, now + ms(25)));
        assert!(p.conforms(1_000, now + ms(26)));
    }

    #[test]
    fn a_dropped_frame_costs_nothing() {
        let p = EgressBucket::new(LIMIT);
        let now = Instant::now();
        while now_or_never(&p, 1_000, now) {}
        for _ in 0..100 {
            assert_eq!(p.schedule(1_000, now, Duration::ZERO), Departure::Dropped);
        }
        assert!(
            p.conforms(1_000, now + ms(1)),
            "the drops were not paid for"
        );
    }

    #[test]
    fn over_time_it_passes_the_burst_and_the_rate_and_no_more() {
        let p = EgressBucket::new(LIMIT);
        let start = Instant::now();
        let mut passed = 0u64;
        // 4 MB/s offered for 1 s: 100-byte frames every 25 µs.
        for i in 0..40_000u64 {
            if now_or_never(&p, 100, start + Duration::from_micros(i * 25)) {
                passed += 100;
            }
        }
        let most = LIMIT.burst_bytes + LIMIT.bytes_per_sec;
        assert!(passed <= most, "{passed} bytes passed, at most {most}");
        assert!(
            passed >= most - 1_000,
            "{passed} bytes passed, about {most}"
        );
    }

    #[test]
    fn a_frame_larger_than_the_burst_leaves_once_the_bucket_is_full() {
        let p = EgressBucket::new(LIMIT);
        let now = Instant::now();
        assert!(
            now_or_never(&p, 64_000, now),
            "a full bucket lets it through"
        );
        // It owes 54 kB beyond its 10 kB burst: 54 ms at 1 MB/s; then the
        // next 1 kB conforms.
        assert_eq!(
            p.schedule(1_000, now, Duration::from_secs(1)),
            Departure::After(ms(55))
        );
        // The next super-frame waits for a full bucket: 65 ms.
        assert_eq!(
            p.schedule(64_000, now, Duration::from_secs(1)),
            Departure::After(ms(65))
        );
    }

    #[test]
    fn workers_sharing_a_bucket_pass_the_burst_once() {
        let p = std::sync::Arc::new(EgressBucket::new(LIMIT));
        let now = Instant::now();
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1_000).filter(|_| now_or_never(&p, 100, now)).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(
            passed, 100,
            "10 kB of 100-byte frames, whichever thread drew them"
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
