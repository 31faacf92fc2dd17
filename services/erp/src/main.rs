//! `erp`: run the whole suite in one process, apply migrations, seed a catalog.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use erp_runtime::bus::Bus;
use erp_runtime::config::Settings;

#[derive(Parser)]
#[command(name = "erp", version, about = "The erp fulfillment suite")]
struct Cli {
    /// TOML configuration file (defaults, then this file, then ERP__SECTION__KEY variables).
    #[arg(long, global = true, env = "ERP_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start all seven services in this process (SQLite under data_dir, in-process bus).
    Up {
        /// Seed a demo catalog (items, three warehouses with stock, a carrier, channels, a
        /// supplier) and place a few web orders once the services are up.
        #[arg(long)]
        seed: bool,
    },
    /// Start the suite, seed it, push a mix of orders through the fulfillment saga while
    /// playing the warehouse, print what happened, then keep serving (unless --exit).
    Demo {
        /// How many orders to place.
        #[arg(long, default_value_t = 40)]
        orders: usize,
        /// Stop after the report instead of serving on.
        #[arg(long)]
        exit: bool,
    },
    /// Measure completed sagas per second and saga latency (prints figures, never fails on time).
    Bench {
        /// embedded (this process, SQLite), distributed (seven processes, PostgreSQL + Redis),
        /// synthetic-embedded / synthetic-distributed (the eight-step probe saga instead of
        /// orders: the engine alone), flash-orders (a flash sale end to end, embedded: `orders`
        /// one-unit orders through CreateOrder for 500 units over three warehouses, until every
        /// order is allocated or backordered), flash (a flash sale of `orders` one-unit reservations for
        /// 500 units on PostgreSQL), or security (what TLS and token checks cost on a simple
        /// read).
        #[arg(long, default_value = "embedded")]
        mode: String,
        #[arg(long, default_value_t = 200)]
        orders: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// PostgreSQL server URL for distributed mode, e.g. postgres://postgres@127.0.0.1:55433.
        #[arg(long, default_value = "")]
        postgres: String,
        /// Redis URL for distributed mode.
        #[arg(long, default_value = "")]
        redis: String,
        /// The machine's measured PostgreSQL commit ceiling (commits/s), for the ratio.
        #[arg(long)]
        pg_ceiling: Option<f64>,
    },
    /// Run one service as its own process (the distributed mode): binds server.host:server.port,
    /// uses database.url and the bus from the configuration.
    Serve {
        /// order, inventory, warehouse, carrier, procurement, finance or orchestrator.
        service: String,
    },
    /// Mint a bearer token from the suite's key set (auth.jwks_file, by default
    /// <data_dir>/auth/jwks.json, which `erp up` creates), for grpcurl:
    /// -H "authorization: Bearer $(erp token --role operator)"
    Token {
        /// A role the token grants; repeat for several (admin, operator, customer-service,
        /// warehouse, buyer, approver, finance, auditor, integration, service:<name>).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// The principal's name, recorded in audit trails.
        #[arg(long, default_value = "")]
        subject: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The most (minor units) the principal may approve.
        #[arg(long)]
        approval_limit: Option<i64>,
    },
    /// Write a development CA and a certificate per service (and `client` for tools) for
    /// mutual TLS; then point [tls] at them (the command prints the settings).
    Certs {
        /// Directory for ca.pem, <name>.pem and <name>-key.pem.
        #[arg(long, default_value = "./data/tls")]
        out: PathBuf,
        /// Host names and addresses the certificates are valid for.
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_owned(), "localhost".to_owned()])]
        hosts: Vec<String>,
    },
    /// Load and validate the configuration (defaults, file, environment), print where things go.
    CheckConfig,
    /// Back up every service database (or those named) online into a new directory
    /// `<into>/<UTC time>/` with a manifest (checksums, migration, outbox and inbox positions).
    Backup {
        #[arg(long)]
        into: PathBuf,
        /// Only this service (repeatable).
        #[arg(long = "service")]
        services: Vec<String>,
        /// Then delete all but the newest this many backups under `into`.
        #[arg(long)]
        keep: Option<usize>,
    },
    /// Restore service databases from a backup directory, after checking every file against
    /// the manifest. Stop the services first: their databases are replaced.
    Restore {
        #[arg(long)]
        from: PathBuf,
        /// Only this service (repeatable); all in the backup when none.
        #[arg(long = "service")]
        services: Vec<String>,
    },
    /// Apply database migrations for one service, or all of them.
    Migrate {
        /// order, inventory, warehouse, carrier, procurement, finance or orchestrator.
        #[arg(long)]
        service: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    // A single service reports under its own name; the all-in-one process as "erp".
    let service_name = match &cli.command {
        Command::Serve { service } => service.clone(),
        _ => "erp".to_owned(),
    };
    let _telemetry = erp_runtime::telemetry::init(&service_name, &settings.telemetry)?;
    match cli.command {
        Command::Token {
            roles,
            subject,
            ttl,
            approval_limit,
        } => {
            let roles = erp_runtime::auth::parse_roles(&roles)?;
            let mut settings = settings;
            settings.auth.mode = erp_runtime::config::AuthMode::Jwt;
            let auth = erp_runtime::auth::Authenticator::from_settings(&settings)?;
            let subject = if subject.is_empty() {
                std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
            } else {
                subject
            };
            println!(
                "{}",
                auth.mint(
                    &subject,
                    &roles,
                    std::time::Duration::from_secs(ttl),
                    approval_limit
                )?
            );
        }
        Command::Certs { out, hosts } => {
            erp::certs::generate(&out, &hosts)?;
            println!("certificates written to {}; use them with:", out.display());
            for (key, value) in erp::certs::settings_env(&out) {
                println!("  export {key}='{value}'");
            }
        }
        Command::CheckConfig => {
            println!("configuration ok");
            println!(
                "  bus: {:?}, stream prefix {}",
                settings.bus.kind, settings.bus.stream_prefix
            );
            for s in erp_runtime::config::SERVICES {
                println!(
                    "  {s:<13} {}  db {}",
                    settings.peers.get(s).unwrap_or_default(),
                    erp_runtime::db::redact(&settings.database_url(s))
                );
            }
        }
        Command::Backup {
            into,
            services,
            keep,
        } => {
            let dir = into.join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string());
            let started = std::time::Instant::now();
            let manifest = erp::backup::backup(&settings, &dir, &services).await?;
            for e in &manifest.services {
                println!(
                    "  {:<13} {:>12} bytes  {}  migration {}  outbox #{}  inbox {} events",
                    e.service, e.bytes, e.file, e.migration, e.outbox_last_seq, e.inbox_events
                );
            }
            println!(
                "backup written to {} in {:.2} s",
                dir.display(),
                started.elapsed().as_secs_f64()
            );
            if let Some(keep) = keep {
                for old in erp::backup::prune(&into, keep)? {
                    println!("  removed old backup {}", old.display());
                }
            }
        }
        Command::Restore { from, services } => {
            let started = std::time::Instant::now();
            for e in erp::backup::restore(&settings, &from, &services).await? {
                println!(
                    "  {:<13} restored from {} (taken at {} ms, migration {})",
                    e.service, e.file, e.taken_at_ms, e.migration
                );
            }
            println!(
                "restored from {} in {:.2} s; start the services",
                from.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Migrate { service } => {
            for s in erp::migrate(&settings, service.as_deref()).await? {
                println!(
                    "{s}: migrations applied ({})",
                    erp_runtime::db::redact(&settings.database_url(s))
                );
            }
        }
        Command::Demo { orders, exit } => {
            let bus = Bus::from_settings(&settings.bus).await?;
            let suite = erp::start_suite(settings, bus, false).await?;
            println!(
                "erp suite up (data under {})",
                suite.settings.data_dir.display()
            );
            for r in &suite.services {
                println!("  {:<13} {}", r.name, r.addr);
            }
            erp::seed::seed(&suite).await?;
            let report = erp::demo::run(&suite, orders).await?;
            println!("{report}");
            let reconciles = report.reconciles();
            if !exit {
                print_access(&suite);
                println!("serving on (Ctrl-C stops)");
                erp_runtime::server::shutdown_signal().await;
            }
            suite.stop().await?;
            if !reconciles {
                anyhow::bail!("the demo's totals do not reconcile");
            }
        }
        Command::Bench {
            mode,
            orders,
            concurrency,
            postgres,
            redis,
            pg_ceiling,
        } => {
            let figures = match mode.as_str() {
                "embedded" | "synthetic-embedded" | "flash-orders" => {
                    let synthetic = mode == "synthetic-embedded";
                    let dir =
                        std::env::temp_dir().join(format!("erp-bench-{}", uuid::Uuid::now_v7()));
                    let mut settings = settings;
                    settings.data_dir = dir.clone();
                    settings.database.url = String::new();
                    // The synthetic saga's participant: its own SQLite file, its own socket.
                    let stop = tokio_util::sync::CancellationToken::new();
                    let probe = if synthetic {
                        let probe = erp::probe::Probe::open(
                            &format!("sqlite://{}?mode=rwc", dir.join("probe.db").display()),
                            erp::bench::SYNTHETIC_DECLINE_EVERY,
                        )
                        .await?;
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        let (addr, _) = probe.clone().serve(listener, stop.clone())?;
                        settings.orchestrator.probe_url = format!("http://{addr}");
                        Some(probe)
                    } else {
                        None
                    };
                    let bus = Bus::from_settings(&settings.bus).await?;
                    let suite = erp::start_suite(settings, bus, true).await?;
                    let mut c = erp::testkit::Clients::for_suite(&suite);
                    if mode == "flash-orders" {
                        // 500 units of a new item over the three warehouses, nothing else.
                        erp::seed::seed(&suite).await?;
                        let sale = erp::bench::flash_orders(&c, orders, 500, concurrency).await;
                        suite.stop().await?;
                        let _ = std::fs::remove_dir_all(dir);
                        let sale = sale?;
                        erp::bench::print_sale(&sale);
                        anyhow::ensure!(sale.oversold() == 0, "oversold {} units", sale.oversold());
                        return Ok(());
                    }
                    if !synthetic {
                        erp::seed::seed(&suite).await?;
                        erp::bench::stock_up(&mut c, 1_000_000).await?;
                    }
                    // Every service runs in this process: its CPU and the RPCs it counts.
                    let recorder =
                        metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
                    let handle = recorder.handle();
                    let counted = metrics::set_global_recorder(recorder).is_ok();
                    let cost = || {
                        let page = handle.render();
                        async move {
                            counted.then(|| erp::bench::Cost {
                                cpu_seconds: erp::bench::cpu_seconds("self"),
                                rpcs: erp::bench::rpcs_in(&page),
                                commits: Vec::new(),
                            })
                        }
                    };
                    let f = match &probe {
                        Some(probe) => {
                            erp::bench::run_synthetic(&c, probe, orders, concurrency, cost).await
                        }
                        None => erp::bench::run(&c, orders, concurrency, cost).await,
                    };
                    suite.stop().await?;
                    stop.cancel();
                    let _ = std::fs::remove_dir_all(dir);
                    f?
                }
                "distributed" | "synthetic-distributed" => {
                    let workload = if mode == "distributed" {
                        erp::bench::Workload::Fulfillment
                    } else {
                        erp::bench::Workload::Synthetic
                    };
                    erp::bench::distributed(&postgres, &redis, workload, orders, concurrency)
                        .await?
                }
                "security" => {
                    let figures = erp::bench::security_cost(concurrency, 5, 3).await?;
                    erp::bench::print_security(&figures);
                    return Ok(());
                }
                "flash" => {
                    // The same flash sale one transaction per reservation, then group-committed
                    // (with the availability cache when --redis is given).
                    for (batch, cache) in [(1, ""), (128, redis.as_str())] {
                        let f = erp::bench::flash_sale(
                            &postgres,
                            cache,
                            batch,
                            orders,
                            500,
                            concurrency,
                        )
                        .await?;
                        erp::bench::print_flash(&f, pg_ceiling);
                        if f.oversold() > 0 {
                            anyhow::bail!("oversold {} units", f.oversold());
                        }
                    }
                    return Ok(());
                }
                other => {
                    anyhow::bail!(
                        "--mode must be embedded, distributed, synthetic-embedded, synthetic-distributed, flash-orders, flash or security, not {other}"
                    )
                }
            };
            erp::bench::print(
                &mode,
                &figures,
                if mode.ends_with("distributed") {
                    pg_ceiling
                } else {
                    None
                },
            );
        }
        Command::Serve { service } => {
            let service: &'static str = erp_runtime::config::SERVICES
                .into_iter()
                .find(|s| *s == service)
                .ok_or_else(|| anyhow::anyhow!("unknown service {service:?}"))?;
            let listener = tokio::net::TcpListener::bind((
                settings.server.host.as_str(),
                settings.server.port,
            ))
            .await?;
            let bus = Bus::from_settings(&settings.bus).await?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            let running = erp::start_one(
                service,
                std::sync::Arc::new(settings),
                listener,
                bus,
                shutdown.clone(),
            )
            .await?;
            println!("{service} listening on {}", running.addr);
            erp_runtime::server::shutdown_signal().await;
            shutdown.cancel();
            running.task.await??;
        }
        Command::Up { seed } => {
            let started = Instant::now();
            let bus = Bus::from_settings(&settings.bus).await?;
            let suite = erp::start_suite(settings, bus, false).await?;
            println!(
                "erp suite ready in {} ms (data under {})",
                started.elapsed().as_millis(),
                suite.settings.data_dir.display()
            );
            for r in &suite.services {
                println!("  {:<13} {}", r.name, r.addr);
            }
            if seed {
                erp::seed::seed(&suite).await?;
                let mut order = erp::testkit::Clients::for_suite(&suite).order;
                for (i, (sku, ..)) in erp::seed::CATALOG.iter().enumerate() {
                    let created = order
                        .create_order(erp::seed::sample_order(
                            &format!("DEMO-{}", i + 1),
                            sku,
                            1 + i as i64,
                        ))
                        .await?
                        .into_inner();
                    if let Some(o) = created.order {
                        println!(
                            "  placed order {} ({sku}){}",
                            o.order_id,
                            if created.created {
                                ""
                            } else {
                                ", placed earlier"
                            }
                        );
                    }
                }
                println!(
                    "seeded: 3 items, 3 warehouses with stock, carrier parcelco, channels web/amazon-us/wholesale, supplier acme"
                );
            }
            print_access(&suite);
            erp_runtime::server::shutdown_signal().await;
            suite.stop().await?;
        }
    }
    Ok(())
}

/// How to reach the suite: plaintext on loopback, and where tokens come from.
fn print_access(suite: &erp::Suite) {
    let addr = suite.services[0].addr;
    match suite.settings.auth.mode {
        erp_runtime::config::AuthMode::Jwt => {
            println!(
                "plaintext gRPC (no TLS) on loopback; every call but health needs a bearer token signed by {}",
                suite.settings.jwks_path().display()
            );
            println!(
                "try: grpcurl -plaintext -H \"authorization: Bearer $(erp token --role operator)\" {addr} list"
            );
        }
        erp_runtime::config::AuthMode::Off => {
            println!("plaintext gRPC (no TLS), NO authentication (auth.mode = \"off\")");
            println!("try: grpcurl -plaintext {addr} list");
        }
    }
}
