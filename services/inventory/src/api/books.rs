//! The stock ledger and its valuation: entries, value at cost, landed cost, verification.

use super::*;

impl InventoryApi {
    pub(super) async fn list_ledger_entries(
        &self,
        req: ListLedgerEntriesRequest,
    ) -> ApiResult<ListLedgerEntriesResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let mut query = ledger::Entity::find().order_by_asc(ledger::Column::Seq);
        if !req.sku.is_empty() {
            query = query.filter(ledger::Column::Sku.eq(&req.sku));
        }
        if !req.location.is_empty() {
            query = query.filter(ledger::Column::Location.eq(&req.location));
        }
        let rows = query.offset(offset).limit(size).all(&self.store.db).await?;
        let next = next_page_token(offset, rows.len(), size);
        Ok(ListLedgerEntriesResponse {
            entries: rows
                .into_iter()
                .map(|e| LedgerEntry {
                    sequence: e.seq,
                    sku: e.sku,
                    location: e.location,
                    bucket: domain::Bucket::parse(&e.bucket)
                        .map_or(Bucket::Unspecified, bucket_to_wire)
                        as i32,
                    delta: e.delta,
                    balance_after: e.balance_after,
                    reason: e.reason,
                    source: Some(SourceDocument {
                        kind: e.source_kind,
                        id: e.source_id,
                    }),
                    actor: e.actor,
                    recorded_at: Some(to_timestamp(e.recorded_at_ms)),
                })
                .collect(),
            next_page_token: next,
        })
    }

    pub(super) async fn get_valuation(
        &self,
        req: GetValuationRequest,
    ) -> ApiResult<GetValuationResponse> {
        let mut v = Violations::new();
        for (i, sku) in req.skus.iter().enumerate() {
            v.code(&format!("skus[{i}]"), sku);
        }
        v.finish()?;
        let mut q = item_value::Entity::find().order_by_asc(item_value::Column::Sku);
        if !req.skus.is_empty() {
            q = q.filter(item_value::Column::Sku.is_in(req.skus.clone()));
        }
        let rows = q.all(&self.store.db).await?;
        let mut totals: std::collections::BTreeMap<String, i64> = Default::default();
        for r in &rows {
            let t = totals.entry(r.currency.clone()).or_default();
            *t = erp_runtime::money::add(*t, r.value_minor, "the stock valuation total")?;
        }
        let items = rows
            .into_iter()
            .map(|r| {
                let money = |amount_minor| {
                    Some(erp_proto::common::Money {
                        amount_minor,
                        currency: r.currency.clone(),
                    })
                };
                ItemValuation {
                    unit_cost: money(if r.quantity > 0 {
                        r.value_minor / r.quantity
                    } else {
                        0
                    }),
                    value: money(r.value_minor),
                    quantity: r.quantity,
                    sku: r.sku,
                }
            })
            .collect();
        Ok(GetValuationResponse {
            items,
            totals: totals
                .into_iter()
                .map(|(currency, amount_minor)| erp_proto::common::Money {
                    amount_minor,
                    currency,
                })
                .collect(),
        })
    }

    pub(super) async fn allocate_landed_cost(
        &self,
        req: AllocateLandedCostRequest,
    ) -> ApiResult<AllocateLandedCostResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        let receipt = req.receipt.clone().unwrap_or_default();
        v.text("receipt.kind", &receipt.kind, 50);
        v.text("receipt.id", &receipt.id, 100);
        v.check(!req.charges.is_empty(), "charges", "must not be empty");
        for (i, c) in req.charges.iter().enumerate() {
            v.text(&format!("charges[{i}].kind"), &c.kind, 50);
            let a = c.amount.clone().unwrap_or_default();
            v.positive(&format!("charges[{i}].amount.amount_minor"), a.amount_minor);
            v.currency(&format!("charges[{i}].amount.currency"), &a.currency);
        }
        let basis = AllocationBasis::try_from(req.basis).unwrap_or_default();
        v.check(
            basis != AllocationBasis::Unspecified,
            "basis",
            "must be VALUE, QUANTITY or WEIGHT",
        );
        v.finish()?;
        idempotent!(self, "inventory.AllocateLandedCost", req, |txn| {
            let lines = receipt_cost::Entity::find()
                .filter(receipt_cost::Column::SourceKind.eq(&receipt.kind))
                .filter(receipt_cost::Column::SourceId.eq(&receipt.id))
                .order_by_asc(receipt_cost::Column::Sku)
                .all(&txn)
                .await?;
            if lines.is_empty() {
                return Err(ApiError::precondition(
                    "NO_SUCH_RECEIPT",
                    format!("nothing was received for {} {}", receipt.kind, receipt.id),
                ));
            }
            let currency = req
                .charges
                .first()
                .and_then(|c| c.amount.as_ref())
                .map(|a| a.currency.clone())
                .unwrap_or_default();
            let mut total = 0i64;
            for (i, c) in req.charges.iter().enumerate() {
                let a = c.amount.clone().unwrap_or_default();
                if a.currency != currency {
                    return Err(ApiError::invalid(
                        format!("charges[{i}].amount.currency"),
                        "one currency per allocation",
                    ));
                }
                total = erp_runtime::money::add(total, a.amount_minor, "the charges' total")?;
            }
            let mut weights = Vec::with_capacity(lines.len());
            for l in &lines {
                weights.push(match basis {
                    // Exact weights: products of 10^9 units and 10^12 costs exceed i64.
                    AllocationBasis::Value => {
                        i128::from(l.quantity) * i128::from(l.unit_cost_minor)
                    }
                    AllocationBasis::Quantity => i128::from(l.quantity),
                    _ => {
                        let grams = item::Entity::find_by_id(l.sku.clone())
                            .one(&txn)
                            .await?
                            .map_or(0, |i| i.weight_grams);
                        i128::from(l.quantity) * i128::from(grams)
                    }
                });
            }
            let parts = crate::store::valuation::allocate(total, &weights);
            let mut out = Vec::with_capacity(lines.len());
            for (l, part) in lines.iter().zip(parts) {
                let (capitalized, item_currency) =
                    self.store.capitalize(&txn, &l.sku, part).await?;
                if item_currency != currency {
                    return Err(ApiError::precondition(
                        "CURRENCY_MISMATCH",
                        format!(
                            "{} is valued in {item_currency}, the charges are in {currency}",
                            l.sku
                        ),
                    ));
                }
                self.store
                    .landed_cost_event(&txn, &l.sku, part, &currency, capitalized, &receipt)
                    .await?;
                let after = item_value::Entity::find_by_id(l.sku.clone())
                    .one(&txn)
                    .await?
                    .map_or(0, |v| {
                        if v.quantity > 0 {
                            v.value_minor / v.quantity
                        } else {
                            0
                        }
                    });
                let money = |amount_minor| {
                    Some(erp_proto::common::Money {
                        amount_minor,
                        currency: currency.clone(),
                    })
                };
                out.push(LandedCostLine {
                    sku: l.sku.clone(),
                    allocated: money(part),
                    unit_cost_after: money(after),
                    capitalized,
                });
            }
            AllocateLandedCostResponse { lines: out }
        })
    }

    pub(super) async fn verify_ledger(&self) -> ApiResult<VerifyLedgerResponse> {
        let (entries, mismatches) = self.store.verify_ledger(&self.store.db).await?;
        Ok(VerifyLedgerResponse {
            consistent: mismatches.is_empty(),
            entries_replayed: i64::try_from(entries).unwrap_or(i64::MAX),
            mismatches: mismatches
                .into_iter()
                .map(
                    |(sku, location, b, ledger_balance, bucket_balance)| LedgerMismatch {
                        sku,
                        location,
                        bucket: bucket_to_wire(b) as i32,
                        ledger_balance,
                        bucket_balance,
                    },
                )
                .collect(),
        })
    }
}
