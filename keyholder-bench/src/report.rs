//! What a scenario prints: a small table, a one-line summary, and its
//! figures as JSON for `--json`.

use serde_json::Value;

/// A table of figures.
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let columns = self.headers.len();
        let width: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .chain(std::iter::once(&self.headers[c]))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        println!("\n{}", self.title);
        let line = |cells: &[String]| {
            let text: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    if c == 0 {
                        format!("{cell:<w$}", w = width[c])
                    } else {
                        format!("{cell:>w$}", w = width[c])
                    }
                })
                .collect();
            println!("  {}", text.join("  "));
        };
        line(&self.headers);
        println!(
            "  {}",
            width
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  ")
        );
        for row in &self.rows {
            line(row);
        }
    }
}

/// A figure with its unit, to one decimal where it is small.
pub fn rate(rows_per_sec: f64) -> String {
    format!("{:.0}", rows_per_sec)
}

pub fn ms(value: f64) -> String {
    format!("{value:.2}")
}

pub fn ratio(value: f64) -> String {
    format!("{value:.2}x")
}

/// Whether a target held, as printed in a summary.
pub fn verdict(held: bool) -> &'static str {
    if held { "met" } else { "MISSED" }
}

/// The figures of every scenario run, for `--json`.
#[derive(Default)]
pub struct Figures(pub serde_json::Map<String, Value>);

impl Figures {
    pub fn put(&mut self, scenario: &str, value: Value) {
        self.0.insert(scenario.to_owned(), value);
    }
}
