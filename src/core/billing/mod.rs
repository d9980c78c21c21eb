//! Billing, pure: subscriptions and billing periods, plan transitions, addons, payment
//! methods, coupons and invoices, as a per-tenant state folded from [`BillingChange`] entries.
//!
//! Usage reaches invoices through per-period usage rows (kept by the projection); closing a
//! period turns them into priced lines with [`usage_lines`]. Nothing here does I/O.

pub mod decide;
pub mod pdf;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, PeriodUnit, Plan};
use crate::time::{self, UnixMicros};
use crate::units;

const MICROS_PER_DAY: i64 = 86_400 * time::MICROS_PER_SECOND;

/// One billing fact, recorded in the log for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BillingChange {
    /// A plan transition was asked for (validated already); it finishes at once unless the
    /// target plan needs approval.
    TransitionRequested {
        id: String,
        to_plan: String,
        requires_approval: bool,
        addons: Vec<String>,
        /// Shown in the transition's record; never a payment token.
        domain: String,
    },
    TransitionApproved {
        id: String,
        by: String,
    },
    TransitionRejected {
        id: String,
        by: String,
        reason: String,
    },
    AddonSubscribed {
        addon: String,
    },
    AddonUnsubscribed {
        addon: String,
    },
    PaymentMethodAdded {
        name: String,
        role: PaymentRole,
        /// The provider token as given: stored, never returned.
        token: String,
        contact: BTreeMap<String, String>,
    },
    PaymentMethodRole {
        name: String,
        role: PaymentRole,
    },
    PaymentMethodsSwapped,
    PaymentMethodDeleted {
        name: String,
    },
    CouponGranted {
        coupon: Coupon,
    },
    /// The engine's clock passed the open period's end (appended once per period).
    PeriodClosed {
        period_uid: String,
    },
    InvoicePaid {
        invoice: String,
        by: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentRole {
    Primary,
    Secondary,
    Normal,
}

/// F5 `usageCoupon`: a fixed amount in cents, or a percentage in 0.01 % steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub title: String,
    pub kind: DiscountKind,
    pub amount: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiscountKind {
    FixedAmount,
    Percentage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransitionState {
    Creating,
    WaitingForApproval,
    Finished,
    Failed,
}

impl TransitionState {
    pub fn f5_name(self) -> &'static str {
        match self {
            TransitionState::Creating => "STATE_CREATING",
            TransitionState::WaitingForApproval => "STATE_WAITING_FOR_APPROVAL",
            TransitionState::Finished => "STATE_FINISHED",
            TransitionState::Failed => "STATE_FAILED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub id: String,
    pub from_plan: String,
    pub to_plan: String,
    pub state: TransitionState,
    pub reason: String,
    pub requested_at: UnixMicros,
    pub decided_at: Option<UnixMicros>,
    pub addons: Vec<String>,
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethod {
    pub name: String,
    pub role: PaymentRole,
    pub token: String,
    pub contact: BTreeMap<String, String>,
    pub created_at: UnixMicros,
}

/// One billing period of a subscription: `[start, end)`; `end` is the renewal boundary until
/// a transition closes it earlier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub uid: String,
    pub plan: String,
    pub start: UnixMicros,
    pub end: UnixMicros,
    pub closed: bool,
    pub invoice: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineKind {
    FlatPrice,
    Usage,
    Adjustment,
    Discount,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub description: String,
    pub metric_label: String,
    /// Billable units (usage, adjustments); 0 otherwise.
    pub quantity: i128,
    pub unit_price: i64,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub name: String,
    pub period_uid: String,
    pub plan: String,
    pub period_start: UnixMicros,
    pub period_end: UnixMicros,
    pub issued_at: UnixMicros,
    pub due_at: UnixMicros,
    pub paid_at: Option<UnixMicros>,
    pub lines: Vec<InvoiceLine>,
    pub total: i64,
    pub currency: String,
}

/// What billing knows of one tenant: its header (plan, open period, addons, payment
/// methods, coupons, transitions waiting for a verdict, counters) and the part of its history
/// (closed periods, invoices, decided transitions) this value holds.
///
/// The projection stores the header as one small row and each closed period, invoice and
/// decided transition as a row of its own (`tally::projection::billing`): a fold loads the
/// header and only the history rows its batch needs, while reads load all of it. Every rule
/// here holds on such a partial state: the open period is always the last of `periods`,
/// invoices are numbered by `invoices_issued`, and the first period is found by
/// `subscription_start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantBilling {
    pub tenant: String,
    pub plan: String,
    pub subscription_start: UnixMicros,
    /// Oldest first; the last one is open. The closed ones are those loaded (all of them in a
    /// read, those a batch needs in a fold).
    pub periods: Vec<Period>,
    pub addons: BTreeSet<String>,
    pub transitions: BTreeMap<String, Transition>,
    pub payment_methods: BTreeMap<String, PaymentMethod>,
    /// Granted and not yet used: applied to the next invoice.
    pub coupons: Vec<Coupon>,
    /// The loaded invoices, oldest first.
    pub invoices: Vec<Invoice>,
    /// How many invoices the tenant was ever issued (the next one's number is one more).
    pub invoices_issued: u32,
    /// Usage billed so far per loaded closed period and meter (units, cents), to bill late
    /// usage as adjustments.
    pub billed: BTreeMap<String, PeriodBilled>,
    /// Closed periods that received usage after their invoice: uid → start.
    pub late_periods: BTreeMap<String, UnixMicros>,
}

/// A period's id: deterministic from tenant and start, in UUID form (the spec's `uid`).
pub fn period_uid(tenant: &str, start: UnixMicros) -> String {
    crate::ids::derived_uuid(&format!("{tenant}\0{start}"))
}

/// The renewal boundaries around `at`: the last one at or before it and the next after it.
pub fn renewal_window(unit: PeriodUnit, at: UnixMicros) -> (UnixMicros, UnixMicros) {
    match unit {
        PeriodUnit::PERIOD_DAY => {
            let start = at.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
            (start, start + MICROS_PER_DAY)
        }
        PeriodUnit::PERIOD_WEEK => {
            // 1970-01-01 was a Thursday: weeks start on Monday, 4 days later.
            let offset = 4 * MICROS_PER_DAY;
            let week = 7 * MICROS_PER_DAY;
            let start = (at - offset).div_euclid(week) * week + offset;
            (start, start + week)
        }
        PeriodUnit::PERIOD_MONTH => {
            let month = time::month_index(at);
            (time::month_start(month), time::month_start(month + 1))
        }
        PeriodUnit::PERIOD_YEAR => {
            let month = time::month_index(at);
            let january = month - month % 12;
            (time::month_start(january), time::month_start(january + 12))
        }
    }
}

impl TenantBilling {
    /// A tenant seen for the first time at `at`: on the default plan, in the period around it.
    pub fn new(tenant: &str, catalog: &Catalog, at: UnixMicros) -> TenantBilling {
        let plan = catalog.default_plan();
        let (start, end) = renewal_window(plan.renewal_period_unit, at);
        TenantBilling {
            tenant: tenant.to_owned(),
            plan: plan.name.clone(),
            subscription_start: start,
            periods: vec![Period {
                uid: period_uid(tenant, start),
                plan: plan.name.clone(),
                start,
                end,
                closed: false,
                invoice: None,
            }],
            addons: plan.included_addon_services.iter().cloned().collect(),
            transitions: BTreeMap::new(),
            payment_methods: BTreeMap::new(),
            coupons: Vec::new(),
            invoices: Vec::new(),
            invoices_issued: 0,
            billed: BTreeMap::new(),
            late_periods: BTreeMap::new(),
        }
    }

    /// The open period. A tenant always has one: `new` creates it, closing always opens the
    /// next, and a stored state without one is refused as damaged when decoded.
    #[allow(clippy::indexing_slicing)]
    pub fn open_period(&self) -> &Period {
        &self.periods[self.periods.len() - 1]
    }

    /// The open period, to change (see [`TenantBilling::open_period`]).
    #[allow(clippy::indexing_slicing)]
    fn open_period_mut(&mut self) -> &mut Period {
        let last = self.periods.len() - 1;
        &mut self.periods[last]
    }

    /// The transition waiting for approval, if any.
    pub fn pending_transition(&self) -> Option<&Transition> {
        self.transitions
            .values()
            .find(|t| t.state == TransitionState::WaitingForApproval)
    }

    /// The period a usage event at `at` belongs to: the one containing it, the first for
    /// anything older, and for anything past the open period the one that will follow it.
    /// That closed period must be loaded ([`TenantBilling::unloaded_period_at`]).
    pub fn period_for(&self, at: UnixMicros, catalog: &Catalog) -> PeriodOf<'_> {
        if let Some(period) = self
            .periods
            .iter()
            .find(|p| p.start <= at && at < p.end)
            .or_else(|| {
                self.periods
                    .iter()
                    .find(|p| p.start == self.subscription_start)
                    .filter(|p| at < p.start)
            })
        {
            return PeriodOf {
                uid: std::borrow::Cow::Borrowed(&period.uid),
                start: period.start,
                invoiced: period.invoice.is_some(),
            };
        }
        let open = self.open_period();
        let unit = catalog
            .plan(&self.plan)
            .map_or(PeriodUnit::PERIOD_MONTH, |p| p.renewal_period_unit);
        let start = renewal_window(unit, at).0.max(open.end);
        PeriodOf {
            uid: std::borrow::Cow::Owned(period_uid(&self.tenant, start)),
            start,
            invoiced: false,
        }
    }

    /// Where the closed period holding usage at `at` starts at the latest, when this state
    /// has not loaded it: the history row to look up before [`TenantBilling::period_for`].
    pub fn unloaded_period_at(&self, at: UnixMicros) -> Option<UnixMicros> {
        let at = at.max(self.subscription_start);
        let loaded = self.periods.iter().any(|p| p.start <= at && at < p.end);
        (at < self.open_period().start && !loaded).then_some(at)
    }

    /// Adds a closed period read from the history, with what its invoices billed (kept in
    /// start order, the open period last; one already held is left as it is).
    pub fn load_closed_period(&mut self, period: Period, billed: PeriodBilled) {
        if period.start >= self.open_period().start
            || self.periods.iter().any(|p| p.start == period.start)
        {
            return;
        }
        let at = self.periods.partition_point(|p| p.start < period.start);
        self.billed.insert(period.uid.clone(), billed);
        self.periods.insert(at, period);
    }

    /// Adds an invoice read from the history (kept in issue order; one held is left alone).
    pub fn load_invoice(&mut self, invoice: Invoice) {
        if self.invoices.iter().any(|i| i.name == invoice.name) {
            return;
        }
        let number = invoice_number(&invoice.name);
        let at = self
            .invoices
            .partition_point(|i| invoice_number(&i.name) < number);
        self.invoices.insert(at, invoice);
    }
}

/// What a period's invoices billed, per meter: (units, cents).
pub type PeriodBilled = BTreeMap<String, (i128, i64)>;

/// The period usage at some time is billed in (see [`TenantBilling::period_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodOf<'a> {
    /// Borrowed from the state for a period it holds (the common case: no allocation per
    /// event), owned for one that will follow the open period.
    pub uid: std::borrow::Cow<'a, str>,
    pub start: UnixMicros,
    /// Its invoice was issued already: the usage is late, billed as an adjustment.
    pub invoiced: bool,
}

/// The number an invoice's name ends with (`inv-202603-0007` → 7): the order of issue.
pub fn invoice_number(name: &str) -> Option<u32> {
    name.rsplit_once('-')?.1.parse().ok()
}

/// What folding one change produced besides the new state.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// A period closed: issue its invoice from its usage (the caller reads the rows).
    pub closed_period: Option<Period>,
    /// The tenant's plan changed (quota limits follow it).
    pub plan_changed: bool,
}

/// Folds one change into the tenant's state. `at` is the entry's time. Invalid changes (which
/// the API refuses before appending) leave the state as it is.
pub fn apply(
    state: &mut TenantBilling,
    change: &BillingChange,
    at: UnixMicros,
    catalog: &Catalog,
) -> Applied {
    let mut applied = Applied::default();
    match change {
        BillingChange::TransitionRequested {
            id,
            to_plan,
            requires_approval,
            addons,
            domain,
        } => {
            let mut transition = Transition {
                id: id.clone(),
                from_plan: state.plan.clone(),
                to_plan: to_plan.clone(),
                state: TransitionState::Creating,
                reason: String::new(),
                requested_at: at,
                decided_at: None,
                addons: addons.clone(),
                domain: domain.clone(),
            };
            if *requires_approval {
                transition.state = TransitionState::WaitingForApproval;
                state.transitions.insert(id.clone(), transition);
            } else {
                state.transitions.insert(id.clone(), transition);
                applied = finish_transition(state, id, at, catalog);
            }
        }
        BillingChange::TransitionApproved { id, .. } => {
            if state.transitions.get(id).map(|t| t.state)
                == Some(TransitionState::WaitingForApproval)
            {
                applied = finish_transition(state, id, at, catalog);
            }
        }
        BillingChange::TransitionRejected { id, reason, .. } => {
            if let Some(transition) = state.transitions.get_mut(id)
                && transition.state == TransitionState::WaitingForApproval
            {
                transition.state = TransitionState::Failed;
                transition.reason = reason.clone();
                transition.decided_at = Some(at);
            }
        }
        BillingChange::AddonSubscribed { addon } => {
            state.addons.insert(addon.clone());
        }
        BillingChange::AddonUnsubscribed { addon } => {
            state.addons.remove(addon);
        }
        BillingChange::PaymentMethodAdded {
            name,
            role,
            token,
            contact,
        } => {
            demote(state, *role);
            state.payment_methods.insert(
                name.clone(),
                PaymentMethod {
                    name: name.clone(),
                    role: *role,
                    token: token.clone(),
                    contact: contact.clone(),
                    created_at: at,
                },
            );
        }
        BillingChange::PaymentMethodRole { name, role } => {
            if state.payment_methods.contains_key(name) {
                demote(state, *role);
                if let Some(method) = state.payment_methods.get_mut(name) {
                    method.role = *role;
                }
            }
        }
        BillingChange::PaymentMethodsSwapped => {
            for method in state.payment_methods.values_mut() {
                method.role = match method.role {
                    PaymentRole::Primary => PaymentRole::Secondary,
                    PaymentRole::Secondary => PaymentRole::Primary,
                    PaymentRole::Normal => PaymentRole::Normal,
                };
            }
        }
        BillingChange::PaymentMethodDeleted { name } => {
            state.payment_methods.remove(name);
        }
        BillingChange::CouponGranted { coupon } => state.coupons.push(coupon.clone()),
        BillingChange::PeriodClosed { period_uid } => {
            if state.open_period().uid == *period_uid {
                applied.closed_period = Some(close_open_period(state, None, catalog));
            }
        }
        BillingChange::InvoicePaid { invoice, .. } => {
            if let Some(invoice) = state.invoices.iter_mut().find(|i| i.name == *invoice) {
                invoice.paid_at.get_or_insert(at);
            }
        }
    }
    applied
}

/// A primary or secondary role is held by one method: the previous holder becomes normal.
fn demote(state: &mut TenantBilling, role: PaymentRole) {
    if role == PaymentRole::Normal {
        return;
    }
    for method in state.payment_methods.values_mut() {
        if method.role == role {
            method.role = PaymentRole::Normal;
        }
    }
}

/// Closes the open period (at `at`, or at its own end) and opens the next on the current plan.
fn close_open_period(
    state: &mut TenantBilling,
    at: Option<UnixMicros>,
    catalog: &Catalog,
) -> Period {
    let tenant = state.tenant.clone();
    let plan_name = state.plan.clone();
    let unit = catalog
        .plan(&plan_name)
        .map_or(PeriodUnit::PERIOD_MONTH, |p| p.renewal_period_unit);
    let open = state.open_period_mut();
    if let Some(at) = at {
        open.end = at.clamp(open.start, open.end);
    }
    open.closed = true;
    let closed = open.clone();
    let next_start = closed.end;
    let (_, next_end) = renewal_window(unit, next_start);
    state.periods.push(Period {
        uid: period_uid(&tenant, next_start),
        plan: plan_name,
        start: next_start,
        end: next_end,
        closed: false,
        invoice: None,
    });
    closed
}

fn finish_transition(
    state: &mut TenantBilling,
    id: &str,
    at: UnixMicros,
    catalog: &Catalog,
) -> Applied {
    let Some(to_plan) = state.transitions.get(id).map(|t| t.to_plan.clone()) else {
        return Applied::default();
    };
    let Some(plan) = catalog.plan(&to_plan) else {
        if let Some(transition) = state.transitions.get_mut(id) {
            transition.state = TransitionState::Failed;
            transition.reason = format!("plan `{to_plan}` is no longer in the catalog");
            transition.decided_at = Some(at);
        }
        return Applied::default();
    };
    // The old plan's period ends now; the new plan's starts now, to its renewal boundary.
    let closed = close_open_period(state, Some(at), catalog);
    state.plan = to_plan.clone();
    let (_, end) = renewal_window(plan.renewal_period_unit, at);
    let open = state.open_period_mut();
    open.plan = to_plan;
    open.end = end;
    let extra = state
        .transitions
        .get(id)
        .map(|t| t.addons.clone())
        .unwrap_or_default();
    state.addons = plan
        .included_addon_services
        .iter()
        .cloned()
        .chain(extra)
        .chain(
            state
                .addons
                .iter()
                .filter(|a| plan.allowed_addon_services.contains(a))
                .cloned()
                .collect::<Vec<_>>(),
        )
        .collect();
    if let Some(transition) = state.transitions.get_mut(id) {
        transition.state = TransitionState::Finished;
        transition.decided_at = Some(at);
    }
    Applied {
        closed_period: Some(closed),
        plan_changed: true,
    }
}

/// `amount × numerator / denominator`, rounded half up, in integers.
fn prorate(amount: i64, numerator: i64, denominator: i64) -> i64 {
    if denominator <= 0 {
        return 0;
    }
    let scaled = i128::from(amount) * i128::from(numerator) * 2 + i128::from(denominator);
    let rounded = scaled.div_euclid(i128::from(denominator) * 2);
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

/// The flat price of `plan` for `[start, end)`: prorated by the second over its renewal
/// period.
pub fn flat_price(plan: &Plan, start: UnixMicros, end: UnixMicros) -> i64 {
    let (window_start, window_end) = renewal_window(plan.renewal_period_unit, start);
    let seconds = |micros: i64| micros / time::MICROS_PER_SECOND;
    prorate(
        plan.flat_price,
        seconds(end - start),
        seconds(window_end - window_start),
    )
}

/// Usage lines of a period: per meter with usage, billable units × the plan's price.
/// `values` are each meter's period value in micro-units (summed over series).
pub fn usage_lines(
    plan: &Plan,
    values: &BTreeMap<String, i128>,
    catalog: &Catalog,
) -> Vec<InvoiceLine> {
    values
        .iter()
        .filter_map(|(metric, &raw)| {
            let meter = catalog.meter(metric)?;
            let quantity = units::billable_units(raw, meter.division_factor);
            if quantity == 0 {
                return None;
            }
            let price = catalog.price(plan, metric);
            Some(InvoiceLine {
                kind: LineKind::Usage,
                description: format!("{} ({})", meter.usage_type, meter.unit_name_billable),
                metric_label: metric.clone(),
                quantity,
                unit_price: price.0,
                amount: units::line_amount(quantity, price).0,
            })
        })
        .collect()
}

/// What issuing a closed period's invoice needs besides the state.
pub struct IssueInput<'a> {
    pub period: &'a Period,
    /// Usage values of the closed period, per meter.
    pub values: BTreeMap<String, i128>,
    /// Current usage values of each earlier period that got late usage after its invoice.
    pub late_values: BTreeMap<String, BTreeMap<String, i128>>,
    pub issued_at: UnixMicros,
    pub due_after: i64,
}

/// Issues the invoice of a closed period: flat price, usage, adjustments for late usage of
/// earlier invoiced periods, then the pending coupons. `None` for a plan that bills nothing.
pub fn issue_invoice(
    state: &mut TenantBilling,
    input: IssueInput<'_>,
    catalog: &Catalog,
) -> Option<Invoice> {
    let plan = catalog.plan(&input.period.plan)?;
    let mut lines = Vec::new();
    let flat = flat_price(plan, input.period.start, input.period.end);
    if flat != 0 {
        lines.push(InvoiceLine {
            kind: LineKind::FlatPrice,
            description: format!(
                "{} plan, {} to {}",
                plan.title,
                time::format_rfc3339(input.period.start),
                time::format_rfc3339(input.period.end)
            ),
            metric_label: String::new(),
            quantity: 0,
            unit_price: flat,
            amount: flat,
        });
    }
    let usage = usage_lines(plan, &input.values, catalog);
    let billed_now: PeriodBilled = usage
        .iter()
        .map(|l| (l.metric_label.clone(), (l.quantity, l.amount)))
        .collect();
    lines.extend(usage);
    // Late usage of earlier periods: bill the difference from what their invoices billed.
    for (period_uid, values) in &input.late_values {
        let Some(period) = state.periods.iter().find(|p| &p.uid == period_uid) else {
            continue;
        };
        let Some(period_plan) = catalog.plan(&period.plan) else {
            continue;
        };
        let description_period = format!(
            "{} to {}",
            time::format_rfc3339(period.start),
            time::format_rfc3339(period.end)
        );
        let billed = state.billed.entry(period_uid.clone()).or_default();
        for line in usage_lines(period_plan, values, catalog) {
            let (old_quantity, old_amount) =
                billed.get(&line.metric_label).copied().unwrap_or((0, 0));
            if line.amount != old_amount || line.quantity != old_quantity {
                lines.push(InvoiceLine {
                    kind: LineKind::Adjustment,
                    description: format!(
                        "Adjustment: late {} for {description_period}",
                        line.description
                    ),
                    metric_label: line.metric_label.clone(),
                    quantity: line.quantity - old_quantity,
                    unit_price: line.unit_price,
                    amount: line.amount - old_amount,
                });
                billed.insert(line.metric_label.clone(), (line.quantity, line.amount));
            }
        }
    }
    state.late_periods.clear();
    state.billed.insert(input.period.uid.clone(), billed_now);
    if plan.billing_disabled && lines.iter().all(|l| l.kind != LineKind::Adjustment) {
        return None;
    }
    // Percentages are of the subtotal, fixed amounts subtract; the total never goes below 0.
    let subtotal: i64 = lines.iter().map(|l| l.amount).sum();
    let mut remaining = subtotal.max(0);
    for coupon in std::mem::take(&mut state.coupons) {
        let discount = match coupon.kind {
            DiscountKind::FixedAmount => coupon.amount.min(remaining),
            DiscountKind::Percentage => {
                prorate(subtotal.max(0), coupon.amount, 10_000).min(remaining)
            }
        };
        remaining -= discount;
        lines.push(InvoiceLine {
            kind: LineKind::Discount,
            description: format!("Coupon: {}", coupon.title),
            metric_label: String::new(),
            quantity: 0,
            unit_price: 0,
            amount: -discount,
        });
    }
    state.invoices_issued = state.invoices_issued.saturating_add(1);
    let number = state.invoices_issued;
    let invoice = Invoice {
        name: format!(
            "inv-{}-{number:04}",
            time::to_datetime(input.period.start).format("%Y%m")
        ),
        period_uid: input.period.uid.clone(),
        plan: plan.name.clone(),
        period_start: input.period.start,
        period_end: input.period.end,
        issued_at: input.issued_at,
        due_at: input.issued_at + input.due_after,
        paid_at: None,
        total: lines.iter().map(|l| l.amount).sum(),
        lines,
        currency: catalog.currency().to_owned(),
    };
    if let Some(period) = state.periods.iter_mut().find(|p| p.uid == input.period.uid) {
        period.invoice = Some(invoice.name.clone());
    }
    state.invoices.push(invoice.clone());
    Some(invoice)
}

/// F5 invoice status at `now`.
pub fn invoice_status(invoice: &Invoice, now: UnixMicros) -> &'static str {
    if invoice.paid_at.is_some() {
        "STATUS_PAID"
    } else if now > invoice.due_at {
        "OVERDUE"
    } else {
        "STATUS_ISSUED"
    }
}

/// Cents as text with the currency's two decimals (`12.34 EUR`).
pub fn money(amount: i64, currency: &str) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests;
