//! A one-shot timer a thread can sleep on: a `timerfd` (timerfd_create(2))
//! on the monotonic clock, armed and disarmed from any thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::cvt;

/// A timer that expires once, `after` the moment it was last armed.
#[derive(Debug)]
pub struct OneShotTimer {
    fd: OwnedFd,
}

impl OneShotTimer {
    /// A disarmed timer.
    pub fn new() -> io::Result<OneShotTimer> {
        // SAFETY: timerfd_create(2) takes no pointers; on success the
        // descriptor it returns is ours alone.
        let fd = cvt(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) })?;
        // SAFETY: `fd` was just opened and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(OneShotTimer { fd })
    }

    /// Expires `after` from now (at once if `after` is zero), replacing
    /// any earlier expiry.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        // A zero it_value would disarm: the shortest expiry is 1 ns.
        self.set(after.max(Duration::from_nanos(1)))
    }

    /// Will not expire until armed again.
    pub fn disarm(&self) -> io::Result<()> {
        self.set(Duration::ZERO)
    }

    fn set(&self, after: Duration) -> io::Result<()> {
        let value = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `value` is a valid itimerspec for the call; the old
        // value is not asked for (null).
        cvt(unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &value, std::ptr::null_mut())
        })?;
        Ok(())
    }

    /// The descriptor, to wait for the expiry in epoll instead (it reads
    /// as ready from the expiry until the next arm, which clears it).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Sleeps until the timer expires; a disarm before then does not end
    /// the sleep (timerfd_create(2)).
    pub fn wait(&self) -> io::Result<()> {
        let mut expirations = 0u64;
        loop {
            // SAFETY: the kernel writes the 8-byte expiration count into
            // `expirations`, which lives across the call.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if read >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn an_armed_timer_wakes_its_sleeper_and_a_rearm_moves_the_expiry() {
        let timer = Arc::new(OneShotTimer::new().unwrap());
        let started = Instant::now();
        timer.arm(Duration::from_secs(60)).unwrap();
        // Armed again, shorter: the later expiry is replaced.
        timer.arm(Duration::from_millis(1)).unwrap();
        let sleeper = {
            let timer = Arc::clone(&timer);
            std::thread::spawn(move || timer.wait())
        };
        sleeper.join().unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn a_disarmed_timer_does_not_expire() {
        let timer = Arc::new(OneShotTimer::new().unwrap());
        timer.arm(Duration::from_millis(20)).unwrap();
        timer.disarm().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let timer = Arc::clone(&timer);
            std::thread::spawn(move || {
                let woke = timer.wait();
                let _ = tx.send(woke.is_ok());
            });
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a disarmed timer woke its sleeper"
        );
        // Armed again, it does wake it (and ends the thread).
        timer.arm(Duration::ZERO).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
    }
}
