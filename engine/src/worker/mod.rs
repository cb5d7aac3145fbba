//! Workers: threads that each poll their own ports, run each received
//! batch through their own [`Pipeline`](crate::pipeline::Pipeline) and hand
//! the outputs to their ports, or, for a port another worker owns, to that
//! worker's mailbox (`handoff.rs`). [`Workers`] is the group the daemon
//! runs; each port is placed on the worker with the fewest.
//!
//! The loop sleeps in `epoll_wait` (mio) while nothing arrives, so an idle
//! daemon uses no CPU. Once traffic flows it keeps polling without
//! sleeping (`timeout 0`) for a while after the last packet that came
//! from another CPU: under load no thread is woken per packet, a burst
//! finds the worker awake, and no frame pays a wake-up across CPUs (a VM
//! exit). A frame that arrives on the worker's own CPU (a split port's
//! member, with a worker per CPU) wakes it where it runs, for no more
//! than a spin costs, so the worker sleeps at once after those. How
//! long is a window (`SpinWindow`) the loop adapts to the gaps it sees,
//! and the thread spins in the `SCHED_IDLE` class
//! ([`sched`]) so that it
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
//! Ports are attached, detached and wrapped in a
//! [`Capture`](crate::capture::Capture) through commands sent from the
//! control thread to the port's owner with a [`mio::Waker`].

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Token, Waker};

use crate::capture::{CaptureLimit, Recording};
use crate::packet::{BufferDepot, PacketPool, DEFAULT_BUF_SIZE};
use crate::port::{Port, PortId};
use crate::sys::sched;
use crate::tables::Tables;
use event_loop::Loop;
use handoff::Crew;
use podswitch_encap::pcap::PcapWriter;

/// The token of the waker commands come with.
const WAKER: Token = Token(usize::MAX);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Packet buffers, shared by the workers of a group.
    pub pool_buffers: usize,
    /// Super-frame buffers (64 KiB), shared likewise.
    pub large_buffers: usize,
    /// How long it keeps polling without sleeping after the last packet.
    pub busy_poll: Duration,
    /// Forward in `SCHED_FIFO`
    /// ([`ThreadClass::Realtime`](crate::sys::sched::ThreadClass::Realtime))
    /// rather than `SCHED_OTHER`; without the right to, it logs why and
    /// forwards in `SCHED_OTHER`.
    pub realtime: bool,
    /// The engine's clock in seconds (FDB aging).
    pub clock_secs: fn() -> u32,
    /// Microseconds since the epoch (capture timestamps and deadlines).
    pub clock_micros: fn() -> u64,
    /// Split every port that can split ([`Port::fan_out`]) among all the
    /// workers of the group, member k to worker k, instead of giving it to
    /// one: member k takes the frames CPU k receives (the flows of other
    /// CPUs' frames kept in order), so worker k, pinned to CPU k, is woken
    /// where its frames arrive, and every worker writes the port itself.
    pub split_ports: bool,
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
    /// Answered once the worker polls the port and owns it.
    Attach(PortId, Box<dyn Port>, Arrival, mpsc::Sender<io::Result<()>>),
    Detach(PortId, mpsc::Sender<Option<Box<dyn Port>>>),
    /// Wraps the port (or the worker's member of a split port) in a
    /// capture writing to `recording`.
    Capture {
        port: PortId,
        recording: Arc<Recording<BufWriter<File>>>,
        done: mpsc::Sender<io::Result<CaptureResult>>,
    },
    Stop,
}

/// Where the frames a port gives its worker were received, which decides
/// whether the worker spins for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// On any CPU: a frame may have to wake the worker from another CPU,
    /// which on a VM is a VM exit (about 250 µs here) that a spin saves.
    AnyCpu,
    /// On the worker's own CPU: a member of a split port whose member k
    /// takes the frames CPU k receives, read by the worker pinned to CPU
    /// k. The task that brings a frame wakes the worker where it runs,
    /// with no VM exit, so a spin saves nothing; it only keeps the CPU
    /// from the pods and from the other threads that must run for the
    /// next frame to come (docs/benchmarks.md, "No spinning for frames
    /// that arrive on the worker's own CPU"). The exception is a flow
    /// kept on its member while its sender moved to another CPU
    /// (`sys::flow_steer`): it moves once quiet for 2 ms, and until then
    /// it is busy, so its worker is seldom asleep.
    ThisCpu,
}

/// Whether a worker per CPU, on the CPUs podswitchd may use (`allowed`),
/// gives every online CPU (`online`) a worker of its own: member k of a
/// split port takes the frames that arrive on every CPU numbered k modulo
/// the workers (`flow_steer`), so the CPUs must be all the online ones,
/// numbered from 0, and at most [`MAX_WORKERS`]. Otherwise some frames
/// would wake a worker on another CPU, each wake-up a cost one worker
/// for the node pays as well; the reason, said as a sentence, if not.
pub fn per_cpu_fits(allowed: &[usize], online: &[usize]) -> Result<(), String> {
    if allowed != online {
        return Err(format!(
            "podswitchd may run on CPUs {allowed:?}, not on every online CPU ({online:?})"
        ));
    }
    if allowed.len() > MAX_WORKERS {
        return Err(format!(
            "{} CPUs are online, more than the {MAX_WORKERS} workers podswitchd runs",
            allowed.len()
        ));
    }
    if allowed.iter().enumerate().any(|(k, &cpu)| k != cpu) {
        return Err(format!(
            "the online CPUs {online:?} are not numbered from 0 without a gap"
        ));
    }
    Ok(())
}

/// True if member k of a port split among `count` workers (the member
/// that takes the frames of every CPU numbered k modulo `count`) is read
/// where its frames arrive: worker k is pinned to `cpus[k]`, and those
/// are a worker per CPU that fits ([`per_cpu_fits`]).
fn split_members_read_where_their_frames_arrive(
    count: usize,
    cpus: &[usize],
    online: &[usize],
) -> bool {
    cpus.len() == count && per_cpu_fits(cpus, online).is_ok()
}

/// A group of workers over one set of tables: each port is owned by one
/// of them, frames for a port another worker owns go through its mailbox
/// (`handoff.rs`, docs/architecture.md), and the packet buffers come from
/// one [`BufferDepot`].
///
/// | who | owns | shares |
/// |---|---|---|
/// | each worker thread | its ports (polls and writes them), its pipeline, its pool's cache, its stats | the tables (lock-free reads), the depot, the crew |
/// | the control thread | nothing it forwards with | sends commands to the owner of a port |
pub struct Workers {
    workers: Vec<Worker>,
    /// Who owns each port: each worker records the ports it takes and
    /// lets go, and commands are routed by it.
    crew: Arc<Crew>,
    /// The ports split among all the workers; its lock also makes one
    /// placement decision at a time, so that ports attached together
    /// still spread.
    split: Mutex<BTreeSet<PortId>>,
    split_ports: bool,
    /// Where a split port's members receive their frames.
    split_arrival: Arrival,
    /// Capture timestamps and deadlines.
    clock_micros: fn() -> u64,
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Starts `count` workers (1 to [`MAX_WORKERS`]) over `tables`,
    /// named `name-0`, `name-1`... (`name` alone for one). Worker `i` is
    /// pinned to `cpus[i % cpus.len()]` if `cpus` is not empty.
    pub fn spawn(
        name: &str,
        tables: Arc<Tables>,
        options: WorkerOptions,
        count: usize,
        cpus: &[usize],
    ) -> io::Result<Workers> {
        if count == 0 || count > MAX_WORKERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{count} workers: from 1 to {MAX_WORKERS}"),
            ));
        }
        let depot = BufferDepot::new(
            options.pool_buffers,
            DEFAULT_BUF_SIZE,
            options.large_buffers,
            count,
        );
        let polls = (0..count)
            .map(|_| Poll::new())
            .collect::<io::Result<Vec<_>>>()?;
        let wakers = polls
            .iter()
            .map(|poll| Waker::new(poll.registry(), WAKER).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let crew = Arc::new(Crew::new(wakers.clone()));
        let mut workers = Vec::with_capacity(count);
        for (index, (poll, waker)) in polls.into_iter().zip(wakers).enumerate() {
            let thread_name = if count == 1 {
                name.to_string()
            } else {
                format!("{name}-{index}")
            };
            let place = Place {
                index,
                crew: Arc::clone(&crew),
                pool: PacketPool::from_depot(&depot),
                cpu: (!cpus.is_empty()).then(|| cpus[index % cpus.len()]),
            };
            workers.push(Worker::spawn(
                &thread_name,
                poll,
                waker,
                Arc::clone(&tables),
                options.clone(),
                place,
            )?);
        }
        // Unknown online CPUs: taken as frames from anywhere, which only
        // costs the spins this would spare.
        let online = sched::online_cpus().unwrap_or_default();
        let split_arrival = if options.split_ports
            && split_members_read_where_their_frames_arrive(count, cpus, &online)
        {
            Arrival::ThisCpu
        } else {
            Arrival::AnyCpu
        };
        Ok(Workers {
            workers,
            crew,
            split: Mutex::default(),
            split_ports: options.split_ports,
            split_arrival,
            clock_micros: options.clock_micros,
        })
    }

    /// What each worker's loop did, in worker order.
    pub fn stats(&self) -> Vec<Arc<WorkerStats>> {
        self.workers.iter().map(|w| Arc::clone(&w.stats)).collect()
    }

    /// The worker that polls `port`, if it is attached.
    pub fn owner(&self, port: PortId) -> Option<usize> {
        self.crew.owner(port)
    }

    /// Sends worker `worker` the command `make` builds around a reply
    /// channel, and waits for the reply.
    fn ask<T>(
        &self,
        worker: usize,
        make: impl FnOnce(mpsc::Sender<T>) -> Command,
    ) -> io::Result<T> {
        let (tx, rx) = mpsc::channel();
        self.workers[worker].send(make(tx))?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other("the worker did not answer"))
    }

    /// Hands `port` to the worker with the fewest ports (the first of
    /// them on a tie; the worker that has it, for a port attached again),
    /// and returns that worker once it polls the port: from then on,
    /// frames any worker sends to the port reach it. With
    /// [`WorkerOptions::split_ports`], a port that can split goes to every
    /// worker, a member each, and the answer is none.
    pub fn attach(&self, id: PortId, port: Box<dyn Port>) -> io::Result<Option<usize>> {
        let mut split = self.lock_split();
        let mut port = port;
        if self.split_ports && !split.contains(&id) && self.crew.owner(id).is_none() {
            match port.fan_out(self.workers.len()) {
                Ok(others) => {
                    self.attach_split(id, std::iter::once(port).chain(others))?;
                    split.insert(id);
                    return Ok(None);
                }
                // Ports of other kinds have one owner, as without the option.
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
                Err(e) => return Err(e),
            }
        }
        let worker = self.crew.owner(id).unwrap_or_else(|| {
            let load = self.crew.ports_per_worker(self.workers.len());
            (0..load.len()).min_by_key(|&w| load[w]).unwrap_or(0)
        });
        self.ask(worker, |reply| {
            Command::Attach(id, port, Arrival::AnyCpu, reply)
        })??;
        Ok(Some(worker))
    }

    /// Gives member k of a split port to worker k; on a failure, takes
    /// back the members already given.
    fn attach_split(
        &self,
        id: PortId,
        members: impl Iterator<Item = Box<dyn Port>>,
    ) -> io::Result<()> {
        for (worker, member) in members.enumerate() {
            let attached = self
                .ask(worker, |reply| {
                    Command::Attach(id, member, self.split_arrival, reply)
                })
                .and_then(|r| r);
            if let Err(e) = attached {
                for earlier in 0..worker {
                    let _ = self.ask(earlier, |reply| Command::Detach(id, reply));
                }
                self.crew.set_owner(id, None);
                return Err(e);
            }
        }
        // Commands for the port (a detach, a capture) start at worker 0.
        self.crew.set_owner(id, Some(0));
        Ok(())
    }

    /// True if `port` is split among all the workers.
    pub fn is_split(&self, port: PortId) -> bool {
        self.lock_split().contains(&port)
    }

    fn lock_split(&self) -> std::sync::MutexGuard<'_, BTreeSet<PortId>> {
        self.split.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a port back (the caller drops it, closing its sockets); of a
    /// split port, every worker's member is taken back, and the first
    /// returned.
    pub fn detach(&self, id: PortId) -> io::Result<Option<Box<dyn Port>>> {
        if self.lock_split().remove(&id) {
            let mut first = None;
            for worker in 0..self.workers.len() {
                let member = self.ask(worker, |reply| Command::Detach(id, reply))?;
                first = first.or(member);
            }
            return Ok(first);
        }
        let Some(worker) = self.crew.owner(id) else {
            return Ok(None);
        };
        self.ask(worker, |reply| Command::Detach(id, reply))
    }

    /// Starts writing the frames of `port` to `out`; the returned channel
    /// gets the result when the limit is reached or the port detached. A
    /// port split among the workers is captured by every one of them
    /// into the one file, up to the one limit; the first result is the
    /// whole capture's (the recording has stopped by then).
    pub fn capture(
        &self,
        port: PortId,
        out: File,
        limit: CaptureLimit,
    ) -> io::Result<mpsc::Receiver<io::Result<CaptureResult>>> {
        let writers: Vec<usize> = if self.is_split(port) {
            (0..self.workers.len()).collect()
        } else {
            vec![self.owner(port).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("port {port} is not attached to a worker"),
                )
            })?]
        };
        let recording = Recording::new(
            PcapWriter::new(BufWriter::new(out))?,
            limit,
            self.clock_micros,
        );
        let (tx, rx) = mpsc::channel();
        for worker in writers {
            self.workers[worker].send(Command::Capture {
                port,
                recording: Arc::clone(&recording),
                done: tx.clone(),
            })?;
        }
        Ok(rx)
    }

    /// Stops every thread and drops their ports.
    pub fn stop(self) {}
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.shutdown();
        }
    }
}

/// Where a worker stands in its group.
struct Place {
    index: usize,
    crew: Arc<Crew>,
    pool: PacketPool,
    cpu: Option<usize>,
}

/// One running worker thread.
struct Worker {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<WorkerStats>,
}

impl Worker {
    fn spawn(
        name: &str,
        poll: Poll,
        waker: Arc<Waker>,
        tables: Arc<Tables>,
        options: WorkerOptions,
        place: Place,
    ) -> io::Result<Worker> {
        let (tx, rx) = mpsc::channel();
        let (started_tx, started) = mpsc::channel();
        let stats = Arc::new(WorkerStats::default());
        let loop_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                Loop::new(poll, rx, tables, options, loop_stats, place).run(started_tx)
            })?;
        // Back only once the worker has settled (pinned, in its class, its
        // spin guard started): what it warns of is logged before the
        // daemon says it is ready, and the descriptors it opens are open
        // by then. An error here means the thread ended first, which its
        // join reports.
        let _ = started.recv();
        Ok(Worker {
            commands: tx,
            waker,
            thread: Some(thread),
            stats,
        })
    }

    fn send(&self, command: Command) -> io::Result<()> {
        self.commands
            .send(command)
            .map_err(|_| io::Error::other("the worker has stopped"))?;
        self.waker.wake()
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.send(Command::Stop);
            let _ = thread.join();
        }
    }
}

mod event_loop;
mod handoff;
mod shaper;
mod spin;
mod spin_guard;
mod stats;

pub use handoff::MAX_WORKERS;
pub use stats::{WorkerStats, WorkerStatsSnapshot, BATCH_BUCKETS};

#[cfg(test)]
mod tests {

    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    use crate::drop::DropReason;

    use crate::port::socket_pair::{
        counted_socket_port, frame, node1_tables as tables, socket_port, split_socket_port, IP1,
        IP2, MAC1, MAC2,
    };
    use crate::tables::PortSpec;

    fn options() -> WorkerOptions {
        WorkerOptions {
            pool_buffers: 1024,
            large_buffers: 4,
            // No spinning: a worker sleeps at once, so each hand-off must
            // wake it.
            busy_poll: Duration::ZERO,
            realtime: false,
            clock_secs: || 1,
            clock_micros: || 1,
            split_ports: false,
        }
    }

    /// Node 1's tables with its two pods' ports, a (veth1) and b
    /// (veth2), their MACs learned.
    fn two_pods() -> (Arc<Tables>, PortId, PortId) {
        let tables = tables();
        let a = tables
            .attach_port(PortSpec::pod("veth1", IP1, MAC1))
            .unwrap();
        let b = tables
            .attach_port(PortSpec::pod("veth2", IP2, MAC2))
            .unwrap();
        tables.fdb.learn(MAC1, a, 1);
        tables.fdb.learn(MAC2, b, 1);
        (tables, a, b)
    }

    #[test]
    fn frames_for_a_port_of_another_worker_go_through_its_mailbox() {
        let (tables, a, b) = two_pods();
        let workers =
            Workers::spawn("test-worker", Arc::clone(&tables), options(), 2, &[]).unwrap();
        let (a_port, a_wire) = socket_port("veth1", a);
        let (b_port, b_wire) = socket_port("veth2", b);
        // Each port on the worker with the fewest: one each.
        assert_eq!(workers.attach(a, a_port).unwrap(), Some(0));
        assert_eq!(workers.attach(b, b_port).unwrap(), Some(1));
        assert_eq!((workers.owner(a), workers.owner(b)), (Some(0), Some(1)));

        let mut got = [0u8; 2048];
        for round in 0..50 {
            let there = frame((MAC1, IP1), (MAC2, IP2));
            a_wire.send(&there).unwrap();
            let n = b_wire
                .recv(&mut got)
                .expect("worker 1 sends what worker 0 received");
            assert_eq!(&got[..n], &there[..], "round {round}");
            let back = frame((MAC2, IP2), (MAC1, IP1));
            b_wire.send(&back).unwrap();
            let n = a_wire.recv(&mut got).expect("and back");
            assert_eq!(&got[..n], &back[..], "round {round}");
        }
        let stats: Vec<_> = workers.stats().iter().map(|s| s.snapshot()).collect();
        assert_eq!((stats[0].handed_off, stats[1].handed_off), (50, 50));
        assert_eq!(tables.stats.snapshot().total_drops(), 0);

        // A port let go: frames for it are counted, not lost silently.
        assert!(workers.detach(b).unwrap().is_some());
        assert_eq!(workers.owner(b), None);
        a_wire.send(&frame((MAC1, IP1), (MAC2, IP2))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tables.stats.snapshot().drop_count(DropReason::PortGone) == 0 {
            assert!(Instant::now() < deadline, "the frame was not counted");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(tables.stats.snapshot().total_drops(), 1);
        workers.stop();
    }

    /// A pod over its egress limit: the burst goes at once, then a frame
    /// each time the rate allows, for as long as the 25 ms queue lasts;
    /// the rest is counted. Every frame of the pod's burst is accounted
    /// for once it stops sending: a port whose held frames have left is
    /// read again though no new frame wakes the worker for it.
    #[test]
    fn a_pod_over_its_egress_limit_is_paced_and_every_frame_accounted_for() {
        use crate::egress_limit::RateLimit;

        let tables = tables();
        let mut spec = PortSpec::pod("veth1", IP1, MAC1);
        // A 64-byte frame every 10 ms, three at once.
        spec.egress_limit = Some(RateLimit {
            bytes_per_sec: 6_400,
            burst_bytes: 3 * 64,
        });
        let a = tables.attach_port(spec).unwrap();
        let b = tables
            .attach_port(PortSpec::pod("veth2", IP2, MAC2))
            .unwrap();
        tables.fdb.learn(MAC2, b, 1);
        let workers =
            Workers::spawn("test-worker", Arc::clone(&tables), options(), 1, &[]).unwrap();
        let (a_port, a_wire) = socket_port("veth1", a);
        let (b_port, b_wire) = socket_port("veth2", b);
        workers.attach(a, a_port).unwrap();
        workers.attach(b, b_port).unwrap();

        let sent = 40;
        let started = Instant::now();
        for _ in 0..sent {
            a_wire.send(&frame((MAC1, IP1), (MAC2, IP2))).unwrap();
        }
        let limited = || {
            tables
                .stats
                .snapshot()
                .drop_count(DropReason::EgressRateLimited)
        };
        let mut arrived = Vec::new();
        let mut got = [0u8; 2048];
        b_wire
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while arrived.len() as u64 + limited() < sent {
            assert!(
                Instant::now() < deadline,
                "{} arrived, {} counted as egress_rate_limited, of {sent}: the rest were left unread",
                arrived.len(),
                limited()
            );
            if b_wire.recv(&mut got).is_ok() {
                arrived.push(started.elapsed());
            }
        }
        assert_eq!(arrived.len() as u64 + limited(), sent);
        assert!(arrived.len() >= 5, "the burst and two held: {arrived:?}");
        // Past the burst, at most one frame per 10 ms (less a millisecond
        // for the release's timing).
        let paced = &arrived[3..];
        let span = paced[paced.len() - 1].saturating_sub(paced[0]);
        assert!(
            span >= Duration::from_millis(9 * (paced.len() as u64 - 1)),
            "{arrived:?}"
        );
        let held = tables
            .stats
            .snapshot()
            .ports
            .iter()
            .find(|(id, _)| *id == a)
            .map_or(0, |(_, s)| s.egress_held);
        assert!(held >= 2, "{held} held");
        workers.stop();
    }

    #[test]
    fn workers_have_settled_when_spawn_returns() {
        let tables = tables();
        let options = WorkerOptions {
            busy_poll: Duration::from_micros(50),
            ..options()
        };
        let workers = Workers::spawn("settle", Arc::clone(&tables), options, 2, &[]).unwrap();
        // What each loop records before its first turn is there already.
        for stats in workers.stats() {
            assert_eq!(stats.snapshot().spin_window_secs, 50e-6);
        }
        workers.stop();
    }

    /// Two pods' ports under a worker pinned to each online CPU: a split
    /// (each member read where its frames arrive), b not; the test's ends
    /// of each and what each does, counted.
    struct SplitPods {
        tables: Arc<Tables>,
        workers: Workers,
        a_wires: Vec<UnixDatagram>,
        a_reads: Vec<Arc<AtomicUsize>>,
        b_wire: UnixDatagram,
        b_reads: Arc<AtomicUsize>,
        /// b's worker, which reads a's member of the same index.
        owner: usize,
    }

    /// [`SplitPods`], the workers spinning up to `busy_poll`.
    fn split_pods(name: &str, busy_poll: Duration) -> SplitPods {
        let online = sched::online_cpus().unwrap();
        let allowed = sched::allowed_cpus().unwrap();
        assert!(
            allowed == online && online.len() <= MAX_WORKERS,
            "this test pins a worker to each online CPU ({online:?}); this process may use {allowed:?}"
        );
        let (tables, a, b) = two_pods();
        let options = WorkerOptions {
            busy_poll,
            split_ports: true,
            ..options()
        };
        let workers =
            Workers::spawn(name, Arc::clone(&tables), options, online.len(), &online).unwrap();
        let (a_port, a_wires, a_reads) = split_socket_port("veth1", a, online.len());
        let (b_port, b_wire, b_reads) = counted_socket_port("veth2", b);
        assert_eq!(workers.attach(a, a_port).unwrap(), None, "a is split");
        let owner = workers.attach(b, b_port).unwrap().expect("b has one owner");
        SplitPods {
            tables,
            workers,
            a_wires,
            a_reads,
            b_wire,
            b_reads,
            owner,
        }
    }

    /// With a worker pinned to each CPU, a split port's frames arrive on
    /// their worker's own CPU, which a spin would not wake any sooner: the
    /// worker sleeps at once after them. A frame of a port any CPU may
    /// write still starts a spin.
    #[test]
    fn a_worker_spins_after_frames_from_any_cpu_but_not_after_a_split_ports() {
        // Long enough to see a spin run out whatever the load.
        let SplitPods {
            tables,
            workers,
            a_wires,
            b_wire,
            owner,
            ..
        } = split_pods("spin-test", Duration::from_millis(20));
        let spins = || {
            let s = workers.stats()[owner].snapshot();
            s.spins_caught + s.spins_expired + s.spins_preempted
        };
        // The spin each worker starts with has run out.
        std::thread::sleep(Duration::from_millis(100));
        let before = spins();

        // From the member b's owner reads to b: no spin.
        let mut got = [0u8; 2048];
        let there = frame((MAC1, IP1), (MAC2, IP2));
        a_wires[owner].send(&there).unwrap();
        let n = b_wire.recv(&mut got).expect("a's frame reaches b");
        assert_eq!(&got[..n], &there[..]);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(spins(), before, "no spin after a split port's frame");

        // From b, which any CPU may write, back to a: a spin, which runs
        // out.
        let back = frame((MAC2, IP2), (MAC1, IP1));
        b_wire.send(&back).unwrap();
        let n = a_wires[owner].recv(&mut got).expect("b's frame reaches a");
        assert_eq!(&got[..n], &back[..]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while spins() == before {
            assert!(
                Instant::now() < deadline,
                "no spin after a frame from any CPU"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(tables.stats.snapshot().total_drops(), 0);
        workers.stop();
    }

    /// A port whose frames arrive on its worker's CPU is read once a
    /// frame: the read that found it empty is its last until epoll
    /// reports it again. A port any CPU writes is read once more to learn
    /// that it is empty, since there the worker may spin next.
    #[test]
    fn a_worker_reads_a_drained_port_again_only_when_epoll_reports_it_if_its_frames_arrive_here() {
        let pods = split_pods("drained-test", Duration::ZERO);
        let owner = pods.owner;
        // Each port's first read, on attach, is over.
        std::thread::sleep(Duration::from_millis(100));
        let reads = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
        let (a_before, b_before) = (reads(&pods.a_reads[owner]), reads(&pods.b_reads));

        const FRAMES: usize = 20;
        let mut got = [0u8; 2048];
        let there = frame((MAC1, IP1), (MAC2, IP2));
        let back = frame((MAC2, IP2), (MAC1, IP1));
        for _ in 0..FRAMES {
            pods.a_wires[owner].send(&there).unwrap();
            let n = pods.b_wire.recv(&mut got).expect("a's frame reaches b");
            assert_eq!(&got[..n], &there[..]);
            pods.b_wire.send(&back).unwrap();
            let n = pods.a_wires[owner]
                .recv(&mut got)
                .expect("b's frame reaches a");
            assert_eq!(&got[..n], &back[..]);
        }
        // The worker may still be making b's last read.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            reads(&pods.a_reads[owner]) - a_before,
            FRAMES,
            "a split member is read once a frame"
        );
        assert_eq!(
            reads(&pods.b_reads) - b_before,
            2 * FRAMES,
            "a port any CPU writes is read until a read finds it empty"
        );
        assert_eq!(pods.tables.stats.snapshot().total_drops(), 0);
        pods.workers.stop();
    }

    #[test]
    fn split_members_are_read_where_their_frames_arrive_only_with_a_worker_pinned_to_each_cpu() {
        let read_here = split_members_read_where_their_frames_arrive;
        assert!(read_here(2, &[0, 1], &[0, 1]));
        assert!(read_here(1, &[0], &[0]));
        // Unpinned workers run anywhere.
        assert!(!read_here(2, &[], &[0, 1]));
        // One worker, pinned to CPU 0, reads CPU 1's frames too.
        assert!(!read_here(1, &[0, 1], &[0, 1]));
        // A CPU without a worker: its frames go to worker k modulo 2.
        assert!(!read_here(2, &[0, 1], &[0, 1, 2, 3]));
        // Worker 0 on CPU 1 reads member 0, which takes CPU 0's frames.
        assert!(!read_here(2, &[1, 0], &[0, 1]));
        // CPU 1 offline: member 1 takes CPU 2's frames, far from CPU 1.
        assert!(!read_here(2, &[0, 1], &[0, 2]));
        assert!(!read_here(3, &[0, 1, 2], &[0, 1]));
    }

    #[test]
    fn a_group_has_one_to_max_workers() {
        let tables = tables();
        for count in [0, MAX_WORKERS + 1] {
            let e = Workers::spawn("w", Arc::clone(&tables), options(), count, &[]).unwrap_err();
            assert!(e.to_string().contains("from 1 to 64"), "{e}");
        }
    }
}
