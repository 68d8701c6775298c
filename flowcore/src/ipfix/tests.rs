//! Codec tests: exact round trips, packing, template life cycle, and hostile input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::ie::{self, DataType, IeId, VARLEN};
use crate::model::Timestamp;

const T0: Timestamp = Timestamp::from_secs(1_764_000_000);

/// Decodes every message, returning each record's values as owned debug strings.
fn decode_all(dec: &mut Decoder, now: Timestamp, msgs: &[bytes::Bytes]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for m in msgs {
        dec.decode(now, m, |r| {
            out.push(r.fields().map(|f| format!("{:?}", f.value())).collect())
        })
        .unwrap();
    }
    out
}

fn drain(enc: &mut Encoder) -> Vec<bytes::Bytes> {
    std::iter::from_fn(|| enc.poll_transmit()).collect()
}

/// Writes a realistic agent record of `layout` (IPv4 or IPv6) with counters derived from `i`.
pub(crate) fn write_flow(
    enc: &mut Encoder,
    now: Timestamp,
    layout: Layout,
    i: u64,
) -> Result<(), EncodeError> {
    let v6 = matches!(layout, Layout::AgentV6 | Layout::AggregatedV6);
    let (src, dst, cip): (IpAddr, IpAddr, IpAddr) = if v6 {
        (
            Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 1, (i % 65536) as u16).into(),
            Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 2, 7).into(),
            Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 10).into(),
        )
    } else {
        (
            Ipv4Addr::new(10, 10, 1, (i % 250) as u8).into(),
            Ipv4Addr::new(10, 10, 2, 7).into(),
            Ipv4Addr::new(10, 96, 0, 10).into(),
        )
    };
    let mut w = enc.record(now, layout.template_id())?;
    w.time(Timestamp::from_secs(1_764_000_000 - 30))
        .time(now)
        .uint(2)
        .uint(40000 + (i % 20000))
        .uint(8080)
        .uint(6)
        .uint(100 + i)
        .uint(150_000 + i * 10)
        .uint(10)
        .uint(15_000)
        .ip(src)
        .ip(dst)
        .uint(90 + i)
        .uint(1_200_000 + i)
        .uint(9)
        .uint(120_000)
        .string("frontend-7c9f8d6b5-x2k4p")
        .string("shop")
        .string("worker-node-01")
        .string("catalog-5d8f9c7b6-qwz9r")
        .string("shop")
        .string("worker-node-02")
        .ip(cip)
        .uint(8080)
        .string("shop/catalog:http")
        .string("allow-frontend")
        .string("shop")
        .uint(1)
        .string("ingress-0")
        .uint(1)
        .string("")
        .string("")
        .uint(0)
        .string("")
        .uint(0)
        .string("ESTABLISHED")
        .uint(2)
        .string(r#"{"app":"frontend","tier":"web"}"#)
        .string(r#"{"app":"catalog"}"#);
    if matches!(layout, Layout::AggregatedV4 | Layout::AggregatedV6) {
        for k in 0..16 {
            w.uint(1000 * k + i);
        }
        for k in 0..6 {
            w.uint(8_000_000 + k);
        }
        w.time(now).time(now).uint(0xC0FFEE).string("cluster-a");
        w.ip(Ipv4Addr::new(192, 0, 2, 1).into())
            .ip(Ipv6Addr::LOCALHOST.into());
    }
    w.finish()
}

pub(crate) fn encoder_with_layouts(max: usize) -> Encoder {
    let mut enc = Encoder::new(EncoderConfig {
        domain: 7,
        max_message_size: max,
        template_refresh: None,
    })
    .unwrap();
    for l in [
        Layout::AgentV4,
        Layout::AgentV6,
        Layout::AggregatedV4,
        Layout::AggregatedV6,
    ] {
        enc.add_template(l.template_id(), l.fields()).unwrap();
    }
    enc
}

#[test]
fn agent_record_round_trips_with_names_and_values() {
    let mut enc = encoder_with_layouts(MAX_MESSAGE_LEN);
    write_flow(&mut enc, T0, Layout::AgentV4, 3).unwrap();
    enc.flush(T0);
    let msgs = drain(&mut enc);
    assert_eq!(msgs.len(), 2, "a template message, then a data message");
    let mut dec = Decoder::new(DecoderConfig::default());
    let mut seen = 0;
    for m in &msgs {
        dec.decode(T0, m, |r| {
            seen += 1;
            assert_eq!(r.template_id(), 256);
            let get = |name: &str| {
                let i = r
                    .template
                    .position(ie::by_name(name).unwrap().ie_id())
                    .unwrap();
                r.field(i).unwrap().value()
            };
            assert_eq!(get("octetTotalCount"), FieldValue::Unsigned(150_030));
            assert_eq!(
                get("reverseOctetTotalCount"),
                FieldValue::Unsigned(1_200_003)
            );
            assert_eq!(
                get("sourceIPv4Address"),
                FieldValue::Ipv4(Ipv4Addr::new(10, 10, 1, 3))
            );
            assert_eq!(
                get("sourcePodName").as_str().unwrap(),
                "frontend-7c9f8d6b5-x2k4p"
            );
            assert_eq!(
                get("flowEndSeconds"),
                FieldValue::DateTimeSeconds(1_764_000_000)
            );
            assert_eq!(get("tcpState").as_str().unwrap(), "ESTABLISHED");
        })
        .unwrap();
    }
    assert_eq!(seen, 1);
    assert_eq!(dec.stats().templates, 4);
    assert_eq!(dec.stats().sequence_gaps, 0);
}

#[test]
fn packs_many_records_per_message_without_splitting_and_counts_sequence() {
    let mut enc = encoder_with_layouts(1400);
    for i in 0..1000 {
        let l = if i % 3 == 0 {
            Layout::AgentV6
        } else {
            Layout::AgentV4
        };
        write_flow(&mut enc, T0, l, i).unwrap();
    }
    enc.flush(T0);
    let msgs = drain(&mut enc);
    assert!(msgs.iter().all(|m| m.len() <= 1400));
    assert!(
        msgs.len() < 1000 / 3,
        "records share messages: {} messages",
        msgs.len()
    );
    let mut dec = Decoder::new(DecoderConfig::default());
    let recs = decode_all(&mut dec, T0, &msgs);
    assert_eq!(recs.len(), 1000);
    assert_eq!(dec.stats().sequence_gaps, 0);
    assert_eq!(dec.stats().data_records, 1000);
}

#[test]
fn sequence_gap_counts_missing_records() {
    let mut enc = encoder_with_layouts(600);
    for i in 0..40 {
        write_flow(&mut enc, T0, Layout::AgentV4, i).unwrap();
    }
    enc.flush(T0);
    let mut msgs = drain(&mut enc);
    assert!(msgs.len() > 4);
    // Lose the third data message.
    let lost = msgs.remove(3);
    let mut lost_records = 0;
    Decoder::new(DecoderConfig::default())
        .decode(T0, &msgs[0], |_| {})
        .unwrap();
    let mut d2 = Decoder::new(DecoderConfig::default());
    d2.decode(T0, &msgs[0], |_| {}).unwrap();
    let _ = d2.decode(T0, &lost, |_| lost_records += 1);
    let mut dec = Decoder::new(DecoderConfig::default());
    decode_all(&mut dec, T0, &msgs);
    assert_eq!(dec.stats().sequence_gaps, 1);
    assert_eq!(dec.stats().records_missing, lost_records);
}

#[test]
fn oversized_record_is_refused_and_leaves_no_trace() {
    let mut enc = Encoder::new(EncoderConfig {
        domain: 1,
        max_message_size: 512,
        template_refresh: None,
    })
    .unwrap();
    enc.add_template(300, &[FieldSpec::named("interfaceName").unwrap()])
        .unwrap();
    enc.record(T0, 300).unwrap().string("ok").finish().unwrap();
    let big = "x".repeat(600);
    let err = enc
        .record(T0, 300)
        .unwrap()
        .string(&big)
        .finish()
        .unwrap_err();
    assert!(matches!(err, EncodeError::RecordTooLarge { .. }), "{err}");
    enc.record(T0, 300)
        .unwrap()
        .string("after")
        .finish()
        .unwrap();
    enc.flush(T0);
    let mut dec = Decoder::new(DecoderConfig::default());
    let recs = decode_all(&mut dec, T0, &drain(&mut enc));
    assert_eq!(recs.len(), 2);
}

#[test]
fn field_mismatch_and_wrong_count_are_errors() {
    let mut enc = encoder_with_layouts(MAX_MESSAGE_LEN);
    let e = enc
        .record(T0, 256)
        .unwrap()
        .string("not a time")
        .finish()
        .unwrap_err();
    assert!(
        matches!(e, EncodeError::FieldMismatch { index: 0, .. }),
        "{e}"
    );
    let e = enc.record(T0, 256).unwrap().time(T0).finish().unwrap_err();
    assert!(
        matches!(e, EncodeError::FieldCount { written: 1, .. }),
        "{e}"
    );
    let e = enc.record(T0, 999).err().unwrap();
    assert_eq!(e, EncodeError::UnknownTemplate(999));
    // Nothing half-written went out.
    enc.flush(T0);
    let mut dec = Decoder::new(DecoderConfig::default());
    assert!(decode_all(&mut dec, T0, &drain(&mut enc)).is_empty());
}

#[test]
fn withdrawal_forgets_the_template() {
    let mut enc = encoder_with_layouts(MAX_MESSAGE_LEN);
    write_flow(&mut enc, T0, Layout::AgentV4, 1).unwrap();
    enc.withdraw_template(T0, 256).unwrap();
    let msgs = drain(&mut enc);
    let mut dec = Decoder::new(DecoderConfig::default());
    decode_all(&mut dec, T0, &msgs);
    assert!(dec.template(7, 256).is_none());
    assert!(dec.template(7, 257).is_some());
    // A data set for the withdrawn template is counted, not decoded.
    decode_all(&mut dec, T0, &msgs[1..2]);
    assert_eq!(dec.stats().sets_without_template, 1);
}

#[test]
fn udp_templates_refresh_and_expire() {
    let refresh = Duration::from_secs(10);
    let mut enc = Encoder::new(EncoderConfig::datagram(3, 1500, refresh)).unwrap();
    enc.add_template(256, Layout::AgentV4.fields()).unwrap();
    write_flow(&mut enc, T0, Layout::AgentV4, 1).unwrap();
    enc.flush(T0);
    assert_eq!(enc.poll_timeout(), Some(T0 + refresh));
    enc.handle_timeout(T0 + refresh);
    let msgs = drain(&mut enc);
    assert_eq!(msgs.len(), 3, "template, data, refreshed template");
    let lifetime = 3 * refresh;
    let mut dec = Decoder::new(DecoderConfig {
        template_lifetime: Some(lifetime),
        ..Default::default()
    });
    dec.decode(T0, &msgs[0], |_| {}).unwrap();
    let mut n = 0;
    dec.decode(T0 + lifetime, &msgs[1], |_| n += 1).unwrap();
    assert_eq!(n, 1, "still valid at exactly the lifetime");
    dec.decode(T0 + lifetime + Duration::from_secs(1), &msgs[1], |_| n += 1)
        .unwrap();
    assert_eq!(n, 1, "expired");
    assert_eq!(dec.stats().templates_expired, 1);
}

#[test]
fn reduced_size_and_varlen_long_form_decode() {
    // Hand-built message: template 400 = octetDeltaCount(4 bytes) + interfaceName(varlen);
    // the string uses the 3-byte length form for a 3-byte value.
    let mut m = vec![0, 10, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
    m.extend([0, 2, 0, 12, 1, 144, 0, 2, 0, 1, 0, 4]);
    m.extend([0, 82, 0xFF, 0xFF]);
    m.truncate(m.len() - 4);
    // Rebuild properly: template set with two fields.
    let mut m = vec![0, 10, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
    m.extend([0, 2, 0, 16, 1, 144, 0, 2, 0, 1, 0, 4, 0, 82, 0xFF, 0xFF]);
    m.extend([1, 144, 0, 14, 0, 0, 1, 0, 255, 0, 3, b'e', b't', b'h']);
    let len = m.len() as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let mut dec = Decoder::new(DecoderConfig::default());
    let mut vals = Vec::new();
    dec.decode(T0, &m, |r| {
        vals.extend(r.fields().map(|f| format!("{:?}", f.value())))
    })
    .unwrap();
    assert_eq!(
        vals,
        vec![
            "Unsigned(256)".to_string(),
            format!("{:?}", FieldValue::String(b"eth"))
        ]
    );
}

#[test]
fn malformed_inputs_are_typed_errors() {
    let mut dec = Decoder::new(DecoderConfig::default());
    assert_eq!(
        dec.decode(
            T0,
            &[0, 9, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            |_| {}
        ),
        Err(DecodeError::BadVersion { found: 9 })
    );
    assert!(matches!(
        dec.decode(
            T0,
            &[0, 10, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            |_| {}
        ),
        Err(DecodeError::BadMessageLength { .. })
    ));
    // Set length past the end.
    let m = [
        0, 10, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 40,
    ];
    assert!(matches!(
        dec.decode(T0, &m, |_| {}),
        Err(DecodeError::BadSetLength {
            set_id: 256,
            offset: 16,
            ..
        })
    ));
    // ipv4Address with length 0: a fixed-length field of no bytes is refused, not carried as
    // octets (see template_tests for the lengths that are).
    let m = [
        0, 10, 0, 28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 12, 1, 0, 0, 1, 0, 8, 0, 0,
    ];
    let e = dec.decode(T0, &m, |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::BadFieldLength {
                len: 0,
                data_type: DataType::Ipv4Address,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("sourceIPv4Address"), "{e}");
}

#[test]
fn template_bounds_hold() {
    let mut dec = Decoder::new(DecoderConfig {
        max_templates: 2,
        ..Default::default()
    });
    let mut enc = Encoder::new(EncoderConfig::stream(1)).unwrap();
    for id in 256..259 {
        enc.add_template(id, &[FieldSpec::named("octetDeltaCount").unwrap()])
            .unwrap();
    }
    enc.record(T0, 256).unwrap().uint(1).finish().unwrap();
    enc.flush(T0);
    let msgs = drain(&mut enc);
    assert_eq!(
        dec.decode(T0, &msgs[0], |_| {}),
        Err(DecodeError::TooManyTemplates {
            template_id: 258,
            domain: 1,
            max: 2
        })
    );
}

#[test]
fn stream_deframer_reassembles_any_chunking() {
    let mut enc = encoder_with_layouts(2000);
    for i in 0..50 {
        write_flow(&mut enc, T0, Layout::AgentV4, i).unwrap();
    }
    enc.flush(T0);
    let msgs = drain(&mut enc);
    let stream: Vec<u8> = msgs.iter().flat_map(|m| m.iter().copied()).collect();
    for chunk in [1, 7, 100, 4096] {
        let mut d = StreamDeframer::new();
        let mut got = Vec::new();
        for c in stream.chunks(chunk) {
            d.push(c);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m.to_vec());
            }
        }
        assert_eq!(got.len(), msgs.len());
        assert_eq!(got.concat(), stream);
        assert_eq!(d.pending(), 0);
    }
}

#[test]
fn antrea_layout_ipv4_message_bytes() {
    let mut enc = encoder_with_layouts(MAX_MESSAGE_LEN);
    write_flow(&mut enc, T0, Layout::AgentV4, 1).unwrap();
    enc.flush(T0);
    let hex: Vec<String> = drain(&mut enc).iter().map(|m| hex_lines(m)).collect();
    insta::assert_snapshot!(hex.join("\n--\n"));
}

#[test]
fn antrea_layout_ipv6_message_bytes() {
    let mut enc = encoder_with_layouts(MAX_MESSAGE_LEN);
    write_flow(&mut enc, T0, Layout::AgentV6, 1).unwrap();
    enc.flush(T0);
    let msgs = drain(&mut enc);
    insta::assert_snapshot!(hex_lines(&msgs[1]));
}

fn hex_lines(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- property tests ----

/// An arbitrary field: a registered element (any PEN) at an acceptable length, or an unknown
/// enterprise element carried as octets.
fn arb_field() -> impl Strategy<Value = FieldSpec> {
    let reg: Vec<&'static ie::InfoElement> = ie::Registry::get().iter().collect();
    prop_oneof![
        4 => (0..reg.len(), any::<u8>()).prop_map(move |(i, pick)| {
            let e = reg[i];
            let spec = FieldSpec::of(e);
            let len = match e.data_type {
                DataType::Unsigned16 | DataType::Signed16 => 1 + (pick % 2) as u16,
                DataType::Unsigned32 | DataType::Signed32 => 1 + (pick % 4) as u16,
                DataType::Unsigned64 | DataType::Signed64 => 1 + (pick % 8) as u16,
                DataType::Float64 => if pick % 2 == 0 { 4 } else { 8 },
                DataType::String | DataType::OctetArray if pick % 3 == 0 => 1 + (pick % 20) as u16,
                _ => spec.len,
            };
            spec.with_len(len)
        }),
        1 => (1u32..100_000, 0u16..0x7FFF, prop_oneof![Just(VARLEN), 1u16..40]).prop_map(|(pen, id, len)| {
            FieldSpec::from_wire(IeId::new(pen + 900_000, id), len)
        }),
    ]
}

/// A value that fits `spec`.
fn arb_value(spec: FieldSpec) -> BoxedStrategy<OwnedValue> {
    use DataType::*;
    let len = spec.len;
    match spec.data_type {
        Unsigned8 | Unsigned16 | Unsigned32 | Unsigned64 => {
            let max = if len >= 8 {
                u64::MAX
            } else {
                (1u64 << (8 * len)) - 1
            };
            (0..=max).prop_map(OwnedValue::U).boxed()
        }
        Signed8 | Signed16 | Signed32 | Signed64 => {
            let bits = 8 * len.min(8) as u32;
            let min = if bits == 64 {
                i64::MIN
            } else {
                -(1i64 << (bits - 1))
            };
            let max = if bits == 64 {
                i64::MAX
            } else {
                (1i64 << (bits - 1)) - 1
            };
            (min..=max).prop_map(OwnedValue::I).boxed()
        }
        Float32 => any::<f32>()
            .prop_filter("NaN compares unequal", |f| !f.is_nan())
            .prop_map(|f| OwnedValue::F(f as f64))
            .boxed(),
        Float64 if len == 4 => any::<f32>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(|f| OwnedValue::F(f as f64))
            .boxed(),
        Float64 => any::<f64>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(OwnedValue::F)
            .boxed(),
        Boolean => any::<bool>().prop_map(OwnedValue::B).boxed(),
        MacAddress => any::<[u8; 6]>().prop_map(OwnedValue::Mac).boxed(),
        Ipv4Address => any::<[u8; 4]>()
            .prop_map(|a| OwnedValue::Ip(Ipv4Addr::from(a).into()))
            .boxed(),
        Ipv6Address => any::<[u8; 16]>()
            .prop_map(|a| OwnedValue::Ip(Ipv6Addr::from(a).into()))
            .boxed(),
        DateTimeSeconds => any::<u32>()
            .prop_map(|s| OwnedValue::T(Timestamp::from_secs(s as u64)))
            .boxed(),
        DateTimeMilliseconds => (0u64..u64::MAX / 1_000_000)
            .prop_map(|s| OwnedValue::T(Timestamp::from_millis(s)))
            .boxed(),
        DateTimeMicroseconds => (0u64..1 << 60)
            .prop_map(|n| OwnedValue::T(Timestamp::from_nanos(n / 1000 * 1000)))
            .boxed(),
        DateTimeNanoseconds => (0u64..4_000_000_000_000_000_000)
            .prop_map(|n| OwnedValue::T(Timestamp::from_nanos(n)))
            .boxed(),
        String if len == VARLEN => "[a-zA-Z0-9 ./:{}\"-]{0,300}"
            .prop_map(OwnedValue::S)
            .boxed(),
        String => proptest::collection::vec(b'a'..=b'z', len as usize)
            .prop_map(|v| OwnedValue::S(std::string::String::from_utf8(v).unwrap_or_default()))
            .boxed(),
        _ if len == VARLEN => proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(OwnedValue::O)
            .boxed(),
        _ => proptest::collection::vec(any::<u8>(), len as usize)
            .prop_map(OwnedValue::O)
            .boxed(),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum OwnedValue {
    U(u64),
    I(i64),
    F(f64),
    B(bool),
    Mac([u8; 6]),
    Ip(IpAddr),
    T(Timestamp),
    S(std::string::String),
    O(Vec<u8>),
}

fn write_value(w: &mut RecordWriter<'_>, v: &OwnedValue) {
    match v {
        OwnedValue::U(x) => w.uint(*x),
        OwnedValue::I(x) => w.int(*x),
        OwnedValue::F(x) => w.float(*x),
        OwnedValue::B(x) => w.boolean(*x),
        OwnedValue::Mac(x) => w.mac(*x),
        OwnedValue::Ip(x) => w.ip(*x),
        OwnedValue::T(x) => w.time(*x),
        OwnedValue::S(x) => w.string(x),
        OwnedValue::O(x) => w.octets(x),
    };
}

fn read_value(spec: &FieldSpec, v: FieldValue<'_>) -> OwnedValue {
    match v {
        FieldValue::Unsigned(x) => OwnedValue::U(x),
        FieldValue::Signed(x) => OwnedValue::I(x),
        FieldValue::Float(x) => OwnedValue::F(x),
        FieldValue::Bool(x) => OwnedValue::B(x),
        FieldValue::Mac(x) => OwnedValue::Mac(x),
        FieldValue::Ipv4(a) => OwnedValue::Ip(a.into()),
        FieldValue::Ipv6(a) => OwnedValue::Ip(a.into()),
        FieldValue::DateTimeSeconds(s) => OwnedValue::T(Timestamp::from_secs(s as u64)),
        FieldValue::DateTimeMillis(s) => OwnedValue::T(Timestamp::from_millis(s)),
        FieldValue::DateTimeMicros(s) => OwnedValue::T(Timestamp::from_nanos(s as u64 * 1000)),
        FieldValue::DateTimeNanos(s) => OwnedValue::T(Timestamp::from_nanos(s as u64)),
        FieldValue::String(b) => {
            OwnedValue::S(std::string::String::from_utf8(b.to_vec()).unwrap_or_default())
        }
        FieldValue::Octets(b) if spec.data_type == DataType::String => {
            OwnedValue::S(std::string::String::from_utf8(b.to_vec()).unwrap_or_default())
        }
        FieldValue::Octets(b) => OwnedValue::O(b.to_vec()),
    }
}

fn arb_template_and_records() -> impl Strategy<Value = (Vec<FieldSpec>, Vec<Vec<OwnedValue>>)> {
    proptest::collection::vec(arb_field(), 1..24).prop_flat_map(|fields| {
        let row: Vec<_> = fields.iter().map(|f| arb_value(*f)).collect();
        (Just(fields), proptest::collection::vec(row, 1..12))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_templates_and_records_round_trip((fields, rows) in arb_template_and_records(), max in 512usize..4000) {
        let mut enc = Encoder::new(EncoderConfig { domain: 42, max_message_size: max, template_refresh: None }).unwrap();
        if enc.add_template(1000, &fields).is_err() {
            // A template too large for the message size is refused up front; nothing to check.
            return Ok(());
        }
        let mut sent = Vec::new();
        for row in &rows {
            let mut w = enc.record(T0, 1000).unwrap();
            for v in row {
                write_value(&mut w, v);
            }
            match w.finish() {
                Ok(()) => sent.push(row.clone()),
                Err(EncodeError::RecordTooLarge { .. }) => {}
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
        enc.flush(T0);
        let msgs = drain(&mut enc);
        prop_assert!(msgs.iter().all(|m| m.len() <= max));
        let mut dec = Decoder::new(DecoderConfig::default());
        let mut got = Vec::new();
        for m in &msgs {
            dec.decode(T0, m, |r| got.push(r.fields().map(|f| read_value(f.spec, f.value())).collect::<Vec<_>>())).unwrap();
        }
        prop_assert_eq!(got, sent);
        prop_assert_eq!(dec.stats().sequence_gaps, 0);
    }

    #[test]
    fn mutated_and_truncated_messages_never_panic(
        n in 1u64..20, cut in any::<prop::sample::Index>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8)
    ) {
        let mut enc = encoder_with_layouts(4000);
        for i in 0..n {
            write_flow(&mut enc, T0, if i % 2 == 0 { Layout::AgentV4 } else { Layout::AggregatedV6 }, i).unwrap();
        }
        enc.flush(T0);
        let msgs = drain(&mut enc);
        let mut dec = Decoder::new(DecoderConfig::default());
        for m in &msgs {
            let mut b = m.to_vec();
            for (i, x) in &flips {
                let i = i.index(b.len());
                b[i] ^= *x;
            }
            // Mutated bytes, then a truncated copy (length field fixed up so the header passes).
            let _ = dec.decode(T0, &b, |r| { for f in r.fields() { let _ = f.value(); } });
            let c = cut.index(b.len()).max(16);
            let mut t = b[..c].to_vec();
            let l = t.len() as u16;
            t[2..4].copy_from_slice(&l.to_be_bytes());
            let _ = dec.decode(T0, &t, |r| { for f in r.fields() { let _ = f.value(); } });
            let mut d = StreamDeframer::new();
            d.push(&b);
            while let Ok(Some(_)) = d.next_message() {}
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut dec = Decoder::new(DecoderConfig::default());
        let mut m = b.clone();
        if m.len() >= 4 {
            m[0] = 0; m[1] = 10;
            let l = m.len() as u16;
            m[2..4].copy_from_slice(&l.to_be_bytes());
        }
        let _ = dec.decode(T0, &m, |r| { for f in r.fields() { let _ = f.value(); } });
    }
}

#[test]
fn flow_record_round_trips_through_the_agent_layout() {
    use crate::aggregator::{FlowHalf, Interner as AggInterner};
    use crate::model::{
        BiCounters, FlowEndReason, FlowKey, FlowRecord, FlowType, Interner, PolicyFields,
        PolicyType, RuleAction, TcpState,
    };
    let mut names = Interner::new();
    let mut n = |x: &str| Some(names.intern(x));
    let rec = FlowRecord {
        flow_start: T0,
        flow_end: T0 + Duration::from_secs(60),
        flow_end_reason: FlowEndReason::ActiveTimeout,
        key: FlowKey {
            src: Ipv4Addr::new(10, 0, 1, 5).into(),
            dst: Ipv4Addr::new(10, 0, 2, 9).into(),
            src_port: 51000,
            dst_port: 8080,
            proto: 6,
        },
        totals: BiCounters {
            packets: 10,
            octets: 1000,
            reverse_packets: 8,
            reverse_octets: 8000,
        },
        deltas: BiCounters {
            packets: 4,
            octets: 400,
            reverse_packets: 3,
            reverse_octets: 3000,
        },
        source_pod_namespace: n("shop"),
        source_pod_name: n("frontend-1"),
        destination_pod_namespace: n("shop"),
        destination_pod_name: n("catalog-1"),
        source_node_name: n("node-a"),
        destination_node_name: n("node-b"),
        destination_cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10).into()),
        destination_service_port: Some(80),
        destination_service_port_name: n("shop/catalog:http"),
        ingress_policy: PolicyFields {
            name: n("allow-frontend"),
            namespace: n("shop"),
            policy_type: Some(PolicyType::K8sNetworkPolicy),
            rule_name: n("ingress-0"),
            action: Some(RuleAction::Allow),
        },
        egress_policy: PolicyFields::default(),
        tcp_state: Some(TcpState::Established),
        flow_type: FlowType::InterNode,
        source_pod_labels: n(r#"{"app":"frontend"}"#),
        destination_pod_labels: None,
        cluster_id: None,
    };
    let mut enc = encoder_with_layouts(MAX_MESSAGE_LEN);
    flow_record::write_flow_record(&mut enc, T0, &rec, &names).unwrap();
    enc.flush(T0);
    let mut dec = Decoder::new(DecoderConfig::default());
    let mut strings = AggInterner::default();
    let mut halves = Vec::new();
    for m in drain(&mut enc) {
        dec.decode(T0, &m, |r| {
            halves.push(FlowHalf::from_record(&r, &mut strings).unwrap())
        })
        .unwrap();
    }
    let h = &halves[0];
    assert_eq!(
        (
            h.key.src,
            h.key.dst,
            h.key.src_port,
            h.key.dst_port,
            h.key.proto
        ),
        (rec.key.src, rec.key.dst, 51000, 8080, 6)
    );
    assert_eq!(h.totals, Some([10, 1000, 8, 8000]));
    assert_eq!(h.deltas, [4, 400, 3, 3000]);
    assert_eq!(&**strings.get(h.meta.dst_pod), "catalog-1");
    assert_eq!(
        &**strings.get(h.meta.service_port_name),
        "shop/catalog:http"
    );
    assert_eq!(&**strings.get(h.meta.ingress.rule), "ingress-0");
    assert_eq!(h.meta.ingress.action, 1);
    assert_eq!(h.meta.egress.action, 0);
    assert_eq!(h.tcp_state, Some(TcpState::Established));
    assert_eq!(h.meta.flow_type, 2);
    assert_eq!(h.end_secs, 1_764_000_060);
}

#[test]
fn poll_message_counts_the_records_of_each_message_in_write_order() {
    let mut enc = encoder_with_layouts(1400);
    for i in 0..100 {
        write_flow(&mut enc, T0, Layout::AgentV4, i).unwrap();
    }
    enc.flush(T0);
    let mut dec = Decoder::new(DecoderConfig::default());
    let mut total = 0;
    while let Some((m, n)) = enc.poll_message() {
        let mut seen = 0;
        dec.decode(T0, &m, |_| seen += 1).unwrap();
        assert_eq!(seen, n);
        total += n;
    }
    assert_eq!(total, 100);
}
