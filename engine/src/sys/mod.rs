//! The kernel interfaces the data path needs, and the only place in the
//! engine where `unsafe` is allowed: each block wraps one system call or
//! one `repr(C)` structure the kernel reads, with a `// SAFETY:` comment.
//!
//! Everything above this module is safe Rust over these wrappers:
//! batched socket calls ([`mmsg`]), AF_PACKET sockets ([`packet_socket`]),
//! UDP and raw IPv4 sockets ([`inet`]), TUN/TAP devices ([`tun`]) and the
//! interface ioctls the daemon needs ([`netdev`]), the BPF programs
//! podswitch writes as instructions ([`bpf`]): the tcx hook that stops pod
//! frames in the node's kernel once podswitch has them ([`tcx`]) and the
//! XDP program that steers tunnel packets to the AF_XDP underlay
//! ([`xdp_steer`]), beside the AF_XDP sockets themselves ([`xdp`]), and
//! the fanout program that splits a port among workers by flow, each
//! flow kept in order ([`flow_steer`]); and for the workers' threads,
//! scheduling classes ([`sched`]) and a timer to sleep on ([`timer`]).

#![allow(unsafe_code)]

pub mod bpf;
pub mod flow_steer;
pub mod inet;
pub mod mmsg;
pub mod netdev;
pub mod packet_socket;
pub mod sched;
pub mod tcx;
pub mod timer;
pub mod tun;
pub mod xdp;
pub mod xdp_steer;

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

// The helpers every socket starts from, shared with the host plumbing.
use podswitch_host::fd::{cvt, set_buffer, setsockopt, socket, Buffer};

/// `UDP_SEGMENT` (include/uapi/linux/udp.h; not in the libc crate for glibc).
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` (include/uapi/linux/udp.h).
const UDP_GRO: libc::c_int = 104;

/// `SO_MEMINFO` (include/uapi/asm-generic/socket.h, Linux 4.12) and the
/// index of the socket's drop count in what it returns
/// (include/uapi/linux/sock_diag.h, `SK_MEMINFO_DROPS`).
const SO_MEMINFO: libc::c_int = 55;
const SK_MEMINFO_DROPS: usize = 8;
const SK_MEMINFO_VARS: usize = 9;

/// True if the running kernel's release is `major.minor` or later
/// (`uname(2)`, read once); false if it cannot be read. For interfaces
/// whose refusal cannot be told apart from a bad frame, where a probe
/// would send a packet.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    static RELEASE: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    let release = *RELEASE.get_or_init(|| {
        // SAFETY: utsname is plain C data (arrays of chars), for which
        // all-zero bytes are a valid value; uname fills it in.
        let mut name: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `name` is a live, writable utsname.
        if unsafe { libc::uname(&mut name) } != 0 {
            return None;
        }
        let bytes: Vec<u8> = name
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        parse_release(&String::from_utf8_lossy(&bytes))
    });
    release.is_some_and(|r| r >= (major, minor))
}

/// The major and minor numbers of a kernel release ("6.18.0-1-amd64").
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}

/// Frames the kernel dropped for socket `fd` since it was opened because
/// its receive queue was full (`sk_drops`, which UDP, raw and packet
/// sockets count: `__udp_queue_rcv_skb`, `raw_rcv_skb`, `packet_rcv`). A
/// 32-bit counter that wraps.
pub fn socket_drops(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    getsockopt(fd, libc::SOL_SOCKET, SO_MEMINFO, &mut info)?;
    Ok(info[SK_MEMINFO_DROPS])
}

/// `parts` as the iovecs of one gathered send or write: the first
/// `parts.len()` point at them (the kernel only reads send buffers), the
/// rest are empty. The caller checks that `parts` holds at most `N`.
fn gather<const N: usize>(parts: &[&[u8]]) -> [libc::iovec; N] {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; N];
    for (v, part) in iov.iter_mut().zip(parts) {
        v.iov_base = part.as_ptr().cast_mut().cast();
        v.iov_len = part.len();
    }
    iov
}

/// `getsockopt(2)` into a plain value: an integer, or an array of them,
/// which any bytes the kernel writes leave valid.
fn getsockopt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<()> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to a live, writable `T` of `len` bytes; the
    // kernel writes at most `len` bytes and the length, and every caller
    // passes integers, for which any bytes are a value.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_mut(value).cast(),
            &mut len,
        )
    })?;
    Ok(())
}

/// An `AF_INET` socket address as the kernel lays it out.
fn sockaddr_in(addr: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The address in a `sockaddr_in` the kernel filled.
fn from_sockaddr_in(sa: &libc::sockaddr_in) -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(
        u32::from_be(sa.sin_addr.s_addr).into(),
        u16::from_be(sa.sin_port),
    )
}

/// Waits until `fd` has something to read or `timeout` passes
/// (`poll(2)`); true if it is readable. An interrupted wait counts as a
/// timeout: callers loop until their own deadline.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    wait_any_readable(&[fd], timeout)
}

/// Waits until one of `fds` (at most 8) has something to read or
/// `timeout` passes (`poll(2)`); true if one is readable. An interrupted
/// wait counts as a timeout.
pub fn wait_any_readable(fds: &[BorrowedFd<'_>], timeout: std::time::Duration) -> io::Result<bool> {
    const MOST: usize = 8;
    assert!(
        fds.len() <= MOST,
        "wait_any_readable takes at most {MOST} fds"
    );
    let mut pollfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; MOST];
    for (pollfd, fd) in pollfds.iter_mut().zip(fds) {
        pollfd.fd = fd.as_raw_fd();
    }
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfds` is a live, writable array of `struct pollfd`, and
    // the count passed is at most its length.
    match unsafe { libc::poll(pollfds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) } {
        -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => Ok(false),
        -1 => Err(io::Error::last_os_error()),
        n => Ok(n > 0 && pollfds.iter().any(|p| p.revents & libc::POLLIN != 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    #[test]
    fn kernel_releases_read_as_major_and_minor() {
        assert_eq!(parse_release("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0"), Some((5, 10)));
        assert_eq!(parse_release("6.2-rc1"), Some((6, 2)));
        assert_eq!(parse_release("6"), None);
        assert_eq!(parse_release(""), None);
        // This machine's kernel is older than no kernel podswitch runs on.
        assert!(kernel_at_least(4, 0));
        assert!(!kernel_at_least(u32::MAX, 0));
    }

    #[test]
    fn waiting_on_several_fds_wakes_for_the_one_that_became_readable() {
        let (quiet, _quiet_peer) = UnixDatagram::pair().unwrap();
        let (busy, busy_peer) = UnixDatagram::pair().unwrap();
        let short = Duration::from_millis(20);
        assert!(!wait_any_readable(&[quiet.as_fd(), busy.as_fd()], short).unwrap());
        busy_peer.send(b"x").unwrap();
        assert!(wait_any_readable(&[quiet.as_fd(), busy.as_fd()], short).unwrap());
        assert!(wait_readable(busy.as_fd(), short).unwrap());
        assert!(!wait_readable(quiet.as_fd(), short).unwrap());
    }
}
