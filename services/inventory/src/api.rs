//! gRPC handlers: validate, map wire types to the domain, run one transaction, map back.

use erp_proto::common::SourceDocument;
use erp_proto::inventory::inventory_service_server::InventoryService;
use erp_proto::inventory::*;
use erp_runtime::audit;
use erp_runtime::auth::Caller;
use erp_runtime::error::respond;
use erp_runtime::idempotency;
use erp_runtime::time::{from_timestamp, now_ms, opt_timestamp, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use tonic::{Request, Response, Status};

use crate::domain::{self, ReservationState as DomainState};
use crate::store::entities::{
    item, item_value, ledger, location, receipt_cost, reservation, stock_level,
};
use crate::store::{Source, Store, levels};

pub struct InventoryApi {
    store: Store,
    batcher: crate::batcher::Batcher,
    /// A person's write-off worth more than this (minor units at the item's cost) needs the
    /// approver role and a limit covering it.
    write_off_approval_minor: i64,
}

impl InventoryApi {
    pub fn new(
        store: Store,
        batcher: crate::batcher::Batcher,
        write_off_approval_minor: i64,
    ) -> Self {
        Self {
            store,
            batcher,
            write_off_approval_minor,
        }
    }
}

fn item_to_wire(m: item::Model) -> Item {
    Item {
        sku: m.sku,
        name: m.name,
        unit_cost: Some(erp_proto::common::Money {
            amount_minor: m.unit_cost_minor,
            currency: m.currency,
        }),
        weight_grams: m.weight_grams,
        tax_class: m.tax_class,
        low_stock_threshold: m.low_stock_threshold,
        created_at: Some(to_timestamp(m.created_at_ms)),
    }
}

fn location_to_wire(m: location::Model) -> Location {
    Location {
        code: m.code,
        name: m.name,
        region: m.region,
        status: if m.online {
            LocationStatus::Online
        } else {
            LocationStatus::Offline
        } as i32,
        status_reason: m.status_reason,
    }
}

fn level_to_wire(m: &stock_level::Model) -> StockLevel {
    let l = levels(m);
    StockLevel {
        sku: m.sku.clone(),
        location: m.location.clone(),
        on_hand: l.on_hand,
        reserved: l.reserved,
        inbound: l.inbound,
        returns_pending: l.returns_pending,
        quarantined: l.quarantined,
        available: l.available(),
    }
}

fn bucket_to_wire(b: domain::Bucket) -> Bucket {
    match b {
        domain::Bucket::OnHand => Bucket::OnHand,
        domain::Bucket::Reserved => Bucket::Reserved,
        domain::Bucket::Inbound => Bucket::Inbound,
        domain::Bucket::ReturnsPending => Bucket::ReturnsPending,
        domain::Bucket::Quarantined => Bucket::Quarantined,
    }
}

pub(crate) fn reservation_to_wire(m: reservation::Model) -> Reservation {
    let state = match DomainState::parse(&m.state) {
        Some(DomainState::Active) => ReservationState::Active,
        Some(DomainState::Committed) => ReservationState::Committed,
        Some(DomainState::Released) => ReservationState::Released,
        Some(DomainState::Expired) => ReservationState::Expired,
        None => ReservationState::Unspecified,
    };
    Reservation {
        reservation_id: m.reservation_id,
        order_id: m.order_id,
        order_line_id: m.order_line_id,
        sku: m.sku,
        location: m.location,
        quantity: m.quantity,
        state: state as i32,
        expires_at: opt_timestamp(m.expires_at_ms),
        created_at: Some(to_timestamp(m.created_at_ms)),
    }
}

fn source_of(doc: Option<&SourceDocument>, default_kind: &str, actor: &str) -> Source {
    Source {
        kind: doc.map_or(default_kind, |d| d.kind.as_str()).to_owned(),
        id: doc.map(|d| d.id.clone()).unwrap_or_default(),
        actor: actor.to_owned(),
    }
}

/// The fields every stock movement carries: key, sku, location and a positive quantity.
fn movement(key: &str, sku: &str, location: &str, quantity: i64) -> Violations {
    let mut v = Violations::new();
    v.idempotency_key(key);
    v.code("sku", sku);
    v.code("location", location);
    v.positive("quantity", quantity);
    v
}

/// Runs `f` in a transaction guarded by an idempotency key: a repeat answers the stored response.
macro_rules! idempotent {
    ($self:ident, $scope:literal, $req:ident, |$txn:ident| $body:block) => {{
        let ($txn, guard) = erp_runtime::begin_idempotent!(&$self.store.db, $scope, $req);
        let response = $body;
        guard.commit($txn, &response).await?;
        $self.store.outbox.wake();
        Ok(response)
    }};
}

impl InventoryApi {
    async fn create_item(&self, req: CreateItemRequest) -> ApiResult<CreateItemResponse> {
        let Some(item) = req.item else {
            return Err(ApiError::invalid("item", "is required"));
        };
        let mut v = Violations::new();
        v.code("item.sku", &item.sku);
        v.text("item.name", &item.name, 200);
        let cost = item.unit_cost.clone().unwrap_or_default();
        v.non_negative("item.unit_cost.amount_minor", cost.amount_minor);
        v.currency("item.unit_cost.currency", &cost.currency);
        v.non_negative("item.weight_grams", item.weight_grams);
        v.non_negative("item.low_stock_threshold", item.low_stock_threshold);
        v.check(
            matches!(
                item.tax_class.as_str(),
                "" | "standard" | "reduced" | "zero"
            ),
            "item.tax_class",
            "must be standard, reduced or zero",
        );
        v.finish()?;
        let tax_class = if item.tax_class.is_empty() {
            "standard".to_owned()
        } else {
            item.tax_class.clone()
        };
        let txn = self.store.db.begin().await?;
        if let Some(existing) = item::Entity::find_by_id(item.sku.clone()).one(&txn).await? {
            let same = existing.name == item.name
                && existing.unit_cost_minor == cost.amount_minor
                && existing.currency == cost.currency
                && existing.weight_grams == item.weight_grams
                && existing.tax_class == tax_class
                && existing.low_stock_threshold == item.low_stock_threshold;
            if !same {
                return Err(ApiError::AlreadyExists(format!(
                    "item {} exists with different attributes",
                    item.sku
                )));
            }
            return Ok(CreateItemResponse {
                item: Some(item_to_wire(existing)),
                created: false,
            });
        }
        let model = item::ActiveModel {
            sku: Set(item.sku.clone()),
            name: Set(item.name.clone()),
            unit_cost_minor: Set(cost.amount_minor),
            currency: Set(cost.currency.clone()),
            weight_grams: Set(item.weight_grams),
            tax_class: Set(tax_class),
            low_stock_threshold: Set(item.low_stock_threshold),
            created_at_ms: Set(now_ms()),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(CreateItemResponse {
            item: Some(item_to_wire(model)),
            created: true,
        })
    }

    async fn list_items(&self, req: ListItemsRequest) -> ApiResult<ListItemsResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let mut v = Violations::new();
        v.optional_text("sku_prefix", &req.sku_prefix, 64);
        v.finish()?;
        let mut query = item::Entity::find().order_by_asc(item::Column::Sku);
        if !req.sku_prefix.is_empty() {
            // A prefix, not a pattern: `_` (allowed in SKUs) and `%` match only themselves.
            let escaped = req
                .sku_prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            query = query.filter(sea_orm::sea_query::ExprTrait::like(
                sea_orm::sea_query::Expr::col(item::Column::Sku),
                sea_orm::sea_query::LikeExpr::new(format!("{escaped}%")).escape('\\'),
            ));
        }
        let rows = query.offset(offset).limit(size).all(&self.store.db).await?;
        let next = next_page_token(offset, rows.len(), size);
        Ok(ListItemsResponse {
            items: rows.into_iter().map(item_to_wire).collect(),
            next_page_token: next,
        })
    }

    async fn create_location(
        &self,
        req: CreateLocationRequest,
    ) -> ApiResult<CreateLocationResponse> {
        let Some(loc) = req.location else {
            return Err(ApiError::invalid("location", "is required"));
        };
        let mut v = Violations::new();
        v.code("location.code", &loc.code);
        v.text("location.name", &loc.name, 200);
        v.code("location.region", &loc.region);
        v.finish()?;
        let txn = self.store.db.begin().await?;
        if let Some(existing) = location::Entity::find_by_id(loc.code.clone())
            .one(&txn)
            .await?
        {
            if existing.name != loc.name || existing.region != loc.region {
                return Err(ApiError::AlreadyExists(format!(
                    "location {} exists with different attributes",
                    loc.code
                )));
            }
            return Ok(CreateLocationResponse {
                location: Some(location_to_wire(existing)),
                created: false,
            });
        }
        let model = location::ActiveModel {
            code: Set(loc.code.clone()),
            name: Set(loc.name.clone()),
            region: Set(loc.region.clone()),
            online: Set(true),
            status_reason: Set(String::new()),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(CreateLocationResponse {
            location: Some(location_to_wire(model)),
            created: true,
        })
    }

    async fn set_location_status(
        &self,
        caller: &Caller,
        req: SetLocationStatusRequest,
    ) -> ApiResult<SetLocationStatusResponse> {
        let mut v = Violations::new();
        v.code("code", &req.code);
        let status = LocationStatus::try_from(req.status).unwrap_or(LocationStatus::Unspecified);
        v.check(
            status != LocationStatus::Unspecified,
            "status",
            "must be ONLINE or OFFLINE",
        );
        v.actor("actor", req.actor.as_ref());
        v.finish()?;
        let txn = self.store.db.begin().await?;
        let row = self.store.location(&txn, &req.code).await?;
        let before = serde_json::json!({ "online": row.online, "reason": row.status_reason });
        let mut am: location::ActiveModel = row.into();
        am.online = Set(status == LocationStatus::Online);
        am.status_reason = Set(req
            .actor
            .as_ref()
            .map(|a| a.reason.clone())
            .unwrap_or_default());
        let model = am.update(&txn).await?;
        erp_runtime::outbox::enqueue(
            &txn,
            "inventory.location_status_changed",
            &req.code,
            &serde_json::json!({ "location": req.code, "online": model.online, "by": caller.subject }),
        )
        .await?;
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("location:{}", req.code),
                reason: &model.status_reason,
                before: Some(before),
                after: Some(
                    serde_json::json!({ "online": model.online, "reason": model.status_reason }),
                ),
            },
        )
        .await?;
        txn.commit().await?;
        self.store.cache.invalidate_all().await;
        self.store.outbox.wake();
        Ok(SetLocationStatusResponse {
            location: Some(location_to_wire(model)),
        })
    }

    async fn get_stock(&self, req: GetStockRequest) -> ApiResult<GetStockResponse> {
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

    async fn get_availability(
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

    async fn receive_stock(&self, req: ReceiveStockRequest) -> ApiResult<ReceiveStockResponse> {
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

    async fn adjust_stock(
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

    async fn record_inbound(&self, req: RecordInboundRequest) -> ApiResult<RecordInboundResponse> {
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

    async fn cancel_inbound(&self, req: CancelInboundRequest) -> ApiResult<CancelInboundResponse> {
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

    async fn transfer_stock(&self, req: TransferStockRequest) -> ApiResult<TransferStockResponse> {
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

    async fn record_cycle_count(
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

    async fn record_return(&self, req: RecordReturnRequest) -> ApiResult<RecordReturnResponse> {
        let mut v = movement(&req.idempotency_key, &req.sku, &req.location, req.quantity);
        v.source("source", req.source.as_ref());
        v.finish()?;
        idempotent!(self, "inventory.RecordReturn", req, |txn| {
            let source = source_of(req.source.as_ref(), "return", "receiving");
            let level = self
                .store
                .change(
                    &txn,
                    &req.sku,
                    &req.location,
                    &[(domain::Bucket::ReturnsPending, req.quantity)],
                    domain::Reason::Return,
                    &source,
                )
                .await?;
            RecordReturnResponse {
                level: Some(level_to_wire(&level)),
            }
        })
    }

    async fn inspect_return(
        &self,
        caller: &Caller,
        req: InspectReturnRequest,
    ) -> ApiResult<InspectReturnResponse> {
        let mut v = movement(&req.idempotency_key, &req.sku, &req.location, req.quantity);
        let disposition =
            ReturnDisposition::try_from(req.disposition).unwrap_or(ReturnDisposition::Unspecified);
        v.check(
            disposition != ReturnDisposition::Unspecified,
            "disposition",
            "must be RESTOCK or QUARANTINE",
        );
        v.actor("actor", req.actor.as_ref());
        v.finish()?;
        let (to, reason) = if disposition == ReturnDisposition::Restock {
            (domain::Bucket::OnHand, domain::Reason::Return)
        } else {
            (domain::Bucket::Quarantined, domain::Reason::Quarantine)
        };
        idempotent!(self, "inventory.InspectReturn", req, |txn| {
            let source = Source {
                kind: "inspection".into(),
                id: req
                    .actor
                    .as_ref()
                    .map(|a| a.reason.clone())
                    .unwrap_or_default(),
                actor: caller.subject.clone(),
            };
            let level = self
                .store
                .change(
                    &txn,
                    &req.sku,
                    &req.location,
                    &[
                        (domain::Bucket::ReturnsPending, -req.quantity),
                        (to, req.quantity),
                    ],
                    reason,
                    &source,
                )
                .await?;
            InspectReturnResponse {
                level: Some(level_to_wire(&level)),
            }
        })
    }

    async fn reserve_stock(&self, req: ReserveStockRequest) -> ApiResult<ReserveStockResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.check(
            !req.lines.is_empty(),
            "lines",
            "must hold at least one line",
        );
        v.check(req.lines.len() <= 200, "lines", "at most 200 lines");
        for (i, line) in req.lines.iter().enumerate() {
            v.text(
                &format!("lines[{i}].order_line_id"),
                &line.order_line_id,
                100,
            );
            v.code(&format!("lines[{i}].sku"), &line.sku);
            v.code(&format!("lines[{i}].location"), &line.location);
            v.positive(&format!("lines[{i}].quantity"), line.quantity);
        }
        v.check(
            ReserveMode::try_from(req.mode).is_ok(),
            "mode",
            "must be ALL_OR_NOTHING or PARTIAL",
        );
        if let Some(expires) = &req.expires_at {
            v.check(
                from_timestamp(expires) > now_ms(),
                "expires_at",
                "must be in the future",
            );
        }
        v.finish()?;
        self.batcher.reserve(req).await
    }

    async fn release_reservations(
        &self,
        req: ReleaseReservationsRequest,
    ) -> ApiResult<ReleaseReservationsResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.check(
            req.reservation_ids.len() <= 500,
            "reservation_ids",
            "at most 500 per call",
        );
        v.finish()?;
        idempotent!(self, "inventory.ReleaseReservations", req, |txn| {
            idempotency::tombstone_forward(&txn, "inventory.ReserveStock", &req.idempotency_key)
                .await?;
            let released = self
                .store
                .release(
                    &txn,
                    &req.order_id,
                    &req.reservation_ids,
                    DomainState::Released,
                )
                .await?;
            ReleaseReservationsResponse {
                reservations: released.into_iter().map(reservation_to_wire).collect(),
            }
        })
    }

    async fn commit_reservations(
        &self,
        req: CommitReservationsRequest,
    ) -> ApiResult<CommitReservationsResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.check(
            req.reservation_ids.len() <= 500,
            "reservation_ids",
            "at most 500 per call",
        );
        v.finish()?;
        idempotent!(self, "inventory.CommitReservations", req, |txn| {
            let committed = self
                .store
                .commit(&txn, &req.order_id, &req.reservation_ids)
                .await?;
            CommitReservationsResponse {
                reservations: committed.into_iter().map(reservation_to_wire).collect(),
            }
        })
    }

    async fn list_reservations(
        &self,
        req: ListReservationsRequest,
    ) -> ApiResult<ListReservationsResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let mut query = reservation::Entity::find().order_by_asc(reservation::Column::CreatedAtMs);
        if !req.order_id.is_empty() {
            query = query.filter(reservation::Column::OrderId.eq(&req.order_id));
        }
        let state = match ReservationState::try_from(req.state) {
            Ok(ReservationState::Active) => Some(DomainState::Active),
            Ok(ReservationState::Committed) => Some(DomainState::Committed),
            Ok(ReservationState::Released) => Some(DomainState::Released),
            Ok(ReservationState::Expired) => Some(DomainState::Expired),
            Ok(ReservationState::Unspecified) => None,
            Err(_) => return Err(ApiError::invalid("state", "unknown reservation state")),
        };
        if let Some(state) = state {
            query = query.filter(reservation::Column::State.eq(state.as_str()));
        }
        let rows = query.offset(offset).limit(size).all(&self.store.db).await?;
        let next = next_page_token(offset, rows.len(), size);
        Ok(ListReservationsResponse {
            reservations: rows.into_iter().map(reservation_to_wire).collect(),
            next_page_token: next,
        })
    }

    async fn list_ledger_entries(
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

    async fn get_valuation(&self, req: GetValuationRequest) -> ApiResult<GetValuationResponse> {
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

    async fn allocate_landed_cost(
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

    async fn verify_ledger(&self) -> ApiResult<VerifyLedgerResponse> {
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

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn create_item(
        &self,
        request: Request<CreateItemRequest>,
    ) -> Result<Response<CreateItemResponse>, Status> {
        respond(self.create_item(request.into_inner()).await)
    }

    async fn get_item(
        &self,
        request: Request<GetItemRequest>,
    ) -> Result<Response<GetItemResponse>, Status> {
        let req = request.into_inner();
        respond(
            async {
                let mut v = Violations::new();
                v.code("sku", &req.sku);
                v.finish()?;
                let item = self.store.item(&self.store.db, &req.sku).await?;
                Ok(GetItemResponse {
                    item: Some(item_to_wire(item)),
                })
            }
            .await,
        )
    }

    async fn list_items(
        &self,
        request: Request<ListItemsRequest>,
    ) -> Result<Response<ListItemsResponse>, Status> {
        respond(self.list_items(request.into_inner()).await)
    }

    async fn create_location(
        &self,
        request: Request<CreateLocationRequest>,
    ) -> Result<Response<CreateLocationResponse>, Status> {
        respond(self.create_location(request.into_inner()).await)
    }

    async fn list_locations(
        &self,
        _request: Request<ListLocationsRequest>,
    ) -> Result<Response<ListLocationsResponse>, Status> {
        respond(
            async {
                let rows = location::Entity::find()
                    .order_by_asc(location::Column::Code)
                    .all(&self.store.db)
                    .await?;
                Ok(ListLocationsResponse {
                    locations: rows.into_iter().map(location_to_wire).collect(),
                })
            }
            .await,
        )
    }

    async fn set_location_status(
        &self,
        request: Request<SetLocationStatusRequest>,
    ) -> Result<Response<SetLocationStatusResponse>, Status> {
        let caller = Caller::of(&request)?;
        respond(
            self.set_location_status(&caller, request.into_inner())
                .await,
        )
    }

    async fn get_stock(
        &self,
        request: Request<GetStockRequest>,
    ) -> Result<Response<GetStockResponse>, Status> {
        respond(self.get_stock(request.into_inner()).await)
    }

    async fn get_availability(
        &self,
        request: Request<GetAvailabilityRequest>,
    ) -> Result<Response<GetAvailabilityResponse>, Status> {
        respond(self.get_availability(request.into_inner()).await)
    }

    async fn receive_stock(
        &self,
        request: Request<ReceiveStockRequest>,
    ) -> Result<Response<ReceiveStockResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.receive_stock(request.into_inner()))
                .await,
        )
    }

    async fn adjust_stock(
        &self,
        request: Request<AdjustStockRequest>,
    ) -> Result<Response<AdjustStockResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.adjust_stock(&Caller::of(&request)?, request.into_inner()))
                .await,
        )
    }

    async fn record_inbound(
        &self,
        request: Request<RecordInboundRequest>,
    ) -> Result<Response<RecordInboundResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.record_inbound(request.into_inner()))
                .await,
        )
    }

    async fn transfer_stock(
        &self,
        request: Request<TransferStockRequest>,
    ) -> Result<Response<TransferStockResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.transfer_stock(request.into_inner()))
                .await,
        )
    }

    async fn record_cycle_count(
        &self,
        request: Request<RecordCycleCountRequest>,
    ) -> Result<Response<RecordCycleCountResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.record_cycle_count(&Caller::of(&request)?, request.into_inner()))
                .await,
        )
    }

    async fn record_return(
        &self,
        request: Request<RecordReturnRequest>,
    ) -> Result<Response<RecordReturnResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.record_return(request.into_inner()))
                .await,
        )
    }

    async fn inspect_return(
        &self,
        request: Request<InspectReturnRequest>,
    ) -> Result<Response<InspectReturnResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.inspect_return(&Caller::of(&request)?, request.into_inner()))
                .await,
        )
    }

    async fn reserve_stock(
        &self,
        request: Request<ReserveStockRequest>,
    ) -> Result<Response<ReserveStockResponse>, Status> {
        respond(self.reserve_stock(request.into_inner()).await)
    }

    async fn release_reservations(
        &self,
        request: Request<ReleaseReservationsRequest>,
    ) -> Result<Response<ReleaseReservationsResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.release_reservations(request.into_inner()))
                .await,
        )
    }

    async fn commit_reservations(
        &self,
        request: Request<CommitReservationsRequest>,
    ) -> Result<Response<CommitReservationsResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.commit_reservations(request.into_inner()))
                .await,
        )
    }

    async fn list_reservations(
        &self,
        request: Request<ListReservationsRequest>,
    ) -> Result<Response<ListReservationsResponse>, Status> {
        respond(self.list_reservations(request.into_inner()).await)
    }

    async fn list_ledger_entries(
        &self,
        request: Request<ListLedgerEntriesRequest>,
    ) -> Result<Response<ListLedgerEntriesResponse>, Status> {
        respond(self.list_ledger_entries(request.into_inner()).await)
    }

    async fn cancel_inbound(
        &self,
        request: Request<CancelInboundRequest>,
    ) -> Result<Response<CancelInboundResponse>, Status> {
        respond(
            self.store
                .cache
                .tracked(self.cancel_inbound(request.into_inner()))
                .await,
        )
    }

    async fn get_valuation(
        &self,
        request: Request<GetValuationRequest>,
    ) -> Result<Response<GetValuationResponse>, Status> {
        respond(self.get_valuation(request.into_inner()).await)
    }

    async fn allocate_landed_cost(
        &self,
        request: Request<AllocateLandedCostRequest>,
    ) -> Result<Response<AllocateLandedCostResponse>, Status> {
        respond(self.allocate_landed_cost(request.into_inner()).await)
    }

    async fn verify_ledger(
        &self,
        _request: Request<VerifyLedgerRequest>,
    ) -> Result<Response<VerifyLedgerResponse>, Status> {
        respond(self.verify_ledger().await)
    }
}
