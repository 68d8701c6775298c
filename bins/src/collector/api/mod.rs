//! The collector's HTTP API: JSON over the [`Store`] queries, described by `/api/openapi.json`.
//!
//! Handlers parse the query string into typed queries (`params`), run the store call on the
//! blocking pool (SQLite calls block), and answer JSON. Client mistakes are 400 with
//! `{"error": "..."}` naming the parameter; store failures are 500 and logged.

mod openapi;
pub mod params;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use self::params::{BadRequest, Params};
use super::query::*;
use super::store::{Store, StoreError};

pub use openapi::openapi;

type Shared = Arc<dyn Store>;
type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Routes: `/api/*` and `/healthz`. The UI adds its static assets to the same router.
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/openapi.json", get(|| async { Json(openapi()) }))
        .route("/api/flows", get(flows))
        .route("/api/top", get(top))
        .route("/api/timeseries", get(timeseries))
        .route("/api/sankey", get(sankey))
        .route("/api/node-matrix", get(node_matrix))
        .route("/api/policies", get(policies))
        .route("/api/stats", get(stats))
        .with_state(store)
}

pub enum ApiError {
    Bad(BadRequest),
    Store(StoreError),
    Internal(String),
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> Self {
        ApiError::Bad(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::Bad(b) => (StatusCode::BAD_REQUEST, b.0),
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store query failed");
                (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "API handler failed");
                (StatusCode::INTERNAL_SERVER_ERROR, e)
            }
        };
        (status, Json(json!({ "error": msg }))).into_response()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn params(q: Pairs, accepted: &[&str]) -> Result<Params, ApiError> {
    let Query(pairs) =
        q.map_err(|e| BadRequest(format!("malformed query string: {}", e.body_text())))?;
    Ok(Params::new(pairs, accepted)?)
}

/// Runs a store call off the async workers.
async fn blocking<T: Send + 'static>(
    store: Shared,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| ApiError::Internal(format!("query task failed: {e}")))?
        .map_err(ApiError::Store)
}

const DASH: [&str; 5] = ["start", "end", "namespace", "pod", "node"];

fn with_dash(extra: &[&'static str]) -> Vec<&'static str> {
    DASH.iter().chain(extra).copied().collect()
}

pub const FLOW_PARAMS: &[&str] = &[
    "start",
    "end",
    "namespace",
    "pod",
    "node",
    "service",
    "policy",
    "flowType",
    "srcIp",
    "dstIp",
    "srcPort",
    "dstPort",
    "protocol",
    "srcNamespace",
    "dstNamespace",
    "srcPod",
    "dstPod",
    "srcNode",
    "dstNode",
    "limit",
    "offset",
];

/// Bounded so one request cannot make the collector build an unbounded response.
const MAX_FLOWS: u64 = 1000;
const MAX_OFFSET: u64 = 1_000_000;

async fn flows(State(s): State<Shared>, q: Pairs) -> Result<Json<Value>, ApiError> {
    let p = params(q, FLOW_PARAMS)?;
    let filter = FlowFilter {
        range: p.range_opt(now())?,
        namespace: p.string("namespace"),
        pod: p.named("pod")?,
        node: p.string("node"),
        service: p.string("service"),
        policy: p.named("policy")?,
        flow_type: p.flow_type()?,
        src_ip: p.ip("srcIp")?,
        dst_ip: p.ip("dstIp")?,
        src_port: p.uint("srcPort", 0, 65535)?,
        dst_port: p.uint("dstPort", 0, 65535)?,
        protocol: p.protocol()?,
        src_namespace: p.string("srcNamespace"),
        dst_namespace: p.string("dstNamespace"),
        src_pod: p.named("srcPod")?,
        dst_pod: p.named("dstPod")?,
        src_node: p.string("srcNode"),
        dst_node: p.string("dstNode"),
    };
    let limit = p.uint("limit", 1, MAX_FLOWS)?.unwrap_or(100);
    let offset = p.uint("offset", 0, MAX_OFFSET)?.unwrap_or(0);
    let q = FlowQuery {
        filter,
        limit,
        offset,
    };
    let rows = blocking(s, move |st| st.flows(&q)).await?;
    Ok(Json(
        json!({ "limit": limit, "offset": offset, "flows": rows }),
    ))
}

const TOP_BY: &[(&str, TopBy)] = &[
    ("podPair", TopBy::PodPair),
    ("pod", TopBy::Pod),
    ("nodePair", TopBy::NodePair),
    ("node", TopBy::Node),
    ("service", TopBy::Service),
    ("external", TopBy::External),
];

async fn top(State(s): State<Shared>, q: Pairs) -> Result<Json<Value>, ApiError> {
    let p = params(q, &with_dash(&["by", "limit"]))?;
    let q = TopQuery {
        filter: p.dash(now())?,
        by: p.choice("by", TOP_BY, TopBy::PodPair)?,
        limit: p.uint("limit", 1, 1000)?.unwrap_or(10),
    };
    let by = q.by;
    let rows = blocking(s, move |st| st.top(&q)).await?;
    Ok(Json(json!({ "by": by, "rows": rows })))
}

const SERIES_BY: &[(&str, SeriesBy)] = &[
    ("srcPod", SeriesBy::SrcPod),
    ("dstPod", SeriesBy::DstPod),
    ("service", SeriesBy::Service),
    ("nodePair", SeriesBy::NodePair),
];

async fn timeseries(State(s): State<Shared>, q: Pairs) -> Result<Json<TimeSeries>, ApiError> {
    let p = params(q, &with_dash(&["by", "limit"]))?;
    let q = SeriesQuery {
        filter: p.dash(now())?,
        by: p.choice("by", SERIES_BY, SeriesBy::SrcPod)?,
        limit: p.uint("limit", 1, 50)?.unwrap_or(10),
    };
    Ok(Json(blocking(s, move |st| st.timeseries(&q)).await?))
}

const SANKEY_BY: &[(&str, SankeyBy)] = &[
    ("podPair", SankeyBy::PodPair),
    ("policy", SankeyBy::Policy),
    ("podService", SankeyBy::PodService),
    ("podExternal", SankeyBy::PodExternal),
];

async fn sankey(State(s): State<Shared>, q: Pairs) -> Result<Json<Sankey>, ApiError> {
    let p = params(q, &with_dash(&["by", "limit"]))?;
    let q = SankeyQuery {
        filter: p.dash(now())?,
        by: p.choice("by", SANKEY_BY, SankeyBy::PodPair)?,
        limit: p.uint("limit", 1, 500)?.unwrap_or(50),
    };
    Ok(Json(blocking(s, move |st| st.sankey(&q)).await?))
}

async fn node_matrix(State(s): State<Shared>, q: Pairs) -> Result<Json<NodeMatrix>, ApiError> {
    let p = params(q, &DASH)?;
    let f = p.dash(now())?;
    Ok(Json(blocking(s, move |st| st.node_matrix(&f)).await?))
}

async fn policies(State(s): State<Shared>, q: Pairs) -> Result<Json<Value>, ApiError> {
    let p = params(q, &with_dash(&["ingress", "egress", "limit"]))?;
    let q = PolicyQuery {
        filter: p.dash(now())?,
        ingress: p.named("ingress")?,
        egress: p.named("egress")?,
        limit: p.uint("limit", 1, 1000)?.unwrap_or(100),
    };
    let rows = blocking(s, move |st| st.policy_flows(&q)).await?;
    Ok(Json(json!({ "flows": rows })))
}

async fn stats(State(s): State<Shared>, q: Pairs) -> Result<Json<StoreStats>, ApiError> {
    params(q, &[])?;
    Ok(Json(blocking(s, |st| st.stats()).await?))
}
