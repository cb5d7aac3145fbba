//! A worker: one thread that polls its ports, runs each received batch
//! through its [`Pipeline`] and hands the outputs to their ports.
//!
//! The loop sleeps in `epoll_wait` (mio) while nothing arrives, so an idle
//! daemon uses no CPU. Once traffic flows it keeps polling without
//! sleeping (`timeout 0`) for the configured busy-poll window after the
//! last packet: under load no thread is woken per packet, and a burst
//! finds the worker awake. mio is edge-triggered, so a port that signalled
//! stays on the ready list until a receive finds it empty.
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
            options,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        // A port that cannot take a super-frame turns it into ~45 frames.
        let mut batch: Vec<PacketBuf> = Vec::with_capacity(BATCH_SIZE * 48);
        let mut out = Outputs::new();
        let mut busy_until = Instant::now();
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
                let timeout = if !self.ready_list.is_empty() || Instant::now() < busy_until {
                    Some(Duration::ZERO)
                } else if capturing {
                    Some(Duration::from_millis(100))
                } else {
                    None
                };
                // Only a wait that may sleep is timed: the busy-polling
                // turns (timeout zero) are the worker's work.
                let sleep_started = (timeout != Some(Duration::ZERO)).then(Instant::now);
                let polled = self.poll.poll(&mut events, timeout);
                if let Some(started) = sleep_started {
                    self.stats.slept(started);
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
                busy_until = Instant::now() + self.options.busy_poll;
            }
            if capturing {
                self.finish_captures();
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

    /// The counters now.
    pub fn snapshot(&self) -> WorkerStatsSnapshot {
        WorkerStatsSnapshot {
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            idle_secs: self.idle_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            wakeups: self.wakeups.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            batch_packets: self.batch_packets.load(Ordering::Relaxed),
            batch_sizes: std::array::from_fn(|i| self.batch_sizes[i].load(Ordering::Relaxed)),
        }
    }
}
