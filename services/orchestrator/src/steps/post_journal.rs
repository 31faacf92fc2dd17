//! Posts the shipment's entry: the sale, the channel's fees, the label, the tax owed. After
//! the pivot: not undone (a mistake is reversed by another entry).

use erp_proto::finance;

use crate::ctx::{Ctx, OrderSnapshot};
use crate::outcome::{Outcome, StepError, StepResult};
use crate::steps::{Call, Handlers};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: None,
    summary: |ctx| format!("journal entry {}", ctx.journal_entry_id),
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let Call {
        p,
        saga_id,
        key: k,
        timeout: t,
        ..
    } = c;
    let o = &ctx.shipping().ok_or_else(|| StepError::missing("order"))?;
    let e = p
        .ports
        .finance
        .post_journal(
            finance::PostJournalRequest {
                idempotency_key: k,
                memo: if ctx.parts {
                    format!(
                        "shipment {} of order {}",
                        ctx.shipments.len() + 1,
                        o.order_id
                    )
                } else {
                    format!("shipment of order {}", o.order_id)
                },
                source: Some(erp_proto::common::SourceDocument {
                    kind: "saga".into(),
                    id: saga_id.to_owned(),
                }),
                lines: journal_lines(o, ctx.label_cost_minor),
            },
            t,
        )
        .await?;
    ctx.journal_entry_id = e.entry.map(|e| e.entry_id).unwrap_or_default();
    Ok(Outcome::Next)
}

/// The balanced entry of a shipment: the sale (payment clearing against revenue), cost of goods
/// against inventory, the channel's fees, and the label against carrier payables.
pub fn journal_lines(o: &OrderSnapshot, label_cost_minor: i64) -> Vec<finance::JournalLine> {
    let line = |account: &str, debit: i64, credit: i64, memo: &str| finance::JournalLine {
        account_code: account.into(),
        debit_minor: debit,
        credit_minor: credit,
        currency: o.currency.clone(),
        channel: o.channel.clone(),
        order_id: o.order_id.clone(),
        memo: memo.into(),
    };
    // The customer paid the total (or owes it, on account); the tax in it is owed to the tax
    // authority, not earned.
    let on_account = o.net_terms_days > 0;
    let due = format!("invoiced, due in {} days", o.net_terms_days);
    let mut lines = vec![
        if on_account {
            line("1100", o.total_minor, 0, &due)
        } else {
            line("1200", o.total_minor, 0, "payment captured")
        },
        line("4000", 0, o.total_minor - o.tax_minor, "sales revenue"),
    ];
    if o.tax_minor > 0 {
        lines.push(line("2200", 0, o.tax_minor, "sales tax collected"));
    }
    // The cost of the goods is posted by finance from inventory's shipment, at the moving
    // average that the inventory valuation holds.
    // Exact, then bounded: the order's total is at most 10^12 and the rate at most 100%.
    let commission = (i128::from(o.total_minor) - i128::from(o.tax_minor))
        * i128::from(o.commission_bps)
        / 10_000;
    let fees = i64::try_from(commission)
        .unwrap_or(i64::MAX)
        .saturating_add(o.fixed_fee_minor);
    if fees > 0 {
        lines.push(line("5100", fees, 0, "channel commission and fees"));
        if on_account {
            lines.push(line("2100", 0, fees, "fees owed to the channel"));
        } else {
            lines.push(line("1200", 0, fees, "fees withheld from payout"));
        }
    }
    if label_cost_minor > 0 {
        lines.push(line("5200", label_cost_minor, 0, "shipping label"));
        lines.push(line("2100", 0, label_cost_minor, "owed to the carrier"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::LineSnapshot;

    #[test]
    fn shipment_entry_balances() {
        let o = OrderSnapshot {
            order_id: "o".into(),
            channel: "amazon-us".into(),
            currency: "USD".into(),
            total_minor: 2599,
            commission_bps: 1500,
            fixed_fee_minor: 99,
            lines: vec![LineSnapshot {
                quantity: 2,
                unit_cost_minor: 450,
                ..Default::default()
            }],
            ..Default::default()
        };
        let lines = journal_lines(&o, 735);
        let d: i64 = lines.iter().map(|l| l.debit_minor).sum();
        let c: i64 = lines.iter().map(|l| l.credit_minor).sum();
        assert_eq!(d, c);
        // Sale, fees, label; the cost of goods comes from the inventory valuation.
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn tax_is_owed_not_earned() {
        let o = OrderSnapshot {
            order_id: "o".into(),
            channel: "web".into(),
            currency: "USD".into(),
            subtotal_minor: 2598,
            tax_minor: 172,
            total_minor: 2770,
            ..Default::default()
        };
        let lines = journal_lines(&o, 0);
        let amount = |account: &str| -> i64 {
            lines
                .iter()
                .filter(|l| l.account_code == account)
                .map(|l| l.credit_minor - l.debit_minor)
                .sum()
        };
        assert_eq!(amount("1200"), -2770, "the customer paid the total");
        assert_eq!(amount("4000"), 2598, "revenue is the subtotal");
        assert_eq!(amount("2200"), 172, "the tax is owed");
    }

    #[test]
    fn a_sale_on_account_is_a_receivable() {
        let o = OrderSnapshot {
            order_id: "o".into(),
            channel: "wholesale".into(),
            currency: "USD".into(),
            subtotal_minor: 10_000,
            tax_minor: 663,
            total_minor: 10_663,
            net_terms_days: 30,
            commission_bps: 100,
            ..Default::default()
        };
        let lines = journal_lines(&o, 900);
        let amount = |account: &str| -> i64 {
            lines
                .iter()
                .filter(|l| l.account_code == account)
                .map(|l| l.debit_minor - l.credit_minor)
                .sum()
        };
        assert_eq!(amount("1100"), 10_663, "the customer owes the invoice");
        assert_eq!(amount("1200"), 0, "no card was charged");
        assert_eq!(
            amount("2100"),
            -(100 + 900),
            "the channel's fee and the label"
        );
        assert_eq!(
            lines
                .iter()
                .map(|l| l.debit_minor - l.credit_minor)
                .sum::<i64>(),
            0
        );
        assert!(lines[0].memo.contains("due in 30 days"));
    }
}
