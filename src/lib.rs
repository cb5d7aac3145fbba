//! What the `podswitch` package's binaries and its integration tests
//! share beyond the engine: host set-up for labs and tests.
//!
//! - [`kernel_flannel`]: what flanneld makes a node's kernel do, written
//!   once for `podswitchctl lab`, `podswitchctl bench` and the tests that
//!   put a kernel flannel node beside podswitch.

pub mod kernel_flannel;
