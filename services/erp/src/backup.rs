//! `erp backup` and `erp restore`: a consistent copy of every service database with a
//! manifest, and putting one service (or all) back from it.
//!
//! SQLite is copied online with `VACUUM INTO` (one read transaction: a consistent file while
//! the service keeps writing). PostgreSQL is dumped with `pg_dump --format=custom` inside an
//! exported snapshot, so that the figures in the manifest (migration, outbox and inbox
//! positions) describe exactly what the dump holds. Each file's SHA-256 is in the manifest and
//! checked before anything is restored. Restore needs the service stopped: it replaces the
//! database.

use std::path::{Path, PathBuf};

use erp_runtime::Settings;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// What one backup holds, written beside the files as `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub erp_version: String,
    pub created_at_ms: i64,
    pub services: Vec<Entry>,
}

/// One service's database in a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub service: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// The file, relative to the backup directory.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    /// The last migration applied.
    pub migration: String,
    /// The last event written to its outbox, and how many no consumer group had confirmed.
    pub outbox_last_seq: i64,
    pub outbox_unconfirmed: i64,
    /// Events its consumers had processed (its inbox), and the newest one's time.
    pub inbox_events: i64,
    pub inbox_last_at_ms: i64,
    /// When the copy was taken (its snapshot).
    pub taken_at_ms: i64,
}

const MANIFEST: &str = "manifest.json";

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres")
}

fn sha256_of(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

async fn scalar<C: ConnectionTrait>(c: &C, sql: &str) -> anyhow::Result<i64> {
    let row = c
        .query_one_raw(Statement::from_string(c.get_database_backend(), sql))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no row from {sql}"))?;
    Ok(row.try_get_by_index::<Option<i64>>(0)?.unwrap_or(0))
}

/// The positions a manifest records, read through `c` (the backup's own snapshot).
async fn figures<C: ConnectionTrait>(c: &C, entry: &mut Entry) -> anyhow::Result<()> {
    let row = c
        .query_one_raw(Statement::from_string(
            c.get_database_backend(),
            "SELECT version FROM seaql_migrations ORDER BY version DESC LIMIT 1",
        ))
        .await?;
    entry.migration = match row {
        Some(r) => r.try_get_by_index::<String>(0)?,
        None => String::new(),
    };
    entry.outbox_last_seq = scalar(c, "SELECT MAX(seq) FROM outbox_events").await?;
    entry.outbox_unconfirmed = scalar(
        c,
        "SELECT COUNT(*) FROM outbox_events WHERE acked_at_ms IS NULL",
    )
    .await?;
    entry.inbox_events = scalar(c, "SELECT COUNT(*) FROM processed_events").await?;
    entry.inbox_last_at_ms = scalar(c, "SELECT MAX(processed_at_ms) FROM processed_events").await?;
    entry.taken_at_ms = erp_runtime::db::clock_ms(c).await?;
    Ok(())
}

fn run(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("running {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Backs up `services` (all when empty) into `out`, which must not hold a backup already.
pub async fn backup(
    settings: &Settings,
    out: &Path,
    services: &[String],
) -> anyhow::Result<Manifest> {
    if out.join(MANIFEST).exists() {
        anyhow::bail!("{} already holds a backup", out.display());
    }
    std::fs::create_dir_all(out)?;
    let mut manifest = Manifest {
        format: 1,
        erp_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at_ms: erp_runtime::time::now_ms(),
        services: Vec::new(),
    };
    for service in selected(services)? {
        let url = settings.database_url(service);
        let db = erp_runtime::db::connect_url(&url, 2, false).await?;
        let mut entry = Entry {
            service: service.to_owned(),
            backend: if is_postgres(&url) {
                "postgres"
            } else {
                "sqlite"
            }
            .to_owned(),
            file: String::new(),
            bytes: 0,
            sha256: String::new(),
            migration: String::new(),
            outbox_last_seq: 0,
            outbox_unconfirmed: 0,
            inbox_events: 0,
            inbox_last_at_ms: 0,
            taken_at_ms: 0,
        };
        if is_postgres(&url) {
            entry.file = format!("{service}.dump");
            let txn = db
                .begin_with_config(
                    Some(sea_orm::IsolationLevel::RepeatableRead),
                    Some(sea_orm::AccessMode::ReadOnly),
                )
                .await?;
            let snapshot = txn
                .query_one_raw(Statement::from_string(
                    DatabaseBackend::Postgres,
                    "SELECT pg_export_snapshot()",
                ))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no snapshot"))?
                .try_get_by_index::<String>(0)?;
            figures(&txn, &mut entry).await?;
            run(std::process::Command::new("pg_dump")
                .args(["--format=custom", "--no-owner", "--snapshot", &snapshot])
                .arg("--file")
                .arg(out.join(&entry.file))
                .arg("--dbname")
                .arg(&url))?;
            txn.commit().await?;
        } else {
            entry.file = format!("{service}.db");
            let target = out.join(&entry.file);
            let path = target.display().to_string().replace('\'', "''");
            db.execute_unprepared(&format!("VACUUM INTO '{path}'"))
                .await?;
            // Read-only: the copy stays exactly as written (its checksum is taken after).
            let copy = sea_orm::Database::connect(format!("sqlite://{}?mode=ro", target.display()))
                .await?;
            figures(&copy, &mut entry).await?;
            copy.close().await?;
        }
        db.close().await?;
        (entry.bytes, entry.sha256) = sha256_of(&out.join(&entry.file))?;
        manifest.services.push(entry);
    }
    std::fs::write(out.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(manifest)
}

fn selected(services: &[String]) -> anyhow::Result<Vec<&'static str>> {
    if services.is_empty() {
        return Ok(erp_runtime::config::SERVICES.to_vec());
    }
    services
        .iter()
        .map(|s| {
            erp_runtime::config::SERVICES
                .into_iter()
                .find(|k| k == s)
                .ok_or_else(|| anyhow::anyhow!("unknown service {s}"))
        })
        .collect()
}

/// Reads and checks a backup's manifest and files.
pub fn verify(from: &Path) -> anyhow::Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(from.join(MANIFEST))?)?;
    for e in &manifest.services {
        let (bytes, sha) = sha256_of(&from.join(&e.file))?;
        if (bytes, sha.as_str()) != (e.bytes, e.sha256.as_str()) {
            anyhow::bail!(
                "{}: {} does not match its checksum; not restoring",
                e.service,
                e.file
            );
        }
    }
    Ok(manifest)
}

/// Restores `services` (all in the backup when empty) from `from`, with the services stopped.
/// Every file is checked first; nothing is touched when one does not match.
pub async fn restore(
    settings: &Settings,
    from: &Path,
    services: &[String],
) -> anyhow::Result<Vec<Entry>> {
    let manifest = verify(from)?;
    let wanted = selected(services)?;
    let entries: Vec<Entry> = manifest
        .services
        .into_iter()
        .filter(|e| services.is_empty() || wanted.contains(&e.service.as_str()))
        .collect();
    for s in &wanted {
        if !services.is_empty() && !entries.iter().any(|e| e.service == *s) {
            anyhow::bail!("the backup has no {s}");
        }
    }
    for e in &entries {
        let url = settings.database_url(&e.service);
        if (e.backend == "postgres") != is_postgres(&url) {
            anyhow::bail!(
                "{}: the backup is {}, the configured database is not",
                e.service,
                e.backend
            );
        }
    }
    for e in &entries {
        let url = settings.database_url(&e.service);
        let file = from.join(&e.file);
        if is_postgres(&url) {
            erp_runtime::db::drop_postgres_database(&url).await?;
            erp_runtime::db::connect_url(&url, 1, true)
                .await?
                .close()
                .await?;
            run(std::process::Command::new("pg_restore")
                .args(["--no-owner", "--exit-on-error"])
                .arg("--dbname")
                .arg(&url)
                .arg(&file))?;
        } else {
            let dest = PathBuf::from(
                erp_runtime::db::sqlite_path(&url)
                    .ok_or_else(|| anyhow::anyhow!("{}: no database file", e.service))?,
            );
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // Copied beside, then renamed over: a crash leaves the old or the new database.
            let staged = dest.with_extension("restoring");
            std::fs::copy(&file, &staged)?;
            for suffix in ["-wal", "-shm"] {
                let side = PathBuf::from(format!("{}{suffix}", dest.display()));
                if side.exists() {
                    std::fs::remove_file(side)?;
                }
            }
            std::fs::rename(&staged, &dest)?;
        }
    }
    Ok(entries)
}

/// Deletes all but the newest `keep` backups directly under `root` (directories holding a
/// manifest, newest by name: their names are UTC times). Returns what it deleted.
pub fn prune(root: &Path, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut backups: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST).is_file())
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    let old: Vec<PathBuf> = backups.into_iter().take(excess).collect();
    for dir in &old {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(old)
}
