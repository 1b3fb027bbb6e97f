//! Whole numbers in request bodies. JSON has one number type: `634.0` is the
//! number `634` (JSON Schema's `integer` agrees), so a request field that takes a
//! whole number accepts either spelling and refuses a fraction or a number out of
//! the field's range. Use with `#[serde(deserialize_with = "...")]`.

use std::collections::BTreeMap;

use serde::de::Error;
use serde::{Deserialize, Deserializer};

/// Largest integer an `f64` holds exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

fn from_number<E: Error, T: TryFrom<i64>>(n: serde_json::Number) -> Result<T, E> {
    let whole = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => Some(i),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() <= EXACT => Some(f as i64),
        _ => None,
    };
    let whole = whole.ok_or_else(|| E::custom(format!("expected a whole number, got {n}")))?;
    T::try_from(whole).map_err(|_| E::custom(format!("{whole} is out of range")))
}

/// A required whole number.
pub fn required<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
    from_number(serde_json::Number::deserialize(d)?)
}

/// An optional whole number that, when given, is not `null`.
pub fn present<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<T>, D::Error> {
    required(d).map(Some)
}

/// An optional whole number where `null` means absent.
pub fn nullable<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<serde_json::Number>::deserialize(d)?.map(from_number).transpose()
}

/// A map of names to whole counts.
pub fn counts<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u32>, D::Error> {
    BTreeMap::<String, serde_json::Number>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| from_number(v).map(|v| (k, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::required")]
        a: i32,
        #[serde(default, deserialize_with = "super::present")]
        b: Option<u32>,
        #[serde(default, deserialize_with = "super::nullable")]
        c: Option<i64>,
    }

    fn parse(s: &str) -> Result<Body, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_floats_are_whole_numbers() {
        let b = parse(r#"{"a": 634.0, "b": 7, "c": 1e3}"#).unwrap();
        assert_eq!((b.a, b.b, b.c), (634, Some(7), Some(1000)));
        let b = parse(r#"{"a": -2, "c": null}"#).unwrap();
        assert_eq!((b.a, b.b, b.c), (-2, None, None));
    }

    #[test]
    fn fractions_ranges_nulls_and_strings_are_refused() {
        assert!(parse(r#"{"a": 1.5}"#).unwrap_err().contains("whole number"));
        assert!(parse(r#"{"a": 3000000000}"#).unwrap_err().contains("out of range"));
        assert!(parse(r#"{"a": 1, "b": -1}"#).unwrap_err().contains("out of range"));
        assert!(parse(r#"{"a": 1e300}"#).unwrap_err().contains("whole number"));
        assert!(parse(r#"{"a": 1, "b": null}"#).is_err());
        assert!(parse(r#"{"a": "1"}"#).is_err());
    }
}
