//! Exact conversion between Kubernetes resource quantities and byte counts.
//!
//! Kubernetes' `resource.Quantity` is a fixed-point decimal: `1.5Gi`, `100M`, `1e3`, `500m`.
//! Sizes in LogicalVolume objects, PVC requests and lvmd requests must convert without the
//! rounding errors of floating point, so [`parse_quantity_bytes`] works on the decimal digits
//! themselves. Like Kubernetes' `Value()`, a fraction of a byte rounds up to a whole byte.
//!
//! [`format_bytes_quantity`] writes a byte count the way Kubernetes serializes
//! `resource.NewQuantity(n, resource.BinarySI)`, so objects we write read the same as the ones
//! TopoLVM writes.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Largest byte count a quantity may hold: Kubernetes keeps quantities within a signed 64-bit
/// integer (and silently caps larger binary and decimal SI values; we refuse them instead).
pub const MAX_QUANTITY_BYTES: u64 = i64::MAX as u64;

/// Why a quantity string could not be converted to bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string was empty.
    #[error("quantity is empty")]
    Empty,
    /// The string is not a decimal number followed by a suffix.
    #[error("quantity {0:?} is not a decimal number followed by an optional suffix")]
    Malformed(String),
    /// The number is followed by something that is not a Kubernetes suffix.
    #[error(
        "quantity {input:?} has unknown suffix {suffix:?} (expected Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent like e3)"
    )]
    UnknownSuffix {
        /// The whole quantity.
        input: String,
        /// The part after the number.
        suffix: String,
    },
    /// The quantity is below zero; a size cannot be.
    #[error("quantity {0:?} is negative")]
    Negative(String),
    /// The quantity is above [`MAX_QUANTITY_BYTES`].
    #[error("quantity {0:?} exceeds the largest Kubernetes quantity ({MAX_QUANTITY_BYTES} bytes)")]
    TooLarge(String),
}

/// How a suffix scales the number before it: by `10^decimal_exponent × 2^binary_exponent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scale {
    decimal_exponent: i64,
    binary_exponent: u32,
}

impl Scale {
    const fn decimal(exponent: i64) -> Self {
        Scale {
            decimal_exponent: exponent,
            binary_exponent: 0,
        }
    }

    const fn binary(exponent: u32) -> Self {
        Scale {
            decimal_exponent: 0,
            binary_exponent: exponent,
        }
    }
}

/// Converts a Kubernetes quantity string to a whole number of bytes.
///
/// Accepts Kubernetes' grammar: an optional sign, digits with an optional fraction (`1`, `1.5`,
/// `.5`, `5.`), then an optional suffix: binary SI (`Ki` … `Ei`), decimal SI (`n u m k M G T P
/// E`, or none) or a decimal exponent (`e3`, `E-2`, `e+6`). A fractional result rounds up to
/// the next byte (`0.1` → 1, `1500m` → 2), as Kubernetes' `Value()` does.
///
/// Differences from Kubernetes, all on inputs no size should have: a negative quantity other
/// than zero is an error; a value above [`MAX_QUANTITY_BYTES`] is an error rather than capped;
/// and a sign or `.` without any digit is an error rather than zero.
///
/// ```
/// use topolvm_core::quantity::parse_quantity_bytes;
/// assert_eq!(parse_quantity_bytes("1.5Gi"), Ok(1_610_612_736));
/// assert_eq!(parse_quantity_bytes("100M"), Ok(100_000_000));
/// assert_eq!(parse_quantity_bytes("0.1"), Ok(1));
/// assert!(parse_quantity_bytes("-1").is_err());
/// ```
pub fn parse_quantity_bytes(input: &str) -> Result<u64, QuantityError> {
    if input.is_empty() {
        return Err(QuantityError::Empty);
    }
    let malformed = || QuantityError::Malformed(input.to_owned());

    let (negative, unsigned) = match input.as_bytes()[0] {
        b'-' => (true, &input[1..]),
        b'+' => (false, &input[1..]),
        _ => (false, input),
    };
    let integer_end = leading_digits(unsigned);
    let integer_digits = &unsigned[..integer_end];
    let after_integer = &unsigned[integer_end..];
    let (fraction_digits, suffix) = match after_integer.strip_prefix('.') {
        Some(rest) => {
            let end = leading_digits(rest);
            (&rest[..end], &rest[end..])
        }
        None => ("", after_integer),
    };
    if integer_digits.is_empty() && fraction_digits.is_empty() {
        return Err(malformed());
    }
    let scale = interpret_suffix(suffix).ok_or_else(|| {
        let looks_like_suffix = suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-');
        if looks_like_suffix {
            QuantityError::UnknownSuffix {
                input: input.to_owned(),
                suffix: suffix.to_owned(),
            }
        } else {
            malformed()
        }
    })?;

    // The value is `digits × 10^exponent × 2^binary_exponent`, with the decimal point moved
    // into the exponent. i128 cannot overflow here: an i64 exponent minus a string length.
    let mut digits: Vec<u8> = integer_digits
        .bytes()
        .chain(fraction_digits.bytes())
        .skip_while(|&b| b == b'0')
        .map(|b| b - b'0')
        .collect();
    if digits.is_empty() {
        // Zero, whatever the sign and scale.
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative(input.to_owned()));
    }
    let mut exponent = i128::from(scale.decimal_exponent) - fraction_digits.len() as i128;
    while digits.last() == Some(&0) {
        digits.pop();
        exponent += 1;
    }
    multiply_digits(&mut digits, 1u64 << scale.binary_exponent);

    let too_large = || QuantityError::TooLarge(input.to_owned());
    let value = if exponent >= 0 {
        // An integer with `digits.len() + exponent` digits; anything over 19 digits is beyond
        // i64 because the first digit is not zero.
        if digits.len() as i128 + exponent > 19 {
            return Err(too_large());
        }
        let power = 10u128.pow(exponent as u32);
        digits_to_u128(&digits) * power
    } else {
        let fraction_len = usize::try_from(-exponent).unwrap_or(usize::MAX);
        if fraction_len >= digits.len() {
            // Strictly between 0 and 1: a partial byte is a whole byte.
            1
        } else {
            let (whole, fraction) = digits.split_at(digits.len() - fraction_len);
            if whole.len() > 19 {
                return Err(too_large());
            }
            let round_up = fraction.iter().any(|&d| d != 0);
            digits_to_u128(whole) + u128::from(round_up)
        }
    };
    u64::try_from(value)
        .ok()
        .filter(|&bytes| bytes <= MAX_QUANTITY_BYTES)
        .ok_or_else(too_large)
}

/// Converts a [`Quantity`] (for example a LogicalVolume's `spec.size`) to bytes; see
/// [`parse_quantity_bytes`].
pub fn quantity_bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    parse_quantity_bytes(&quantity.0)
}

/// Writes a byte count as Kubernetes writes a binary-SI quantity of that many bytes.
///
/// From 1024 up, the largest binary suffix that keeps the number whole: `1073741824` →
/// `1Gi`, `1610612736` → `1536Mi`, `1536` → `1536`. Below 1024 Kubernetes switches to decimal
/// SI, so `1000` → `1k` and `5` → `5`. Counts above [`MAX_QUANTITY_BYTES`] are written exactly
/// too, but Kubernetes would cap them when it reads them.
///
/// ```
/// use topolvm_core::quantity::format_bytes_quantity;
/// assert_eq!(format_bytes_quantity(1 << 30).0, "1Gi");
/// assert_eq!(format_bytes_quantity(1536).0, "1536");
/// ```
pub fn format_bytes_quantity(bytes: u64) -> Quantity {
    Quantity(format_bytes(bytes))
}

/// A byte count read and written as a Kubernetes quantity (`8Mi`, `1Gi`, `1536`): the type of a
/// size flag, whose default is then one of the size constants, shown in the quantity's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteQuantity(pub u64);

impl std::str::FromStr for ByteQuantity {
    type Err = QuantityError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_quantity_bytes(text).map(Self)
    }
}

impl std::fmt::Display for ByteQuantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

fn format_bytes(bytes: u64) -> String {
    const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes == 0 {
        return "0".to_owned();
    }
    if bytes < 1024 {
        // Kubernetes shows values under 1Ki in decimal SI so it never has to round them.
        // The only multiple of 1000 in range is 1000 itself.
        return if bytes == 1000 {
            "1k".to_owned()
        } else {
            bytes.to_string()
        };
    }
    let mut mantissa = bytes;
    let mut power = 0;
    while mantissa.is_multiple_of(1024) && power + 1 < BINARY_SUFFIXES.len() {
        mantissa /= 1024;
        power += 1;
    }
    format!("{mantissa}{}", BINARY_SUFFIXES[power])
}

fn leading_digits(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

fn interpret_suffix(suffix: &str) -> Option<Scale> {
    let scale = match suffix {
        "" => Scale::decimal(0),
        "n" => Scale::decimal(-9),
        "u" => Scale::decimal(-6),
        "m" => Scale::decimal(-3),
        "k" => Scale::decimal(3),
        "M" => Scale::decimal(6),
        "G" => Scale::decimal(9),
        "T" => Scale::decimal(12),
        "P" => Scale::decimal(15),
        "E" => Scale::decimal(18),
        "Ki" => Scale::binary(10),
        "Mi" => Scale::binary(20),
        "Gi" => Scale::binary(30),
        "Ti" => Scale::binary(40),
        "Pi" => Scale::binary(50),
        "Ei" => Scale::binary(60),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let unsigned = exponent
                .strip_prefix('+')
                .or_else(|| exponent.strip_prefix('-'))
                .unwrap_or(exponent);
            if unsigned.is_empty() || leading_digits(unsigned) != unsigned.len() {
                return None;
            }
            Scale::decimal(exponent.parse().ok()?)
        }
    };
    Some(scale)
}

/// Multiplies a big-endian decimal digit string by `factor` in place.
fn multiply_digits(digits: &mut Vec<u8>, factor: u64) {
    if factor == 1 {
        return;
    }
    let mut carry: u128 = 0;
    for digit in digits.iter_mut().rev() {
        let product = u128::from(*digit) * u128::from(factor) + carry;
        *digit = (product % 10) as u8;
        carry = product / 10;
    }
    let mut high = Vec::new();
    while carry > 0 {
        high.push((carry % 10) as u8);
        carry /= 10;
    }
    high.reverse();
    digits.splice(0..0, high);
}

/// Value of at most 38 decimal digits.
fn digits_to_u128(digits: &[u8]) -> u128 {
    digits
        .iter()
        .fold(0u128, |acc, &d| acc * 10 + u128::from(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_quantity_reads_and_writes_as_kubernetes_writes_it() {
        for (text, bytes) in [
            ("8Mi", 8 << 20),
            ("300Mi", 300 << 20),
            ("1Gi", 1 << 30),
            ("1536", 1536),
        ] {
            assert_eq!(text.parse::<ByteQuantity>(), Ok(ByteQuantity(bytes)));
            assert_eq!(ByteQuantity(bytes).to_string(), text);
        }
        assert_eq!("8M".parse::<ByteQuantity>(), Ok(ByteQuantity(8_000_000)));
        assert!("-1".parse::<ByteQuantity>().is_err());
    }
    use proptest::prelude::*;

    const KI: u64 = 1 << 10;
    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;
    const TI: u64 = 1 << 40;
    const PI: u64 = 1 << 50;
    const EI: u64 = 1 << 60;

    #[test]
    fn parses_valid_quantities() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("00012", 12),
            ("1024", 1024),
            ("1Ki", KI),
            ("1Mi", MI),
            ("1Gi", GI),
            ("1Ti", TI),
            ("1Pi", PI),
            ("1Ei", EI),
            ("7Ei", 7 * EI),
            ("1.5Gi", 1_610_612_736),
            ("1536Mi", 1_610_612_736),
            ("0.5Ki", 512),
            ("0.1Ki", 103), // 102.4 rounds up
            ("1.Ki", KI),
            ("1k", 1000),
            ("1M", 1_000_000),
            ("100M", 100_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("9E", 9_000_000_000_000_000_000),
            ("12.3400k", 12_340),
            ("1e3", 1000),
            ("1E3", 1000),
            ("1e+3", 1000),
            ("1e0", 1),
            ("1e0003", 1000),
            ("1.5e3", 1500),
            ("1e18", 1_000_000_000_000_000_000),
            ("1e-3", 1),
            ("25e-1", 3),
            ("1e-1000000", 1),
            ("0e1000000", 0),
            ("0.1", 1),
            ("0.000000001", 1),
            ("1.0000000000000000000000001", 2),
            ("1.5", 2),
            ("2.0", 2),
            ("5.", 5),
            (".5", 1),
            ("+5Ki", 5 * KI),
            ("+0", 0),
            ("-0", 0),
            ("-0.000", 0),
            ("1000m", 1),
            ("999m", 1),
            ("1001m", 2),
            ("1500m", 2),
            ("1n", 1),
            ("1u", 1),
            ("1000000000n", 1),
            ("1000000001n", 2),
            ("9223372036854775807", MAX_QUANTITY_BYTES),
            ("9223372036854775807.0", MAX_QUANTITY_BYTES),
            ("9223372036854775806.5", MAX_QUANTITY_BYTES),
            ("8191Pi", 8191 * PI),
            ("0.000000000000000000000000000000000000000000001Ei", 1),
        ];
        for &(input, expected) in cases {
            assert_eq!(parse_quantity_bytes(input), Ok(expected), "input {input:?}");
        }
    }

    #[test]
    fn rejects_invalid_quantities() {
        let malformed = |s: &str| QuantityError::Malformed(s.to_owned());
        let unknown = |s: &str, suffix: &str| QuantityError::UnknownSuffix {
            input: s.to_owned(),
            suffix: suffix.to_owned(),
        };
        let cases: Vec<(&str, QuantityError)> = vec![
            ("", QuantityError::Empty),
            ("1.5.5", malformed("1.5.5")),
            ("12Q", unknown("12Q", "Q")),
            ("1K", unknown("1K", "K")),
            ("1ki", unknown("1ki", "ki")),
            ("1KiB", unknown("1KiB", "KiB")),
            ("1e", unknown("1e", "e")),
            ("1e+", unknown("1e+", "e+")),
            ("1ee3", unknown("1ee3", "ee3")),
            ("1e1.5", malformed("1e1.5")),
            (
                "1e99999999999999999999",
                unknown("1e99999999999999999999", "e99999999999999999999"),
            ),
            (".", malformed(".")),
            ("+", malformed("+")),
            ("-", malformed("-")),
            ("Gi", malformed("Gi")),
            ("--1", malformed("--1")),
            ("+-1", malformed("+-1")),
            (" 1", malformed(" 1")),
            ("1 ", malformed("1 ")),
            ("1 Gi", malformed("1 Gi")),
            ("1,5", malformed("1,5")),
            ("0x10", unknown("0x10", "x10")),
            ("-1", QuantityError::Negative("-1".to_owned())),
            ("-1Gi", QuantityError::Negative("-1Gi".to_owned())),
            ("-1e-3", QuantityError::Negative("-1e-3".to_owned())),
            ("-0.001n", QuantityError::Negative("-0.001n".to_owned())),
            (
                "9223372036854775808",
                QuantityError::TooLarge("9223372036854775808".to_owned()),
            ),
            (
                "9223372036854775807.1",
                QuantityError::TooLarge("9223372036854775807.1".to_owned()),
            ),
            (
                "18446744073709551616",
                QuantityError::TooLarge("18446744073709551616".to_owned()),
            ),
            ("8Ei", QuantityError::TooLarge("8Ei".to_owned())),
            ("16Ei", QuantityError::TooLarge("16Ei".to_owned())),
            ("10E", QuantityError::TooLarge("10E".to_owned())),
            ("1e19", QuantityError::TooLarge("1e19".to_owned())),
            ("1e1000000", QuantityError::TooLarge("1e1000000".to_owned())),
            (
                "1e9223372036854775807",
                QuantityError::TooLarge("1e9223372036854775807".to_owned()),
            ),
            ("8192Pi", QuantityError::TooLarge("8192Pi".to_owned())),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_quantity_bytes(input),
                Err(expected),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn long_digit_strings_do_not_overflow() {
        let many_nines = "9".repeat(10_000);
        assert!(matches!(
            parse_quantity_bytes(&many_nines),
            Err(QuantityError::TooLarge(_))
        ));
        let tiny = format!("0.{}1", "0".repeat(10_000));
        assert_eq!(parse_quantity_bytes(&tiny), Ok(1));
        let padded = format!("{}42.{}", "0".repeat(10_000), "0".repeat(10_000));
        assert_eq!(parse_quantity_bytes(&padded), Ok(42));
    }

    #[test]
    fn formats_like_kubernetes_binary_si() {
        let cases: &[(u64, &str)] = &[
            (0, "0"),
            (1, "1"),
            (5, "5"),
            (100, "100"),
            (999, "999"),
            (1000, "1k"),
            (1001, "1001"),
            (1023, "1023"),
            (1024, "1Ki"),
            (1536, "1536"),
            (2048, "2Ki"),
            (4096, "4Ki"),
            (1_000_000, "1000000"),
            (MI, "1Mi"),
            (32 * MI, "32Mi"),
            (300 * MI, "300Mi"),
            (GI, "1Gi"),
            (1_610_612_736, "1536Mi"),
            (GI + 4096, "1048580Ki"),
            (GI + 1, "1073741825"),
            (TI, "1Ti"),
            (PI, "1Pi"),
            (EI, "1Ei"),
            (7 * EI, "7Ei"),
            (8 * EI, "8Ei"),
            (15 * EI, "15Ei"),
            (MAX_QUANTITY_BYTES, "9223372036854775807"),
            (u64::MAX, "18446744073709551615"),
        ];
        for &(bytes, expected) in cases {
            assert_eq!(format_bytes_quantity(bytes).0, expected, "bytes {bytes}");
        }
    }

    #[test]
    fn quantity_wrapper_parses_its_string() {
        assert_eq!(quantity_bytes(&Quantity("2Gi".to_owned())), Ok(2 * GI));
        assert_eq!(
            quantity_bytes(&Quantity(String::new())),
            Err(QuantityError::Empty)
        );
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let err = parse_quantity_bytes("12Q").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "quantity \"12Q\" has unknown suffix \"Q\" (expected Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent like e3)"
            )
        );
        let err = parse_quantity_bytes("-1").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("quantity \"-1\" is negative"));
    }

    /// Byte counts that are whole multiples of binary suffixes, where the formatting is
    /// interesting, mixed with arbitrary ones.
    fn byte_counts() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..=MAX_QUANTITY_BYTES,
            0u64..4096,
            (1u64..=1 << 20, 1u32..=6).prop_map(|(m, p)| {
                m.checked_shl(10 * p)
                    .filter(|&v| v >> (10 * p) == m && v <= MAX_QUANTITY_BYTES)
                    .unwrap_or(m)
            }),
        ]
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(bytes in byte_counts()) {
            let quantity = format_bytes_quantity(bytes);
            prop_assert_eq!(parse_quantity_bytes(&quantity.0), Ok(bytes));
        }

        #[test]
        fn formatting_is_canonical(bytes in byte_counts()) {
            // Re-formatting a parsed canonical string gives the same string, and the mantissa
            // carries no factor the suffix could have absorbed.
            let text = format_bytes_quantity(bytes).0;
            let reparsed = parse_quantity_bytes(&text);
            prop_assert_eq!(reparsed.map(format_bytes), Ok(text.clone()));
            if bytes >= 1024 {
                let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
                let mantissa: u64 = digits.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
                let suffix = &text[digits.len()..];
                prop_assert!(!mantissa.is_multiple_of(1024) || suffix == "Ei", "{}", text);
            }
        }

        #[test]
        fn plain_integers_parse_to_themselves(bytes in 0..=MAX_QUANTITY_BYTES) {
            prop_assert_eq!(parse_quantity_bytes(&bytes.to_string()), Ok(bytes));
            prop_assert_eq!(parse_quantity_bytes(&format!("+{bytes}")), Ok(bytes));
        }

        #[test]
        fn milli_units_round_up(milli in 0u64..=u64::MAX / 2) {
            let expected = milli.div_ceil(1000);
            prop_assert_eq!(parse_quantity_bytes(&format!("{milli}m")), Ok(expected));
        }

        #[test]
        fn decimal_fractions_of_binary_units(whole in 0u64..1024, tenths in 0u64..10) {
            // (whole + tenths/10) × 2^30, rounded up.
            let exact_tenths = (whole * 10 + tenths) * GI;
            let expected = exact_tenths.div_ceil(10);
            prop_assert_eq!(parse_quantity_bytes(&format!("{whole}.{tenths}Gi")), Ok(expected));
        }

        #[test]
        fn never_panics(input in "\\PC{0,40}") {
            let _ = parse_quantity_bytes(&input);
        }

        #[test]
        fn never_panics_on_quantity_like_input(input in "[+-]?[0-9]{0,25}(\\.[0-9]{0,25})?([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,22})?") {
            let _ = parse_quantity_bytes(&input);
        }
    }
}
