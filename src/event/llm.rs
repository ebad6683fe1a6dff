//! LLM telemetry inside an output: `_llm_model`, `_llm_tokens` (total,
//! prompt, completion, cached, thoughts) and `_llm_latency.duration_ms`.
//! Lenient by design: a missing or odd value is simply not copied out; the
//! output itself is always stored whole.

use serde_json::Value;

use super::LlmUsage;

pub fn usage(output: &Value) -> Option<LlmUsage> {
    let output = output.as_object()?;
    let model = output
        .get("_llm_model")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let tokens = output.get("_llm_tokens");
    let count = |key: &str| tokens.and_then(|t| t.get(key)).and_then(whole_number);
    let duration_ms = output
        .get("_llm_latency")
        .and_then(|l| l.get("duration_ms"))
        .and_then(Value::as_f64)
        .filter(|d| d.is_finite());
    let usage = LlmUsage {
        model,
        prompt_tokens: count("prompt"),
        completion_tokens: count("completion"),
        total_tokens: count("total"),
        cached_tokens: count("cached"),
        thoughts_tokens: count("thoughts"),
        duration_ms,
    };
    (usage != LlmUsage::default()).then_some(usage)
}

fn whole_number(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| {
            value
                .as_f64()
                .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        })
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sdk_telemetry_is_copied_out() {
        let output = json!({
            "_llm_model": "gpt-4o",
            "_llm_tokens": {"total": 150, "prompt": 100, "completion": 50, "cached": 20, "thoughts": 0},
            "_llm_latency": {"duration_ms": 812.5, "time_to_first_token_ms": 90},
            "_llm_result": "hi"
        });
        let usage = usage(&output).unwrap();
        assert_eq!(usage.model.as_deref(), Some("gpt-4o"));
        assert_eq!(usage.prompt_tokens, Some(100));
        assert_eq!(usage.total_tokens, Some(150));
        assert_eq!(usage.thoughts_tokens, Some(0));
        assert_eq!(usage.duration_ms, Some(812.5));
    }

    #[test]
    fn outputs_without_telemetry_have_none() {
        assert_eq!(usage(&json!({"answer": 1})), None);
        assert_eq!(usage(&json!([1, 2])), None);
        let odd =
            usage(&json!({"_llm_model": "m", "_llm_tokens": {"total": "many", "prompt": 1.5}}))
                .unwrap();
        assert_eq!((odd.total_tokens, odd.prompt_tokens), (None, None));
    }
}
