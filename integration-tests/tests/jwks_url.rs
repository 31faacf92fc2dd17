//! Keys from the issuer's JWKS endpoint (`auth.jwks_url`), over real HTTPS: the suite fetches
//! them before it serves; a token signed by a key the issuer has just published is admitted a
//! moment after its first refusal (rotation); a key nobody published stays refused; an endpoint
//! that fails keeps the last good keys; an endpoint down at start is retried until it answers;
//! an endpoint whose certificate is not from the configured CA is never trusted.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use erp_integration_tests::{settings, suite};
use erp_proto::order::ListOrdersRequest;
use erp_proto::order::order_service_client::OrderServiceClient;
use erp_runtime::auth::Authenticator;
use erp_runtime::bus::Bus;
use erp_runtime::testing::Backend;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;
use tonic::Code;

/// An ES256 key the test signs with, and its public JWK.
struct SigningKey {
    kid: &'static str,
    key: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
}

fn es256(kid: &'static str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // The uncompressed point: 0x04 ‖ x ‖ y.
    let point = pair.public_key_raw();
    assert_eq!(point.len(), 65);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    SigningKey {
        kid,
        key: jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }),
    }
}

fn token(key: &SigningKey, subject: &str, roles: &[&str]) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": "erp-local", "aud": "erp", "sub": subject, "iat": now, "exp": now + 600,
        "roles": roles,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key.kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &key.key).unwrap()
}

/// What the issuer's endpoint answers: a status and a body, and how often it was asked.
#[derive(Default)]
struct Issuer {
    answer: Mutex<(u16, String)>,
    hits: AtomicUsize,
}

impl Issuer {
    fn publish(&self, keys: &[&serde_json::Value]) {
        *self.answer.lock().unwrap() = (200, serde_json::json!({ "keys": keys }).to_string());
    }

    fn fail(&self) {
        *self.answer.lock().unwrap() = (503, "unavailable".into());
    }
}

/// Serves the issuer's JWKS over HTTPS with `cert`/`key` on 127.0.0.1; returns its port.
async fn serve_issuer(issuer: Arc<Issuer>, cert: &std::path::Path, key: &std::path::Path) -> u16 {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, issuer) = (acceptor.clone(), issuer.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate hangs up here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                issuer.hits.fetch_add(1, Ordering::SeqCst);
                let (status, body) = issuer.answer.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

async fn list_orders(addr: &str, bearer: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {bearer}").parse().unwrap();
    let mut client =
        OrderServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", value.clone());
            Ok(r)
        });
    client
        .list_orders(ListOrdersRequest::default())
        .await
        .map(|_| ())
}

/// Calls until admitted (a rotation is fetched in the background after the first refusal).
async fn admitted_within(addr: &str, bearer: &str, limit: Duration) -> Result<(), tonic::Status> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match list_orders(addr, bearer).await {
            Ok(()) => return Ok(()),
            Err(status) if tokio::time::Instant::now() >= deadline => return Err(status),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_the_issuers_endpoint_and_follow_its_rotation() {
    let _watchdog = erp_runtime::testing::watchdog(
        "keys_come_from_the_issuers_endpoint_and_follow_its_rotation",
        Duration::from_secs(300),
    );
    let dir = std::env::temp_dir().join(format!("erp-jwks-{}", uuid::Uuid::now_v7()));
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    erp::certs::generate(&dir, &hosts).unwrap();
    let issuer = Arc::new(Issuer::default());
    let port = serve_issuer(
        issuer.clone(),
        &dir.join("order.pem"),
        &dir.join("order-key.pem"),
    )
    .await;
    let url = format!("https://localhost:{port}/.well-known/jwks.json");
    let ca = dir.join("ca.pem").display().to_string();

    // The issuer publishes a symmetric key the services mint their own identities with (as a
    // deployment would give each a token file instead) and the public key it signs people's
    // tokens with.
    let secret: [u8; 32] = rand::random();
    let oct = serde_json::json!({
        "kty": "oct", "kid": "services", "alg": "HS256",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    });
    let (a, b, never) = (es256("a"), es256("b"), es256("never-published"));
    issuer.publish(&[&oct, &a.jwk]);

    let extra = [
        ("ERP__AUTH__JWKS_URL", url.as_str()),
        ("ERP__AUTH__JWKS_CA_FILE", ca.as_str()),
        ("ERP__AUTH__JWKS_REFRESH_S", "3600"),
    ];
    let s = suite(
        settings(&Backend::Sqlite, &extra),
        Bus::InProcess(Default::default()),
    )
    .await;
    let order = s.settings.peers.get("order").unwrap().to_owned();
    // Every service fetched the keys before serving: the first call is admitted.
    assert!(
        issuer.hits.load(Ordering::SeqCst) >= 7,
        "each service fetched"
    );
    list_orders(&order, &token(&a, "ops-1", &["operator"]))
        .await
        .unwrap();
    // Rotation: the issuer publishes key b, then signs with it. The first call may be refused
    // (the set is fetched in the background); a retry moments later is admitted.
    let before = issuer.hits.load(Ordering::SeqCst);
    issuer.publish(&[&oct, &a.jwk, &b.jwk]);
    admitted_within(
        &order,
        &token(&b, "ops-2", &["operator"]),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(
        issuer.hits.load(Ordering::SeqCst) > before,
        "the unknown key made the order service fetch again"
    );

    // A key nobody published is refused, however often it is tried.
    let forged = token(&never, "mallory", &["admin"]);
    for _ in 0..3 {
        let refused = list_orders(&order, &forged).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("unknown key"), "{refused:?}");
    }

    // The endpoint fails: the last good keys stay in use.
    issuer.fail();
    list_orders(&order, &token(&a, "ops-1", &["operator"]))
        .await
        .unwrap();
    s.stop().await.unwrap();

    // An endpoint down when a process starts: tokens are refused, and admitted once it answers
    // (the fetch is retried with backoff).
    let mut alone = settings(&Backend::Sqlite, &extra);
    alone.auth.jwks_refresh_s = 3600;
    let auth = Authenticator::from_settings(&alone).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let refresh = auth.fetch_keys(shutdown.clone()).await.unwrap();
    let refresher = tokio::spawn(refresh);
    let person = token(&a, "ops-1", &["operator"]);
    assert_eq!(
        auth.verify(&person).unwrap_err().code(),
        Code::Unauthenticated
    );
    issuer.publish(&[&a.jwk]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while auth.verify(&person).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never fetched again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(auth.verify(&person).unwrap().sub, "ops-1");
    shutdown.cancel();
    refresher.await.unwrap();

    // An endpoint whose certificate the configured CA did not sign is never trusted (the public
    // roots do not know the test CA either).
    let mut untrusted = alone.clone();
    untrusted.auth.jwks_ca_file = String::new();
    let auth = Authenticator::from_settings(&untrusted).unwrap();
    let hits = issuer.hits.load(Ordering::SeqCst);
    let _refresh = auth.fetch_keys(shutdown.clone()).await.unwrap();
    assert_eq!(
        auth.verify(&person).unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        issuer.hits.load(Ordering::SeqCst),
        hits,
        "no request got past the handshake"
    );

    // Keys in the clear from another machine are refused by configuration.
    let mut clear = alone.clone();
    clear.auth.jwks_url = "http://idp.example/jwks".into();
    let refused = clear.validate().unwrap_err().to_string();
    assert!(refused.contains("auth.jwks_url"), "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}
