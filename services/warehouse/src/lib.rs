//! The warehouse service: sites with capacity and cutoffs, fulfillments with pick tasks, and
//! pick/ship confirmations that are harmless to scan twice.

#![forbid(unsafe_code)]

pub mod api;
pub mod store;

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "warehouse";
    const GRPC_NAME: &'static str = erp_proto::service_names::WAREHOUSE;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let api = api::WarehouseApi::new(ctx.db.clone(), ctx.outbox.clone());
        Ok(tonic::service::Routes::new(
            erp_proto::warehouse::warehouse_service_server::WarehouseServiceServer::new(api),
        ))
    }
}
