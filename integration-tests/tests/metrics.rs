//! The Prometheus endpoint: after real work, /metrics carries request counts and latencies per
//! gRPC method, saga step outcomes and statuses, reservation decisions and outbox figures.
//! (Its own test binary: the metrics recorder is process-wide.)

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::Duration;

use erp_integration_tests::{settings, suite};
use erp_runtime::bus::Bus;
use erp_runtime::testing::Backend;

fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_requests_sagas_reservations_and_the_outbox() {
    let _watchdog = erp_runtime::testing::watchdog(
        "metrics_describe_requests_sagas_reservations_and_the_outbox",
        std::time::Duration::from_secs(300),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cfg = settings(
        &Backend::Sqlite,
        &[("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50")],
    );
    cfg.telemetry.metrics_addr = addr.clone();
    let s = suite(cfg, Bus::InProcess(Default::default())).await;
    erp::seed::seed(&s).await.unwrap();
    let report = erp::demo::run(&s, 10).await.unwrap();
    assert!(report.reconciles());
    // The saga status gauge is refreshed every five seconds.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let body = scrape(&addr);
    for needle in [
        "grpc_server_requests_total{service=\"erp.order.v1.OrderService\",method=\"/erp.order.v1.OrderService/CreateOrder\",code=\"0\"}",
        "grpc_server_request_duration_seconds_bucket{service=\"erp.inventory.v1.InventoryService\"",
        "saga_steps_total{step=\"buy_label\",direction=\"forward\",outcome=\"retryable_failure\"}",
        "sagas{status=\"completed\"}",
        "inventory_reservation_decisions_total{outcome=\"refused\"}",
        "outbox_published_total{service=\"order\"}",
    ] {
        assert!(body.contains(needle), "missing {needle} in\n{body}");
    }
    // Every metric the chart's dashboard plots is exported.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/erp/dashboards/erp.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        let expr = panel["targets"][0]["expr"].as_str().unwrap();
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| {
                w.starts_with("grpc_")
                    || w.starts_with("saga")
                    || w.starts_with("inventory_")
                    || w.starts_with("outbox_")
            })
        {
            let exported = name.trim_end_matches("_bucket");
            assert!(
                body.contains(exported),
                "the dashboard plots {name}, which is not exported"
            );
        }
    }
    // Refused calls are counted under their status code (9 = FAILED_PRECONDITION).
    assert!(
        body.contains("code=\"9\""),
        "no FAILED_PRECONDITION counted:\n{body}"
    );
    s.stop().await.unwrap();
}
