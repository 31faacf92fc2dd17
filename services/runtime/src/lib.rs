//! Shared plumbing for every erp service: configuration, telemetry, the gRPC server bootstrap
//! (health, reflection, tower layers, graceful shutdown), database connections and migrations,
//! the transactional outbox and its relay, the event bus (in-process or Redis Streams), the
//! idempotency store and the mapping of errors to rich gRPC statuses.

#![forbid(unsafe_code)]

pub mod app;
pub mod bus;
pub mod config;
pub mod db;
pub mod error;
pub mod idempotency;
pub mod outbox;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod time;
pub mod validate;

pub use app::{Service, ServiceContext};
pub use config::Settings;
pub use error::{ApiError, ApiResult};
