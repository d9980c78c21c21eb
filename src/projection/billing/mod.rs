//! The billing projection in RocksDB: each tenant's billing header, its history rows (closed
//! periods, invoices, decided transitions), per-period usage rows, and the fold that keeps
//! them (usage attributed to its billing period; a closing period issues its invoice, with
//! adjustments for late usage of invoiced periods).
//!
//! A fold reads a tenant's header and only the history rows its batch needs, all before the
//! fold: no batch decodes a tenant's whole history.
//!
//! The rows' shapes are the core's ([`tally_core::projection::billing_rows`]); [`fold`] keeps
//! them, [`read`] answers from them (reads load every row).

use crate::log::codec::CodecError;
use crate::log::store::{CF_BILLING, StoreError};

pub mod fold;
pub mod read;

pub use fold::{BillingFold, PlanChange};
pub use read::*;
pub use tally_core::projection::billing_rows::{
    PendingRows, decode_header, decode_invoice, decode_period_row, decode_transition,
};

fn corrupt(source: CodecError) -> StoreError {
    StoreError::Corrupt {
        cf: CF_BILLING,
        source,
    }
}
