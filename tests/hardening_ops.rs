//! Hardening of the operator paths, through the real binary: a widened late window does not
//! re-admit forgotten ids, an interrupted restore is refused instead of served empty, a
//! partial rebuild cannot record a changed catalog, and API backups stay under the backup
//! root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{OPERATOR_TOKEN, Server};
use serde_json::{Value, json};
use tally::log::store::{Store, StoreOptions};

/// Runs `tally args…` to its end, or kills it after `limit` (a command that should have
/// refused to start but serves instead): (exit success, or None when killed; stdout; stderr).
fn tally_within(args: &[&str], limit: Duration) -> (Option<bool>, String, String) {
    let out = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_ADMIN_TOKEN", OPERATOR_TOKEN)
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("run tally");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        std::fs::read_to_string(stdout_path).unwrap_or_default(),
        std::fs::read_to_string(stderr_path).unwrap_or_default(),
    )
}

fn tally(args: &[&str]) -> (bool, String, String) {
    let (status, stdout, stderr) = tally_within(args, Duration::from_secs(120));
    (status == Some(true), stdout, stderr)
}

fn tally_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = tally(args);
    assert!(ok, "tally {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// `tally serve` on `data` must refuse to start; returns its stderr.
fn serve_refused(data: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = tally_within(&args, Duration::from_secs(30));
    assert_eq!(
        status,
        Some(false),
        "tally serve started on {data:?}:\n{stdout}\n{stderr}"
    );
    stderr
}

fn summary(data: &Path) -> Value {
    serde_json::from_str(&tally_ok(&[
        "inspect",
        "--data-dir",
        data.to_str().unwrap(),
        "--json",
    ]))
    .unwrap()
}

fn usage_event(id: &str, at: i64) -> Value {
    json!({"id": id, "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 5,
           "timestamp": tally::time::format_rfc3339(at)})
}

fn send(server: &Server, events: &[Value]) -> Value {
    let (status, body) = server.post("/api/tally/events", &Value::Array(events.to_vec()));
    assert_eq!(status, 200, "{body}");
    body
}

fn now() -> i64 {
    Utc::now().timestamp_micros()
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[test]
fn a_wider_late_window_does_not_readmit_forgotten_ids() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    // A run that remembers ids for two seconds.
    let mut server = Server::start_args(&data, &["--late-window", "2s"]);
    let original = usage_event("late-1", now());
    let answer = send(&server, std::slice::from_ref(&original));
    assert_eq!(answer["accepted"], 1, "{answer}");
    // Once the window has passed it, the next write moves the horizon past the event (a
    // record keeps its event time rounded up to the second, hence a second more).
    std::thread::sleep(Duration::from_millis(3_500));
    let answer = send(&server, &[usage_event("fresh-1", now())]);
    assert_eq!(answer["accepted"], 1, "{answer}");
    let entries = server.readiness()["log_entries"].as_u64().unwrap();
    server.stop();
    // Compaction prunes the record (whatever horizon the opener asks for).
    let store = Store::open(
        &data,
        &StoreOptions {
            dedup_horizon: Duration::from_secs(2),
            min_free_disk: 0,
        },
    )
    .unwrap();
    store.compact_all().unwrap();
    drop(store);
    let (ok, _, stderr) = tally(&[
        "inspect",
        "--data-dir",
        data_arg,
        "event",
        "--tenant",
        "default",
        "--id",
        "late-1",
    ]);
    assert!(!ok && stderr.contains("is remembered"), "{stderr}");

    // A run with the default 35-day window refuses the resend, and any event as old.
    let mut server = Server::start(&data, None);
    let answer = send(
        &server,
        &[
            original,
            usage_event("never-seen", now() - 3_600_000_000),
            usage_event("fresh-2", now()),
        ],
    );
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(
        server.readiness()["log_entries"],
        entries + 1,
        "fresh-2 only"
    );
    server.stop();
    let forgotten_before = summary(&data)["ids_forgotten_before"]
        .as_str()
        .expect("the forgetting horizon is stored")
        .to_owned();
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{answer}");
    for refused in rejected {
        let reason = refused["reason"].as_str().unwrap();
        assert_eq!(refused["field"], "timestamp", "{answer}");
        assert!(
            reason.contains(&forgotten_before) && reason.contains("forgotten"),
            "{reason}"
        );
    }

    // The offline tools keep to it too: repairing dead letters with the default window
    // appends nothing, and neither it nor a backup moves the horizon.
    let out = tally_ok(&["replay", "dead-letters", "--data-dir", data_arg]);
    assert!(out.contains("0 appended"), "{out}");
    let copy = dir.path().join("copy");
    tally_ok(&[
        "backup",
        "--data-dir",
        data_arg,
        "--to",
        copy.to_str().unwrap(),
    ]);
    for store in [&data, &copy] {
        let after = summary(store);
        assert_eq!(after["ids_forgotten_before"], forgotten_before.as_str());
        assert_eq!(after["log_entries"], entries + 1);
    }
}

#[test]
fn an_interrupted_restore_is_refused_not_served_empty() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    let events: Vec<Value> = (0..20)
        .map(|n| usage_event(&format!("e-{n}"), now()))
        .collect();
    assert_eq!(send(&server, &events)["accepted"], 20);
    server.stop();
    let entries = summary(&data)["log_entries"].clone();
    let backup = dir.path().join("backup");
    tally_ok(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        backup.to_str().unwrap(),
    ]);

    // A copy cut short before CURRENT: every command refuses it, and none creates a store.
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    for entry in std::fs::read_dir(&backup).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "CURRENT" {
            std::fs::copy(entry.path(), cut.join(entry.file_name())).unwrap();
        }
    }
    let stderr = serve_refused(&cut, &[]);
    assert!(
        stderr.contains("no CURRENT") && stderr.contains("incomplete copy"),
        "{stderr}"
    );
    let cut_arg = cut.to_str().unwrap();
    for args in [
        vec!["inspect", "--data-dir", cut_arg],
        vec!["replay", "rebuild", "--data-dir", cut_arg],
    ] {
        let (ok, _, stderr) = tally(&args);
        assert!(!ok && stderr.contains("no CURRENT"), "{args:?}: {stderr}");
    }
    assert!(!cut.join("CURRENT").exists());

    // A restore whose copy does not open leaves no data directory behind.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for entry in std::fs::read_dir(&backup).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), broken.join(entry.file_name())).unwrap();
    }
    std::fs::write(broken.join("CURRENT"), "MANIFEST-999999\n").unwrap();
    let never = dir.path().join("never");
    let (ok, _, stderr) = tally(&[
        "restore",
        "--from",
        broken.to_str().unwrap(),
        "--data-dir",
        never.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("does not open"), "{stderr}");
    assert!(!never.exists(), "a failed restore left {never:?}");
    assert!(!with_suffix(&never, ".restoring").exists());

    // A restore goes through `<data-dir>.restoring` (a stale one is replaced) and the result
    // serves what the backup holds.
    let restored = dir.path().join("restored");
    let staging = with_suffix(&restored, ".restoring");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("000099.sst"), "left by a restore cut short").unwrap();
    tally_ok(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(!staging.exists());
    assert!(!restored.join("000099.sst").exists());
    assert_eq!(summary(&restored)["log_entries"], entries);

    // A data directory that is a mount point (a container's volume) cannot be replaced by a
    // rename: the checked copy goes into it, CURRENT last.
    let volume = dir.path().join("volume");
    let _mount = common::Tmpfs::mount(&volume, "64m");
    tally_ok(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        volume.to_str().unwrap(),
    ]);
    assert!(!with_suffix(&volume, ".restoring").exists());
    assert!(!volume.join("CURRENT.restoring").exists());
    assert_eq!(summary(&volume)["log_entries"], entries);
}

#[test]
fn a_partial_rebuild_with_a_changed_catalog_is_refused_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let mut server = Server::start(&data, None);
    let events: Vec<Value> = (0..10)
        .map(|n| usage_event(&format!("r-{n}"), now() - n * 1_000_000))
        .collect();
    send(&server, &events);
    server.wait_caught_up();
    server.stop();
    let changed = common::catalog_with(dir.path(), "changed.json", |c| {
        for meter in c["meters"].as_array_mut().unwrap() {
            if meter["metric_label"] == "http_lb_requests" {
                // Now bound to a quota key: the quota projection must count its levels.
                meter["aggregation"] = json!("MAX");
                meter["quota"] = json!({"kind": "resource", "name": "lb_requests"});
            }
        }
    });
    let changed_arg = changed.to_str().unwrap();
    let sums = tally_ok(&["inspect", "--data-dir", data_arg, "checksums"]);

    let (ok, _, stderr) = tally(&[
        "replay",
        "rebuild",
        "--data-dir",
        data_arg,
        "--projection",
        "usage",
        "--catalog",
        changed_arg,
    ]);
    assert!(
        !ok && stderr.contains("http_lb_requests")
            && stderr.contains("quota, billing")
            && stderr.contains("--projection all"),
        "{stderr}"
    );
    // A partial dry run compares only.
    let out = tally_ok(&[
        "replay",
        "rebuild",
        "--data-dir",
        data_arg,
        "--projection",
        "quota",
        "--dry-run",
        "--catalog",
        changed_arg,
    ]);
    assert!(out.contains("DIFFERS") && out.contains("dry run"), "{out}");
    assert_eq!(
        tally_ok(&["inspect", "--data-dir", data_arg, "checksums"]),
        sums,
        "nothing was swapped"
    );
    // The old definitions are still the recorded ones.
    let stderr = serve_refused(&data, &["--catalog", changed_arg]);
    assert!(
        stderr.contains("http_lb_requests") && stderr.contains("tally replay rebuild"),
        "{stderr}"
    );

    let out = tally_ok(&[
        "replay",
        "rebuild",
        "--data-dir",
        data_arg,
        "--projection",
        "all",
        "--catalog",
        changed_arg,
    ]);
    assert!(out.contains("swapped in"), "{out}");
    let mut server = Server::start(&data, Some(&changed));
    let (status, usage) = server.post("/api/web/namespaces/system/usage_details", &json!({}));
    assert_eq!(status, 200, "{usage}");
    server.stop();
}

#[test]
fn api_backups_stay_under_the_backup_root() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let data = base.join("data");
    let root = with_suffix(&data, ".backups");
    let mut server = Server::start(&data, None);
    assert_eq!(send(&server, &[usage_event("b-1", now())])["accepted"], 1);
    let entries = server.readiness()["log_entries"].clone();
    let backup = |to: &Path| {
        server.call(
            "POST",
            "/api/tally/admin/backup",
            Some(&json!({"to": to.to_str().unwrap()})),
        )
    };

    // Outside the root (after resolving `..` and symlinks), in the store's own directories,
    // or unresolvable: refused, naming the field, and nothing is written.
    let refused = [
        (base.join("outside"), "outside the backup root"),
        (root.join("..").join("escaped"), "outside the backup root"),
        (data.join("inside"), "inside the data directory"),
        (
            with_suffix(&data, ".rebuild"),
            "which the next rebuild deletes",
        ),
        (root.join("missing").join("copy"), "cannot be resolved"),
        (PathBuf::from("relative/copy"), "absolute"),
        (root.join("out").join("escaped"), "outside the backup root"),
    ];
    for (to, why) in &refused {
        if to.starts_with(root.join("out")) {
            std::fs::create_dir_all(&root).unwrap();
            std::os::unix::fs::symlink(&base, root.join("out")).unwrap();
        }
        let (status, body) = backup(to);
        let message = body["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{to:?}: {body}");
        assert!(
            message.starts_with("to: ") && message.contains(why),
            "{to:?}: {message}"
        );
        assert!(!to.exists(), "{to:?} was written");
    }
    assert!(!base.join("escaped").exists());

    // Under the default root, beside the data directory.
    let nightly = root.join("nightly");
    let (status, body) = backup(&nightly);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backup"], nightly.to_str().unwrap());
    assert_eq!(
        summary(&nightly)["log_entries"],
        entries,
        "a copy of the store"
    );
    let (status, body) = backup(&nightly);
    assert_eq!(status, 409, "{body}");
    server.stop();

    // `--backup-root` moves it.
    let elsewhere = base.join("elsewhere");
    let mut server = Server::start_args(&data, &["--backup-root", elsewhere.to_str().unwrap()]);
    let call = |to: &Path| {
        server
            .call(
                "POST",
                "/api/tally/admin/backup",
                Some(&json!({"to": to.to_str().unwrap()})),
            )
            .0
    };
    assert_eq!(call(&elsewhere.join("one")), 200);
    assert_eq!(call(&root.join("two")), 400);
    server.stop();
}
