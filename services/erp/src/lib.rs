//! The whole suite in one process: every service on its own port with its own database, sharing
//! one event bus. Used by `erp up` and by the integration tests.

#![forbid(unsafe_code)]

pub mod backup;
pub mod bench;
pub mod certs;
pub mod demo;
pub mod probe;
pub mod seed;
pub mod testkit;

use std::sync::Arc;

use erp_runtime::app::{Running, start};
use erp_runtime::bus::Bus;
use erp_runtime::config::{SERVICES, Settings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running suite.
pub struct Suite {
    pub services: Vec<Running>,
    pub settings: Arc<Settings>,
    pub shutdown: CancellationToken,
    bus: Bus,
    tokens: Vec<(&'static str, CancellationToken)>,
}

impl Suite {
    /// The `http://host:port` URL of a service.
    pub fn url(&self, service: &str) -> String {
        self.services
            .iter()
            .find(|r| r.name == service)
            .map(|r| format!("http://{}", r.addr))
            .unwrap_or_default()
    }

    /// Stops one service (a participant going down); the others keep running.
    pub async fn stop_service(&mut self, service: &str) -> anyhow::Result<()> {
        if let Some((_, token)) = self.tokens.iter().find(|(n, _)| *n == service) {
            token.cancel();
        }
        if let Some(pos) = self.services.iter().position(|r| r.name == service) {
            let running = self.services.remove(pos);
            running.task.await??;
        }
        Ok(())
    }

    /// Starts a stopped service again on the same address.
    pub async fn restart_service(&mut self, service: &'static str) -> anyhow::Result<()> {
        let url = self
            .settings
            .peers
            .get(service)
            .unwrap_or_default()
            .to_owned();
        let addr = url.trim_start_matches("http://");
        let listener = TcpListener::bind(addr).await?;
        let token = self.shutdown.child_token();
        let running = start_one(
            service,
            self.settings.clone(),
            listener,
            self.bus.clone(),
            token.clone(),
        )
        .await?;
        self.tokens.retain(|(n, _)| *n != service);
        self.tokens.push((service, token));
        self.services.push(running);
        Ok(())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for r in self.services {
            r.task.await??;
        }
        Ok(())
    }
}

fn port_of(url: &str) -> anyhow::Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| anyhow::anyhow!("peer url {url} has no port"))
}

/// The authorization table of every service (the audit service's is
/// [`erp_runtime::auth::AUDIT_POLICY`]).
pub fn policies() -> [&'static erp_runtime::auth::Policy; 7] {
    use erp_runtime::Service as _;
    [
        erp_order::Service::POLICY,
        erp_inventory::Service::POLICY,
        erp_warehouse::Service::POLICY,
        erp_carrier::Service::POLICY,
        erp_procurement::Service::POLICY,
        erp_finance::Service::POLICY,
        erp_orchestrator::Service::POLICY,
    ]
}

/// Settings for a tool or test driving services that run as their own processes: the defaults
/// with the key set at `jwks` (created here when missing, so that the processes, given
/// `ERP__AUTH__JWKS_FILE`, share it). Peers are the caller's to set.
pub fn tool_settings(jwks: &std::path::Path) -> anyhow::Result<Settings> {
    erp_runtime::auth::ensure_local_key(jwks)?;
    let mut env = std::collections::HashMap::new();
    env.insert(
        "ERP__AUTH__JWKS_FILE".to_owned(),
        jwks.display().to_string(),
    );
    Ok(Settings::load_with(None, Some(env))?)
}

/// Binds every service (on the ports of `settings.peers`, or on free ports when `ephemeral`),
/// points the peers at the real addresses, then starts them all.
pub async fn start_suite(settings: Settings, bus: Bus, ephemeral: bool) -> anyhow::Result<Suite> {
    start_suite_without(settings, bus, ephemeral, &[]).await
}

/// Like [`start_suite`], but leaves the `skip` services unstarted (their ports are still chosen
/// and written into the peers, so another process can serve them there).
pub async fn start_suite_without(
    settings: Settings,
    bus: Bus,
    ephemeral: bool,
    skip: &[&str],
) -> anyhow::Result<Suite> {
    let mut settings = settings;
    let mut listeners = Vec::new();
    for service in SERVICES {
        let port = if ephemeral {
            0
        } else {
            port_of(settings.peers.get(service).unwrap_or_default())?
        };
        let listener = TcpListener::bind((settings.server.host.as_str(), port))
            .await
            .map_err(|e| anyhow::anyhow!("{service}: cannot bind port {port}: {e}"))?;
        let addr = listener.local_addr()?;
        let scheme = if settings.tls.enabled() {
            "https"
        } else {
            "http"
        };
        settings.peers.set(service, format!("{scheme}://{addr}"));
        listeners.push((service, listener));
    }
    let settings = Arc::new(settings);
    let shutdown = CancellationToken::new();
    let mut services = Vec::new();
    let mut tokens = Vec::new();
    for (service, listener) in listeners {
        if skip.contains(&service) {
            // Left to another process (a test starts it as its own binary).
            drop(listener);
            continue;
        }
        let token = shutdown.child_token();
        services.push(
            start_one(
                service,
                settings.clone(),
                listener,
                bus.clone(),
                token.clone(),
            )
            .await?,
        );
        tokens.push((service, token));
    }
    Ok(Suite {
        services,
        settings,
        shutdown,
        bus,
        tokens,
    })
}

/// Starts one service by name on a bound listener.
pub async fn start_one(
    service: &str,
    s: Arc<Settings>,
    listener: TcpListener,
    b: Bus,
    t: CancellationToken,
) -> anyhow::Result<Running> {
    Ok(match service {
        "order" => start::<erp_order::Service>(s, listener, b, t).await?,
        "inventory" => start::<erp_inventory::Service>(s, listener, b, t).await?,
        "warehouse" => start::<erp_warehouse::Service>(s, listener, b, t).await?,
        "carrier" => start::<erp_carrier::Service>(s, listener, b, t).await?,
        "procurement" => start::<erp_procurement::Service>(s, listener, b, t).await?,
        "finance" => start::<erp_finance::Service>(s, listener, b, t).await?,
        "orchestrator" => start::<erp_orchestrator::Service>(s, listener, b, t).await?,
        other => anyhow::bail!("unknown service {other:?}"),
    })
}

/// Applies the migrations of one service (or all of them) without serving.
pub async fn migrate(settings: &Settings, only: Option<&str>) -> anyhow::Result<Vec<&'static str>> {
    use erp_runtime::db::connect_and_migrate as m;
    let mut done = Vec::new();
    for service in SERVICES {
        if only.is_some_and(|o| o != service) {
            continue;
        }
        let db = match service {
            "order" => m::<erp_order::store::Migrator>(settings, service).await?,
            "inventory" => {
                m::<erp_inventory::store::migration::Migrator>(settings, service).await?
            }
            "warehouse" => m::<erp_warehouse::store::Migrator>(settings, service).await?,
            "carrier" => m::<erp_carrier::store::Migrator>(settings, service).await?,
            "procurement" => m::<erp_procurement::store::Migrator>(settings, service).await?,
            "finance" => m::<erp_finance::store::Migrator>(settings, service).await?,
            _ => m::<erp_orchestrator::store::Migrator>(settings, service).await?,
        };
        db.close().await?;
        done.push(service);
    }
    if let Some(o) = only
        && done.is_empty()
    {
        anyhow::bail!("unknown service {o:?}; one of {}", SERVICES.join(", "));
    }
    Ok(done)
}
