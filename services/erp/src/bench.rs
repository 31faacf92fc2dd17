//! `erp bench`: completed fulfillment sagas per second and their latency, order placed to saga
//! completed (including the warehouse's pick and ship confirmation, played by the bench), with
//! the whole suite either in this process on SQLite (embedded) or as seven processes on
//! PostgreSQL and Redis Streams (distributed). Prints figures; never fails on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use erp_proto::inventory::ReceiveStockRequest;
use erp_proto::orchestrator::SagaStatus;
use tokio::sync::Semaphore;

use crate::testkit::Clients;

pub struct Figures {
    pub completed: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Figures {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[idx.min(sorted.len() - 1)]
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
                })
                .await?;
        }
    }
    Ok(())
}

/// Places `orders` orders, at most `concurrency` in flight, each driven to completion.
pub async fn run(c: &Clients, orders: usize, concurrency: usize) -> anyhow::Result<Figures> {
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
            let mut shipped = false;
            loop {
                let status = c.saga(&id).await.map_or(SagaStatus::Unspecified, |s| {
                    SagaStatus::try_from(s.status).unwrap_or(SagaStatus::Unspecified)
                });
                match status {
                    SagaStatus::Waiting if !shipped => {
                        c.ship(&id).await;
                        shipped = true;
                    }
                    SagaStatus::Completed => return Some(t0.elapsed()),
                    SagaStatus::Compensated | SagaStatus::Parked => return None,
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let mut figures = Figures {
        completed: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(orders),
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
    Ok(figures)
}

pub fn print(mode: &str, f: &Figures, pg_commits_per_second: Option<f64>) {
    println!(
        "{mode:<12} {:>5} sagas completed ({} failed) in {:>6.2} s: {:>7.1} sagas/s, p50 {:>6.0} ms, p99 {:>6.0} ms",
        f.completed,
        f.failed,
        f.elapsed.as_secs_f64(),
        f.per_second(),
        f.percentile(0.5).as_secs_f64() * 1000.0,
        f.percentile(0.99).as_secs_f64() * 1000.0,
    );
    if let Some(ceiling) = pg_commits_per_second {
        println!(
            "{mode:<12} ratio to this machine's PostgreSQL one-row-update commit ceiling ({ceiling:.0}/s): {:.4} sagas per commit-slot",
            f.per_second() / ceiling
        );
    }
}

/// Seven `erp serve` processes on PostgreSQL (one database each) and Redis Streams.
pub async fn distributed(
    postgres: &str,
    redis: &str,
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
    let exe = std::env::current_exe()?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let tag = &run[run.len() - 10..];
    let mut peers = erp_runtime::config::Settings::load_with(None, Some(Default::default()))?.peers;
    let mut ports = Vec::new();
    for service in erp_runtime::config::SERVICES {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        peers.set(service, format!("http://127.0.0.1:{port}"));
        ports.push((service, port));
    }
    let mut children = Vec::new();
    for (service, port) in &ports {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["serve", service])
            .env("ERP__SERVER__PORT", port.to_string())
            .env(
                "ERP__DATABASE__URL",
                format!("{}/b{tag}_{{service}}", postgres.trim_end_matches('/')),
            )
            .env("ERP__BUS__KIND", "redis")
            .env("ERP__BUS__REDIS_URL", redis)
            .env("ERP__BUS__STREAM_PREFIX", format!("erp-bench-{tag}"))
            .env("ERP__BUS__RELAY_INTERVAL_MS", "100")
            .env("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50")
            .env("ERP__TELEMETRY__LOG_FILTER", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for s in erp_runtime::config::SERVICES {
            cmd.env(
                format!("ERP__PEERS__{}", s.to_uppercase()),
                peers.get(s).unwrap_or_default(),
            );
        }
        let mut child = cmd.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        anyhow::ensure!(
            line.contains("listening"),
            "{service} did not start: {line}"
        );
        children.push(child);
    }
    let result = async { seed_and_run(&peers, orders, concurrency).await }.await;
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

async fn seed_and_run(
    peers: &erp_runtime::config::Peers,
    orders: usize,
    concurrency: usize,
) -> anyhow::Result<Figures> {
    crate::seed::seed_peers(peers).await?;
    let mut c = Clients::for_peers(peers);
    stock_up(&mut c, 1_000_000).await?;
    run(&c, orders, concurrency).await
}
