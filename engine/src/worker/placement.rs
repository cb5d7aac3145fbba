//! Where a worker that is not pinned runs: off a CPU it shares with a
//! busy task while another CPU it may use sits idle.
//!
//! A worker forwards in `SCHED_FIFO`, and the kernel wakes a real-time
//! task on the CPU it last ran on unless that CPU already runs a
//! real-time task of its priority or higher (`select_task_rq_rt`,
//! kernel/sched/rt.c). The fair tasks it preempts there are left to the
//! fair class's load balancer, which moves them to an idle CPU. A task
//! pinned to that CPU cannot move (trafgen pins its sender; a Guaranteed
//! pod under the kubelet's static CPU manager is pinned too), so the
//! worker and that task take turns on one CPU while another idles. On
//! this 2-vCPU VM, with a 64-byte host-gw flood from a pinned trafgen,
//! the sending node's worker read 527,000 frames a second on trafgen's
//! CPU, with 45,000 a second overflowing its socket, and 667,000-770,000
//! once moved to the other CPU by hand.
//!
//! So a worker that is not pinned looks at the CPUs' times in /proc/stat
//! (proc(5)), at most every [`CHECK_EVERY`] while it forwards, and moves
//! to the idlest CPU it may use when, since its last look:
//!
//! - its CPU was busy nearly all the time ([`BUSY`]),
//! - it worked a good part of that time itself ([`WORKING`]): a worker
//!   that only wakes now and then costs the other task little, and is
//!   woken faster on a CPU that is awake than on a halted one,
//! - other tasks took a good part of it too ([`OTHERS`]),
//! - and another CPU it may use was idle a good part of the time
//!   ([`IDLE`]).
//!
//! It moves by setting its affinity to that CPU alone and then back to
//! what it was: the kernel migrates it at once and leaves it there, and
//! its wake-ups start there from then on. It moves at most once every
//! [`MOVE_AT_MOST_EVERY`], so that workers cannot chase each other.

use std::io;
use std::time::{Duration, Instant};

use crate::sys::sched;

/// How often, at most, a worker looks at the CPUs' times (while it
/// forwards: a sleeping worker does not look). /proc/stat counts in
/// ticks of 10 ms, so a quarter of a second gives 25 a CPU.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The least time between two moves of one worker.
pub(super) const MOVE_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// The share of its time the worker's CPU was busy.
const BUSY: f64 = 0.9;
/// The share of the time the worker ran.
const WORKING: f64 = 0.3;
/// The share of its CPU's time that other tasks took.
const OTHERS: f64 = 0.2;
/// The share of the time another CPU was idle.
const IDLE: f64 = 0.4;

/// One CPU's time in /proc/stat, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuTime {
    /// user, nice, system, irq, softirq and steal.
    busy: u64,
    /// idle and iowait.
    idle: u64,
}

/// The times of the `cpuN` lines of /proc/stat's `text`, indexed by N;
/// `None` for a CPU it has no line for (offline).
fn parse_proc_stat(text: &str) -> Vec<Option<CpuTime>> {
    let mut cpus: Vec<Option<CpuTime>> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        // user nice system idle iowait irq softirq steal (guest time is
        // counted in user already).
        let ticks: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
            continue;
        };
        if cpus.len() <= cpu {
            cpus.resize(cpu + 1, None);
        }
        cpus[cpu] = Some(CpuTime {
            busy: user + nice + system + irq + softirq + steal,
            idle: idle + iowait,
        });
    }
    cpus
}

/// The share of the time between `before` and `after` CPU `cpu` was
/// busy and idle, if it was online throughout and time passed.
fn shares(before: &[Option<CpuTime>], after: &[Option<CpuTime>], cpu: usize) -> Option<(f64, f64)> {
    let (Some(Some(a)), Some(Some(b))) = (before.get(cpu), after.get(cpu)) else {
        return None;
    };
    let busy = b.busy.checked_sub(a.busy)?;
    let idle = b.idle.checked_sub(a.idle)?;
    let total = busy + idle;
    (total > 0).then(|| (busy as f64 / total as f64, idle as f64 / total as f64))
}

/// The CPU a worker on CPU `here` should move to, given the CPUs' times
/// at its last look and now, the CPUs it may use, and the share of the
/// time it ran itself; `None` to stay.
fn better_cpu(
    here: usize,
    before: &[Option<CpuTime>],
    after: &[Option<CpuTime>],
    allowed: &[usize],
    working: f64,
) -> Option<usize> {
    let (busy, _) = shares(before, after, here)?;
    if busy < BUSY || working < WORKING || busy - working.min(busy) < OTHERS {
        return None;
    }
    allowed
        .iter()
        .copied()
        .filter(|&cpu| cpu != here)
        .filter_map(|cpu| Some((cpu, shares(before, after, cpu)?.1)))
        .filter(|&(_, idle)| idle >= IDLE)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(cpu, _)| cpu)
}

/// A worker's looks at the CPUs, and its moves.
#[derive(Debug)]
pub(super) struct Placement {
    /// The CPUs it may use, as its affinity was when it started.
    allowed: Vec<usize>,
    last_look: Instant,
    /// The CPUs' times at the last look.
    times: Vec<Option<CpuTime>>,
    /// The worker's own CPU time at the last look.
    ran: Duration,
    last_move: Option<Instant>,
}

impl Placement {
    /// For the calling thread, if it may use more than one CPU and the
    /// CPUs' times can be read.
    pub(super) fn new() -> Option<Placement> {
        let allowed = sched::allowed_cpus().ok()?;
        if allowed.len() < 2 {
            return None;
        }
        Some(Placement {
            allowed,
            last_look: Instant::now(),
            times: read_proc_stat().ok()?,
            ran: sched::thread_cpu_time().ok()?,
            last_move: None,
        })
    }

    /// Called while the worker forwards: if a look is due, looks, and
    /// moves the worker if it should; returns the CPU it moved to.
    pub(super) fn look(&mut self, now: Instant) -> Option<usize> {
        let elapsed = now.saturating_duration_since(self.last_look);
        if elapsed < CHECK_EVERY {
            return None;
        }
        let times = read_proc_stat().ok()?;
        let ran = sched::thread_cpu_time().ok()?;
        let working = (ran.saturating_sub(self.ran)).as_secs_f64() / elapsed.as_secs_f64();
        let before = std::mem::replace(&mut self.times, times);
        self.ran = ran;
        self.last_look = now;
        if self
            .last_move
            .is_some_and(|moved| now.saturating_duration_since(moved) < MOVE_AT_MOST_EVERY)
        {
            return None;
        }
        let here = sched::current_cpu()?;
        let target = better_cpu(here, &before, &self.times, &self.allowed, working)?;
        sched::set_allowed_cpus(&[target]).ok()?;
        // Back to every CPU it may use: it stays where it was moved until
        // the scheduler has a reason to move it.
        if let Err(e) = sched::set_allowed_cpus(&self.allowed) {
            eprintln!(
                "podswitch worker: cannot restore its CPUs {:?} after a move: {e}",
                self.allowed
            );
        }
        self.last_move = Some(now);
        Some(target)
    }
}

fn read_proc_stat() -> io::Result<Vec<Option<CpuTime>>> {
    Ok(parse_proc_stat(&std::fs::read_to_string("/proc/stat")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/stat as Linux 6.18 writes it on a 2-CPU machine (the first
    /// line sums the CPUs; guest fields trail).
    const STAT: &str = "cpu  100 2 30 400 5 6 7 8 0 0\n\
cpu0 60 1 20 100 2 3 4 5 0 0\n\
cpu1 40 1 10 300 3 3 3 3 0 0\n\
intr 12345 0 0\n\
ctxt 999\n";

    #[test]
    fn proc_stat_lines_become_busy_and_idle_ticks() {
        let cpus = parse_proc_stat(STAT);
        assert_eq!(
            cpus,
            [
                Some(CpuTime {
                    busy: 60 + 1 + 20 + 3 + 4 + 5,
                    idle: 100 + 2
                }),
                Some(CpuTime {
                    busy: 40 + 1 + 10 + 3 + 3 + 3,
                    idle: 300 + 3
                }),
            ]
        );
        // A CPU without a line (offline) is None; short lines are skipped.
        let cpus = parse_proc_stat("cpu2 1 1 1 1 1 1 1 1\ncpu0 1 2\n");
        assert_eq!(cpus.len(), 3);
        assert!(cpus[0].is_none() && cpus[1].is_none() && cpus[2].is_some());
    }

    /// CPU times after `ticks` ticks in which each CPU was busy for the
    /// given share of them.
    fn after(busy_shares: &[f64], ticks: u64) -> Vec<Option<CpuTime>> {
        busy_shares
            .iter()
            .map(|&share| {
                let busy = (share * ticks as f64).round() as u64;
                Some(CpuTime {
                    busy,
                    idle: ticks - busy,
                })
            })
            .collect()
    }

    #[test]
    fn a_worker_moves_off_a_shared_busy_cpu_to_the_idlest() {
        let zero = vec![Some(CpuTime::default()); 3];
        // On CPU 0, busy throughout, 60% of it the worker's: CPU 2 was
        // idler than CPU 1.
        let now = after(&[1.0, 0.5, 0.2], 100);
        assert_eq!(better_cpu(0, &zero, &now, &[0, 1, 2], 0.6), Some(2));
        // Not to a CPU it may not use.
        assert_eq!(better_cpu(0, &zero, &now, &[0, 1], 0.6), Some(1));
    }

    #[test]
    fn a_worker_stays_unless_every_condition_holds() {
        let zero = vec![Some(CpuTime::default()); 2];
        let idle_other = after(&[1.0, 0.1], 100);
        // The CPU all its own: nothing to gain.
        assert_eq!(better_cpu(0, &zero, &idle_other, &[0, 1], 0.95), None);
        // Hardly working: it costs the other task little there.
        assert_eq!(better_cpu(0, &zero, &idle_other, &[0, 1], 0.1), None);
        // Its CPU not busy throughout: the other task is not held back.
        let not_busy = after(&[0.7, 0.1], 100);
        assert_eq!(better_cpu(0, &zero, &not_busy, &[0, 1], 0.4), None);
        // No CPU idle enough to move to.
        let both_busy = after(&[1.0, 0.8], 100);
        assert_eq!(better_cpu(0, &zero, &both_busy, &[0, 1], 0.5), None);
        // No time passed, or a CPU went offline: no decision.
        assert_eq!(better_cpu(0, &zero, &zero, &[0, 1], 0.5), None);
        assert_eq!(better_cpu(0, &zero, &[None, None], &[0, 1], 0.5), None);
    }

    #[test]
    fn this_machines_proc_stat_has_every_online_cpu() {
        let cpus = read_proc_stat().expect("/proc/stat");
        for cpu in sched::online_cpus().expect("the online CPUs") {
            assert!(
                cpus.get(cpu).is_some_and(Option::is_some),
                "no line for CPU {cpu}"
            );
        }
    }
}
