//! Showing untrusted bytes in messages.
//!
//! Every message that echoes input (a tar entry's name, a link target, a
//! store key, a tenant or image name) goes through [`Shown`], so what reaches
//! a terminal or a log is printable:
//!
//! * printable characters of valid UTF-8 stay as they are (`café/日本` is
//!   shown as written);
//! * a backslash is doubled, so the output is unambiguous;
//! * control characters (C0, DEL, C1) and the invisible format characters
//!   that reorder or hide text (bidirectional overrides and isolates,
//!   zero-width characters, the BOM) are escaped: `\n`, `\t`, `\r`, `\0`,
//!   `\x1b`, `\u{202e}`;
//! * bytes that are not UTF-8 are shown as `\xNN`.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// Bytes shown with control characters escaped (see the module docs).
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a [u8]);

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// True for characters that must not reach a terminal raw.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

fn write_char(f: &mut impl Write, c: char) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '\n' => f.write_str("\\n"),
        '\t' => f.write_str("\\t"),
        '\r' => f.write_str("\\r"),
        '\0' => f.write_str("\\0"),
        c if must_escape(c) && (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32),
        c if must_escape(c) => write!(f, "\\u{{{:x}}}", c as u32),
        c => f.write_char(c),
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                write_char(f, c)?;
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// `bytes` as a printable string (see the module docs).
pub fn escape(bytes: &[u8]) -> String {
    Shown(bytes).to_string()
}

/// `s` as a printable string; borrowed when nothing needs escaping.
pub fn escape_str(s: &str) -> Cow<'_, str> {
    if s.chars().any(|c| c == '\\' || must_escape(c)) {
        Cow::Owned(escape(s.as_bytes()))
    } else {
        Cow::Borrowed(s)
    }
}

/// Escapes only the characters that must not reach a terminal, leaving
/// backslashes alone: for a whole message whose parts may already be
/// escaped (a last line of defence before printing).
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(must_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push(c);
        } else {
            let _ = write_char(&mut out, c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert_eq!(escape(b"evil\x1b[2J/../x"), "evil\\x1b[2J/../x");
        assert_eq!(escape(b"a\0b\nc\td\r\x7f"), "a\\0b\\nc\\td\\r\\x7f");
        assert_eq!(
            escape("caf\u{e9}/\u{65e5}".as_bytes()),
            "caf\u{e9}/\u{65e5}"
        );
        assert_eq!(escape(b"\xff\xfe ok"), "\\xff\\xfe ok");
        assert_eq!(escape("x\u{202e}y\u{85}".as_bytes()), "x\\u{202e}y\\u{85}");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
        assert!(matches!(escape_str("plain name"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\\x1b \x1b"), "a\\x1b \\x1b");
    }

    proptest! {
        /// Whatever the input, nothing a terminal acts on survives, and
        /// different inputs never show the same (the escape is reversible).
        #[test]
        fn output_is_printable_and_unambiguous(a in proptest::collection::vec(any::<u8>(), 0..64),
                                               b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (sa, sb) = (escape(&a), escape(&b));
            prop_assert!(!sa.chars().any(must_escape));
            if a != b {
                prop_assert_ne!(sa, sb);
            }
        }
    }
}
