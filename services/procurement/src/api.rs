//! gRPC handlers of the procurement service.

use erp_proto::common::Money;
use erp_proto::procurement::procurement_service_server::ProcurementService;
use erp_proto::procurement::*;
use erp_runtime::audit;
use erp_runtime::auth::Caller;
use erp_runtime::error::respond;
use erp_runtime::time::{now_ms, opt_timestamp, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, TransactionTrait,
};
use tonic::{Request, Response, Status};

use crate::error::ProcurementError;
use crate::store::{self, po, po_line, supplier, term};

const DAY_MS: i64 = 86_400_000;

type Inventory = erp_proto::inventory::inventory_service_client::InventoryServiceClient<
    erp_runtime::auth::PeerChannel,
>;
type Warehouse = erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient<
    erp_runtime::auth::PeerChannel,
>;

pub struct ProcurementApi {
    pub(crate) db: DatabaseConnection,
    pub(crate) outbox: erp_runtime::outbox::OutboxWaker,
    /// Stock positions and inbound quantities.
    pub(crate) inventory: Inventory,
    /// Receipts go through the warehouse, which moves the stock.
    pub(crate) warehouse: Warehouse,
}

impl ProcurementApi {
    pub fn new(
        db: DatabaseConnection,
        outbox: erp_runtime::outbox::OutboxWaker,
        inventory: Inventory,
        warehouse: Warehouse,
    ) -> Self {
        Self {
            db,
            outbox,
            inventory,
            warehouse,
        }
    }
}

fn supplier_to_wire(s: supplier::Model) -> Supplier {
    Supplier {
        supplier_id: s.supplier_id,
        code: s.code,
        name: s.name,
        currency: s.currency,
        contact_email: s.contact_email,
        created_at: Some(to_timestamp(s.created_at_ms)),
    }
}

fn term_to_wire(t: term::Model, currency: &str) -> SupplierTerm {
    SupplierTerm {
        supplier_id: t.supplier_id,
        sku: t.sku,
        unit_cost: Some(Money {
            amount_minor: t.unit_cost_minor,
            currency: currency.to_owned(),
        }),
        lead_time_days: t.lead_time_days,
        minimum_order_quantity: t.minimum_order_quantity,
        pack_multiple: t.pack_multiple,
    }
}

fn po_status(s: &str) -> PurchaseOrderStatus {
    match s {
        "draft" => PurchaseOrderStatus::Draft,
        "approved" => PurchaseOrderStatus::Approved,
        "sent" => PurchaseOrderStatus::Sent,
        "partially_received" => PurchaseOrderStatus::PartiallyReceived,
        "received" => PurchaseOrderStatus::Received,
        "closed" => PurchaseOrderStatus::Closed,
        "cancelled" => PurchaseOrderStatus::Cancelled,
        _ => PurchaseOrderStatus::Unspecified,
    }
}

pub(crate) async fn load_po<C: ConnectionTrait>(c: &C, id: &str) -> ApiResult<PurchaseOrder> {
    let p = store::po(c, id, false).await?;
    Ok(load_pos(c, vec![p]).await?.pop().unwrap_or_default())
}

/// Purchase orders with their lines, read for the whole set in one query.
pub(crate) async fn load_pos<C: ConnectionTrait>(
    c: &C,
    rows: Vec<po::Model>,
) -> ApiResult<Vec<PurchaseOrder>> {
    let mut lines = store::lines_of_all(c, &rows).await?;
    Ok(rows
        .into_iter()
        .map(|p| {
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut lines)
                .into_iter()
                .partition(|l| l.purchase_order_id == p.purchase_order_id);
            lines = rest;
            PurchaseOrder {
                purchase_order_id: p.purchase_order_id,
                supplier_id: p.supplier_id,
                location: p.location,
                status: po_status(&p.status) as i32,
                lines: mine
                    .into_iter()
                    .map(|l| PurchaseOrderLine {
                        sku: l.sku,
                        quantity: l.quantity,
                        unit_cost: Some(Money {
                            amount_minor: l.unit_cost_minor,
                            currency: p.currency.clone(),
                        }),
                        received_quantity: l.received_quantity,
                    })
                    .collect(),
                total: Some(Money {
                    amount_minor: p.total_minor,
                    currency: p.currency.clone(),
                }),
                expected_at: Some(to_timestamp(p.expected_at_ms)),
                approved_by: p.approved_by,
                approved_at: opt_timestamp(p.approved_at_ms),
                created_at: Some(to_timestamp(p.created_at_ms)),
                created_by: p.created_by,
            }
        })
        .collect())
}

/// What the audit trail digests of a purchase order.
fn po_state(p: &PurchaseOrder) -> serde_json::Value {
    serde_json::json!({
        "status": p.status,
        "total_minor": p.total.as_ref().map_or(0, |t| t.amount_minor),
        "approved_by": p.approved_by,
        "created_by": p.created_by,
        "lines": p.lines.iter().map(|l| (l.sku.clone(), l.quantity, l.received_quantity)).collect::<Vec<_>>(),
    })
}

impl ProcurementApi {
    async fn create_supplier(
        &self,
        req: CreateSupplierRequest,
    ) -> ApiResult<CreateSupplierResponse> {
        let mut v = Violations::new();
        v.code("code", &req.code);
        v.text("name", &req.name, 200);
        v.currency("currency", &req.currency);
        v.check(
            req.contact_email.is_empty() || req.contact_email.contains('@'),
            "contact_email",
            "must be an email address",
        );
        v.optional_text("contact_email", &req.contact_email, 254);
        v.finish()?;
        let txn = self.db.begin().await?;
        if let Some(existing) = store::supplier_by_code(&txn, &req.code).await? {
            if existing.name != req.name || existing.currency != req.currency {
                return Err(ApiError::AlreadyExists(format!(
                    "supplier {} exists with other attributes",
                    req.code
                )));
            }
            return Ok(CreateSupplierResponse {
                supplier: Some(supplier_to_wire(existing)),
                created: false,
            });
        }
        let s = supplier::ActiveModel {
            supplier_id: Set(uuid::Uuid::now_v7().to_string()),
            code: Set(req.code.clone()),
            name: Set(req.name.clone()),
            currency: Set(req.currency.clone()),
            contact_email: Set(req.contact_email.clone()),
            created_at_ms: Set(now_ms()),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(CreateSupplierResponse {
            supplier: Some(supplier_to_wire(s)),
            created: true,
        })
    }

    async fn set_term(&self, req: SetSupplierTermRequest) -> ApiResult<SetSupplierTermResponse> {
        let Some(t) = req.term else {
            return Err(ApiError::invalid("term", "is required"));
        };
        let mut v = Violations::new();
        v.id("term.supplier_id", &t.supplier_id);
        v.code("term.sku", &t.sku);
        let cost = t.unit_cost.clone().unwrap_or_default();
        v.non_negative("term.unit_cost.amount_minor", cost.amount_minor);
        v.check(
            (0..=crate::domain::MAX_DAYS).contains(&t.lead_time_days),
            "term.lead_time_days",
            format!("must be 0..={}", crate::domain::MAX_DAYS),
        );
        v.non_negative("term.minimum_order_quantity", t.minimum_order_quantity);
        v.positive("term.pack_multiple", t.pack_multiple);
        v.finish()?;
        let txn = self.db.begin().await?;
        let s = store::supplier(&txn, &t.supplier_id).await?;
        if cost.currency != s.currency {
            return Err(ApiError::invalid(
                "term.unit_cost.currency",
                format!("supplier {} invoices in {}", s.code, s.currency),
            ));
        }
        let existing = store::term(&txn, &t.supplier_id, &t.sku).await?;
        let am = term::ActiveModel {
            supplier_id: Set(t.supplier_id.clone()),
            sku: Set(t.sku.clone()),
            unit_cost_minor: Set(cost.amount_minor),
            lead_time_days: Set(t.lead_time_days),
            minimum_order_quantity: Set(t.minimum_order_quantity),
            pack_multiple: Set(t.pack_multiple),
        };
        let m = if existing.is_some() {
            am.update(&txn).await?
        } else {
            am.insert(&txn).await?
        };
        txn.commit().await?;
        Ok(SetSupplierTermResponse {
            term: Some(term_to_wire(m, &s.currency)),
        })
    }

    pub(crate) async fn create_po(
        &self,
        caller: &Caller,
        req: CreatePurchaseOrderRequest,
    ) -> ApiResult<CreatePurchaseOrderResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("supplier_id", &req.supplier_id);
        v.code("location", &req.location);
        v.check(
            !req.lines.is_empty(),
            "lines",
            "must hold at least one line",
        );
        let mut skus = std::collections::HashSet::new();
        for (i, l) in req.lines.iter().enumerate() {
            v.code(&format!("lines[{i}].sku"), &l.sku);
            v.check(
                skus.insert(l.sku.clone()),
                format!("lines[{i}].sku"),
                "is repeated",
            );
            v.positive(&format!("lines[{i}].quantity"), l.quantity);
        }
        v.finish()?;
        let (txn, guard) =
            erp_runtime::begin_idempotent!(&self.db, "procurement.CreatePurchaseOrder", req);
        let s = store::supplier(&txn, &req.supplier_id).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let mut total: i64 = 0;
        let mut lead_days = 0;
        let mut lines = Vec::new();
        let mut v = Violations::new();
        for (i, l) in req.lines.iter().enumerate() {
            let t = store::term(&txn, &req.supplier_id, &l.sku).await?;
            let Some(t) = t else {
                v.add(
                    format!("lines[{i}].sku"),
                    format!("supplier {} has no terms for {}", s.code, l.sku),
                );
                continue;
            };
            v.check(
                l.quantity >= t.minimum_order_quantity,
                format!("lines[{i}].quantity"),
                format!(
                    "below the minimum order quantity {}",
                    t.minimum_order_quantity
                ),
            );
            v.check(
                l.quantity % t.pack_multiple == 0,
                format!("lines[{i}].quantity"),
                format!("must be a multiple of the pack size {}", t.pack_multiple),
            );
            if let Some(c) = &l.unit_cost {
                // A negative cost would pull the total under the approval threshold.
                v.non_negative(
                    &format!("lines[{i}].unit_cost.amount_minor"),
                    c.amount_minor,
                );
                v.check(
                    c.currency == s.currency,
                    format!("lines[{i}].unit_cost.currency"),
                    format!("supplier {} invoices in {}", s.code, s.currency),
                );
            }
            let cost = l
                .unit_cost
                .as_ref()
                .map_or(t.unit_cost_minor, |c| c.amount_minor);
            match cost
                .checked_mul(l.quantity)
                .and_then(|line| total.checked_add(line))
                .filter(|t| *t <= erp_runtime::validate::MAX_AMOUNT_MINOR)
            {
                Some(t) => total = t,
                None => v.add(
                    format!("lines[{i}].quantity"),
                    "the order's total would exceed the largest amount accepted",
                ),
            }
            lead_days = lead_days.max(t.lead_time_days);
            lines.push((l.sku.clone(), l.quantity, cost));
        }
        v.finish()?;
        let now = now_ms();
        po::ActiveModel {
            purchase_order_id: Set(id.clone()),
            supplier_id: Set(req.supplier_id.clone()),
            location: Set(req.location.clone()),
            status: Set("draft".into()),
            currency: Set(s.currency.clone()),
            total_minor: Set(total),
            expected_at_ms: Set(now + i64::from(lead_days) * DAY_MS),
            approved_by: Set(String::new()),
            approved_at_ms: Set(None),
            created_at_ms: Set(now),
            sent_at_ms: Set(None),
            received_at_ms: Set(None),
            created_by: Set(caller.subject.clone()),
        }
        .insert(&txn)
        .await?;
        for (sku, quantity, cost) in lines {
            po_line::ActiveModel {
                purchase_order_id: Set(id.clone()),
                sku: Set(sku),
                quantity: Set(quantity),
                unit_cost_minor: Set(cost),
                received_quantity: Set(0),
            }
            .insert(&txn)
            .await?;
        }
        let created = load_po(&txn, &id).await?;
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("purchase_order:{id}"),
                reason: "created",
                before: None,
                after: Some(po_state(&created)),
            },
        )
        .await?;
        let response = CreatePurchaseOrderResponse {
            purchase_order: Some(created),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    async fn approve(
        &self,
        caller: &Caller,
        req: ApprovePurchaseOrderRequest,
    ) -> ApiResult<ApprovePurchaseOrderResponse> {
        let mut v = Violations::new();
        v.id("purchase_order_id", &req.purchase_order_id);
        v.actor("approver", req.approver.as_ref());
        v.finish()?;
        let reason = req.approver.as_ref().map_or("", |a| a.reason.as_str());
        let txn = self.db.begin().await?;
        // Locked until the commit: an approval racing a cancel (or another approver) sees the
        // status the other one left, never the one both read.
        let p = store::po(&txn, &req.purchase_order_id, true).await?;
        match p.status.as_str() {
            "draft" => {}
            "approved" if p.approved_by == caller.subject => {
                return Ok(ApprovePurchaseOrderResponse {
                    purchase_order: Some(load_po(&txn, &p.purchase_order_id).await?),
                });
            }
            other => {
                return Err(ProcurementError::NotDraft {
                    po: p.purchase_order_id.clone(),
                    status: other.to_owned(),
                }
                .into());
            }
        }
        // Maker-checker: whoever created the order does not approve it.
        if caller.authenticated && p.created_by == caller.subject {
            return Err(ApiError::denied(format!(
                "maker-checker: {} created purchase order {} and cannot approve it",
                caller.subject, p.purchase_order_id
            )));
        }
        // Above the threshold only an approver whose limit covers the total may approve;
        // below it a second buyer may.
        if p.total_minor > crate::APPROVAL_THRESHOLD_MINOR
            && let Err(why) = caller.may_approve(p.total_minor)
        {
            return Err(ApiError::denied(format!(
                "purchase order total {} exceeds the approval threshold {}: {why}",
                p.total_minor,
                crate::APPROVAL_THRESHOLD_MINOR
            )));
        }
        let id = p.purchase_order_id.clone();
        let before = load_po(&txn, &id).await?;
        let mut am: po::ActiveModel = p.into();
        am.status = Set("approved".into());
        am.approved_by = Set(caller.subject.clone());
        am.approved_at_ms = Set(Some(now_ms()));
        am.update(&txn).await?;
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("purchase_order:{id}"),
                reason,
                before: Some(po_state(&before)),
                after: Some(po_state(&load_po(&txn, &id).await?)),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(ApprovePurchaseOrderResponse {
            purchase_order: Some(load_po(&self.db, &id).await?),
        })
    }

    async fn cancel(
        &self,
        caller: &Caller,
        req: CancelPurchaseOrderRequest,
    ) -> ApiResult<CancelPurchaseOrderResponse> {
        let mut v = Violations::new();
        v.id("purchase_order_id", &req.purchase_order_id);
        v.actor("actor", req.actor.as_ref());
        v.finish()?;
        // The order stays locked from the status read to the status write: a receipt or an
        // approval arriving meanwhile waits, then sees the cancellation.
        let txn = self.db.begin().await?;
        let p = store::po(&txn, &req.purchase_order_id, true).await?;
        // What the supplier will no longer send stops counting as inbound stock (keys derived
        // from the order: a retry after a failure part-way cancels nothing twice).
        if matches!(p.status.as_str(), "sent" | "partially_received") {
            let lines = store::lines_of(&txn, &p.purchase_order_id).await?;
            for l in lines.iter().filter(|l| l.quantity > l.received_quantity) {
                self.inventory
                    .clone()
                    .cancel_inbound(erp_proto::inventory::CancelInboundRequest {
                        idempotency_key: format!("po:{}:{}:cancel", p.purchase_order_id, l.sku),
                        sku: l.sku.clone(),
                        location: p.location.clone(),
                        quantity: l.quantity - l.received_quantity,
                        source: Some(erp_proto::common::SourceDocument {
                            kind: "purchase_order".into(),
                            id: p.purchase_order_id.clone(),
                        }),
                    })
                    .await
                    .map_err(ApiError::Upstream)?;
            }
        }
        let (to, received_at) = match p.status.as_str() {
            "draft" | "approved" | "sent" => ("cancelled", None),
            // Some goods came: the order is closed short, and its fill rate shows it.
            "partially_received" => ("closed", Some(now_ms())),
            "cancelled" | "closed" => (p.status.as_str(), p.received_at_ms),
            other => {
                return Err(ProcurementError::NotCancellable {
                    status: other.to_owned(),
                }
                .into());
            }
        };
        let to = to.to_owned();
        let unchanged = to == p.status;
        let before = load_po(&txn, &p.purchase_order_id).await?;
        let mut am: po::ActiveModel = p.into();
        am.status = Set(to);
        am.received_at_ms = Set(received_at);
        am.update(&txn).await?;
        // A repeated cancel changes nothing and records nothing.
        if !unchanged {
            audit::record(
                &txn,
                audit::Change {
                    caller,
                    target: format!("purchase_order:{}", req.purchase_order_id),
                    reason: req.actor.as_ref().map_or("", |a| a.reason.as_str()),
                    before: Some(po_state(&before)),
                    after: Some(po_state(&load_po(&txn, &req.purchase_order_id).await?)),
                },
            )
            .await?;
        }
        txn.commit().await?;
        Ok(CancelPurchaseOrderResponse {
            purchase_order: Some(load_po(&self.db, &req.purchase_order_id).await?),
        })
    }
}

#[tonic::async_trait]
impl ProcurementService for ProcurementApi {
    async fn create_supplier(
        &self,
        r: Request<CreateSupplierRequest>,
    ) -> Result<Response<CreateSupplierResponse>, Status> {
        respond(self.create_supplier(r.into_inner()).await)
    }

    async fn get_supplier(
        &self,
        r: Request<GetSupplierRequest>,
    ) -> Result<Response<GetSupplierResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let mut v = Violations::new();
                v.id("supplier_id", &req.supplier_id);
                v.finish()?;
                let s = store::supplier(&self.db, &req.supplier_id).await?;
                let terms = store::terms_of(&self.db, &req.supplier_id).await?;
                Ok(GetSupplierResponse {
                    terms: terms
                        .into_iter()
                        .map(|t| term_to_wire(t, &s.currency))
                        .collect(),
                    supplier: Some(supplier_to_wire(s)),
                })
            }
            .await,
        )
    }

    async fn list_suppliers(
        &self,
        r: Request<ListSuppliersRequest>,
    ) -> Result<Response<ListSuppliersResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let size = page_size(req.page_size)?;
                let offset = page_offset(&req.page_token)?;
                let rows = store::suppliers_page(&self.db, offset, size).await?;
                let next = next_page_token(offset, rows.len(), size);
                Ok(ListSuppliersResponse {
                    suppliers: rows.into_iter().map(supplier_to_wire).collect(),
                    next_page_token: next,
                })
            }
            .await,
        )
    }

    async fn set_supplier_term(
        &self,
        r: Request<SetSupplierTermRequest>,
    ) -> Result<Response<SetSupplierTermResponse>, Status> {
        respond(self.set_term(r.into_inner()).await)
    }

    async fn set_reorder_policy(
        &self,
        r: Request<SetReorderPolicyRequest>,
    ) -> Result<Response<SetReorderPolicyResponse>, Status> {
        respond(self.set_policy(r.into_inner()).await)
    }

    async fn record_demand(
        &self,
        r: Request<RecordDemandRequest>,
    ) -> Result<Response<RecordDemandResponse>, Status> {
        respond(self.record_demand(r.into_inner()).await)
    }

    async fn suggest_replenishment(
        &self,
        r: Request<SuggestReplenishmentRequest>,
    ) -> Result<Response<SuggestReplenishmentResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.suggest(&caller, r.into_inner()).await)
    }

    async fn create_purchase_order(
        &self,
        r: Request<CreatePurchaseOrderRequest>,
    ) -> Result<Response<CreatePurchaseOrderResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.create_po(&caller, r.into_inner()).await)
    }

    async fn get_purchase_order(
        &self,
        r: Request<GetPurchaseOrderRequest>,
    ) -> Result<Response<GetPurchaseOrderResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let mut v = Violations::new();
                v.id("purchase_order_id", &req.purchase_order_id);
                v.finish()?;
                Ok(GetPurchaseOrderResponse {
                    purchase_order: Some(load_po(&self.db, &req.purchase_order_id).await?),
                })
            }
            .await,
        )
    }

    async fn list_purchase_orders(
        &self,
        r: Request<ListPurchaseOrdersRequest>,
    ) -> Result<Response<ListPurchaseOrdersResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let size = page_size(req.page_size)?;
                let offset = page_offset(&req.page_token)?;
                let status = erp_runtime::validate::status_filter(
                    PurchaseOrderStatus::try_from(req.status).map(|s| s.as_str_name()),
                    "PURCHASE_ORDER_STATUS_",
                )?;
                let rows =
                    store::pos_page(&self.db, &req.supplier_id, status, offset, size).await?;
                let next = next_page_token(offset, rows.len(), size);
                Ok(ListPurchaseOrdersResponse {
                    purchase_orders: load_pos(&self.db, rows).await?,
                    next_page_token: next,
                })
            }
            .await,
        )
    }

    async fn approve_purchase_order(
        &self,
        r: Request<ApprovePurchaseOrderRequest>,
    ) -> Result<Response<ApprovePurchaseOrderResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.approve(&caller, r.into_inner()).await)
    }

    async fn send_purchase_order(
        &self,
        r: Request<SendPurchaseOrderRequest>,
    ) -> Result<Response<SendPurchaseOrderResponse>, Status> {
        respond(self.send(r.into_inner()).await)
    }

    async fn receive_purchase_order(
        &self,
        r: Request<ReceivePurchaseOrderRequest>,
    ) -> Result<Response<ReceivePurchaseOrderResponse>, Status> {
        respond(self.receive(r.into_inner()).await)
    }

    async fn cancel_purchase_order(
        &self,
        r: Request<CancelPurchaseOrderRequest>,
    ) -> Result<Response<CancelPurchaseOrderResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.cancel(&caller, r.into_inner()).await)
    }

    async fn get_supplier_scorecard(
        &self,
        r: Request<GetSupplierScorecardRequest>,
    ) -> Result<Response<GetSupplierScorecardResponse>, Status> {
        respond(self.scorecard(r.into_inner()).await)
    }
}
