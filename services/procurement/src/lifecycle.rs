//! Replenishment (reorder policies, demand, suggestions that become drafts), the purchase order
//! after approval (sent: inbound in inventory; received through the warehouse), and supplier
//! scorecards.

use erp_runtime::auth::Caller;
use std::collections::BTreeMap;

use erp_proto::procurement::*;
use erp_proto::{inventory, warehouse};
use erp_runtime::bus::Event;
use erp_runtime::time::{from_timestamp, now_ms, to_timestamp};
use erp_runtime::validate::Violations;
use erp_runtime::{ApiError, ApiResult};
use erp_runtime::{idempotency, outbox};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, TransactionTrait};

use crate::api::{ProcurementApi, load_po};
use crate::domain::{self, Delivery, Policy, Terms};
use crate::error::ProcurementError;
use crate::store::{self, po, po_line, policy};

const DAY_MS: i64 = 86_400_000;

/// Demand is averaged over this many days.
pub const DEMAND_WINDOW_DAYS: i64 = 28;

fn upstream(s: tonic::Status) -> ApiError {
    ApiError::Upstream(s)
}

impl ProcurementApi {
    pub(crate) async fn set_policy(
        &self,
        req: SetReorderPolicyRequest,
    ) -> ApiResult<SetReorderPolicyResponse> {
        let p = req.policy.unwrap_or_default();
        let mut v = Violations::new();
        v.code("policy.sku", &p.sku);
        v.code("policy.location", &p.location);
        v.non_negative("policy.min_quantity", p.min_quantity);
        v.non_negative("policy.max_quantity", p.max_quantity);
        v.check(
            (0..=crate::domain::MAX_DAYS).contains(&p.safety_stock_days),
            "policy.safety_stock_days",
            format!("must be 0..={}", crate::domain::MAX_DAYS),
        );
        if p.safety_stock_days == 0 {
            v.check(
                p.max_quantity > p.min_quantity,
                "policy.max_quantity",
                "must be above min_quantity (min/max mode)",
            );
        }
        if !p.preferred_supplier_id.is_empty() {
            v.id("policy.preferred_supplier_id", &p.preferred_supplier_id);
        }
        v.finish()?;
        if !p.preferred_supplier_id.is_empty()
            && store::term(&self.db, &p.preferred_supplier_id, &p.sku)
                .await?
                .is_none()
        {
            return Err(ApiError::invalid(
                "policy.preferred_supplier_id",
                format!("supplier has no terms for {}", p.sku),
            ));
        }
        let am = policy::ActiveModel {
            sku: Set(p.sku.clone()),
            location: Set(p.location.clone()),
            min_quantity: Set(p.min_quantity),
            max_quantity: Set(p.max_quantity),
            safety_stock_days: Set(p.safety_stock_days),
            preferred_supplier_id: Set(p.preferred_supplier_id.clone()),
        };
        let txn = self.db.begin().await?;
        let exists = store::policy(&txn, &p.sku, &p.location).await?.is_some();
        if exists {
            am.update(&txn).await?;
        } else {
            am.insert(&txn).await?;
        }
        txn.commit().await?;
        Ok(SetReorderPolicyResponse { policy: Some(p) })
    }

    pub(crate) async fn record_demand(
        &self,
        req: RecordDemandRequest,
    ) -> ApiResult<RecordDemandResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.code("sku", &req.sku);
        v.code("location", &req.location);
        v.positive("quantity", req.quantity);
        v.finish()?;
        let at = req.occurred_at.as_ref().map_or_else(now_ms, from_timestamp);
        store::record_demand_once(
            &self.db,
            &req.idempotency_key,
            &req.sku,
            &req.location,
            req.quantity,
            at,
        )
        .await?;
        Ok(RecordDemandResponse {})
    }

    /// What each policy calls for now; with `create_drafts`, one draft purchase order per
    /// supplier and location.
    pub(crate) async fn suggest(
        &self,
        caller: &Caller,
        req: SuggestReplenishmentRequest,
    ) -> ApiResult<SuggestReplenishmentResponse> {
        let mut v = Violations::new();
        if !req.location.is_empty() {
            v.code("location", &req.location);
        }
        for (i, p) in req.positions.iter().enumerate() {
            v.code(&format!("positions[{i}].sku"), &p.sku);
            v.code(&format!("positions[{i}].location"), &p.location);
            // Counts of units: never negative, bounded.
            v.non_negative(&format!("positions[{i}].available"), p.available);
            v.non_negative(&format!("positions[{i}].inbound"), p.inbound);
        }
        v.finish()?;
        self.suggest_for(
            caller,
            store::policies_at(&self.db, &req.location).await?,
            &req.positions,
            req.create_drafts,
        )
        .await
    }

    async fn suggest_for(
        &self,
        caller: &Caller,
        policies: Vec<policy::Model>,
        positions: &[StockPosition],
        create_drafts: bool,
    ) -> ApiResult<SuggestReplenishmentResponse> {
        let now = now_ms();
        let mut suggestions = Vec::new();
        for p in policies {
            let Some(t) = store::terms_to_order(&self.db, &p).await? else {
                tracing::warn!(sku = %p.sku, "no supplier has terms for this item; no suggestion");
                continue;
            };
            let stock = match positions
                .iter()
                .find(|x| x.sku == p.sku && x.location == p.location)
            {
                Some(x) => x.available.saturating_add(x.inbound),
                None => self.stock_position(&p.sku, &p.location).await?,
            };
            let unsent = store::unsent_quantity(&self.db, &p.sku, &p.location).await?;
            let window = store::demand_since(
                &self.db,
                &p.sku,
                &p.location,
                now - DEMAND_WINDOW_DAYS * DAY_MS,
            )
            .await?;
            let rate = domain::daily_rate_milli(window, DEMAND_WINDOW_DAYS);
            let rule = Policy {
                min_quantity: p.min_quantity,
                max_quantity: p.max_quantity,
                safety_stock_days: p.safety_stock_days,
            };
            let terms = Terms {
                lead_time_days: t.lead_time_days,
                minimum_order_quantity: t.minimum_order_quantity,
                pack_multiple: t.pack_multiple,
            };
            if let Some(s) = domain::suggest(&rule, &terms, stock.saturating_add(unsent), rate) {
                suggestions.push(ReplenishmentSuggestion {
                    sku: p.sku,
                    location: p.location,
                    supplier_id: t.supplier_id,
                    quantity: s.quantity,
                    rationale: format!(
                        "{} ({window} units demanded in {DEMAND_WINDOW_DAYS} d; stock {stock}, unsent orders {unsent})",
                        s.rationale
                    ),
                });
            }
        }
        let mut drafts = Vec::new();
        if create_drafts {
            let mut groups: BTreeMap<(String, String), Vec<PurchaseOrderLine>> = BTreeMap::new();
            for s in &suggestions {
                groups
                    .entry((s.supplier_id.clone(), s.location.clone()))
                    .or_default()
                    .push(PurchaseOrderLine {
                        sku: s.sku.clone(),
                        quantity: s.quantity,
                        unit_cost: None,
                        received_quantity: 0,
                    });
            }
            for ((supplier_id, location), lines) in groups {
                let created = self
                    .create_po(
                        caller,
                        CreatePurchaseOrderRequest {
                            idempotency_key: format!("replenish:{}", uuid::Uuid::now_v7()),
                            supplier_id,
                            location,
                            lines,
                        },
                    )
                    .await?;
                if let Some(p) = created.purchase_order {
                    drafts.push(p.purchase_order_id);
                }
            }
        }
        Ok(SuggestReplenishmentResponse {
            suggestions,
            draft_purchase_order_ids: drafts,
        })
    }

    /// Available now plus inbound, from the inventory service.
    async fn stock_position(&self, sku: &str, location: &str) -> ApiResult<i64> {
        let levels = self
            .inventory
            .clone()
            .get_stock(inventory::GetStockRequest {
                sku: sku.to_owned(),
                location: location.to_owned(),
            })
            .await
            .map_err(upstream)?
            .into_inner()
            .levels;
        Ok(levels.iter().map(|l| l.available + l.inbound).sum())
    }

    /// Sends an approved order to the supplier: its lines become inbound stock in inventory,
    /// expected one lead time from now, so availability by date can promise them.
    pub(crate) async fn send(
        &self,
        req: SendPurchaseOrderRequest,
    ) -> ApiResult<SendPurchaseOrderResponse> {
        let mut v = Violations::new();
        v.id("purchase_order_id", &req.purchase_order_id);
        v.finish()?;
        // Locked from the status read to the status write, like a cancel: a cancel arriving
        // meanwhile waits, then sees the order sent and cancels the inbound recorded here.
        let txn = self.db.begin().await?;
        let p = store::po(&txn, &req.purchase_order_id, true).await?;
        match p.status.as_str() {
            "approved" => {}
            "sent" | "partially_received" | "received" => {
                return Ok(SendPurchaseOrderResponse {
                    purchase_order: Some(load_po(&txn, &p.purchase_order_id).await?),
                });
            }
            other => {
                return Err(ProcurementError::NotApproved {
                    po: p.purchase_order_id.clone(),
                    status: other.to_owned(),
                }
                .into());
            }
        }
        let now = now_ms();
        let lead_ms = (p.expected_at_ms - p.created_at_ms).max(0);
        let expected = now + lead_ms;
        let lines = store::lines_of(&txn, &p.purchase_order_id).await?;
        // Keys derived from the order: a retry after a failure part-way records nothing twice.
        for l in &lines {
            self.inventory
                .clone()
                .record_inbound(inventory::RecordInboundRequest {
                    idempotency_key: format!("po:{}:{}:inbound", p.purchase_order_id, l.sku),
                    sku: l.sku.clone(),
                    location: p.location.clone(),
                    quantity: l.quantity,
                    expected_at: Some(to_timestamp(expected)),
                    source: Some(erp_proto::common::SourceDocument {
                        kind: "purchase_order".into(),
                        id: p.purchase_order_id.clone(),
                    }),
                })
                .await
                .map_err(upstream)?;
        }
        if store::mark_sent(&txn, &p.purchase_order_id, now, expected).await? {
            outbox::enqueue(
                &txn,
                "procurement.po_sent",
                &p.purchase_order_id,
                &serde_json::json!({ "purchase_order_id": p.purchase_order_id, "supplier_id": p.supplier_id, "location": p.location, "expected_at_ms": expected }),
            )
            .await?;
        }
        txn.commit().await?;
        self.outbox.wake();
        Ok(SendPurchaseOrderResponse {
            purchase_order: Some(load_po(&self.db, &p.purchase_order_id).await?),
        })
    }

    /// Receives goods against a sent order through the warehouse, which moves the stock; the
    /// order's quantities follow from the receipt.
    pub(crate) async fn receive(
        &self,
        req: ReceivePurchaseOrderRequest,
    ) -> ApiResult<ReceivePurchaseOrderResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("purchase_order_id", &req.purchase_order_id);
        v.check(!req.lines.is_empty(), "lines", "must not be empty");
        for (i, l) in req.lines.iter().enumerate() {
            v.code(&format!("lines[{i}].sku"), &l.sku);
            v.positive(&format!("lines[{i}].quantity"), l.quantity);
        }
        v.finish()?;
        let hash = idempotency::fingerprint(&req);
        if let Some(replay) = idempotency::lookup::<_, ReceivePurchaseOrderResponse>(
            &self.db,
            "procurement.ReceivePurchaseOrder",
            &req.idempotency_key,
            &hash,
        )
        .await?
        {
            return Ok(replay);
        }
        // Locked from the checks to the write: two receipts, or a receipt and a cancel, of one
        // order apply one after the other, and none takes in more than is still expected.
        let txn = self.db.begin().await?;
        let p = store::po(&txn, &req.purchase_order_id, true).await?;
        if !matches!(p.status.as_str(), "sent" | "partially_received") {
            return Err(ProcurementError::NotReceivable {
                po: p.purchase_order_id,
                status: p.status,
            }
            .into());
        }
        let lines = store::lines_of(&txn, &p.purchase_order_id).await?;
        let mut v = Violations::new();
        for (i, r) in req.lines.iter().enumerate() {
            match lines.iter().find(|l| l.sku == r.sku) {
                None => v.add(format!("lines[{i}].sku"), "is not on the purchase order"),
                Some(l) => v.check(
                    r.quantity <= l.quantity - l.received_quantity,
                    format!("lines[{i}].quantity"),
                    format!(
                        "only {} of {} are still expected",
                        l.quantity - l.received_quantity,
                        l.quantity
                    ),
                ),
            }
        }
        v.finish()?;
        let recorded = self
            .warehouse
            .clone()
            .record_receipt(warehouse::RecordReceiptRequest {
                idempotency_key: req.idempotency_key.clone(),
                site: p.location.clone(),
                kind: warehouse::ReceiptKind::PurchaseOrder as i32,
                document_id: p.purchase_order_id.clone(),
                lines: req
                    .lines
                    .iter()
                    .map(|l| warehouse::ReceiptLine {
                        sku: l.sku.clone(),
                        quantity: l.quantity,
                        damaged_quantity: 0,
                        // The order's price values the stock received.
                        unit_cost: lines.iter().find(|x| x.sku == l.sku).map(|x| {
                            erp_proto::common::Money {
                                amount_minor: x.unit_cost_minor,
                                currency: p.currency.clone(),
                            }
                        }),
                    })
                    .collect(),
            })
            .await
            .map_err(upstream)?
            .into_inner();
        let at = req.received_at.as_ref().map_or_else(now_ms, from_timestamp);
        let received: Vec<(String, i64)> = req
            .lines
            .iter()
            .map(|l| (l.sku.clone(), l.quantity))
            .collect();
        Self::apply_receipt_in(&txn, p, lines, &recorded.receipt_id, &received, at).await?;
        let response = ReceivePurchaseOrderResponse {
            purchase_order: Some(load_po(&txn, &req.purchase_order_id).await?),
        };
        txn.commit().await?;
        self.outbox.wake();
        // A concurrent retry may have recorded it first: its answer is as good as ours.
        let _ = idempotency::record(
            &self.db,
            "procurement.ReceivePurchaseOrder",
            &req.idempotency_key,
            &hash,
            &response,
        )
        .await;
        Ok(response)
    }

    /// Applies a warehouse receipt to the order it names, once per receipt. False when it was
    /// applied before or names no purchase order of ours.
    pub async fn apply_receipt(
        &self,
        receipt_id: &str,
        purchase_order_id: &str,
        received: &[(String, i64)],
        at: i64,
    ) -> ApiResult<bool> {
        let txn = self.db.begin().await?;
        // Locked: two receipts (or a receipt and a cancel) of one order apply one after the
        // other, each to what the previous left.
        let Some(p) = store::po_if_any(&txn, purchase_order_id, true).await? else {
            return Ok(false);
        };
        let lines = store::lines_of(&txn, purchase_order_id).await?;
        if !Self::apply_receipt_in(&txn, p, lines, receipt_id, received, at).await? {
            return Ok(false);
        }
        txn.commit().await?;
        self.outbox.wake();
        Ok(true)
    }

    /// Applies a receipt to the order `p` (locked by the caller, with its `lines`), once per
    /// receipt id. Goods that arrive after a cancel or a close are counted as received (they
    /// are in the warehouse, and the supplier will bill them) without reopening the order.
    async fn apply_receipt_in<C: sea_orm::ConnectionTrait>(
        txn: &C,
        p: po::Model,
        mut lines: Vec<po_line::Model>,
        receipt_id: &str,
        received: &[(String, i64)],
        at: i64,
    ) -> ApiResult<bool> {
        let purchase_order_id = p.purchase_order_id.as_str();
        let costed: Vec<serde_json::Value> = received
            .iter()
            .filter_map(|(sku, quantity)| {
                let l = lines.iter().find(|l| &l.sku == sku)?;
                Some(serde_json::json!({ "sku": sku, "quantity": quantity, "unit_cost_minor": l.unit_cost_minor }))
            })
            .collect();
        // The receipt row first, claiming the receipt: the API call that recorded it and the
        // consumer of the warehouse's event race to apply it, and exactly one of them does.
        let lines_json = serde_json::Value::Array(costed.clone()).to_string();
        if !store::claim_receipt(txn, receipt_id, purchase_order_id, lines_json, at).await? {
            return Ok(false);
        }
        for (sku, quantity) in received {
            if let Some(l) = lines.iter_mut().find(|l| &l.sku == sku) {
                l.received_quantity = l
                    .received_quantity
                    .checked_add(*quantity)
                    .ok_or(ProcurementError::QuantityOutOfRange)?;
                let mut am: po_line::ActiveModel = l.clone().into();
                am.received_quantity = Set(l.received_quantity);
                am.update(txn).await?;
            }
        }
        let complete = lines.iter().all(|l| l.received_quantity >= l.quantity);
        let status = match p.status.as_str() {
            "sent" | "partially_received" if complete => "received",
            "sent" | "partially_received" => "partially_received",
            // Cancelled, closed or received already: the receipt does not reopen it.
            other => other,
        }
        .to_owned();
        let mut am: po::ActiveModel = p.clone().into();
        if status != p.status {
            am.status = Set(status.clone());
            if status == "received" {
                am.received_at_ms = Set(Some(at));
            }
            am.update(txn).await?;
        }
        // Finance values the receipt (cost, landed cost) from this.
        outbox::enqueue(
            txn,
            "procurement.po_received",
            purchase_order_id,
            &serde_json::json!({
                "purchase_order_id": purchase_order_id, "receipt_id": receipt_id,
                "supplier_id": p.supplier_id, "location": p.location, "currency": p.currency,
                "lines": costed, "status": status,
            }),
        )
        .await?;
        Ok(true)
    }

    pub(crate) async fn scorecard(
        &self,
        req: GetSupplierScorecardRequest,
    ) -> ApiResult<GetSupplierScorecardResponse> {
        let mut v = Violations::new();
        v.id("supplier_id", &req.supplier_id);
        v.finish()?;
        store::supplier(&self.db, &req.supplier_id).await?;
        let orders = store::completed_pos_of(&self.db, &req.supplier_id).await?;
        let mut deliveries = Vec::new();
        for p in orders {
            let (Some(sent), Some(arrived)) = (p.sent_at_ms, p.received_at_ms) else {
                continue;
            };
            let lines = store::lines_of(&self.db, &p.purchase_order_id).await?;
            deliveries.push(Delivery {
                ordered: lines.iter().map(|l| l.quantity).sum(),
                received: lines.iter().map(|l| l.received_quantity).sum(),
                sent_at_ms: sent,
                expected_at_ms: p.expected_at_ms,
                received_at_ms: arrived,
            });
        }
        let s = domain::scorecard(&deliveries);
        Ok(GetSupplierScorecardResponse {
            supplier_id: req.supplier_id,
            on_time_rate_bps: s.on_time_rate_bps,
            fill_rate_bps: s.fill_rate_bps,
            lead_time_variance_hours: s.lead_time_variance_hours,
            purchase_orders_received: s.deliveries,
        })
    }

    /// `warehouse.receipt_recorded`: a delivery against one of our purchase orders.
    pub async fn on_receipt_recorded(&self, event: &Event) -> anyhow::Result<()> {
        let p = &event.payload;
        if p["kind"].as_str() != Some("purchase_order") {
            return Ok(());
        }
        let lines: Vec<(String, i64)> = p["lines"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| {
                        (
                            l["sku"].as_str().unwrap_or_default().to_owned(),
                            l["quantity"].as_i64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.apply_receipt(
            p["receipt_id"].as_str().unwrap_or_default(),
            p["document_id"].as_str().unwrap_or_default(),
            &lines,
            now_ms(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    /// `inventory.stock_changed` with reason `shipment`: demand where it shipped from.
    pub async fn on_stock_changed(&self, event: &Event) -> anyhow::Result<()> {
        let p = &event.payload;
        let shipped = -p["on_hand_delta"].as_i64().unwrap_or(0);
        if p["reason"].as_str() != Some("shipment") || shipped <= 0 {
            return Ok(());
        }
        store::record_demand_once(
            &self.db,
            &format!("event:{}", event.id),
            p["sku"].as_str().unwrap_or_default(),
            p["location"].as_str().unwrap_or_default(),
            shipped,
            now_ms(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// `inventory.low_stock`: drafts purchase orders for the item where a policy calls for it
    /// (drafts still need approval; the quantities on them count as coming, so a repeated
    /// signal drafts nothing twice).
    pub async fn on_low_stock(&self, event: &Event) -> anyhow::Result<()> {
        let sku = event.payload["sku"].as_str().unwrap_or_default();
        let policies = store::policies_of_sku(&self.db, sku).await?;
        if policies.is_empty() {
            return Ok(());
        }
        let r = self
            .suggest_for(
                &Caller::system("procurement", "scheduled replenishment"),
                policies,
                &[],
                true,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !r.draft_purchase_order_ids.is_empty() {
            tracing::info!(sku, drafts = ?r.draft_purchase_order_ids, "low stock: purchase orders drafted");
        }
        Ok(())
    }
}
