//! Guest text on a terminal.
//!
//! What an instance prints is written by the guest, so it may hold
//! control characters and escape sequences that retitle, recolour, move
//! the cursor of, or (on some terminals) answer back through the terminal
//! of whoever reads it. `kiln logs` and `kilnd -v` pass it through
//! [`escape_controls`] when they print to a terminal (`kiln logs --raw`
//! keeps it as it is); a pipe or file gets the bytes unchanged.

use std::borrow::Cow;

/// Whether `c` is shown escaped: C0 controls other than tab and newline,
/// DEL, and the C1 controls (U+0080..U+009F; U+009B is a one-character CSI).
fn escaped(c: char) -> bool {
    matches!(c, '\0'..='\x08' | '\x0b'..='\x1f' | '\x7f' | '\u{80}'..='\u{9f}')
}

/// `text` with every control character but tab and newline written out
/// visibly: `\x1b` for ESC, `\x7f` for DEL, `\u{9b}` for a C1 control.
/// An escape sequence thereby loses its introducer and is shown as text.
/// Borrows when there is nothing to escape.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !escaped(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_tabs_and_newlines_pass_unchanged() {
        let t = "plain text\twith a tab, ünïcödé ✓\nand a second line";
        assert!(matches!(escape_controls(t), Cow::Borrowed(s) if s == t));
        assert_eq!(escape_controls(""), "");
    }

    #[test]
    fn escape_sequences_and_controls_are_shown_not_obeyed() {
        // Retitle the window, then red text, then a bell.
        assert_eq!(
            escape_controls("\x1b]0;pwned\x07\x1b[31mred"),
            "\\x1b]0;pwned\\x07\\x1b[31mred"
        );
        // Carriage return (overwrites the line), backspace, DEL, NUL.
        assert_eq!(
            escape_controls("ok\rfake\x08\x7f\0"),
            "ok\\x0dfake\\x08\\x7f\\x00"
        );
        // C1: CSI (U+009B) and OSC (U+009D) as single characters.
        assert_eq!(
            escape_controls("\u{9b}31m\u{9d}0;x"),
            "\\u{9b}31m\\u{9d}0;x"
        );
        // U+00A0 and up are text.
        assert_eq!(escape_controls("\u{a0}é"), "\u{a0}é");
    }

    #[test]
    fn no_control_character_survives() {
        let all: String = (0u32..0x200).filter_map(char::from_u32).collect();
        let out = escape_controls(&all);
        assert!(
            out.chars().all(|c| !escaped(c)),
            "{:?}",
            out.chars().filter(|&c| escaped(c)).collect::<Vec<_>>()
        );
        assert!(out.contains('\t') && out.contains('\n'));
    }
}
