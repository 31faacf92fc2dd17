//! The order service: where every channel's orders meet. Capture is idempotent per
//! (channel, external order id); each accepted order leaves an `order.accepted` event through
//! the outbox, from which the orchestrator starts exactly one fulfillment saga.

#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod error;
pub mod policy;
pub mod promise;
pub mod route_api;
pub mod routing;
pub mod store;

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "order";
    const GRPC_NAME: &'static str = erp_proto::service_names::ORDER;
    const POLICY: &'static erp_runtime::auth::Policy = &policy::POLICY;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let api = api::OrderApi::new(
            ctx.db.clone(),
            ctx.outbox.clone(),
            erp_proto::inventory::inventory_service_client::InventoryServiceClient::new(
                ctx.peer.channel(&ctx.settings.peers.inventory)?,
            ),
            erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient::new(
                ctx.peer.channel(&ctx.settings.peers.warehouse)?,
            ),
            erp_proto::carrier::carrier_service_client::CarrierServiceClient::new(
                ctx.peer.channel(&ctx.settings.peers.carrier)?,
            ),
        );
        Ok(tonic::service::Routes::new(
            erp_proto::order::order_service_server::OrderServiceServer::new(api),
        ))
    }
}
