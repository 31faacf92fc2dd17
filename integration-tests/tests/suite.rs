//! The whole suite over real sockets: every service healthy and listed by reflection, every RPC
//! answering junk with a clear status, orders becoming exactly one saga through the outbox on
//! the in-process bus and on Redis Streams, and records surviving a restart.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use erp_integration_tests::{RawCodec, channel, settings, suite};
use erp_proto::orchestrator::orchestrator_service_client::OrchestratorServiceClient;
use erp_proto::orchestrator::{GetSagaRequest, ListSagasRequest};
use erp_proto::order::GetOrderRequest;
use erp_proto::order::order_service_client::OrderServiceClient;
use erp_runtime::bus::Bus;
use erp_runtime::config::{BusSettings, SERVICES};
use erp_runtime::testing::{self, Backend};
use tonic::Code;

/// Waits until the orchestrator has the saga of `order_id`.
async fn wait_for_saga(
    orch: &mut OrchestratorServiceClient<erp_runtime::auth::PeerChannel>,
    order_id: &str,
) -> erp_proto::orchestrator::Saga {
    for _ in 0..200 {
        match orch
            .get_saga(GetSagaRequest {
                saga_id: String::new(),
                order_id: order_id.into(),
            })
            .await
        {
            Ok(r) => return r.into_inner().saga.unwrap(),
            Err(s) if s.code() == Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("get saga: {s:?}"),
        }
    }
    panic!("no saga for order {order_id} after 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_junk_with_a_clear_status_and_stays_up() {
    let _watchdog = erp_runtime::testing::watchdog(
        "every_rpc_answers_junk_with_a_clear_status_and_stays_up",
        std::time::Duration::from_secs(300),
    );
    let s = suite(
        settings(&Backend::Sqlite, &[]),
        Bus::InProcess(Default::default()),
    )
    .await;
    let mut calls = 0;
    for file in &erp_integration_tests::suite_files() {
        let package = file.package();
        for service in &file.service {
            let short = package.split('.').nth(1).unwrap();
            let ch = channel(&s, short);
            for method in &service.method {
                let path = format!("/{package}.{}/{}", service.name(), method.name());
                // An empty message, and bytes that are not a valid message at all.
                for body in [Vec::new(), vec![0xff, 0xff, 0xff, 0x0f]] {
                    let mut grpc = tonic::client::Grpc::new(ch.clone());
                    grpc.ready().await.unwrap();
                    let codec = RawCodec;
                    let result = grpc
                        .unary(tonic::Request::new(body), path.parse().unwrap(), codec)
                        .await;
                    calls += 1;
                    if let Err(status) = result {
                        assert!(
                            !matches!(status.code(), Code::Unknown | Code::Internal),
                            "{path} answered {:?}: {}",
                            status.code(),
                            status.message()
                        );
                    }
                }
            }
        }
    }
    assert!(calls > 150, "only {calls} calls made");
    // Every service is still up and healthy.
    for service in SERVICES {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&s, service));
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    s.stop().await.unwrap();
}

async fn order_becomes_one_saga(backend: Backend, bus: Bus) {
    let s = suite(settings(&backend, &[]), bus).await;
    erp::seed::seed(&s).await.unwrap();
    let mut order = OrderServiceClient::new(channel(&s, "order"));
    let mut orch = OrchestratorServiceClient::new(channel(&s, "orchestrator"));
    let first = order
        .create_order(erp::seed::sample_order("EXT-1", "MUG-BLUE", 2))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    // The same order again: the same order, no second saga.
    let again = order
        .create_order(erp::seed::sample_order("EXT-1", "MUG-BLUE", 2))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(
        again.order.as_ref().unwrap().order_id,
        first.order.as_ref().unwrap().order_id
    );
    // The same external id with other content is refused.
    let err = order
        .create_order(erp::seed::sample_order("EXT-1", "MUG-BLUE", 3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let order_id = first.order.unwrap().order_id;
    let saga = wait_for_saga(&mut orch, &order_id).await;
    assert_eq!(
        saga.definition_version,
        erp_orchestrator::FULFILLMENT_VERSION
    );
    assert_eq!(saga.timeline[0].step, "accept_order");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = orch
        .list_sagas(ListSagasRequest {
            status: 0,
            min_age_seconds: 0,
            stalled: false,
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.sagas.iter().filter(|x| x.order_id == order_id).count(),
        1
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_becomes_one_saga_on_the_in_process_bus() {
    let _watchdog = erp_runtime::testing::watchdog(
        "order_becomes_one_saga_on_the_in_process_bus",
        std::time::Duration::from_secs(300),
    );
    for backend in testing::backends() {
        order_becomes_one_saga(backend, Bus::InProcess(Default::default())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_becomes_one_saga_over_redis_streams_on_postgres() {
    let _watchdog = erp_runtime::testing::watchdog(
        "order_becomes_one_saga_over_redis_streams_on_postgres",
        std::time::Duration::from_secs(300),
    );
    let Some(redis_url) = testing::redis_url() else {
        return;
    };
    let backend = testing::backends().pop().unwrap();
    let bus = Bus::from_settings(&BusSettings {
        kind: erp_runtime::config::BusKind::Redis,
        redis_url,
        // A fresh prefix per run: streams of earlier runs are not replayed into this one.
        stream_prefix: format!("erp-test-{}", std::process::id()),
        relay_interval_ms: 50,
        redeliver_after_ms: 2000,
        ..settings(&backend, &[]).bus
    })
    .await
    .unwrap();
    order_becomes_one_saga(backend, bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_restart() {
    let _watchdog = erp_runtime::testing::watchdog(
        "records_survive_a_restart",
        std::time::Duration::from_secs(300),
    );
    let cfg = settings(&Backend::Sqlite, &[]);
    let s = suite(cfg.clone(), Bus::InProcess(Default::default())).await;
    erp::seed::seed(&s).await.unwrap();
    let mut order = OrderServiceClient::new(channel(&s, "order"));
    let created = order
        .create_order(erp::seed::sample_order("EXT-R", "TEE-M", 1))
        .await
        .unwrap()
        .into_inner();
    let order_id = created.order.unwrap().order_id;
    let mut orch = OrchestratorServiceClient::new(channel(&s, "orchestrator"));
    wait_for_saga(&mut orch, &order_id).await;
    drop((order, orch));
    s.stop().await.unwrap();

    let s = suite(cfg, Bus::InProcess(Default::default())).await;
    let mut order = OrderServiceClient::new(channel(&s, "order"));
    let got = order
        .get_order(GetOrderRequest {
            order_id: order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.order.unwrap().lines[0].sku, "TEE-M");
    let mut orch = OrchestratorServiceClient::new(channel(&s, "orchestrator"));
    let saga = wait_for_saga(&mut orch, &order_id).await;
    assert_eq!(saga.order_id, order_id);
    s.stop().await.unwrap();
}
