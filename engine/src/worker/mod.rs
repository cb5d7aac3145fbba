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
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Token, Waker};

use crate::capture::CaptureLimit;
use crate::port::{Port, PortId};
use crate::tables::Tables;
use event_loop::Loop;

/// The token of the waker commands come with.
const WAKER: Token = Token(usize::MAX);

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

mod event_loop;
mod spin;
mod stats;

pub use stats::{WorkerStats, WorkerStatsSnapshot, BATCH_BUCKETS};
