//! Goods arriving at a site: purchase order deliveries and customer returns, moved in the
//! inventory service, then recorded and announced.

use erp_proto::warehouse::*;
use erp_runtime::idempotency;
use erp_runtime::outbox;
use erp_runtime::time::now_ms;
use erp_runtime::validate::Violations;
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use tonic::Status;

use super::WarehouseApi;
use crate::error::WarehouseError;
use crate::store::{receipt, site};

impl WarehouseApi {
    /// Goods arriving at a site: a purchase order's delivery (inbound becomes on hand) or a
    /// customer return (pending inspection). Damaged units go to quarantine. The stock moves in
    /// the inventory service under keys derived from this request's key, so a retry after a
    /// failure part-way finishes the job without moving anything twice; the receipt is
    /// recorded, and announced to procurement and finance, once every move succeeded.
    pub(super) async fn record_receipt(
        &self,
        req: RecordReceiptRequest,
    ) -> ApiResult<RecordReceiptResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.code("site", &req.site);
        let kind = ReceiptKind::try_from(req.kind).unwrap_or_default();
        v.check(
            kind != ReceiptKind::Unspecified,
            "kind",
            "must be PURCHASE_ORDER or CUSTOMER_RETURN",
        );
        // A purchase order id or an RMA number, as the supplier or customer quotes it.
        v.text("document_id", &req.document_id, 100);
        v.check(!req.lines.is_empty(), "lines", "must not be empty");
        for (i, l) in req.lines.iter().enumerate() {
            v.code(&format!("lines[{i}].sku"), &l.sku);
            v.positive(&format!("lines[{i}].quantity"), l.quantity);
            v.non_negative(&format!("lines[{i}].damaged_quantity"), l.damaged_quantity);
            v.check(
                l.damaged_quantity <= l.quantity,
                format!("lines[{i}].damaged_quantity"),
                "cannot exceed the quantity received",
            );
        }
        v.finish()?;
        if let Some(replay) = idempotency::lookup::<_, RecordReceiptResponse>(
            &self.db,
            "warehouse.RecordReceipt",
            &req.idempotency_key,
            &idempotency::fingerprint(&req),
        )
        .await?
        {
            return Ok(replay);
        }
        let s = site::Entity::find_by_id(req.site.clone())
            .one(&self.db)
            .await?
            .ok_or_else(|| WarehouseError::UnknownSite(req.site.clone()))?;
        let source = Some(erp_proto::common::SourceDocument {
            kind: match kind {
                ReceiptKind::PurchaseOrder => "purchase_order",
                _ => "return",
            }
            .into(),
            id: req.document_id.clone(),
        });
        for (i, l) in req.lines.iter().enumerate() {
            self.move_received(&req.idempotency_key, i, &s.code, kind, l, source.clone())
                .await?;
        }
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.RecordReceipt", req);
        let receipt_id = uuid::Uuid::now_v7().to_string();
        let lines: Vec<serde_json::Value> = req
            .lines
            .iter()
            .map(|l| serde_json::json!({ "sku": l.sku, "quantity": l.quantity, "damaged_quantity": l.damaged_quantity }))
            .collect();
        let kind_name = source.as_ref().map(|s| s.kind.clone()).unwrap_or_default();
        receipt::ActiveModel {
            receipt_id: Set(receipt_id.clone()),
            site: Set(s.code.clone()),
            kind: Set(kind_name.clone()),
            document_id: Set(req.document_id.clone()),
            lines: Set(serde_json::Value::Array(lines.clone()).to_string()),
            recorded_at_ms: Set(now_ms()),
        }
        .insert(&txn)
        .await?;
        outbox::enqueue(
            &txn,
            "warehouse.receipt_recorded",
            &req.document_id,
            &serde_json::json!({
                "receipt_id": receipt_id, "site": s.code, "kind": kind_name,
                "document_id": req.document_id, "lines": lines,
            }),
        )
        .await?;
        let response = RecordReceiptResponse { receipt_id };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    /// The inventory moves of one received line.
    async fn move_received(
        &self,
        key: &str,
        line: usize,
        site: &str,
        kind: ReceiptKind,
        l: &ReceiptLine,
        source: Option<erp_proto::common::SourceDocument>,
    ) -> ApiResult<()> {
        use erp_proto::inventory as inv;
        let mut client = self.inventory.clone();
        let k = |op: &str| format!("{key}:receipt:{line}:{op}");
        let good = l.quantity - l.damaged_quantity;
        match kind {
            ReceiptKind::PurchaseOrder => {
                client
                    .receive_stock(inv::ReceiveStockRequest {
                        idempotency_key: k("receive"),
                        sku: l.sku.clone(),
                        location: site.to_owned(),
                        quantity: l.quantity,
                        source: source.clone(),
                        from_inbound: true,
                        unit_cost: l.unit_cost.clone(),
                    })
                    .await
                    .map_err(forward)?;
                if l.damaged_quantity > 0 {
                    for (op, bucket, delta) in [
                        ("damaged-out", inv::Bucket::OnHand, -l.damaged_quantity),
                        ("damaged-in", inv::Bucket::Quarantined, l.damaged_quantity),
                    ] {
                        client
                            .adjust_stock(inv::AdjustStockRequest {
                                idempotency_key: k(op),
                                sku: l.sku.clone(),
                                location: site.to_owned(),
                                bucket: bucket as i32,
                                delta,
                                actor: Some(erp_proto::common::Actor {
                                    id: "warehouse".into(),
                                    reason: format!("damaged on receipt of {key}"),
                                }),
                            })
                            .await
                            .map_err(forward)?;
                    }
                }
            }
            _ => {
                if good > 0 {
                    client
                        .record_return(inv::RecordReturnRequest {
                            idempotency_key: k("return"),
                            sku: l.sku.clone(),
                            location: site.to_owned(),
                            quantity: good,
                            source: source.clone(),
                        })
                        .await
                        .map_err(forward)?;
                }
                if l.damaged_quantity > 0 {
                    client
                        .adjust_stock(inv::AdjustStockRequest {
                            idempotency_key: k("damaged-in"),
                            sku: l.sku.clone(),
                            location: site.to_owned(),
                            bucket: inv::Bucket::Quarantined as i32,
                            delta: l.damaged_quantity,
                            actor: Some(erp_proto::common::Actor {
                                id: "warehouse".into(),
                                reason: format!("returned damaged ({key})"),
                            }),
                        })
                        .await
                        .map_err(forward)?;
                }
            }
        }
        Ok(())
    }
}

/// A refusal of the inventory service, passed on to the caller with its code and message.
fn forward(s: Status) -> ApiError {
    ApiError::Upstream(s)
}
