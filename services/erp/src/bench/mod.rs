//! `erp bench`: completed fulfillment sagas per second and their latency, order placed to saga
//! completed, with the whole suite either in this process on SQLite (embedded) or as seven
//! processes on PostgreSQL and Redis Streams (distributed). The warehouse floor is simulated
//! and instant: it reacts to the saga's own stream (`WatchSaga`: waiting for the carton → pick
//! and pack; waiting for the ship confirmation → ship), so the bench measures the system, not a
//! client polling it. Alongside: CPU seconds, RPCs and (on PostgreSQL) commits per saga.
//! Prints figures; never fails on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use erp_proto::inventory::ReceiveStockRequest;
use erp_proto::orchestrator::{SagaStatus, WatchSagaRequest};
use tokio::sync::Semaphore;

use crate::testkit::Clients;

mod sale;
mod synthetic;

pub use sale::{Sale, flash_orders, print_sale};
pub use synthetic::run_synthetic;

#[derive(Default)]
pub struct Figures {
    pub completed: usize,
    /// Sagas undone as the workload meant them to be (the synthetic saga's declines); they
    /// count as finished, and their latency is counted.
    pub compensated: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    /// What the system spent on the run (after minus before), when measured.
    pub cost: Option<Cost>,
}

/// What a run cost the system: CPU seconds of every service process, RPCs served, and database
/// transactions per service (PostgreSQL's `xact_commit`, which counts every autocommitted read
/// too; SQLite keeps no count).
#[derive(Clone, Debug, Default)]
pub struct Cost {
    pub cpu_seconds: f64,
    pub rpcs: f64,
    pub commits: Vec<(String, i64)>,
}

impl Cost {
    fn minus(&self, before: &Cost) -> Cost {
        Cost {
            cpu_seconds: self.cpu_seconds - before.cpu_seconds,
            rpcs: self.rpcs - before.rpcs,
            commits: self
                .commits
                .iter()
                .map(|(s, n)| {
                    let was = before
                        .commits
                        .iter()
                        .find(|(b, _)| b == s)
                        .map_or(0, |(_, n)| *n);
                    (s.clone(), n - was)
                })
                .collect(),
        }
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc` (0 elsewhere).
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    ticks / 100.0
}

/// The sum of every `grpc_server_requests_total` sample in a Prometheus text page.
pub fn rpcs_in(page: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with("grpc_server_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `p` quantile (0..=1) of `latencies`, nearest rank; zero when there are none.
pub fn percentile(latencies: &[Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

impl Figures {
    /// Sagas finished (completed, or compensated as meant) per second.
    pub fn per_second(&self) -> f64 {
        (self.completed + self.compensated) as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// Tops stock up so the bench measures sagas, not stock-outs.
pub async fn stock_up(c: &mut Clients, units: i64) -> anyhow::Result<()> {
    let run = uuid::Uuid::now_v7();
    for (sku, ..) in crate::seed::CATALOG {
        for (code, ..) in crate::seed::WAREHOUSES {
            c.inventory
                .receive_stock(ReceiveStockRequest {
                    idempotency_key: format!("bench-{run}-{code}-{sku}"),
                    sku: sku.into(),
                    location: code.into(),
                    quantity: units,
                    source: None,
                    from_inbound: false,
                    unit_cost: None,
                })
                .await?;
        }
    }
    Ok(())
}

/// Places `orders` orders, at most `concurrency` in flight, each driven to completion by the
/// simulated floor; `cost` reads what the system has spent so far.
pub async fn run<F, Fut>(
    c: &Clients,
    orders: usize,
    concurrency: usize,
    cost: F,
) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Cost>>,
{
    let before = cost().await;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let run = uuid::Uuid::now_v7().simple().to_string();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(orders);
    for i in 0..orders {
        let permit = permits.clone().acquire_owned().await?;
        let mut c = c.clone();
        let external = format!("BENCH-{}-{i}", &run[20..]);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let sku = crate::seed::CATALOG[i % 3].0;
            let id = c.place(&external, sku, 1, "tok_visa", "standard").await;
            let mut watch = c
                .orchestrator
                .watch_saga(WatchSagaRequest {
                    saga_id: String::new(),
                    order_id: id.clone(),
                    with_timeline: false,
                })
                .await
                .ok()?
                .into_inner();
            let (mut packed, mut shipped) = (false, false);
            while let Ok(Some(msg)) = watch.message().await {
                let s = msg.saga?;
                match SagaStatus::try_from(s.status).unwrap_or(SagaStatus::Unspecified) {
                    SagaStatus::Waiting if s.current_step == "await_pack" && !packed => {
                        c.pick_and_pack(&id).await;
                        packed = true;
                    }
                    SagaStatus::Waiting if s.current_step == "await_shipment" && !shipped => {
                        c.confirm_ship(&id).await;
                        shipped = true;
                    }
                    SagaStatus::Completed => return Some(t0.elapsed()),
                    SagaStatus::Compensated | SagaStatus::Parked => return None,
                    _ => {}
                }
            }
            None
        }));
    }
    let mut figures = Figures {
        latencies: Vec::with_capacity(orders),
        ..Figures::default()
    };
    for t in tasks {
        match t.await? {
            Some(latency) => {
                figures.completed += 1;
                figures.latencies.push(latency);
            }
            None => figures.failed += 1,
        }
    }
    figures.elapsed = started.elapsed();
    figures.cost = match (before, cost().await) {
        (Some(before), Some(after)) => Some(after.minus(&before)),
        _ => None,
    };
    Ok(figures)
}

/// Follows a saga (by id, or by order when `saga_id` is empty) through `WatchSaga` until
/// `decide` returns an answer for one of its states; an error when the stream fails or ends
/// first.
pub(crate) async fn watch_until<T>(
    c: &mut Clients,
    saga_id: String,
    order_id: String,
    mut decide: impl FnMut(&erp_proto::orchestrator::Saga) -> Option<Result<T, String>>,
) -> Result<T, String> {
    let mut watch = c
        .orchestrator
        .watch_saga(WatchSagaRequest {
            saga_id,
            order_id,
            with_timeline: false,
        })
        .await
        .map_err(|e| format!("WatchSaga: {e}"))?
        .into_inner();
    while let Some(msg) = watch
        .message()
        .await
        .map_err(|e| format!("WatchSaga: {e}"))?
    {
        let saga = msg.saga.ok_or("WatchSaga sent no saga")?;
        if let Some(answer) = decide(&saga) {
            return answer;
        }
    }
    Err("the watch ended before the saga settled".into())
}

pub fn print(mode: &str, f: &Figures, pg_commits_per_second: Option<f64>) {
    let compensated = if f.compensated > 0 {
        format!(", {} compensated as meant", f.compensated)
    } else {
        String::new()
    };
    println!(
        "{mode:<12} {:>5} sagas completed ({} failed{compensated}) in {:>6.2} s: {:>7.1} sagas/s, p50 {:>6.0} ms, p99 {:>6.0} ms",
        f.completed,
        f.failed,
        f.elapsed.as_secs_f64(),
        f.per_second(),
        f.percentile(0.5).as_secs_f64() * 1000.0,
        f.percentile(0.99).as_secs_f64() * 1000.0,
    );
    if let Some(cost) = &f.cost {
        let n = (f.completed + f.compensated).max(1) as f64;
        let commits: Vec<String> = cost
            .commits
            .iter()
            .map(|(s, c)| format!("{s} {:.1}", *c as f64 / n))
            .collect();
        println!(
            "{mode:<12} per saga: {:.1} ms CPU, {:.1} RPCs{}",
            cost.cpu_seconds / n * 1000.0,
            cost.rpcs / n,
            if commits.is_empty() {
                String::new()
            } else {
                format!(
                    ", {:.1} database transactions, reads included ({})",
                    cost.commits.iter().map(|(_, c)| *c as f64).sum::<f64>() / n,
                    commits.join(", ")
                )
            }
        );
    }
    if let Some(ceiling) = pg_commits_per_second {
        println!(
            "{mode:<12} ratio to this machine's PostgreSQL one-row-update commit ceiling ({ceiling:.0}/s): {:.4} sagas per commit-slot",
            f.per_second() / ceiling
        );
    }
}

/// What a bench run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Orders placed through the order service, each a fulfillment saga the simulated floor
    /// packs and ships.
    Fulfillment,
    /// The synthetic eight-step `probe` saga against the probe participant (one row per step,
    /// one key in [`SYNTHETIC_DECLINE_EVERY`] declined at step 4 and compensated).
    Synthetic,
}

/// One synthetic saga in this many is declined at step 4 (about 5%).
pub const SYNTHETIC_DECLINE_EVERY: u64 = 20;

/// Seven `erp serve` processes on PostgreSQL (one database each) and Redis Streams; killed
/// when dropped.
struct Processes {
    settings: erp_runtime::config::Settings,
    children: Vec<std::process::Child>,
    metrics: Vec<String>,
    databases: Vec<(String, String)>,
    admin: String,
    jwks: std::path::PathBuf,
}

impl Processes {
    async fn start(
        postgres: &str,
        redis: &str,
        tag: &str,
        probe_url: &str,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        // One key set for the seven processes and this client.
        let jwks = std::env::temp_dir().join(format!("erp-bench-{tag}-jwks.json"));
        let mut settings = crate::tool_settings(&jwks)?;
        let peers = &mut settings.peers;
        let free_port = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let mut ports = Vec::new();
        for service in erp_runtime::config::SERVICES {
            let port = free_port()?;
            peers.set(service, format!("http://127.0.0.1:{port}"));
            ports.push((service, port, free_port()?));
        }
        let mut procs = Self {
            metrics: ports
                .iter()
                .map(|(_, _, m)| format!("http://127.0.0.1:{m}/metrics"))
                .collect(),
            databases: erp_runtime::config::SERVICES
                .iter()
                .map(|s| ((*s).to_owned(), format!("b{tag}_{s}")))
                .collect(),
            admin: format!("{}/postgres", postgres.trim_end_matches('/')),
            children: Vec::new(),
            jwks: jwks.clone(),
            settings: settings.clone(),
        };
        for (service, port, metrics_port) in &ports {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["serve", service])
                .env("ERP__SERVER__PORT", port.to_string())
                .env(
                    "ERP__TELEMETRY__METRICS_ADDR",
                    format!("127.0.0.1:{metrics_port}"),
                )
                .env(
                    "ERP__DATABASE__URL",
                    format!("{}/b{tag}_{{service}}", postgres.trim_end_matches('/')),
                )
                .env("ERP__BUS__KIND", "redis")
                .env("ERP__BUS__REDIS_URL", redis)
                .env("ERP__BUS__STREAM_PREFIX", format!("erp-bench-{tag}"))
                .env("ERP__BUS__RELAY_INTERVAL_MS", "100")
                .env("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50")
                .env("ERP__ORCHESTRATOR__PROBE_URL", probe_url)
                .env("ERP__AUTH__JWKS_FILE", &jwks)
                .env("ERP__TELEMETRY__LOG_FILTER", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit());
            for s in erp_runtime::config::SERVICES {
                cmd.env(
                    format!("ERP__PEERS__{}", s.to_uppercase()),
                    settings.peers.get(s).unwrap_or_default(),
                );
            }
            let mut child = cmd.spawn()?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
            procs.children.push(child);
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
            anyhow::ensure!(
                line.contains("listening"),
                "{service} did not start: {line}"
            );
        }
        Ok(procs)
    }

    /// What the seven processes have spent so far (and the commits of `extra` databases).
    async fn cost(&self, extra: &[(String, String)]) -> Option<Cost> {
        let http = reqwest::Client::new();
        let mut rpcs = 0.0;
        for url in &self.metrics {
            rpcs += rpcs_in(&http.get(url).send().await.ok()?.text().await.ok()?);
        }
        let databases: Vec<(String, String)> =
            self.databases.iter().chain(extra).cloned().collect();
        Some(Cost {
            cpu_seconds: self
                .children
                .iter()
                .map(|c| cpu_seconds(&c.id().to_string()))
                .sum(),
            rpcs,
            commits: pg_commits(&self.admin, &databases).await.ok()?,
        })
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.jwks);
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The workload against seven `erp serve` processes on PostgreSQL (one database each) and
/// Redis Streams; the synthetic saga's probe participant runs in this process on a database
/// of its own.
pub async fn distributed(
    postgres: &str,
    redis: &str,
    workload: Workload,
    orders: usize,
    concurrency: usize,
) -> anyhow::Result<Figures> {
    anyhow::ensure!(
        postgres.starts_with("postgres"),
        "--postgres is required in distributed mode"
    );
    anyhow::ensure!(
        redis.starts_with("redis://"),
        "--redis is required in distributed mode"
    );
    let run = uuid::Uuid::now_v7().simple().to_string();
    let tag = &run[run.len() - 10..];
    let stop = tokio_util::sync::CancellationToken::new();
    let probe_db = format!("b{tag}_probe");
    let probe = match workload {
        Workload::Synthetic => {
            let probe = crate::probe::Probe::open(
                &format!("{}/{probe_db}", postgres.trim_end_matches('/')),
                SYNTHETIC_DECLINE_EVERY,
            )
            .await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let (addr, _) = probe.clone().serve(listener, stop.clone())?;
            Some((probe, format!("http://{addr}")))
        }
        Workload::Fulfillment => None,
    };
    let probe_url = probe.as_ref().map(|(_, u)| u.as_str()).unwrap_or_default();
    let result = async {
        let procs = Processes::start(postgres, redis, tag, probe_url).await?;
        let extra = if probe.is_some() {
            vec![("probe".to_owned(), probe_db.clone())]
        } else {
            Vec::new()
        };
        let cost = || procs.cost(&extra);
        let c = Clients::for_settings(&procs.settings);
        match &probe {
            Some((probe, _)) => run_synthetic(&c, probe, orders, concurrency, cost).await,
            None => seed_and_run(&procs.settings, orders, concurrency, cost).await,
        }
    }
    .await;
    stop.cancel();
    result
}

async fn seed_and_run<F, Fut>(
    settings: &erp_runtime::config::Settings,
    orders: usize,
    concurrency: usize,
    cost: F,
) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Cost>>,
{
    let mut c = Clients::for_settings(settings);
    crate::seed::seed_with(&c).await?;
    stock_up(&mut c, 1_000_000).await?;
    run(&c, orders, concurrency, cost).await
}

/// Commits so far in each service's PostgreSQL database (`pg_stat_database`, which the
/// server updates within a second or so: the bench waits that long before reading).
async fn pg_commits(
    admin: &str,
    databases: &[(String, String)],
) -> anyhow::Result<Vec<(String, i64)>> {
    use sea_orm_migration::sea_orm::{ConnectionTrait, Database, Statement};
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let db = Database::connect(admin).await?;
    let mut out = Vec::new();
    for (service, name) in databases {
        let row = db
            .query_one_raw(Statement::from_sql_and_values(
                db.get_database_backend(),
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                [name.clone().into()],
            ))
            .await?;
        let n: i64 = row.map_or(Ok(0), |r| r.try_get("", "xact_commit"))?;
        out.push((service.clone(), n));
    }
    db.close().await?;
    Ok(out)
}

/// Figures of one flash sale.
pub struct Flash {
    pub batch: usize,
    /// GetAvailability reads per second on the hot item after the sale.
    pub reads_per_second: f64,
    /// The same client's requests per second against a bare tonic server answering a health
    /// check (the floor any tonic service stands on), measured in the same run.
    pub echo_per_second: f64,
    pub cached: bool,
    pub attempts: usize,
    pub reserved_ok: usize,
    pub refused: usize,
    pub errors: usize,
    pub units_reserved: i64,
    pub units: i64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Flash {
    pub fn decisions_per_second(&self) -> f64 {
        (self.reserved_ok + self.refused) as f64 / self.elapsed.as_secs_f64()
    }

    pub fn oversold(&self) -> i64 {
        (self.units_reserved - self.units).max(0)
    }

    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// A flash sale against the inventory service on PostgreSQL: `attempts` reservations of one
/// unit each for `units` units of one item at one warehouse, from `clients` concurrent clients.
pub async fn flash_sale(
    postgres: &str,
    redis: &str,
    batch: usize,
    attempts: usize,
    units: i64,
    clients: usize,
) -> anyhow::Result<Flash> {
    use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
    use erp_proto::inventory::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    anyhow::ensure!(
        postgres.starts_with("postgres"),
        "--postgres is required for the flash sale"
    );
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut env = std::collections::HashMap::new();
    env.insert(
        "ERP__DATABASE__URL".to_owned(),
        format!(
            "{}/f{}_{{service}}",
            postgres.trim_end_matches('/'),
            &tag[tag.len() - 10..]
        ),
    );
    env.insert("ERP__DATABASE__MAX_CONNECTIONS".to_owned(), "32".to_owned());
    env.insert(
        "ERP__SERVER__CONCURRENCY_LIMIT".to_owned(),
        "100000".to_owned(),
    );
    env.insert(
        "ERP__INVENTORY__RESERVATION_BATCH".to_owned(),
        batch.to_string(),
    );
    env.insert("ERP__TELEMETRY__LOG_FILTER".to_owned(), "warn".to_owned());
    // The reservation engine is measured here; what authentication costs is `--mode security`.
    env.insert("ERP__AUTH__MODE".to_owned(), "off".to_owned());
    if redis.starts_with("redis://") {
        // Distributed-mode settings turn the availability cache on.
        env.insert("ERP__BUS__KIND".to_owned(), "redis".to_owned());
        env.insert("ERP__BUS__REDIS_URL".to_owned(), redis.to_owned());
        env.insert(
            "ERP__BUS__STREAM_PREFIX".to_owned(),
            format!("erp-flash-{tag}"),
        );
    }
    let settings = Arc::new(erp_runtime::config::Settings::load_with(None, Some(env))?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = erp_runtime::app::start::<erp_inventory::Service>(
        settings.clone(),
        listener,
        erp_runtime::bus::Bus::InProcess(Default::default()),
        shutdown.clone(),
    )
    .await?;
    let url = format!("http://{}", running.addr);
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(
            tonic::transport::Endpoint::from_shared(url.clone())?
                .connect()
                .await?,
        );
    }
    let mut c = InventoryServiceClient::new(channels[0].clone());
    c.create_item(CreateItemRequest {
        item: Some(Item {
            sku: "HOT-1".into(),
            name: "Limited edition sneaker".into(),
            unit_cost: Some(erp_proto::common::Money {
                amount_minor: 4000,
                currency: "USD".into(),
            }),
            ..Default::default()
        }),
    })
    .await?;
    c.create_location(CreateLocationRequest {
        location: Some(Location {
            code: "east".into(),
            name: "East DC".into(),
            region: "us-east".into(),
            ..Default::default()
        }),
    })
    .await?;
    c.receive_stock(ReceiveStockRequest {
        idempotency_key: "flash-stock".into(),
        sku: "HOT-1".into(),
        location: "east".into(),
        quantity: units,
        source: None,
        from_inbound: false,
        unit_cost: None,
    })
    .await?;

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut client = InventoryServiceClient::new(channels[k % channels.len()].clone());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = (0usize, 0usize, 0usize, Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= attempts {
                    break;
                }
                let t0 = Instant::now();
                let r = client
                    .reserve_stock(ReserveStockRequest {
                        idempotency_key: format!("flash-{i}"),
                        order_id: format!("order-{i}"),
                        lines: vec![ReserveLine {
                            order_line_id: format!("order-{i}-1"),
                            sku: "HOT-1".into(),
                            location: "east".into(),
                            quantity: 1,
                        }],
                        mode: ReserveMode::AllOrNothing as i32,
                        expires_at: None,
                    })
                    .await;
                out.3.push(t0.elapsed());
                match r {
                    Ok(_) => out.0 += 1,
                    Err(s)
                        if erp_runtime::error::status_reason(&s).as_deref()
                            == Some("INSUFFICIENT_STOCK") =>
                    {
                        out.1 += 1
                    }
                    Err(_) => out.2 += 1,
                }
            }
            out
        }));
    }
    let mut flash = Flash {
        batch,
        reads_per_second: 0.0,
        echo_per_second: 0.0,
        cached: redis.starts_with("redis://"),
        attempts,
        reserved_ok: 0,
        refused: 0,
        errors: 0,
        units_reserved: 0,
        units,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(attempts),
    };
    for t in tasks {
        let (ok, refused, errors, latencies) = t.await?;
        flash.reserved_ok += ok;
        flash.refused += refused;
        flash.errors += errors;
        flash.latencies.extend(latencies);
    }
    flash.elapsed = started.elapsed();
    let level = c
        .get_stock(GetStockRequest {
            sku: "HOT-1".into(),
            location: "east".into(),
        })
        .await?
        .into_inner()
        .levels;
    flash.units_reserved = level.first().map_or(0, |l| l.reserved);
    let verify = c.verify_ledger(VerifyLedgerRequest {}).await?.into_inner();
    anyhow::ensure!(
        verify.consistent,
        "ledger replay differs after the flash sale"
    );
    flash.reads_per_second = availability_reads(&url, "HOT-1", 32, 3).await?;
    flash.echo_per_second = echo_reads(32, 3).await?;
    shutdown.cancel();
    let _ = running.task.await;
    Ok(flash)
}

/// Requests per second a bare tonic server answers (a health check: no authentication, no
/// database, nothing but tonic's own path) for `seconds` from `clients` concurrent clients on
/// one connection, the way `availability_reads` calls.
pub async fn echo_reads(clients: usize, seconds: u64) -> anyhow::Result<f64> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("echo", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled_owned(),
            )
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = HealthClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                if c.check(HealthCheckRequest {
                    service: "echo".into(),
                })
                .await
                .is_err()
                {
                    break;
                }
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    stop.cancel();
    let _ = server.await;
    Ok(total as f64 / seconds as f64)
}

/// GetAvailability reads per second for `seconds` from `clients` concurrent clients.
pub async fn availability_reads(
    url: &str,
    sku: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    use erp_proto::inventory::GetAvailabilityRequest;
    use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await?;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = InventoryServiceClient::new(channel.clone());
        let sku = sku.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                match c
                    .get_availability(GetAvailabilityRequest {
                        skus: vec![sku.clone()],
                        as_of: None,
                        include_inbound: false,
                    })
                    .await
                {
                    Ok(_) => n += 1,
                    Err(e) => {
                        eprintln!("GetAvailability failed: {e}");
                        break;
                    }
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    Ok(total as f64 / seconds as f64)
}

pub fn print_flash(f: &Flash, hot_row_ceiling: Option<f64>) {
    println!(
        "flash sale batch={:<4} {} attempts for {} units: {} reserved, {} refused, {} errors, oversold {} | {:>7.0} decisions/s, p50 {:>5.1} ms, p99 {:>6.1} ms",
        f.batch,
        f.attempts,
        f.units,
        f.reserved_ok,
        f.refused,
        f.errors,
        f.oversold(),
        f.decisions_per_second(),
        f.percentile(0.5).as_secs_f64() * 1000.0,
        f.percentile(0.99).as_secs_f64() * 1000.0,
    );
    println!(
        "flash sale batch={:<4} GetAvailability: {:.0} reads/s (32 clients, 3 s, {}); a bare tonic health check {:.0}/s; ratio {:.2}x",
        f.batch,
        f.reads_per_second,
        if f.cached { "Redis cache" } else { "no cache" },
        f.echo_per_second,
        f.reads_per_second / f.echo_per_second.max(1.0)
    );
    if let Some(c) = hot_row_ceiling {
        println!(
            "flash sale batch={:<4} ratio to the single-hot-row UPDATE ceiling ({c:.0} commits/s): {:.2}x",
            f.batch,
            f.decisions_per_second() / c
        );
    }
}

/// One way of serving a read, and how many reads per second it sustained.
pub struct SecurityFigure {
    pub setup: &'static str,
    pub reads_per_second: f64,
}

/// Reads of `READ-1` per second through `channels` by `clients` concurrent callers.
async fn get_item_rate(
    channels: &[erp_runtime::auth::PeerChannel],
    clients: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    use erp_proto::inventory::GetItemRequest;
    use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut c = InventoryServiceClient::new(channels[i % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                c.get_item(GetItemRequest {
                    sku: "READ-1".into(),
                })
                .await?;
                n += 1;
            }
            Ok::<u64, tonic::Status>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// What transport security and token checks cost on a simple read: `GetItem` against an
/// inventory service (SQLite) served three ways in this process — plaintext without
/// authentication, plaintext with a bearer token checked on every call, mutual TLS with the
/// token — by `clients` concurrent callers over 8 connections each. The three run side by
/// side, warmed up, then are measured in turns (`rounds` rounds of `seconds` each, the median
/// kept), so that neither the order nor a noisy second favours one. Connections are set up
/// before timing: the figure is the per-request cost, not handshakes.
pub async fn security_cost(
    clients: usize,
    seconds: u64,
    rounds: usize,
) -> anyhow::Result<Vec<SecurityFigure>> {
    use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
    use erp_proto::inventory::{CreateItemRequest, Item};

    let run = std::env::temp_dir().join(format!("erp-bench-security-{}", uuid::Uuid::now_v7()));
    crate::certs::generate(&run.join("tls"), &["127.0.0.1".to_owned()])?;
    let setups = [
        ("plaintext, no authentication", "off", false),
        ("plaintext + JWT check", "jwt", false),
        ("mutual TLS + JWT check", "jwt", true),
    ];
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut servers = Vec::new();
    for (setup, auth, tls) in setups {
        let mut env = std::collections::HashMap::new();
        env.insert(
            "ERP__DATA_DIR".to_owned(),
            run.join(setup.replace(' ', "-")).display().to_string(),
        );
        env.insert("ERP__AUTH__MODE".to_owned(), auth.to_owned());
        env.insert("ERP__TELEMETRY__LOG_FILTER".to_owned(), "warn".to_owned());
        env.insert(
            "ERP__SERVER__CONCURRENCY_LIMIT".to_owned(),
            "100000".to_owned(),
        );
        if tls {
            env.extend(crate::certs::settings_env(&run.join("tls")));
        }
        let settings = Arc::new(erp_runtime::config::Settings::load_with(None, Some(env))?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let running = erp_runtime::app::start::<erp_inventory::Service>(
            settings.clone(),
            listener,
            erp_runtime::bus::Bus::InProcess(Default::default()),
            shutdown.clone(),
        )
        .await?;
        let credentials = match settings.auth.mode {
            erp_runtime::config::AuthMode::Jwt => erp_runtime::auth::Credentials::minted(
                erp_runtime::auth::Authenticator::from_settings(&settings)?,
                "bench",
                &[erp_runtime::auth::roles::OPERATOR],
                Duration::from_secs(3600),
                None,
            ),
            erp_runtime::config::AuthMode::Off => erp_runtime::auth::Credentials::none(),
        };
        let access = crate::testkit::tool_access(&settings, credentials);
        let url = format!("http://{}", running.addr);
        let mut channels = Vec::new();
        for _ in 0..8 {
            channels.push(access.intercept(access.endpoint(&url)?));
        }
        InventoryServiceClient::new(channels[0].clone())
            .create_item(CreateItemRequest {
                item: Some(Item {
                    sku: "READ-1".into(),
                    name: "Read me".into(),
                    unit_cost: Some(erp_proto::common::Money {
                        amount_minor: 100,
                        currency: "USD".into(),
                    }),
                    ..Default::default()
                }),
            })
            .await?;
        // Warm-up: every connection up (through its handshake), caches filled.
        get_item_rate(&channels, clients, 1.0).await?;
        servers.push((setup, running, channels, Vec::new()));
    }
    for _ in 0..rounds.max(1) {
        for (_, _, channels, rates) in &mut servers {
            rates.push(get_item_rate(channels, clients, seconds as f64).await?);
        }
    }
    shutdown.cancel();
    let mut figures = Vec::new();
    for (setup, running, _, mut rates) in servers {
        let _ = running.task.await;
        rates.sort_by(f64::total_cmp);
        figures.push(SecurityFigure {
            setup,
            reads_per_second: rates[rates.len() / 2],
        });
    }
    let _ = std::fs::remove_dir_all(&run);
    Ok(figures)
}

pub fn print_security(figures: &[SecurityFigure]) {
    let base = figures.first().map_or(1.0, |f| f.reads_per_second);
    println!("GetItem reads/s (one inventory service on SQLite, same process, same run):");
    for f in figures {
        println!(
            "  {:<30} {:>9.0}/s  {:.2}x of plaintext without authentication",
            f.setup,
            f.reads_per_second,
            f.reads_per_second / base
        );
    }
}
