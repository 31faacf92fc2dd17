//! The suite over mutual TLS, from outside: an order ships end to end while every call between
//! services is encrypted and presents the caller's certificate; a plaintext client, a client
//! without a certificate and one with a certificate from another CA are refused at the
//! handshake; a token claiming a service's identity is refused unless that service's
//! certificate comes with it.

#![allow(clippy::unwrap_used)]

use erp::testkit::Clients;
use erp_integration_tests::{FAST, T, settings, suite};
use erp_proto::orchestrator::SagaStatus;
use erp_proto::order::GetOrderRequest;
use erp_proto::order::order_service_client::OrderServiceClient;
use erp_runtime::app::PeerAccess;
use erp_runtime::auth::{Authenticator, Credentials, roles};
use erp_runtime::bus::Bus;
use erp_runtime::config::TlsSettings;
use erp_runtime::testing::Backend;
use tonic::Code;

/// A call that never reached a handler: the connection or the handshake failed on the client's
/// side of the wire (the status carries the transport error; the code varies with the moment
/// the server hung up: Unavailable, Unknown, Internal or Cancelled).
fn refused_in_transport(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    ) && status
        .source()
        .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
}

fn tls_files(dir: &std::path::Path, holder: &str) -> TlsSettings {
    TlsSettings {
        cert_file: dir.join(format!("{holder}.pem")).display().to_string(),
        key_file: dir.join(format!("{holder}-key.pem")).display().to_string(),
        ca_file: dir.join("ca.pem").display().to_string(),
        require_client_cert: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_runs_over_mutual_tls_and_refuses_strangers() {
    let _watchdog = erp_runtime::testing::watchdog(
        "the_suite_runs_over_mutual_tls_and_refuses_strangers",
        std::time::Duration::from_secs(300),
    );
    let dir = std::env::temp_dir().join(format!("erp-tls-{}", uuid::Uuid::now_v7()));
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    erp::certs::generate(&dir.join("suite"), &hosts).unwrap();
    erp::certs::generate(&dir.join("stranger"), &hosts).unwrap();
    let env = erp::certs::settings_env(&dir.join("suite"));
    let mut extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    extra.extend_from_slice(FAST);
    let s = suite(
        settings(&Backend::Sqlite, &extra),
        Bus::InProcess(Default::default()),
    )
    .await;
    assert!(s.settings.peers.order.starts_with("https://"));
    erp::seed::seed(&s).await.unwrap();

    // An order goes through every service and back: every hop is mutual TLS.
    let mut c = Clients::for_suite(&s);
    let id = c
        .place("TLS-1", "MUG-BLUE", 1, "tok_visa", "standard")
        .await;
    c.ship(&id).await;
    c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    c.assert_reconciled().await;

    let auth = Authenticator::from_settings(&s.settings).unwrap();
    let token = |subject: &str, role: &str| {
        Credentials::minted(
            auth.clone(),
            subject,
            &[role],
            std::time::Duration::from_secs(600),
            None,
        )
    };
    let get = |access: PeerAccess| {
        let url = s.url("order");
        let id = id.clone();
        async move {
            let channel = access.intercept(access.endpoint(&url).unwrap());
            OrderServiceClient::new(channel)
                .get_order(GetOrderRequest { order_id: id })
                .await
        }
    };
    let client_tls = |holder: &str, base: &str| {
        erp_runtime::tls::client_config(&tls_files(&dir.join(base), holder)).unwrap()
    };

    // The tools' certificate and an operator's token: admitted.
    let ok = get(PeerAccess {
        credentials: token("ops-1", roles::OPERATOR),
        tls: client_tls("client", "suite"),
    })
    .await;
    assert!(ok.is_ok(), "{ok:?}");

    // Plaintext to a TLS port: no answer.
    let plain = get(PeerAccess {
        credentials: token("ops-1", roles::OPERATOR),
        tls: None,
    })
    .await
    .unwrap_err();
    assert!(refused_in_transport(&plain), "{plain:?}");

    // TLS, trusting the suite's CA, but no client certificate: the handshake fails.
    let anonymous = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(dir.join("suite/ca.pem")).unwrap()),
    );
    let e = get(PeerAccess {
        credentials: token("ops-1", roles::OPERATOR),
        tls: Some(anonymous),
    })
    .await
    .unwrap_err();
    assert!(refused_in_transport(&e), "{e:?}");

    // A certificate from another CA (which also trusts the suite's server): refused too.
    let stranger = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(dir.join("suite/ca.pem")).unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(dir.join("stranger/orchestrator.pem")).unwrap(),
            std::fs::read(dir.join("stranger/orchestrator-key.pem")).unwrap(),
        ));
    let e = get(PeerAccess {
        credentials: token("service:orchestrator", roles::ORCHESTRATOR),
        tls: Some(stranger),
    })
    .await
    .unwrap_err();
    assert!(refused_in_transport(&e), "{e:?}");

    // The orchestrator's token without the orchestrator's certificate: refused...
    let e = get(PeerAccess {
        credentials: token("service:orchestrator", roles::ORCHESTRATOR),
        tls: client_tls("client", "suite"),
    })
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("orchestrator.service.erp"),
        "{}",
        e.message()
    );
    let e = get(PeerAccess {
        credentials: token("service:orchestrator", roles::ORCHESTRATOR),
        tls: client_tls("warehouse", "suite"),
    })
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // ...and with it, admitted (and it alone is given the payment token).
    let order = get(PeerAccess {
        credentials: token("service:orchestrator", roles::ORCHESTRATOR),
        tls: client_tls("orchestrator", "suite"),
    })
    .await
    .unwrap()
    .into_inner()
    .order
    .unwrap();
    assert_eq!(order.payment_method_token, "tok_visa");
    assert_eq!(
        ok.unwrap().into_inner().order.unwrap().payment_method_token,
        "",
        "an operator never reads a payment token"
    );
    s.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
