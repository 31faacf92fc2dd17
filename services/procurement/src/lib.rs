//! The procurement service: suppliers and their item terms; reorder policies fed by demand from
//! shipments and by low-stock events; replenishment suggestions that become draft purchase
//! orders; purchase orders from draft through approval (threshold, recorded approver), sending
//! (inbound in inventory) and receiving (through the warehouse); supplier scorecards.

#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod error;
pub mod lifecycle;
pub mod policy;
pub mod store;

/// Purchase orders above this total (minor units) need an approver with the `approver` role.
pub const APPROVAL_THRESHOLD_MINOR: i64 = 1_000_000; // 10,000.00

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "procurement";
    const GRPC_NAME: &'static str = erp_proto::service_names::PROCUREMENT;
    const POLICY: &'static erp_runtime::auth::Policy = &policy::POLICY;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let api = std::sync::Arc::new(api::ProcurementApi::new(
            ctx.db.clone(),
            ctx.outbox.clone(),
            erp_proto::inventory::inventory_service_client::InventoryServiceClient::new(
                ctx.peer.channel(&ctx.settings.peers.inventory)?,
            ),
            erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient::new(
                ctx.peer.channel(&ctx.settings.peers.warehouse)?,
            ),
        ));
        // Demand from shipments, drafts on low stock, and receipts recorded at the warehouse.
        for topic in [
            "inventory.stock_changed",
            "inventory.low_stock",
            "warehouse.receipt_recorded",
        ] {
            let api = api.clone();
            ctx.subscribe(
                topic,
                erp_runtime::bus::handler(move |event: erp_runtime::bus::Event| {
                    let api = api.clone();
                    async move {
                        match event.topic.as_str() {
                            "inventory.stock_changed" => api.on_stock_changed(&event).await,
                            "inventory.low_stock" => api.on_low_stock(&event).await,
                            _ => api.on_receipt_recorded(&event).await,
                        }
                    }
                }),
            )
            .await?;
        }
        Ok(tonic::service::Routes::new(
            erp_proto::procurement::procurement_service_server::ProcurementServiceServer::from_arc(
                api,
            ),
        ))
    }
}
