//! # podswitch-control: the control socket of podswitchd
//!
//! podswitchd is programmed over a Unix socket speaking newline-delimited
//! JSON ([`protocol`], documented in docs/control-protocol.md): ports,
//! routes, peers, the FDB, neighbours, counters and traces. [`server`]
//! owns the socket (mode 0600, peer credentials checked), [`handler`]
//! applies each request to the engine's tables, and [`client`] is what
//! podswitchctl and the CNI plugin use. Every bad request gets an error
//! reply; nothing a client sends can stop the daemon.
//!
//! Dependencies point one way: binaries -> control -> engine -> encap.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod handler;
pub mod metrics;
pub mod protocol;
pub mod server;

pub use podswitch_engine as engine;
