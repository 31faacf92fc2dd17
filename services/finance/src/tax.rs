//! Sales tax from a rate table by jurisdiction and item tax class.

use erp_proto::finance::*;
use erp_runtime::audit;
use erp_runtime::validate::Violations;
use erp_runtime::{ApiError, ApiResult};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, EntityTrait, QuerySelect, TransactionTrait};

use crate::api::{FinanceApi, money};
use crate::domain;
use crate::store::tax_rate;

impl FinanceApi {
    pub(crate) async fn set_tax_rate(
        &self,
        caller: &erp_runtime::auth::Caller,
        req: SetTaxRateRequest,
    ) -> ApiResult<SetTaxRateResponse> {
        let reason = req.reason;
        let r = req.rate.unwrap_or_default();
        let mut v = Violations::new();
        v.check(
            domain::valid_jurisdiction(&r.jurisdiction),
            "rate.jurisdiction",
            "must be a country code, optionally with a region: US, US-NJ",
        );
        v.code("rate.tax_class", &r.tax_class);
        v.check(
            (0..=10_000).contains(&r.rate_bps),
            "rate.rate_bps",
            "must be 0..=10000 basis points",
        );
        v.optional_text("reason", &reason, 500);
        v.finish()?;
        let txn = self.db.begin().await?;
        let am = tax_rate::ActiveModel {
            jurisdiction: Set(r.jurisdiction.clone()),
            tax_class: Set(r.tax_class.clone()),
            rate_bps: Set(r.rate_bps),
        };
        let before = tax_rate::Entity::find_by_id((r.jurisdiction.clone(), r.tax_class.clone()))
            .lock_exclusive()
            .one(&txn)
            .await?;
        // One statement either way: two first settings of a rate racing do not collide.
        tax_rate::Entity::insert(am)
            .on_conflict(
                OnConflict::columns([tax_rate::Column::Jurisdiction, tax_rate::Column::TaxClass])
                    .update_column(tax_rate::Column::RateBps)
                    .to_owned(),
            )
            .exec(&txn)
            .await?;
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("tax_rate:{}/{}", r.jurisdiction, r.tax_class),
                reason: &reason,
                before: before.map(|b| serde_json::json!({ "rate_bps": b.rate_bps })),
                after: Some(serde_json::json!({ "rate_bps": r.rate_bps })),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(SetTaxRateResponse { rate: Some(r) })
    }

    /// Tax per line: the rate of the most specific jurisdiction that has one for the line's
    /// class (`US-NJ`, else `US`); none means the line is not taxed there.
    pub(crate) async fn calculate_tax(
        &self,
        req: CalculateTaxRequest,
    ) -> ApiResult<CalculateTaxResponse> {
        let mut v = Violations::new();
        v.check(
            domain::valid_jurisdiction(&req.jurisdiction),
            "jurisdiction",
            "must be a country code, optionally with a region: US, US-NJ",
        );
        v.check(!req.lines.is_empty(), "lines", "must not be empty");
        let currency = req
            .lines
            .first()
            .and_then(|l| l.amount.as_ref())
            .map(|a| a.currency.clone())
            .unwrap_or_default();
        for (i, l) in req.lines.iter().enumerate() {
            v.text(&format!("lines[{i}].line_id"), &l.line_id, 100);
            v.code(&format!("lines[{i}].tax_class"), &l.tax_class);
            let a = l.amount.clone().unwrap_or_default();
            v.currency(&format!("lines[{i}].amount.currency"), &a.currency);
            v.check(
                a.currency == currency,
                format!("lines[{i}].amount.currency"),
                "one currency per calculation",
            );
            v.non_negative(&format!("lines[{i}].amount.amount_minor"), a.amount_minor);
        }
        v.finish()?;
        let mut lines = Vec::with_capacity(req.lines.len());
        let mut total = 0i64;
        for l in &req.lines {
            let mut rate = 0;
            for j in domain::jurisdictions(&req.jurisdiction) {
                if let Some(r) = tax_rate::Entity::find_by_id((j, l.tax_class.clone()))
                    .one(&self.db)
                    .await?
                {
                    rate = r.rate_bps;
                    break;
                }
            }
            let amount = l.amount.as_ref().map_or(0, |a| a.amount_minor);
            let tax = domain::tax_minor(amount, rate);
            total = total
                .checked_add(tax)
                .ok_or_else(|| ApiError::invalid("lines", "tax overflows"))?;
            lines.push(LineTax {
                line_id: l.line_id.clone(),
                rate_bps: rate,
                tax: money(tax, &currency),
            });
        }
        Ok(CalculateTaxResponse {
            lines,
            total_tax: money(total, &currency),
        })
    }
}
