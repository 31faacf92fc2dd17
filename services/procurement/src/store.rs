//! Tables of the procurement service.

use erp_runtime::db::DdlMigration;
use erp_runtime::entity;
use erp_runtime::{ApiError, ApiResult};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use sea_orm_migration::prelude::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            erp_runtime::db::runtime_tables(),
            Box::new(DdlMigration {
                name: "m20261128_000001_procurement",
                up: r"
CREATE TABLE suppliers (
    supplier_id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    currency TEXT NOT NULL,
    contact_email TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE supplier_terms (
    supplier_id TEXT NOT NULL REFERENCES suppliers (supplier_id),
    sku TEXT NOT NULL,
    unit_cost_minor BIGINT NOT NULL,
    lead_time_days INTEGER NOT NULL,
    minimum_order_quantity BIGINT NOT NULL,
    pack_multiple BIGINT NOT NULL,
    PRIMARY KEY (supplier_id, sku)
);
CREATE TABLE purchase_orders (
    purchase_order_id TEXT PRIMARY KEY,
    supplier_id TEXT NOT NULL REFERENCES suppliers (supplier_id),
    location TEXT NOT NULL,
    status TEXT NOT NULL,
    currency TEXT NOT NULL,
    total_minor BIGINT NOT NULL,
    expected_at_ms BIGINT NOT NULL,
    approved_by TEXT NOT NULL,
    approved_at_ms BIGINT,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE purchase_order_lines (
    purchase_order_id TEXT NOT NULL REFERENCES purchase_orders (purchase_order_id),
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    unit_cost_minor BIGINT NOT NULL,
    received_quantity BIGINT NOT NULL,
    PRIMARY KEY (purchase_order_id, sku)
)",
                drops: &[
                    "purchase_order_lines",
                    "purchase_orders",
                    "supplier_terms",
                    "suppliers",
                ],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000002_replenishment",
                up: r"
ALTER TABLE purchase_orders ADD COLUMN sent_at_ms BIGINT;
ALTER TABLE purchase_orders ADD COLUMN received_at_ms BIGINT;
CREATE TABLE reorder_policies (
    sku TEXT NOT NULL,
    location TEXT NOT NULL,
    min_quantity BIGINT NOT NULL CHECK (min_quantity >= 0),
    max_quantity BIGINT NOT NULL CHECK (max_quantity >= 0),
    safety_stock_days INTEGER NOT NULL CHECK (safety_stock_days >= 0),
    preferred_supplier_id TEXT NOT NULL,
    PRIMARY KEY (sku, location)
);
CREATE TABLE demand_events (
    event_key TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    location TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    occurred_at_ms BIGINT NOT NULL
);
CREATE INDEX demand_events_item ON demand_events (sku, location, occurred_at_ms);
CREATE TABLE po_receipts (
    receipt_id TEXT PRIMARY KEY,
    purchase_order_id TEXT NOT NULL REFERENCES purchase_orders (purchase_order_id),
    lines TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL
);
CREATE INDEX po_receipts_po ON po_receipts (purchase_order_id)",
                drops: &["po_receipts", "demand_events", "reorder_policies"],
            }),
            erp_runtime::audit::migration(),
            Box::new(DdlMigration {
                name: "m20261130_000001_po_maker",
                up: "ALTER TABLE purchase_orders ADD COLUMN created_by TEXT NOT NULL DEFAULT ''",
                drops: &[],
            }),
            erp_runtime::db::events_tables(),
            Box::new(DdlMigration {
                // Replenishment (per low-stock event) and scorecards look purchase orders and terms up by index.
                name: "m20261207_000001_lookup_indexes",
                up: "CREATE INDEX purchase_orders_location_status ON purchase_orders (location, status);
                     CREATE INDEX purchase_orders_supplier ON purchase_orders (supplier_id, status);
                     CREATE INDEX supplier_terms_sku ON supplier_terms (sku, unit_cost_minor, supplier_id);
                     CREATE INDEX reorder_policies_location ON reorder_policies (location, sku)",
                drops: &[],
            }),
            erp_runtime::db::events_tables_v2(),
        ]
    }
}

entity!(supplier, "suppliers", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub supplier_id: String,
    pub code: String,
    pub name: String,
    pub currency: String,
    pub contact_email: String,
    pub created_at_ms: i64,
});

entity!(term, "supplier_terms", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub supplier_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub sku: String,
    pub unit_cost_minor: i64,
    pub lead_time_days: i32,
    pub minimum_order_quantity: i64,
    pub pack_multiple: i64,
});

entity!(po, "purchase_orders", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub purchase_order_id: String,
    pub supplier_id: String,
    pub location: String,
    pub status: String,
    pub currency: String,
    pub total_minor: i64,
    pub expected_at_ms: i64,
    pub approved_by: String,
    pub approved_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    /// When the receipt that completed (or closed) the order arrived.
    pub received_at_ms: Option<i64>,
    /// The principal who created it (maker-checker: they cannot approve it).
    pub created_by: String,
});

entity!(po_line, "purchase_order_lines", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub purchase_order_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub sku: String,
    pub quantity: i64,
    pub unit_cost_minor: i64,
    pub received_quantity: i64,
});

entity!(policy, "reorder_policies", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub sku: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub location: String,
    pub min_quantity: i64,
    pub max_quantity: i64,
    pub safety_stock_days: i32,
    pub preferred_supplier_id: String,
});

entity!(demand, "demand_events", {
    /// The caller's idempotency key, or `event:<id>` for a consumed shipment.
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_key: String,
    pub sku: String,
    pub location: String,
    pub quantity: i64,
    pub occurred_at_ms: i64,
});

entity!(receipt, "po_receipts", {
    /// The warehouse's receipt id: applying a receipt twice is a no-op.
    #[sea_orm(primary_key, auto_increment = false)]
    pub receipt_id: String,
    pub purchase_order_id: String,
    pub lines: String,
    pub received_at_ms: i64,
});

// ---- Queries the handlers share. A purchase order is read under its row lock where the caller
// asks for it (`lock`); the send is a conditional update on the status it expects.

/// Purchase orders whose quantities are coming but are not inbound in inventory yet.
const UNSENT: [&str; 2] = ["draft", "approved"];

// -- Suppliers and their terms.

/// A supplier; NOT_FOUND when there is none.
pub async fn supplier<C: ConnectionTrait>(c: &C, id: &str) -> ApiResult<supplier::Model> {
    supplier::Entity::find_by_id(id.to_owned())
        .one(c)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("supplier {id}")))
}

/// The supplier registered under `code`, if any.
pub async fn supplier_by_code<C: ConnectionTrait>(
    c: &C,
    code: &str,
) -> ApiResult<Option<supplier::Model>> {
    Ok(supplier::Entity::find()
        .filter(supplier::Column::Code.eq(code))
        .one(c)
        .await?)
}

/// One page of suppliers, by code.
pub async fn suppliers_page<C: ConnectionTrait>(
    c: &C,
    offset: u64,
    size: u64,
) -> ApiResult<Vec<supplier::Model>> {
    Ok(supplier::Entity::find()
        .order_by_asc(supplier::Column::Code)
        .offset(offset)
        .limit(size)
        .all(c)
        .await?)
}

/// A supplier's terms for one item, if it has any.
pub async fn term<C: ConnectionTrait>(
    c: &C,
    supplier_id: &str,
    sku: &str,
) -> ApiResult<Option<term::Model>> {
    Ok(
        term::Entity::find_by_id((supplier_id.to_owned(), sku.to_owned()))
            .one(c)
            .await?,
    )
}

/// A supplier's terms for every item, by SKU.
pub async fn terms_of<C: ConnectionTrait>(c: &C, supplier_id: &str) -> ApiResult<Vec<term::Model>> {
    Ok(term::Entity::find()
        .filter(term::Column::SupplierId.eq(supplier_id))
        .order_by_asc(term::Column::Sku)
        .all(c)
        .await?)
}

/// The terms a policy orders on: the preferred supplier's, else the cheapest supplier's.
pub async fn terms_to_order<C: ConnectionTrait>(
    c: &C,
    p: &policy::Model,
) -> ApiResult<Option<term::Model>> {
    if !p.preferred_supplier_id.is_empty() {
        return term(c, &p.preferred_supplier_id, &p.sku).await;
    }
    Ok(term::Entity::find()
        .filter(term::Column::Sku.eq(&p.sku))
        .order_by_asc(term::Column::UnitCostMinor)
        .order_by_asc(term::Column::SupplierId)
        .one(c)
        .await?)
}

// -- Purchase orders and their lines.

/// A purchase order, if any, locked for the transaction when `lock`.
pub async fn po_if_any<C: ConnectionTrait>(
    c: &C,
    id: &str,
    lock: bool,
) -> ApiResult<Option<po::Model>> {
    let mut q = po::Entity::find_by_id(id.to_owned());
    if lock {
        q = q.lock_exclusive();
    }
    Ok(q.one(c).await?)
}

/// A purchase order, locked for the transaction when `lock`; NOT_FOUND when there is none.
pub async fn po<C: ConnectionTrait>(c: &C, id: &str, lock: bool) -> ApiResult<po::Model> {
    po_if_any(c, id, lock)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("purchase order {id}")))
}

/// One page of purchase orders, oldest first, of one supplier and in one status when given.
pub async fn pos_page<C: ConnectionTrait>(
    c: &C,
    supplier_id: &str,
    status: Option<String>,
    offset: u64,
    size: u64,
) -> ApiResult<Vec<po::Model>> {
    let mut q = po::Entity::find().order_by_asc(po::Column::CreatedAtMs);
    if !supplier_id.is_empty() {
        q = q.filter(po::Column::SupplierId.eq(supplier_id));
    }
    if let Some(status) = status {
        q = q.filter(po::Column::Status.eq(status));
    }
    Ok(q.offset(offset).limit(size).all(c).await?)
}

/// A supplier's purchase orders that are done receiving (received in full, or closed short).
pub async fn completed_pos_of<C: ConnectionTrait>(
    c: &C,
    supplier_id: &str,
) -> ApiResult<Vec<po::Model>> {
    Ok(po::Entity::find()
        .filter(po::Column::SupplierId.eq(supplier_id))
        .filter(po::Column::Status.is_in(["received", "closed"]))
        .all(c)
        .await?)
}

/// The lines of one purchase order.
pub async fn lines_of<C: ConnectionTrait>(
    c: &C,
    purchase_order_id: &str,
) -> ApiResult<Vec<po_line::Model>> {
    Ok(po_line::Entity::find()
        .filter(po_line::Column::PurchaseOrderId.eq(purchase_order_id))
        .all(c)
        .await?)
}

/// The lines of all of `orders` by SKU, in one query (none for no orders).
pub async fn lines_of_all<C: ConnectionTrait>(
    c: &C,
    orders: &[po::Model],
) -> ApiResult<Vec<po_line::Model>> {
    if orders.is_empty() {
        return Ok(Vec::new());
    }
    Ok(po_line::Entity::find()
        .filter(
            po_line::Column::PurchaseOrderId
                .is_in(orders.iter().map(|p| p.purchase_order_id.clone())),
        )
        .order_by_asc(po_line::Column::Sku)
        .all(c)
        .await?)
}

/// Marks an approved order sent, expected at `expected_ms`; false when it was no longer
/// approved (another send got there first, or it was cancelled).
pub async fn mark_sent<C: ConnectionTrait>(
    c: &C,
    purchase_order_id: &str,
    now: i64,
    expected_ms: i64,
) -> ApiResult<bool> {
    let r = po::Entity::update_many()
        .col_expr(po::Column::Status, Expr::value("sent"))
        .col_expr(po::Column::SentAtMs, Expr::value(now))
        .col_expr(po::Column::ExpectedAtMs, Expr::value(expected_ms))
        .filter(po::Column::PurchaseOrderId.eq(purchase_order_id))
        .filter(po::Column::Status.eq("approved"))
        .exec(c)
        .await?;
    Ok(r.rows_affected == 1)
}

/// Units of `sku` on drafted or approved purchase orders for `location`: coming, not inbound yet.
pub async fn unsent_quantity<C: ConnectionTrait>(
    c: &C,
    sku: &str,
    location: &str,
) -> ApiResult<i64> {
    let open: Vec<String> = po::Entity::find()
        .filter(po::Column::Location.eq(location))
        .filter(po::Column::Status.is_in(UNSENT))
        .all(c)
        .await?
        .into_iter()
        .map(|p| p.purchase_order_id)
        .collect();
    if open.is_empty() {
        return Ok(0);
    }
    Ok(po_line::Entity::find()
        .filter(po_line::Column::PurchaseOrderId.is_in(open))
        .filter(po_line::Column::Sku.eq(sku))
        .all(c)
        .await?
        .iter()
        .map(|l| l.quantity)
        .sum())
}

/// Claims a warehouse receipt for a purchase order by inserting its row; false when it was
/// claimed before (by the API call that recorded it, or by the consumer of its event).
pub async fn claim_receipt<C: ConnectionTrait>(
    c: &C,
    receipt_id: &str,
    purchase_order_id: &str,
    lines: String,
    at: i64,
) -> ApiResult<bool> {
    let claimed = receipt::Entity::insert(receipt::ActiveModel {
        receipt_id: Set(receipt_id.to_owned()),
        purchase_order_id: Set(purchase_order_id.to_owned()),
        lines: Set(lines),
        received_at_ms: Set(at),
    })
    .on_conflict(
        OnConflict::column(receipt::Column::ReceiptId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(c)
    .await?;
    Ok(claimed != 0)
}

// -- Reorder policies and demand.

/// The reorder policy of an item at a location, if any.
pub async fn policy<C: ConnectionTrait>(
    c: &C,
    sku: &str,
    location: &str,
) -> ApiResult<Option<policy::Model>> {
    Ok(
        policy::Entity::find_by_id((sku.to_owned(), location.to_owned()))
            .one(c)
            .await?,
    )
}

/// The reorder policies at `location` (at every location when empty), by SKU.
pub async fn policies_at<C: ConnectionTrait>(
    c: &C,
    location: &str,
) -> ApiResult<Vec<policy::Model>> {
    let mut q = policy::Entity::find().order_by_asc(policy::Column::Sku);
    if !location.is_empty() {
        q = q.filter(policy::Column::Location.eq(location));
    }
    Ok(q.all(c).await?)
}

/// The reorder policies of an item, at every location.
pub async fn policies_of_sku<C: ConnectionTrait>(
    c: &C,
    sku: &str,
) -> ApiResult<Vec<policy::Model>> {
    Ok(policy::Entity::find()
        .filter(policy::Column::Sku.eq(sku))
        .all(c)
        .await?)
}

/// Whether a demand signal with this key was recorded.
pub async fn demand_recorded<C: ConnectionTrait>(c: &C, key: &str) -> ApiResult<bool> {
    Ok(demand::Entity::find_by_id(key.to_owned())
        .one(c)
        .await?
        .is_some())
}

/// Records one demand signal once per key.
pub async fn record_demand_once<C: ConnectionTrait>(
    c: &C,
    key: &str,
    sku: &str,
    location: &str,
    quantity: i64,
    at: i64,
) -> ApiResult<()> {
    if demand_recorded(c, key).await? {
        return Ok(());
    }
    let inserted = demand::ActiveModel {
        event_key: Set(key.to_owned()),
        sku: Set(sku.to_owned()),
        location: Set(location.to_owned()),
        quantity: Set(quantity),
        occurred_at_ms: Set(at),
    }
    .insert(c)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        // A concurrent repeat of the same key won the insert.
        Err(_) if demand_recorded(c, key).await? => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Units of `sku` demanded at `location` after `since_ms` (saturating).
pub async fn demand_since<C: ConnectionTrait>(
    c: &C,
    sku: &str,
    location: &str,
    since_ms: i64,
) -> ApiResult<i64> {
    Ok(demand::Entity::find()
        .filter(demand::Column::Sku.eq(sku))
        .filter(demand::Column::Location.eq(location))
        .filter(demand::Column::OccurredAtMs.gt(since_ms))
        .all(c)
        .await?
        .iter()
        .fold(0i64, |sum, d| sum.saturating_add(d.quantity)))
}
