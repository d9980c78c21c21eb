//! Hardening of what one answer may hold and what a billing period counts: `current_usage` of
//! a period a plan change starts inside an hour agrees with its invoice (in-process, with a
//! clock the test moves); F5 lists stop at `--max-list-items` and say so in a header; quota
//! objects stop at `--max-quota-objects`; the alert list pages newest first through one
//! tenant's alerts, also after a restart of an older data directory and a rebuild.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{TimeZone, Utc};
use common::{OPERATOR_TOKEN, Server};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tally::api::{AppState, router};
use tally::billing::LineKind;
use tally::catalog::Catalog;
use tally::config::Config;
use tally::engine::Engine;
use tally::log::store::{CF_QUOTA, Store, StoreOptions};
use tower::ServiceExt;

const TOKEN: &str = "limits-test-operator";

fn micros(day: u32, hour: u32, minute: u32) -> i64 {
    Utc.with_ymd_and_hms(2026, 3, day, hour, minute, 0)
        .unwrap()
        .timestamp_micros()
}

/// An engine in this process whose clock the test sets.
struct Billing {
    app: Router,
    engine: Arc<Engine>,
    clock: Arc<AtomicI64>,
    _dir: tempfile::TempDir,
}

impl Billing {
    fn start(at: i64) -> Billing {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(AtomicI64::new(at));
        let config = Config {
            admin_token: Some(TOKEN.into()),
            rate_limit: 0,
            ..Config::with_defaults(
                dir.path().join("data"),
                Arc::new(Catalog::builtin().unwrap()),
            )
        };
        let time = clock.clone();
        let engine =
            Arc::new(Engine::open(config, Arc::new(move || time.load(Ordering::SeqCst))).unwrap());
        Billing {
            app: router(AppState::new(engine.clone())),
            engine,
            clock,
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let request = Request::builder()
            .method("POST")
            .uri(path)
            .header("authorization", format!("APIToken {TOKEN}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        // Commands answer once durable; the test also reads the projections directly
        // (`billing()`), so it waits for them here.
        self.engine
            .wait_projected(self.engine.head(), std::time::Duration::from_secs(60))
            .await;
        body
    }

    async fn at(&self, at: i64) {
        self.clock.store(at, Ordering::SeqCst);
        self.engine.close_due_periods().await.unwrap();
    }

    async fn requests(&self, id: &str, namespace: &str, at: i64, quantity: i64) {
        let event = json!([{"id": id, "namespace": namespace, "metric_label": "http_lb_requests",
                            "quantity": quantity, "timestamp": tally::time::format_rfc3339(at)}]);
        let body = self.post("/api/tally/events", event).await;
        assert_eq!(body["accepted"], 1, "{body}");
    }

    async fn change_plan(&self, plan: &str) {
        let body = json!({"new_plan": plan, "payload": {
            "payment_provider_token": "tok_limits",
            "billing_address": {"city": "Springfield", "country": "US"}}});
        self.post("/api/web/namespaces/system/billing/plan_transition", body)
            .await;
    }

    /// `current_usage` of `namespace` over `range` (the open period when `None`), as
    /// metric → (billable units, amount in cents), with its total.
    async fn current_usage(
        &self,
        namespace: &str,
        range: Option<(i64, i64)>,
    ) -> (BTreeMap<String, (String, String)>, String) {
        let body = match range {
            Some((from, to)) => json!({"from": tally::time::format_rfc3339(from),
                                       "to": tally::time::format_rfc3339(to)}),
            None => json!({}),
        };
        let answer = self
            .post(
                &format!("/api/web/namespaces/{namespace}/current_usage"),
                body,
            )
            .await;
        let lines = answer["usage_items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                (
                    item["metric_labels"][0].as_str().unwrap().to_owned(),
                    (
                        item["quantity_billable"].as_str().unwrap().to_owned(),
                        item["amount"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect();
        (lines, answer["total_cost"].as_str().unwrap().to_owned())
    }

    fn billing(&self) -> tally::billing::TenantBilling {
        tally::projection::billing::load_tenant(self.engine.store(), "default")
            .unwrap()
            .unwrap()
    }

    /// The usage lines of the invoice of the period starting at `start`, in the form of
    /// [`current_usage`](Self::current_usage).
    fn invoiced_usage(&self, start: i64) -> BTreeMap<String, (String, String)> {
        let billing = self.billing();
        let invoice = billing
            .invoices
            .iter()
            .find(|i| i.period_start == start)
            .unwrap_or_else(|| panic!("no invoice for the period from {start}"));
        invoice
            .lines
            .iter()
            .filter(|l| l.kind == LineKind::Usage)
            .map(|l| {
                (
                    l.metric_label.clone(),
                    (l.quantity.to_string(), l.amount.to_string()),
                )
            })
            .collect()
    }
}

fn line(units: &str, amount: &str) -> (String, String) {
    (units.to_owned(), amount.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_usage_of_a_period_begun_inside_an_hour_counts_nothing_of_it_from_before() {
    let h = Billing::start(micros(10, 10, 5));
    // 7 million requests on the free plan, then two plan changes inside the same UTC hour.
    h.requests("a", "shop", micros(10, 10, 5), 7_000_000).await;
    h.at(micros(10, 10, 10)).await;
    h.change_plan("individual-plan").await;
    h.at(micros(10, 10, 15)).await;
    h.requests("b", "shop", micros(10, 10, 15), 11_000_000)
        .await;
    h.at(micros(10, 10, 20)).await;
    let individual = h.billing().open_period().clone();
    assert_eq!(individual.start, micros(10, 10, 10));
    // Only the 11 million of the new period, at the individual plan's 60 cents a million.
    let (lines, total) = h.current_usage("system", None).await;
    assert_eq!(
        lines,
        [("http_lb_requests".into(), line("11", "660"))].into()
    );
    assert_eq!(total, "660");

    h.at(micros(10, 10, 30)).await;
    h.change_plan("team-plan").await;
    h.at(micros(10, 10, 35)).await;
    let team = h.billing().open_period().clone();
    assert_eq!(team.start, micros(10, 10, 30));
    // The team period has had no usage yet: nothing of 10:00–10:30 is counted again.
    let (lines, total) = h.current_usage("system", None).await;
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(total, "0");
    // The closed individual period, asked for by its range, is exactly its invoice.
    let (lines, _) = h
        .current_usage("system", Some((individual.start, team.start)))
        .await;
    assert_eq!(lines, h.invoiced_usage(individual.start));
    assert_eq!(
        lines,
        [("http_lb_requests".into(), line("11", "660"))].into()
    );

    h.at(micros(10, 10, 40)).await;
    h.requests("c", "shop", micros(10, 10, 40), 13_000_000)
        .await;
    h.requests("d", "blog", micros(10, 10, 41), 2_000_000).await;
    h.at(micros(10, 10, 45)).await;
    let (shop, _) = h.current_usage("shop", None).await;
    assert_eq!(
        shop,
        [("http_lb_requests".into(), line("13", "585"))].into()
    );
    let (system, total) = h.current_usage("system", None).await;
    assert_eq!(
        system,
        [("http_lb_requests".into(), line("15", "675"))].into()
    );
    assert_eq!(total, "675");

    // When the team period closes, its invoice bills exactly what current_usage showed.
    h.at(Utc
        .with_ymd_and_hms(2026, 4, 1, 0, 0, 1)
        .unwrap()
        .timestamp_micros())
        .await;
    assert_eq!(h.invoiced_usage(team.start), system);
}

/// A request as the operator, with the answer's `X-Tally-Truncated` header.
fn send(server: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, bool, Value) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client
        .request(method, format!("{}{path}", server.base))
        .header("Authorization", format!("APIToken {OPERATOR_TOKEN}"));
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let truncated = match response.headers().get("x-tally-truncated") {
        None => false,
        Some(value) => {
            assert_eq!(value, "true");
            true
        }
    };
    (status, truncated, response.json().unwrap())
}

fn now_text(offset_seconds: i64) -> String {
    tally::time::format_rfc3339(Utc::now().timestamp_micros() + offset_seconds * 1_000_000)
}

fn quota(name: &str, team: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"team": team}},
           "spec": {"object_limits": {"http_loadbalancer": {"maximum": 50}}}})
}

#[test]
fn f5_lists_stop_at_max_list_items_and_say_so_and_quota_objects_at_their_cap() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_args(
        &data,
        &["--max-list-items", "3", "--max-quota-objects", "4"],
    );

    // Six items: blog/lb-1 and shop/lb-1 … shop/lb-5; shop/lb-1 in five containers too; all
    // in one hour.
    let at = now_text(-60);
    let range = json!({"from": now_text(-7_200), "to": now_text(3_600)});
    let mut events = vec![
        json!({"id": "blog", "namespace": "blog", "metric_label": "http_lb_requests",
                                 "object_name": "lb-1", "quantity": 1, "timestamp": at}),
    ];
    for n in 1..=5 {
        events.push(json!({"id": format!("shop-{n}"), "namespace": "shop", "metric_label": "http_lb_requests",
                           "object_name": format!("lb-{n}"), "quantity": n, "timestamp": at}));
        events.push(json!({"id": format!("container-{n}"), "namespace": "shop", "metric_label": "http_lb_requests",
                           "object_name": "lb-1", "container": format!("c{n}"), "quantity": 10, "timestamp": at}));
    }
    let (status, body) = server.post("/api/tally/events", &Value::Array(events));
    assert_eq!((status, &body["accepted"]), (200, &json!(11)), "{body}");

    let details = "/api/web/namespaces/system/usage_details";
    let (status, truncated, body) = send(&server, "POST", details, Some(&range));
    assert_eq!(status, 200, "{body}");
    let items: Vec<(String, String, f64)> = body["usage_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["namespace"].as_str().unwrap().to_owned(),
                i["object_name"].as_str().unwrap().to_owned(),
                i["quantity"].as_f64().unwrap(),
            )
        })
        .collect();
    // The first three in item order, each whole: shop/lb-1 is 1 + 5 × 10.
    assert_eq!(
        items,
        [
            ("blog".into(), "lb-1".into(), 1.0),
            ("shop".into(), "lb-1".into(), 51.0),
            ("shop".into(), "lb-2".into(), 2.0)
        ]
    );
    assert!(truncated, "six items, three answered");
    let (status, truncated, body) = send(
        &server,
        "POST",
        "/api/web/namespaces/blog/usage_details",
        Some(&range),
    );
    assert_eq!((status, truncated), (200, false), "{body}");
    assert_eq!(body["usage_items"].as_array().unwrap().len(), 1);

    // hourly_usage_details of shop/lb-1: six series in one hour, three answered.
    let query = item_query(&server, "shop", "lb-1", &range);
    let (status, truncated, hourly) = send(
        &server,
        "POST",
        "/api/web/namespaces/shop/hourly_usage_details",
        Some(&json!({"query": query})),
    );
    assert_eq!(status, 200, "{hourly}");
    let containers: Vec<&str> = hourly["hourly_usage_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["container"].as_str().unwrap())
        .collect();
    assert_eq!(containers, ["", "c1", "c2"]);
    assert!(truncated);
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.contains("cut at --max-list-items") && log.contains("hourly_usage_details"),
        "{log}"
    );

    // Quota objects: four fit, a fifth is refused with the cap named, until one is deleted.
    let quotas = "/api/web/namespaces/system/quotas";
    for (name, team) in [("q1", "web"), ("q2", "web"), ("q3", "db"), ("q4", "db")] {
        let (status, body) = server.call("POST", quotas, Some(&quota(name, team)));
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server.call("POST", quotas, Some(&quota("q5", "web")));
    assert_eq!((status, &body["code"]), (409, &json!(8)), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("4 quota objects, the most it may have (--max-quota-objects)"),
        "{body}"
    );
    let (status, body) = server.call("PUT", &format!("{quotas}/q2"), Some(&quota("q2", "ops")));
    assert_eq!(status, 200, "replacing at the cap: {body}");
    let (status, truncated, body) = send(&server, "GET", quotas, None);
    let names: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        (status, names, truncated),
        (200, vec!["q1", "q2", "q3"], true)
    );
    let (status, truncated, body) = send(
        &server,
        "GET",
        &format!("{quotas}?label_filter=team%3Ddb"),
        None,
    );
    assert_eq!((status, truncated), (200, false), "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    let (status, _) = server.call("DELETE", &format!("{quotas}/q1"), None);
    assert_eq!(status, 200);
    let (status, body) = server.call("POST", quotas, Some(&quota("q5", "web")));
    assert_eq!(status, 200, "room again after a delete: {body}");
}

/// The `hourly_breakdown_query` of one item of `namespace`'s usage_details.
fn item_query(server: &Server, namespace: &str, object: &str, range: &Value) -> String {
    let (status, body) = server.post(
        &format!("/api/web/namespaces/{namespace}/usage_details"),
        range,
    );
    assert_eq!(status, 200, "{body}");
    body["usage_items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["object_name"] == object)
        .unwrap_or_else(|| panic!("no item {object}: {body}"))["hourly_breakdown_query"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every alert of the tenant, page by page: (seq, id) newest first, and the page sizes.
fn alert_pages(server: &Server, page_size: usize) -> (Vec<(u64, String)>, Vec<usize>) {
    let mut alerts = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let (status, body) = server.call(
            "GET",
            &format!(
                "/api/tally/namespaces/system/alerts?page_size={page_size}&page_token={token}"
            ),
            None,
        );
        assert_eq!(status, 200, "{body}");
        let page = body["alerts"].as_array().unwrap();
        sizes.push(page.len());
        for alert in page {
            assert_eq!(alert["tenant"], "default", "only the tenant's own: {alert}");
            alerts.push((
                alert["seq"].as_str().unwrap().parse().unwrap(),
                alert["id"].as_str().unwrap().to_owned(),
            ));
        }
        token = body["next_page_token"].as_str().unwrap().to_owned();
        if token.is_empty() {
            return (alerts, sizes);
        }
    }
}

fn tally_ok(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_ADMIN_TOKEN", OPERATOR_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "tally {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Deletes the per-tenant alert index of a stopped data directory: what a data directory
/// written before the index looks like.
fn drop_alert_index(data: &Path) -> usize {
    let options = StoreOptions {
        dedup_horizon: Duration::from_secs(35 * 86_400),
        min_free_disk: 0,
    };
    let store = Store::open(data, &options).unwrap();
    let mut batch = store.batch();
    let mut dropped = 0;
    store
        .scan_prefix(
            CF_QUOTA,
            &tally::log::keys::QuotaKey::all_tenant_alerts(),
            |key, _| {
                batch.delete(CF_QUOTA, key);
                dropped += 1;
                true
            },
        )
        .unwrap();
    // A store from before the index has no mark that its alerts were indexed either.
    batch.delete(
        tally::log::store::CF_META,
        tally::log::keys::MetaKey::AlertsIndexedPerTenant.encode(),
    );
    store.commit(batch, true).unwrap();
    dropped
}

#[test]
fn alerts_page_newest_first_through_one_tenant_after_upgrade_and_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    // The free plan allows 5 load balancers. Up to 4 (80 %), 5 (90, 100 %), 0 (all three
    // cleared), 5 again and 3: twelve crossings of `default`, interleaved with another
    // tenant's three.
    for (n, count) in [4, 5, 0, 5, 3].into_iter().enumerate() {
        let mut events = vec![
            json!({"id": format!("lb-{n}"), "namespace": "shop", "metric_label": "http_loadbalancers",
                                     "quantity": count, "timestamp": now_text(n as i64)}),
        ];
        if n < 2 {
            events.push(json!({"id": format!("other-{n}"), "tenant": "other", "namespace": "shop",
                               "metric_label": "http_loadbalancers", "quantity": count, "timestamp": now_text(n as i64)}));
        }
        let (status, body) = server.post("/api/tally/events", &Value::Array(events));
        assert_eq!(status, 200, "{body}");
        server.wait_caught_up();
    }

    let (alerts, sizes) = alert_pages(&server, 5);
    assert_eq!(sizes, [5, 5, 2]);
    assert!(
        alerts.windows(2).all(|w| w[0].0 > w[1].0),
        "newest first: {alerts:?}"
    );
    let crossings: Vec<&str> = alerts
        .iter()
        .map(|(_, id)| id.rsplit_once(':').unwrap().0)
        .collect();
    let oldest_first = [
        "object:http_loadbalancer:80:raised",
        "object:http_loadbalancer:90:raised",
        "object:http_loadbalancer:100:raised",
        "object:http_loadbalancer:100:cleared",
        "object:http_loadbalancer:90:cleared",
        "object:http_loadbalancer:80:cleared",
    ];
    let expected: Vec<&str> = oldest_first
        .iter()
        .chain(&oldest_first)
        .rev()
        .copied()
        .collect();
    assert_eq!(crossings, expected);
    assert_eq!(
        alert_pages(&server, 0).0,
        alerts,
        "the default page holds them all"
    );
    assert_eq!(
        alert_pages(&server, 1_000_000).0,
        alerts,
        "a page is at most 1000"
    );
    for bad in ["page_size=lots", "page_token=bm90LWEtdG9rZW4"] {
        let (status, body) = server.call(
            "GET",
            &format!("/api/tally/namespaces/system/alerts?{bad}"),
            None,
        );
        assert_eq!((status, &body["code"]), (400, &json!(3)), "{bad}: {body}");
    }

    // A data directory from before the index: the first start indexes its alerts.
    server.stop();
    assert_eq!(drop_alert_index(&data), 15);
    server.start_again();
    server.wait_caught_up();
    assert_eq!(alert_pages(&server, 5).0, alerts);

    // A rebuild from the log folds the same index, so it finds nothing to change.
    server.stop();
    let report = tally_ok(&["replay", "rebuild", "--data-dir", data.to_str().unwrap()]);
    assert!(
        report.contains("the live projections equal a fold of the log"),
        "{report}"
    );
    common::drop_projections(&data);
    server.start_again();
    server.wait_caught_up();
    assert_eq!(alert_pages(&server, 5).0, alerts);
    server.stop();
}
