//! Printing results: aligned tables and records for people, JSON or YAML for
//! scripts.

use std::io::{self, Write};

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use prost_types::Timestamp;
use serde_json::Value;

use crate::error::Failure;

/// The `--output` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns and `key: value` records.
    Table,
    /// The table with more columns (list commands); else as `table`.
    Wide,
    /// Only the ids, one per line (list, get, create, update and delete
    /// commands), e.g. for `xargs`.
    Name,
    /// Pretty-printed JSON.
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// Whether tables show their wide-only columns.
    pub fn wide(self) -> bool {
        self == Format::Wide
    }
}

/// Prints `data` as JSON or YAML, its ids (`-o name`), or the text `table`
/// renders for the table formats.
pub fn emit(format: Format, data: &Value, table: impl FnOnce() -> String) -> Result<()> {
    let text = match format {
        Format::Table | Format::Wide => table(),
        Format::Name => names(data)?,
        Format::Json => serde_json::to_string_pretty(data).context("cannot encode JSON")? + "\n",
        Format::Yaml => serde_norway::to_string(data).context("cannot encode YAML")?,
    };
    print(&text)
}

/// The `-o name` form of a command's JSON result: the `id` (else `name`) of
/// each item of a list, one per line; of a single resource, its `id`; of a
/// deletion, the id deleted.
fn names(data: &Value) -> Result<String> {
    let name = |item: &Value| {
        ["id", "name", "deleted"]
            .into_iter()
            .find_map(|key| item.get(key).and_then(Value::as_str))
            .map(|name| printable(name, false) + "\n")
    };
    let text = match data {
        Value::Array(items) => items.iter().map(name).collect::<Option<String>>(),
        item => name(item),
    };
    text.ok_or_else(|| {
        Failure::usage("-o name prints the ids of resources, and this command prints none: use -o table or -o json")
            .into()
    })
}

/// Writes to stdout; a closed pipe (e.g. `| head`) is not an error.
pub fn print(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

/// A table as kubectl prints one: a header row, columns aligned on the
/// widest cell and two spaces apart, no borders. Every table of omactl goes
/// through this one renderer.
pub struct Table {
    table: comfy_table::Table,
    /// How many columns show: the wide-only ones are left out unless asked.
    shown: usize,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self::with_wide(header, &[], false)
    }

    /// `header`, then, when `wide`, the wide-only columns `more`. Rows give
    /// the cells of every column; those of hidden columns are dropped.
    pub fn with_wide(header: &[&str], more: &[&str], wide: bool) -> Self {
        let mut table = comfy_table::Table::new();
        table.load_style(comfy_table::presets::NOTHING);
        let shown = header.len() + if wide { more.len() } else { 0 };
        table.set_header(header.iter().chain(more).take(shown).copied());
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
        Self { table, shown }
    }

    /// Adds a row; empty cells show as `-`.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.table
            .add_row(cells.into_iter().take(self.shown).map(|c| cell(&c)).collect::<Vec<_>>());
    }

    pub fn render(&self) -> String {
        let mut out = self.table.trim_fmt();
        out.push('\n');
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
    fn wide_columns_show_only_when_asked() {
        let rows = |wide| {
            let mut table = Table::with_wide(&["ID", "NAME"], &["OS"], wide);
            table.row(["rt_1".into(), "box".into(), "linux".into()]);
            table.row(["rt_22".into(), String::new(), String::new()]);
            table.render()
        };
        assert_eq!(rows(false), "ID     NAME\nrt_1   box\nrt_22  -\n");
        assert_eq!(rows(true), "ID     NAME  OS\nrt_1   box   linux\nrt_22  -     -\n");
        // No rows: the header alone.
        assert_eq!(Table::new(&["ID", "NAME"]).render(), "ID  NAME\n");
    }

    #[test]
    fn name_output_is_the_ids() {
        let list = serde_json::json!([{ "id": "agt_1", "spec": { "name": "x" } }, { "id": "agt_2" }]);
        assert_eq!(names(&list).unwrap(), "agt_1\nagt_2\n");
        assert_eq!(names(&serde_json::json!([])).unwrap(), "");
        assert_eq!(
            names(&serde_json::json!({ "id": "ses_1", "title": "t" })).unwrap(),
            "ses_1\n"
        );
        assert_eq!(names(&serde_json::json!({ "deleted": "rt_1" })).unwrap(), "rt_1\n");
        assert_eq!(
            names(&serde_json::json!([{ "name": "prod", "server": "s" }])).unwrap(),
            "prod\n"
        );
        let err = names(&serde_json::json!({ "code": "X", "setup_command": "…" })).unwrap_err();
        let failure = err.downcast_ref::<Failure>().unwrap();
        assert_eq!(failure.exit, crate::error::exit::USAGE);
        assert!(failure.message.contains("-o name"), "{}", failure.message);
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
