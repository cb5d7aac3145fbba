//! The pcap reader behind `podswitchctl explain FILE.pcap`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::pcap::PcapReader;

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = PcapReader::new(data) {
        let _ = reader.records();
    }
});
