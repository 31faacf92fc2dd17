//! The audit trail every service keeps of its governed state changes: appended in the same
//! transaction as the change, hash-chained per service (each record's hash covers the previous
//! record's hash and every field of its own), append-only in the database (triggers refuse
//! UPDATE and DELETE), readable and verifiable through `erp.audit.v1.AuditService`.

use sea_orm::sea_query::Value;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};
use sha2::{Digest as _, Sha256};

use erp_proto::audit::{self as pb, audit_service_server::AuditServiceServer};

use crate::auth::Caller;

/// The hash the first record links to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One governed change, as a handler describes it.
pub struct Change<'a> {
    pub caller: &'a Caller,
    /// `payment:pay-1`, `purchase_order:po-9`.
    pub target: String,
    pub reason: &'a str,
    /// The target's state before (None for a creation) and after the change.
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// SHA-256 (hex) of a value's JSON (serde_json sorts object keys, so equal values digest
/// equally).
pub fn digest(value: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(value.to_string().as_bytes()))
}

struct Fields<'a> {
    seq: i64,
    recorded_at_ms: i64,
    principal: &'a str,
    method: &'a str,
    target: &'a str,
    reason: &'a str,
    request_id: &'a str,
    before_digest: &'a str,
    after_digest: &'a str,
    prev_hash: &'a str,
}

impl Fields<'_> {
    /// SHA-256 over the previous hash and every field, as a JSON array (unambiguous framing).
    fn hash(&self) -> String {
        let framed = serde_json::json!([
            self.prev_hash,
            self.seq,
            self.recorded_at_ms,
            self.principal,
            self.method,
            self.target,
            self.reason,
            self.request_id,
            self.before_digest,
            self.after_digest,
        ]);
        hex::encode(Sha256::digest(framed.to_string().as_bytes()))
    }
}

/// Appends one record inside the caller's transaction `txn`. The chain's head row is locked
/// until that transaction ends, so records of concurrent transactions chain in commit order;
/// take it last (after the business rows) so that lock order stays the same everywhere.
pub async fn record<C: ConnectionTrait>(txn: &C, change: Change<'_>) -> Result<i64, DbErr> {
    let backend = txn.get_database_backend();
    let lock = if backend == DatabaseBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let head = txn
        .query_one_raw(Statement::from_string(
            backend,
            format!(
                "SELECT seq, hash, {} AS now_ms FROM audit_head WHERE id = 1{lock}",
                crate::db::clock_ms_sql(backend)
            ),
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("audit_head row missing".into()))?;
    let last: i64 = head.try_get("", "seq")?;
    let prev_hash: String = head.try_get("", "hash")?;
    let now_ms: i64 = head.try_get("", "now_ms")?;
    let before_digest = change.before.as_ref().map(digest).unwrap_or_default();
    let after_digest = change.after.as_ref().map(digest).unwrap_or_default();
    let reason: String = change.reason.chars().take(500).collect();
    let fields = Fields {
        seq: last + 1,
        recorded_at_ms: now_ms,
        principal: &change.caller.subject,
        method: &change.caller.method,
        target: &change.target,
        reason: &reason,
        request_id: &change.caller.request_id,
        before_digest: &before_digest,
        after_digest: &after_digest,
        prev_hash: &prev_hash,
    };
    let hash = fields.hash();
    let p = |n: usize| {
        if backend == DatabaseBackend::Postgres {
            format!("${n}")
        } else {
            "?".to_owned()
        }
    };
    let insert = format!(
        "INSERT INTO audit_log (seq, recorded_at_ms, principal, method, target, reason, request_id, \
         before_digest, after_digest, prev_hash, hash) VALUES ({})",
        (1..=11).map(p).collect::<Vec<_>>().join(", ")
    );
    let values: Vec<Value> = vec![
        fields.seq.into(),
        fields.recorded_at_ms.into(),
        fields.principal.into(),
        fields.method.into(),
        fields.target.into(),
        fields.reason.into(),
        fields.request_id.into(),
        fields.before_digest.into(),
        fields.after_digest.into(),
        fields.prev_hash.into(),
        hash.clone().into(),
    ];
    txn.execute_raw(Statement::from_sql_and_values(backend, insert, values))
        .await?;
    let advance = format!(
        "UPDATE audit_head SET seq = {}, hash = {} WHERE id = 1 AND seq = {}",
        p(1),
        p(2),
        p(3)
    );
    let moved = txn
        .execute_raw(Statement::from_sql_and_values(
            backend,
            advance,
            [fields.seq.into(), hash.into(), last.into()],
        ))
        .await?;
    if moved.rows_affected() != 1 {
        return Err(DbErr::Custom("audit chain head moved concurrently".into()));
    }
    Ok(fields.seq)
}

/// Replaces the placeholder `audit_log` of the runtime tables with the chained one, adds its
/// head row and the triggers that make it append-only. Every service's migrator lists it.
pub struct AuditMigration;

impl MigrationName for AuditMigration {
    fn name(&self) -> &str {
        "m20261130_000000_audit_chain"
    }
}

const AUDIT_TABLES: &str = "
DROP TABLE IF EXISTS audit_log;
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    recorded_at_ms BIGINT NOT NULL,
    principal TEXT NOT NULL,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    request_id TEXT NOT NULL,
    before_digest TEXT NOT NULL,
    after_digest TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_target ON audit_log (target, seq);
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000')";

#[async_trait::async_trait]
impl MigrationTrait for AuditMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        for statement in AUDIT_TABLES.split(';') {
            if !statement.trim().is_empty() {
                conn.execute_unprepared(statement).await?;
            }
        }
        let triggers: Vec<String> = match conn.get_database_backend() {
            DatabaseBackend::Postgres => vec![
                "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
                    .into(),
                "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log \
                 FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
                    .into(),
            ],
            _ => ["UPDATE", "DELETE"]
                .iter()
                .map(|op| {
                    format!(
                        "CREATE TRIGGER audit_log_no_{} BEFORE {op} ON audit_log \
                         BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
                        op.to_lowercase()
                    )
                })
                .collect(),
        };
        for t in triggers {
            conn.execute_unprepared(&t).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        conn.execute_unprepared("DROP TABLE IF EXISTS audit_head")
            .await?;
        conn.execute_unprepared("DROP TABLE IF EXISTS audit_log")
            .await?;
        if conn.get_database_backend() == DatabaseBackend::Postgres {
            conn.execute_unprepared("DROP FUNCTION IF EXISTS audit_log_append_only")
                .await?;
        }
        Ok(())
    }
}

/// The migration, boxed for a migrator's list.
pub fn migration() -> Box<dyn MigrationTrait> {
    Box::new(AuditMigration)
}

fn event_of(row: &sea_orm::QueryResult) -> Result<pb::AuditEvent, DbErr> {
    Ok(pb::AuditEvent {
        seq: row.try_get("", "seq")?,
        recorded_at: Some(crate::time::to_timestamp(
            row.try_get("", "recorded_at_ms")?,
        )),
        principal: row.try_get("", "principal")?,
        method: row.try_get("", "method")?,
        target: row.try_get("", "target")?,
        reason: row.try_get("", "reason")?,
        request_id: row.try_get("", "request_id")?,
        before_digest: row.try_get("", "before_digest")?,
        after_digest: row.try_get("", "after_digest")?,
        prev_hash: row.try_get("", "prev_hash")?,
        hash: row.try_get("", "hash")?,
    })
}

/// Records after `after_seq`, at most `limit`, optionally filtered by column equality.
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    after_seq: i64,
    limit: u64,
    filters: &[(&str, &str)],
) -> Result<Vec<pb::AuditEvent>, DbErr> {
    let backend = conn.get_database_backend();
    let mut values: Vec<Value> = vec![after_seq.into()];
    let mut sql = String::from("SELECT * FROM audit_log WHERE seq > ");
    sql.push_str(if backend == DatabaseBackend::Postgres {
        "$1"
    } else {
        "?"
    });
    for (column, value) in filters {
        if value.is_empty() {
            continue;
        }
        values.push((*value).into());
        if backend == DatabaseBackend::Postgres {
            sql.push_str(&format!(" AND {column} = ${}", values.len()));
        } else {
            sql.push_str(&format!(" AND {column} = ?"));
        }
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT {limit}"));
    conn.query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?
        .iter()
        .map(event_of)
        .collect()
}

/// Recomputes the whole chain.
pub async fn verify<C: ConnectionTrait>(conn: &C) -> Result<pb::VerifyAuditChainResponse, DbErr> {
    let mut expected_prev = GENESIS.to_owned();
    let mut expected_seq = 1;
    let mut records = 0;
    loop {
        let page = list(conn, expected_seq - 1, 1000, &[]).await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            records += 1;
            let problem = if e.seq != expected_seq {
                Some(format!("record {expected_seq} is missing"))
            } else if e.prev_hash != expected_prev {
                Some("does not link to the previous record's hash".to_owned())
            } else {
                let recorded_at_ms = e
                    .recorded_at
                    .as_ref()
                    .map_or(0, crate::time::from_timestamp);
                let fields = Fields {
                    seq: e.seq,
                    recorded_at_ms,
                    principal: &e.principal,
                    method: &e.method,
                    target: &e.target,
                    reason: &e.reason,
                    request_id: &e.request_id,
                    before_digest: &e.before_digest,
                    after_digest: &e.after_digest,
                    prev_hash: &e.prev_hash,
                };
                (fields.hash() != e.hash).then(|| "its content does not match its hash".to_owned())
            };
            if let Some(problem) = problem {
                return Ok(pb::VerifyAuditChainResponse {
                    intact: false,
                    records,
                    first_broken_seq: expected_seq,
                    problem,
                    head_hash: String::new(),
                });
            }
            expected_prev = e.hash.clone();
            expected_seq += 1;
        }
    }
    // The head must point at the last record: a truncated tail shows here.
    let backend = conn.get_database_backend();
    let head = conn
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT seq, hash FROM audit_head WHERE id = 1",
        ))
        .await?;
    let (head_seq, head_hash): (i64, String) = match head {
        Some(row) => (row.try_get("", "seq")?, row.try_get("", "hash")?),
        None => (-1, String::new()),
    };
    if head_seq != expected_seq - 1 || head_hash != expected_prev {
        return Ok(pb::VerifyAuditChainResponse {
            intact: false,
            records,
            first_broken_seq: expected_seq,
            problem: format!(
                "the chain ends at {} but its head says {head_seq}",
                expected_seq - 1
            ),
            head_hash,
        });
    }
    Ok(pb::VerifyAuditChainResponse {
        intact: true,
        records,
        first_broken_seq: 0,
        problem: String::new(),
        head_hash,
    })
}

/// `erp.audit.v1.AuditService` over one service's database.
pub struct AuditApi {
    db: sea_orm::DatabaseConnection,
}

impl AuditApi {
    pub fn server(db: sea_orm::DatabaseConnection) -> AuditServiceServer<Self> {
        AuditServiceServer::new(Self { db })
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: tonic::Request<pb::ListAuditEventsRequest>,
    ) -> Result<tonic::Response<pb::ListAuditEventsResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut v = crate::validate::Violations::new();
        if req.after_seq < 0 {
            v.add("after_seq", "must not be negative");
        }
        if !(0..=1000).contains(&req.page_size) {
            v.add("page_size", "must be 0..=1000");
        }
        v.optional_text("method", &req.method, 200);
        v.optional_text("target", &req.target, 200);
        v.optional_text("principal", &req.principal, 200);
        v.finish()?;
        let limit = if req.page_size == 0 {
            100
        } else {
            u64::try_from(req.page_size).unwrap_or(100)
        };
        let events = list(
            &self.db,
            req.after_seq,
            limit,
            &[
                ("method", &req.method),
                ("target", &req.target),
                ("principal", &req.principal),
            ],
        )
        .await
        .map_err(crate::ApiError::from)?;
        let next_after_seq = if events.len() as u64 == limit {
            events.last().map_or(0, |e| e.seq)
        } else {
            0
        };
        Ok(tonic::Response::new(pb::ListAuditEventsResponse {
            events,
            next_after_seq,
        }))
    }

    async fn verify_audit_chain(
        &self,
        _request: tonic::Request<pb::VerifyAuditChainRequest>,
    ) -> Result<tonic::Response<pb::VerifyAuditChainResponse>, tonic::Status> {
        let answer = verify(&self.db).await.map_err(crate::ApiError::from)?;
        Ok(tonic::Response::new(answer))
    }
}
