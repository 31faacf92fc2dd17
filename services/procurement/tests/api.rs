//! Procurement API tests on SQLite and PostgreSQL: supplier terms shape purchase orders, and
//! approvals above the threshold need the approver role.

#![allow(clippy::unwrap_used)]

use erp_proto::common::{Actor, Money};
use erp_proto::procurement::procurement_service_client::ProcurementServiceClient;
use erp_proto::procurement::*;
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};
use tonic::Code;

async fn purchase_orders(backend: Backend) {
    let svc = testing::spawn::<erp_procurement::Service>(&backend).await;
    let mut c = ProcurementServiceClient::new(svc.channel().await);
    let supplier = c
        .create_supplier(CreateSupplierRequest {
            code: "acme".into(),
            name: "Acme".into(),
            currency: "USD".into(),
            contact_email: "po@acme.example".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    c.set_supplier_term(SetSupplierTermRequest {
        term: Some(SupplierTerm {
            supplier_id: supplier.supplier_id.clone(),
            sku: "MUG".into(),
            unit_cost: Some(Money {
                amount_minor: 400,
                currency: "USD".into(),
            }),
            lead_time_days: 10,
            minimum_order_quantity: 24,
            pack_multiple: 12,
        }),
    })
    .await
    .unwrap();
    let po = |key: &str, qty: i64| CreatePurchaseOrderRequest {
        idempotency_key: key.into(),
        supplier_id: supplier.supplier_id.clone(),
        location: "east".into(),
        lines: vec![PurchaseOrderLine {
            sku: "MUG".into(),
            quantity: qty,
            ..Default::default()
        }],
    };
    // Below the minimum and not a pack multiple: both reasons named.
    let err = c.create_purchase_order(po("p0", 13)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("minimum order quantity 24"));
    assert!(err.message().contains("pack size 12"));

    let small = c
        .create_purchase_order(po("p1", 24))
        .await
        .unwrap()
        .into_inner()
        .purchase_order
        .unwrap();
    assert_eq!(small.total.unwrap().amount_minor, 24 * 400);
    assert_eq!(small.status, PurchaseOrderStatus::Draft as i32);
    let approver = |id: &str| ApprovePurchaseOrderRequest {
        purchase_order_id: id.into(),
        approver: Some(Actor {
            id: "buyer-1".into(),
            reason: String::new(),
        }),
    };
    let ok = c
        .approve_purchase_order(approver(&small.purchase_order_id))
        .await
        .unwrap();
    // Who approves is the verified caller, never the body's actor: with authentication off
    // (this test) that is `anonymous`. Roles, limits and maker-checker are tested with tokens
    // in integration-tests/tests/replenishment.rs.
    assert_eq!(
        ok.into_inner().purchase_order.unwrap().approved_by,
        "anonymous"
    );

    // 3,600 units = 14,400.00, above the 10,000.00 threshold.
    let big = c
        .create_purchase_order(po("p2", 3600))
        .await
        .unwrap()
        .into_inner()
        .purchase_order
        .unwrap();
    let approved = c
        .approve_purchase_order(approver(&big.purchase_order_id))
        .await
        .unwrap()
        .into_inner()
        .purchase_order
        .unwrap();
    assert_eq!(approved.status, PurchaseOrderStatus::Approved as i32);
    assert!(approved.approved_at.is_some());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_orders_on_every_backend() {
    for backend in testing::backends() {
        purchase_orders(backend).await;
    }
}

/// An approval racing a cancellation, over and over: a cancellation that answered OK is never
/// overwritten by the approval (the purchase order ends cancelled every time), and an approval
/// that answered OK happened before it.
async fn approve_racing_cancel(backend: Backend) {
    let svc = testing::spawn::<erp_procurement::Service>(&backend).await;
    let mut c = ProcurementServiceClient::new(svc.channel().await);
    let supplier = c
        .create_supplier(CreateSupplierRequest {
            code: "race".into(),
            name: "Race Ltd".into(),
            currency: "USD".into(),
            contact_email: "po@race.example".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    c.set_supplier_term(SetSupplierTermRequest {
        term: Some(SupplierTerm {
            supplier_id: supplier.supplier_id.clone(),
            sku: "CUP".into(),
            unit_cost: Some(Money {
                amount_minor: 100,
                currency: "USD".into(),
            }),
            lead_time_days: 5,
            minimum_order_quantity: 1,
            pack_multiple: 1,
        }),
    })
    .await
    .unwrap();
    let (mut approved_first, mut refused) = (0, 0);
    for round in 0..16 {
        let po = c
            .create_purchase_order(CreatePurchaseOrderRequest {
                idempotency_key: format!("race-{round}"),
                supplier_id: supplier.supplier_id.clone(),
                location: "east".into(),
                lines: vec![PurchaseOrderLine {
                    sku: "CUP".into(),
                    quantity: 10,
                    ..Default::default()
                }],
            })
            .await
            .unwrap()
            .into_inner()
            .purchase_order
            .unwrap();
        let id = po.purchase_order_id.clone();
        let (mut a, mut b) = (c.clone(), c.clone());
        let (ida, idb) = (id.clone(), id.clone());
        let approve = tokio::spawn(async move {
            a.approve_purchase_order(ApprovePurchaseOrderRequest {
                purchase_order_id: ida,
                approver: Some(Actor {
                    id: "approver-1".into(),
                    reason: String::new(),
                }),
            })
            .await
        });
        let cancel = tokio::spawn(async move {
            b.cancel_purchase_order(CancelPurchaseOrderRequest {
                purchase_order_id: idb,
                ..Default::default()
            })
            .await
        });
        let (approve, cancel) = (approve.await.unwrap(), cancel.await.unwrap());
        cancel.unwrap();
        match approve {
            Ok(_) => approved_first += 1,
            Err(e) => {
                assert_eq!(status_reason(&e).as_deref(), Some("NOT_DRAFT"), "{e:?}");
                refused += 1;
            }
        }
        let after = c
            .get_purchase_order(GetPurchaseOrderRequest {
                purchase_order_id: id,
            })
            .await
            .unwrap()
            .into_inner()
            .purchase_order
            .unwrap();
        assert_eq!(
            after.status,
            PurchaseOrderStatus::Cancelled as i32,
            "{}: round {round}: the cancellation was overwritten: {after:#?}",
            backend.name()
        );
    }
    println!(
        "{}: 16 approve/cancel races: approval first {approved_first}, refused {refused}, cancelled 16",
        backend.name()
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approve_racing_cancel_never_loses_the_cancel_on_every_backend() {
    for backend in testing::backends() {
        approve_racing_cancel(backend).await;
    }
}
