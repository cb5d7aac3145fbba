//! A layered, byte-accurate breakdown of a frame for people: every header
//! field with its offset, length, value and bytes, through the tunnel into
//! the inner frame, and what is wrong with a malformed one. It powers
//! `podswitchctl explain` and `examples/encap_walkthrough.rs`.
//!
//! The dissector only walks: which header comes next and whether it is
//! outer, tunnel or inner. Each header describes itself beside its wire
//! view (`describe` in [`ethernet`], [`arp`](crate::arp::ArpRepr),
//! [`ipv4`](crate::ipv4), [`ipv6`], [`udp`](crate::udp), [`vxlan`],
//! [`icmpv4`] and [`tcp`]; the types are [`crate::describe`]'s). Which UDP
//! ports carry which tunnel is [`DissectOptions`]: unlike the
//! [`Decapsulator`](crate::tunnel::Decapsulator), which refuses what its
//! node does not accept, the dissector walks into any tunnel it recognises
//! and shows what a receiver would refuse as a problem.
//!
//! This is the teaching path, not the data path: it allocates freely.

use core::fmt;
use std::net::Ipv4Addr;

use crate::arp::ArpRepr;
pub use crate::describe::{Field, Level, Section};
use crate::ethernet::{self, EtherType};
use crate::icmpv4::{self, Icmpv4Packet};
use crate::ipv4::{IpProtocol, Ipv4Packet};
use crate::ipv6::{self, Ipv6Packet};
use crate::tcp;
use crate::tunnel::PORT_FLANNEL_UDP;
use crate::udp::UdpPacket;
use crate::vxlan::{self, VxlanHeader};

/// Which UDP ports carry which tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DissectOptions {
    /// Ports read as VXLAN.
    pub vxlan_ports: Vec<u16>,
    /// Ports read as flannel's IP-in-UDP.
    pub ip_in_udp_ports: Vec<u16>,
}

impl Default for DissectOptions {
    fn default() -> Self {
        DissectOptions {
            vxlan_ports: vec![vxlan::PORT_FLANNEL, vxlan::PORT_IANA],
            ip_in_udp_ports: vec![PORT_FLANNEL_UDP],
        }
    }
}

/// The breakdown of one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dissection {
    /// The frame's bytes.
    pub bytes: Vec<u8>,
    /// Its headers, in order.
    pub sections: Vec<Section>,
}

impl Dissection {
    /// Every problem found, with the header it was found in.
    pub fn problems(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|s| s.problems.iter().map(move |p| format!("{}: {p}", s.title)))
            .collect()
    }

    /// True if there is a tunnel header.
    pub fn is_tunnel(&self) -> bool {
        self.sections.iter().any(|s| s.level == Level::Tunnel)
    }
}

/// Breaks an Ethernet frame down.
pub fn dissect(frame: &[u8], options: &DissectOptions) -> Dissection {
    let mut d = Dissector {
        bytes: frame,
        options,
        sections: Vec::new(),
        level: Level::Outer,
        tunnels: 0,
    };
    d.ethernet(0, frame.len());
    Dissection {
        bytes: frame.to_vec(),
        sections: d.sections,
    }
}

struct Dissector<'a> {
    bytes: &'a [u8],
    options: &'a DissectOptions,
    sections: Vec<Section>,
    level: Level,
    /// Tunnels entered so far: a frame of tunnels in tunnels (IPIP in
    /// IPIP ..., 20 bytes each) would otherwise recurse thousands deep.
    tunnels: usize,
}

/// The deepest nesting of tunnels walked; anything inside is a problem.
/// Real traffic has one tunnel; a tunnel in a tunnel is already a
/// question.
const MAX_TUNNELS: usize = 8;

impl Dissector<'_> {
    /// Adds a header at the current tunnel level.
    fn push(&mut self, mut section: Section) {
        section.level = self.level;
        self.sections.push(section);
    }

    fn payload(&mut self, title: &'static str, offset: usize, end: usize) {
        if offset < end {
            let len = end - offset;
            let bytes = &self.bytes[offset..end];
            // Printable payloads (HTTP, the demo's messages) are shown as text.
            let value = if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                format!(
                    "{len} bytes: {:?}",
                    String::from_utf8_lossy(&bytes[..len.min(24)])
                )
            } else {
                format!("{len} bytes")
            };
            let mut s = Section::new(title, offset, len);
            s.field("bytes", offset, len, value);
            self.push(s);
        }
    }

    fn ethernet(&mut self, offset: usize, end: usize) {
        let Ok((ethertype, header_len)) = ethernet::payload_info(&self.bytes[offset..end]) else {
            let needed = ethernet::HEADER_LEN;
            return self.push(Section::truncated("Ethernet II", offset, end, needed));
        };
        self.push(ethernet::describe(self.bytes, offset, header_len));
        let l3 = offset + header_len;
        match ethertype {
            EtherType::Ipv4 => self.ipv4(l3, end),
            EtherType::Arp => self.arp(l3, end),
            EtherType::Ipv6 => self.ipv6(l3, end),
            _ => self.payload("Payload", l3, end),
        }
    }

    fn arp(&mut self, offset: usize, end: usize) {
        match ArpRepr::parse(&self.bytes[offset..end]) {
            Ok(arp) => {
                self.push(arp.describe(offset));
                self.payload("Ethernet padding", offset + crate::arp::PACKET_LEN, end);
            }
            Err(e) => self.push(Section::malformed("ARP", offset, end, e.to_string())),
        }
    }

    fn ipv6(&mut self, offset: usize, end: usize) {
        match Ipv6Packet::new_checked(&self.bytes[offset..end]) {
            Ok(packet) => {
                self.push(packet.describe(offset));
                self.payload("Payload", offset + ipv6::HEADER_LEN, end);
            }
            Err(e) => self.push(Section::malformed("IPv6", offset, end, e.to_string())),
        }
    }

    fn ipv4(&mut self, offset: usize, end: usize) {
        // A capture has no GSO metadata, but only a BIG TCP super-frame is
        // TCP, longer than 65535 bytes and says 0.
        let packet = match Ipv4Packet::new_checked_super_frame(&self.bytes[offset..end]) {
            Ok(p) => p,
            Err(e) => {
                self.push(Section::malformed("IPv4", offset, end, e.to_string()));
                return self.payload("Unparsed bytes", offset, end);
            }
        };
        let mut section = packet.describe(offset);
        if packet.is_big_tcp() {
            section.field(
                "BIG TCP",
                offset + 2,
                2,
                format!(
                    "a {}-byte super-frame, longer than a total length can say: 0, and the packet ends with the frame (Linux 6.3, iph_set_totlen)",
                    packet.packet_len()
                ),
            );
        }
        self.push(section);
        let (src, dst) = (packet.src(), packet.dst());
        let l4 = offset + packet.header_len();
        let packet_end = offset + packet.packet_len();
        if packet.frag_offset() != 0 {
            self.payload("Fragment data", l4, packet_end);
        } else {
            match packet.protocol() {
                IpProtocol::Udp => self.udp(l4, packet_end, src, dst),
                IpProtocol::Icmp => self.icmp(l4, packet_end),
                IpProtocol::Tcp => self.tcp(l4, packet_end, src, dst),
                IpProtocol::Ipip => self.tunnelled_ipv4(
                    "IPIP tunnel",
                    "IPIP (RFC 2003): the inner IPv4 packet follows",
                    l4,
                    packet_end,
                ),
                _ => self.payload("Payload", l4, packet_end),
            }
        }
        self.payload("Ethernet padding", packet_end, end);
    }

    /// Enters one more tunnel, or says why not: true if the walk goes in.
    fn enter_tunnel(&mut self, title: &'static str, offset: usize, end: usize) -> bool {
        if self.tunnels == MAX_TUNNELS {
            let why = format!("tunnels nested more than {MAX_TUNNELS} deep: not walked further");
            let level = std::mem::replace(&mut self.level, Level::Tunnel);
            self.push(Section::malformed(title, offset, end, why));
            self.level = level;
            return false;
        }
        self.tunnels += 1;
        true
    }

    /// An IPv4 packet carried without a tunnel header of its own (IPIP,
    /// IP-in-UDP): a zero-length tunnel marker, then the inner packet.
    fn tunnelled_ipv4(&mut self, title: &'static str, what: &str, offset: usize, end: usize) {
        if !self.enter_tunnel(title, offset, end) {
            return;
        }
        self.level = Level::Tunnel;
        let mut s = Section::new(title, offset, 0);
        s.field("carries", offset, 0, what);
        self.push(s);
        self.level = Level::Inner;
        self.ipv4(offset, end);
    }

    fn udp(&mut self, offset: usize, end: usize, src: Ipv4Addr, dst: Ipv4Addr) {
        let udp = match UdpPacket::new_checked(&self.bytes[offset..end]) {
            Ok(u) => u,
            Err(e) => return self.push(Section::malformed("UDP", offset, end, e.to_string())),
        };
        let dport = udp.dst_port();
        self.push(udp.describe(offset, src, dst, port_name(dport)));
        let payload = offset + crate::udp::HEADER_LEN;
        let udp_end = offset + usize::from(udp.len());
        if self.options.vxlan_ports.contains(&dport) {
            self.vxlan(payload, udp_end);
        } else if self.options.ip_in_udp_ports.contains(&dport) {
            self.tunnelled_ipv4(
                "IP-in-UDP tunnel",
                "flannel udp: the inner IPv4 packet is the UDP payload",
                payload,
                udp_end,
            );
        } else {
            self.payload("Payload", payload, udp_end);
        }
    }

    fn vxlan(&mut self, offset: usize, end: usize) {
        if !self.enter_tunnel("VXLAN", offset, end) {
            return;
        }
        self.level = Level::Tunnel;
        let Ok(header) = VxlanHeader::new_checked(&self.bytes[offset..end]) else {
            return self.push(Section::truncated("VXLAN", offset, end, vxlan::HEADER_LEN));
        };
        self.push(header.describe(offset));
        self.level = Level::Inner;
        self.ethernet(offset + vxlan::HEADER_LEN, end);
    }

    fn icmp(&mut self, offset: usize, end: usize) {
        let Ok(icmp) = Icmpv4Packet::new_checked(&self.bytes[offset..end]) else {
            return self.push(Section::truncated(
                "ICMPv4",
                offset,
                end,
                icmpv4::HEADER_LEN,
            ));
        };
        self.push(icmp.describe(offset));
        self.payload("Data", offset + icmpv4::HEADER_LEN, end);
    }

    fn tcp(&mut self, offset: usize, end: usize, src: Ipv4Addr, dst: Ipv4Addr) {
        let segment = &self.bytes[offset..end];
        if segment.len() < tcp::HEADER_LEN {
            return self.push(Section::truncated("TCP", offset, end, tcp::HEADER_LEN));
        }
        let header_len = tcp::header_len(segment);
        self.push(tcp::describe(segment, offset, src, dst));
        if (tcp::HEADER_LEN..=segment.len()).contains(&header_len) {
            self.payload("Data", offset + header_len, end);
        }
    }
}

/// What a well-known UDP port carries.
fn port_name(port: u16) -> Option<&'static str> {
    match port {
        vxlan::PORT_FLANNEL => Some("VXLAN, flannel/Linux"),
        vxlan::PORT_IANA => Some("VXLAN, IANA"),
        PORT_FLANNEL_UDP => Some("flannel udp"),
        _ => None,
    }
}

impl fmt::Display for Dissection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tunnel = self.is_tunnel();
        writeln!(f, "frame: {} bytes", self.bytes.len())?;
        for s in &self.sections {
            let prefix = match (tunnel, s.level) {
                (true, Level::Outer) => "outer ",
                (true, Level::Inner) => "inner ",
                _ => "",
            };
            if s.len == 0 {
                writeln!(f, "{prefix}{}", s.title)?;
            } else {
                writeln!(
                    f,
                    "{prefix}{}  (offset {}, {} bytes)",
                    s.title, s.offset, s.len
                )?;
            }
            for field in &s.fields {
                let bytes = &self.bytes[field.offset..field.offset + field.len];
                let mut hex: String = bytes.iter().take(12).map(|b| format!("{b:02x} ")).collect();
                if bytes.len() > 12 {
                    hex.push_str("...");
                }
                let line = format!(
                    "  {:04x}  {:<17} {:<44} {}",
                    field.offset, field.name, field.value, hex
                );
                writeln!(f, "{}", line.trim_end())?;
            }
            for p in &s.problems {
                writeln!(f, "  !!    {p}")?;
            }
        }
        let problems = self.problems();
        if problems.is_empty() {
            writeln!(f, "no problems found")
        } else {
            writeln!(f, "{} problem(s) found", problems.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;
    use etherparse::PacketBuilder;

    /// 3,000 IPIP headers in one another (60 KB, as a hostile capture may
    /// hold): walked 8 deep, the rest named as a problem, no stack
    /// overflow.
    #[test]
    fn tunnels_in_tunnels_stop_at_a_depth() {
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let depth = 3000usize;
        for level in 0..depth {
            let total = (20 * (depth - level)) as u16;
            let mut header = [0u8; 20];
            header[0] = 0x45;
            header[2..4].copy_from_slice(&total.to_be_bytes());
            header[8] = 64;
            header[9] = 4; // IPIP
            header[12..16].copy_from_slice(&[192, 168, 100, 1]);
            header[16..20].copy_from_slice(&[192, 168, 100, 2]);
            let sum = !checksum::fold(checksum::accumulate(0, &header));
            header[10..12].copy_from_slice(&sum.to_be_bytes());
            frame.extend_from_slice(&header);
        }
        let d = dissect(&frame, &DissectOptions::default());
        let tunnels = d
            .sections
            .iter()
            .filter(|s| s.level == Level::Tunnel)
            .count();
        assert_eq!(tunnels, MAX_TUNNELS + 1, "8 entered, the 9th refused");
        assert!(
            d.problems()
                .iter()
                .any(|p| p.contains("nested more than 8 deep")),
            "{:?}",
            d.problems()
        );
    }

    /// A TCP frame, its checksum complete, partial (the pseudo-header sum
    /// only) or corrupt; and a 20,000-byte super-frame.
    #[test]
    fn tcp_checksums_are_told_apart_and_super_frames_named() {
        let src = Ipv4Addr::new(10, 244, 1, 2);
        let dst = Ipv4Addr::new(10, 244, 2, 2);
        let frame = |len: usize| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4(src.octets(), dst.octets(), 64)
                .tcp(40000, 5201, 1, 64000)
                .ack(1)
                .write(&mut f, &vec![7u8; len])
                .unwrap();
            f
        };
        let complete = frame(100);
        let d = dissect(&complete, &DissectOptions::default());
        assert!(d.problems().is_empty(), "{d}");
        assert!(d.to_string().contains("(correct)"), "{d}");

        let mut partial = complete.clone();
        let pseudo = checksum::fold(checksum::pseudo_header_v4(src, dst, 6, 120));
        partial[50..52].copy_from_slice(&pseudo.to_be_bytes());
        let d = dissect(&partial, &DissectOptions::default());
        assert!(d.problems().is_empty(), "{d}");
        assert!(
            d.to_string().contains("partial: the pseudo-header sum"),
            "{d}"
        );

        let mut corrupt = complete.clone();
        corrupt[60] ^= 1;
        let d = dissect(&corrupt, &DissectOptions::default());
        assert_eq!(d.problems().len(), 1, "{d}");
        assert!(d.to_string().contains("WRONG, should be"), "{d}");

        let d = dissect(&frame(20_000), &DissectOptions::default());
        assert!(
            d.to_string().contains("a GSO super-frame of 20020 bytes"),
            "{d}"
        );

        // BIG TCP: a 100,000-byte TCP payload, total length 0, its
        // checksum the pseudo-header sum with the 32-bit length.
        let mut big = frame(1000);
        big.truncate(54);
        big.extend_from_slice(&[7u8; 100_000]);
        big[16..18].fill(0);
        big[24..26].fill(0);
        let ip_sum = checksum::checksum(&big[14..34]);
        big[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        let pseudo = checksum::pseudo_header_v4_long(src, dst, 6, 100_020);
        big[50..52].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        let d = dissect(&big, &DissectOptions::default());
        assert!(d.problems().is_empty(), "{d}");
        let text = d.to_string();
        assert!(
            text.contains("a 100040-byte super-frame, longer than"),
            "{text}"
        );
        assert!(text.contains("partial: the pseudo-header sum"), "{text}");
        // Short of 64 KiB, a zero total length is what it always was.
        big.truncate(60_000);
        assert!(!dissect(&big, &DissectOptions::default())
            .problems()
            .is_empty());
    }
}
