//! Saga instances and the step log.

use erp_runtime::bus::Event;
use erp_runtime::db::DdlMigration;
use erp_runtime::time::now_ms;
use erp_runtime::{ApiError, ApiResult};
use erp_runtime::{failpoint, outbox};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};
use sea_orm_migration::prelude::*;

use crate::definition::Signal;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            erp_runtime::db::runtime_tables(),
            Box::new(DdlMigration {
                name: "m20261128_000001_orchestrator",
                up: r"
CREATE TABLE sagas (
    saga_id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    definition_version INTEGER NOT NULL,
    order_id TEXT NOT NULL,
    status TEXT NOT NULL,
    current_step TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    traceparent TEXT NOT NULL,
    lease_owner TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (definition, order_id)
);
CREATE INDEX sagas_due ON sagas (status, next_attempt_at_ms);
CREATE TABLE saga_steps (
    seq {SERIAL},
    saga_id TEXT NOT NULL REFERENCES sagas (saga_id),
    step TEXT NOT NULL,
    direction TEXT NOT NULL,
    outcome TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    detail TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);
CREATE INDEX saga_steps_saga ON saga_steps (saga_id, seq)",
                drops: &["saga_steps", "sagas"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000002_saga_engine",
                up: r"
ALTER TABLE sagas ADD COLUMN data TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sagas ADD COLUMN step_index INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sagas ADD COLUMN resume_status TEXT NOT NULL DEFAULT '';
ALTER TABLE sagas ADD COLUMN parked_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE sagas ADD COLUMN suggested_action TEXT NOT NULL DEFAULT '';
CREATE TABLE saga_signals (
    seq {SERIAL},
    saga_id TEXT NOT NULL REFERENCES sagas (saga_id),
    signal TEXT NOT NULL,
    payload TEXT NOT NULL,
    idem_key TEXT NOT NULL UNIQUE,
    consumed BOOLEAN NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);
CREATE INDEX saga_signals_saga ON saga_signals (saga_id, signal)",
                drops: &["saga_signals"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000003_waiting_skus",
                up: "ALTER TABLE sagas ADD COLUMN waiting_skus TEXT NOT NULL DEFAULT ''",
                drops: &[],
            }),
            Box::new(DdlMigration {
                // Sagas whose driver died are found by their expired lease, not their due time.
                name: "m20261129_000004_saga_leases",
                up: "CREATE INDEX sagas_lease ON sagas (status, lease_until_ms)",
                drops: &[],
            }),
            Box::new(DdlMigration {
                // Every poll looks for held sagas and unread signals: both by index, so that
                // its cost does not grow with the sagas waiting or the signals ever received.
                name: "m20261207_000005_poll_indexes",
                up: "CREATE INDEX sagas_owner ON sagas (lease_owner);
                     CREATE INDEX saga_signals_unread ON saga_signals (consumed, seq)",
                drops: &[],
            }),
            erp_runtime::audit::migration(),
            Box::new(DdlMigration {
                // GetSaga and WatchSaga by order read the saga by order_id alone, which the
                // (definition, order_id) key cannot serve: without this, each was a scan of
                // every saga (10,000 watched orders: 10,000 scans of a growing table).
                name: "m20261207_000006_sagas_by_order",
                up: "CREATE INDEX sagas_order ON sagas (order_id)",
                drops: &[],
            }),
            erp_runtime::db::events_tables(),
            Box::new(DdlMigration {
                // ListSagas pages (by status or all) in creation order by index.
                name: "m20261207_000007_list_indexes",
                up: "CREATE INDEX sagas_status_created ON sagas (status, created_at_ms);
                     CREATE INDEX sagas_created ON sagas (created_at_ms)",
                drops: &[],
            }),
            Box::new(DdlMigration {
                // Saves fenced by version as well as by lease (see `saga::Model::version`).
                name: "m20261208_000008_saga_version",
                up: "ALTER TABLE sagas ADD COLUMN version BIGINT NOT NULL DEFAULT 0",
                drops: &[],
            }),
            erp_runtime::db::events_tables_v2(),
        ]
    }
}

/// Where a saga is in its life. Stored as its lower-case name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, sea_orm::EnumIter, sea_orm::DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum SagaState {
    /// Created with its order, not yet started.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Moving forward: a step is due.
    #[sea_orm(string_value = "running")]
    Running,
    /// Forward, blocked on a signal (shipment, stock) or its deadline.
    #[sea_orm(string_value = "waiting")]
    Waiting,
    /// Undoing its steps in reverse order.
    #[sea_orm(string_value = "compensating")]
    Compensating,
    #[sea_orm(string_value = "completed")]
    Completed,
    #[sea_orm(string_value = "compensated")]
    Compensated,
    /// Stopped by a failure an operator must look at; `RetrySaga` resumes it.
    #[sea_orm(string_value = "parked")]
    Parked,
    /// Stopped by an operator; `ResumeSaga` resumes it.
    #[sea_orm(string_value = "paused")]
    Paused,
}

impl SagaState {
    /// States the engine drives on its own.
    pub const ACTIVE: [Self; 4] = [
        Self::Pending,
        Self::Running,
        Self::Waiting,
        Self::Compensating,
    ];

    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }

    /// Ended for good: nothing more will happen to the saga.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }

    /// Stopped until an operator acts.
    pub fn is_stopped(self) -> bool {
        matches!(self, Self::Parked | Self::Paused)
    }

    /// Pending, running or waiting: still moving forward.
    pub fn is_forward(self) -> bool {
        matches!(self, Self::Pending | Self::Running | Self::Waiting)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Parked => "parked",
            Self::Paused => "paused",
        }
    }

    /// The state named `name` (as stored in `resume_status`); `None` for the empty string.
    pub fn parse(name: &str) -> Option<Self> {
        <Self as sea_orm::Iterable>::iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for SagaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub mod saga {
    use sea_orm::entity::prelude::*;

    pub use super::SagaState;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sagas")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub saga_id: String,
        pub definition: String,
        pub definition_version: i32,
        pub order_id: String,
        pub status: SagaState,
        pub current_step: String,
        pub attempts: i32,
        pub last_error: String,
        pub traceparent: String,
        pub lease_owner: String,
        pub lease_until_ms: i64,
        pub next_attempt_at_ms: i64,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        /// The saga's context (what earlier steps learned), JSON.
        pub data: String,
        /// Forward: the next step to run. Compensating: the next step to undo.
        pub step_index: i32,
        /// The status to go back to on resume (paused) or retry (parked), by name; empty
        /// when none (see `Model::resume_state`).
        pub resume_status: String,
        pub parked_reason: String,
        pub suggested_action: String,
        /// While backordered: the SKUs the order still needs, as `|A|B|`, so that stock
        /// events wake only the sagas they concern (empty: wake on any).
        pub waiting_skus: String,
        /// Bumped by every change of the saga's state: a save applies only to the version
        /// its driver read, so a write computed from an older state (a retried commit that
        /// had landed, an operator's or a wake's change meanwhile) changes nothing.
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        /// The state a parked or paused saga goes back to.
        pub fn resume_state(&self) -> Option<SagaState> {
            SagaState::parse(&self.resume_status)
        }
    }
}

erp_runtime::entity!(signal, "saga_signals", {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub saga_id: String,
    pub signal: String,
    pub payload: String,
    pub idem_key: String,
    pub consumed: bool,
    pub recorded_at_ms: i64,
});

pub mod step {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "saga_steps")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        pub saga_id: String,
        pub step: String,
        pub direction: String,
        pub outcome: String,
        pub attempt: i32,
        pub detail: String,
        pub recorded_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The database's clock (epoch ms) as an SQL expression: leases and due times are judged by it.
pub fn clock<C: ConnectionTrait>(c: &C) -> sea_orm::sea_query::Expr {
    sea_orm::sea_query::Expr::cust(erp_runtime::db::clock_ms_sql(c.get_database_backend()))
}

/// `version + 1`: what every write that changes a saga's state sets (see
/// [`saga::Model::version`]).
pub fn next_version() -> sea_orm::sea_query::Expr {
    sea_orm::sea_query::ExprTrait::add(sea_orm::sea_query::Expr::col(saga::Column::Version), 1)
}

/// Nobody alive holds the saga's lease (it expired), or `replica` holds it.
pub fn lease_free<C: ConnectionTrait>(c: &C, replica: &str) -> sea_orm::Condition {
    sea_orm::Condition::any()
        .add(sea_orm::sea_query::ExprTrait::lt(
            sea_orm::sea_query::Expr::col(saga::Column::LeaseUntilMs),
            clock(c),
        ))
        .add(saga::Column::LeaseOwner.eq(replica))
}

/// Sagas `replica` drives now because they are due: active, free to take, and their time has
/// come. A range of the `(status, next_attempt_at_ms)` index: the thousands of sagas waiting
/// (for stock, for the floor) are not read at every poll.
pub fn due_condition<C: ConnectionTrait>(c: &C, replica: &str) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(saga::Column::Status.is_in(SagaState::ACTIVE))
        .add(lease_free(c, replica))
        .add(sea_orm::sea_query::ExprTrait::lte(
            sea_orm::sea_query::Expr::col(saga::Column::NextAttemptAtMs),
            clock(c),
        ))
}

/// Sagas left behind by a driver whose lease expired (it died between two commits; what it
/// waited for is irrelevant: the lease, not a wait's deadline, is what holds a running saga),
/// or held by `replica` and not running. A range of the `lease_owner` index (`> ''` is "held by
/// someone", in a form both engines can seek): only the sagas being driven are read. Any
/// status: the caller keeps the active ones.
pub fn orphaned_condition<C: ConnectionTrait>(c: &C, replica: &str) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(saga::Column::LeaseOwner.gt(""))
        .add(lease_free(c, replica))
}

/// The ids of the sagas `replica` should drive now: at most `limit` due ones, earliest first,
/// then the orphaned active ones (see [`due_condition`], [`orphaned_condition`]).
pub async fn due_sagas<C: ConnectionTrait>(
    c: &C,
    replica: &str,
    limit: u64,
) -> Result<Vec<String>, sea_orm::DbErr> {
    let mut ids: Vec<String> = saga::Entity::find()
        .select_only()
        .column(saga::Column::SagaId)
        .filter(due_condition(c, replica))
        .order_by_asc(saga::Column::NextAttemptAtMs)
        .limit(limit)
        .into_tuple::<String>()
        .all(c)
        .await?;
    let orphaned: Vec<(String, SagaState)> = saga::Entity::find()
        .select_only()
        .columns([saga::Column::SagaId, saga::Column::Status])
        .filter(orphaned_condition(c, replica))
        .limit(limit)
        .into_tuple()
        .all(c)
        .await?;
    for (id, status) in orphaned {
        if status.is_active() && !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Active sagas that nobody drives: their driver's lease expired (it died), or they have been
/// due for more than `grace_ms` and no replica took them.
pub fn stalled_condition<C: ConnectionTrait>(c: &C, grace_ms: i64) -> sea_orm::Condition {
    use sea_orm::sea_query::{Expr, ExprTrait};
    let late = Expr::cust(format!(
        "({} - {grace_ms})",
        erp_runtime::db::clock_ms_sql(c.get_database_backend())
    ));
    sea_orm::Condition::all()
        .add(saga::Column::Status.is_in(SagaState::ACTIVE))
        .add(Expr::col(saga::Column::LeaseUntilMs).lt(clock(c)))
        .add(
            sea_orm::Condition::any()
                .add(saga::Column::LeaseOwner.ne(""))
                .add(Expr::col(saga::Column::NextAttemptAtMs).lte(late)),
        )
}

/// Creates the fulfillment saga of `order_id` unless it exists. Returns it and whether it is new.
pub async fn start_fulfillment<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
    traceparent: &str,
    detail: &str,
) -> ApiResult<(saga::Model, bool)> {
    start_saga(c, "fulfillment", order_id, traceparent, detail).await
}

/// Creates the saga of `definition` (at its latest version) for `key` unless it exists.
/// Returns it and whether it is new.
pub async fn start_saga<C: ConnectionTrait>(
    c: &C,
    definition: &str,
    key: &str,
    traceparent: &str,
    detail: &str,
) -> ApiResult<(saga::Model, bool)> {
    let Some((version, first)) = crate::definition::latest(definition) else {
        return Err(ApiError::invalid(
            "definition",
            format!("{definition:?} is not a saga definition this build knows"),
        ));
    };
    if let Some(existing) = saga::Entity::find()
        .filter(saga::Column::Definition.eq(definition))
        .filter(saga::Column::OrderId.eq(key))
        .one(c)
        .await?
    {
        return Ok((existing, false));
    }
    let now = now_ms();
    let saga_id = uuid::Uuid::now_v7().to_string();
    let model = saga::ActiveModel {
        saga_id: Set(saga_id.clone()),
        definition: Set(definition.to_owned()),
        definition_version: Set(version),
        order_id: Set(key.to_owned()),
        status: Set(SagaState::Pending),
        current_step: Set(first.into()),
        attempts: Set(0),
        last_error: Set(String::new()),
        traceparent: Set(traceparent.to_owned()),
        lease_owner: Set(String::new()),
        lease_until_ms: Set(0),
        next_attempt_at_ms: Set(now),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
        data: Set("{}".into()),
        step_index: Set(0),
        resume_status: Set(String::new()),
        parked_reason: Set(String::new()),
        suggested_action: Set(String::new()),
        waiting_skus: Set(String::new()),
        version: Set(0),
    }
    .insert(c)
    .await?;
    step::ActiveModel {
        saga_id: Set(saga_id),
        step: Set(if definition == "fulfillment" {
            "accept_order".into()
        } else {
            "start".into()
        }),
        direction: Set("forward".into()),
        outcome: Set("succeeded".into()),
        attempt: Set(1),
        detail: Set(detail.to_owned()),
        recorded_at_ms: Set(now),
        ..Default::default()
    }
    .insert(c)
    .await?;
    Ok((model, true))
}

/// Consumer of `order.accepted`: one saga per order, whatever the redeliveries.
pub async fn on_order_accepted(
    db: &sea_orm::DatabaseConnection,
    event: &Event,
    wake: &tokio::sync::Notify,
) -> anyhow::Result<()> {
    let order_id = event
        .payload
        .get("order_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow::anyhow!("order.accepted {} has no order_id", event.id))?
        .to_owned();
    let txn = db.begin().await?;
    if !outbox::mark_processed(&txn, "orchestrator", &event.id)
        .await
        .map_err(api_to_anyhow)?
    {
        return Ok(());
    }
    let (saga, created) = start_fulfillment(
        &txn,
        &order_id,
        &event.traceparent,
        &format!("from event {}", event.id),
    )
    .await
    .map_err(api_to_anyhow)?;
    failpoint::hit(&["consumer", "order_accepted", "before_commit"]).await;
    txn.commit().await?;
    failpoint::hit(&["consumer", "order_accepted", "after_commit"]).await;
    wake.notify_one();
    if created {
        tracing::info!(order_id = %order_id, saga_id = %saga.saga_id, "fulfillment saga created");
    }
    Ok(())
}

fn api_to_anyhow(e: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Records a signal for a saga; false when this idempotency key was recorded before.
pub async fn insert_signal<C: ConnectionTrait>(
    c: &C,
    saga_id: &str,
    name: &str,
    payload: &str,
    idem_key: &str,
) -> ApiResult<bool> {
    if signal::Entity::find()
        .filter(signal::Column::IdemKey.eq(idem_key))
        .one(c)
        .await?
        .is_some()
    {
        return Ok(false);
    }
    signal::ActiveModel {
        saga_id: Set(saga_id.to_owned()),
        signal: Set(name.to_owned()),
        payload: Set(payload.to_owned()),
        idem_key: Set(idem_key.to_owned()),
        consumed: Set(false),
        recorded_at_ms: Set(now_ms()),
        ..Default::default()
    }
    .insert(c)
    .await?;
    Ok(true)
}

/// Consumer of `inventory.stock_changed` and `order.routing_rules_changed`: stock that became
/// available (a receipt, a return, a transfer in, a released reservation) or new routing rules
/// wake the sagas waiting for stock now rather than at their next recheck. Waking twice is
/// harmless, so this consumer keeps no inbox.
pub async fn wake_waiting_for_stock(
    db: &sea_orm::DatabaseConnection,
    event: &Event,
    wake: &tokio::sync::Notify,
) -> anyhow::Result<()> {
    let p = &event.payload;
    if event.topic == "order.routing_rules_changed" {
        // The waiting sagas must ask the new rules even though stock did not change; so must
        // those routing at this moment (they may have read the old rules).
        let waiting = saga::Entity::find()
            .filter(saga::Column::Status.is_in([SagaState::Waiting, SagaState::Running]))
            .filter(saga::Column::CurrentStep.eq("route"))
            .all(db)
            .await?;
        let txn = db.begin().await?;
        for s in &waiting {
            insert_signal(
                &txn,
                &s.saga_id,
                Signal::Replan.as_str(),
                &format!("routing rules v{} stored", p["version"]),
                &format!("event:{}:{}", event.id, s.saga_id),
            )
            .await
            .map_err(api_to_anyhow)?;
        }
        txn.commit().await?;
        wake.notify_one();
        return Ok(());
    }
    let more = p["available"].as_i64().unwrap_or(0) > 0
        && (p["on_hand_delta"].as_i64().unwrap_or(0) > 0
            || matches!(
                p["reason"].as_str(),
                Some("release" | "transfer_in" | "return")
            ));
    if !more {
        return Ok(());
    }
    let sku = p["sku"].as_str().unwrap_or_default();
    // Wake as many sagas as units became available, oldest first (each needs at least one
    // unit): 500 units back in stock do not send 9,000 backordered orders racing for them.
    // Those left asleep route at their recheck, or when the next units arrive.
    let units = p["available"].as_i64().unwrap_or(0).clamp(1, WAKE_AT_MOST);
    let waiting = || {
        saga::Entity::find()
            .select_only()
            .column(saga::Column::SagaId)
            .filter(saga::Column::Status.eq(SagaState::Waiting))
            .filter(saga::Column::CurrentStep.eq("route"))
            .filter(sea_orm::sea_query::ExprTrait::gt(
                sea_orm::sea_query::Expr::col(saga::Column::NextAttemptAtMs),
                clock(db),
            ))
            .filter(
                sea_orm::Condition::any()
                    .add(saga::Column::WaitingSkus.eq(""))
                    .add(saga::Column::WaitingSkus.like(format!("%|{sku}|%"))),
            )
    };
    let mut oldest: Vec<String> = waiting()
        .order_by_asc(saga::Column::CreatedAtMs)
        .limit(units as u64)
        .into_tuple()
        .all(db)
        .await?;
    // A backordered saga routing again at this moment may have read the stock before these
    // units arrived: it is made due again too, so that its "recheck later" does not stand.
    let routing: Vec<String> = saga::Entity::find()
        .select_only()
        .column(saga::Column::SagaId)
        .filter(saga::Column::Status.eq(SagaState::Running))
        .filter(saga::Column::CurrentStep.eq("route"))
        .filter(saga::Column::WaitingSkus.like(format!("%|{sku}|%")))
        .limit(WAKE_AT_MOST as u64)
        .into_tuple()
        .all(db)
        .await?;
    oldest.extend(routing);
    if oldest.is_empty() {
        return Ok(());
    }
    let woken = wake_now(db, oldest).await?;
    if woken > 0 {
        failpoint::hit(&["consumer", "stock_changed", "after_commit"]).await;
        wake.notify_one();
    }
    Ok(())
}

/// The most sagas one stock event wakes.
const WAKE_AT_MOST: i64 = 1_000;

/// Makes the sagas `ids` due now (those still waiting to route, or routing). Returns how many.
async fn wake_now<C: sea_orm::ConnectionTrait>(
    c: &C,
    ids: Vec<String>,
) -> Result<u64, sea_orm::DbErr> {
    // The version moves too: a run of one of these sagas in progress (it may have found no
    // stock a moment ago) cannot then save its "recheck later" over this wake; its save is
    // refused and the next run routes with the new stock.
    Ok(saga::Entity::update_many()
        .col_expr(saga::Column::NextAttemptAtMs, clock(c))
        // Routing afresh: a run whose save this wake refuses had counted its attempt already.
        .col_expr(saga::Column::Attempts, sea_orm::sea_query::Expr::value(0))
        .col_expr(saga::Column::Version, next_version())
        .filter(saga::Column::SagaId.is_in(ids))
        .filter(saga::Column::Status.is_in([SagaState::Waiting, SagaState::Running]))
        .filter(saga::Column::CurrentStep.eq("route"))
        .exec(c)
        .await?
        .rows_affected)
}

/// The fulfillment saga of an order, if it has one yet.
async fn fulfillment_saga<C: sea_orm::ConnectionTrait>(
    c: &C,
    order_id: &str,
) -> Result<Option<saga::Model>, sea_orm::DbErr> {
    saga::Entity::find()
        .filter(saga::Column::Definition.eq("fulfillment"))
        .filter(saga::Column::OrderId.eq(order_id))
        .one(c)
        .await
}

/// Consumer of `warehouse.site_status_changed`: a site gone offline signals the sagas of the
/// fulfillments it had not picked yet, which re-route them (before their pivot).
pub async fn on_site_status(
    db: &sea_orm::DatabaseConnection,
    event: &Event,
    wake: &tokio::sync::Notify,
) -> anyhow::Result<()> {
    let p = &event.payload;
    if p["online"].as_bool() == Some(true) {
        // A site back online may ship what nothing else could: the backordered sagas route
        // again now (the oldest first, as many as one wake takes; the rest at their recheck).
        let waiting: Vec<String> = saga::Entity::find()
            .select_only()
            .column(saga::Column::SagaId)
            .filter(saga::Column::Status.eq(SagaState::Waiting))
            .filter(saga::Column::CurrentStep.eq("route"))
            .order_by_asc(saga::Column::CreatedAtMs)
            .limit(WAKE_AT_MOST as u64)
            .into_tuple()
            .all(db)
            .await?;
        if !waiting.is_empty() && wake_now(db, waiting).await? > 0 {
            wake.notify_one();
        }
        return Ok(());
    }
    if p["online"].as_bool() != Some(false) {
        return Ok(());
    }
    let txn = db.begin().await?;
    if !outbox::mark_processed(&txn, "orchestrator", &event.id)
        .await
        .map_err(api_to_anyhow)?
    {
        return Ok(());
    }
    let site = p["site"].as_str().unwrap_or_default();
    for a in p["affected"].as_array().into_iter().flatten() {
        let order_id = a["order_id"].as_str().unwrap_or_default();
        let Some(saga) = fulfillment_saga(&txn, order_id).await? else {
            continue;
        };
        insert_signal(
            &txn,
            &saga.saga_id,
            Signal::SiteOffline.as_str(),
            &serde_json::json!({ "site": site, "fulfillment_id": a["fulfillment_id"] }).to_string(),
            &format!("event:{}:{}", event.id, saga.saga_id),
        )
        .await
        .map_err(api_to_anyhow)?;
    }
    failpoint::hit(&["consumer", "site_status", "before_commit"]).await;
    txn.commit().await?;
    failpoint::hit(&["consumer", "site_status", "after_commit"]).await;
    wake.notify_one();
    Ok(())
}

/// Consumer of `warehouse.packed`, `warehouse.exception`, `warehouse.shipped` and
/// `order.cancelled`: turns the fact into a saga signal.
pub async fn on_participant_event(
    db: &sea_orm::DatabaseConnection,
    event: &Event,
    wake: &tokio::sync::Notify,
) -> anyhow::Result<()> {
    let order_id = event
        .payload
        .get("order_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let txn = db.begin().await?;
    if !outbox::mark_processed(&txn, "orchestrator", &event.id)
        .await
        .map_err(api_to_anyhow)?
    {
        return Ok(());
    }
    if let Some(saga) = fulfillment_saga(&txn, &order_id).await? {
        let (name, payload) = match event.topic.as_str() {
            "warehouse.shipped" => (Signal::Shipped, event.payload.to_string()),
            "warehouse.packed" => (Signal::Packed, event.payload.to_string()),
            "warehouse.exception" => (Signal::Exception, event.payload.to_string()),
            // The orchestrator's own cancellation of the lines it stopped: nothing to signal.
            _ if event.payload["include_allocated"].as_bool() == Some(true) => {
                txn.commit().await?;
                return Ok(());
            }
            _ => (
                Signal::Cancel,
                serde_json::json!({
                    "reason": "ORDER_CANCELLED",
                    "detail": format!(
                        "ORDER_CANCELLED by the customer{}",
                        event.payload["reason"]
                            .as_str()
                            .filter(|r| !r.is_empty())
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                    "line_ids": event.payload["line_ids"],
                    "pending_line_ids": event.payload["pending_line_ids"],
                })
                .to_string(),
            ),
        };
        insert_signal(
            &txn,
            &saga.saga_id,
            name.as_str(),
            &payload,
            &format!("event:{}", event.id),
        )
        .await
        .map_err(api_to_anyhow)?;
    }
    failpoint::hit(&["consumer", "participant_event", "before_commit"]).await;
    txn.commit().await?;
    failpoint::hit(&["consumer", "participant_event", "after_commit"]).await;
    wake.notify_one();
    Ok(())
}
