//! AF_XDP sockets through xsk-rs (libxdp): an XDP program on the
//! interface redirects every frame of queue 0 into the socket's RX ring;
//! the socket's TX ring sends frames out of it
//! (Documentation/networking/af_xdp.rst).
//!
//! One UMEM per socket: half its frames circulate through the fill and RX
//! rings, half through the TX and completion rings. A veth has no
//! zero-copy mode, so the kernel copies (`XDP_COPY`), and podswitch copies
//! each frame between the UMEM and its packet pool once: the pipeline
//! works in pool buffers with headroom for tunnel headers, and a frame
//! goes back to the fill ring as soon as it is copied.
//!
//! Native (driver) XDP is tried first; where it fails the socket falls
//! back to generic (skb) XDP and says so in [`XdpSocket::mode`]. Closing
//! the socket detaches the program libxdp loaded.

use std::io::{self, Write};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{BindFlags, FrameSize, QueueSize, SocketConfig, UmemConfig, XdpFlags};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Frames of one socket's UMEM.
const FRAMES: u32 = 2048;
/// Bytes per UMEM frame.
const FRAME_SIZE: u32 = 2048;
/// Descriptors per ring.
const RING: u32 = 2048;

/// How the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (veth's NAPI path).
    Native,
    /// On the skb, after the driver (any interface; slower).
    Generic,
}

/// An AF_XDP socket on queue 0 of one interface.
pub struct XdpSocket {
    umem: Umem,
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// RX descriptors being read (scratch).
    rx_descs: Vec<FrameDesc>,
    /// TX frames free to fill.
    tx_free: Vec<FrameDesc>,
    /// TX frames being handed to the ring (scratch).
    tx_batch: Vec<FrameDesc>,
    mode: XdpMode,
    fd: RawFd,
}

impl std::fmt::Debug for XdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpSocket")
            .field("mode", &self.mode)
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
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

impl XdpSocket {
    /// Opens a socket on `interface`, native XDP first, generic if the
    /// driver refuses (or only generic if `native` is false).
    pub fn open(interface: &str, native: bool) -> io::Result<XdpSocket> {
        if native {
            match XdpSocket::open_mode(interface, XdpMode::Native) {
                Ok(s) => return Ok(s),
                Err(_) => return XdpSocket::open_mode(interface, XdpMode::Generic),
            }
        }
        XdpSocket::open_mode(interface, XdpMode::Generic)
    }

    fn open_mode(interface: &str, mode: XdpMode) -> io::Result<XdpSocket> {
        let ring = QueueSize::new(RING).map_err(|e| other("ring size", e))?;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| other("frame size", e))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| other("UMEM config", e))?;
        let count = NonZeroU32::new(FRAMES).expect("non-zero");
        let (umem, mut descs) =
            Umem::new(umem_config, count, false).map_err(|e| other("UMEM", e))?;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .xdp_flags(match mode {
                XdpMode::Native => XdpFlags::XDP_FLAGS_DRV_MODE,
                XdpMode::Generic => XdpFlags::XDP_FLAGS_SKB_MODE,
            })
            .bind_flags(BindFlags::XDP_COPY)
            .build();
        let name = interface
            .parse()
            .map_err(|e| other(&format!("interface {interface:?}"), e))?;
        // SAFETY: `umem` outlives the socket (the queues keep it alive),
        // and its frames are used only through these queues as below.
        let (tx, rx, queues) = unsafe { Socket::new(socket_config, &umem, &name, 0) }
            .map_err(|e| other(&format!("AF_XDP socket on {interface}"), e))?;
        let (mut fill, comp) =
            queues.ok_or_else(|| other("AF_XDP socket", "no fill and completion queues"))?;
        let tx_free = descs.split_off(descs.len() / 2);
        // SAFETY: these descriptors belong to `umem` and are in no other
        // ring; the fill ring (2048) has room for all 1024.
        let filled = unsafe { fill.produce(&descs) };
        if filled != descs.len() {
            return Err(other("AF_XDP fill ring", "refused the initial frames"));
        }
        let fd = rx.fd().as_raw_fd();
        Ok(XdpSocket {
            umem,
            rx,
            tx,
            fill,
            comp,
            rx_descs: descs,
            tx_batch: Vec::with_capacity(tx_free.len()),
            tx_free,
            mode,
            fd,
        })
    }

    /// Native or generic XDP.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The socket's descriptor (readable when the RX ring has frames).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Hands up to `max` received frames to `each`, then gives their UMEM
    /// frames back to the kernel; returns how many there were.
    pub fn recv(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        let max = max.min(self.rx_descs.len());
        // SAFETY: `rx_descs` are this UMEM's descriptors; consume() only
        // overwrites them with the frames the kernel filled.
        let n = unsafe { self.rx.consume(&mut self.rx_descs[..max]) };
        for desc in &self.rx_descs[..n] {
            // SAFETY: the kernel handed this frame to us (RX ring) and
            // will not write it until we put it back on the fill ring.
            let data = unsafe { self.umem.data(desc) };
            each(data.contents());
        }
        if n > 0 {
            // SAFETY: the frames were just consumed from RX and are read no
            // more; the fill ring has room for every RX frame.
            unsafe { self.fill.produce(&self.rx_descs[..n]) };
        }
        n
    }

    /// Queues every frame of `frames` for sending and kicks the kernel;
    /// returns how many were queued (the rest found no free TX frame or
    /// ring slot, or did not fit a frame).
    pub fn send<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> usize {
        self.reclaim();
        self.tx_batch.clear();
        for frame in frames {
            let Some(mut desc) = self.tx_free.pop() else {
                break;
            };
            // SAFETY: `desc` came back through the completion ring (or was
            // never sent): the kernel no longer reads it.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let mut cursor = data.cursor();
            if cursor.write_all(frame).is_err() {
                self.tx_free.push(desc);
                continue;
            }
            self.tx_batch.push(desc);
        }
        // SAFETY: the batch holds this UMEM's frames, filled above and in
        // no ring; they come back through the completion ring.
        let queued = unsafe { self.tx.produce(&self.tx_batch) };
        if queued == 0 {
            self.tx_free.append(&mut self.tx_batch);
        }
        // Copy mode transmits only from sendto().
        let _ = self.tx.wakeup();
        queued
    }

    /// Takes back the frames the kernel finished sending.
    fn reclaim(&mut self) {
        let start = self.tx_free.len();
        let capacity = FRAMES as usize / 2;
        if start == capacity {
            return;
        }
        // Room for every frame out: grow the free list to full size and
        // let the completion ring fill the tail.
        self.tx_free
            .resize(capacity, self.tx_free.first().copied().unwrap_or_default());
        // SAFETY: consume() overwrites the tail with descriptors of frames
        // the kernel completed; the tail's old contents are discarded.
        let done = unsafe { self.comp.consume(&mut self.tx_free[start..]) };
        self.tx_free.truncate(start + done);
    }
}
