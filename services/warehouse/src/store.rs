//! Tables of the warehouse service.

use erp_runtime::db::DdlMigration;
use erp_runtime::entity;
use sea_orm_migration::prelude::*;

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
