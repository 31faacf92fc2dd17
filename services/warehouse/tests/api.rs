//! Warehouse API tests on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)]

use erp_proto::common::Actor;
use erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient;
use erp_proto::warehouse::*;
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};

fn fulfillment(key: &str, order: &str) -> CreateFulfillmentRequest {
    CreateFulfillmentRequest {
        idempotency_key: key.into(),
        order_id: order.into(),
        site: "east".into(),
        lines: vec![FulfillmentLine {
            order_line_id: format!("{order}-1"),
            sku: "MUG".into(),
            quantity: 2,
        }],
        service_level: "standard".into(),
        priority: 1,
        saga_id: String::new(),
    }
}

/// The east site, picking at most `daily_capacity` units a day.
async fn east_site(c: &mut WarehouseServiceClient<tonic::transport::Channel>, daily_capacity: i64) {
    c.upsert_site(UpsertSiteRequest {
        reason: "setup".into(),
        site: Some(Site {
            code: "east".into(),
            name: "East DC".into(),
            region: "us-east".into(),
            daily_capacity,
            cutoff_minute_of_day: 17 * 60,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
}

async fn pick_pack_ship(backend: Backend) {
    let svc = testing::spawn::<erp_warehouse::Service>(&backend).await;
    let mut c = WarehouseServiceClient::new(svc.channel().await);
    east_site(&mut c, 100).await;
    let f1 = c
        .create_fulfillment(fulfillment("f1", "o1"))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .create_fulfillment(fulfillment("f1", "o1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f1, again, "the same key creates one fulfillment");
    let f1 = f1.fulfillment.unwrap();
    let f2 = c
        .create_fulfillment(fulfillment("f2", "o2"))
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();

    // Shipping before picking is refused.
    let ship = |key: &str, id: &str| ConfirmShipRequest {
        idempotency_key: key.into(),
        fulfillment_id: id.into(),
        tracking_number: "TRK1".into(),
    };
    let err = c
        .confirm_ship(ship("s0", &f1.fulfillment_id))
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("NOT_READY_TO_SHIP"));
    // Picking twice (a double scan) is harmless.
    let pick = ConfirmPickRequest {
        idempotency_key: "p1".into(),
        task_id: f1.tasks[0].task_id.clone(),
        picked_quantity: 2,
        picker: "amy".into(),
    };
    c.confirm_pick(pick.clone()).await.unwrap();
    c.confirm_pick(pick).await.unwrap();
    // Picked is not packed: shipping still waits for the carton.
    let err = c
        .confirm_ship(ship("s0b", &f1.fulfillment_id))
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("NOT_READY_TO_SHIP"));
    let carton = |weight_grams| erp_proto::common::Parcel {
        weight_grams,
        length_mm: 300,
        width_mm: 200,
        height_mm: 100,
    };
    let pack = |key: &str, weight| ConfirmPackRequest {
        idempotency_key: key.into(),
        fulfillment_id: f1.fulfillment_id.clone(),
        parcel: Some(carton(weight)),
        packer: "bo".into(),
    };
    // A carton needs every dimension.
    let err = c
        .confirm_pack(ConfirmPackRequest {
            parcel: Some(erp_proto::common::Parcel {
                weight_grams: 0,
                ..carton(1)
            }),
            ..pack("k0", 1)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("parcel.weight_grams"), "{err:?}");
    let packed = c
        .confirm_pack(pack("k1", 900))
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();
    assert_eq!(packed.status, FulfillmentStatus::Packed as i32);
    assert_eq!(packed.parcel, Some(carton(900)));
    // Scanning the same carton again (even under a new key) is harmless; another carton is not.
    let again = c.confirm_pack(pack("k2", 900)).await.unwrap().into_inner();
    assert_eq!(again.fulfillment.unwrap().parcel, Some(carton(900)));
    let err = c.confirm_pack(pack("k3", 1500)).await.unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("ALREADY_PACKED"));
    let shipped = c
        .confirm_ship(ship("s1", &f1.fulfillment_id))
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();
    assert_eq!(shipped.status, FulfillmentStatus::Shipped as i32);
    let err = c
        .cancel_fulfillment(CancelFulfillmentRequest {
            idempotency_key: "c1".into(),
            fulfillment_id: f1.fulfillment_id.clone(),
            order_id: String::new(),
            reason: "customer".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("ALREADY_SHIPPED"));
    // An exception on a shipped fulfillment is refused; packing an unpicked one too.
    let err = c
        .report_exception(ReportExceptionRequest {
            idempotency_key: "e0".into(),
            task_id: f1.tasks[0].task_id.clone(),
            reason: ExceptionReason::Damaged as i32,
            quantity: 1,
            note: String::new(),
            reporter: "amy".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("FULFILLMENT_CLOSED"));
    let err = c
        .confirm_pack(ConfirmPackRequest {
            idempotency_key: "k4".into(),
            fulfillment_id: f2.fulfillment_id.clone(),
            parcel: Some(carton(500)),
            packer: "bo".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("NOT_READY_TO_PACK"));

    // Offline: exactly the unpicked fulfillments are listed, and new ones are refused.
    let offline = c
        .set_site_status(SetSiteStatusRequest {
            code: "east".into(),
            status: SiteStatus::Offline as i32,
            actor: Some(Actor {
                id: "ops".into(),
                reason: "power outage".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = offline
        .unpicked_fulfillments
        .iter()
        .map(|f| f.fulfillment_id.clone())
        .collect();
    assert_eq!(ids, std::slice::from_ref(&f2.fulfillment_id));
    let err = c
        .create_fulfillment(fulfillment("f3", "o3"))
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("SITE_OFFLINE"));

    // Exceptions: a bad report names its fields; a short pick closes the task short and puts
    // the fulfillment in exception; a carton problem is only recorded.
    let err = c
        .report_exception(ReportExceptionRequest {
            idempotency_key: String::new(),
            task_id: String::new(),
            reason: 0,
            quantity: -1,
            note: String::new(),
            reporter: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    for field in ["idempotency_key", "task_id", "reason", "quantity"] {
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let report = |key: &str, reason: ExceptionReason, quantity| ReportExceptionRequest {
        idempotency_key: key.into(),
        task_id: f2.tasks[0].task_id.clone(),
        reason: reason as i32,
        quantity,
        note: "bin empty".into(),
        reporter: "amy".into(),
    };
    let err = c
        .report_exception(report("e1", ExceptionReason::ShortPick, 3))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "more than the task"
    );
    let carton_problem = c
        .report_exception(report("e2", ExceptionReason::CartonProblem, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        carton_problem.fulfillment.unwrap().status,
        FulfillmentStatus::Open as i32
    );
    let short = c
        .report_exception(report("e3", ExceptionReason::CouldNotLocate, 2))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .report_exception(report("e3", ExceptionReason::CouldNotLocate, 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(short, again, "a repeated report is one exception");
    let f = short.fulfillment.unwrap();
    assert_eq!(f.status, FulfillmentStatus::Exception as i32);
    assert_eq!(f.tasks[0].status, TaskStatus::Short as i32);
    assert_eq!(f.tasks[0].picked_quantity, 0);
    assert!(
        f.status_reason.contains("could_not_locate"),
        "{}",
        f.status_reason
    );
    assert_eq!(
        short.exception.unwrap().reason,
        ExceptionReason::CouldNotLocate as i32
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_pack_ship_on_every_backend() {
    for backend in testing::backends() {
        pick_pack_ship(backend).await;
    }
}

async fn waves_respect_capacity(backend: Backend) {
    let svc = testing::spawn::<erp_warehouse::Service>(&backend).await;
    let channel = svc.channel().await;
    let mut c = WarehouseServiceClient::new(channel.clone());
    east_site(&mut c, 10).await;
    // Four fulfillments of 4 units; the urgent one (priority 1) was created last.
    let mut ids = Vec::new();
    for (i, priority) in [5, 5, 5, 1].into_iter().enumerate() {
        let mut req = fulfillment(&format!("w{i}"), &format!("wo{i}"));
        req.lines[0].quantity = 4;
        req.priority = priority;
        ids.push(
            c.create_fulfillment(req)
                .await
                .unwrap()
                .into_inner()
                .fulfillment
                .unwrap()
                .fulfillment_id,
        );
    }
    let wave = c
        .release_wave(ReleaseWaveRequest {
            idempotency_key: "wave-1".into(),
            site: "east".into(),
            max_units: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .wave
        .unwrap();
    assert_eq!(wave.units, 8, "two whole fulfillments fit in 10");
    let released: Vec<String> = {
        let mut out = Vec::new();
        for id in &ids {
            let f = c
                .get_fulfillment(GetFulfillmentRequest {
                    fulfillment_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .fulfillment
                .unwrap();
            if f.status == FulfillmentStatus::Released as i32 {
                out.push(id.clone());
            }
        }
        out
    };
    assert_eq!(
        released,
        [ids[0].clone(), ids[3].clone()],
        "the urgent one goes first"
    );
    let err = c
        .release_wave(ReleaseWaveRequest {
            idempotency_key: "wave-2".into(),
            site: "east".into(),
            max_units: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("CAPACITY_EXHAUSTED"));
    let site = c
        .get_site(GetSiteRequest {
            code: "east".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(site.released_today, 8);

    // Many operators releasing at once never exceed the day's capacity.
    c.upsert_site(UpsertSiteRequest {
        reason: "setup".into(),
        site: Some(Site {
            code: "west".into(),
            name: "West DC".into(),
            region: "us-west".into(),
            daily_capacity: 12,
            cutoff_minute_of_day: 17 * 60,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    for i in 0..10 {
        let mut req = fulfillment(&format!("x{i}"), &format!("xo{i}"));
        req.site = "west".into();
        c.create_fulfillment(req).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut c = WarehouseServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            c.release_wave(ReleaseWaveRequest {
                idempotency_key: format!("west-{i}"),
                site: "west".into(),
                max_units: 4,
            })
            .await
            .map(|r| r.into_inner().wave.unwrap().units)
            .unwrap_or(0)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 12, "backend {}", backend.name());
    let site = c
        .get_site(GetSiteRequest {
            code: "west".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(site.released_today, 12);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_never_exceed_daily_capacity_on_every_backend() {
    for backend in testing::backends() {
        waves_respect_capacity(backend).await;
    }
}

async fn scheduled_waves(backend: Backend) {
    let svc = testing::spawn_env::<erp_warehouse::Service>(
        &backend,
        &[("ERP__WAREHOUSE__AUTO_WAVE_INTERVAL_MS", "100")],
    )
    .await;
    let mut c = WarehouseServiceClient::new(svc.channel().await);
    east_site(&mut c, 5).await;
    // Three fulfillments of 2 units against a capacity of 5: the schedule releases two of them
    // (4 units) with nobody calling ReleaseWave, and never the third.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            c.create_fulfillment(fulfillment(&format!("a{i}"), &format!("ao{i}")))
                .await
                .unwrap()
                .into_inner()
                .fulfillment
                .unwrap()
                .fulfillment_id,
        );
    }
    let released = |c: &mut WarehouseServiceClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            c.list_fulfillments(ListFulfillmentsRequest {
                site: "east".into(),
                status: FulfillmentStatus::Released as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .fulfillments
            .len()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while released(&mut c).await < 2 {
        assert!(std::time::Instant::now() < deadline, "no scheduled wave");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Several more slots pass: the capacity holds.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(released(&mut c).await, 2);
    let site = c
        .get_site(GetSiteRequest {
            code: "east".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(site.released_today, 4);
    let third = c
        .get_fulfillment(GetFulfillmentRequest {
            fulfillment_id: ids[2].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();
    assert_eq!(third.status, FulfillmentStatus::Open as i32);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_waves_release_within_capacity_on_every_backend() {
    for backend in testing::backends() {
        scheduled_waves(backend).await;
    }
}

/// More fulfillments than one `IN (...)` list binds (and a fulfillment with more lines than one
/// insert takes): a wave, a site going offline and a large fulfillment all go through in chunks.
async fn large_sets(backend: Backend) {
    let svc = testing::spawn::<erp_warehouse::Service>(&backend).await;
    let c = WarehouseServiceClient::new(svc.channel().await);
    let n = erp_warehouse::store::IN_CHUNK + 50;
    east_site(&mut c.clone(), 10_000_000).await;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut c = c.clone();
        workers.spawn(async move {
            for i in (worker..n).step_by(8) {
                c.create_fulfillment(fulfillment(&format!("big{i}"), &format!("bo{i}")))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let mut c = c.clone();
    let wave = c
        .release_wave(ReleaseWaveRequest {
            idempotency_key: "big-wave".into(),
            site: "east".into(),
            max_units: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .wave
        .unwrap();
    assert_eq!(wave.task_ids.len(), n, "{}", backend.name());
    assert_eq!(wave.units, 2 * n as i64);
    // One fulfillment of 300 lines: more rows than one insert statement takes.
    let mut wide = fulfillment("wide", "wide-order");
    wide.lines = (0..300)
        .map(|i| FulfillmentLine {
            order_line_id: format!("wide-{i}"),
            sku: format!("SKU-{i}"),
            quantity: 1,
        })
        .collect();
    let wide = c
        .create_fulfillment(wide)
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();
    assert_eq!(wide.tasks.len(), 300);
    let offline = c
        .set_site_status(SetSiteStatusRequest {
            code: "east".into(),
            status: SiteStatus::Offline as i32,
            actor: Some(Actor {
                id: "ops".into(),
                reason: "flood".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offline.unpicked_fulfillments.len(), n + 1);
    assert!(
        offline
            .unpicked_fulfillments
            .iter()
            .all(|f| !f.tasks.is_empty())
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_and_site_switches_cover_more_fulfillments_than_one_query_binds_on_every_backend() {
    for backend in testing::backends() {
        large_sets(backend).await;
    }
}
