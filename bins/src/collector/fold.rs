//! The backend-independent half of the dashboard queries, shared by the SQLite store
//! (`sqlite/read.rs`) and the ClickHouse store (`clickhouse.rs`): which rollup columns the
//! dashboard filters apply to, how group keys are named (`ns/pod`, Node pairs, policies), and
//! how summed groups become series, Sankey diagrams and the Node matrix. Each backend keeps its
//! own SQL and its own summing.

use std::collections::HashSet;

use super::query::{
    NodeCell, NodeMatrix, Sankey, SankeyLink, SankeyNode, Series, SeriesBy, Traffic,
};

/// Which columns of a rollup the dashboard filters apply to.
pub(crate) struct Dims {
    pub ns: &'static [&'static str],
    pub pods: &'static [(&'static str, &'static str)],
    pub nodes: &'static [&'static str],
}

pub(crate) const POD_PAIR: Dims = Dims {
    ns: &["src_ns", "dst_ns"],
    pods: &[("src_ns", "src_pod"), ("dst_ns", "dst_pod")],
    nodes: &["src_node", "dst_node"],
};
pub(crate) const POD_SERVICE: Dims = Dims {
    ns: &["src_ns"],
    pods: &[("src_ns", "src_pod")],
    nodes: &["src_node"],
};
pub(crate) const POD_EXTERNAL: Dims = Dims {
    ns: &["ns"],
    pods: &[("ns", "pod")],
    nodes: &["node"],
};
pub(crate) const NODE_PAIR: Dims = Dims {
    ns: &[],
    pods: &[],
    nodes: &["src_node", "dst_node"],
};
pub(crate) const POLICY: Dims = Dims {
    ns: &["src_ns", "dst_ns"],
    pods: &[("src_ns", "src_pod"), ("dst_ns", "dst_pod")],
    nodes: &[],
};

/// `ns/pod`, or the bare name when there is no namespace (Nodes, Services, addresses).
pub(crate) fn pod_name(ns: &str, pod: &str) -> String {
    if ns.is_empty() {
        pod.to_owned()
    } else {
        format!("{ns}/{pod}")
    }
}

/// A Node-pair end: the Node, or `external` for the empty name.
pub(crate) fn node_or_external(n: &str) -> &str {
    if n.is_empty() { "external" } else { n }
}

/// The legend name of a series keyed by `(x, y)`.
pub(crate) fn series_name(by: SeriesBy, x: &str, y: &str) -> String {
    match by {
        SeriesBy::NodePair => format!("{x} → {}", node_or_external(y)),
        _ => pod_name(x, y),
    }
}

/// Largest first, as the UI's legend lists them; ties by name.
pub(crate) fn sort_series(series: &mut [Series]) {
    let total = |s: &Series| s.points.iter().map(|p| p[1] + p[2]).sum::<u64>();
    series.sort_by(|x, y| total(y).cmp(&total(x)).then_with(|| x.name.cmp(&y.name)));
}

/// A Sankey end's name: [`pod_name`], or `(no policy)` for a policy diagram's empty name.
pub(crate) fn sankey_label(policy: bool, ns: &str, n: &str) -> String {
    if policy && n.is_empty() {
        "(no policy)".to_owned()
    } else {
        pod_name(ns, n)
    }
}

/// The link from `src` to `dst` (labels from [`sankey_label`]).
pub(crate) fn sankey_link(src: &str, dst: &str, traffic: Traffic) -> SankeyLink {
    SankeyLink {
        source: format!("s:{src}"),
        target: format!("d:{dst}"),
        bytes: traffic.bytes(),
        traffic,
    }
}

/// The diagram of `links`: each end once, in order of first appearance.
pub(crate) fn sankey(links: Vec<SankeyLink>) -> Sankey {
    let mut nodes: Vec<SankeyNode> = Vec::new();
    let mut seen = HashSet::new();
    for l in &links {
        for (id, side) in [(&l.source, "source"), (&l.target, "destination")] {
            if seen.insert(id.clone()) {
                nodes.push(SankeyNode {
                    id: id.clone(),
                    name: id[2..].to_owned(),
                    side,
                });
            }
        }
    }
    Sankey { nodes, links }
}

/// A Node-matrix cell of `bytes` over `secs`.
pub(crate) fn node_cell(src: String, dst: String, bytes: u64, secs: u64) -> NodeCell {
    NodeCell {
        src,
        dst,
        // Rounded to 1 kbps so responses are stable to compare.
        mbps: ((bytes as f64 * 8.0 / secs as f64 / 1e6) * 1000.0).round() / 1000.0,
        bytes,
    }
}

/// The matrix of `cells` (sorted by name) over `secs`: every Node named in a cell, once, sorted.
pub(crate) fn node_matrix(cells: Vec<NodeCell>, secs: u64) -> NodeMatrix {
    let mut nodes: Vec<String> = cells
        .iter()
        .flat_map(|c| [c.src.clone(), c.dst.clone()])
        .collect();
    nodes.sort();
    nodes.dedup();
    NodeMatrix {
        nodes,
        cells,
        range_secs: secs,
    }
}
