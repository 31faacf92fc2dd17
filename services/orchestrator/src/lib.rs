//! The orchestrator: saga instances and their append-only step log. This foundation stage
//! records one fulfillment saga per accepted order (consumed from the order service's outbox,
//! exactly once per order whatever the redeliveries) and lets operators read them; running the
//! steps and the operator controls come with the saga issue.

#![forbid(unsafe_code)]

pub mod api;
pub mod store;

use erp_runtime::bus::{Event, handler};

/// Version of the fulfillment saga definition new instances are pinned to.
pub const FULFILLMENT_VERSION: i32 = 1;

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "orchestrator";
    const GRPC_NAME: &'static str = erp_proto::service_names::ORCHESTRATOR;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let db = ctx.db.clone();
        ctx.bus
            .subscribe(
                "order.accepted",
                "orchestrator",
                handler(move |event: Event| {
                    let db = db.clone();
                    async move { store::on_order_accepted(&db, &event).await }
                }),
                ctx.shutdown.clone(),
            )
            .await?;
        let api = api::OrchestratorApi::new(ctx.db.clone());
        Ok(tonic::service::Routes::new(
            erp_proto::orchestrator::orchestrator_service_server::OrchestratorServiceServer::new(
                api,
            ),
        ))
    }
}
