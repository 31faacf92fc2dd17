//! The finance service: chart of accounts, an immutable double-entry journal, and payments
//! behind a provider port (a built-in fake provider here).

#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod store;

pub struct Service;

impl erp_runtime::Service for Service {
    const NAME: &'static str = "finance";
    const GRPC_NAME: &'static str = erp_proto::service_names::FINANCE;
    type Migrator = store::Migrator;

    async fn build(ctx: erp_runtime::ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let api = api::FinanceApi::new(ctx.db.clone(), ctx.outbox.clone());
        Ok(tonic::service::Routes::new(
            erp_proto::finance::finance_service_server::FinanceServiceServer::new(api),
        ))
    }
}
