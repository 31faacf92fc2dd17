//! Test support: start services on port 0 against a fresh SQLite file or a freshly created
//! PostgreSQL database, and hand back where they listen. Used by every service's API tests and
//! by the integration tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{Running, Service};
use crate::bus::Bus;
use crate::config::Settings;

/// A storage backend the tests run against.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// Server URL without a database name: `postgres://user@host:port`.
    Postgres(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// SQLite always; PostgreSQL when `ERP_TEST_POSTGRES_URL` is set. The test script sets
/// `ERP_TEST_REQUIRE_POSTGRES=1`, which turns a missing PostgreSQL into a failure instead of a
/// silent skip.
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    match std::env::var("ERP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => out.push(Backend::Postgres(url)),
        _ => assert!(
            std::env::var("ERP_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "ERP_TEST_REQUIRE_POSTGRES=1 but ERP_TEST_POSTGRES_URL is not set"
        ),
    }
    out
}

/// The Redis URL for tests, if one is configured.
pub fn redis_url() -> Option<String> {
    match std::env::var("ERP_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("ERP_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "the test script must set ERP_TEST_REDIS_URL"
            );
            None
        }
    }
}

/// The fields an INVALID_ARGUMENT names in its `google.rpc.BadRequest`, in order.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// `n` distinct free ports on 127.0.0.1 for processes a test starts: all bound at once (so they
/// differ), released on return, just before the processes bind them.
pub fn free_ports(n: usize) -> Vec<u16> {
    let holders: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    holders
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// Fails the whole test process, loudly, when a test runs past its deadline, instead of letting
/// a hang eat the CI budget. A plain OS thread, so it fires even when every runtime worker is
/// stuck. Before exiting it prints every thread's stack (through `gdb` when it is installed),
/// which is what a hang needs to be diagnosed from a CI log. Dropping the guard disarms it.
pub struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

/// Arms a [`Watchdog`] for the test `name`.
pub fn watchdog(name: &'static str, limit: std::time::Duration) -> Watchdog {
    let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
            use std::io::Write as _;
            // Straight to the file descriptor: the test harness captures eprintln! and would
            // drop it when the process exits.
            let _ = writeln!(
                std::io::stderr(),
                "WATCHDOG: test {name} still running after {} s; thread stacks follow",
                limit.as_secs()
            );
            let pid = std::process::id().to_string();
            let dumped = std::process::Command::new("timeout")
                .args(["120", "gdb", "-p", &pid, "-batch", "-nx"])
                .args(["-ex", "set pagination off", "-ex", "thread apply all bt 30"])
                .stdin(std::process::Stdio::null())
                .status();
            if !matches!(dumped, Ok(s) if s.success()) {
                let _ = writeln!(
                    std::io::stderr(),
                    "WATCHDOG: no stack dump (gdb missing or not permitted)"
                );
            }
            std::process::exit(102);
        }
    });
    Watchdog(Some(disarm))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Settings for one test: a private data directory, a private database per service.
pub fn settings(backend: &Backend, extra: &[(&str, &str)]) -> (Settings, PathBuf) {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let dir = std::env::temp_dir().join(format!("erp-test-{run}"));
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("ERP__DATA_DIR".into(), dir.display().to_string());
    env.insert("ERP__TELEMETRY__LOG_FILTER".into(), "warn".into());
    env.insert("ERP__BUS__RELAY_INTERVAL_MS".into(), "50".into());
    // A service's own API tests exercise its rules, not authentication: off unless a test
    // turns it on (the suite's tests do, through `extra`).
    env.insert("ERP__AUTH__MODE".into(), "off".into());
    if let Backend::Postgres(server) = backend {
        // Short unique prefix: PostgreSQL truncates names at 63 bytes.
        let db = format!(
            "{}/t{}_{{service}}",
            server.trim_end_matches('/'),
            &run[run.len() - 12..]
        );
        env.insert("ERP__DATABASE__URL".into(), db);
        env.insert("ERP__DATABASE__MAX_CONNECTIONS".into(), "8".into());
    }
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let settings = Settings::load_with(None, Some(env)).expect("test settings are valid");
    (settings, dir)
}

/// One service started for a test. Cancelling `shutdown` stops it.
pub struct TestService {
    pub running: Running,
    pub url: String,
    pub shutdown: CancellationToken,
    pub settings: Arc<Settings>,
}

impl TestService {
    /// `postgres` or `sqlite`: where this service keeps its data.
    pub fn backend_name(&self) -> &'static str {
        if self.settings.database.url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        }
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("valid url")
            .connect()
            .await
            .expect("test service accepts connections")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.running.task.await;
    }
}

/// Starts `S` alone on 127.0.0.1:0 with an in-process bus.
pub async fn spawn<S: Service>(backend: &Backend) -> TestService {
    spawn_env::<S>(backend, &[]).await
}

/// Like [`spawn`], with `ERP__...` overrides.
pub async fn spawn_env<S: Service>(backend: &Backend, extra: &[(&str, &str)]) -> TestService {
    let (settings, _dir) = settings(backend, extra);
    spawn_with::<S>(Arc::new(settings), Bus::InProcess(Default::default())).await
}

pub async fn spawn_with<S: Service>(settings: Arc<Settings>, bus: Bus) -> TestService {
    let _ = crate::telemetry::init("erp-test", &settings.telemetry);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let shutdown = CancellationToken::new();
    let running = crate::app::start::<S>(settings.clone(), listener, bus, shutdown.clone())
        .await
        .expect("service starts");
    let url = format!("http://{}", running.addr);
    TestService {
        running,
        url,
        shutdown,
        settings,
    }
}
