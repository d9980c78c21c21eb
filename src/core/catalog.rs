//! The catalog: meters, usage plans (F5 `PlanInternal` plus prices), addons and currency.
//!
//! Loaded once from JSON (the built-in `schemas/catalog.default.json` or `--catalog FILE`) and
//! validated as a whole; a catalog that fails validation never reaches the engine. Prices are
//! applied at read time, so changing a price needs no replay.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::units::Cents;

/// The catalog Tally ships with; see `schemas/catalog.md` for the format.
pub const DEFAULT_CATALOG_JSON: &str = include_str!("../../schemas/catalog.default.json");

/// Why a catalog was refused. Each stops start-up with its message.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("catalog is not valid: {0}")]
    Parse(String),
    #[error("catalog is not valid: {0}")]
    Invalid(String),
}

/// How a meter's events combine within one series (tenant, namespace, metric_label,
/// object_name, deployment, container) over time. Across series, values always add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Aggregation {
    /// Total of quantities (requests, bytes, hours).
    #[serde(rename = "SUM")]
    Sum,
    /// Largest quantity seen (peak storage).
    #[serde(rename = "MAX")]
    Max,
    /// Quantity of the newest event by event time (a gauge such as an object count).
    #[serde(rename = "LATEST")]
    Latest,
    /// Number of events, whatever their quantity.
    #[serde(rename = "COUNT")]
    Count,
}

/// What a meter counts against in the quota model (F5 `object_limits`, `resource_limits`,
/// `api_limits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaBinding {
    pub kind: QuotaKind,
    /// The object kind (`http_loadbalancer`), resource name or API limit key it feeds.
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaKind {
    Object,
    Resource,
    Api,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    pub metric_label: String,
    pub usage_type: String,
    pub unit_name: String,
    pub unit_name_billable: String,
    /// Raw units per billable unit (bytes → GB is 1000000000).
    pub division_factor: u64,
    pub aggregation: Aggregation,
    /// The addon service this meter's usage belongs to (`usage_summary`'s `service`).
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaBinding>,
}

/// F5 `quotaLimitType` / `quotaFloatLimitType`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitType<T> {
    pub maximum: T,
}

/// F5 `quotaRateLimitType` (`unit`: SECOND, MINUTE, HOUR, DAY).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitType {
    pub unit: RateLimitUnit,
    pub rate: u32,
    #[serde(default)]
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimitUnit {
    #[serde(rename = "SECOND")]
    Second,
    #[serde(rename = "MINUTE")]
    Minute,
    #[serde(rename = "HOUR")]
    Hour,
    #[serde(rename = "DAY")]
    Day,
}

/// F5 `schemaquotaGlobalSpecType`: a plan's default quota.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    #[serde(default)]
    pub object_limits: BTreeMap<String, LimitType<i64>>,
    #[serde(default)]
    pub resource_limits: BTreeMap<String, LimitType<f64>>,
    #[serde(default)]
    pub api_limits: BTreeMap<String, RateLimitType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum PlanType {
    FREE,
    INDIVIDUAL,
    TEAM,
    ORGANIZATION,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum TenantType {
    FREEMIUM,
    ENTERPRISE,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types)]
pub enum PeriodUnit {
    PERIOD_DAY,
    PERIOD_WEEK,
    PERIOD_MONTH,
    PERIOD_YEAR,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types)]
pub enum TransitionMethod {
    TRANSITION_METHOD_SUPPORT,
    TRANSITION_METHOD_WIZARD,
    TRANSITION_METHOD_RECREATE,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types)]
pub enum TransitionRequiredField {
    TRANSITION_REQUIRED_FIELD_PAYMENT_TOKEN,
    TRANSITION_REQUIRED_FIELD_DOMAIN,
    TRANSITION_REQUIRED_FIELD_CONTACTS,
}

/// F5 `planUsagePlanTransitionFlow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionFlow {
    pub method: TransitionMethod,
    #[serde(default)]
    pub required_fields: Vec<TransitionRequiredField>,
    #[serde(default)]
    pub requires_manual_approval: bool,
}

/// A usage plan: F5 `planPlanInternal` fields plus Tally's `prices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub subtitle: String,
    #[serde(default)]
    pub description: String,
    pub usage_plan_type: PlanType,
    pub tenant_type: TenantType,
    /// Flat price per renewal period, in cents.
    pub flat_price: i64,
    pub renewal_period_unit: PeriodUnit,
    #[serde(default)]
    pub trial_period: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_period_unit: Option<PeriodUnit>,
    #[serde(default)]
    pub billing_disabled: bool,
    #[serde(default)]
    pub default_quota: QuotaSpec,
    #[serde(default)]
    pub included_addon_services: Vec<String>,
    #[serde(default)]
    pub allowed_addon_services: Vec<String>,
    pub transition_flow: TransitionFlow,
    /// Cents per billable unit, by `metric_label`; a metered label without a price is free.
    #[serde(default)]
    pub prices: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addon {
    pub name: String,
    pub display_name: String,
}

/// How a quota key is presented (F5 `display_name` and `description` of the quota maps).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaKeyText {
    pub kind: QuotaKind,
    /// The object kind, resource name or API limit key.
    pub name: String,
    pub display_name: String,
    #[serde(default)]
    pub description: String,
}

/// The catalog file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Bumped by whoever edits the catalog; recorded so a change can be detected.
    pub version: u32,
    /// ISO 4217 code of every amount.
    pub currency: String,
    pub meters: Vec<Meter>,
    pub plans: Vec<Plan>,
    pub addons: Vec<Addon>,
    pub default_plan: String,
    /// Display names and descriptions of quota keys; optional, presentation only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quota_keys: Vec<QuotaKeyText>,
}

/// A validated catalog with lookups.
#[derive(Debug, Clone)]
pub struct Catalog {
    file: CatalogFile,
    /// Looked up once or more per event: a fast hash (the keys are the operator's, so no
    /// flooding concern).
    meter_index: FastIndex,
    plan_index: FastIndex,
}

type FastIndex = HashMap<String, usize, foldhash::fast::FixedState>;

impl Catalog {
    pub fn builtin() -> Result<Self, CatalogError> {
        Self::from_json(DEFAULT_CATALOG_JSON)
    }

    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Self, CatalogError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let file: CatalogFile = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| CatalogError::Parse(format!("at `{}`: {}", e.path(), e.inner())))?;
        Self::new(file)
    }

    pub fn new(file: CatalogFile) -> Result<Self, CatalogError> {
        let invalid = |msg: String| Err(CatalogError::Invalid(msg));
        if file.currency.len() != 3 || !file.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return invalid(format!(
                "currency `{}` must be an ISO 4217 code such as USD",
                file.currency
            ));
        }
        let mut meter_index = FastIndex::default();
        for (i, meter) in file.meters.iter().enumerate() {
            if !is_metric_label(&meter.metric_label) {
                return invalid(format!(
                    "meters[{i}].metric_label `{}` must be 1-128 characters of a-z, 0-9, `_`, `-`, `.`",
                    meter.metric_label
                ));
            }
            if meter.division_factor == 0 {
                return invalid(format!(
                    "meters[{i}] ({}): division_factor must be at least 1",
                    meter.metric_label
                ));
            }
            for (field, value) in [
                ("usage_type", &meter.usage_type),
                ("unit_name", &meter.unit_name),
                ("unit_name_billable", &meter.unit_name_billable),
                ("service", &meter.service),
            ] {
                if value.trim().is_empty() {
                    return invalid(format!(
                        "meters[{i}] ({}): {field} must not be empty",
                        meter.metric_label
                    ));
                }
            }
            if meter_index.insert(meter.metric_label.clone(), i).is_some() {
                return invalid(format!(
                    "meters[{i}]: metric_label `{}` is defined twice",
                    meter.metric_label
                ));
            }
        }
        let addon_names: Vec<&str> = file.addons.iter().map(|a| a.name.as_str()).collect();
        let mut plan_index = FastIndex::default();
        for (i, plan) in file.plans.iter().enumerate() {
            let at = format!("plans[{i}] ({})", plan.name);
            if plan.name.is_empty() {
                return invalid(format!("plans[{i}].name must not be empty"));
            }
            if plan.flat_price < 0 {
                return invalid(format!("{at}: flat_price must not be negative"));
            }
            for (label, price) in &plan.prices {
                if !meter_index.contains_key(label) {
                    return invalid(format!(
                        "{at}: prices names `{label}`, which is not a meter"
                    ));
                }
                if *price < 0 {
                    return invalid(format!("{at}: price of `{label}` must not be negative"));
                }
            }
            for addon in plan
                .included_addon_services
                .iter()
                .chain(&plan.allowed_addon_services)
            {
                if !addon_names.contains(&addon.as_str()) {
                    return invalid(format!("{at}: addon `{addon}` is not in addons"));
                }
            }
            if plan_index.insert(plan.name.clone(), i).is_some() {
                return invalid(format!("{at}: plan name is defined twice"));
            }
        }
        let mut described = std::collections::HashSet::new();
        for (i, text) in file.quota_keys.iter().enumerate() {
            if text.name.is_empty() || text.display_name.trim().is_empty() {
                return invalid(format!(
                    "quota_keys[{i}]: name and display_name must not be empty"
                ));
            }
            if !described.insert((text.kind, text.name.as_str())) {
                return invalid(format!(
                    "quota_keys[{i}]: {:?} `{}` is described twice",
                    text.kind, text.name
                ));
            }
        }
        if !plan_index.contains_key(&file.default_plan) {
            return invalid(format!(
                "default_plan `{}` is not one of plans",
                file.default_plan
            ));
        }
        Ok(Catalog {
            file,
            meter_index,
            plan_index,
        })
    }

    pub fn meter(&self, metric_label: &str) -> Option<&Meter> {
        self.meter_index
            .get(metric_label)
            .and_then(|&i| self.file.meters.get(i))
    }

    pub fn meters(&self) -> &[Meter] {
        &self.file.meters
    }

    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plan_index
            .get(name)
            .and_then(|&i| self.file.plans.get(i))
    }

    pub fn plans(&self) -> &[Plan] {
        &self.file.plans
    }

    /// The plan new tenants start on. `new` refuses a catalog whose default plan is not one
    /// of its plans, and has at least one plan.
    #[allow(clippy::indexing_slicing)]
    pub fn default_plan(&self) -> &Plan {
        self.plan(&self.file.default_plan)
            .unwrap_or(&self.file.plans[0])
    }

    /// What projections depend on, per meter: aggregation, division factor and quota binding.
    /// A change here means the stored projections were folded under other rules.
    pub fn meter_definitions(&self) -> BTreeMap<String, String> {
        self.file
            .meters
            .iter()
            .map(|m| {
                let binding = m
                    .quota
                    .as_ref()
                    .map(|q| format!("{:?}:{}", q.kind, q.name))
                    .unwrap_or_default();
                (
                    m.metric_label.clone(),
                    format!("{:?}/{}/{binding}", m.aggregation, m.division_factor),
                )
            })
            .collect()
    }

    /// The display name and description of a quota key: from `quota_keys`, else the display
    /// name of the meter bound to it; `None` where the catalog says nothing.
    pub fn quota_key_text(&self, kind: QuotaKind, name: &str) -> (Option<&str>, Option<&str>) {
        if let Some(text) = self
            .file
            .quota_keys
            .iter()
            .find(|t| t.kind == kind && t.name == name)
        {
            let description = Some(text.description.as_str()).filter(|d| !d.is_empty());
            return (Some(text.display_name.as_str()), description);
        }
        let meter = self.file.meters.iter().find(|m| {
            m.quota
                .as_ref()
                .is_some_and(|b| b.kind == kind && b.name == name)
        });
        (meter.map(|m| m.usage_type.as_str()), None)
    }

    pub fn currency(&self) -> &str {
        &self.file.currency
    }

    pub fn addons(&self) -> &[Addon] {
        &self.file.addons
    }

    pub fn version(&self) -> u32 {
        self.file.version
    }

    /// Price of one billable unit of `metric_label` on `plan`; unpriced meters are free.
    pub fn price(&self, plan: &Plan, metric_label: &str) -> Cents {
        Cents(plan.prices.get(metric_label).copied().unwrap_or(0))
    }
}

/// Metric labels are identifiers that appear in keys and URLs.
pub fn is_metric_label(label: &str) -> bool {
    (1..=128).contains(&label.len())
        && label.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_is_valid_and_realistic() {
        let catalog = Catalog::builtin().expect("built-in catalog");
        let sums = catalog
            .meters()
            .iter()
            .filter(|m| m.aggregation == Aggregation::Sum)
            .count();
        assert!(sums >= 3);
        let latest_bound: Vec<_> = catalog
            .meters()
            .iter()
            .filter(|m| m.aggregation == Aggregation::Latest)
            .filter_map(|m| m.quota.as_ref().map(|q| q.kind))
            .collect();
        assert!(latest_bound.contains(&QuotaKind::Object));
        assert!(latest_bound.contains(&QuotaKind::Resource));
        for kind in [
            PlanType::FREE,
            PlanType::INDIVIDUAL,
            PlanType::TEAM,
            PlanType::ORGANIZATION,
        ] {
            assert!(
                catalog.plans().iter().any(|p| p.usage_plan_type == kind),
                "{kind:?}"
            );
        }
        assert_eq!(catalog.default_plan().usage_plan_type, PlanType::FREE);
        assert!(
            catalog
                .plans()
                .iter()
                .any(|p| p.flat_price > 0 && !p.transition_flow.requires_manual_approval)
        );
        assert!(
            catalog
                .plans()
                .iter()
                .any(|p| p.transition_flow.requires_manual_approval)
        );
        assert_eq!(catalog.addons().len(), 13);
        assert_eq!(
            catalog
                .quota_key_text(QuotaKind::Object, "http_loadbalancer")
                .0,
            Some("HTTP Load Balancers")
        );
        assert_eq!(
            catalog.quota_key_text(QuotaKind::Object, "nope"),
            (None, None)
        );
    }

    #[test]
    fn malformed_catalogs_name_the_problem() {
        let err = Catalog::from_json(r#"{"version": 1, "currency": "USD"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `meters`"), "{err}");
        let mut file: CatalogFile = serde_json::from_str(DEFAULT_CATALOG_JSON).unwrap();
        file.default_plan = "nope".into();
        let err = Catalog::new(file.clone()).unwrap_err();
        assert!(err.to_string().contains("default_plan `nope`"), "{err}");
        file.default_plan = file.plans[0].name.clone();
        file.meters[0].division_factor = 0;
        let err = Catalog::new(file.clone()).unwrap_err();
        assert!(err.to_string().contains("division_factor"), "{err}");
        let text = DEFAULT_CATALOG_JSON.replacen("\"SUM\"", "\"AVERAGE\"", 1);
        let err = Catalog::from_json(&text).unwrap_err();
        assert!(err.to_string().contains("aggregation"), "{err}");
    }
}
