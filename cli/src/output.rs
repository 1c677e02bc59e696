//! Printing results: aligned tables and records for people, JSON or YAML for
//! scripts.

use std::io::{self, Write};

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use prost_types::Timestamp;
use serde_json::Value;

/// The `--output` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns and `key: value` records.
    Table,
    /// Pretty-printed JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Prints `data` as JSON or YAML, or the text `table` renders for the table
/// format.
pub fn emit(format: Format, data: &Value, table: impl FnOnce() -> String) -> Result<()> {
    let text = match format {
        Format::Table => table(),
        Format::Json => serde_json::to_string_pretty(data).context("cannot encode JSON")? + "\n",
        Format::Yaml => serde_norway::to_string(data).context("cannot encode YAML")?,
    };
    print(&text)
}

/// Writes to stdout; a closed pipe (e.g. `| head`) is not an error.
pub fn print(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

/// Columns aligned on the widest cell, separated by two spaces.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; empty cells show as `-`.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().map(|c| cell(&c)).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(width(c));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate().take(columns) {
                line.push_str(c);
                if i + 1 < columns {
                    line.push_str(&" ".repeat(widths[i] - width(c) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned; empty values show as `-`.
pub fn record(pairs: &[(&str, String)]) -> String {
    let key_width = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let pad = " ".repeat(key_width - width(key) + 1);
        out.push_str(&format!("{key}:{pad}{}\n", cell(value)));
    }
    out
}

/// Remote text made safe for a terminal: C0 and C1 control characters and
/// DEL (escape sequences that could move the cursor, retitle the window or
/// rewrite earlier lines) are dropped; newlines and tabs are kept when
/// `keep_lines`, else they become spaces. JSON and YAML output is never
/// passed through this: it is escaped by its encoder.
pub fn printable(text: &str, keep_lines: bool) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' | '\t' if keep_lines => Some(c),
            '\n' | '\t' | '\r' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// A table cell: one line, `-` when empty.
fn cell(text: &str) -> String {
    let text = printable(text, false);
    let text = text.trim();
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// A timestamp as RFC 3339 UTC to the second, or empty when unset.
pub fn time(ts: Option<&Timestamp>) -> String {
    ts.map(|t| {
        Timestamp {
            seconds: t.seconds,
            nanos: 0,
        }
        .to_string()
    })
    .unwrap_or_default()
}

/// A timestamp as RFC 3339 UTC with its full precision, or JSON null.
pub fn time_value(ts: Option<&Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_text_loses_its_control_characters() {
        let hostile = "ok\u{1b}]0;pwned\u{7}\u{1b}[2J\r\u{9b}31mred\u{7f}\tend\nnext";
        assert_eq!(printable(hostile, true), "ok]0;pwned[2J 31mred\tend\nnext");
        assert_eq!(printable(hostile, false), "ok]0;pwned[2J 31mred end next");
        assert_eq!(cell("\u{1b}[31m"), "[31m");
    }

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["ID", "NAME", "ROLE"]);
        table.row(["usr_1".to_owned(), "alice".to_owned(), "admin".to_owned()]);
        table.row(["usr_22".to_owned(), String::new(), "member".to_owned()]);
        assert_eq!(
            table.render(),
            "ID      NAME   ROLE\n\
             usr_1   alice  admin\n\
             usr_22  -      member\n"
        );
    }

    #[test]
    fn cells_are_single_lines() {
        let mut table = Table::new(&["A", "B"]);
        table.row(["x\ny".to_owned(), "ünï".to_owned()]);
        assert_eq!(table.render(), "A    B\nx y  ünï\n");
    }

    #[test]
    fn records_align_values() {
        assert_eq!(
            record(&[
                ("id", "rt_1".into()),
                ("machine token", "sk".into()),
                ("os", String::new())
            ]),
            "id:            rt_1\nmachine token: sk\nos:            -\n"
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let ts = Timestamp {
            seconds: 1_700_000_000,
            nanos: 5_000_000,
        };
        assert_eq!(time(Some(&ts)), "2023-11-14T22:13:20Z");
        assert_eq!(time_value(Some(&ts)), Value::String("2023-11-14T22:13:20.005Z".into()));
        assert_eq!(time(None), "");
    }
}
