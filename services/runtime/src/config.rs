//! Layered configuration: built-in defaults, then an optional TOML file, then environment
//! variables `ERP__SECTION__KEY` (double underscore separates levels). Unknown keys and invalid
//! values are refused at start with a message that names the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every setting of a service process (or of the all-in-one `erp up`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory holding the SQLite files in embedded mode (one per service).
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub bus: BusSettings,
    pub telemetry: TelemetrySettings,
    /// Where each service listens, as seen by the others (and by `erp up`, which binds these ports).
    pub peers: Peers,
    pub orchestrator: OrchestratorSettings,
    pub inventory: InventorySettings,
    pub warehouse: WarehouseSettings,
    pub finance: FinanceSettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
}

/// Transport security. Off while `cert_file` is empty. File names may hold a `{service}`
/// placeholder, replaced with the service's name (`order`...), so that the seven services of
/// one process (or one chart) each present their own certificate; tools use `client`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain this process presents, as a server and as a client of its peers.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// PEM CA bundle the suite's certificates chain to: clients verify servers against it,
    /// servers accept client certificates it signed.
    pub ca_file: String,
    /// Servers demand a client certificate (mutual TLS). Off: people and tools may connect
    /// with a token alone; a service identity still needs its certificate.
    pub require_client_cert: bool,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }

    /// The settings of `service` (`{service}` replaced in the file names).
    pub fn for_service(&self, service: &str) -> Self {
        let r = |s: &str| s.replace("{service}", service);
        Self {
            cert_file: r(&self.cert_file),
            key_file: r(&self.key_file),
            ca_file: r(&self.ca_file),
            require_client_cert: self.require_client_cert,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: every caller may call every method. Only on a loopback address,
    /// unless `server.insecure = true`.
    Off,
    /// Every request but health checks carries `authorization: Bearer <JWT>`, verified against
    /// the keys of `auth.jwks_file`; each method admits the roles of the service's table.
    Jwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// JSON Web Key Set with the issuer's verification keys (RSA, EC P-256/P-384, Ed25519, or
    /// a symmetric `oct` key). Empty: `<data_dir>/auth/jwks.json`. A process holding an `oct`
    /// key can also mint tokens (`erp token`, and its own service identity towards its peers).
    pub jwks_file: String,
    /// The issuer's JWKS endpoint (for example `https://idp.example/.well-known/jwks.json`).
    /// When set, the keys come from there instead of `jwks_file` (and `generate_key` is
    /// ignored): fetched before the service serves, again every `jwks_refresh_s`, and at once
    /// (at most every 10 s) when a token names an unknown key id. `https://` only, except on a
    /// loopback host. Until a first fetch succeeds every token is refused as signed by an
    /// unknown key, and the fetch is retried with backoff.
    pub jwks_url: String,
    /// PEM file of the CA(s) that sign the JWKS endpoint's certificate (an in-cluster issuer);
    /// empty: the public web PKI roots.
    pub jwks_ca_file: String,
    /// How often the keys of `jwks_url` are fetched again, in seconds.
    pub jwks_refresh_s: u64,
    /// Create `jwks_file` with a fresh random HS256 key when it does not exist (the embedded
    /// default); a deployment mounts the issuer's keys and turns this off.
    pub generate_key: bool,
    /// Expected `iss` claim.
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// A file holding this service's own bearer token for calls to its peers (a projected,
    /// rotated Secret), used when the JWKS has no key to mint one. Re-read when it changes.
    pub service_token_file: String,
    /// Lifetime of the tokens this process mints for itself.
    pub service_token_ttl_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinanceSettings {
    /// How long the payment provider honours an authorization; a capture after that is
    /// refused `AUTHORIZATION_EXPIRED` (card networks: about 7 days).
    pub authorization_ttl_ms: u64,
    /// Refunds above this amount (minor units of the payment's currency) wait for an approver
    /// other than the requester, whose approval limit covers them.
    pub refund_approval_threshold_minor: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseSettings {
    /// Every this many milliseconds each online site releases a wave of its open pick tasks
    /// (most urgent first, within the day's remaining capacity); 0 leaves releases to operators.
    pub auto_wave_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventorySettings {
    /// Reservations applied per transaction at most (group commit); 1 disables batching.
    pub reservation_batch: usize,
    /// Lifetime of cached availability figures in Redis (distributed mode, `bus.kind = "redis"`);
    /// 0 disables the cache. Stock changes invalidate before they answer; the lifetime only
    /// bounds staleness if Redis itself fails mid-invalidation.
    pub availability_cache_ms: u64,
    /// A person's stock write-off (a negative adjustment) worth more than this, in minor units
    /// at the item's cost, needs the approver role and a limit that covers it.
    pub write_off_approval_minor: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address a single-service process binds.
    pub host: String,
    /// Port a single-service process binds; 0 picks a free one (tests).
    pub port: u16,
    /// Requests running longer than this are cancelled with DEADLINE_EXCEEDED... in practice CANCELLED.
    pub request_timeout_ms: u64,
    /// Requests served at once per service; beyond it requests are shed with RESOURCE_EXHAUSTED.
    pub concurrency_limit: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// Whether gRPC server reflection (v1 and v1alpha) is served, which grpcurl needs to work
    /// without proto files. On by default; a deployment that must not describe its API to
    /// whoever reaches a port turns it off.
    pub reflection: bool,
    /// Allows binding an address other than loopback without transport security and
    /// authentication. Off by default: such a bind is refused at start.
    pub insecure: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` or `postgres://user:pass@host/db`. Empty: a SQLite file
    /// `<data_dir>/<service>.db`. In `erp up` and tests a `{service}` placeholder is replaced with
    /// the service name, which gives each service its own PostgreSQL database.
    pub url: String,
    /// Pool size for PostgreSQL. SQLite always uses one connection: it has one writer anyway,
    /// and a single connection never fails with "database is locked".
    pub max_connections: u32,
    /// Create the PostgreSQL database when it does not exist (needs CREATEDB).
    pub create_if_missing: bool,
    /// PostgreSQL: a statement waiting this long for a lock fails (`lock_timeout`) instead of
    /// waiting for ever behind a session that holds the lock and went quiet. 0: no limit.
    pub lock_timeout_ms: u64,
    /// PostgreSQL: a session idle inside a transaction this long is ended by the server
    /// (`idle_in_transaction_session_timeout`), releasing its locks. 0: no limit.
    pub idle_in_transaction_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// In-process delivery; only meaningful when every service runs in one process.
    InProcess,
    /// Redis Streams with consumer groups.
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    pub kind: BusKind,
    /// `redis://host:port/db`, used when `kind = "redis"`.
    pub redis_url: String,
    /// Prefix of stream keys, so several suites can share one Redis.
    pub stream_prefix: String,
    /// How often the outbox relay looks for unpublished events when nobody woke it.
    pub relay_interval_ms: u64,
    /// A delivered but unacknowledged message is handed to another consumer after this idle time.
    pub redeliver_after_ms: u64,
    /// A consumer gives up on an event (it becomes a dead letter, listed and replayable through
    /// `erp.events.v1.EventsService`) after this many failed deliveries...
    pub max_deliveries: u32,
    /// ...and no sooner than this long after its first failure, so that an outage of a
    /// dependency is waited out rather than dead-lettered.
    pub dead_letter_after_ms: u64,
    /// Published events every consumer group processed stay in the outbox this long, to be
    /// replayed to a consumer restored from a backup.
    pub outbox_retention_ms: u64,
    /// One relay per service publishes at a time: the replica holding this lease.
    pub relay_lease_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `tracing` env-filter directives, e.g. `info,erp_inventory=debug`.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint (e.g. `http://otel-collector:4317`). Empty: no export.
    pub otlp_endpoint: String,
    /// Address of the Prometheus endpoint (`GET /metrics`), e.g. `0.0.0.0:9464`. Empty: none.
    pub metrics_addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    pub order: String,
    pub inventory: String,
    pub warehouse: String,
    pub carrier: String,
    pub procurement: String,
    pub finance: String,
    pub orchestrator: String,
}

impl Peers {
    pub fn get(&self, service: &str) -> Option<&str> {
        Some(match service {
            "order" => &self.order,
            "inventory" => &self.inventory,
            "warehouse" => &self.warehouse,
            "carrier" => &self.carrier,
            "procurement" => &self.procurement,
            "finance" => &self.finance,
            "orchestrator" => &self.orchestrator,
            _ => return None,
        })
    }

    pub fn set(&mut self, service: &str, url: String) {
        let slot = match service {
            "order" => &mut self.order,
            "inventory" => &mut self.inventory,
            "warehouse" => &mut self.warehouse,
            "carrier" => &mut self.carrier,
            "procurement" => &mut self.procurement,
            "finance" => &mut self.finance,
            "orchestrator" => &mut self.orchestrator,
            _ => return,
        };
        *slot = url;
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorSettings {
    /// How long a replica owns a saga it is working on; another replica takes it after expiry.
    pub lease_ms: u64,
    /// How often each replica looks for due sagas.
    pub poll_interval_ms: u64,
    /// Sagas one replica drives at once (each waits on a participant or a commit most of the
    /// time, so this is well above the cores).
    pub max_running_sagas: u32,
    /// How long a saga waits for the ship confirmation before escalating to the exception queue.
    pub ship_deadline_ms: u64,
    /// A later shipment of an order shipped in parts re-authorizes the payment when the
    /// authorization expires within this long (a backorder can outlive it). Longer than the
    /// two waits of a shipment (pack, ship: `ship_deadline_ms` each), so that no capture meets
    /// an expired authorization.
    pub reauthorize_within_ms: u64,
    /// The probe participant of the synthetic `probe` saga (`erp.probe.v1.ProbeService`), e.g.
    /// `http://probe:50060`. Empty: probe sagas are refused (compensated with
    /// `PROBE_UNCONFIGURED`).
    pub probe_url: String,
}

/// The names of every service, in start order for `erp up`.
pub const SERVICES: [&str; 7] = [
    "inventory",
    "finance",
    "warehouse",
    "carrier",
    "procurement",
    "order",
    "orchestrator",
];

const DEFAULTS: &str = r#"
data_dir = "./data"

[server]
host = "127.0.0.1"
port = 50051
request_timeout_ms = 30000
concurrency_limit = 256
shutdown_grace_ms = 10000
reflection = true
insecure = false

[database]
url = ""
max_connections = 10
create_if_missing = true
lock_timeout_ms = 30000
idle_in_transaction_timeout_ms = 60000

[bus]
kind = "in_process"
redis_url = "redis://127.0.0.1:6379/0"
stream_prefix = "erp"
relay_interval_ms = 500
redeliver_after_ms = 30000
max_deliveries = 10
dead_letter_after_ms = 300000
outbox_retention_ms = 604800000
relay_lease_ms = 3000

[telemetry]
log_filter = "info"
log_format = "pretty"
otlp_endpoint = ""
metrics_addr = ""

[peers]
order = "http://127.0.0.1:50051"
inventory = "http://127.0.0.1:50052"
warehouse = "http://127.0.0.1:50053"
carrier = "http://127.0.0.1:50054"
procurement = "http://127.0.0.1:50055"
finance = "http://127.0.0.1:50056"
orchestrator = "http://127.0.0.1:50057"

[inventory]
reservation_batch = 128
availability_cache_ms = 2000
write_off_approval_minor = 100000

[warehouse]
auto_wave_interval_ms = 0

[finance]
authorization_ttl_ms = 604800000
refund_approval_threshold_minor = 50000

[auth]
mode = "jwt"
jwks_file = ""
jwks_url = ""
jwks_ca_file = ""
jwks_refresh_s = 300
generate_key = true
issuer = "erp-local"
audience = "erp"
service_token_file = ""
service_token_ttl_s = 3600

[tls]
cert_file = ""
key_file = ""
ca_file = ""
require_client_cert = true

[orchestrator]
lease_ms = 15000
poll_interval_ms = 200
max_running_sagas = 64
ship_deadline_ms = 86400000
reauthorize_within_ms = 259200000
probe_url = ""
"#;

/// A configuration that could not be loaded; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// Defaults, then `file` (if given), then the process environment (`ERP__...`).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, None)
    }

    /// Like [`Settings::load`], but the environment layer comes from `env` when given (tests,
    /// where edition 2024 makes mutating the process environment unsafe).
    pub fn load_with(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let environment = config::Environment::with_prefix("ERP")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(env);
        let settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        if self.server.host.trim().is_empty() {
            return Err(invalid("server.host", "must not be empty"));
        }
        if self.server.request_timeout_ms == 0 {
            return Err(invalid("server.request_timeout_ms", "must be positive"));
        }
        if self.server.concurrency_limit == 0 {
            return Err(invalid("server.concurrency_limit", "must be positive"));
        }
        let url = self.database.url.trim();
        if !(url.is_empty()
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be positive"));
        }
        if self.bus.kind == BusKind::Redis && !self.bus.redis_url.starts_with("redis://") {
            return Err(invalid(
                "bus.redis_url",
                "must start with redis:// when bus.kind = \"redis\"",
            ));
        }
        for (field, value) in [
            ("bus.relay_interval_ms", self.bus.relay_interval_ms),
            // 0 would hand every unacknowledged event to another consumer at once, over and
            // over; a zero lease would have no relay ever hold the outbox.
            ("bus.redeliver_after_ms", self.bus.redeliver_after_ms),
            ("bus.relay_lease_ms", self.bus.relay_lease_ms),
            ("bus.max_deliveries", u64::from(self.bus.max_deliveries)),
            ("bus.outbox_retention_ms", self.bus.outbox_retention_ms),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if !self.telemetry.otlp_endpoint.is_empty()
            && !self.telemetry.otlp_endpoint.starts_with("http")
        {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        if !self.telemetry.metrics_addr.is_empty()
            && self
                .telemetry
                .metrics_addr
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(invalid(
                "telemetry.metrics_addr",
                "must be host:port, e.g. 0.0.0.0:9464",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_filter).is_err() {
            return Err(invalid("telemetry.log_filter", "is not a valid filter"));
        }
        for service in SERVICES {
            let peer = self.peers.get(service).unwrap_or_default();
            if !(peer.starts_with("http://") || peer.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: peer_key(service),
                    message: format!("must be an http:// URL, got {peer:?}"),
                });
            }
        }
        if self.auth.mode == AuthMode::Jwt
            && (self.auth.issuer.is_empty() || self.auth.audience.is_empty())
        {
            return Err(invalid(
                "auth.issuer",
                "issuer and audience must be set when auth.mode = \"jwt\"",
            ));
        }
        if self.tls.enabled() && (self.tls.key_file.is_empty() || self.tls.ca_file.is_empty()) {
            return Err(invalid(
                "tls.key_file",
                "tls.cert_file, tls.key_file and tls.ca_file go together",
            ));
        }
        let secured = self.tls.enabled() && self.auth.mode == AuthMode::Jwt;
        if !self.server.insecure && !secured && !is_loopback(&self.server.host) {
            return Err(invalid(
                "server.insecure",
                &format!(
                    "server.host = {:?} is not a loopback address, and without TLS and token \
                     authentication anyone on the network can call and read everything: configure \
                     [tls] and auth.mode = \"jwt\", or set server.insecure = true, knowingly",
                    self.server.host
                ),
            ));
        }
        if !(1..=1000).contains(&self.inventory.reservation_batch) {
            return Err(invalid("inventory.reservation_batch", "must be 1..=1000"));
        }
        if self.finance.refund_approval_threshold_minor < 0 {
            return Err(invalid(
                "finance.refund_approval_threshold_minor",
                "must not be negative",
            ));
        }
        let jwks_url = self.auth.jwks_url.trim();
        if !jwks_url.is_empty() && !crate::jwks::jwks_url_allowed(jwks_url) {
            return Err(invalid(
                "auth.jwks_url",
                "must be an https:// URL (plain http:// only to a loopback host)",
            ));
        }
        if !jwks_url.is_empty() && self.auth.jwks_refresh_s == 0 {
            return Err(invalid("auth.jwks_refresh_s", "must be positive"));
        }
        if self.orchestrator.lease_ms == 0 {
            return Err(invalid("orchestrator.lease_ms", "must be positive"));
        }
        Ok(())
    }

    /// Where the JWKS lives: `auth.jwks_file`, else `<data_dir>/auth/jwks.json`.
    pub fn jwks_path(&self) -> PathBuf {
        if self.auth.jwks_file.is_empty() {
            self.data_dir.join("auth").join("jwks.json")
        } else {
            PathBuf::from(&self.auth.jwks_file)
        }
    }

    /// The database URL of one service.
    pub fn database_url(&self, service: &str) -> String {
        let url = self.database.url.trim();
        if url.is_empty() {
            let path = self.data_dir.join(format!("{service}.db"));
            format!("sqlite://{}?mode=rwc", path.display())
        } else {
            url.replace("{service}", service)
        }
    }
}

/// `127.0.0.1`, `::1`, `localhost` and the like.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn peer_key(service: &str) -> &'static str {
    match service {
        "order" => "peers.order",
        "inventory" => "peers.inventory",
        "warehouse" => "peers.warehouse",
        "carrier" => "peers.carrier",
        "procurement" => "peers.procurement",
        "finance" => "peers.finance",
        _ => "peers.orchestrator",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::load_with(None, Some(HashMap::new())).unwrap();
        assert_eq!(s.server.port, 50051);
        assert_eq!(s.bus.kind, BusKind::InProcess);
        assert!(
            s.database_url("inventory")
                .ends_with("inventory.db?mode=rwc")
        );
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = Settings::load_with(
            None,
            Some(env(&[
                ("ERP__SERVER__PORT", "6000"),
                ("ERP__BUS__KIND", "redis"),
                (
                    "ERP__DATABASE__URL",
                    "postgres://u:p@localhost/erp_{service}",
                ),
            ])),
        )
        .unwrap();
        assert_eq!(s.server.port, 6000);
        assert_eq!(s.bus.kind, BusKind::Redis);
        assert_eq!(
            s.database_url("order"),
            "postgres://u:p@localhost/erp_order"
        );
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Settings::load_with(None, Some(env(&[("ERP__SERVER__PORT", "notaport")])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.port"), "{err}");
        let err = Settings::load_with(None, Some(env(&[("ERP__DATABASE__URL", "mysql://x")])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.url"), "{err}");
        for key in [
            "REDELIVER_AFTER_MS",
            "RELAY_LEASE_MS",
            "MAX_DELIVERIES",
            "OUTBOX_RETENTION_MS",
        ] {
            let err = Settings::load_with(None, Some(env(&[(&format!("ERP__BUS__{key}"), "0")])))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("bus.{}", key.to_lowercase())),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn unknown_key_in_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("erp-config-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("erp.toml");
        std::fs::write(&file, "[server]\nprot = 1\n").unwrap();
        let err = Settings::load_with(Some(&file), Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }
}
