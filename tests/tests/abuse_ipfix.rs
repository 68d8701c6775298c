//! Abuse suite, the agents' side of the aggregator (IPFIX collecting process): connections
//! held, half-done TLS handshakes, UDP sessions, messages that never finish, malformed floods,
//! templates and observation domains. CI-sized; each asserts the requirements
//! (`Outcome::failures`) plus its own. See `tests/README.md` and `tests/ABUSE.md`.

use tests::abuse::Size::Ci;
use tests::abuse::scenarios as s;

#[test]
fn control_no_attack() {
    s::control(Ci).run().assert_ok(vec![]);
}

#[test]
fn idle_tcp_connections() {
    s::idle_connections(Ci).run().assert_ok(vec![]);
}

#[test]
fn half_open_tls_handshakes() {
    s::half_open_tls(Ci).run().assert_ok(vec![]);
}

#[test]
fn udp_session_table() {
    s::udp_session_table(Ci).run().assert_ok(vec![]);
}

#[test]
fn partial_message_then_silence() {
    let o = s::partial_message(Ci, false).run();
    o.assert_ok(s::partial_message_failures(&o));
}

#[test]
fn partial_message_trickled() {
    let o = s::partial_message(Ci, true).run();
    o.assert_ok(s::partial_message_failures(&o));
}

#[test]
fn malformed_flood_log_lines() {
    let o = s::malformed_flood(Ci).run();
    o.assert_ok(s::log_flood_failures(&o));
}

#[test]
fn template_amplification() {
    s::template_amplification(Ci).run().assert_ok(vec![]);
}

#[test]
fn many_observation_domains() {
    s::many_domains(Ci).run().assert_ok(vec![]);
}

#[test]
fn template_churn() {
    s::template_churn(Ci).run().assert_ok(vec![]);
}
