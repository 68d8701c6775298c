//! The collector's HTTP API: JSON over the [`Store`] queries, described by `/api/openapi.json`.
//!
//! Handlers parse the query string into typed queries (`params`), run the store call on the
//! blocking pool (SQLite calls block), and answer JSON. Client mistakes are 400 with
//! `{"error": "..."}` naming the parameter; store failures are 500 and logged.
//!
//! At most `query.maxConcurrent` store calls run at once: a request waits up to `query.timeout`
//! for a free one, then gets 503 with `Retry-After`. The permit travels with the call onto the
//! blocking pool, so a request that gives up (the HTTP request timeout) does not free a slot its
//! query still occupies. A query past its deadline is 503, one past its memory bound 422 (the
//! status Prometheus uses for a query it cannot run); both say what to narrow. Each refusal is
//! counted in `query_refused_total{reason}`.

mod openapi;
pub mod params;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

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

type Shared = Arc<Api>;
type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// What the handlers share: the store and the bounds on querying it.
pub struct Api {
    store: Arc<dyn Store>,
    limits: QueryLimits,
    running: Arc<Semaphore>,
    metrics: QueryMetrics,
}

/// Why a store query was refused or stopped (the `reason` label of `query_refused_total`).
const REASONS: [&str; 3] = ["busy", "deadline", "too_large"];

/// The API's metrics, registered under the collector's prefix.
#[derive(Clone, Default)]
pub struct QueryMetrics {
    pub refused: Family<[(&'static str, &'static str); 1], Counter>,
}

impl QueryMetrics {
    pub fn register(&self, r: &mut Registry) {
        for why in REASONS {
            let _ = self.refused.get_or_create(&[("reason", why)]);
        }
        r.register(
            "query_refused",
            "Store queries refused or stopped, by reason (busy: query.maxConcurrent running for query.timeout; deadline: past query.timeout; too_large: past query.maxGroups or ClickHouse's memory bound)",
            self.refused.clone(),
        );
    }

    fn refuse(&self, why: &'static str) {
        self.refused.get_or_create(&[("reason", why)]).inc();
    }

    /// Refusals of `why` (`busy`, `deadline`, `too_large`) so far.
    pub fn refused(&self, why: &'static str) -> u64 {
        self.refused.get_or_create(&[("reason", why)]).get()
    }
}

/// Routes: `/api/*` and `/healthz`, with the default [`QueryLimits`]. The UI adds its static
/// assets to the same router.
pub fn router(store: Arc<dyn Store>) -> Router {
    router_with(store, QueryLimits::default(), QueryMetrics::default())
}

/// [`router`] with the collector's `query:` limits and metrics.
pub fn router_with(store: Arc<dyn Store>, limits: QueryLimits, metrics: QueryMetrics) -> Router {
    let api = Api {
        store,
        running: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
        limits,
        metrics,
    };
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
        .with_state(Arc::new(api))
}

pub enum ApiError {
    Bad(BadRequest),
    Store(StoreError),
    /// Every query slot stayed taken for `query.timeout`.
    Busy(String),
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
            ApiError::Busy(m) => return crate::ops::retry_later(m),
            ApiError::Store(e @ StoreError::Deadline { .. }) => {
                tracing::info!(error = %e, "store query stopped at its deadline");
                (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            ApiError::Store(e @ StoreError::TooLarge { .. }) => {
                tracing::info!(error = %e, "store query refused: too large");
                (StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
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

/// Runs a store call off the async workers, once one of `query.maxConcurrent` slots is free.
async fn blocking<T: Send + 'static>(
    api: Shared,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let wait = api.limits.timeout;
    let slot = match tokio::time::timeout(wait, api.running.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        _ => {
            api.metrics.refuse("busy");
            return Err(ApiError::Busy(format!(
                "the store is busy: {} queries (query.maxConcurrent) ran for all of {}; retry in {} s",
                api.limits.max_concurrent,
                flowcore::config::Duration(wait),
                crate::ops::RETRY_AFTER_SECS
            )));
        }
    };
    let store = api.store.clone();
    let res = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f(&*store)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("query task failed: {e}")))?;
    match &res {
        Err(StoreError::Deadline { .. }) => api.metrics.refuse("deadline"),
        Err(StoreError::TooLarge { .. }) => api.metrics.refuse("too_large"),
        _ => {}
    }
    res.map_err(ApiError::Store)
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
