//! Shared plumbing for every erp service: configuration, telemetry, the gRPC server bootstrap
//! (health, reflection, tower layers, graceful shutdown), database connections and migrations,
//! the transactional outbox and its relay, the event bus (in-process or Redis Streams), the
//! idempotency store and the mapping of errors to rich gRPC statuses.

#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod idempotency;
pub mod jwks;
pub mod money;
pub mod outbox;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod time;
pub mod tls;
pub mod validate;

pub use app::{Service, ServiceContext};
pub use config::Settings;
pub use error::{ApiError, ApiResult};

/// Declares a sea-orm entity module for a table with no relations (services keep relations in
/// their queries; foreign keys live in the DDL):
/// `entity!(payment, "payments", { #[sea_orm(primary_key, auto_increment = false)] pub id: String, ... });`
#[macro_export]
macro_rules! entity {
    ($module:ident, $table:literal, { $($body:tt)* }) => {
        pub mod $module {
            use sea_orm::entity::prelude::*;

            #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
            #[sea_orm(table_name = $table)]
            pub struct Model {
                $($body)*
            }

            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}

            impl ActiveModelBehavior for ActiveModel {}
        }
    };
}
