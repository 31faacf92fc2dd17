//! Who may call what, checked from outside: every method of every service is in its service's
//! authorization table, and over real gRPC every method answers every role as its table says
//! (PERMISSION_DENIED naming the roles it needs, or the handler's own answer), while a call
//! without a token is UNAUTHENTICATED and health checks need none.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use erp_integration_tests::{RawCodec, settings, suite};
use erp_runtime::auth::{AUDIT_POLICY, EVENTS_POLICY, Policy, roles};
use erp_runtime::bus::Bus;
use erp_runtime::testing::Backend;
use tonic::Code;

/// Every `erp.*` gRPC service the suite serves and its methods.
fn served_methods() -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for file in &erp_integration_tests::suite_files() {
        let package = file.package();
        for service in &file.service {
            out.insert(
                format!("{package}.{}", service.name()),
                service.method.iter().map(|m| m.name().to_owned()).collect(),
            );
        }
    }
    out
}

fn tables() -> Vec<&'static Policy> {
    let mut t: Vec<&'static Policy> = erp::policies().to_vec();
    t.push(&AUDIT_POLICY);
    t.push(&EVENTS_POLICY);
    t
}

#[test]
fn every_method_of_every_service_is_in_its_table() {
    let served = served_methods();
    let known_roles: BTreeSet<&str> = roles::all().collect();
    let mut cells = 0;
    let mut methods = 0;
    let mut missing = Vec::new();
    for policy in tables() {
        let Some(served_here) = served.get(policy.service) else {
            panic!("table for {} which is not served", policy.service);
        };
        for m in served_here {
            if policy.allowed(m).is_none() {
                missing.push(format!("{}/{m}", policy.service));
            }
        }
        for (m, allowed) in policy.rules {
            assert!(
                served_here.contains(&(*m).to_owned()),
                "{}: table names {m}, which the service does not serve",
                policy.service
            );
            assert!(!allowed.is_empty(), "{}/{m} allows nobody", policy.service);
            for r in *allowed {
                assert!(
                    known_roles.contains(r),
                    "{}/{m}: unknown role {r}",
                    policy.service
                );
                assert_ne!(*r, roles::ADMIN, "{}/{m}: admin is implied", policy.service);
            }
            methods += 1;
            cells += known_roles.len();
        }
    }
    assert!(
        missing.is_empty(),
        "methods missing from the tables (denied to all): {missing:?}"
    );
    let served_count: usize = served.values().map(Vec::len).sum();
    assert_eq!(
        methods, served_count,
        "every served method has exactly one row"
    );
    println!(
        "authorization tables: {methods} methods x {} roles = {cells} decisions",
        known_roles.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_answers_every_role_as_its_table_says() {
    let _watchdog = erp_runtime::testing::watchdog(
        "every_method_answers_every_role_as_its_table_says",
        std::time::Duration::from_secs(300),
    );
    let s = suite(
        settings(&Backend::Sqlite, &[]),
        Bus::InProcess(Default::default()),
    )
    .await;
    let mut calls = 0;
    let (mut allowed_calls, mut denied_calls) = (0, 0);
    for policy in tables() {
        let short = policy.service.split('.').nth(1).unwrap();
        let service = if matches!(short, "audit" | "events") {
            "order"
        } else {
            short
        };
        let call = |channel: erp_runtime::auth::PeerChannel, path: String| async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            grpc.unary(
                tonic::Request::new(Vec::new()),
                path.parse().unwrap(),
                RawCodec,
            )
            .await
        };
        // No token at all: refused before any handler runs.
        let anonymous = erp_runtime::auth::Credentials::none();
        let bare = tonic::service::interceptor::InterceptedService::new(
            tonic::transport::Endpoint::from_shared(s.url(service))
                .unwrap()
                .connect_lazy(),
            anonymous,
        );
        for (method, _) in policy.rules {
            let path = format!("/{}/{method}", policy.service);
            let status = call(bare.clone(), path.clone()).await.unwrap_err();
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{path} without a token"
            );
            calls += 1;
        }
        for role in roles::all() {
            let channel =
                erp::testkit::channel_as(&s.settings, service, &format!("as-{role}"), &[role]);
            for (method, allowed) in policy.rules {
                let path = format!("/{}/{method}", policy.service);
                let may = role == roles::ADMIN || allowed.contains(&role);
                let result = call(channel.clone(), path.clone()).await;
                calls += 1;
                match result {
                    Err(status) if status.code() == Code::PermissionDenied && !may => {
                        denied_calls += 1;
                        // The refusal names what was missing.
                        for r in *allowed {
                            assert!(status.message().contains(r), "{path}: {}", status.message());
                        }
                    }
                    Err(status) if may => {
                        allowed_calls += 1;
                        assert!(
                            !matches!(
                                status.code(),
                                Code::PermissionDenied
                                    | Code::Unauthenticated
                                    | Code::Internal
                                    | Code::Unknown
                            ),
                            "{path} as {role}: {status:?}"
                        );
                    }
                    Ok(_) if may => allowed_calls += 1,
                    other => panic!("{path} as {role} (allowed: {may}): {other:?}"),
                }
            }
        }
    }
    // Health needs no credentials (probes carry none).
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(s.url("finance"))
            .unwrap()
            .connect_lazy(),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    println!("{calls} calls: {allowed_calls} admitted, {denied_calls} refused");
    assert!(
        denied_calls > 500 && allowed_calls > 200,
        "{denied_calls} / {allowed_calls}"
    );
    s.stop().await.unwrap();
}
