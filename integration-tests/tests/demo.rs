//! The demo behind the README's run command: a mix of orders through the embedded suite whose
//! outcomes reconcile with stock and the ledger, also when run twice on the same data.

#![allow(clippy::unwrap_used)]

use erp_integration_tests::{settings, suite};
use erp_runtime::bus::Bus;
use erp_runtime::testing::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ships_compensates_and_reconciles() {
    let _watchdog = erp_runtime::testing::watchdog(
        "the_demo_ships_compensates_and_reconciles",
        std::time::Duration::from_secs(300),
    );
    let s = suite(
        settings(
            &Backend::Sqlite,
            &[("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50")],
        ),
        Bus::InProcess(Default::default()),
    )
    .await;
    erp::seed::seed(&s).await.unwrap();
    let first = erp::demo::run(&s, 27).await.unwrap();
    println!("{first}");
    assert!(first.reconciles(), "{first}");
    assert_eq!(first.orders, 27);
    assert_eq!(
        first.shipped + first.compensated.values().sum::<usize>() + first.parked,
        27
    );
    // The three orders for 60 lamps waited for the buyer's purchase order, then shipped.
    assert_eq!(first.backordered, 3);
    assert_eq!(first.purchased_units, 180);
    assert_eq!(first.compensated.get("INSUFFICIENT_STOCK"), None);
    // Three declining cards, but one is a wholesale order on net terms: no card is charged.
    assert_eq!(first.compensated.get("PAYMENT_DECLINED"), Some(&2));
    assert!(first.carrier_retries > 0);
    // Seeding and the demo again on the same data: new orders, still reconciled.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    erp::seed::seed(&s).await.unwrap();
    let second = erp::demo::run(&s, 9).await.unwrap();
    assert!(second.reconciles(), "{second}");
    s.stop().await.unwrap();
}
