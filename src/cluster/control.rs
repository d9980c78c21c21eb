//! The cluster's control topic, `<topic>.tally-control` (one partition): where each engine
//! says at which URL it answers and which partitions it owns (the address book requests are
//! forwarded by), and where token changes go, so every engine verifies every token.
//!
//! Kafka's group protocol would carry the URL in the member's metadata, but librdkafka sets
//! that metadata itself and Tansu's DescribeGroups returns member ids only; a compact topic
//! every engine reads from its start does the same with what both support. Records are JSON
//! with a version, never a Rust type's bincode.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Ownership;
use crate::auth::TokenChange;
use crate::stop::{SignalledThread, StopSignal};

/// Why a control record could not be published.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the control topic did not confirm the change in time")]
    Timeout,
    #[error("cannot start the control thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The control topic of a source topic.
pub fn control_topic(topic: &str) -> String {
    format!("{topic}.tally-control")
}

/// One control record, as stored (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ControlRecordV1 {
    /// An engine's address and the partitions it owns now (a later record replaces it).
    Member {
        instance: String,
        url: Option<String>,
        partitions: Vec<i32>,
    },
    /// A token issued: its stored form (hash and salt, never the secret), base64.
    TokenPut {
        token: String,
    },
    TokenRevoked {
        id: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    record: ControlRecordV1,
}

fn encode(record: ControlRecordV1) -> Vec<u8> {
    serde_json::to_vec(&Envelope { v: 1, record }).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Result<ControlRecordV1, String> {
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if envelope.v != 1 {
        return Err(format!("unknown control record version {}", envelope.v));
    }
    Ok(envelope.record)
}

/// What an engine last said of itself: the offset of its record, its URL, its partitions.
struct Claim {
    offset: i64,
    /// When it was said (the record's timestamp, ms since the epoch).
    at_millis: i64,
    url: Option<String>,
    partitions: BTreeSet<i32>,
}

impl Claim {
    /// Whether its engine still announced itself lately (each does every
    /// [`ANNOUNCE_AGAIN`]): an engine that died is forgotten after three missed rounds.
    fn alive(&self, now_millis: i64) -> bool {
        let silence = i64::try_from(ANNOUNCE_AGAIN.as_millis() * 3).unwrap_or(i64::MAX);
        now_millis.saturating_sub(self.at_millis) < silence
    }
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Which engine owns which partition, as the control topic last said.
#[derive(Default)]
pub struct AddressBook {
    /// Per engine instance, its latest claim.
    members: Mutex<HashMap<String, Claim>>,
}

impl AddressBook {
    fn record(&self, at: (i64, i64), instance: String, url: Option<String>, partitions: Vec<i32>) {
        let (offset, at_millis) = at;
        if let Ok(mut members) = self.members.lock() {
            let partitions = partitions.into_iter().collect();
            members.insert(
                instance,
                Claim {
                    offset,
                    at_millis,
                    url,
                    partitions,
                },
            );
        }
    }

    /// Every URL engines announced, but `own`'s, in order.
    pub fn urls_but(&self, own: Option<&str>) -> Vec<String> {
        let Ok(members) = self.members.lock() else {
            return Vec::new();
        };
        let now = now_millis();
        let urls: BTreeSet<String> = members
            .values()
            .filter(|claim| claim.alive(now))
            .filter_map(|claim| claim.url.clone())
            .filter(|url| Some(url.as_str()) != own)
            .collect();
        urls.into_iter().collect()
    }

    /// The URL of the engine that most recently said it owns `partition`.
    pub fn owner_url(&self, partition: i32) -> Option<String> {
        let members = self.members.lock().ok()?;
        let now = now_millis();
        members
            .values()
            .filter(|claim| claim.alive(now) && claim.partitions.contains(&partition))
            .max_by_key(|claim| claim.offset)
            .and_then(|claim| claim.url.clone())
    }
}

/// An engine's handle on the control topic.
pub struct Control {
    producer: FutureProducer,
    topic: String,
    book: Arc<AddressBook>,
    /// The offset below which every control record has been applied here.
    applied: watch::Receiver<i64>,
    /// The URL this engine answers at (`--advertise`), if it said one.
    pub url: Option<String>,
}

/// What the control thread needs.
pub struct ControlSettings {
    pub brokers: String,
    pub source_topic: String,
    /// Who this engine is in the address book (its `--instance-id`, or one drawn at start).
    pub instance: String,
    pub url: Option<String>,
}

/// How often the control thread compares the partitions owned with those it announced.
const ANNOUNCE_CHECK: Duration = Duration::from_millis(250);

/// How often an engine says again what it owns, changed or not.
const ANNOUNCE_AGAIN: Duration = Duration::from_secs(30);

impl Control {
    /// Reads the control topic from its start on a thread of its own (applying token changes
    /// to `tokens`, addresses to the book), and announces this engine's partitions whenever
    /// they change.
    pub fn start(
        settings: ControlSettings,
        tokens: Arc<dyn Fn(&TokenChange) + Send + Sync>,
        ownership: Arc<Ownership>,
        stop: StopSignal,
    ) -> Result<(Arc<Control>, SignalledThread), ControlError> {
        let topic = control_topic(&settings.source_topic);
        let producer: FutureProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()?;
        let consumer = crate::kafka::bare_consumer(
            &settings.brokers,
            &format!("tally-control-{}", settings.instance),
        )?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let book = Arc::new(AddressBook::default());
        let (applied_tx, applied) = watch::channel(0i64);
        let control = Arc::new(Control {
            producer,
            topic: topic.clone(),
            book: book.clone(),
            applied,
            url: settings.url.clone(),
        });
        let announcer = control.clone();
        let thread = SignalledThread::spawn("tally-control", stop, move |stop| {
            let mut announced: Option<(Vec<i32>, Instant)> = None;
            while !stop.is_stopped() {
                let owned: Vec<i32> = ownership.owned(0).iter().map(|p| p.partition).collect();
                let due = announced.as_ref().is_none_or(|(partitions, at)| {
                    *partitions != owned || at.elapsed() > ANNOUNCE_AGAIN
                });
                if due {
                    announcer.announce(&settings.instance, owned.clone());
                    announced = Some((owned, Instant::now()));
                }
                let deadline = Instant::now() + ANNOUNCE_CHECK;
                while let Some(polled) = consumer.poll(Duration::from_millis(50)) {
                    match polled {
                        Ok(message) => {
                            let offset = message.offset();
                            match decode(message.payload().unwrap_or(&[])) {
                                Ok(ControlRecordV1::Member {
                                    instance,
                                    url,
                                    partitions,
                                }) => {
                                    let at =
                                        message.timestamp().to_millis().unwrap_or_else(now_millis);
                                    book.record((offset, at), instance, url, partitions)
                                }
                                Ok(ControlRecordV1::TokenPut { token }) => {
                                    match STANDARD
                                        .decode(token)
                                        .map_err(|e| e.to_string())
                                        .and_then(|bytes| {
                                            crate::auth::decode_token(&bytes)
                                                .map_err(|e| e.to_string())
                                        }) {
                                        Ok(record) => tokens(&TokenChange::Put(record)),
                                        Err(error) => {
                                            tracing::warn!(offset, %error, "a token in the control topic cannot be read; skipped")
                                        }
                                    }
                                }
                                Ok(ControlRecordV1::TokenRevoked { id }) => {
                                    tokens(&TokenChange::Delete(id))
                                }
                                Err(error) => {
                                    tracing::warn!(offset, %error, "unreadable control record; skipped")
                                }
                            }
                            applied_tx.send_replace(offset + 1);
                        }
                        Err(error) => tracing::warn!(%error, "cannot read the control topic"),
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        })?;
        Ok((control, thread))
    }

    /// Says which partitions this engine owns, without waiting for the broker (the next
    /// announcement repeats it).
    fn announce(&self, instance: &str, partitions: Vec<i32>) {
        let payload = encode(ControlRecordV1::Member {
            instance: instance.to_owned(),
            url: self.url.clone(),
            partitions,
        });
        let record: FutureRecord<'_, (), Vec<u8>> =
            FutureRecord::to(&self.topic).partition(0).payload(&payload);
        if let Err((error, _)) = self.producer.send_result(record) {
            tracing::warn!(%error, "cannot announce the owned partitions");
        }
    }

    /// Publishes a token change and waits until it is applied here, so the token works (or
    /// stops working) on this engine when this returns, and on the others once they read it.
    pub async fn publish_token(&self, change: &TokenChange) -> Result<(), ControlError> {
        let payload = encode(match change {
            TokenChange::Put(record) => ControlRecordV1::TokenPut {
                token: STANDARD.encode(crate::auth::encode_token(record)),
            },
            TokenChange::Delete(id) => ControlRecordV1::TokenRevoked { id: id.clone() },
        });
        let record: FutureRecord<'_, (), Vec<u8>> =
            FutureRecord::to(&self.topic).partition(0).payload(&payload);
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(error, _)| ControlError::Kafka(error))?;
        let delivered = tokio::time::timeout(PUBLISH_WAIT, delivery)
            .await
            .map_err(|_| ControlError::Timeout)?
            .map_err(|_| ControlError::Timeout)?
            .map_err(|(error, _)| ControlError::Kafka(error))?;
        if !self.wait_applied(delivered.offset + 1, PUBLISH_WAIT).await {
            return Err(ControlError::Timeout);
        }
        Ok(())
    }

    /// The offset below which every control record has been applied here.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Waits until every control record below `offset` is applied here; `false` after
    /// `timeout`.
    pub async fn wait_applied(&self, offset: i64, timeout: Duration) -> bool {
        let mut applied = self.applied.clone();
        matches!(
            tokio::time::timeout(timeout, applied.wait_for(|at| *at >= offset)).await,
            Ok(Ok(_))
        )
    }

    /// The URLs of the other engines, as the control topic last said (engines that left
    /// included: asking one fails and is skipped).
    pub fn other_urls(&self) -> Vec<String> {
        self.book.urls_but(self.url.as_deref())
    }

    /// The URL of the engine that owns `partition`, as the control topic last said.
    pub fn owner_url(&self, partition: i32) -> Option<String> {
        self.book.owner_url(partition)
    }
}

/// How long a token change waits for the control topic.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_the_newest_claim_on_a_partition_wins() {
        let member = ControlRecordV1::Member {
            instance: "a".into(),
            url: Some("http://127.0.0.1:1".into()),
            partitions: vec![0, 1],
        };
        let bytes = encode(member.clone());
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"v":1,"kind":"member","instance":"a","url":"http://127.0.0.1:1","partitions":[0,1]}"#
        );
        assert_eq!(decode(&bytes).unwrap(), member);
        assert!(
            decode(br#"{"v":2,"kind":"token_revoked","id":"x"}"#)
                .unwrap_err()
                .contains("version 2")
        );
        assert!(decode(b"{").is_err());

        let book = AddressBook::default();
        let now = now_millis();
        book.record((0, now), "a".into(), Some("http://a".into()), vec![0, 1]);
        book.record((1, now), "b".into(), Some("http://b".into()), vec![1, 2]);
        assert_eq!(book.owner_url(0).as_deref(), Some("http://a"));
        assert_eq!(
            book.owner_url(1).as_deref(),
            Some("http://b"),
            "the later claim"
        );
        // `b` gives partition 1 up: `a`'s older claim is all that is left.
        book.record((2, now), "b".into(), Some("http://b".into()), vec![2]);
        assert_eq!(book.owner_url(1).as_deref(), Some("http://a"));
        assert_eq!(book.owner_url(3), None);
        assert_eq!(book.urls_but(Some("http://a")), ["http://b"]);
        // An engine silent for three rounds is taken for dead.
        book.record(
            (3, now - 91_000),
            "c".into(),
            Some("http://c".into()),
            vec![3],
        );
        assert_eq!(book.owner_url(3), None);
        assert_eq!(book.urls_but(None), ["http://a", "http://b"]);
    }
}
