//! The carrier service: carriers with service levels and weight-band rate cards, rate shopping
//! against a promised date, labels (idempotent buy, void until pickup) and tracking milestones
//! that never move a shipment backwards. Carriers' own systems sit behind [`adapter::CarrierPort`].

#![forbid(unsafe_code)]

pub mod adapter;
pub mod api;
pub mod domain;
pub mod error;
pub mod policy;
pub mod store;

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "carrier";
    const GRPC_NAME: &'static str = erp_proto::service_names::CARRIER;
    const POLICY: &'static erp_runtime::auth::Policy = &policy::POLICY;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let api = api::CarrierApi::new(
            ctx.db.clone(),
            ctx.outbox.clone(),
            std::sync::Arc::new(adapter::Simulated::default()),
        );
        Ok(tonic::service::Routes::new(
            erp_proto::carrier::carrier_service_server::CarrierServiceServer::new(api),
        ))
    }
}
