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

/// Saga timings for tests: quick polls, short leases.
pub const FAST: &[(&str, &str)] = &[
    ("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50"),
    ("ERP__ORCHESTRATOR__LEASE_MS", "3000"),
];

/// How long a test waits for a saga to reach a state.
pub const T: std::time::Duration = std::time::Duration::from_secs(20);

/// The whole suite on `backend` with [`FAST`] timings and the seeded catalog, and its clients.
pub async fn seeded(backend: &Backend) -> (erp::Suite, Clients) {
    let s = suite(settings(backend, FAST), Bus::InProcess(Default::default())).await;
    erp::seed::seed(&s).await.expect("seed");
    let c = Clients::for_suite(&s);
    (s, c)
}
