//! gRPC handlers of the warehouse service: each method validates, then runs in one
//! transaction over [`crate::store`] queries and [`crate::domain`] rules. Split by room:
//! sites, fulfillments and waves, the floor (pick, pack, ship, exceptions), receipts.

use erp_proto::warehouse::warehouse_service_server::WarehouseService;
use erp_proto::warehouse::*;
use erp_runtime::auth::Caller;
use erp_runtime::error::respond;
use erp_runtime::outbox::OutboxWaker;
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

mod floor;
mod fulfillments;
mod receipts;
mod sites;

type Inventory = erp_proto::inventory::inventory_service_client::InventoryServiceClient<
    erp_runtime::auth::PeerChannel,
>;

pub struct WarehouseApi {
    db: DatabaseConnection,
    outbox: OutboxWaker,
    /// Receipts move stock in the inventory service.
    inventory: Inventory,
}

impl WarehouseApi {
    pub fn new(db: DatabaseConnection, outbox: OutboxWaker, inventory: Inventory) -> Self {
        Self {
            db,
            outbox,
            inventory,
        }
    }
}

#[tonic::async_trait]
impl WarehouseService for WarehouseApi {
    async fn upsert_site(
        &self,
        r: Request<UpsertSiteRequest>,
    ) -> Result<Response<UpsertSiteResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.upsert_site(&caller, r.into_inner()).await)
    }

    async fn get_site(
        &self,
        r: Request<GetSiteRequest>,
    ) -> Result<Response<GetSiteResponse>, Status> {
        respond(self.get_site(r.into_inner()).await)
    }

    async fn list_sites(
        &self,
        _r: Request<ListSitesRequest>,
    ) -> Result<Response<ListSitesResponse>, Status> {
        respond(self.list_sites().await)
    }

    async fn set_site_status(
        &self,
        r: Request<SetSiteStatusRequest>,
    ) -> Result<Response<SetSiteStatusResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.set_site_status(&caller, r.into_inner()).await)
    }

    async fn create_fulfillment(
        &self,
        r: Request<CreateFulfillmentRequest>,
    ) -> Result<Response<CreateFulfillmentResponse>, Status> {
        respond(self.create_fulfillment(r.into_inner()).await)
    }

    async fn get_fulfillment(
        &self,
        r: Request<GetFulfillmentRequest>,
    ) -> Result<Response<GetFulfillmentResponse>, Status> {
        respond(self.get_fulfillment(r.into_inner()).await)
    }

    async fn list_fulfillments(
        &self,
        r: Request<ListFulfillmentsRequest>,
    ) -> Result<Response<ListFulfillmentsResponse>, Status> {
        respond(self.list_fulfillments(r.into_inner()).await)
    }

    async fn cancel_fulfillment(
        &self,
        r: Request<CancelFulfillmentRequest>,
    ) -> Result<Response<CancelFulfillmentResponse>, Status> {
        respond(self.cancel_fulfillment(r.into_inner()).await)
    }

    async fn release_wave(
        &self,
        r: Request<ReleaseWaveRequest>,
    ) -> Result<Response<ReleaseWaveResponse>, Status> {
        respond(self.release_wave(r.into_inner()).await)
    }

    async fn confirm_pick(
        &self,
        r: Request<ConfirmPickRequest>,
    ) -> Result<Response<ConfirmPickResponse>, Status> {
        respond(self.confirm_pick(r.into_inner()).await)
    }

    async fn confirm_pack(
        &self,
        r: Request<ConfirmPackRequest>,
    ) -> Result<Response<ConfirmPackResponse>, Status> {
        respond(self.confirm_pack(r.into_inner()).await)
    }

    async fn confirm_ship(
        &self,
        r: Request<ConfirmShipRequest>,
    ) -> Result<Response<ConfirmShipResponse>, Status> {
        respond(self.confirm_ship(r.into_inner()).await)
    }

    async fn report_exception(
        &self,
        r: Request<ReportExceptionRequest>,
    ) -> Result<Response<ReportExceptionResponse>, Status> {
        respond(self.report_exception(r.into_inner()).await)
    }

    async fn record_receipt(
        &self,
        r: Request<RecordReceiptRequest>,
    ) -> Result<Response<RecordReceiptResponse>, Status> {
        respond(self.record_receipt(r.into_inner()).await)
    }
}
