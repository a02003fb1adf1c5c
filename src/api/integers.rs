//! Integers in request bodies as JSON Schema's `integer` has them: also
//! when written with a zero fraction (`5.0`), which clients and generators
//! may send. Anything else is refused as the field's type error.

use serde::Deserialize;

fn whole(number: &serde_json::Number) -> Option<i64> {
    if let Some(n) = number.as_i64() {
        return Some(n);
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
            Some(f as i64)
        }
        _ => None,
    }
}

/// An `i64` field (`#[serde(deserialize_with = "integral")]`).
pub fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    whole(&number).ok_or_else(|| serde::de::Error::custom("expected an integer"))
}

/// An optional unsigned field
/// (`#[serde(default, deserialize_with = "optional_u32")]`).
pub fn optional_u32<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    whole(&number)
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("expected an integer from 0 to 4294967295"))
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::optional_u32")]
        days: Option<u32>,
        #[serde(default, deserialize_with = "super::integral")]
        limit: i64,
    }

    fn parse(json: &str) -> Result<Body, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn whole_numbers_with_a_zero_fraction_are_integers() {
        let b = parse(r#"{"days": 2.0, "limit": 5.0}"#).unwrap();
        assert_eq!((b.days, b.limit), (Some(2), 5));
        let b = parse(r#"{"days": null, "limit": -3}"#).unwrap();
        assert_eq!((b.days, b.limit), (None, -3));
        assert_eq!(parse("{}").unwrap().days, None);
    }

    #[test]
    fn fractions_negatives_and_strings_are_refused() {
        for bad in [
            r#"{"days": 2.5}"#,
            r#"{"days": -1}"#,
            r#"{"days": 1e12}"#,
            r#"{"days": "2"}"#,
            r#"{"limit": 0.5}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
