//! The spin window: how long a worker polls after its last packet before
//! it sleeps, adapted to the gaps it sees.

use std::time::{Duration, Instant};

/// How long a worker keeps polling after its last packet before it
/// sleeps: a window it adapts to the gaps it sees, as the kernel's
/// haltpoll governor adapts a virtual CPU's halt polling
/// (Documentation/virt/guest-halt-polling.rst).
///
/// The packets it counts are those a spin could catch sooner than a
/// wake-up: frames from other CPUs (the loop sleeps at once after frames
/// that arrive on its own CPU, see `Arrival`).
///
/// Spinning pays only when the next packet comes before the window ends;
/// otherwise it costs a CPU the pods could use and, worse on a small VM,
/// it keeps that CPU busy so that every task woken meanwhile lands on a
/// halted virtual CPU, which takes about 200 µs to wake. So the window
/// grows, up to the configured bound, to cover a gap the worker slept
/// through that spinning would have caught, and halves after a gap longer
/// than the bound, which no spin could have caught. Under load the gaps
/// are microseconds and the window stays at its bound; for a ping every
/// few milliseconds it falls to zero and the worker sleeps at once.
///
/// A spin that another task preempted pauses spinning: the CPU is not
/// idle, and a worker in the idle class that a busy pod preempted runs
/// again only when that pod sleeps, however many packets wait (under a
/// TCP stream between two pods, pings waited milliseconds). Sleeping in
/// `epoll_wait` instead, it is woken by the first packet, in its working
/// class, ahead of the pod. The pause is 100 ms, doubling up to a second
/// while preemptions come within two seconds of each other, so a busy
/// CPU sees at most about one such stall a second.
#[derive(Debug, Clone, Copy)]
pub(super) struct SpinWindow {
    window: Duration,
    bound: Duration,
    /// No spinning before this instant.
    paused_until: Option<Instant>,
    /// The last pause, and when it began.
    pause: Duration,
    last_preempted: Option<Instant>,
}

impl SpinWindow {
    /// Below this, a shrinking window becomes zero.
    const FLOOR: Duration = Duration::from_micros(5);
    /// A gap between two spinning turns longer than this is a preemption.
    pub(super) const PREEMPTED: Duration = Duration::from_micros(50);
    const FIRST_PAUSE: Duration = Duration::from_millis(100);
    const LONGEST_PAUSE: Duration = Duration::from_secs(1);
    /// Preemptions closer than this make the pause grow.
    const CONTENDED: Duration = Duration::from_secs(2);

    /// Starts at its bound: a worker that sees traffic at once is busy.
    pub(super) fn new(bound: Duration) -> SpinWindow {
        SpinWindow {
            window: bound,
            bound,
            paused_until: None,
            pause: Duration::ZERO,
            last_preempted: None,
        }
    }

    /// The window as adapted to the gaps (what the stats show).
    pub(super) fn window(&self) -> Duration {
        self.window
    }

    /// The window in force at `now`: zero while spinning is paused.
    pub(super) fn window_at(&self, now: Instant) -> Duration {
        if self.paused(now) {
            Duration::ZERO
        } else {
            self.window
        }
    }

    /// Spinning is paused at `now` (after a preemption).
    pub(super) fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| now < until)
    }

    /// Another task took the CPU while the worker spun.
    pub(super) fn preempted(&mut self, now: Instant) {
        let contended = self
            .last_preempted
            .is_some_and(|last| now.saturating_duration_since(last) < Self::CONTENDED);
        self.pause = if contended {
            (self.pause * 2).clamp(Self::FIRST_PAUSE, Self::LONGEST_PAUSE)
        } else {
            Self::FIRST_PAUSE
        };
        self.last_preempted = Some(now);
        self.paused_until = Some(now + self.pause);
    }

    /// The worker slept during the `gap` between two packets from other
    /// CPUs.
    pub(super) fn after_sleep(&mut self, gap: Duration) {
        if gap <= self.bound {
            // A quarter more than the gap: the next one is rarely shorter.
            self.window = (self.window * 2).max(gap + gap / 4).min(self.bound);
        } else {
            self.window /= 2;
            if self.window < Self::FLOOR {
                self.window = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_micros(200);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_preempted_spin_pauses_spinning_longer_while_preemptions_go_on() {
        let ms = Duration::from_millis;
        let mut spin = SpinWindow::new(BOUND);
        let t0 = Instant::now();
        spin.preempted(t0);
        assert_eq!(spin.window_at(t0 + ms(99)), Duration::ZERO);
        assert_eq!(spin.window_at(t0 + ms(100)), BOUND);
        // Preempted again soon after: a pause twice as long.
        let t1 = t0 + ms(150);
        spin.preempted(t1);
        assert_eq!(spin.window_at(t1 + ms(199)), Duration::ZERO);
        assert_eq!(spin.window_at(t1 + ms(200)), BOUND);
        // While preemptions go on, the pause stops growing at a second.
        let mut t = t1;
        for _ in 0..10 {
            t += ms(1500);
            spin.preempted(t);
        }
        assert_eq!(spin.window_at(t + ms(999)), Duration::ZERO);
        assert_eq!(spin.window_at(t + ms(1000)), BOUND);
        // A preemption long after the last one: a short pause again.
        let t2 = t + Duration::from_secs(3);
        spin.preempted(t2);
        assert_eq!(spin.window_at(t2 + ms(100)), BOUND);
        // The adapted window itself is left as it was.
        assert_eq!(spin.window(), BOUND);
    }

    #[test]
    fn the_window_starts_at_its_bound_and_stays_there_under_load() {
        let mut spin = SpinWindow::new(BOUND);
        assert_eq!(spin.window(), BOUND);
        for _ in 0..100 {
            spin.after_sleep(us(3));
        }
        assert_eq!(spin.window(), BOUND);
    }

    #[test]
    fn gaps_no_spin_could_catch_take_the_window_to_zero() {
        let mut spin = SpinWindow::new(BOUND);
        // A ping every 2 ms: 200, 100, 50, 25, 12, 6, then zero.
        for _ in 0..6 {
            assert!(spin.window() > Duration::ZERO);
            spin.after_sleep(us(2000));
        }
        assert_eq!(spin.window(), Duration::ZERO);
        spin.after_sleep(us(2000));
        assert_eq!(spin.window(), Duration::ZERO);
    }

    #[test]
    fn a_gap_spinning_would_have_caught_grows_the_window_past_it() {
        let mut spin = SpinWindow::new(BOUND);
        for _ in 0..10 {
            spin.after_sleep(us(5000));
        }
        assert_eq!(spin.window(), Duration::ZERO);
        // A pod that answers 40 µs after each request.
        spin.after_sleep(us(40));
        assert_eq!(spin.window(), us(50));
        // Never past the bound, however short the gaps.
        spin.after_sleep(us(190));
        assert_eq!(spin.window(), BOUND);
    }

    #[test]
    fn a_zero_bound_never_spins() {
        let mut spin = SpinWindow::new(Duration::ZERO);
        spin.after_sleep(us(1));
        assert_eq!(spin.window(), Duration::ZERO);
    }
}
