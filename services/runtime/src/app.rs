//! What a service is to the runtime, and how one is started: migrate its database, start its
//! outbox relay, build its gRPC routes, serve.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;

use crate::bus::Bus;
use crate::config::Settings;
use crate::outbox::{OutboxWaker, Relay};

/// Everything a service needs from the runtime.
#[derive(Clone)]
pub struct ServiceContext {
    pub name: &'static str,
    pub settings: Arc<Settings>,
    pub db: DatabaseConnection,
    pub bus: Bus,
    pub outbox: OutboxWaker,
    pub shutdown: CancellationToken,
    /// Background work of the service. A stopped service has no task left running: its
    /// [`Running::task`] ends only after every task spawned here ended (or the grace period).
    pub tasks: TaskTracker,
    /// How this service reaches its peers: its token and its TLS identity.
    pub peer: PeerAccess,
    /// This service's consumers by topic (for dead-letter replays).
    pub consumers: crate::events::Consumers,
}

impl ServiceContext {
    /// Spawns background work that must stop (at `shutdown`) before the service counts as stopped.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Subscribes this service (its consumer group) to `topic` until shutdown. The group must
    /// be listed for the topic in [`crate::bus::SUBSCRIPTIONS`] (the relays wait for the
    /// groups listed there). An event `handler` keeps failing on becomes a dead letter after
    /// `bus.max_deliveries` deliveries and `bus.dead_letter_after_ms`.
    pub async fn subscribe(&self, topic: &str, handler: crate::bus::Handler) -> anyhow::Result<()> {
        if !crate::bus::groups_of(topic).contains(&self.name) {
            anyhow::bail!(
                "{} subscribes to {topic} but is not listed for it in bus::SUBSCRIPTIONS",
                self.name
            );
        }
        if let Ok(mut c) = self.consumers.lock() {
            c.insert(topic.to_owned(), handler.clone());
        }
        let guarded = crate::events::guarded(
            self.db.clone(),
            self.name,
            crate::events::DeadLetterPolicy::from_settings(&self.settings.bus),
            handler,
        );
        self.bus
            .subscribe(
                topic,
                self.name,
                guarded,
                self.shutdown.clone(),
                &self.tasks,
            )
            .await
    }
}

/// One of the seven services.
pub trait Service: Send + Sync + 'static {
    /// Short name: `inventory`. Names the database and the log/trace service.
    const NAME: &'static str;
    /// Fully qualified gRPC service name, registered with health and reflection.
    const GRPC_NAME: &'static str;
    type Migrator: MigratorTrait;
    /// Who may call each method (see [`crate::auth`]).
    const POLICY: &'static crate::auth::Policy;

    /// Builds the gRPC routes; may subscribe to events and spawn background work that stops at
    /// `ctx.shutdown`.
    fn build(ctx: ServiceContext) -> impl Future<Output = anyhow::Result<Routes>> + Send;
}

/// A started service: where it listens and the task serving it.
pub struct Running {
    pub name: &'static str,
    pub addr: std::net::SocketAddr,
    pub db: DatabaseConnection,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts `S` on an already bound listener. Returns once it accepts requests.
pub async fn start<S: Service>(
    settings: Arc<Settings>,
    listener: TcpListener,
    bus: Bus,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let auth = crate::auth::Authenticator::from_settings(&settings)?;
    let tasks = TaskTracker::new();
    // Keys from the issuer's endpoint are fetched before anything is served or minted.
    if let Some(refresh) = auth.fetch_keys(shutdown.clone()).await {
        tasks.spawn(refresh);
    }
    let tls = settings.tls.for_service(S::NAME);
    let peer = PeerAccess {
        credentials: crate::auth::Credentials::for_service(&settings, &auth, S::NAME)?,
        tls: crate::tls::client_config(&tls)?,
    };
    let server_tls = crate::tls::server_config(&tls)?;
    let db = crate::db::connect_and_migrate::<S::Migrator>(&settings, S::NAME).await?;
    let outbox = OutboxWaker::default();
    let status = crate::events::Status::default();
    let relay = Relay::new(
        S::NAME,
        db.clone(),
        bus.clone(),
        outbox.clone(),
        settings.bus.clone(),
        status.clone(),
    );
    tasks.spawn(relay.run(shutdown.clone()));
    let consumers = crate::events::Consumers::default();
    let ctx = ServiceContext {
        name: S::NAME,
        settings: settings.clone(),
        db: db.clone(),
        bus: bus.clone(),
        outbox,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        peer,
        consumers: consumers.clone(),
    };
    let routes = S::build(ctx).await?;
    let addr = listener.local_addr()?;
    let server_settings = settings.server.clone();
    let routes = routes
        .add_service(crate::audit::AuditApi::server(db.clone()))
        .add_service(
            crate::events::EventsApi {
                db: db.clone(),
                bus: bus.clone(),
                status,
                consumer: S::NAME,
                consumers,
            }
            .server(),
        );
    let auth = crate::auth::AuthLayer {
        auth,
        policy: S::POLICY,
    };
    let pool = db.clone();
    let health_bus = bus.clone();
    let task = tokio::spawn(async move {
        let served = crate::server::serve(
            S::GRPC_NAME,
            listener,
            routes,
            &server_settings,
            crate::server::Guard {
                auth,
                tls: server_tls,
            },
            health_bus,
            shutdown,
        )
        .await;
        // Background work (relay, consumers, workers) has seen the same cancellation; wait for it
        // so that a stopped service leaves nothing behind touching its database.
        tasks.close();
        let grace = Duration::from_millis(server_settings.shutdown_grace_ms);
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!(
                service = S::NAME,
                left = tasks.len(),
                "background tasks did not stop within the grace period"
            );
        }
        // Close the pool here rather than leave it to whoever drops the last clone: a pool
        // dropped during a runtime's teardown leaves its maintenance task and (on SQLite) its
        // connection threads racing the runtime's shutdown.
        match tokio::time::timeout(grace, pool.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(service = S::NAME, %error, "closing the pool failed"),
            Err(_) => tracing::warn!(
                service = S::NAME,
                "connections still in use after the grace period; pool left to be dropped"
            ),
        }
        served
    });
    tracing::info!(service = S::NAME, %addr, "serving");
    Ok(Running {
        name: S::NAME,
        addr,
        db,
        task,
    })
}

/// How a process reaches the suite's services: the bearer token it presents and, with TLS,
/// the CA it trusts and the certificate it presents.
#[derive(Clone)]
pub struct PeerAccess {
    pub credentials: crate::auth::Credentials,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl PeerAccess {
    /// An endpoint for `url` (over TLS when configured: an `http://` URL is then taken as
    /// `https://`), with a connect timeout.
    pub fn endpoint(&self, url: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        let url = match (&self.tls, url.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => url.to_owned(),
        };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(url)?.connect_timeout(Duration::from_secs(2));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint)
    }

    /// A lazily connected channel from `endpoint` presenting the credentials.
    pub fn intercept(&self, endpoint: tonic::transport::Endpoint) -> crate::auth::PeerChannel {
        tonic::service::interceptor::InterceptedService::new(
            endpoint.connect_lazy(),
            self.credentials.clone(),
        )
    }

    /// A channel to a peer service that connects on first use and reconnects after the peer
    /// restarts, with a per-call deadline.
    pub fn channel(&self, url: &str) -> anyhow::Result<crate::auth::PeerChannel> {
        Ok(self.intercept(self.endpoint(url)?.timeout(Duration::from_secs(10))))
    }
}

/// `--config FILE` from the command line, else `ERP_CONFIG`.
pub fn config_path_from_args() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("ERP_CONFIG").map(PathBuf::from)
}

/// The whole `main` of a single-service process (the distributed mode): configuration,
/// telemetry, bind `server.host:server.port`, serve until SIGTERM/SIGINT.
pub async fn main_for<S: Service>() -> anyhow::Result<()> {
    let settings = Arc::new(Settings::load(config_path_from_args().as_deref())?);
    let _telemetry = crate::telemetry::init(S::NAME, &settings.telemetry)?;
    let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port)).await?;
    let bus = Bus::from_settings(&settings.bus).await?;
    let shutdown = CancellationToken::new();
    let running = start::<S>(settings, listener, bus, shutdown.clone()).await?;
    println!("{} listening on {}", running.name, running.addr);
    crate::server::shutdown_signal().await;
    shutdown.cancel();
    running.task.await??;
    Ok(())
}
