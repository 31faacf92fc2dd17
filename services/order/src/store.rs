//! Tables of the order service.

use erp_runtime::db::DdlMigration;
use erp_runtime::time::now_ms;
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use sea_orm_migration::prelude::*;

use crate::domain::{LineQty, Status as OrderState};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            erp_runtime::db::runtime_tables(),
            Box::new(DdlMigration {
                name: "m20261128_000001_order",
                up: r"
CREATE TABLE channels (
    code TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    currency TEXT NOT NULL,
    service_levels TEXT NOT NULL,
    commission_bps INTEGER NOT NULL,
    fixed_fee_minor BIGINT NOT NULL,
    external_id_pattern TEXT NOT NULL,
    ship_complete BOOLEAN NOT NULL,
    net_terms_days INTEGER NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    channel TEXT NOT NULL REFERENCES channels (code),
    external_order_id TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    ship_to TEXT NOT NULL,
    service_level TEXT NOT NULL,
    currency TEXT NOT NULL,
    total_minor BIGINT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT NOT NULL,
    tracking_number TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (channel, external_order_id)
);
CREATE INDEX orders_status ON orders (status, created_at_ms);
CREATE TABLE order_lines (
    line_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    line_number INTEGER NOT NULL,
    sku TEXT NOT NULL,
    unit_price_minor BIGINT NOT NULL,
    ordered BIGINT NOT NULL CHECK (ordered > 0),
    allocated BIGINT NOT NULL CHECK (allocated >= 0),
    shipped BIGINT NOT NULL CHECK (shipped >= 0),
    backordered BIGINT NOT NULL CHECK (backordered >= 0),
    cancelled BIGINT NOT NULL CHECK (cancelled >= 0),
    returned BIGINT NOT NULL CHECK (returned >= 0),
    location TEXT NOT NULL,
    CHECK (allocated + shipped + backordered + cancelled + returned <= ordered),
    UNIQUE (order_id, line_number)
)",
                drops: &["order_lines", "orders", "channels"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000002_order_payment_token",
                up: "ALTER TABLE orders ADD COLUMN payment_method_token TEXT NOT NULL DEFAULT ''",
                drops: &[],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000003_order_tax",
                up: r"
ALTER TABLE orders ADD COLUMN tax_minor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN tax_jurisdiction TEXT NOT NULL DEFAULT '';
ALTER TABLE order_lines ADD COLUMN tax_minor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE order_lines ADD COLUMN tax_rate_bps INTEGER NOT NULL DEFAULT 0",
                drops: &[],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000004_routing",
                up: r"
CREATE TABLE routing_rule_sets (
    version INTEGER PRIMARY KEY,
    rules TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE routing_decisions (
    seq {SERIAL},
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    rule_version INTEGER NOT NULL,
    decision TEXT NOT NULL,
    decided_at_ms BIGINT NOT NULL
);
CREATE INDEX routing_decisions_order ON routing_decisions (order_id, seq)",
                drops: &["routing_decisions", "routing_rule_sets"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000005_order_promise",
                up: "ALTER TABLE orders ADD COLUMN promised_by_ms BIGINT NOT NULL DEFAULT 0",
                drops: &[],
            }),
            erp_runtime::audit::migration(),
            erp_runtime::db::events_tables(),
            Box::new(DdlMigration {
                // Order pages in creation order by index.
                name: "m20261207_000001_list_indexes",
                up: "CREATE INDEX orders_created ON orders (created_at_ms)",
                drops: &[],
            }),
            erp_runtime::db::events_tables_v2(),
        ]
    }
}

pub mod channel {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "channels")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        pub name: String,
        pub kind: String,
        pub currency: String,
        /// Comma-separated.
        pub service_levels: String,
        pub commission_bps: i32,
        pub fixed_fee_minor: i64,
        pub external_id_pattern: String,
        pub ship_complete: bool,
        pub net_terms_days: i32,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod order {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: String,
        pub channel: String,
        pub external_order_id: String,
        pub content_hash: String,
        pub customer_id: String,
        /// The address as JSON.
        pub ship_to: String,
        pub service_level: String,
        pub currency: String,
        pub total_minor: i64,
        pub status: String,
        pub status_reason: String,
        pub tracking_number: String,
        pub created_at_ms: i64,
        /// Opaque token of the payment method (never card data).
        pub payment_method_token: String,
        pub updated_at_ms: i64,
        /// Included in `total_minor`.
        pub tax_minor: i64,
        pub tax_jurisdiction: String,
        /// The delivery date promised at the first routing (0: none yet).
        pub promised_by_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod line {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_lines")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub line_id: String,
        pub order_id: String,
        pub line_number: i32,
        pub sku: String,
        pub unit_price_minor: i64,
        pub ordered: i64,
        pub allocated: i64,
        pub shipped: i64,
        pub backordered: i64,
        pub cancelled: i64,
        pub returned: i64,
        pub location: String,
        pub tax_minor: i64,
        pub tax_rate_bps: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

erp_runtime::entity!(rule_set, "routing_rule_sets", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub version: i32,
    /// The rules as JSON.
    pub rules: String,
    pub created_at_ms: i64,
    pub created_by: String,
});

erp_runtime::entity!(decision, "routing_decisions", {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub order_id: String,
    pub rule_version: i32,
    /// The wire `RoutingDecision`, as JSON.
    pub decision: String,
    pub decided_at_ms: i64,
});

// ---- Queries the handlers share. Every read a later write depends on takes the row lock
// where the handler took it, and conditional updates keep their conditions here.

/// An order, locked for the caller's transaction when `lock` (FOR UPDATE on PostgreSQL;
/// SQLite serializes writers).
pub async fn order<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
    lock: bool,
) -> ApiResult<order::Model> {
    let mut query = order::Entity::find_by_id(order_id.to_owned());
    if lock {
        query = query.lock_exclusive();
    }
    query
        .one(c)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("order {order_id}")))
}

/// The lines of an order, by line number.
pub async fn lines_of<C: ConnectionTrait>(c: &C, order_id: &str) -> ApiResult<Vec<line::Model>> {
    Ok(line::Entity::find()
        .filter(line::Column::OrderId.eq(order_id))
        .order_by_asc(line::Column::LineNumber)
        .all(c)
        .await?)
}

/// Reads an order and its lines to change them: the order's row stays locked (FOR UPDATE on
/// PostgreSQL; SQLite serializes writers) until the caller's transaction ends, so two changes
/// of one order (a shipment and a cancellation, say) cannot both compute their line buckets
/// from the same state and overwrite each other.
pub async fn order_for_update<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
) -> ApiResult<(order::Model, Vec<line::Model>)> {
    let o = order(c, order_id, true).await?;
    Ok((o, lines_of(c, order_id).await?))
}

/// Reads an order and its lines (no lock: for answers, and inside read-only snapshots).
pub async fn order_with_lines<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
) -> ApiResult<(order::Model, Vec<line::Model>)> {
    let o = order(c, order_id, false).await?;
    Ok((o, lines_of(c, order_id).await?))
}

/// The order a channel already submitted under `external_order_id`, if any.
pub async fn order_by_external_id<C: ConnectionTrait>(
    c: &C,
    channel: &str,
    external_order_id: &str,
) -> ApiResult<Option<order::Model>> {
    Ok(order::Entity::find()
        .filter(order::Column::Channel.eq(channel))
        .filter(order::Column::ExternalOrderId.eq(external_order_id))
        .one(c)
        .await?)
}

/// One page of orders, oldest first, narrowed by whichever of channel, external id and status
/// are given (empty / `None`: any).
pub async fn orders_page<C: ConnectionTrait>(
    c: &C,
    channel: &str,
    external_order_id: &str,
    status: Option<String>,
    offset: u64,
    limit: u64,
) -> ApiResult<Vec<order::Model>> {
    let mut query = order::Entity::find().order_by_asc(order::Column::CreatedAtMs);
    if !channel.is_empty() {
        query = query.filter(order::Column::Channel.eq(channel));
    }
    if !external_order_id.is_empty() {
        query = query.filter(order::Column::ExternalOrderId.eq(external_order_id));
    }
    if let Some(status) = status {
        query = query.filter(order::Column::Status.eq(status));
    }
    Ok(query.offset(offset).limit(limit).all(c).await?)
}

/// The lines of `orders` in one query, grouped in the orders' order (each by line number).
pub async fn with_lines<C: ConnectionTrait>(
    c: &C,
    orders: Vec<order::Model>,
) -> ApiResult<Vec<(order::Model, Vec<line::Model>)>> {
    let mut lines = line::Entity::find()
        .filter(line::Column::OrderId.is_in(orders.iter().map(|o| o.order_id.clone())))
        .order_by_asc(line::Column::LineNumber)
        .all(c)
        .await?;
    let mut grouped = Vec::with_capacity(orders.len());
    for o in orders {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut lines)
            .into_iter()
            .partition(|l| l.order_id == o.order_id);
        lines = rest;
        grouped.push((o, mine));
    }
    Ok(grouped)
}

/// Writes new line quantities and the status derived from them (or `forced`), with the
/// order's totals recomputed; returns the rows as saved.
pub async fn save_quantities<C: ConnectionTrait>(
    c: &C,
    o: order::Model,
    lines: Vec<(line::Model, LineQty)>,
    forced: Option<(OrderState, String)>,
) -> ApiResult<(order::Model, Vec<line::Model>)> {
    let mut saved = Vec::with_capacity(lines.len());
    let mut quantities = Vec::with_capacity(lines.len());
    for (l, q) in lines {
        if !q.is_consistent() {
            return Err(ApiError::Internal(format!(
                "line {} would be inconsistent: {q:?}",
                l.line_id
            )));
        }
        quantities.push(q);
        let mut am: line::ActiveModel = l.into();
        am.allocated = Set(q.allocated);
        am.shipped = Set(q.shipped);
        am.backordered = Set(q.backordered);
        am.cancelled = Set(q.cancelled);
        am.returned = Set(q.returned);
        saved.push(am.update(c).await?);
    }
    let (status, reason) =
        forced.unwrap_or_else(|| (OrderState::derive(&quantities), o.status_reason.clone()));
    let (total, tax) = header_totals(&saved);
    let mut am: order::ActiveModel = o.into();
    am.total_minor = Set(total);
    am.tax_minor = Set(tax);
    am.status = Set(status.as_str().to_owned());
    am.status_reason = Set(reason);
    am.updated_at_ms = Set(now_ms());
    let o = am.update(c).await?;
    Ok((o, saved))
}

/// The order's total and tax from its lines, for what is not cancelled: each line's price for
/// its units and the share of its recorded tax those units carry (the saga charges shipments
/// with the same rule, so the shipped parts of a line add up to its share here).
pub fn header_totals(lines: &[line::Model]) -> (i64, i64) {
    let mut subtotal = 0i64;
    let mut tax = 0i64;
    for l in lines {
        let kept = l.ordered - l.cancelled;
        subtotal = subtotal.saturating_add(l.unit_price_minor.saturating_mul(kept));
        tax = tax.saturating_add(erp_runtime::money::pro_rata(l.tax_minor, l.ordered, kept));
    }
    (subtotal.saturating_add(tax), tax)
}

/// Replaces an order's status reason (nothing else).
pub async fn set_status_reason<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
    reason: String,
) -> ApiResult<()> {
    order::Entity::update_many()
        .col_expr(order::Column::StatusReason, Expr::value(reason))
        .filter(order::Column::OrderId.eq(order_id))
        .exec(c)
        .await?;
    Ok(())
}

/// Records `promised_by_ms` as the order's promise unless it already has one (a conditional
/// update: the first promise made stays).
pub async fn promise_once<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
    promised_by_ms: i64,
) -> ApiResult<()> {
    order::Entity::update_many()
        .col_expr(order::Column::PromisedByMs, Expr::value(promised_by_ms))
        .filter(order::Column::OrderId.eq(order_id))
        .filter(order::Column::PromisedByMs.eq(0))
        .exec(c)
        .await?;
    Ok(())
}

/// A channel, if known; locked for the caller's transaction when `lock`.
pub async fn channel<C: ConnectionTrait>(
    c: &C,
    code: &str,
    lock: bool,
) -> ApiResult<Option<channel::Model>> {
    let mut query = channel::Entity::find_by_id(code.to_owned());
    if lock {
        query = query.lock_exclusive();
    }
    Ok(query.one(c).await?)
}

/// Every channel, by code.
pub async fn channels<C: ConnectionTrait>(c: &C) -> ApiResult<Vec<channel::Model>> {
    Ok(channel::Entity::find()
        .order_by_asc(channel::Column::Code)
        .all(c)
        .await?)
}

/// The newest routing rule set, if any was stored.
pub async fn latest_rules<C: ConnectionTrait>(c: &C) -> ApiResult<Option<rule_set::Model>> {
    Ok(rule_set::Entity::find()
        .order_by_desc(rule_set::Column::Version)
        .one(c)
        .await?)
}

/// One version of the routing rules, if stored.
pub async fn rules_version<C: ConnectionTrait>(
    c: &C,
    version: i32,
) -> ApiResult<Option<rule_set::Model>> {
    Ok(rule_set::Entity::find_by_id(version).one(c).await?)
}

/// The routing decisions recorded for an order, oldest first.
pub async fn decisions_of<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
) -> ApiResult<Vec<decision::Model>> {
    Ok(decision::Entity::find()
        .filter(decision::Column::OrderId.eq(order_id))
        .order_by_asc(decision::Column::Seq)
        .all(c)
        .await?)
}
