//! Masking of secret values in text that leaves a machine or is stored.
//!
//! A [`Masker`] is built from named secrets (e.g. the credentials a session
//! accepted: `ANTHROPIC_API_KEY` → its value). It replaces every occurrence
//! of a value, and of the value's common encodings, with a marker naming
//! the secret: `[masked:ANTHROPIC_API_KEY]`. The machine masks every event
//! of a session before it is written to its outbox; the control plane can
//! mask again with the same code before it stores an event.
//!
//! What is covered, for a value `v` (its UTF-8 bytes), each as a substring
//! anywhere in the text ([`encodings`] lists them):
//! - `v` as is;
//! - `v` JSON-string-escaped, as serde_json writes it, with every non-ASCII
//!   character as `\uXXXX`, and with `/` escaped as `\/`;
//! - base64 of `v`, standard and URL-safe alphabets, with and without
//!   padding; and, because the base64 of a longer text that contains `v`
//!   depends on where `v` starts, the characters of that encoding that only
//!   `v`'s bits decide for each of the three alignments (start offset 0, 1
//!   or 2 modulo 3). Inside a larger encoded blob the marker replaces that
//!   core; up to two characters at either end, which also carry bits of the
//!   neighbouring bytes, stay (at most 10 bits of `v` at each end);
//! - percent-encoding of `v` (every byte outside `A-Za-z0-9-._~` as `%XX`),
//!   with upper- and lower-case hex digits, and form encoding (space as `+`);
//! - hex of `v`'s bytes, lower- and upper-case.
//!
//! What is not covered: other or nested encodings (base64 of the JSON
//! escape, gzip, URL-encoding of base64, …), a value split across two
//! separately masked strings (two chunks of agent text), a value changed in
//! any other way (reversed, partly printed, spaced out). Values shorter than
//! [`MIN_SECRET_BYTES`] are not masked at all ([`Masker::too_short`] names
//! them): masking a short value such as `a` would wreck every message.
//!
//! Markers contain only `[`, `]`, `:` and `A-Za-z0-9_.-`, so a marker put
//! into the contents of a JSON string (e.g. an event's `raw_json`) keeps it
//! valid JSON: the replaced text is a whole value or encoding, never half of
//! an escape sequence, and the marker needs no escaping.
//!
//! Cost: one Aho-Corasick automaton over all patterns; masking a string is
//! one pass over it, and a string without any match is not copied.

mod event;

use std::borrow::Cow;
use std::collections::HashSet;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// Values shorter than this (in bytes) are not masked.
pub const MIN_SECRET_BYTES: usize = 8;

/// The longest secret name kept in a marker (longer names are cut).
const MAX_MARKER_NAME: usize = 64;

/// Re-scans after a replacement, at most (see [`Masker::mask_bytes`]).
const MAX_PASSES: usize = 4;

/// The masker could not be built (an automaton too large for the values).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the secret masker: {0}")]
pub struct MaskerError(String);

/// Replaces named secret values and their encodings with markers. The
/// default masker masks nothing.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    searcher: Option<AhoCorasick>,
    /// The marker of each pattern, by pattern index.
    markers: Vec<String>,
    /// The secrets masked, by name.
    names: Vec<String>,
    /// The secrets too short to mask, by name.
    too_short: Vec<String>,
    /// The longest pattern's length in bytes.
    longest: usize,
}

impl Masker {
    /// A masker for `(name, value)` pairs. Values shorter than
    /// [`MIN_SECRET_BYTES`] are skipped (see [`Self::too_short`]). Where two
    /// secrets share a pattern, the first one's marker is used.
    pub fn new<N, V>(secrets: impl IntoIterator<Item = (N, V)>) -> Result<Masker, MaskerError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut patterns: Vec<String> = Vec::new();
        let mut markers: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut names = Vec::new();
        let mut too_short = Vec::new();
        let secrets: Vec<(String, String)> = secrets
            .into_iter()
            .map(|(n, v)| (n.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        let all_markers: Vec<String> = secrets.iter().map(|(name, _)| marker(name)).collect();
        for ((name, value), marker) in secrets.iter().zip(&all_markers) {
            if value.len() < MIN_SECRET_BYTES {
                too_short.push(name.clone());
                continue;
            }
            names.push(name.clone());
            for pattern in encodings(value) {
                // A pattern found inside a marker would be masked again in
                // every pass; such a value (a piece of a marker's text) is
                // no secret anyway.
                if all_markers.iter().any(|m| m.contains(pattern.as_str())) {
                    continue;
                }
                if seen.insert(pattern.clone()) {
                    patterns.push(pattern);
                    markers.push(marker.clone());
                }
            }
        }
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let searcher = match patterns.is_empty() {
            true => None,
            false => Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .map_err(|e| MaskerError(e.to_string()))?,
            ),
        };
        Ok(Masker {
            searcher,
            markers,
            names,
            too_short,
            longest,
        })
    }

    /// True when this masker masks nothing.
    pub fn is_empty(&self) -> bool {
        self.searcher.is_none()
    }

    /// The names of the secrets masked.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The names of the secrets whose values were too short to mask.
    pub fn too_short(&self) -> &[String] {
        &self.too_short
    }

    /// `text` with every covered pattern replaced by its marker (borrowed
    /// when nothing matched).
    pub fn mask_str<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(masked) = self.masked(text.as_bytes()) else {
            return Cow::Borrowed(text);
        };
        // Patterns are whole UTF-8 strings, so a match never starts or ends
        // inside a character and the result is UTF-8; lossy is only a guard.
        Cow::Owned(match String::from_utf8(masked) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Masks `text` in place; true when anything was replaced.
    pub fn mask_string(&self, text: &mut String) -> bool {
        match self.mask_str(text) {
            Cow::Borrowed(_) => false,
            Cow::Owned(masked) => {
                *text = masked;
                true
            }
        }
    }

    /// Masks `bytes` in place (e.g. a blob); true when anything was replaced.
    pub fn mask_bytes(&self, bytes: &mut Vec<u8>) -> bool {
        match self.masked(bytes) {
            Some(masked) => {
                *bytes = masked;
                true
            }
            None => false,
        }
    }

    /// The masked copy of `bytes`, or `None` when nothing matched.
    ///
    /// One leftmost-longest pass replaces every occurrence it meets. A
    /// pattern can then only remain where it overlaps a marker (a value
    /// that holds `]` followed by text, say); further passes, at most
    /// [`MAX_PASSES`], take those too. No pattern occurs inside a marker
    /// ([`Masker::new`] drops such patterns), so every pass only replaces
    /// text of the input and the passes end.
    fn masked(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let searcher = self.searcher.as_ref()?;
        let mut current: Option<Vec<u8>> = None;
        for _ in 0..MAX_PASSES {
            let input = current.as_deref().unwrap_or(bytes);
            let mut out = Vec::with_capacity(input.len());
            let mut last = 0;
            let mut replaced = false;
            for m in searcher.find_iter(input) {
                if m.end() <= last {
                    continue; // inside the previous match, widened
                }
                let (start, end) = outside_json_escapes(input, last, m.start().max(last), m.end());
                out.extend_from_slice(&input[last..start]);
                out.extend_from_slice(self.markers[m.pattern().as_usize()].as_bytes());
                last = end;
                replaced = true;
            }
            if !replaced {
                break;
            }
            out.extend_from_slice(&input[last..]);
            let clean = !searcher.is_match(&out);
            current = Some(out);
            if clean {
                break;
            }
        }
        current
    }
}

/// Widens the match `start..end` (found at or after `floor`, where the text
/// still to copy starts) so that it neither starts nor ends inside a JSON
/// escape sequence (`\x`, `\uXXXX`): masking the contents of a JSON
/// string then leaves a valid one. A value with a backslash, escaped in
/// JSON as `\\`, could otherwise match from the second backslash on and
/// leave the first one to escape the marker's `[`.
fn outside_json_escapes(input: &[u8], floor: usize, start: usize, end: usize) -> (usize, usize) {
    let start = escape_covering(input, floor, start).unwrap_or(start);
    let end = match escape_covering(input, start, end) {
        Some(escape) => escape_end(input, escape).max(end),
        None => end,
    };
    (start, end)
}

/// The start of an escape sequence that begins in `floor..pos` and runs
/// past `pos`, if any (one starts at most 5 bytes back: `\uXXXX`).
fn escape_covering(input: &[u8], floor: usize, pos: usize) -> Option<usize> {
    (floor..pos)
        .rev()
        .take(6)
        .find(|&p| input[p] == b'\\' && starts_escape(input, floor, p) && escape_end(input, p) > pos)
}

/// Whether the backslash at `p` starts an escape: an even number of
/// backslashes precede it (counted from `floor`).
fn starts_escape(input: &[u8], floor: usize, p: usize) -> bool {
    let run = input[floor..p].iter().rev().take_while(|&&b| b == b'\\').count();
    run % 2 == 0
}

/// Where the escape sequence starting at `p` ends: `\uXXXX`, else the
/// backslash and the (whole) character after it.
fn escape_end(input: &[u8], p: usize) -> usize {
    let hex = input.get(p + 2..p + 6);
    if input.get(p + 1) == Some(&b'u') && hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
        return p + 6;
    }
    let next = match input.get(p + 1) {
        None => 0,
        Some(&b) if b < 0x80 => 1,
        Some(&b) if b >= 0xF0 => 4,
        Some(&b) if b >= 0xE0 => 3,
        Some(_) => 2,
    };
    (p + 1 + next).min(input.len())
}

/// Masks a byte stream read in chunks (a child's stderr): a value cut in
/// two by a chunk boundary is masked too. Up to the longest pattern's
/// length less one byte is held back until the next chunk or
/// [`StreamMasker::finish`].
#[derive(Debug)]
pub struct StreamMasker {
    masker: Masker,
    pending: Vec<u8>,
}

impl StreamMasker {
    pub fn new(masker: Masker) -> StreamMasker {
        StreamMasker {
            masker,
            pending: Vec::new(),
        }
    }

    /// The masked bytes that can be written now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let Some(searcher) = &self.masker.searcher else {
            return std::mem::take(&mut self.pending);
        };
        // Every occurrence that starts before `cut` ends inside `pending`;
        // one that starts later may go on in the next chunk, so it waits.
        let mut cut = self.pending.len().saturating_sub(self.masker.longest.saturating_sub(1));
        for m in searcher.find_iter(&self.pending) {
            if m.start() >= cut {
                break;
            }
            cut = cut.max(m.end());
        }
        let rest = self.pending.split_off(cut);
        let mut ready = std::mem::replace(&mut self.pending, rest);
        self.masker.mask_bytes(&mut ready);
        ready
    }

    /// The masked rest, at the end of the stream.
    pub fn finish(mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.pending);
        self.masker.mask_bytes(&mut rest);
        rest
    }
}

/// The marker that replaces the secret `name`: `[masked:NAME]`, with any
/// character outside `A-Za-z0-9_.-` of the name as `_` (a marker never
/// needs escaping in JSON, a URL or a shell word).
pub fn marker(name: &str) -> String {
    let safe: String = name
        .chars()
        .take(MAX_MARKER_NAME)
        .map(|c| match c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            true => c,
            false => '_',
        })
        .collect();
    format!("[masked:{safe}]")
}

/// Every form of `value` a [`Masker`] replaces (see the module doc),
/// without duplicates; empty for a value shorter than [`MIN_SECRET_BYTES`].
pub fn encodings(value: &str) -> Vec<String> {
    if value.len() < MIN_SECRET_BYTES {
        return Vec::new();
    }
    let bytes = value.as_bytes();
    let mut forms = vec![value.to_owned()];
    forms.extend(json_escapes(value));
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(bytes));
    }
    for offset in 0..3 {
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            forms.push(base64_core(engine, bytes, offset));
        }
    }
    forms.push(percent_encode(bytes, false, false));
    forms.push(percent_encode(bytes, true, false));
    forms.push(percent_encode(bytes, false, true));
    forms.push(hex::encode(bytes));
    forms.push(hex::encode_upper(bytes));
    let mut unique = Vec::with_capacity(forms.len());
    for form in forms {
        if !form.is_empty() && !unique.contains(&form) {
            unique.push(form);
        }
    }
    unique
}

/// The contents of a JSON string holding `value`: as serde_json writes it,
/// with non-ASCII as `\uXXXX`, and with `/` as `\/`.
fn json_escapes(value: &str) -> Vec<String> {
    let plain = serde_json::to_string(value).unwrap_or_default();
    let plain = plain
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned();
    let mut ascii = String::with_capacity(plain.len());
    for c in plain.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    let slashes = plain.replace('/', "\\/");
    vec![plain, ascii, slashes]
}

/// The base64 characters (no padding) that only `bytes` decide when they
/// start `offset` bytes (0–2) into a group of three: character `i` holds
/// bits `6i..6i+6` of the stream, and `bytes` hold bits `8·offset..8·(offset+len)`.
fn base64_core(engine: &base64::engine::GeneralPurpose, bytes: &[u8], offset: usize) -> String {
    let mut shifted = vec![0u8; offset];
    shifted.extend_from_slice(bytes);
    let encoded = engine.encode(&shifted);
    let first = (8 * offset).div_ceil(6);
    let end = (8 * (offset + bytes.len())) / 6;
    encoded.get(first..end).unwrap_or_default().to_owned()
}

/// Percent-encoding of every byte outside RFC 3986's unreserved set, with
/// lower-case hex digits when `lower`, and a space as `+` when `form`.
fn percent_encode(bytes: &[u8], lower: bool, form: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else if form && b == b' ' {
            out.push('+');
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-ant-api03-Zx9/yQ+r_Tu8=w";

    fn masker() -> Masker {
        Masker::new([("ANTHROPIC_API_KEY", KEY)]).unwrap()
    }

    #[test]
    fn the_value_and_its_encodings_become_the_marker() {
        let m = masker();
        let marker = "[masked:ANTHROPIC_API_KEY]";
        assert_eq!(m.mask_str(&format!("key={KEY}!")), format!("key={marker}!"));
        for form in encodings(KEY) {
            let text = format!("<{form}>");
            assert_eq!(m.mask_str(&text), format!("<{marker}>"), "form {form}");
        }
        let b64 = STANDARD.encode(KEY);
        assert!(encodings(KEY).contains(&b64));
        assert!(encodings(KEY).contains(&hex::encode(KEY)));
        assert!(encodings(KEY).contains(&"sk-ant-api03-Zx9%2FyQ%2Br_Tu8%3Dw".to_owned()));
        assert!(encodings(KEY).contains(&"sk-ant-api03-Zx9\\/yQ+r_Tu8=w".to_owned()));
    }

    #[test]
    fn base64_of_a_longer_text_is_masked_at_every_alignment() {
        let m = masker();
        for prefix in ["", "a", "ab", "abc", "export X="] {
            for suffix in ["", "\n", "\nmore text after the key"] {
                let text = format!("{prefix}{KEY}{suffix}");
                for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
                    let encoded = engine.encode(&text);
                    let masked = m.mask_str(&encoded);
                    assert!(
                        masked.contains("[masked:ANTHROPIC_API_KEY]"),
                        "{prefix:?}{suffix:?}: {masked}"
                    );
                    let kept = masked.replace("[masked:ANTHROPIC_API_KEY]", "");
                    // At most the prefix's, the suffix's and two boundary
                    // characters at each end of the core stay.
                    let around = engine.encode(prefix).len() + engine.encode(suffix).len() + 4 + 4;
                    assert!(kept.len() <= around, "{prefix:?}{suffix:?}: {masked}");
                }
            }
        }
    }

    #[test]
    fn json_stays_valid_and_decodes_to_the_marker() {
        let m = Masker::new([("OPENAI_API_KEY", "sk-proj \"quoted\" \\ é/ü")]).unwrap();
        let raw = serde_json::json!({
            "content": [{"type": "text", "text": "the key is sk-proj \"quoted\" \\ é/ü, ok"}],
        })
        .to_string();
        let masked = m.mask_str(&raw);
        let value: serde_json::Value = serde_json::from_str(&masked).unwrap();
        assert_eq!(value["content"][0]["text"], "the key is [masked:OPENAI_API_KEY], ok");
    }

    #[test]
    fn a_match_never_cuts_a_json_escape() {
        // `\/value` (the `\/` escape form of a value) inside a JSON string
        // is `\\/value`: its match starts at the second backslash, which
        // must not be left to the first one.
        let value = "/!ééüAAp😀!é0!#>";
        let m = Masker::new([("K", value)]).unwrap();
        let text = format!("a \\{value} b");
        let json = serde_json::to_string(&text).unwrap();
        let masked = m.mask_str(&json);
        let decoded: String = serde_json::from_str(&masked).unwrap();
        assert_eq!(decoded, "a [masked:K] b");
        // A match ending in a backslash takes the escaped character too,
        // and one inside `\uXXXX` takes the whole escape.
        let m = Masker::new([("K", "abcdefg\\"), ("J", "00e9-secret")]).unwrap();
        let json = serde_json::to_string("abcdefg\\x").unwrap();
        let masked = m.mask_str(&json);
        assert!(serde_json::from_str::<String>(&masked).is_ok(), "{masked}");
        let masked = m.mask_str("\"\\u00e9-secret\"");
        assert_eq!(masked, "\"[masked:J]\"");
    }

    #[test]
    fn short_values_are_not_masked_and_are_named() {
        let m = Masker::new([("SHORT", "a"), ("ALSO_SHORT", "1234567"), ("OK", "12345678")]).unwrap();
        assert_eq!(m.too_short(), ["SHORT", "ALSO_SHORT"]);
        assert_eq!(m.names(), ["OK"]);
        assert_eq!(m.mask_str("a 1234567 12345678"), "a 1234567 [masked:OK]");
        assert!(encodings("1234567").is_empty());
        let none = Masker::new([("SHORT", "a")]).unwrap();
        assert!(none.is_empty());
        assert!(matches!(none.mask_str("a"), Cow::Borrowed("a")));
        assert!(Masker::default().is_empty());
    }

    #[test]
    fn nothing_matched_means_nothing_copied() {
        let m = masker();
        assert!(matches!(m.mask_str("nothing secret here"), Cow::Borrowed(_)));
        let mut text = "nothing".to_owned();
        assert!(!m.mask_string(&mut text));
        let mut bytes = format!("\x00\u{ff}{KEY}").into_bytes();
        assert!(m.mask_bytes(&mut bytes));
        assert_eq!(bytes, "\x00\u{ff}[masked:ANTHROPIC_API_KEY]".as_bytes());
    }

    #[test]
    fn a_stream_is_masked_across_chunk_boundaries() {
        let text = format!("line one\nkey {KEY} and {} end\n", STANDARD.encode(KEY)).repeat(3);
        for size in [1, 2, 3, 7, 16, 1000] {
            let mut stream = StreamMasker::new(masker());
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                out.extend(stream.push(chunk));
            }
            out.extend(stream.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                masker().mask_str(&text),
                "chunks of {size}"
            );
        }
        let mut plain = StreamMasker::new(Masker::default());
        assert_eq!(plain.push(b"abc"), b"abc");
        assert!(plain.finish().is_empty());
    }

    #[test]
    fn markers_need_no_escaping() {
        assert_eq!(marker("ANTHROPIC_API_KEY"), "[masked:ANTHROPIC_API_KEY]");
        assert_eq!(marker("a \"b\"\\c/é"), "[masked:a__b__c__]");
        assert_eq!(marker(&"N".repeat(100)), format!("[masked:{}]", "N".repeat(64)));
    }

    #[test]
    fn the_longer_of_two_overlapping_secrets_wins_and_both_are_masked() {
        let m = Masker::new([("A", "abcdefgh"), ("B", "abcdefghijkl")]).unwrap();
        assert_eq!(m.mask_str("abcdefghijkl abcdefgh"), "[masked:B] [masked:A]");
        let repeated = m.mask_str("abcdefghabcdefgh");
        assert_eq!(repeated, "[masked:A][masked:A]");
    }

    #[test]
    fn a_value_next_to_a_marker_is_masked_too() {
        // "x]yyyyyy" occurs only once "x" before it became part of a marker.
        let m = Masker::new([("K", "xxxxxxxx"), ("J", "K]yyyyyy")]).unwrap();
        assert_eq!(m.mask_str("xxxxxxxxyyyyyy"), "[masked:[masked:J]");
    }

    #[test]
    fn a_value_inside_a_marker_is_not_a_pattern() {
        let m = Masker::new([("ANTHROPIC_API_KEY", "ROPIC_API_KEY")]).unwrap();
        assert_eq!(m.mask_str("ROPIC_API_KEY"), "ROPIC_API_KEY");
        // Its other encodings are still masked.
        assert_eq!(m.mask_str(&hex::encode("ROPIC_API_KEY")), "[masked:ANTHROPIC_API_KEY]");
    }
}
