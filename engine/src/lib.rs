//! # podswitch-engine
//!
//! The data path between "a batch of frames arrived on a port" and "a batch
//! of frames leaves on ports": packet buffers with headroom, ports, the
//! lock-free FDB/FIB/neighbour tables, the switching and routing pipeline,
//! workers and statistics. Wire formats and encapsulation come from
//! [`podswitch_encap`].
//!
//! This crate is being built: today it only re-exports the wire layer that
//! the pipeline will stand on.

pub use podswitch_encap as encap;
