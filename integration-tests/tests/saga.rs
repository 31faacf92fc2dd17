//! The fulfillment saga across the whole suite over real sockets, on SQLite and PostgreSQL:
//! the happy path to the ledger, each business rejection compensated in reverse, a flaky
//! carrier retried, a participant down and back, a cancel during the wait. After each, stock,
//! payments and the journal reconcile with the orders' final states.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use erp_integration_tests::{Clients, FAST, T, seeded, settings, suite};
use erp_proto::finance::PaymentStatus;
use erp_proto::inventory::ReservationState;
use erp_proto::orchestrator::{CancelSagaRequest, OperatorAction, SagaStatus, StepOutcome};
use erp_proto::order::OrderStatus;
use erp_runtime::bus::Bus;
use erp_runtime::testing::{self, Backend};

async fn happy_path_and_rejections(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    let (on_hand_before, _) = c.stock_totals().await;

    // Happy path: wait for shipment, ship, complete through the pivot.
    let ok = c.place("H-1", "MUG-BLUE", 2, "tok_visa", "standard").await;
    // Out of stock: no warehouse holds 500 lamps.
    let oos = c.place("H-2", "LAMP-01", 500, "tok_visa", "standard").await;
    // Declined card.
    let declined = c
        .place(
            "H-3",
            "TEE-M",
            1,
            "tok_decline_insufficient_funds",
            "standard",
        )
        .await;

    c.wait_saga(&ok, &[SagaStatus::Waiting], T).await;
    c.ship(&ok).await;
    let done = c.wait_saga(&ok, &[SagaStatus::Completed], T).await;
    let steps: Vec<_> = done
        .timeline
        .iter()
        .filter(|e| e.outcome == StepOutcome::Succeeded as i32)
        .map(|e| e.step.as_str())
        .collect();
    for step in [
        "route",
        "reserve_stock",
        "authorize_payment",
        "create_fulfillment",
        "await_pack",
        "quote_label",
        "buy_label",
        "await_shipment",
        "commit_stock",
        "capture_payment",
        "post_journal",
        "mark_shipped",
    ] {
        assert!(steps.contains(&step), "{step} missing from {steps:?}");
    }
    let o = c.order(&ok).await;
    assert_eq!(o.status, OrderStatus::Shipped as i32);
    assert!(!o.tracking_number.is_empty());
    let p = c.payment(&ok).await.unwrap();
    assert_eq!(p.status, PaymentStatus::Captured as i32);
    // 2 x 12.99 plus New Jersey's 6.63% (1.72, rounded half up): what was authorized and taken.
    assert_eq!(o.tax_total.unwrap().amount_minor, 172);
    assert_eq!(o.lines[0].tax_rate_bps, 663);
    assert_eq!(o.total.unwrap().amount_minor, 2 * 1299 + 172);
    assert_eq!(p.captured.unwrap().amount_minor, 2 * 1299 + 172);
    let r = c.reservations(&ok).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].state, ReservationState::Committed as i32);

    // No warehouse has 500 lamps: the order waits, backordered, holding nothing (no stock
    // reserved, no payment authorized) until stock arrives or the customer cancels.
    let deadline = std::time::Instant::now() + T;
    while c.order(&oos).await.status != OrderStatus::Backordered as i32 {
        assert!(std::time::Instant::now() < deadline, "never backordered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = c.wait_saga(&oos, &[SagaStatus::Waiting], T).await;
    assert_eq!(waiting.current_step, "route");
    assert!(
        waiting.last_error.contains("BACKORDERED"),
        "{}",
        waiting.last_error
    );
    let line = c.order(&oos).await.lines[0].quantities.unwrap();
    assert_eq!((line.backordered, line.allocated), (500, 0));
    assert!(c.reservations(&oos).await.is_empty());
    assert!(c.payment(&oos).await.is_none());
    c.order
        .cancel_order(erp_proto::order::CancelOrderRequest {
            idempotency_key: "H-2-cancel".into(),
            order_id: oos.clone(),
            line_ids: vec![],
            actor: None,
            include_allocated: false,
        })
        .await
        .unwrap();
    let failed = c.wait_saga(&oos, &[SagaStatus::Compensated], T).await;
    assert!(
        failed.last_error.contains("ORDER_CANCELLED"),
        "{}",
        failed.last_error
    );
    let o = c.order(&oos).await;
    assert_eq!(o.status, OrderStatus::Cancelled as i32);
    assert_eq!(o.lines[0].quantities.unwrap().cancelled, 500);
    assert!(c.reservations(&oos).await.is_empty());
    assert!(c.payment(&oos).await.is_none());

    c.wait_saga(&declined, &[SagaStatus::Compensated], T).await;
    let o = c.order(&declined).await;
    assert_eq!(o.status, OrderStatus::Failed as i32);
    assert!(
        o.status_reason.starts_with("PAYMENT_DECLINED"),
        "{}",
        o.status_reason
    );
    let r = c.reservations(&declined).await;
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].state,
        ReservationState::Released as i32,
        "the reservation was released"
    );

    // Stock: exactly the shipped units left; nothing stays reserved.
    let (on_hand_after, reserved) = c.stock_totals().await;
    assert_eq!(on_hand_before - on_hand_after, 2);
    assert_eq!(reserved, 0);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_out_of_stock_and_declined_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "happy_path_out_of_stock_and_declined_on_every_backend",
        std::time::Duration::from_secs(300),
    );
    for backend in testing::backends() {
        happy_path_and_rejections(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_timeout_is_retried_with_the_same_key() {
    let _watchdog = erp_runtime::testing::watchdog(
        "a_carrier_timeout_is_retried_with_the_same_key",
        std::time::Duration::from_secs(300),
    );
    let (s, mut c) = seeded(&Backend::Sqlite).await;
    // Express orders go to the cheaper two-day carrier, whose API times out once per label.
    let id = c.place("F-1", "TEE-M", 1, "tok_visa", "express").await;
    c.wait_step(&id, "await_pack").await;
    c.pick_and_pack(&id).await;
    let saga = c.wait_step(&id, "await_shipment").await;
    let retried = saga
        .timeline
        .iter()
        .any(|e| e.step == "buy_label" && e.outcome == StepOutcome::RetryableFailure as i32);
    assert!(
        retried,
        "expected a retried label purchase: {:#?}",
        saga.timeline
    );
    c.confirm_ship(&id).await;
    c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    let shipments = c
        .carrier
        .list_shipments(erp_proto::carrier::ListShipmentsRequest {
            order_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .shipments;
    assert_eq!(shipments.len(), 1, "exactly one label");
    assert_eq!(shipments[0].carrier, "flakyship");
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_down_then_back_lets_the_saga_finish() {
    let _watchdog = erp_runtime::testing::watchdog(
        "a_participant_down_then_back_lets_the_saga_finish",
        std::time::Duration::from_secs(300),
    );
    let (mut s, mut c) = seeded(&Backend::Sqlite).await;
    s.stop_service("finance").await.unwrap();
    let id = c.place("D-1", "MUG-BLUE", 1, "tok_visa", "standard").await;
    // The saga keeps retrying its first finance call (the tax) while finance is down.
    let deadline = std::time::Instant::now() + T;
    loop {
        let saga = c.saga(&id).await;
        let retrying = saga.as_ref().is_some_and(|s| {
            s.timeline
                .iter()
                .filter(|e| {
                    e.step == "apply_tax" && e.outcome == StepOutcome::RetryableFailure as i32
                })
                .count()
                >= 2
        });
        if retrying {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retries seen: {saga:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.restart_service("finance").await.unwrap();
    c.wait_saga(&id, &[SagaStatus::Waiting], T).await;
    c.ship(&id).await;
    c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    let p = c.payment(&id).await.unwrap();
    assert_eq!(p.status, PaymentStatus::Captured as i32);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

async fn cancel_during_wait(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    let (on_hand_before, _) = c.stock_totals().await;
    let id = c.place("C-1", "LAMP-01", 1, "tok_visa", "standard").await;
    c.wait_step(&id, "await_pack").await;
    c.pick_and_pack(&id).await;
    // Everything before the pivot is done: stock held, payment authorized, packed, labelled.
    let saga = c.wait_step(&id, "await_shipment").await;
    c.orchestrator
        .cancel_saga(CancelSagaRequest {
            saga_id: saga.saga_id.clone(),
            action: Some(OperatorAction {
                operator: "ops-1".into(),
                reason: "customer called".into(),
            }),
        })
        .await
        .unwrap();
    let done = c.wait_saga(&id, &[SagaStatus::Compensated], T).await;
    let undone: Vec<_> = done
        .timeline
        .iter()
        .filter(|e| {
            e.direction == 2 && e.outcome == StepOutcome::Succeeded as i32 && e.step != "saga"
        })
        .map(|e| e.step.as_str())
        .collect();
    assert_eq!(
        undone,
        [
            "buy_label",
            "create_fulfillment",
            "authorize_payment",
            "reserve_stock",
            "load_order"
        ],
        "reverse order"
    );
    assert_eq!(c.order(&id).await.status, OrderStatus::Cancelled as i32);
    assert_eq!(
        c.payment(&id).await.unwrap().status,
        PaymentStatus::Voided as i32
    );
    assert_eq!(
        c.reservations(&id).await[0].state,
        ReservationState::Released as i32
    );
    let shipments = c
        .carrier
        .list_shipments(erp_proto::carrier::ListShipmentsRequest {
            order_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .shipments;
    assert_eq!(
        shipments[0].status,
        erp_proto::carrier::ShipmentStatus::Voided as i32
    );
    let (on_hand_after, reserved) = c.stock_totals().await;
    assert_eq!((on_hand_after, reserved), (on_hand_before, 0));
    // After compensation, a cancel is refused with a reason.
    let err = c
        .orchestrator
        .cancel_saga(CancelSagaRequest {
            saga_id: saga.saga_id.clone(),
            action: Some(OperatorAction {
                operator: "ops-1".into(),
                reason: "again".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_the_wait_compensates_everything_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "cancel_during_the_wait_compensates_everything_on_every_backend",
        std::time::Duration::from_secs(300),
    );
    for backend in testing::backends() {
        cancel_during_wait(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_ship_deadline_parks_and_an_operator_recovers_it() {
    let _watchdog = erp_runtime::testing::watchdog(
        "a_missed_ship_deadline_parks_and_an_operator_recovers_it",
        std::time::Duration::from_secs(300),
    );
    let mut fast: Vec<(&str, &str)> = FAST.to_vec();
    fast.push(("ERP__ORCHESTRATOR__SHIP_DEADLINE_MS", "1500"));
    let s = suite(
        settings(&Backend::Sqlite, &fast),
        Bus::InProcess(Default::default()),
    )
    .await;
    erp::seed::seed(&s).await.unwrap();
    let mut c = Clients::for_suite(&s);
    let id = c.place("P-1", "MUG-BLUE", 1, "tok_visa", "standard").await;
    let parked = c.wait_saga(&id, &[SagaStatus::Parked], T).await;
    // Nobody packed it in time.
    assert_eq!(parked.current_step, "await_pack");
    let exceptions = c
        .orchestrator
        .list_exceptions(erp_proto::orchestrator::ListExceptionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .exceptions;
    assert_eq!(exceptions.len(), 1);
    assert!(
        exceptions[0].reason.starts_with("SHIP_DEADLINE_PASSED"),
        "{}",
        exceptions[0].reason
    );
    assert!(
        exceptions[0].suggested_action.contains("RetrySaga"),
        "{}",
        exceptions[0].suggested_action
    );

    // Operator controls need an operator and a reason.
    let err = c
        .orchestrator
        .retry_saga(erp_proto::orchestrator::RetrySagaRequest {
            saga_id: parked.saga_id.clone(),
            action: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // The warehouse packs late; the operator retries; the label is bought for the carton, the
    // warehouse ships, and the saga goes through the pivot.
    c.pick_and_pack(&id).await;
    let action = Some(OperatorAction {
        operator: "ops-2".into(),
        reason: "parcel found, shipped".into(),
    });
    // Who retried is the token's subject; `action.operator` is not trusted.
    let ops = c.as_principal("ops-2", &[erp_runtime::auth::roles::OPERATOR], None);
    ops.orchestrator
        .clone()
        .retry_saga(erp_proto::orchestrator::RetrySagaRequest {
            saga_id: parked.saga_id.clone(),
            action: Some(OperatorAction {
                operator: "someone-else".into(),
                ..action.clone().unwrap()
            }),
        })
        .await
        .unwrap();
    c.confirm_ship(&id).await;
    let done = c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    assert!(
        done.timeline
            .iter()
            .any(|e| e.detail.contains("retried by ops-2"))
    );
    // The retry is in the orchestrator's audit trail, under the verified caller.
    let trail = c
        .audit_of("orchestrator")
        .list_audit_events(erp_proto::audit::ListAuditEventsRequest {
            target: format!("saga:{}", parked.saga_id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!(trail[0].principal, "ops-2");
    assert_eq!(trail[0].reason, "parcel found, shipped");
    assert!(trail[0].method.ends_with("/RetrySaga"));
    assert_eq!(c.order(&id).await.status, OrderStatus::Shipped as i32);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_saga_and_resume_lets_it_finish() {
    let _watchdog = erp_runtime::testing::watchdog(
        "pause_holds_a_saga_and_resume_lets_it_finish",
        std::time::Duration::from_secs(300),
    );
    let (s, mut c) = seeded(&Backend::Sqlite).await;
    let id = c.place("Z-1", "TEE-M", 1, "tok_visa", "standard").await;
    let waiting = c.wait_saga(&id, &[SagaStatus::Waiting], T).await;
    let action = Some(OperatorAction {
        operator: "ops-3".into(),
        reason: "address check".into(),
    });
    c.orchestrator
        .pause_saga(erp_proto::orchestrator::PauseSagaRequest {
            saga_id: waiting.saga_id.clone(),
            action: action.clone(),
        })
        .await
        .unwrap();
    c.wait_saga(&id, &[SagaStatus::Paused], T).await;
    // Packing while paused does not move it (no label is bought).
    c.pick_and_pack(&id).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.saga(&id).await.unwrap().status, SagaStatus::Paused as i32);
    c.orchestrator
        .resume_saga(erp_proto::orchestrator::ResumeSagaRequest {
            saga_id: waiting.saga_id.clone(),
            action,
        })
        .await
        .unwrap();
    c.confirm_ship(&id).await;
    c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_of_an_unknown_definition_version_is_parked_not_guessed() {
    let _watchdog = erp_runtime::testing::watchdog(
        "an_instance_of_an_unknown_definition_version_is_parked_not_guessed",
        std::time::Duration::from_secs(300),
    );
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    let (s, mut c) = seeded(&Backend::Sqlite).await;
    let orch = s
        .services
        .iter()
        .find(|r| r.name == "orchestrator")
        .unwrap()
        .db
        .clone();
    // A saga written by a newer build (version 99) that this build does not know.
    let now = erp_runtime::time::now_ms();
    let order_id = uuid::Uuid::now_v7().to_string();
    erp_orchestrator::store::saga::ActiveModel {
        saga_id: Set(uuid::Uuid::now_v7().to_string()),
        definition: Set("fulfillment".into()),
        definition_version: Set(99),
        order_id: Set(order_id.clone()),
        status: Set(erp_orchestrator::store::SagaState::Pending),
        current_step: Set("load_order".into()),
        attempts: Set(0),
        last_error: Set(String::new()),
        traceparent: Set(String::new()),
        lease_owner: Set(String::new()),
        lease_until_ms: Set(0),
        next_attempt_at_ms: Set(now),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
        data: Set("{}".into()),
        step_index: Set(0),
        resume_status: Set(String::new()),
        parked_reason: Set(String::new()),
        suggested_action: Set(String::new()),
        waiting_skus: Set(String::new()),
        version: Set(0),
    }
    .insert(&orch)
    .await
    .unwrap();
    let parked = c.wait_saga(&order_id, &[SagaStatus::Parked], T).await;
    assert_eq!(parked.definition_version, 99, "still pinned to its version");
    let exceptions = c
        .orchestrator
        .list_exceptions(erp_proto::orchestrator::ListExceptionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .exceptions;
    assert!(
        exceptions[0].reason.starts_with("UNKNOWN_DEFINITION"),
        "{}",
        exceptions[0].reason
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_warehouse_is_routed_around() {
    let _watchdog = erp_runtime::testing::watchdog(
        "an_offline_warehouse_is_routed_around",
        std::time::Duration::from_secs(300),
    );
    let (s, mut c) = seeded(&Backend::Sqlite).await;
    // Central would be chosen first for T-shirts; a power outage takes it offline.
    c.warehouse
        .set_site_status(erp_proto::warehouse::SetSiteStatusRequest {
            code: "central".into(),
            status: erp_proto::warehouse::SiteStatus::Offline as i32,
            actor: Some(erp_proto::common::Actor {
                id: "ops".into(),
                reason: "power outage".into(),
            }),
        })
        .await
        .unwrap();
    let id = c.place("O-1", "TEE-M", 1, "tok_visa", "standard").await;
    c.wait_step(&id, "await_pack").await;
    let f = c.open_fulfillments(&id).await.remove(0);
    assert_eq!(f.site, "east");
    c.ship(&id).await;
    c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

/// A SHIPPED signal sent through the API (an operator's, after a missed deadline) is a claim the
/// orchestrator checks with the warehouse: without a fulfillment, for a fulfillment not shipped,
/// or for another order's, it is refused and the saga does not move; the warehouse's own
/// confirmation ships the order.
async fn forged_ship_signals_are_refused(backend: Backend) {
    use erp_proto::orchestrator::SignalSagaRequest;
    use erp_runtime::error::status_reason;
    let (s, mut c) = seeded(&backend).await;
    let order = c.place("F-1", "MUG-BLUE", 1, "tok_visa", "standard").await;
    let other = c.place("F-2", "MUG-BLUE", 1, "tok_visa", "standard").await;
    let saga = c.wait_step(&order, "await_pack").await;
    c.wait_step(&other, "await_pack").await;
    let mine = c.open_fulfillments(&order).await.remove(0).fulfillment_id;
    let theirs = c.open_fulfillments(&other).await.remove(0).fulfillment_id;
    let signal = |key: &str, payload: String| SignalSagaRequest {
        saga_id: saga.saga_id.clone(),
        signal: "SHIPPED".into(),
        payload_json: payload,
        idempotency_key: key.into(),
    };
    for (key, payload, code, reason) in [
        (
            "no-fulfillment",
            "{}".to_owned(),
            tonic::Code::InvalidArgument,
            None,
        ),
        (
            "not-json",
            "shipped!".to_owned(),
            tonic::Code::InvalidArgument,
            None,
        ),
        (
            "not-shipped",
            format!(r#"{{"fulfillment_id":"{mine}"}}"#),
            tonic::Code::FailedPrecondition,
            Some("NOT_SHIPPED"),
        ),
        (
            "another-order",
            format!(r#"{{"fulfillment_id":"{theirs}"}}"#),
            tonic::Code::FailedPrecondition,
            Some("NOT_THIS_ORDER"),
        ),
    ] {
        let err = c
            .orchestrator
            .signal_saga(signal(key, payload))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{key}: {err:?}");
        if let Some(reason) = reason {
            assert_eq!(status_reason(&err).as_deref(), Some(reason), "{key}");
        }
    }
    // Packed but not shipped: the forged claim would have let the saga capture here.
    c.pick_and_pack(&order).await;
    c.wait_step(&order, "await_shipment").await;
    let err = c
        .orchestrator
        .signal_saga(signal(
            "packed-not-shipped",
            format!(r#"{{"fulfillment_id":"{mine}"}}"#),
        ))
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("NOT_SHIPPED"));
    let waiting = c.saga(&order).await.unwrap();
    assert_eq!(waiting.status, SagaStatus::Waiting as i32);
    assert_eq!(waiting.current_step, "await_shipment");
    assert!(
        c.payment(&order)
            .await
            .unwrap()
            .captured
            .is_none_or(|m| m.amount_minor == 0)
    );
    c.confirm_ship(&order).await;
    c.wait_saga(&order, &[SagaStatus::Completed], T).await;
    c.ship(&other).await;
    c.wait_saga(&other, &[SagaStatus::Completed], T).await;
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ship_signals_are_refused_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "forged_ship_signals_are_refused_on_every_backend",
        std::time::Duration::from_secs(300),
    );
    for backend in testing::backends() {
        forged_ship_signals_are_refused(backend).await;
    }
}

/// `WatchSaga` over a real socket: watched by order before its saga exists, the stream shows
/// each wait as it starts (the floor acts on what it sees, without polling), ends once the saga
/// completes, and watching a finished saga gives its state once. Bad requests are refused.
async fn watched(backend: Backend) {
    use erp_proto::orchestrator::WatchSagaRequest;
    let (s, mut c) = seeded(&backend).await;
    let order = c.place("W-1", "MUG-BLUE", 1, "tok_visa", "standard").await;
    let mut stream = c
        .orchestrator
        .watch_saga(WatchSagaRequest {
            saga_id: String::new(),
            order_id: order.clone(),
            with_timeline: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut saga_id = String::new();
    while let Some(msg) = tokio::time::timeout(T, stream.message())
        .await
        .expect("a change within the timeout")
        .unwrap()
    {
        let saga = msg.saga.unwrap();
        assert!(saga.timeline.is_empty(), "no timeline unless asked");
        saga_id = saga.saga_id.clone();
        let status = SagaStatus::try_from(saga.status).unwrap();
        seen.push((status, saga.current_step.clone()));
        // Each committed change is sent, and a change can leave the status and step as they
        // were (a signal noted): the floor acts once per wait.
        let acted = seen[..seen.len() - 1].contains(seen.last().unwrap());
        if !acted && status == SagaStatus::Waiting && saga.current_step == "await_pack" {
            c.pick_and_pack(&order).await;
        }
        if !acted && status == SagaStatus::Waiting && saga.current_step == "await_shipment" {
            c.confirm_ship(&order).await;
        }
    }
    let at = |status: SagaStatus, step: &str| {
        seen.iter()
            .position(|(s, st)| *s == status && st == step)
            .unwrap_or_else(|| panic!("{status:?} at {step} not seen in {seen:?}"))
    };
    let pack = at(SagaStatus::Waiting, "await_pack");
    let ship = at(SagaStatus::Waiting, "await_shipment");
    assert!(pack < ship, "{seen:?}");
    assert_eq!(
        seen.last().unwrap().0,
        SagaStatus::Completed,
        "the stream ends with the saga: {seen:?}"
    );

    // A finished saga: its state once, with the timeline when asked, then the end.
    let mut again = c
        .orchestrator
        .watch_saga(WatchSagaRequest {
            saga_id: saga_id.clone(),
            order_id: String::new(),
            with_timeline: true,
        })
        .await
        .unwrap()
        .into_inner();
    let only = again.message().await.unwrap().unwrap().saga.unwrap();
    assert_eq!(only.status, SagaStatus::Completed as i32);
    assert!(!only.timeline.is_empty());
    assert!(again.message().await.unwrap().is_none());

    // Refused: both ids, neither, and a saga that does not exist.
    for (saga_id, order_id) in [("", ""), ("a", "b"), ("not-a-uuid", "")] {
        let err = c
            .orchestrator
            .watch_saga(WatchSagaRequest {
                saga_id: saga_id.into(),
                order_id: order_id.into(),
                with_timeline: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
    let mut missing = c
        .orchestrator
        .watch_saga(WatchSagaRequest {
            saga_id: "0192f0c0-0000-7000-8000-000000000000".into(),
            order_id: String::new(),
            with_timeline: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        missing.message().await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_saga_streams_every_change_until_the_end_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "watch_saga_streams_every_change_until_the_end_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        watched(backend).await;
    }
}
