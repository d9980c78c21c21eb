//! Hardening of what a billing period counts: `current_usage` of a period a plan change starts
//! inside an hour agrees with its invoice (in-process, with a clock the test moves).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{TimeZone, Utc};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tally::api::{AppState, router};
use tally::billing::LineKind;
use tally::catalog::Catalog;
use tally::config::Config;
use tally::engine::Engine;
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
        tally::projection::billing::load_tenant(&self.engine.store, "default")
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
