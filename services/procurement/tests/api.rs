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
    let approver = |roles: Vec<String>, id: &str| ApprovePurchaseOrderRequest {
        purchase_order_id: id.into(),
        approver: Some(Actor {
            id: "buyer-1".into(),
            reason: String::new(),
        }),
        approver_roles: roles,
    };
    let ok = c
        .approve_purchase_order(approver(vec![], &small.purchase_order_id))
        .await
        .unwrap();
    assert_eq!(
        ok.into_inner().purchase_order.unwrap().approved_by,
        "buyer-1"
    );

    // 3,600 units = 14,400.00, above the 10,000.00 threshold.
    let big = c
        .create_purchase_order(po("p2", 3600))
        .await
        .unwrap()
        .into_inner()
        .purchase_order
        .unwrap();
    let err = c
        .approve_purchase_order(approver(vec![], &big.purchase_order_id))
        .await
        .unwrap_err();
    assert_eq!(
        status_reason(&err).as_deref(),
        Some("APPROVER_ROLE_REQUIRED")
    );
    let approved = c
        .approve_purchase_order(approver(vec!["approver".into()], &big.purchase_order_id))
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
