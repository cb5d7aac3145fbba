//! Holding a pod's frames until its egress limit lets them leave
//! (`egress_limit`): what the bandwidth plugin's TBF would queue, a worker
//! keeps here, each frame with the instant it may go.
//!
//! A port with frames held is not read again until they have left: what
//! the pod sends meanwhile waits in the kernel's queue of the port's
//! socket, as it would in the TBF's, so a worker holds at most one batch
//! per port. Frames that would wait longer than the plugin's queue
//! (`QUEUE_LIMIT`) are dropped and counted as `egress_rate_limited`, and
//! so are frames that must wait while the worker already holds
//! [`MAX_HELD`], or super-frames past [`MAX_HELD_LARGE`] (the pool's
//! super-frame buffers, 256 by default, serve every port of every
//! worker). While a port waits, what the pod sends waits in its socket's
//! queue; past that queue the kernel drops it, and the port counts those
//! drops as `rx_queue_full`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::drop::DropReason;
use crate::egress_limit::{wire_bytes, Departure, EgressBucket, QUEUE_LIMIT};
use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE};
use crate::port::PortId;
use crate::stats::{OffloadEvent, Stats};

/// The most frames a worker holds for every port together (a port holds
/// at most about one batch: it is not read while it holds any).
pub(super) const MAX_HELD: usize = 4 * BATCH_SIZE;
/// The most super-frame buffers a worker holds: an eighth of the pool's
/// default 256, so that a few limited pods sending TCP cannot starve the
/// other ports of buffers for super-frames.
pub(super) const MAX_HELD_LARGE: usize = BATCH_SIZE;

/// A frame and when it may leave.
struct Held {
    leaves: Instant,
    frame: PacketBuf,
}

/// One worker's held frames, per port in the order they arrived (which is
/// the order they may leave: the bucket hands out departures in order).
#[derive(Default)]
pub(super) struct Shaper {
    /// Indexed by port number.
    held: Vec<VecDeque<Held>>,
    /// Ports with frames held.
    holding: Vec<PortId>,
    /// Frames held, every port's.
    count: usize,
    /// Of those, super-frame buffers.
    large: usize,
    /// Where `shape` goes through a batch from.
    incoming: Vec<PacketBuf>,
}

impl Shaper {
    /// Applies `bucket` to `batch`, just read from `port`: frames that
    /// may leave now stay in it, in order; from the first that must wait,
    /// every frame is held (a later one never leaves before it) or, past
    /// the queue or [`MAX_HELD`], dropped and counted.
    pub(super) fn shape(
        &mut self,
        port: PortId,
        bucket: &EgressBucket,
        batch: &mut Vec<PacketBuf>,
        now: Instant,
        stats: &Stats,
        pool: &mut PacketPool,
    ) {
        // The batch's frames are gone through from a second vector, kept
        // between calls: after the first few calls, none allocates.
        let mut incoming = std::mem::take(&mut self.incoming);
        std::mem::swap(batch, &mut incoming);
        let mut waiting = self.is_holding(port);
        let mut dropped = 0;
        let held_before = self.count;
        for frame in incoming.drain(..) {
            let room = self.count < MAX_HELD && (!frame.is_large() || self.large < MAX_HELD_LARGE);
            let longest = if room { QUEUE_LIMIT } else { Duration::ZERO };
            match bucket.schedule(wire_bytes(&frame), now, longest) {
                Departure::Now if !waiting => batch.push(frame),
                // Paid for, but behind a frame that waits.
                Departure::Now => self.hold(port, now, frame),
                Departure::After(wait) => {
                    waiting = true;
                    self.hold(port, now + wait, frame);
                }
                Departure::Dropped => {
                    dropped += 1;
                    pool.free(frame);
                }
            }
        }
        self.incoming = incoming;
        let held = self.count - held_before;
        if held > 0 {
            stats.add_offload(port, OffloadEvent::EgressHeld, held as u64);
        }
        if dropped > 0 {
            stats.add_drops(port, DropReason::EgressRateLimited, dropped);
        }
    }

    fn hold(&mut self, port: PortId, leaves: Instant, frame: PacketBuf) {
        let index = usize::from(port.0);
        if self.held.len() <= index {
            self.held.resize_with(index + 1, VecDeque::new);
        }
        if self.held[index].is_empty() {
            self.holding.push(port);
        }
        self.large += usize::from(frame.is_large());
        self.held[index].push_back(Held { leaves, frame });
        self.count += 1;
    }

    /// True while `port` has frames held (it is not to be read).
    pub(super) fn is_holding(&self, port: PortId) -> bool {
        self.held
            .get(usize::from(port.0))
            .is_some_and(|q| !q.is_empty())
    }

    /// When the next held frame may leave.
    pub(super) fn next_release(&self) -> Option<Instant> {
        self.holding
            .iter()
            .filter_map(|p| self.held[usize::from(p.0)].front())
            .map(|h| h.leaves)
            .min()
    }

    /// Moves the frames of one port that may leave at `now` into `batch`
    /// (empty on entry); returns that port and whether it still holds
    /// frames, or `None` if no frame is due.
    pub(super) fn release(
        &mut self,
        now: Instant,
        batch: &mut Vec<PacketBuf>,
    ) -> Option<(PortId, bool)> {
        let position = self.holding.iter().position(|p| {
            self.held[usize::from(p.0)]
                .front()
                .is_some_and(|h| h.leaves <= now)
        })?;
        let port = self.holding[position];
        let queue = &mut self.held[usize::from(port.0)];
        while queue.front().is_some_and(|h| h.leaves <= now) {
            let held = queue.pop_front().expect("a front");
            self.large -= usize::from(held.frame.is_large());
            batch.push(held.frame);
            self.count -= 1;
        }
        let still = !queue.is_empty();
        if !still {
            self.holding.swap_remove(position);
        }
        Some((port, still))
    }

    /// Gives back every frame held for `port` (detached): returns how many.
    pub(super) fn forget(&mut self, port: PortId, pool: &mut PacketPool) -> usize {
        let Some(queue) = self.held.get_mut(usize::from(port.0)) else {
            return 0;
        };
        let n = queue.len();
        for held in queue.drain(..) {
            self.large -= usize::from(held.frame.is_large());
            pool.free(held.frame);
        }
        self.count -= n;
        self.holding.retain(|&p| p != port);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress_limit::RateLimit;

    /// 1 MB/s, a 2 kB burst: one 1,000-byte frame a millisecond.
    fn bucket() -> EgressBucket {
        EgressBucket::new(RateLimit {
            bytes_per_sec: 1_000_000,
            burst_bytes: 2_000,
        })
    }

    fn frames(pool: &mut PacketPool, port: PortId, n: u8) -> Vec<PacketBuf> {
        (0..n)
            .map(|i| pool.alloc_with(port, &[i; 1_000]).unwrap())
            .collect()
    }

    fn tags(batch: &[PacketBuf]) -> Vec<u8> {
        batch.iter().map(|f| f.frame()[0]).collect()
    }

    #[test]
    fn frames_past_the_burst_wait_their_turn_in_order_and_past_the_queue_are_dropped() {
        let mut pool = PacketPool::new(64, 2048);
        let stats = Stats::new(4);
        let port = PortId(1);
        let p = bucket();
        let mut shaper = Shaper::default();
        let now = Instant::now();
        let mut batch = frames(&mut pool, port, 32);
        shaper.shape(port, &p, &mut batch, now, &stats, &mut pool);
        // Two at once (the burst), then one a millisecond for 25 ms.
        assert_eq!(tags(&batch), [0, 1]);
        assert!(shaper.is_holding(port));
        assert_eq!(
            stats.snapshot().drop_count(DropReason::EgressRateLimited),
            32 - 2 - 25
        );
        pool.free_all(&mut batch);
        assert_eq!(shaper.next_release(), Some(now + Duration::from_millis(1)));
        assert_eq!(shaper.release(now, &mut batch), None, "nothing due yet");
        let at = now + Duration::from_micros(10_500);
        assert_eq!(shaper.release(at, &mut batch), Some((port, true)));
        assert_eq!(
            tags(&batch),
            (2..12).collect::<Vec<u8>>(),
            "ten due, in order"
        );
        pool.free_all(&mut batch);
        let at = now + Duration::from_millis(25);
        assert_eq!(shaper.release(at, &mut batch), Some((port, false)));
        assert_eq!(tags(&batch), (12..27).collect::<Vec<u8>>());
        assert!(!shaper.is_holding(port));
        assert_eq!(shaper.next_release(), None);
        pool.free_all(&mut batch);
        assert_eq!(pool.in_use(), 0, "every frame left or was given back");
    }

    #[test]
    fn a_frame_that_conforms_behind_a_waiting_one_waits_too() {
        let mut pool = PacketPool::new(64, 2048);
        let stats = Stats::new(4);
        let port = PortId(2);
        let p = bucket();
        let mut shaper = Shaper::default();
        let now = Instant::now();
        let mut batch = frames(&mut pool, port, 3);
        shaper.shape(port, &p, &mut batch, now, &stats, &mut pool);
        assert_eq!(tags(&batch), [0, 1]);
        pool.free_all(&mut batch);
        // Time passes: a new frame would conform, but one still waits.
        let later = now + Duration::from_micros(1_500);
        let mut batch = vec![pool.alloc_with(port, &[9; 1_000]).unwrap()];
        shaper.shape(port, &p, &mut batch, later, &stats, &mut pool);
        assert!(batch.is_empty(), "it does not overtake the held frame");
        assert_eq!(shaper.release(later, &mut batch), Some((port, true)));
        assert_eq!(tags(&batch), [2]);
        pool.free_all(&mut batch);
        let last = now + Duration::from_millis(2);
        assert_eq!(shaper.release(last, &mut batch), Some((port, false)));
        assert_eq!(tags(&batch), [9]);
        pool.free_all(&mut batch);
    }

    #[test]
    fn a_worker_holds_at_most_max_held_large_super_frame_buffers() {
        let mut pool = PacketPool::with_large(8, 2048, 4 * MAX_HELD_LARGE);
        let stats = Stats::new(8);
        // 1 MB/s, a frame's worth of burst: every later frame must wait.
        let p = EgressBucket::new(RateLimit {
            bytes_per_sec: 1_000_000,
            burst_bytes: 64,
        });
        let mut shaper = Shaper::default();
        let now = Instant::now();
        for port in 1..=3u16 {
            let mut batch: Vec<PacketBuf> = (0..MAX_HELD_LARGE)
                .map(|_| {
                    let mut buf = pool.alloc_large(PortId(port)).unwrap();
                    assert!(buf.set(&[0; 64]));
                    buf
                })
                .collect();
            shaper.shape(PortId(port), &p, &mut batch, now, &stats, &mut pool);
            pool.free_all(&mut batch);
        }
        assert_eq!(
            shaper.large, MAX_HELD_LARGE,
            "the cap on super-frame buffers"
        );
        for port in 1..=3u16 {
            shaper.forget(PortId(port), &mut pool);
        }
        assert_eq!((shaper.large, shaper.count), (0, 0));
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_worker_holds_at_most_max_held_frames_and_forgets_a_detached_port() {
        let mut pool = PacketPool::new(4 * MAX_HELD, 2048);
        let stats = Stats::new(8);
        let p = EgressBucket::new(RateLimit {
            bytes_per_sec: 100_000_000,
            burst_bytes: 1_000,
        });
        let mut shaper = Shaper::default();
        let now = Instant::now();
        for port in 1..=5u16 {
            let mut batch = frames(&mut pool, PortId(port), 64);
            shaper.shape(PortId(port), &p, &mut batch, now, &stats, &mut pool);
            pool.free_all(&mut batch);
        }
        assert_eq!(shaper.count, MAX_HELD);
        assert!(
            stats.snapshot().drop_count(DropReason::EgressRateLimited)
                >= 5 * 64 - MAX_HELD as u64 - 1
        );
        let held = shaper.forget(PortId(1), &mut pool);
        assert_eq!(held, 63, "port 1's frames past its first");
        assert!(!shaper.is_holding(PortId(1)));
        assert_eq!(shaper.count, MAX_HELD - 63);
        for port in 2..=5u16 {
            shaper.forget(PortId(port), &mut pool);
        }
        assert_eq!(pool.in_use(), 0);
    }
}
