//! Bounds on what input can make grow: settings of their own, flattened into
//! `ServeSettings`, and the Prometheus series of the per-project SDK
//! heartbeat age, rendered by hand so that series of projects gone quiet
//! disappear instead of staying forever in the recorder.

use std::fmt::Write as _;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BoundsSettings {
    /// Most projects with a `swisper_ingest_sdk_heartbeat_age_seconds`
    /// series (the most recently heard first); project ids come from input,
    /// so their number must not grow without bound.
    #[arg(long, env = "OBSERVABILITY_SDK_HEARTBEAT_SERIES", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub sdk_heartbeat_series: u32,
}

impl Default for BoundsSettings {
    fn default() -> Self {
        Self {
            sdk_heartbeat_series: 200,
        }
    }
}

/// The gauge's exposition text for the given (project_id, age) pairs; empty
/// when there are none. Label values are escaped as the format requires.
pub fn render_heartbeat_ages(ages: &[(String, f64)]) -> String {
    if ages.is_empty() {
        return String::new();
    }
    let name = crate::metrics::SDK_HEARTBEAT_AGE;
    let mut text = format!(
        "# HELP {name} Age of the newest SDK heartbeat, by project_id (projects heard in the last 7 days, at most OBSERVABILITY_SDK_HEARTBEAT_SERIES of them, most recent first).\n# TYPE {name} gauge\n"
    );
    for (project, age) in ages {
        let _ = writeln!(text, "{name}{{project_id=\"{}\"}} {age}", escape(project));
    }
    text
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_from_input_are_escaped() {
        let text = render_heartbeat_ages(&[("a\"b\\c\nd".into(), 1.5)]);
        assert!(text.contains(r#"{project_id="a\"b\\c\nd"} 1.5"#), "{text}");
        assert_eq!(render_heartbeat_ages(&[]), "");
    }
}
