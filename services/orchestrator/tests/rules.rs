//! The saga's rules against in-memory participants ([`erp_orchestrator::fake`]): the real engine
//! on a real SQLite file, no sockets. Happy path; a refusal at every step before the pivot and
//! exactly the compensations it owes; transient failures retried; a re-route after a stock
//! exception; a split over two warehouses; a backorder that ships when stock arrives; a
//! cancelled line that stops only its shipment.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use erp_orchestrator::ctx::Ctx;
use erp_orchestrator::definition::{self, Step};
use erp_orchestrator::engine::Engine;
use erp_orchestrator::fake::FakeWorld;
use erp_orchestrator::participants::Participants;
use erp_orchestrator::store::{self, SagaState, saga};
use erp_runtime::error::ApiError;
use erp_runtime::testing::{self, Backend};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

struct Harness {
    world: FakeWorld,
    db: DatabaseConnection,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    _dir: std::path::PathBuf,
}

impl Harness {
    async fn new() -> Self {
        let (mut settings, dir) = testing::settings(&Backend::Sqlite, &[]);
        settings.orchestrator.poll_interval_ms = 20;
        let db = erp_runtime::db::connect_and_migrate::<store::Migrator>(&settings, "orchestrator")
            .await
            .unwrap();
        let world = FakeWorld::new();
        let wake = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let engine = Arc::new(Engine::new(
            db.clone(),
            Participants::new(world.ports()),
            settings.orchestrator.clone(),
            wake.clone(),
            tasks.clone(),
            shutdown.clone(),
        ));
        engine.spawn();
        Self {
            world,
            db,
            wake,
            shutdown,
            tasks,
            _dir: dir,
        }
    }

    async fn start(&self, order_id: &str) -> String {
        let (m, created) = store::start_fulfillment(&self.db, order_id, "", "test")
            .await
            .unwrap();
        assert!(created);
        self.wake.notify_one();
        m.saga_id
    }

    async fn saga(&self, saga_id: &str) -> saga::Model {
        saga::Entity::find_by_id(saga_id.to_owned())
            .one(&self.db)
            .await
            .unwrap()
            .unwrap()
    }

    fn ctx(m: &saga::Model) -> Ctx {
        serde_json::from_str(&m.data).unwrap()
    }

    /// Waits until `done` holds of the saga; panics with its state after 15 s.
    async fn until(
        &self,
        saga_id: &str,
        what: &str,
        done: impl Fn(&saga::Model) -> bool,
    ) -> saga::Model {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let m = self.saga(saga_id).await;
            if done(&m) {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga never {what}: {} at {} ({}), timeline {:?}",
                m.status,
                m.current_step,
                m.last_error,
                self.timeline(saga_id).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finished(&self, saga_id: &str) -> saga::Model {
        self.until(saga_id, "finished", |m| {
            m.status.is_final() || m.status == SagaState::Parked
        })
        .await
    }

    async fn waiting_at(&self, saga_id: &str, step: Step) -> saga::Model {
        self.until(saga_id, &format!("waiting at {}", step.name()), |m| {
            m.status == SagaState::Waiting && m.current_step == step.name()
        })
        .await
    }

    async fn signal(&self, saga_id: &str, name: &str, payload: serde_json::Value) {
        let key = uuid::Uuid::now_v7().to_string();
        store::insert_signal(&self.db, saga_id, name, &payload.to_string(), &key)
            .await
            .unwrap();
        self.wake.notify_one();
    }

    /// The floor packs and ships the shipment the saga waits for.
    async fn pack_and_ship(&self, saga_id: &str) {
        let m = self.waiting_at(saga_id, Step::AwaitPack).await;
        let f = Self::ctx(&m).fulfillment_id;
        self.signal(
            saga_id,
            "PACKED",
            serde_json::json!({"fulfillment_id": f, "weight_grams": 900,
                "length_mm": 300, "width_mm": 200, "height_mm": 100}),
        )
        .await;
        self.waiting_at(saga_id, Step::AwaitShipment).await;
        self.signal(saga_id, "SHIPPED", serde_json::json!({"fulfillment_id": f}))
            .await;
    }

    /// `(step, direction, outcome)` of every timeline entry, in order.
    async fn timeline(&self, saga_id: &str) -> Vec<(String, String, String)> {
        store::step::Entity::find()
            .filter(store::step::Column::SagaId.eq(saga_id))
            .order_by_asc(store::step::Column::Seq)
            .all(&self.db)
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.step, s.direction, s.outcome))
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.db.close().await.unwrap();
    }
}

fn refused(reason: &str) -> Status {
    ApiError::precondition(reason, format!("refused ({reason})")).into()
}

/// One order of 2 x SKU-A at 1,000 and 1 x SKU-B at 500, stock at WH1.
fn scene(h: &Harness, order_id: &str, token: &str) {
    h.world.add_site("WH1");
    h.world.set_stock("SKU-A", "WH1", 5);
    h.world.set_stock("SKU-B", "WH1", 5);
    h.world.add_order(
        order_id,
        token,
        &[("L1", "SKU-A", 2, 1_000), ("L2", "SKU-B", 1, 500)],
    );
}

fn order_status(h: &Harness, order_id: &str) -> i32 {
    h.world.world().orders[order_id].status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_ships_and_every_participant_sees_it_once() {
    let h = Harness::new().await;
    scene(&h, "o-1", "tok-ok");
    let id = h.start("o-1").await;
    h.pack_and_ship(&id).await;
    let m = h.finished(&id).await;
    assert_eq!(m.status, SagaState::Completed, "{}", m.last_error);
    {
        let w = h.world.world();
        assert_eq!(w.stock("SKU-A", "WH1"), 3);
        assert_eq!(w.stock("SKU-B", "WH1"), 4);
        assert!(w.reservations.iter().all(|r| r.committed && !r.released));
        assert_eq!(w.payments.len(), 1);
        assert_eq!(w.payments[0].authorized, 2_500);
        assert_eq!(w.payments[0].captured, 2_500);
        assert_eq!(w.journal.len(), 1);
        assert_eq!(w.fulfillments.len(), 1);
        assert!(!w.fulfillments[0].3, "fulfillment not cancelled");
        assert_eq!(w.labels.len(), 1);
        assert!(!w.labels[0].2, "label not voided");
        assert_eq!(
            w.orders["o-1"].status,
            erp_proto::order::OrderStatus::Shipped as i32
        );
        for call in [
            "finance.authorize_payment",
            "finance.capture_payment",
            "finance.post_journal",
            "inventory.commit_reservations",
            "order.mark_shipped",
        ] {
            assert_eq!(w.count(call), 1, "{call}");
        }
    }
    // Every step of the definition succeeded forward, in its order.
    let forward: Vec<String> = h
        .timeline(&id)
        .await
        .into_iter()
        .filter(|(_, d, o)| d == "forward" && o == "succeeded")
        .map(|(s, _, _)| s)
        .filter(|s| s != "saga" && s != "accept_order")
        .collect();
    let steps = definition::steps("fulfillment", erp_orchestrator::FULFILLMENT_VERSION).unwrap();
    let expected: Vec<String> = steps.iter().map(|s| s.name().to_owned()).collect();
    assert_eq!(forward, expected);
    h.stop().await;
}

/// The participant method a step calls first, to refuse it there.
fn first_call(step: Step) -> Option<&'static str> {
    Some(match step {
        Step::LoadOrder => "order.get_order",
        Step::ApplyTax => "finance.calculate_tax",
        Step::Route => "inventory.get_availability",
        Step::ReserveStock => "inventory.reserve_stock",
        Step::RecordAllocation => "order.record_allocation",
        Step::AuthorizePayment => "finance.authorize_payment",
        Step::CreateFulfillment => "warehouse.create_fulfillment",
        Step::QuoteLabel => "carrier.quote_rates",
        Step::BuyLabel => "carrier.buy_label",
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_at_any_step_before_the_pivot_undoes_exactly_what_was_done() {
    let steps = definition::steps("fulfillment", erp_orchestrator::FULFILLMENT_VERSION).unwrap();
    let pivot = definition::pivot(steps);
    let mut checked = 0;
    for (i, &step) in steps[..pivot].iter().enumerate() {
        let Some(method) = first_call(step) else {
            assert!(step.is_wait(), "{} has no refusal to inject", step.name());
            continue;
        };
        let h = Harness::new().await;
        let order_id = format!("o-{}", step.name());
        scene(&h, &order_id, "tok-ok");
        h.world.fail(method, refused("TEST_REFUSAL"), 1);
        let id = h.start(&order_id).await;
        if steps[..i].contains(&Step::AwaitPack) {
            let m = h.waiting_at(&id, Step::AwaitPack).await;
            let f = Harness::ctx(&m).fulfillment_id;
            h.signal(
                &id,
                "PACKED",
                serde_json::json!({"fulfillment_id": f, "weight_grams": 900}),
            )
            .await;
        }
        let m = h.finished(&id).await;
        assert_eq!(
            m.status,
            SagaState::Compensated,
            "refused at {}: {}",
            step.name(),
            m.last_error
        );
        assert!(m.last_error.starts_with("TEST_REFUSAL"), "{}", m.last_error);
        // What each compensable step before the refusal did is undone; nothing after it ran.
        let done = |s: Step| steps[..i].contains(&s);
        {
            let w = h.world.world();
            assert_eq!(
                w.stock("SKU-A", "WH1"),
                5,
                "{}: stock whole again",
                step.name()
            );
            assert!(w.reservations.iter().all(|r| r.released && !r.committed));
            assert_eq!(w.reservations.is_empty(), !done(Step::ReserveStock));
            assert_eq!(w.payments.len(), usize::from(done(Step::AuthorizePayment)));
            assert!(w.payments.iter().all(|p| p.voided && p.captured == 0));
            assert_eq!(
                w.fulfillments.len(),
                usize::from(done(Step::CreateFulfillment))
            );
            assert!(w.fulfillments.iter().all(|f| f.3), "fulfillment cancelled");
            assert!(w.labels.is_empty());
            assert!(w.journal.is_empty());
            if done(Step::LoadOrder) {
                assert_eq!(
                    w.orders[&order_id].status,
                    erp_proto::order::OrderStatus::Failed as i32,
                    "{}: the order failed",
                    step.name()
                );
            }
            // Each compensation ran once, and only for steps that had run.
            for (s, call) in [
                (Step::ReserveStock, "inventory.release_reservations"),
                (Step::AuthorizePayment, "finance.void_payment"),
                (Step::CreateFulfillment, "warehouse.cancel_fulfillment"),
            ] {
                let calls = w.count(call);
                // A refused step did nothing: the undoing starts below it.
                if done(s) {
                    assert_eq!(calls, 1, "{}: {call}", step.name());
                } else {
                    assert_eq!(calls, 0, "{}: {call}", step.name());
                }
            }
        }
        h.stop().await;
        checked += 1;
    }
    assert!(checked >= 8, "{checked} steps refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_fails_the_order_and_releases_the_stock() {
    let h = Harness::new().await;
    scene(&h, "o-d", "tok-declined");
    h.world
        .world()
        .declined_tokens
        .insert("tok-declined".into());
    let id = h.start("o-d").await;
    let m = h.finished(&id).await;
    assert_eq!(m.status, SagaState::Compensated);
    assert!(
        m.last_error.starts_with("PAYMENT_DECLINED"),
        "{}",
        m.last_error
    );
    assert_eq!(h.world.world().stock("SKU-A", "WH1"), 5);
    let o = h.world.world().orders["o-d"].clone();
    assert_eq!(o.status, erp_proto::order::OrderStatus::Failed as i32);
    assert!(
        o.status_reason.starts_with("PAYMENT_DECLINED"),
        "{}",
        o.status_reason
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_down_for_a_while_is_retried_not_given_up() {
    let h = Harness::new().await;
    scene(&h, "o-t", "tok-ok");
    h.world.fail(
        "inventory.reserve_stock",
        Status::unavailable("restarting"),
        2,
    );
    h.world.fail(
        "finance.capture_payment",
        Status::unavailable("restarting"),
        2,
    );
    let id = h.start("o-t").await;
    h.pack_and_ship(&id).await;
    let m = h.finished(&id).await;
    assert_eq!(m.status, SagaState::Completed, "{}", m.last_error);
    {
        let w = h.world.world();
        assert_eq!(w.count("inventory.reserve_stock"), 3);
        assert_eq!(w.count("finance.capture_payment"), 3);
        assert_eq!(w.payments[0].captured, 2_500, "captured once");
    }
    let retries = h
        .timeline(&id)
        .await
        .into_iter()
        .filter(|(_, _, o)| o == "retryable_failure")
        .count();
    assert_eq!(retries, 4);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_exception_reroutes_to_another_warehouse() {
    let h = Harness::new().await;
    scene(&h, "o-r", "tok-ok");
    h.world.add_site("WH2");
    h.world.set_stock("SKU-A", "WH2", 5);
    h.world.set_stock("SKU-B", "WH2", 5);
    let id = h.start("o-r").await;
    let m = h.waiting_at(&id, Step::AwaitPack).await;
    let first = Harness::ctx(&m);
    assert_eq!(first.location, "WH1", "the first warehouse by code");
    h.signal(
        &id,
        "EXCEPTION",
        serde_json::json!({"fulfillment_id": first.fulfillment_id, "reason": "not_found",
            "site": "WH1", "sku": "SKU-A", "quantity": 2, "exception_id": "ex-1"}),
    )
    .await;
    h.until(&id, "re-routed", |m| Harness::ctx(m).location == "WH2")
        .await;
    h.pack_and_ship(&id).await;
    let m = h.finished(&id).await;
    assert_eq!(m.status, SagaState::Completed, "{}", m.last_error);
    {
        let w = h.world.world();
        // WH1: the hold released, the two missing units written off; WH2 shipped.
        assert_eq!(w.stock("SKU-A", "WH1"), 3);
        assert_eq!(w.stock("SKU-B", "WH1"), 5);
        assert_eq!(w.stock("SKU-A", "WH2"), 3);
        assert_eq!(w.stock("SKU-B", "WH2"), 4);
        let at = |site: &str| w.fulfillments.iter().find(|f| f.2 == site).unwrap().3;
        assert!(at("WH1"), "WH1's fulfillment cancelled");
        assert!(!at("WH2"), "WH2's fulfillment ships");
        assert_eq!(w.payments.len(), 1, "the authorization was kept");
        assert_eq!(w.payments[0].captured, 2_500);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_in_two_warehouses_ship_in_two_parts_and_charge_once_in_total() {
    let h = Harness::new().await;
    h.world.add_site("WH1");
    h.world.add_site("WH2");
    h.world.set_stock("SKU-A", "WH1", 5);
    h.world.set_stock("SKU-B", "WH2", 5);
    h.world.add_order(
        "o-s",
        "tok-ok",
        &[("L1", "SKU-A", 2, 1_000), ("L2", "SKU-B", 1, 500)],
    );
    // The routing rules split: each line where its stock is.
    h.world.world().routing_rules = true;
    let id = h.start("o-s").await;
    h.pack_and_ship(&id).await;
    h.until(&id, "on its second shipment", |m| {
        Harness::ctx(m).shipments.len() == 1
    })
    .await;
    h.pack_and_ship(&id).await;
    let m = h.finished(&id).await;
    assert_eq!(m.status, SagaState::Completed, "{}", m.last_error);
    let ctx = Harness::ctx(&m);
    let sites: Vec<&str> = ctx.shipments.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(sites, ["WH1", "WH2"]);
    {
        let w = h.world.world();
        assert_eq!(w.payments.len(), 1);
        assert_eq!(
            w.payments[0].captured, 2_500,
            "two captures, the order's total"
        );
        assert_eq!(w.count("finance.capture_payment"), 2);
        assert_eq!(w.journal.len(), 2);
        assert_eq!(
            w.orders["o-s"].status,
            erp_proto::order::OrderStatus::Shipped as i32
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_no_stock_waits_and_ships_when_stock_arrives() {
    let h = Harness::new().await;
    h.world.add_site("WH1");
    h.world
        .add_order("o-b", "tok-ok", &[("L1", "SKU-A", 2, 1_000)]);
    let id = h.start("o-b").await;
    let m = h
        .until(&id, "backordered", |m| {
            m.status == SagaState::Waiting && Harness::ctx(m).backordered
        })
        .await;
    assert!(m.waiting_skus.contains("|SKU-A|"), "{}", m.waiting_skus);
    {
        let w = h.world.world();
        let q = w.orders["o-b"].lines[0].quantities.unwrap();
        assert_eq!(q.backordered, 2, "the order shows the backorder");
        assert!(w.payments.is_empty(), "nothing charged while nothing ships");
    }
    h.world.set_stock("SKU-A", "WH1", 2);
    h.signal(&id, "REPLAN", serde_json::json!("stock arrived"))
        .await;
    h.pack_and_ship(&id).await;
    let m = h.finished(&id).await;
    assert_eq!(m.status, SagaState::Completed, "{}", m.last_error);
    assert_eq!(h.world.world().stock("SKU-A", "WH1"), 0);
    assert_eq!(
        order_status(&h, "o-b"),
        erp_proto::order::OrderStatus::Shipped as i32
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_line_stops_its_shipment_and_the_rest_ships() {
    let h = Harness::new().await;
    scene(&h, "o-c", "tok-ok");
    let id = h.start("o-c").await;
    h.waiting_at(&id, Step::AwaitPack).await;
    // The order service cancelled L2, which the shipment in progress holds.
    h.signal(
        &id,
        "CANCEL",
        serde_json::json!({"reason": "ORDER_CANCELLED", "line_ids": ["L2"],
            "pending_line_ids": ["L2"]}),
    )
    .await;
    h.until(&id, "planning the rest", |m| {
        let c = Harness::ctx(m);
        c.round >= 1 && c.batch.iter().all(|l| l.line_id == "L1") && !c.batch.is_empty()
    })
    .await;
    h.pack_and_ship(&id).await;
    let m = h.finished(&id).await;
    assert_eq!(m.status, SagaState::Completed, "{}", m.last_error);
    {
        let w = h.world.world();
        let o = &w.orders["o-c"];
        let q = |line: &str| {
            o.lines
                .iter()
                .find(|l| l.line_id == line)
                .unwrap()
                .quantities
                .unwrap()
        };
        assert_eq!((q("L1").shipped, q("L1").cancelled), (2, 0));
        assert_eq!((q("L2").shipped, q("L2").cancelled), (0, 1));
        assert_eq!(w.stock("SKU-B", "WH1"), 5, "the cancelled unit is back");
        assert_eq!(
            w.payments[0].captured, 2_000,
            "only what shipped is charged"
        );
        assert!(
            w.payments[0].voided,
            "the rest of the authorization is released"
        );
    }
    h.stop().await;
}

/// The synthetic saga: eight probe calls in order, each once; a decline at step 4 undoes steps
/// 3, 2 and 1 (each once, newest first) and nothing after it; a participant down for two
/// attempts is retried; a start repeated for the same key is the same saga.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_saga_calls_each_step_once_and_undoes_exactly_what_it_did() {
    let h = Harness::new().await;
    let start = |key: &'static str| {
        let db = h.db.clone();
        let wake = h.wake.clone();
        async move {
            let (m, created) = store::start_saga(&db, "probe", key, "", "test")
                .await
                .unwrap();
            wake.notify_one();
            (m, created)
        }
    };
    h.world.world().probe_declines.insert(("p-no".into(), 4));
    h.world
        .fail("probe.apply", Status::unavailable("probe restarting"), 2);
    let (ok, created) = start("p-ok").await;
    assert!(created);
    assert_eq!(
        (
            ok.definition.as_str(),
            ok.definition_version,
            ok.current_step.as_str()
        ),
        ("probe", 1, "probe_1")
    );
    let (no, _) = start("p-no").await;
    let (again, created) = start("p-ok").await;
    assert!(!created);
    assert_eq!(again.saga_id, ok.saga_id);

    let ok = h.finished(&ok.saga_id).await;
    assert_eq!(ok.status, SagaState::Completed, "{}", ok.last_error);
    let no = h.finished(&no.saga_id).await;
    assert_eq!(no.status, SagaState::Compensated);
    assert!(
        no.last_error.starts_with("PROBE_DECLINED"),
        "{}",
        no.last_error
    );

    {
        let w = h.world.world();
        let effects = |key: &str, direction: &str| -> Vec<i32> {
            let mut steps: Vec<i32> = w
                .probe_effects
                .iter()
                .filter(|(k, (b, _))| b == key && k.ends_with(direction))
                .map(|(_, (_, s))| *s)
                .collect();
            steps.sort_unstable();
            steps
        };
        assert_eq!(effects("p-ok", ":forward"), (1..=8).collect::<Vec<_>>());
        assert!(effects("p-ok", ":compensate").is_empty());
        assert_eq!(effects("p-no", ":forward"), vec![1, 2, 3]);
        assert_eq!(effects("p-no", ":compensate"), vec![1, 2, 3]);
        // 16 applies recorded or declined, plus the two refused while the participant was down.
        assert_eq!(w.count("probe.apply"), 8 + 4 + 2);
        assert_eq!(w.count("probe.revert"), 3);
    }
    let undone: Vec<String> = h
        .timeline(&no.saga_id)
        .await
        .into_iter()
        .filter(|(_, d, o)| d == "compensate" && o == "succeeded")
        .map(|(s, ..)| s)
        .collect();
    assert_eq!(undone, ["probe_3", "probe_2", "probe_1", "saga"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_definitions_are_refused_naming_the_field() {
    let h = Harness::new().await;
    let e = store::start_saga(&h.db, "returns", "r-1", "", "test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("definition"), "{e}");
    assert!(saga::Entity::find().all(&h.db).await.unwrap().is_empty());
    h.stop().await;
}
