//! Ingestion adapters beyond HTTP: the Kafka consumer and the `tally produce` producer.

pub mod kafka;
pub mod produce;
