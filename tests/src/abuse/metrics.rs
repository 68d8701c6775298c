//! Prometheus text from a daemon's `/metrics`, parsed into samples; a counter is looked up by a
//! substring of its name plus labels (see [`super::names`]).

use std::net::SocketAddr;
use std::time::Duration;

use super::http;

/// One sample line: `name{k="v",…} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// `name{k="v",…}` as Prometheus prints it.
    pub fn key(&self) -> String {
        if self.labels.is_empty() {
            return self.name.clone();
        }
        let l: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        format!("{}{{{}}}", self.name, l.join(","))
    }

    fn matches(&self, name_part: &str, labels: &[(&str, &str)]) -> bool {
        self.name.contains(name_part)
            && labels
                .iter()
                .all(|(k, v)| self.labels.iter().any(|(a, b)| a == k && b == v))
    }
}

/// Every sample of a text exposition (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(l: &str) -> Option<Sample> {
    let (series, value) = l.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_string(),
            labels: Vec::new(),
            value,
        });
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut v = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some(c) => v.push(c),
                    None => return None,
                },
                '"' => break,
                c => v.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').trim().to_string(), v));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The sum of the samples whose name contains `name_part` and that carry every label of
/// `labels` (0 when none does).
pub fn value(samples: &[Sample], name_part: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.matches(name_part, labels))
        .fold(0.0, |a, s| a + s.value)
}

/// Whether any sample matches.
pub fn present(samples: &[Sample], name_part: &str, labels: &[(&str, &str)]) -> bool {
    samples.iter().any(|s| s.matches(name_part, labels))
}

/// `GET http://addr/metrics`, parsed.
pub fn scrape(addr: SocketAddr) -> Result<Vec<Sample>, String> {
    let r = http::get(addr, "/metrics", Duration::from_secs(5))
        .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    if r.status != 200 {
        return Err(format!(
            "GET http://{addr}/metrics: status {}: {}",
            r.status,
            r.text()
        ));
    }
    Ok(parse(&r.text()))
}

/// Counters (`…_total`) whose value differs between two scrapes, as `key before→after`.
pub fn moved(before: &[Sample], after: &[Sample]) -> Vec<(String, f64, f64)> {
    after
        .iter()
        .filter(|s| s.name.ends_with("_total"))
        .filter_map(|s| {
            let key = s.key();
            let b = before
                .iter()
                .find(|x| x.key() == key)
                .map_or(0.0, |x| x.value);
            (b != s.value).then_some((key, b, s.value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_matches_by_substring() {
        let t = "# HELP x\nflowlens_aggregator_ipfix_collect_malformed_total{reason=\"BadVersion\"} 3\n\
                 flowlens_aggregator_ipfix_collect_malformed_total{reason=\"BadSetLength\"} 2\n\
                 flowlens_aggregator_records_in_total 7\n\
                 flowlens_aggregator_exporter_flows_evicted_total{exporter=\"127.0.0.2/5\",x=\"a\\\"b\"} 1\n";
        let s = parse(t);
        assert_eq!(s.len(), 4);
        assert_eq!(value(&s, "_ipfix_collect_malformed_total", &[]), 5.0);
        assert_eq!(
            value(&s, "_malformed_total", &[("reason", "BadVersion")]),
            3.0
        );
        assert_eq!(value(&s, "records_in_total", &[("reason", "x")]), 0.0);
        assert_eq!(s[3].labels[1], ("x".to_string(), "a\"b".to_string()));
        assert_eq!(
            value(&s, "exporter_flows_evicted", &[("exporter", "127.0.0.2/5")]),
            1.0
        );
    }
}
