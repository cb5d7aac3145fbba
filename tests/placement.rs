//! Where podswitchd's worker runs on CPUs it shares: a worker that is not
//! pinned moves off a CPU where a pinned task keeps it busy to one that
//! idles (engine/src/worker/placement.rs). Needs root and two CPUs, and
//! CPUs otherwise idle: this binary holds this one test, and cargo runs
//! test binaries one after another.

mod common;

use common::cluster::Cluster;
use common::require;

/// Sends UDP datagrams to `argv[1]` for `argv[2]` seconds, as fast as it
/// can.
const FLOOD: &str = "\
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[2])
payload = b'x' * 18
while time.monotonic() < end:
    for _ in range(1000):
        s.sendto(payload, (sys.argv[1], 9))
";

/// The thread of process `pid` named `comm`, and the CPU it last ran on
/// (field 39 of /proc/PID/task/TID/stat, proc(5)).
fn thread_cpu(pid: u32, comm: &str) -> Option<(String, usize)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if name.trim_end() != comm {
                return None;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let cpu = fields.get(39 - 3)?.parse().ok()?;
            Some((task.file_name().to_str()?.to_string(), cpu))
        })
}

fn taskset(cpus: &str, tid: &str) {
    let out = std::process::Command::new("taskset")
        .args(["-p", "-c", cpus, tid])
        .output()
        .unwrap();
    assert!(out.status.success(), "taskset: {out:?}");
}

/// A pod pinned to CPU 0 floods another pod of its node while the
/// node's one worker starts on CPU 0 too, as the kernel leaves a
/// real-time worker on the CPU it last ran on: the worker moves to
/// another CPU, says so in its counters, and stays there.
///
/// The worker does not spin here (`--busy-poll-us 0`), and so has no
/// spin guard: that thread, real-time one priority above the worker,
/// preempts it when it wakes on the worker's CPU, and the kernel then
/// pushes the preempted worker to another CPU (`push_rt_task`,
/// kernel/sched/rt.c) at a moment of its own. With it, a worker stuck
/// beside the sender gets free in some runs and not in others (seen in
/// this test), and the test could not tell a move of podswitch's from
/// one of the kernel's. Without it, nothing but podswitch moves the
/// worker, and without the move it stays on CPU 0 throughout.
#[test]
fn a_worker_moves_off_the_cpu_of_a_pinned_sender() {
    require(&["ip", "taskset", "/usr/bin/python3"]);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        cpus >= 2,
        "this test needs at least 2 CPUs for the worker to move to another (found {cpus})"
    );
    let mut cluster = Cluster::new("vxlan", "bridge", 2);
    cluster.start(0, &["--busy-poll-us", "0"]);
    cluster.attach_pods(0);
    let node = &cluster.nodes[0];
    let pid = node.daemon.as_ref().unwrap().pid();
    let (tid, _) = thread_cpu(pid, "podswitch-worke").expect("the worker thread");
    // Onto CPU 0, then free to run on any CPU again: it stays on CPU 0
    // until something moves it.
    taskset("0", &tid);
    taskset(&format!("0-{}", cpus - 1), &tid);
    let (from, to) = (&cluster.pods[0], &cluster.pods[1]);
    assert_eq!((from.node, to.node), (0, 0));
    let out = from.ns.exec(
        "taskset",
        &["-c", "0", "/usr/bin/python3", "-c", FLOOD, &to.ip, "3"],
    );
    assert!(out.status.success(), "the flood: {out:?}");
    let stats = node.ctl_json(&["stats"]);
    let moves = stats["workers"][0]["cpu_moves"].as_u64().unwrap();
    let (_, cpu) = thread_cpu(pid, "podswitch-worke").unwrap();
    let forwarded = node.port_counter(&to.host_if, "tx_packets");
    assert!(
        moves >= 1 && cpu != 0,
        "the worker made {moves} moves and is on CPU {cpu} after forwarding {forwarded} frames: {stats}"
    );
}
