//! `tally serve` start-up as a new user meets it: the generated operator token, and refusals
//! of configuration that cannot work.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::Server;
use serde_json::json;

#[test]
fn generated_operator_token_is_shown_once_saved_privately_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_with(&data, None, None);

    let token_file = data.join("admin-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.starts_with("tly_") && token.len() > 40, "{token}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let printed = server.stdout.lock().unwrap().join("\n");
    assert!(
        printed.contains(&token),
        "the token is shown at first start:\n{printed}"
    );
    assert!(
        printed.contains("curl"),
        "start-up says how to call it:\n{printed}"
    );

    let path = "/api/web/namespaces/system/usage_details";
    let (status, body) = server.post_raw(path, Some(&token), b"{}".to_vec()).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post_raw(path, Some("tly_wrong"), b"{}".to_vec())
        .unwrap();
    assert_eq!((status, body["code"].as_u64()), (401, Some(16)));
    let (status, _) = server.post_raw(path, None, b"{}".to_vec()).unwrap();
    assert_eq!(status, 401);

    // A restart keeps the token and does not show it again.
    server.stdout.lock().unwrap().clear();
    server.restart();
    let printed = server.stdout.lock().unwrap().join("\n");
    assert!(!printed.contains(&token), "{printed}");
    assert!(printed.contains("admin-token"), "{printed}");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    let (status, _) = server.post_raw(path, Some(&token), b"{}".to_vec()).unwrap();
    assert_eq!(status, 200);
    let (status, _) = server
        .post_raw(
            "/api/tally/events",
            Some(&token),
            json!([]).to_string().into_bytes(),
        )
        .unwrap();
    assert_eq!(status, 400, "an empty batch is refused");
}

fn serve_fails(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "tally serve {args:?} should refuse to start"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn configuration_that_cannot_work_stops_start_up_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad_catalog = dir.path().join("catalog.json");
    let text = tally::catalog::DEFAULT_CATALOG_JSON.replacen(
        "\"default_plan\": \"free-plan\"",
        "\"default_plan\": \"gold-plan\"",
        1,
    );
    std::fs::write(&bad_catalog, text).unwrap();
    let stderr = serve_fails(&["--catalog", bad_catalog.to_str().unwrap()]);
    assert!(
        stderr.contains("default_plan `gold-plan` is not one of plans"),
        "{stderr}"
    );

    std::fs::write(
        &bad_catalog,
        "{\"version\": 1, \"currency\": \"USD\", \"meters\": 5}",
    )
    .unwrap();
    let stderr = serve_fails(&["--catalog", bad_catalog.to_str().unwrap()]);
    assert!(stderr.contains("meters"), "{stderr}");

    let stderr = serve_fails(&["--catalog", "/nonexistent/catalog.json"]);
    assert!(stderr.contains("/nonexistent/catalog.json"), "{stderr}");

    let stderr = serve_fails(&["--late-window", "10d", "--dedup-horizon", "1d"]);
    assert!(stderr.contains("shorter than --late-window"), "{stderr}");

    let stderr = serve_fails(&["--late-window", "soon"]);
    assert!(stderr.contains("--late-window"), "{stderr}");
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    let (status, _) = server.post(
        "/api/tally/events",
        &json!([{"id": "e1", "namespace": "shop", "metric_label": "http_lb_requests",
                 "quantity": "1", "timestamp": chrono::Utc::now().to_rfc3339()}]),
    );
    assert_eq!(status, 200);
    server.stop();
    let log = server.log_text();
    assert!(log.contains("INFO"), "the log has lines:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escape in a log file:\n{log}"
    );
}

#[test]
fn cluster_flags_without_what_they_need_are_refused_by_name() {
    // A cluster shares a Kafka topic; static membership is a cluster's.
    let stderr = serve_fails(&["--cluster"]);
    assert!(stderr.contains("--kafka-topic"), "{stderr}");
    let stderr = serve_fails(&[
        "--kafka-brokers",
        "127.0.0.1:1",
        "--kafka-topic",
        "usage",
        "--instance-id",
        "a",
    ]);
    assert!(stderr.contains("--cluster"), "{stderr}");
}
