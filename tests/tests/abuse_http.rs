//! Abuse suite, the HTTP servers (the collector's API and both daemons' ops ports): concurrent
//! heavy queries, slow headers, unbounded limits, megabyte requests, time ranges near the
//! integer limits, and a port already in use at start-up. CI-sized; each asserts the issue's
//! requirements (`Outcome::failures`) plus its own. See `tests/README.md` and `tests/ABUSE.md`.

use tests::abuse::Size::Ci;
use tests::abuse::scenarios as s;

#[test]
fn concurrent_queries() {
    s::concurrent_queries(Ci).run().assert_ok(vec![]);
}

#[test]
fn slow_headers() {
    let o = s::slow_headers(Ci).run();
    o.assert_ok(s::fd_failures(&o));
}

#[test]
fn unbounded_limit() {
    let o = s::unbounded_limit(Ci).run();
    o.assert_ok(s::all_refused_failures(&o, false));
}

#[test]
fn megabyte_requests() {
    let o = s::huge_requests(Ci).run();
    o.assert_ok(s::all_refused_failures(&o, true));
}

#[test]
fn time_range_overflow() {
    let o = s::time_range_overflow(Ci).run();
    o.assert_ok(s::all_refused_failures(&o, false));
}

#[test]
fn aggregator_metrics_port_in_use() {
    let r = s::port_in_use(true);
    let f = r.failures("metricsAddr");
    assert!(f.is_empty(), "{}", f.join("\n"));
}

#[test]
fn collector_http_port_in_use() {
    let r = s::port_in_use(false);
    let f = r.failures("httpAddr");
    assert!(f.is_empty(), "{}", f.join("\n"));
}
