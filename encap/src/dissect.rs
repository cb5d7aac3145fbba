//! A layered, byte-accurate breakdown of a frame for people: every header
//! field with its offset, length, value and bytes, through the tunnel into
//! the inner frame, and what is wrong with a malformed one. It powers
//! `podswitchctl explain` and `examples/encap_walkthrough.rs`.
//!
//! This is the teaching path, not the data path: it allocates freely.

use core::fmt;
use std::net::Ipv4Addr;

use crate::arp::{ArpOperation, ArpRepr};
use crate::checksum;
use crate::ecn::Ecn;
use crate::ethernet::{self, EtherType, MacAddr};
use crate::icmpv4::{Icmpv4Packet, Icmpv4Type};
use crate::ipv4::{IpProtocol, Ipv4Packet};
use crate::ipv6::Ipv6Packet;
use crate::tunnel::PORT_FLANNEL_UDP;
use crate::udp::UdpPacket;
use crate::vxlan::{self, VxlanHeader};

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its name.
    pub name: &'static str,
    /// Offset in the frame.
    pub offset: usize,
    /// Length in bytes (0 for a sub-byte field shown with its byte).
    pub len: usize,
    /// Its value, in words.
    pub value: String,
}

/// Where a header sits relative to a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Before (or without) a tunnel header.
    Outer,
    /// The tunnel header itself.
    Tunnel,
    /// Carried inside the tunnel.
    Inner,
}

/// One header (or the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The header's name ("IPv4", "VXLAN", ...).
    pub title: &'static str,
    /// Outer, tunnel or inner.
    pub level: Level,
    /// Offset in the frame.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// Its fields.
    pub fields: Vec<Field>,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

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
}

impl Dissector<'_> {
    fn section(&mut self, title: &'static str, offset: usize, len: usize) -> &mut Section {
        self.sections.push(Section {
            title,
            level: self.level,
            offset,
            len,
            fields: Vec::new(),
            problems: Vec::new(),
        });
        self.sections.last_mut().expect("just pushed")
    }

    fn truncated(&mut self, title: &'static str, offset: usize, end: usize, needed: usize) {
        let have = end - offset;
        self.section(title, offset, have)
            .problems
            .push(format!("truncated: {needed} bytes needed, {have} present"));
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
            let s = self.section(title, offset, len);
            s.fields.push(Field {
                name: "bytes",
                offset,
                len,
                value,
            });
        }
    }

    fn ethernet(&mut self, offset: usize, end: usize) {
        let frame = &self.bytes[offset..end];
        let (ethertype, l3) = match ethernet::payload_info(frame) {
            Ok(info) => info,
            Err(_) => return self.truncated("Ethernet II", offset, end, ethernet::HEADER_LEN),
        };
        let mac = |at: usize| MacAddr(frame[at..at + 6].try_into().expect("6 bytes"));
        let s = self.section("Ethernet II", offset, l3);
        s.fields.push(Field {
            name: "destination",
            offset,
            len: 6,
            value: describe_mac(mac(0)),
        });
        s.fields.push(Field {
            name: "source",
            offset: offset + 6,
            len: 6,
            value: describe_mac(mac(6)),
        });
        let mut at = 12;
        while at + 2 < l3 {
            let tci = u16::from_be_bytes([frame[at + 2], frame[at + 3]]);
            let tpid = EtherType::from(u16::from_be_bytes([frame[at], frame[at + 1]]));
            s.fields.push(Field {
                name: "VLAN tag",
                offset: offset + at,
                len: 4,
                value: format!("{tpid} VLAN {} priority {}", tci & 0x0fff, tci >> 13),
            });
            at += 4;
        }
        s.fields.push(Field {
            name: "ethertype",
            offset: offset + l3 - 2,
            len: 2,
            value: format!("0x{:04x} ({ethertype})", u16::from(ethertype)),
        });
        let l3 = offset + l3;
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
                let s = self.section("ARP", offset, 28);
                let op = match arp.operation {
                    ArpOperation::Request => {
                        format!("request: who has {}? tell {}", arp.target_ip, arp.sender_ip)
                    }
                    ArpOperation::Reply => {
                        format!("reply: {} is at {}", arp.sender_ip, arp.sender_mac)
                    }
                    ArpOperation::Unknown(v) => format!("operation {v}"),
                };
                s.fields.push(Field {
                    name: "hw/proto",
                    offset,
                    len: 6,
                    value: "Ethernet / IPv4".into(),
                });
                s.fields.push(Field {
                    name: "operation",
                    offset: offset + 6,
                    len: 2,
                    value: op,
                });
                s.fields.push(Field {
                    name: "sender MAC",
                    offset: offset + 8,
                    len: 6,
                    value: arp.sender_mac.to_string(),
                });
                s.fields.push(Field {
                    name: "sender IP",
                    offset: offset + 14,
                    len: 4,
                    value: arp.sender_ip.to_string(),
                });
                s.fields.push(Field {
                    name: "target MAC",
                    offset: offset + 18,
                    len: 6,
                    value: arp.target_mac.to_string(),
                });
                s.fields.push(Field {
                    name: "target IP",
                    offset: offset + 24,
                    len: 4,
                    value: arp.target_ip.to_string(),
                });
                self.payload("Ethernet padding", offset + 28, end);
            }
            Err(e) => {
                let len = end - offset;
                self.section("ARP", offset, len)
                    .problems
                    .push(e.to_string());
            }
        }
    }

    fn ipv6(&mut self, offset: usize, end: usize) {
        match Ipv6Packet::new_checked(&self.bytes[offset..end]) {
            Ok(p) => {
                let s = self.section("IPv6", offset, 40);
                s.fields.push(Field {
                    name: "traffic class",
                    offset,
                    len: 2,
                    value: format!(
                        "0x{:02x} (ECN {:?})",
                        p.traffic_class(),
                        Ecn::from_tos(p.traffic_class())
                    ),
                });
                s.fields.push(Field {
                    name: "payload length",
                    offset: offset + 4,
                    len: 2,
                    value: p.payload_len().to_string(),
                });
                s.fields.push(Field {
                    name: "next header",
                    offset: offset + 6,
                    len: 1,
                    value: p.next_header().to_string(),
                });
                s.fields.push(Field {
                    name: "hop limit",
                    offset: offset + 7,
                    len: 1,
                    value: p.hop_limit().to_string(),
                });
                s.fields.push(Field {
                    name: "source",
                    offset: offset + 8,
                    len: 16,
                    value: p.src().to_string(),
                });
                s.fields.push(Field {
                    name: "destination",
                    offset: offset + 24,
                    len: 16,
                    value: p.dst().to_string(),
                });
                self.payload("Payload", offset + 40, end);
            }
            Err(e) => {
                let len = end - offset;
                self.section("IPv6", offset, len)
                    .problems
                    .push(e.to_string());
            }
        }
    }

    fn ipv4(&mut self, offset: usize, end: usize) {
        let packet = match Ipv4Packet::new_checked(&self.bytes[offset..end]) {
            Ok(p) => p,
            Err(e) => {
                let len = end - offset;
                self.section("IPv4", offset, len)
                    .problems
                    .push(e.to_string());
                return self.payload("Unparsed bytes", offset, end);
            }
        };
        let header_len = packet.header_len();
        let packet_end = offset + packet.packet_len();
        let checksum_state = match packet.verify_checksum() {
            Ok(()) => "correct".to_string(),
            Err(_) => format!("WRONG, should be 0x{:04x}", packet.compute_checksum()),
        };
        let flags = packet.flags_fragment();
        let mut flag_words = Vec::new();
        if packet.dont_frag() {
            flag_words.push("DF");
        }
        if packet.more_frags() {
            flag_words.push("MF");
        }
        let s = self.section("IPv4", offset, header_len);
        s.fields.push(Field {
            name: "version, IHL",
            offset,
            len: 1,
            value: format!("4, {} ({header_len} bytes)", packet.ihl()),
        });
        s.fields.push(Field {
            name: "DSCP, ECN",
            offset: offset + 1,
            len: 1,
            value: format!(
                "DSCP {}, ECN {:?}",
                packet.tos() >> 2,
                Ecn::from_tos(packet.tos())
            ),
        });
        s.fields.push(Field {
            name: "total length",
            offset: offset + 2,
            len: 2,
            value: packet.total_len().to_string(),
        });
        s.fields.push(Field {
            name: "identification",
            offset: offset + 4,
            len: 2,
            value: format!("0x{:04x}", packet.ident()),
        });
        s.fields.push(Field {
            name: "flags, fragment",
            offset: offset + 6,
            len: 2,
            value: format!(
                "{} offset {}",
                if flag_words.is_empty() {
                    "none".to_string()
                } else {
                    flag_words.join("+")
                },
                (flags & 0x1fff) * 8
            ),
        });
        s.fields.push(Field {
            name: "TTL",
            offset: offset + 8,
            len: 1,
            value: packet.ttl().to_string(),
        });
        s.fields.push(Field {
            name: "protocol",
            offset: offset + 9,
            len: 1,
            value: format!("{} ({})", u8::from(packet.protocol()), packet.protocol()),
        });
        s.fields.push(Field {
            name: "header checksum",
            offset: offset + 10,
            len: 2,
            value: format!("0x{:04x} ({checksum_state})", packet.checksum()),
        });
        s.fields.push(Field {
            name: "source",
            offset: offset + 12,
            len: 4,
            value: packet.src().to_string(),
        });
        s.fields.push(Field {
            name: "destination",
            offset: offset + 16,
            len: 4,
            value: packet.dst().to_string(),
        });
        if header_len > 20 {
            s.fields.push(Field {
                name: "options",
                offset: offset + 20,
                len: header_len - 20,
                value: format!("{} bytes", header_len - 20),
            });
        }
        if packet.verify_checksum().is_err() {
            s.problems.push(format!(
                "header checksum 0x{:04x} is wrong, should be 0x{:04x}",
                packet.checksum(),
                packet.compute_checksum()
            ));
        }
        let (src, dst, protocol, fragment) = (
            packet.src(),
            packet.dst(),
            packet.protocol(),
            packet.frag_offset() != 0,
        );
        let l4 = offset + header_len;
        if fragment {
            self.payload("Fragment data", l4, packet_end);
        } else {
            match protocol {
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

    /// An IPv4 packet carried without a tunnel header of its own (IPIP,
    /// IP-in-UDP): a zero-length tunnel marker, then the inner packet.
    fn tunnelled_ipv4(&mut self, title: &'static str, what: &str, offset: usize, end: usize) {
        self.level = Level::Tunnel;
        let s = self.section(title, offset, 0);
        s.fields.push(Field {
            name: "carries",
            offset,
            len: 0,
            value: what.to_string(),
        });
        self.level = Level::Inner;
        self.ipv4(offset, end);
    }

    fn udp(&mut self, offset: usize, end: usize, src: Ipv4Addr, dst: Ipv4Addr) {
        let udp = match UdpPacket::new_checked(&self.bytes[offset..end]) {
            Ok(u) => u,
            Err(e) => {
                let len = end - offset;
                self.section("UDP", offset, len)
                    .problems
                    .push(e.to_string());
                return;
            }
        };
        let ulen = usize::from(udp.len());
        let ok = udp.checksum_ok(src, dst);
        let partial = !ok
            && is_partial_checksum(
                udp.checksum(),
                checksum::pseudo_header_v4(src, dst, u8::from(IpProtocol::Udp), udp.len()),
            );
        let checksum = match (udp.checksum(), ok) {
            (0, _) => "0x0000 (none: allowed over IPv4)".to_string(),
            (c, true) => format!("0x{c:04x} (correct)"),
            (c, false) if partial => format!("0x{c:04x} ({PARTIAL})"),
            (c, false) => format!(
                "0x{c:04x} (WRONG, should be 0x{:04x})",
                udp.compute_checksum(src, dst)
            ),
        };
        let (sport, dport, bad) = (udp.src_port(), udp.dst_port(), !ok && !partial);
        let computed = udp.compute_checksum(src, dst);
        let s = self.section("UDP", offset, 8);
        s.fields.push(Field {
            name: "source port",
            offset,
            len: 2,
            value: sport.to_string(),
        });
        s.fields.push(Field {
            name: "destination port",
            offset: offset + 2,
            len: 2,
            value: describe_port(dport),
        });
        s.fields.push(Field {
            name: "length",
            offset: offset + 4,
            len: 2,
            value: ulen.to_string(),
        });
        s.fields.push(Field {
            name: "checksum",
            offset: offset + 6,
            len: 2,
            value: checksum,
        });
        if bad {
            s.problems.push(format!(
                "checksum is wrong, should be 0x{computed:04x} (a receiver drops this)"
            ));
        }
        let payload = offset + 8;
        let udp_end = offset + ulen;
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
        self.level = Level::Tunnel;
        let header = match VxlanHeader::new_checked(&self.bytes[offset..end]) {
            Ok(h) => h,
            Err(_) => return self.truncated("VXLAN", offset, end, vxlan::HEADER_LEN),
        };
        let (flags, vni, reserved) = (header.flags(), header.vni(), header.reserved_bits_set());
        let s = self.section("VXLAN", offset, vxlan::HEADER_LEN);
        s.fields.push(Field {
            name: "flags",
            offset,
            len: 1,
            value: format!(
                "0x{flags:02x} (I flag {})",
                if flags & vxlan::FLAG_I != 0 {
                    "set: VNI valid"
                } else {
                    "CLEAR"
                }
            ),
        });
        s.fields.push(Field {
            name: "reserved",
            offset: offset + 1,
            len: 3,
            value: "must be zero".into(),
        });
        s.fields.push(Field {
            name: "VNI",
            offset: offset + 4,
            len: 3,
            value: vni.to_string(),
        });
        s.fields.push(Field {
            name: "reserved",
            offset: offset + 7,
            len: 1,
            value: "must be zero".into(),
        });
        if flags & vxlan::FLAG_I == 0 {
            s.problems
                .push("I flag is clear: RFC 7348 requires it, receivers drop this".into());
        }
        if reserved {
            s.problems
                .push("reserved bits are set: Linux drops this".into());
        }
        self.level = Level::Inner;
        self.ethernet(offset + vxlan::HEADER_LEN, end);
    }

    fn icmp(&mut self, offset: usize, end: usize) {
        let icmp = match Icmpv4Packet::new_checked(&self.bytes[offset..end]) {
            Ok(i) => i,
            Err(_) => return self.truncated("ICMPv4", offset, end, 8),
        };
        let (kind, code, ok) = (icmp.msg_type(), icmp.code(), icmp.checksum_ok());
        let rest = match kind {
            Icmpv4Type::EchoRequest | Icmpv4Type::EchoReply => {
                format!("id 0x{:04x} seq {}", icmp.echo_ident(), icmp.echo_seq())
            }
            Icmpv4Type::DestUnreachable if code == 4 => {
                format!("next-hop MTU {}", icmp.next_hop_mtu())
            }
            _ => "unused".into(),
        };
        let checksum = icmp.checksum();
        let s = self.section("ICMPv4", offset, 8);
        s.fields.push(Field {
            name: "type, code",
            offset,
            len: 2,
            value: format!("{} ({kind}), {code}", u8::from(kind)),
        });
        s.fields.push(Field {
            name: "checksum",
            offset: offset + 2,
            len: 2,
            value: format!(
                "0x{checksum:04x} ({})",
                if ok { "correct" } else { "WRONG" }
            ),
        });
        s.fields.push(Field {
            name: "rest of header",
            offset: offset + 4,
            len: 4,
            value: rest,
        });
        if !ok {
            s.problems.push("checksum is wrong".into());
        }
        self.payload("Data", offset + 8, end);
    }

    fn tcp(&mut self, offset: usize, end: usize, src: Ipv4Addr, dst: Ipv4Addr) {
        let b = &self.bytes[offset..end];
        if b.len() < 20 {
            return self.truncated("TCP", offset, end, 20);
        }
        let data_offset = usize::from(b[12] >> 4) * 4;
        let stored = u16::from_be_bytes([b[16], b[17]]);
        let pseudo = checksum::pseudo_header_v4(src, dst, 6, b.len() as u16);
        let verifies = checksum::fold(checksum::accumulate(pseudo, b)) == 0xffff;
        let partial = !verifies && is_partial_checksum(stored, pseudo);
        let checksum_value = if verifies {
            format!("0x{stored:04x} (correct)")
        } else if partial {
            format!("0x{stored:04x} ({PARTIAL})")
        } else {
            // The sum without the field (it sits at an even offset).
            let without = checksum::accumulate(checksum::accumulate(pseudo, &b[..16]), &b[18..]);
            let should = !checksum::fold(without);
            format!("0x{stored:04x} (WRONG, should be 0x{should:04x})")
        };
        // Longer than any link here carries: a super-frame as GSO hands it
        // over, cut at the sender's MSS (which is not in the frame).
        let super_frame = b.len() > 9000;
        let s = self.section("TCP", offset, data_offset.clamp(20, b.len()));
        s.fields.push(Field {
            name: "source port",
            offset,
            len: 2,
            value: u16::from_be_bytes([b[0], b[1]]).to_string(),
        });
        s.fields.push(Field {
            name: "destination port",
            offset: offset + 2,
            len: 2,
            value: u16::from_be_bytes([b[2], b[3]]).to_string(),
        });
        s.fields.push(Field {
            name: "sequence",
            offset: offset + 4,
            len: 4,
            value: u32::from_be_bytes([b[4], b[5], b[6], b[7]]).to_string(),
        });
        s.fields.push(Field {
            name: "header length",
            offset: offset + 12,
            len: 1,
            value: format!("{data_offset} bytes"),
        });
        s.fields.push(Field {
            name: "checksum",
            offset: offset + 16,
            len: 2,
            value: checksum_value,
        });
        if !verifies && !partial {
            s.problems
                .push("checksum is wrong (a receiver drops this)".to_string());
        }
        if super_frame {
            s.fields.push(Field {
                name: "segmentation",
                offset,
                len: b.len(),
                value: format!(
                    "a GSO super-frame of {} bytes of TCP: cut into MSS-sized segments late, by the kernel or a port that cannot take it whole",
                    b.len()
                ),
            });
        }
        if data_offset < 20 || data_offset > b.len() {
            s.problems.push(format!(
                "data offset {data_offset} is outside 20..={}",
                b.len()
            ));
            return;
        }
        self.payload("Data", offset + data_offset, end);
    }
}

/// How a partial checksum is described.
const PARTIAL: &str =
    "partial: the pseudo-header sum only, as checksum offload leaves it for the NIC or the receiving kernel (CHECKSUM_PARTIAL)";

/// True if `stored` is the folded pseudo-header sum `pseudo`: in a TCP or
/// UDP segment whose full sum does not verify (the caller checks), a
/// checksum offload left undone (Linux's CHECKSUM_PARTIAL), not corruption.
fn is_partial_checksum(stored: u16, pseudo: u32) -> bool {
    stored == checksum::fold(pseudo)
}

fn describe_mac(mac: MacAddr) -> String {
    if mac == MacAddr::BROADCAST {
        format!("{mac} (broadcast)")
    } else if mac == MacAddr([0xee; 6]) {
        format!("{mac} (Calico's proxy-ARP MAC)")
    } else {
        mac.to_string()
    }
}

fn describe_port(port: u16) -> String {
    match port {
        vxlan::PORT_FLANNEL => format!("{port} (VXLAN, flannel/Linux)"),
        vxlan::PORT_IANA => format!("{port} (VXLAN, IANA)"),
        PORT_FLANNEL_UDP => format!("{port} (flannel udp)"),
        _ => port.to_string(),
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
    use etherparse::PacketBuilder;

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
    }
}
