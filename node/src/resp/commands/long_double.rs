//! INCRBYFLOAT's arithmetic, done the way Redis does it on x86-64: in C's `long double`,
//! the x87 80-bit extended format (64-bit significand, 15-bit exponent).
//!
//! Redis reads both operands with `strtold`, adds them in `long double`, and stores the
//! sum as `printf("%.17Lf")` with the trailing zeros cut (`ld2string`, LD_STR_HUMAN).
//! An `f64` has 53 bits: `SET k 9223372036854775807` then `INCRBYFLOAT k 0` would store
//! `9223372036854776000`, and a following DECR would fail where Redis answers. Exact
//! decimal arithmetic would be wrong the other way: Redis rounds to 64 bits, so
//! `1e20 + 0.1` stays `100000000000000000000` and
//! `123456789012345678901234567890 + 0` becomes `123456789012345678899921813504`.
//! So this module emulates the format itself: a correctly rounded parse (as glibc's
//! `strtold`), one addition rounded to nearest-even (as the x87 `fadd`), and the exact
//! decimal expansion rounded to 17 fractional digits, ties to even (as glibc's `printf`).
//!
//! A Redis built where `long double` is 128-bit (aarch64 Linux) answers differently for
//! values past 64 bits; x86-64 is the build the tests compare against.

use std::cmp::Ordering;

use num_bigint::BigUint;

/// Bits in the significand, including the explicit integer bit.
const SIGNIFICAND_BITS: i64 = 64;
/// Exponent of the last significand bit of the smallest subnormal (2^-16445): also the
/// lowest exponent of any value, normal numbers at the bottom of the range included.
const MIN_EXPONENT: i64 = -16382 - (SIGNIFICAND_BITS - 1);
/// Exponent of the last significand bit of the largest finite value, (2^64 - 1) × 2^16320.
const MAX_EXPONENT: i64 = 16383 - (SIGNIFICAND_BITS - 1);
/// Redis's `MAX_LONG_DOUBLE_CHARS`: `string2ld` refuses inputs of this many bytes or more.
const MAX_INPUT_LEN: usize = 5 * 1024;
/// Fractional digits in `%.17Lf`.
const FRACTION_DIGITS: u32 = 17;

/// A finite `long double`: `(-1)^negative × significand × 2^exponent`, with the
/// significand's top bit set unless the value is subnormal or zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongDouble {
    negative: bool,
    significand: u64,
    exponent: i64,
}

/// What `strtold` read from a string Redis accepts as a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    Finite(LongDouble),
    /// `inf` or `infinity`, either sign: a valid float whose sum is refused later.
    Infinite,
}

impl LongDouble {
    /// Exactly `n`: every i64 fits in a 64-bit significand.
    pub fn from_i64(n: i64) -> LongDouble {
        round(n < 0, &BigUint::from(n.unsigned_abs()), 0, false).expect("an i64 is in range")
    }

    fn zero(negative: bool) -> LongDouble {
        LongDouble { negative, significand: 0, exponent: 0 }
    }

    /// Parses `text` as Redis's `string2ld` does: `strtold` over the whole string (decimal
    /// or hexadecimal, `inf`/`infinity`), refusing leading space, trailing bytes, NaN, and
    /// values that overflow to infinity or underflow to zero. `None` means Redis answers
    /// "value is not a valid float".
    pub fn parse(text: &[u8]) -> Option<Parsed> {
        if text.is_empty() || text.len() >= MAX_INPUT_LEN {
            return None;
        }
        let (negative, body) = match text[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        if body.eq_ignore_ascii_case(b"inf") || body.eq_ignore_ascii_case(b"infinity") {
            return Some(Parsed::Infinite);
        }
        let (magnitude, exponent, inexact) = match body {
            [b'0', b'x' | b'X', hex @ ..] => parse_hex(hex)?,
            _ => parse_decimal(body)?,
        };
        let value = round(negative, &magnitude, exponent, inexact)?;
        if value.significand == 0 && magnitude.bits() != 0 {
            return None; // strtold's ERANGE on underflow to zero, which Redis refuses
        }
        Some(Parsed::Finite(value))
    }

    /// `self + other` rounded to nearest-even, or `None` when it overflows to infinity.
    pub fn add(self, other: LongDouble) -> Option<LongDouble> {
        // An operand 66 or more bits below the other's last bit is under a quarter of that
        // bit and cannot move the rounded sum: skip shifting by up to 32,765 bits for it.
        for (big, small) in [(self, other), (other, self)] {
            if big.significand != 0 && big.exponent - small.exponent >= SIGNIFICAND_BITS + 2 {
                return Some(big);
            }
        }
        self.add_exactly_then_round(other)
    }

    fn add_exactly_then_round(self, other: LongDouble) -> Option<LongDouble> {
        // Both operands are exact multiples of 2^exponent, so the sum is exact there.
        let exponent = self.exponent.min(other.exponent);
        let a = BigUint::from(self.significand) << (self.exponent - exponent) as u64;
        let b = BigUint::from(other.significand) << (other.exponent - exponent) as u64;
        let (negative, magnitude) = if self.negative == other.negative {
            (self.negative, a + b)
        } else {
            match a.cmp(&b) {
                Ordering::Greater => (self.negative, a - b),
                Ordering::Less => (other.negative, b - a),
                // x - x is +0 when rounding to nearest.
                Ordering::Equal => (false, BigUint::ZERO),
            }
        };
        round(negative, &magnitude, exponent, false)
    }

    /// The text Redis stores for this value: `%.17Lf`, trailing fractional zeros and a
    /// bare `.` removed, and `-0` written `0`.
    pub fn to_redis_string(self) -> String {
        let digits = if self.exponent >= 0 {
            (BigUint::from(self.significand) << self.exponent as u64).to_string()
        } else {
            let scaled = scaled_fraction(self.significand, (-self.exponent) as u64);
            let unit = 10u128.pow(FRACTION_DIGITS);
            let (whole, fraction) = (scaled / unit, scaled % unit);
            let mut s = format!("{whole}.{fraction:0width$}", width = FRACTION_DIGITS as usize);
            s.truncate(s.trim_end_matches('0').trim_end_matches('.').len());
            s
        };
        if self.negative && digits != "0" { format!("-{digits}") } else { digits }
    }
}

/// `significand × 10^17 / 2^shift`, rounded to an integer, ties to even.
fn scaled_fraction(significand: u64, shift: u64) -> u128 {
    // Below 2^121 (2^64 × 10^17 < 2^121), so a shift of 128 or more leaves less than 1/2.
    let n = u128::from(significand) * 10u128.pow(FRACTION_DIGITS);
    if shift >= 128 {
        return 0;
    }
    let (q, rest) = (n >> shift, n & ((1u128 << shift) - 1));
    let half = 1u128 << (shift - 1);
    let up = rest > half || (rest == half && q & 1 == 1);
    q + u128::from(up)
}

/// Rounds `magnitude × 2^exponent` to the nearest `long double`, ties to even. `inexact`
/// says the true value is a little more than that (a division left a remainder), which
/// breaks a tie upward. `None` when the result overflows to infinity.
fn round(negative: bool, magnitude: &BigUint, exponent: i64, inexact: bool) -> Option<LongDouble> {
    let bits = magnitude.bits() as i64;
    if bits == 0 {
        return Some(LongDouble::zero(negative));
    }
    let target = (exponent + bits - SIGNIFICAND_BITS).max(MIN_EXPONENT);
    let (significand, target) = if target <= exponent {
        // Fits: at most 64 bits once shifted left to the target exponent.
        let shifted: BigUint = magnitude << (exponent - target) as u64;
        (u64::try_from(&shifted).expect("at most 64 bits"), target)
    } else {
        let shift = target - exponent;
        if shift > bits {
            // Below half the smallest subnormal (even with the inexact remainder).
            return Some(LongDouble::zero(negative));
        }
        let kept: BigUint = magnitude >> shift as u64;
        let rest = magnitude - (&kept << shift as u64);
        let half = BigUint::from(1u8) << (shift - 1) as u64;
        let kept = u64::try_from(&kept).expect("at most 64 bits");
        let up = match rest.cmp(&half) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => inexact || kept & 1 == 1,
        };
        match kept.checked_add(u64::from(up)) {
            Some(s) => (s, target),
            // Rounded up to 2^64: one more bit of exponent.
            None => (1 << 63, target + 1),
        }
    };
    (target <= MAX_EXPONENT).then_some(LongDouble { negative, significand, exponent: target })
}

/// Splits `digits[.digits]` (at least one digit in all) into the digits and how many came
/// after the point; `None` for anything else.
fn split_mantissa(text: &[u8], is_digit: fn(&u8) -> bool) -> Option<(Vec<u8>, usize)> {
    let (whole, fraction) = match text.iter().position(|&c| c == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &[][..]),
    };
    if whole.is_empty() && fraction.is_empty() || !whole.iter().chain(fraction).all(is_digit) {
        return None;
    }
    Some(([whole, fraction].concat(), fraction.len()))
}

/// Reads an exponent, `[+-]digits`, saturating far beyond any value's range.
fn parse_exponent(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0i64, |n, &d| (n * 10 + i64::from(d - b'0')).min(1 << 40));
    Some(if negative { -n } else { n })
}

/// `digits[.digits][(e|E)[+-]digits]` as `magnitude × 2^exponent` plus an inexact flag.
fn parse_decimal(text: &[u8]) -> Option<(BigUint, i64, bool)> {
    let (mantissa, exponent) = match text.iter().position(|&c| c == b'e' || c == b'E') {
        Some(e) => (&text[..e], parse_exponent(&text[e + 1..])?),
        None => (text, 0),
    };
    let (digits, fraction_len) = split_mantissa(mantissa, u8::is_ascii_digit)?;
    let digits = &digits[digits.iter().position(|&d| d != b'0').unwrap_or(digits.len())..];
    if digits.is_empty() {
        return Some((BigUint::ZERO, 0, false));
    }
    // The value is D × 10^power with 10^(len-1) <= D < 10^len.
    let power = exponent - fraction_len as i64;
    let magnitude_digits = power + digits.len() as i64;
    // Out of range either way (strtold's ERANGE, which Redis refuses), and checked here
    // so that a huge exponent never becomes a huge power of ten.
    if magnitude_digits > 4934 {
        return None; // at least 10^4934, past the largest long double (1.19e4932)
    }
    if magnitude_digits < -4951 {
        return None; // below 10^-4952, under half the smallest subnormal (3.6e-4951)
    }
    let d = BigUint::parse_bytes(digits, 10).expect("ascii digits");
    if power >= 0 {
        return Some((d * BigUint::from(10u8).pow(power as u32), 0, false));
    }
    // D / 10^-power with at least 66 quotient bits, so rounding sees two more bits than it
    // keeps, and the remainder says whether anything was cut below them.
    let divisor = BigUint::from(10u8).pow((-power) as u32);
    let scale = (66 + divisor.bits() as i64 - d.bits() as i64).max(0);
    let numerator = d << scale as u64;
    let (q, r) = (&numerator / &divisor, &numerator % &divisor);
    Some((q, -scale, r.bits() != 0))
}

/// `hexdigits[.hexdigits][(p|P)[+-]digits]` (after `0x`), exact.
fn parse_hex(text: &[u8]) -> Option<(BigUint, i64, bool)> {
    let (mantissa, exponent) = match text.iter().position(|&c| c == b'p' || c == b'P') {
        Some(p) => (&text[..p], parse_exponent(&text[p + 1..])?),
        None => (text, 0),
    };
    let (digits, fraction_len) = split_mantissa(mantissa, u8::is_ascii_hexdigit)?;
    let magnitude = BigUint::parse_bytes(&digits, 16).expect("hex digits");
    let exponent = exponent - 4 * fraction_len as i64;
    // The value lies in [2^(top-1), 2^top). Out of range either way (strtold's ERANGE,
    // which Redis refuses), and checked here so that a huge exponent is never a huge shift.
    let top = exponent + magnitude.bits() as i64;
    let past_largest = top > MAX_EXPONENT + SIGNIFICAND_BITS;
    let under_half_smallest = top < MIN_EXPONENT - 1;
    if magnitude.bits() != 0 && (past_largest || under_half_smallest) {
        return None;
    }
    Some((magnitude, exponent, false))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str) -> Option<LongDouble> {
        match LongDouble::parse(text.as_bytes()) {
            Some(Parsed::Finite(v)) => Some(v),
            Some(Parsed::Infinite) => panic!("{text:?} parsed as infinite"),
            None => None,
        }
    }

    /// What INCRBYFLOAT stores for `a + b`.
    fn sum(a: &str, b: &str) -> String {
        let (a, b) = (parse(a).expect("a"), parse(b).expect("b"));
        a.add(b).expect("finite").to_redis_string()
    }

    /// An f64, exactly (every f64 is a long double).
    fn from_f64(x: f64) -> LongDouble {
        let bits = x.to_bits();
        let (biased, fraction) = ((bits >> 52) & 0x7ff, bits & ((1 << 52) - 1));
        let (significand, exponent) = match biased {
            0 => (fraction, -1074),
            _ => (fraction | (1 << 52), biased as i64 - 1075),
        };
        round(x.is_sign_negative(), &BigUint::from(significand), exponent, false).expect("in range")
    }

    #[test]
    fn integers_past_two_to_the_53_stay_exact() {
        assert_eq!(sum("9223372036854775807", "0"), "9223372036854775807");
        assert_eq!(sum("9223372036854775807", "9223372036854775807"), "18446744073709551614");
        assert_eq!(sum("-9223372036854775808", "-9223372036854775808"), "-18446744073709551616");
        assert_eq!(sum("9007199254740993", "0"), "9007199254740993");
        // Past 64 bits the sum rounds to 64, ties to even, as the x87 does.
        assert_eq!(sum("18446744073709551617", "0"), "18446744073709551616");
        assert_eq!(sum("18446744073709551619", "0"), "18446744073709551620");
        assert_eq!(sum("123456789012345678901234567890", "0"), "123456789012345678899921813504");
    }

    #[test]
    fn fractions_print_with_seventeen_digits_ties_to_even() {
        assert_eq!(sum("10.5", "0.1"), "10.6");
        assert_eq!(sum("0.1", "0.2"), "0.3");
        assert_eq!(sum("3.0e3", "5.0e3"), "8000");
        assert_eq!(sum("1.1e5", "0"), "110000");
        assert_eq!(sum("1e20", "0.1"), "100000000000000000000", "0.1 is below the last bit");
        assert_eq!(sum("7", "-10"), "-3");
        assert_eq!(sum("-1.75", "1.75"), "0");
        assert_eq!(sum("-1e-18", "0"), "0", "-0.00000000000000000 is written 0");
        assert_eq!(sum("-6e-18", "0"), "-0.00000000000000001");
        // 2^-18 = 0.000003814697265625 has 18 fractional digits; the 17th (2) stays even.
        assert_eq!(sum("0.000003814697265625", "0"), "0.00000381469726562");
        assert_eq!(sum("0.000003814697265625", "0.000003814697265625"), "0.00000762939453125");
        assert_eq!(sum("1e400", "0").len(), 401, "long double reaches past f64");
    }

    #[test]
    fn parse_takes_what_strtold_takes_whole() {
        for (text, value) in [
            ("0x10", 16.0),
            ("0X1P-3", 0.125),
            ("-0x.8p1", -1.0),
            ("+1.5", 1.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("1.23E+2", 123.0),
            ("-0", -0.0),
            ("0e999999999999999999999", 0.0),
        ] {
            assert_eq!(parse(text), Some(from_f64(value)), "{text:?}");
        }
        for text in ["inf", "-INF", "+Infinity", "infinity"] {
            assert_eq!(LongDouble::parse(text.as_bytes()), Some(Parsed::Infinite), "{text:?}");
        }
        for text in [
            "", " 1", "1 ", "+ 1", "1e", "1e+", "e5", ".", "-.", "0x", "0x.p1", "0x1p", "1.5x", "--1", "nan",
            "-nan", "NaN(1)", "infinit", "1_000", "1,5", "0x1g", "1e5.0", "1\u{0}",
        ] {
            assert_eq!(LongDouble::parse(text.as_bytes()), None, "{text:?}");
        }
    }

    #[test]
    fn parse_refuses_overflow_underflow_and_long_input() {
        // strtold's ERANGE: to infinity, or a non-zero value to zero.
        assert_eq!(parse("1e5000"), None);
        assert_eq!(parse("-1e4933"), None);
        assert_eq!(parse("1e-5000"), None);
        assert_eq!(parse("1e99999999999999999999"), None);
        assert_eq!(parse("0x1p16384"), None);
        assert_eq!(parse("0x.ffffffffffffffff8p16384"), None, "rounds up past the largest");
        assert!(parse("0x.ffffffffffffffff7p16384").is_some());
        assert_eq!(parse("0x1p-16446"), None, "half the smallest subnormal ties to zero");
        let smallest = LongDouble { negative: false, significand: 1, exponent: MIN_EXPONENT };
        assert_eq!(parse("0x1.8p-16446"), Some(smallest));
        assert_eq!(parse("3.7e-4951"), Some(smallest));
        // string2ld copies into a 5 KiB buffer and refuses what does not fit.
        let long_one = format!("{}1", "0".repeat(MAX_INPUT_LEN - 2));
        assert_eq!(parse(&long_one), Some(LongDouble::from_i64(1)));
        assert_eq!(parse(&format!("0{long_one}")), None);
    }

    #[test]
    fn sums_that_overflow_are_refused() {
        let largest = parse("0x.ffffffffffffffffp16384").expect("largest");
        assert_eq!(largest.add(largest), None);
        assert_eq!(largest.add(parse("1").expect("1")), Some(largest), "1 is far below the last bit");
        let negated = LongDouble { negative: true, ..largest };
        assert_eq!(largest.add(negated), Some(LongDouble::zero(false)));
    }

    proptest! {
        /// Any two i64 sum to at most 2^64 in magnitude: a 64-bit significand holds it
        /// exactly, so Redis stores the exact integer.
        #[test]
        fn i64_sums_are_exact(a: i64, b: i64) {
            let got = sum(&a.to_string(), &b.to_string());
            prop_assert_eq!(got, (i128::from(a) + i128::from(b)).to_string());
        }

        /// Every f64 is a long double: its exact decimal expansion parses to it, and it
        /// prints as Rust's own exact `{:.17}` rounding (ties to even) does.
        #[test]
        fn f64_values_parse_exactly_and_print_with_17_digits(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let value = from_f64(x);
            prop_assert_eq!(parse(&format!("{x:.1100}")), Some(value));
            let rust = format!("{x:.17}");
            let rust = rust.trim_end_matches('0').trim_end_matches('.');
            let want = if rust == "-0" { "0" } else { rust };
            prop_assert_eq!(value.to_redis_string(), want);
        }

        /// Skipping an operand far below the other's last bit changes no sum.
        #[test]
        fn skipping_a_tiny_operand_rounds_the_same(
            a: u64, b: u64, negative: bool, gap in 60i64..72, exponent in -200i64..200
        ) {
            let a = LongDouble { negative: false, significand: a | 1 << 63, exponent };
            let b = LongDouble { negative, significand: b, exponent: exponent - gap };
            prop_assert_eq!(a.add(b), a.add_exactly_then_round(b));
            prop_assert_eq!(b.add(a), a.add_exactly_then_round(b));
        }

        /// Addition is exact when the operands are small multiples of a common power of
        /// two, and commutative always.
        #[test]
        fn small_dyadic_sums_are_exact(a in -(1i64 << 40)..(1i64 << 40), b in -(1i64 << 40)..(1i64 << 40), scale in 0u32..20) {
            let unit = f64::from(2u32.pow(scale));
            let (x, y) = (a as f64 / unit, b as f64 / unit);
            let got = from_f64(x).add(from_f64(y));
            prop_assert_eq!(got, Some(from_f64(x + y)));
            prop_assert_eq!(from_f64(y).add(from_f64(x)), got);
        }
    }
}
