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
