//! The system-call helpers every socket here starts from.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Turns a C return value into an `io::Result`, reading `errno` on -1.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `socket(2)`, non-blocking and close-on-exec.
pub fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative return is a new
    // descriptor that nothing else owns.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(2)` with a plain value.
pub fn setsockopt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of `size_of::<T>()` bytes, which
    // the kernel only reads; every caller passes the type the option takes.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// One of a socket's two buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    /// Its receive queue (`SO_RCVBUF`).
    Receive,
    /// Its send queue (`SO_SNDBUF`).
    Send,
}

/// Sizes a socket's buffer to `bytes`: past `net.core.rmem_max` or
/// `wmem_max` for a process with `CAP_NET_ADMIN` (`SO_RCVBUFFORCE`,
/// `SO_SNDBUFFORCE`), up to it otherwise (socket(7)).
pub fn set_buffer(fd: BorrowedFd<'_>, buffer: Buffer, bytes: libc::c_int) -> io::Result<()> {
    let (force, plain) = match buffer {
        Buffer::Receive => (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        Buffer::Send => (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    };
    setsockopt(fd, libc::SOL_SOCKET, force, &bytes)
        .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, plain, &bytes))
}

/// Raises the process's soft limit on open files to its hard limit
/// (`RLIMIT_NOFILE`) and returns the limit now in force. podswitchd's
/// descriptors grow with its pods and its CPUs (a socket per worker for
/// each split pod port), and the soft default (1,024 under systemd, whose
/// hard default is far higher) would fail a CNI ADD with `EMFILE` on a
/// node of many CPUs long before its pods are all there.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = open_file_limit()?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit the kernel only reads.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
    }
    Ok(limit.rlim_cur)
}

/// The process's soft and hard limits on open files (`RLIMIT_NOFILE`).
fn open_file_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit the kernel writes, for the call.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_one() {
        let before = open_file_limit().unwrap();
        assert!(before.rlim_max >= 256, "hard limit {}", before.rlim_max);
        let lowered = libc::rlimit {
            rlim_cur: 256,
            rlim_max: before.rlim_max,
        };
        // SAFETY: a valid rlimit the kernel only reads.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }).unwrap();
        let raised = raise_open_file_limit().unwrap();
        let after = open_file_limit().unwrap();
        assert_eq!(
            (raised, after.rlim_cur, after.rlim_max),
            (before.rlim_max, before.rlim_max, before.rlim_max)
        );
    }
}
