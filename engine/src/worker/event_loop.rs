//! A worker's loop: it polls its ports, runs each received batch through
//! its pipeline and hands the outputs to their ports.

use std::fs::File;
use std::io::{self, BufWriter};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::handoff::{Crew, MAILBOX_FRAMES};
use super::shaper::Shaper;
use super::spin::SpinWindow;
use super::spin_guard::SpinGuard;
use super::stats::WorkerStats;
use super::{Arrival, CaptureResult, Command, Place, WorkerOptions, WAKER};
use crate::capture::Capture;
use crate::drop::DropReason;
use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE};
use crate::pipeline::{Outputs, Pipeline};
use crate::port::{Port, PortId};
use crate::sys::sched::{self, ThreadClass};
use crate::sys::timer::OneShotTimer;
use crate::tables::Tables;

/// Counts every frame of `frames`, bound for `port`, dropped for `reason`,
/// and gives their buffers back.
fn drop_all(
    tables: &Tables,
    pool: &mut PacketPool,
    port: PortId,
    reason: DropReason,
    frames: &mut Vec<PacketBuf>,
) {
    tables.stats.add_drops(port, reason, frames.len() as u64);
    pool.free_all(frames);
}

/// File descriptors one port may ask to be polled.
const FDS_PER_PORT: usize = 8;
/// The release timer's token (the ports' are their number times
/// [`FDS_PER_PORT`] and up; the waker's is the last).
const RELEASE: Token = Token(usize::MAX - 1);
/// While some port has frames waiting, epoll is asked once in this many
/// turns of the loop.
const POLL_EVERY_TURNS: u32 = 4;
/// A worker that has worked this long without sleeping yields its CPU to
/// the other real-time threads of its priority (the other workers): in
/// `SCHED_FIFO` nothing else would preempt it. The kernel bounds its own
/// receive work the same way (`netdev_budget_usecs`, 2 ms by default).
const YIELD_AFTER: Duration = Duration::from_millis(1);

type CaptureFile = Capture<Box<dyn Port>, BufWriter<File>>;

enum Slot {
    Plain(Box<dyn Port>),
    Captured(Box<CaptureFile>, mpsc::Sender<io::Result<CaptureResult>>),
}

impl Slot {
    fn port(&mut self) -> &mut dyn Port {
        match self {
            Slot::Plain(p) => p.as_mut(),
            Slot::Captured(c, _) => c.as_mut(),
        }
    }

    fn into_port(self) -> Box<dyn Port> {
        match self {
            Slot::Plain(p) => p,
            Slot::Captured(c, done) => {
                let packets = c.captured();
                let (port, error) = c.finish();
                let _ = done.send(Ok(CaptureResult { packets, error }));
                port
            }
        }
    }
}

pub(super) struct Loop {
    poll: Poll,
    commands: mpsc::Receiver<Command>,
    tables: Arc<Tables>,
    pipeline: Pipeline,
    pool: PacketPool,
    slots: Vec<Option<Slot>>,
    /// For each port, its frames arrive on this worker's CPU
    /// ([`Arrival::ThisCpu`], and the worker is pinned there).
    arrives_here: Vec<bool>,
    ready: Vec<bool>,
    ready_list: Vec<PortId>,
    /// Ports being captured (their deadlines need a timed wake-up).
    captures: usize,
    /// The thread's class now.
    class: ThreadClass,
    /// The class it forwards and sleeps in.
    work_class: ThreadClass,
    /// It does not spin in `SCHED_IDLE`: the process may not leave that
    /// class, or changing class or its spin guard failed once.
    class_fixed: bool,
    /// Puts it back in its working class when a busy task keeps it off
    /// its CPU while it spins in the idle class.
    guard: Option<SpinGuard>,
    options: WorkerOptions,
    stats: Arc<WorkerStats>,
    /// Its index in its group.
    me: usize,
    crew: Arc<Crew>,
    cpu: Option<usize>,
    /// It runs on `cpu` (pinning did not fail).
    pinned: bool,
    /// Pods' frames waiting for their egress limit.
    shaper: Shaper,
    /// Wakes the worker when the first held frame may leave, to the
    /// nanosecond (epoll's own timeout counts whole milliseconds, which
    /// would let a limited port move one batch a millisecond); made when
    /// first needed, with the instant it is armed for.
    release_timer: Option<(OneShotTimer, Option<Instant>)>,
    /// Debug builds only: panic on the first batch to forward, as a bug
    /// would, when the environment has [`PANIC_FOR_TESTS`] (for the test
    /// of what the daemon does then).
    #[cfg(debug_assertions)]
    panic_for_tests: bool,
}

/// The environment variable that makes a debug build's workers panic on
/// their first batch.
#[cfg(debug_assertions)]
const PANIC_FOR_TESTS: &str = "PODSWITCH_TEST_WORKER_PANIC";

impl Loop {
    pub(super) fn new(
        poll: Poll,
        commands: mpsc::Receiver<Command>,
        tables: Arc<Tables>,
        options: WorkerOptions,
        stats: Arc<WorkerStats>,
        place: Place,
    ) -> Loop {
        Loop {
            stats,
            poll,
            commands,
            pipeline: Pipeline::new(Arc::clone(&tables)),
            tables,
            pool: place.pool,
            me: place.index,
            crew: place.crew,
            cpu: place.cpu,
            pinned: false,
            slots: Vec::new(),
            arrives_here: Vec::new(),
            ready: Vec::new(),
            ready_list: Vec::new(),
            captures: 0,
            class: ThreadClass::Normal,
            work_class: ThreadClass::Normal,
            class_fixed: false,
            guard: None,
            options,
            shaper: Shaper::default(),
            release_timer: None,
            #[cfg(debug_assertions)]
            panic_for_tests: std::env::var_os(PANIC_FOR_TESTS).is_some(),
        }
    }

    /// Forwards until told to stop; `started` hears once the worker has
    /// settled, before its first turn.
    pub(super) fn run(mut self, started: mpsc::Sender<()>) {
        let mut events = Events::with_capacity(256);
        // A port that cannot take a super-frame turns it into ~45 frames.
        let mut batch: Vec<PacketBuf> = Vec::with_capacity(BATCH_SIZE * 48);
        let mut out = Outputs::new();
        // Frames from the mailbox, a run for one port at a time.
        let mut mail: Vec<PacketBuf> = Vec::with_capacity(BATCH_SIZE * 48);
        if let Some(cpu) = self.cpu {
            match sched::pin_to_cpu(cpu) {
                Ok(()) => self.pinned = true,
                Err(e) => tracing::warn!(worker = self.me, "cannot pin to CPU {cpu}: {e}"),
            }
        }
        if self.options.realtime {
            match sched::class_allowed(ThreadClass::Realtime)
                .and_then(|()| sched::set_class(ThreadClass::Realtime).map_err(|e| e.to_string()))
            {
                Ok(()) => {
                    self.work_class = ThreadClass::Realtime;
                    self.class = ThreadClass::Realtime;
                }
                Err(e) => tracing::warn!(
                    worker = self.me,
                    "cannot forward in SCHED_FIFO ({e}): forwarding in SCHED_OTHER, so packets wait while the pods on its CPU run"
                ),
            }
        }
        self.stats
            .realtime(self.work_class == ThreadClass::Realtime);
        if let Err(e) = sched::class_allowed(ThreadClass::Idle) {
            tracing::warn!(
                worker = self.me,
                "cannot spin in SCHED_IDLE ({e}): spinning in its working class (the pods on its CPU wait while it spins)"
            );
            self.class_fixed = true;
        }
        if !self.class_fixed && !self.options.busy_poll.is_zero() {
            let name = format!("spin-guard-{}", self.me);
            match SpinGuard::start(name, self.work_class, Arc::clone(&self.stats)) {
                Ok(guard) => self.guard = Some(guard),
                Err(e) => {
                    // Unguarded, a spin in the idle class can wait a second
                    // behind a busy task: better to spin in the working
                    // class, for a window of microseconds.
                    tracing::warn!(
                        worker = self.me,
                        "cannot start its spin guard ({e}); spinning in its working class"
                    );
                    self.class_fixed = true;
                }
            }
        }
        let mut spin = SpinWindow::new(self.options.busy_poll);
        self.stats.spin_window(spin.window());
        let _ = started.send(());
        // The last frame from another CPU: only those are worth a spin
        // (`Arrival`), and the window adapts to the gaps between them.
        let mut last_from_afar = Instant::now();
        // The worker slept since it last moved a packet; since the last
        // frame from another CPU.
        let mut slept = false;
        let mut slept_since_afar = false;
        let mut spinning = false;
        // When the loop last decided whether to spin.
        let mut last_turn = Instant::now();
        let mut turns_since_poll = 0;
        // Since when it has worked without sleeping or yielding.
        let mut working_since = Instant::now();
        loop {
            let capturing = self.captures > 0;
            // While ports still have frames queued, most turns skip
            // epoll: its answer (new readiness, commands) can wait a few
            // turns, since edge-triggered events stay queued in the
            // kernel until asked for, and the system call is a tenth of
            // the worker's time under load.
            turns_since_poll += 1;
            if self.ready_list.is_empty() || turns_since_poll >= POLL_EVERY_TURNS {
                turns_since_poll = 0;
                let rescued = self.guard.as_ref().is_some_and(SpinGuard::rescued);
                if rescued {
                    // Moved to its working class by the guard: the class
                    // it thinks it is in is stale. Out of the idle class,
                    // it tells the guard so (which stops looking again);
                    // still in it (it went in just after the move), it
                    // leaves it below, since the rescue pauses spinning.
                    self.class = sched::current_class().unwrap_or(self.work_class);
                    if self.class != ThreadClass::Idle {
                        self.guard_done();
                    }
                }
                let idle = self.ready_list.is_empty() && !self.crew.has_mail(self.me);
                let now = Instant::now();
                // A spinning turn takes a microsecond or two; a longer
                // gap means another task had the CPU. A rescue is one
                // too, even if the spin has since found packets.
                let preempted = rescued || (spinning && now - last_turn > SpinWindow::PREEMPTED);
                // One preemption is seen twice when the gap shows it on
                // one turn and the guard's flag on the next: the pause
                // it began is not made longer.
                if preempted && !spin.paused(now) {
                    spin.preempted(now);
                    self.stats.spin_preempted();
                }
                last_turn = now;
                let spin_now = idle && now - last_from_afar < spin.window_at(now);
                if spinning && idle && !spin_now && !preempted {
                    self.stats.spin_expired();
                }
                spinning = spin_now;
                let mut timeout = if !idle || spin_now {
                    Some(Duration::ZERO)
                } else if capturing {
                    Some(Duration::from_millis(100))
                } else {
                    None
                };
                // Held frames wake it when the first may leave.
                if let Some(leaves) = self.shaper.next_release() {
                    let wait = leaves.saturating_duration_since(now);
                    if wait.is_zero() {
                        timeout = Some(Duration::ZERO);
                    } else if timeout != Some(Duration::ZERO) && !self.arm_release(leaves, wait) {
                        timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
                    }
                }
                // Before a wait that may sleep, the other workers are told
                // to wake this one for its mail (see `handoff`).
                if timeout != Some(Duration::ZERO) && !self.crew.going_to_sleep(self.me) {
                    timeout = Some(Duration::ZERO);
                }
                // Spinning with nothing to do: in the idle class, so the
                // pods on this CPU run first. Sleeping or working: back
                // in the working class (real-time by default, so that a
                // packet wakes it ahead of the pods).
                self.spin_class(spin_now.then(|| spin.window_at(now)));
                // Only a wait that may sleep is timed: the busy-polling
                // turns (timeout zero) are the worker's work.
                let sleep_started =
                    (timeout != Some(Duration::ZERO)).then(|| self.stats.sleeping());
                let polled = self.poll.poll(&mut events, timeout);
                self.crew.awake(self.me);
                if let Some(started) = sleep_started {
                    self.stats.slept(started);
                    slept = true;
                    slept_since_afar = true;
                    working_since = Instant::now();
                }
                if let Err(e) = polled {
                    if e.kind() != io::ErrorKind::Interrupted {
                        // epoll_wait fails only for a bad descriptor,
                        // buffer or count (epoll_wait(2)): a bug, not a
                        // state to wait out. A worker that just returned
                        // would leave its ports unread behind a daemon
                        // that looks alive; the panic reaches podswitchd,
                        // which stops instead.
                        self.spin_class(None);
                        panic!("podswitch worker {}: poll failed: {e}", self.me);
                    }
                }
                for event in &events {
                    if event.token() == RELEASE {
                        // Held frames are due: released below.
                    } else if event.token() == WAKER {
                        if !self.commands() {
                            // Out of the idle class before it stops: the
                            // ports' teardown must not wait behind pods.
                            self.spin_class(None);
                            return;
                        }
                    } else {
                        let id = PortId((event.token().0 / FDS_PER_PORT) as u16);
                        // A port waiting for its held frames is read once
                        // they have left (`release_held`), not before.
                        if !self.shaper.is_holding(id) {
                            self.mark_ready(id);
                        }
                    }
                }
                if !self.ready_list.is_empty() {
                    self.spin_class(None);
                }
            }
            let mut moved = self.deliver_mail(&mut mail) > 0;
            // Mail comes from the other workers, on other CPUs.
            let mut moved_from_afar = moved;
            // Held frames leaving are not packets arriving: they stay out
            // of the spin window's measure of the gaps between packets.
            if self.shaper.next_release().is_some() && self.release_held(&mut batch, &mut out) {
                self.spin_class(None);
            }
            let mut i = 0;
            while i < self.ready_list.len() {
                let id = self.ready_list[i];
                let received = match self.slots.get_mut(usize::from(id.0)) {
                    Some(Some(slot)) => slot.port().recv(&mut self.pool, &mut batch),
                    _ => Ok(0),
                };
                let received = received.unwrap_or_else(|e| {
                    if e.raw_os_error() == Some(libc::ENETDOWN) {
                        // packet(7) reports it once when the interface
                        // goes down or away; frames come again once it is
                        // up, and podswitchd detaches a pod port whose
                        // interface was deleted.
                        tracing::info!(
                            worker = self.me,
                            port = id.0,
                            "the port's interface is down or gone"
                        );
                    } else {
                        tracing::warn!(worker = self.me, port = id.0, "receive failed: {e}");
                    }
                    0
                });
                if received == 0 && batch.is_empty() {
                    self.unready(i);
                    continue;
                }
                // A pod over its egress limit: what must wait is held,
                // and the port is not read again until it has left.
                let holding = !batch.is_empty() && self.shape(id, &mut batch);
                // An empty batch: everything read was dropped in the port
                // (counted there) or held.
                if !batch.is_empty() {
                    moved = true;
                    moved_from_afar |= !self.arrives_here(id);
                    self.forward(&mut batch, &mut out);
                }
                // The port stays ready for what follows, unless it waits
                // for its held frames, or its frames arrive on this CPU
                // and it was found empty: a read now would only learn
                // that again, and epoll reports what comes next. With
                // frames from afar the worker keeps that read: taken off
                // sooner, it would spin sooner, and a spin's class
                // changes cost more than the read (docs/benchmarks.md,
                // "No read to learn a port is empty").
                if holding {
                    self.unready(i);
                } else {
                    self.forwarded(id);
                    if self.arrives_here(id) && self.drained(id) {
                        self.unready(i);
                    } else {
                        i += 1;
                    }
                }
            }
            if moved {
                // Mail that came after this turn's look went out in the
                // idle class: back to work, so the next spin is guarded
                // from its own start.
                self.spin_class(None);
                let now = Instant::now();
                if spinning && !slept {
                    self.stats.spin_caught();
                }
                slept = false;
                spinning = false;
                if moved_from_afar {
                    if slept_since_afar {
                        spin.after_sleep(now - last_from_afar);
                        self.stats.spin_window(spin.window());
                        slept_since_afar = false;
                    }
                    last_from_afar = now;
                }
                if now - working_since > YIELD_AFTER {
                    // Another worker starved of its CPU stalls every
                    // port it owns, and fills its mailbox.
                    std::thread::yield_now();
                    self.stats.yielded();
                    working_since = Instant::now();
                }
            }
            if capturing {
                self.finish_captures();
            }
        }
    }

    /// Runs `batch` (one port's frames) through the pipeline and writes
    /// what leaves to its ports: this worker's own, or another worker's
    /// through its mailbox.
    fn forward(&mut self, batch: &mut Vec<PacketBuf>, out: &mut Outputs) {
        #[cfg(debug_assertions)]
        assert!(
            !self.panic_for_tests,
            "{PANIC_FOR_TESTS} is set: worker {} panics on its first batch",
            self.me
        );
        self.stats.batch(batch.len());
        let now = (self.options.clock_secs)();
        self.pipeline.process(batch, &mut self.pool, out, now);
        let (slots, pool, tables) = (&mut self.slots, &mut self.pool, &self.tables);
        let (crew, me, stats) = (&self.crew, self.me, &self.stats);
        out.drain(|port, frames| match slots.get_mut(usize::from(port.0)) {
            Some(Some(slot)) => {
                let _ = slot.port().send(frames, pool);
            }
            _ => match crew.owner(port) {
                Some(owner) if owner != me => {
                    let mut posted = 0;
                    for frame in frames.drain(..) {
                        match crew.post(owner, port, frame) {
                            Ok(()) => posted += 1,
                            Err(frame) => {
                                tables.stats.add_drop(port, DropReason::HandoffFull);
                                pool.free(frame);
                            }
                        }
                    }
                    stats.handed_off(posted);
                    crew.nudge(owner);
                }
                _ => drop_all(tables, pool, port, DropReason::PortGone, frames),
            },
        });
    }

    /// Applies port `id`'s egress limit, if it has one, to `batch`;
    /// true if the port now has frames held.
    fn shape(&mut self, id: PortId, batch: &mut Vec<PacketBuf>) -> bool {
        let snap = self.tables.load();
        let Some(bucket) = snap.ports.get(id).and_then(|p| p.bucket.as_ref()) else {
            return false;
        };
        self.shaper.shape(
            id,
            bucket,
            batch,
            Instant::now(),
            &self.tables.stats,
            &mut self.pool,
        );
        self.shaper.is_holding(id)
    }

    /// Arms the release timer for `leaves` (`wait` from now), unless it
    /// already is; false if there is no timer (epoll's timeout does).
    fn arm_release(&mut self, leaves: Instant, wait: Duration) -> bool {
        if self.release_timer.is_none() {
            match OneShotTimer::new().and_then(|timer| {
                let fd = timer.as_raw_fd();
                self.poll
                    .registry()
                    .register(&mut SourceFd(&fd), RELEASE, Interest::READABLE)
                    .map(|()| timer)
            }) {
                Ok(timer) => self.release_timer = Some((timer, None)),
                Err(e) => {
                    tracing::warn!(
                        worker = self.me,
                        "no release timer ({e}); held frames leave on epoll's millisecond timeout"
                    );
                    return false;
                }
            }
        }
        let Some((timer, armed)) = &mut self.release_timer else {
            return false;
        };
        if *armed != Some(leaves) {
            if timer.arm(wait).is_err() {
                return false;
            }
            *armed = Some(leaves);
        }
        true
    }

    /// Takes the port at `ready_list[i]` off the ready list: it is read
    /// again once marked ready, by epoll or, for a port waiting for its
    /// held frames, by `release_held` once they have left.
    fn unready(&mut self, i: usize) {
        let id = self.ready_list.swap_remove(i);
        self.ready[usize::from(id.0)] = false;
    }

    /// Forwards the held frames whose time has come; true if any.
    fn release_held(&mut self, batch: &mut Vec<PacketBuf>, out: &mut Outputs) -> bool {
        let now = Instant::now();
        let mut moved = false;
        while let Some((id, still_holding)) = self.shaper.release(now, batch) {
            moved = true;
            self.forward(batch, out);
            if !still_holding {
                // Its frames have all gone on: read it again (what came
                // meanwhile waits in its socket, and edge-triggered epoll
                // does not say so again).
                self.forwarded(id);
                if self
                    .slots
                    .get(usize::from(id.0))
                    .is_some_and(Option::is_some)
                {
                    self.mark_ready(id);
                }
            }
        }
        moved
    }

    /// Tells port `id` that what it last received has gone on.
    fn forwarded(&mut self, id: PortId) {
        if let Some(Some(slot)) = self.slots.get_mut(usize::from(id.0)) {
            slot.port().forwarded();
        }
    }

    /// Whether port `id`'s last receive found it empty ([`Port::drained`]).
    fn drained(&mut self, id: PortId) -> bool {
        match self.slots.get_mut(usize::from(id.0)) {
            Some(Some(slot)) => slot.port().drained(),
            _ => false,
        }
    }

    /// Writes the frames other workers posted for this one's ports, a run
    /// of frames for one port at a time, at most a mailbox's worth per
    /// turn; returns how many it took.
    fn deliver_mail(&mut self, run: &mut Vec<PacketBuf>) -> usize {
        let mut taken = 0;
        let mut run_port = PortId(0);
        while taken < MAILBOX_FRAMES {
            let Some((port, frame)) = self.crew.take(self.me) else {
                break;
            };
            if !run.is_empty() && (port != run_port || run.len() >= BATCH_SIZE) {
                self.write_run(run_port, run);
            }
            run_port = port;
            run.push(frame);
            taken += 1;
        }
        if !run.is_empty() {
            self.write_run(run_port, run);
        }
        taken
    }

    /// Sends `run` on `port`, or counts it lost if the port went away
    /// since it was posted.
    fn write_run(&mut self, port: PortId, run: &mut Vec<PacketBuf>) {
        match self.slots.get_mut(usize::from(port.0)) {
            Some(Some(slot)) => {
                let _ = slot.port().send(run, &mut self.pool);
            }
            _ => drop_all(
                &self.tables,
                &mut self.pool,
                port,
                DropReason::PortGone,
                run,
            ),
        }
    }

    /// Moves the thread into the idle scheduling class while it spins
    /// (`spin_for`: at most that long, which its guard is told) and back
    /// to its working class before it works or sleeps (see [`sched`]).
    fn spin_class(&mut self, spin_for: Option<Duration>) {
        let class = if spin_for.is_some() {
            ThreadClass::Idle
        } else {
            self.work_class
        };
        if self.class == class || self.class_fixed {
            return;
        }
        // Guarded from before it goes in until after it is back out: a
        // thread that has just entered the idle class may not run again
        // for a long while, even to arm its guard.
        if let (Some(guard), Some(window)) = (&self.guard, spin_for) {
            if let Err(e) = guard.spinning(window) {
                tracing::warn!(
                    worker = self.me,
                    "its spin guard cannot guard a spin ({e}); spinning in its working class"
                );
                self.leave_idle_class_for_good();
                return;
            }
        }
        match sched::set_class(class) {
            Ok(()) => self.class = class,
            Err(e) => {
                tracing::warn!(
                    worker = self.me,
                    "cannot change scheduling class ({e}); spinning in its working class"
                );
                self.leave_idle_class_for_good();
                return;
            }
        }
        if spin_for.is_none() {
            self.guard_done();
        }
    }

    /// Tells the guard the worker is out of the idle class.
    fn guard_done(&mut self) {
        if let Some(Err(e)) = self.guard.as_ref().map(SpinGuard::done) {
            tracing::warn!(
                worker = self.me,
                "cannot set its spin guard's timer ({e}); spinning in its working class"
            );
            self.leave_idle_class_for_good();
        }
    }

    /// Spins in the working class from now on.
    fn leave_idle_class_for_good(&mut self) {
        self.class_fixed = true;
        // A thread left in the idle class would starve behind every pod.
        if let Err(e) = sched::set_class(self.work_class) {
            tracing::warn!(
                worker = self.me,
                "cannot go back to {:?} ({e}); packets may wait while pods run",
                self.work_class
            );
        }
        self.class = sched::current_class().unwrap_or(self.work_class);
        self.guard = None;
    }

    /// Port `id`'s frames arrive on this worker's CPU.
    fn arrives_here(&self, id: PortId) -> bool {
        self.arrives_here
            .get(usize::from(id.0))
            .copied()
            .unwrap_or(false)
    }

    fn mark_ready(&mut self, id: PortId) {
        let i = usize::from(id.0);
        if self.ready.len() <= i {
            self.ready.resize(i + 1, false);
        }
        if !self.ready[i] {
            self.ready[i] = true;
            self.ready_list.push(id);
        }
    }

    /// Applies waiting commands; false on Stop.
    fn commands(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Stop => return false,
                Command::Attach(id, port, arrival, reply) => {
                    if let Err(e) = self.register(id, port.as_ref()) {
                        self.deregister(port.as_ref());
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let i = usize::from(id.0);
                    if self.slots.len() <= i {
                        self.slots.resize_with(i + 1, || None);
                    }
                    if let Some(old) = self.slots[i].take() {
                        self.deregister(old.into_port().as_ref());
                    }
                    self.slots[i] = Some(Slot::Plain(port));
                    if self.arrives_here.len() <= i {
                        self.arrives_here.resize(i + 1, false);
                    }
                    self.arrives_here[i] = arrival == Arrival::ThisCpu && self.pinned;
                    self.crew.set_owner(id, Some(self.me));
                    let _ = reply.send(Ok(()));
                    // Frames may have queued before we registered.
                    self.mark_ready(id);
                }
                Command::Detach(id, reply) => {
                    let held = self.shaper.forget(id, &mut self.pool);
                    if held > 0 {
                        // They were paid for but never left.
                        self.tables
                            .stats
                            .add_drops(id, DropReason::PortGone, held as u64);
                    }
                    if self.crew.owner(id) == Some(self.me) {
                        self.crew.set_owner(id, None);
                    }
                    let slot = self.slots.get_mut(usize::from(id.0)).and_then(Option::take);
                    if matches!(slot, Some(Slot::Captured(..))) {
                        self.captures -= 1;
                    }
                    let port = slot.map(|s| {
                        let port = s.into_port();
                        self.deregister(port.as_ref());
                        port
                    });
                    let _ = reply.send(port);
                }
                Command::Capture {
                    port,
                    recording,
                    done,
                } => {
                    let i = usize::from(port.0);
                    match self.slots.get_mut(i).and_then(Option::take) {
                        None => {
                            let _ = done.send(Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("port {port} is not attached to this worker"),
                            )));
                        }
                        Some(Slot::Captured(c, other)) => {
                            self.slots[i] = Some(Slot::Captured(c, other));
                            let _ = done.send(Err(io::Error::new(
                                io::ErrorKind::AddrInUse,
                                format!("port {port} is already being captured"),
                            )));
                        }
                        Some(Slot::Plain(p)) => {
                            let c = Capture::join(p, recording);
                            self.slots[i] = Some(Slot::Captured(Box::new(c), done));
                            self.captures += 1;
                        }
                    }
                }
            }
        }
        true
    }

    fn finish_captures(&mut self) {
        for slot in &mut self.slots {
            let finished = match slot {
                Some(Slot::Captured(c, _)) => !c.check_deadline(),
                _ => false,
            };
            if finished {
                let port = slot.take().map(Slot::into_port);
                *slot = port.map(Slot::Plain);
                self.captures -= 1;
            }
        }
    }

    fn register(&self, id: PortId, port: &dyn Port) -> io::Result<()> {
        let fds = port.poll_fds();
        if fds.len() > FDS_PER_PORT {
            return Err(io::Error::other("too many descriptors for one port"));
        }
        for (k, fd) in fds.iter().enumerate() {
            self.poll.registry().register(
                &mut SourceFd(fd),
                Token(usize::from(id.0) * FDS_PER_PORT + k),
                Interest::READABLE,
            )?;
        }
        Ok(())
    }

    fn deregister(&self, port: &dyn Port) {
        for fd in port.poll_fds() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
    }
}
