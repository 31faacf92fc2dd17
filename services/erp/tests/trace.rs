//! One order, one trace: the seven services as their own processes (PostgreSQL, Redis Streams)
//! export spans over OTLP to a real Jaeger; the order is placed with a known W3C trace id, and
//! the trace must hold spans of the order service, the orchestrator (its asynchronous steps
//! and retries included) and every participant it called.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erp::testkit::Clients;
use erp_proto::orchestrator::SagaStatus;
use erp_runtime::config::SERVICES;
use erp_runtime::testing;

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_every_service_it_touched() {
    let _watchdog = erp_runtime::testing::watchdog(
        "one_order_is_one_trace_across_every_service_it_touched",
        std::time::Duration::from_secs(300),
    );
    let Ok(jaeger) = std::env::var("ERP_TEST_JAEGER_BIN") else {
        assert!(
            std::env::var("ERP_TEST_REQUIRE_JAEGER").as_deref() != Ok("1"),
            "ERP_TEST_REQUIRE_JAEGER=1 but ERP_TEST_JAEGER_BIN is not set"
        );
        return;
    };
    let redis = testing::redis_url().expect("redis for distributed mode");
    let postgres = match testing::backends().pop().unwrap() {
        testing::Backend::Postgres(url) => url,
        testing::Backend::Sqlite => {
            panic!("the trace test runs the distributed mode on PostgreSQL")
        }
    };
    let mut jaeger_cmd = Command::new(jaeger);
    jaeger_cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let _jaeger = Kill(vec![jaeger_cmd.spawn().unwrap()]);
    let mut children = Kill(Vec::new());
    // Jaeger's query API answers once it is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new("curl")
        .args(["-sf", "http://127.0.0.1:16686/api/services"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "jaeger did not start");
        std::thread::sleep(Duration::from_millis(200));
    }

    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 10..];
    // One key set for the seven processes and this client.
    let jwks = std::env::temp_dir().join(format!("erp-trace-{tag}-jwks.json"));
    let mut settings = erp::tool_settings(&jwks).unwrap();
    let peers = &mut settings.peers;
    let ports = testing::free_ports(SERVICES.len());
    for (s, p) in SERVICES.iter().zip(&ports) {
        peers.set(s, format!("http://127.0.0.1:{p}"));
    }
    for (service, port) in SERVICES.iter().zip(&ports) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_erp"));
        cmd.args(["serve", service])
            .env("ERP__SERVER__PORT", port.to_string())
            .env(
                "ERP__DATABASE__URL",
                format!("{}/tr{tag}_{{service}}", postgres.trim_end_matches('/')),
            )
            .env("ERP__BUS__KIND", "redis")
            .env("ERP__BUS__REDIS_URL", &redis)
            .env("ERP__BUS__STREAM_PREFIX", format!("erp-trace-{tag}"))
            .env("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50")
            .env("ERP__TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env("ERP__TELEMETRY__LOG_FILTER", "info")
            .env("ERP__AUTH__JWKS_FILE", &jwks)
            .stdout(Stdio::piped());
        // Kept in a file: when a service does not come up, its own words say why.
        let log = std::env::temp_dir().join(format!("erp-trace-{tag}-{service}.log"));
        cmd.stderr(std::fs::File::create(&log).unwrap());
        for s in SERVICES {
            cmd.env(
                format!("ERP__PEERS__{}", s.to_uppercase()),
                peers.get(s).unwrap(),
            );
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("listening"),
            "{service} did not start: {line}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        children.0.push(child);
    }

    let mut c = Clients::for_settings(&settings);
    erp::seed::seed_with(&c).await.unwrap();
    // The storefront's request starts the trace.
    let trace_id = format!("{:032x}", uuid::Uuid::now_v7().as_u128());
    let mut order = erp::seed::sample_order(&format!("TR-{tag}"), "MUG-BLUE", 1);
    // Express goes through the carrier that times out once: the retry must be in the trace.
    order.service_level = "express".into();
    let mut request = tonic::Request::new(order);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let order_id = c
        .order
        .create_order(request)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
        .order_id;
    c.wait_saga(&order_id, &[SagaStatus::Waiting], Duration::from_secs(30))
        .await;
    c.ship(&order_id).await;
    c.wait_saga(&order_id, &[SagaStatus::Completed], Duration::from_secs(30))
        .await;
    // SIGTERM flushes every exporter.
    drop(children);

    let deadline = Instant::now() + Duration::from_secs(30);
    let (services, label_attempts) = loop {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("http://127.0.0.1:16686/api/traces/{trace_id}"),
            ])
            .output()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let trace = &body["data"][0];
        let services: BTreeSet<String> = trace["processes"]
            .as_object()
            .map(|p| {
                p.values()
                    .filter_map(|v| v["serviceName"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let label_attempts = trace["spans"]
            .as_array()
            .map(|spans| {
                spans
                    .iter()
                    .filter(|s| {
                        s["tags"].as_array().is_some_and(|tags| {
                            tags.iter().any(|t| {
                                t["key"] == "method"
                                    && t["value"] == "/erp.carrier.v1.CarrierService/BuyLabel"
                            })
                        })
                    })
                    .count()
            })
            .unwrap_or(0);
        let wanted = [
            "order",
            "orchestrator",
            "inventory",
            "finance",
            "warehouse",
            "carrier",
        ];
        if wanted.iter().all(|w| services.contains(*w)) && label_attempts >= 2 {
            break (services, label_attempts);
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} holds {services:?} with {label_attempts} label attempts"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("trace {trace_id}: services {services:?}, BuyLabel attempts {label_attempts}");
}
