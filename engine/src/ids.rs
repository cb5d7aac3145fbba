//! The engine's vocabulary of numbers: what names a port and a peer in
//! the tables, the packets and the counters. They sit here, below every
//! other module, so that the modules that use them (ports and packets,
//! the FIB and the peers) need not import each other for a name. The
//! wider vocabulary (MAC addresses, prefixes, backends, gateway modes,
//! port roles and kinds) is podswitch-addr's.

use std::fmt;

/// A port's number in the engine (its index in the port table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A peer's number in the peer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u16);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
