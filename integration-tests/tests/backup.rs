//! Backup and restore drills on SQLite and PostgreSQL: a backup taken while the suite runs,
//! more business after it, the suite stopped and every database restored → exactly the state
//! of the backup (orders, stock, books), reconciled; a damaged backup is refused before
//! anything is touched; one service restored alone from the same backup.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use erp_integration_tests::{Clients, FAST, T, settings, suite};
use erp_proto::orchestrator::SagaStatus;
use erp_runtime::bus::Bus;
use erp_runtime::testing::{self, Backend};

/// What a restore must bring back: each order's status, stock on hand and reserved, and the
/// trial balance.
async fn state(c: &mut Clients, orders: &[String]) -> String {
    let mut out = String::new();
    for id in orders {
        let o = c.order(id).await;
        out.push_str(&format!("{id} {} {:?}\n", o.status, o.total));
    }
    out.push_str(&format!("stock {:?}\n", c.stock_totals().await));
    let tb = c
        .finance
        .get_trial_balance(erp_proto::finance::GetTrialBalanceRequest {})
        .await
        .unwrap()
        .into_inner();
    out.push_str(&format!("{tb:?}"));
    out
}

async fn complete(c: &mut Clients, key: &str, sku: &str) -> String {
    let id = c.place(key, sku, 1, "tok_visa", "standard").await;
    c.wait_saga(&id, &[SagaStatus::Waiting], T).await;
    c.ship(&id).await;
    c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    id
}

async fn drill(backend: Backend) {
    let cfg = settings(&backend, FAST);
    let s = suite(cfg.clone(), Bus::InProcess(Default::default())).await;
    erp::seed::seed(&s).await.unwrap();
    let mut c = Clients::for_suite(&s);
    let mut before = Vec::new();
    for i in 0..4 {
        before.push(complete(&mut c, &format!("BK-{i}"), erp::seed::CATALOG[i % 3].0).await);
    }
    c.assert_reconciled().await;
    let at_backup = state(&mut c, &before).await;

    // Online: the suite keeps running.
    let dir = cfg.data_dir.join("backup-1");
    let started = Instant::now();
    let manifest = erp::backup::backup(&s.settings, &dir, &[]).await.unwrap();
    let backup_took = started.elapsed();
    assert_eq!(manifest.services.len(), 7);
    for e in &manifest.services {
        assert_eq!(e.backend, backend.name(), "{e:?}");
        assert_eq!(e.sha256.len(), 64, "{e:?}");
        assert!(e.bytes > 0 && e.migration.starts_with('m'), "{e:?}");
    }
    let entry = |name: &str| {
        manifest
            .services
            .iter()
            .find(|e| e.service == name)
            .unwrap()
    };
    assert!(entry("order").outbox_last_seq > 0, "orders left events");
    assert!(
        entry("orchestrator").inbox_events > 0,
        "sagas consumed events"
    );
    assert!(
        erp::backup::backup(&s.settings, &dir, &[]).await.is_err(),
        "a backup is never written over another"
    );

    // Business goes on after the backup.
    let mut after = Vec::new();
    for i in 0..2 {
        after.push(complete(&mut c, &format!("AK-{i}"), "MUG-BLUE").await);
    }
    let later = state(&mut c, &before).await;
    assert_ne!(later, at_backup, "the later orders changed stock and books");
    s.stop().await.unwrap();

    // A damaged file is found before anything is restored.
    let damaged = cfg.data_dir.join("backup-damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, damaged.join(f.file_name().unwrap())).unwrap();
    }
    let victim = damaged.join(&entry("finance").file);
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let refused = erp::backup::restore(&cfg, &damaged, &[]).await.unwrap_err();
    assert!(refused.to_string().contains("checksum"), "{refused:#}");

    let started = Instant::now();
    let restored = erp::backup::restore(&cfg, &dir, &[]).await.unwrap();
    let restore_took = started.elapsed();
    assert_eq!(restored.len(), 7);
    let s = suite(cfg.clone(), Bus::InProcess(Default::default())).await;
    let mut c = Clients::for_suite(&s);
    assert_eq!(
        state(&mut c, &before).await,
        at_backup,
        "{}",
        backend.name()
    );
    for id in &after {
        let gone = c
            .order
            .get_order(erp_proto::order::GetOrderRequest {
                order_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            gone.code(),
            tonic::Code::NotFound,
            "{id} was placed after the backup"
        );
    }
    c.assert_reconciled().await;
    // The restored suite takes orders again.
    let again = complete(&mut c, "RK-1", "MUG-BLUE").await;
    assert_eq!(
        c.saga(&again).await.unwrap().status,
        SagaStatus::Completed as i32
    );
    s.stop().await.unwrap();

    // One service alone: only its database goes back.
    let only = erp::backup::restore(&cfg, &dir, &["carrier".to_owned()])
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert!(
        erp::backup::restore(&cfg, &dir, &["nonsense".to_owned()])
            .await
            .is_err()
    );
    let bytes: u64 = manifest.services.iter().map(|e| e.bytes).sum();
    println!(
        "backup drill ({}): 7 databases, {bytes} bytes, backup {:.2} s online, restore {:.2} s",
        backend.name(),
        backup_took.as_secs_f64(),
        restore_took.as_secs_f64()
    );
    if let Backend::Postgres(_) = backend {
        for service in erp_runtime::config::SERVICES {
            let _ = erp_runtime::db::drop_postgres_database(&cfg.database_url(service)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_running_then_restore_brings_back_exactly_that_state() {
    let _watchdog = testing::watchdog("backup_drill", std::time::Duration::from_secs(400));
    for backend in testing::backends() {
        drill(backend).await;
    }
}
