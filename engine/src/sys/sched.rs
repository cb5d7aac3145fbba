//! The calling thread's scheduling class: a worker forwards in a class
//! of its choice (`SCHED_FIFO` by default, `SCHED_OTHER` if asked) and
//! spins in `SCHED_IDLE` while it waits for packets.
//!
//! A thread in `SCHED_IDLE` runs only when nothing else on its CPU wants
//! to, and the scheduler treats a CPU that runs nothing but such threads
//! as idle when it places a task that wakes up (`sched_idle_cpu()` in
//! `select_idle_sibling()`, kernel/sched/fair.c), and lets that task
//! preempt it at once (`check_preempt_wakeup_fair()`). A worker that
//! spins in this class therefore takes no time from the pods, and the CPU
//! it spins on stays awake: on a VM, a task woken onto it does not pay for
//! waking a halted virtual CPU (a VM exit, about 200 µs on this machine).
//!
//! While it forwards, the worker is in `SCHED_FIFO` at the lowest
//! real-time priority ([`WORK_PRIORITY`]): the kernel's own path forwards
//! in softirq context, ahead of every task, and a switch that has to wait
//! for the CPU behind the pods it serves adds their time slices to every
//! packet (a ping crossing two nodes while the pods run a TCP stream took
//! 3 ms with the worker in `SCHED_OTHER`, 0.3 ms in `SCHED_FIFO`). The
//! worker runs only while frames wait; real-time throttling
//! (`sched_rt_runtime_us`) and the fair server keep a share of each CPU
//! for the other tasks even if it never stopped.

use std::io;
use std::sync::OnceLock;

use super::cvt;

/// The real-time priority a worker forwards at: the lowest, below the
/// kernel's threaded interrupt handlers (50) and its per-CPU threads.
pub const WORK_PRIORITY: libc::c_int = 1;

/// A scheduling class for the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadClass {
    /// `SCHED_IDLE`: runs only when nothing else on the CPU wants to.
    Idle,
    /// `SCHED_OTHER`, nice unchanged: shares the CPU with every task.
    Normal,
    /// `SCHED_FIFO` at [`WORK_PRIORITY`]: runs ahead of every normal task.
    Realtime,
}

/// A thread's id (`gettid(2)`), which names one thread of the process
/// to the scheduler's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadId(libc::pid_t);

impl ThreadId {
    /// The calling thread's.
    pub fn current() -> ThreadId {
        // SAFETY: gettid(2) takes no arguments and cannot fail.
        ThreadId(unsafe { libc::gettid() })
    }
}

/// Puts the calling thread in `class`.
pub fn set_class(class: ThreadClass) -> io::Result<()> {
    set_thread_class(ThreadId(0), class)
}

/// Puts thread `thread` (0: the calling one) in `class`, at
/// [`WORK_PRIORITY`] if that is `SCHED_FIFO`.
pub fn set_thread_class(thread: ThreadId, class: ThreadClass) -> io::Result<()> {
    set_thread_policy(thread, class, WORK_PRIORITY)
}

/// Puts thread `thread` in `class` at real-time `priority` (which only
/// `SCHED_FIFO` uses; the others take 0).
pub fn set_thread_policy(
    thread: ThreadId,
    class: ThreadClass,
    priority: libc::c_int,
) -> io::Result<()> {
    let (policy, priority) = match class {
        ThreadClass::Idle => (libc::SCHED_IDLE, 0),
        ThreadClass::Normal => (libc::SCHED_OTHER, 0),
        ThreadClass::Realtime => (libc::SCHED_FIFO, priority),
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // sched_setscheduler(2) acts on the one thread named (0: the caller).
    cvt(unsafe { libc::sched_setscheduler(thread.0, policy, &param) })?;
    Ok(())
}

/// The class the calling thread is in now.
pub fn current_class() -> io::Result<ThreadClass> {
    // SAFETY: sched_getscheduler(2) takes no pointers; 0 is this thread.
    let policy = cvt(unsafe { libc::sched_getscheduler(0) })?;
    Ok(match policy {
        libc::SCHED_IDLE => ThreadClass::Idle,
        libc::SCHED_FIFO | libc::SCHED_RR => ThreadClass::Realtime,
        _ => ThreadClass::Normal,
    })
}

/// The CPUs the calling thread may run on (its affinity mask).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain bits, valid zeroed; sched_getaffinity(2)
    // writes at most the length given; CPU_ISSET reads within the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        cvt(libc::sched_getaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        ))?;
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// The CPUs online (`/sys/devices/system/cpu/online`,
/// Documentation/ABI/stable/sysfs-devices-system-cpu).
pub fn online_cpus() -> io::Result<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    parse_cpu_list(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("online CPUs: {:?} is not a CPU list", text.trim()),
        )
    })
}

/// A kernel CPU list (`0-3,6,8-9`), in order; None if it is not one.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let (first, last): (usize, usize) = match part.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let cpu = part.parse().ok()?;
                (cpu, cpu)
            }
        };
        if last < first {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus)
}

/// Pins the calling thread to CPU `cpu` (a worker on a CPU kept for it).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "CPU {cpu} is beyond the {} a CPU set holds",
                libc::CPU_SETSIZE
            ),
        ));
    }
    // SAFETY: cpu_set_t is plain bits, valid zeroed; CPU_SET writes within
    // it (cpu checked above); sched_setaffinity(2) reads `set` for the
    // length given, with pid 0 the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        cvt(libc::sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

/// Whether this process may move a thread into `class` and back to
/// `SCHED_OTHER`: leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or a
/// `RLIMIT_NICE` that allows nice 0 (`can_nice()` in
/// kernel/sched/syscalls.c); `SCHED_FIFO` needs `CAP_SYS_NICE` or
/// `RLIMIT_RTPRIO`, and a cgroup with real-time runtime. Tried once per
/// class, on a thread of its own, so that a process without the right
/// never strands a worker in a class; the error says why not.
pub fn class_allowed(class: ThreadClass) -> Result<(), String> {
    static IDLE: OnceLock<Result<(), String>> = OnceLock::new();
    static REALTIME: OnceLock<Result<(), String>> = OnceLock::new();
    let cell = match class {
        ThreadClass::Normal => return Ok(()),
        ThreadClass::Idle => &IDLE,
        ThreadClass::Realtime => &REALTIME,
    };
    cell.get_or_init(|| {
        std::thread::Builder::new()
            .name("sched-probe".into())
            .spawn(move || {
                set_class(class).map_err(|e| e.to_string())?;
                set_class(ThreadClass::Normal)
                    .map_err(|e| format!("cannot leave {class:?} again: {e}"))
            })
            .map_err(|e| e.to_string())?
            .join()
            .unwrap_or_else(|_| Err("the probe thread panicked".into()))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_read_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        for bad in ["", "a", "3-1", "0-", "1,,2"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
        let online = online_cpus().unwrap();
        assert!(online.contains(&0), "CPU 0 is online: {online:?}");
    }

    fn policy() -> libc::c_int {
        // SAFETY: sched_getscheduler(2) takes no pointers; 0 is this thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_thread_pinned_to_one_allowed_cpu_may_run_only_there() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        let last = *cpus.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_to_cpu(last).unwrap();
            allowed_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![last]);
        assert_eq!(allowed_cpus().unwrap(), cpus, "only that thread moved");
        assert!(pin_to_cpu(libc::CPU_SETSIZE as usize).is_err());
    }

    #[test]
    fn a_thread_goes_into_each_class_and_back() {
        for class in [ThreadClass::Idle, ThreadClass::Realtime] {
            assert_eq!(
                class_allowed(class),
                Ok(()),
                "this test needs CAP_SYS_NICE (run it as root)"
            );
        }
        // On a thread of its own, so the test harness's thread is not
        // left in another class if an assertion fails.
        std::thread::spawn(|| {
            set_class(ThreadClass::Idle).unwrap();
            assert_eq!(policy(), libc::SCHED_IDLE);
            set_class(ThreadClass::Realtime).unwrap();
            assert_eq!(policy(), libc::SCHED_FIFO);
            set_class(ThreadClass::Normal).unwrap();
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
