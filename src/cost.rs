//! LLM call costs, computed exactly as SwisperStudio's consumer does
//! (`cost_calculation_service.calculate_llm_cost`): a price per million tokens
//! from `public.model_pricing` (the project's, else the NULL-project default,
//! for the provider the model name implies), `tokens / 1e6 * price`, each cost
//! rounded half-even to 6 decimals.
//!
//! [`PriceBook`] is the whole pricing table in memory; [`Prices`] keeps one
//! and re-reads it now and then, so that pricing never costs a query per row.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rust_decimal::{Decimal, RoundingStrategy};
use tokio_postgres::GenericClient;

/// Decimals of a stored cost (the studio's `quantize(Decimal("0.000001"))`).
const COST_SCALE: u32 = 6;

/// Model-name prefixes (lowercase) of models hosted by KVANT.
const KVANT_PREFIXES: [&str; 9] = [
    "inference-",
    "meta-llama/",
    "deepseek-ai/",
    "qwen/",
    "baai/",
    "ibm-granite/",
    "google/",
    "swiss-ai/",
    "mistralai/",
];

/// The hosting provider the studio derives from a model name
/// (`extract_provider_from_model`), case-insensitively, first rule wins:
/// KVANT prefixes, then "azure" anywhere, then OpenAI prefixes, "claude-",
/// "together" anywhere, else "unknown".
pub fn provider_of(model: &str) -> &'static str {
    let model = model.to_lowercase();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| model.starts_with(p));
    if starts(&KVANT_PREFIXES) {
        "kvant"
    } else if model.contains("azure") {
        "azure"
    } else if starts(&["gpt-", "text-", "davinci"]) {
        "openai"
    } else if model.starts_with("claude-") {
        "anthropic"
    } else if model.contains("together") {
        "together"
    } else {
        "unknown"
    }
}

/// A `model_pricing` row's prices, per million tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Price {
    pub input_per_million: Decimal,
    pub output_per_million: Decimal,
}

/// The studio's `calculated_input_cost`, `calculated_output_cost` and
/// `calculated_total_cost`, each with exactly 6 decimals.
#[derive(Clone, Debug, PartialEq)]
pub struct Costs {
    pub input: Decimal,
    pub output: Decimal,
    pub total: Decimal,
}

/// The costs of `prompt` and `completion` tokens at `price`: each token count
/// / 1e6 * its price; the total is the sum of those unrounded costs; then all
/// three are rounded half-even to 6 decimals.
///
/// Pure arithmetic: the studio's refusal of negative counts is in
/// [`PriceBook::cost`].
///
/// # Panics
/// When a cost does not fit in a [`Decimal`] (about 7.9e28); use
/// [`checked_costs`] on prices that are not known to be sane.
pub fn costs(price: &Price, prompt: i64, completion: i64) -> Costs {
    checked_costs(price, prompt, completion).expect("LLM cost out of range")
}

/// [`costs`], or `None` where the studio's arithmetic fails: a cost of 1e22
/// or more (Python's 28-digit decimal context cannot quantize it to 6
/// decimals), or beyond [`Decimal`]'s range.
///
/// The studio multiplies with 28 significant digits, [`Decimal`] with up to
/// 28 decimals: both are exact (so they agree) for int4 token counts and
/// prices of up to 18 significant digits.
pub fn checked_costs(price: &Price, prompt: i64, completion: i64) -> Option<Costs> {
    let input = Decimal::new(prompt, 6).checked_mul(price.input_per_million)?;
    let output = Decimal::new(completion, 6).checked_mul(price.output_per_million)?;
    let total = input.checked_add(output)?;
    Some(Costs {
        input: quantize(input)?,
        output: quantize(output)?,
        total: quantize(total)?,
    })
}

/// Python's `d.quantize(Decimal("0.000001"))` in the default context:
/// half-even, exactly 6 decimals, `None` when that needs more than 28 digits.
fn quantize(d: Decimal) -> Option<Decimal> {
    let mut q = d.round_dp_with_strategy(COST_SCALE, RoundingStrategy::MidpointNearestEven);
    q.rescale(COST_SCALE);
    if q.scale() != COST_SCALE || q.abs() >= Decimal::from_i128_with_scale(10_i128.pow(22), 0) {
        return None;
    }
    // Postgres has no negative zero; keep the text plain.
    if q.is_zero() {
        q.set_sign_positive(true);
    }
    Some(q)
}

/// The text to send to Postgres for a `numeric` (`$1::text::numeric`), with
/// all its decimals: "0.000150".
pub fn decimal_text(d: &Decimal) -> String {
    let mut d = *d;
    if d.is_zero() {
        d.set_sign_positive(true);
    }
    d.to_string()
}

/// A price, or `None` when several rows match the same key: the studio's
/// `scalar_one_or_none()` then raises and it stores no cost. (The unique
/// constraint on (project_id, hosting_provider, model_name) does not stop
/// duplicate NULL-project rows.)
type Slot = Option<Price>;

/// hosting_provider -> model_name -> price.
type ByProvider = HashMap<String, HashMap<String, Slot>>;

/// `public.model_pricing` in memory: project prices keyed by (project_id,
/// provider, model_name), default prices (project_id NULL) by (provider,
/// model_name). Keys match exactly, case included, as the studio's query does.
#[derive(Default, Debug, Clone)]
pub struct PriceBook {
    projects: HashMap<String, ByProvider>,
    defaults: ByProvider,
    len: usize,
}

impl PriceBook {
    /// Adds a row; `project_id` `None` is a default price. A second row for
    /// the same key makes that key ambiguous: it prices nothing, and a
    /// project's ambiguous key does not fall back to the default (as in the
    /// studio).
    pub fn insert(&mut self, project_id: Option<&str>, provider: &str, model: &str, price: Price) {
        let by_provider = match project_id {
            Some(project) => self.projects.entry(project.to_owned()).or_default(),
            None => &mut self.defaults,
        };
        let models = by_provider.entry(provider.to_owned()).or_default();
        match models.get_mut(model) {
            Some(slot) => *slot = None,
            None => {
                models.insert(model.to_owned(), Some(price));
                self.len += 1;
            }
        }
    }

    /// The price the studio uses for `model` in `project_id`: the project's
    /// row for (provider_of(model), model), else the default row.
    pub fn lookup(&self, project_id: &str, model: &str) -> Option<&Price> {
        fn slot<'a>(by_provider: &'a ByProvider, provider: &str, model: &str) -> Option<&'a Slot> {
            by_provider.get(provider)?.get(model)
        }
        let provider = provider_of(model);
        match self
            .projects
            .get(project_id)
            .and_then(|p| slot(p, provider, model))
        {
            Some(project_slot) => project_slot.as_ref(),
            None => slot(&self.defaults, provider, model)?.as_ref(),
        }
    }

    /// The studio's `calculate_llm_cost`: `None` without a price, with a
    /// negative token count (the studio raises), or when the costs are out of
    /// range (see [`checked_costs`]).
    pub fn cost(
        &self,
        project_id: &str,
        model: &str,
        prompt: i64,
        completion: i64,
    ) -> Option<Costs> {
        if prompt < 0 || completion < 0 {
            return None;
        }
        checked_costs(self.lookup(project_id, model)?, prompt, completion)
    }

    /// Distinct keys (project and default).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

const PRICES_SQL: &str = "SELECT project_id, hosting_provider, model_name, \
    input_price_per_million::text, output_price_per_million::text FROM public.model_pricing";

/// Reads the whole `public.model_pricing` table. A row whose price is not a
/// decimal [`Decimal`] can hold (NaN, Infinity, more than 28 digits) is
/// skipped with a warning, so that key falls back to the default price where
/// the studio would have used that row.
pub async fn load(client: &impl GenericClient) -> Result<PriceBook, tokio_postgres::Error> {
    let rows = client.query(PRICES_SQL, &[]).await?;
    let mut book = PriceBook::default();
    for row in rows {
        let project_id: Option<String> = row.try_get(0)?;
        let provider: Option<String> = row.try_get(1)?;
        let model: Option<String> = row.try_get(2)?;
        let input: Option<String> = row.try_get(3)?;
        let output: Option<String> = row.try_get(4)?;
        let (Some(provider), Some(model)) = (provider, model) else {
            continue;
        };
        let (Some(input_per_million), Some(output_per_million)) = (
            input.as_deref().and_then(parse_price),
            output.as_deref().and_then(parse_price),
        ) else {
            tracing::warn!(
                project_id = project_id.as_deref().unwrap_or("(default)"),
                provider,
                model,
                input_price_per_million = input.as_deref().unwrap_or("NULL"),
                output_price_per_million = output.as_deref().unwrap_or("NULL"),
                "model_pricing row skipped: a price is not a usable decimal"
            );
            continue;
        };
        let price = Price {
            input_per_million,
            output_per_million,
        };
        book.insert(project_id.as_deref(), &provider, &model, price);
    }
    Ok(book)
}

fn parse_price(text: &str) -> Option<Decimal> {
    Decimal::from_str(text.trim()).ok()
}

/// The [`PriceBook`] of the moment, re-read from Postgres once it is older
/// than `refresh`.
#[derive(Debug)]
pub struct Prices {
    refresh: Duration,
    current: Mutex<Option<(Instant, Arc<PriceBook>)>>,
}

impl Prices {
    pub fn new(refresh: Duration) -> Self {
        Prices {
            refresh,
            current: Mutex::new(None),
        }
    }

    /// The cached book, or a fresh read when there is none or it is older
    /// than `refresh`. Concurrent callers may both read; the last one stored
    /// wins. The lock is never held across the query.
    pub async fn current(
        &self,
        client: &impl GenericClient,
    ) -> Result<Arc<PriceBook>, tokio_postgres::Error> {
        let started = Instant::now();
        if let Some(book) = self.fresh(started) {
            return Ok(book);
        }
        let book = Arc::new(load(client).await?);
        self.store(started, Arc::clone(&book));
        Ok(book)
    }

    fn fresh(&self, now: Instant) -> Option<Arc<PriceBook>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|(read_at, _)| now.saturating_duration_since(*read_at) < self.refresh)
            .map(|(_, book)| Arc::clone(book))
    }

    fn store(&self, read_at: Instant, book: Arc<PriceBook>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some((read_at, book));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn price(input: &str, output: &str) -> Price {
        Price {
            input_per_million: d(input),
            output_per_million: d(output),
        }
    }

    fn texts(c: &Costs) -> (String, String, String) {
        (
            decimal_text(&c.input),
            decimal_text(&c.output),
            decimal_text(&c.total),
        )
    }

    #[test]
    fn provider_kvant_prefixes() {
        for model in [
            "inference-llama4-maverick",
            "meta-llama/Llama-3.3-70B-Instruct",
            "deepseek-ai/DeepSeek-R1",
            "Qwen/Qwen3-32B",
            "BAAI/bge-m3",
            "ibm-granite/granite-3.3-8b-instruct",
            "google/gemma-3-12b-it",
            "swiss-ai/Apertus-70b-Instruct-2509",
            "mistralai/Mistral-7B-Instruct-v0.3",
            "INFERENCE-APERTUS-8B",
        ] {
            assert_eq!(provider_of(model), "kvant", "{model}");
        }
        // KVANT prefixes come first, even before "azure".
        assert_eq!(provider_of("inference-azure-gpt-4"), "kvant");
    }

    #[test]
    fn provider_other_rules_in_order() {
        assert_eq!(provider_of("azure-gpt-4"), "azure");
        assert_eq!(provider_of("gpt-4o-AZURE"), "azure", "azure before gpt-");
        assert_eq!(provider_of("my-Azure-deployment"), "azure");
        assert_eq!(provider_of("gpt-4o"), "openai");
        assert_eq!(provider_of("GPT-4o"), "openai");
        assert_eq!(provider_of("text-embedding-3-small"), "openai");
        assert_eq!(provider_of("davinci-002"), "openai");
        assert_eq!(provider_of("claude-3-opus"), "anthropic");
        assert_eq!(provider_of("Claude-3-Opus"), "anthropic");
        assert_eq!(
            provider_of("claude-together"),
            "anthropic",
            "claude- before together"
        );
        assert_eq!(provider_of("Together/llama"), "together");
        assert_eq!(provider_of("openai/gpt-oss-120b"), "unknown");
        assert_eq!(provider_of("gpt4"), "unknown");
        assert_eq!(provider_of("llama3"), "unknown");
        assert_eq!(provider_of(""), "unknown");
    }

    #[test]
    fn costs_round_half_even() {
        let tenth = price("0.1", "0.1");
        // 5 tokens: 0.0000005 -> 0.000000 (tie to even 0); 15: 0.0000015 -> 0.000002.
        let c = costs(&tenth, 5, 15);
        assert_eq!(
            texts(&c),
            ("0.000000".into(), "0.000002".into(), "0.000002".into())
        );
        // 25: 0.0000025 -> 0.000002; 35: 0.0000035 -> 0.000004.
        let c = costs(&tenth, 25, 35);
        assert_eq!(
            texts(&c),
            ("0.000002".into(), "0.000004".into(), "0.000006".into())
        );
    }

    #[test]
    fn costs_total_is_rounded_from_the_unrounded_sum() {
        // 0.0000005 + 0.0000005 = 0.000001, though each rounds to 0.
        let c = costs(&price("0.1", "0.1"), 5, 5);
        assert_eq!(
            texts(&c),
            ("0.000000".into(), "0.000000".into(), "0.000001".into())
        );
        // 0.0000006 + 0.0000006 = 0.0000012 -> 0.000001, not 0.000001 * 2.
        let c = costs(&price("0.6", "0.6"), 1, 1);
        assert_eq!(
            texts(&c),
            ("0.000001".into(), "0.000001".into(), "0.000001".into())
        );
    }

    #[test]
    fn costs_always_have_six_decimals() {
        // Python: Decimal(150)/Decimal(1000000)*Decimal("0.225") = 0.00003375 -> 0.000034.
        let c = costs(&price("0.225", "0.898"), 150, 50);
        assert_eq!(
            texts(&c),
            ("0.000034".into(), "0.000045".into(), "0.000079".into())
        );
        let c = costs(&price("10", "30"), 1_000_000, 500_000);
        assert_eq!(
            texts(&c),
            ("10.000000".into(), "15.000000".into(), "25.000000".into())
        );
        let c = costs(&price("0", "0"), 100, 100);
        assert_eq!(
            texts(&c),
            ("0.000000".into(), "0.000000".into(), "0.000000".into())
        );
        assert_eq!(decimal_text(&d("0.000150")), "0.000150");
    }

    #[test]
    fn costs_out_of_the_studios_range_are_none() {
        let huge = price("79228162514264337593543950335", "1");
        assert_eq!(checked_costs(&huge, i64::MAX, 1), None);
        // 1e22 needs 29 digits at 6 decimals: Python's quantize fails.
        let big = price("10000000000000000", "0");
        assert_eq!(checked_costs(&big, 1_000_000_000_000, 0), None);
        assert!(checked_costs(&big, 999_999_999_999, 0).is_some());
    }

    fn book() -> PriceBook {
        let mut book = PriceBook::default();
        book.insert(None, "openai", "gpt-4o", price("2.5", "10"));
        book.insert(None, "kvant", "inference-apertus-8b", price("0.17", "0.19"));
        book.insert(Some("p1"), "openai", "gpt-4o", price("2", "8"));
        book
    }

    #[test]
    fn project_price_beats_default() {
        let book = book();
        assert_eq!(book.lookup("p1", "gpt-4o"), Some(&price("2", "8")));
        let c = book.cost("p1", "gpt-4o", 1000, 500).unwrap();
        assert_eq!(
            texts(&c),
            ("0.002000".into(), "0.004000".into(), "0.006000".into())
        );
    }

    #[test]
    fn default_price_when_the_project_has_none() {
        let book = book();
        assert_eq!(book.lookup("p2", "gpt-4o"), Some(&price("2.5", "10")));
        assert_eq!(
            book.lookup("p1", "inference-apertus-8b"),
            Some(&price("0.17", "0.19"))
        );
        let c = book.cost("p2", "gpt-4o", 1000, 500).unwrap();
        assert_eq!(
            texts(&c),
            ("0.002500".into(), "0.005000".into(), "0.007500".into())
        );
        assert_eq!(book.len(), 3);
        assert!(!book.is_empty());
        assert!(PriceBook::default().is_empty());
    }

    #[test]
    fn no_price_no_cost() {
        let mut book = book();
        assert_eq!(book.cost("p1", "claude-3-opus", 10, 10), None);
        // Model names match exactly, case included.
        assert_eq!(book.lookup("p1", "GPT-4o"), None);
        // The provider comes from the model name: a row filed under another
        // provider does not match.
        book.insert(None, "azure", "gpt-4-turbo", price("1", "1"));
        assert_eq!(book.lookup("p1", "gpt-4-turbo"), None);
        // Negative counts: the studio raises, so no cost.
        assert_eq!(book.cost("p1", "gpt-4o", -1, 10), None);
    }

    #[test]
    fn duplicate_rows_price_nothing() {
        let mut book = book();
        book.insert(None, "openai", "gpt-4o", price("3", "12"));
        assert_eq!(book.lookup("p2", "gpt-4o"), None);
        assert_eq!(book.lookup("p1", "gpt-4o"), Some(&price("2", "8")));
        book.insert(Some("p1"), "openai", "gpt-4o", price("1", "1"));
        assert_eq!(
            book.lookup("p1", "gpt-4o"),
            None,
            "no fallback to the default"
        );
        assert_eq!(book.len(), 3);
    }

    #[test]
    fn prices_cache_expires() {
        let prices = Prices::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(prices.fresh(t0).is_none());
        let book = Arc::new(book());
        prices.store(t0, Arc::clone(&book));
        let cached = prices.fresh(t0 + Duration::from_secs(59)).unwrap();
        assert!(Arc::ptr_eq(&cached, &book));
        assert!(prices.fresh(t0 + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn price_text_parsing() {
        assert_eq!(parse_price("0.225"), Some(d("0.225")));
        assert_eq!(parse_price("0"), Some(Decimal::ZERO));
        assert_eq!(parse_price("NaN"), None);
        assert_eq!(parse_price("Infinity"), None);
    }
}
