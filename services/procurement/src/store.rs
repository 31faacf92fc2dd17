//! Tables of the procurement service.

use erp_runtime::db::DdlMigration;
use erp_runtime::entity;
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
