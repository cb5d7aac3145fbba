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
//! 223 ms on average and up to 900 ms; the kernel's path, 0.23 ms at most.
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
//! preempted and sleeps in `epoll_wait` from then on, where the next
//! packet wakes it. A spinning worker thus waits at most its window and
//! the grace longer than a sleeping one would. The guard costs a timer
//! set per spin and nothing while the node is idle.

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
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || guard(&shared, &stats))?
        };
        Ok(SpinGuard {
            shared,
            thread: Some(thread),
        })
    }

    /// The worker went into the idle class to spin for at most `window`.
    pub(super) fn spinning(&self, window: Duration) -> io::Result<()> {
        let limit = window + GRACE;
        let deadline = self.shared.epoch.elapsed() + limit;
        let nanos = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
        self.shared.deadline_nanos.store(nanos, Ordering::Release);
        self.shared.timer.arm(limit)
    }

    /// The worker left the idle class.
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
            // waited for: it holds nothing but its timer.
            if woken.is_ok() {
                let _ = thread.join();
            }
        }
    }
}

/// The guard's thread: sleeps on the timer, and moves the worker when it
/// fires after the worker's spin should have ended.
fn guard(shared: &Shared, stats: &WorkerStats) {
    // Above the workers, so that a worker busy on this CPU does not delay
    // the rescue of another (a worker yields only after a millisecond).
    if shared.work_class == ThreadClass::Realtime {
        let _ = sched::set_thread_policy(
            ThreadId::current(),
            ThreadClass::Realtime,
            WORK_PRIORITY + 1,
        );
    }
    loop {
        if let Err(e) = shared.timer.wait() {
            eprintln!("podswitch spin guard: cannot wait on its timer ({e}); a spinning worker kept off its CPU waits for it");
            return;
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let deadline = shared.deadline_nanos.load(Ordering::Acquire);
        // An expiry from a spin that ended, read after the next began,
        // finds a deadline still ahead.
        let now = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if deadline == 0 || now < deadline {
            continue;
        }
        match sched::set_thread_class(shared.worker, shared.work_class) {
            Ok(()) => {
                shared.deadline_nanos.store(0, Ordering::Release);
                shared.rescued.store(true, Ordering::Release);
                stats.spin_rescued();
            }
            Err(e) => {
                eprintln!(
                    "podswitch spin guard: cannot move the worker back to {:?} ({e})",
                    shared.work_class
                );
            }
        }
    }
}
