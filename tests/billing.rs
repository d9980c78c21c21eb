//! Billing in-process over a real engine with a clock the test moves: a scripted year of one
//! tenant, every invoice line recomputed independently to the cent, the PDF read back, every
//! billing endpoint against the spec's schemas and its error cases, and billing state equal
//! after a restart and after refolding the whole log.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use chrono::{Datelike, TimeZone, Utc};
use common::openapi::{assert_schema, strict_openapi};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tally::api::{AppState, router};
use tally::billing::{LineKind, TenantBilling};
use tally::catalog::Catalog;
use tally::config::Config;
use tally::engine::Engine;
use tower::ServiceExt;

const TOKEN: &str = "billing-test-operator";
const TENANT: &str = "default";

/// The built-in catalog, except that moving to the individual plan needs approval (so the
/// year can have a downgrade that waits for the billing department).
fn catalog() -> Catalog {
    let mut file: Value = serde_json::from_str(tally::catalog::DEFAULT_CATALOG_JSON).unwrap();
    for plan in file["plans"].as_array_mut().unwrap() {
        if plan["name"] == "individual-plan" {
            plan["transition_flow"]["requires_manual_approval"] = json!(true);
        }
    }
    Catalog::from_json(&file.to_string()).unwrap()
}

struct Harness {
    app: Router,
    engine: Arc<Engine>,
    clock: Arc<AtomicI64>,
    dir: tempfile::TempDir,
}

fn micros(year: i32, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> i64 {
    Utc.with_ymd_and_hms(year, month, day, hour, minute, second)
        .unwrap()
        .timestamp_micros()
}

fn open_engine(dir: &std::path::Path, clock: Arc<AtomicI64>) -> Arc<Engine> {
    let config = Config {
        admin_token: Some(TOKEN.into()),
        rate_limit: 0,
        ..Config::with_defaults(dir.join("data"), Arc::new(catalog()))
    };
    Arc::new(Engine::open(config, Arc::new(move || clock.load(Ordering::SeqCst))).unwrap())
}

fn harness(start: i64) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicI64::new(start));
    let engine = open_engine(dir.path(), clock.clone());
    Harness {
        app: router(AppState::new(engine.clone())),
        engine,
        clock,
        dir,
    }
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.request(method, path, token, body, true).await
    }

    /// A request; after a command, `wait` waits until the projections include it.
    async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        wait: bool,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("APIToken {token}"));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let response = self
            .app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        if wait && method != "GET" {
            // Commands answer once durable; the tests also read the projections directly
            // (`billing()`), so they wait for them here.
            self.engine
                .wait_projected(self.engine.head(), Duration::from_secs(60))
                .await;
        }
        (
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("GET", path, Some(TOKEN), None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(TOKEN), Some(body)).await
    }

    /// Moves the clock and lets the billing clock close what is due.
    async fn at(&self, at: i64) {
        self.clock.store(at, Ordering::SeqCst);
        self.engine.close_due_periods().await.unwrap();
    }

    async fn requests(&self, id: &str, at: i64, quantity: i64) {
        let (status, body) = self
            .post(
                "/api/tally/events",
                json!([{"id": id, "namespace": "shop", "metric_label": "http_lb_requests",
                        "quantity": quantity, "timestamp": tally::time::format_rfc3339(at)}]),
            )
            .await;
        assert_eq!(
            (status, &body["accepted"]),
            (StatusCode::OK, &json!(1)),
            "{body}"
        );
    }

    fn billing(&self) -> TenantBilling {
        tally::projection::billing::load_tenant(self.engine.store(), TENANT)
            .unwrap()
            .expect("tenant billing state")
    }
}

const TRANSITION: &str = "/api/web/namespaces/system/billing/plan_transition";

/// A transition to the team plan with the payment token and contacts it requires.
fn to_team_plan() -> Value {
    json!({"new_plan": "team-plan", "payload": {
        "payment_provider_token": "tok_visa_4242",
        "billing_address": {"address1": "1 Main St", "city": "Springfield", "country": "US"}}})
}

/// The test's own model of what every invoice must say.
#[derive(Debug, Clone)]
struct ModelPeriod {
    plan: &'static str,
    start: i64,
    end: i64,
    requests: i64,
}

fn month_bounds(at: i64) -> (i64, i64) {
    let date = chrono::DateTime::from_timestamp_micros(at).unwrap();
    let start = micros(date.year(), date.month(), 1, 0, 0, 0);
    let (year, month) = if date.month() == 12 {
        (date.year() + 1, 1)
    } else {
        (date.year(), date.month() + 1)
    };
    (start, micros(year, month, 1, 0, 0, 0))
}

/// Round half up of `a × b / c` in integers.
fn prorated(a: i64, b: i64, c: i64) -> i64 {
    ((a as i128 * b as i128 * 2 + c as i128) / (c as i128 * 2)) as i64
}

fn flat_of(plan: &str) -> i64 {
    match plan {
        "individual-plan" => 2_500,
        "team-plan" => 50_000,
        _ => 0,
    }
}

fn request_price(plan: &str) -> i64 {
    match plan {
        "individual-plan" => 60,
        "team-plan" => 45,
        _ => 0,
    }
}

/// Billable millions of requests, F5 rounding: below one bills as one, above rounds down.
fn billable(requests: i64) -> i64 {
    if requests <= 0 {
        0
    } else {
        (requests / 1_000_000).max(1)
    }
}

fn expected_flat(period: &ModelPeriod) -> i64 {
    let (month_start, month_end) = month_bounds(period.start);
    prorated(
        flat_of(period.plan),
        (period.end - period.start) / 1_000_000,
        (month_end - month_start) / 1_000_000,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_year_gives_invoices_recomputed_to_the_cent() {
    let doc = strict_openapi();
    let year = 2025;
    let h = harness(micros(year, 1, 1, 12, 0, 0));
    let mut model: Vec<ModelPeriod> = Vec::new();
    let mut plan = "free-plan";
    let mut period_start = micros(year, 1, 1, 0, 0, 0);
    let mut requests_in_period = 0i64;
    let mut transition_id = String::new();

    let mut day = Utc.with_ymd_and_hms(year, 1, 1, 12, 0, 0).unwrap();
    let end = Utc.with_ymd_and_hms(year + 1, 1, 1, 12, 0, 0).unwrap();
    let mut n = 0;
    while day <= end {
        let noon = day.timestamp_micros();
        let (month_start, _) = month_bounds(noon);
        if month_start > period_start {
            // The clock passed a renewal boundary: the period closes there.
            model.push(ModelPeriod {
                plan,
                start: period_start,
                end: month_start,
                requests: requests_in_period,
            });
            period_start = month_start;
            requests_in_period = 0;
        }
        h.at(noon).await;
        if day >= end {
            break;
        }
        // Usage every day: a little more each day of the month.
        let quantity = 1_000_000 + i64::from(day.day()) * 37_501;
        n += 1;
        h.requests(&format!("day-{n}"), noon, quantity).await;
        requests_in_period += quantity;

        let after_noon = noon + 30_000_000;
        match (day.month(), day.day()) {
            (2, 15) => {
                // Upgrade mid-month: payment token and contacts, as the team plan requires.
                h.at(after_noon).await;
                let (status, body) = h.post(TRANSITION, to_team_plan()).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_schema(&doc, "plan_transitionInitiatePlanTransitionRsp", &body);
                assert_eq!(body["requires_manual_approval"], false);
                let (status, state) = h
                    .call(
                        "GET",
                        &format!(
                            "/no_auth/namespaces/system/billing/plan_transition?id={}",
                            body["id"].as_str().unwrap()
                        ),
                        None,
                        None,
                    )
                    .await;
                assert_eq!(
                    (status, state),
                    (StatusCode::OK, json!({"state": "STATE_FINISHED"}))
                );
                model.push(ModelPeriod {
                    plan,
                    start: period_start,
                    end: after_noon,
                    requests: requests_in_period,
                });
                plan = "team-plan";
                period_start = after_noon;
                requests_in_period = 0;
            }
            (3, 3) => {
                let (status, body) = h
                    .post(
                        "/api/web/namespaces/system/addon/subscribe",
                        json!({"f5xc_waap_advanced": {}}),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_schema(&doc, "subscriptionSubscribeResponse", &body);
                // Idempotent.
                let (status, _) = h
                    .post(
                        "/api/web/namespaces/system/addon/subscribe",
                        json!({"f5xc_waap_advanced": {}}),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK);
            }
            (4, 3) => {
                // Late usage for March, whose invoice was issued on April 1st.
                let late = micros(year, 3, 20, 12, 0, 0);
                h.requests("late-march", late, 2_500_000).await;
                let march = model
                    .iter_mut()
                    .find(|p| p.start == micros(year, 3, 1, 0, 0, 0))
                    .unwrap();
                march.requests += 2_500_000;
            }
            (6, 10) => {
                // Downgrade to a plan that needs approval: it waits.
                h.at(after_noon).await;
                let (status, body) = h
                    .post(
                        "/api/web/namespaces/system/billing/plan_transition",
                        json!({"new_plan": "individual-plan"}),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body["requires_manual_approval"], true);
                transition_id = body["id"].as_str().unwrap().to_owned();
                let (_, current) = h
                    .get("/api/web/namespaces/system/usage_plans/current")
                    .await;
                assert_schema(&doc, "planLocalizedPlan", &current);
                assert_eq!(current["plans"][0]["name"], "team-plan");
                assert_eq!(current["plans"][0]["state"], "STATE_TRANSITION_PENDING");
                // A second request while one waits is a conflict.
                let (status, _) = h
                    .post(
                        "/api/web/namespaces/system/billing/plan_transition",
                        json!({"new_plan": "free-plan"}),
                    )
                    .await;
                assert_eq!(status, StatusCode::CONFLICT);
            }
            (6, 12) => {
                h.at(after_noon).await;
                let (status, body) = h
                    .post(
                        &format!("/api/tally/plan_transitions/{transition_id}/approve"),
                        json!({}),
                    )
                    .await;
                assert_eq!(
                    (status, &body["state"]),
                    (StatusCode::OK, &json!("STATE_FINISHED")),
                    "{body}"
                );
                model.push(ModelPeriod {
                    plan,
                    start: period_start,
                    end: after_noon,
                    requests: requests_in_period,
                });
                plan = "individual-plan";
                period_start = after_noon;
                requests_in_period = 0;
            }
            (7, 5) => {
                let (status, body) = h
                    .post("/api/tally/tenants/default/coupons", json!({"title": "Loyalty 12.5%", "discount_type": "DISCOUNT_TYPE_PERCENTAGE", "discount_amount": 1250}))
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let (_, current) = h
                    .post("/api/web/namespaces/system/current_usage", json!({}))
                    .await;
                assert_schema(&doc, "usageListCurrentUsageResp", &current);
                assert_eq!(current["coupons"][0]["discount_amount"], 1250, "{current}");
            }
            _ => {}
        }
        day += chrono::Duration::days(1);
    }

    // Expected invoices: one per closed period on a paid plan, in order; late March usage
    // is billed on the next invoice issued after it arrived (April's), at March's plan price.
    let billing = h.billing();
    let invoices = &billing.invoices;
    let paid_periods: Vec<&ModelPeriod> = model.iter().filter(|p| p.plan != "free-plan").collect();
    assert_eq!(
        invoices.len(),
        paid_periods.len(),
        "{:#?}",
        invoices
            .iter()
            .map(|i| (&i.name, i.period_start, i.total))
            .collect::<Vec<_>>()
    );
    let march_start = micros(year, 3, 1, 0, 0, 0);
    let march = model.iter().find(|p| p.start == march_start).unwrap();
    let march_billed_first = billable(march.requests - 2_500_000);
    for (invoice, period) in invoices.iter().zip(&paid_periods) {
        assert_eq!(
            (
                invoice.period_start,
                invoice.period_end,
                invoice.plan.as_str()
            ),
            (period.start, period.end, period.plan)
        );
        let mut expected: Vec<(LineKind, i128, i64)> = Vec::new();
        let flat = expected_flat(period);
        expected.push((LineKind::FlatPrice, 0, flat));
        let price = request_price(period.plan);
        // March's invoice billed March as it stood on April 1st.
        let quantity = if period.start == march_start {
            march_billed_first
        } else {
            billable(period.requests)
        };
        expected.push((LineKind::Usage, i128::from(quantity), quantity * price));
        if period.start == micros(year, 4, 1, 0, 0, 0) {
            let difference = billable(march.requests) - march_billed_first;
            expected.push((
                LineKind::Adjustment,
                i128::from(difference),
                difference * request_price("team-plan"),
            ));
        }
        let subtotal: i64 = expected.iter().map(|e| e.2).sum();
        if period.start == micros(year, 7, 1, 0, 0, 0) {
            expected.push((LineKind::Discount, 0, -prorated(subtotal, 1250, 10_000)));
        }
        let got: Vec<(LineKind, i128, i64)> = invoice
            .lines
            .iter()
            .map(|l| (l.kind, l.quantity, l.amount))
            .collect();
        assert_eq!(got, expected, "invoice {} for {period:?}", invoice.name);
        assert_eq!(
            invoice.total,
            expected.iter().map(|e| e.2).sum::<i64>(),
            "{}",
            invoice.name
        );
        assert_eq!(invoice.currency, "USD");
    }

    // The invoice list: the open period first as pending, then newest first.
    let (status, list) = h
        .get("/api/web/namespaces/system/usage/invoices/custom_list?limit=5")
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_schema(&doc, "invoiceListInvoicesRsp", &list);
    assert_eq!(list["invoices"].as_array().unwrap().len(), 5);
    assert_eq!(list["invoices"][0]["status"], "STATUS_PENDING");
    assert_eq!(list["invoices"][0]["active"], true);
    let newest = invoices.last().unwrap();
    assert_eq!(list["invoices"][1]["name"], newest.name.as_str());
    assert_eq!(list["invoices"][1]["amount"], newest.total.to_string());
    assert_eq!(list["invoices"][1]["status"], "STATUS_ISSUED");
    // Older unpaid invoices are overdue after 30 days; paying one shows it.
    let oldest = &invoices[0];
    let (_, all) = h
        .get("/api/web/namespaces/system/usage/invoices/custom_list?limit=100")
        .await;
    let status_of = |list: &Value, name: &str| {
        list["invoices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status_of(&all, &oldest.name), "OVERDUE");
    let (status, _) = h
        .post(
            &format!("/api/tally/invoices/{}/mark_paid", oldest.name),
            json!({"tenant": TENANT}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, all) = h
        .get("/api/web/namespaces/system/usage/invoices/custom_list?limit=100")
        .await;
    assert_eq!(status_of(&all, &oldest.name), "STATUS_PAID");

    // The PDF of April's invoice (with the adjustment) reads back with its lines and total.
    let april = invoices
        .iter()
        .find(|i| i.period_start == micros(year, 4, 1, 0, 0, 0))
        .unwrap();
    let (status, pdf) = h
        .get(&format!(
            "/api/web/namespaces/system/usage/invoice_pdf?name={}",
            april.name
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_schema(&doc, "invoiceDownloadInvoicePdfRsp", &pdf);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(pdf["pdf"].as_str().unwrap())
        .unwrap();
    assert!(bytes.starts_with(b"%PDF-"));
    let text = pdf_text(&bytes, h.dir.path());
    let total = tally::billing::money(april.total, "USD");
    assert!(text.contains(&total), "{total} not in:\n{text}");
    assert!(
        text.contains(&april.name)
            && text.contains("Adjustment: late")
            && text.contains("Tenant: default"),
        "{text}"
    );
    let (status, _) = h
        .get("/api/web/namespaces/system/usage/invoice_pdf?name=nope")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Subscriptions: free, team, individual; the current one alone on request.
    let (status, subscriptions) = h
        .get("/api/web/namespaces/system/subscriptions/custom_list")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_schema(&doc, "subscriptionListSubscriptionsRsp", &subscriptions);
    let plans: Vec<&str> = subscriptions["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["plan_object_name"].as_str().unwrap())
        .collect();
    assert_eq!(plans, ["free-plan", "team-plan", "individual-plan"]);
    let (_, current) = h
        .get("/api/web/namespaces/system/subscriptions/custom_list?current=true")
        .await;
    assert_eq!(current["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(current["subscriptions"][0]["current"], true);
    let (_, plans) = h
        .get("/api/web/namespaces/system/usage_plans/custom_list")
        .await;
    assert_schema(&doc, "planListUsagePlansRsp", &plans);
    assert_eq!(
        plans["usage_plans"][0]["plans"].as_array().unwrap().len(),
        4
    );
    // The addon survived the downgrade (individual allows it); the team plan's inclusions did not.
    assert!(
        billing.addons.contains("f5xc_waap_advanced"),
        "{:?}",
        billing.addons
    );
    assert!(
        !billing.addons.contains("f5xc_appstack_standard"),
        "{:?}",
        billing.addons
    );
    // The individual plan's quota now applies (its default quota differs from the free plan's).
    let (_, limits) = h.get("/api/web/namespaces/system/quota/limits").await;
    let individual = catalog()
        .plan("individual-plan")
        .unwrap()
        .default_quota
        .clone();
    assert_eq!(
        limits["objects"]["http_loadbalancer"]["limit"]["maximum"],
        json!(individual.object_limits["http_loadbalancer"].maximum)
    );

    // Billing state survives a restart and equals a refold of the whole log.
    let before = h.billing();
    let Harness {
        app,
        engine,
        clock,
        dir,
    } = h;
    drop(app);
    engine.shutdown().await;
    drop(engine);
    let reopened = open_engine(dir.path(), clock.clone());
    assert_eq!(
        tally::projection::billing::load_tenant(reopened.store(), TENANT)
            .unwrap()
            .unwrap(),
        before
    );
    reopened.shutdown().await;
    drop(reopened);
    common::drop_projections(&dir.path().join("data"));
    let refolded = open_engine(dir.path(), clock.clone());
    let head = refolded.head();
    assert!(refolded.wait_projected(head, Duration::from_secs(60)).await);
    assert_eq!(
        tally::projection::billing::load_tenant(refolded.store(), TENANT)
            .unwrap()
            .unwrap(),
        before
    );
    refolded.shutdown().await;
}

/// The text of a PDF, with poppler's `pdftotext`.
fn pdf_text(bytes: &[u8], dir: &std::path::Path) -> String {
    let path = dir.join("invoice.pdf");
    std::fs::write(&path, bytes).unwrap();
    let output = std::process::Command::new("pdftotext")
        .args(["-layout"])
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils; scripts/test installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_endpoints_refuse_what_is_wrong() {
    let doc = strict_openapi();
    let h = harness(micros(2025, 5, 10, 12, 0, 0));
    let transition = "/api/web/namespaces/system/billing/plan_transition";
    for (body, needle) in [
        (json!({"new_plan": "gold-plan"}), "new_plan"),
        (json!({"new_plan": "free-plan"}), "new_plan"),
        (
            json!({"new_plan": "individual-plan", "payload": {}}),
            "payload.payment_provider_token",
        ),
        (
            json!({"new_plan": "team-plan", "payload": {"payment_provider_token": "tok"}}),
            "payload.billing_address",
        ),
        (
            json!({"new_plan": "organization-plan", "payload": {"domain": "not a host"}}),
            "payload.domain",
        ),
        (
            json!({"new_plan": "team-plan", "payload": {"payment_provider_token": "t", "billing_address": {"city": "x"}, "subscribe_addon_services": ["f5xc_delegated_access_standard"]}}),
            "subscribe_addon_services",
        ),
        (json!({"bogus": 1}), "bogus"),
    ] {
        let (status, answer) = h.post(transition, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "{body}: {answer}"
        );
    }
    let (status, _) = h
        .call(
            "GET",
            "/no_auth/namespaces/system/billing/plan_transition?id=unknown",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .post("/api/tally/plan_transitions/unknown/approve", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Addons: exactly one, known, allowed by the plan.
    let subscribe = "/api/web/namespaces/system/addon/subscribe";
    assert_eq!(
        h.post(subscribe, json!({})).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.post(
            subscribe,
            json!({"f5xc_waap_advanced": {}, "f5xc_waap_standard": {}})
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.post(subscribe, json!({"f5xc_nothing": {}})).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.post(subscribe, json!({"f5xc_waap_advanced": {}})).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = h
        .post(subscribe, json!({"f5xc_synthetic_monitoring_standard": {}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h
        .post(
            "/api/web/namespaces/system/addon/unsubscribe",
            json!({"f5xc_synthetic_monitoring_standard": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_schema(&doc, "subscriptionUnsubscribeResponse", &body);

    // Payment methods: the token is required and never returned; one primary, one secondary.
    let methods = "/api/web/namespaces/system/billing/payment_methods";
    assert_eq!(
        h.post(methods, json!({"role": "PAYMENT_METHOD_ROLE_PRIMARY"}))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.post(methods, json!({"token": "t", "role": "KING"}))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let (status, first) = h.post(methods, json!({"token": "tok_secret_1", "role": "PAYMENT_METHOD_ROLE_PRIMARY", "contact": {"city": "Paris"}})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_schema(&doc, "payment_methodCreatePaymentMethodResponse", &first);
    assert!(!first.to_string().contains("tok_secret_1"));
    let (_, second) = h
        .post(
            methods,
            json!({"token": "tok_secret_2", "role": "PAYMENT_METHOD_ROLE_SECONDARY"}),
        )
        .await;
    let (first, second) = (
        first["name"].as_str().unwrap().to_owned(),
        second["name"].as_str().unwrap().to_owned(),
    );
    let roles = |h: &Harness| -> BTreeMap<String, String> {
        h.billing()
            .payment_methods
            .values()
            .map(|m| (m.name.clone(), format!("{:?}", m.role)))
            .collect()
    };
    assert_eq!(roles(&h)[&first], "Primary");
    assert_eq!(roles(&h)[&second], "Secondary");
    let base = "/api/web/namespaces/system/billing/payment_method";
    assert_eq!(
        h.post(&format!("{base}/{first}/swap-primary"), json!({}))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let (status, body) = h
        .post(&format!("{base}/{second}/swap-primary"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(roles(&h)[&first], "Secondary");
    assert_eq!(roles(&h)[&second], "Primary");
    assert_eq!(
        h.post(&format!("{base}/{second}/secondary"), json!({}))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let (status, _) = h
        .post(&format!("{base}/{first}/primary"), json!({"name": first}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(roles(&h)[&first], "Primary");
    assert_eq!(roles(&h)[&second], "Normal");
    assert_eq!(
        h.post(&format!("{base}/nope/primary"), json!({})).await.0,
        StatusCode::NOT_FOUND
    );
    // The three role actions share one route: any other action is a 404 that names them,
    // and changes nothing.
    let (status, body) = h.post(&format!("{base}/{first}/tertiary"), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["message"],
        "`tertiary` is not a payment method action (primary, secondary, swap-primary)"
    );
    assert_eq!(roles(&h)[&first], "Primary");
    // On a paid plan, the primary cannot be deleted; a normal one can.
    let (status, body) = h
        .post(transition, json!({"new_plan": "individual-plan"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h
        .post(
            &format!(
                "/api/tally/plan_transitions/{}/approve",
                body["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = h
        .call("DELETE", &format!("{methods}/{first}"), Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = h
        .call("DELETE", &format!("{methods}/{second}"), Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call("DELETE", &format!("{methods}/{second}"), Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Rejecting a waiting transition fails it with the reason; deciding twice conflicts.
    let (status, body) = h.post(transition, json!({"new_plan": "organization-plan", "payload": {"domain": "example.com", "billing_address": {"city": "x"}}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, body) = h
        .post(
            &format!("/api/tally/plan_transitions/{id}/reject"),
            json!({"reason": "no contract"}),
        )
        .await;
    assert_eq!(
        (status, &body["state"]),
        (StatusCode::OK, &json!("STATE_FAILED")),
        "{body}"
    );
    assert_eq!(h.billing().transitions[&id].reason, "no contract");
    assert_eq!(
        h.post(
            &format!("/api/tally/plan_transitions/{id}/approve"),
            json!({})
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    let (_, state) = h
        .call(
            "GET",
            &format!("/no_auth/namespaces/system/billing/plan_transition?id={id}"),
            None,
            None,
        )
        .await;
    assert_eq!(state, json!({"state": "STATE_FAILED"}));
    assert_schema(&doc, "plan_transitionGetPlanTransitionRsp", &state);
    // Coupons are validated.
    let coupons = "/api/tally/tenants/default/coupons";
    assert_eq!(
        h.post(
            coupons,
            json!({"discount_type": "DISCOUNT_TYPE_PERCENTAGE", "discount_amount": 20_000})
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.post(
            coupons,
            json!({"discount_type": "FREE", "discount_amount": 1})
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    // No token: 401 everywhere but the no-auth transition state.
    for (method, path) in [
        ("GET", "/api/web/namespaces/system/usage_plans/current"),
        ("POST", transition),
        (
            "GET",
            "/api/web/namespaces/system/usage/invoices/custom_list",
        ),
    ] {
        assert_eq!(
            h.call(method, path, None, Some(json!({}))).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    h.engine.shutdown().await;
}

/// One billing period, defined by the tenant's plan periods: after a plan change mid-month,
/// `usage_details {}` and `current_usage {}` count the same usage (the open period's), and
/// `monthly_usage` has one item per period, each priced at its own plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_details_and_current_usage_default_to_the_same_open_period_after_a_plan_change() {
    let h = harness(micros(2026, 3, 1, 0, 0, 0));
    let requests_at = |id: &'static str, at: i64, quantity: i64| {
        let h = &h;
        async move {
            h.at(at + 60_000_000).await;
            h.requests(id, at, quantity).await;
        }
    };
    requests_at("before-1", micros(2026, 3, 3, 9, 0, 0), 20_000_000).await;
    requests_at("before-2", micros(2026, 3, 10, 9, 0, 0), 1_000).await;
    let change = micros(2026, 3, 15, 12, 0, 30);
    h.at(change).await;
    let (status, body) = h.post(TRANSITION, to_team_plan()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    requests_at("after-1", micros(2026, 3, 16, 9, 0, 0), 12).await;
    requests_at("after-2", micros(2026, 3, 20, 9, 0, 0), 9).await;
    h.at(micros(2026, 3, 21, 0, 0, 0)).await;

    let requests_in = |items: &Value, label_of: &dyn Fn(&Value) -> bool| -> f64 {
        items
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| label_of(item))
            .map(|item| item["quantity"].as_f64().unwrap())
            .sum()
    };
    let (status, details) = h
        .post("/api/web/namespaces/system/usage_details", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{details}");
    let counted_by_details = requests_in(&details["usage_items"], &|item| {
        item["metric_label"] == "http_lb_requests"
    });
    let (status, current) = h
        .post("/api/web/namespaces/system/current_usage", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{current}");
    let counted_by_current = requests_in(&current["usage_items"], &|item| {
        item["metric_labels"]
            .as_array()
            .is_some_and(|labels| labels.contains(&json!("http_lb_requests")))
    });
    assert_eq!(
        (counted_by_details, counted_by_current),
        (21.0, 21.0),
        "{details}\n{current}"
    );
    // usage_details reads whole hours: the open period from the hour it began in.
    assert_eq!(
        details["usage_items"][0]["start_timestamp"],
        "2026-03-15T12:00:00Z"
    );
    let start = tally::time::format_rfc3339(change);

    // Two periods in March: the free one before the change, the team one after, each priced
    // at its own plan (the free plan's usage costs nothing).
    let (status, monthly) = h
        .post("/api/web/namespaces/system/monthly_usage", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{monthly}");
    let items = monthly["monthly_usage_items"].as_array().unwrap();
    let bounds: Vec<(&str, &str)> = items
        .iter()
        .map(|i| {
            (
                i["start_timestamp"].as_str().unwrap(),
                i["end_timestamp"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        bounds,
        [
            ("2026-03-01T00:00:00Z", start.as_str()),
            (start.as_str(), "2026-04-01T00:00:00Z")
        ],
        "{monthly}"
    );
    assert_eq!(items[0]["amount"], "0", "{monthly}");
    // The team period as its current cost says: the same plan, the same range.
    let (_, team) = h
        .post(
            "/api/web/namespaces/system/current_usage",
            json!({"from": start, "to": "2026-04-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(items[1]["amount"], team["total_cost"], "{monthly}\n{team}");
    assert_ne!(items[1]["amount"], "0");
}

/// A command is decided against its own tenant's facts, not against a caught-up projector:
/// with 200,000 events of another tenant in the log and the projector held still before
/// them, two other tenants' quota and billing commands are answered at once, each decided
/// against what that tenant's earlier unfolded commands left (a replace finds the object just
/// created, a second create of it is a conflict, a verdict finds the transition just
/// requested), and each tenant reads its own changes once the projector gets there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Holding the projector's gate across the requests is the point: it keeps the backlog unfolded.
#[allow(clippy::await_holding_lock)]
async fn commands_answer_while_the_projector_folds_another_tenants_backlog() {
    let now = micros(2026, 3, 10, 12, 0, 0);
    let h = harness(now);
    // A second tenant with its own admin token, made before the backlog.
    let (status, acme) = h
        .post(
            "/api/tally/tokens",
            json!({"tenant": "acme", "role": "admin", "namespaces": ["*"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{acme}");
    let acme_token = acme["token"].as_str().unwrap().to_owned();
    let (status, _) = h
        .call("GET", "/api/tally/audit", Some(&acme_token), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // The projector stops at its gate; 200,000 events of `busy` go into the log behind it.
    let gate = h.engine.projector_gate();
    let held = gate.lock().unwrap();
    let backlog = 200_000u64;
    for chunk in 0..(backlog / 5_000) {
        let candidates = (0..5_000)
            .map(|i| tally::log::append::Candidate::Event {
                event: tally::event::UsageEvent {
                    tenant: "busy".into(),
                    id: format!("busy-{chunk}-{i}"),
                    namespace: "shop".into(),
                    metric_label: "http_lb_requests".into(),
                    quantity: tally::units::Micros(1_000_000),
                    timestamp: now - 60_000_000,
                    object_name: "lb".into(),
                    deployment: String::new(),
                    container: String::new(),
                    labels: BTreeMap::new(),
                },
                source: tally::event::EventSource::Http { received_at: now },
            })
            .collect();
        h.engine.appender().append(candidates).await.unwrap();
    }
    let projected_before = h.engine.projected();
    assert!(h.engine.head() >= projected_before + backlog);

    // Two tenants' commands, decided and durable while all of it waits to be folded.
    let quota_command = |method: &'static str, path: &'static str, body: Value| {
        let h = &h;
        async move {
            h.request(method, path, Some(TOKEN), Some(body), false)
                .await
        }
    };
    let acme_transition = |body: Value| {
        let (h, token) = (&h, acme_token.clone());
        async move {
            h.request(
                "POST",
                "/api/web/namespaces/system/billing/plan_transition",
                Some(&token),
                Some(body),
                false,
            )
            .await
        }
    };
    let tight = |maximum: i64| {
        json!({"metadata": {"name": "tight", "namespace": "system"},
               "spec": {"object_limits": {"http_loadbalancer": {"maximum": maximum}}}})
    };
    let (status, created) =
        quota_command("POST", "/api/web/namespaces/system/quotas", tight(3)).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (status, transition) = acme_transition(to_team_plan()).await;
    assert_eq!(status, StatusCode::OK, "{transition}");

    // Second commands of the same tenants, decided against their first ones, still unfolded.
    let (status, replaced) =
        quota_command("PUT", "/api/web/namespaces/system/quotas/tight", tight(4)).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    let (status, again) =
        quota_command("POST", "/api/web/namespaces/system/quotas", tight(5)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let spare = json!({"metadata": {"name": "spare", "namespace": "system"}, "spec": {}});
    let (status, _) = quota_command("POST", "/api/web/namespaces/system/quotas", spare).await;
    assert_eq!(status, StatusCode::OK);
    let delete_spare = || {
        quota_command(
            "DELETE",
            "/api/web/namespaces/system/quotas/spare",
            json!({}),
        )
    };
    assert_eq!(delete_spare().await.0, StatusCode::OK);
    let (status, gone) = delete_spare().await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");

    // acme is on team-plan already, as far as its commands can tell.
    let (status, twice) = acme_transition(to_team_plan()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{twice}");
    assert_eq!(
        twice["message"], "new_plan: the tenant is on `team-plan` already",
        "{twice}"
    );
    // A move that waits for approval, and the operator's verdict on it, found before the fold.
    let (status, waiting) = acme_transition(json!({"new_plan": "individual-plan"})).await;
    assert_eq!(status, StatusCode::OK, "{waiting}");
    assert_eq!(waiting["requires_manual_approval"], true, "{waiting}");
    let waiting_id = waiting["id"].as_str().unwrap().to_owned();
    let (status, rejected) = h
        .request(
            "POST",
            &format!("/api/tally/plan_transitions/{waiting_id}/reject"),
            Some(TOKEN),
            Some(json!({"reason": "not now"})),
            false,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rejected}");
    assert_eq!(rejected["state"], "STATE_FAILED", "{rejected}");
    assert_eq!(
        h.engine.projected(),
        projected_before,
        "answered without the projector moving"
    );

    // Once it folds, each tenant reads its own change, and the backlog is counted once.
    drop(held);
    assert!(
        h.engine
            .wait_projected(h.engine.head(), Duration::from_secs(300))
            .await
    );
    let (_, quota) = h.get("/api/web/namespaces/system/quotas/tight").await;
    assert_eq!(
        quota["spec"]["object_limits"]["http_loadbalancer"]["maximum"], 4,
        "{quota}"
    );
    let (status, _) = h.get("/api/web/namespaces/system/quotas/spare").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, state) = h
        .call(
            "GET",
            &format!("/no_auth/namespaces/system/billing/plan_transition?id={waiting_id}"),
            None,
            None,
        )
        .await;
    assert_eq!(state["state"], "STATE_FAILED", "{state}");
    let (_, plan) = h
        .call(
            "GET",
            "/api/web/namespaces/system/usage_plans/current",
            Some(&acme_token),
            None,
        )
        .await;
    assert_eq!(plan["plans"][0]["name"], "team-plan", "{plan}");
    let store = h.engine.store();
    let busy: i128 = tally::projection::read::hourly_rows(
        store,
        "busy",
        tally::log::keys::Scope::Tenant,
        0,
        u32::MAX,
    )
    .unwrap()
    .iter()
    .map(|(_, aggregate)| aggregate.sum)
    .sum();
    assert_eq!(busy, i128::from(backlog) * 1_000_000);
}
