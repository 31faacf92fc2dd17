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

// The handlers, by room (after the macros they use).
mod books;
mod catalog;
mod reservations;
mod returns;
mod stock;
