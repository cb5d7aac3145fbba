//! The breakdown `podswitchctl explain` prints, over any frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::dissect::{dissect, DissectOptions};

fuzz_target!(|data: &[u8]| {
    let _ = dissect(data, &DissectOptions::default()).to_string();
});
