//! Every error of a configuration file in one run, each with its line, its key and the form expected.
//!
//! serde stops at the first error. To report the next ones, the entry at fault is blanked (its lines replaced by
//! spaces, so every later line keeps its number) and the text parsed again, up to [`MAX_ERRORS`] times. This stops
//! where blanking cannot help: an error on a table header (a missing field, a bad `[section]`) or one that does not
//! move. The messages are serde's, reworded where they name Rust types (`expected u16`) rather than the form a
//! person writes.

use std::fmt;

use serde::de::DeserializeOwned;

/// Enough for any real file; bounds the work on a hostile one (each round parses the whole text).
pub const MAX_ERRORS: usize = 50;

/// One error in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub line: usize,
    pub column: usize,
    /// `section.key` where the error is in an entry (`None` for a syntax error outside one).
    pub key: Option<String>,
    pub message: String,
}

impl FileError {
    /// `key: message`, without the position.
    pub fn what(&self) -> String {
        match &self.key {
            Some(key) => format!("{key}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.what())
    }
}

/// Parses `text` as a `T`; on failure, every error found (at least one). `example` gives, for a key path, a value
/// to show as the expected form (the default).
#[cfg(test)]
pub fn parse_all<T: DeserializeOwned>(
    text: &str,
    example: impl Fn(&str) -> Option<String>,
) -> Result<T, Vec<FileError>> {
    match parse_partial(text, example) {
        (Some(parsed), errors) if errors.is_empty() => Ok(parsed),
        (_, errors) => Err(errors),
    }
}

/// Every error found, and what the entries without one parse to (`None` when blanking could not get past an
/// error), for checks that go on after the first error.
pub fn parse_partial<T: DeserializeOwned>(
    text: &str,
    example: impl Fn(&str) -> Option<String>,
) -> (Option<T>, Vec<FileError>) {
    let mut text = text.to_owned();
    let mut errors: Vec<FileError> = Vec::new();
    while errors.len() < MAX_ERRORS {
        let e = match toml::from_str::<T>(&text) {
            Ok(parsed) => return (Some(parsed), errors),
            Err(e) => e,
        };
        let span = e.span();
        let at = span.as_ref().map_or(0, |s| s.start);
        let (line, column) = position(&text, at);
        let key = span.as_ref().and_then(|_| key_at(&text, at));
        let mut message = humanize(e.message());
        if let Some((field, form)) = key.as_deref().and_then(|k| Some((k.rsplit('.').next()?, example(k)?))) {
            message.push_str(&format!(" (e.g. {field} = {form})"));
        }
        let error = FileError {
            line,
            column,
            key,
            message,
        };
        // The same error again means blanking did not remove its cause.
        if errors.last() == Some(&error) {
            break;
        }
        errors.push(error);
        let Some(span) = span else { break };
        if !blank_entry(&mut text, span) {
            break;
        }
    }
    (None, errors)
}

/// 1-based line and column (in characters) of byte offset `at`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// The byte range of the whole lines holding `span`.
fn lines_of(text: &str, span: &std::ops::Range<usize>) -> (usize, usize) {
    let start = text.get(..span.start).and_then(|s| s.rfind('\n')).map_or(0, |i| i + 1);
    let end = text
        .get(span.end..)
        .and_then(|s| s.find('\n'))
        .map_or(text.len(), |i| span.end + i);
    (start, end)
}

/// `section.key` of the entry holding byte offset `at`: the last table header before it, and the key of the line
/// holding it (or of the line above, for a value spread over lines).
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_end = text.get(at..).and_then(|s| s.find('\n')).map_or(text.len(), |i| at + i);
    let upto_line = text.get(..line_end)?;
    let mut key = None;
    let mut section = None;
    for line in upto_line.lines().rev() {
        let line = line.trim();
        if line.starts_with('[') {
            section = Some(line.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
            break;
        }
        if key.is_none() {
            if let Some((k, _)) = line.split_once('=') {
                key = Some(k.trim().trim_matches('"').to_owned());
            }
        }
    }
    match (section, key) {
        (Some(s), Some(k)) => Some(format!("{s}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(s), None) => Some(s),
        (None, None) => None,
    }
}

/// Replaces the lines of the entry at `span` by spaces (newlines kept). False when that would not help: a table
/// header, or lines already blank.
fn blank_entry(text: &mut String, span: std::ops::Range<usize>) -> bool {
    let (start, end) = lines_of(text, &span);
    let Some(lines) = text.get(start..end) else {
        return false;
    };
    let trimmed = lines.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('[') {
        return false;
    }
    let blank: String = lines.chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
    text.replace_range(start..end, &blank);
    true
}

/// serde's wording, with the Rust types it names said as a person writes them.
pub fn humanize(message: &str) -> String {
    let message = message.trim();
    // "invalid type: string \"x\", expected u16" / "invalid value: integer `70000`, expected u16"
    for (prefix, lead) in [("invalid type: ", "got "), ("invalid value: ", "")] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((got, expected)) = rest.rsplit_once(", expected ") else {
            continue;
        };
        let got = got
            .replace("string ", "the text ")
            .replace("integer `", "")
            .replace("floating point `", "")
            .replace("boolean `", "")
            .replace('`', "")
            .replace("sequence", "a list")
            .replace("map", "a table");
        let expected = expected_form(expected);
        return if lead.is_empty() {
            format!("{got} is out of range: expected {expected}")
        } else {
            format!("{lead}{got}; expected {expected}")
        };
    }
    message.to_owned()
}

fn expected_form(rust: &str) -> String {
    match rust.trim() {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "text in quotes".into(),
        "a sequence" => "a list, e.g. [\"…\"]".into(),
        "struct Config" => "a TOML table".into(),
        other if other.starts_with("struct ") => "a table".into(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        a: A,
        #[serde(default)]
        b: A,
    }

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct A {
        port: u16,
        list: Vec<String>,
        flag: bool,
    }

    fn example(key: &str) -> Option<String> {
        (key == "a.port").then(|| "3478".to_owned())
    }

    #[test]
    fn every_error_is_reported_with_line_and_key() {
        let text = "[a]\nport = \"x\"\nflag = 3\nlist = [\n  \"ok\",\n  5,\n]\nnope = 1\n[b]\nport = 70000\n";
        let errors = parse_all::<Doc>(text, example).unwrap_err();
        let got: Vec<(usize, Option<&str>)> = errors.iter().map(|e| (e.line, e.key.as_deref())).collect();
        assert_eq!(
            got,
            [
                (2, Some("a.port")),
                (3, Some("a.flag")),
                (6, Some("a.list")),
                (8, Some("a.nope")),
                (10, Some("b.port"))
            ],
            "{errors:#?}"
        );
        assert_eq!(
            errors[0].message,
            "got the text \"x\"; expected a whole number from 0 to 65535 (e.g. port = 3478)"
        );
        assert_eq!(errors[1].message, "got 3; expected true or false");
        assert!(errors[3].message.contains("unknown field `nope`"), "{}", errors[3]);
        assert_eq!(
            errors[4].message,
            "70000 is out of range: expected a whole number from 0 to 65535"
        );
        assert_eq!(
            errors[0].to_string(),
            format!("line 2, column 8: a.port: {}", errors[0].message)
        );
    }

    #[test]
    fn a_good_file_parses_and_a_syntax_error_is_one_error() {
        let doc: Doc = parse_all("[a]\nport = 1\n", |_| None).unwrap();
        assert_eq!(doc.a.port, 1);
        let errors = parse_all::<Doc>("[a\nport = 1\n", |_| None).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, 1);
    }

    #[test]
    fn stops_at_a_hostile_number_of_errors() {
        let text: String = (0..500).map(|i| format!("k{i} = 1\n")).collect();
        let errors = parse_all::<A>(&text, |_| None).unwrap_err();
        assert_eq!(errors.len(), MAX_ERRORS);
    }
}
