//! Tables of the carrier service.

use erp_proto::carrier::ShipmentStatus;
use erp_runtime::ApiResult;
use erp_runtime::db::DdlMigration;
use erp_runtime::entity;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
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
            erp_runtime::db::events_tables(),
            Box::new(DdlMigration {
                // Shipment lists by status and the overdue list by index.
                name: "m20261207_000001_list_indexes",
                up: "CREATE INDEX shipments_status ON shipments (status, created_at_ms);
                     CREATE INDEX shipments_eta ON shipments (estimated_delivery_ms)",
                drops: &[],
            }),
            erp_runtime::db::events_tables_v2(),
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

/// Milestones after which a shipment no longer moves: it cannot be overdue.
const SETTLED: [ShipmentStatus; 3] = [
    ShipmentStatus::Delivered,
    ShipmentStatus::Voided,
    ShipmentStatus::ReturnedToSender,
];

/// The carrier `code`, locked for update when `lock`.
pub async fn carrier<C: ConnectionTrait>(
    c: &C,
    code: &str,
    lock: bool,
) -> ApiResult<Option<carrier::Model>> {
    let q = carrier::Entity::find_by_id(code.to_owned());
    Ok(if lock { q.lock_exclusive() } else { q }.one(c).await?)
}

/// Every carrier, by code; only the active ones when `active_only`.
pub async fn carriers<C: ConnectionTrait>(
    c: &C,
    active_only: bool,
) -> ApiResult<Vec<carrier::Model>> {
    let mut q = carrier::Entity::find().order_by_asc(carrier::Column::Code);
    if active_only {
        q = q.filter(carrier::Column::Active.eq(true));
    }
    Ok(q.all(c).await?)
}

/// How a caller names one shipment.
pub enum ShipmentKey<'a> {
    Id(&'a str),
    Tracking(&'a str),
}

/// One shipment, locked for update when `lock` (tracking events and voids of one label apply
/// one after the other).
pub async fn shipment<C: ConnectionTrait>(
    c: &C,
    key: ShipmentKey<'_>,
    lock: bool,
) -> ApiResult<Option<shipment::Model>> {
    let q = match key {
        ShipmentKey::Id(id) => shipment::Entity::find().filter(shipment::Column::ShipmentId.eq(id)),
        ShipmentKey::Tracking(number) => {
            shipment::Entity::find().filter(shipment::Column::TrackingNumber.eq(number))
        }
    };
    Ok(if lock { q.lock_exclusive() } else { q }.one(c).await?)
}

/// The shipments `ids`, locked for update in id order.
pub async fn shipments_for_update<C: ConnectionTrait>(
    c: &C,
    ids: Vec<String>,
) -> ApiResult<Vec<shipment::Model>> {
    Ok(shipment::Entity::find()
        .filter(shipment::Column::ShipmentId.is_in(ids))
        .order_by_asc(shipment::Column::ShipmentId)
        .lock_exclusive()
        .all(c)
        .await?)
}

/// Every shipment of an order, oldest first, locked for update.
pub async fn order_shipments_for_update<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
) -> ApiResult<Vec<shipment::Model>> {
    Ok(shipment::Entity::find()
        .filter(shipment::Column::OrderId.eq(order_id))
        .order_by_asc(shipment::Column::CreatedAtMs)
        .lock_exclusive()
        .all(c)
        .await?)
}

/// Which shipments `ListShipments` returns.
#[derive(Default)]
pub struct ShipmentFilter<'a> {
    /// Empty: every order.
    pub order_id: &'a str,
    /// 0: every status.
    pub status: i32,
    /// Only shipments still moving whose estimated delivery is before this instant.
    pub overdue_at_ms: Option<i64>,
}

/// A page of shipments, oldest first.
pub async fn list_shipments<C: ConnectionTrait>(
    c: &C,
    f: &ShipmentFilter<'_>,
    offset: u64,
    limit: u64,
) -> ApiResult<Vec<shipment::Model>> {
    let mut q = shipment::Entity::find().order_by_asc(shipment::Column::CreatedAtMs);
    if !f.order_id.is_empty() {
        q = q.filter(shipment::Column::OrderId.eq(f.order_id));
    }
    if f.status != 0 {
        q = q.filter(shipment::Column::Status.eq(f.status));
    }
    if let Some(as_of) = f.overdue_at_ms {
        q = q
            .filter(shipment::Column::Status.is_not_in(SETTLED.map(|s| s as i32)))
            .filter(shipment::Column::EstimatedDeliveryMs.lt(as_of));
    }
    Ok(q.offset(offset).limit(limit).all(c).await?)
}

/// The tracking events of a set of shipments, in the order they happened.
pub async fn events_of<C: ConnectionTrait>(
    c: &C,
    shipment_ids: impl IntoIterator<Item = String>,
) -> ApiResult<Vec<tracking::Model>> {
    Ok(tracking::Entity::find()
        .filter(tracking::Column::ShipmentId.is_in(shipment_ids))
        .order_by_asc(tracking::Column::OccurredAtMs)
        .all(c)
        .await?)
}

/// Whether the tracking event `event_id` was recorded already.
pub async fn event_recorded<C: ConnectionTrait>(c: &C, event_id: &str) -> ApiResult<bool> {
    Ok(tracking::Entity::find_by_id(event_id.to_owned())
        .one(c)
        .await?
        .is_some())
}
