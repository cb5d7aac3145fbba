//! # podswitch-control
//!
//! The control protocol of podswitchd (newline-delimited JSON over a Unix
//! socket), its server and its client. This crate is being built: today it
//! only names its place in the workspace (binaries -> control -> engine ->
//! encap).

pub use podswitch_engine as engine;
