//! Ingestion: [`path`], the one path every event source takes into the log (HTTP ingest
//! included); the Kafka consumer, `tally replay`, `tally produce` and `tally drain`.

pub mod drain;
pub mod kafka;
pub(crate) mod path;
pub mod produce;
pub mod replay;
