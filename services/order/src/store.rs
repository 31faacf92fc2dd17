//! Tables of the order service.

use erp_runtime::db::DdlMigration;
use sea_orm_migration::prelude::*;

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
