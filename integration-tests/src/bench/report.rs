//! The one table the bench prints (Markdown, so BENCHMARKS.md can hold it
//! as printed).

/// Whether a measurement meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    /// Not measured in this run (no sshd, no PostgreSQL, smoke size, …).
    Unknown,
}

pub struct Row {
    pub section: String,
    pub what: String,
    pub value: String,
    pub target: String,
    pub verdict: Option<Verdict>,
}

pub struct Report {
    pub rows: Vec<Row>,
    section: String,
    /// A smoke run: sizes too small to judge targets by.
    smoke: bool,
}

impl Report {
    pub fn new(smoke: bool) -> Report {
        Report {
            rows: Vec::new(),
            section: String::new(),
            smoke,
        }
    }

    pub fn section(&mut self, name: &str) {
        self.section = name.to_owned();
    }

    /// A measurement with no target.
    pub fn info(&mut self, what: impl Into<String>, value: impl Into<String>) {
        self.rows.push(Row {
            section: self.section.clone(),
            what: what.into(),
            value: value.into(),
            target: String::new(),
            verdict: None,
        });
    }

    /// A measurement against a target.
    pub fn target(&mut self, what: impl Into<String>, value: impl Into<String>, target: &str, verdict: Verdict) {
        self.rows.push(Row {
            section: self.section.clone(),
            what: what.into(),
            value: value.into(),
            target: target.to_owned(),
            verdict: Some(if self.smoke { Verdict::Unknown } else { verdict }),
        });
    }

    /// The rows grouped by section, sections in order of first appearance.
    fn grouped(&self) -> Vec<&Row> {
        let mut order: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !order.contains(&row.section.as_str()) {
                order.push(&row.section);
            }
        }
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| order.iter().position(|s| *s == r.section));
        rows
    }

    pub fn render(&self) -> String {
        let header = ["", "measurement", "result", "target", ""];
        let rows = self.grouped();
        let cells: Vec<[String; 5]> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let first_of_section = i == 0 || rows[i - 1].section != row.section;
                [
                    if first_of_section {
                        format!("**{}**", row.section)
                    } else {
                        String::new()
                    },
                    row.what.clone(),
                    row.value.clone(),
                    row.target.clone(),
                    match row.verdict {
                        None => String::new(),
                        Some(Verdict::Met) => "met".into(),
                        Some(Verdict::NotMet) => "**NOT met**".into(),
                        Some(Verdict::Unknown) => "n/a".into(),
                    },
                ]
            })
            .collect();
        let width = |col: usize| {
            cells
                .iter()
                .map(|c| c[col].chars().count())
                .chain([header[col].chars().count(), 3])
                .max()
                .unwrap_or(3)
        };
        let widths: Vec<usize> = (0..5).map(width).collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = line(&header.map(str::to_owned));
        out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
        for row in &cells {
            out.push_str(&line(row));
        }
        out
    }

    /// Targets not met, for the summary line.
    pub fn missed(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Some(Verdict::NotMet))
            .collect()
    }
}

pub fn verdict(ok: bool) -> Verdict {
    if ok { Verdict::Met } else { Verdict::NotMet }
}
