//! Quotas through the real binary: every quota endpoint in the spec's shapes (validated against
//! the OpenAPI schemas) with its error cases, gauge events moving `quota/usage` and the check,
//! alerts once per crossing across a restart and a rebuild of the projections from the log.

mod common;

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use common::Server;
use common::openapi::{assert_schema, strict_openapi};
use serde_json::{Value, json};

const QUOTAS: &str = "/api/web/namespaces/system/quotas";

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn gauge(server: &Server, id: &str, namespace: &str, metric: &str, quantity: &str) {
    let (status, body) = server.post(
        "/api/tally/events",
        &json!([{"id": id, "namespace": namespace, "metric_label": metric,
                 "quantity": quantity, "timestamp": now_text()}]),
    );
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
}

/// The tenant's alerts, oldest first (the list answers newest first).
fn alerts(server: &Server) -> Vec<(String, String)> {
    let (status, body) = server.call("GET", "/api/tally/namespaces/system/alerts", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["next_page_token"], "", "one page: {body}");
    body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["direction"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn usage(server: &Server, namespace: &str) -> Value {
    let (status, body) = server.call(
        "GET",
        &format!("/api/web/namespaces/{namespace}/quota/usage"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn check(server: &Server, key: &str, amount: Value) -> (u16, Value) {
    server.call(
        "POST",
        "/api/tally/namespaces/shop/quota/check",
        Some(&json!({"key": key, "amount": amount})),
    )
}

#[test]
fn quota_objects_levels_checks_and_alerts() {
    let doc = strict_openapi();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);

    // The free plan's defaults, before any quota object.
    let (status, limits) = server.call("GET", "/api/web/namespaces/system/quota/limits", None);
    assert_eq!(status, 200, "{limits}");
    assert_schema(&doc, "quotaGetQuotaLimitsResponse", &limits);
    // F5's value types: `QuotaLimitsItemType` with the catalog's names, `QuotaLimits` in the
    // deprecated `quota_usage`, `RateLimitType` in the deprecated `api_limits`.
    assert_eq!(
        limits["objects"]["http_loadbalancer"],
        json!({"limit": {"maximum": 5}, "display_name": "HTTP Load Balancers",
               "description": "HTTP load balancer objects configured in the tenant."})
    );
    assert_eq!(limits["resources"]["vcpu"]["limit"]["maximum"], 8.0);
    assert_eq!(
        limits["resources"]["vcpu"]["display_name"],
        "App Stack vCPUs"
    );
    assert_eq!(limits["quota_usage"], limits["objects"]);
    assert_eq!(limits["float_quota_usage"], limits["resources"]);
    let api_key = "ves.io.schema.usage.ListUsageDetails";
    assert_eq!(
        limits["apis"][api_key]["api_limit"],
        json!({"unit": "MINUTE", "rate": 60, "burst": 10})
    );
    assert_eq!(
        limits["apis"][api_key]["display_name"],
        "List usage details"
    );
    assert_eq!(
        limits["api_limits"][api_key],
        limits["apis"][api_key]["api_limit"]
    );

    // Create, and its error cases.
    let tight = json!({"metadata": {"name": "tight", "namespace": "system", "labels": {"team": "web"},
                                    "description": "tighter than the plan"},
                       "spec": {"object_limits": {"http_loadbalancer": {"maximum": 4}},
                                "resource_limits": {"vcpu": {"maximum": 2.5}}}});
    let (status, created) = server.call("POST", QUOTAS, Some(&tight));
    assert_eq!(status, 200, "{created}");
    assert_schema(&doc, "quotaCreateResponse", &created);
    assert_eq!(created["metadata"]["name"], "tight");
    assert_eq!(created["spec"]["resource_limits"]["vcpu"]["maximum"], 2.5);
    assert_eq!(created["system_metadata"]["tenant"], "default");
    assert_eq!(
        created["system_metadata"]["uid"].as_str().unwrap().len(),
        36
    );
    let (status, body) = server.call("POST", QUOTAS, Some(&tight));
    assert_eq!((status, body["code"].clone()), (409, json!(6)), "{body}");
    let (status, body) = server.call(
        "POST",
        "/api/web/namespaces/shop/quotas",
        Some(&json!({"metadata": {"name": "x"}})),
    );
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("metadata.namespace"),
        "{body}"
    );
    for (bad, field) in [
        (json!({"metadata": {"name": "Not-DNS"}}), "metadata.name"),
        (
            json!({"metadata": {"name": "x"}, "spec": {"object_limits": {"lb": {"maximum": "many"}}}}),
            "spec.object_limits.lb.maximum",
        ),
        (
            json!({"metadata": {"name": "x"}, "spec": {"bogus": {}}}),
            "spec",
        ),
        (json!({"spec": {}}), "metadata"),
    ] {
        let (status, body) = server.call("POST", QUOTAS, Some(&bad));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{bad}: {body}"
        );
    }

    // Get in every format, list with filters.
    let (status, got) = server.call("GET", &format!("{QUOTAS}/tight"), None);
    assert_eq!(status, 200, "{got}");
    assert_schema(&doc, "quotaGetResponse", &got);
    assert_eq!(got["spec"], created["spec"]);
    for format in [
        "GET_RSP_FORMAT_FOR_CREATE",
        "GET_RSP_FORMAT_FOR_REPLACE",
        "GET_RSP_FORMAT_STATUS",
        "GET_RSP_FORMAT_READ",
    ] {
        let (status, got) = server.call(
            "GET",
            &format!("{QUOTAS}/tight?response_format={format}"),
            None,
        );
        assert_eq!(status, 200, "{got}");
        assert_schema(&doc, "quotaGetResponse", &got);
    }
    let (_, form) = server.call(
        "GET",
        &format!("{QUOTAS}/tight?response_format=GET_RSP_FORMAT_FOR_CREATE"),
        None,
    );
    assert_eq!(form["create_form"]["spec"], created["spec"]);
    let (status, _) = server.call("GET", &format!("{QUOTAS}/tight?response_format=NOPE"), None);
    assert_eq!(status, 400);
    let (status, _) = server.call("GET", &format!("{QUOTAS}/missing"), None);
    assert_eq!(status, 404);
    let (status, listed) = server.call(
        "GET",
        &format!("{QUOTAS}?label_filter=team%3Dweb&report_fields="),
        None,
    );
    assert_eq!(status, 200, "{listed}");
    assert_schema(&doc, "quotaListResponse", &listed);
    assert_eq!(listed["items"][0]["name"], "tight");
    assert_eq!(listed["items"][0]["get_spec"], created["spec"]);
    let (_, listed) = server.call("GET", &format!("{QUOTAS}?label_filter=team%3Dother"), None);
    assert_eq!(listed["items"], json!([]));

    // Replace, and its error cases.
    let (status, _) = server.call(
        "PUT",
        &format!("{QUOTAS}/missing"),
        Some(&json!({"metadata": {"name": "missing"}})),
    );
    assert_eq!(status, 404);
    let mut replaced = tight.clone();
    replaced["metadata"]["labels"] = json!({"team": "platform"});
    let (status, body) = server.call("PUT", &format!("{QUOTAS}/tight"), Some(&replaced));
    assert_eq!(status, 200, "{body}");
    assert_schema(&doc, "quotaReplaceResponse", &body);
    let (_, got) = server.call("GET", &format!("{QUOTAS}/tight"), None);
    assert_eq!(got["metadata"]["labels"], json!({"team": "platform"}));
    assert_eq!(
        got["system_metadata"]["uid"],
        created["system_metadata"]["uid"]
    );
    assert_eq!(
        got["system_metadata"]["creation_timestamp"],
        created["system_metadata"]["creation_timestamp"]
    );

    // Gauges move the levels: 2 + 1 load balancers of 4 (75 %), 2.5 vCPU of 2.5 (100 %).
    gauge(&server, "lb-shop-1", "shop", "http_loadbalancers", "2");
    gauge(&server, "lb-blog-1", "blog", "http_loadbalancers", "1");
    gauge(&server, "cpu-shop-1", "shop", "appstack_vcpus", "2.5");
    let system = usage(&server, "system");
    assert_schema(&doc, "quotaGetResponseType", &system);
    assert_eq!(
        system["objects"]["http_loadbalancer"],
        json!({"limit": {"maximum": 4}, "usage": {"current": 3.0},
               "display_name": "HTTP Load Balancers",
               "description": "HTTP load balancer objects configured in the tenant."})
    );
    assert_eq!(
        system["resources"]["vcpu"],
        json!({"limit": {"maximum": 2.5}, "usage": {"current": 2.5},
               "display_name": "App Stack vCPUs",
               "description": "vCPUs allocated to App Stack workloads."})
    );
    // The deprecated `quota_usage` holds F5 `QuotaUsage`: int32 limit and usage.
    assert_eq!(
        system["quota_usage"]["http_loadbalancer"],
        json!({"limit": {"maximum": 4}, "usage": {"current": 3},
               "display_name": "HTTP Load Balancers",
               "description": "HTTP load balancer objects configured in the tenant."})
    );
    assert_eq!(system["float_quota_usage"], system["resources"]);
    assert_eq!(
        usage(&server, "shop")["objects"]["http_loadbalancer"]["usage"]["current"],
        2.0
    );
    assert_eq!(
        usage(&server, "blog")["objects"]["http_loadbalancer"]["usage"]["current"],
        1.0
    );

    // The check answers from the projection, exactly.
    let (status, answer) = check(&server, "http_loadbalancer", json!(1));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"key": "http_loadbalancer", "allowed": true, "limit": 4.0, "current": 3.0, "remaining": 1.0})
    );
    let (_, answer) = check(&server, "http_loadbalancer", json!(2));
    assert_eq!(answer["allowed"], false);
    let (_, answer) = check(&server, "resource:vcpu", json!("0.000001"));
    assert_eq!(
        (answer["allowed"].clone(), answer["remaining"].clone()),
        (json!(false), json!(0.0))
    );
    let (status, _) = check(&server, "no_such_thing", json!(1));
    assert_eq!(status, 404);
    let (status, _) = check(&server, "vcpu", json!("lots"));
    assert_eq!(status, 400);
    // A JSON number is read as written, never rounded: this one is not exactly representable.
    let (status, body) = server
        .post_raw(
            "/api/tally/namespaces/shop/quota/check",
            Some(common::OPERATOR_TOKEN),
            br#"{"key": "vcpu", "amount": 1.00000000000000000000001}"#.to_vec(),
        )
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("amount"),
        "{body}"
    );
    let (_, answer) = check(&server, "vcpu", json!(0.5));
    assert_eq!(answer["allowed"], false, "{answer}");

    // vCPU reached 100 %: three alerts; a fourth load balancer reaches 100 % too.
    gauge(&server, "lb-blog-2", "blog", "http_loadbalancers", "2");
    let (_, answer) = check(&server, "http_loadbalancer", json!(1));
    assert_eq!(
        (answer["allowed"].clone(), answer["current"].clone()),
        (json!(false), json!(4.0))
    );
    server.wait_caught_up();
    let raised = alerts(&server);
    let mut kinds: Vec<&str> = raised
        .iter()
        .map(|(id, _)| id.split(':').take(3).last().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["100", "100", "80", "80", "90", "90"], "{raised:?}");
    assert!(raised.iter().all(|(_, d)| d == "RAISED"));

    // A restart neither loses nor repeats an alert.
    let before_restart = server.readiness()["log_entries"].clone();
    server.restart();
    server.wait_caught_up();
    assert_eq!(alerts(&server), raised);
    assert_eq!(server.readiness()["log_entries"], before_restart);

    // Rebuilding every projection from the log gives the same state and the same alerts,
    // and appends nothing.
    let usage_before = usage(&server, "system");
    server.stop();
    common::drop_projections(&data);
    server.start_again();
    server.wait_caught_up();
    assert_eq!(alerts(&server), raised);
    assert_eq!(usage(&server, "system"), usage_before);
    assert_eq!(server.readiness()["log_entries"], before_restart);

    // Deleting the object returns to the plan's limits (5 LBs: 80 %; 8 vCPU: 31 %).
    let (status, body) = server.call(
        "DELETE",
        &format!("{QUOTAS}/tight"),
        Some(&json!({"name": "tight", "namespace": "system"})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.call("DELETE", &format!("{QUOTAS}/tight"), None);
    assert_eq!(status, 404);
    let (status, _) = server.call("GET", &format!("{QUOTAS}/tight"), None);
    assert_eq!(status, 404);
    server.wait_caught_up();
    let after = alerts(&server);
    let cleared: Vec<&String> = after[raised.len()..].iter().map(|(id, _)| id).collect();
    assert_eq!(cleared.len(), 5, "{after:?}");
    assert!(after[raised.len()..].iter().all(|(_, d)| d == "CLEARED"));
    assert_eq!(
        usage(&server, "system")["objects"]["http_loadbalancer"]["limit"]["maximum"],
        5
    );
    server.stop();
}

/// One request the webhook receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Delivery {
    answered: u16,
    headers: std::collections::BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A tiny HTTP receiver that fails the first `failures` requests with 500.
fn webhook_receiver(failures: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Delivery>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = std::collections::BTreeMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap_or(0);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.trim_end().split_once(':') {
                    headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
                }
            }
            let length: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap_or(());
            let mut log = log.lock().unwrap();
            let answered = if log.len() < failures { 500 } else { 200 };
            log.push(Delivery {
                answered,
                headers,
                body,
            });
            drop(log);
            let reason = if answered == 200 {
                "OK"
            } else {
                "Internal Server Error"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {answered} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, seen)
}

#[test]
fn the_webhook_gets_each_alert_once_signed_even_after_failures_and_restarts() {
    let (url, seen) = webhook_receiver(2);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--alert-webhook",
        url.as_str(),
        "--alert-webhook-secret",
        "s3cret",
    ];
    let mut server = Server::start_args(&data, &args);
    // The free plan allows 5 load balancers: 4 raises 80 %, 5 raises 90 % and 100 %.
    gauge(&server, "lb-1", "shop", "http_loadbalancers", "4");
    gauge(&server, "lb-2", "shop", "http_loadbalancers", "5");
    let accepted = |seen: &std::sync::Mutex<Vec<Delivery>>| -> Vec<Delivery> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|d| d.answered == 200)
            .cloned()
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while accepted(&seen).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Restart: nothing is delivered again, and a new crossing still is.
    server.restart();
    gauge(&server, "lb-3", "shop", "http_loadbalancers", "1");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while accepted(&seen).len() < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A rebuild while serving, then a refold of every projection at a start: each alert is
    // filed at the same position again, so none is delivered twice.
    let (status, body) = server.post("/api/tally/admin/rebuild", &json!({}));
    assert_eq!(status, 200, "{body}");
    server.stop();
    common::drop_projections(&data);
    server.start_again();
    server.wait_caught_up();
    std::thread::sleep(Duration::from_millis(1_500));
    server.stop();

    let all = seen.lock().unwrap().clone();
    assert_eq!(all.len(), 8, "two failures, then six deliveries: {all:?}");
    assert!(all[..2].iter().all(|d| d.answered == 500));
    let delivered = accepted(&seen);
    let ids: Vec<&str> = delivered
        .iter()
        .map(|d| d.headers["x-tally-alert-id"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), 6, "{ids:?}");
    // The first failed attempt was the first alert, retried until delivered: order is kept.
    assert_eq!(all[0].headers["x-tally-alert-id"], ids[0]);
    let directions: Vec<(String, String)> = delivered
        .iter()
        .map(|d| {
            let body: Value = serde_json::from_slice(&d.body).unwrap();
            (
                body["threshold_percent"].to_string(),
                body["direction"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        directions,
        [
            ("80", "RAISED"),
            ("90", "RAISED"),
            ("100", "RAISED"),
            ("100", "CLEARED"),
            ("90", "CLEARED"),
            ("80", "CLEARED")
        ]
        .map(|(t, d)| (t.to_owned(), d.to_owned()))
    );
    // Verified as a receiver would: HMAC-SHA256 over "{timestamp}.{body}".
    use hmac::Mac;
    for delivery in &delivered {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(delivery.headers["x-tally-timestamp"].as_bytes());
        mac.update(b".");
        mac.update(&delivery.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(delivery.headers["x-tally-signature"], expected);
    }
}

#[test]
fn api_limits_show_the_observed_request_rate_of_their_bound_meter() {
    let dir = tempfile::tempdir().unwrap();
    let catalog_path = common::catalog_with(dir.path(), "catalog.json", |catalog| {
        catalog["meters"].as_array_mut().unwrap().push(json!({
            "metric_label": "api_list_usage_details", "usage_type": "ListUsageDetails calls",
            "unit_name": "requests", "unit_name_billable": "requests", "division_factor": 1,
            "aggregation": "SUM", "service": "f5xc_waap_standard",
            "quota": {"kind": "api", "name": "ves.io.schema.usage.ListUsageDetails"}}));
    });
    let mut server = Server::start(&dir.path().join("data"), Some(&catalog_path));
    // The rate is over the current UTC hour: stay clear of its end.
    let seconds_into_hour = || (Utc::now().timestamp() % 3_600).max(1) as f64;
    if seconds_into_hour() > 3_590.0 {
        std::thread::sleep(Duration::from_secs(12));
    }
    // 90 calls in this hour, in two namespaces.
    gauge(&server, "calls-1", "shop", "api_list_usage_details", "60");
    gauge(&server, "calls-2", "blog", "api_list_usage_details", "30");
    let before = seconds_into_hour();
    let system = usage(&server, "system");
    let after = seconds_into_hour();
    assert_schema(&strict_openapi(), "quotaGetResponseType", &system);
    let api = &system["apis"]["ves.io.schema.usage.ListUsageDetails"];
    assert_eq!(
        api["api_limit"],
        json!({"unit": "MINUTE", "rate": 60, "burst": 10})
    );
    assert!(api.get("limit").is_none(), "{api}");
    // The free plan limits it per minute: 90 calls over the hour so far, per minute.
    let rate = api["usage"]["current"].as_f64().unwrap();
    let (low, high) = (
        90.0 * 60.0 / (after + 1.0),
        90.0 * 60.0 / (before - 1.0).max(1.0),
    );
    assert!(low <= rate && rate <= high, "{rate} not in [{low}, {high}]");
    assert_eq!(
        system["api_limits"]["ves.io.schema.usage.ListUsageDetails"],
        api["api_limit"]
    );
    let shop =
        usage(&server, "shop")["apis"]["ves.io.schema.usage.ListUsageDetails"]["usage"]["current"]
            .as_f64()
            .unwrap();
    assert!(shop < rate && shop > 0.0, "{shop} vs {rate}");
    server.stop();
}
