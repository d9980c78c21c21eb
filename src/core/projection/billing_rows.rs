//! A tenant's billing state as rows: the header (plan, open period, addons, payment methods,
//! coupons, waiting transitions, counters) and a row per closed period, invoice and decided
//! transition, each a storage struct of its own shape whatever the domain type becomes; and
//! the per-meter values of a period's usage rows. Pure: the shell reads and writes the rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::Aggregate;
use crate::billing::{
    self, Coupon, Invoice, PaymentMethod, Period, PeriodBilled, TenantBilling, Transition,
    TransitionState,
};
use crate::catalog::Catalog;
use crate::log::codec::{self, CodecError};
use crate::log::keys;
use crate::time::UnixMicros;

/// The header row: what every fold of the tenant and every command reads (storage struct:
/// its own shape, whatever the domain type becomes).
#[derive(Serialize, Deserialize)]
struct StoredHeader {
    tenant: String,
    plan: String,
    subscription_start: UnixMicros,
    open: Period,
    addons: BTreeSet<String>,
    payment_methods: BTreeMap<String, PaymentMethod>,
    coupons: Vec<Coupon>,
    /// Transitions waiting for their verdict; decided ones are history rows.
    waiting: BTreeMap<String, Transition>,
    late_periods: BTreeMap<String, UnixMicros>,
    invoices_issued: u32,
}

/// A closed period's row: the period and what its invoices billed of each meter.
#[derive(Serialize, Deserialize)]
struct StoredPeriod {
    period: Period,
    billed: PeriodBilled,
}

/// Decodes a header row into a state holding no history.
pub fn decode_header(bytes: &[u8]) -> Result<TenantBilling, CodecError> {
    let header: StoredHeader = codec::decode_record(bytes, "billing header")?;
    Ok(TenantBilling {
        tenant: header.tenant,
        plan: header.plan,
        subscription_start: header.subscription_start,
        periods: vec![header.open],
        addons: header.addons,
        transitions: header.waiting,
        payment_methods: header.payment_methods,
        coupons: header.coupons,
        invoices: Vec::new(),
        invoices_issued: header.invoices_issued,
        billed: BTreeMap::new(),
        late_periods: header.late_periods,
    })
}

/// Decodes a closed period's row: the period and what its invoices billed.
pub fn decode_period_row(bytes: &[u8]) -> Result<(Period, PeriodBilled), CodecError> {
    let row: StoredPeriod = codec::decode_record(bytes, "billing period")?;
    Ok((row.period, row.billed))
}

pub fn decode_invoice(bytes: &[u8]) -> Result<Invoice, CodecError> {
    codec::decode_record(bytes, "invoice")
}

pub fn decode_transition(bytes: &[u8]) -> Result<Transition, CodecError> {
    codec::decode_record(bytes, "plan transition")
}

/// The rows `state` is stored as: its header and a row per closed period, invoice and
/// decided transition it holds.
pub fn rows_of(state: &TenantBilling) -> Vec<(Vec<u8>, Vec<u8>)> {
    let tenant = state.tenant.as_str();
    let waiting = |t: &&Transition| t.state == TransitionState::WaitingForApproval;
    let header = StoredHeader {
        tenant: tenant.to_owned(),
        plan: state.plan.clone(),
        subscription_start: state.subscription_start,
        open: state.open_period().clone(),
        addons: state.addons.clone(),
        payment_methods: state.payment_methods.clone(),
        coupons: state.coupons.clone(),
        waiting: state
            .transitions
            .values()
            .filter(waiting)
            .map(|t| (t.id.clone(), t.clone()))
            .collect(),
        late_periods: state.late_periods.clone(),
        invoices_issued: state.invoices_issued,
    };
    let mut rows = vec![(
        keys::BillingKey::Header { tenant }.encode(),
        codec::encode_record(&header),
    )];
    let closed = state
        .periods
        .split_last()
        .map_or(&[][..], |(_, closed)| closed);
    for period in closed {
        let row = StoredPeriod {
            period: period.clone(),
            billed: state.billed.get(&period.uid).cloned().unwrap_or_default(),
        };
        rows.push((
            keys::BillingKey::Period {
                tenant,
                start: period.start,
            }
            .encode(),
            codec::encode_record(&row),
        ));
    }
    for invoice in &state.invoices {
        // Names are made by `issue_invoice` and always end with their number.
        let number = billing::invoice_number(&invoice.name).unwrap_or_default();
        rows.push((
            keys::BillingKey::Invoice { tenant, number }.encode(),
            codec::encode_record(invoice),
        ));
    }
    for transition in state.transitions.values().filter(|t| !waiting(t)) {
        rows.push((
            keys::BillingKey::Transition {
                tenant,
                id: &transition.id,
            }
            .encode(),
            codec::encode_record(transition),
        ));
    }
    rows
}

/// Per-meter values of `rows` (stored usage rows under `prefix`) merged with the `pending`
/// deltas under it.
pub fn values_of(
    mut rows: BTreeMap<Vec<u8>, Aggregate>,
    catalog: &Catalog,
    period_len: usize,
    prefix: &[u8],
    pending: &PendingRows,
) -> BTreeMap<String, i128> {
    // A scan of every pending row, but only when a period closes: once a month a tenant.
    for (key, delta) in pending.iter().filter(|(key, _)| key.starts_with(prefix)) {
        rows.entry(key.to_vec()).or_default().merge(delta);
    }
    let mut values = BTreeMap::new();
    for (key, aggregate) in rows {
        let Some(metric) = keys::BillingKey::usage_metric(&key, period_len) else {
            continue;
        };
        let Some(meter) = catalog.meter(metric) else {
            continue;
        };
        *values.entry(metric.to_owned()).or_insert(0) += aggregate.value(meter.aggregation);
    }
    values
}

/// Usage deltas of a batch not yet written, by `u` row key.
pub type PendingRows = HashMap<Box<[u8]>, Aggregate, foldhash::fast::RandomState>;
