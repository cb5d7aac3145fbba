//! What a worker's loop did: sleeping, waking, batches, spins.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the batch-size histogram's buckets (packets a pipeline
/// run handled; a super-frame counts once).
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// What one worker's loop did, counted with relaxed atomics (one update
/// per loop turn and per batch, read by the metrics endpoint and `top`).
#[derive(Debug)]
pub struct WorkerStats {
    started: Instant,
    /// Sleeps that ended.
    idle_nanos: AtomicU64,
    /// When the sleep going on began, in nanoseconds since `started` plus
    /// one; 0 while awake. A reader counts that sleep too, or the time
    /// since the last wake-up would read as work, and the busy seconds
    /// would fall back when the sleep ends (a counter that goes down,
    /// which the metrics' readers take for a restart).
    asleep_since: AtomicU64,
    wakeups: AtomicU64,
    batches: AtomicU64,
    batch_packets: AtomicU64,
    /// Batches by size: `batch_sizes[i]` counts those of at most
    /// `BATCH_BUCKETS[i]` packets (and more than the bucket before); the
    /// last slot counts the larger ones.
    batch_sizes: [AtomicU64; BATCH_BUCKETS.len() + 1],
    spin_window_nanos: AtomicU64,
    spins_caught: AtomicU64,
    spins_expired: AtomicU64,
    spins_preempted: AtomicU64,
    spins_rescued: AtomicU64,
    handed_off: AtomicU64,
    yields: AtomicU64,
    realtime: AtomicBool,
}

/// A [`WorkerStats`] read at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerStatsSnapshot {
    /// Seconds since the worker started.
    pub elapsed_secs: f64,
    /// Seconds it slept in `epoll_wait`, waiting for packets or commands,
    /// the sleep going on included (read at the instant of a wake-up, the
    /// two halves may disagree by that instant).
    pub idle_secs: f64,
    /// Times it woke from such a sleep.
    pub wakeups: u64,
    /// Pipeline runs.
    pub batches: u64,
    /// Packets in them.
    pub batch_packets: u64,
    /// Runs by size, per bucket of [`BATCH_BUCKETS`] (the last: larger).
    pub batch_sizes: [u64; BATCH_BUCKETS.len() + 1],
    /// How long it polls after its last packet from another CPU before
    /// it sleeps, now (adapted to the traffic, at most `busy_poll`);
    /// after a frame that arrived on its own CPU it sleeps at once.
    pub spin_window_secs: f64,
    /// Spins that ended with a packet (each saved a wake-up).
    pub spins_caught: u64,
    /// Spins that ended in sleep (each cost its window in CPU).
    pub spins_expired: u64,
    /// Spins another task preempted (each paused spinning).
    pub spins_preempted: u64,
    /// Spins its guard ended (counted among those preempted): the worker,
    /// kept off its CPU past its window, was moved back to its working
    /// class.
    pub spins_rescued: u64,
    /// Frames it posted to another worker, which owns their port.
    pub handed_off: u64,
    /// Times it yielded its CPU after working a millisecond on end.
    pub yields: u64,
    /// It forwards in `SCHED_FIFO`.
    pub realtime: bool,
}

impl WorkerStatsSnapshot {
    /// Seconds it was awake: polling, forwarding or busy-polling.
    pub fn busy_secs(&self) -> f64 {
        (self.elapsed_secs - self.idle_secs).max(0.0)
    }
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            started: Instant::now(),
            idle_nanos: AtomicU64::new(0),
            asleep_since: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_packets: AtomicU64::new(0),
            batch_sizes: Default::default(),
            spin_window_nanos: AtomicU64::new(0),
            spins_caught: AtomicU64::new(0),
            spins_expired: AtomicU64::new(0),
            spins_preempted: AtomicU64::new(0),
            spins_rescued: AtomicU64::new(0),
            handed_off: AtomicU64::new(0),
            yields: AtomicU64::new(0),
            realtime: AtomicBool::new(false),
        }
    }
}

impl WorkerStats {
    /// The worker goes to sleep (it may): returns when, for [`Self::slept`].
    pub(super) fn sleeping(&self) -> Instant {
        let now = Instant::now();
        self.asleep_since
            .store(self.nanos_since_start(now) + 1, Ordering::Relaxed);
        now
    }

    /// The worker woke from the sleep that began `since`.
    pub(super) fn slept(&self, since: Instant) {
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.asleep_since.store(0, Ordering::Relaxed);
        self.idle_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    fn nanos_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.started).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn batch(&self, packets: usize) {
        let packets = packets as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_packets.fetch_add(packets, Ordering::Relaxed);
        let bucket = BATCH_BUCKETS
            .iter()
            .position(|&bound| packets <= bound)
            .unwrap_or(BATCH_BUCKETS.len());
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn spin_window(&self, window: Duration) {
        let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.spin_window_nanos.store(nanos, Ordering::Relaxed);
    }

    pub(super) fn spin_caught(&self) {
        self.spins_caught.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn spin_expired(&self) {
        self.spins_expired.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn spin_preempted(&self) {
        self.spins_preempted.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn spin_rescued(&self) {
        self.spins_rescued.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn handed_off(&self, frames: u64) {
        self.handed_off.fetch_add(frames, Ordering::Relaxed);
    }

    pub(super) fn yielded(&self) {
        self.yields.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn realtime(&self, realtime: bool) {
        self.realtime.store(realtime, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> WorkerStatsSnapshot {
        let now = Instant::now();
        let asleep_since = self.asleep_since.load(Ordering::Relaxed);
        let asleep = match asleep_since {
            0 => 0,
            since => self.nanos_since_start(now).saturating_sub(since - 1),
        };
        WorkerStatsSnapshot {
            elapsed_secs: now.duration_since(self.started).as_secs_f64(),
            idle_secs: (self.idle_nanos.load(Ordering::Relaxed) + asleep) as f64 / 1e9,
            wakeups: self.wakeups.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            batch_packets: self.batch_packets.load(Ordering::Relaxed),
            batch_sizes: std::array::from_fn(|i| self.batch_sizes[i].load(Ordering::Relaxed)),
            spin_window_secs: self.spin_window_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            spins_caught: self.spins_caught.load(Ordering::Relaxed),
            spins_expired: self.spins_expired.load(Ordering::Relaxed),
            spins_preempted: self.spins_preempted.load(Ordering::Relaxed),
            spins_rescued: self.spins_rescued.load(Ordering::Relaxed),
            handed_off: self.handed_off.load(Ordering::Relaxed),
            yields: self.yields.load(Ordering::Relaxed),
            realtime: self.realtime.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sleep counts as idle while it goes on, not only once it ends: the
    /// busy seconds never fall back (they did by the whole sleep when it
    /// ended, and a Prometheus counter that falls reads as a restart).
    #[test]
    fn a_sleep_counts_as_idle_while_it_goes_on() {
        let stats = WorkerStats::default();
        let since = stats.sleeping();
        std::thread::sleep(Duration::from_millis(30));
        let asleep = stats.snapshot();
        assert!(asleep.idle_secs >= 0.03, "{asleep:?}");
        stats.slept(since);
        let awake = stats.snapshot();
        assert!(
            awake.busy_secs() + 1e-6 >= asleep.busy_secs(),
            "busy fell from {} to {}",
            asleep.busy_secs(),
            awake.busy_secs()
        );
        assert!(awake.idle_secs >= asleep.idle_secs);
    }
}
