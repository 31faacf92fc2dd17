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
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, TransactionTrait};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::domain::{LineQty, Status as OrderState};
use crate::store::{self, channel, line, order};

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
                let rows = store::channels(&self.db).await?;
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
                let (o, lines) = store::order_with_lines(&txn, &req.order_id).await?;
                let token = with_token.then(|| o.payment_method_token.clone());
                let mut order = order_to_wire(o, lines);
                order.payment_method_token = token.unwrap_or_default();
                let decisions = store::decisions_of(&txn, &req.order_id).await?;
                order.routing_decisions = crate::route_api::decisions_to_wire(&decisions)?;
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

// The handlers, by room (after the macros they use).
mod channels;
mod lifecycle;
mod orders;
