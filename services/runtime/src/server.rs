//! The gRPC server every service runs: its API plus health and reflection (v1 and v1alpha),
//! behind tower layers for a request timeout, a global concurrency limit with load shedding, and
//! a tracing span per request that joins the caller's trace.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::Server;
use tower::limit::ConcurrencyLimitLayer;

use crate::config::ServerSettings;

/// Who may talk to a server: the token check of every call and, with TLS, the handshake.
pub struct Guard {
    pub auth: crate::auth::AuthLayer,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

/// Serves `routes` on `listener` until `shutdown` is cancelled, then drains in-flight requests
/// for at most the configured grace period. `bus`'s state is reported as the health of
/// `erp.events.v1.EventsService`.
pub async fn serve(
    grpc_service_name: &'static str,
    listener: TcpListener,
    routes: Routes,
    settings: &ServerSettings,
    guard: Guard,
    bus: crate::bus::Bus,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Guard { auth, tls } = guard;
    if auth.auth.mode() == crate::config::AuthMode::Off {
        tracing::info!(
            service = grpc_service_name,
            "serving WITHOUT authentication (auth.mode = \"off\"): every caller may call every method"
        );
    }
    if tls.is_none() {
        tracing::info!(
            service = grpc_service_name,
            "serving without TLS (plaintext gRPC)"
        );
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(grpc_service_name, tonic_health::ServingStatus::Serving)
        .await;
    // The events plumbing reports under its own name: NOT_SERVING while Redis is unreachable
    // (events wait in the outbox and catch up later). The service's own status stays SERVING:
    // a degraded bus is no reason to take the pod out of its Service.
    {
        let reporter = health_reporter.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let degraded = bus.degraded().is_some();
                if last != Some(degraded) {
                    let status = if degraded {
                        tonic_health::ServingStatus::NotServing
                    } else {
                        tonic_health::ServingStatus::Serving
                    };
                    reporter
                        .set_service_status(erp_proto::service_names::EVENTS, status)
                        .await;
                    last = Some(degraded);
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(erp_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.BadRequest / ErrorInfo, so grpcurl can print error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(grpc_service_name)
        .with_service_name(erp_proto::service_names::AUDIT)
        .with_service_name(erp_proto::service_names::EVENTS)
        .with_service_name("grpc.health.v1.Health")
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(erp_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(grpc_service_name)
        .with_service_name(erp_proto::service_names::AUDIT)
        .with_service_name(erp_proto::service_names::EVENTS)
        .with_service_name("grpc.health.v1.Health")
        .build_v1alpha()?;

    let mut routes = routes.add_service(health_service);
    if settings.reflection {
        routes = routes
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
    }

    let grace = Duration::from_millis(settings.shutdown_grace_ms);
    let drained = shutdown.clone();
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .timeout(Duration::from_millis(settings.request_timeout_ms))
        // When the global limit is reached, refuse at once with RESOURCE_EXHAUSTED rather than
        // queueing without bound.
        .load_shed(true)
        .layer(ConcurrencyLimitLayer::new(settings.concurrency_limit))
        // Metrics outside the status remapping, so they count the codes clients see.
        .layer(MetricsLayer {
            service: grpc_service_name,
        })
        .layer(tower::util::MapResponseLayer::new(
            undecodable_is_invalid_argument,
        ))
        // Who calls, and may they: before any handler, after the metrics (denials are counted).
        .layer(auth)
        .trace_fn(move |request| {
            let span = tracing::info_span!(
                "grpc",
                service = grpc_service_name,
                method = %request.uri().path(),
                otel.kind = "server",
            );
            if let Some(parent) = request
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
            {
                crate::telemetry::adopt_traceparent(&span, parent);
            }
            span
        })
        .add_routes(routes)
        // No Nagle delay on the small frames of unary calls (what grpc-go does by default).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                drained.cancelled().await;
            },
        );
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(service = grpc_service_name, "in-flight requests did not finish within the grace period");
        }
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}

/// tonic answers a request body that is not a valid protobuf message with INTERNAL; it is the
/// client's input that is wrong, so say INVALID_ARGUMENT (the status travels in the headers of
/// such a trailers-only response).
fn undecodable_is_invalid_argument(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let decode = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| {
            m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode")
        });
    if internal && decode {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    response
}

/// Counts and times every request per gRPC method and status code (Prometheus names
/// `grpc_server_requests_total` and `grpc_server_request_duration_seconds`).
#[derive(Clone)]
pub struct MetricsLayer {
    service: &'static str,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            service: self.service,
        }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    service: &'static str,
}

impl<S, B> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let service = self.service;
        let started = std::time::Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            // Errors travel as trailers-only responses with grpc-status in the headers; a
            // success carries grpc-status 0 in the trailers.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_owned(),
                Err(_) => "transport".to_owned(),
            };
            metrics::counter!("grpc_server_requests_total", "service" => service, "method" => method.clone(), "code" => code)
                .increment(1);
            metrics::histogram!("grpc_server_request_duration_seconds", "service" => service, "method" => method)
                .record(started.elapsed().as_secs_f64());
            response
        })
    }
}

/// Every gRPC method this suite serves, as `/package.Service/Method`: the `erp.*` services,
/// health and reflection.
static KNOWN_METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        let mut known: std::collections::HashSet<String> = [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        for set in [
            erp_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = <prost_types::FileDescriptorSet as prost::Message>::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        known
    });

/// The metric label of a request path: the method when this suite serves it, else `unknown`,
/// so that a client sending made-up paths cannot grow the metric series without bound.
pub fn method_label(path: &str) -> String {
    if KNOWN_METHODS.contains(path) {
        path.to_owned()
    } else {
        "unknown".to_owned()
    }
}

#[cfg(test)]
mod method_label_tests {
    use super::method_label;

    #[test]
    fn only_served_methods_become_labels() {
        assert_eq!(
            method_label("/erp.order.v1.OrderService/CreateOrder"),
            "/erp.order.v1.OrderService/CreateOrder"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/erp.order.v1.OrderService/Bogus"), "unknown");
        assert_eq!(method_label(&format!("/x/{}", "y".repeat(5000))), "unknown");
    }
}
