//! Log format v2, reading: stored bytes back into a log entry or a dead letter, every
//! field checked and named when it is wrong.

use super::*;

/// Reads a value front to back; every read checks the bytes left.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() < n {
            return Err(error(
                self.what,
                format!(
                    "cut short in {field}: {} bytes left, {n} needed",
                    self.bytes.len()
                ),
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], CodecError> {
        let bytes = self.take(N, field)?;
        bytes
            .try_into()
            .map_err(|_| error(self.what, format!("{field}: {} bytes", bytes.len())))
    }

    fn u8(&mut self, field: &str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, CodecError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn i32(&mut self, field: &str) -> Result<i32, CodecError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn i64(&mut self, field: &str) -> Result<i64, CodecError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn text(&mut self, field: &str) -> Result<String, CodecError> {
        let len = usize::from(self.u16(field)?);
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| error(self.what, format!("{field} is not UTF-8")))
    }

    fn source(&mut self) -> Result<StoredSource, CodecError> {
        match self.u8("source")? {
            0 => Ok(StoredSource::Command),
            1 => Ok(StoredSource::Http {
                received_at: self.i64("source.received_at")?,
            }),
            2 => {
                let partition = self.i32("source.partition")?;
                let offset = self.i64("source.offset")?;
                let topic = self.text("source.topic")?;
                Ok(StoredSource::Kafka {
                    topic,
                    partition,
                    offset,
                })
            }
            other => Err(error(self.what, format!("unknown source tag {other}"))),
        }
    }

    /// The rest as one storage struct; trailing bytes are damage.
    fn payload<T: DeserializeOwned>(self) -> Result<T, CodecError> {
        let (value, used) = bincode::serde::decode_from_slice(self.bytes, bincode_config())
            .map_err(|e| error(self.what, format!("payload: {e}")))?;
        if used != self.bytes.len() {
            return Err(error(
                self.what,
                format!("{} trailing bytes", self.bytes.len() - used),
            ));
        }
        Ok(value)
    }
}

/// The envelope of a log value, as read before its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: Kind,
    pub payload_version: u16,
    pub tenant: String,
    pub time: i64,
}

/// Reads the envelope of a v2 log value (for inspection without decoding the payload).
pub fn read_envelope(bytes: &[u8]) -> Result<Envelope, CodecError> {
    let mut reader = Reader {
        bytes,
        what: "log entry",
    };
    let (kind, payload_version, tenant, time, _) = read_header(&mut reader)?;
    Ok(Envelope {
        kind,
        payload_version,
        tenant,
        time,
    })
}

fn read_header(
    reader: &mut Reader<'_>,
) -> Result<(Kind, u16, String, i64, StoredSource), CodecError> {
    let format = reader.u8("format")?;
    if format != FORMAT_V2 {
        return Err(error(
            reader.what,
            format!(
                "format {format}, this build writes {FORMAT_V2} (`tally migrate` upgrades format 1)"
            ),
        ));
    }
    let number = reader.u16("kind")?;
    let kind = Kind::from_number(number).ok_or_else(|| {
        error(
            "log entry",
            format!("unknown kind {number} (written by a newer build?)"),
        )
    })?;
    let version = reader.u16("payload version")?;
    let tenant = reader.text("tenant")?;
    let time = reader.i64("time")?;
    let source = reader.source()?;
    Ok((kind, version, tenant, time, source))
}

/// Decodes a v2 log value into the current domain entry, upcasting older payload versions.
pub fn decode_entry(bytes: &[u8]) -> Result<LogEntry, CodecError> {
    let mut reader = Reader {
        bytes,
        what: "log entry",
    };
    let (kind, version, tenant, time, source) = read_header(&mut reader)?;
    if version != 1 {
        return Err(error(
            "log entry",
            format!(
                "{} payload version {version} is unknown to this build (written by a newer one?)",
                kind.name()
            ),
        ));
    }
    let billing = |change| LogEntry::Billing {
        tenant: tenant.clone(),
        at: time,
        change,
    };
    let entry = match kind {
        Kind::UsageRecorded => {
            let usage: UsageV1 = reader.payload()?;
            LogEntry::UsageRecorded {
                event: UsageEvent {
                    tenant: tenant.clone(),
                    id: usage.id,
                    namespace: usage.namespace,
                    metric_label: usage.metric_label,
                    quantity: Micros(usage.quantity_micros),
                    timestamp: usage.event_time,
                    object_name: usage.object_name,
                    deployment: usage.deployment,
                    container: usage.container,
                    labels: usage.labels.into_iter().collect(),
                },
                source: source.into_event_source("log entry")?,
                recorded_at: time,
            }
        }
        Kind::QuotaObjectPut => {
            let object: QuotaObjectV1 = reader.payload()?;
            let api_limits = object
                .api_limits
                .into_iter()
                .map(|(key, limit)| Ok((key, rate_limit(&limit)?)))
                .collect::<Result<_, CodecError>>()?;
            LogEntry::QuotaObjectPut {
                object: QuotaObject {
                    name: object.name,
                    namespace: object.namespace,
                    labels: object.labels.into_iter().collect(),
                    annotations: object.annotations.into_iter().collect(),
                    description: object.description,
                    disable: object.disable,
                    spec: Limits {
                        object_limits: object.object_limits.into_iter().collect(),
                        resource_limits: object.resource_limits.into_iter().collect(),
                        api_limits,
                    },
                    uid: object.uid,
                    tenant: tenant.clone(),
                    creation_timestamp: object.creation_timestamp,
                    modification_timestamp: object.modification_timestamp,
                    creator_id: object.creator_id,
                },
                at: time,
            }
        }
        Kind::QuotaObjectDeleted => {
            let deleted: QuotaObjectDeletedV1 = reader.payload()?;
            LogEntry::QuotaObjectDeleted {
                tenant: tenant.clone(),
                namespace: deleted.namespace,
                name: deleted.name,
                at: time,
            }
        }
        Kind::QuotaAlert => {
            let alert: AlertV1 = reader.payload()?;
            LogEntry::QuotaAlert {
                alert: Alert {
                    id: alert.id,
                    tenant: tenant.clone(),
                    key: LimitKey {
                        kind: quota_kind(alert.key_kind)?,
                        name: alert.key_name,
                    },
                    threshold_percent: alert.threshold_percent,
                    direction: match alert.direction {
                        1 => Direction::Raised,
                        2 => Direction::Cleared,
                        other => {
                            return Err(error("log entry", format!("alert direction {other}")));
                        }
                    },
                    level: alert.level,
                    limit: alert.limit,
                    trigger_seq: alert.trigger_seq,
                    at: time,
                },
            }
        }
        Kind::TransitionRequested => {
            let t: TransitionRequestedV1 = reader.payload()?;
            billing(BillingChange::TransitionRequested {
                id: t.id,
                to_plan: t.to_plan,
                requires_approval: t.requires_approval,
                addons: t.addons,
                domain: t.domain,
            })
        }
        Kind::TransitionApproved => {
            let t: TransitionApprovedV1 = reader.payload()?;
            billing(BillingChange::TransitionApproved { id: t.id, by: t.by })
        }
        Kind::TransitionRejected => {
            let t: TransitionRejectedV1 = reader.payload()?;
            billing(BillingChange::TransitionRejected {
                id: t.id,
                by: t.by,
                reason: t.reason,
            })
        }
        Kind::AddonSubscribed => {
            let a: AddonV1 = reader.payload()?;
            billing(BillingChange::AddonSubscribed { addon: a.addon })
        }
        Kind::AddonUnsubscribed => {
            let a: AddonV1 = reader.payload()?;
            billing(BillingChange::AddonUnsubscribed { addon: a.addon })
        }
        Kind::PaymentMethodAdded => {
            let p: PaymentMethodAddedV1 = reader.payload()?;
            billing(BillingChange::PaymentMethodAdded {
                name: p.name,
                role: payment_role(p.role)?,
                token: p.token,
                contact: p.contact.into_iter().collect(),
            })
        }
        Kind::PaymentMethodRole => {
            let p: PaymentMethodRoleV1 = reader.payload()?;
            billing(BillingChange::PaymentMethodRole {
                name: p.name,
                role: payment_role(p.role)?,
            })
        }
        Kind::PaymentMethodsSwapped => {
            let PaymentMethodsSwappedV1 {} = reader.payload()?;
            billing(BillingChange::PaymentMethodsSwapped)
        }
        Kind::PaymentMethodDeleted => {
            let p: PaymentMethodDeletedV1 = reader.payload()?;
            billing(BillingChange::PaymentMethodDeleted { name: p.name })
        }
        Kind::CouponGranted => {
            let c: CouponGrantedV1 = reader.payload()?;
            billing(BillingChange::CouponGranted {
                coupon: Coupon {
                    title: c.title,
                    kind: match c.discount_kind {
                        1 => DiscountKind::FixedAmount,
                        2 => DiscountKind::Percentage,
                        other => {
                            return Err(error("log entry", format!("discount kind {other}")));
                        }
                    },
                    amount: c.amount,
                },
            })
        }
        Kind::PeriodClosed => {
            let p: PeriodClosedV1 = reader.payload()?;
            billing(BillingChange::PeriodClosed {
                period_uid: p.period_uid,
            })
        }
        Kind::InvoicePaid => {
            let p: InvoicePaidV1 = reader.payload()?;
            billing(BillingChange::InvoicePaid {
                invoice: p.invoice,
                by: p.by,
            })
        }
        Kind::Audit => {
            let a: AuditV1 = reader.payload()?;
            LogEntry::Audit(AuditRecord {
                at: time,
                actor: a.actor,
                actor_tenant: a.actor_tenant,
                tenant: tenant.clone(),
                action: a.action,
                target: a.target,
            })
        }
    };
    Ok(entry)
}

fn rate_limit(limit: &RateLimitV1) -> Result<RateLimitType, CodecError> {
    let unit = match limit.unit {
        1 => RateLimitUnit::Second,
        2 => RateLimitUnit::Minute,
        3 => RateLimitUnit::Hour,
        4 => RateLimitUnit::Day,
        other => return Err(error("log entry", format!("rate limit unit {other}"))),
    };
    Ok(RateLimitType {
        unit,
        rate: limit.rate,
        burst: limit.burst,
    })
}

fn quota_kind(code: u8) -> Result<QuotaKind, CodecError> {
    match code {
        1 => Ok(QuotaKind::Object),
        2 => Ok(QuotaKind::Resource),
        3 => Ok(QuotaKind::Api),
        other => Err(error("log entry", format!("quota kind {other}"))),
    }
}

fn payment_role(code: u8) -> Result<PaymentRole, CodecError> {
    match code {
        1 => Ok(PaymentRole::Primary),
        2 => Ok(PaymentRole::Secondary),
        3 => Ok(PaymentRole::Normal),
        other => Err(error("log entry", format!("payment role {other}"))),
    }
}

pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, CodecError> {
    let what = "dead letter";
    let mut reader = Reader { bytes, what };
    let format = reader.u8("format")?;
    if format != FORMAT_V2 {
        return Err(error(
            what,
            format!("format {format}, this build writes {FORMAT_V2}"),
        ));
    }
    let version = reader.u16("payload version")?;
    if version != 1 {
        return Err(error(
            what,
            format!("payload version {version} is unknown to this build"),
        ));
    }
    let source = reader.source()?.into_event_source(what)?;
    let letter: DeadLetterV1 = reader.payload()?;
    Ok(DeadLetter {
        received_at: letter.received_at,
        source,
        tenant: letter.tenant,
        rejection: Rejection {
            id: letter.rejected_id,
            field: letter.field,
            reason: letter.reason,
        },
        raw: letter.raw,
        raw_truncated: letter.raw_truncated,
    })
}
