//! LLM telemetry inside an output, read as SwisperStudio's own consumer
//! reads it (its `_handle_observation_end`): `_llm_model`, `_llm_tokens`
//! (prompt, completion, total) and, when the counts are missing, the
//! estimate from `_llm_messages` and `_llm_result`. That is what the
//! studio's `observations` columns hold. Lenient by design: a missing or odd
//! value is simply not copied out; the output itself (cached and thoughts
//! tokens, latency included) is always stored whole.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::payload::unicode_escapes;

/// The keys of an output that [`studio_usage`] reads.
const LLM_KEYS: [&str; 4] = ["_llm_tokens", "_llm_model", "_llm_messages", "_llm_result"];

/// An LLM call as SwisperStudio's consumer reads it from an
/// observation_end's output: what goes to `observations.model`,
/// `prompt_tokens`, `completion_tokens` and `total_tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StudioUsage {
    /// `_llm_model` when it is a string.
    pub model: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub total_tokens: Option<i32>,
    /// The three counts were estimated from the text (the SDK reported no
    /// total, or 0): 0.75 tokens a word.
    pub estimated: bool,
}

impl StudioUsage {
    /// Model, prompt and completion tokens when the studio would price this
    /// call: model non-empty, both counts present and non-zero (Python
    /// truthiness). Whether a price exists is [`crate::cost::PriceBook`]'s
    /// business.
    pub fn billable(&self) -> Option<(&str, i64, i64)> {
        let model = self.model.as_deref().filter(|m| !m.is_empty())?;
        let prompt = self.prompt_tokens.filter(|&n| n != 0)?;
        let completion = self.completion_tokens.filter(|&n| n != 0)?;
        Some((model, i64::from(prompt), i64::from(completion)))
    }
}

/// SwisperStudio's view of the LLM call in an output; `None` when the output
/// is not an object or has neither `_llm_tokens` nor `_llm_model`.
///
/// As the studio does: counts come from `_llm_tokens` {prompt, completion,
/// total}, and only when `_llm_tokens` is there; when its total is missing or
/// 0 the three counts are estimated from `_llm_messages[].content` and
/// `_llm_result` (each `int(words * 0.75)`, words as Python's
/// `str(value).split()` counts them), unless both estimates are 0.
///
/// Where we differ, on values the studio cannot store: a count must be a JSON
/// integer, or a float with an integral value, within i32 (the studio's
/// columns are int4); a string, a fraction, a bool or anything out of range
/// is read as missing (the studio would pass it on to Postgres and fail, or
/// treat a bool as 0/1). An `_llm_tokens` that is not an object counts as
/// empty (the studio would crash on it). An estimate beyond i32 is missing.
/// The studio sets `model` only alongside a computed cost; the agreed layout
/// stores `_llm_model` always, so it is reported here whenever it is a
/// string.
pub fn studio_usage(output: &Value) -> Option<StudioUsage> {
    let output = output.as_object()?;
    let tokens = output.get("_llm_tokens");
    let model = output.get("_llm_model");
    if tokens.is_none() && model.is_none() {
        return None;
    }
    let mut usage = StudioUsage {
        model: model.and_then(Value::as_str).map(str::to_owned),
        ..StudioUsage::default()
    };
    if let Some(tokens) = tokens {
        let tokens = tokens.as_object();
        let count = |key: &str| tokens.and_then(|t| t.get(key)).and_then(int4);
        usage.prompt_tokens = count("prompt");
        usage.completion_tokens = count("completion");
        usage.total_tokens = count("total");
        if matches!(usage.total_tokens, None | Some(0)) {
            if let Some((prompt, completion)) = estimate(output) {
                usage.prompt_tokens = i32::try_from(prompt).ok();
                usage.completion_tokens = i32::try_from(completion).ok();
                usage.total_tokens = i32::try_from(prompt + completion).ok();
                usage.estimated = true;
            }
        }
    }
    Some(usage)
}

/// False only when `output` cannot hold a key of [`LLM_KEYS`]: `_llm_` is
/// not in its text and no `\u` escape in it spells a printable ASCII
/// character (the one other way to write those keys). Python's `json.dumps`
/// escapes only control and non-ASCII characters: 90% of the loadgen's
/// outputs hold such escapes, 20% are LLM calls, and the others are never
/// read key by key (that read was 4.4% of a seed drain's service CPU).
pub fn may_name_an_llm_call(output: &RawValue) -> bool {
    let text = output.get();
    text.contains("_llm_") || unicode_escapes(text.as_bytes()).any(spells_printable_ascii)
}

/// Four hex digits of a printable ASCII character (a false alarm after an
/// escaped backslash only costs the read).
fn spells_printable_ascii(hex: &[u8]) -> bool {
    hex.len() == 4
        && hex.iter().all(u8::is_ascii_hexdigit)
        && std::str::from_utf8(hex)
            .ok()
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .is_some_and(|c| (0x20..0x7f).contains(&c))
}

/// [`studio_usage`] of an output's JSON text, with only the keys it reads
/// built into values: the rest of the output (most of its bytes) is
/// skipped. The same answer as `studio_usage` of the whole tree, duplicated
/// keys included (the last one counts, as in a tree).
pub fn studio_usage_of(output: &RawValue) -> Option<StudioUsage> {
    if !output.get().trim_start().starts_with('{') {
        return None;
    }
    let mut deserializer = serde_json::Deserializer::from_str(output.get());
    let kept = deserializer.deserialize_map(LlmKeys).ok()?;
    studio_usage(&Value::Object(kept))
}

/// An object's [`LLM_KEYS`] entries.
struct LlmKeys;

impl<'de> Visitor<'de> for LlmKeys {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = Map::new();
        while let Some(key) = map.next_key_seed(LlmKey)? {
            match key {
                Some(key) => {
                    kept.insert(key.to_owned(), map.next_value()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(kept)
    }
}

/// A key: which of [`LLM_KEYS`] it is, if any (compared unescaped, with no
/// allocation).
struct LlmKey;

impl<'de> DeserializeSeed<'de> for LlmKey {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for LlmKey {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(LLM_KEYS.into_iter().find(|wanted| *wanted == key))
    }
}

/// A token count the studio's int4 columns hold: a JSON integer, or a float
/// with an integral value (`100.0`, `1e2`), within i32.
fn int4(value: &Value) -> Option<i32> {
    let number = value.as_number()?;
    if let Some(n) = number.as_i64() {
        return i32::try_from(n).ok();
    }
    number
        .as_f64()
        .filter(|f| f.fract() == 0.0 && (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(f))
        .map(|f| f as i32)
}

/// The studio's `_estimate_tokens_from_output`: (prompt, completion), or
/// `None` when both are 0.
fn estimate(output: &Map<String, Value>) -> Option<(i64, i64)> {
    let mut prompt = 0i64;
    if let Some(Value::Array(messages)) = output.get("_llm_messages") {
        for message in messages {
            if let Some(content) = message.as_object().and_then(|m| m.get("content")) {
                prompt = prompt.saturating_add(three_quarters(python_str_words(content)));
            }
        }
    }
    let completion = match output.get("_llm_result") {
        Some(result) if python_truthy(result) => three_quarters(python_str_words(result)),
        _ => 0,
    };
    (prompt > 0 || completion > 0).then_some((prompt, completion))
}

/// `int(words * 0.75)`; exact (the float product is exact below 2^51).
fn three_quarters(words: u64) -> i64 {
    i64::try_from(words / 4 * 3 + words % 4 * 3 / 4).unwrap_or(i64::MAX)
}

/// Python's truthiness of a JSON value: null, false, 0, "", [] and {} are
/// false.
fn python_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        // Any zero spelling (0, -0, 0.0, 1e-400) is a Python zero.
        Value::Number(n) => n.as_f64().is_none_or(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// What Python's `str.split()` splits on: `str.isspace()`, which is Unicode
/// White_Space plus the separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `len(str(value).split())` for a value json.loads made: a string is
/// itself; anything else is Python's repr (`{'k': 'v', 'n': [1, None]}`).
fn python_str_words(value: &Value) -> u64 {
    let mut words = Words::default();
    match value {
        Value::String(s) => {
            for c in s.chars() {
                words.char(is_python_space(c));
            }
        }
        other => words.repr(other),
    }
    words.count
}

/// Counts the words of a text fed one character at a time, without
/// building it.
#[derive(Default)]
struct Words {
    count: u64,
    in_word: bool,
}

impl Words {
    fn char(&mut self, space: bool) {
        if space {
            self.in_word = false;
        } else if !self.in_word {
            self.in_word = true;
            self.count += 1;
        }
    }

    /// Python's repr of a json.loads value. Only its spaces matter: numbers,
    /// None, True and False have none; a string's repr is quoted and escapes
    /// every whitespace character but the ASCII space (they are all
    /// non-printable to Python); separators are ", " and ": ".
    fn repr(&mut self, value: &Value) {
        match value {
            Value::Null | Value::Bool(_) | Value::Number(_) => self.char(false),
            Value::String(s) => self.repr_str(s),
            Value::Array(items) => {
                self.char(false); // [
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.separator();
                    }
                    self.repr(item);
                }
                self.char(false); // ]
            }
            Value::Object(map) => {
                self.char(false); // {
                for (i, (key, item)) in map.iter().enumerate() {
                    if i > 0 {
                        self.separator();
                    }
                    self.repr_str(key);
                    self.separator(); // ": "
                    self.repr(item);
                }
                self.char(false); // }
            }
        }
    }

    fn repr_str(&mut self, s: &str) {
        self.char(false); // opening quote
        for c in s.chars() {
            self.char(c == ' ');
        }
        self.char(false); // closing quote
    }

    /// ", " or ": ".
    fn separator(&mut self) {
        self.char(false);
        self.char(true);
    }
}

#[cfg(test)]
mod key_only_tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| Value::from(i64::from(n) * 3)),
            (0.0f64..1e6).prop_map(Value::from),
            "[a-z ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("prompt".to_owned()),
                        Just("completion".to_owned()),
                        Just("total".to_owned()),
                        Just("content".to_owned()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Outputs as text: objects with some of the LLM keys (a key spelled
    /// with an escape, duplicated keys), or any other value.
    fn output_text() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("\"_llm_tokens\"".to_owned()),
            Just("\"_llm_model\"".to_owned()),
            Just("\"_llm_messages\"".to_owned()),
            Just("\"_llm_result\"".to_owned()),
            Just("\"\\u005fllm_model\"".to_owned()),
            "\"[a-z_]{1,8}\"",
        ];
        prop_oneof![
            4 => proptest::collection::vec((key, json_value()), 0..6).prop_map(|pairs| {
                let body: Vec<String> = pairs
                    .into_iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                format!("{{{}}}", body.join(", "))
            }),
            1 => json_value().prop_map(|v| v.to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn reads_what_the_tree_reads(text in output_text()) {
            let raw = RawValue::from_string(text.clone()).unwrap();
            let tree: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(studio_usage_of(&raw), studio_usage(&tree));
            if studio_usage(&tree).is_some() {
                prop_assert!(may_name_an_llm_call(&raw), "the filter passes every LLM call");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_printable_ascii_escapes_may_spell_an_llm_key() {
        let may = |text: &str| may_name_an_llm_call(&RawValue::from_string(text.into()).unwrap());
        assert!(may(r#"{"_llm_model": "m"}"#));
        assert!(may(r#"{"\u005fllm_model": "m"}"#));
        assert!(
            may(r#"{"_\u006CLM": 1}"#),
            "uppercase hex, any printable character"
        );
        assert!(!may(
            r#"{"text": "caf\u00e9 \u2014 \ud83d\ude00", "tab": "\u0009"}"#
        ));
        assert!(!may(r#"{"llm": "_llm", "model": "gpt"}"#));
    }

    fn studio(output: Value) -> StudioUsage {
        studio_usage(&output).expect("an LLM output")
    }

    /// Python's `str(json.loads(text)).split()` word count.
    fn words(json_text: &str) -> u64 {
        python_str_words(&serde_json::from_str(json_text).unwrap())
    }

    #[test]
    fn studio_reads_reported_tokens() {
        let usage = studio(json!({
            "_llm_model": "gpt-4o",
            "_llm_tokens": {"prompt": 100, "completion": 50, "total": 150}
        }));
        assert_eq!(
            usage,
            StudioUsage {
                model: Some("gpt-4o".into()),
                prompt_tokens: Some(100),
                completion_tokens: Some(50),
                total_tokens: Some(150),
                estimated: false,
            }
        );
        assert_eq!(usage.billable(), Some(("gpt-4o", 100, 50)));
    }

    #[test]
    fn studio_total_given_keeps_the_counts() {
        // Text is there to estimate from, but a non-zero total wins, even
        // when the parts disagree with it or are missing.
        let usage = studio(json!({
            "_llm_model": "m",
            "_llm_tokens": {"prompt": 7, "total": 150},
            "_llm_messages": [{"role": "user", "content": "one two three four five"}],
            "_llm_result": "six seven eight nine"
        }));
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (Some(7), None, Some(150))
        );
        assert!(!usage.estimated);
        assert_eq!(usage.billable(), None);
    }

    #[test]
    fn studio_total_zero_or_missing_triggers_estimation() {
        for tokens in [
            json!({"prompt": 1, "completion": 1, "total": 0}),
            json!({"prompt": 1, "completion": 1, "total": 0.0}),
            json!({"prompt": 1, "completion": 1}),
            json!({"prompt": 1, "completion": 1, "total": null}),
            json!({}),
        ] {
            let usage = studio(json!({
                "_llm_model": "m",
                "_llm_tokens": tokens,
                // 4 words -> 3, 5 words -> 3: prompt 6.
                "_llm_messages": [
                    {"role": "system", "content": "you are a helper"},
                    {"role": "user", "content": "what is  the\ttime?\n"},
                    {"role": "user"},
                    "not a message"
                ],
                // 8 words -> 6.
                "_llm_result": "It is noon. It is noon. Really, noon."
            }));
            assert_eq!(
                (
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.total_tokens
                ),
                (Some(6), Some(6), Some(12))
            );
            assert!(usage.estimated);
            assert_eq!(usage.billable(), Some(("m", 6, 6)));
        }
    }

    #[test]
    fn studio_estimation_of_nothing_keeps_the_given_counts() {
        // Both estimates 0 (one word -> int(0.75) = 0): the SDK's counts stay.
        let usage = studio(json!({
            "_llm_model": "m",
            "_llm_tokens": {"prompt": 5, "completion": 3, "total": 0},
            "_llm_messages": [{"content": "hi"}],
            "_llm_result": "ok"
        }));
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (Some(5), Some(3), Some(0))
        );
        assert!(!usage.estimated);
    }

    #[test]
    fn studio_estimation_on_list_content_uses_python_repr() {
        // str([{'type': 'text', 'text': 'hello big world'}]) has 6 words -> 4.
        let usage = studio(json!({
            "_llm_tokens": {"total": 0},
            "_llm_messages": [{"content": [{"type": "text", "text": "hello big world"}]}]
        }));
        assert_eq!(usage.prompt_tokens, Some(4));
        assert_eq!(usage.completion_tokens, Some(0));
        // A dict result: "{'answer': 'yes it is'}" has 4 words -> 3.
        let usage = studio(json!({
            "_llm_tokens": null,
            "_llm_result": {"answer": "yes it is"}
        }));
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (Some(0), Some(3), Some(3))
        );
    }

    #[test]
    fn studio_words_match_python_split() {
        // Expected values printed by Python 3.11: len(str(json.loads(t)).split()).
        assert_eq!(words(r#""a\nb c\td""#), 4);
        assert_eq!(words(r#"["a\nb","c\td"]"#), 2, "escaped inside a repr");
        assert_eq!(words(r#""a\u00a0b""#), 2);
        assert_eq!(words(r#"["a\u00a0b"]"#), 1);
        assert_eq!(words(r#""a\u001cb""#), 2, "U+001C is Python whitespace");
        assert_eq!(words(r#""  lead and trail  ""#), 3);
        assert_eq!(words(r#""""#), 0);
        assert_eq!(words("null"), 1, "None");
        assert_eq!(words("true"), 1, "True");
        assert_eq!(words("12.5e3"), 1);
        assert_eq!(words(r#"[1, 2.5, null, true, {}]"#), 5);
        assert_eq!(words(r#"{"k": [], "": ""}"#), 4);
        assert_eq!(words(r#"["it's a", "say \"hi\" now"]"#), 5);
        assert_eq!(words("[]"), 1);
    }

    #[test]
    fn studio_python_whitespace_is_exact() {
        // Every c with Python 3.11's chr(c).isspace().
        let python: [u32; 29] = [
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000,
            0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028,
            0x2029, 0x202f, 0x205f, 0x3000,
        ];
        let ours: Vec<u32> = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .filter(|&c| is_python_space(c))
            .map(u32::from)
            .collect();
        assert_eq!(ours, python);
    }

    #[test]
    fn studio_falsy_results_are_not_estimated() {
        for result in [
            json!(""),
            json!([]),
            json!({}),
            json!(0),
            json!(0.0),
            json!(false),
            Value::Null,
        ] {
            let usage = studio(json!({
                "_llm_model": "m",
                "_llm_tokens": {"total": 0},
                "_llm_messages": [{"content": "one two three four"}],
                "_llm_result": result
            }));
            assert_eq!(
                (
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.total_tokens
                ),
                (Some(3), Some(0), Some(3)),
                "{result}"
            );
            assert_eq!(usage.billable(), None, "completion 0 is not billable");
        }
        // Truthy non-strings are str()-ed: "True" and "7" are one word -> 0.
        for result in [json!(true), json!(7), json!([0])] {
            let usage = studio(json!({"_llm_tokens": {}, "_llm_result": result}));
            assert_eq!(usage.total_tokens, None, "{result}: nothing estimated");
            assert!(!usage.estimated);
        }
    }

    #[test]
    fn studio_zero_prompt_or_completion_is_not_billable() {
        let usage = |prompt: i32, completion: i32| StudioUsage {
            model: Some("gpt-4o".into()),
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            total_tokens: Some(prompt + completion),
            estimated: false,
        };
        assert_eq!(usage(0, 5).billable(), None);
        assert_eq!(usage(5, 0).billable(), None);
        assert_eq!(usage(5, 1).billable(), Some(("gpt-4o", 5, 1)));
        let no_model = StudioUsage {
            model: Some(String::new()),
            ..usage(5, 1)
        };
        assert_eq!(no_model.billable(), None);
        let missing = StudioUsage {
            completion_tokens: None,
            ..usage(5, 1)
        };
        assert_eq!(missing.billable(), None);
    }

    #[test]
    fn studio_counts_must_fit_int4() {
        let usage = studio(json!({
            "_llm_model": 42,
            "_llm_tokens": {"prompt": 100.0, "completion": 1.5, "total": "150"}
        }));
        assert_eq!(usage.model, None, "a non-string model is no model");
        assert_eq!(usage.prompt_tokens, Some(100));
        assert_eq!(usage.completion_tokens, None);
        assert_eq!(usage.total_tokens, None);
        let parse = |text: &str| int4(&serde_json::from_str(text).unwrap());
        assert_eq!(parse("1e2"), Some(100));
        assert_eq!(parse("-5"), Some(-5));
        assert_eq!(parse("2147483647"), Some(i32::MAX));
        assert_eq!(parse("2147483648"), None);
        assert_eq!(parse("1e40"), None);
        assert_eq!(parse("true"), None);
        assert_eq!(parse("\"7\""), None);
    }

    #[test]
    fn studio_needs_llm_keys() {
        assert_eq!(studio_usage(&json!({"answer": 1})), None);
        assert_eq!(studio_usage(&json!("text")), None);
        // A model alone: the studio reads tokens (and estimates) only under
        // _llm_tokens.
        let usage = studio(json!({
            "_llm_model": "claude-3",
            "_llm_messages": [{"content": "one two three four"}]
        }));
        assert_eq!(
            usage,
            StudioUsage {
                model: Some("claude-3".into()),
                ..StudioUsage::default()
            }
        );
        // _llm_tokens that is not an object: no counts, so estimated.
        let usage = studio(json!({"_llm_tokens": [1, 2], "_llm_result": "a b c d"}));
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (Some(0), Some(3), Some(3))
        );
    }
}
