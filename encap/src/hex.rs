//! Hex text to bytes and back, for fixtures and `podswitchctl explain --hex`.

use core::fmt;

/// Why hex text could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HexError {
    /// A character that is not a hex digit (position counts non-space chars).
    BadDigit {
        /// The character.
        found: char,
        /// Its position among the digits.
        position: usize,
    },
    /// An odd number of digits.
    OddLength(usize),
}

impl fmt::Display for HexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HexError::BadDigit { found, position } => {
                write!(f, "{found:?} at digit {position} is not a hex digit")
            }
            HexError::OddLength(n) => write!(f, "{n} hex digits: a byte needs two"),
        }
    }
}

impl std::error::Error for HexError {}

/// Parses hex digits, ignoring white space, `:` and `-` separators and an
/// optional `0x` prefix.
pub fn decode(text: &str) -> Result<Vec<u8>, HexError> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let digits: Vec<char> = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':' && *c != '-')
        .collect();
    if digits.len() % 2 != 0 {
        return Err(HexError::OddLength(digits.len()));
    }
    let value = |i: usize| {
        digits[i]
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or(HexError::BadDigit {
                found: digits[i],
                position: i,
            })
    };
    (0..digits.len())
        .step_by(2)
        .map(|i| Ok(value(i)? << 4 | value(i + 1)?))
        .collect()
}

/// Lower-case hex without separators.
pub fn encode(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        assert_eq!(
            decode("0x0a 0b:0C-ff").unwrap(),
            vec![0x0a, 0x0b, 0x0c, 0xff]
        );
        assert_eq!(encode(&[0, 0xab]), "00ab");
        assert_eq!(decode("abc"), Err(HexError::OddLength(3)));
        assert_eq!(
            decode("zz"),
            Err(HexError::BadDigit {
                found: 'z',
                position: 0
            })
        );
    }
}
