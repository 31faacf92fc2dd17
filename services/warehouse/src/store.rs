//! Tables of the warehouse service.

use erp_runtime::ApiResult;
use erp_runtime::db::DdlMigration;
use erp_runtime::entity;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sea_orm_migration::prelude::*;

use crate::domain::{FulfillmentState, TaskState};
use crate::error::WarehouseError;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            erp_runtime::db::runtime_tables(),
            Box::new(DdlMigration {
                name: "m20261128_000001_warehouse",
                up: r"
CREATE TABLE sites (
    code TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    daily_capacity BIGINT NOT NULL,
    cutoff_minute_of_day INTEGER NOT NULL,
    utc_offset_minutes INTEGER NOT NULL,
    online BOOLEAN NOT NULL,
    status_reason TEXT NOT NULL,
    cost_index INTEGER NOT NULL
);
CREATE TABLE fulfillments (
    fulfillment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    site TEXT NOT NULL REFERENCES sites (code),
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    service_level TEXT NOT NULL,
    tracking_number TEXT NOT NULL,
    saga_id TEXT NOT NULL,
    status_reason TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    shipped_at_ms BIGINT
);
CREATE INDEX fulfillments_site ON fulfillments (site, status);
CREATE INDEX fulfillments_order ON fulfillments (order_id);
CREATE TABLE pick_tasks (
    task_id TEXT PRIMARY KEY,
    fulfillment_id TEXT NOT NULL REFERENCES fulfillments (fulfillment_id),
    order_line_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    picked_quantity BIGINT NOT NULL CHECK (picked_quantity >= 0),
    status TEXT NOT NULL,
    wave_id TEXT NOT NULL
);
CREATE INDEX pick_tasks_fulfillment ON pick_tasks (fulfillment_id)",
                drops: &["pick_tasks", "fulfillments", "sites"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000002_waves",
                up: r"
CREATE TABLE waves (
    wave_id TEXT PRIMARY KEY,
    site TEXT NOT NULL REFERENCES sites (code),
    site_day TEXT NOT NULL,
    units BIGINT NOT NULL CHECK (units > 0),
    released_at_ms BIGINT NOT NULL
);
CREATE INDEX waves_site_day ON waves (site, site_day)",
                drops: &["waves"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000003_pack_exceptions_receipts",
                up: r"
ALTER TABLE fulfillments ADD COLUMN parcel TEXT NOT NULL DEFAULT '';
ALTER TABLE fulfillments ADD COLUMN packer TEXT NOT NULL DEFAULT '';
CREATE TABLE exceptions (
    exception_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES pick_tasks (task_id),
    fulfillment_id TEXT NOT NULL REFERENCES fulfillments (fulfillment_id),
    reason TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity >= 0),
    note TEXT NOT NULL,
    reporter TEXT NOT NULL,
    reported_at_ms BIGINT NOT NULL
);
CREATE INDEX exceptions_fulfillment ON exceptions (fulfillment_id);
CREATE TABLE receipts (
    receipt_id TEXT PRIMARY KEY,
    site TEXT NOT NULL REFERENCES sites (code),
    kind TEXT NOT NULL,
    document_id TEXT NOT NULL,
    lines TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);
CREATE INDEX receipts_document ON receipts (document_id)",
                drops: &["receipts", "exceptions"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000004_site_postal_code",
                up: "ALTER TABLE sites ADD COLUMN postal_code TEXT NOT NULL DEFAULT ''",
                drops: &[],
            }),
            erp_runtime::audit::migration(),
            erp_runtime::db::events_tables(),
            Box::new(DdlMigration {
                // Fulfillment lists by status (the floor's) by index.
                name: "m20261207_000001_list_indexes",
                up: "CREATE INDEX fulfillments_status ON fulfillments (status, created_at_ms)",
                drops: &[],
            }),
            erp_runtime::db::events_tables_v2(),
        ]
    }
}

entity!(site, "sites", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub code: String,
    pub name: String,
    pub region: String,
    pub daily_capacity: i64,
    pub cutoff_minute_of_day: i32,
    pub utc_offset_minutes: i32,
    pub online: bool,
    pub status_reason: String,
    pub cost_index: i32,
    pub postal_code: String,
});

entity!(fulfillment, "fulfillments", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub fulfillment_id: String,
    pub order_id: String,
    pub site: String,
    pub status: String,
    pub priority: i32,
    pub service_level: String,
    pub tracking_number: String,
    pub saga_id: String,
    pub status_reason: String,
    pub created_at_ms: i64,
    pub shipped_at_ms: Option<i64>,
    /// The packer's carton as JSON (`erp.common.v1.Parcel` fields); empty until packed.
    pub parcel: String,
    pub packer: String,
});

entity!(task, "pick_tasks", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub task_id: String,
    pub fulfillment_id: String,
    pub order_line_id: String,
    pub sku: String,
    pub quantity: i64,
    pub picked_quantity: i64,
    pub status: String,
    pub wave_id: String,
});

entity!(wave, "waves", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub wave_id: String,
    pub site: String,
    /// The site's local calendar day (YYYY-MM-DD) the wave counts against.
    pub site_day: String,
    pub units: i64,
    pub released_at_ms: i64,
});

entity!(exception, "exceptions", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub exception_id: String,
    pub task_id: String,
    pub fulfillment_id: String,
    pub reason: String,
    pub quantity: i64,
    pub note: String,
    pub reporter: String,
    pub reported_at_ms: i64,
});

entity!(receipt, "receipts", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub receipt_id: String,
    pub site: String,
    pub kind: String,
    pub document_id: String,
    /// The received lines as JSON.
    pub lines: String,
    pub recorded_at_ms: i64,
});

// ---- Queries the handlers share: each reads a set in a fixed number of queries, never one per
// row, and every read a check depends on can take the row lock.

/// A site, locked for the transaction when `lock` (PostgreSQL; SQLite has one writer).
pub async fn site<C: ConnectionTrait>(c: &C, code: &str, lock: bool) -> ApiResult<site::Model> {
    let mut q = site::Entity::find_by_id(code.to_owned());
    if lock {
        q = q.lock_exclusive();
    }
    Ok(q.one(c)
        .await?
        .ok_or_else(|| WarehouseError::SiteNotFound(code.to_owned()))?)
}

/// A fulfillment, locked when `lock`: every change of a fulfillment and its tasks holds its
/// row lock, so a shipment racing a cancellation (or two packers) cannot both pass their checks.
pub async fn fulfillment<C: ConnectionTrait>(
    c: &C,
    id: &str,
    lock: bool,
) -> ApiResult<fulfillment::Model> {
    let mut q = fulfillment::Entity::find_by_id(id.to_owned());
    if lock {
        q = q.lock_exclusive();
    }
    Ok(q.one(c)
        .await?
        .ok_or_else(|| WarehouseError::FulfillmentNotFound(id.to_owned()))?)
}

/// A pick task read under its fulfillment's row lock (taken first: every writer of a
/// fulfillment's tasks holds it, so the two last picks of a fulfillment cannot each still see
/// the other open, and a pick cannot overwrite a cancellation).
pub async fn locked_task<C: ConnectionTrait>(c: &C, task_id: &str) -> ApiResult<task::Model> {
    let missing = || WarehouseError::TaskNotFound(task_id.to_owned());
    let t = task::Entity::find_by_id(task_id.to_owned())
        .one(c)
        .await?
        .ok_or_else(missing)?;
    fulfillment(c, &t.fulfillment_id, true).await?;
    Ok(task::Entity::find_by_id(task_id.to_owned())
        .one(c)
        .await?
        .ok_or_else(missing)?)
}

/// How many ids one `IN (...)` list binds at most: SQLite refuses statements with more than
/// 32,766 parameters and PostgreSQL with more than 65,535; sets larger than this go in chunks.
pub const IN_CHUNK: usize = 1_000;

/// The tasks of `fulfillments`, one query per [`IN_CHUNK`] fulfillments, grouped in the
/// fulfillments' order (each fulfillment's tasks by task id).
pub async fn with_tasks<C: ConnectionTrait>(
    c: &C,
    fulfillments: Vec<fulfillment::Model>,
    only: Option<TaskState>,
) -> ApiResult<Vec<(fulfillment::Model, Vec<task::Model>)>> {
    let mut by_fulfillment: std::collections::HashMap<String, Vec<task::Model>> =
        std::collections::HashMap::with_capacity(fulfillments.len());
    for chunk in fulfillments.chunks(IN_CHUNK) {
        let ids: Vec<String> = chunk.iter().map(|f| f.fulfillment_id.clone()).collect();
        let mut q = task::Entity::find()
            .filter(task::Column::FulfillmentId.is_in(ids))
            .order_by_asc(task::Column::TaskId);
        if let Some(state) = only {
            q = q.filter(task::Column::Status.eq(state.as_str()));
        }
        for t in q.all(c).await? {
            by_fulfillment
                .entry(t.fulfillment_id.clone())
                .or_default()
                .push(t);
        }
    }
    Ok(fulfillments
        .into_iter()
        .map(|f| {
            let tasks = by_fulfillment.remove(&f.fulfillment_id).unwrap_or_default();
            (f, tasks)
        })
        .collect())
}

/// A fulfillment with its tasks.
pub async fn load<C: ConnectionTrait>(
    c: &C,
    id: &str,
) -> ApiResult<(fulfillment::Model, Vec<task::Model>)> {
    let f = fulfillment(c, id, false).await?;
    Ok(with_tasks(c, vec![f], None)
        .await?
        .pop()
        .ok_or_else(|| WarehouseError::FulfillmentNotFound(id.to_owned()))?)
}

/// The fulfillments of a site in `states`, oldest first, with their tasks.
pub async fn at_site<C: ConnectionTrait>(
    c: &C,
    site: &str,
    states: &[FulfillmentState],
) -> ApiResult<Vec<(fulfillment::Model, Vec<task::Model>)>> {
    let rows = fulfillment::Entity::find()
        .filter(fulfillment::Column::Site.eq(site))
        .filter(fulfillment::Column::Status.is_in(states.iter().map(|s| s.as_str())))
        .order_by_asc(fulfillment::Column::CreatedAtMs)
        .all(c)
        .await?;
    with_tasks(c, rows, None).await
}

/// The open fulfillments of a site, most urgent first, with their open tasks: what a wave
/// may release.
pub async fn open_for_wave<C: ConnectionTrait>(
    c: &C,
    site: &str,
) -> ApiResult<Vec<(fulfillment::Model, Vec<task::Model>)>> {
    let rows = fulfillment::Entity::find()
        .filter(fulfillment::Column::Site.eq(site))
        .filter(fulfillment::Column::Status.eq(FulfillmentState::Open.as_str()))
        .order_by_asc(fulfillment::Column::Priority)
        .order_by_asc(fulfillment::Column::CreatedAtMs)
        .all(c)
        .await?;
    with_tasks(c, rows, Some(TaskState::Open)).await
}

/// Releases the open tasks of `fulfillments` in wave `wave_id`, and the fulfillments with
/// them: two statements per [`IN_CHUNK`] fulfillments.
pub async fn release<C: ConnectionTrait>(
    c: &C,
    fulfillments: &[String],
    wave_id: &str,
) -> ApiResult<()> {
    for chunk in fulfillments.chunks(IN_CHUNK) {
        task::Entity::update_many()
            .col_expr(
                task::Column::Status,
                Expr::value(TaskState::Released.as_str()),
            )
            .col_expr(task::Column::WaveId, Expr::value(wave_id))
            .filter(task::Column::FulfillmentId.is_in(chunk.iter().cloned()))
            .filter(task::Column::Status.eq(TaskState::Open.as_str()))
            .exec(c)
            .await?;
    }
    set_status(c, fulfillments, FulfillmentState::Released, "").await
}

/// Moves `fulfillments` to `state` with `reason`.
pub async fn set_status<C: ConnectionTrait>(
    c: &C,
    fulfillments: &[String],
    state: FulfillmentState,
    reason: &str,
) -> ApiResult<()> {
    for chunk in fulfillments.chunks(IN_CHUNK) {
        fulfillment::Entity::update_many()
            .col_expr(fulfillment::Column::Status, Expr::value(state.as_str()))
            .col_expr(fulfillment::Column::StatusReason, Expr::value(reason))
            .filter(fulfillment::Column::FulfillmentId.is_in(chunk.iter().cloned()))
            .exec(c)
            .await?;
    }
    Ok(())
}

/// Cancels `fulfillments` and all their tasks.
pub async fn cancel<C: ConnectionTrait>(
    c: &C,
    fulfillments: &[String],
    reason: &str,
) -> ApiResult<()> {
    set_status(c, fulfillments, FulfillmentState::Cancelled, reason).await?;
    for chunk in fulfillments.chunks(IN_CHUNK) {
        task::Entity::update_many()
            .col_expr(
                task::Column::Status,
                Expr::value(TaskState::Cancelled.as_str()),
            )
            .filter(task::Column::FulfillmentId.is_in(chunk.iter().cloned()))
            .exec(c)
            .await?;
    }
    Ok(())
}

/// How many tasks of a fulfillment are still to be picked.
pub async fn unpicked_tasks<C: ConnectionTrait>(c: &C, fulfillment_id: &str) -> ApiResult<u64> {
    use sea_orm::PaginatorTrait;
    Ok(task::Entity::find()
        .filter(task::Column::FulfillmentId.eq(fulfillment_id))
        .filter(
            task::Column::Status.is_in([TaskState::Open.as_str(), TaskState::Released.as_str()]),
        )
        .count(c)
        .await?)
}

/// Units released at each of `sites` on its own current day, in one query.
pub async fn released_today<C: ConnectionTrait>(
    c: &C,
    sites: &[site::Model],
    now_ms: i64,
) -> ApiResult<Vec<i64>> {
    if sites.is_empty() {
        return Ok(Vec::new());
    }
    let days: Vec<(String, String)> = sites
        .iter()
        .map(|s| {
            (
                s.code.clone(),
                crate::domain::site_day(now_ms, s.utc_offset_minutes),
            )
        })
        .collect();
    let waves = wave::Entity::find()
        .filter(wave::Column::Site.is_in(days.iter().map(|(s, _)| s.clone())))
        .filter(wave::Column::SiteDay.is_in(days.iter().map(|(_, d)| d.clone())))
        .all(c)
        .await?;
    Ok(days
        .iter()
        .map(|(site, day)| {
            waves
                .iter()
                .filter(|w| &w.site == site && &w.site_day == day)
                .map(|w| w.units)
                .fold(0, i64::saturating_add)
        })
        .collect())
}
