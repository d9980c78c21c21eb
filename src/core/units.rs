//! Fixed-point quantities (micro-units) and money (cents): parsing, billable rounding, formatting.
//!
//! No float is ever summed: a quantity is parsed once from its decimal text into an `i64` count
//! of millionths, sums are `i128`, and floats appear only when a response shape demands a JSON
//! number.

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
/// The text is read digit by digit, never through a float or a rounding decimal type: a value
/// with a non-zero digit past the sixth decimal place is refused however far out that digit
/// is, and so is one beyond `i64` micro-units. The grammar is JSON's number grammar (no
/// leading `+`, no underscores, no `.5`), checked here so that the wire contract is JSON's.
pub fn parse_quantity(text: &str) -> Result<Micros, QuantityError> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let Some(number) = split_decimal(unsigned) else {
        return Err(QuantityError::NotANumber);
    };
    // value = significant digits × 10^-scale, the significant digits having neither leading
    // nor trailing zeros.
    let digits = || number.integer.bytes().chain(number.fraction.bytes());
    let total = number.integer.len() + number.fraction.len();
    let leading_zeros = digits().take_while(|&d| d == b'0').count();
    if leading_zeros == total {
        // Zero, however written (`-0`, `0.000e99`).
        return Ok(Micros(0));
    }
    if negative {
        return Err(QuantityError::Negative);
    }
    let trailing_zeros = digits().rev().take_while(|&d| d == b'0').count();
    let significant = total - leading_zeros - trailing_zeros;
    let scale = number.fraction.len() as i128 - trailing_zeros as i128 - number.exponent;
    if scale > 6 {
        return Err(QuantityError::TooPrecise);
    }
    // micros = significant digits × 10^(6 - scale); i64::MAX has 19 digits.
    let shift = 6 - scale;
    if significant as i128 + shift > 19 {
        return Err(QuantityError::TooLarge);
    }
    let mut micros = digits()
        .skip(leading_zeros)
        .take(significant)
        .fold(0i128, |acc, d| acc * 10 + i128::from(d - b'0'));
    for _ in 0..shift {
        micros *= 10;
    }
    i64::try_from(micros)
        .map(Micros)
        .map_err(|_| QuantityError::TooLarge)
}

/// The parts of `digits ('.' digits)? ([eE] [+-]? digits)?`, JSON's number grammar without
/// the sign.
struct DecimalParts<'a> {
    integer: &'a str,
    fraction: &'a str,
    exponent: i128,
}

/// An exponent this large (in magnitude) already puts any digit out of range or precision.
const SATURATED_EXPONENT: i128 = 1_000_000_000;

fn split_decimal(text: &str) -> Option<DecimalParts<'_>> {
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (text, None),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !is_digits(integer) || (mantissa.contains('.') && !is_digits(fraction)) {
        return None;
    }
    let exponent = match exponent {
        None => 0,
        Some(exponent) => {
            let (negative, digits) = match exponent.strip_prefix('-') {
                Some(digits) => (true, digits),
                None => (false, exponent.strip_prefix('+').unwrap_or(exponent)),
            };
            if !is_digits(digits) {
                return None;
            }
            let magnitude = match digits.trim_start_matches('0') {
                "" => 0,
                long if long.len() > 9 => SATURATED_EXPONENT,
                short => short.parse().unwrap_or(SATURATED_EXPONENT),
            };
            if negative { -magnitude } else { magnitude }
        }
    };
    Some(DecimalParts {
        integer,
        fraction,
        exponent,
    })
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

    /// Regression: a decimal library rounded to 28 significant digits, so a quantity with a
    /// non-zero digit past its 28th was recorded as the rounded value instead of refused.
    #[test]
    fn refuses_what_is_not_exactly_representable() {
        for inexact in [
            "1.00000000000000000000000000000000001",
            "0.0000000000000000000000000000000000001",
            "123456789.1234567",
            "1e-7",
            "100e-9",
        ] {
            assert_eq!(
                parse_quantity(inexact),
                Err(QuantityError::TooPrecise),
                "{inexact}"
            );
        }
        for too_large in [
            "9223372036854.775808",
            "99999999999999999999999999999999999999",
            "1e19",
            "1e99999999999999999999",
        ] {
            assert_eq!(
                parse_quantity(too_large),
                Err(QuantityError::TooLarge),
                "{too_large}"
            );
        }
        // Exact however long it is written.
        for (text, micros) in [
            ("1.00000000000000000000000000000000000", 1_000_000),
            ("000000000000000000000000000000000001.5", 1_500_000),
            // 10^35 × 10^-30 units.
            (
                "100000000000000000000000000000000000e-30",
                100_000 * 1_000_000,
            ),
            ("9223372036854.775807", i64::MAX),
            ("9223372036854775807e-6", i64::MAX),
            ("0.000001", 1),
            ("1E+2", 100_000_000),
            ("0e99999999999999999999", 0),
            ("-0.0", 0),
        ] {
            assert_eq!(parse_quantity(text), Ok(Micros(micros)), "{text}");
        }
        for bad in ["1.5.3", "1e5e3", "1e+", "1e-", "-", "--1", "1.e5", "e5"] {
            assert_eq!(parse_quantity(bad), Err(QuantityError::NotANumber), "{bad}");
        }
    }

    proptest::proptest! {
        /// Every way of writing an amount of micro-units parses to exactly it, and one more
        /// digit anywhere past the sixth decimal refuses it.
        #[test]
        fn every_spelling_of_an_amount_is_exact(micros in 0..=i64::MAX, zeros in 0usize..40) {
            let padding = "0".repeat(zeros);
            let exact = format_micros(i128::from(micros));
            // Zeros before the number, and after its decimal point.
            let mut padded = format!("{padding}{exact}");
            if zeros > 0 {
                if !padded.contains('.') {
                    padded.push('.');
                }
                padded.push_str(&padding);
            }
            for text in [
                exact,
                format!("{micros}e-6"),
                format!("{micros}{padding}E-{}", 6 + zeros),
                padded,
            ] {
                proptest::prop_assert_eq!(parse_quantity(&text), Ok(Micros(micros)), "{}", text);
            }
            proptest::prop_assert_eq!(
                parse_quantity(&format!("{micros}{padding}1e-{}", 7 + zeros)),
                Err(QuantityError::TooPrecise)
            );
        }
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
