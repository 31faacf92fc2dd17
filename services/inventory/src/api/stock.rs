//! Stock levels and what moves them: receipts, adjustments, inbound, transfers, cycle counts.

use super::*;

impl InventoryApi {
    pub(super) async fn get_stock(&self, req: GetStockRequest) -> ApiResult<GetStockResponse> {
        let mut v = Violations::new();
        v.code("sku", &req.sku);
        if !req.location.is_empty() {
            v.code("location", &req.location);
        }
        v.finish()?;
        self.store.item(&self.store.db, &req.sku).await?;
        let mut query = stock_level::Entity::find()
            .filter(stock_level::Column::Sku.eq(&req.sku))
            .order_by_asc(stock_level::Column::Location);
        if !req.location.is_empty() {
            self.store.location(&self.store.db, &req.location).await?;
            query = query.filter(stock_level::Column::Location.eq(&req.location));
        }
        let rows = query.all(&self.store.db).await?;
        Ok(GetStockResponse {
            levels: rows.iter().map(level_to_wire).collect(),
        })
    }

    pub(super) async fn get_availability(
        &self,
        req: GetAvailabilityRequest,
    ) -> ApiResult<GetAvailabilityResponse> {
        let mut v = Violations::new();
        v.check(!req.skus.is_empty(), "skus", "must name at least one sku");
        v.check(req.skus.len() <= 500, "skus", "at most 500 per call");
        for (i, sku) in req.skus.iter().enumerate() {
            v.code(&format!("skus[{i}]"), sku);
        }
        v.finish()?;
        let as_of = req.as_of.as_ref().map(from_timestamp);
        let map =
            if as_of.is_none() && !matches!(self.store.cache, crate::cache::AtpCache::Disabled) {
                let mut map = std::collections::BTreeMap::new();
                for sku in &req.skus {
                    let figures = match self.store.cache.get(sku).await {
                        Ok(figures) => figures,
                        Err(generations) => {
                            let figures = self
                                .store
                                .availability(&self.store.db, std::slice::from_ref(sku), None)
                                .await?
                                .remove(sku)
                                .unwrap_or_default();
                            if let Some(g) = generations {
                                self.store.cache.put(sku, g, &figures).await;
                            }
                            figures
                        }
                    };
                    map.insert(sku.clone(), figures);
                }
                map
            } else {
                self.store
                    .availability(&self.store.db, &req.skus, as_of)
                    .await?
            };
        let lots = if req.include_inbound {
            self.store.inbound_lots(&self.store.db, &req.skus).await?
        } else {
            Vec::new()
        };
        let items = req
            .skus
            .iter()
            .map(|sku| {
                let per = map.get(sku).cloned().unwrap_or_default();
                SkuAvailability {
                    sku: sku.clone(),
                    network_available: per.values().sum(),
                    locations: per
                        .into_iter()
                        .map(|(location, available)| LocationAvailability {
                            location,
                            available,
                        })
                        .collect(),
                    inbound: lots
                        .iter()
                        .filter(|l| &l.sku == sku)
                        .map(|l| InboundLot {
                            location: l.location.clone(),
                            quantity: l.quantity,
                            expected_at: Some(to_timestamp(l.expected_at_ms)),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(GetAvailabilityResponse { items })
    }

    pub(super) async fn receive_stock(
        &self,
        req: ReceiveStockRequest,
    ) -> ApiResult<ReceiveStockResponse> {
        let mut v = movement(&req.idempotency_key, &req.sku, &req.location, req.quantity);
        if let Some(cost) = &req.unit_cost {
            v.non_negative("unit_cost.amount_minor", cost.amount_minor);
            v.currency("unit_cost.currency", &cost.currency);
        }
        v.source("source", req.source.as_ref());
        v.finish()?;
        let unit_cost = req.unit_cost.as_ref().map(|c| c.amount_minor);
        idempotent!(self, "inventory.ReceiveStock", req, |txn| {
            // The cost values the stock: it must be in the item's currency.
            if let Some(cost) = &req.unit_cost
                && let Some(i) = item::Entity::find_by_id(req.sku.clone()).one(&txn).await?
                && i.currency != cost.currency
            {
                return Err(ApiError::invalid(
                    "unit_cost.currency",
                    format!("{} is valued in {}", i.sku, i.currency),
                ));
            }
            let source = source_of(req.source.as_ref(), "receipt", "receiving");
            let mut changes = vec![(domain::Bucket::OnHand, req.quantity)];
            let mut reason = domain::Reason::Receipt;
            if source.kind == "transfer" {
                if !req.from_inbound {
                    return Err(ApiError::invalid(
                        "from_inbound",
                        "a transfer arrives from inbound",
                    ));
                }
                self.store
                    .receive_transfer(&txn, &source.id, &req.sku, &req.location, req.quantity)
                    .await?;
                reason = domain::Reason::TransferIn;
            }
            if req.from_inbound {
                changes.push((domain::Bucket::Inbound, -req.quantity));
                self.store
                    .consume_inbound(&txn, &req.sku, &req.location, req.quantity)
                    .await?;
            }
            let level = self
                .store
                .change_valued(
                    &txn,
                    &req.sku,
                    &req.location,
                    &changes,
                    reason,
                    &source,
                    unit_cost,
                )
                .await?;
            if reason == domain::Reason::Receipt && !source.id.is_empty() {
                self.store
                    .record_receipt_cost(&txn, &source, &req.sku, req.quantity, unit_cost)
                    .await?;
            }
            ReceiveStockResponse {
                level: Some(level_to_wire(&level)),
            }
        })
    }

    pub(super) async fn adjust_stock(
        &self,
        caller: &Caller,
        req: AdjustStockRequest,
    ) -> ApiResult<AdjustStockResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.code("sku", &req.sku);
        v.code("location", &req.location);
        v.check(req.delta != 0, "delta", "must not be zero");
        v.check(
            req.delta.unsigned_abs() <= erp_runtime::validate::MAX_QUANTITY.unsigned_abs(),
            "delta",
            format!("must be within ±{}", erp_runtime::validate::MAX_QUANTITY),
        );
        let bucket = match Bucket::try_from(req.bucket) {
            Ok(Bucket::OnHand) => Some(domain::Bucket::OnHand),
            Ok(Bucket::ReturnsPending) => Some(domain::Bucket::ReturnsPending),
            Ok(Bucket::Quarantined) => Some(domain::Bucket::Quarantined),
            _ => None,
        };
        v.check(
            bucket.is_some(),
            "bucket",
            "must be ON_HAND, RETURNS_PENDING or QUARANTINED",
        );
        let reason = req.actor.as_ref().map(|a| a.reason.as_str()).unwrap_or("");
        v.check(
            !reason.trim().is_empty(),
            "actor.reason",
            "an adjustment needs a reason",
        );
        v.actor("actor", req.actor.as_ref());
        v.finish()?;
        let Some(bucket) = bucket else {
            return Err(ApiError::invalid("bucket", "unsupported"));
        };
        idempotent!(self, "inventory.AdjustStock", req, |txn| {
            // A person writing off more than the threshold's worth needs approval authority;
            // the suite's services write off what the floor reported (audited either way).
            if req.delta < 0 && !caller.roles.iter().any(|r| r.starts_with("service:")) {
                let item = self.store.item(&txn, &req.sku).await?;
                let value = item
                    .unit_cost_minor
                    .checked_mul(req.delta.saturating_neg())
                    .unwrap_or(i64::MAX);
                if value > self.write_off_approval_minor
                    && let Err(why) = caller.may_approve(value)
                {
                    return Err(ApiError::denied(format!(
                        "writing off {} x {} ({value} {}) exceeds the threshold {}: {why}",
                        -req.delta, req.sku, item.currency, self.write_off_approval_minor
                    )));
                }
            }
            let source = Source {
                kind: "adjustment".into(),
                id: reason.to_owned(),
                actor: caller.subject.clone(),
            };
            let level = self
                .store
                .change(
                    &txn,
                    &req.sku,
                    &req.location,
                    &[(bucket, req.delta)],
                    domain::Reason::Adjustment,
                    &source,
                )
                .await?;
            audit::record(
                &txn,
                audit::Change {
                    caller,
                    target: format!("stock:{}@{}", req.sku, req.location),
                    reason,
                    before: None,
                    after: Some(serde_json::json!({
                        "bucket": format!("{bucket:?}"),
                        "delta": req.delta,
                        "on_hand": level.on_hand,
                    })),
                },
            )
            .await?;
            AdjustStockResponse {
                level: Some(level_to_wire(&level)),
            }
        })
    }

    pub(super) async fn record_inbound(
        &self,
        req: RecordInboundRequest,
    ) -> ApiResult<RecordInboundResponse> {
        let mut v = movement(&req.idempotency_key, &req.sku, &req.location, req.quantity);
        v.check(req.expected_at.is_some(), "expected_at", "is required");
        v.source("source", req.source.as_ref());
        v.finish()?;
        let expected = req
            .expected_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or_default();
        idempotent!(self, "inventory.RecordInbound", req, |txn| {
            let source = source_of(req.source.as_ref(), "purchase_order", "procurement");
            let level = self
                .store
                .record_inbound(
                    &txn,
                    &req.sku,
                    &req.location,
                    req.quantity,
                    expected,
                    &source,
                )
                .await?;
            RecordInboundResponse {
                level: Some(level_to_wire(&level)),
            }
        })
    }

    pub(super) async fn cancel_inbound(
        &self,
        req: CancelInboundRequest,
    ) -> ApiResult<CancelInboundResponse> {
        let mut v = movement(&req.idempotency_key, &req.sku, &req.location, req.quantity);
        v.source("source", req.source.as_ref());
        v.finish()?;
        idempotent!(self, "inventory.CancelInbound", req, |txn| {
            let source = source_of(req.source.as_ref(), "purchase_order", "procurement");
            // Refused (no bucket goes negative) when fewer units are expected than cancelled.
            let level = self
                .store
                .change(
                    &txn,
                    &req.sku,
                    &req.location,
                    &[(domain::Bucket::Inbound, -req.quantity)],
                    domain::Reason::Inbound,
                    &source,
                )
                .await?;
            self.store
                .consume_inbound(&txn, &req.sku, &req.location, req.quantity)
                .await?;
            CancelInboundResponse {
                level: Some(level_to_wire(&level)),
            }
        })
    }

    pub(super) async fn transfer_stock(
        &self,
        req: TransferStockRequest,
    ) -> ApiResult<TransferStockResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.code("sku", &req.sku);
        v.code("from_location", &req.from_location);
        v.code("to_location", &req.to_location);
        v.check(
            req.from_location != req.to_location,
            "to_location",
            "must differ from from_location",
        );
        v.positive("quantity", req.quantity);
        v.check(req.expected_at.is_some(), "expected_at", "is required");
        v.finish()?;
        let expected = req
            .expected_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or_default();
        idempotent!(self, "inventory.TransferStock", req, |txn| {
            let (t, from, to) = self
                .store
                .transfer(
                    &txn,
                    &req.sku,
                    &req.from_location,
                    &req.to_location,
                    req.quantity,
                    expected,
                )
                .await?;
            TransferStockResponse {
                transfer_id: t.transfer_id,
                from_level: Some(level_to_wire(&from)),
                to_level: Some(level_to_wire(&to)),
            }
        })
    }

    pub(super) async fn record_cycle_count(
        &self,
        caller: &Caller,
        req: RecordCycleCountRequest,
    ) -> ApiResult<RecordCycleCountResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.code("sku", &req.sku);
        v.code("location", &req.location);
        v.non_negative("counted_quantity", req.counted_quantity);
        v.actor("actor", req.actor.as_ref());
        v.finish()?;
        let actor = caller.subject.clone();
        let reason = req
            .actor
            .as_ref()
            .map(|a| a.reason.clone())
            .unwrap_or_default();
        idempotent!(self, "inventory.RecordCycleCount", req, |txn| {
            let (expected, level, accuracy) = self
                .store
                .cycle_count(
                    &txn,
                    &req.sku,
                    &req.location,
                    req.counted_quantity,
                    &actor,
                    &reason,
                )
                .await?;
            audit::record(
                &txn,
                audit::Change {
                    caller,
                    target: format!("stock:{}@{}", req.sku, req.location),
                    reason: &reason,
                    before: Some(serde_json::json!({ "on_hand": expected })),
                    after: Some(serde_json::json!({ "on_hand": req.counted_quantity })),
                },
            )
            .await?;
            RecordCycleCountResponse {
                expected_quantity: expected,
                variance: req.counted_quantity - expected,
                level: Some(level_to_wire(&level)),
                location_accuracy_bps: accuracy,
            }
        })
    }
}
