//! Query-string parsing for the API: every parameter becomes a typed value here, and every
//! mistake is a 400 that names the parameter and the accepted form.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::collector::query::{DashFilter, MAX_TIME_SECS, NamedRef, TimeRange};

/// A client mistake: the message is returned as `{"error": ...}` with status 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

fn bad(name: &str, accepted: &str, got: &str) -> BadRequest {
    BadRequest(format!(
        "bad parameter `{name}`: expected {accepted}, got `{got}`"
    ))
}

/// Defaults for the dashboards' time range when the client leaves it out.
pub const DEFAULT_RANGE_SECS: u64 = 3600;

/// The parameters of one request, checked against the names its endpoint accepts.
pub struct Params {
    map: HashMap<String, String>,
}

impl Params {
    pub fn new(pairs: Vec<(String, String)>, accepted: &[&str]) -> Result<Params, BadRequest> {
        let mut map = HashMap::new();
        for (k, v) in pairs {
            if !accepted.contains(&k.as_str()) {
                return Err(BadRequest(format!(
                    "unknown parameter `{k}`; this endpoint accepts: {}",
                    accepted.join(", ")
                )));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(BadRequest(format!("parameter `{k}` given more than once")));
            }
        }
        Ok(Params { map })
    }

    /// The value, or None when absent or empty (an empty form field means "no filter").
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    pub fn named(&self, name: &str) -> Result<Option<NamedRef>, BadRequest> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let accepted = "`NAME` or `NAMESPACE/NAME`";
        match v.split_once('/') {
            None => Ok(Some(NamedRef {
                namespace: None,
                name: v.to_owned(),
            })),
            Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => {
                Ok(Some(NamedRef {
                    namespace: Some(ns.to_owned()),
                    name: n.to_owned(),
                }))
            }
            _ => Err(bad(name, accepted, v)),
        }
    }

    pub fn uint<T: TryFrom<u64>>(
        &self,
        name: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<T>, BadRequest> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let accepted = format!("an integer from {min} to {max}");
        let n: u64 = v.parse().map_err(|_| bad(name, &accepted, v))?;
        if n < min || n > max {
            return Err(bad(name, &accepted, v));
        }
        T::try_from(n)
            .map(Some)
            .map_err(|_| bad(name, &accepted, v))
    }

    pub fn ip(&self, name: &str) -> Result<Option<IpAddr>, BadRequest> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        v.parse()
            .map(Some)
            .map_err(|_| bad(name, "an IPv4 or IPv6 address", v))
    }

    /// One of `choices` (case-sensitive, as documented), else `default`.
    pub fn choice<T: Copy>(
        &self,
        name: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> Result<T, BadRequest> {
        let Some(v) = self.get(name) else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|(n, _)| *n == v)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                bad(name, &format!("one of {}", names.join(", ")), v)
            })
    }

    pub fn flow_type(&self) -> Result<Option<u8>, BadRequest> {
        let Some(v) = self.get("flowType") else {
            return Ok(None);
        };
        let t = match v {
            "1" | "intraNode" => 1,
            "2" | "interNode" => 2,
            "3" | "toExternal" => 3,
            "4" | "fromExternal" => 4,
            _ => {
                return Err(bad(
                    "flowType",
                    "1-4 or intraNode, interNode, toExternal, fromExternal",
                    v,
                ));
            }
        };
        Ok(Some(t))
    }

    pub fn protocol(&self) -> Result<Option<u8>, BadRequest> {
        let Some(v) = self.get("protocol") else {
            return Ok(None);
        };
        let p = match v.to_ascii_lowercase().as_str() {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "icmpv6" => 58,
            "sctp" => 132,
            n => n.parse().map_err(|_| {
                bad(
                    "protocol",
                    "an IP protocol number 0-255 or tcp, udp, icmp, icmpv6, sctp",
                    v,
                )
            })?,
        };
        Ok(Some(p))
    }

    /// A time within `0..=MAX_TIME_SECS` (2100-01-01): the store's arithmetic on ranges is
    /// then safe, and a value past it is a mistake the client should hear about.
    pub fn time(&self, name: &str, now: u64) -> Result<Option<u64>, BadRequest> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match parse_time(v, now) {
            Some(t) if t <= MAX_TIME_SECS => Ok(Some(t)),
            _ => Err(bad(name, TIME_FORM, v)),
        }
    }

    /// `start`/`end`; None if neither is given.
    pub fn range_opt(&self, now: u64) -> Result<Option<TimeRange>, BadRequest> {
        // A clock past 2100 is not a client's mistake; clamping keeps the range valid.
        let now = now.min(MAX_TIME_SECS);
        let (s, e) = (self.time("start", now)?, self.time("end", now)?);
        if s.is_none() && e.is_none() {
            return Ok(None);
        }
        let end = e.unwrap_or(now);
        let start = s.unwrap_or(end.saturating_sub(DEFAULT_RANGE_SECS));
        if start >= end {
            return Err(BadRequest(format!(
                "bad parameters `start`/`end`: start ({start}) must be before end ({end})"
            )));
        }
        Ok(Some(TimeRange::new(start, end)))
    }

    /// `start`/`end` defaulting to the last hour.
    pub fn range(&self, now: u64) -> Result<TimeRange, BadRequest> {
        let now = now.min(MAX_TIME_SECS);
        Ok(self
            .range_opt(now)?
            .unwrap_or(TimeRange::new(now.saturating_sub(DEFAULT_RANGE_SECS), now)))
    }

    pub fn dash(&self, now: u64) -> Result<DashFilter, BadRequest> {
        Ok(DashFilter {
            range: self.range(now)?,
            namespace: self.string("namespace"),
            pod: self.named("pod")?,
            node: self.string("node"),
        })
    }
}

/// The accepted forms of `start` and `end`, as 400s name them.
const TIME_FORM: &str = "Unix seconds from 0 to 4102444800, RFC 3339 UTC from 1970-01-01T00:00:00Z to 2100-01-01T00:00:00Z (e.g. 2026-01-02T15:04:05Z), `now` or `now-15m` (s, m, h, d)";

/// Unix seconds; `now`; `now-N{s,m,h,d}`; or `YYYY-MM-DDTHH:MM:SS[.frac]Z` with a four-digit
/// year. No input overflows: numbers too large for u64 and dates before 1970 are None; callers
/// bound the result (see [`Params::time`]).
pub fn parse_time(v: &str, now: u64) -> Option<u64> {
    if let Ok(n) = v.parse::<u64>() {
        return Some(n);
    }
    if v == "now" {
        return Some(now);
    }
    if let Some(rel) = v.strip_prefix("now-") {
        let unit = match rel.chars().last()? {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        let n: u64 = rel[..rel.len() - 1].parse().ok()?;
        return Some(now.saturating_sub(n.checked_mul(unit)?));
    }
    let v = v.strip_suffix('Z').or_else(|| v.strip_suffix('z'))?;
    let (date, time) = v.split_once(['T', 't', ' '])?;
    // Each part digits only (no sign), so every value below is small and non-negative.
    let num = |x: &str, max_len: usize| -> Option<i64> {
        if x.is_empty() || x.len() > max_len || !x.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        x.parse().ok()
    };
    let mut d = date.splitn(3, '-');
    let (y, mo, da) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':');
    let (h, mi, s) = (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, da);
    let secs = days * 86400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000", 5), Some(1_700_000_000));
        assert_eq!(parse_time("now", 5000), Some(5000));
        assert_eq!(parse_time("now-15m", 5000), Some(5000 - 900));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", 0), Some(0));
        assert_eq!(parse_time("2026-01-02T15:04:05Z", 0), Some(1_767_366_245));
        assert_eq!(parse_time("2024-02-29T00:00:00.5Z", 0), Some(1_709_164_800));
        for bad in [
            "",
            "yesterday",
            "now-5x",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "now-99999999999999999d",
        ] {
            assert_eq!(parse_time(bad, 10), None, "{bad}");
        }
    }

    #[test]
    fn unknown_and_bad_parameters_name_themselves() {
        let p = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        let e = Params::new(p("nmespace", "x"), &["namespace"])
            .err()
            .unwrap();
        assert!(
            e.0.contains("`nmespace`") && e.0.contains("namespace"),
            "{e:?}"
        );
        let ps = Params::new(p("srcPort", "70000"), &["srcPort"]).unwrap();
        let e = ps.uint::<u16>("srcPort", 0, 65535).unwrap_err();
        assert!(
            e.0.contains("`srcPort`") && e.0.contains("0 to 65535"),
            "{e:?}"
        );
        let ps = Params::new(p("pod", "a/b/c"), &["pod"]).unwrap();
        assert!(ps.named("pod").unwrap_err().0.contains("NAMESPACE/NAME"));
        let ps = Params::new(p("start", "20"), &["start", "end"]).unwrap();
        assert!(ps.range(10).unwrap_err().0.contains("before"));
    }

    #[test]
    fn times_near_the_integer_limits_are_400s_naming_the_parameter_and_range() {
        let two = |s: &str, e: &str| {
            vec![
                ("start".to_owned(), s.to_owned()),
                ("end".to_owned(), e.to_owned()),
            ]
        };
        for (start, end, name) in [
            ("0", "18446744073709551615", "end"),
            ("18446744073709551614", "18446744073709551615", "start"),
            ("9223372036854775807", "now", "start"),
            ("0", "18446744073709551616", "end"),
            ("-1", "now", "start"),
            ("0", "4102444801", "end"),
            ("0", "9999-12-31T23:59:59Z", "end"),
            ("99999999999-01-01T00:00:00Z", "now", "start"),
            ("-9223372036854775808-01-01T00:00:00Z", "now", "start"),
        ] {
            let ps = Params::new(two(start, end), &["start", "end"]).unwrap();
            let e = ps.range(1_767_225_600).unwrap_err().0;
            assert!(
                e.contains(&format!("`{name}`")) && e.contains("0 to 4102444800"),
                "{start}..{end}: {e}"
            );
        }
        // The last accepted second works, and its minute rounding stays in range.
        let ps = Params::new(two("4102444000", "4102444800"), &["start", "end"]).unwrap();
        let r = ps.range(0).unwrap();
        assert_eq!(r.minutes(), (4_102_443_960, 4_102_444_800));
        // A clock past the bound is clamped, not an error.
        let ps = Params::new(vec![], &["start", "end"]).unwrap();
        assert_eq!(ps.range(u64::MAX).unwrap().end, MAX_TIME_SECS);
    }

    proptest::proptest! {
        #[test]
        fn any_time_parameters_give_a_bounded_range_or_a_400(
            start in time_text(),
            end in time_text(),
            now in proptest::prelude::any::<u64>(),
        ) {
            let ps = Params::new(
                vec![("start".into(), start.clone()), ("end".into(), end.clone())],
                &["start", "end"],
            )
            .unwrap();
            match ps.range(now) {
                Ok(r) => {
                    proptest::prop_assert!(r.start < r.end && r.end <= MAX_TIME_SECS);
                    let (a, b) = r.minutes();
                    proptest::prop_assert!(a <= r.start && b >= r.end && b - a >= 60);
                }
                Err(e) => proptest::prop_assert!(
                    e.0.contains("`start`") || e.0.contains("`end`"),
                    "{start}..{end}: {}", e.0
                ),
            }
        }
    }

    /// Values a client might send for a time: integers of any size and sign, relative and
    /// RFC 3339 forms with arbitrary numbers, and arbitrary text.
    fn time_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (0u64..=5_000_000_000).prop_map(|n| n.to_string()),
            any::<u128>().prop_map(|n| n.to_string()),
            (any::<u64>(), "[smhdx]").prop_map(|(n, u)| format!("now-{n}{u}")),
            (
                any::<i64>(),
                any::<i64>(),
                any::<i64>(),
                0i64..100,
                0i64..100,
                0i64..100
            )
                .prop_map(|(y, mo, d, h, mi, s)| format!(
                    "{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"
                )),
            (0i64..10_000, 1i64..=12, 1i64..=31)
                .prop_map(|(y, mo, d)| format!("{y:04}-{mo:02}-{d:02}T00:00:00Z")),
            Just("now".to_owned()),
            ".{0,24}",
        ]
    }
}
