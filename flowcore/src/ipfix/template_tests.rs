//! Template state tests: the session's byte and count budget, its exact accounting through
//! definitions, redefinitions, withdrawals and expiry, the `Arc` a record hands out, and the
//! lenient reading of field lengths real exporters get wrong.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::ie::DataType;
use crate::model::Timestamp;

const T0: Timestamp = Timestamp::from_secs(1_764_000_000);

/// An IPFIX message of `domain` holding `sets` (set id, body), with its length filled in.
fn message(domain: u32, sets: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![0, 10, 0, 0];
    m.extend(1_764_000_000u32.to_be_bytes());
    m.extend(0u32.to_be_bytes());
    m.extend(domain.to_be_bytes());
    for (id, body) in sets {
        m.extend(id.to_be_bytes());
        m.extend(((body.len() + 4) as u16).to_be_bytes());
        m.extend(body);
    }
    let len = m.len() as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m
}

/// A template record: IANA (element id, length) pairs; `scope` makes it an options template.
fn template_record(id: u16, fields: &[(u16, u16)], scope: Option<u16>) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend(id.to_be_bytes());
    r.extend((fields.len() as u16).to_be_bytes());
    if let Some(s) = scope {
        r.extend(s.to_be_bytes());
    }
    for (ie, len) in fields {
        r.extend(ie.to_be_bytes());
        r.extend(len.to_be_bytes());
    }
    r
}

/// A message defining one template (set 2) or options template (set 3).
fn define_msg(domain: u32, id: u16, fields: &[(u16, u16)], options: bool) -> Vec<u8> {
    let (set, scope) = if options { (3, Some(1)) } else { (2, None) };
    message(domain, &[(set, template_record(id, fields, scope))])
}

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// The heap bytes a decoder should account for the live templates: the sum over them.
fn live_bytes(dec: &Decoder) -> usize {
    dec.templates().map(|(_, t)| t.heap_bytes()).sum()
}

/// One message pmacctd 1.7.7's nfprobe sent with `nfprobe_tstamp_usec: true`: four templates
/// whose first two fields are flowEndMicroseconds (155) and flowStartMicroseconds (154) with
/// length 16 (a `struct timeval`: 8 bytes of seconds, 8 of microseconds), then one data record.
const PMACCT_USECS: &str = "
    000a01706b173a810000000000000000
    000200440400000f009b0010009a00100001000800020008003c0001000a0004000e0004003d0001000800040
    00c000400070002000b000200050001000600010004000100020044
    0401000f009b0010009a00100001000800020008003c0001000a0004000e0004003d000100080004000c0004
    00070002000b000200050001000600010004000100020044
    0800000f009b0010009a00100001000800020008003c0001000a0004000e0004003d0001001b0010001c0010
    0005000100070002000b0002000600010004000100020044
    0801000f009b0010009a00100001000800020008003c0001000a0004000e0004003d0001001b0010001c0010
    0005000100070002000b00020006000100040001
    04000050
    000000006924810000000000000007d0 00000000692481000000000000000000
    0000000000001a68 0000000000000006 04 00000000 00000000 00 7f000001 7f000001 9c40 1283 00 00 11
    000000";

#[test]
fn nonstandard_lengths_from_the_wire_decode_as_named_octets() {
    let msg = hex(PMACCT_USECS);
    let mut dec = Decoder::new(DecoderConfig::default());
    let mut recs: Vec<Vec<(String, String)>> = Vec::new();
    let summary = dec
        .decode(T0, &msg, |r| {
            recs.push(
                r.fields()
                    .map(|f| {
                        (
                            f.spec.display_name().into_owned(),
                            format!("{:?}", f.value()),
                        )
                    })
                    .collect(),
            )
        })
        .unwrap();
    assert_eq!(summary.templates, 4);
    // Two fields in each of the four definitions.
    assert_eq!(dec.stats().nonstandard_lengths, 8);
    assert_eq!(recs.len(), 1);
    let get = |name: &str| -> &str {
        &recs[0]
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing from {:?}", recs[0]))
            .1
    };
    let end = hex("000000006924810000000000000007d0");
    assert_eq!(
        get("flowEndMicroseconds"),
        format!("{:?}", FieldValue::Octets(&end))
    );
    assert!(get("flowStartMicroseconds").starts_with("Octets("));
    // The rest of the record decodes normally.
    assert_eq!(get("octetDeltaCount"), "Unsigned(6760)");
    assert_eq!(get("packetDeltaCount"), "Unsigned(6)");
    assert_eq!(get("sourceIPv4Address"), "Ipv4(127.0.0.1)");
    assert_eq!(get("sourceTransportPort"), "Unsigned(40000)");
    assert_eq!(get("destinationTransportPort"), "Unsigned(4739)");
    assert_eq!(get("protocolIdentifier"), "Unsigned(17)");
    // The field keeps its element id; only the type says octets.
    let t = dec.template(0, 1024).unwrap();
    assert_eq!(t.fields[0].ie, crate::ie::IeId::iana(155));
    assert_eq!(t.fields[0].len, 16);
    assert_eq!(t.fields[0].data_type, DataType::OctetArray);
    assert_eq!(t.fixed_len(), Some(73));
}

#[test]
fn encoder_templates_stay_strict_about_lengths() {
    let f = FieldSpec::named("flowStartMicroseconds")
        .unwrap()
        .with_len(16);
    assert!(matches!(
        Template::new(300, vec![f], 0),
        Err(DecodeError::BadFieldLength {
            len: 16,
            data_type: DataType::DateTimeMicroseconds,
            ..
        })
    ));
    let mut enc = Encoder::new(EncoderConfig::stream(1)).unwrap();
    assert!(enc.add_template(300, &[f]).is_err());
}

#[test]
fn zero_length_fixed_field_stays_an_error() {
    let mut dec = Decoder::new(DecoderConfig::default());
    let e = dec
        .decode(T0, &define_msg(1, 300, &[(154, 0), (1, 8)], false), |_| {})
        .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::BadFieldLength {
                template_id: 300,
                len: 0,
                data_type: DataType::DateTimeMicroseconds,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(dec.stats().nonstandard_lengths, 0);
    assert_eq!(dec.template_bytes(), 0);
}

#[test]
fn every_bound_is_an_error_naming_it() {
    let cfg = DecoderConfig {
        max_domains: 2,
        max_templates: 3,
        max_template_bytes: 2500,
        max_fields_per_template: 40,
        template_lifetime: None,
    };
    let mut dec = Decoder::new(cfg.clone());
    let e = dec
        .decode(T0, &define_msg(1, 300, &[(1, 8); 41], false), |_| {})
        .unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooManyFields {
            template_id: 300,
            count: 41,
            max: 40
        }
    );
    assert!(
        e.to_string().contains("max_fields_per_template = 40"),
        "{e}"
    );

    for d in [1, 2] {
        dec.decode(T0, &message(d, &[]), |_| {}).unwrap();
    }
    let e = dec.decode(T0, &message(3, &[]), |_| {}).unwrap_err();
    assert_eq!(e, DecodeError::TooManyDomains { domain: 3, max: 2 });
    assert!(e.to_string().contains("max_domains = 2"), "{e}");

    let small = [(1, 8), (2, 8)];
    for id in 300..303 {
        dec.decode(T0, &define_msg(1, id, &small, false), |_| {})
            .unwrap();
    }
    let e = dec
        .decode(T0, &define_msg(2, 303, &small, false), |_| {})
        .unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooManyTemplates {
            template_id: 303,
            domain: 2,
            max: 3
        }
    );
    assert!(e.to_string().contains("max_templates = 3"), "{e}");
    // A redefinition is no new template, so it passes the count bound.
    dec.decode(T0, &define_msg(1, 302, &[(1, 8)], false), |_| {})
        .unwrap();

    let mut dec = Decoder::new(cfg);
    dec.decode(T0, &define_msg(1, 300, &[(1, 8); 40], false), |_| {})
        .unwrap();
    let in_use = dec.template_bytes();
    let e = dec
        .decode(T0, &define_msg(1, 301, &[(1, 8); 40], false), |_| {})
        .unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooManyTemplateBytes {
            template_id: 301,
            domain: 1,
            bytes: in_use,
            in_use,
            max: 2500
        }
    );
    assert!(e.to_string().contains("max_template_bytes = 2500"), "{e}");
    // A refused template leaves the state as it was; replacing the one template fits.
    assert_eq!(dec.template_bytes(), in_use);
    assert!(dec.template(1, 301).is_none());
    dec.decode(T0, &define_msg(1, 300, &[(1, 8); 39], false), |_| {})
        .unwrap();
    assert!(dec.template_bytes() < in_use);
    assert_eq!(dec.template_bytes(), live_bytes(&dec));
}

/// The figures the `DecoderConfig` doc comments give for the defaults.
#[test]
fn default_budget_fits_real_layouts_and_stops_the_largest_templates() {
    let cfg = DecoderConfig::default();
    let largest = Layout::AggregatedV6;
    let antrea = Template::new(259, largest.fields().to_vec(), 0).unwrap();
    let n = antrea.fields.len();
    assert!((60..=80).contains(&n), "{n} fields");
    let per = antrea.heap_bytes();
    assert!((2000..3000).contains(&per), "{per} bytes for {n} fields");
    assert!(cfg.max_templates * per <= 600 << 10);
    assert!(cfg.max_templates * per < cfg.max_template_bytes);
    let f = FieldSpec::named("octetDeltaCount").unwrap();
    let big = Template::new(300, vec![f; cfg.max_fields_per_template], 0).unwrap();
    let per = big.heap_bytes();
    assert!((16 << 10..18 << 10).contains(&per), "{per} bytes");
    assert!(cfg.max_templates * per > 4 << 20);
}

/// A peer defining as many maximal templates as it can, over every domain it may use: the
/// session refuses it at the byte budget, never holding more than the budget.
#[test]
fn template_flood_stops_at_the_byte_budget() {
    let cfg = DecoderConfig::default();
    let mut dec = Decoder::new(cfg.clone());
    let fields = vec![(1u16, 8u16); cfg.max_fields_per_template];
    let mut defined = 0;
    let err = 'flood: {
        for domain in 0..cfg.max_domains as u32 {
            for id in 256..512 {
                match dec.decode(T0, &define_msg(domain, id, &fields, false), |_| {}) {
                    Ok(_) => defined += 1,
                    Err(e) => break 'flood e,
                }
            }
        }
        panic!("no bound stopped {defined} templates");
    };
    assert!(
        matches!(err, DecodeError::TooManyTemplateBytes { max, .. } if max == 1 << 20),
        "{err}"
    );
    assert!(dec.template_bytes() <= cfg.max_template_bytes);
    assert!(dec.template_bytes() > cfg.max_template_bytes - (18 << 10));
    assert_eq!(dec.template_bytes(), live_bytes(&dec));
    assert_eq!(dec.templates().count(), defined);
    // The old bounds let 1,000-field templates through; now they are refused outright.
    let e = dec
        .decode(T0, &define_msg(0, 600, &[(1, 8); 1000], false), |_| {})
        .unwrap_err();
    assert!(matches!(e, DecodeError::TooManyFields { .. }), "{e}");
}

#[test]
fn expire_frees_templates_no_data_set_names() {
    let lifetime = Duration::from_secs(10);
    let mut dec = Decoder::new(DecoderConfig {
        template_lifetime: Some(lifetime),
        ..Default::default()
    });
    let a = [(1, 8), (2, 8)];
    let b = [(1, 8), (2, 8), (4, 1)];
    dec.decode(T0, &define_msg(1, 300, &a, false), |_| {})
        .unwrap();
    dec.decode(T0, &define_msg(1, 301, &b, false), |_| {})
        .unwrap();
    let both = dec.template_bytes();
    assert_eq!(both, live_bytes(&dec));
    // Refreshing 301 keeps it alive past 300.
    dec.decode(
        T0 + Duration::from_secs(8),
        &define_msg(1, 301, &b, false),
        |_| {},
    )
    .unwrap();
    assert_eq!(dec.template_bytes(), both, "a refresh costs nothing");
    assert_eq!(dec.expire(T0 + lifetime), 0, "still valid at the lifetime");
    assert_eq!(dec.expire(T0 + Duration::from_secs(11)), 1);
    assert!(dec.template(1, 300).is_none());
    let one = dec.template(1, 301).unwrap().heap_bytes();
    assert_eq!(dec.template_bytes(), one);
    // `decode` expires by itself too, before it reads the message: here one with no sets.
    dec.decode(T0 + Duration::from_secs(19), &message(1, &[]), |_| {})
        .unwrap();
    assert_eq!(dec.template_bytes(), 0);
    assert_eq!(dec.templates().count(), 0);
    assert_eq!(dec.stats().templates_expired, 2);
    // Without a lifetime (TCP), nothing expires.
    let mut tcp = Decoder::new(DecoderConfig::default());
    tcp.decode(T0, &define_msg(1, 300, &a, false), |_| {})
        .unwrap();
    assert_eq!(tcp.expire(T0 + Duration::from_secs(1 << 30)), 0);
    assert!(tcp.template(1, 300).is_some());
}

#[test]
fn a_record_hands_out_the_decoders_arc() {
    let mut dec = Decoder::new(DecoderConfig::default());
    let one = [(7u16, 2u16)];
    let data = |v: u16| message(1, &[(300, v.to_be_bytes().to_vec())]);
    dec.decode(T0, &define_msg(1, 300, &one, false), |_| {})
        .unwrap();
    let mut kept: Vec<Arc<Template>> = Vec::new();
    dec.decode(T0, &data(5), |r| kept.push(r.template.clone()))
        .unwrap();
    assert!(Arc::ptr_eq(&kept[0], dec.template(1, 300).unwrap()));
    // The same template again is a refresh: the same allocation.
    dec.decode(T0, &define_msg(1, 300, &one, false), |_| {})
        .unwrap();
    assert!(Arc::ptr_eq(&kept[0], dec.template(1, 300).unwrap()));
    // A redefinition is a new template; the kept one is unchanged.
    dec.decode(T0, &define_msg(1, 300, &[(7, 2), (11, 2)], false), |_| {})
        .unwrap();
    assert!(!Arc::ptr_eq(&kept[0], dec.template(1, 300).unwrap()));
    assert_eq!(kept[0].fields.len(), 1);
    assert_eq!(dec.template(1, 300).unwrap().fields.len(), 2);
    // After a withdrawal the decoder holds nothing, the consumer its clone.
    dec.decode(T0, &message(1, &[(2, vec![1, 44, 0, 0])]), |_| {})
        .unwrap();
    assert!(dec.template(1, 300).is_none());
    assert_eq!(dec.template_bytes(), 0);
    assert_eq!(Arc::strong_count(&kept[0]), 1);
}

// ---- the accounting property ----

#[derive(Clone, Debug)]
enum Op {
    Define {
        domain: u32,
        id: u16,
        fields: Vec<(u16, u16)>,
        options: bool,
    },
    WithdrawOne {
        domain: u32,
        id: u16,
    },
    WithdrawAll {
        domain: u32,
        options: bool,
    },
    /// Time passes; the next message expires what is due.
    Wait(u64),
    Expire,
}

/// Fields of every shape the accounting sees: fixed, variable-length (varlen runs, no offsets),
/// and a nonstandard length carried as octets.
fn arb_fields() -> impl Strategy<Value = Vec<(u16, u16)>> {
    let field = prop_oneof![
        Just((1u16, 8u16)),
        Just((1, 4)),
        Just((8, 4)),
        Just((82, 0xFFFF)),
        Just((154, 16)),
    ];
    proptest::collection::vec(field, 1..40)
}

fn arb_op() -> impl Strategy<Value = Op> {
    let domain = 0u32..3;
    let id = 256u16..262;
    prop_oneof![
        6 => (domain.clone(), id.clone(), arb_fields(), any::<bool>())
            .prop_map(|(domain, id, fields, options)| Op::Define { domain, id, fields, options }),
        1 => (domain.clone(), id).prop_map(|(domain, id)| Op::WithdrawOne { domain, id }),
        1 => (domain, any::<bool>()).prop_map(|(domain, options)| Op::WithdrawAll { domain, options }),
        1 => (0u64..8).prop_map(Op::Wait),
        1 => Just(Op::Expire),
    ]
}

/// What the test expects to be live: (domain, id) → (heap bytes, options, refreshed).
type Model = HashMap<(u32, u16), (usize, bool, Timestamp)>;

/// The template a definition should produce, built as the decoder's lenient parse does.
fn expected_template(id: u16, fields: &[(u16, u16)], options: bool) -> Template {
    let specs = fields
        .iter()
        .map(|&(ie, len)| {
            let mut s = FieldSpec::from_wire(crate::ie::IeId::iana(ie), len);
            if len != crate::ie::VARLEN && !s.data_type.accepts_len(len) {
                s.data_type = DataType::OctetArray;
            }
            s
        })
        .collect();
    Template::new(id, specs, if options { 1 } else { 0 }).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn template_bytes_stay_exact_and_within_budget(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let lifetime = Duration::from_secs(10);
        let cfg = DecoderConfig {
            max_domains: 3,
            max_templates: 8,
            max_template_bytes: 6000,
            max_fields_per_template: 64,
            template_lifetime: Some(lifetime),
        };
        let mut dec = Decoder::new(cfg.clone());
        let mut model = Model::new();
        let mut now = T0;
        let expire_model = |model: &mut Model, now: Timestamp| {
            let before = model.len();
            model.retain(|_, (_, _, r)| now.saturating_since(*r) <= lifetime);
            before - model.len()
        };
        for op in ops {
            match op {
                Op::Define { domain, id, fields, options } => {
                    expire_model(&mut model, now);
                    let t = expected_template(id, &fields, options);
                    let bytes = t.heap_bytes();
                    let old = model.get(&(domain, id)).map(|m| m.0);
                    let in_use: usize = model.values().map(|m| m.0).sum::<usize>() - old.unwrap_or(0);
                    let want = if old.is_none() && model.len() >= cfg.max_templates {
                        Err(DecodeError::TooManyTemplates { template_id: id, domain, max: cfg.max_templates })
                    } else if in_use + bytes > cfg.max_template_bytes {
                        Err(DecodeError::TooManyTemplateBytes { template_id: id, domain, bytes, in_use, max: cfg.max_template_bytes })
                    } else {
                        Ok(())
                    };
                    let got = dec.decode(now, &define_msg(domain, id, &fields, options), |_| {}).map(|_| ());
                    prop_assert_eq!(&got, &want);
                    if got.is_ok() {
                        model.insert((domain, id), (bytes, options, now));
                        prop_assert_eq!(&**dec.template(domain, id).unwrap(), &t);
                    }
                }
                Op::WithdrawOne { domain, id } => {
                    expire_model(&mut model, now);
                    let w = message(domain, &[(2, [id.to_be_bytes(), [0, 0]].concat())]);
                    dec.decode(now, &w, |_| {}).unwrap();
                    model.remove(&(domain, id));
                }
                Op::WithdrawAll { domain, options } => {
                    expire_model(&mut model, now);
                    let set = if options { 3 } else { 2 };
                    let w = message(domain, &[(set, vec![0, set as u8, 0, 0])]);
                    dec.decode(now, &w, |_| {}).unwrap();
                    model.retain(|&(d, _), m| d != domain || m.1 != options);
                }
                Op::Wait(secs) => now = now + Duration::from_secs(secs),
                Op::Expire => {
                    let want = expire_model(&mut model, now);
                    prop_assert_eq!(dec.expire(now), want);
                }
            }
            let live: HashMap<(u32, u16), usize> =
                dec.templates().map(|(d, t)| ((d, t.id), t.heap_bytes())).collect();
            let want: HashMap<(u32, u16), usize> = model.iter().map(|(k, m)| (*k, m.0)).collect();
            prop_assert_eq!(&live, &want);
            prop_assert_eq!(dec.template_bytes(), live.values().sum::<usize>());
            prop_assert!(dec.template_bytes() <= cfg.max_template_bytes);
        }
    }
}
