//! The `erp` binary as an operator runs it: `erp up` prints where each service listens, stops
//! cleanly on SIGTERM, and after a SIGKILL a restart finds every record written before.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erp_proto::order::GetOrderRequest;
use erp_proto::order::order_service_client::OrderServiceClient;

const SERVICES: [&str; 7] = [
    "order",
    "inventory",
    "warehouse",
    "carrier",
    "procurement",
    "finance",
    "orchestrator",
];

struct Up {
    child: Child,
    addresses: Vec<(String, String)>,
    ready_after: Duration,
    orders: Vec<String>,
}

fn start(data_dir: &std::path::Path, ports: &[u16], seed: bool) -> Up {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_erp"));
    cmd.arg("up")
        .env("ERP__DATA_DIR", data_dir)
        .env("ERP__TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if seed {
        cmd.arg("--seed");
    }
    for (service, port) in SERVICES.iter().zip(ports) {
        cmd.env(
            format!("ERP__PEERS__{}", service.to_uppercase()),
            format!("http://127.0.0.1:{port}"),
        );
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addresses = Vec::new();
    let mut orders = Vec::new();
    let mut ready_after = Duration::ZERO;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("erp suite ready") {
            ready_after = started.elapsed();
        } else if let Some(rest) = line.strip_prefix("  placed order ") {
            orders.push(rest.split_whitespace().next().unwrap().to_owned());
        } else if line.starts_with("  ") && line.contains("127.0.0.1") {
            let mut parts = line.split_whitespace();
            addresses.push((
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            ));
        }
        if line.starts_with("try:") {
            break;
        }
    }
    Up {
        child,
        addresses,
        ready_after,
        orders,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_addresses_survives_sigkill_and_stops_on_sigterm() {
    let _watchdog = erp_runtime::testing::watchdog(
        "up_prints_addresses_survives_sigkill_and_stops_on_sigterm",
        std::time::Duration::from_secs(300),
    );
    let data_dir = std::env::temp_dir().join(format!("erp-process-{}", std::process::id()));
    let ports = erp_runtime::testing::free_ports(7);

    let mut up = start(&data_dir, &ports, true);
    assert_eq!(up.addresses.len(), 7, "{:?}", up.addresses);
    for (service, port) in SERVICES.iter().zip(&ports) {
        assert!(
            up.addresses
                .iter()
                .any(|(s, a)| s == service && a.ends_with(&format!(":{port}"))),
            "{service} not on {port}: {:?}",
            up.addresses
        );
    }
    assert_eq!(up.orders.len(), 3);
    println!(
        "erp up ready after {} ms (debug build)",
        up.ready_after.as_millis()
    );
    let order_url = format!("http://127.0.0.1:{}", ports[0]);

    // SIGKILL: no chance to flush or shut down.
    up.child.kill().unwrap();
    up.child.wait().unwrap();

    let mut up2 = start(&data_dir, &ports, false);
    // A token from the key `erp up` wrote under its data directory.
    let mut settings = erp::tool_settings(&data_dir.join("auth").join("jwks.json")).unwrap();
    settings.peers.order = order_url;
    let mut client = OrderServiceClient::new(erp::testkit::channel_as(
        &settings,
        "order",
        "process-test",
        &[erp_runtime::auth::roles::OPERATOR],
    ));
    for id in &up.orders {
        let order = client
            .get_order(GetOrderRequest {
                order_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert_eq!(&order.order_id, id);
    }

    // SIGTERM: a clean stop with exit status 0.
    let pid = up2.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = up2.child.try_wait().unwrap() {
            assert!(status.success(), "erp exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "erp did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn migrate_creates_every_database_and_is_repeatable() {
    let data_dir = std::env::temp_dir().join(format!("erp-migrate-{}", std::process::id()));
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_erp"))
            .arg("migrate")
            .env("ERP__DATA_DIR", &data_dir)
            .env("ERP__TELEMETRY__LOG_FILTER", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for service in SERVICES {
            assert!(
                text.contains(&format!("{service}: migrations applied")),
                "{text}"
            );
            assert!(data_dir.join(format!("{service}.db")).exists());
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_erp"))
        .args(["migrate", "--service", "nope"])
        .env("ERP__DATA_DIR", &data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service"));
    // A bad setting stops the process with the key named.
    let out = Command::new(env!("CARGO_BIN_EXE_erp"))
        .arg("migrate")
        .env("ERP__SERVER__CONCURRENCY_LIMIT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.concurrency_limit"));
    let _ = std::fs::remove_dir_all(&data_dir);
}
