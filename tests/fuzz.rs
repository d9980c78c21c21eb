//! Property-based fuzzing of everything that parses untrusted bytes: the event decoder (Tally
//! JSON and CloudEvents), the hourly query token, and every stored-value and key codec. None
//! may panic, and every refusal names a field.

use proptest::prelude::*;
use serde_json::{Value, json};
use tally::catalog::Catalog;
use tally::event::{self, DecodeContext};
use tally::log::{codec, keys, values};
use tally::report::HourlyQuery;

const NOW: i64 = 1_795_000_000_000_000;

fn context(catalog: &Catalog) -> DecodeContext<'_> {
    DecodeContext {
        catalog,
        now: NOW,
        late_window: 35 * 86_400 * 1_000_000,
        future_skew: 300 * 1_000_000,
        tenant: "acme",
        may_name_any_tenant: false,
    }
}

/// JSON values of any shape, small.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Events that are nearly right: every field present, each perhaps replaced by junk.
fn near_event() -> impl Strategy<Value = Value> {
    let field = |good: Value| prop_oneof![3 => Just(good), 1 => json_value()];
    (
        field(json!("evt-1")),
        field(json!("shop")),
        field(json!("http_lb_requests")),
        field(json!("12.5")),
        field(json!("2026-11-18T20:00:00Z")),
        any::<bool>(),
    )
        .prop_map(|(id, ns, metric, quantity, timestamp, cloud)| {
            if cloud {
                json!({"specversion": "1.0", "id": id, "source": "/x", "type": "usage",
                       "time": timestamp, "subject": ns,
                       "data": {"metric_label": metric, "quantity": quantity}})
            } else {
                json!({"id": id, "namespace": ns, "metric_label": metric,
                       "quantity": quantity, "timestamp": timestamp})
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn the_event_decoder_never_panics_on_bytes(raw in prop::collection::vec(any::<u8>(), 0..600)) {
        let catalog = Catalog::builtin().unwrap();
        if let Err(rejection) = event::decode(&raw, &context(&catalog)) {
            prop_assert!(!rejection.field.is_empty());
            prop_assert!(!rejection.reason.is_empty());
        }
    }

    #[test]
    fn the_event_decoder_names_the_field_of_any_json(value in json_value()) {
        let catalog = Catalog::builtin().unwrap();
        let raw = value.to_string();
        if let Err(rejection) = event::decode(raw.as_bytes(), &context(&catalog)) {
            prop_assert!(!rejection.field.is_empty());
        }
    }

    #[test]
    fn near_events_and_cloudevents_decode_or_name_their_field(value in near_event()) {
        let catalog = Catalog::builtin().unwrap();
        let raw = value.to_string();
        match event::decode(raw.as_bytes(), &context(&catalog)) {
            Ok(event) => {
                prop_assert_eq!(event.tenant, "acme");
                prop_assert!(event.quantity.0 >= 0);
            }
            Err(rejection) => prop_assert!(!rejection.field.is_empty()),
        }
    }

    #[test]
    fn the_hourly_query_decoder_never_panics(text in ".{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = HourlyQuery::decode(&text);
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let _ = HourlyQuery::decode(&encoded);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let _ = HourlyQuery::decode(&encoded);
    }

    #[test]
    fn stored_value_and_key_codecs_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = values::decode_entry(&bytes);
        let _ = values::decode_dead_letter(&bytes);
        let _ = values::decode_dedup(&bytes);
        let _ = tally::projection::billing::decode_header(&bytes);
        let _ = tally::projection::billing::decode_period_row(&bytes);
        let _ = tally::projection::billing::decode_invoice(&bytes);
        let _ = tally::projection::billing::decode_transition(&bytes);
        let _ = values::decode_quota_object(&bytes);
        let _ = values::decode_alert(&bytes);
        let _ = values::decode_audit(&bytes);
        let _ = codec::decode_u64(&bytes, "x");
        let _ = codec::decode_i128(&bytes, "x");
        let _ = tally::projection::Aggregate::decode(&bytes);
        let _ = keys::decode_seq_key(&bytes);
        let _ = keys::decode_series_key(&bytes);
        let _ = tally::log::format::read_envelope(&bytes);
        let _ = tally::log::legacy::decode_entry(&bytes);
        let _ = tally::log::legacy::decode_dead_letter(&bytes);
    }

    #[test]
    fn a_versioned_value_with_a_valid_header_and_junk_body_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut value = vec![codec::VALUE_VERSION];
        value.extend_from_slice(&bytes);
        // Junk may happen to decode; it must never panic or allocate without bound.
        let _ = tally::log::legacy::decode_entry(&value);
        let _ = tally::log::legacy::decode_dead_letter(&value);
        let _ = tally::projection::billing::decode_header(&value);
        let _ = tally::projection::billing::decode_period_row(&value);
        let _ = tally::projection::billing::decode_invoice(&value);
        let _ = tally::projection::billing::decode_transition(&value);
        // A v2 envelope of every kind with a junk payload.
        for kind in tally::log::format::Kind::ALL {
            let mut value = vec![tally::log::format::FORMAT_V2];
            value.extend_from_slice(&kind.number().to_be_bytes());
            value.extend_from_slice(&1u16.to_be_bytes());
            value.extend_from_slice(&[0, 1, b't']);
            value.extend_from_slice(&[0; 8]);
            value.push(0);
            value.extend_from_slice(&bytes);
            let _ = values::decode_entry(&value);
        }
        let mut letter = vec![tally::log::format::FORMAT_V2, 0, 1, 0];
        letter.extend_from_slice(&bytes);
        let _ = values::decode_dead_letter(&letter);
    }
}

/// Found by the fuzzing above: an empty unknown key was reported with an empty field name.
#[test]
fn an_unknown_empty_key_is_reported_on_the_whole_event() {
    let catalog = Catalog::builtin().unwrap();
    let rejection = event::decode(br#"{"": null}"#, &context(&catalog)).unwrap_err();
    assert_eq!(rejection.field, "event");
}

/// Found by the fuzzing above: a corrupt length prefix made bincode allocate 2^61 bytes and
/// abort the process; the decode limit refuses it.
#[test]
fn a_corrupt_length_prefix_is_refused_not_allocated() {
    let mut value = vec![codec::VALUE_VERSION, 0];
    // A varint claiming a string of about 2^61 bytes.
    let huge = [0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20];
    value.extend_from_slice(&huge);
    assert!(tally::log::legacy::decode_entry(&value).is_err());
    assert!(tally::projection::billing::decode_header(&value).is_err());
    // The same in a v2 payload: a usage entry whose id claims 2^61 bytes.
    let mut value = vec![tally::log::format::FORMAT_V2, 0, 1, 0, 1, 0, 1, b't'];
    value.extend_from_slice(&[0; 8]);
    value.push(0);
    value.extend_from_slice(&huge);
    assert!(values::decode_entry(&value).is_err());
}
