//! Helpers for the end-to-end tests: start the whole suite against a backend, connect clients.

#![forbid(unsafe_code)]

use erp_runtime::bus::Bus;
use erp_runtime::config::Settings;
use erp_runtime::testing::Backend;

/// Starts the whole suite on free ports with `settings`.
pub async fn suite(settings: Settings, bus: Bus) -> erp::Suite {
    let _ = erp_runtime::telemetry::init("erp-it", &settings.telemetry);
    erp::start_suite(settings, bus, true)
        .await
        .expect("suite starts")
}

/// Settings for a fresh suite on `backend`, plus extra `ERP__...` overrides.
pub fn settings(backend: &Backend, extra: &[(&str, &str)]) -> Settings {
    erp_runtime::testing::settings(backend, extra).0
}

pub async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connects")
}

pub use erp::testkit::Clients;
