//! The spin guard: it puts a worker that spins in the idle class back in
//! its working class when a busy task has kept it off its CPU too long.
//!
//! A worker spins in `SCHED_IDLE` so that the pods on its CPU run first
//! ([`crate::sys::sched`]). The price is what happens when a task that
//! does not sleep (a pod computing, a build) takes that CPU: a thread in
//! `SCHED_IDLE` weighs 3 against a normal task's 1024 (`WEIGHT_IDLEPRIO`,
//! kernel/sched/core.c), so under EEVDF every microsecond it spun costs
//! it about 340 µs of the busy task's running before it is eligible
//! again (kernel/sched/fair.c). Packets that arrive meanwhile wake
//! nobody: the worker is runnable, not waiting in `epoll_wait`. With four
//! busy loops on this two-CPU VM, a node's pings to its own pod took
//! 211 ms on average and up to 876 ms; the kernel's path, 0.15 ms at most
//! (docs/benchmarks.md, "A spinning worker kept off its CPU").
//! [`super::spin::SpinWindow`] pauses spinning after such a preemption,
//! but only once the worker runs again.
//!
//! The guard is a thread per worker that sleeps on a one-shot timer, in
//! `SCHED_FIFO` one priority above the workers. Going into the idle class,
//! the worker arms the timer for its spin window plus [`GRACE`]; coming
//! back, it disarms it. If the timer fires while the worker still spins,
//! the guard moves it to its working class (`sched_setscheduler` on its
//! thread id): a real-time task runs ahead of every fair one, so the
//! worker preempts the busy task at once, sees that its spin was
//! preempted, and pauses spinning (100 ms to a second), sleeping in
//! `epoll_wait` meanwhile, where the next packet wakes it. Until the
//! worker has seen the rescue, the guard looks again, after [`GRACE`]
//! and then twice as long each time: a worker that went into the idle
//! class just after the move is moved again. A spinning worker in
//! `SCHED_FIFO` thus waits at most its window and about two graces
//! longer than a sleeping one would. The guard costs
//! two timer settings per spin and nothing while the node is idle; if it
//! fails (its timer, a class change), the worker stops spinning in the
//! idle class.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::stats::WorkerStats;
use crate::sys::sched::{self, ThreadClass, ThreadId, WORK_PRIORITY};
use crate::sys::timer::OneShotTimer;

/// How long past its spin window a worker may stay off its CPU before
/// the guard moves it: about what waking a sleeping thread costs on this
/// kind of VM (a VM exit, 200-250 µs), so that a spinning worker never
/// waits much longer than a sleeping one would.
pub(super) const GRACE: Duration = Duration::from_micros(250);

/// The longest the guard waits before it looks again at a worker it
/// moved that has not answered.
const LONGEST_LOOK_AGAIN: Duration = Duration::from_millis(100);

/// A worker's spin guard (see the module's documentation); dropping it
/// stops its thread.
pub(super) struct SpinGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    timer: OneShotTimer,
    /// The worker's thread and the class it forwards in.
    worker: ThreadId,
    work_class: ThreadClass,
    /// Deadlines are nanoseconds since this instant.
    epoch: Instant,
    /// When the worker's current spin must have ended (0: it is not
    /// spinning).
    deadline_nanos: AtomicU64,
    /// The guard moved the worker since the worker last asked.
    rescued: AtomicBool,
    /// The guard cannot do its work: the worker must not spin in the
    /// idle class any more.
    failed: AtomicBool,
    stop: AtomicBool,
}

impl SpinGuard {
    /// Starts the guard of the calling thread, which forwards (and must
    /// be put back) in `work_class`.
    pub(super) fn start(
        name: String,
        work_class: ThreadClass,
        stats: Arc<WorkerStats>,
    ) -> io::Result<SpinGuard> {
        let shared = Arc::new(Shared {
            timer: OneShotTimer::new()?,
            worker: ThreadId::current(),
            work_class,
            epoch: Instant::now(),
            deadline_nanos: AtomicU64::new(0),
            rescued: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let (ready, started) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new().name(name).spawn(move || {
                rise_above_the_workers(shared.work_class);
                let _ = ready.send(());
                guard(&shared, &stats);
            })?
        };
        // Until the guard has risen above its worker, it inherits the
        // worker's class and CPUs: in SCHED_FIFO it would not run before
        // the worker sleeps, and a first spin would go unguarded.
        let _ = started.recv();
        Ok(SpinGuard {
            shared,
            thread: Some(thread),
        })
    }

    /// The worker goes into the idle class to spin for at most `window`;
    /// an error if the guard cannot guard it.
    pub(super) fn spinning(&self, window: Duration) -> io::Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "the spin guard stopped (see its log line)",
            ));
        }
        let limit = window + GRACE;
        let deadline = self.shared.epoch.elapsed() + limit;
        let nanos = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
        self.shared.deadline_nanos.store(nanos, Ordering::Release);
        self.shared.timer.arm(limit)
    }

    /// The worker is out of the idle class (it left it, or saw that the
    /// guard moved it).
    pub(super) fn done(&self) -> io::Result<()> {
        self.shared.deadline_nanos.store(0, Ordering::Release);
        self.shared.timer.disarm()
    }

    /// Whether the guard moved the worker to its working class since the
    /// last call (the worker's own idea of its class is then stale).
    pub(super) fn rescued(&self) -> bool {
        self.shared.rescued.load(Ordering::Relaxed)
            && self.shared.rescued.swap(false, Ordering::AcqRel)
    }
}

impl Drop for SpinGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let woken = self.shared.timer.arm(Duration::ZERO);
        if let Some(thread) = self.thread.take() {
            // A guard that cannot be woken is left asleep rather than
            // waited for (its thread, timer and a reference to the
            // worker's counters leak): joining it would hang the worker.
            if woken.is_ok() {
                let _ = thread.join();
            }
        }
    }
}

/// Puts the calling guard thread one real-time priority above workers
/// that forward in `work_class`, if that is `SCHED_FIFO`: a worker busy on
/// its CPU then does not delay a rescue (a worker yields only after a
/// millisecond).
fn rise_above_the_workers(work_class: ThreadClass) {
    if work_class != ThreadClass::Realtime {
        return;
    }
    if let Err(e) = sched::set_thread_policy(
        ThreadId::current(),
        ThreadClass::Realtime,
        WORK_PRIORITY + 1,
    ) {
        tracing::warn!("spin guard: cannot run above the workers ({e}); a busy worker on its CPU may delay a rescue by a millisecond");
    }
}

/// The guard's thread: sleeps on the timer, and moves the worker when it
/// fires after the worker's spin should have ended.
fn guard(shared: &Shared, stats: &WorkerStats) {
    let fail = |what: &str, e: io::Error| {
        tracing::warn!("spin guard: {what} ({e}); its worker stops spinning in the idle class");
        shared.failed.store(true, Ordering::Release);
    };
    // The spin last rescued (its deadline), counted once however often
    // the guard looks again, and how long until it looks again: doubling,
    // so that a worker that does not answer for a while (busy in a long
    // system call) costs a few wake-ups, not thousands.
    let mut rescued_spin = 0;
    let mut look_again = GRACE;
    loop {
        if let Err(e) = shared.timer.wait() {
            return fail("cannot wait on its timer", e);
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let deadline = shared.deadline_nanos.load(Ordering::Acquire);
        if deadline == 0 {
            // The worker is out of the idle class.
            continue;
        }
        let now = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if now < deadline {
            // A spin that began after this expiry was due, or whose arm
            // this thread's look-again overwrote: wait for its deadline.
            if let Err(e) = shared.timer.arm(Duration::from_nanos(deadline - now)) {
                return fail("cannot set its timer", e);
            }
            continue;
        }
        if let Err(e) = sched::set_thread_class(shared.worker, shared.work_class) {
            return fail("cannot move its worker back to work", e);
        }
        shared.rescued.store(true, Ordering::Release);
        if rescued_spin != deadline {
            rescued_spin = deadline;
            look_again = GRACE;
            stats.spin_rescued();
        }
        // Until the worker answers (`done`, or a new spin's deadline),
        // look again: it may have gone into the idle class just after
        // the move (it was between arming and changing class).
        if let Err(e) = shared.timer.arm(look_again) {
            return fail("cannot set its timer", e);
        }
        look_again = (look_again * 2).min(LONGEST_LOOK_AGAIN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits, spinning, until `done` or ten seconds pass; whether `done`.
    fn spin_until(mut done: impl FnMut() -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// The race the guard's look-again closes: the guard moves a worker
    /// that was between arming it and entering the idle class (so the
    /// move changes nothing), and the worker then enters it with a busy
    /// task on its CPU. Only a second move brings it back; without one it
    /// would stay in the idle class, running a few milliseconds a second.
    #[test]
    fn a_worker_that_goes_idle_just_after_its_rescue_is_moved_again() {
        assert_eq!(
            sched::class_allowed(ThreadClass::Realtime),
            Ok(()),
            "this test needs CAP_SYS_NICE (run it as root)"
        );
        let cpu = *sched::allowed_cpus().unwrap().last().unwrap();
        let stats = Arc::new(WorkerStats::default());
        let worker = {
            let stats = Arc::clone(&stats);
            std::thread::spawn(move || {
                sched::pin_to_cpu(cpu).unwrap();
                sched::set_class(ThreadClass::Realtime).unwrap();
                // Started here, the guard shares the worker's CPU, above it.
                let guard =
                    SpinGuard::start("test-guard".into(), ThreadClass::Realtime, stats).unwrap();
                let stop = Arc::new(AtomicBool::new(false));
                let busy = {
                    let stop = Arc::clone(&stop);
                    std::thread::spawn(move || {
                        sched::pin_to_cpu(cpu).unwrap();
                        // Not the worker's class, which it inherited.
                        sched::set_class(ThreadClass::Normal).unwrap();
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    })
                };
                guard.spinning(Duration::ZERO).unwrap();
                // Still in its working class when the guard fires.
                let first_move = spin_until(|| guard.rescued());
                sched::set_class(ThreadClass::Idle).unwrap();
                let moved_again =
                    spin_until(|| sched::current_class().unwrap() != ThreadClass::Idle);
                let class = sched::current_class().unwrap();
                sched::set_class(ThreadClass::Realtime).unwrap();
                stop.store(true, Ordering::Relaxed);
                busy.join().unwrap();
                (first_move, moved_again, class)
            })
        };
        let (first_move, moved_again, class) = worker.join().unwrap();
        assert!(first_move, "the guard fired on the armed spin");
        assert!(moved_again, "the worker stayed in the idle class");
        assert_eq!(class, ThreadClass::Realtime);
        assert_eq!(
            stats.snapshot().spins_rescued,
            1,
            "one spin, counted once however often it was moved"
        );
    }
}
