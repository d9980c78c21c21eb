//! Reads of the billing rows for commands, the API and the billing clock: a tenant's whole
//! state or its header alone, transition owners, and a period's per-meter usage (blocking;
//! async callers use `spawn_blocking`).

use std::collections::BTreeMap;

use super::corrupt;
use crate::billing::TenantBilling;
use crate::catalog::Catalog;
use crate::log::keys;
use crate::log::store::{CF_BILLING, Store, StoreError};
use crate::projection::Aggregate;
use crate::projection::billing_rows::{
    PendingRows, decode_header, decode_invoice, decode_period_row, decode_transition, values_of,
};

/// The tenant's whole billing state: its header and every history row.
pub fn load_tenant(store: &Store, tenant: &str) -> Result<Option<TenantBilling>, StoreError> {
    let Some(mut state) = load_header(store, tenant)? else {
        return Ok(None);
    };
    store.scan_prefix_decoding(
        CF_BILLING,
        &keys::BillingKey::periods(tenant),
        |_, value| {
            let (period, billed) = decode_period_row(value)?;
            state.load_closed_period(period, billed);
            Ok(true)
        },
    )?;
    store.scan_prefix_decoding(
        CF_BILLING,
        &keys::BillingKey::invoices(tenant),
        |_, value| {
            state.invoices.push(decode_invoice(value)?);
            Ok(true)
        },
    )?;
    store.scan_prefix_decoding(
        CF_BILLING,
        &keys::BillingKey::transitions(tenant),
        |_, value| {
            let transition = decode_transition(value)?;
            state.transitions.insert(transition.id.clone(), transition);
            Ok(true)
        },
    )?;
    Ok(Some(state))
}

/// The tenant's billing header alone (plan, open period, payment methods…), no history.
pub fn load_header(store: &Store, tenant: &str) -> Result<Option<TenantBilling>, StoreError> {
    store
        .get(CF_BILLING, &keys::BillingKey::Header { tenant }.encode())?
        .map(|bytes| decode_header(&bytes).map_err(corrupt))
        .transpose()
}

/// Every tenant's billing header (the billing clock's round: open periods only).
pub fn all_headers(store: &Store) -> Result<Vec<TenantBilling>, StoreError> {
    let mut tenants = Vec::new();
    store.scan_prefix_decoding(CF_BILLING, &keys::BillingKey::headers(), |_, value| {
        tenants.push(decode_header(value)?);
        Ok(true)
    })?;
    Ok(tenants)
}

/// The tenant a plan transition belongs to.
pub fn transition_tenant(store: &Store, id: &str) -> Result<Option<String>, StoreError> {
    Ok(store
        .get(
            CF_BILLING,
            &keys::BillingKey::TransitionOwner { id }.encode(),
        )?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// Each meter's value over a period (summed over series), micro-units: stored rows merged
/// with `pending` deltas not yet written.
pub fn period_values(
    store: &Store,
    catalog: &Catalog,
    tenant: &str,
    period_uid: &str,
    pending: &PendingRows,
) -> Result<BTreeMap<String, i128>, StoreError> {
    let prefix = keys::BillingKey::usage_of_period(tenant, period_uid);
    values_under(store, catalog, prefix.len(), &prefix, pending)
}

/// Each meter's value over a period in one namespace (`None`: every namespace), micro-units:
/// the rows the period's invoice bills, so `current_usage` of a billing period and its
/// invoice agree to the unit.
pub fn period_usage(
    store: &Store,
    catalog: &Catalog,
    tenant: &str,
    period_uid: &str,
    namespace: Option<&str>,
) -> Result<BTreeMap<String, i128>, StoreError> {
    let period_len = keys::BillingKey::usage_of_period(tenant, period_uid).len();
    let prefix = match namespace {
        Some(namespace) => keys::BillingKey::usage_of_namespace(tenant, period_uid, namespace),
        None => keys::BillingKey::usage_of_period(tenant, period_uid),
    };
    values_under(store, catalog, period_len, &prefix, &PendingRows::default())
}

/// Per-meter values of the usage rows under `prefix` (which starts with a period prefix of
/// `period_len` bytes) and of the `pending` deltas under it.
fn values_under(
    store: &Store,
    catalog: &Catalog,
    period_len: usize,
    prefix: &[u8],
    pending: &PendingRows,
) -> Result<BTreeMap<String, i128>, StoreError> {
    let rows = rows_under(store, prefix)?;
    Ok(values_of(rows, catalog, period_len, prefix, pending))
}

/// The stored usage rows under `prefix`.
pub(super) fn rows_under(
    store: &Store,
    prefix: &[u8],
) -> Result<BTreeMap<Vec<u8>, Aggregate>, StoreError> {
    let mut rows: BTreeMap<Vec<u8>, Aggregate> = BTreeMap::new();
    store.scan_prefix_decoding(CF_BILLING, prefix, |key, value| {
        rows.insert(key.to_vec(), Aggregate::decode(value)?);
        Ok(true)
    })?;
    Ok(rows)
}
