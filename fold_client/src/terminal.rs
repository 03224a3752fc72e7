//! Text an app controls, made safe to show on the operator's terminal.
//!
//! An app chooses its output, the operations and schema names it sends (which reach the
//! audit), and the bytes of its binary (whose ELF interpreter reaches an install warning).
//! Printed raw, an escape sequence in any of them can move the cursor, erase lines, forge an
//! `allow` over a `deny`, retitle the window or, on some terminals, answer back. So every
//! control character (C0 and C1, DEL) and every bidirectional override is shown visibly,
//! as Rust writes them (`\x1b`, `\r`, `\u{202e}`), and backslashes are left alone: escaping
//! twice changes nothing. `--raw` on `app logs` and `app run` skips this for piping.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is. `keep_tab` keeps `\t` (app output).
fn is_unsafe(c: char, keep_tab: bool) -> bool {
    match c {
        '\t' => !keep_tab,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        // Bidirectional embeddings, overrides and isolates (Trojan Source), and the line and
        // paragraph separators some terminals break lines at.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}' => true,
        _ => false,
    }
}

fn escape_with(text: &str, keep_tab: bool) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c, keep_tab)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !is_unsafe(c, keep_tab) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// One field (a name, an operation, a note): every control character escaped, newlines
/// and tabs included, so the field stays on its line.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_with(text, false)
}

/// One line of an app's output (without its newline): like [`escape`], but tabs are kept.
pub fn escape_line(text: &str) -> Cow<'_, str> {
    escape_with(text, true)
}

/// A line of JSON (the audit with `--json`): the characters JSON allows raw but a terminal
/// acts on (C1 controls, DEL, bidirectional overrides) become `\uXXXX` escapes, so the line
/// stays valid JSON with the same meaning; raw C0 bytes (invalid in JSON) likewise.
pub fn escape_json(line: &str) -> Cow<'_, str> {
    if !line.chars().any(|c| is_unsafe(c, false)) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if is_unsafe(c, false) {
            out.push_str(&format!("\\u{:04x}", c as u32));
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
    }
}
