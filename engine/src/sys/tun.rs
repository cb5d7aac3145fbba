//! TUN and TAP devices (Documentation/networking/tuntap.rst).
//!
//! A TUN device exchanges IP packets with the kernel's stack (the node's
//! host port); a TAP device exchanges Ethernet frames (a pod attached by
//! TAP). Both are opened without the packet-information prefix
//! (`IFF_NO_PI`) and non-blocking. The device lives as long as the file
//! descriptor: closing it removes the interface and its routes.
//!
//! A device may have several queues (`IFF_MULTI_QUEUE`, "Multiqueue
//! tuntap interface" in the same document), each a descriptor of its own:
//! the kernel picks the queue of each packet it sends into the device,
//! through a steering program where one is set (`TUNSETSTEERINGEBPF`), and
//! takes a packet written to any queue. The device lives until its last
//! queue closes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// TUN (IP packets) or TAP (Ethernet frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunKind {
    /// IP packets.
    Tun,
    /// Ethernet frames.
    Tap,
}

/// An open TUN or TAP device.
#[derive(Debug)]
pub struct TunDevice {
    fd: OwnedFd,
    name: String,
    kind: TunKind,
    /// The `IFF_*` flags it was opened with beyond its kind and
    /// `IFF_NO_PI`, which another queue of the device must be opened with
    /// too (`tun_set_iff`, drivers/net/tun.c).
    extra: libc::c_int,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)` (include/uapi/linux/if_tun.h).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_VNET_HDR: libc::c_int = 0x4000;
const IFF_MULTI_QUEUE: libc::c_int = 0x0100;
/// `_IOR('T', 224, int)`: the queue-steering BPF program (Linux 4.16).
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
/// `TUN_F_UDP_TUNNEL_GSO` (Linux 6.17): TCP or UDP segmentation inside a
/// UDP tunnel, described by the 24-byte virtio-net header.
const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x080;
/// `_IOW('T', 216, int)`: the virtio-net header's length.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

impl TunDevice {
    /// Creates (or attaches to) the device `name`.
    pub fn open(name: &str, kind: TunKind) -> io::Result<TunDevice> {
        Self::open_flags(name, kind, 0)
    }

    /// Creates the device `name` with virtio-net headers and TCP
    /// segmentation and checksum offloads on (see the module's doc).
    pub fn open_with_offloads(name: &str, kind: TunKind) -> io::Result<TunDevice> {
        let dev = Self::open_flags(name, kind, IFF_VNET_HDR)?;
        dev.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN)?;
        Ok(dev)
    }

    /// Creates the device `name` able to take more queues
    /// (`IFF_MULTI_QUEUE`; [`another_queue`](Self::another_queue)), with
    /// virtio-net headers and offloads on if `offloads` (as
    /// [`open_with_offloads`](Self::open_with_offloads)); this is its
    /// first queue.
    pub fn open_multi_queue(name: &str, kind: TunKind, offloads: bool) -> io::Result<TunDevice> {
        let flags = IFF_MULTI_QUEUE | if offloads { IFF_VNET_HDR } else { 0 };
        let dev = Self::open_flags(name, kind, flags)?;
        if offloads {
            // The offloads are the device's: set once, for every queue.
            dev.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN)?;
        }
        Ok(dev)
    }

    /// Opens another queue of this device, which must have been opened
    /// with [`open_multi_queue`](Self::open_multi_queue).
    pub fn another_queue(&self) -> io::Result<TunDevice> {
        if self.extra & IFF_MULTI_QUEUE == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} has one queue (not opened IFF_MULTI_QUEUE)", self.name),
            ));
        }
        Self::open_flags(&self.name, self.kind, self.extra)
    }

    /// Hands the device the BPF program (`BPF_PROG_TYPE_SOCKET_FILTER`)
    /// that picks the queue of each packet the kernel sends into it: its
    /// return value modulo the queues (`tun_ebpf_select_queue`). It runs
    /// in the sender's context, on the sender's CPU, and sees the packet
    /// from its network header.
    pub fn set_steering_program(&self, program: BorrowedFd<'_>) -> io::Result<()> {
        let fd: libc::c_int = program.as_raw_fd();
        // SAFETY: TUNSETSTEERINGEBPF reads one int through the pointer,
        // which points at a live local.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETSTEERINGEBPF,
                std::ptr::from_ref(&fd),
            )
        })
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("TUNSETSTEERINGEBPF {}: {e}", self.name)))
    }

    /// Creates the TAP `name` for UDP-tunnel super-frames: 24-byte
    /// virtio-net headers (`struct virtio_net_hdr_v1_hash_tunnel`) and TCP
    /// segmentation inside a UDP tunnel (`TUN_F_UDP_TUNNEL_GSO`, Linux
    /// 6.17). Fails with the kernel's `EINVAL` on a kernel without it.
    pub fn open_tunnel_gso(name: &str) -> io::Result<TunDevice> {
        let dev = Self::open_flags(name, TunKind::Tap, IFF_VNET_HDR)?;
        let header_len: libc::c_int = 24;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at a live local.
        cvt(unsafe {
            libc::ioctl(
                dev.fd.as_raw_fd(),
                TUNSETVNETHDRSZ,
                std::ptr::from_ref(&header_len),
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("TUNSETVNETHDRSZ {name}: {e}")))?;
        // The kernel takes tunnel segmentation only beside a plain one
        // (drivers/net/tun.c, set_offload).
        dev.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN | TUN_F_UDP_TUNNEL_GSO)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{e} (UDP tunnel segmentation needs Linux 6.17+)"),
                )
            })?;
        Ok(dev)
    }

    /// Tells the kernel which offloads the reader takes (`TUN_F_*`).
    fn set_offload(&self, offloads: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no pointer.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(offloads),
            )
        })
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("TUNSETOFFLOAD {}: {e}", self.name)))
    }

    fn open_flags(name: &str, kind: TunKind, extra: libc::c_int) -> io::Result<TunDevice> {
        // SAFETY: the path is a NUL-terminated literal; a non-negative
        // return is a new descriptor owned by no one else.
        let raw = cvt(unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
        // SAFETY: `raw` was just returned by open(2).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = super::netdev::ifreq(name)?;
        let flags = match kind {
            TunKind::Tun => libc::IFF_TUN,
            TunKind::Tap => libc::IFF_TAP,
        } | libc::IFF_NO_PI
            | extra;
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a
        // valid, exclusively borrowed ifreq.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, std::ptr::from_mut(&mut req)) })
            .map_err(|e| io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")))?;
        Ok(TunDevice {
            fd,
            name: name.to_string(),
            kind,
            extra,
        })
    }

    /// Its interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet (or frame) into `buf`; `Ok(None)` when none waits.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is a live, exclusively borrowed slice of the length
        // passed.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Reads one packet scattered over `parts` (a virtio-net header, a
    /// buffer, an overflow area); returns the bytes read, `Ok(None)` when
    /// none waits.
    pub fn read_parts(&self, parts: [&mut [u8]; 3]) -> io::Result<Option<usize>> {
        let iov: [libc::iovec; 3] = parts.map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        });
        // SAFETY: the iovecs point into slices exclusively borrowed for the
        // call, with their true lengths.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 3) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Most parts one [`Self::write`] gathers: a virtio-net header, the
    /// headers of a batch of datagrams and their 64 payloads.
    pub const MAX_WRITE_PARTS: usize = 66;

    /// Writes one packet (or frame) made of `parts` (at most
    /// [`Self::MAX_WRITE_PARTS`]; more is `EMSGSIZE`).
    pub fn write(&self, parts: &[&[u8]]) -> io::Result<usize> {
        if parts.len() > Self::MAX_WRITE_PARTS {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        let iov = super::gather::<{ Self::MAX_WRITE_PARTS }>(parts);
        // SAFETY: the first `parts.len()` iovecs point into slices borrowed
        // for the call, which the kernel only reads.
        let n = unsafe {
            libc::writev(
                self.fd.as_raw_fd(),
                iov.as_ptr(),
                parts.len() as libc::c_int,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsFd for TunDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
