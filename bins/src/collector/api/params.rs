//! Query-string parsing for the API: every parameter becomes a typed value here, and every
//! mistake is a 400 that names the parameter and the accepted form.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::collector::query::{DashFilter, NamedRef, TimeRange};

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

    pub fn time(&self, name: &str, now: u64) -> Result<Option<u64>, BadRequest> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        parse_time(v, now)
            .map(Some)
            .ok_or_else(|| bad(name, "Unix seconds, RFC 3339 UTC (2026-01-02T15:04:05Z), `now` or `now-15m` (s, m, h, d)", v))
    }

    /// `start`/`end`; None if neither is given.
    pub fn range_opt(&self, now: u64) -> Result<Option<TimeRange>, BadRequest> {
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

/// Unix seconds; `now`; `now-N{s,m,h,d}`; or `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
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
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
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
}
