//! Every checked view and representation parser over the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::arp::ArpRepr;
use podswitch_encap::ethernet::{self, EthernetFrame};
use podswitch_encap::flow::FlowHasher;
use podswitch_encap::icmpv4::Icmpv4Packet;
use podswitch_encap::ipv4::{Ipv4Packet, Ipv4Repr};
use podswitch_encap::ipv6::Ipv6Packet;
use podswitch_encap::udp::UdpPacket;
use podswitch_encap::vxlan::VxlanHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = EthernetFrame::new_checked(data) {
        let _ = (f.src(), f.dst(), f.ethertype(), f.payload_info());
    }
    let _ = ethernet::payload_info(data);
    let _ = ArpRepr::parse(data);
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let _ = (p.verify_checksum(), p.payload().len(), Ipv4Repr::parse(&p));
    }
    if let Ok(p) = Ipv6Packet::new_checked(data) {
        let _ = (p.payload().len(), p.src(), p.flow_label());
    }
    if let Ok(u) = UdpPacket::new_checked(data) {
        let _ = u.checksum_ok([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
    }
    if let Ok(i) = Icmpv4Packet::new_checked(data) {
        let _ = (i.checksum_ok(), i.msg_type());
    }
    if let Ok(v) = VxlanHeader::new_checked(data) {
        let _ = (v.vni(), v.reserved_bits_set());
    }
    let h = FlowHasher::new(1);
    let _ = (h.hash_ethernet(data), h.hash_ipv4(data), h.hash_ipv6(data));
});
