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
//! The protocol's types and client are their own crate,
//! `podswitch-protocol` (re-exported here as [`protocol`] and [`client`]),
//! so that the CNI plugin can speak it without linking the engine.
//!
//! Dependencies point one way: binaries -> control -> engine -> encap.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod handler;
pub mod metrics;
pub mod server;

pub use podswitch_protocol as protocol;
pub use podswitch_protocol::client;

pub use podswitch_engine as engine;
