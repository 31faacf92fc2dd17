//! The warehouse service: sites with capacity and cutoffs, fulfillments with pick tasks, and
//! pick/pack/ship confirmations that are harmless to scan twice, exceptions that the saga
//! acts on, and receiving that moves stock in inventory.

#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod error;
pub mod policy;
pub mod store;
pub mod wire;

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "warehouse";
    const GRPC_NAME: &'static str = erp_proto::service_names::WAREHOUSE;
    const POLICY: &'static erp_runtime::auth::Policy = &policy::POLICY;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let inventory = ctx.peer.channel(&ctx.settings.peers.inventory)?;
        let api = std::sync::Arc::new(api::WarehouseApi::new(
            ctx.db.clone(),
            ctx.outbox.clone(),
            erp_proto::inventory::inventory_service_client::InventoryServiceClient::new(inventory),
        ));
        let every = ctx.settings.warehouse.auto_wave_interval_ms;
        if every > 0 {
            let (api, shutdown) = (api.clone(), ctx.shutdown.clone());
            let every_ms = i64::try_from(every).unwrap_or(i64::MAX);
            ctx.spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(std::time::Duration::from_millis(every)) => {}
                    }
                    api.release_scheduled_waves(erp_runtime::time::now_ms() / every_ms)
                        .await;
                }
            });
        }
        Ok(tonic::service::Routes::new(
            erp_proto::warehouse::warehouse_service_server::WarehouseServiceServer::from_arc(api),
        ))
    }
}
