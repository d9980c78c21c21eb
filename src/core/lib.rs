//! Tally's pure core: what a usage metering engine knows without touching a disk, a socket or
//! a clock it was not handed. It depends on no storage, runtime, HTTP or Kafka crate, so the
//! compiler keeps it pure, and its tests build without RocksDB.
//!
//! # Map of the crate, from the bottom up
//! - [`units`]: fixed-point quantities (micro-units), cents, F5 billable rounding.
//! - [`ids`]: UUID-shaped identifiers.
//! - [`time`]: UTC hours, months and billing periods.
//! - [`catalog`]: meters, plans, addons and prices.
//! - [`event`]: the usage event, its wire forms (Tally JSON, CloudEvents) and validation.
//! - [`identity`]: roles, callers and token records (hashed secrets), and their stored form.
//! - [`quota`]: quota objects, effective limits, levels and threshold alerts.
//! - [`billing`]: subscriptions, periods, plan transitions, payment methods, invoices, PDFs.
//! - [`audit`]: the record of who changed what.
//! - [`log`]: the facts ([`log::LogEntry`]) and their bytes: log format v2 ([`log::format`]),
//!   the format-1 reader ([`log::legacy`]), value codecs ([`log::codec`]) and the key of
//!   every row of every column family ([`log::keys`]).
//! - [`quota::decide`], [`billing::decide`]: the rules of quota and billing commands, each a
//!   pure function from a tenant's state and a command to facts or a typed rejection;
//!   [`quota::fold`], [`billing::apply`] and [`projection`]: the folds of facts into state and
//!   rows.
//! - [`report`]: rows → F5 response shapes (usage items, cost lines, summaries).
//!
//! # Invariants
//! - A fold of the same facts gives the same bytes, whatever their order or batching.
//! - Stored bytes never depend on domain or API types: log entries are per-kind storage
//!   structs in a versioned envelope ([`log::format`]), pinned by golden fixtures.
//! - No float is summed: quantities are `i64` micro-units, sums `i128`, money `i64` cents.
//! - Input never panics: bad input is answered with the field at fault.

#![forbid(unsafe_code)]
// Input never panics the engine: no unwrap and no unchecked index outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod audit;
pub mod billing;
pub mod catalog;
pub mod event;
pub mod identity;
pub mod ids;
pub mod log;
pub mod projection;
pub mod quota;
pub mod report;
pub mod time;
pub mod units;
