//! What reaches the terminal. The doctor prints what a server said (an error's reason phrase, an HTTP answer, the
//! host names of its ICE URLs), and a server is not trusted: control sequences in that text could clear the screen,
//! move the cursor to overwrite a line with a fake verdict, or set the window's title. Every line the doctor writes
//! for people goes through [`safe`]: control characters, escape sequences and bidirectional overrides are dropped,
//! except the few colour codes [`crate::report::Style`] and the progress lines write themselves.

/// The escape sequences the doctor's own output uses: green, red, yellow, bold, reset. Anything else is dropped. A
/// server's text could carry these too; they only colour text (none hides it or moves the cursor).
const OURS: [&str; 5] = ["\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m"];

/// `text` with control characters (C0 but newline, DEL, C1), escape sequences other than [`OURS`] when
/// `keep_colours`, and bidirectional overrides and isolates removed.
pub fn safe(text: &str, keep_colours: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b' {
            if let Some(ours) = OURS.iter().find(|o| keep_colours && rest.starts_with(**o)) {
                out.push_str(ours);
                rest = rest.get(ours.len()..).unwrap_or_default();
            } else {
                rest = past_escape(rest);
            }
            continue;
        } else if c == '\n' || !is_unsafe(c) {
            out.push(c);
        }
        rest = rest.get(c.len_utf8()..).unwrap_or_default();
    }
    out
}

/// `text` (starting with ESC) past its escape sequence: a CSI (`ESC [` parameters, then a final byte), an OSC or
/// other string (`ESC ]`, `P`, `X`, `^`, `_` up to BEL or `ESC \`), else ESC and one character.
fn past_escape(text: &str) -> &str {
    let mut chars = text.char_indices().skip(1);
    let end = match chars.next() {
        Some((_, '[')) => chars
            .find(|(_, c)| ('\x40'..='\x7e').contains(c))
            .map(|(i, c)| i + c.len_utf8()),
        Some((_, ']' | 'P' | 'X' | '^' | '_')) => {
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '\x07' {
                    end = Some(i + 1);
                    break;
                }
                if c == '\x1b' {
                    end = Some(chars.next().map_or(i + 1, |(j, c)| j + c.len_utf8()));
                    break;
                }
            }
            end
        }
        Some((i, c)) => Some(i + c.len_utf8()),
        None => None,
    };
    end.and_then(|e| text.get(e..)).unwrap_or_default()
}

/// A server's text made one printable line of at most `max` characters (an ellipsis says it was cut).
pub fn line(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' || c == '\t' { ' ' } else { c })
        .filter(|c| !is_unsafe(*c))
        .collect();
    match clean.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", clean.get(..cut).unwrap_or_default()),
        None => clean,
    }
}

fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_s_escape_sequences_do_not_reach_the_terminal() {
        let hostile =
            "401 \x1b[2J\x1b[H\x1b]0;owned\x07✓ works\x1b[8m hidden\r\u{202e}gnirts\u{7f}\u{9b}31m \x1b]2;t\x1b\\x";
        let shown = safe(hostile, true);
        assert_eq!(shown, "401 ✓ works hiddengnirts31m x");
        // Our own colours survive when on, and go with everything else when off; a cut sequence ends the text.
        let ours = "\x1b[1mVerdict\x1b[0m \x1b[32mworks\x1b[0m\n";
        assert_eq!(safe(ours, true), ours);
        assert_eq!(safe(ours, false), "Verdict works\n");
        assert_eq!(safe("a\x1b[12", true), "a");
        assert_eq!(safe("a\x1b", true), "a");
    }

    #[test]
    fn a_server_s_text_is_one_line_of_bounded_length() {
        assert_eq!(line("bad\r\nrequest\tnow", 100), "bad  request now");
        let long = "é".repeat(500);
        let cut = line(&long, 200);
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
        assert_eq!(line("\x1b[2Jok", 10), "[2Jok", "ESC dropped: nothing left to act on");
    }
}
