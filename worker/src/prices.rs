//! The operator's price table: what each model costs per million tokens, so that every
//! `agent_usage` can say what the call cost. A model without a price gets no cost, never
//! a guessed one.

use std::collections::HashMap;

use troupe_events::Price;

/// Prices by model name, as in `TROUPE_PRICES`:
/// `{"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6}}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices(HashMap<String, Price>);

impl Prices {
    /// Reads the table, refusing what would make a wrong bill: negative or non-finite
    /// prices, unknown fields, blank model names.
    pub fn parse(json: &str) -> Result<Prices, String> {
        let table: HashMap<String, Price> = serde_json::from_str(json).map_err(|e| {
            format!(
                "TROUPE_PRICES must be a JSON object of model name to \
                 {{\"inputPerMillion\": USD, \"outputPerMillion\": USD}}: {e}"
            )
        })?;
        for (model, price) in &table {
            if model.trim().is_empty() {
                return Err("TROUPE_PRICES has a blank model name".into());
            }
            let valid = |usd: f64| usd.is_finite() && usd >= 0.0;
            if !(valid(price.input_per_million) && valid(price.output_per_million)) {
                return Err(format!(
                    "TROUPE_PRICES: the prices of {model} must be zero or more US dollars"
                ));
            }
        }
        Ok(Prices(table))
    }

    pub fn of(&self, model: &str) -> Option<&Price> {
        self.0.get(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_read_and_looked_up_by_model() {
        let prices =
            Prices::parse(r#"{"m": {"inputPerMillion": 1.5, "outputPerMillion": 6}}"#).unwrap();
        assert_eq!(prices.of("m").unwrap().output_per_million, 6.0);
        assert_eq!(prices.of("other"), None);
    }

    #[test]
    fn wrong_tables_are_refused_with_a_reason() {
        for (json, says) in [
            ("[]", "JSON object"),
            (r#"{"m": {"inputPerMillion": 1}}"#, "outputPerMillion"),
            (
                r#"{"m": {"inputPerMillion": -1, "outputPerMillion": 1}}"#,
                "zero or more",
            ),
            (
                r#"{" ": {"inputPerMillion": 1, "outputPerMillion": 1}}"#,
                "blank",
            ),
            (
                r#"{"m": {"inputPerMillion": 1, "outputPerMillion": 1, "cached": 2}}"#,
                "cached",
            ),
        ] {
            let error = Prices::parse(json).unwrap_err();
            assert!(error.contains(says), "{json}: {error}");
        }
    }
}
