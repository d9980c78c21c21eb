//! A data directory written by the release before log format v2 (commit 3d594c9) keeps
//! working: `tally serve` refuses it with a message naming `tally migrate`, `tally migrate`
//! rewrites its log and rebuilds its projections, and then every read endpoint answers exactly
//! as that release answered on the same directory. The same directory, marked as format 2
//! (before the billing projection was split into header and history rows), is migrated again
//! with its log and webhook cursor kept and answers the same.
//!
//! The fixture `tests/fixtures/prev_release/` is that release's own output: `data/` is the
//! store it wrote and `answers.json` the answers it gave, both made by
//! `tests/fixtures/prev_release/generator.rs`, run as a test at that commit (see its header;
//! `LOG` and `LOCK` were left out, RocksDB makes them anew).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tally::api::{AppState, router};
use tally::catalog::Catalog;
use tally::config::Config;
use tally::engine::Engine;
use tally::log::store::FORMAT_VERSION;
use tower::ServiceExt;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prev_release")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn config(data_dir: &Path) -> Config {
    let catalog = Catalog::from_json(tally::catalog::DEFAULT_CATALOG_JSON).unwrap();
    Config {
        // The operator token is already stored; giving it again would restamp its record.
        admin_token: None,
        rate_limit: 0,
        ..Config::with_defaults(data_dir.to_path_buf(), Arc::new(catalog))
    }
}

fn tally(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env_remove("TALLY_ADMIN_TOKEN")
        .output()
        .unwrap()
}

/// Opening a store of an older format fails with a message naming the format found and
/// the way out.
fn assert_refused(data: &Path, clock_at: i64, found: u64) {
    let refused = Engine::open(config(data), Arc::new(move || clock_at))
        .err()
        .unwrap_or_else(|| panic!("a format-{found} store is refused"))
        .to_string();
    assert!(
        refused.contains(&format!("tally migrate --data-dir {}", data.display()))
            && refused.contains(&format!("format version {found}")),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_release_store_is_refused_then_migrated_and_answers_as_before() {
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("answers.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&fixture_dir().join("data"), &data);
    let data_arg = data.to_str().unwrap();

    // Refused, by the library and by `tally serve`, with the way out.
    let clock_at = fixture["clock"].as_i64().unwrap();
    assert_refused(&data, clock_at, 1);
    let serve = tally(&["serve", "--data-dir", data_arg, "--listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success());
    assert!(stderr.contains("tally migrate --data-dir"), "{stderr}");

    // Migrated by the command a user runs.
    let migrate = tally(&["migrate", "--data-dir", data_arg]);
    let stdout = String::from_utf8_lossy(&migrate.stdout);
    assert!(
        migrate.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(
        stdout.contains(&format!("from format 1 to {FORMAT_VERSION}")),
        "{stdout}"
    );
    assert!(stdout.contains("rebuilt every projection"), "{stdout}");
    // Every stored entry is now v2 and decodes.
    {
        let store = tally::log::store::Store::open_read_only(
            &data,
            &tally::log::store::StoreOptions {
                dedup_horizon: std::time::Duration::from_secs(35 * 86_400),
                min_free_disk: 0,
            },
        )
        .unwrap();
        let entries = store.read_log(0, 1_000_000).unwrap();
        assert!(entries.len() > 60, "{} entries", entries.len());
        let letters = store.dead_letters(0, 100).unwrap();
        assert_eq!(letters.len(), 1, "the refused event is still kept");
        assert_eq!(letters[0].1.rejection.field, "metric_label");
    }
    // Running it again changes nothing.
    let again = tally(&["migrate", "--data-dir", data_arg]);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains(&format!("already at format version {FORMAT_VERSION}")),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    // The same questions, the same answers.
    let engine = Arc::new(Engine::open(config(&data), Arc::new(move || clock_at)).unwrap());
    asks_the_same_questions(&engine, &fixture).await;
    engine.shutdown().await;
    drop(engine);

    // A format-2 directory (the release before the billing projection was split into header
    // and history rows): its log is kept byte for byte, its projections are folded again in
    // the new layout, and the webhook keeps its cursor.
    let options = tally::log::store::StoreOptions {
        dedup_horizon: std::time::Duration::from_secs(35 * 86_400),
        min_free_disk: 0,
    };
    let log_rows = |data: &Path| -> Vec<(Vec<u8>, Vec<u8>)> {
        let store = tally::log::store::Store::open_read_only(data, &options).unwrap();
        store
            .rows(tally::log::store::CF_LOG)
            .map(|row| row.unwrap())
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect()
    };
    {
        let store = tally::log::store::Store::open(&data, &options).unwrap();
        let mut batch = store.batch();
        let u64_value = tally::log::codec::encode_u64;
        batch.put(tally::log::store::CF_META, b"format_version", u64_value(2));
        batch.put(
            tally::log::store::CF_META,
            b"webhook_cursor",
            u64_value(4_242),
        );
        // Format 2 kept a tenant's whole billing state in one `t` row.
        batch.put(
            tally::log::store::CF_BILLING,
            b"tacme\0",
            b"\x01format-2 state",
        );
        store.commit(batch, true).unwrap();
    }
    let log_before = log_rows(&data);
    assert_refused(&data, clock_at, 2);
    let migrate = tally(&["migrate", "--data-dir", data_arg]);
    let stdout = String::from_utf8_lossy(&migrate.stdout);
    assert!(migrate.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("from format 2 to {FORMAT_VERSION}")),
        "{stdout}"
    );
    assert_eq!(log_rows(&data), log_before, "the log is kept byte for byte");
    {
        let store = tally::log::store::Store::open_read_only(&data, &options).unwrap();
        let cursor = store
            .get(tally::log::store::CF_META, b"webhook_cursor")
            .unwrap();
        let kept = tally::log::codec::encode_u64(4_242);
        assert_eq!(cursor.as_deref(), Some(&kept[..]));
        let stale = store
            .get(tally::log::store::CF_BILLING, b"tacme\0")
            .unwrap();
        assert_eq!(stale, None, "format 2's billing rows are gone");
    }
    let engine = Arc::new(Engine::open(config(&data), Arc::new(move || clock_at)).unwrap());
    asks_the_same_questions(&engine, &fixture).await;
    engine.shutdown().await;
}

/// Asks the fixture's questions of `engine` and checks each answer is the previous
/// release's (but for what format 2 changed on purpose).
async fn asks_the_same_questions(engine: &Arc<Engine>, fixture: &Value) {
    let app = router(AppState::new(engine.clone()));
    let tokens = [
        ("operator", fixture["operator_token"].as_str().unwrap()),
        ("acme", fixture["acme_token"].as_str().unwrap()),
    ];
    let questions = fixture["questions"].as_array().unwrap();
    assert!(questions.len() >= 20);
    for question in questions {
        let method = question["method"].as_str().unwrap();
        let path = question["path"].as_str().unwrap();
        let token = tokens
            .iter()
            .find(|(name, _)| *name == question["token"])
            .unwrap()
            .1;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("APIToken {token}"));
        let body = if question["body"].is_null() {
            Body::empty()
        } else {
            request = request.header("content-type", "application/json");
            Body::from(question["body"].to_string())
        };
        let response = app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, question["status"], "{method} {path}");
        let expected = &question["answer"];
        if let Some(json) = expected.get("json") {
            let got: Value = serde_json::from_slice(&bytes).unwrap();
            if path.ends_with("/monthly_usage") {
                monthly_usage_is_per_billing_period(&got, json);
            } else if path.ends_with("/alerts") {
                // Alerts are filed under positions derived from the entry that crossed the
                // threshold, no longer under the seq of a log entry of their own: the same
                // alerts, in the same order, with new `seq`s.
                assert_eq!(without_seqs(&got), without_seqs(json), "{path}");
                let seqs: Vec<u64> = got["alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["seq"].as_str().unwrap().parse().unwrap())
                    .collect();
                assert!(
                    !seqs.is_empty() && seqs.windows(2).all(|w| w[0] > w[1]),
                    "{got}"
                );
            } else {
                assert_eq!(
                    &got, json,
                    "{method} {path} answers as the previous release did"
                );
            }
        } else if expected["varies"] == true {
            // The invoice PDF embeds a fresh document id on every call: the same shape, and
            // still a PDF.
            let got: Value = serde_json::from_slice(&bytes).unwrap();
            let keys: Vec<&String> = got.as_object().unwrap().keys().collect();
            assert_eq!(json!(keys), expected["keys"], "{path}");
            let pdf = base64::engine::general_purpose::STANDARD
                .decode(got["pdf"].as_str().unwrap())
                .unwrap();
            assert!(pdf.starts_with(b"%PDF-"), "{path}");
        } else {
            let want = base64::engine::general_purpose::STANDARD
                .decode(expected["bytes_base64"].as_str().unwrap())
                .unwrap();
            assert_eq!(bytes.to_vec(), want, "{method} {path}: the same bytes");
        }
    }
}

/// The alert list without what format 2 renumbered.
fn without_seqs(list: &Value) -> Value {
    let mut list = list.clone();
    for alert in list["alerts"].as_array_mut().unwrap() {
        alert.as_object_mut().unwrap().remove("seq");
    }
    list.as_object_mut().unwrap().remove("next_page_token");
    list
}

/// The previous release gave one item per calendar month priced at the current plan; format 2
/// gives one per billing period at its own plan. October was cut by the upgrade to the team
/// plan on the 5th at 09:00: its free part costs nothing, and the months' bounds are kept.
fn monthly_usage_is_per_billing_period(got: &Value, before: &Value) {
    let bounds = |answer: &Value| -> Vec<(String, String)> {
        answer["monthly_usage_items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["start_timestamp"].as_str().unwrap().to_owned(),
                    i["end_timestamp"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        bounds(before),
        pairs(&[
            ("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"),
            ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
        ]),
        "{before}"
    );
    assert_eq!(
        bounds(got),
        pairs(&[
            ("2026-10-01T00:00:00Z", "2026-10-05T09:00:00Z"),
            ("2026-10-05T09:00:00Z", "2026-11-01T00:00:00Z"),
            ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
        ]),
        "{got}"
    );
    assert_eq!(got["monthly_usage_items"][0]["amount"], "0", "{got}");
    // November was one team period then and now.
    assert_eq!(
        got["monthly_usage_items"][2], before["monthly_usage_items"][1],
        "{got}"
    );
}
