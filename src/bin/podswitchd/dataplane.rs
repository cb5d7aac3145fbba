//! The daemon's side of control requests: opening and closing the kernel
//! side of ports on the worker, captures, and ARP for host-gw next hops.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podswitch_control::handler::Dataplane;
use podswitch_control::protocol::{CaptureResult, StoreStatus};
use podswitch_engine::capture::CaptureLimit;
use podswitch_engine::encap::arp::{ArpOperation, ArpRepr};
use podswitch_engine::encap::ethernet::{EtherType, EthernetRepr, HEADER_LEN as ETH};
use podswitch_engine::encap::MacAddr;
use podswitch_engine::kernel_port::{open_pod_port, PodPortKind};
use podswitch_engine::port::PortId;
use podswitch_engine::sys::mmsg::{Received, RecvBuffers, SendBuffers, MAX_PARTS};
use podswitch_engine::sys::netdev;
use podswitch_engine::sys::packet_socket::{PacketOptions, PacketSocket, ETH_P_ARP};
use podswitch_engine::tables::Tables;
use podswitch_engine::worker::Workers;

use crate::state::{PodEnd, PortRecord, StateFile};

/// What the control handler reaches through [`Dataplane`].
#[derive(Debug)]
pub(crate) struct Daemon {
    pub tables: Arc<Tables>,
    pub workers: Arc<Workers>,
    pub underlay_interface: String,
    pub default_port_kind: PodPortKind,
    pub clock_micros: fn() -> u64,
    pub state: StateFile,
    /// Peer and route requests are kept in the state file: off while the
    /// config file's peers are applied (the config says them again at
    /// every start, and wins), on for the control socket's.
    pub keep_runtime_changes: std::sync::atomic::AtomicBool,
    /// The lease store's health, when peers come from one.
    pub store_health: Option<Arc<podswitch_lease::etcd::Health>>,
}

impl Dataplane for Daemon {
    fn open_port(
        &self,
        id: PortId,
        name: &str,
        kind: Option<PodPortKind>,
    ) -> Result<String, String> {
        let requested = kind;
        let opened = open_pod_port(
            kind.unwrap_or(self.default_port_kind),
            name,
            id,
            &self.tables.stats,
        )
        .map_err(|e| format!("{name}: {e}"))?;
        for note in &opened.notes {
            tracing::warn!(interface = name, "{note}");
        }
        let kind = opened.kind.to_string();
        let worker = self
            .workers
            .attach(id, opened.port)
            .map_err(|e| format!("{name}: {e}"))?;
        tracing::info!(port = id.0, interface = name, kind, worker, "port attached");
        // Every port opened here is a pod port, which has its address and
        // MAC.
        let snap = self.tables.load();
        let pod = snap
            .ports
            .get(id)
            .and_then(|e| Some((&e.spec, e.spec.ip?, e.spec.mac?)));
        if let Some((spec, ip, mac)) = pod {
            let record = PortRecord {
                interface: name.to_string(),
                ip,
                mac,
                container_id: spec.container_id.clone(),
                ifname: spec.ifname.clone(),
                kind: requested.map(|k| k.to_string()),
                anti_spoof: spec.anti_spoof,
                ifindex: netdev::ifindex(name).ok(),
                pod_end: PodEnd::of(name),
            };
            if let Err(e) = self.state.put(record) {
                tracing::warn!(interface = name, "state file: {e}");
            }
        }
        Ok(kind)
    }

    fn close_port(&self, id: PortId, name: &str) {
        match self.workers.detach(id) {
            Ok(_) => tracing::info!(port = id.0, interface = name, "port detached"),
            Err(e) => tracing::warn!(port = id.0, interface = name, "detaching: {e}"),
        }
        if let Err(e) = self.state.remove(name) {
            tracing::warn!(interface = name, "state file: {e}");
        }
    }

    fn capture(
        &self,
        id: PortId,
        file: &Path,
        packets: Option<u64>,
        seconds: u64,
    ) -> Result<CaptureResult, String> {
        let out = File::create(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let limit = CaptureLimit {
            packets,
            until_micros: Some((self.clock_micros)() + seconds * 1_000_000),
        };
        tracing::info!(port = id.0, file = %file.display(), ?packets, seconds, "capture started");
        let done = self
            .workers
            .capture(id, out, limit)
            .map_err(|e| e.to_string())?;
        let result = done
            .recv_timeout(Duration::from_secs(seconds + 5))
            .map_err(|_| "the capture did not finish".to_string())?
            .map_err(|e| e.to_string())?;
        tracing::info!(port = id.0, packets = result.packets, "capture finished");
        if let Some(e) = result.error {
            return Err(format!(
                "{}: {e} (after {} frames)",
                file.display(),
                result.packets
            ));
        }
        Ok(CaptureResult {
            file: file.display().to_string(),
            packets: result.packets,
        })
    }

    fn port_worker(&self, id: PortId) -> Option<usize> {
        self.workers.owner(id)
    }

    fn changed(&self, what: &str) {
        tracing::info!("{what}");
    }

    fn applied(&self, request: &podswitch_control::protocol::Request) {
        use podswitch_control::protocol::Request;
        if !self
            .keep_runtime_changes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        // Peers made from leases come back from the store, not the file.
        if let Request::PeerAdd { name, .. } | Request::PeerDel { name } = request {
            if self.store_health.is_some() && crate::cluster::is_lease_peer(name) {
                return;
            }
        }
        if let Err(e) = self.state.apply(request) {
            tracing::warn!("state file: {e}: this change is lost at a restart");
        }
    }

    fn store_status(&self) -> Option<StoreStatus> {
        self.store_health.as_ref().map(|h| h.status())
    }

    fn resolve_underlay_mac(&self, ip: Ipv4Addr) -> Result<MacAddr, String> {
        if let Some(mac) = kernel_neighbour(ip) {
            return Ok(mac);
        }
        arp(&self.underlay_interface, ip).map_err(|e| {
            format!(
                "cannot find the underlay MAC of {ip} on {}: {e} (give underlay_mac)",
                self.underlay_interface
            )
        })
    }
}

/// The kernel's ARP entry for `ip`, if complete (/proc/net/arp).
fn kernel_neighbour(ip: Ipv4Addr) -> Option<MacAddr> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // IP address, HW type, Flags (0x2 = complete), HW address, ...
        let complete = f.get(2).is_some_and(|fl| *fl == "0x2" || *fl == "0x6");
        (f.first()? == &ip.to_string().as_str() && complete)
            .then(|| f.get(3)?.parse().ok())
            .flatten()
    })
}

struct OneFrame<'a>(&'a [u8]);

impl SendBuffers for OneFrame<'_> {
    fn count(&self) -> usize {
        1
    }
    fn parts(&self, _: usize) -> [&[u8]; MAX_PARTS] {
        [self.0, &[], &[]]
    }
    fn destination(&self, _: usize) -> Option<std::net::SocketAddrV4> {
        None
    }
}

struct OneBuffer<'a>(&'a mut [u8]);

impl RecvBuffers for OneBuffer<'_> {
    fn count(&self) -> usize {
        1
    }
    fn parts(&mut self, _: usize) -> [&mut [u8]; MAX_PARTS] {
        [&mut *self.0, &mut [], &mut []]
    }
}

/// Asks for `ip`'s MAC with ARP on `interface` (RFC 826), up to three
/// requests a second apart.
fn arp(interface: &str, ip: Ipv4Addr) -> std::io::Result<MacAddr> {
    let ifindex = netdev::ifindex(interface)?;
    let our_mac = MacAddr(netdev::mac(interface)?);
    let our_ip = netdev::ipv4(interface)?.map_or(Ipv4Addr::UNSPECIFIED, |(a, _)| a);
    let sock = PacketSocket::open(
        ifindex,
        PacketOptions {
            protocol: ETH_P_ARP,
            vnet_hdr: false,
            qdisc_bypass: false,
            rcvbuf: 1 << 16,
        },
    )?;
    let mut request = [0u8; ETH + 28];
    EthernetRepr {
        src: our_mac,
        dst: MacAddr::BROADCAST,
        ethertype: EtherType::Arp,
    }
    .emit(&mut request);
    ArpRepr {
        operation: ArpOperation::Request,
        sender_mac: our_mac,
        sender_ip: our_ip,
        target_mac: MacAddr::ZERO,
        target_ip: ip,
    }
    .emit(&mut request[ETH..]);
    let mut buf = [0u8; 128];
    let mut meta = [Received::default()];
    for _ in 0..3 {
        sock.send_batch(&OneFrame(&request))?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if sock.recv_batch(&mut OneBuffer(&mut buf), &mut meta)? == 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let len = meta[0].len.min(buf.len());
            if let Ok(reply) = ArpRepr::parse(buf.get(ETH..len).unwrap_or(&[])) {
                if reply.operation == ArpOperation::Reply && reply.sender_ip == ip {
                    return Ok(reply.sender_mac);
                }
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no ARP reply",
    ))
}
