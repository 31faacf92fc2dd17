//! sea-orm entities of the inventory tables.

pub mod item {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "items")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sku: String,
        pub name: String,
        pub unit_cost_minor: i64,
        pub currency: String,
        pub weight_grams: i64,
        pub tax_class: String,
        pub low_stock_threshold: i64,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod location {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "locations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        pub name: String,
        pub region: String,
        pub online: bool,
        pub status_reason: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod stock_level {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "stock_levels")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sku: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub location: String,
        pub on_hand: i64,
        pub reserved: i64,
        pub inbound: i64,
        pub returns_pending: i64,
        pub quarantined: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod ledger {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "stock_ledger")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        pub sku: String,
        pub location: String,
        pub bucket: String,
        pub delta: i64,
        pub balance_after: i64,
        pub reason: String,
        pub source_kind: String,
        pub source_id: String,
        pub actor: String,
        pub recorded_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod inbound {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "inbound_expectations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub sku: String,
        pub location: String,
        pub quantity: i64,
        pub expected_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod reservation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub reservation_id: String,
        pub order_id: String,
        pub order_line_id: String,
        pub sku: String,
        pub location: String,
        pub quantity: i64,
        pub state: String,
        pub expires_at_ms: Option<i64>,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

erp_runtime::entity!(transfer, "transfers", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub transfer_id: String,
    pub sku: String,
    pub from_location: String,
    pub to_location: String,
    pub quantity: i64,
    /// in_transit or received.
    pub state: String,
    pub expected_at_ms: i64,
    pub created_at_ms: i64,
});

erp_runtime::entity!(cycle_count, "cycle_counts", {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub sku: String,
    pub location: String,
    pub expected_quantity: i64,
    pub counted_quantity: i64,
    pub variance: i64,
    pub actor: String,
    pub reason: String,
    pub counted_at_ms: i64,
});

/// Moving-average valuation per item, across every location: owned units (on hand and
/// quarantined) and their value.
pub mod item_value {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "item_values")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sku: String,
        pub quantity: i64,
        pub value_minor: i64,
        pub currency: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What each item of a receipt cost, for landed-cost allocation.
pub mod receipt_cost {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "receipt_costs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub source_kind: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub source_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub sku: String,
        pub quantity: i64,
        pub unit_cost_minor: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
