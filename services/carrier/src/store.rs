//! Tables of the carrier service.

use erp_runtime::db::DdlMigration;
use erp_runtime::entity;
use sea_orm_migration::prelude::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            erp_runtime::db::runtime_tables(),
            Box::new(DdlMigration {
                name: "m20261128_000001_carrier",
                up: r"
CREATE TABLE carriers (
    code TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    offerings TEXT NOT NULL,
    cutoffs TEXT NOT NULL,
    active BOOLEAN NOT NULL
);
CREATE TABLE shipments (
    shipment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    fulfillment_id TEXT NOT NULL,
    carrier TEXT NOT NULL REFERENCES carriers (code),
    service TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    cost_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status INTEGER NOT NULL,
    created_at_ms BIGINT NOT NULL,
    estimated_delivery_ms BIGINT NOT NULL
);
CREATE INDEX shipments_order ON shipments (order_id);
CREATE TABLE tracking_events (
    event_id TEXT PRIMARY KEY,
    shipment_id TEXT NOT NULL REFERENCES shipments (shipment_id),
    milestone INTEGER NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    detail TEXT NOT NULL,
    applied BOOLEAN NOT NULL
);
CREATE INDEX tracking_events_shipment ON tracking_events (shipment_id, occurred_at_ms)",
                drops: &["tracking_events", "shipments", "carriers"],
            }),
            erp_runtime::audit::migration(),
        ]
    }
}

entity!(carrier, "carriers", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub code: String,
    pub name: String,
    /// JSON list of `domain::Offering`.
    pub offerings: String,
    /// JSON list of (site, minute of day).
    pub cutoffs: String,
    pub active: bool,
});

entity!(shipment, "shipments", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub shipment_id: String,
    pub order_id: String,
    pub fulfillment_id: String,
    pub carrier: String,
    pub service: String,
    pub tracking_number: String,
    pub cost_minor: i64,
    pub currency: String,
    pub status: i32,
    pub created_at_ms: i64,
    pub estimated_delivery_ms: i64,
});

entity!(tracking, "tracking_events", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: String,
    pub shipment_id: String,
    pub milestone: i32,
    pub occurred_at_ms: i64,
    pub detail: String,
    pub applied: bool,
});
