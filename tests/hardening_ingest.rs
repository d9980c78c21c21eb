//! Hardening of ingest and request bodies, through the real binary: what follows an event on
//! its line, a byte order mark, quantities past the exact range, a token's namespaces (and
//! `system`) on ingest, bodies over the limit on every other endpoint, and leap seconds.
//! Each test would fail on the release these were found in.

mod common;

use std::time::Duration;

use chrono::{Datelike, Utc};
use common::{OPERATOR_TOKEN, Server};
use serde_json::{Value, json};
use tally::event::UsageEvent;
use tally::log::store::{Store, StoreOptions};
use tally::log::{DeadLetter, LogEntry};

const EVENTS: &str = "/api/tally/events";

fn now_text() -> String {
    tally::time::format_rfc3339(Utc::now().timestamp_micros() - 60_000_000)
}

/// A valid event of `http_lb_requests` in `namespace`.
fn event(id: &str, namespace: &str, quantity: i64) -> Value {
    json!({"id": id, "namespace": namespace, "metric_label": "http_lb_requests",
           "quantity": quantity, "timestamp": now_text()})
}

fn ingest(server: &Server, token: &str, body: impl Into<Vec<u8>>) -> (u16, Value) {
    server
        .post_raw(EVENTS, Some(token), body.into())
        .expect("post")
}

/// The recorded events and the dead letters of a stopped server.
fn stored(server: &Server) -> (Vec<UsageEvent>, Vec<DeadLetter>) {
    let store = Store::open(
        &server.data_dir,
        &StoreOptions {
            dedup_horizon: Duration::from_secs(35 * 86_400),
            min_free_disk: 0,
        },
    )
    .expect("store");
    let events = store
        .read_log(0, 1_000_000)
        .expect("log")
        .into_iter()
        .filter_map(|(_, entry)| match entry {
            LogEntry::UsageRecorded { event, .. } => Some(event),
            _ => None,
        })
        .collect();
    let letters = store
        .dead_letters(0, 1_000_000)
        .expect("dead letters")
        .into_iter()
        .map(|(_, letter)| letter)
        .collect();
    (events, letters)
}

fn total_micros(events: &[UsageEvent]) -> i64 {
    events.iter().map(|e| e.quantity.0).sum()
}

fn issue_token(server: &Server, role: &str, namespaces: &[&str]) -> String {
    let (status, answer) = server.post(
        "/api/tally/tokens",
        &json!({"tenant": "default", "role": role, "namespaces": namespaces}),
    );
    assert_eq!(status, 200, "{answer}");
    answer["token"].as_str().expect("token").to_owned()
}

/// Item 1: `{e1}{e2}`, `{e1}\r{e2}` and `{e1} junk` on a line each answered `accepted: 1`
/// and dropped the rest without a dead letter (8 events summing 360 stored 230).
#[test]
fn everything_after_the_first_value_on_a_line_is_recorded_or_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    let e = |n: i64| event(&format!("e{n}"), "shop", n * 10).to_string();
    let body = format!(
        "{}{}\n{}\r{}\n{} junk\n{} {}\r\n{}\n",
        e(1),
        e(2),
        e(3),
        e(4),
        e(5),
        e(6),
        e(7),
        e(8)
    );
    let (status, answer) = ingest(&server, OPERATOR_TOKEN, body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 8, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{answer}");
    // e1..e5 are events 0..4; the junk after e5 is event 5.
    assert_eq!(rejected[0]["index"], 5, "{answer}");
    assert_eq!(rejected[0]["field"], "event", "{answer}");

    // Every other JSON body: nothing may follow the object.
    let (status, answer) = server
        .post_raw(
            "/api/web/namespaces/system/usage_details",
            Some(OPERATOR_TOKEN),
            b"{} {\"from\": \"nonsense\"}".to_vec(),
        )
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("trailing"),
        "{answer}"
    );
    let (status, answer) = server
        .post_raw(
            "/api/web/namespaces/system/quotas",
            Some(OPERATOR_TOKEN),
            br#"{"metadata": {"name": "a"}}{"metadata": {"name": "b"}}"#.to_vec(),
        )
        .unwrap();
    assert_eq!(status, 400, "{answer}");

    server.stop();
    let (events, letters) = stored(&server);
    assert_eq!(events.len(), 8);
    assert_eq!(total_micros(&events), 360 * 1_000_000);
    let raw: Vec<&[u8]> = letters.iter().map(|l| l.raw.as_slice()).collect();
    assert_eq!(raw, vec![&b"junk"[..]]);
}

/// Item 3: a byte order mark before an array turned 10,000 events into one refused "line",
/// kept as a 4 KiB dead letter that could never be repaired.
#[test]
fn a_byte_order_mark_is_skipped_and_refused_events_are_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    let events: Vec<String> = (0..10_000)
        .map(|n| event(&format!("bom-{n}"), "shop", 1).to_string())
        .collect();
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend_from_slice(format!("[{}]", events.join(",")).as_bytes());
    let (status, answer) = ingest(&server, OPERATOR_TOKEN, body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (
            answer["accepted"].as_u64(),
            answer["rejected"].as_array().map(Vec::len)
        ),
        (Some(10_000), Some(0))
    );
    let mut ndjson = b"\xEF\xBB\xBF".to_vec();
    ndjson.extend_from_slice(event("bom-nd", "shop", 1).to_string().as_bytes());
    let (status, answer) = ingest(&server, OPERATOR_TOKEN, ndjson);
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );

    // A refused event larger than 4 KiB is kept whole, so a repair can still record it.
    let mut big = event("big", "Not_A_Label", 1);
    big["labels"] = (0..16)
        .map(|n| (format!("key-{n}"), Value::from("v".repeat(250))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let big = big.to_string();
    assert!(big.len() > 4_096 && big.len() < tally::event::MAX_EVENT_BYTES);
    let (status, answer) = ingest(&server, OPERATOR_TOKEN, big.clone());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rejected"][0]["field"], "namespace", "{answer}");

    // What is too large to be an event refuses the request: nothing is recorded or cut.
    let oversized = format!(
        "{}\n{{\"id\": \"{}\"}}\n",
        event("beside-oversized", "shop", 1),
        "x".repeat(tally::event::MAX_EVENT_BYTES)
    );
    let (status, answer) = ingest(&server, OPERATOR_TOKEN, oversized);
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["code"], 8, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("event 1"),
        "{answer}"
    );

    server.stop();
    let (events, letters) = stored(&server);
    assert_eq!(events.len(), 10_001);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].raw, big.as_bytes());
    assert!(!letters[0].raw_truncated);
}

/// Item 4: quantities past the exact range were rounded (`1.000…0001` became 1).
#[test]
fn a_quantity_that_is_not_exactly_representable_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    let tiny_tail = "1.00000000000000000000000000000000001";
    let mut as_text = event("text", "shop", 0);
    as_text["quantity"] = json!(tiny_tail);
    let as_number = event("number", "shop", 0)
        .to_string()
        .replace("\"quantity\":0", &format!("\"quantity\":{tiny_tail}"));
    let cloudevent = json!({"specversion": "1.0", "id": "cloud", "source": "/lb",
        "type": "http_lb_requests", "subject": "shop", "time": now_text(),
        "data": {"quantity": "9223372036854.775808"}});
    let mut exact = event("exact", "shop", 0);
    exact["quantity"] = json!("1.000000000000000000000000000000000000");
    let body = [
        as_text.to_string(),
        as_number,
        cloudevent.to_string(),
        exact.to_string(),
    ]
    .join("\n");
    let (status, answer) = ingest(&server, OPERATOR_TOKEN, body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    let refused: Vec<(&str, &str, &str)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap(),
                r["field"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        vec![
            ("text", "quantity", "has more than 6 decimal places"),
            ("number", "quantity", "has more than 6 decimal places"),
            (
                "cloud",
                "data.quantity",
                "is too large (at most 9223372036854.775807)"
            ),
        ]
    );
    server.stop();
    let (events, _) = stored(&server);
    assert_eq!(total_micros(&events), 1_000_000);
}

/// Item 6: a `write` token scoped to `["shop"]` recorded events in `blog` and in `system`.
#[test]
fn ingest_keeps_to_the_tokens_namespaces_and_refuses_system() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    let shop = issue_token(&server, "write", &["shop"]);
    let everywhere = issue_token(&server, "write", &["*"]);

    let (status, answer) = ingest(&server, &shop, event("in-shop", "shop", 5).to_string());
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );

    // One event outside the scope refuses the whole request, whatever else it holds, and
    // leaves no dead letter (a repair would record it without asking the token).
    let mut unknown_meter = event("blog-2", "blog", 1);
    unknown_meter["metric_label"] = json!("not_a_meter");
    let cloud_blog = json!({"specversion": "1.0", "id": "blog-3", "source": "/lb",
        "type": "http_lb_requests", "subject": "blog", "time": now_text(), "data": {"quantity": 1}});
    for outside in [event("blog-1", "blog", 7), unknown_meter, cloud_blog] {
        let body = format!("{}\n{}", event("shop-2", "shop", 1), outside);
        let (status, answer) = ingest(&server, &shop, body);
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["code"], 7, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.starts_with("event 1:") && message.contains("`blog`"),
            "{answer}"
        );
    }

    // `system` is the whole tenant: no token may record an event in it, not even the
    // operator's; each is refused on its own and kept as a dead letter.
    let system = event("in-system", "system", 9).to_string();
    for (n, token) in [shop.as_str(), everywhere.as_str(), OPERATOR_TOKEN]
        .into_iter()
        .enumerate()
    {
        let body = format!("{}\n{system}", event(&format!("ok-{n}"), "shop", 1));
        let (status, answer) = ingest(&server, token, body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["accepted"], 1, "{answer}");
        assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
        assert_eq!(answer["rejected"][0]["field"], "namespace", "{answer}");
        assert!(
            answer["rejected"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("whole tenant"),
            "{answer}"
        );
    }

    server.stop();
    let (events, letters) = stored(&server);
    let mut namespaces: Vec<&str> = events.iter().map(|e| e.namespace.as_str()).collect();
    namespaces.dedup();
    assert_eq!(namespaces, vec!["shop"]);
    assert_eq!(events.len(), 4);
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().all(|l| l.raw == system.as_bytes()));
}

/// Item 6, Kafka: an event in `system` becomes a dead letter with the reason.
#[test]
fn a_kafka_event_in_system_becomes_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::kafka::Broker::start_memory(dir.path());
    broker.create_topic("usage", 1);
    let mut server = Server::start_kafka(&dir.path().join("data"), &broker.address(), "usage");
    let mut producer =
        tally::ingest::produce::TenantProducer::new(&broker.address(), "usage").unwrap();
    let in_system = event("k-system", "system", 3).to_string();
    // One partition, so once the second is recorded the first has been judged.
    for payload in [in_system.clone(), event("k-shop", "shop", 2).to_string()] {
        producer.send("acme", payload.as_bytes()).unwrap();
    }
    assert_eq!(producer.finish().unwrap().delivered, 2);
    // Wait until both messages are judged, whichever way.
    let judged = |metrics: &str| -> u64 {
        ["recorded", "rejected"]
            .iter()
            .filter_map(|outcome| {
                let line = format!("tally_events_total{{outcome=\"{outcome}\",source=\"kafka\"}} ");
                metrics.lines().find_map(|l| l.strip_prefix(line.as_str()))
            })
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = server.get("/metrics");
        if judged(&metrics) == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
    let (events, letters) = stored(&server);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].namespace, "shop");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].raw, in_system.as_bytes());
    assert_eq!(letters[0].tenant, "acme");
    assert_eq!(letters[0].rejection.field, "namespace");
    assert!(letters[0].rejection.reason.contains("whole tenant"));
}

/// Item 16b: bodies over 64 KiB were answered 400 (or, where the handler reads no body, as if
/// nothing had been sent); they are 413 with Tally's JSON error.
#[test]
fn every_non_ingest_body_over_64_kib_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let routes = [
        ("POST", "/api/web/namespaces/system/usage_details"),
        ("POST", "/api/web/namespaces/system/hourly_usage_details"),
        ("POST", "/api/web/namespaces/system/current_usage"),
        ("POST", "/api/web/namespaces/system/monthly_usage"),
        ("POST", "/api/data/namespaces/system/billing/usage_summary"),
        ("POST", "/api/web/namespaces/system/quotas"),
        ("PUT", "/api/web/namespaces/system/quotas/q"),
        ("DELETE", "/api/web/namespaces/system/quotas/q"),
        ("POST", "/api/tally/namespaces/system/quota/check"),
        ("POST", "/api/web/namespaces/system/billing/plan_transition"),
        ("POST", "/api/tally/plan_transitions/t/approve"),
        ("POST", "/api/tally/plan_transitions/t/reject"),
        ("POST", "/api/web/namespaces/system/addon/subscribe"),
        ("POST", "/api/web/namespaces/system/addon/unsubscribe"),
        ("POST", "/api/web/namespaces/system/billing/payment_methods"),
        (
            "DELETE",
            "/api/web/namespaces/system/billing/payment_methods/p",
        ),
        (
            "POST",
            "/api/web/namespaces/system/billing/payment_method/p/primary",
        ),
        (
            "POST",
            "/api/web/namespaces/system/billing/payment_method/p/secondary",
        ),
        (
            "POST",
            "/api/web/namespaces/system/billing/payment_method/p/swap-primary",
        ),
        ("POST", "/api/tally/invoices/i/mark_paid"),
        ("POST", "/api/tally/tenants/default/coupons"),
        ("POST", "/api/tally/admin/rebuild"),
        ("POST", "/api/tally/admin/backup"),
        ("POST", "/api/tally/tokens"),
        ("DELETE", "/api/tally/tokens/nope"),
    ];
    // Valid JSON, so only the size is wrong: `{}` padded with spaces.
    let padded = |size: usize| {
        let mut body = vec![b' '; size];
        body[0] = b'{';
        body[size - 1] = b'}';
        body
    };
    let client = reqwest::blocking::Client::new();
    let send = |method: &str, path: &str, body: reqwest::blocking::Body| {
        let response = client
            .request(method.parse().unwrap(), format!("{}{path}", server.base))
            .header("Authorization", format!("APIToken {OPERATOR_TOKEN}"))
            .body(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (
            status,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
        )
    };
    let over = tally::api::MAX_REQUEST_BODY + 1;
    let mut wrong = Vec::new();
    for (method, path) in routes {
        // With a length, and chunked (no length known in advance).
        for chunked in [false, true] {
            let body = if chunked {
                reqwest::blocking::Body::new(std::io::Cursor::new(padded(over)))
            } else {
                padded(over).into()
            };
            let (status, answer) = send(method, path, body);
            if status != 413 || answer["code"] != 8 || !answer["message"].is_string() {
                wrong.push(format!(
                    "{method} {path} (chunked: {chunked}): {status} {answer}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "not 413:\n{}", wrong.join("\n"));
    // At the limit, a body is read.
    let (status, answer) = send(
        "POST",
        "/api/web/namespaces/system/usage_details",
        padded(tally::api::MAX_REQUEST_BODY).into(),
    );
    assert_eq!(status, 200, "{answer}");
}

/// Item 16c: `23:59:60` on the last day of a month was counted in the next month.
#[test]
fn a_leap_second_counts_in_the_day_it_is_written_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    // The last day of the previous month: always inside the 35-day late window.
    let this_month = Utc::now().date_naive().with_day(1).unwrap();
    let last_day = this_month.pred_opt().unwrap();
    let mut leap = event("leap", "shop", 4);
    leap["timestamp"] = json!(format!("{last_day}T23:59:60Z"));
    let (status, answer) = ingest(&server, OPERATOR_TOKEN, leap.to_string());
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    // The month it is written in holds it.
    let range =
        json!({"from": format!("{last_day}T00:00:00Z"), "to": format!("{this_month}T00:00:00Z")});
    let (status, details) = server.post("/api/web/namespaces/shop/usage_details", &range);
    assert_eq!(status, 200, "{details}");
    assert_eq!(details["usage_items"][0]["quantity"], 4.0, "{details}");
    server.stop();
    let (events, _) = stored(&server);
    assert_eq!(
        tally::time::format_rfc3339(events[0].timestamp),
        format!("{last_day}T23:59:59Z")
    );
    assert_eq!(
        tally::time::to_datetime(events[0].timestamp).date_naive(),
        last_day
    );
}
