//! The append-only log in RocksDB: the store ([`store`]), the single writer that appends
//! ([`append`]), the dedup horizon it forgets ids below ([`horizon`]) and `tally migrate` ([`migrate`]). The facts and their bytes are the pure
//! core's ([`tally_core::log`]), re-exported here.

pub use tally_core::log::*;

pub mod append;
pub mod horizon;
pub mod migrate;
pub mod store;
