//! The ELK overlay's Logstash IPFIX definitions (`deploy/overlays/elk/flowlens-ipfix.yaml`) must
//! be exactly what `flowlens registry --format logstash` prints from flowcore's registry, so
//! Logstash decodes every information element flowlens exports.
//!
//! After a registry change, regenerate with
//! `FLOWLENS_BLESS=1 cargo test -p bins --test deploy_logstash` (or
//! `flowlens registry --format logstash > deploy/overlays/elk/flowlens-ipfix.yaml`).

use std::path::Path;

use flowlens_bins::registry_cmd::{Format, render};

#[test]
fn elk_overlay_ipfix_definitions_match_the_registry() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/overlays/elk/flowlens-ipfix.yaml");
    let want = render(Format::Logstash, None);
    if std::env::var_os("FLOWLENS_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || have.lines().count().min(want.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} is out of date with flowcore's registry (first difference at line {line}).\nRegenerate it: FLOWLENS_BLESS=1 cargo test -p bins --test deploy_logstash",
            path.display()
        );
    }
}
