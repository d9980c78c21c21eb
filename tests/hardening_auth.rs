//! Hardening of authentication and token management through the real binary: token and audit
//! reads bounded by the caller's namespace scope, token changes atomic with their audit record
//! below the disk reserve, duplicate `Authorization` headers, the failed-authentication limit
//! per client address, the per-tenant token cap and the paged token list.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use common::{OPERATOR_TOKEN, Server};
use serde_json::{Value, json};

/// A client whose connections come from `from` (any 127.0.0.0/8 address reaches the server).
fn client_from(from: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Calls as each of `tokens` (one `Authorization` header per token); status, body and
/// `Retry-After`.
fn call_with(
    client: &reqwest::blocking::Client,
    server: &Server,
    method: &str,
    path: &str,
    tokens: &[&str],
    body: Option<&Value>,
) -> (u16, Value, Option<u64>) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, format!("{}{path}", server.base));
    for token in tokens {
        request = request.header("Authorization", format!("APIToken {token}"));
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let text = response.text().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, retry_after)
}

fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let (status, body, _) = call_with(
        &client_from("127.0.0.1"),
        server,
        method,
        path,
        &[token],
        body,
    );
    (status, body)
}

/// Issues a token as `as_token`; its id and secret.
fn issue(server: &Server, as_token: &str, body: Value) -> (String, String) {
    let (status, answer) = call(server, "POST", "/api/tally/tokens", as_token, Some(&body));
    assert_eq!(status, 200, "{answer}");
    (
        answer["id"].as_str().unwrap().to_owned(),
        answer["token"].as_str().unwrap().to_owned(),
    )
}

/// The ids of one page of the token list as `token`, and its `next_page_token`.
fn list_page(server: &Server, token: &str, query: &str) -> (Vec<String>, String) {
    let (status, answer) = call(
        server,
        "GET",
        &format!("/api/tally/tokens{query}"),
        token,
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let ids = answer["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    // Absent reads as the last page, so callers' own checks say what is wrong.
    let next = answer["next_page_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (ids, next)
}

/// Every token id `token` may list, page by page.
fn list_all(server: &Server, token: &str) -> BTreeSet<String> {
    let (mut ids, mut next) = list_page(server, token, "?page_size=1000");
    while !next.is_empty() {
        let (more, after) = list_page(server, token, &format!("?page_size=1000&page_token={next}"));
        ids.extend(more);
        next = after;
    }
    ids.into_iter().collect()
}

/// `(action, target)` of every audit record `token` may read.
fn audit(server: &Server, token: &str) -> Vec<(String, String)> {
    let (status, answer) = call(server, "GET", "/api/tally/audit?limit=1000", token, None);
    assert_eq!(status, 200, "{answer}");
    answer["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn quota_works(server: &Server, token: &str) -> u16 {
    call(
        server,
        "GET",
        "/api/web/namespaces/system/quotas",
        token,
        None,
    )
    .0
}

#[test]
fn a_namespace_scoped_admin_manages_and_audits_only_its_own_scope() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    let default = |role: &str, namespaces: Value| json!({"tenant": "default", "role": role, "namespaces": namespaces});
    let (shop_admin_id, shop_admin) =
        issue(&server, OPERATOR_TOKEN, default("admin", json!(["shop"])));
    let (wide_id, wide) = issue(&server, OPERATOR_TOKEN, default("admin", json!(["*"])));
    let (two_id, _) = issue(
        &server,
        OPERATOR_TOKEN,
        default("read", json!(["shop", "blog"])),
    );
    let (reader_id, _) = issue(&server, &shop_admin, default("read", json!(["shop"])));
    let (status, answer) = call(
        &server,
        "POST",
        "/api/web/namespaces/system/quotas",
        OPERATOR_TOKEN,
        Some(&json!({"metadata": {"name": "tenant-wide"}})),
    );
    assert_eq!(status, 200, "{answer}");

    // The list shows the tokens within `shop` only: not the tenant-wide admin, not one that
    // also reaches `blog`, not the operator.
    let seen = list_all(&server, &shop_admin);
    assert_eq!(
        seen,
        BTreeSet::from([shop_admin_id.clone(), reader_id.clone()]),
        "wide {wide_id}, two {two_id}"
    );
    // A wider token is "not found" to it, and keeps working.
    for id in [&wide_id, &two_id, &"operator".to_owned()] {
        let (status, answer) = call(
            &server,
            "DELETE",
            &format!("/api/tally/tokens/{id}"),
            &shop_admin,
            None,
        );
        assert_eq!(status, 404, "revoking {id}: {answer}");
    }
    assert_eq!(quota_works(&server, &wide), 200);
    let (status, answer) = call(
        &server,
        "DELETE",
        &format!("/api/tally/tokens/{reader_id}"),
        &shop_admin,
        None,
    );
    assert_eq!(status, 200, "{answer}");
    // The tenant-wide admin still sees every token of the tenant but the operator's.
    assert_eq!(
        list_all(&server, &wide),
        BTreeSet::from([shop_admin_id.clone(), wide_id.clone(), two_id.clone()])
    );

    // The audit trail: records about `shop` only (quota objects live in `system`).
    let scoped = audit(&server, &shop_admin);
    let mut actions: Vec<(String, String)> = scoped.clone();
    actions.sort();
    let mut expected = vec![
        (
            "token.create".to_owned(),
            format!("{reader_id} (namespaces shop)"),
        ),
        (
            "token.create".to_owned(),
            format!("{shop_admin_id} (namespaces shop)"),
        ),
        (
            "token.revoke".to_owned(),
            format!("{reader_id} (namespaces shop)"),
        ),
    ];
    expected.sort();
    assert_eq!(actions, expected, "{scoped:?}");
    // The operator and the tenant-wide admin read all of it.
    let everything = audit(&server, OPERATOR_TOKEN);
    assert_eq!(everything, audit(&server, &wide));
    for (action, target) in [
        ("quota.create", "system/tenant-wide".to_owned()),
        ("token.create", format!("{wide_id} (namespaces *)")),
        ("token.create", format!("{two_id} (namespaces shop,blog)")),
    ] {
        assert!(
            everything.contains(&(action.to_owned(), target.clone())),
            "{action} {target} missing: {everything:?}"
        );
    }
    server.stop();
}

/// Tokens the operator lists, and the token records of tenant `acme`'s audit trail.
fn token_state(server: &Server) -> (BTreeSet<String>, Vec<(String, String)>) {
    let (status, answer) = call(
        server,
        "GET",
        "/api/tally/audit?tenant=acme&limit=1000",
        OPERATOR_TOKEN,
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let audit = answer["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let text = |field: &str| r[field].as_str().unwrap().to_owned();
            (text("action"), text("target"))
        })
        .filter(|(action, _)| action.starts_with("token."))
        .collect();
    (list_all(server, OPERATOR_TOKEN), audit)
}

#[test]
fn below_the_disk_reserve_token_changes_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    let (victim_id, victim) = issue(
        &server,
        OPERATOR_TOKEN,
        json!({"tenant": "acme", "role": "admin", "namespaces": ["*"]}),
    );
    let before = token_state(&server);
    assert_eq!(before.1.len(), 1, "{before:?}");
    server.stop();

    // No file system has a petabyte free: every append is refused.
    let mut full = Server::start_args(&data, &["--min-free-disk", "1PiB"]);
    let (status, answer) = call(
        &full,
        "POST",
        "/api/tally/tokens",
        OPERATOR_TOKEN,
        Some(&json!({"tenant": "acme", "role": "read", "namespaces": ["*"]})),
    );
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("nothing was recorded"),
        "{answer}"
    );
    let (status, answer) = call(
        &full,
        "DELETE",
        &format!("/api/tally/tokens/{victim_id}"),
        &victim,
        None,
    );
    assert_eq!(status, 503, "{answer}");
    assert_eq!(token_state(&full), before, "neither change was made");
    assert_eq!(quota_works(&full, &victim), 200, "the token is not revoked");
    full.stop();

    // Nor is anything of them found after a restart.
    let mut again = Server::start(&data, None);
    assert_eq!(token_state(&again), before);
    assert_eq!(quota_works(&again, &victim), 200);
    again.stop();
}

#[test]
fn two_authorization_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    let client = client_from("127.0.0.1");
    for tokens in [
        [OPERATOR_TOKEN, "tly_0000_wrong"],
        ["tly_0000_wrong", OPERATOR_TOKEN],
        [OPERATOR_TOKEN, OPERATOR_TOKEN],
    ] {
        let (status, answer, _) = call_with(
            &client,
            &server,
            "GET",
            "/api/web/namespaces/system/quotas",
            &tokens,
            None,
        );
        assert_eq!(status, 400, "{tokens:?}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("Authorization"),
            "{answer}"
        );
    }
    assert_eq!(quota_works(&server, OPERATOR_TOKEN), 200);
    server.stop();
}

#[test]
fn failed_authentications_from_one_address_are_limited_and_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_args(&dir.path().join("data"), &["--auth-failure-limit", "3"]);
    let (revoked_id, revoked) = issue(
        &server,
        OPERATOR_TOKEN,
        json!({"tenant": "acme", "role": "read", "namespaces": ["*"]}),
    );
    let (status, _) = call(
        &server,
        "DELETE",
        &format!("/api/tally/tokens/{revoked_id}"),
        OPERATOR_TOKEN,
        None,
    );
    assert_eq!(status, 200);
    let attacker = client_from("127.0.0.2");
    let bystander = client_from("127.0.0.3");
    let quotas = "/api/web/namespaces/system/quotas";
    let try_token = |client: &reqwest::blocking::Client, token: &str| {
        call_with(client, &server, "GET", quotas, &[token], None)
    };
    // A bad, an unknown and a revoked token: each a 401 and each counted.
    for token in [
        "not-a-token",
        "tly_00ff00ff00ff00ff_guess",
        revoked.as_str(),
    ] {
        let (status, answer, _) = try_token(&attacker, token);
        assert_eq!(status, 401, "{token}: {answer}");
    }
    let (status, answer, retry_after) = try_token(&attacker, "tly_00ff00ff00ff00ff_again");
    assert_eq!(status, 429, "{answer}");
    let retry_after = retry_after.expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("failed authentications"),
        "{answer}"
    );
    // Blocked, the address learns nothing: a valid token is refused the same way.
    assert_eq!(try_token(&attacker, OPERATOR_TOKEN).0, 429);
    // Another client is not affected: its valid token works, and its own failures have their
    // own budget.
    assert_eq!(try_token(&bystander, OPERATOR_TOKEN).0, 200);
    assert_eq!(try_token(&bystander, "tly_00ff00ff00ff00ff_typo").0, 401);
    assert_eq!(try_token(&bystander, OPERATOR_TOKEN).0, 200);
    // Requests without credentials are not failures: health stays reachable.
    let (status, _, _) = call_with(&attacker, &server, "GET", "/readyz", &[], None);
    assert_eq!(status, 200);
    server.stop();
}

#[test]
fn a_tenant_holds_at_most_the_configured_number_of_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        Server::start_args(&dir.path().join("data"), &["--max-tokens-per-tenant", "2"]);
    let acme = json!({"tenant": "acme", "role": "read", "namespaces": ["*"]});
    let (first, _) = issue(&server, OPERATOR_TOKEN, acme.clone());
    issue(&server, OPERATOR_TOKEN, acme.clone());
    let (status, answer) = call(
        &server,
        "POST",
        "/api/tally/tokens",
        OPERATOR_TOKEN,
        Some(&acme),
    );
    assert_eq!(status, 409, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("acme") && message.contains("--max-tokens-per-tenant"),
        "{message}"
    );
    // Other tenants have their own count (the operator token is not counted in `default`'s).
    for _ in 0..2 {
        issue(
            &server,
            OPERATOR_TOKEN,
            json!({"tenant": "default", "role": "read", "namespaces": ["*"]}),
        );
    }
    // Revoking one makes room.
    let (status, _) = call(
        &server,
        "DELETE",
        &format!("/api/tally/tokens/{first}"),
        OPERATOR_TOKEN,
        None,
    );
    assert_eq!(status, 200);
    issue(&server, OPERATOR_TOKEN, acme);
    server.stop();
}

#[test]
fn the_token_list_comes_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    let mut issued = BTreeSet::new();
    for _ in 0..104 {
        let (id, _) = issue(
            &server,
            OPERATOR_TOKEN,
            json!({"tenant": "acme", "role": "read", "namespaces": ["*"]}),
        );
        issued.insert(id);
    }
    issued.insert("operator".to_owned());
    // 105 tokens: a default page of 100, then the rest.
    let (first, next) = list_page(&server, OPERATOR_TOKEN, "");
    assert_eq!(first.len(), 100);
    assert!(!next.is_empty());
    let (rest, last) = list_page(&server, OPERATOR_TOKEN, &format!("?page_token={next}"));
    assert_eq!((rest.len(), last.as_str()), (5, ""));
    // Pages of 40 cover every token once, in order.
    let mut paged = Vec::new();
    let mut query = "?page_size=40".to_owned();
    loop {
        let (ids, next) = list_page(&server, OPERATOR_TOKEN, &query);
        assert!(ids.len() <= 40);
        paged.extend(ids);
        if next.is_empty() {
            break;
        }
        query = format!("?page_size=40&page_token={next}");
    }
    assert_eq!(paged, [first, rest].concat());
    assert_eq!(paged.iter().cloned().collect::<BTreeSet<_>>(), issued);
    for (query, field) in [
        ("?page_size=0", "page_size"),
        ("?page_size=1001", "page_size"),
        ("?page_size=many", "page_size"),
        ("?page_token=not-ours", "page_token"),
    ] {
        let (status, answer) = call(
            &server,
            "GET",
            &format!("/api/tally/tokens{query}"),
            OPERATOR_TOKEN,
            None,
        );
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{query}: {answer}"
        );
    }
    server.stop();
}

/// One page of the audit trail as `token`: the targets, and `next_page_token`.
fn audit_page(server: &Server, token: &str, query: &str) -> (Vec<String>, String) {
    let (status, answer) = call(
        server,
        "GET",
        &format!("/api/tally/audit{query}"),
        token,
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let targets = answer["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect();
    let next = answer["next_page_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (targets, next)
}

#[test]
fn the_audit_trail_comes_in_pages_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    let mut issued = Vec::new();
    for _ in 0..130 {
        let (id, _) = issue(
            &server,
            OPERATOR_TOKEN,
            json!({"role": "read", "namespaces": ["*"]}),
        );
        issued.push(id);
    }
    let everything: Vec<String> = audit(&server, OPERATOR_TOKEN)
        .into_iter()
        .map(|(_, target)| target)
        .collect();
    assert_eq!(everything.len(), 130, "{everything:?}");
    assert!(
        everything[0].starts_with(issued.last().unwrap()),
        "newest first: {everything:?}"
    );
    let mut paged = Vec::new();
    let mut query = "?page_size=50".to_owned();
    let mut pages = 0;
    loop {
        let (targets, next) = audit_page(&server, OPERATOR_TOKEN, &query);
        assert!(targets.len() <= 50);
        pages += 1;
        paged.extend(targets);
        if next.is_empty() {
            break;
        }
        query = format!("?page_size=50&page_token={next}");
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, everything, "every record once, in order");
    // The older `limit` keeps its meaning: clamped into range, not refused.
    let (clamped, _) = audit_page(&server, OPERATOR_TOKEN, "?limit=5000");
    assert_eq!(clamped, everything);
    for query in ["?page_size=0", "?page_size=1001", "?page_token=later"] {
        let (status, answer) = call(
            &server,
            "GET",
            &format!("/api/tally/audit{query}"),
            OPERATOR_TOKEN,
            None,
        );
        assert_eq!(status, 400, "{query}: {answer}");
    }
    server.stop();
}
