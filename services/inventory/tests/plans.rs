//! The reservation expiry sweep runs every 500 ms over a table that grows with every order
//! line: it must read the due reservations by index, not every reservation ever made.

#![allow(clippy::unwrap_used)]

use erp_inventory::store::entities::reservation;
use erp_runtime::testing::{self, Backend};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, QueryTrait};

#[tokio::test]
async fn the_expiry_sweep_reads_due_reservations_by_index() {
    let (settings, _dir) = testing::settings(&Backend::Sqlite, &[]);
    let db = erp_runtime::db::connect_and_migrate::<erp_inventory::store::migration::Migrator>(
        &settings,
        "inventory",
    )
    .await
    .unwrap();
    let sweep = reservation::Entity::find()
        .filter(reservation::Column::State.eq("active"))
        .filter(reservation::Column::ExpiresAtMs.lte(1_000))
        .limit(100)
        .build(db.get_database_backend());
    let plan = testing::query_plan(&db, sweep).await;
    assert!(
        plan.iter()
            .any(|d| d.contains("USING INDEX reservations_expiry")),
        "{plan:?}"
    );
    db.close().await.unwrap();
}
