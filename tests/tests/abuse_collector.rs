//! Abuse suite, the collector's IPFIX side: a second exporter flooding it, and the same flood
//! against a size-bounded store followed by the retention pass. CI-sized; each asserts the
//! issue's requirements (`Outcome::failures`). See `tests/README.md` and `tests/ABUSE.md`.

use tests::abuse::Size::Ci;
use tests::abuse::scenarios as s;

#[test]
fn one_exporter_flooding_the_collector() {
    s::collector_flood(Ci).run().assert_ok(vec![]);
}

#[test]
fn collector_flood_then_size_retention() {
    s::collector_flood_retention(Ci).run().assert_ok(vec![]);
}
