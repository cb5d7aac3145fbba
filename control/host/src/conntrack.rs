//! The kernel's connection tracking table, read over ctnetlink
//! (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_CTNETLINK`): the
//! connections the node's own rules translated to another destination,
//! which podswitchd hands the data path when it starts so that a restart
//! does not forget the Service connections whose replies must go back
//! through the node (`podswitch_engine::host_connections`).
//!
//! The messages are laid out here from the kernel's uapi headers
//! (include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h and
//! nf_conntrack_common.h): a dump request of 20 bytes, and answers of
//! nested attributes of which four are read. No maintained crate of the
//! rust-netlink family speaks ctnetlink in the version podswitch's other
//! netlink crates pin; the socket is theirs (`netlink-sys`).

use std::io;
use std::net::Ipv4Addr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::netlink::receive;

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET`.
const CT_GET: u16 = 1 << 8 | 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Attribute types carry flags in their top two bits (`NLA_F_NESTED`,
/// `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// `IPS_DST_NAT`: the connection's destination was translated.
const IPS_DST_NAT: u32 = 1 << 5;

/// One direction of a tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// IP protocol.
    pub protocol: u8,
    /// Source address and port (0 for a protocol without ports).
    pub src: (Ipv4Addr, u16),
    /// Destination address and port.
    pub dst: (Ipv4Addr, u16),
}

/// A connection whose destination the node's rules translated (a DNAT:
/// kube-proxy's, for a Service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translated {
    /// As the client sent it (to the Service's address).
    pub original: Tuple,
    /// As the replies come (from the backend).
    pub reply: Tuple,
}

/// The IPv4 connections the calling thread's network namespace tracks
/// whose destination was translated: marked so (`IPS_DST_NAT`, a DNAT
/// rule's), or whose replies come from elsewhere than the original
/// destination (IPVS, which kube-proxy's IPVS mode uses, changes the
/// reply tuple without the mark). Needs `CAP_NET_ADMIN`; a kernel without
/// connection tracking answers with an error, which is returned.
pub fn translated_connections() -> io::Result<Vec<Translated>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.set_non_blocking(true)?;
    let seq: u32 = 1;
    let mut request = Vec::with_capacity(20);
    request.extend_from_slice(&20u32.to_ne_bytes());
    request.extend_from_slice(&CT_GET.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&seq.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0.
    request.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    socket.send(&request, 0)?;
    let mut answer = vec![0u8; 64 * 1024];
    let mut found = Vec::new();
    loop {
        let n = receive(&socket, &mut answer)?;
        if n == 0 {
            return Err(invalid("the socket closed before the dump's end"));
        }
        if parse_datagram(&answer[..n], seq, &mut found)? {
            return Ok(found);
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("ctnetlink: {what}"))
}

/// Reads the messages of one datagram of the dump's answer into `found`;
/// true once the dump is done.
fn parse_datagram(mut bytes: &[u8], seq: u32, found: &mut Vec<Translated>) -> io::Result<bool> {
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > bytes.len() {
            return Err(invalid("a message longer than its datagram"));
        }
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let message_seq = u32::from_ne_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let body = &bytes[16..len];
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
        if message_seq != seq {
            continue;
        }
        match kind {
            // Both carry an int: 0, or a negative errno (a dump that
            // failed part-way ends with its error in NLMSG_DONE).
            NLMSG_DONE | NLMSG_ERROR => {
                let code = match body.get(0..4) {
                    Some(b) => i32::from_ne_bytes(b.try_into().expect("4 bytes")),
                    None if kind == NLMSG_DONE => 0,
                    None => return Err(invalid("a short error")),
                };
                return match code {
                    0 => Ok(true),
                    code if code < 0 && code > -4096 => Err(io::Error::from_raw_os_error(-code)),
                    _ => Err(invalid("an error code that is no errno")),
                };
            }
            _ => {
                // struct nfgenmsg, then the connection's attributes.
                if let Some(connection) = body.get(4..).and_then(translated) {
                    found.push(connection);
                }
            }
        }
    }
    Ok(false)
}

/// The attributes of `bytes`, as (type, payload).
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let payload = &bytes[4..len];
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
        Some((kind, payload))
    })
}

/// The connection a dump's message describes, if its destination was
/// translated and both its tuples are IPv4 and whole.
fn translated(attrs: &[u8]) -> Option<Translated> {
    let (mut original, mut reply, mut status) = (None, None, 0u32);
    for (kind, payload) in attributes(attrs) {
        match kind {
            CTA_TUPLE_ORIG => original = tuple(payload),
            CTA_TUPLE_REPLY => reply = tuple(payload),
            CTA_STATUS => status = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?),
            _ => {}
        }
    }
    let (original, reply) = (original?, reply?);
    (status & IPS_DST_NAT != 0 || reply.src != original.dst)
        .then_some(Translated { original, reply })
}

fn tuple(attrs: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst) = (None, None);
    let (mut protocol, mut sport, mut dport) = (None, 0u16, 0u16);
    for (kind, payload) in attributes(attrs) {
        match kind {
            CTA_TUPLE_IP => {
                for (kind, address) in attributes(payload) {
                    let address: [u8; 4] = address.get(..4)?.try_into().ok()?;
                    match kind {
                        CTA_IP_V4_SRC => src = Some(Ipv4Addr::from(address)),
                        CTA_IP_V4_DST => dst = Some(Ipv4Addr::from(address)),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, value) in attributes(payload) {
                    match kind {
                        CTA_PROTO_NUM => protocol = value.first().copied(),
                        CTA_PROTO_SRC_PORT => {
                            sport = u16::from_be_bytes(value.get(..2)?.try_into().ok()?);
                        }
                        CTA_PROTO_DST_PORT => {
                            dport = u16::from_be_bytes(value.get(..2)?.try_into().ok()?);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        protocol: protocol?,
        src: (src?, sport),
        dst: (dst?, dport),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    fn tuple_attribute(kind: u16, src: [u8; 4], dst: [u8; 4], ports: (u16, u16)) -> Vec<u8> {
        const NESTED: u16 = 0x8000;
        let ip = [
            attribute(CTA_IP_V4_SRC, &src),
            attribute(CTA_IP_V4_DST, &dst),
        ]
        .concat();
        let proto = [
            attribute(CTA_PROTO_NUM, &[6]),
            attribute(CTA_PROTO_SRC_PORT, &ports.0.to_be_bytes()),
            attribute(CTA_PROTO_DST_PORT, &ports.1.to_be_bytes()),
        ]
        .concat();
        attribute(
            kind | NESTED,
            &[
                attribute(CTA_TUPLE_IP | NESTED, &ip),
                attribute(CTA_TUPLE_PROTO | NESTED, &proto),
            ]
            .concat(),
        )
    }

    /// A dump's message: a connection sent to `(to, port)` and answered
    /// from `(from, from_port)`, with `status`.
    fn connection(to: ([u8; 4], u16), from: ([u8; 4], u16), status: u32, seq: u32) -> Vec<u8> {
        let client = ([10, 244, 1, 2], 40000);
        framed(
            &[
                tuple_attribute(CTA_TUPLE_ORIG, client.0, to.0, (client.1, to.1)),
                tuple_attribute(CTA_TUPLE_REPLY, from.0, client.0, (from.1, client.1)),
                attribute(CTA_STATUS, &status.to_be_bytes()),
            ]
            .concat(),
            seq,
        )
    }

    /// A connection to a Service's address answered by a backend.
    fn message(status: u32, seq: u32) -> Vec<u8> {
        connection(([10, 96, 0, 10], 80), ([10, 244, 2, 5], 8080), status, seq)
    }

    /// A connection whose replies come from its original destination.
    fn untranslated(seq: u32) -> Vec<u8> {
        connection(([10, 244, 2, 5], 80), ([10, 244, 2, 5], 80), 0x8, seq)
    }

    fn framed(attrs: &[u8], seq: u32) -> Vec<u8> {
        let len = 16 + 4 + attrs.len();
        let mut out = (len as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&(1u16 << 8).to_ne_bytes()); // IPCTNL_MSG_CT_NEW
        out.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&[2, 0, 0, 0]);
        out.extend_from_slice(attrs);
        out
    }

    #[test]
    fn a_dump_yields_the_translated_connections_and_ends_at_done() {
        let mut datagram = message(IPS_DST_NAT | 0x8, 1); // and IPS_CONFIRMED
        datagram.extend(untranslated(1)); // left out
        datagram.extend(message(IPS_DST_NAT, 9)); // another request's
        let mut found = Vec::new();
        assert!(!parse_datagram(&datagram, 1, &mut found).unwrap());
        assert_eq!(
            found,
            vec![Translated {
                original: Tuple {
                    protocol: 6,
                    src: (Ipv4Addr::new(10, 244, 1, 2), 40000),
                    dst: (Ipv4Addr::new(10, 96, 0, 10), 80),
                },
                reply: Tuple {
                    protocol: 6,
                    src: (Ipv4Addr::new(10, 244, 2, 5), 8080),
                    dst: (Ipv4Addr::new(10, 244, 1, 2), 40000),
                },
            }]
        );
        // IPVS's connections carry no DNAT mark: their replies come from
        // elsewhere than the original destination.
        let mut ipvs = Vec::new();
        assert!(!parse_datagram(&message(0x8, 1), 1, &mut ipvs).unwrap());
        assert_eq!(ipvs, found);
        let done = |code: i32| {
            let mut done = 20u32.to_ne_bytes().to_vec();
            done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
            done.extend_from_slice(&[0, 0]);
            done.extend_from_slice(&1u32.to_ne_bytes());
            done.extend_from_slice(&[0; 4]);
            done.extend_from_slice(&code.to_ne_bytes());
            done
        };
        assert!(parse_datagram(&done(0), 1, &mut found).unwrap());
        // A dump that failed part-way: its error, not a short answer.
        let e = parse_datagram(&done(-libc::EINTR), 1, &mut found).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINTR));
        assert!(parse_datagram(&done(i32::MIN), 1, &mut found).is_err());
    }

    #[test]
    fn malformed_answers_are_errors_or_skipped_never_a_panic() {
        let whole = message(IPS_DST_NAT, 1);
        // A message claiming more than its datagram holds.
        assert!(parse_datagram(&whole[..whole.len() - 1], 1, &mut Vec::new()).is_err());
        // Every truncation of the attributes inside a well-framed message.
        for cut in 20..whole.len() {
            let mut bytes = whole[..cut].to_vec();
            bytes[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            let mut found = Vec::new();
            let _ = parse_datagram(&bytes, 1, &mut found);
            assert!(found.len() <= 1);
        }
        // An error the kernel sends: its errno.
        let mut error = 36u32.to_ne_bytes().to_vec();
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0, 0]);
        error.extend_from_slice(&1u32.to_ne_bytes());
        error.extend_from_slice(&[0; 4]);
        error.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        error.extend_from_slice(&[0; 16]);
        let e = parse_datagram(&error, 1, &mut Vec::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }
}
