//! The procurement service: suppliers and their item terms, and purchase orders from draft
//! through approval (with an approval threshold and a recorded approver).

#![forbid(unsafe_code)]

pub mod api;
pub mod store;

/// Purchase orders above this total (minor units) need an approver with the `approver` role.
pub const APPROVAL_THRESHOLD_MINOR: i64 = 1_000_000; // 10,000.00

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "procurement";
    const GRPC_NAME: &'static str = erp_proto::service_names::PROCUREMENT;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let api = api::ProcurementApi::new(ctx.db.clone());
        Ok(tonic::service::Routes::new(
            erp_proto::procurement::procurement_service_server::ProcurementServiceServer::new(api),
        ))
    }
}
