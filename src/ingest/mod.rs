//! Ingestion adapters beyond HTTP: the Kafka consumer, `tally produce` and `tally drain`.

pub mod drain;
pub mod kafka;
pub mod produce;
pub mod replay;
pub mod watermarks;
