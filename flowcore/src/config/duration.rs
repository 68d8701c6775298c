//! Durations written the way Go's `time.ParseDuration` reads them, because Antrea's config keys
//! (`flowPollInterval: 5s`, `activeFlowExportTimeout: 1m30s`) carry over unchanged.
//!
//! Accepted: one or more `<number><unit>` terms, the number a decimal with an optional fraction
//! (`1.5h`, `.5s`), the unit one of `ns us µs μs ms s m h`; or a bare `0`. Unlike Go, a sign is
//! rejected: no flowlens setting is a negative time. Values up to `u64::MAX` nanoseconds (about
//! 584 years) are accepted; fractions finer than a nanosecond are truncated, as Go does.
//!
//! [`Duration`]'s `Display` writes Go's `String()` form (`1h30m0s`, `1.5s`, `250ms`), so a value
//! printed by flowlens reads back to the same nanosecond.

use core::fmt;
use core::str::FromStr;

/// What a user is told a duration should look like.
pub const DURATION_FORM: &str =
    "a Go duration such as 300ms, 1.5s, 1m30s or 2h (units ns, us, µs, ms, s, m, h)";

/// A span of time read from config: a `std::time::Duration` that parses and prints in Go syntax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// A duration that could not be read, naming the input and the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}; expected {DURATION_FORM}")]
pub struct DurationError {
    pub input: String,
    pub reason: DurationErrorReason,
}

/// Why a duration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationErrorReason {
    #[error("it is empty")]
    Empty,
    #[error("negative durations are not accepted")]
    Negative,
    #[error("a number is missing before {unit:?}")]
    MissingNumber { unit: String },
    #[error("{number:?} has no unit")]
    MissingUnit { number: String },
    #[error("unknown unit {unit:?}")]
    UnknownUnit { unit: String },
    #[error("it exceeds the largest accepted duration (about 584 years)")]
    Overflow,
}

impl Duration {
    pub const fn from_secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Parses a Go duration string into a `std::time::Duration`.
pub fn parse_duration(input: &str) -> Result<std::time::Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err(DurationErrorReason::Empty));
    }
    if s.starts_with('-') {
        return Err(err(DurationErrorReason::Negative));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err(DurationErrorReason::Empty));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        // The number: digits, then an optional fraction.
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after_int) = rest.split_at(int_end);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(f) => {
                let end = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                f.split_at(end)
            }
            None => ("", after_int),
        };
        let number = &rest[..rest.len() - after_num.len()];
        let unit_end = after_num
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_num.len());
        let (unit, next) = after_num.split_at(unit_end);
        if int_part.is_empty() && frac_part.is_empty() {
            // `.s`, or a term that starts with a letter such as `s` or `x5s`.
            return Err(err(DurationErrorReason::MissingNumber {
                unit: if unit.is_empty() {
                    number.to_owned()
                } else {
                    unit.to_owned()
                },
            }));
        }
        if unit.is_empty() {
            return Err(err(DurationErrorReason::MissingUnit {
                number: number.to_owned(),
            }));
        }
        let per_unit: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(err(DurationErrorReason::UnknownUnit {
                    unit: unit.to_owned(),
                }));
            }
        };
        let overflow = || err(DurationErrorReason::Overflow);
        let mut whole: u64 = 0;
        for d in int_part.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add((d - b'0') as u64))
                .ok_or_else(overflow)?;
        }
        let mut nanos = whole.checked_mul(per_unit).ok_or_else(overflow)?;
        // The fraction, exactly: digits past the unit's nanosecond resolution only truncate.
        let mut scale = per_unit;
        for d in frac_part.bytes() {
            if scale < 10 {
                break;
            }
            scale /= 10;
            nanos = nanos
                .checked_add((d - b'0') as u64 * scale)
                .ok_or_else(overflow)?;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
        rest = next;
    }
    Ok(std::time::Duration::from_nanos(total))
}

impl FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Duration)
    }
}

/// Go's `Duration.String()`: `h`/`m`/`s` with a fractional second from one second up, the
/// largest of `ms`/`µs`/`ns` below, `0s` for zero.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Durations past u64 nanoseconds never come out of the parser; clamp rather than panic.
        let ns = u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX);
        if ns == 0 {
            return f.write_str("0s");
        }
        if ns < 1_000_000_000 {
            let (scale, unit) = if ns < 1_000 {
                (1, "ns")
            } else if ns < 1_000_000 {
                (1_000, "µs")
            } else {
                (1_000_000, "ms")
            };
            write_fraction(f, ns / scale, ns % scale, scale)?;
            return f.write_str(unit);
        }
        let secs = ns / 1_000_000_000;
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if h > 0 || m > 0 {
            write!(f, "{m}m")?;
        }
        write_fraction(f, s, ns % 1_000_000_000, 1_000_000_000)?;
        f.write_str("s")
    }
}

/// `whole[.frac]` with `frac` out of `scale`, trailing zeros dropped.
fn write_fraction(f: &mut fmt::Formatter<'_>, whole: u64, frac: u64, scale: u64) -> fmt::Result {
    write!(f, "{whole}")?;
    if frac == 0 {
        return Ok(());
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    write!(f, ".{}", digits.trim_end_matches('0'))
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_FORM)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            // YAML reads a bare `0` as an integer; it is the one unitless duration Go accepts.
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: a number needs a unit; expected {DURATION_FORM}"
                    )))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!(
                        "invalid duration {v}: negative durations are not accepted; expected {DURATION_FORM}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration as Std;

    fn p(s: &str) -> Std {
        parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn go_examples() {
        assert_eq!(p("5s"), Std::from_secs(5));
        assert_eq!(p("1m30s"), Std::from_secs(90));
        assert_eq!(p("1.5h"), Std::from_secs(5400));
        assert_eq!(p("300ms"), Std::from_millis(300));
        assert_eq!(p("2h45m"), Std::from_secs(2 * 3600 + 45 * 60));
        assert_eq!(p("1us"), Std::from_micros(1));
        assert_eq!(p("1µs"), Std::from_micros(1));
        assert_eq!(p("1μs"), Std::from_micros(1));
        assert_eq!(p("10ns"), Std::from_nanos(10));
        assert_eq!(p("0"), Std::ZERO);
        assert_eq!(p("+0"), Std::ZERO);
        assert_eq!(p("0s"), Std::ZERO);
        assert_eq!(p(".5s"), Std::from_millis(500));
        assert_eq!(p("1.s"), Std::from_secs(1));
        assert_eq!(p("1.0000000019s"), Std::from_nanos(1_000_000_001));
        assert_eq!(p("1h1h"), Std::from_secs(7200));
        assert_eq!(p(" 60s "), Std::from_secs(60));
    }

    #[test]
    fn errors_name_input_and_form() {
        for (input, want) in [
            ("", "it is empty"),
            ("5", "\"5\" has no unit"),
            ("5x", "unknown unit \"x\""),
            ("5 s", "unknown unit \" s\""),
            ("s", "a number is missing before \"s\""),
            (".s", "a number is missing before \"s\""),
            ("-5s", "negative"),
            ("1m5", "\"5\" has no unit"),
            ("99999999999h", "exceeds"),
            ("5sec", "unknown unit \"sec\""),
        ] {
            let e = parse_duration(input).expect_err(input).to_string();
            assert!(e.contains(want), "{input}: {e}");
            assert!(e.contains(&format!("{input:?}")), "{input}: {e}");
            assert!(e.contains("1m30s"), "{input}: {e}");
        }
    }

    #[test]
    fn display_is_go_string() {
        for (d, s) in [
            (Std::ZERO, "0s"),
            (Std::from_nanos(1), "1ns"),
            (Std::from_nanos(1500), "1.5µs"),
            (Std::from_millis(250), "250ms"),
            (Std::from_secs(5), "5s"),
            (Std::from_secs(90), "1m30s"),
            (Std::from_secs(3600), "1h0m0s"),
            (Std::from_millis(5_400_500), "1h30m0.5s"),
            (Std::from_nanos(1_000_000_001), "1.000000001s"),
        ] {
            assert_eq!(Duration(d).to_string(), s);
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(ns in any::<u64>()) {
            let d = Duration(Std::from_nanos(ns));
            prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
        }

        #[test]
        fn compound_terms_add_up(terms in proptest::collection::vec((0u64..10_000, 0usize..7), 1..6)) {
            const UNITS: [(&str, u64); 7] = [
                ("ns", 1), ("us", 1_000), ("µs", 1_000), ("ms", 1_000_000),
                ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000),
            ];
            let text: String = terms.iter().map(|&(n, u)| format!("{n}{}", UNITS[u].0)).collect();
            let want: u64 = terms.iter().map(|&(n, u)| n * UNITS[u].1).sum();
            prop_assert_eq!(parse_duration(&text), Ok(Std::from_nanos(want)));
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn near_miss_garbage_never_panics(s in "[0-9.µμnumsh+ -]{0,16}") {
            if let Err(e) = parse_duration(&s) {
                prop_assert!(e.to_string().contains("expected a Go duration"));
            }
        }
    }
}
