//! Text an app controls, made safe to show on the operator's terminal.
//!
//! An app chooses its output, the operations and schema names it sends (which reach the
//! audit), and the bytes of its binary (whose ELF interpreter reaches an install warning).
//! Printed raw, an escape sequence in any of them can move the cursor, erase lines, forge an
//! `allow` over a `deny`, retitle the window or, on some terminals, answer back. So every
//! control character (C0 and C1, DEL) and every bidirectional override is shown visibly,
//! as Rust writes them (`\x1b`, `\r`, `\u{202e}`), bytes that are not UTF-8 as `\xNN`, and
//! backslashes are left alone: escaping twice changes nothing. `--raw` on `app logs` and
//! `app run` skips this for piping.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Which of the harmless layout controls a kind of output keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// A field (name, operation, note): nothing, so it stays on its line.
    Nothing,
    /// A line of an app's output: tabs.
    Tab,
    /// A message of several lines: tabs and newlines.
    TabNewline,
}

/// Whether `c` must not reach a terminal as it is.
fn is_unsafe(c: char, keep: Keep) -> bool {
    match c {
        '\t' => keep == Keep::Nothing,
        '\n' => keep != Keep::TabNewline,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        // Bidirectional embeddings, overrides and isolates (Trojan Source), and the line and
        // paragraph separators some terminals break lines at.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}' => true,
        _ => false,
    }
}

/// Appends `c`, which [`is_unsafe`], as it is written in Rust source.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

fn escape_into(out: &mut String, text: &str, keep: Keep) {
    for c in text.chars() {
        if is_unsafe(c, keep) {
            push_escaped(out, c);
        } else {
            out.push(c);
        }
    }
}

fn escape_with(text: &str, keep: Keep) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c, keep)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    escape_into(&mut out, text, keep);
    Cow::Owned(out)
}

/// One field (a name, an operation, a note): every control character escaped, newlines
/// and tabs included, so the field stays on its line.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_with(text, Keep::Nothing)
}

/// One line of an app's output (without its newline): like [`escape`], but tabs are kept.
pub fn escape_line(text: &str) -> Cow<'_, str> {
    escape_with(text, Keep::Tab)
}

/// A message that may span lines (an error from the daemon): like [`escape_line`], but
/// newlines are kept.
pub fn escape_text(text: &str) -> Cow<'_, str> {
    escape_with(text, Keep::TabNewline)
}

/// One line of an app's log, as the bytes the app wrote (without the newline): like
/// [`escape_line`], and each byte that is not part of valid UTF-8 shown as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return escape_line(text);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        escape_into(&mut out, chunk.valid(), Keep::Tab);
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    Cow::Owned(out)
}

/// A line of JSON (the audit with `--json`): the characters JSON allows raw but a terminal
/// acts on (C1 controls, DEL, bidirectional overrides) become `\uXXXX` escapes, so the line
/// stays valid JSON with the same meaning; raw C0 bytes (invalid in JSON) likewise. Newlines
/// and tabs are kept: in valid JSON they are only whitespace between tokens (pretty output).
pub fn escape_json(line: &str) -> Cow<'_, str> {
    if !line.chars().any(|c| is_unsafe(c, Keep::TabNewline)) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if is_unsafe(c, Keep::TabNewline) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_never_sent() {
        // The forged line of the attacker's review: up one line, erase it, carriage return.
        let forged = "query\u{1b}[1A\u{1b}[2K\rallow";
        assert_eq!(escape(forged), "query\\x1b[1A\\x1b[2K\\rallow");
        assert_eq!(
            escape("a\u{9b}31m\u{202e}b\u{7f}"),
            "a\\u{9b}31m\\u{202e}b\\x7f"
        );
        assert_eq!(escape("two\nlines\t"), "two\\nlines\\t");
        assert_eq!(escape_line("col\tcol\u{7}"), "col\tcol\\x07");
        assert_eq!(escape_text("one\ntwo\u{1b}[2K"), "one\ntwo\\x1b[2K");
        assert!(matches!(escape("plain ünïcode ✓"), Cow::Borrowed(_)));
        let once = escape(forged).into_owned();
        assert_eq!(escape(&once), once, "escaping twice changes nothing");
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let shown = escape(&c.to_string()).into_owned();
            assert!(
                !shown.chars().any(|s| s.is_control()),
                "{c:?} shown as {shown:?}"
            );
        }
    }

    #[test]
    fn json_lines_stay_json() {
        let line = r#"{"operation":"q"}"#.replace('q', "q\u{9b}\u{202e}");
        let shown = escape_json(&line);
        assert_eq!(shown, r#"{"operation":"q\u009b\u202e"}"#);
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(v["operation"], "q\u{9b}\u{202e}");
        // serde_json already escapes C0, so an audit line needs nothing more for those.
        let audit = serde_json::json!({ "operation": "\u{1b}[2K" }).to_string();
        assert!(!audit.contains('\u{1b}'));
        assert!(matches!(escape_json(&audit), Cow::Borrowed(_)));
        // Pretty output (`--json`) keeps its layout and stays JSON.
        let pretty =
            serde_json::to_string_pretty(&serde_json::json!({ "note": "x\u{1b}\u{9b}\n" }))
                .unwrap();
        let shown = escape_json(&pretty);
        assert!(shown.contains('\n') && !shown.contains('\u{9b}'));
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(v["note"], "x\u{1b}\u{9b}\n");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(escape_bytes(b"plain\ttab"), "plain\ttab");
        assert_eq!(
            escape_bytes(b"a\xff\x1b[2K\xc3\xa9\xe2\x80\xae\xc3"),
            "a\\xff\\x1b[2K\u{e9}\\u{202e}\\xc3"
        );
        // A C1 control written as its single byte is not UTF-8: shown as hex, never sent.
        assert_eq!(escape_bytes(b"\x9b31m"), "\\x9b31m");
        for b in 0u8..=255 {
            let shown = escape_bytes(&[b, b'.']).into_owned();
            assert!(
                !shown.chars().any(|s| s.is_control() && s != '\t'),
                "{b:#x} shown as {shown:?}"
            );
        }
    }
}
