//! Chargebacks, channel profitability from the journal, and marketplace settlement
//! reconciliation.

use std::collections::BTreeMap;

use erp_proto::common::SourceDocument;
use erp_proto::finance::*;
use erp_proto::order::ListOrdersRequest;
use erp_runtime::time::from_timestamp;
use erp_runtime::validate::Violations;
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{ActiveModelTrait, ActiveValue::Set};

use crate::api::{
    FinanceApi, checked, insert_entry, money, payment_to_wire, post_against_clearing,
};
use crate::error::FinanceError;
use crate::store::{self, payment};

/// The profit-and-loss accounts, and where each lands in a channel's result.
/// The most lines one settlement report may carry.
const MAX_SETTLEMENT_LINES: usize = 10_000;

fn bucket(account: &str) -> Option<&'static str> {
    match account {
        "4000" | "4100" => Some("revenue"),
        "4200" => Some("refunds"),
        "5000" => Some("cogs"),
        "5100" => Some("fees"),
        "5200" => Some("shipping"),
        "5300" => Some("chargebacks"),
        _ => None,
    }
}

impl FinanceApi {
    /// A dispute the card network decided against us. The provider may deliver the same
    /// dispute more than once: its id is the idempotency key, so a duplicate changes nothing.
    pub(crate) async fn chargeback(
        &self,
        caller: &erp_runtime::auth::Caller,
        req: RecordChargebackRequest,
    ) -> ApiResult<RecordChargebackResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("payment_id", &req.payment_id);
        let amount = req.amount.clone().unwrap_or_default();
        v.positive("amount.amount_minor", amount.amount_minor);
        v.text("reason", &req.reason, 200);
        v.finish()?;
        let (txn, guard) =
            erp_runtime::begin_idempotent!(&self.db, "finance.RecordChargeback", req);
        let p = store::payment_for_update(&txn, &req.payment_id, "").await?;
        if !matches!(
            p.status.as_str(),
            "captured" | "partially_refunded" | "charged_back" | "partially_captured"
        ) {
            return Err(FinanceError::PaymentNotCaptured {
                payment: p.payment_id,
                status: p.status,
                chargeback: true,
            }
            .into());
        }
        if amount.currency != p.currency {
            return Err(ApiError::invalid(
                "amount.currency",
                format!("payment is in {}", p.currency),
            ));
        }
        let open = checked(
            p.captured_minor
                .checked_sub(p.refunded_minor)
                .and_then(|o| o.checked_sub(p.charged_back_minor)),
        )?;
        if amount.amount_minor > open {
            return Err(FinanceError::OverChargeback {
                amount: amount.amount_minor,
                captured: p.captured_minor,
                refunded: p.refunded_minor,
                charged_back: p.charged_back_minor,
            }
            .into());
        }
        post_against_clearing(
            &txn,
            &p,
            "5300",
            amount.amount_minor,
            "chargeback",
            &req.idempotency_key,
            &req.reason,
        )
        .await?;
        let charged_back = checked(p.charged_back_minor.checked_add(amount.amount_minor))?;
        let before = crate::refunds::payment_state(&p);
        // An order still shipping in parts keeps taking captures for what ships next.
        let still_capturing = p.status == "partially_captured";
        let mut am: payment::ActiveModel = p.into();
        am.charged_back_minor = Set(charged_back);
        am.status = Set(if still_capturing {
            "partially_captured"
        } else {
            "charged_back"
        }
        .into());
        let p = am.update(&txn).await?;
        erp_runtime::audit::record(
            &txn,
            erp_runtime::audit::Change {
                caller,
                target: format!("payment:{}", p.payment_id),
                reason: &req.reason,
                before: Some(before),
                after: Some(crate::refunds::payment_state(&p)),
            },
        )
        .await?;
        let response = RecordChargebackResponse {
            payment: Some(payment_to_wire(p)),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    /// Revenue, refunds, chargebacks, COGS, fees, shipping and margin per channel, from the
    /// journal lines posted in `[from, to)` in one currency: the same figures the trial balance
    /// adds up.
    pub(crate) async fn profitability(
        &self,
        req: ChannelProfitabilityRequest,
    ) -> ApiResult<ChannelProfitabilityResponse> {
        let mut v = Violations::new();
        v.currency("currency", &req.currency);
        v.finish()?;
        let from = req.from.as_ref().map_or(i64::MIN, from_timestamp);
        let to = req.to.as_ref().map_or(i64::MAX, from_timestamp);
        if from >= to {
            return Err(ApiError::invalid("to", "must be after from"));
        }
        let entries: std::collections::HashSet<String> = store::entries_between(&self.db, from, to)
            .await?
            .into_iter()
            .map(|e| e.entry_id)
            .collect();
        let lines = store::lines_in_currency(&self.db, &req.currency).await?;
        let mut by_channel: BTreeMap<String, ChannelResult> = BTreeMap::new();
        for l in lines.iter().filter(|l| entries.contains(&l.entry_id)) {
            let Some(kind) = bucket(&l.account_code) else {
                continue;
            };
            let r = by_channel
                .entry(l.channel.clone())
                .or_insert_with(|| ChannelResult {
                    channel: l.channel.clone(),
                    ..Default::default()
                });
            let debit_side = checked(l.debit_minor.checked_sub(l.credit_minor))?;
            let (slot, delta) = match kind {
                "revenue" => (&mut r.revenue_minor, checked(debit_side.checked_neg())?),
                "refunds" => (&mut r.refunds_minor, debit_side),
                "cogs" => (&mut r.cogs_minor, debit_side),
                "fees" => (&mut r.fees_minor, debit_side),
                "shipping" => (&mut r.shipping_minor, debit_side),
                _ => (&mut r.chargebacks_minor, debit_side),
            };
            *slot = checked(slot.checked_add(delta))?;
        }
        let mut channels = Vec::with_capacity(by_channel.len());
        for mut r in by_channel.into_values() {
            let margin = i128::from(r.revenue_minor)
                - i128::from(r.refunds_minor)
                - i128::from(r.chargebacks_minor)
                - i128::from(r.cogs_minor)
                - i128::from(r.fees_minor)
                - i128::from(r.shipping_minor);
            r.margin_minor = i64::try_from(margin)
                .map_err(|_| erp_runtime::money::out_of_range("a channel's margin"))?;
            channels.push(r);
        }
        Ok(ChannelProfitabilityResponse {
            currency: req.currency,
            channels,
        })
    }

    /// Matches a marketplace's settlement report against our books: each order's gross sale
    /// against the captured payment, its fees against the fees posted, adjustments against the
    /// refunds and chargebacks posted, and the payout against the lines. Every difference is
    /// reported; the payout as reported is posted (cash in, provider clearing out), so what
    /// differs stays visible in the clearing account.
    pub(crate) async fn reconcile(
        &self,
        req: ReconcileSettlementRequest,
    ) -> ApiResult<ReconcileSettlementResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.code("channel", &req.channel);
        v.text("settlement_id", &req.settlement_id, 100);
        v.check(!req.lines.is_empty(), "lines", "must not be empty");
        // Bounded lines of bounded amounts: the report's sums cannot overflow.
        v.check(
            req.lines.len() <= MAX_SETTLEMENT_LINES,
            "lines",
            format!("at most {MAX_SETTLEMENT_LINES} lines per report"),
        );
        let mut currency = String::new();
        for (i, l) in req.lines.iter().enumerate() {
            v.check(
                matches!(l.kind.as_str(), "ORDER" | "FEE" | "ADJUSTMENT" | "PAYOUT"),
                format!("lines[{i}].kind"),
                "must be ORDER, FEE, ADJUSTMENT or PAYOUT",
            );
            let a = l.amount.clone().unwrap_or_default();
            v.optional_text(&format!("lines[{i}].order_id"), &l.order_id, 100);
            v.optional_text(
                &format!("lines[{i}].external_order_id"),
                &l.external_order_id,
                100,
            );
            v.currency(&format!("lines[{i}].amount.currency"), &a.currency);
            v.check(
                a.amount_minor.unsigned_abs()
                    <= erp_runtime::validate::MAX_AMOUNT_MINOR.unsigned_abs(),
                format!("lines[{i}].amount.amount_minor"),
                format!(
                    "must be within ±{}",
                    erp_runtime::validate::MAX_AMOUNT_MINOR
                ),
            );
            if currency.is_empty() {
                currency = a.currency.clone();
            }
            v.check(
                a.currency == currency,
                format!("lines[{i}].amount.currency"),
                "one currency per settlement",
            );
            if l.kind != "PAYOUT" && l.kind != "ADJUSTMENT" {
                v.check(
                    !(l.order_id.is_empty() && l.external_order_id.is_empty()),
                    format!("lines[{i}].external_order_id"),
                    "an order or fee line names its order",
                );
            }
        }
        v.finish()?;
        // Resolve the marketplace's ids before the transaction (a call to the order service).
        let mut resolved: Vec<String> = Vec::with_capacity(req.lines.len());
        for l in &req.lines {
            resolved.push(if !l.order_id.is_empty() {
                l.order_id.clone()
            } else if !l.external_order_id.is_empty() {
                self.orders
                    .clone()
                    .list_orders(ListOrdersRequest {
                        channel: req.channel.clone(),
                        external_order_id: l.external_order_id.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(ApiError::Upstream)?
                    .into_inner()
                    .orders
                    .into_iter()
                    .next()
                    .map(|o| o.order_id)
                    .unwrap_or_default()
            } else {
                String::new()
            });
        }
        let (txn, guard) =
            erp_runtime::begin_idempotent!(&self.db, "finance.ReconcileSettlement", req);
        // What our books say per order of this channel.
        let mut captured: BTreeMap<String, i64> = BTreeMap::new();
        for p in store::captured_payments(&txn, &req.channel, &currency).await? {
            // An order re-authorized before its first authorization expired has two payments.
            let sum = captured.entry(p.order_id).or_default();
            *sum = sum.saturating_add(p.captured_minor);
        }
        let mut fees: BTreeMap<String, i64> = BTreeMap::new();
        let mut returned: BTreeMap<String, i64> = BTreeMap::new();
        for l in store::fee_and_return_lines(&txn, &req.channel, &currency).await? {
            let amount = checked(l.debit_minor.checked_sub(l.credit_minor))?;
            let slot = if l.account_code == "5100" {
                fees.entry(l.order_id).or_default()
            } else {
                returned.entry(l.order_id).or_default()
            };
            *slot = checked(slot.checked_add(amount))?;
        }
        let mut reported_fees: BTreeMap<String, i64> = BTreeMap::new();
        let mut discrepancies = Vec::new();
        let mut matched = 0;
        let (mut sales, mut withheld, mut adjusted, mut payout) = (0i64, 0i64, 0i64, None);
        let mismatch = |order_id: &str, kind: &str, expected: i64, reported: i64, why: String| {
            SettlementDiscrepancy {
                order_id: order_id.to_owned(),
                kind: kind.into(),
                expected: money(expected, &currency),
                reported: money(reported, &currency),
                explanation: why,
            }
        };
        for (l, order_id) in req.lines.iter().zip(&resolved) {
            let amount = l.amount.as_ref().map_or(0, |a| a.amount_minor);
            let name = if order_id.is_empty() {
                l.external_order_id.clone()
            } else {
                order_id.clone()
            };
            match l.kind.as_str() {
                "ORDER" => {
                    sales += amount;
                    match captured.get(order_id) {
                        None => discrepancies.push(mismatch(
                            &name,
                            "ORDER_NOT_FOUND",
                            0,
                            amount,
                            format!(
                                "the report pays for order {name}, which has no captured payment on {}",
                                req.channel
                            ),
                        )),
                        Some(&c) if c != amount => discrepancies.push(mismatch(
                            order_id,
                            "AMOUNT_MISMATCH",
                            c,
                            amount,
                            format!("captured {c}, reported {amount}"),
                        )),
                        Some(_) => matched += 1,
                    }
                }
                "FEE" => {
                    withheld += amount;
                    *reported_fees.entry(order_id.clone()).or_default() += amount;
                }
                "ADJUSTMENT" => {
                    adjusted += amount;
                    let expected = returned.get(order_id).copied().unwrap_or(0);
                    if order_id.is_empty() || expected == 0 || -amount != expected {
                        discrepancies.push(mismatch(
                            &name,
                            "UNKNOWN_ADJUSTMENT",
                            -expected,
                            amount,
                            if expected == 0 {
                                "no refund or chargeback on our books explains it".to_owned()
                            } else {
                                format!("refunds and chargebacks on our books: {expected}")
                            },
                        ));
                    } else {
                        matched += 1;
                    }
                }
                _ => payout = Some(payout.unwrap_or(0) + amount),
            }
        }
        for (order_id, reported) in &reported_fees {
            match fees.get(order_id) {
                Some(&expected) if expected == *reported => matched += 1,
                expected => {
                    let expected = expected.copied().unwrap_or(0);
                    discrepancies.push(mismatch(
                        order_id,
                        "FEE_MISMATCH",
                        expected,
                        *reported,
                        format!("fees posted {expected}, fees withheld {reported}"),
                    ));
                }
            }
        }
        if let Some(paid) = payout {
            let expected = sales - withheld + adjusted;
            if paid == expected {
                matched += 1;
            } else {
                discrepancies.push(mismatch(
                    "",
                    "PAYOUT_MISMATCH",
                    expected,
                    paid,
                    format!(
                        "orders {sales} - fees {withheld} + adjustments {adjusted} = {expected}, paid {paid}"
                    ),
                ));
            }
            let payout_id = format!("{}:{}", req.channel, req.settlement_id);
            if paid > 0 && !store::payout_posted(&txn, &payout_id).await? {
                let line = |account: &str, debit: i64, credit: i64| JournalLine {
                    account_code: account.into(),
                    debit_minor: debit,
                    credit_minor: credit,
                    currency: currency.clone(),
                    channel: req.channel.clone(),
                    order_id: String::new(),
                    memo: format!("payout of settlement {}", req.settlement_id),
                };
                insert_entry(
                    &txn,
                    &format!("{} settlement {}", req.channel, req.settlement_id),
                    Some(&SourceDocument {
                        kind: store::PAYOUT_KIND.into(),
                        id: payout_id,
                    }),
                    &[line("1000", paid, 0), line("1200", 0, paid)],
                    "",
                )
                .await?;
            }
        }
        let response = ReconcileSettlementResponse {
            matched_lines: matched,
            discrepancies,
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn only_profit_and_loss_accounts_count() {
        assert_eq!(bucket("4000"), Some("revenue"));
        assert_eq!(bucket("4200"), Some("refunds"));
        assert_eq!(bucket("5300"), Some("chargebacks"));
        assert_eq!(bucket("1200"), None);
        assert_eq!(bucket("2100"), None);
    }
}
