//! The live display on stderr: one line per check, "…" while it runs, then ✓/✗ with its time. On a terminal the
//! line is rewritten in place; otherwise a plain line is printed when the check ends.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

/// A handle to one line.
#[derive(Debug, Clone, Copy)]
pub struct Line(usize);

#[derive(Debug)]
pub struct Progress {
    tty: bool,
    enabled: bool,
    color: bool,
    lines: Mutex<Vec<String>>,
}

impl Progress {
    pub fn new(enabled: bool, tty: bool, color: bool) -> Progress {
        Progress {
            tty,
            enabled,
            color,
            lines: Mutex::new(Vec::new()),
        }
    }

    /// Shows `label` as running.
    pub fn start(&self, label: &str) -> Line {
        let Ok(mut lines) = self.lines.lock() else {
            return Line(0);
        };
        // Labels and details name what a server said (URLs, errors): made safe before our own escapes are added.
        let label = crate::terminal::line(label, 200);
        lines.push(label.clone());
        let id = lines.len() - 1;
        if self.enabled && self.tty {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "  … {label}");
        }
        Line(id)
    }

    /// Marks the line done.
    pub fn finish(&self, line: Line, ok: bool, took: Duration, detail: &str) {
        if !self.enabled {
            return;
        }
        let Ok(lines) = self.lines.lock() else { return };
        let label = lines.get(line.0).cloned().unwrap_or_default();
        let mark = match (ok, self.color) {
            (true, true) => "\x1b[32m✓\x1b[0m",
            (false, true) => "\x1b[31m✗\x1b[0m",
            (true, false) => "✓",
            (false, false) => "✗",
        };
        let ms = took.as_millis();
        let detail = crate::terminal::line(detail, 300);
        let text = if detail.is_empty() {
            format!("  {mark} {label} ({ms} ms)")
        } else {
            format!("  {mark} {label} ({ms} ms) — {detail}")
        };
        let mut err = std::io::stderr().lock();
        if self.tty {
            let up = lines.len() - line.0;
            // Up to the line, rewrite it, back down.
            let _ = write!(err, "\x1b[{up}A\r\x1b[2K{text}\x1b[{up}B\r");
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }
}
