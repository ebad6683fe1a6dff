//! The results table: measurements (one JSON object a line, written by
//! `loadtests/bench.sh`) grouped by scenario and figure, with the median, the
//! spread over runs, the ratio to the yardstick and the target.
//!
//! A measurement: `{"scenario", "figure", "unit", "value", "run"}` and
//! optionally `"yardstick": "time" | "rate"` (it is the yardstick),
//! `"compare": "time" | "rate"` (show its ratio to the yardstick's median),
//! `"target"` (text) with `"limit": {"op": "<" | "<=" | ">" | ">=", "value": x,
//! "of": "value" | "ratio"}` to say whether the median meets it, and `"note"`.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::Deserialize;

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The measurements, JSON lines.
    pub measurements: PathBuf,
}

#[derive(Debug, Deserialize)]
struct Measurement {
    scenario: String,
    figure: String,
    unit: String,
    value: f64,
    #[serde(default)]
    yardstick: Option<String>,
    #[serde(default)]
    compare: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    limit: Option<Limit>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
struct Limit {
    op: String,
    value: f64,
    #[serde(default = "value_of")]
    of: String,
}

fn value_of() -> String {
    "value".into()
}

struct Row {
    scenario: String,
    figure: String,
    unit: String,
    values: Vec<f64>,
    yardstick: Option<String>,
    compare: Option<String>,
    target: Option<String>,
    limit: Option<Limit>,
    note: Option<String>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn number(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        // Thousands separated by a thin comma for readability.
        let s = format!("{:.0}", x);
        let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn render(text: &str) -> anyhow::Result<String> {
    let mut rows: Vec<Row> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let m: Measurement =
            serde_json::from_str(line).with_context(|| format!("measurement on line {}", i + 1))?;
        match rows
            .iter_mut()
            .find(|r| r.scenario == m.scenario && r.figure == m.figure)
        {
            Some(row) => row.values.push(m.value),
            None => rows.push(Row {
                scenario: m.scenario,
                figure: m.figure,
                unit: m.unit,
                values: vec![m.value],
                yardstick: m.yardstick,
                compare: m.compare,
                target: m.target,
                limit: m.limit,
                note: m.note,
            }),
        }
    }
    let yardstick = |kind: &str| {
        rows.iter()
            .find(|r| r.yardstick.as_deref() == Some(kind))
            .map(|r| median(&r.values))
    };
    let (yard_time, yard_rate) = (yardstick("time"), yardstick("rate"));
    let mut out = String::from(
        "| scenario | figure | median | spread (min–max) | runs | vs yardstick | target | met |\n|---|---|---:|---:|---:|---:|---|---|\n",
    );
    let mut notes = Vec::new();
    for row in &rows {
        let med = median(&row.values);
        let min = row.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = row.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ratio = match (row.compare.as_deref(), row.yardstick.as_deref()) {
            (_, Some(_)) => Some(1.0),
            (Some("time"), _) => yard_time.map(|y| med / y),
            (Some("rate"), _) => yard_rate.map(|y| med / y),
            _ => None,
        };
        let met = row.limit.as_ref().and_then(|limit| {
            let x = if limit.of == "ratio" { ratio? } else { med };
            let ok = match limit.op.as_str() {
                "<" => x < limit.value,
                "<=" => x <= limit.value,
                ">" => x > limit.value,
                ">=" => x >= limit.value,
                _ => return None,
            };
            Some(if ok { "yes" } else { "**no**" })
        });
        let spread = if row.values.len() > 1 {
            let half = if med != 0.0 {
                (max - min) / 2.0 / med.abs() * 100.0
            } else {
                0.0
            };
            format!("{}–{} (±{:.0}%)", number(min), number(max), half)
        } else {
            "—".into()
        };
        let mut figure = row.figure.clone();
        if let Some(note) = &row.note {
            notes.push(note.clone());
            figure.push_str(&format!(" [{}]", notes.len()));
        }
        out.push_str(&format!(
            "| {} | {} | {} {} | {} | {} | {} | {} | {} |\n",
            row.scenario,
            figure,
            number(med),
            row.unit,
            spread,
            row.values.len(),
            ratio
                .map(|r| format!("{r:.2}×"))
                .unwrap_or_else(|| "—".into()),
            row.target.as_deref().unwrap_or("—"),
            met.unwrap_or("—"),
        ));
    }
    if !notes.is_empty() {
        out.push('\n');
        for (i, note) in notes.iter().enumerate() {
            out.push_str(&format!("[{}] {note}\n", i + 1));
        }
    }
    Ok(out)
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.measurements)
        .with_context(|| format!("read {}", args.measurements.display()))?;
    print!("{}", render(&text)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_spreads_ratios_and_targets() {
        let lines = [
            r#"{"scenario":"yardstick","figure":"COPY","unit":"s","value":10,"yardstick":"time"}"#,
            r#"{"scenario":"yardstick","figure":"COPY","unit":"s","value":12,"yardstick":"time"}"#,
            r#"{"scenario":"yardstick","figure":"COPY","unit":"s","value":11,"yardstick":"time"}"#,
            r#"{"scenario":"1","figure":"drain","unit":"s","value":22,"compare":"time","target":"≤ 1.2×","limit":{"op":"<=","value":1.2,"of":"ratio"}}"#,
            r#"{"scenario":"1","figure":"drain","unit":"s","value":20,"compare":"time"}"#,
            r#"{"scenario":"1","figure":"drain","unit":"s","value":24,"compare":"time"}"#,
            r#"{"scenario":"2","figure":"p50","unit":"ms","value":8,"target":"< 20 ms","limit":{"op":"<","value":20}}"#,
        ]
        .join("\n");
        let table = render(&lines).unwrap();
        assert!(
            table.contains("| yardstick | COPY | 11.0 s | 10.0–12.0 (±9%) | 3 | 1.00× |"),
            "{table}"
        );
        assert!(
            table
                .contains("| 1 | drain | 22.0 s | 20.0–24.0 (±9%) | 3 | 2.00× | ≤ 1.2× | **no** |"),
            "{table}"
        );
        assert!(
            table.contains("| 2 | p50 | 8.00 ms | — | 1 | — | < 20 ms | yes |"),
            "{table}"
        );
        assert_eq!(median(&[1.0, 3.0, 2.0, 4.0]), 2.5);
        assert_eq!(number(12345.6), "12,346");
    }
}
