//! ICMP errors the node sends: time exceeded and host unreachable (RFC
//! 792), fragmentation needed with the next hop's MTU (RFC 1191),
//! rate-limited as Linux limits its own.

use podswitch_encap::ethernet::{EtherType, EthernetRepr};
use podswitch_encap::icmpv4::{Icmpv4Error, Icmpv4Type};
use podswitch_encap::ipv4::{IpProtocol, Ipv4Packet, Ipv4Repr};

use crate::drop::DropReason;
use crate::packet::{PacketBuf, PacketPool};
use crate::trace::{Step, Tracer};

use super::route::is_unicast;
use super::{Ctx, Origin, Outputs, Pipeline, ETH, LOCAL_PORT};

/// The ICMP errors a node sends, bounded as Linux bounds its own
/// (`icmp_global_allow`: `net.ipv4.icmp_msgs_per_sec` = 1000 a second,
/// bursts of `icmp_msgs_burst` = 50): a flood of TTL-1 or oversized
/// packets cannot turn podswitch into an ICMP flood. A token bucket,
/// refilled from the monotonic clock, read only when an error is due.
#[derive(Debug, Clone, Copy)]
pub(super) struct IcmpLimiter {
    tokens: u32,
    refilled: Option<std::time::Instant>,
}

impl IcmpLimiter {
    const PER_SEC: u32 = 1000;
    const BURST: u32 = 50;

    pub(super) const fn new() -> Self {
        IcmpLimiter {
            tokens: Self::BURST,
            refilled: None,
        }
    }

    pub(super) fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        let last = *self.refilled.get_or_insert(now);
        let earned = now.duration_since(last).as_millis() as u64 * u64::from(Self::PER_SEC) / 1000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(Self::BURST)) as u32;
            self.refilled = Some(now);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Pipeline {
    /// Sends an ICMP error about the packet in `offending` back to its
    /// source, routed like any packet. Never about an ICMP error, a
    /// non-first fragment or a non-unicast source (RFC 1122 §3.2.2).
    pub(super) fn icmp_error<T: Tracer>(
        &mut self,
        ctx: &Ctx<'_>,
        offending: &PacketBuf,
        error: Icmpv4Error,
        pool: &mut PacketPool,
        out: &mut Outputs,
        t: &mut T,
    ) {
        let ip = &offending.frame()[ETH..];
        let packet = Ipv4Packet::new_unchecked(ip);
        let about_error = packet.protocol() == IpProtocol::Icmp
            && packet.frag_offset() == 0
            && ip.get(packet.header_len()).is_some_and(|&ty| {
                !matches!(
                    Icmpv4Type::from(ty),
                    Icmpv4Type::EchoRequest | Icmpv4Type::EchoReply
                )
            });
        if about_error || packet.frag_offset() != 0 || !is_unicast(packet.src()) {
            return;
        }
        // A trace sends nothing, so it spends no token.
        if !T::ENABLED && !self.icmp_limit.allow() {
            ctx.tables
                .stats
                .add_drop(offending.in_port, DropReason::IcmpRateLimited);
            return;
        }
        let quoted = &ip[..Icmpv4Error::quote_len(packet.header_len(), packet.packet_len())];
        let icmp_len = Icmpv4Error::buffer_len(quoted.len());
        let Some(mut reply) = pool.alloc(LOCAL_PORT) else {
            ctx.tables
                .stats
                .add_drop(offending.in_port, DropReason::PoolExhausted);
            return;
        };
        let mut bytes = [0u8; ETH + 20 + 8 + 60 + 8];
        let len = ETH + 20 + icmp_len;
        self.ident = self.ident.wrapping_add(1);
        EthernetRepr {
            src: ctx.snap.node.gateway_mac,
            dst: ctx.snap.node.gateway_mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut bytes);
        Ipv4Repr {
            // From the interface a kernel node would send it by.
            src: ctx
                .snap
                .node
                .address_towards(ctx.snap.fib.lookup(packet.src())),
            dst: packet.src(),
            protocol: IpProtocol::Icmp,
            payload_len: icmp_len,
            ttl: 64,
            tos: 0,
            ident: self.ident,
            dont_frag: false,
        }
        .emit(&mut bytes[ETH..]);
        error.emit(quoted, &mut bytes[ETH + 20..len]);
        reply.set(&bytes[..len]);
        let what = match error {
            Icmpv4Error::TtlExceeded => "time exceeded",
            Icmpv4Error::FragNeeded { .. } => "fragmentation needed",
            Icmpv4Error::HostUnreachable => "host unreachable",
        };
        t.step(|| Step::IcmpError {
            what,
            to: packet.src(),
        });
        let verdict = self.route(ctx, &mut reply, Origin::Local, pool, out, t);
        self.finish(ctx, reply, verdict, pool, out, t);
    }
}
