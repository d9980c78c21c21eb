//! Replay and operations through the real binary: rebuild (stopped and live) gives identical
//! projections and answers, a corrupted row is found and repaired, backups restore to the
//! same answers, dead letters are repaired after a catalog change, a changed meter stops
//! start-up until a rebuild, and `tally inspect` shows what is stored.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use common::{OPERATOR_TOKEN, Server};
use serde_json::{Value, json};
use tally::log::store::{CF_HOURLY, Store, StoreOptions};

fn tally(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_ADMIN_TOKEN", OPERATOR_TOKEN)
        .output()
        .expect("run tally");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn tally_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = tally(args);
    assert!(ok, "tally {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn rfc3339(micros: i64) -> String {
    tally::time::format_rfc3339(micros)
}

/// Usage (with late events and duplicates) for three tenants, load-balancer gauges that cross
/// quota thresholds, a quota object, an upgrade that issues an invoice, a coupon, and a few
/// events for a meter the catalog does not have (dead letters).
fn mixed_workload(server: &Server) {
    let now = Utc::now().timestamp_micros();
    let mut events = Vec::new();
    for n in 0..600i64 {
        let tenant = ["default", "acme", "globex"][(n % 3) as usize];
        let late = n % 50 == 0;
        let at = if late {
            now - 7 * 3_600_000_000
        } else {
            now - (n % 100) * 1_000_000
        };
        let metric = [
            "http_lb_requests",
            "data_transfer_bytes",
            "waf_security_events",
        ][(n % 3) as usize];
        events.push(json!({"id": format!("mix-{n}"), "tenant": tenant, "namespace": format!("ns-{}", n % 7),
                           "metric_label": metric, "quantity": (n * 37 % 1000 + 1).to_string(), "timestamp": rfc3339(at)}));
    }
    let duplicates: Vec<Value> = events.iter().step_by(10).cloned().collect();
    events.extend(duplicates);
    for (n, count) in [(0, 3), (1, 4), (2, 5), (3, 2)] {
        events.push(json!({"id": format!("lb-{n}"), "namespace": "shop", "metric_label": "http_loadbalancers",
                           "quantity": count, "timestamp": rfc3339(now + n * 1_000_000)}));
    }
    for n in 0..5 {
        events.push(
            json!({"id": format!("gpu-{n}"), "namespace": "ml", "metric_label": "gpu_hours",
                           "quantity": "1.5", "timestamp": rfc3339(now)}),
        );
    }
    for chunk in events.chunks(200) {
        let (status, body) = server.post("/api/tally/events", &Value::Array(chunk.to_vec()));
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server.call(
        "POST",
        "/api/web/namespaces/system/quotas",
        Some(&json!({"metadata": {"name": "lbs"}, "spec": {"object_limits": {"http_loadbalancer": {"maximum": 4}}}})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.call(
        "POST",
        "/api/web/namespaces/system/billing/plan_transition",
        Some(&json!({"new_plan": "individual-plan", "payload": {"payment_provider_token": "tok_replay"}})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.call(
        "POST",
        "/api/tally/tenants/acme/coupons",
        Some(&json!({"title": "welcome", "discount_type": "DISCOUNT_TYPE_FIXED_AMOUNT", "discount_amount": 500})),
    );
    assert_eq!(status, 200, "{body}");
    server.wait_caught_up();
}

/// What clients see: usage, quota usage, invoices and alerts.
fn answers(server: &Server) -> Value {
    let mut all = json!({});
    let (_, usage) = server.post("/api/web/namespaces/system/usage_details", &json!({}));
    all["usage"] = usage;
    let (_, current) = server.post("/api/web/namespaces/system/current_usage", &json!({}));
    all["current"] = current;
    for path in [
        "/api/web/namespaces/system/quota/usage",
        "/api/tally/namespaces/system/alerts",
        "/api/web/namespaces/system/subscriptions/custom_list",
    ] {
        all[path] = server.call("GET", path, None).1;
    }
    let (_, mut invoices) = server.call(
        "GET",
        "/api/web/namespaces/system/usage/invoices/custom_list",
        None,
    );
    // The pending amount grows with the clock (flat price so far); issued ones must not move.
    if let Some(list) = invoices["invoices"].as_array_mut() {
        list.retain(|i| i["status"] != "STATUS_PENDING");
    }
    all["invoices"] = invoices;
    all
}

fn checksums(data: &Path) -> Value {
    serde_json::from_str(&tally_ok(&[
        "inspect",
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
        "checksums",
    ]))
    .unwrap()
}

#[test]
fn rebuilds_find_nothing_to_change_then_repair_a_corrupted_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let mut server = Server::start(&data, None);
    mixed_workload(&server);
    let before = answers(&server);
    assert!(
        before["/api/tally/namespaces/system/alerts"]["alerts"]
            .as_array()
            .unwrap()
            .len()
            >= 2,
        "{before}"
    );
    assert_eq!(
        before["invoices"]["invoices"].as_array().unwrap().len(),
        0,
        "free period: nothing billed yet"
    );

    // Live: a dry run and a rebuild through the admin endpoint change nothing.
    for body in [json!({"dry_run": true}), json!({})] {
        let (status, report) = server.call("POST", "/api/tally/admin/rebuild", Some(&body));
        assert_eq!(status, 200, "{report}");
        assert_eq!(
            (report["identical"].clone(), report["swapped"].clone()),
            (json!(true), json!(false)),
            "{report}"
        );
    }
    let (status, _) = server.call(
        "POST",
        "/api/tally/admin/rebuild",
        Some(&json!({"projection": "nope"})),
    );
    assert_eq!(status, 400);
    assert_eq!(answers(&server), before);
    server.stop();

    // Stopped: the same, with checksums equal before and after.
    let sums = checksums(&data);
    let report = tally_ok(&["replay", "rebuild", "--data-dir", data_arg]);
    assert!(
        report.contains("the live projections equal a fold of the log"),
        "{report}"
    );
    assert!(
        report.contains("entries/s (raw scan of the log"),
        "{report}"
    );
    assert_eq!(checksums(&data), sums);

    // A corrupted projection row is found (with its key) and repaired by the swap.
    let corrupted_key = {
        let store = Store::open(
            &data,
            &StoreOptions {
                dedup_horizon: Duration::from_secs(35 * 86_400),
                min_free_disk: 0,
            },
        )
        .unwrap();
        let mut first = None;
        store
            .scan(CF_HOURLY, &[], None, |key, _| {
                first = Some(key.to_vec());
                false
            })
            .unwrap();
        let key = first.unwrap();
        let garbage = tally::projection::Aggregate {
            sum: 999_999_999,
            count: 1,
            ..Default::default()
        };
        let mut batch = store.batch();
        batch.put(CF_HOURLY, &key, garbage.encode());
        store.commit(batch, true).unwrap();
        key
    };
    assert_ne!(checksums(&data), sums);
    let report = tally_ok(&[
        "replay",
        "rebuild",
        "--data-dir",
        data_arg,
        "--dry-run",
        "--json",
    ]);
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["identical"], false);
    let hourly = report["column_families"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cf"] == "hourly")
        .unwrap();
    assert_eq!(
        hourly["differences"][0],
        hex::encode(&corrupted_key),
        "{report}"
    );
    assert_ne!(checksums(&data), sums, "a dry run changes nothing");
    let report = tally_ok(&["replay", "rebuild", "--data-dir", data_arg]);
    assert!(
        report.contains("DIFFERS") && report.contains("swapped in"),
        "{report}"
    );
    assert_eq!(checksums(&data), sums);
    server.start_again();
    assert_eq!(answers(&server), before);
    server.stop();
}

#[test]
fn backups_restore_to_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    mixed_workload(&server);
    let before = answers(&server);
    // Live, through the admin endpoint, under the default backup root beside the data.
    let live_copy = dir.path().join("data.backups").join("live-backup");
    let (status, body) = server.call(
        "POST",
        "/api/tally/admin/backup",
        Some(&json!({"to": live_copy.to_str().unwrap()})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.call(
        "POST",
        "/api/tally/admin/backup",
        Some(&json!({"to": live_copy.to_str().unwrap()})),
    );
    assert_eq!(status, 409);
    let (status, _) = server.call(
        "POST",
        "/api/tally/admin/backup",
        Some(&json!({"to": "relative/dir"})),
    );
    assert_eq!(status, 400);
    server.stop();
    // Stopped, with the command.
    let stopped_copy = dir.path().join("stopped-backup");
    tally_ok(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        stopped_copy.to_str().unwrap(),
    ]);
    for (n, copy) in [live_copy, stopped_copy].iter().enumerate() {
        let restored = dir.path().join(format!("restored-{n}"));
        let out = tally_ok(&[
            "restore",
            "--from",
            copy.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ]);
        assert!(out.contains("restored"), "{out}");
        let (ok, _, stderr) = tally(&[
            "restore",
            "--from",
            copy.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ]);
        assert!(!ok && stderr.contains("not empty"), "{stderr}");
        let mut restored_server = Server::start(&restored, None);
        assert_eq!(answers(&restored_server), before, "copy {n}");
        restored_server.stop();
    }
}

#[test]
fn dead_letters_are_repaired_and_meter_changes_need_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let mut server = Server::start(&data, None);
    mixed_workload(&server);
    let entries = server.readiness()["log_entries"].as_u64().unwrap();
    server.stop();

    // The five gpu_hours events were refused: a meter the catalog did not have.
    let letters = tally_ok(&[
        "inspect",
        "--data-dir",
        data_arg,
        "dead-letters",
        "--reason",
        "metric_label",
    ]);
    assert_eq!(letters.lines().count(), 5, "{letters}");
    assert!(letters.contains("gpu_hours"));
    // With the meter added (adding a meter changes nothing already folded), they pass.
    let gpu = common::catalog_with(dir.path(), "gpu.json", |c| {
        c["meters"].as_array_mut().unwrap().push(json!({"metric_label": "gpu_hours", "usage_type": "GPU hours",
            "unit_name": "hours", "unit_name_billable": "hours", "division_factor": 1, "aggregation": "SUM",
            "service": "f5xc_appstack_standard"}));
    });
    let gpu_arg = gpu.to_str().unwrap();
    let out = tally_ok(&[
        "replay",
        "dead-letters",
        "--data-dir",
        data_arg,
        "--catalog",
        gpu_arg,
    ]);
    assert!(
        out.contains("re-validated 5 dead letters: 5 appended"),
        "{out}"
    );
    let out = tally_ok(&[
        "replay",
        "dead-letters",
        "--data-dir",
        data_arg,
        "--catalog",
        gpu_arg,
    ]);
    assert!(out.contains("0 appended, 5 already recorded"), "{out}");
    let summary: Value =
        serde_json::from_str(&tally_ok(&["inspect", "--data-dir", data_arg, "--json"])).unwrap();
    assert_eq!(summary["log_entries"], entries + 5);
    assert_eq!(summary["projector_lag"], 0);
    let event: Value = serde_json::from_str(&tally_ok(&[
        "inspect",
        "--data-dir",
        data_arg,
        "event",
        "--tenant",
        "default",
        "--id",
        "gpu-3",
    ]))
    .unwrap();
    assert_eq!(
        event["entry"]["UsageRecorded"]["event"]["metric_label"], "gpu_hours",
        "{event}"
    );

    // Changing an existing meter's aggregation stops start-up until a rebuild.
    let changed = common::catalog_with(dir.path(), "changed.json", |c| {
        for meter in c["meters"].as_array_mut().unwrap() {
            if meter["metric_label"] == "http_lb_requests" {
                meter["aggregation"] = json!("MAX");
            }
        }
    });
    let changed_arg = changed.to_str().unwrap();
    let (ok, _, stderr) = tally(&[
        "serve",
        "--data-dir",
        data_arg,
        "--catalog",
        changed_arg,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        !ok && stderr.contains("http_lb_requests") && stderr.contains("tally replay rebuild"),
        "{stderr}"
    );
    let out = tally_ok(&[
        "replay",
        "rebuild",
        "--data-dir",
        data_arg,
        "--catalog",
        changed_arg,
    ]);
    assert!(out.contains("swapped in"), "{out}");
    server = Server::start(&data, Some(&changed));
    let (status, usage) = server.post("/api/web/namespaces/system/usage_details", &json!({}));
    assert_eq!(status, 200, "{usage}");
    server.stop();
}

#[test]
fn a_dry_run_rebuild_under_tighter_quotas_appends_nothing_to_the_live_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let mut server = Server::start(&data, None);
    // 4 load balancers of the free plan's 5: one 80 % alert, a row of the quota projection
    // (the projector never writes to the log it reads).
    let (status, body) = server.post(
        "/api/tally/events",
        &json!([{"id": "lb-1", "namespace": "shop", "metric_label": "http_loadbalancers",
                 "quantity": "4", "timestamp": rfc3339(Utc::now().timestamp_micros())}]),
    );
    assert_eq!(status, 200, "{body}");
    server.wait_caught_up();
    let (_, alerts) = server.call("GET", "/api/tally/namespaces/system/alerts", None);
    assert_eq!(alerts["alerts"].as_array().unwrap().len(), 1, "{alerts}");
    assert_eq!(alerts["alerts"][0]["threshold_percent"], 80, "{alerts}");
    server.stop();
    let log_length = || {
        let store = Store::open(
            &data,
            &StoreOptions {
                dedup_horizon: Duration::from_secs(35 * 86_400),
                min_free_disk: 0,
            },
        )
        .unwrap();
        store.read_log(0, 100).unwrap().len()
    };
    assert_eq!(
        log_length(),
        1,
        "the event alone: the alert is not a log entry"
    );
    let sums = tally_ok(&["inspect", "--data-dir", data_arg, "checksums"]);

    // At a limit of 4 the shadow fold finds the 90 % and 100 % crossings: a dry run keeps
    // them to itself.
    let tighter = common::catalog_with(dir.path(), "tighter.json", |c| {
        c["plans"][0]["default_quota"]["object_limits"]["http_loadbalancer"]["maximum"] = json!(4);
    });
    let before = dir_bytes(&data);
    let out = tally_ok(&[
        "replay",
        "rebuild",
        "--data-dir",
        data_arg,
        "--dry-run",
        "--catalog",
        tighter.to_str().unwrap(),
    ]);
    assert!(out.contains("dry run"), "{out}");
    assert!(
        out.contains("DIFFERS"),
        "the tighter limit finds more crossings: {out}"
    );
    let after = dir_bytes(&data);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the dry run created or removed files in the data directory"
    );
    for (name, bytes) in &before {
        assert!(after[name] == *bytes, "the dry run changed {name}");
    }
    assert_eq!(log_length(), 1, "the dry run appended to the live log");
    assert_eq!(
        tally_ok(&["inspect", "--data-dir", data_arg, "checksums"]),
        sums
    );
}

/// Every file of a directory (not recursive) with its bytes.
fn dir_bytes(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_file())
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect()
}
