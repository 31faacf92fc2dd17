//! The orchestrator: runs the fulfillment saga of every accepted order (reserve stock,
//! authorize payment, create the fulfillment, buy a label, wait for shipment, then the pivot:
//! commit stock, capture, post the journal, mark shipped), compensating in reverse order on a
//! business rejection. Saga state and the step log live in its own database; replicas share
//! work through expiring leases; operators control sagas over gRPC.

#![forbid(unsafe_code)]

pub mod api;
pub mod ctx;
pub mod definition;
pub mod engine;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
pub mod outcome;
pub mod participants;
pub mod plan;
pub mod policy;
pub mod ports;
pub mod steps;
pub mod store;
pub mod watch;

use std::sync::Arc;

use erp_runtime::bus::{Event, handler};
use tokio::sync::Notify;

/// Version of the fulfillment saga definition new instances are pinned to.
pub const FULFILLMENT_VERSION: i32 = 3;

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "orchestrator";
    const GRPC_NAME: &'static str = erp_proto::service_names::ORCHESTRATOR;
    const POLICY: &'static erp_runtime::auth::Policy = &policy::POLICY;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let wake = Arc::new(Notify::new());
        for (topic, accepted) in [
            ("order.accepted", true),
            ("order.cancelled", false),
            ("warehouse.shipped", false),
            ("warehouse.packed", false),
            ("warehouse.exception", false),
        ] {
            let db = ctx.db.clone();
            let wake = wake.clone();
            ctx.subscribe(
                topic,
                handler(move |event: Event| {
                    let db = db.clone();
                    let wake = wake.clone();
                    async move {
                        if accepted {
                            store::on_order_accepted(&db, &event, &wake).await
                        } else {
                            store::on_participant_event(&db, &event, &wake).await
                        }
                    }
                }),
            )
            .await?;
        }
        {
            // A warehouse gone offline re-routes what it had not picked.
            let db = ctx.db.clone();
            let wake = wake.clone();
            ctx.subscribe(
                "warehouse.site_status_changed",
                handler(move |event: Event| {
                    let db = db.clone();
                    let wake = wake.clone();
                    async move { store::on_site_status(&db, &event, &wake).await }
                }),
            )
            .await?;
        }
        // Stock that became available, or new routing rules, wake the sagas waiting for stock
        // (backorders) at once.
        for topic in ["inventory.stock_changed", "order.routing_rules_changed"] {
            let db = ctx.db.clone();
            let wake = wake.clone();
            ctx.subscribe(
                topic,
                handler(move |event: Event| {
                    let db = db.clone();
                    let wake = wake.clone();
                    async move { store::wake_waiting_for_stock(&db, &event, &wake).await }
                }),
            )
            .await?;
        }
        let participants = participants::Participants::connect_lazy(
            &ctx.settings.peers,
            &ctx.peer,
            &ctx.settings.orchestrator.probe_url,
        )?
        .with_reauthorize_within(ctx.settings.orchestrator.reauthorize_within_ms);
        let mut engine = engine::Engine::new(
            ctx.db.clone(),
            participants,
            ctx.settings.orchestrator.clone(),
            wake.clone(),
            ctx.tasks.clone(),
            ctx.shutdown.clone(),
        );
        let changes = watch::Changes::default();
        engine.changes = changes.clone();
        Arc::new(engine).spawn();
        let api = api::OrchestratorApi::new(
            ctx.db.clone(),
            wake,
            ctx.peer.channel(&ctx.settings.peers.warehouse)?,
        )
        .with_watches(changes, ctx.shutdown.clone());
        Ok(tonic::service::Routes::new(
            erp_proto::orchestrator::orchestrator_service_server::OrchestratorServiceServer::new(
                api,
            ),
        ))
    }
}
