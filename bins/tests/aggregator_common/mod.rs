//! Shared by the aggregator's end-to-end tests (`aggregator_*.rs`): two Nodes' exporters (flowcore's
//! encoder and `write_flow_record`, as the agent writes them, each Node with its own observation
//! domain and counters) sending over mutual TLS to the aggregator's production main loop
//! (`aggregator::run::run`) in this process, with certificates it generated.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flowcore::config::{CollectorAddr, Host, Transport};
use flowcore::ipfix::flow_record::write_flow_record;
use flowcore::ipfix::{Encoder, EncoderConfig, Layout, node_observation_domain};
use flowcore::model::{
    BiCounters, FlowEndReason, FlowKey, FlowRecord, FlowType, Interner, PolicyFields, TcpState,
    Timestamp,
};
use flowlens_bins::config::aggregator::AggregatorFile;
use flowlens_bins::ops::Ops;
use flowlens_bins::transport::exporter::{Exporter, ExporterConfig};
use flowlens_bins::transport::metrics::ExporterMetrics;
use flowlens_bins::transport::tls::{self, GeneratedCerts};
use tokio_util::sync::CancellationToken;

pub const GUARD: Duration = Duration::from_secs(60);

pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(GUARD, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now() -> Timestamp {
    flowlens_bins::clock::now()
}

/// A metric's value (summed over label sets) from the registry's text.
pub fn metric(ops: &Ops, name: &str) -> u64 {
    ops.render()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What Node `side` (0 source, 1 destination) reports for flow `j`.
pub fn counters(j: u32, side: u32) -> BiCounters {
    BiCounters {
        packets: 10 + u64::from(j) - u64::from(side),
        octets: 15_000 + 100 * u64::from(j) - 40 * u64::from(side),
        reverse_packets: 12 + u64::from(side),
        reverse_octets: 60_000 + u64::from(j),
    }
}

pub fn client_pod(j: u32) -> String {
    format!("client-7c9f8d6b5-{:05}", j % 7)
}

pub fn server_pod(j: u32) -> String {
    format!("server-5d8f9c7b6-{:05}", j % 3)
}

/// Node `side`'s (0: node-a, the source; 1: node-b) messages for `flows` (templates first):
/// flow `j` goes from client Pod `client_pod(j)` on node-a, port 40000 + j, to `server_pod(j)` on
/// node-b, with `counters(j, side)`.
pub fn node_messages(side: u32, flows: std::ops::Range<u32>) -> Vec<bytes::Bytes> {
    let me = ["node-a", "node-b"][side as usize];
    let mut names = Interner::new();
    let ns = names.intern("shop");
    let (sn, dn) = (names.intern("node-a"), names.intern("node-b"));
    let t = now();
    let mut enc = Encoder::new(EncoderConfig::stream(node_observation_domain(me))).unwrap();
    for l in [Layout::AgentV4, Layout::AgentV6] {
        enc.add_template(l.template_id(), l.fields()).unwrap();
    }
    for j in flows {
        let c = counters(j, side);
        let (cp, sp) = (names.intern(&client_pod(j)), names.intern(&server_pod(j)));
        let rec = FlowRecord {
            flow_start: Timestamp::from_secs(t.as_secs() - 30),
            flow_end: t,
            flow_end_reason: FlowEndReason::ActiveTimeout,
            key: FlowKey {
                src: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1 + (j % 7) as u8)),
                dst: IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1 + (j % 3) as u8)),
                src_port: 40_000 + j as u16,
                dst_port: 8080,
                proto: 6,
            },
            totals: c,
            deltas: c,
            source_pod_namespace: Some(ns),
            source_pod_name: Some(cp),
            destination_pod_namespace: Some(ns),
            destination_pod_name: Some(sp),
            source_node_name: Some(sn),
            destination_node_name: Some(dn),
            destination_cluster_ip: None,
            destination_service_port: None,
            destination_service_port_name: None,
            ingress_policy: PolicyFields::default(),
            egress_policy: PolicyFields::default(),
            tcp_state: Some(TcpState::Established),
            flow_type: FlowType::InterNode,
            source_pod_labels: None,
            destination_pod_labels: None,
            cluster_id: None,
        };
        write_flow_record(&mut enc, t, &rec, &names).unwrap();
    }
    enc.flush(t);
    std::iter::from_fn(|| enc.poll_transmit()).collect()
}

/// Both Nodes' exporters over mutual TLS with the aggregator's generated client certificate,
/// each sending `flows(side)`; returns once every message was written.
pub async fn export_both_nodes(
    port: u16,
    certs: &GeneratedCerts,
    flows: impl Fn(u32) -> std::ops::Range<u32>,
) {
    let client = tls::client_config(&certs.client()).unwrap();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for side in 0..2 {
        let (keep, rx) = tokio::sync::watch::channel(client.clone());
        drop(keep);
        let mut cfg = ExporterConfig::new(
            CollectorAddr::new(Host::Ip([127, 0, 0, 1].into()), port, Some(Transport::Tls)),
            Transport::Tls,
        );
        cfg.tls = Some(rx);
        cfg.server_name = Some("localhost".into());
        let (exp, mut outcomes, task) =
            Exporter::spawn(cfg, ExporterMetrics::default(), stop.clone());
        let session = tokio::time::timeout(GUARD, exp.wait_session(None))
            .await
            .expect("TLS session with the aggregator")
            .unwrap();
        let msgs = node_messages(side, flows(side));
        let n = msgs.len();
        for (tag, m) in msgs.into_iter().enumerate() {
            exp.send(session, tag as u64, m).await.unwrap();
        }
        for _ in 0..n {
            let o = tokio::time::timeout(GUARD, outcomes.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(o.result, Ok(()), "message {} of node {side}", o.tag);
        }
        tasks.push(task);
    }
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("flowlens-aggch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The aggregator in this process (`aggregator::run::run`), over mutual TLS with certificates it
/// generates into `dir`, with the sinks `sinks_yaml` configures.
pub struct Aggregator {
    pub ops: Arc<Ops>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub port: u16,
    pub certs: GeneratedCerts,
}

impl Aggregator {
    pub async fn start(dir: &TempDir, sinks_yaml: &str) -> Aggregator {
        let port = free_port();
        let yaml = format!(
            "listenAddr: \"127.0.0.1:{port}\"\naggregatorTransportProtocol: tls\nflowAggregatorAddress: localhost\ntlsDir: {}\nmetricsAddr: \"127.0.0.1:0\"\n{sinks_yaml}",
            dir.0.join("tls").display()
        );
        let cfg = flowlens_bins::config::parse_yaml::<AggregatorFile>(&yaml)
            .unwrap()
            .validate()
            .unwrap();
        let ops = Ops::new("flowlens_aggregator");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(flowlens_bins::aggregator::run::run(
            cfg,
            ops.clone(),
            shutdown.clone(),
        ));
        let o = ops.clone();
        wait_until("aggregator ready", move || o.is_ready()).await;
        Aggregator {
            certs: GeneratedCerts::in_dir(&dir.0.join("tls")),
            ops,
            shutdown,
            task,
            port,
        }
    }

    pub async fn stop(self) -> Arc<Ops> {
        self.shutdown.cancel();
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("aggregator shutdown")
            .unwrap()
            .unwrap();
        self.ops
    }
}
