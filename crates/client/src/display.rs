//! Text that came from the network, made safe to print on a terminal.
//!
//! A Host (or whoever answers on a plain-TCP path, which has no authentication) chooses
//! the bytes of its `ERROR` lines, task names and list entries. Printed raw, escape
//! sequences in them would retitle the window, clear the screen or worse. Like OpenSSH
//! with server banners (`strnvis`), every control character is shown as a visible
//! escape, and long texts are cut.

/// At most this many characters of one network text are shown.
pub const MAX_SHOWN: usize = 512;

/// `text` with control characters (C0, DEL, C1) and bidirectional overrides made
/// visible (`\033`, `\u{202e}`), cut to [`MAX_SHOWN`] characters with a trailing `…`.
pub fn safe(text: &str) -> String {
    safe_cut(text, MAX_SHOWN)
}

/// [`safe`] with a caller's limit (table cells).
pub fn safe_cut(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 4));
    for (shown, c) in text.chars().enumerate() {
        if shown == max {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && (c.is_ascii_control()) => {
                out.push_str(&format!("\\{:03o}", c as u32));
            }
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that reorder what follows them on screen (Trojan Source).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_become_visible() {
        assert_eq!(safe("Task 1 not found."), "Task 1 not found.");
        assert_eq!(safe("\u{1b}]0;pwned\u{7}x"), "\\033]0;pwned\\007x");
        assert_eq!(safe("\u{1b}[2J\r\n\t"), "\\033[2J\\015\\012\\011");
        assert_eq!(safe("a\u{9b}b\u{202e}c\\"), "a\\u{9b}b\\u{202e}c\\\\");
        assert_eq!(safe("\u{7f}"), "\\177");
        let out = safe("x".repeat(2000).as_str());
        assert_eq!(out.chars().count(), MAX_SHOWN + 1);
        assert!(out.ends_with('…'));
        assert!(!safe("\u{1b}[31mred").chars().any(|c| c.is_control()));
    }
}
