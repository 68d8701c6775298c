//! Abuse suite, the aggregator core: floods of unique names, huge labels, unique 5-tuples that
//! fill the flow table, and one agent flooding ended flows. CI-sized; each asserts the issue's
//! requirements (`Outcome::failures`) plus its own. See `tests/README.md` and `tests/ABUSE.md`.

use tests::abuse::Size::Ci;
use tests::abuse::scenarios as s;

#[test]
fn unique_names() {
    s::unique_names(Ci).run().assert_ok(vec![]);
}

#[test]
fn unique_names_of_valid_length() {
    s::unique_valid_names(Ci).run().assert_ok(vec![]);
}

#[test]
fn huge_labels() {
    s::huge_labels(Ci).run().assert_ok(vec![]);
}

#[test]
fn flow_table_flood() {
    let o = s::flow_table_flood(Ci).run();
    o.assert_ok(s::eviction_failures(&o));
}

#[test]
fn one_agent_flooding_ended_flows() {
    s::agent_flood(Ci).run().assert_ok(vec![]);
}
