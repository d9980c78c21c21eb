//! Delivers quota alerts to `--alert-webhook`: in log order, signed with HMAC-SHA256, retried
//! with backoff, on its own thread (ingestion never waits for it).
//!
//! The position (the next alert's log seq) is kept in the `meta` column family and moves only
//! after the receiver answered 2xx, so a restart resumes where delivery stopped: nothing is
//! lost. A crash between a delivery and that write sends the alert again; receivers
//! deduplicate by the `X-Tally-Alert-Id` header.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::engine::WebhookHandle;
use crate::log::codec;
// Where delivery stands is a `meta` row (not a projection: a rebuild keeps it).
use crate::log::keys::MetaKey;
use crate::log::store::{CF_META, Store, StoreError};
use crate::projection::quota::alerts_from;
use crate::stop::{SignalledThread, StopSignal};

const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_POLL: Duration = Duration::from_millis(200);

pub use crate::config::WebhookSettings;

/// `sha256=` and the hex HMAC-SHA256 of `{timestamp}.{body}` under `secret`: what the
/// `X-Tally-Signature` header carries. Binding the timestamp lets receivers refuse replays.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The running delivery thread.
pub struct WebhookDeliverer {
    thread: SignalledThread,
}

impl WebhookDeliverer {
    /// Starts delivering; it stops when `stop` is signalled (see [`WebhookDeliverer::stop`]).
    pub fn start(
        handle: WebhookHandle,
        settings: WebhookSettings,
        stop: StopSignal,
    ) -> std::io::Result<Self> {
        let thread = SignalledThread::spawn("tally-webhook", stop, move |stop| {
            // The blocking client owns a runtime: it is made and dropped on this thread,
            // never inside the server's async context.
            match reqwest::blocking::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
            {
                Ok(client) => run(&handle, &settings, &client, &stop),
                Err(error) => tracing::error!(%error, "cannot start the webhook client"),
            }
        })?;
        Ok(WebhookDeliverer { thread })
    }

    /// Stops after the delivery in hand (its cursor is written if it succeeded).
    pub fn stop(self) {
        self.thread.stop();
    }
}

/// The stored delivery position, `None` when no webhook ever delivered.
fn stored_cursor(store: &Store) -> Result<Option<u64>, StoreError> {
    store
        .get(CF_META, &MetaKey::WebhookCursor.encode())?
        .map(|bytes| {
            codec::decode_u64(&bytes, "webhook cursor").map_err(|source| StoreError::Corrupt {
                cf: CF_META,
                source,
            })
        })
        .transpose()
}

fn read_cursor(store: &Store) -> Result<u64, StoreError> {
    Ok(stored_cursor(store)?.unwrap_or(0))
}

fn write_cursor(store: &Store, next: u64) -> Result<(), StoreError> {
    let mut batch = store.batch();
    batch.put(
        CF_META,
        MetaKey::WebhookCursor.encode(),
        codec::encode_u64(next),
    );
    store.commit(batch, true)
}

/// The delivery position of a format-1 store, moved to format 2's alert positions: it counted
/// the log seqs of alert entries, and alerts are now filed by their trigger
/// ([`crate::quota::alert_position`]). `alert_entries` are the (seq, trigger seq) of those
/// entries. The new position is that of the first alert not yet delivered (ordinal 0 of its
/// trigger: another alert of the same entry may be delivered twice, none is skipped), or past
/// every alert when all were delivered. `None` when no webhook ever delivered.
pub fn migrated_cursor_row(
    store: &Store,
    alert_entries: &[(u64, u64)],
) -> Result<Option<crate::log::store::PutRow>, StoreError> {
    let Some(delivered_before) = stored_cursor(store)? else {
        return Ok(None);
    };
    let first_undelivered = alert_entries
        .iter()
        .filter(|(seq, _)| *seq >= delivered_before)
        .map(|(_, trigger)| *trigger)
        .min();
    let position = match first_undelivered {
        Some(trigger) => crate::quota::alert_position(trigger, 0),
        None => alert_entries
            .iter()
            .map(|(_, trigger)| crate::quota::alert_position(trigger.saturating_add(1), 0))
            .max()
            .unwrap_or(0),
    };
    Ok(Some((
        CF_META,
        MetaKey::WebhookCursor.encode(),
        codec::encode_u64(position).to_vec(),
    )))
}

/// Sleeps up to `duration`, waking early when asked to stop; false when stopping.
fn pause(duration: Duration, stop: &StopSignal) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if stop.is_stopped() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    !stop.is_stopped()
}

fn run(
    handle: &WebhookHandle,
    settings: &WebhookSettings,
    client: &reqwest::blocking::Client,
    stop: &StopSignal,
) {
    let store = &handle.store;
    let mut retry = FIRST_RETRY;
    while !stop.is_stopped() {
        let batch = read_cursor(store).and_then(|cursor| alerts_from(store, cursor, 100));
        let alerts = match batch {
            Ok(alerts) if alerts.is_empty() => {
                pause(IDLE_POLL, stop);
                continue;
            }
            Ok(alerts) => alerts,
            Err(error) => {
                tracing::error!(%error, "cannot read alerts to deliver; retrying");
                pause(LAST_RETRY, stop);
                continue;
            }
        };
        for (seq, alert) in alerts {
            let body = crate::report::alert_json(seq, &alert).to_string();
            // Retry this alert until it is delivered: order is kept and nothing is skipped.
            loop {
                let timestamp = handle.now() / 1_000_000;
                let outcome = client
                    .post(&settings.url)
                    .header("Content-Type", "application/json")
                    .header("X-Tally-Alert-Id", format!("{}/{}", alert.tenant, alert.id))
                    .header("X-Tally-Timestamp", timestamp.to_string())
                    .header(
                        "X-Tally-Signature",
                        signature(settings.secret.as_bytes(), timestamp, body.as_bytes()),
                    )
                    .body(body.clone())
                    .send();
                let failure = match outcome {
                    Ok(response) if response.status().is_success() => None,
                    Ok(response) => Some(format!("the receiver answered {}", response.status())),
                    Err(error) => Some(error.to_string()),
                };
                match failure {
                    None => {
                        handle.metrics.count_webhook("delivered");
                        if let Err(error) = write_cursor(store, seq + 1) {
                            tracing::error!(%error, "cannot store the webhook position");
                        }
                        retry = FIRST_RETRY;
                        break;
                    }
                    Some(reason) => {
                        handle.metrics.count_webhook("failed");
                        tracing::warn!(alert = %alert.id, %reason, retry_in = ?retry, "alert delivery failed");
                        if !pause(retry, stop) {
                            return;
                        }
                        retry = (retry * 2).min(LAST_RETRY);
                    }
                }
            }
            if stop.is_stopped() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::store::StoreOptions;
    use crate::quota::alert_position;

    #[test]
    fn a_migrated_cursor_points_at_the_first_alert_not_yet_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            dedup_horizon: Duration::from_secs(60),
            min_free_disk: 0,
        };
        let store = Store::open(dir.path(), &options).unwrap();
        // Alert entries at seqs 5, 9 and 12, triggered by entries 4, 8 and 8.
        let alerts = [(5, 4), (9, 8), (12, 8)];
        assert_eq!(
            migrated_cursor_row(&store, &alerts).unwrap(),
            None,
            "never delivered"
        );
        let cursor_at = |delivered_before: u64| {
            write_cursor(&store, delivered_before).unwrap();
            let (_, _, value) = migrated_cursor_row(&store, &alerts).unwrap().unwrap();
            codec::decode_u64(&value, "cursor").unwrap()
        };
        // The alert entry at 9 was not delivered: resume at its trigger.
        assert_eq!(cursor_at(6), alert_position(8, 0));
        assert_eq!(cursor_at(0), alert_position(4, 0));
        // Everything delivered: past the last trigger.
        assert_eq!(cursor_at(13), alert_position(9, 0));
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // printf '1.{}' | openssl dgst -sha256 -hmac key
        let signed = signature(b"key", 1, b"{}");
        assert_eq!(
            signed,
            "sha256=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
        assert_ne!(signed, signature(b"key", 2, b"{}"));
        assert_ne!(signed, signature(b"other", 1, b"{}"));
    }
}
