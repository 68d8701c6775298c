//! The OpenAPI 3.0 description of the API, written by hand next to the handlers it describes.
//! A test checks that every route and every accepted parameter appears here.

use serde_json::{Value, json};

fn param(name: &str, desc: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": desc, "schema": schema })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn int(min: u64, max: u64, default: Option<u64>) -> Value {
    let mut v = json!({ "type": "integer", "minimum": min, "maximum": max });
    if let Some(d) = default {
        v["default"] = json!(d);
    }
    v
}

fn dash_params() -> Vec<Value> {
    let time = "Unix seconds (0 to 4102444800), RFC 3339 UTC up to 2100-01-01 (`2026-01-02T15:04:05Z`), `now` or `now-15m` (s, m, h, d)";
    vec![
        param(
            "start",
            &format!("Range start (inclusive), on flowEndSeconds. {time}. Default: end - 1h."),
            string(),
        ),
        param(
            "end",
            &format!("Range end (exclusive). {time}. Default: now."),
            string(),
        ),
        param("namespace", "Either end in this namespace.", string()),
        param(
            "pod",
            "Either end is this Pod: `NAME` or `NAMESPACE/NAME`.",
            string(),
        ),
        param("node", "Either end on this Node.", string()),
    ]
}

fn with(mut base: Vec<Value>, extra: Vec<Value>) -> Value {
    base.extend(extra);
    Value::Array(base)
}

fn by(choices: &[&str], default: &str) -> Value {
    param(
        "by",
        "Grouping.",
        json!({ "type": "string", "enum": choices, "default": default }),
    )
}

fn limit(max: u64, default: u64) -> Value {
    param("limit", "Maximum rows.", int(1, max, Some(default)))
}

fn op(summary: &str, params: Value, schema: &str) -> Value {
    json!({ "get": {
        "summary": summary,
        "parameters": params,
        "responses": {
            "200": { "description": "OK", "content": { "application/json": {
                "schema": { "$ref": format!("#/components/schemas/{schema}") } } } },
            "400": { "description": "A parameter is malformed; the message names it and the accepted form.",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            "422": { "description": "The query would hold more groups than query.maxGroups (or ClickHouse's query.maxMemoryBytes); narrow the time range or add filters.",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            "500": { "description": "Store failure.",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            "503": { "description": "The query ran past query.timeout (narrow the time range or add filters), or the server is busy (with a Retry-After header: retry then).",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
        }
    }})
}

fn obj(props: Value) -> Value {
    json!({ "type": "object", "properties": props })
}

fn traffic_props() -> Value {
    json!({
        "bytes": { "type": "integer", "description": "octets + reverseOctets" },
        "octets": { "type": "integer", "description": "Source → destination (for single-entity groupings: sent by the entity)." },
        "packets": { "type": "integer" },
        "reverseOctets": { "type": "integer" },
        "reversePackets": { "type": "integer" },
        "records": { "type": "integer", "description": "Records summed (a long flow counts once per export)." }
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

pub fn openapi() -> Value {
    let flow_params = with(
        dash_params(),
        vec![
            param(
                "service",
                "Service `NAMESPACE/NAME` (any port) or `NAMESPACE/NAME:PORT`.",
                string(),
            ),
            param(
                "policy",
                "Ingress or egress NetworkPolicy: `NAME` or `NAMESPACE/NAME`.",
                string(),
            ),
            param(
                "flowType",
                "1 intraNode, 2 interNode, 3 toExternal, 4 fromExternal (number or name).",
                string(),
            ),
            param("srcIp", "Source IP address.", string()),
            param("dstIp", "Destination IP address (after DNAT).", string()),
            param("srcPort", "Source port.", int(0, 65535, None)),
            param("dstPort", "Destination port.", int(0, 65535, None)),
            param(
                "protocol",
                "IP protocol number or tcp, udp, icmp, icmpv6, sctp.",
                string(),
            ),
            param("srcNamespace", "Source Pod's namespace.", string()),
            param("dstNamespace", "Destination Pod's namespace.", string()),
            param(
                "srcPod",
                "Source Pod: `NAME` or `NAMESPACE/NAME`.",
                string(),
            ),
            param(
                "dstPod",
                "Destination Pod: `NAME` or `NAMESPACE/NAME`.",
                string(),
            ),
            param("srcNode", "Source Node.", string()),
            param("dstNode", "Destination Node.", string()),
            limit(1000, 100),
            param("offset", "Rows to skip.", int(0, 1_000_000, Some(0))),
        ],
    );
    // /api/flows has no default range: without start/end it pages through everything.
    let flow_params = {
        let mut v = flow_params;
        v[0]["description"] =
            json!("Range start (inclusive), on flowEndSeconds; no default (all records).");
        v[1]["description"] = json!("Range end (exclusive); default now when start is given.");
        v
    };
    let traffic = traffic_props();
    let mut paths = serde_json::Map::new();
    paths.insert("/healthz".into(), json!({ "get": { "summary": "Liveness.", "responses": { "200": { "description": "`ok`" } } } }));
    paths.insert("/api/openapi.json".into(), json!({ "get": { "summary": "This document.", "responses": { "200": { "description": "OpenAPI 3 JSON" } } } }));
    paths.insert(
        "/api/flows".into(),
        op("Flow records, newest first.", flow_params, "FlowPage"),
    );
    paths.insert(
        "/api/top".into(),
        op(
            "Top talkers by bytes (both directions).",
            with(
                dash_params(),
                vec![
                    by(
                        &["podPair", "pod", "nodePair", "node", "service", "external"],
                        "podPair",
                    ),
                    limit(1000, 10),
                ],
            ),
            "Top",
        ),
    );
    paths.insert(
        "/api/timeseries".into(),
        op(
            "Per-minute throughput series (bits/s), the largest `limit` groups.",
            with(
                dash_params(),
                vec![
                    by(&["srcPod", "dstPod", "service", "nodePair"], "srcPod"),
                    limit(50, 10),
                ],
            ),
            "TimeSeries",
        ),
    );
    paths.insert(
        "/api/sankey".into(),
        op(
            "Sankey graph; node ids are prefixed `s:` (source side) and `d:` (destination side).",
            with(
                dash_params(),
                vec![
                    by(
                        &["podPair", "policy", "podService", "podExternal"],
                        "podPair",
                    ),
                    limit(500, 50),
                ],
            ),
            "Sankey",
        ),
    );
    paths.insert(
        "/api/node-matrix".into(),
        op(
            "Average Mbps per (source Node, destination Node) over the range.",
            Value::Array(dash_params()),
            "NodeMatrix",
        ),
    );
    paths.insert(
        "/api/policies".into(),
        op(
            "Pod pairs per egress → ingress NetworkPolicy pair.",
            with(
                dash_params(),
                vec![
                    param(
                        "ingress",
                        "Ingress policy `NAME` or `NAMESPACE/NAME`.",
                        string(),
                    ),
                    param(
                        "egress",
                        "Egress policy `NAME` or `NAMESPACE/NAME`.",
                        string(),
                    ),
                    limit(1000, 100),
                ],
            ),
            "PolicyFlows",
        ),
    );
    paths.insert(
        "/api/stats".into(),
        op("Store size and time span.", json!([]), "Stats"),
    );
    let mut schemas = serde_json::Map::new();
    schemas.insert(
        "Error".into(),
        obj(json!({ "error": { "type": "string" } })),
    );
    schemas.insert(
        "FlowPage".into(),
        obj(json!({
                "limit": { "type": "integer" }, "offset": { "type": "integer" },
                "flows": { "type": "array", "items": { "$ref": "#/components/schemas/Flow" } } })),
    );
    schemas.insert("Flow".into(), json!({ "type": "object", "description": "One aggregated flow record; keys are IPFIX information element names (camelCase), plus id and insertedAt.",
                "additionalProperties": true,
                "properties": {
                    "id": { "type": "integer" }, "insertedAt": { "type": "integer" },
                    "flowStartSeconds": { "type": "integer" }, "flowEndSeconds": { "type": "integer" },
                    "flowEndReason": { "type": "integer" }, "flowType": { "type": "integer" },
                    "sourceIPAddress": { "type": "string" }, "destinationIPAddress": { "type": "string" },
                    "sourceTransportPort": { "type": "integer" }, "destinationTransportPort": { "type": "integer" },
                    "protocolIdentifier": { "type": "integer" },
                    "octetDeltaCount": { "type": "integer" }, "reverseOctetDeltaCount": { "type": "integer" },
                    "sourcePodName": { "type": "string" }, "sourcePodNamespace": { "type": "string" }, "sourceNodeName": { "type": "string" },
                    "destinationPodName": { "type": "string" }, "destinationPodNamespace": { "type": "string" }, "destinationNodeName": { "type": "string" },
                    "destinationClusterIP": { "type": "string", "nullable": true },
                    "destinationServicePortName": { "type": "string" },
                    "ingressNetworkPolicyName": { "type": "string" }, "egressNetworkPolicyName": { "type": "string" },
                    "tcpState": { "type": "string" }, "correlated": { "type": "boolean" },
                    "fromSourceNode": { "type": "object", "nullable": true }, "fromDestinationNode": { "type": "object", "nullable": true },
                    "exporterAddress": { "type": "string", "nullable": true, "description": "Address of the IPFIX peer that sent the record to the collector; null when unknown." }
                } }));
    schemas.insert("Top".into(), obj(json!({ "by": { "type": "string" }, "rows": { "type": "array", "items": obj(merge(json!({
                "src": { "type": "string", "description": "Pod `ns/name`, Node, Service `ns/name:port` or IP." },
                "dst": { "type": "string", "description": "Present for pair groupings." } }), traffic.clone())) } })));
    schemas.insert("TimeSeries".into(), obj(json!({ "step": { "type": "integer", "description": "Seconds per point (60)." },
                "series": { "type": "array", "items": obj(json!({
                    "name": { "type": "string" },
                    "flowType": { "type": "integer", "description": "nodePair only." },
                    "points": { "type": "array", "description": "[minuteStartSecs, bitsPerSecond, reverseBitsPerSecond]",
                        "items": { "type": "array", "items": { "type": "integer" }, "minItems": 3, "maxItems": 3 } } })) } })));
    schemas.insert("Sankey".into(), obj(json!({
                "nodes": { "type": "array", "items": obj(json!({ "id": { "type": "string" }, "name": { "type": "string" },
                    "side": { "type": "string", "enum": ["source", "destination"] } })) },
                "links": { "type": "array", "items": obj(merge(json!({ "source": { "type": "string" }, "target": { "type": "string" } }), traffic.clone())) } })));
    schemas.insert("NodeMatrix".into(), obj(json!({ "nodes": { "type": "array", "items": { "type": "string" } },
                "rangeSecs": { "type": "integer" },
                "cells": { "type": "array", "items": obj(json!({ "src": { "type": "string" }, "dst": { "type": "string" },
                    "mbps": { "type": "number" }, "bytes": { "type": "integer" } })) } })));
    schemas.insert("PolicyFlows".into(), obj(json!({ "flows": { "type": "array", "items": obj(merge(json!({
                "egress": { "$ref": "#/components/schemas/Policy" }, "ingress": { "$ref": "#/components/schemas/Policy" },
                "srcPod": { "type": "string" }, "dstPod": { "type": "string" } }), traffic)) } })));
    schemas.insert("Policy".into(), obj(json!({ "namespace": { "type": "string" }, "name": { "type": "string" },
                "action": { "type": "integer", "description": "1 allow, 2 drop, 3 reject, 0 none" } })));
    schemas.insert("Stats".into(), obj(json!({ "backend": { "type": "string" }, "location": { "type": "string" },
                "records": { "type": "integer" }, "oldestEndSecs": { "type": "integer", "nullable": true },
                "newestEndSecs": { "type": "integer", "nullable": true }, "bytes": { "type": "integer", "nullable": true },
                "rollupRows": { "type": "integer" } })));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "flowlens collector API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Flow records and dashboard aggregates. Dashboards read per-minute rollups; /api/flows reads the record table. Unknown parameters are rejected with 400."
        },
        "paths": paths,
        "components": { "schemas": schemas }
    })
}
