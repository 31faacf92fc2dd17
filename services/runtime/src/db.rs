//! Database connections and migrations. Every service owns one database: a SQLite file in
//! embedded mode, a PostgreSQL database in distributed mode. Schemas are written once in a
//! portable subset of SQL (BIGINT epoch-millisecond timestamps, TEXT ids) with two placeholders
//! that differ between the engines.

use std::time::Duration;

use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection,
    DatabaseTransaction, DbErr, IsolationLevel, Statement, TransactionTrait,
};
use sea_orm_migration::prelude::*;

use crate::config::Settings;

/// Connects to the database of `service` and brings its schema up to date.
pub async fn connect_and_migrate<M: MigratorTrait>(
    settings: &Settings,
    service: &str,
) -> anyhow::Result<DatabaseConnection> {
    let db = connect(settings, service).await?;
    M::up(&db, None)
        .await
        .map_err(|e| anyhow::anyhow!("migrating the {service} database: {e}"))?;
    Ok(db)
}

/// Connects to the database of `service` (creating the SQLite file or PostgreSQL database when
/// missing), without migrating.
pub async fn connect(settings: &Settings, service: &str) -> anyhow::Result<DatabaseConnection> {
    let url = settings.database_url(service);
    connect_url_limited(
        &url,
        settings.database.max_connections,
        settings.database.create_if_missing,
        SessionLimits {
            lock_timeout_ms: settings.database.lock_timeout_ms,
            idle_in_transaction_ms: settings.database.idle_in_transaction_timeout_ms,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("connecting the {service} database ({}): {e}", redact(&url)))
}

/// Server-side limits on every PostgreSQL session of a pool (see `DatabaseSettings`): no
/// statement waits for ever behind a lock, and no session holds its locks for ever.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub lock_timeout_ms: u64,
    pub idle_in_transaction_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            lock_timeout_ms: 30_000,
            idle_in_transaction_ms: 60_000,
        }
    }
}

/// [`connect_url_limited`] with the default [`SessionLimits`].
pub async fn connect_url(
    url: &str,
    max_connections: u32,
    create_if_missing: bool,
) -> anyhow::Result<DatabaseConnection> {
    connect_url_limited(
        url,
        max_connections,
        create_if_missing,
        SessionLimits::default(),
    )
    .await
}

pub async fn connect_url_limited(
    url: &str,
    max_connections: u32,
    create_if_missing: bool,
    limits: SessionLimits,
) -> anyhow::Result<DatabaseConnection> {
    let is_sqlite = url.starts_with("sqlite:");
    if is_sqlite {
        if let Some(path) = sqlite_path(url)
            && let Some(parent) = std::path::Path::new(&path).parent()
        {
            std::fs::create_dir_all(parent)?;
        }
    } else if create_if_missing {
        create_postgres_database(url).await?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        // SQLite has one writer; one connection serializes transactions instead of failing them
        // with "database is locked" when a read turns into a write.
        .max_connections(if is_sqlite { 1 } else { max_connections })
        .min_connections(if is_sqlite { 1 } else { 2 })
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    if !is_sqlite {
        // Sent as startup parameters: every connection of the pool, including those opened
        // again after the server restarted, carries them.
        options.map_sqlx_postgres_opts(move |pg| {
            pg.options([
                ("lock_timeout", format!("{}ms", limits.lock_timeout_ms)),
                (
                    "idle_in_transaction_session_timeout",
                    format!("{}ms", limits.idle_in_transaction_ms),
                ),
            ])
        });
    }
    let db = Database::connect(options).await?;
    if is_sqlite {
        // WAL survives in the file; readers never block the writer.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
        db.execute_unprepared("PRAGMA foreign_keys=ON").await?;
    }
    Ok(db)
}

/// The file of a SQLite URL (`sqlite://./data/x.db?mode=rwc` → `./data/x.db`).
pub fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(path.to_owned())
    }
}

/// A read-only transaction whose reads all see one snapshot, for answers assembled from several
/// tables (an order, its lines and its routing decisions). PostgreSQL needs REPEATABLE READ for
/// that (READ COMMITTED takes a fresh snapshot per statement); a SQLite transaction in WAL mode
/// reads one snapshot already.
pub async fn snapshot(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            db.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await
        }
        _ => db.begin().await,
    }
}

/// The database's clock in epoch milliseconds, as an SQL expression. Leases and due times are
/// compared against it (and written from it), so that every replica of a service judges them by
/// one clock, whatever the skew between the machines they run on.
pub fn clock_ms_sql(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        // One embedded process: the file's clock is the process's clock; julianday('now') has
        // millisecond resolution on every SQLite version.
        _ => "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)",
    }
}

/// Reads the database's clock (see [`clock_ms_sql`]).
pub async fn clock_ms<C: ConnectionTrait>(c: &C) -> Result<i64, DbErr> {
    let backend = c.get_database_backend();
    let row = c
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            format!("SELECT {} AS now_ms", clock_ms_sql(backend)),
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("the clock query returned no row".into()))?;
    row.try_get::<i64>("", "now_ms")
}

/// Hides the password of a URL for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Creates the database named in a PostgreSQL URL when it does not exist.
async fn create_postgres_database(url: &str) -> anyhow::Result<()> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let Some(slash) = base.rfind('/') else {
        anyhow::bail!("database.url has no database name");
    };
    let name = &base[slash + 1..];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        anyhow::bail!("database name {name:?} must be letters, digits and underscores");
    }
    let mut admin = format!("{}/postgres", &base[..slash]);
    if let Some(q) = query {
        admin.push('?');
        admin.push_str(q);
    }
    let mut options = ConnectOptions::new(admin);
    options.max_connections(1).sqlx_logging(false);
    let db = Database::connect(options).await?;
    let exists = db
        .query_one_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT 1 AS one FROM pg_database WHERE datname = $1",
            [name.into()],
        ))
        .await?
        .is_some();
    if !exists {
        match db
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
        {
            Ok(_) => tracing::info!(database = name, "created database"),
            // Another replica or test created it first.
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => return Err(e.into()),
        }
    }
    db.close().await?;
    Ok(())
}

/// Drops a PostgreSQL database (tests clean up after themselves).
pub async fn drop_postgres_database(url: &str) -> anyhow::Result<()> {
    let base = url.split('?').next().unwrap_or(url);
    let Some(slash) = base.rfind('/') else {
        return Ok(());
    };
    let name = &base[slash + 1..];
    let admin = format!("{}/postgres", &base[..slash]);
    let db = Database::connect(admin).await?;
    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    db.close().await?;
    Ok(())
}

/// Runs portable DDL: statements separated by `;`, with `{BLOB}` and `{SERIAL}` placeholders
/// (an auto-incrementing BIGINT primary key) filled in for the connected engine.
pub async fn run_ddl<C: ConnectionTrait>(conn: &C, ddl: &str) -> Result<(), DbErr> {
    let backend = conn.get_database_backend();
    let (blob, serial) = match backend {
        DatabaseBackend::Postgres => ("BYTEA", "BIGSERIAL PRIMARY KEY"),
        _ => ("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    };
    for statement in ddl.split(';') {
        let sql = statement.trim();
        if sql.is_empty() {
            continue;
        }
        let sql = sql.replace("{BLOB}", blob).replace("{SERIAL}", serial);
        conn.execute_unprepared(&sql).await?;
    }
    Ok(())
}

/// A migration written as portable DDL; `down` drops the listed tables.
pub struct DdlMigration {
    pub name: &'static str,
    pub up: &'static str,
    pub drops: &'static [&'static str],
}

impl MigrationName for DdlMigration {
    fn name(&self) -> &str {
        self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for DdlMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_ddl(manager.get_connection(), self.up).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in self.drops {
            manager
                .get_connection()
                .execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}

/// A migration that keeps a table's rows within `condition` (an SQL boolean whose column
/// references are written `NEW.column`): a CHECK constraint on PostgreSQL; on SQLite, which
/// cannot add a constraint to an existing table, triggers that abort an insert or update
/// breaking it. The last line of defence behind the handlers' own checks.
pub struct CheckConstraint {
    /// The migration's name (`m20261129_000004_payment_amounts`).
    pub migration: &'static str,
    pub table: &'static str,
    /// The constraint's name, quoted in the error.
    pub constraint: &'static str,
    pub condition: &'static str,
}

impl MigrationName for CheckConstraint {
    fn name(&self) -> &str {
        self.migration
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CheckConstraint {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        let Self {
            table,
            constraint,
            condition,
            ..
        } = self;
        let statements = match conn.get_database_backend() {
            DatabaseBackend::Postgres => vec![format!(
                "ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({})",
                condition.replace("NEW.", "")
            )],
            _ => ["INSERT", "UPDATE"]
                .iter()
                .map(|op| {
                    format!(
                        "CREATE TRIGGER {constraint}_{} BEFORE {op} ON {table} \
                         WHEN NOT ({condition}) \
                         BEGIN SELECT RAISE(ABORT, 'check constraint {constraint} violated'); END",
                        op.to_lowercase()
                    )
                })
                .collect(),
        };
        for sql in statements {
            conn.execute_unprepared(&sql).await?;
        }
        Ok(())
    }
}

/// Tables every service has: the outbox, the consumer inbox, idempotency keys and the audit
/// trail. Each service's migrator lists this first.
pub fn runtime_tables() -> Box<dyn MigrationTrait> {
    Box::new(DdlMigration {
        name: "m20261128_000000_runtime_tables",
        up: r"
CREATE TABLE outbox_events (
    seq {SERIAL},
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    event_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    traceparent TEXT NOT NULL,
    published_at_ms BIGINT
);
CREATE INDEX outbox_unpublished ON outbox_events (published_at_ms, seq);
CREATE TABLE processed_events (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at_ms BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response {BLOB} NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE TABLE audit_log (
    seq {SERIAL},
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL
)",
        drops: &[
            "audit_log",
            "idempotency_keys",
            "processed_events",
            "outbox_events",
        ],
    })
}

/// Durable events (every service): the outbox keeps what it published until every consumer
/// group subscribed to the topic processed it (`acked_at_ms`), remembering where on the bus
/// it went (`stream_id`); one relay per service holds `outbox_relay`'s lease; consumers count
/// failed deliveries (`event_failures`) and park what they give up on (`dead_letters`).
/// The relay lease's generation (see `outbox::relay_lease::Model::generation`), and the
/// inbox's index by age (the relay prunes processed events past the retention). Appended to
/// every service's migrations after [`events_tables`].
pub fn events_tables_v2() -> Box<dyn MigrationTrait> {
    Box::new(DdlMigration {
        name: "m20261208_000001_relay_generation_inbox_age",
        up: "ALTER TABLE outbox_relay ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
             CREATE INDEX processed_events_age ON processed_events (processed_at_ms)",
        drops: &[],
    })
}

pub fn events_tables() -> Box<dyn MigrationTrait> {
    Box::new(DdlMigration {
        name: "m20261207_000001_durable_events",
        up: r"
ALTER TABLE outbox_events ADD COLUMN stream_id TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox_events ADD COLUMN acked_at_ms BIGINT;
UPDATE outbox_events SET acked_at_ms = published_at_ms WHERE published_at_ms IS NOT NULL;
CREATE INDEX outbox_unacked ON outbox_events (acked_at_ms, seq);
CREATE TABLE outbox_relay (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    until_ms BIGINT NOT NULL,
    bus_epoch TEXT NOT NULL
);
INSERT INTO outbox_relay (id, owner, until_ms, bus_epoch) VALUES (1, '', 0, '');
CREATE TABLE event_failures (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    first_failed_at_ms BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE dead_letters (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    event_key TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    traceparent TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    dead_at_ms BIGINT NOT NULL,
    replayed_at_ms BIGINT,
    PRIMARY KEY (consumer, event_id)
)",
        drops: &["dead_letters", "event_failures", "outbox_relay"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://erp:secret@db:5432/erp_order"),
            "postgres://erp:***@db:5432/erp_order"
        );
        assert_eq!(redact("sqlite://./data/x.db"), "sqlite://./data/x.db");
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://./data/a.db?mode=rwc").as_deref(),
            Some("./data/a.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
