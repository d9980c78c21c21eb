//! Fixed-point quantities (micro-units) and money (cents): parsing, billable rounding, formatting.
//!
//! No float is ever summed: a quantity is parsed once from its decimal text into an `i64` count
//! of millionths, sums are `i128`, and floats appear only when a response shape demands a JSON
//! number.

use std::str::FromStr;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

/// Micro-units per whole unit of a meter.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// A quantity in millionths of its meter's `unit_name`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Micros(pub i64);

/// Money in hundredths of the catalog currency.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Cents(pub i64);

/// Why a quantity's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("must be a decimal number such as 12 or 0.5")]
    NotANumber,
    #[error("must not be negative")]
    Negative,
    #[error("has more than 6 decimal places")]
    TooPrecise,
    #[error("is too large (at most 9223372036854.775807)")]
    TooLarge,
}

/// Parses decimal text (`12`, `0.25`, `1.5e3`) into exact micro-units.
///
/// The grammar is checked here so that the decimal library's leniencies (underscores, a
/// leading `+`) never widen the wire contract.
pub fn parse_quantity(text: &str) -> Result<Micros, QuantityError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if !is_decimal_grammar(digits) {
        return Err(QuantityError::NotANumber);
    }
    let value = if digits.contains(['e', 'E']) {
        Decimal::from_scientific(digits).map_err(|_| QuantityError::TooLarge)?
    } else {
        Decimal::from_str(digits).map_err(|_| QuantityError::TooLarge)?
    }
    .normalize();
    if negative && !value.is_zero() {
        return Err(QuantityError::Negative);
    }
    if value.scale() > 6 {
        return Err(QuantityError::TooPrecise);
    }
    let micros = value
        .checked_mul(Decimal::from(MICROS_PER_UNIT))
        .and_then(|m| m.to_i64())
        .ok_or(QuantityError::TooLarge)?;
    Ok(Micros(micros))
}

/// `digits ('.' digits)? ([eE] [+-]? digits)?` — JSON's number grammar without the sign.
fn is_decimal_grammar(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    let run = |i: &mut usize| {
        let start = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if !run(&mut i) {
        return false;
    }
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        if !run(&mut i) {
            return false;
        }
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        if !run(&mut i) {
            return false;
        }
    }
    i == bytes.len()
}

/// Exact decimal text of a micro-unit amount: `12`, `0.5`, `-3.000001`.
pub fn format_micros(micros: i128) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let whole = abs / MICROS_PER_UNIT as u128;
    let frac = abs % MICROS_PER_UNIT as u128;
    if frac == 0 {
        return format!("{sign}{whole}");
    }
    let frac = format!("{frac:06}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// A micro-unit amount as the JSON number the F5 shapes declare (`format: double`). Display
/// only: nothing computed is ever derived from it.
pub fn micros_to_f64(micros: i128) -> f64 {
    format_micros(micros).parse().unwrap_or(f64::NAN)
}

/// Converts raw micro-units into whole billable units, as F5 defines `quantity_billable`:
/// divide by the meter's division factor; a positive amount below 1 bills as 1, anything
/// larger is rounded down. Zero stays zero.
pub fn billable_units(raw_micros: i128, division_factor: u64) -> i128 {
    if raw_micros <= 0 {
        return 0;
    }
    let per_billable_unit = i128::from(division_factor) * i128::from(MICROS_PER_UNIT);
    (raw_micros / per_billable_unit).max(1)
}

/// `raw ÷ division_factor` as exact-as-possible decimal text with six decimals at most
/// (rounded down) and at least one, as `usage_summary`'s `value` fields (minLength 3).
pub fn format_ratio(raw_micros: i128, division_factor: u64) -> String {
    let scaled = raw_micros / i128::from(division_factor.max(1));
    let text = format_micros(scaled);
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

/// Cost of a line: billable units × price per billable unit, saturating rather than wrapping
/// (an `i64` of cents is ~92 quadrillion; reaching it means the catalog is wrong, not rich).
pub fn line_amount(billable: i128, price: Cents) -> Cents {
    let amount = billable.saturating_mul(i128::from(price.0));
    Cents(amount.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(parse_quantity("12"), Ok(Micros(12_000_000)));
        assert_eq!(parse_quantity("0.000001"), Ok(Micros(1)));
        assert_eq!(parse_quantity("1.5e3"), Ok(Micros(1_500_000_000)));
        assert_eq!(parse_quantity("2.500000000"), Ok(Micros(2_500_000)));
        assert_eq!(parse_quantity("-0"), Ok(Micros(0)));
    }

    #[test]
    fn refuses_what_is_not_a_plain_decimal() {
        for bad in [
            "", "abc", "1_000", "+1", "1.", ".5", "NaN", "inf", "1e", "0x10", " 1",
        ] {
            assert_eq!(
                parse_quantity(bad),
                Err(QuantityError::NotANumber),
                "{bad:?}"
            );
        }
        assert_eq!(parse_quantity("-1"), Err(QuantityError::Negative));
        assert_eq!(parse_quantity("0.0000001"), Err(QuantityError::TooPrecise));
        assert_eq!(parse_quantity("1e400"), Err(QuantityError::TooLarge));
        assert_eq!(
            parse_quantity("9223372036855"),
            Err(QuantityError::TooLarge)
        );
    }

    #[test]
    fn billable_rounding_follows_f5() {
        // 0.5 GB with a factor of 1 bills as 1; 2.9 bills as 2; 0 bills as 0.
        assert_eq!(billable_units(500_000, 1), 1);
        assert_eq!(billable_units(2_900_000, 1), 2);
        assert_eq!(billable_units(0, 1), 0);
        // 20 hours over a factor of 24 is 0.83 → 1; 50 hours → 2.
        assert_eq!(billable_units(20_000_000, 24), 1);
        assert_eq!(billable_units(50_000_000, 24), 2);
    }

    #[test]
    fn formats_without_losing_digits() {
        assert_eq!(format_micros(12_000_000), "12");
        assert_eq!(format_micros(1), "0.000001");
        assert_eq!(format_micros(-2_500_000), "-2.5");
        assert_eq!(format_ratio(20_000_000, 24), "0.833333");
        assert_eq!(format_ratio(48_000_000, 24), "2.0");
        assert_eq!(line_amount(3, Cents(250)), Cents(750));
    }
}
