//! Headers described for people: each wire view's module has a
//! `describe` function that names every field of its header with the
//! field's offset, length and value in words, and says what is wrong with
//! it, and tells what follows it. [`dissect`](crate::dissect) walks a
//! frame through them, through a tunnel into the inner frame.
//!
//! This is the teaching path, not the data path: it allocates freely.

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its name.
    pub name: &'static str,
    /// Offset in the frame.
    pub offset: usize,
    /// Length in bytes (0 for a sub-byte field shown with its byte).
    pub len: usize,
    /// Its value, in words.
    pub value: String,
}

/// Where a header sits relative to a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Before (or without) a tunnel header.
    Outer,
    /// The tunnel header itself.
    Tunnel,
    /// Carried inside the tunnel.
    Inner,
}

/// One header (or the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The header's name ("IPv4", "VXLAN", ...).
    pub title: &'static str,
    /// Outer, tunnel or inner (set by the walker, which knows the nesting).
    pub level: Level,
    /// Offset in the frame.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// Its fields.
    pub fields: Vec<Field>,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

impl Section {
    /// A header of `len` bytes at `offset`, no fields yet.
    pub fn new(title: &'static str, offset: usize, len: usize) -> Section {
        Section {
            title,
            level: Level::Outer,
            offset,
            len,
            fields: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Adds a field.
    pub fn field(
        &mut self,
        name: &'static str,
        offset: usize,
        len: usize,
        value: impl Into<String>,
    ) {
        self.fields.push(Field {
            name,
            offset,
            len,
            value: value.into(),
        });
    }

    /// Adds a problem.
    pub fn problem(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    /// A header that does not parse: the bytes from `offset` to `end`,
    /// with why.
    pub fn malformed(
        title: &'static str,
        offset: usize,
        end: usize,
        why: impl Into<String>,
    ) -> Section {
        let mut s = Section::new(title, offset, end - offset);
        s.problem(why);
        s
    }

    /// A header cut short: `needed` bytes, fewer present.
    pub fn truncated(title: &'static str, offset: usize, end: usize, needed: usize) -> Section {
        let have = end - offset;
        Section::malformed(
            title,
            offset,
            end,
            format!("truncated: {needed} bytes needed, {have} present"),
        )
    }
}
