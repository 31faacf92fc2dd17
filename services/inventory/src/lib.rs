//! The inventory service: the single truth of stock across every channel and warehouse.
//!
//! - `domain`: buckets, reservation states and the rules that keep stock from going negative.
//! - `store`: tables, migrations and the transactions that change stock with a ledger entry each.
//! - `api`: the gRPC handlers, mapping wire types to the domain and errors to statuses.

#![forbid(unsafe_code)]

pub mod api;
pub mod batcher;
pub mod cache;
pub mod domain;
pub mod policy;
pub mod store;

/// How often expired reservations are looked for.
const EXPIRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The inventory service for the runtime.
pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "inventory";
    const GRPC_NAME: &'static str = erp_proto::service_names::INVENTORY;
    const POLICY: &'static erp_runtime::auth::Policy = &policy::POLICY;
    type Migrator = store::migration::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let cache = cache::AtpCache::from_settings(&ctx.settings).await?;
        let store = store::Store::new(ctx.db.clone(), ctx.outbox.clone(), cache);
        // Abandoned holds return to stock when their expiry passes.
        let expiring = store.clone();
        let shutdown = ctx.shutdown.clone();
        ctx.spawn(async move {
            loop {
                let expired = expiring
                    .cache
                    .tracked(expiring.expire_due(erp_runtime::time::now_ms()))
                    .await;
                match expired {
                    Ok(n) if n > 0 => tracing::info!(expired = n, "reservations expired"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "expiring reservations failed"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(EXPIRY_INTERVAL) => {}
                }
            }
        });
        let batcher = batcher::Batcher::spawn(
            store.clone(),
            ctx.settings.inventory.reservation_batch,
            &ctx,
        );
        let api = api::InventoryApi::new(
            store,
            batcher,
            ctx.settings.inventory.write_off_approval_minor,
        );
        Ok(tonic::service::Routes::new(
            erp_proto::inventory::inventory_service_server::InventoryServiceServer::new(api),
        ))
    }
}
