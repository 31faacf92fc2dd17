//! The finance service: chart of accounts, an immutable double-entry journal, payments behind a
//! provider port (a built-in fake provider here) with refunds and chargebacks posted as they
//! happen, channel profitability from the journal, and marketplace settlement reconciliation.

#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod error;
pub mod policy;
pub mod refunds;
pub mod settlement;
pub mod store;
pub mod tax;
pub mod valuation;

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "finance";
    const GRPC_NAME: &'static str = erp_proto::service_names::FINANCE;
    const POLICY: &'static erp_runtime::auth::Policy = &policy::POLICY;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let orders = ctx.peer.channel(&ctx.settings.peers.order)?;
        let api = std::sync::Arc::new(api::FinanceApi::new(
            ctx.db.clone(),
            ctx.outbox.clone(),
            erp_proto::order::order_service_client::OrderServiceClient::new(orders),
            &ctx.settings.finance,
        ));
        // Inventory's value changes become journal entries.
        let consumer = api.clone();
        ctx.subscribe(
            "inventory.stock_changed",
            erp_runtime::bus::handler(move |event: erp_runtime::bus::Event| {
                let api = consumer.clone();
                async move { api.on_stock_changed(&event).await }
            }),
        )
        .await?;
        Ok(tonic::service::Routes::new(
            erp_proto::finance::finance_service_server::FinanceServiceServer::from_arc(api),
        ))
    }
}
