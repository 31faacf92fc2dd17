//! Inventory in the ledger: every change of value the inventory service makes to owned stock
//! (receipts at cost, shipments and write-offs at the moving average, landed costs) is posted
//! here from its stock-changed event, once per event, so the inventory asset account equals
//! the valued stock.

use erp_proto::common::SourceDocument;
use erp_proto::finance::JournalLine;
use erp_runtime::bus::Event;
use erp_runtime::outbox;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

use crate::api::{FinanceApi, insert_entry};
use crate::store::payment;

/// The account on the other side of the inventory asset (1300) for a movement, and whether
/// the movement bypasses the asset altogether (a landed cost on goods already sold).
fn counter_account(reason: &str, source_kind: &str) -> (&'static str, bool) {
    match reason {
        "receipt" if source_kind == "purchase_order" => ("2100", false),
        // Stock that arrived without a purchase order: the opening balance.
        "receipt" => ("3000", false),
        "shipment" | "return" | "quarantine" => ("5000", false),
        "landed_cost" => ("2100", false),
        "landed_cost_expensed" => ("2100", true),
        _ => ("5400", false),
    }
}

impl FinanceApi {
    /// Posts the value change carried by `inventory.stock_changed`, if any.
    pub async fn on_stock_changed(&self, event: &Event) -> anyhow::Result<()> {
        let p = &event.payload;
        let value = p["value_delta_minor"].as_i64().unwrap_or(0);
        if value == 0 {
            return Ok(());
        }
        let text = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
        let (reason, sku, currency) = (text("reason"), text("sku"), text("currency"));
        let (source_kind, source_id) = (text("source_kind"), text("source_id"));
        let txn = self.db.begin().await?;
        if !outbox::mark_processed(&txn, "finance", &event.id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            return Ok(());
        }
        // A shipment's cost belongs to the order's channel.
        let (order_id, channel) = if source_kind == "order" {
            let channel = payment::Entity::find()
                .filter(payment::Column::OrderId.eq(&source_id))
                .one(&txn)
                .await?
                .map(|p| p.channel)
                .unwrap_or_default();
            (source_id.clone(), channel)
        } else {
            (String::new(), String::new())
        };
        let (counter, expensed) = counter_account(&reason, &source_kind);
        let line = |account: &str, debit: i64, credit: i64| JournalLine {
            account_code: account.into(),
            debit_minor: debit,
            credit_minor: credit,
            currency: currency.clone(),
            channel: channel.clone(),
            order_id: order_id.clone(),
            memo: format!("{reason}: {sku}"),
        };
        let Some(amount) = value.checked_abs() else {
            // i64::MIN has no positive counterpart: nothing real is worth that much.
            tracing::error!(event_id = %event.id, value, "stock movement value out of range; not posted");
            txn.commit().await?;
            return Ok(());
        };
        let lines = if expensed {
            vec![line("5000", amount, 0), line(counter, 0, amount)]
        } else if value > 0 {
            vec![line("1300", amount, 0), line(counter, 0, amount)]
        } else {
            vec![line(counter, amount, 0), line("1300", 0, amount)]
        };
        insert_entry(
            &txn,
            &format!("inventory {reason} of {sku}"),
            Some(&SourceDocument {
                kind: source_kind.clone(),
                id: source_id.clone(),
            }),
            &lines,
            "",
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        txn.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::counter_account;

    #[test]
    fn each_movement_has_its_counter_account() {
        assert_eq!(
            counter_account("receipt", "purchase_order"),
            ("2100", false)
        );
        assert_eq!(counter_account("receipt", "receipt"), ("3000", false));
        assert_eq!(counter_account("shipment", "order"), ("5000", false));
        assert_eq!(counter_account("adjustment", ""), ("5400", false));
        assert_eq!(
            counter_account("landed_cost_expensed", "purchase_order"),
            ("2100", true)
        );
    }
}
