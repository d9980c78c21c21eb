//! Schemathesis (from PyPI; `scripts/test` installs it) fuzzes the running engine against the
//! OpenAPI document it serves, on a bounded budget: no 5xx, and every response conforms to the
//! document.

mod common;

use std::path::PathBuf;
use std::process::Command;

use chrono::Utc;
use common::{OPERATOR_TOKEN, Server};
use serde_json::json;

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("TALLY_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let venv = common::tools_venv();
    let binary = venv.join("bin/schemathesis");
    assert!(
        binary.is_file(),
        "schemathesis is not installed in {}; scripts/test installs it (pip install schemathesis==4.32.5)",
        venv.display()
    );
    binary
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let binary = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), None);
    // Some state, so that not every operation answers 404.
    let now = tally::time::format_rfc3339(Utc::now().timestamp_micros());
    let (status, _) = server.post(
        "/api/tally/events",
        &json!([{"id": "s1", "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 3, "timestamp": now}]),
    );
    assert_eq!(status, 200);
    let (status, _) = server.call(
        "POST",
        "/api/web/namespaces/system/quotas",
        Some(&json!({"metadata": {"name": "lbs"}})),
    );
    assert_eq!(status, 200);
    let output = Command::new(binary)
        .args([
            "run",
            &format!("{}/api/tally/openapi.json", server.base),
            "--url",
            &server.base,
        ])
        .args(["-H", &format!("Authorization: APIToken {OPERATOR_TOKEN}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args([
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--no-color",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    server.stop();
}
