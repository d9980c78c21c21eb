//! Tally: an event-sourced usage metering engine speaking the F5 Distributed Cloud Billing &
//! Usage API.
//!
//! # Map of the crate
//! Pure core (no I/O, no runtime):
//! - [`units`]: fixed-point quantities (micro-units), cents, F5 billable rounding.
//! - [`ids`]: UUID-shaped identifiers.
//! - [`time`]: UTC hours, months and billing periods.
//! - [`event`]: the usage event, its wire forms (Tally JSON, CloudEvents) and validation.
//! - [`catalog`]: meters, plans, addons and prices.
//! - [`projection`]: the folds from log entries into hourly, monthly and current rows.
//! - [`quota`]: quota objects, effective limits, levels and threshold alerts;
//!   [`quota::decide`]: the rules of quota commands.
//! - [`billing`]: subscriptions, periods, plan transitions, payment methods, invoices, PDFs;
//!   [`billing::decide`]: the rules of billing commands, with typed rejections.
//! - [`report`]: rows → F5 response shapes (usage items, cost lines, summaries).
//!
//! Shell:
//! - [`log`]: the append-only log in RocksDB: [`log::format`] (log format v2, the bytes of
//!   every entry, pure), [`log::legacy`] (format 1, read only by `tally migrate`),
//!   [`log::keys`] (every key of every column family, typed), [`log::codec`], [`log::store`],
//!   [`log::append`] (the single writer) and [`log::migrate`] (the log into v2 in place).
//! - [`ingest`]: the Kafka consumer (offsets stored with the events) and `tally produce`.
//! - [`cluster`]: which partitions (so which tenants) this engine owns in a cluster, and
//!   whether they are restored.
//! - [`projection::runner`]: the projector thread: each batch reads the state it touches
//!   first (multi-gets), folds it, and writes its rows with the checkpoint;
//!   [`projection::billing`]: a tenant's billing header and history rows (closed periods,
//!   invoices, decided transitions), of which a fold reads only what its batch needs;
//!   [`projection::quota`], [`projection::read`]: the other projection reads and writes.
//! - [`engine`]: starts and stops the store, writer and projector together; its parts are
//!   reached through narrow handles: [`engine::Status`] (how far, health),
//!   [`engine::IngestHandle`] (event sources), [`engine::WebhookHandle`], and accessors.
//! - [`commands`]: the write side: the one path of every quota, billing and token command
//!   ([`commands::execute`]: turn, basis, decide, append with audit records, apply, answer),
//!   with domain errors a front end maps; a tenant's commands are decided against its
//!   projection, or the state its unfolded facts left, one turn per tenant and kind.
//! - [`api`]: the axum router, whose handlers start from [`api::extract`] (caller, access to
//!   the path's namespace, then the JSON body); [`server`]: serving with graceful shutdown;
//!   [`stop`]: the one stop signal its background tasks obey, and the thread that obeys it.
//! - [`webhook`]: delivers quota alerts to a URL, signed, retried, resumable.
//! - [`replay`]: rebuilds projections from the log into a shadow store and swaps them in;
//!   dry runs on a read-only store; `tally migrate`.
//! - [`backup`]: where backups may be written.
//! - [`audit`]: the record of who changed what.
//! - [`auth`], [`config`], [`metrics`], [`health`].
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

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod billing;
pub mod catalog;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod engine;
pub mod event;
pub mod health;
pub mod ids;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod projection;
pub mod quota;
pub mod replay;
pub mod report;
pub mod server;
pub mod stop;
pub mod time;
pub mod units;
pub mod webhook;
