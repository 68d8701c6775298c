//! `flowlens observe`: flow records from a collector's API in the terminal, as a table or JSON
//! lines, once or following new ones (`--follow` polls and prints only records not yet shown).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Arguments of `flowlens observe`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  flowlens observe --namespace shop --since 15m\n  flowlens observe --pod shop/frontend-1 --follow\n  flowlens observe --src-pod shop/frontend-1 --dst-node node-2\n  flowlens observe --flow-type interNode --protocol tcp -o json | jq ."
)]
pub struct ObserveArgs {
    /// The collector's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Keep polling and print new records as they are stored.
    #[arg(long, short)]
    pub follow: bool,
    /// Records from this long ago on (`15m`, `1h`, `2d`).
    #[arg(long, default_value = "15m")]
    pub since: String,
    /// Either end in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Either end is this Pod (`NAME` or `NAMESPACE/NAME`).
    #[arg(long)]
    pub pod: Option<String>,
    /// Either end on this Node.
    #[arg(long)]
    pub node: Option<String>,
    /// Source end in this namespace.
    #[arg(long)]
    pub src_namespace: Option<String>,
    /// Destination end in this namespace.
    #[arg(long)]
    pub dst_namespace: Option<String>,
    /// Source Pod (`NAME` or `NAMESPACE/NAME`).
    #[arg(long)]
    pub src_pod: Option<String>,
    /// Destination Pod (`NAME` or `NAMESPACE/NAME`).
    #[arg(long)]
    pub dst_pod: Option<String>,
    /// Source Node.
    #[arg(long)]
    pub src_node: Option<String>,
    /// Destination Node.
    #[arg(long)]
    pub dst_node: Option<String>,
    /// Through this Service (`namespace/name`).
    #[arg(long)]
    pub service: Option<String>,
    /// Admitted by this NetworkPolicy (`NAME` or `NAMESPACE/NAME`).
    #[arg(long)]
    pub policy: Option<String>,
    /// intraNode, interNode, toExternal or fromExternal.
    #[arg(long)]
    pub flow_type: Option<String>,
    #[arg(long)]
    pub src_ip: Option<String>,
    #[arg(long)]
    pub dst_ip: Option<String>,
    #[arg(long)]
    pub src_port: Option<u16>,
    #[arg(long)]
    pub dst_port: Option<u16>,
    /// tcp, udp, icmp, sctp or a number.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Records per request (at most 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl ObserveArgs {
    fn query(&self, since: &str) -> String {
        let mut q = vec![
            ("start".to_string(), since.to_string()),
            ("limit".into(), self.limit.to_string()),
        ];
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                q.push((k.to_string(), v));
            }
        };
        add("namespace", self.namespace.clone());
        add("pod", self.pod.clone());
        add("node", self.node.clone());
        add("srcNamespace", self.src_namespace.clone());
        add("dstNamespace", self.dst_namespace.clone());
        add("srcPod", self.src_pod.clone());
        add("dstPod", self.dst_pod.clone());
        add("srcNode", self.src_node.clone());
        add("dstNode", self.dst_node.clone());
        add("service", self.service.clone());
        add("policy", self.policy.clone());
        add("flowType", self.flow_type.clone());
        add("srcIp", self.src_ip.clone());
        add("dstIp", self.dst_ip.clone());
        add("srcPort", self.src_port.map(|p| p.to_string()));
        add("dstPort", self.dst_port.map(|p| p.to_string()));
        add("protocol", self.protocol.clone());
        q.iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn fetch(agent: &ureq::Agent, url: &str) -> anyhow::Result<Vec<Value>> {
    let mut resp = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body: Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("reading the response of {url}"))?;
    if !status.is_success() {
        bail!(
            "{url}: {}",
            body.get("error")
                .and_then(Value::as_str)
                .unwrap_or("request failed")
        );
    }
    Ok(body
        .get("flows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

pub fn run(args: ObserveArgs) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let base = args.server.trim_end_matches('/');
    let mut since = format!("now-{}", args.since);
    let mut shown: HashSet<i64> = HashSet::new();
    let mut header = args.output == Output::Table;
    loop {
        let url = format!("{base}/api/flows?{}", args.query(&since));
        let mut rows = fetch(&agent, &url)?;
        rows.reverse(); // oldest first
        for r in &rows {
            let id = r.get("id").and_then(Value::as_i64).unwrap_or(-1);
            if !shown.insert(id) {
                continue;
            }
            match args.output {
                Output::Json => println!("{r}"),
                Output::Table => {
                    if header {
                        println!("{}", table_header());
                        header = false;
                    }
                    println!("{}", table_row(r));
                }
            }
        }
        if !args.follow {
            return Ok(());
        }
        // Overlap the window a little; ids already shown are skipped.
        since = "now-1m".into();
        if shown.len() > 100_000 {
            shown.clear();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn table_header() -> String {
    format!(
        "{:<19} {:<5} {:<36} {:<36} {:<12} {:>12} {:>12} {:<11}",
        "END (UTC)", "PROTO", "SOURCE", "DESTINATION", "TYPE", "BYTES →", "BYTES ←", "TCP"
    )
}

fn table_row(r: &Value) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    let end = n("flowEndSeconds");
    let end = format_time(end);
    let proto = match n("protocolIdentifier") {
        6 => "tcp".to_string(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmp6".into(),
        p => p.to_string(),
    };
    let endpoint = |pod: &str, ns: &str, ip: &str, port: &str| {
        let who = if pod.is_empty() {
            s(ip)
        } else {
            format!("{}/{}", s(ns), s(pod))
        };
        format!("{who}:{}", n(port))
    };
    let ty = match n("flowType") {
        1 => "intra-node",
        2 => "inter-node",
        3 => "to-external",
        4 => "from-external",
        _ => "",
    };
    format!(
        "{:<19} {:<5} {:<36} {:<36} {:<12} {:>12} {:>12} {:<11}",
        end,
        proto,
        trunc(
            &endpoint(
                "sourcePodName",
                "sourcePodNamespace",
                "sourceIPAddress",
                "sourceTransportPort"
            ),
            36
        ),
        trunc(
            &endpoint(
                "destinationPodName",
                "destinationPodNamespace",
                "destinationIPAddress",
                "destinationTransportPort"
            ),
            36
        ),
        ty,
        n("octetTotalCount"),
        n("reverseOctetTotalCount"),
        s("tcpState")
    )
}

fn trunc(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!(
            "…{}",
            s.chars()
                .rev()
                .take(n - 1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        )
    }
}

/// `YYYY-MM-DD HH:MM:SS` for Unix seconds (UTC), without a date crate: days → civil date.
fn format_time(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_query_strings() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_764_000_000), "2025-11-24 16:00:00");
        let a = ObserveArgs {
            server: String::new(),
            follow: false,
            since: "15m".into(),
            namespace: Some("shop".into()),
            pod: Some("shop/front end".into()),
            node: None,
            src_namespace: None,
            dst_namespace: None,
            src_pod: Some("shop/api".into()),
            dst_pod: None,
            src_node: None,
            dst_node: Some("n2".into()),
            service: None,
            policy: None,
            flow_type: None,
            src_ip: None,
            dst_ip: None,
            src_port: Some(80),
            dst_port: None,
            protocol: None,
            limit: 10,
            output: Output::Table,
        };
        assert_eq!(
            a.query("now-15m"),
            "start=now-15m&limit=10&namespace=shop&pod=shop%2Ffront%20end&srcPod=shop%2Fapi&dstNode=n2&srcPort=80"
        );
    }
}
