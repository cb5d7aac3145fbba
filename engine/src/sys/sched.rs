//! The calling thread's scheduling class, switched between `SCHED_OTHER`
//! and `SCHED_IDLE` by a worker that spins while it waits for packets.
//!
//! A thread in `SCHED_IDLE` runs only when nothing else on its CPU wants
//! to, and the scheduler treats a CPU that runs nothing but such threads
//! as idle when it places a task that wakes up (`sched_idle_cpu()` in
//! `select_idle_sibling()`, kernel/sched/fair.c), and lets that task
//! preempt it at once (`check_preempt_wakeup_fair()`). A worker that
//! spins in this class therefore takes no time from the pods, and the CPU
//! it spins on stays awake: on a VM, a task woken onto it does not pay for
//! waking a halted virtual CPU (a VM exit, about 200 µs on this machine).

use std::io;
use std::sync::OnceLock;

use super::cvt;

/// Puts the calling thread in `SCHED_IDLE` (`idle`) or back in
/// `SCHED_OTHER`.
pub fn set_idle_class(idle: bool) -> io::Result<()> {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // pid 0 is the calling thread (sched_setscheduler(2) acts on threads
    // on Linux).
    cvt(unsafe { libc::sched_setscheduler(0, policy, &param) })?;
    Ok(())
}

/// Whether this process may leave `SCHED_IDLE` again: that needs
/// `CAP_SYS_NICE` or a `RLIMIT_NICE` that allows nice 0
/// (`can_nice()` in kernel/sched/syscalls.c). Tried once, on a thread of
/// its own, so that a process without the right never strands a worker
/// in the idle class.
pub fn idle_class_reversible() -> bool {
    static REVERSIBLE: OnceLock<bool> = OnceLock::new();
    *REVERSIBLE.get_or_init(|| {
        std::thread::Builder::new()
            .name("sched-probe".into())
            .spawn(|| set_idle_class(true).is_ok() && set_idle_class(false).is_ok())
            .ok()
            .and_then(|probe| probe.join().ok())
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: sched_getscheduler(2) takes no pointers; 0 is this thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_thread_goes_into_the_idle_class_and_back() {
        assert!(
            idle_class_reversible(),
            "this test needs CAP_SYS_NICE (run it as root)"
        );
        // On a thread of its own, so the test harness's thread is not
        // left in another class if an assertion fails.
        std::thread::spawn(|| {
            set_idle_class(true).unwrap();
            assert_eq!(policy(), libc::SCHED_IDLE);
            set_idle_class(false).unwrap();
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
