//! Reading the task's `providerOptions`: a JSON object the user typed, so every value is
//! checked and a wrong one is named in the error instead of being silently ignored.

use serde_json::{Map, Value};

type Options = Map<String, Value>;

/// A `providerOptions` value of the wrong kind, said for the user: it names the option,
/// what it must be and what it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidOption(pub String);

/// `None` when the option is absent or `null`.
pub fn number(options: &Options, key: &str) -> Result<Option<f64>, InvalidOption> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(wrong(key, "a number", other)),
    }
}

/// A whole number; `12.0` counts, `12.5` does not. Out-of-range values saturate, and the
/// caller clamps to its own bounds.
pub fn integer(options: &Options, key: &str) -> Result<Option<i64>, InvalidOption> {
    match number(options, key) {
        Ok(Some(n)) if n.fract() == 0.0 => Ok(Some(n as i64)),
        Ok(Some(_)) => Err(wrong(key, "a whole number", &options[key])),
        Ok(None) => Ok(None),
        Err(_) => Err(wrong(key, "a whole number", &options[key])),
    }
}

pub fn positive_integer(options: &Options, key: &str) -> Result<Option<u64>, InvalidOption> {
    match integer(options, key) {
        Ok(Some(n)) if n >= 1 => Ok(Some(n as u64)),
        Ok(None) => Ok(None),
        _ => Err(wrong(key, "a positive whole number", &options[key])),
    }
}

pub fn string_list(options: &Options, key: &str) -> Result<Option<Vec<String>>, InvalidOption> {
    let expected = "a list of agent roles (strings)";
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(wrong(key, expected, &options[key])),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(wrong(key, expected, other)),
    }
}

fn wrong(key: &str, expected: &str, got: &Value) -> InvalidOption {
    let mut shown = got.to_string();
    if shown.len() > 60 {
        let cut = (0..=60)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    InvalidOption(format!(
        "providerOptions.{key} must be {expected}, not {shown}"
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn opts(value: Value) -> Options {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn absent_and_null_options_are_none() {
        let o = opts(json!({ "a": null }));
        assert_eq!(number(&o, "a").unwrap(), None);
        assert_eq!(integer(&o, "missing").unwrap(), None);
        assert_eq!(string_list(&o, "a").unwrap(), None);
    }

    #[test]
    fn numbers_and_whole_numbers_are_read() {
        let o = opts(json!({ "t": 0.5, "n": 12, "f": 12.0, "big": 1e300 }));
        assert_eq!(number(&o, "t").unwrap(), Some(0.5));
        assert_eq!(integer(&o, "n").unwrap(), Some(12));
        assert_eq!(integer(&o, "f").unwrap(), Some(12));
        assert_eq!(integer(&o, "big").unwrap(), Some(i64::MAX));
    }

    #[test]
    fn wrong_types_name_the_option() {
        let o = opts(json!({ "t": "hot", "n": 1.5, "m": 0, "l": ["qa", 3], "s": "qa" }));
        let e = number(&o, "t").unwrap_err();
        assert_eq!(e.0, "providerOptions.t must be a number, not \"hot\"");
        assert!(integer(&o, "n").unwrap_err().0.contains("whole number"));
        assert!(
            positive_integer(&o, "m")
                .unwrap_err()
                .0
                .contains("positive")
        );
        assert!(
            string_list(&o, "l")
                .unwrap_err()
                .0
                .contains("providerOptions.l")
        );
        assert!(string_list(&o, "s").unwrap_err().0.contains("list"));
    }

    #[test]
    fn long_values_are_shortened_in_the_message() {
        let o = opts(json!({ "t": "é".repeat(100) }));
        let e = number(&o, "t").unwrap_err();
        assert!(e.0.len() < 150, "{}", e.0);
        assert!(e.0.ends_with('…'));
    }
}
