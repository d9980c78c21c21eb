//! End-to-end: the real binary, real RocksDB, real HTTP. Totals are recomputed here, from the
//! events the test generated, independently of the engine's code.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use common::{OPERATOR_TOKEN, Rng, Server, micros_text, priced_catalog};
use serde_json::{Value, json};

const HOUR: i64 = 3_600_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Agg {
    Sum,
    Count,
    Max,
    Latest,
}

struct Meter {
    label: &'static str,
    agg: Agg,
    division_factor: i128,
}

const METERS: [Meter; 6] = [
    Meter {
        label: "http_lb_requests",
        agg: Agg::Sum,
        division_factor: 1_000_000,
    },
    Meter {
        label: "data_transfer_bytes",
        agg: Agg::Sum,
        division_factor: 1_000_000_000,
    },
    Meter {
        label: "public_vip_hours",
        agg: Agg::Sum,
        division_factor: 24,
    },
    Meter {
        label: "waf_security_events",
        agg: Agg::Count,
        division_factor: 1_000,
    },
    Meter {
        label: "http_loadbalancers",
        agg: Agg::Latest,
        division_factor: 1,
    },
    Meter {
        label: "object_storage_peak_bytes",
        agg: Agg::Max,
        division_factor: 1_000_000_000,
    },
];

/// Prices of `individual-plan`, cents per billable unit, read from the catalog file.
fn prices(catalog: &Value) -> BTreeMap<String, i128> {
    let plan = catalog["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "individual-plan")
        .unwrap();
    plan["prices"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), i128::from(v.as_i64().unwrap())))
        .collect()
}

#[derive(Clone, Debug)]
struct Event {
    id: String,
    namespace: &'static str,
    meter: usize,
    object: &'static str,
    deployment: &'static str,
    container: &'static str,
    micros: i64,
    at: i64,
}

impl Event {
    fn to_json(&self) -> Value {
        let mut body = json!({
            "id": self.id,
            "namespace": self.namespace,
            "metric_label": METERS[self.meter].label,
            "quantity": micros_text(self.micros),
            "timestamp": rfc3339(self.at),
        });
        for (field, value) in [
            ("object_name", self.object),
            ("deployment", self.deployment),
            ("container", self.container),
        ] {
            if !value.is_empty() {
                body[field] = Value::from(value);
            }
        }
        body
    }
}

fn rfc3339(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn hour_floor(micros: i64) -> i64 {
    micros.div_euclid(HOUR) * HOUR
}

fn month_floor(micros: i64) -> i64 {
    let at = DateTime::from_timestamp_micros(micros).unwrap();
    Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .unwrap()
        .timestamp_micros()
}

fn next_month(micros: i64) -> i64 {
    let at = DateTime::from_timestamp_micros(micros).unwrap();
    let (y, m) = if at.month() == 12 {
        (at.year() + 1, 1)
    } else {
        (at.year(), at.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .unwrap()
        .timestamp_micros()
}

/// 10,000 valid events over the last ~28 hours, each with its own timestamp (so LATEST has one
/// answer), quantities with up to six decimals.
fn generate(now: i64, rng: &mut Rng) -> Vec<Event> {
    const NAMESPACES: [&str; 3] = ["shop", "blog", "api-gw"];
    const OBJECTS: [&str; 3] = ["lb-a", "lb-b", ""];
    const PODS: [(&str, &str); 3] = [("", ""), ("web", "nginx"), ("web", "envoy")];
    (0..10_000)
        .map(|i| {
            let meter = rng.below(METERS.len() as u64) as usize;
            let micros = match METERS[meter].agg {
                Agg::Count => 1_000_000,
                Agg::Latest => rng.below(20) as i64 * 1_000_000,
                _ if meter == 2 => rng.below(2_000_000) as i64 + 1,
                _ => rng.below(5_000_000) as i64 * 1_000_000 + rng.below(1_000_000) as i64,
            };
            let (deployment, container) = PODS[rng.below(3) as usize];
            Event {
                id: format!("evt-{i:05}"),
                namespace: NAMESPACES[rng.below(3) as usize],
                meter,
                object: OBJECTS[rng.below(3) as usize],
                deployment,
                container,
                micros,
                at: now - 60_000_000 - i as i64 * 10_000_000,
            }
        })
        .collect()
}

type SeriesKey = (
    usize,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// Each series' value over the events given (aggregation over time), in micro-units.
fn series_values<'a>(events: impl Iterator<Item = &'a Event>) -> BTreeMap<SeriesKey, i128> {
    let mut acc: BTreeMap<SeriesKey, (i128, i128, i64, (i64, i64))> = BTreeMap::new();
    for e in events {
        let entry = acc
            .entry((e.meter, e.namespace, e.object, e.deployment, e.container))
            .or_insert((0, 0, 0, (i64::MIN, 0)));
        entry.0 += i128::from(e.micros);
        entry.1 += 1;
        entry.2 = entry.2.max(e.micros);
        if e.at > entry.3.0 {
            entry.3 = (e.at, e.micros);
        }
    }
    acc.into_iter()
        .map(|(key, (sum, count, max, (_, last)))| {
            let value = match METERS[key.0].agg {
                Agg::Sum => sum,
                Agg::Count => count * 1_000_000,
                Agg::Max => i128::from(max),
                Agg::Latest => i128::from(last),
            };
            (key, value)
        })
        .collect()
}

fn per_metric(values: &BTreeMap<SeriesKey, i128>) -> BTreeMap<usize, i128> {
    let mut totals = BTreeMap::new();
    for (key, value) in values {
        *totals.entry(key.0).or_default() += value;
    }
    totals
}

fn decimal(micros: i128) -> f64 {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
        .parse()
        .unwrap()
}

fn billable(micros: i128, factor: i128) -> i128 {
    if micros <= 0 {
        0
    } else {
        (micros / (factor * 1_000_000)).max(1)
    }
}

/// The malformed events: nine kinds of five, and five conflicting reuses of recorded ids.
fn malformed(now: i64, valid: &[Event]) -> (Vec<String>, Vec<String>) {
    let base = |i: usize| -> Value {
        json!({"id": format!("bad-{i}"), "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 1, "timestamp": rfc3339(now - HOUR)})
    };
    let mut lines = Vec::new();
    let mut conflicts = Vec::new();
    for i in 0..45 {
        let mut event = base(i);
        match i % 9 {
            0 => {
                event["namespace"] = json!("Shop_1");
            }
            1 => {
                event["metric_label"] = json!("bogus_meter");
            }
            2 => {
                event["quantity"] = json!(-5);
            }
            3 => {
                event["timestamp"] = json!("yesterday");
            }
            4 => {
                event["timestamp"] = json!(rfc3339(now - 40 * 24 * HOUR));
            }
            5 => {
                event["timestamp"] = json!(rfc3339(now + HOUR));
            }
            6 => {
                event.as_object_mut().unwrap().remove("id");
            }
            7 => {
                event["quantiy"] = json!(3);
            }
            _ => {
                event["quantity"] = json!("1.0000001");
            }
        }
        lines.push(event.to_string());
    }
    // Five conflicts: a recorded id sent again with another quantity.
    for original in valid.iter().step_by(1_999).take(5) {
        let mut event = original.to_json();
        event["quantity"] = json!(micros_text(original.micros + 1));
        conflicts.push(event.to_string());
    }
    (lines, conflicts)
}

fn post_batches(server: &Server, batches: &[Vec<String>]) -> (u64, u64, Vec<Value>) {
    let (mut accepted, mut duplicates, mut rejected) = (0, 0, Vec::new());
    for (n, batch) in batches.iter().enumerate() {
        // Alternate the two wire forms: JSON arrays and NDJSON.
        let body = if n % 2 == 0 {
            format!("[{}]", batch.join(","))
        } else {
            batch.join("\n")
        };
        let (status, answer) = server
            .post_raw("/api/tally/events", Some(OPERATOR_TOKEN), body.into_bytes())
            .expect("post");
        assert_eq!(status, 200, "{answer}");
        accepted += answer["accepted"].as_u64().unwrap();
        duplicates += answer["duplicates"].as_u64().unwrap();
        rejected.extend(answer["rejected"].as_array().unwrap().iter().cloned());
    }
    (accepted, duplicates, rejected)
}

fn snapshot(server: &Server, from: i64, to: i64) -> Value {
    let range = json!({"from": rfc3339(from), "to": rfc3339(to)});
    json!({
        "details": server.post("/api/web/namespaces/system/usage_details", &range).1,
        "shop": server.post("/api/web/namespaces/shop/usage_details", &range).1,
        "current": server.post("/api/web/namespaces/system/current_usage", &json!({})).1,
        "monthly": server.post("/api/web/namespaces/system/monthly_usage", &json!({})).1,
    })
}

#[test]
fn ten_thousand_events_give_exact_totals_before_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let catalog_path = priced_catalog(dir.path());
    let catalog: Value = serde_json::from_slice(&std::fs::read(&catalog_path).unwrap()).unwrap();
    let prices = prices(&catalog);
    let mut server = Server::start(&dir.path().join("data"), Some(&catalog_path));

    let now = now_micros();
    let mut rng = Rng(20261128);
    let events = generate(now, &mut rng);
    let (bad, conflicts) = malformed(now, &events);
    let mut lines: Vec<String> = events.iter().map(|e| e.to_json().to_string()).collect();
    for i in 0..100 {
        lines.push(events[i * 97].to_json().to_string());
    }
    lines.extend(bad.iter().cloned());
    rng.shuffle(&mut lines);
    let mut batches: Vec<Vec<String>> = lines.chunks(1_000).map(<[String]>::to_vec).collect();
    batches.push(conflicts.clone());

    let (accepted, duplicates, rejected) = post_batches(&server, &batches);
    assert_eq!((accepted, duplicates, rejected.len()), (10_000, 100, 50));
    let mut refused_fields: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rejected {
        *refused_fields
            .entry(r["field"].as_str().unwrap().to_owned())
            .or_default() += 1;
        assert!(!r["reason"].as_str().unwrap().is_empty());
    }
    let expected_fields: BTreeMap<String, usize> = [
        ("namespace", 5),
        ("metric_label", 5),
        ("quantity", 10),
        ("timestamp", 15),
        ("id", 10),
        ("quantiy", 5),
    ]
    .into_iter()
    .map(|(f, n)| (f.to_owned(), n))
    .collect();
    assert_eq!(refused_fields, expected_fields);

    // usage_details over every hour that holds events: one item per (metric, namespace, object).
    let from = hour_floor(now - 30 * HOUR);
    let to = hour_floor(now) + HOUR;
    let values = series_values(events.iter());
    let mut expected_items: BTreeMap<(String, String, String), i128> = BTreeMap::new();
    for (key, value) in &values {
        *expected_items
            .entry((
                METERS[key.0].label.to_owned(),
                key.1.to_owned(),
                key.2.to_owned(),
            ))
            .or_default() += value;
    }
    let check_details = |server: &Server| {
        let (status, details) = server.post(
            "/api/web/namespaces/system/usage_details",
            &json!({"from": rfc3339(from), "to": rfc3339(to)}),
        );
        assert_eq!(status, 200, "{details}");
        let items = details["usage_items"].as_array().unwrap();
        let got: BTreeMap<(String, String, String), f64> = items
            .iter()
            .map(|i| {
                let key = (
                    i["metric_label"].as_str().unwrap().to_owned(),
                    i["namespace"].as_str().unwrap().to_owned(),
                    i["object_name"].as_str().unwrap().to_owned(),
                );
                (key, i["quantity"].as_f64().unwrap())
            })
            .collect();
        let want: BTreeMap<_, _> = expected_items
            .iter()
            .map(|(k, v)| (k.clone(), decimal(*v)))
            .collect();
        assert_eq!(got, want);
        details
    };
    let details = check_details(&server);

    // A namespace sees only its own items.
    let (_, shop) = server.post(
        "/api/web/namespaces/shop/usage_details",
        &json!({"from": rfc3339(from), "to": rfc3339(to)}),
    );
    let shop_items = shop["usage_items"].as_array().unwrap();
    assert_eq!(
        shop_items.len(),
        expected_items.keys().filter(|k| k.1 == "shop").count()
    );
    assert!(shop_items.iter().all(|i| i["namespace"] == "shop"));

    // hourly_usage_details of one item: whole hours, per (hour, deployment, container).
    let item = details["usage_items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["metric_label"] == "http_lb_requests"
                && i["namespace"] == "shop"
                && i["object_name"] == "lb-a"
        })
        .unwrap();
    let (status, hourly) = server.post(
        "/api/web/namespaces/shop/hourly_usage_details",
        &json!({"query": item["hourly_breakdown_query"]}),
    );
    assert_eq!(status, 200, "{hourly}");
    let mut expected_hours: BTreeMap<(String, String, String), i128> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.meter == 0 && e.namespace == "shop" && e.object == "lb-a")
    {
        *expected_hours
            .entry((
                rfc3339(hour_floor(e.at)).replace(".000000", ""),
                e.deployment.to_owned(),
                e.container.to_owned(),
            ))
            .or_default() += i128::from(e.micros);
    }
    let got_hours: BTreeMap<(String, String, String), f64> = hourly["hourly_usage_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let start = h["start_timestamp"].as_str().unwrap().to_owned();
            let end = DateTime::parse_from_rfc3339(h["end_timestamp"].as_str().unwrap())
                .unwrap()
                .timestamp_micros();
            assert_eq!(
                end - DateTime::parse_from_rfc3339(&start)
                    .unwrap()
                    .timestamp_micros(),
                HOUR
            );
            (
                (
                    start,
                    h["deployment"].as_str().unwrap().to_owned(),
                    h["container"].as_str().unwrap().to_owned(),
                ),
                h["quantity"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got_hours,
        expected_hours
            .iter()
            .map(|(k, v)| (k.clone(), decimal(*v)))
            .collect::<BTreeMap<_, _>>()
    );

    // current_usage of the open period: cost lines with F5 billable rounding, in cents.
    let period_start = month_floor(now);
    let check_cost = |body: &Value, window: &dyn Fn(&Event) -> bool| {
        let totals = per_metric(&series_values(events.iter().filter(|e| window(e))));
        let mut total_cost = 0;
        let lines = body["usage_items"].as_array().unwrap();
        assert_eq!(
            lines.len(),
            totals.values().filter(|v| **v != 0).count(),
            "{body}"
        );
        for (meter, quantity) in totals.iter().filter(|(_, v)| **v != 0) {
            let label = METERS[*meter].label;
            let line = lines
                .iter()
                .find(|l| l["metric_labels"][0] == label)
                .unwrap_or_else(|| panic!("no line for {label}"));
            let units = billable(*quantity, METERS[*meter].division_factor);
            let amount = units * prices[label];
            total_cost += amount;
            assert_eq!(
                line["quantity"].as_f64().unwrap(),
                decimal(*quantity),
                "{label}"
            );
            assert_eq!(line["quantity_billable"], units.to_string(), "{label}");
            assert_eq!(line["amount"], amount.to_string(), "{label}");
            assert_eq!(line["currency_code"], "USD");
        }
        assert_eq!(body["total_cost"], total_cost.to_string());
    };
    // The tenant's billing period is its plan's: this new tenant's first one is the calendar
    // month it was first seen in, and like its invoice it also bills the usage from before it
    // began (events of last month here).
    let period_end = next_month(period_start);
    let (status, current) = server.post("/api/web/namespaces/system/current_usage", &json!({}));
    assert_eq!(status, 200, "{current}");
    check_cost(&current, &|e| e.at < period_end);
    // The same over an arbitrary range (answered from hourly rows).
    let (range_from, range_to) = (hour_floor(now - 10 * HOUR), hour_floor(now) + HOUR);
    let (_, ranged) = server.post(
        "/api/web/namespaces/system/current_usage",
        &json!({"from": rfc3339(range_from), "to": rfc3339(range_to)}),
    );
    check_cost(&ranged, &|e| e.at >= range_from && e.at < range_to);
    // Namespace-scoped cost.
    let (_, blog) = server.post("/api/web/namespaces/blog/current_usage", &json!({}));
    check_cost(&blog, &|e| e.at < period_end && e.namespace == "blog");

    // monthly_usage: one item per billing period holding usage, its cost in cents. The one
    // period so far holds every event (those from before it too, as its invoice will).
    let (_, monthly) = server.post("/api/web/namespaces/system/monthly_usage", &json!({}));
    let periods: BTreeSet<i64> = [period_start].into();
    let items = monthly["monthly_usage_items"].as_array().unwrap();
    assert_eq!(items.len(), periods.len(), "{monthly}");
    for (item, month) in items.iter().zip(&periods) {
        let totals = per_metric(&series_values(events.iter().filter(|e| e.at < period_end)));
        let amount: i128 = totals
            .iter()
            .map(|(m, q)| billable(*q, METERS[*m].division_factor) * prices[METERS[*m].label])
            .sum();
        assert_eq!(item["amount"], amount.to_string());
        assert_eq!(
            DateTime::parse_from_rfc3339(item["start_timestamp"].as_str().unwrap())
                .unwrap()
                .timestamp_micros(),
            *month
        );
        assert_eq!(
            DateTime::parse_from_rfc3339(item["end_timestamp"].as_str().unwrap())
                .unwrap()
                .timestamp_micros(),
            next_month(*month)
        );
    }

    // usage_summary: raw and billing values per usage type over an explicit window.
    let (_, summary) = server.post(
        "/api/data/namespaces/system/billing/usage_summary",
        &json!({"start_time": (from / 1_000_000).to_string(), "end_time": rfc3339(to)}),
    );
    let totals = per_metric(&values);
    let vip = summary["usage_summary_items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "Anycast Public Virtual IP")
        .unwrap();
    let vip_total = totals[&2];
    assert_eq!(vip["service"], "f5xc_waap_standard");
    assert_eq!(vip["billing_metric_data"]["unit"], "VIP-days");
    let scaled = vip_total / 24;
    let expected = format!("{}.{:06}", scaled / 1_000_000, scaled % 1_000_000);
    let expected = expected.trim_end_matches('0');
    let expected = if expected.ends_with('.') {
        format!("{expected}0")
    } else {
        expected.to_owned()
    };
    assert_eq!(vip["billing_metric_data"]["value"], expected);

    // Everything answers the same after a graceful restart.
    let before = snapshot(&server, from, to);
    server.restart();
    check_details(&server);
    assert_eq!(snapshot(&server, from, to), before);
    server.stop();

    // The refused events are stored as dead letters with their reasons.
    let store = tally::log::store::Store::open(
        &dir.path().join("data"),
        &tally::log::store::StoreOptions {
            dedup_horizon: Duration::from_secs(35 * 86_400),
            min_free_disk: 0,
        },
    )
    .unwrap();
    let letters = store.dead_letters(0, 1_000).unwrap();
    assert_eq!(letters.len(), 50);
    let fields: BTreeSet<String> = letters
        .iter()
        .map(|(_, l)| l.rejection.field.clone())
        .collect();
    assert_eq!(fields, expected_fields.keys().cloned().collect());
    assert!(
        letters
            .iter()
            .all(|(_, l)| !l.raw.is_empty() && l.tenant == "default")
    );
}

#[test]
fn sigkill_while_posting_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    let now = now_micros();
    let seed = now as u64;
    println!("kill-point seed: {seed}");
    let mut rng = Rng(seed);

    // 160 batches of 250: requests (SUM) and security events (COUNT), every id unique.
    let mut expected_requests = 0i128;
    let mut expected_security_events = 0i128;
    let batches: Vec<String> = (0..160)
        .map(|b| {
            (0..250)
                .map(|i| {
                    let n = b * 250 + i;
                    let (label, quantity) = if n % 5 == 0 { ("waf_security_events", 1) } else { ("http_lb_requests", (n % 1000) as i64 + 1) };
                    if n % 5 == 0 {
                        expected_security_events += 1;
                    } else {
                        expected_requests += i128::from(quantity);
                    }
                    json!({"id": format!("crash-{n}"), "namespace": format!("ns-{}", n % 4), "metric_label": label, "quantity": quantity, "timestamp": rfc3339(now - (n as i64 % 20) * HOUR)}).to_string()
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let answered = Arc::new(Mutex::new(vec![false; batches.len()]));
    let batches = Arc::new(batches);

    let post_unanswered = |server: &Server, lane: usize| -> bool {
        // Two lanes post concurrently; each stops at its first unanswered batch.
        for index in (lane..batches.len()).step_by(2) {
            if answered.lock().unwrap()[index] {
                continue;
            }
            match server.post_raw(
                "/api/tally/events",
                Some(OPERATOR_TOKEN),
                batches[index].clone().into_bytes(),
            ) {
                Ok((200, answer)) => {
                    assert_eq!(answer["rejected"].as_array().unwrap().len(), 0, "{answer}");
                    answered.lock().unwrap()[index] = true;
                }
                Ok((status, answer)) => panic!("unexpected {status}: {answer}"),
                Err(_) => return false,
            }
        }
        true
    };

    let answered_count = || answered.lock().unwrap().iter().filter(|a| **a).count();
    for cycle in 0..3 {
        // Kill once a random number of batches more have been answered, plus a random few
        // milliseconds: always while both lanes are still posting.
        let target = answered_count() + 4 + rng.below(16) as usize;
        let extra = Duration::from_millis(rng.below(25));
        std::thread::scope(|scope| {
            let server_ref = &server;
            let lanes: Vec<_> = (0..2)
                .map(|lane| scope.spawn(move || post_unanswered(server_ref, lane)))
                .collect();
            while answered_count() < target {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(extra);
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(server_ref.pid().to_string())
                .status();
            for lane in lanes {
                assert!(!lane.join().unwrap(), "a lane finished before the kill");
            }
        });
        server.kill();
        println!(
            "cycle {cycle}: killed {extra:?} after batch {target}; {} of {} batches answered",
            answered_count(),
            batches.len()
        );
        server.start_again();
    }
    // Resend everything that never got an answer, as a real client would.
    assert!(post_unanswered(&server, 0) && post_unanswered(&server, 1));
    assert!(answered.lock().unwrap().iter().all(|a| *a));

    let check = |server: &Server| {
        let (status, details) = server.post(
            "/api/web/namespaces/system/usage_details",
            &json!({"from": rfc3339(hour_floor(now - 24 * HOUR)), "to": rfc3339(now + HOUR)}),
        );
        assert_eq!(status, 200, "{details}");
        let total = |label: &str| -> f64 {
            details["usage_items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["metric_label"] == label)
                .map(|i| i["quantity"].as_f64().unwrap())
                .sum()
        };
        assert_eq!(total("http_lb_requests"), expected_requests as f64);
        assert_eq!(
            total("waf_security_events"),
            expected_security_events as f64
        );
    };
    check(&server);
    server.restart();
    check(&server);
}
