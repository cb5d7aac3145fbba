//! The fastest any AF_PACKET switch can be on this kernel: a cross-connect
//! between two interfaces that does nothing but receive a batch with its
//! virtio-net headers and send it whole out of the other interface, in
//! one thread (as podswitchd's one worker), sleeping in `poll(2)` when both
//! sides are empty (or, with `--spin`, never sleeping).
//!
//! With `--per-cpu` it runs one such thread per CPU, pinned, each with its
//! own socket on each interface in a fanout group steered by flow
//! (`podswitch_engine::sys::flow_steer`): a frame is read by the thread
//! on the CPU that received it, so the thread woken is on the waker's CPU
//! (no wake-up of another, possibly halted, CPU), unless frames of its
//! flow still wait for another thread, which keeps the flow in order.
//! `--gap-us N` lets a flow move only after N µs without a frame (by
//! default podswitch's, `flow_steer::DEFAULT_GAP`). With `--by-cpu` as
//! well the group is a plain `PACKET_FANOUT_CPU` one, which reorders a
//! flow whose frames arrive on two CPUs.
//! With `--realtime` its threads run in `SCHED_FIFO`, as podswitchd's
//! workers do.
//!
//! No lookups, no pool, no counters, no checksums: what it moves per CPU
//! second is the ceiling that the kernel's packet-socket interface puts on
//! podswitch's AF_PACKET pod ports (docs/benchmarks.md, "The AF_PACKET
//! ceiling"). Run it between the host ends of two pod veths and time a TCP
//! transfer through it, then through a bridge, then through podswitch.
//!
//! ```text
//! cargo run --release --example af_packet_ceiling -- [--spin] [--per-cpu [--by-cpu | --gap-us N]] [--realtime] IFACE_A IFACE_B
//! ```

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use podswitch_engine::offload::VNET_HDR_LEN;
use podswitch_engine::sys::flow_steer::{self, FlowSteering, MemberProgress};
use podswitch_engine::sys::mmsg::{Received, RecvBuffers, SendBuffers, MAX_BATCH, MAX_PARTS};
use podswitch_engine::sys::netdev;
use podswitch_engine::sys::packet_socket::{PacketOptions, PacketSocket};
use podswitch_engine::sys::sched::{self, ThreadClass};
use podswitch_engine::sys::wait_any_readable;

/// `ENOBUFS` (asm-generic/errno.h): what a send gets when the device
/// dropped the frame.
const ENOBUFS: i32 = 105;

/// A BIG TCP frame of a pod veth (`POD_GSO_IPV4_MAX_SIZE`, which the CNI
/// plugin sets) and its Ethernet header fit.
const FRAME_BYTES: usize = podswitch_host::netlink::POD_GSO_IPV4_MAX_SIZE as usize + 64;

/// One batch of frames: virtio-net header and data for each.
struct Batch {
    headers: Vec<[u8; VNET_HDR_LEN]>,
    frames: Vec<Vec<u8>>,
    lens: Vec<usize>,
    /// Frames received.
    count: usize,
    /// Frames the kernel has taken so far; sending resumes here.
    sent: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            headers: vec![[0; VNET_HDR_LEN]; MAX_BATCH],
            frames: (0..MAX_BATCH).map(|_| vec![0; FRAME_BYTES]).collect(),
            lens: vec![0; MAX_BATCH],
            count: 0,
            sent: 0,
        }
    }
}

impl RecvBuffers for Batch {
    fn count(&self) -> usize {
        MAX_BATCH
    }

    fn parts(&mut self, i: usize) -> [&mut [u8]; MAX_PARTS] {
        [&mut self.headers[i], &mut self.frames[i], &mut []]
    }
}

impl SendBuffers for Batch {
    fn count(&self) -> usize {
        self.count - self.sent
    }

    fn parts(&self, i: usize) -> [&[u8]; MAX_PARTS] {
        let i = self.sent + i;
        [&self.headers[i], &self.frames[i][..self.lens[i]], &[]]
    }

    fn destination(&self, _: usize) -> Option<std::net::SocketAddrV4> {
        None
    }
}

/// Moves a batch from `from` out of `to`, if `from` had one; true if it
/// had.
fn forward(
    from: &Side,
    to: &Side,
    batch: &mut Batch,
    meta: &mut [Received; MAX_BATCH],
) -> io::Result<bool> {
    let mark = from.progress.as_ref().map(MemberProgress::steered);
    let got = from.socket.recv_batch(batch, meta)?;
    // Only once the frames are out may their flows move to another
    // thread, whose sends could otherwise overtake them.
    let done = || {
        if let (Some(progress), Some(mark)) = (&from.progress, mark) {
            progress.read(mark, got, got < MAX_BATCH);
        }
    };
    if got == 0 {
        done();
        return Ok(false);
    }
    for (i, m) in meta[..got].iter().enumerate() {
        // A cut frame sent on would carry a header that no longer fits
        // it: say so rather than send it.
        if m.truncated {
            return Err(io::Error::other(format!(
                "a frame of {} bytes is larger than the cross-connect's {FRAME_BYTES}-byte buffers",
                m.len
            )));
        }
        batch.lens[i] = m.len.saturating_sub(VNET_HDR_LEN);
    }
    batch.count = got;
    batch.sent = 0;
    // Every frame goes out, however many calls it takes: a full send
    // buffer takes none or part of the batch. (podswitch counts a drop
    // there instead; a ceiling that dropped would measure TCP's
    // retransmissions, not the interface.)
    while batch.sent < batch.count {
        match to.socket.send_batch(batch) {
            Ok(n) => batch.sent += n,
            // The veth behind dropped the first frame left (its peer's
            // backlog was full: `NET_XMIT_DROP`): a loss TCP repairs, as
            // the kernel's own path would have; the rest go on.
            Err(e) if e.raw_os_error() == Some(ENOBUFS) => batch.sent += 1,
            Err(e) => return Err(e),
        }
    }
    done();
    Ok(true)
}

/// One side of a cross-connect: its socket, and the progress its reads
/// report if its fanout group is steered by flow.
struct Side {
    socket: PacketSocket,
    progress: Option<MemberProgress>,
}

impl Side {
    fn plain(socket: PacketSocket) -> Side {
        Side {
            socket,
            progress: None,
        }
    }
}

/// Moves every frame each interface receives out of the other, forever.
/// With `spin`, a turn that found both empty is followed by the next at
/// once instead of a sleep in `poll(2)`.
fn cross_connect(a: &Side, b: &Side, spin: bool) -> io::Result<()> {
    let mut batch = Batch::new();
    let mut meta = [Received::default(); MAX_BATCH];
    loop {
        let moved_ab = forward(a, b, &mut batch, &mut meta)?;
        let moved_ba = forward(b, a, &mut batch, &mut meta)?;
        if !moved_ab && !moved_ba && !spin {
            wait_any_readable(
                &[a.socket.as_fd(), b.socket.as_fd()],
                Duration::from_secs(1),
            )?;
        }
    }
}

/// Options from the command line.
struct Options {
    spin: bool,
    per_cpu: bool,
    by_cpu: bool,
    realtime: bool,
    /// How long a flow must be quiet before it may move to another thread.
    gap: Duration,
}

/// Runs one cross-connect thread per CPU, each on its own fanout member
/// sockets (see the module's documentation).
fn per_cpu(a: &str, b: &str, options: &Options) -> io::Result<()> {
    // Member k takes the frames of CPU k: thread k must be able to run
    // there, for every CPU a frame may arrive on.
    let (online, allowed) = (sched::online_cpus()?, sched::allowed_cpus()?);
    if online != allowed {
        return Err(io::Error::other(format!(
            "--per-cpu needs every CPU (online: {online:?}), this process may use {allowed:?}"
        )));
    }
    let cpus = online.len();
    // Member k of each side takes CPU k's frames (unless, steered by
    // flow, frames of the same flow wait in another member).
    let side = |name: &str| -> io::Result<Vec<Side>> {
        let socket_options = PacketOptions::default();
        let first = PacketSocket::open(netdev::ifindex(name)?, socket_options)?;
        if options.by_cpu {
            let others = first.fan_out_by_cpu(cpus - 1, socket_options)?;
            return Ok(std::iter::once(first)
                .chain(others)
                .map(Side::plain)
                .collect());
        }
        let steering = FlowSteering::new(flow_steer::Group::Fanout, cpus, options.gap)?;
        let others = first.fan_out_by_flow(cpus - 1, socket_options, &steering)?;
        Ok(std::iter::once(first)
            .chain(others)
            .enumerate()
            .map(|(member, socket)| Side {
                socket,
                progress: Some(steering.progress(member)),
            })
            .collect())
    };
    let pairs: Vec<_> = side(a)?.into_iter().zip(side(b)?).collect();
    let (spin, realtime) = (options.spin, options.realtime);
    let threads: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(cpu, (a, b))| {
            std::thread::spawn(move || -> io::Result<()> {
                sched::pin_to_cpu(cpu)?;
                if realtime {
                    sched::set_class(ThreadClass::Realtime)?;
                }
                cross_connect(&a, &b, spin)
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| io::Error::other("a cross-connect thread panicked"))??;
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let gap = match args.iter().position(|a| a == "--gap-us") {
        Some(i) if i + 1 < args.len() => {
            let us: u64 = args[i + 1].parse().unwrap_or_else(|_| {
                eprintln!(
                    "af_packet_ceiling: --gap-us takes microseconds, not {}",
                    args[i + 1]
                );
                std::process::exit(2);
            });
            args.drain(i..i + 2);
            Duration::from_micros(us)
        }
        Some(_) => {
            eprintln!("af_packet_ceiling: --gap-us takes microseconds");
            std::process::exit(2);
        }
        None => flow_steer::DEFAULT_GAP,
    };
    let mut flag = |name: &str| match args.iter().position(|a| a == name) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let options = Options {
        gap,
        spin: flag("--spin"),
        per_cpu: flag("--per-cpu"),
        by_cpu: flag("--by-cpu"),
        realtime: flag("--realtime"),
    };
    let [a, b] = args.as_slice() else {
        eprintln!(
            "usage: af_packet_ceiling [--spin] [--per-cpu [--by-cpu | --gap-us N]] [--realtime] IFACE_A IFACE_B"
        );
        std::process::exit(2);
    };
    if options.by_cpu && !options.per_cpu {
        eprintln!("af_packet_ceiling: --by-cpu picks how --per-cpu splits the frames; give both");
        std::process::exit(2);
    }
    if options.per_cpu {
        return per_cpu(a, b, &options);
    }
    if options.realtime {
        sched::set_class(ThreadClass::Realtime)?;
    }
    let open = |name: &str| -> io::Result<PacketSocket> {
        PacketSocket::open(netdev::ifindex(name)?, PacketOptions::default())
    };
    cross_connect(&Side::plain(open(a)?), &Side::plain(open(b)?), options.spin)
}
