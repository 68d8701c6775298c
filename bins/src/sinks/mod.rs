//! Where aggregated records go besides IPFIX: files and stores. Each sink is synchronous and is
//! driven from its own thread by the aggregator, behind a bounded queue whose overflow is counted.

pub mod jsonl;

use flowcore::aggregator::AggregatedRecord;
use flowcore::model::IeValue;
use serde_json::{Map, Value};

/// The record as a JSON object keyed by IE names (as `flowlens decode` prints them), plus
/// `correlated`.
pub fn record_json(r: &AggregatedRecord) -> Value {
    let mut m = Map::with_capacity(72);
    r.visit(|name, v| {
        let v: Value = match v {
            IeValue::Unsigned8(x) => x.into(),
            IeValue::Unsigned16(x) => x.into(),
            IeValue::Unsigned64(x) => x.into(),
            IeValue::DateTimeSeconds(x) => x.into(),
            IeValue::Ip(a) => a.to_string().into(),
            IeValue::String(s) => s.into(),
        };
        m.insert(name.to_string(), v);
    });
    m.insert("correlated".into(), r.correlated.into());
    Value::Object(m)
}
