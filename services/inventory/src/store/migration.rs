//! Versioned schema of the inventory database. Released migrations are never edited: a change
//! is a new migration appended to the list.

use erp_runtime::db::DdlMigration;
use sea_orm_migration::prelude::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            erp_runtime::db::runtime_tables(),
            Box::new(DdlMigration {
                name: "m20261128_000001_inventory",
                up: r"
CREATE TABLE items (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    unit_cost_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    weight_grams BIGINT NOT NULL,
    tax_class TEXT NOT NULL,
    low_stock_threshold BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE locations (
    code TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    online BOOLEAN NOT NULL,
    status_reason TEXT NOT NULL
);
CREATE TABLE stock_levels (
    sku TEXT NOT NULL REFERENCES items (sku),
    location TEXT NOT NULL REFERENCES locations (code),
    on_hand BIGINT NOT NULL CHECK (on_hand >= 0),
    reserved BIGINT NOT NULL CHECK (reserved >= 0),
    inbound BIGINT NOT NULL CHECK (inbound >= 0),
    returns_pending BIGINT NOT NULL CHECK (returns_pending >= 0),
    quarantined BIGINT NOT NULL CHECK (quarantined >= 0),
    CHECK (reserved <= on_hand),
    PRIMARY KEY (sku, location)
);
CREATE TABLE stock_ledger (
    seq {SERIAL},
    sku TEXT NOT NULL,
    location TEXT NOT NULL,
    bucket TEXT NOT NULL,
    delta BIGINT NOT NULL,
    balance_after BIGINT NOT NULL,
    reason TEXT NOT NULL,
    source_kind TEXT NOT NULL,
    source_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);
CREATE INDEX stock_ledger_sku_location ON stock_ledger (sku, location, seq);
CREATE TABLE inbound_expectations (
    id TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    location TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    expected_at_ms BIGINT NOT NULL
);
CREATE INDEX inbound_expectations_sku ON inbound_expectations (sku, expected_at_ms);
CREATE TABLE reservations (
    reservation_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    order_line_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    location TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    state TEXT NOT NULL,
    expires_at_ms BIGINT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX reservations_order ON reservations (order_id, state)",
                drops: &[
                    "reservations",
                    "inbound_expectations",
                    "stock_ledger",
                    "stock_levels",
                    "locations",
                    "items",
                ],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000002_transfers_and_counts",
                up: r"
CREATE TABLE transfers (
    transfer_id TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    from_location TEXT NOT NULL,
    to_location TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    state TEXT NOT NULL,
    expected_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE cycle_counts (
    seq {SERIAL},
    sku TEXT NOT NULL,
    location TEXT NOT NULL,
    expected_quantity BIGINT NOT NULL,
    counted_quantity BIGINT NOT NULL,
    variance BIGINT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    counted_at_ms BIGINT NOT NULL
);
CREATE INDEX cycle_counts_location ON cycle_counts (location, counted_at_ms)",
                drops: &["cycle_counts", "transfers"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000003_valuation",
                up: r"
CREATE TABLE item_values (
    sku TEXT PRIMARY KEY REFERENCES items (sku),
    quantity BIGINT NOT NULL CHECK (quantity >= 0),
    value_minor BIGINT NOT NULL CHECK (value_minor >= 0),
    currency TEXT NOT NULL
);
INSERT INTO item_values (sku, quantity, value_minor, currency)
    SELECT i.sku,
           COALESCE(SUM(s.on_hand + s.quarantined), 0),
           COALESCE(SUM(s.on_hand + s.quarantined), 0) * i.unit_cost_minor,
           i.currency
    FROM items i LEFT JOIN stock_levels s ON s.sku = i.sku
    GROUP BY i.sku, i.unit_cost_minor, i.currency;
CREATE TABLE receipt_costs (
    source_kind TEXT NOT NULL,
    source_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    unit_cost_minor BIGINT NOT NULL,
    PRIMARY KEY (source_kind, source_id, sku)
)",
                drops: &["receipt_costs", "item_values"],
            }),
            erp_runtime::audit::migration(),
            erp_runtime::db::events_tables(),
            Box::new(DdlMigration {
                // The expiry sweep (every 500 ms) and admin lists by index, not by reading every row.
                name: "m20261207_000001_growing_table_indexes",
                up: "CREATE INDEX reservations_expiry ON reservations (state, expires_at_ms);
                     CREATE INDEX reservations_state_created ON reservations (state, created_at_ms);
                     CREATE INDEX stock_ledger_location ON stock_ledger (location, seq)",
                drops: &[],
            }),
            erp_runtime::db::events_tables_v2(),
        ]
    }
}
