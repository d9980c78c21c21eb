//! Tests of billing: periods, transitions, payment methods, coupons and invoices, decided
//! and applied.

use super::*;
use crate::catalog::Catalog;

fn at(text: &str) -> UnixMicros {
    time::parse_rfc3339(text).unwrap()
}

#[test]
fn renewal_windows_follow_the_calendar() {
    let day = renewal_window(PeriodUnit::PERIOD_DAY, at("2025-03-10T13:00:00Z"));
    assert_eq!(
        day,
        (at("2025-03-10T00:00:00Z"), at("2025-03-11T00:00:00Z"))
    );
    // 2025-03-10 is a Monday: weeks run Monday to Monday.
    let week = renewal_window(PeriodUnit::PERIOD_WEEK, at("2025-03-12T13:00:00Z"));
    assert_eq!(
        week,
        (at("2025-03-10T00:00:00Z"), at("2025-03-17T00:00:00Z"))
    );
    let month = renewal_window(PeriodUnit::PERIOD_MONTH, at("2024-02-29T23:59:59Z"));
    assert_eq!(
        month,
        (at("2024-02-01T00:00:00Z"), at("2024-03-01T00:00:00Z"))
    );
    let year = renewal_window(PeriodUnit::PERIOD_YEAR, at("2025-12-31T23:00:00Z"));
    assert_eq!(
        year,
        (at("2025-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z"))
    );
}

#[test]
fn flat_prices_are_prorated_by_the_second_rounding_half_up() {
    let catalog = Catalog::builtin().unwrap();
    let team = catalog.plan("team-plan").unwrap();
    // Half of April (30 days): 15 days of 50000 cents.
    assert_eq!(
        flat_price(team, at("2025-04-01T00:00:00Z"), at("2025-04-16T00:00:00Z")),
        25_000
    );
    // One second of a 30-day month: 50000 / 2592000 = 0.019… cents, rounds to 0.
    assert_eq!(
        flat_price(team, at("2025-04-01T00:00:00Z"), at("2025-04-01T00:00:01Z")),
        0
    );
    assert_eq!(prorate(1, 1, 2), 1, "a half rounds up");
    assert_eq!(prorate(5, 1, 3), 2);
    assert_eq!(prorate(1000, 1250, 10_000), 125);
}

#[test]
fn one_primary_and_one_secondary_and_swaps() {
    let catalog = Catalog::builtin().unwrap();
    let mut state = TenantBilling::new("acme", &catalog, at("2025-01-05T00:00:00Z"));
    let add = |name: &str, role| BillingChange::PaymentMethodAdded {
        name: name.into(),
        role,
        token: format!("tok-{name}"),
        contact: BTreeMap::new(),
    };
    for change in [
        add("a", PaymentRole::Primary),
        add("b", PaymentRole::Primary),
        add("c", PaymentRole::Secondary),
    ] {
        apply(&mut state, &change, 1, &catalog);
    }
    let role = |state: &TenantBilling, name: &str| state.payment_methods[name].role;
    assert_eq!(
        role(&state, "a"),
        PaymentRole::Normal,
        "a second primary demotes the first"
    );
    assert_eq!(role(&state, "b"), PaymentRole::Primary);
    apply(
        &mut state,
        &BillingChange::PaymentMethodsSwapped,
        2,
        &catalog,
    );
    assert_eq!(role(&state, "b"), PaymentRole::Secondary);
    assert_eq!(role(&state, "c"), PaymentRole::Primary);
}

#[test]
fn a_transition_closes_the_period_and_an_invoice_takes_coupons_once() {
    let catalog = Catalog::builtin().unwrap();
    let mut state = TenantBilling::new("acme", &catalog, at("2025-04-03T00:00:00Z"));
    let upgrade = BillingChange::TransitionRequested {
        id: "t1".into(),
        to_plan: "team-plan".into(),
        requires_approval: false,
        addons: vec![],
        domain: String::new(),
    };
    let applied = apply(&mut state, &upgrade, at("2025-04-16T00:00:00Z"), &catalog);
    assert!(applied.plan_changed);
    let closed = applied.closed_period.unwrap();
    assert_eq!(
        (closed.plan.as_str(), closed.end),
        ("free-plan", at("2025-04-16T00:00:00Z"))
    );
    assert_eq!(state.open_period().plan, "team-plan");
    assert_eq!(state.open_period().end, at("2025-05-01T00:00:00Z"));
    assert_eq!(state.transitions["t1"].state, TransitionState::Finished);
    assert!(
        state.addons.contains("f5xc_appstack_standard"),
        "the team plan's inclusions"
    );

    for coupon in [
        Coupon {
            title: "fixed".into(),
            kind: DiscountKind::FixedAmount,
            amount: 5_000,
        },
        Coupon {
            title: "half".into(),
            kind: DiscountKind::Percentage,
            amount: 5_000,
        },
    ] {
        apply(
            &mut state,
            &BillingChange::CouponGranted { coupon },
            1,
            &catalog,
        );
    }
    let open = state.open_period().clone();
    let close = BillingChange::PeriodClosed {
        period_uid: open.uid.clone(),
    };
    let closed = apply(&mut state, &close, open.end, &catalog)
        .closed_period
        .unwrap();
    let values = BTreeMap::from([("http_lb_requests".to_owned(), 3_500_000_000_000_i128)]);
    let input = IssueInput {
        period: &closed,
        values,
        late_values: BTreeMap::new(),
        issued_at: open.end,
        due_after: 10,
    };
    let invoice = issue_invoice(&mut state, input, &catalog).unwrap();
    // 15 of 30 days of 50000, plus 3.5M requests → 3 billable × 45; a percentage is of the
    // subtotal (12567.5 rounds up), and discounts never take the total below zero.
    let amounts: Vec<i64> = invoice.lines.iter().map(|l| l.amount).collect();
    assert_eq!(amounts, [25_000, 135, -5_000, -12_568]);
    assert_eq!(invoice.total, 25_135 - 5_000 - 12_568);
    assert_eq!(invoice.due_at, open.end + 10);
    assert!(state.coupons.is_empty(), "coupons are used once");
    assert_eq!(
        state
            .periods
            .iter()
            .find(|p| p.uid == closed.uid)
            .unwrap()
            .invoice,
        Some(invoice.name.clone())
    );
    assert_eq!(invoice_status(&invoice, open.end + 11), "OVERDUE");
}

fn uid_and_invoiced(period: PeriodOf<'_>) -> (String, bool) {
    (period.uid.into_owned(), period.invoiced)
}

#[test]
fn usage_is_attributed_to_its_period_and_late_usage_is_flagged() {
    let catalog = Catalog::builtin().unwrap();
    let mut state = TenantBilling::new("acme", &catalog, at("2025-04-03T00:00:00Z"));
    let april = state.open_period().uid.clone();
    assert_eq!(
        uid_and_invoiced(state.period_for(at("2025-04-20T00:00:00Z"), &catalog)),
        (april.clone(), false)
    );
    assert_eq!(
        uid_and_invoiced(state.period_for(at("2025-03-20T00:00:00Z"), &catalog)),
        (april.clone(), false),
        "older: the first period"
    );
    let may = period_uid("acme", at("2025-05-01T00:00:00Z"));
    assert_eq!(
        uid_and_invoiced(state.period_for(at("2025-05-01T00:00:10Z"), &catalog)),
        (may.clone(), false),
        "past the open period: the next one"
    );
    let close = BillingChange::PeriodClosed {
        period_uid: april.clone(),
    };
    apply(&mut state, &close, at("2025-05-01T00:00:00Z"), &catalog);
    assert_eq!(state.open_period().uid, may);
    state.periods[0].invoice = Some("inv".into());
    assert_eq!(
        uid_and_invoiced(state.period_for(at("2025-04-20T00:00:00Z"), &catalog)),
        (april, true)
    );
}
