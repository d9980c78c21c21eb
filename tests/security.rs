//! Security through the real binary: token management, the authorization matrix (no, wrong,
//! revoked, expired, other tenant's, out-of-scope and read-only tokens) with no state change,
//! per-token rate limits, the audit trail, and planted secrets found nowhere.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{OPERATOR_TOKEN, Server};
use serde_json::{Value, json};

/// Calls as `token` (none: no header); the status and the body text.
fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    let client = reqwest::blocking::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.header("Authorization", format!("APIToken {token}"));
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.text().unwrap())
}

fn issue(server: &Server, as_token: &str, body: Value) -> (String, String) {
    let (status, text) = call(
        server,
        "POST",
        "/api/tally/tokens",
        Some(as_token),
        Some(&body),
    );
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    (
        answer["id"].as_str().unwrap().to_owned(),
        answer["token"].as_str().unwrap().to_owned(),
    )
}

/// Everything a client or an operator can observe that must not change.
fn state(server: &Server) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["inspect", "--json", "--data-dir"])
        .arg(&server.data_dir)
        .arg("checksums")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ready = server.readiness();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        ready["log_entries"]
    )
}

const PAYMENT_SECRET: &str = "tok_PLANTED_PAYMENT_SECRET_9731";

#[test]
fn every_endpoint_refuses_what_a_token_may_not_do_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    // The matrix fails to authenticate far more often than a client may in a minute
    // (tests/hardening_auth.rs covers that limit).
    let mut server = Server::start_args(&dir.path().join("data"), &["--auth-failure-limit", "0"]);
    let now = Utc::now().timestamp_micros();
    let rfc = |micros: i64| tally::time::format_rfc3339(micros);
    // Some state of tenant `default`: usage, a quota object, a payment method.
    let (status, _) = server.post(
        "/api/tally/events",
        &json!([{"id": "e1", "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 5, "timestamp": rfc(now)}]),
    );
    assert_eq!(status, 200);
    let (status, _) = server.call(
        "POST",
        "/api/web/namespaces/system/quotas",
        Some(&json!({"metadata": {"name": "lbs"}})),
    );
    assert_eq!(status, 200);
    let (status, pm) = server.call(
        "POST",
        "/api/web/namespaces/system/billing/payment_methods",
        Some(&json!({"token": PAYMENT_SECRET, "role": "PAYMENT_METHOD_ROLE_PRIMARY"})),
    );
    assert_eq!(status, 200, "{pm}");
    let pm = pm["name"].as_str().unwrap().to_owned();

    // Tokens: issued by the operator and by a tenant admin.
    let (_, reader) = issue(
        &server,
        OPERATOR_TOKEN,
        json!({"tenant": "default", "role": "read", "namespaces": ["*"]}),
    );
    let (_, shop_admin) = issue(
        &server,
        OPERATOR_TOKEN,
        json!({"tenant": "default", "role": "admin", "namespaces": ["shop"]}),
    );
    let (_, globex) = issue(
        &server,
        OPERATOR_TOKEN,
        json!({"tenant": "globex", "role": "admin", "namespaces": ["*"]}),
    );
    let (revoked_id, revoked) = issue(
        &server,
        OPERATOR_TOKEN,
        json!({"tenant": "default", "role": "admin", "namespaces": ["*"]}),
    );
    let (_, expiring) = issue(
        &server,
        OPERATOR_TOKEN,
        json!({"tenant": "default", "role": "admin", "namespaces": ["*"], "expires_at": rfc(now + 2_000_000)}),
    );
    // A tenant admin may not reach past its own scope.
    let (status, _) = call(
        &server,
        "POST",
        "/api/tally/tokens",
        Some(&globex),
        Some(&json!({"tenant": "default", "role": "read", "namespaces": ["*"]})),
    );
    assert_eq!(status, 403);
    let (status, _) = call(
        &server,
        "POST",
        "/api/tally/tokens",
        Some(&shop_admin),
        Some(&json!({"role": "read", "namespaces": ["*"]})),
    );
    assert_eq!(status, 403);
    let (status, _) = call(
        &server,
        "POST",
        "/api/tally/tokens",
        Some(&reader),
        Some(&json!({"role": "read", "namespaces": ["*"]})),
    );
    assert_eq!(status, 403);
    // Revocation takes effect at once.
    assert_eq!(
        call(
            &server,
            "GET",
            "/api/web/namespaces/system/quotas",
            Some(&revoked),
            None
        )
        .0,
        200
    );
    let (status, text) = call(
        &server,
        "DELETE",
        &format!("/api/tally/tokens/{revoked_id}"),
        Some(OPERATOR_TOKEN),
        None,
    );
    assert_eq!(status, 200, "{text}");
    // Listing shows metadata, never secrets.
    let (_, listed) = call(
        &server,
        "GET",
        "/api/tally/tokens",
        Some(OPERATOR_TOKEN),
        None,
    );
    assert!(
        listed.contains("globex") && !listed.contains(&globex) && !listed.contains("hash"),
        "{listed}"
    );
    let (_, own) = call(&server, "GET", "/api/tally/tokens", Some(&globex), None);
    assert!(
        !own.contains("\"default\""),
        "a tenant admin lists its own tokens: {own}"
    );
    std::thread::sleep(Duration::from_millis(2_200));
    server.wait_caught_up();

    let event = json!([{"id": "x1", "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 1, "timestamp": rfc(now)}]);
    let quota = json!({"metadata": {"name": "evil"}});
    // (method, path, body, needs): `read` endpoints any valid in-scope token may call; `write`
    // and `admin` ones need that role; `operator` ones the operator token.
    let endpoints: Vec<(&str, String, Option<Value>, &str)> = vec![
        (
            "POST",
            "/api/web/namespaces/system/usage_details".into(),
            Some(json!({})),
            "read",
        ),
        (
            "POST",
            "/api/web/namespaces/system/current_usage".into(),
            Some(json!({})),
            "read",
        ),
        (
            "POST",
            "/api/web/namespaces/system/monthly_usage".into(),
            Some(json!({})),
            "read",
        ),
        (
            "POST",
            "/api/data/namespaces/system/billing/usage_summary".into(),
            Some(json!({})),
            "read",
        ),
        (
            "GET",
            "/api/web/namespaces/system/quota/usage".into(),
            None,
            "read",
        ),
        (
            "GET",
            "/api/web/namespaces/system/quota/limits".into(),
            None,
            "read",
        ),
        (
            "GET",
            "/api/web/namespaces/system/quotas".into(),
            None,
            "read",
        ),
        (
            "GET",
            "/api/web/namespaces/system/quotas/lbs".into(),
            None,
            "read",
        ),
        (
            "GET",
            "/api/tally/namespaces/system/alerts".into(),
            None,
            "read",
        ),
        (
            "GET",
            "/api/web/namespaces/system/usage_plans/current".into(),
            None,
            "read",
        ),
        (
            "GET",
            "/api/web/namespaces/system/subscriptions/custom_list".into(),
            None,
            "read",
        ),
        (
            "GET",
            "/api/web/namespaces/system/usage/invoices/custom_list".into(),
            None,
            "read",
        ),
        (
            "POST",
            "/api/tally/events".into(),
            Some(event.clone()),
            "write",
        ),
        (
            "POST",
            "/api/web/namespaces/system/quotas".into(),
            Some(quota.clone()),
            "admin",
        ),
        (
            "PUT",
            "/api/web/namespaces/system/quotas/lbs".into(),
            Some(json!({"metadata": {"name": "lbs"}})),
            "admin",
        ),
        (
            "DELETE",
            "/api/web/namespaces/system/quotas/lbs".into(),
            None,
            "admin",
        ),
        (
            "POST",
            "/api/web/namespaces/system/billing/plan_transition".into(),
            Some(json!({"new_plan": "team-plan"})),
            "admin",
        ),
        (
            "POST",
            "/api/web/namespaces/system/addon/subscribe".into(),
            Some(json!({"f5xc_synthetic_monitoring_standard": {}})),
            "admin",
        ),
        (
            "POST",
            "/api/web/namespaces/system/billing/payment_methods".into(),
            Some(json!({"token": "t"})),
            "admin",
        ),
        (
            "DELETE",
            format!("/api/web/namespaces/system/billing/payment_methods/{pm}"),
            None,
            "admin",
        ),
        (
            "POST",
            format!("/api/web/namespaces/system/billing/payment_method/{pm}/secondary"),
            Some(json!({})),
            "admin",
        ),
        (
            "POST",
            "/api/tally/tokens".into(),
            Some(json!({"role": "read", "namespaces": ["*"]})),
            "admin",
        ),
        ("GET", "/api/tally/audit".into(), None, "admin"),
        (
            "POST",
            "/api/tally/tenants/default/coupons".into(),
            Some(json!({"discount_type": "DISCOUNT_TYPE_PERCENTAGE", "discount_amount": 100})),
            "operator",
        ),
        (
            "POST",
            "/api/tally/admin/rebuild".into(),
            Some(json!({"dry_run": true})),
            "operator",
        ),
        (
            "POST",
            "/api/tally/admin/backup".into(),
            Some(json!({"to": "/tmp/never-written"})),
            "operator",
        ),
        (
            "POST",
            "/api/tally/plan_transitions/some-id/approve".into(),
            Some(json!({})),
            "operator",
        ),
    ];
    let before = state(&server);
    for (method, path, body, needs) in &endpoints {
        let body = body.as_ref();
        for (name, token) in [
            ("none", None),
            ("wrong", Some("tly_0000_nope")),
            ("revoked", Some(revoked.as_str())),
            ("expired", Some(expiring.as_str())),
        ] {
            let (status, text) = call(&server, method, path, token, body);
            assert_eq!(status, 401, "{name} token on {method} {path}: {text}");
        }
        // The `system` namespace needs a token scoped to every namespace.
        if path.contains("/namespaces/system/") {
            let (status, text) = call(&server, method, path, Some(&shop_admin), body);
            assert_eq!(status, 403, "shop-scoped token on {method} {path}: {text}");
        }
        if *needs != "read" {
            let (status, text) = call(&server, method, path, Some(&reader), body);
            assert_eq!(status, 403, "read token on {method} {path}: {text}");
        }
        if *needs == "operator" {
            let (status, text) = call(&server, method, path, Some(&globex), body);
            assert_eq!(status, 403, "a tenant admin on {method} {path}: {text}");
        }
    }
    // Another tenant's objects are not found, whatever the method.
    for (method, path) in [
        ("GET", "/api/web/namespaces/system/quotas/lbs".to_owned()),
        ("DELETE", "/api/web/namespaces/system/quotas/lbs".to_owned()),
        (
            "DELETE",
            format!("/api/web/namespaces/system/billing/payment_methods/{pm}"),
        ),
        (
            "POST",
            format!("/api/web/namespaces/system/billing/payment_method/{pm}/primary"),
        ),
        ("DELETE", "/api/tally/tokens/operator".to_owned()),
    ] {
        let (status, text) = call(&server, method, &path, Some(&globex), Some(&json!({})));
        assert_eq!(status, 404, "other tenant on {method} {path}: {text}");
    }
    let (_, theirs) = call(
        &server,
        "GET",
        "/api/web/namespaces/system/quotas",
        Some(&globex),
        None,
    );
    assert!(!theirs.contains("lbs"), "{theirs}");
    // Out-of-scope namespaces are refused, in-scope ones answered.
    assert_eq!(
        call(
            &server,
            "POST",
            "/api/web/namespaces/blog/usage_details",
            Some(&shop_admin),
            Some(&json!({}))
        )
        .0,
        403
    );
    assert_eq!(
        call(
            &server,
            "POST",
            "/api/web/namespaces/shop/usage_details",
            Some(&shop_admin),
            Some(&json!({}))
        )
        .0,
        200
    );
    assert_eq!(state(&server), before, "no refused call changed anything");

    // The audit trail names who did what, and never a secret.
    let (status, audit) = call(
        &server,
        "GET",
        "/api/tally/audit",
        Some(OPERATOR_TOKEN),
        None,
    );
    assert_eq!(status, 200);
    for action in [
        "quota.create",
        "payment_method.create",
        "token.create",
        "token.revoke",
    ] {
        assert!(audit.contains(action), "{action} missing: {audit}");
    }
    assert!(!audit.contains(PAYMENT_SECRET));

    // Planted secrets appear in no response, log line, metric or dead letter.
    let responses = [
        call(
            &server,
            "GET",
            "/api/tally/tokens",
            Some(OPERATOR_TOKEN),
            None,
        )
        .1,
        call(&server, "GET", "/metrics", None, None).1,
        call(
            &server,
            "GET",
            "/api/web/namespaces/system/subscriptions/custom_list",
            Some(OPERATOR_TOKEN),
            None,
        )
        .1,
        audit,
    ];
    server.stop();
    let log = std::fs::read_to_string(server.data_dir.with_extension("log")).unwrap();
    let letters = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["inspect", "--data-dir"])
        .arg(&server.data_dir)
        .arg("dead-letters")
        .output()
        .unwrap();
    let letters = String::from_utf8_lossy(&letters.stdout).into_owned();
    let secret_of = |token: &str| token.rsplit('_').next().unwrap().to_owned();
    for secret in [
        PAYMENT_SECRET.to_owned(),
        OPERATOR_TOKEN.to_owned(),
        secret_of(&globex),
        secret_of(&reader),
    ] {
        for (place, text) in responses
            .iter()
            .map(|r| ("a response", r))
            .chain([("the log", &log), ("dead letters", &letters)])
        {
            assert!(!text.contains(&secret), "{secret} found in {place}");
        }
    }
}

#[test]
fn a_token_over_its_rate_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_args(&dir.path().join("data"), &["--rate-limit", "5"]);
    let started = Instant::now();
    let mut limited = None;
    for _ in 0..40 {
        let client = reqwest::blocking::Client::new();
        let response = client
            .get(format!("{}/api/web/namespaces/system/quotas", server.base))
            .header("Authorization", format!("APIToken {OPERATOR_TOKEN}"))
            .send()
            .unwrap();
        if response.status() == 429 {
            limited = Some(
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "40 requests in well under a second each"
    );
    let retry_after: u64 = limited
        .expect("a 429 within 40 quick requests")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after));
    // Other tokens, and health checks, are not affected.
    assert_eq!(server.readiness()["http_status"], 200);
    std::thread::sleep(Duration::from_secs(retry_after));
    let (status, _) = server.call("GET", "/api/web/namespaces/system/quotas", None);
    assert_eq!(status, 200);
    server.stop();
}
