//! gRPC handlers of the order service.

use erp_proto::common::{Address, Money};
use erp_proto::order::order_service_server::OrderService;
use erp_proto::order::*;
use erp_runtime::audit;
use erp_runtime::auth::Caller;
use erp_runtime::error::respond;
use erp_runtime::idempotency::{self};
use erp_runtime::outbox::{self, OutboxWaker};
use erp_runtime::time::{now_ms, to_timestamp};
use erp_runtime::validate::{Violations, is_currency, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::domain::{LineQty, Status as OrderState};
use crate::store::{channel, line, order};

type Inventory = erp_proto::inventory::inventory_service_client::InventoryServiceClient<
    erp_runtime::auth::PeerChannel,
>;
type Warehouse = erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient<
    erp_runtime::auth::PeerChannel,
>;
type Carrier = erp_proto::carrier::carrier_service_client::CarrierServiceClient<
    erp_runtime::auth::PeerChannel,
>;

pub struct OrderApi {
    pub(crate) db: DatabaseConnection,
    pub(crate) outbox: OutboxWaker,
    /// Routing reads availability and the warehouses' status.
    pub(crate) inventory: Inventory,
    pub(crate) warehouse: Warehouse,
    /// Promise dates ask carriers for their transit (never required to route).
    pub(crate) carrier: Carrier,
    /// SKUs the catalog (inventory's items) is known to hold. Items are never deleted, so a SKU
    /// seen once is not asked about again.
    known_skus: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl OrderApi {
    pub fn new(
        db: DatabaseConnection,
        outbox: OutboxWaker,
        inventory: Inventory,
        warehouse: Warehouse,
        carrier: Carrier,
    ) -> Self {
        Self {
            db,
            outbox,
            inventory,
            warehouse,
            carrier,
            known_skus: std::sync::Mutex::default(),
        }
    }

    /// Names every line whose SKU is not in the catalog. Asks inventory about SKUs not seen
    /// before; when it cannot answer, the order is refused as UNAVAILABLE (retry: capture is
    /// idempotent), never accepted unchecked.
    async fn check_items(&self, lines: &[OrderLineInput]) -> ApiResult<()> {
        let mut v = Violations::new();
        for (i, l) in lines.iter().enumerate() {
            let known = self
                .known_skus
                .lock()
                .map_err(|_| ApiError::Internal("catalog cache poisoned".into()))?
                .contains(&l.sku);
            if known {
                continue;
            }
            let mut request =
                tonic::Request::new(erp_proto::inventory::GetItemRequest { sku: l.sku.clone() });
            request.set_timeout(std::time::Duration::from_secs(2));
            match self.inventory.clone().get_item(request).await {
                Ok(_) => {
                    self.known_skus
                        .lock()
                        .map_err(|_| ApiError::Internal("catalog cache poisoned".into()))?
                        .insert(l.sku.clone());
                }
                Err(s) if s.code() == tonic::Code::NotFound => v.add(
                    format!("lines[{i}].sku"),
                    format!("unknown item {:?}: not in the catalog", l.sku),
                ),
                Err(s) => return Err(ApiError::Upstream(s)),
            }
        }
        v.finish()
    }
}

/// The address as stored (JSON).
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct StoredAddress {
    name: String,
    line1: String,
    line2: String,
    city: String,
    pub(crate) region: String,
    pub(crate) postal_code: String,
    pub(crate) country_code: String,
    phone: String,
    email: String,
}

impl From<&Address> for StoredAddress {
    fn from(a: &Address) -> Self {
        Self {
            name: a.name.clone(),
            line1: a.line1.clone(),
            line2: a.line2.clone(),
            city: a.city.clone(),
            region: a.region.clone(),
            postal_code: a.postal_code.clone(),
            country_code: a.country_code.clone(),
            phone: a.phone.clone(),
            email: a.email.clone(),
        }
    }
}

impl From<StoredAddress> for Address {
    fn from(a: StoredAddress) -> Self {
        Self {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            region: a.region,
            postal_code: a.postal_code,
            country_code: a.country_code,
            phone: a.phone,
            email: a.email,
        }
    }
}

/// Payload of `order.accepted`, consumed by the orchestrator.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderAccepted {
    pub order_id: String,
    pub channel: String,
    pub external_order_id: String,
    pub currency: String,
    pub total_minor: i64,
}

fn kind_name(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::WebStore => "web_store",
        ChannelKind::Marketplace => "marketplace",
        ChannelKind::Wholesale => "wholesale",
        ChannelKind::RetailStore => "retail_store",
        ChannelKind::Unspecified => "unspecified",
    }
}

fn kind_parse(s: &str) -> ChannelKind {
    match s {
        "web_store" => ChannelKind::WebStore,
        "marketplace" => ChannelKind::Marketplace,
        "wholesale" => ChannelKind::Wholesale,
        "retail_store" => ChannelKind::RetailStore,
        _ => ChannelKind::Unspecified,
    }
}

fn channel_to_wire(m: channel::Model) -> Channel {
    Channel {
        code: m.code,
        name: m.name,
        kind: kind_parse(&m.kind) as i32,
        currency: m.currency,
        service_levels: m
            .service_levels
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        commission_bps: m.commission_bps,
        fixed_fee_minor: m.fixed_fee_minor,
        external_id_pattern: m.external_id_pattern,
        ship_complete: m.ship_complete,
        net_terms_days: m.net_terms_days,
    }
}

fn status_to_wire(s: OrderState) -> OrderStatus {
    match s {
        OrderState::Accepted => OrderStatus::Accepted,
        OrderState::Allocated => OrderStatus::Allocated,
        OrderState::PartiallyShipped => OrderStatus::PartiallyShipped,
        OrderState::Shipped => OrderStatus::Shipped,
        OrderState::Backordered => OrderStatus::Backordered,
        OrderState::Cancelled => OrderStatus::Cancelled,
        OrderState::Failed => OrderStatus::Failed,
        OrderState::Returned => OrderStatus::Returned,
    }
}

fn qty(l: &line::Model) -> LineQty {
    LineQty {
        ordered: l.ordered,
        allocated: l.allocated,
        shipped: l.shipped,
        backordered: l.backordered,
        cancelled: l.cancelled,
        returned: l.returned,
    }
}

/// What the audit trail digests of an order's lines.
fn lines_state(lines: &[line::Model]) -> serde_json::Value {
    serde_json::json!(
        lines
            .iter()
            .map(|l| (l.line_id.clone(), l.ordered, l.cancelled, l.allocated))
            .collect::<Vec<_>>()
    )
}

/// What the audit trail digests of a channel.
fn channel_state(c: &Channel) -> serde_json::Value {
    serde_json::json!({
        "name": c.name,
        "kind": c.kind,
        "currency": c.currency,
        "service_levels": c.service_levels,
        "commission_bps": c.commission_bps,
        "fixed_fee_minor": c.fixed_fee_minor,
        "external_id_pattern": c.external_id_pattern,
        "ship_complete": c.ship_complete,
        "net_terms_days": c.net_terms_days,
    })
}

fn order_to_wire(o: order::Model, lines: Vec<line::Model>) -> Order {
    let address: StoredAddress = serde_json::from_str(&o.ship_to).unwrap_or_default();
    let status = OrderState::parse(&o.status).map_or(OrderStatus::Unspecified, status_to_wire);
    Order {
        order_id: o.order_id,
        channel: o.channel,
        external_order_id: o.external_order_id,
        customer_id: o.customer_id,
        ship_to: Some(address.into()),
        service_level: o.service_level,
        currency: o.currency.clone(),
        lines: lines
            .into_iter()
            .map(|l| {
                let q = qty(&l);
                OrderLine {
                    line_id: l.line_id,
                    line_number: l.line_number,
                    sku: l.sku,
                    unit_price: Some(Money {
                        amount_minor: l.unit_price_minor,
                        currency: o.currency.clone(),
                    }),
                    quantities: Some(LineQuantities {
                        ordered: q.ordered,
                        open: q.open(),
                        allocated: q.allocated,
                        shipped: q.shipped,
                        backordered: q.backordered,
                        cancelled: q.cancelled,
                        returned: q.returned,
                    }),
                    location: l.location,
                    tax: Some(Money {
                        amount_minor: l.tax_minor,
                        currency: o.currency.clone(),
                    }),
                    tax_rate_bps: l.tax_rate_bps,
                }
            })
            .collect(),
        status: status as i32,
        status_reason: o.status_reason,
        total: Some(Money {
            amount_minor: o.total_minor,
            currency: o.currency.clone(),
        }),
        created_at: Some(to_timestamp(o.created_at_ms)),
        updated_at: Some(to_timestamp(o.updated_at_ms)),
        promised_by: (o.promised_by_ms > 0).then(|| to_timestamp(o.promised_by_ms)),
        routing_decisions: vec![],
        // Never in a read: GetOrder adds it for the orchestrator alone.
        payment_method_token: String::new(),
        tracking_number: o.tracking_number,
        tax_total: Some(Money {
            amount_minor: o.tax_minor,
            currency: o.currency.clone(),
        }),
        tax_jurisdiction: o.tax_jurisdiction,
    }
}

/// Reads an order and its lines to change them: the order's row stays locked (FOR UPDATE on
/// PostgreSQL; SQLite serializes writers) until the caller's transaction ends, so two changes
/// of one order (a shipment and a cancellation, say) cannot both compute their line buckets
/// from the same state and overwrite each other.
pub(crate) async fn load_for_update<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
) -> ApiResult<(order::Model, Vec<line::Model>)> {
    read(c, order_id, true).await
}

/// Reads an order and its lines (no lock: for answers, and inside read-only snapshots).
pub(crate) async fn load<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
) -> ApiResult<(order::Model, Vec<line::Model>)> {
    read(c, order_id, false).await
}

async fn read<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
    lock: bool,
) -> ApiResult<(order::Model, Vec<line::Model>)> {
    let mut query = order::Entity::find_by_id(order_id.to_owned());
    if lock {
        query = query.lock_exclusive();
    }
    let o = query
        .one(c)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("order {order_id}")))?;
    let lines = line::Entity::find()
        .filter(line::Column::OrderId.eq(order_id))
        .order_by_asc(line::Column::LineNumber)
        .all(c)
        .await?;
    Ok((o, lines))
}

/// Writes new line quantities and the status derived from them.
async fn save_lines<C: ConnectionTrait>(
    c: &C,
    o: order::Model,
    lines: Vec<(line::Model, LineQty)>,
    forced: Option<(OrderState, String)>,
) -> ApiResult<Order> {
    let mut saved = Vec::with_capacity(lines.len());
    let mut quantities = Vec::with_capacity(lines.len());
    for (l, q) in lines {
        if !q.is_consistent() {
            return Err(ApiError::Internal(format!(
                "line {} would be inconsistent: {q:?}",
                l.line_id
            )));
        }
        quantities.push(q);
        let mut am: line::ActiveModel = l.into();
        am.allocated = Set(q.allocated);
        am.shipped = Set(q.shipped);
        am.backordered = Set(q.backordered);
        am.cancelled = Set(q.cancelled);
        am.returned = Set(q.returned);
        saved.push(am.update(c).await?);
    }
    let (status, reason) =
        forced.unwrap_or_else(|| (OrderState::derive(&quantities), o.status_reason.clone()));
    let (total, tax) = header_totals(&saved);
    let mut am: order::ActiveModel = o.into();
    am.total_minor = Set(total);
    am.tax_minor = Set(tax);
    am.status = Set(status.as_str().to_owned());
    am.status_reason = Set(reason);
    am.updated_at_ms = Set(now_ms());
    let o = am.update(c).await?;
    Ok(order_to_wire(o, saved))
}

/// The order's total and tax from its lines, for what is not cancelled: each line's price for
/// its units and the share of its recorded tax those units carry (the saga charges shipments
/// with the same rule, so the shipped parts of a line add up to its share here).
fn header_totals(lines: &[line::Model]) -> (i64, i64) {
    let mut subtotal = 0i64;
    let mut tax = 0i64;
    for l in lines {
        let kept = l.ordered - l.cancelled;
        subtotal = subtotal.saturating_add(l.unit_price_minor.saturating_mul(kept));
        tax = tax.saturating_add(erp_runtime::money::pro_rata(l.tax_minor, l.ordered, kept));
    }
    (subtotal.saturating_add(tax), tax)
}

fn validate_address(v: &mut Violations, a: Option<&Address>) {
    let Some(a) = a else {
        v.add("ship_to", "is required");
        return;
    };
    v.text("ship_to.name", &a.name, 200);
    v.text("ship_to.line1", &a.line1, 200);
    v.text("ship_to.city", &a.city, 100);
    v.text("ship_to.postal_code", &a.postal_code, 20);
    v.optional_text("ship_to.line2", &a.line2, 200);
    v.optional_text("ship_to.region", &a.region, 100);
    v.optional_text("ship_to.phone", &a.phone, 50);
    v.optional_text("ship_to.email", &a.email, 254);
    v.check(
        a.country_code.len() == 2 && a.country_code.chars().all(|c| c.is_ascii_uppercase()),
        "ship_to.country_code",
        "must be an ISO 3166-1 alpha-2 code",
    );
}

impl OrderApi {
    async fn upsert_channel(
        &self,
        caller: &Caller,
        req: UpsertChannelRequest,
    ) -> ApiResult<UpsertChannelResponse> {
        let Some(ch) = req.channel else {
            return Err(ApiError::invalid("channel", "is required"));
        };
        let mut v = Violations::new();
        v.code("channel.code", &ch.code);
        v.text("channel.name", &ch.name, 200);
        let kind = ChannelKind::try_from(ch.kind).unwrap_or(ChannelKind::Unspecified);
        v.check(
            kind != ChannelKind::Unspecified,
            "channel.kind",
            "must be set",
        );
        v.currency("channel.currency", &ch.currency);
        v.check(
            !ch.service_levels.is_empty(),
            "channel.service_levels",
            "must list at least one",
        );
        for (i, s) in ch.service_levels.iter().enumerate() {
            v.code(&format!("channel.service_levels[{i}]"), s);
        }
        v.check(
            (0..=10_000).contains(&ch.commission_bps),
            "channel.commission_bps",
            "must be 0..=10000",
        );
        v.non_negative("channel.fixed_fee_minor", ch.fixed_fee_minor);
        v.check(
            ch.net_terms_days >= 0,
            "channel.net_terms_days",
            "must not be negative",
        );
        // Compiled for every order of the channel: kept short.
        v.optional_text("channel.external_id_pattern", &ch.external_id_pattern, 200);
        if !ch.external_id_pattern.is_empty() && regex::Regex::new(&ch.external_id_pattern).is_err()
        {
            v.add(
                "channel.external_id_pattern",
                "is not a valid regular expression",
            );
        }
        v.optional_text("reason", &req.reason, 500);
        v.finish()?;
        let txn = self.db.begin().await?;
        let existing = channel::Entity::find_by_id(ch.code.clone())
            .lock_exclusive()
            .one(&txn)
            .await?;
        let before = existing.clone().map(|m| channel_state(&channel_to_wire(m)));
        let am = channel::ActiveModel {
            code: Set(ch.code.clone()),
            name: Set(ch.name.clone()),
            kind: Set(kind_name(kind).to_owned()),
            currency: Set(ch.currency.clone()),
            service_levels: Set(ch.service_levels.join(",")),
            commission_bps: Set(ch.commission_bps),
            fixed_fee_minor: Set(ch.fixed_fee_minor),
            external_id_pattern: Set(ch.external_id_pattern.clone()),
            ship_complete: Set(ch.ship_complete),
            net_terms_days: Set(ch.net_terms_days),
            updated_at_ms: Set(now_ms()),
        };
        let model = if existing.is_some() {
            am.update(&txn).await?
        } else {
            am.insert(&txn).await?
        };
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("channel:{}", model.code),
                reason: &req.reason,
                before,
                after: Some(channel_state(&channel_to_wire(model.clone()))),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(UpsertChannelResponse {
            channel: Some(channel_to_wire(model)),
        })
    }

    async fn create_order(&self, req: CreateOrderRequest) -> ApiResult<CreateOrderResponse> {
        let mut v = Violations::new();
        v.code("channel", &req.channel);
        v.text("external_order_id", &req.external_order_id, 100);
        v.text("customer_id", &req.customer_id, 100);
        v.code("service_level", &req.service_level);
        v.currency("currency", &req.currency);
        v.optional_text("payment_method_token", &req.payment_method_token, 200);
        validate_address(&mut v, req.ship_to.as_ref());
        v.check(
            !req.lines.is_empty(),
            "lines",
            "must hold at least one line",
        );
        v.check(req.lines.len() <= 500, "lines", "at most 500 lines");
        let mut numbers = std::collections::HashSet::new();
        for (i, l) in req.lines.iter().enumerate() {
            v.check(
                l.line_number > 0,
                format!("lines[{i}].line_number"),
                "must be positive",
            );
            v.check(
                numbers.insert(l.line_number),
                format!("lines[{i}].line_number"),
                "is repeated",
            );
            v.code(&format!("lines[{i}].sku"), &l.sku);
            v.positive(&format!("lines[{i}].quantity"), l.quantity);
            match &l.unit_price {
                None => v.add(format!("lines[{i}].unit_price"), "is required"),
                Some(p) => {
                    v.non_negative(
                        &format!("lines[{i}].unit_price.amount_minor"),
                        p.amount_minor,
                    );
                    v.check(
                        p.currency == req.currency || !is_currency(&req.currency),
                        format!("lines[{i}].unit_price.currency"),
                        "must equal the order currency (one currency per order)",
                    );
                }
            }
        }
        v.finish()?;
        let total = req
            .lines
            .iter()
            .try_fold(0i64, |acc, l| {
                l.unit_price
                    .as_ref()
                    .and_then(|p| p.amount_minor.checked_mul(l.quantity))
                    .and_then(|x| acc.checked_add(x))
            })
            .filter(|t| *t <= erp_runtime::validate::MAX_AMOUNT_MINOR)
            .ok_or_else(|| {
                ApiError::invalid(
                    "lines",
                    format!(
                        "the order's total exceeds the largest amount accepted ({} minor units)",
                        erp_runtime::validate::MAX_AMOUNT_MINOR
                    ),
                )
            })?;
        let hash = idempotency::fingerprint(&req);
        self.check_items(&req.lines).await?;

        let txn = self.db.begin().await?;
        let ch = channel::Entity::find_by_id(req.channel.clone())
            .one(&txn)
            .await?
            .ok_or_else(|| {
                ApiError::invalid("channel", format!("unknown channel {:?}", req.channel))
            })?;
        let mut v = Violations::new();
        v.check(
            ch.currency == req.currency,
            "currency",
            format!("channel {} sells in {}", ch.code, ch.currency),
        );
        v.check(
            ch.service_levels.split(',').any(|s| s == req.service_level),
            "service_level",
            format!("channel {} offers {}", ch.code, ch.service_levels),
        );
        if !ch.external_id_pattern.is_empty() {
            let ok = regex::Regex::new(&ch.external_id_pattern)
                .map(|r| r.is_match(&req.external_order_id))
                .unwrap_or(false);
            v.check(
                ok,
                "external_order_id",
                format!("must match the channel's format {}", ch.external_id_pattern),
            );
        }
        v.finish()?;

        if let Some(existing) = order::Entity::find()
            .filter(order::Column::Channel.eq(&req.channel))
            .filter(order::Column::ExternalOrderId.eq(&req.external_order_id))
            .one(&txn)
            .await?
        {
            if existing.content_hash != hash {
                return Err(ApiError::AlreadyExists(format!(
                    "order {} from channel {} was already submitted with different content (order {})",
                    req.external_order_id, req.channel, existing.order_id
                )));
            }
            let (o, lines) = load(&txn, &existing.order_id).await?;
            return Ok(CreateOrderResponse {
                order: Some(order_to_wire(o, lines)),
                created: false,
            });
        }
        let now = now_ms();
        let order_id = uuid::Uuid::now_v7().to_string();
        let address = StoredAddress::from(req.ship_to.as_ref().unwrap_or(&Address::default()));
        let o = order::ActiveModel {
            order_id: Set(order_id.clone()),
            channel: Set(req.channel.clone()),
            external_order_id: Set(req.external_order_id.clone()),
            content_hash: Set(hash),
            customer_id: Set(req.customer_id.clone()),
            ship_to: Set(
                serde_json::to_string(&address).map_err(|e| ApiError::Internal(e.to_string()))?
            ),
            service_level: Set(req.service_level.clone()),
            currency: Set(req.currency.clone()),
            total_minor: Set(total),
            status: Set(OrderState::Accepted.as_str().to_owned()),
            status_reason: Set(String::new()),
            tracking_number: Set(String::new()),
            payment_method_token: Set(req.payment_method_token.clone()),
            tax_minor: Set(0),
            tax_jurisdiction: Set(String::new()),
            promised_by_ms: Set(0),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
        }
        .insert(&txn)
        .await?;
        let mut lines = Vec::new();
        for l in &req.lines {
            lines.push(
                line::ActiveModel {
                    line_id: Set(uuid::Uuid::now_v7().to_string()),
                    order_id: Set(order_id.clone()),
                    line_number: Set(l.line_number),
                    sku: Set(l.sku.clone()),
                    unit_price_minor: Set(l.unit_price.as_ref().map_or(0, |p| p.amount_minor)),
                    ordered: Set(l.quantity),
                    allocated: Set(0),
                    shipped: Set(0),
                    backordered: Set(0),
                    cancelled: Set(0),
                    returned: Set(0),
                    location: Set(String::new()),
                    tax_minor: Set(0),
                    tax_rate_bps: Set(0),
                }
                .insert(&txn)
                .await?,
            );
        }
        outbox::enqueue(
            &txn,
            "order.accepted",
            &order_id,
            &OrderAccepted {
                order_id: order_id.clone(),
                channel: req.channel.clone(),
                external_order_id: req.external_order_id.clone(),
                currency: req.currency.clone(),
                total_minor: total,
            },
        )
        .await?;
        txn.commit().await?;
        self.outbox.wake();
        tracing::info!(order_id = %order_id, channel = %req.channel, "order accepted");
        Ok(CreateOrderResponse {
            order: Some(order_to_wire(o, lines)),
            created: true,
        })
    }

    async fn list_orders(&self, req: ListOrdersRequest) -> ApiResult<ListOrdersResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let mut query = order::Entity::find().order_by_asc(order::Column::CreatedAtMs);
        if !req.channel.is_empty() {
            query = query.filter(order::Column::Channel.eq(&req.channel));
        }
        if !req.external_order_id.is_empty() {
            query = query.filter(order::Column::ExternalOrderId.eq(&req.external_order_id));
        }
        match OrderStatus::try_from(req.status) {
            Ok(OrderStatus::Unspecified) => {}
            Ok(s) => {
                let name = s
                    .as_str_name()
                    .trim_start_matches("ORDER_STATUS_")
                    .to_lowercase();
                query = query.filter(order::Column::Status.eq(name));
            }
            Err(_) => return Err(ApiError::invalid("status", "unknown order status")),
        }
        let rows = query.offset(offset).limit(size).all(&self.db).await?;
        let next = next_page_token(offset, rows.len(), size);
        let mut orders = Vec::with_capacity(rows.len());
        for o in rows {
            let lines = line::Entity::find()
                .filter(line::Column::OrderId.eq(&o.order_id))
                .order_by_asc(line::Column::LineNumber)
                .all(&self.db)
                .await?;
            orders.push(order_to_wire(o, lines));
        }
        Ok(ListOrdersResponse {
            orders,
            next_page_token: next,
        })
    }

    async fn cancel_order(
        &self,
        caller: &Caller,
        req: CancelOrderRequest,
    ) -> ApiResult<CancelOrderResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.actor("actor", req.actor.as_ref());
        v.check(req.line_ids.len() <= 500, "line_ids", "at most 500 lines");
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.CancelOrder", req);
        let (o, lines) = load_for_update(&txn, &req.order_id).await?;
        let before = lines_state(&lines);
        for id in &req.line_ids {
            if !lines.iter().any(|l| &l.line_id == id) {
                return Err(ApiError::invalid(
                    "line_ids",
                    format!("order has no line {id}"),
                ));
            }
        }
        let mut changed = Vec::new();
        let mut cancelled_any = false;
        // Allocated units belong to a shipment in progress: only the fulfillment saga can stop
        // it (before its pivot) and then cancel them with `include_allocated`.
        let mut pending = Vec::new();
        for l in lines {
            let mut q = qty(&l);
            if req.line_ids.is_empty() || req.line_ids.contains(&l.line_id) {
                if req.include_allocated {
                    let before = q.cancelled;
                    q.cancel_unshipped();
                    cancelled_any |= q.cancelled > before;
                } else {
                    cancelled_any |= q.cancel_unallocated() > 0;
                    if q.allocated > 0 {
                        pending.push(l.line_id.clone());
                    }
                }
            }
            changed.push((l, q));
        }
        if !cancelled_any && pending.is_empty() {
            return Err(ApiError::precondition(
                "ALREADY_SHIPPED",
                format!(
                    "order {} has nothing left to cancel: every unit shipped, returned or cancelled",
                    req.order_id
                ),
            ));
        }
        let reason = req
            .actor
            .as_ref()
            .map(|a| a.reason.clone())
            .unwrap_or_default();
        let order = save_lines(&txn, o, changed, None).await?;
        let mut order = order;
        if order.status == OrderStatus::Cancelled as i32 {
            order.status_reason = format!("cancelled: {reason}");
            order::Entity::update_many()
                .col_expr(
                    order::Column::StatusReason,
                    sea_orm::sea_query::Expr::value(order.status_reason.clone()),
                )
                .filter(order::Column::OrderId.eq(&req.order_id))
                .exec(&txn)
                .await?;
        }
        outbox::enqueue(
            &txn,
            "order.cancelled",
            &req.order_id,
            &serde_json::json!({
                "order_id": req.order_id,
                "line_ids": req.line_ids,
                "pending_line_ids": pending,
                "include_allocated": req.include_allocated,
                "reason": reason,
            }),
        )
        .await?;
        let after: Vec<_> = order
            .lines
            .iter()
            .map(|l| {
                let q = l.quantities.unwrap_or_default();
                (l.line_id.clone(), q.ordered, q.cancelled, q.allocated)
            })
            .collect();
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("order:{}", req.order_id),
                reason: &reason,
                before: Some(before),
                after: Some(serde_json::json!(after)),
            },
        )
        .await?;
        let response = CancelOrderResponse {
            order: Some(order),
            pending_line_ids: pending,
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    async fn record_allocation(
        &self,
        req: RecordAllocationRequest,
    ) -> ApiResult<RecordAllocationResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.check(
            !req.allocations.is_empty(),
            "allocations",
            "must not be empty",
        );
        for (i, a) in req.allocations.iter().enumerate() {
            v.id(&format!("allocations[{i}].line_id"), &a.line_id);
            v.non_negative(&format!("allocations[{i}].allocated"), a.allocated);
            v.non_negative(&format!("allocations[{i}].backordered"), a.backordered);
            if a.allocated > 0 {
                v.code(&format!("allocations[{i}].location"), &a.location);
            } else {
                v.optional_text(&format!("allocations[{i}].location"), &a.location, 64);
            }
        }
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.RecordAllocation", req);
        let (o, lines) = load_for_update(&txn, &req.order_id).await?;
        if matches!(
            OrderState::parse(&o.status),
            Some(OrderState::Cancelled | OrderState::Failed)
        ) {
            return Err(ApiError::precondition(
                "ORDER_CLOSED",
                format!("order {} is {}", o.order_id, o.status),
            ));
        }
        let mut changed = Vec::new();
        for l in lines {
            let mut q = qty(&l);
            let mut l = l;
            if let Some(a) = req.allocations.iter().find(|a| a.line_id == l.line_id) {
                q.allocate(a.allocated, a.backordered).map_err(|e| {
                    ApiError::precondition("OVER_ALLOCATION", format!("line {}: {e}", l.line_id))
                })?;
                l.location = a.location.clone();
                let mut am: line::ActiveModel = l.clone().into();
                am.location = Set(a.location.clone());
                l = am.update(&txn).await?;
            }
            changed.push((l, q));
        }
        let order = save_lines(&txn, o, changed, None).await?;
        let response = RecordAllocationResponse { order: Some(order) };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    async fn mark_shipped(&self, req: MarkShippedRequest) -> ApiResult<MarkShippedResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.text("tracking_number", &req.tracking_number, 100);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.MarkShipped", req);
        let (o, lines) = load_for_update(&txn, &req.order_id).await?;
        if lines.iter().all(|l| l.allocated == 0) {
            return Err(ApiError::precondition(
                "NOTHING_ALLOCATED",
                format!("order {} has no allocated units to ship", req.order_id),
            ));
        }
        let changed = lines
            .into_iter()
            .map(|l| {
                let mut q = qty(&l);
                q.ship_allocated();
                (l, q)
            })
            .collect();
        let mut am: order::ActiveModel = o.clone().into();
        am.tracking_number = Set(req.tracking_number.clone());
        let o = am.update(&txn).await?;
        let order = save_lines(&txn, o, changed, None).await?;
        outbox::enqueue(
            &txn,
            "order.shipped",
            &req.order_id,
            &serde_json::json!({ "order_id": req.order_id, "tracking_number": req.tracking_number }),
        )
        .await?;
        let response = MarkShippedResponse { order: Some(order) };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    async fn record_tax(&self, req: RecordTaxRequest) -> ApiResult<RecordTaxResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.text("jurisdiction", &req.jurisdiction, 16);
        v.check(!req.lines.is_empty(), "lines", "must not be empty");
        for (i, l) in req.lines.iter().enumerate() {
            v.id(&format!("lines[{i}].line_id"), &l.line_id);
            v.check(
                (0..=10_000).contains(&l.rate_bps),
                format!("lines[{i}].rate_bps"),
                "must be 0..=10000",
            );
            v.non_negative(
                &format!("lines[{i}].tax.amount_minor"),
                l.tax.as_ref().map_or(-1, |t| t.amount_minor),
            );
        }
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.RecordTax", req);
        let (o, lines) = load_for_update(&txn, &req.order_id).await?;
        if matches!(
            OrderState::parse(&o.status),
            Some(
                OrderState::Shipped
                    | OrderState::PartiallyShipped
                    | OrderState::Cancelled
                    | OrderState::Failed
                    | OrderState::Returned
            )
        ) {
            return Err(ApiError::precondition(
                "TAX_LOCKED",
                format!(
                    "order {} is {}: its tax can no longer change",
                    o.order_id, o.status
                ),
            ));
        }
        let mut v = Violations::new();
        for (i, l) in req.lines.iter().enumerate() {
            let t = l.tax.clone().unwrap_or_default();
            v.check(
                lines.iter().any(|x| x.line_id == l.line_id),
                format!("lines[{i}].line_id"),
                "is not a line of the order",
            );
            v.check(
                t.currency == o.currency,
                format!("lines[{i}].tax.currency"),
                format!("the order is in {}", o.currency),
            );
        }
        v.finish()?;
        let mut saved = Vec::with_capacity(lines.len());
        for l in lines {
            let given = req.lines.iter().find(|x| x.line_id == l.line_id);
            let mut am: line::ActiveModel = l.clone().into();
            am.tax_minor = Set(given
                .and_then(|g| g.tax.as_ref())
                .map_or(0, |t| t.amount_minor));
            am.tax_rate_bps = Set(given.map_or(0, |g| g.rate_bps));
            saved.push(am.update(&txn).await?);
        }
        // The total is the kept lines plus the tax now recorded (replacing any earlier figure).
        let (total, tax) = header_totals(&saved);
        let mut am: order::ActiveModel = o.into();
        am.tax_minor = Set(tax);
        am.tax_jurisdiction = Set(req.jurisdiction.clone());
        am.total_minor = Set(total);
        am.updated_at_ms = Set(now_ms());
        let o = am.update(&txn).await?;
        let response = RecordTaxResponse {
            order: Some(order_to_wire(o, saved)),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    async fn mark_failed(&self, req: MarkFailedRequest) -> ApiResult<MarkFailedResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.code("reason", &req.reason);
        v.optional_text("detail", &req.detail, 500);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.MarkFailed", req);
        let (o, lines) = load_for_update(&txn, &req.order_id).await?;
        if lines.iter().any(|l| l.shipped > 0) {
            return Err(ApiError::precondition(
                "ALREADY_SHIPPED",
                format!("order {} has shipped units and cannot fail", req.order_id),
            ));
        }
        let changed = lines
            .into_iter()
            .map(|l| {
                let mut q = qty(&l);
                q.cancel_unshipped();
                (l, q)
            })
            .collect();
        let reason = if req.detail.is_empty() {
            req.reason.clone()
        } else {
            format!("{}: {}", req.reason, req.detail)
        };
        let order = save_lines(&txn, o, changed, Some((OrderState::Failed, reason))).await?;
        outbox::enqueue(
            &txn,
            "order.failed",
            &req.order_id,
            &serde_json::json!({ "order_id": req.order_id, "reason": req.reason }),
        )
        .await?;
        let response = MarkFailedResponse { order: Some(order) };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn upsert_channel(
        &self,
        r: Request<UpsertChannelRequest>,
    ) -> Result<Response<UpsertChannelResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.upsert_channel(&caller, r.into_inner()).await)
    }

    async fn list_channels(
        &self,
        _r: Request<ListChannelsRequest>,
    ) -> Result<Response<ListChannelsResponse>, Status> {
        respond(
            async {
                let rows = channel::Entity::find()
                    .order_by_asc(channel::Column::Code)
                    .all(&self.db)
                    .await?;
                Ok(ListChannelsResponse {
                    channels: rows.into_iter().map(channel_to_wire).collect(),
                })
            }
            .await,
        )
    }

    async fn create_order(
        &self,
        r: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        respond(self.create_order(r.into_inner()).await)
    }

    async fn get_order(
        &self,
        r: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let caller = Caller::of(&r)?;
        // The payment token is for the saga that authorizes with it, nobody else.
        let with_token = caller
            .roles
            .iter()
            .any(|role| role == erp_runtime::auth::roles::ORCHESTRATOR)
            || !caller.authenticated;
        let req = r.into_inner();
        respond(
            async {
                let mut v = Violations::new();
                v.id("order_id", &req.order_id);
                v.finish()?;
                // One snapshot: the order, its lines and its decisions as one moment saw them.
                let txn = erp_runtime::db::snapshot(&self.db).await?;
                let (o, lines) = load(&txn, &req.order_id).await?;
                let token = with_token.then(|| o.payment_method_token.clone());
                let mut order = order_to_wire(o, lines);
                order.payment_method_token = token.unwrap_or_default();
                order.routing_decisions =
                    crate::route_api::decisions_of(&txn, &req.order_id).await?;
                txn.commit().await?;
                Ok(GetOrderResponse { order: Some(order) })
            }
            .await,
        )
    }

    async fn list_orders(
        &self,
        r: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        respond(self.list_orders(r.into_inner()).await)
    }

    async fn cancel_order(
        &self,
        r: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.cancel_order(&caller, r.into_inner()).await)
    }

    async fn record_allocation(
        &self,
        r: Request<RecordAllocationRequest>,
    ) -> Result<Response<RecordAllocationResponse>, Status> {
        respond(self.record_allocation(r.into_inner()).await)
    }

    async fn mark_shipped(
        &self,
        r: Request<MarkShippedRequest>,
    ) -> Result<Response<MarkShippedResponse>, Status> {
        respond(self.mark_shipped(r.into_inner()).await)
    }

    async fn record_tax(
        &self,
        r: Request<RecordTaxRequest>,
    ) -> Result<Response<RecordTaxResponse>, Status> {
        respond(self.record_tax(r.into_inner()).await)
    }

    async fn mark_failed(
        &self,
        r: Request<MarkFailedRequest>,
    ) -> Result<Response<MarkFailedResponse>, Status> {
        respond(self.mark_failed(r.into_inner()).await)
    }

    async fn put_routing_rules(
        &self,
        r: Request<PutRoutingRulesRequest>,
    ) -> Result<Response<PutRoutingRulesResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.put_rules(&caller, r.into_inner()).await)
    }

    async fn get_routing_rules(
        &self,
        r: Request<GetRoutingRulesRequest>,
    ) -> Result<Response<GetRoutingRulesResponse>, Status> {
        respond(self.get_rules(r.into_inner()).await)
    }

    async fn route_order(
        &self,
        r: Request<RouteOrderRequest>,
    ) -> Result<Response<RouteOrderResponse>, Status> {
        respond(self.route(r.into_inner()).await)
    }
}
