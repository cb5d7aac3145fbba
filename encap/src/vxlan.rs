//! The VXLAN header (RFC 7348 §5):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use core::fmt;

use crate::describe::Section;
use crate::error::{check_len, Layer, WireResult};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: "the VNI is valid". RFC 7348 §5 requires it set.
pub const FLAG_I: u8 = 0x08;
/// flannel's VXLAN port (the Linux kernel's historical default).
pub const PORT_FLANNEL: u16 = 8472;
/// The IANA-assigned VXLAN port (RFC 7348 §5).
pub const PORT_IANA: u16 = 4789;

/// The wire layout of the header. Its size is fixed by RFC 7348; the
/// assertion below makes the compiler check it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct WireHeader {
    flags: u8,
    reserved1: [u8; 3],
    vni: [u8; 3],
    reserved2: u8,
}
const _: () = assert!(core::mem::size_of::<WireHeader>() == HEADER_LEN);

/// A 24-bit VXLAN Network Identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: u32 = 0x00ff_ffff;
    /// flannel's VNI.
    pub const FLANNEL: Vni = Vni(1);

    /// A VNI, or `None` if `value` does not fit 24 bits.
    pub const fn new(value: u32) -> Option<Vni> {
        if value <= Self::MAX {
            Some(Vni(value))
        } else {
            None
        }
    }

    /// The value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A view of a VXLAN header.
#[derive(Debug, Clone, Copy)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// Wraps untrusted bytes: a whole 8-byte header (flags unchecked; see
    /// [`Self::flags`] and [`Self::reserved_bits_set`]).
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        check_len(Layer::Vxlan, buffer.as_ref(), HEADER_LEN)?;
        Ok(VxlanHeader { buffer })
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// I flag set.
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// Any reserved bit (flags other than I, the 24 reserved bits after the
    /// flags, the last byte) set.
    pub fn reserved_bits_set(&self) -> bool {
        let b = self.buffer.as_ref();
        b[0] & !FLAG_I != 0 || b[1] != 0 || b[2] != 0 || b[3] != 0 || b[7] != 0
    }

    /// The VNI.
    pub fn vni(&self) -> Vni {
        let b = self.buffer.as_ref();
        Vni(u32::from(b[4]) << 16 | u32::from(b[5]) << 8 | u32::from(b[6]))
    }

    /// Bytes after the header: the inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// Writes a VXLAN header with the I flag and `vni` into `buf[..8]`.
///
/// # Panics
/// If `buf` is shorter than 8 bytes.
#[inline]
pub fn emit(vni: Vni, buf: &mut [u8]) {
    let v = vni.0;
    buf[..HEADER_LEN].copy_from_slice(&[
        FLAG_I,
        0,
        0,
        0,
        (v >> 16) as u8,
        (v >> 8) as u8,
        v as u8,
        0,
    ]);
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// The header at `offset`, described field by field
    /// ([`crate::describe`]), with what a receiver would refuse in it.
    pub fn describe(&self, offset: usize) -> Section {
        let flags = self.flags();
        let mut s = Section::new("VXLAN", offset, HEADER_LEN);
        s.field(
            "flags",
            offset,
            1,
            format!(
                "0x{flags:02x} (I flag {})",
                if flags & FLAG_I != 0 {
                    "set: VNI valid"
                } else {
                    "CLEAR"
                }
            ),
        );
        s.field("reserved", offset + 1, 3, "must be zero");
        s.field("VNI", offset + 4, 3, self.vni().to_string());
        s.field("reserved", offset + 7, 1, "must be zero");
        if flags & FLAG_I == 0 {
            s.problem("I flag is clear: RFC 7348 requires it, receivers drop this");
        }
        if self.reserved_bits_set() {
            s.problem("reserved bits are set: Linux drops this");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_range() {
        assert_eq!(Vni::new(1), Some(Vni::FLANNEL));
        assert!(Vni::new(Vni::MAX).is_some());
        assert!(Vni::new(Vni::MAX + 1).is_none());
    }

    #[test]
    fn emit_and_read() {
        let mut buf = [0u8; 8];
        emit(Vni::new(0x123456).unwrap(), &mut buf);
        assert_eq!(buf, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let h = VxlanHeader::new_checked(&buf[..]).unwrap();
        assert!(h.vni_valid());
        assert!(!h.reserved_bits_set());
        assert_eq!(h.vni().get(), 0x123456);
        for at in [0usize, 1, 2, 3, 7] {
            let mut b = buf;
            b[at] |= 0x80;
            assert!(
                VxlanHeader::new_checked(&b[..])
                    .unwrap()
                    .reserved_bits_set(),
                "byte {at}"
            );
        }
        for len in 0..8 {
            assert!(VxlanHeader::new_checked(&buf[..len]).is_err());
        }
    }
}
