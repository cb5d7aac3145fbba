//! A worker: one thread that polls its ports, runs each received batch
//! through its [`Pipeline`] and hands the outputs to their ports.
//!
//! The loop sleeps in `epoll_wait` (mio) while nothing arrives, so an idle
//! daemon uses no CPU. Once traffic flows it keeps polling without
//! sleeping (`timeout 0`) for a while after the last packet: under load no
//! thread is woken per packet, and a burst finds the worker awake. How
//! long is a window (`SpinWindow`) the loop adapts to the gaps it sees,
//! and the thread spins in the `SCHED_IDLE` class ([`sched`]) so that it
//! never holds a CPU a pod wants. It forwards in `SCHED_FIFO` (unless
//! told otherwise), ahead of the pods, as the kernel forwards in softirq
//! context: a worker that waited for its CPU behind the pods' time slices
//! made every packet wait with it. A spin that a pod preempted means the
//! CPU is not idle: spinning pauses, so that the worker sleeps in
//! `epoll_wait`, from which a packet wakes it at once, rather than sit
//! runnable in the idle class, where nothing would run it before the
//! pods. mio is edge-triggered, so a port that signalled stays on the
//! ready list until a receive finds it empty.
//!
//! Ports are attached, detached and wrapped in a [`Capture`] through
//! commands sent from the control thread with a [`mio::Waker`].

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::capture::{Capture, CaptureLimit};
use crate::drop::DropReason;
use crate::packet::{PacketBuf, PacketPool, BATCH_SIZE, DEFAULT_BUF_SIZE};
use crate::pipeline::{Outputs, Pipeline};
use crate::port::{Port, PortId};
use crate::sys::sched::{self, ThreadClass};
use crate::tables::Tables;
use podswitch_encap::pcap::PcapWriter;

/// File descriptors one port may ask to be polled.
const FDS_PER_PORT: usize = 8;
const WAKER: Token = Token(usize::MAX);
/// While some port has frames waiting, epoll is asked once in this many
/// turns of the loop.
const POLL_EVERY_TURNS: u32 = 4;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Packet buffers in its pool.
    pub pool_buffers: usize,
    /// Super-frame buffers (64 KiB) in its pool.
    pub large_buffers: usize,
    /// How long it keeps polling without sleeping after the last packet.
    pub busy_poll: Duration,
    /// Forward in `SCHED_FIFO` ([`ThreadClass::Realtime`]) rather than
    /// `SCHED_OTHER`; without the right to, it logs why and forwards in
    /// `SCHED_OTHER`.
    pub realtime: bool,
    /// The engine's clock in seconds (FDB aging).
    pub clock_secs: fn() -> u32,
    /// Microseconds since the epoch (capture timestamps and deadlines).
    pub clock_micros: fn() -> u64,
}

/// How a capture ended.
#[derive(Debug)]
pub struct CaptureResult {
    /// Frames written.
    pub packets: u64,
    /// The first write error, if any.
    pub error: Option<io::Error>,
}

enum Command {
    Attach(PortId, Box<dyn Port>),
    Detach(PortId, mpsc::Sender<Option<Box<dyn Port>>>),
    Capture {
        port: PortId,
        out: BufWriter<File>,
        limit: CaptureLimit,
        done: mpsc::Sender<io::Result<CaptureResult>>,
    },
    Stop,
}

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

/// A running worker thread.
pub struct Worker {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<WorkerStats>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts a worker over `tables`.
    pub fn spawn(name: &str, tables: Arc<Tables>, options: WorkerOptions) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(WorkerStats::default());
        let loop_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || Loop::new(poll, rx, tables, options, loop_stats).run())?;
        Ok(Worker {
            commands: tx,
            waker,
            thread: Some(thread),
            stats,
        })
    }

    /// What its loop did: sleeping, waking, batches.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    fn send(&self, command: Command) -> io::Result<()> {
        self.commands
            .send(command)
            .map_err(|_| io::Error::other("the worker has stopped"))?;
        self.waker.wake()
    }

    /// Hands `port` to the worker, which polls it from now on.
    pub fn attach(&self, id: PortId, port: Box<dyn Port>) -> io::Result<()> {
        self.send(Command::Attach(id, port))
    }

    /// Takes a port back (the caller drops it, closing its sockets).
    pub fn detach(&self, id: PortId) -> io::Result<Option<Box<dyn Port>>> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Detach(id, tx))?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other("the worker did not answer"))
    }

    /// Starts writing the frames of `port` to `out`; the returned channel
    /// gets the result when the limit is reached or the port detached.
    pub fn capture(
        &self,
        port: PortId,
        out: File,
        limit: CaptureLimit,
    ) -> io::Result<mpsc::Receiver<io::Result<CaptureResult>>> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Capture {
            port,
            out: BufWriter::new(out),
            limit,
            done: tx,
        })?;
        Ok(rx)
    }

    /// Stops the thread and drops its ports.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.send(Command::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Loop {
    poll: Poll,
    commands: mpsc::Receiver<Command>,
    tables: Arc<Tables>,
    pipeline: Pipeline,
    pool: PacketPool,
    slots: Vec<Option<Slot>>,
    ready: Vec<bool>,
    ready_list: Vec<PortId>,
    /// Ports being captured (their deadlines need a timed wake-up).
    captures: usize,
    /// The thread's class now.
    class: ThreadClass,
    /// The class it forwards and sleeps in.
    work_class: ThreadClass,
    /// It does not spin in `SCHED_IDLE`: the process may not leave that
    /// class, or changing class failed once.
    class_fixed: bool,
    options: WorkerOptions,
    stats: Arc<WorkerStats>,
}

impl Loop {
    fn new(
        poll: Poll,
        commands: mpsc::Receiver<Command>,
        tables: Arc<Tables>,
        options: WorkerOptions,
        stats: Arc<WorkerStats>,
    ) -> Loop {
        Loop {
            stats,
            poll,
            commands,
            pipeline: Pipeline::new(Arc::clone(&tables)),
            tables,
            pool: PacketPool::with_large(
                options.pool_buffers,
                DEFAULT_BUF_SIZE,
                options.large_buffers,
            ),
            slots: Vec::new(),
            ready: Vec::new(),
            ready_list: Vec::new(),
            captures: 0,
            class: ThreadClass::Normal,
            work_class: ThreadClass::Normal,
            class_fixed: false,
            options,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        // A port that cannot take a super-frame turns it into ~45 frames.
        let mut batch: Vec<PacketBuf> = Vec::with_capacity(BATCH_SIZE * 48);
        let mut out = Outputs::new();
        if self.options.realtime {
            match sched::class_allowed(ThreadClass::Realtime)
                .and_then(|()| sched::set_class(ThreadClass::Realtime).map_err(|e| e.to_string()))
            {
                Ok(()) => {
                    self.work_class = ThreadClass::Realtime;
                    self.class = ThreadClass::Realtime;
                }
                Err(e) => eprintln!(
                    "podswitch worker: cannot forward in SCHED_FIFO ({e}): forwarding in SCHED_OTHER, so packets wait while the pods on its CPU run"
                ),
            }
        }
        self.stats
            .realtime(self.work_class == ThreadClass::Realtime);
        if let Err(e) = sched::class_allowed(ThreadClass::Idle) {
            eprintln!(
                "podswitch worker: cannot spin in SCHED_IDLE ({e}): spinning in its working class (the pods on its CPU wait while it spins)"
            );
            self.class_fixed = true;
        }
        let mut spin = SpinWindow::new(self.options.busy_poll);
        self.stats.spin_window(spin.window());
        let mut last_packet = Instant::now();
        // The worker slept since it last moved a packet.
        let mut slept = false;
        let mut spinning = false;
        // When the loop last decided whether to spin.
        let mut last_turn = Instant::now();
        let mut turns_since_poll = 0;
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
                let idle = self.ready_list.is_empty();
                let now = Instant::now();
                // A spinning turn takes a microsecond or two; a longer
                // gap means another task had the CPU.
                let preempted = spinning && now - last_turn > SpinWindow::PREEMPTED;
                if preempted {
                    spin.preempted(now);
                    self.stats.spin_preempted();
                }
                last_turn = now;
                let spin_now = idle && now - last_packet < spin.window_at(now);
                if spinning && idle && !spin_now && !preempted {
                    self.stats.spin_expired();
                }
                spinning = spin_now;
                let timeout = if !idle || spin_now {
                    Some(Duration::ZERO)
                } else if capturing {
                    Some(Duration::from_millis(100))
                } else {
                    None
                };
                // Spinning with nothing to do: in the idle class, so the
                // pods on this CPU run first. Sleeping or working: back
                // in the working class (real-time by default, so that a
                // packet wakes it ahead of the pods).
                self.spin_class(spin_now);
                // Only a wait that may sleep is timed: the busy-polling
                // turns (timeout zero) are the worker's work.
                let sleep_started = (timeout != Some(Duration::ZERO)).then(Instant::now);
                let polled = self.poll.poll(&mut events, timeout);
                if let Some(started) = sleep_started {
                    self.stats.slept(started);
                    slept = true;
                }
                if let Err(e) = polled {
                    if e.kind() != io::ErrorKind::Interrupted {
                        eprintln!("podswitch worker: poll failed: {e}");
                        return;
                    }
                }
                for event in &events {
                    if event.token() == WAKER {
                        if !self.commands() {
                            return;
                        }
                    } else {
                        self.mark_ready(PortId((event.token().0 / FDS_PER_PORT) as u16));
                    }
                }
                if !self.ready_list.is_empty() {
                    self.spin_class(false);
                }
            }
            let mut moved = false;
            let mut i = 0;
            while i < self.ready_list.len() {
                let id = self.ready_list[i];
                let received = match self.slots.get_mut(usize::from(id.0)) {
                    Some(Some(slot)) => slot.port().recv(&mut self.pool, &mut batch),
                    _ => Ok(0),
                };
                let received = received.unwrap_or_else(|e| {
                    eprintln!("podswitch worker: receive on port {id} failed: {e}");
                    0
                });
                if received == 0 && batch.is_empty() {
                    self.ready[usize::from(id.0)] = false;
                    self.ready_list.swap_remove(i);
                    continue;
                }
                moved = true;
                self.stats.batch(batch.len());
                let now = (self.options.clock_secs)();
                self.pipeline
                    .process(&mut batch, &mut self.pool, &mut out, now);
                let (slots, pool, tables) = (&mut self.slots, &mut self.pool, &self.tables);
                out.drain(|port, frames| match slots.get_mut(usize::from(port.0)) {
                    Some(Some(slot)) => {
                        let _ = slot.port().send(frames, pool);
                    }
                    _ => {
                        for _ in 0..frames.len() {
                            tables.stats.add_drop(port, DropReason::PortGone);
                        }
                        pool.free_all(frames);
                    }
                });
                i += 1;
            }
            if moved {
                let now = Instant::now();
                if slept {
                    spin.after_sleep(now - last_packet);
                    self.stats.spin_window(spin.window());
                    slept = false;
                } else if spinning {
                    self.stats.spin_caught();
                }
                spinning = false;
                last_packet = now;
            }
            if capturing {
                self.finish_captures();
            }
        }
    }

    /// Moves the thread into the idle scheduling class while it spins
    /// and back to its working class before it works or sleeps (see
    /// [`sched`]).
    fn spin_class(&mut self, idle: bool) {
        let class = if idle {
            ThreadClass::Idle
        } else {
            self.work_class
        };
        if self.class == class || self.class_fixed {
            return;
        }
        match sched::set_class(class) {
            Ok(()) => self.class = class,
            Err(e) => {
                eprintln!("podswitch worker: cannot change scheduling class ({e}); spinning in its working class");
                self.class_fixed = true;
                // Back to work: a thread left in the idle class would
                // starve behind every pod.
                if sched::set_class(self.work_class).is_ok() {
                    self.class = self.work_class;
                }
            }
        }
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
                Command::Attach(id, port) => {
                    if let Err(e) = self.register(id, port.as_ref()) {
                        eprintln!("podswitch worker: cannot poll port {id}: {e}");
                    }
                    let i = usize::from(id.0);
                    if self.slots.len() <= i {
                        self.slots.resize_with(i + 1, || None);
                    }
                    self.slots[i] = Some(Slot::Plain(port));
                    // Frames may have queued before we registered.
                    self.mark_ready(id);
                }
                Command::Detach(id, reply) => {
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
                    out,
                    limit,
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
                            let clock = self.options.clock_micros;
                            match PcapWriter::new(out) {
                                Ok(w) => {
                                    let c = Capture::wrap(p, w, limit, clock);
                                    self.slots[i] = Some(Slot::Captured(Box::new(c), done));
                                    self.captures += 1;
                                }
                                Err(e) => {
                                    self.slots[i] = Some(Slot::Plain(p));
                                    let _ = done.send(Err(e));
                                }
                            }
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

/// How long a worker keeps polling after its last packet before it
/// sleeps: a window it adapts to the gaps it sees, as the kernel's
/// haltpoll governor adapts a virtual CPU's halt polling
/// (Documentation/virt/guest-halt-polling.rst).
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
struct SpinWindow {
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
    const PREEMPTED: Duration = Duration::from_micros(50);
    const FIRST_PAUSE: Duration = Duration::from_millis(100);
    const LONGEST_PAUSE: Duration = Duration::from_secs(1);
    /// Preemptions closer than this make the pause grow.
    const CONTENDED: Duration = Duration::from_secs(2);

    /// Starts at its bound: a worker that sees traffic at once is busy.
    fn new(bound: Duration) -> SpinWindow {
        SpinWindow {
            window: bound,
            bound,
            paused_until: None,
            pause: Duration::ZERO,
            last_preempted: None,
        }
    }

    /// The window as adapted to the gaps (what the stats show).
    fn window(&self) -> Duration {
        self.window
    }

    /// The window in force at `now`: zero while spinning is paused.
    fn window_at(&self, now: Instant) -> Duration {
        if self.paused_until.is_some_and(|until| now < until) {
            Duration::ZERO
        } else {
            self.window
        }
    }

    /// Another task took the CPU while the worker spun.
    fn preempted(&mut self, now: Instant) {
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

    /// The worker slept `gap` between two packets.
    fn after_sleep(&mut self, gap: Duration) {
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

/// Upper bounds of the batch-size histogram's buckets (packets a pipeline
/// run handled; a super-frame counts once).
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// What one worker's loop did, counted with relaxed atomics (one update
/// per loop turn and per batch, read by the metrics endpoint and `top`).
#[derive(Debug)]
pub struct WorkerStats {
    started: Instant,
    idle_nanos: AtomicU64,
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
    realtime: std::sync::atomic::AtomicBool,
}

/// A [`WorkerStats`] read at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerStatsSnapshot {
    /// Seconds since the worker started.
    pub elapsed_secs: f64,
    /// Seconds it slept in `epoll_wait`, waiting for packets or commands.
    pub idle_secs: f64,
    /// Times it woke from such a sleep.
    pub wakeups: u64,
    /// Pipeline runs.
    pub batches: u64,
    /// Packets in them.
    pub batch_packets: u64,
    /// Runs by size, per bucket of [`BATCH_BUCKETS`] (the last: larger).
    pub batch_sizes: [u64; BATCH_BUCKETS.len() + 1],
    /// How long it polls after its last packet before it sleeps, now
    /// (adapted to the traffic, at most `busy_poll`).
    pub spin_window_secs: f64,
    /// Spins that ended with a packet (each saved a wake-up).
    pub spins_caught: u64,
    /// Spins that ended in sleep (each cost its window in CPU).
    pub spins_expired: u64,
    /// Spins another task preempted (each paused spinning).
    pub spins_preempted: u64,
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
            wakeups: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_packets: AtomicU64::new(0),
            batch_sizes: Default::default(),
            spin_window_nanos: AtomicU64::new(0),
            spins_caught: AtomicU64::new(0),
            spins_expired: AtomicU64::new(0),
            spins_preempted: AtomicU64::new(0),
            realtime: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl WorkerStats {
    fn slept(&self, since: Instant) {
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.idle_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    fn batch(&self, packets: usize) {
        let packets = packets as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_packets.fetch_add(packets, Ordering::Relaxed);
        let bucket = BATCH_BUCKETS
            .iter()
            .position(|&bound| packets <= bound)
            .unwrap_or(BATCH_BUCKETS.len());
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn spin_window(&self, window: Duration) {
        let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.spin_window_nanos.store(nanos, Ordering::Relaxed);
    }

    fn spin_caught(&self) {
        self.spins_caught.fetch_add(1, Ordering::Relaxed);
    }

    fn spin_expired(&self) {
        self.spins_expired.fetch_add(1, Ordering::Relaxed);
    }

    fn spin_preempted(&self) {
        self.spins_preempted.fetch_add(1, Ordering::Relaxed);
    }

    fn realtime(&self, realtime: bool) {
        self.realtime.store(realtime, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> WorkerStatsSnapshot {
        WorkerStatsSnapshot {
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            idle_secs: self.idle_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            wakeups: self.wakeups.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            batch_packets: self.batch_packets.load(Ordering::Relaxed),
            batch_sizes: std::array::from_fn(|i| self.batch_sizes[i].load(Ordering::Relaxed)),
            spin_window_secs: self.spin_window_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            spins_caught: self.spins_caught.load(Ordering::Relaxed),
            spins_expired: self.spins_expired.load(Ordering::Relaxed),
            spins_preempted: self.spins_preempted.load(Ordering::Relaxed),
            realtime: self.realtime.load(Ordering::Relaxed),
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
