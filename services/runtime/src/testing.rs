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

/// SQLite's plan for `statement` (`EXPLAIN QUERY PLAN`), one line per step: a test asserts a
/// query that runs per request or on a schedule over a growing table uses its index.
pub async fn query_plan(
    db: &sea_orm::DatabaseConnection,
    statement: sea_orm::Statement,
) -> Vec<String> {
    use sea_orm::ConnectionTrait;
    db.query_all_raw(sea_orm::Statement::from_string(
        db.get_database_backend(),
        format!("EXPLAIN QUERY PLAN {statement}"),
    ))
    .await
    .expect("EXPLAIN QUERY PLAN runs")
    .iter()
    .map(|r| r.try_get::<String>("", "detail").expect("a detail column"))
    .collect()
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

/// A Redis server of the test's own, without persistence, to be killed and started again
/// empty (a restart without AOF, or a failover to a blank replica). `None` when the tests run
/// without Redis (`ERP_TEST_REDIS_URL` unset and not required).
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Reserves a port; the server is not started yet (services may start while it is down).
    pub fn reserve() -> Option<Self> {
        redis_url()?;
        Some(Self {
            port: free_ports(1)[0],
            child: None,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (empty), and returns once it accepts connections.
    pub fn start(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test-env.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL: everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster of the test's own (initdb in a fresh directory), to be stopped abruptly
/// and started again (crash recovery) while the suite runs on it. `None` when the tests run
/// without PostgreSQL. `fsync` is off (the machine does not crash, the page cache survives) but
/// `synchronous_commit` stays on: with it off, a crash loses the last commits PostgreSQL had
/// already acknowledged (a reservation the saga was told about, gone after recovery), which no
/// production setting allows.
pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> Option<Self> {
        let Some(Backend::Postgres(_)) = backends().pop() else {
            return None;
        };
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries (scripts/test-env.sh installs them)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("pg_ctl").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().expect("a PostgreSQL version with pg_ctl");
        // Outside $HOME and owned by postgres: PostgreSQL refuses to run as root.
        let dir = PathBuf::from(format!(
            "/var/tmp/erp-test-pg-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(dir.join("sock")).expect("cluster directory");
        let pg = Self {
            port: free_ports(1)[0],
            bin,
            dir,
        };
        if is_root() {
            let chowned = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&pg.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(chowned, "chown of {} to postgres", pg.dir.display());
        }
        let data = pg.data();
        pg.pg(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        pg.up();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Runs a PostgreSQL program as the postgres user when the test runs as root.
    fn pg(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program).display().to_string();
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &path]);
            c
        } else {
            std::process::Command::new(&path)
        };
        let out = cmd.args(args).output().expect("PostgreSQL program runs");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the cluster (after a stop: crash recovery) and waits until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port,
            self.dir.join("sock").display()
        );
        let log = self.dir.join("pg.log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
                "-o",
                &options,
            ],
        );
    }

    /// Stops it the way a crash would: `immediate` (no checkpoint, connections cut).
    pub fn crash(&self) {
        self.pg(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl").display().to_string();
        let data = self.data();
        let _ = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &path,
                "-D",
                &data,
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::process::Command::new(&path)
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Toxiproxy server of the test's own (`ERP_TEST_TOXIPROXY_BIN`, built by
/// `scripts/install-tools.sh toxiproxy-server`): a real TCP proxy whose links a test cuts and
/// restores. `None` when the binary is not configured and not required.
pub struct Toxiproxy {
    pub api: String,
    child: std::process::Child,
}

impl Toxiproxy {
    pub fn start() -> Option<Self> {
        let bin = match std::env::var("ERP_TEST_TOXIPROXY_BIN") {
            Ok(b) if !b.is_empty() => b,
            _ => {
                assert!(
                    std::env::var("ERP_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "the test script must set ERP_TEST_TOXIPROXY_BIN"
                );
                return None;
            }
        };
        let port = free_ports(1)[0];
        let child = std::process::Command::new(bin)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("toxiproxy-server runs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "toxiproxy did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(Self {
            api: format!("http://127.0.0.1:{port}"),
            child,
        })
    }

    /// A proxy `name` listening on `listen` (host:port) in front of `upstream`.
    pub async fn proxy(&self, name: &str, listen: &str, upstream: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/proxies", self.api))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({
                    "name": name, "listen": listen, "upstream": upstream, "enabled": true
                })
                .to_string(),
            )
            .send()
            .await
            .expect("toxiproxy answers");
        assert!(
            r.status().is_success(),
            "creating proxy {name}: {}",
            r.status()
        );
    }

    /// Cuts (`false`: connections refused, open ones closed) or restores the proxy.
    pub async fn set_enabled(&self, name: &str, enabled: bool) {
        let r = reqwest::Client::new()
            .post(format!("{}/proxies/{name}", self.api))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "enabled": enabled }).to_string())
            .send()
            .await
            .expect("toxiproxy answers");
        assert!(
            r.status().is_success(),
            "toggling proxy {name}: {}",
            r.status()
        );
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
