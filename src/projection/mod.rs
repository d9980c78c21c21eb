//! Projections in RocksDB: the projector thread ([`runner`]), the billing and quota rows it
//! keeps ([`billing`], [`quota`]) and the reads the API answers from ([`read`]). The folds
//! themselves are the pure core's ([`tally_core::projection`]), re-exported here.

pub use tally_core::projection::*;

pub mod billing;
pub mod quota;
pub mod read;
pub mod runner;
