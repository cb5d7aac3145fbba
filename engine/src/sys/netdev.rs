//! Interface facts and settings through the classic `SIOC*` ioctls
//! (netdevice(7)) and sysctl files: index, MAC, MTU, IPv4 address, link up,
//! and the one route the host port needs (`SIOCADDRT`, route(8)'s ioctl).
//! Routes through a device disappear with it, so the daemon's TUN route
//! needs no cleanup of its own.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{cvt, socket};

/// A name as `struct ifreq` holds it, or an error if it cannot be one.
pub(super) fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0', ' ']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name (1-15 bytes, no '/', space or NUL)"),
        ));
    }
    // SAFETY: ifreq is plain C data (a name and a union of plain C
    // data); all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn control_socket() -> io::Result<OwnedFd> {
    socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
}

/// Runs one interface ioctl on `req`.
fn ioctl(request: libc::c_ulong, req: &mut libc::ifreq, name: &str) -> io::Result<()> {
    let fd = control_socket()?;
    // SAFETY: every request used here reads or writes one `struct ifreq`,
    // and `req` is a valid, exclusively borrowed ifreq; for SIOCETHTOOL
    // its data pointer points at a live structure of the layout the
    // command reads and writes (`ethtool_value`, `ethtool_drvinfo`,
    // `ethtool_channels`), which the caller holds across this call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(req)) })
        .map(|_| ())
        .map_err(|e| io::Error::new(e.kind(), format!("interface {name}: {e}")))
}

/// The interface's index, or an error naming it.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {name}"),
        )),
        i => Ok(i),
    }
}

/// Whether interface index `ifindex` names an interface in this
/// namespace: false only when the kernel says there is none (`ENXIO` or
/// `ENODEV`); an error when it could not be asked (`if_indextoname`
/// opens a socket, which a process out of descriptors cannot).
pub fn index_exists(ifindex: u32) -> io::Result<bool> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` holds IF_NAMESIZE bytes, as if_indextoname(3) asks,
    // and outlives the call.
    if !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENXIO | libc::ENODEV) => Ok(false),
        _ => Err(error),
    }
}

/// The interface's MAC address.
pub fn mac(name: &str) -> io::Result<[u8; 6]> {
    let mut req = ifreq(name)?;
    ioctl(libc::SIOCGIFHWADDR, &mut req, name)?;
    // SAFETY: SIOCGIFHWADDR filled the union's hwaddr member.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// The interface's MTU.
pub fn mtu(name: &str) -> io::Result<u32> {
    let mut req = ifreq(name)?;
    ioctl(libc::SIOCGIFMTU, &mut req, name)?;
    // SAFETY: SIOCGIFMTU filled the union's mtu member.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// Sets the interface's MTU.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    ioctl(libc::SIOCSIFMTU, &mut req, name)
}

/// Sets interface flags (`IFF_*`).
fn set_flags(name: &str, flags: libc::c_int) -> io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(libc::SIOCGIFFLAGS, &mut req, name)?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags member.
    let current = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = current | flags as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, &mut req, name)
}

/// Brings the interface up.
pub fn set_up(name: &str) -> io::Result<()> {
    set_flags(name, libc::IFF_UP)
}

/// Stops the kernel's ARP on the interface (`ip link set NAME arp off`):
/// `arp_rcv` drops what arrives there, so only podswitch answers.
pub fn set_noarp(name: &str) -> io::Result<()> {
    set_flags(name, libc::IFF_NOARP)
}

/// `ETHTOOL_GGRO` and `ETHTOOL_SGRO` (include/uapi/linux/ethtool.h): the
/// legacy one-feature calls for generic receive offload, which the kernel
/// still maps onto `NETIF_F_GRO` (net/ethtool/ioctl.c).
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// Runs one `SIOCETHTOOL` call on `data`, the structure its command
/// (its first field) reads and writes.
fn ethtool<T>(name: &str, data: &mut T) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_data = std::ptr::from_mut(data).cast();
    ioctl(libc::SIOCETHTOOL, &mut req, name)
}

/// Runs one `SIOCETHTOOL` call carrying a `struct ethtool_value`.
fn ethtool_value(name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue { cmd, data };
    ethtool(name, &mut value)?;
    Ok(value.data)
}

/// Packets the kernel dropped on their way out of interface `name` (its
/// `tx_dropped`, the transmit "drop" column of /proc/net/dev, in the
/// caller's network namespace). For a TUN or TAP device: those the
/// reader's queue had no room for (`tun_net_xmit`, drivers/net/tun.c).
pub fn tx_dropped(name: &str) -> io::Result<u64> {
    let text = proc_net_dev()?;
    device_drops(&text, name)
        .map(|d| d.tx)
        .ok_or_else(|| no_interface(name))
}

/// The "drop" columns of one interface in /proc/net/dev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDrops {
    /// `rx_dropped`: packets the device received and dropped (for a TUN
    /// or TAP, packets written to it that its way into the stack had no
    /// room for, `enqueue_to_backlog`).
    pub rx: u64,
    /// `tx_dropped`: packets dropped on their way out of it (for a veth,
    /// those its peer's backlog had no room for, or its peer down).
    pub tx: u64,
}

/// /proc/net/dev of the calling thread's network namespace, to read
/// several interfaces' drops with [`device_drops`] from one read.
pub fn proc_net_dev() -> io::Result<String> {
    // The calling thread's namespace: /proc/net is the process's.
    std::fs::read_to_string("/proc/thread-self/net/dev")
}

/// Interface `name`'s drops in `text`, the contents of /proc/net/dev;
/// none if it has no line.
pub fn device_drops(text: &str, name: &str) -> Option<DeviceDrops> {
    for line in text.lines().skip(2) {
        let Some((iface, counters)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() != name {
            continue;
        }
        // Receive: bytes packets errs drop fifo frame compressed
        // multicast; then transmit: bytes packets errs drop ...
        let columns: Vec<u64> = counters
            .split_whitespace()
            .map_while(|v| v.parse().ok())
            .collect();
        return Some(DeviceDrops {
            rx: *columns.get(3)?,
            tx: *columns.get(11)?,
        });
    }
    None
}

fn no_interface(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("/proc/net/dev: no interface {name}"),
    )
}

/// `ETHTOOL_GCHANNELS`: the interface's queue counts.
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// The interface's receive queues (`ethtool -l NAME`: its rx and
/// combined channels), or an error where the driver does not say.
pub fn rx_queues(name: &str) -> io::Result<u32> {
    // struct ethtool_channels (include/uapi/linux/ethtool.h).
    #[repr(C)]
    #[derive(Default)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    let mut channels = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Channels::default()
    };
    ethtool(name, &mut channels)?;
    Ok(channels.rx_count + channels.combined_count)
}

/// `ETHTOOL_GDRVINFO`: the driver's name, among other facts.
const ETHTOOL_GDRVINFO: u32 = 0x03;

/// The interface's driver (`ethtool -i NAME`: "veth", "virtio_net"...).
pub fn driver(name: &str) -> io::Result<String> {
    // struct ethtool_drvinfo (include/uapi/linux/ethtool.h): cmd, then
    // driver[32], version[32], fw_version[32], bus_info[32],
    // erom_version[32], reserved2[12], then five u32 counts.
    #[repr(C)]
    struct DriverInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 5 * 4],
    }
    let mut info = DriverInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 32 * 4 + 12 + 5 * 4],
    };
    ethtool(name, &mut info)?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Whether generic receive offload is on (`ethtool -k NAME`).
pub fn gro(name: &str) -> io::Result<bool> {
    Ok(ethtool_value(name, ETHTOOL_GGRO, 0)? != 0)
}

/// Turns generic receive offload on or off (`ethtool -K NAME gro on`).
pub fn set_gro(name: &str, on: bool) -> io::Result<()> {
    ethtool_value(name, ETHTOOL_SGRO, u32::from(on)).map(|_| ())
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = super::sockaddr_in(std::net::SocketAddrV4::new(ip, 0));
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain C data;
    // the kernel reads this one as the sockaddr_in it is.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn sockaddr_ip(sa: &libc::sockaddr) -> Ipv4Addr {
    Ipv4Addr::new(
        sa.sa_data[2] as u8,
        sa.sa_data[3] as u8,
        sa.sa_data[4] as u8,
        sa.sa_data[5] as u8,
    )
}

/// The interface's primary IPv4 address and its prefix length, or `None`
/// if it has none.
pub fn ipv4(name: &str) -> io::Result<Option<(Ipv4Addr, u8)>> {
    let mut req = ifreq(name)?;
    match ioctl(libc::SIOCGIFADDR, &mut req, name) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Ok(None),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    // SAFETY: SIOCGIFADDR filled the union's addr member.
    let ip = sockaddr_ip(unsafe { &req.ifr_ifru.ifru_addr });
    let mut req = ifreq(name)?;
    ioctl(libc::SIOCGIFNETMASK, &mut req, name)?;
    // SAFETY: SIOCGIFNETMASK filled the union's netmask member.
    let mask = sockaddr_ip(unsafe { &req.ifr_ifru.ifru_netmask });
    Ok(Some((ip, u32::from(mask).count_ones() as u8)))
}

/// Gives the interface an IPv4 address with a prefix length.
pub fn set_ipv4(name: &str, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(libc::SIOCSIFADDR, &mut req, name)?;
    let mask = podswitch_addr::mask(prefix_len);
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(libc::SIOCSIFNETMASK, &mut req, name)
}

/// Writes a sysctl under /proc/sys/net (for example
/// `ipv6/conf/podswitch0/disable_ipv6`).
pub fn set_net_sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/net/{path}"), value)
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl net/{path}: {e}")))
}

/// Takes IPv6 off interface `name`: podswitch configures none, and the
/// kernel would otherwise give the interface a link-local address and send
/// router solicitations through it.
pub fn disable_ipv6(name: &str) -> io::Result<()> {
    set_net_sysctl(&format!("ipv6/conf/{name}/disable_ipv6"), "1")
}

/// Reads a sysctl under /proc/sys/net.
pub fn net_sysctl(path: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/sys/net/{path}"))?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_read_from_their_columns() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:  1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n   \
ul0: 5000      50    1    7    0     0          0         0     9000      90    2   13    0     0       0          0\n";
        assert_eq!(
            device_drops(text, "ul0"),
            Some(DeviceDrops { rx: 7, tx: 13 })
        );
        assert_eq!(device_drops(text, "lo"), Some(DeviceDrops { rx: 0, tx: 0 }));
        assert_eq!(device_drops(text, "ul"), None);
        assert_eq!(device_drops("a\nb\n  x: 1 2 3\n", "x"), None);
    }
}
