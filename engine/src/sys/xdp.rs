//! AF_XDP sockets through libxdp (the C library of the xdp-tools
//! project, via libxdp-sys): an XDP program on the interface redirects
//! every frame of queue 0 into the socket's RX ring; the socket's TX ring
//! sends frames out of it (Documentation/networking/af_xdp.rst).
//!
//! Why not xsk-rs, the Rust wrapper we started with: xsk-rs 0.7 gives
//! libxdp pointers to ring structures that it then moves, and libxdp
//! reads them again in `xsk_socket__delete` (to unmap the rings). With
//! fifty pods attaching and detaching that read hit freed memory and
//! crashed the daemon. Here the four rings live in boxes that stay put
//! until the socket is deleted.
//!
//! One UMEM per socket, its frames split ([`Frames`]) between the fill
//! and RX rings and the TX and completion rings (half each for a pod
//! port; all receiving for the AF_XDP underlay). A veth has no
//! zero-copy mode, so the kernel copies (`XDP_COPY`), and podswitch copies
//! each frame between the UMEM and its packet pool once: the pipeline
//! works in pool buffers with headroom for tunnel headers, and a frame
//! goes back to the fill ring as soon as it is copied.
//!
//! Native (driver) XDP is tried first; where it fails the socket falls
//! back to generic (skb) XDP and says so in [`XdpSocket::mode`]. Deleting
//! the socket detaches the program libxdp loaded.
//!
//! The AF_XDP underlay binds its socket without libxdp's program
//! ([`XdpSocket::open_for_program`]): its own program
//! ([`super::xdp_steer`]) redirects only tunnel packets into it.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::ptr;

use libxdp_sys::{
    xsk_ring_cons, xsk_ring_prod, xsk_socket, xsk_socket_config, xsk_socket_config__bindgen_ty_1,
    xsk_umem, xsk_umem_config,
};

/// Bytes per UMEM frame.
const FRAME_SIZE: u32 = 2048;
/// The longest frame a socket receives: a UMEM frame less the headroom
/// the kernel keeps in front of it (`XDP_PACKET_HEADROOM`, 256, with no
/// headroom of our own: `xsk_pool_get_rx_frame_size`). The kernel drops
/// a longer one it is asked to put there.
pub const MAX_RX_FRAME: u32 = FRAME_SIZE - 256;

/// How one socket's UMEM frames are shared between receiving (the fill
/// and RX rings) and sending (the TX and completion rings). Each ring has
/// room for every frame of its side, so a frame always finds a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frames {
    /// Frames waiting in the fill ring for packets.
    pub rx: u32,
    /// Frames for sending.
    pub tx: u32,
}

impl Frames {
    /// A pod port: 1,024 frames each way (4 MiB of UMEM).
    pub const POD: Frames = Frames { rx: 1024, tx: 1024 };

    fn rx_ring(self) -> u32 {
        self.rx.next_power_of_two()
    }

    fn tx_ring(self) -> u32 {
        self.tx.max(1).next_power_of_two()
    }
}

/// How the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (veth's NAPI path).
    Native,
    /// On the skb, after the driver (any interface; slower).
    Generic,
}

/// libxdp keeps per-process state about the XDP programs it loads (a
/// list of contexts per interface) without locking: every libxdp call
/// that creates or deletes a socket holds this lock.
static LIBXDP: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn libxdp_lock() -> std::sync::MutexGuard<'static, ()> {
    LIBXDP.lock().unwrap_or_else(|e| e.into_inner())
}

fn other(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Prepares the process for AF_XDP: silences libbpf's and libxdp's own
/// stderr printing (podswitchd logs each port's XDP mode itself, one line
/// per state change) and lifts the locked-memory limit that kernels before
/// 5.11 charge BPF maps and UMEMs against.
pub fn prepare_process() {
    // SAFETY: passing no print callback is documented to silence the
    // libraries; no other thread is loading BPF programs at start-up.
    unsafe {
        libbpf_sys::libbpf_set_print(None);
        libxdp_sys::libxdp_set_print(None);
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `unlimited` is a valid rlimit read by the kernel only. A
    // refusal (not root) leaves the old limit, which new kernels ignore.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// Makes sure a bpffs is mounted at /sys/fs/bpf, where libxdp keeps its
/// dispatcher (it falls back to a single program without one). Inside
/// `ip netns exec`, /sys is a fresh sysfs without it.
pub fn ensure_bpffs() -> io::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    // SAFETY: statfs is plain C data; zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `st` is a valid out pointer.
    let ret = unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) };
    if ret == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    // SAFETY: every argument is a NUL-terminated literal or null.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(other(
            "mount bpffs at /sys/fs/bpf",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The name of the one XDP program podswitch ever attaches: libxdp's
/// AF_XDP redirect program (lib/libxdp/xsk_def_xdp_prog.c in xdp-tools),
/// loaded by `xsk_socket__create`, alone or as a component of libxdp's
/// dispatcher.
pub const OWN_PROGRAM: &str = "xsk_def_prog";

/// What [`remove_stale_program`] found on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleProgram {
    /// No XDP program is attached.
    None,
    /// Only podswitch's own program was attached (left by a daemon that
    /// was killed before its cleanup), and it was detached.
    Removed,
    /// Programs podswitch did not attach, by name: left in place.
    Foreign(Vec<String>),
}

/// Detaches the XDP programs of interface `ifindex` if, and only if, every
/// one of them is podswitch's own ([`OWN_PROGRAM`]). Someone else's
/// program (a CNI's, a firewall's, an operator's) is never removed.
pub fn remove_stale_program(ifindex: u32) -> io::Result<StaleProgram> {
    let _libxdp = libxdp_lock();
    let index = i32::try_from(ifindex).map_err(|e| other("interface index", e))?;
    // SAFETY: a plain query; the returned object is checked with
    // libxdp_get_error before use and closed below.
    let mp = unsafe { libxdp_sys::xdp_multiprog__get_from_ifindex(index) };
    // SAFETY: libxdp_get_error only inspects the pointer value.
    let err = unsafe { libxdp_sys::libxdp_get_error(mp.cast()) };
    if err == -i64::from(libc::ENOENT) {
        return Ok(StaleProgram::None);
    }
    if err != 0 {
        return Err(other(
            "reading the interface's XDP programs",
            io::Error::from_raw_os_error(-err as i32),
        ));
    }
    let mut names = Vec::new();
    // SAFETY: `mp` is valid until closed; the programs it hands out belong
    // to it, and their names are NUL-terminated strings it owns.
    unsafe {
        let name_of = |prog: *const libxdp_sys::xdp_program| {
            let name = libxdp_sys::xdp_program__name(prog);
            if name.is_null() {
                String::from("?")
            } else {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            }
        };
        if libxdp_sys::xdp_multiprog__is_legacy(mp) {
            let main = libxdp_sys::xdp_multiprog__main_prog(mp);
            if !main.is_null() {
                names.push(name_of(main));
            }
        } else {
            let mut prog = libxdp_sys::xdp_multiprog__next_prog(ptr::null(), mp);
            while !prog.is_null() {
                names.push(name_of(prog));
                prog = libxdp_sys::xdp_multiprog__next_prog(prog, mp);
            }
        }
    }
    let ours = !names.is_empty() && names.iter().all(|n| n == OWN_PROGRAM);
    let outcome = if ours {
        // SAFETY: `mp` is valid; detaching is what it is for.
        let ret = unsafe { libxdp_sys::xdp_multiprog__detach(mp) };
        if ret < 0 {
            Err(other(
                "detaching the stale XDP program",
                io::Error::from_raw_os_error(-ret),
            ))
        } else {
            Ok(StaleProgram::Removed)
        }
    } else {
        Ok(StaleProgram::Foreign(names))
    };
    // SAFETY: `mp` came from xdp_multiprog__get_from_ifindex and is closed
    // once; nothing borrowed from it is used past here.
    unsafe { libxdp_sys::xdp_multiprog__close(mp) };
    outcome
}

const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;
const XDP_COPY: u16 = 2;
/// `XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD` (xdp/xsk.h): bind the socket,
/// attach nothing.
const XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD: u32 = 1;

/// An AF_XDP socket on one receive queue of one interface (queue 0 for
/// pod ports).
pub struct XdpSocket {
    xsk: *mut xsk_socket,
    umem: *mut xsk_umem,
    area: *mut u8,
    area_len: usize,
    // The kernel's rings as libxdp maps them; libxdp keeps pointers to
    // these four until the socket and UMEM are deleted, so they are boxed
    // and never move.
    fill: Box<xsk_ring_prod>,
    comp: Box<xsk_ring_cons>,
    rx: Box<xsk_ring_cons>,
    tx: Box<xsk_ring_prod>,
    /// UMEM addresses of TX frames free to fill.
    tx_free: Vec<u64>,
    /// The UMEM's frames, by side.
    frames: Frames,
    /// TX frames being handed to the ring (scratch): address, length.
    tx_batch: Vec<(u64, u32)>,
    mode: XdpMode,
    fd: RawFd,
}

/// `SOL_XDP` and `XDP_STATISTICS` (include/uapi/linux/if_xdp.h).
const SOL_XDP: libc::c_int = 283;
const XDP_STATISTICS: libc::c_int = 7;

/// `struct xdp_statistics`.
#[repr(C)]
#[derive(Default)]
struct XdpStatistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

// SAFETY: the raw pointers are owned by this value alone (libxdp objects
// and an mmap'd area nothing else references), so moving it to another
// thread moves sole ownership; it is never shared (no Sync).
unsafe impl Send for XdpSocket {}

impl std::fmt::Debug for XdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpSocket")
            .field("mode", &self.mode)
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

/// A zeroed ring structure for libxdp to fill.
fn ring<T>() -> Box<T> {
    // SAFETY: xsk_ring_prod and xsk_ring_cons are plain C structures of
    // integers and pointers, for which all-zero bytes are valid.
    Box::new(unsafe { std::mem::zeroed() })
}

impl XdpSocket {
    /// Opens a socket on `interface`, native XDP first, generic if the
    /// driver refuses (or only generic if `native` is false).
    pub fn open(interface: &str, native: bool) -> io::Result<XdpSocket> {
        if native {
            if let Ok(s) = XdpSocket::open_mode(interface, 0, XdpMode::Native, 0, Frames::POD) {
                return Ok(s);
            }
        }
        XdpSocket::open_mode(interface, 0, XdpMode::Generic, 0, Frames::POD)
    }

    /// Opens a socket on receive queue `queue` of `interface` without
    /// loading libxdp's program: the caller's own program (attached in
    /// `mode`) redirects into it, once the caller puts the socket's
    /// descriptor in its map.
    pub fn open_for_program(
        interface: &str,
        queue: u32,
        mode: XdpMode,
        frames: Frames,
    ) -> io::Result<XdpSocket> {
        let flags = XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD;
        XdpSocket::open_mode(interface, queue, mode, flags, frames)
    }

    fn open_mode(
        interface: &str,
        queue: u32,
        mode: XdpMode,
        libxdp_flags: u32,
        frames: Frames,
    ) -> io::Result<XdpSocket> {
        let name = CString::new(interface).map_err(|e| other("interface name", e))?;
        if frames.rx == 0 {
            return Err(other("AF_XDP UMEM", "no frames to receive into"));
        }
        let total = frames.rx + frames.tx;
        let area_len = (total * FRAME_SIZE) as usize;
        // SAFETY: an anonymous private mapping of `area_len` bytes; the
        // result is checked against MAP_FAILED.
        let area = unsafe {
            libc::mmap(
                ptr::null_mut(),
                area_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            return Err(other("UMEM area", io::Error::last_os_error()));
        }
        let mut sock = XdpSocket {
            xsk: ptr::null_mut(),
            umem: ptr::null_mut(),
            area: area.cast(),
            area_len,
            fill: ring(),
            comp: ring(),
            rx: ring(),
            tx: ring(),
            tx_free: Vec::with_capacity(frames.tx as usize),
            tx_batch: Vec::with_capacity(frames.tx as usize),
            frames,
            mode,
            fd: -1,
        };
        // libxdp's create calls are serialised. The guard is declared after
        // `sock`, so on an early return it is released before `sock` is
        // dropped: Drop takes the same (not reentrant) lock, and a failed
        // open that dropped its half-built socket under the guard
        // deadlocked every later port-add.
        let _libxdp = libxdp_lock();
        let umem_config = xsk_umem_config {
            fill_size: frames.rx_ring(),
            comp_size: frames.tx_ring(),
            frame_size: FRAME_SIZE,
            frame_headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is a live mapping of `area_len` bytes owned by
        // `sock`; the ring boxes outlive the UMEM (deleted in Drop first).
        let ret = unsafe {
            libxdp_sys::xsk_umem__create(
                &mut sock.umem,
                sock.area.cast(),
                area_len as u64,
                &mut *sock.fill,
                &mut *sock.comp,
                &umem_config,
            )
        };
        if ret != 0 {
            return Err(other("AF_XDP UMEM", io::Error::from_raw_os_error(-ret)));
        }
        let socket_config = xsk_socket_config {
            rx_size: frames.rx_ring(),
            tx_size: frames.tx_ring(),
            __bindgen_anon_1: xsk_socket_config__bindgen_ty_1 { libxdp_flags },
            xdp_flags: match mode {
                XdpMode::Native => XDP_FLAGS_DRV_MODE,
                XdpMode::Generic => XDP_FLAGS_SKB_MODE,
            },
            bind_flags: XDP_COPY,
        };
        // SAFETY: `name` is NUL-terminated; the UMEM was created above;
        // the RX/TX ring boxes stay put until Drop deletes the socket.
        let ret = unsafe {
            libxdp_sys::xsk_socket__create(
                &mut sock.xsk,
                name.as_ptr(),
                queue,
                sock.umem,
                &mut *sock.rx,
                &mut *sock.tx,
                &socket_config,
            )
        };
        if ret != 0 {
            return Err(other(
                &format!("AF_XDP socket on {interface}"),
                io::Error::from_raw_os_error(-ret),
            ));
        }
        // SAFETY: `xsk` was just created.
        sock.fd = unsafe { libxdp_sys::xsk_socket__fd(sock.xsk) };
        // The receiving frames wait in the fill ring for packets to arrive.
        let receiving = frames.rx;
        let mut idx = 0u32;
        // SAFETY: the fill ring was set up by xsk_umem__create; each
        // reserved slot is written once with a frame address inside the
        // UMEM, then submitted.
        unsafe {
            if libxdp_sys::xsk_ring_prod__reserve(&mut *sock.fill, receiving, &mut idx) != receiving
            {
                return Err(other("AF_XDP fill ring", "no room for the initial frames"));
            }
            for i in 0..receiving {
                *libxdp_sys::xsk_ring_prod__fill_addr(&mut *sock.fill, idx + i) =
                    u64::from(i * FRAME_SIZE);
            }
            libxdp_sys::xsk_ring_prod__submit(&mut *sock.fill, receiving);
        }
        sock.tx_free
            .extend((receiving..total).map(|i| u64::from(i * FRAME_SIZE)));
        Ok(sock)
    }

    /// Native or generic XDP.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The socket's descriptor (readable when the RX ring has frames).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The UMEM bytes of a descriptor, if they lie inside the area.
    fn frame(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let (start, len) = (usize::try_from(addr).ok()?, len as usize);
        if start.checked_add(len)? > self.area_len {
            return None;
        }
        // SAFETY: the range was checked to lie inside the live mapping;
        // the kernel handed this frame to us and does not write it until
        // it goes back on the fill ring.
        Some(unsafe { std::slice::from_raw_parts(self.area.add(start), len) })
    }

    /// Frames the kernel dropped before they reached the RX ring since
    /// the socket was opened: the ring full, or no frame in the fill ring
    /// (podswitch fell behind). `XDP_STATISTICS`: a frame with no
    /// fill-ring frame to go into is counted in `rx_dropped` (a failed
    /// allocation in `xsk_rcv`), a full RX ring in `rx_ring_full`
    /// (net/xdp/xsk.c).
    pub fn kernel_drops(&self) -> io::Result<u64> {
        let mut stats = XdpStatistics::default();
        let mut len = std::mem::size_of::<XdpStatistics>() as libc::socklen_t;
        // SAFETY: `stats` is a live, writable `struct xdp_statistics` of
        // `len` bytes; the kernel writes at most `len` bytes and the new
        // length.
        let ret = unsafe {
            libc::getsockopt(
                self.fd,
                SOL_XDP,
                XDP_STATISTICS,
                std::ptr::from_mut(&mut stats).cast(),
                &mut len,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stats.rx_dropped + stats.rx_ring_full)
    }

    /// Hands up to `max` received frames to `each`, then gives their UMEM
    /// frames back to the kernel; returns how many there were.
    pub fn recv(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        let mut idx = 0u32;
        // SAFETY: the RX ring was set up by xsk_socket__create.
        let n = unsafe { libxdp_sys::xsk_ring_cons__peek(&mut *self.rx, max as u32, &mut idx) };
        if n == 0 {
            return 0;
        }
        let mut fill_idx = 0u32;
        // SAFETY: the fill ring holds at most `frames.rx` frames and has
        // at least as many slots: every received frame finds room.
        let reserved =
            unsafe { libxdp_sys::xsk_ring_prod__reserve(&mut *self.fill, n, &mut fill_idx) };
        for i in 0..n {
            // SAFETY: slots idx..idx+n were returned by peek.
            let desc = unsafe { *libxdp_sys::xsk_ring_cons__rx_desc(&*self.rx, idx + i) };
            if let Some(frame) = self.frame(desc.addr, desc.len) {
                each(frame);
            }
            if i < reserved {
                // Back to the fill ring: the frame's base address.
                let base = desc.addr & !u64::from(FRAME_SIZE - 1);
                // SAFETY: slot fill_idx+i was reserved above.
                unsafe {
                    *libxdp_sys::xsk_ring_prod__fill_addr(&mut *self.fill, fill_idx + i) = base
                };
            }
        }
        // SAFETY: releasing the n peeked RX slots and submitting the
        // reserved fill slots, all written above.
        unsafe {
            libxdp_sys::xsk_ring_cons__release(&mut *self.rx, n);
            libxdp_sys::xsk_ring_prod__submit(&mut *self.fill, reserved);
        }
        n as usize
    }

    /// Queues every frame of `frames` for sending and kicks the kernel;
    /// returns how many were queued (the rest found no free TX frame or
    /// ring slot, or were longer than a frame).
    pub fn send<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> usize {
        self.reclaim();
        self.tx_batch.clear();
        for frame in frames {
            if frame.len() > FRAME_SIZE as usize {
                continue;
            }
            let Some(addr) = self.tx_free.pop() else {
                break;
            };
            // SAFETY: `addr` is a free TX frame (not in any ring) inside
            // the mapping, and the copy fits one frame.
            unsafe {
                ptr::copy_nonoverlapping(frame.as_ptr(), self.area.add(addr as usize), frame.len())
            };
            self.tx_batch.push((addr, frame.len() as u32));
        }
        let want = self.tx_batch.len() as u32;
        let mut idx = 0u32;
        // SAFETY: the TX ring was set up by xsk_socket__create.
        let got = unsafe { libxdp_sys::xsk_ring_prod__reserve(&mut *self.tx, want, &mut idx) };
        for (i, &(addr, len)) in self.tx_batch.iter().enumerate() {
            if i as u32 >= got {
                self.tx_free.push(addr);
                continue;
            }
            // SAFETY: slot idx+i was reserved above.
            unsafe {
                let desc = libxdp_sys::xsk_ring_prod__tx_desc(&mut *self.tx, idx + i as u32);
                (*desc).addr = addr;
                (*desc).len = len;
                (*desc).options = 0;
            }
        }
        if got > 0 {
            // SAFETY: submitting the slots written above.
            unsafe { libxdp_sys::xsk_ring_prod__submit(&mut *self.tx, got) };
            self.kick(got);
        }
        got as usize
    }

    /// Tells copy mode to transmit the `submitted` descriptors just queued.
    /// One `sendto` with no data sends at most 32 of them
    /// (`MAX_PER_SOCKET_BUDGET`, net/xdp/xsk.c) and answers `EAGAIN` while
    /// more wait: one call for 32 would leave the rest in the ring until
    /// the port's next send, which may never come. So it calls again while
    /// the kernel says more wait. It also calls again after `EBUSY`: the
    /// device dropped one frame (`NET_XMIT_DROP`, as a veth does when its
    /// peer is down or its peer's backlog is full, counted in its
    /// `tx_dropped`), completed it, and stopped there, leaving the ones
    /// after it queued: left there, they would reach a pod that comes back
    /// seconds late. Under such drops that is a call per frame dropped,
    /// the price of sending the rest now. Again at most once per 32
    /// and once more after `EAGAIN` (a full device answers it too; what
    /// it refused waits for the next send, as before), and once per
    /// dropped frame after `EBUSY`.
    fn kick(&self, submitted: u32) {
        let mut more_waiting = submitted.div_ceil(32) + 1;
        let mut dropped = submitted;
        loop {
            // SAFETY: a sendto with no data and no address only reads the
            // socket's TX ring, which the kernel owns the other end of.
            let r = unsafe {
                libc::sendto(self.fd, ptr::null(), 0, libc::MSG_DONTWAIT, ptr::null(), 0)
            };
            if r >= 0 {
                return;
            }
            let left = match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => &mut more_waiting,
                Some(libc::EBUSY) => &mut dropped,
                _ => return,
            };
            if *left == 0 {
                return;
            }
            *left -= 1;
        }
    }

    /// Takes back the frames the kernel finished sending.
    fn reclaim(&mut self) {
        let out = self.frames.tx - self.tx_free.len() as u32;
        if out == 0 {
            return;
        }
        let mut idx = 0u32;
        // SAFETY: the completion ring was set up by xsk_umem__create; each
        // peeked slot holds the address of a frame we sent.
        unsafe {
            let n = libxdp_sys::xsk_ring_cons__peek(&mut *self.comp, out, &mut idx);
            for i in 0..n {
                self.tx_free
                    .push(*libxdp_sys::xsk_ring_cons__comp_addr(&*self.comp, idx + i));
            }
            libxdp_sys::xsk_ring_cons__release(&mut *self.comp, n);
        }
    }
}

impl Drop for XdpSocket {
    fn drop(&mut self) {
        let _libxdp = libxdp_lock();
        // SAFETY: the socket and UMEM were created by open_mode (or are
        // null after a failure there) and are deleted once, socket first;
        // the ring boxes are still alive; the area is unmapped last.
        unsafe {
            if !self.xsk.is_null() {
                libxdp_sys::xsk_socket__delete(self.xsk);
            }
            if !self.umem.is_null() {
                libxdp_sys::xsk_umem__delete(self.umem);
            }
            libc::munmap(self.area.cast(), self.area_len);
        }
    }
}
