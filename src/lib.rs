//! Tally: an event-sourced usage metering engine speaking the F5 Distributed Cloud Billing &
//! Usage API.
//!
//! # Map of the crate
//! The pure core is a crate of its own, [`tally_core`], which depends on no I/O crate: units,
//! ids, time, events, the catalog, identity, quota and billing (their rules and folds), the
//! audit record, the log's facts and bytes (format, codecs, typed keys), the usage folds and
//! the report shapes. Its modules are re-exported here under their own names ([`event`],
//! [`billing`], …), so `tally::event` is `tally_core::event`.
//!
//! This crate is the shell around it:
//! - [`log`]: the append-only log in RocksDB: [`log::store`] (the only module that names
//!   RocksDB), [`log::append`] (the single writer) and [`log::migrate`] (the log into v2 in
//!   place); the core's [`log::format`], [`log::keys`], … are re-exported beside them.
//! - [`projection`]: [`projection::runner`], the projector thread: each batch reads the state
//!   it touches first (multi-gets), folds it with the core's folds, and writes its rows with
//!   the checkpoint; [`projection::billing`]: a tenant's billing header and history rows;
//!   [`projection::quota`], [`projection::read`]: the other projection reads and writes.
//! - [`auth`]: the token set (cached, written through to the store) and the failed-login
//!   limit; the core's [`identity`] types are re-exported there.
//! - [`ingest`]: the one ingest path HTTP and Kafka share (decoding, scope and ownership
//!   checks, outcome counts), the Kafka consumer (offsets stored with the events, a
//!   partition's phases in one state machine) and `tally produce`.
//! - [`kafka`]: Kafka client pieces the consumer, the tools and the cluster share (the
//!   tenant partitioner, bare consumers, high watermarks).
//! - [`cluster`]: which partitions (so which tenants) this engine owns in a cluster, the
//!   changelog and the control topic.
//! - [`engine`]: starts and stops the store, writer and projector together; its parts are
//!   reached through narrow handles: [`engine::Status`] (how far, health),
//!   [`engine::IngestHandle`] (event sources), [`engine::WebhookHandle`], and accessors.
//! - [`commands`]: the write side: the one path of every quota, billing and token command
//!   ([`commands::execute`]: turn, basis, decide, append with audit records, apply, answer),
//!   with domain errors a front end maps; a tenant's commands are decided against its
//!   projection, or the state its unfolded facts left ([`turns`], held by the engine), one
//!   turn per tenant and kind.
//! - [`api`]: the axum router, whose handlers start from [`api::extract`] (caller, access to
//!   the path's namespace, then the JSON body); [`server`]: serving with graceful shutdown;
//!   [`stop`]: the one stop signal its background tasks obey, and the thread that obeys it.
//! - [`webhook`]: delivers quota alerts to a URL, signed, retried, resumable.
//! - [`replay`]: rebuilds projections from the log into a shadow store and swaps them in;
//!   dry runs on a read-only store; `tally migrate`.
//! - [`backup`]: where backups may be written.
//! - [`config`], [`metrics`], [`health`].
//!
//! # Invariants
//! - The log is the truth: projections are rebuilt from it and a fold of the same log gives the
//!   same bytes, whatever the order or batching of its entries. The projector never writes to
//!   the log: what a fold finds (alerts too) is a projection row.
//! - Stored bytes never depend on domain or API types: log entries are per-kind storage
//!   structs in a versioned envelope ([`log::format`]), pinned by golden fixtures.
//! - Appending events, their dedup records and dead letters is one durable write batch;
//!   projection rows and the projector checkpoint are one batch. A crash loses nothing and
//!   counts nothing twice.
//! - No float is summed: quantities are `i64` micro-units, sums `i128`, money `i64` cents.
//! - Input never panics the engine: bad input is answered with the field at fault and kept as
//!   a dead letter.

#![forbid(unsafe_code)]
// Input never panics the engine: no unwrap and no unchecked index outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

pub use tally_core::{audit, billing, catalog, event, identity, ids, quota, report, time, units};

pub mod api;
pub mod auth;
pub mod backup;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod engine;
pub mod health;
pub mod ingest;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod projection;
pub mod replay;
pub mod server;
pub mod stop;
pub mod turns;
pub mod webhook;
