//! Order API tests on SQLite and PostgreSQL: validation names every bad field, capture is
//! idempotent per channel and external id, line buckets follow the lifecycle, cancellation is
//! refused after shipment.

#![allow(clippy::unwrap_used)]

use erp_proto::common::{Address, Money};
use erp_proto::order::order_service_client::OrderServiceClient;
use erp_proto::order::*;
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};
use tonic::Code;
use tonic_types::StatusExt;

fn address() -> Address {
    Address {
        name: "Grace Hopper".into(),
        line1: "1 Compiler Rd".into(),
        city: "Arlington".into(),
        region: "VA".into(),
        postal_code: "22201".into(),
        country_code: "US".into(),
        ..Default::default()
    }
}

fn order(channel: &str, ext: &str, qty: i64) -> CreateOrderRequest {
    CreateOrderRequest {
        channel: channel.into(),
        external_order_id: ext.into(),
        customer_id: "c1".into(),
        ship_to: Some(address()),
        service_level: "standard".into(),
        currency: "USD".into(),
        lines: vec![
            OrderLineInput {
                line_number: 1,
                sku: "MUG".into(),
                quantity: qty,
                unit_price: Some(Money {
                    amount_minor: 1200,
                    currency: "USD".into(),
                }),
            },
            OrderLineInput {
                line_number: 2,
                sku: "TEE".into(),
                quantity: 1,
                unit_price: Some(Money {
                    amount_minor: 900,
                    currency: "USD".into(),
                }),
            },
        ],
        payment_method_token: "tok_visa".into(),
    }
}

/// The inventory service holding the catalog the order service checks items against.
async fn catalog(backend: &Backend, skus: &[&str]) -> testing::TestService {
    use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
    use erp_proto::inventory::{CreateItemRequest, Item};
    let inventory = testing::spawn::<erp_inventory::Service>(backend).await;
    let mut c = InventoryServiceClient::new(inventory.channel().await);
    for sku in skus {
        c.create_item(CreateItemRequest {
            item: Some(Item {
                sku: (*sku).into(),
                name: (*sku).into(),
                unit_cost: Some(Money {
                    amount_minor: 100,
                    currency: "USD".into(),
                }),
                weight_grams: 100,
                tax_class: "standard".into(),
                low_stock_threshold: 0,
                created_at: None,
            }),
        })
        .await
        .unwrap();
    }
    inventory
}

async fn lifecycle(backend: Backend) {
    let inventory = catalog(&backend, &["MUG", "TEE"]).await;
    let svc = testing::spawn_env::<erp_order::Service>(
        &backend,
        &[("ERP__PEERS__INVENTORY", inventory.url.as_str())],
    )
    .await;
    let mut c = OrderServiceClient::new(svc.channel().await);
    for (code, kind, pattern) in [
        ("web", ChannelKind::WebStore, ""),
        (
            "amazon-us",
            ChannelKind::Marketplace,
            r"^\d{3}-\d{7}-\d{7}$",
        ),
    ] {
        c.upsert_channel(UpsertChannelRequest {
            reason: "setup".into(),
            channel: Some(Channel {
                code: code.into(),
                name: code.into(),
                kind: kind as i32,
                currency: "USD".into(),
                service_levels: vec!["standard".into()],
                commission_bps: 1500,
                external_id_pattern: pattern.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }

    // Tax recorded on the lines: the total becomes subtotal plus tax; recording again replaces
    // the figures; a line of another order is refused.
    let taxed = c
        .create_order(order("web", "TAX-1", 2))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(taxed.total.as_ref().unwrap().amount_minor, 2 * 1200 + 900);
    let tax = |key: &str, amounts: [i64; 2]| RecordTaxRequest {
        idempotency_key: key.into(),
        order_id: taxed.order_id.clone(),
        jurisdiction: "US-VA".into(),
        lines: taxed
            .lines
            .iter()
            .zip(amounts)
            .map(|(l, amount_minor)| LineTaxAmount {
                line_id: l.line_id.clone(),
                rate_bps: 530,
                tax: Some(Money {
                    amount_minor,
                    currency: "USD".into(),
                }),
            })
            .collect(),
    };
    let once = c
        .record_tax(tax("t1", [127, 48]))
        .await
        .unwrap()
        .into_inner();
    let o = once.order.unwrap();
    assert_eq!(o.tax_total.unwrap().amount_minor, 175);
    assert_eq!(o.total.unwrap().amount_minor, 3300 + 175);
    assert_eq!(o.lines[0].tax.as_ref().unwrap().amount_minor, 127);
    assert_eq!(o.tax_jurisdiction, "US-VA");
    let again = c
        .record_tax(tax("t2", [100, 50]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.order.unwrap().total.unwrap().amount_minor, 3300 + 150);
    let mut stray = tax("t3", [1, 1]);
    stray.lines[0].line_id = uuid::Uuid::now_v7().to_string();
    let err = c.record_tax(stray).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("lines[0].line_id"),
        "{}",
        err.message()
    );

    // Every bad field is named at once.
    let mut bad = order("web", "", 0);
    bad.currency = "usd".into();
    bad.ship_to.as_mut().unwrap().country_code = "USA".into();
    let err = c.create_order(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<_> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "external_order_id",
            "currency",
            "ship_to.country_code",
            "lines[0].quantity"
        ]
    );
    // Channel rules: the marketplace's order-id format, an unknown channel.
    let err = c
        .create_order(order("amazon-us", "12345", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("external_order_id"));
    let err = c.create_order(order("nope", "1", 1)).await.unwrap_err();
    assert!(err.message().contains("unknown channel"));
    // Items the catalog does not hold are named, and nothing is recorded.
    let mut unknown = order("web", "W-unknown", 1);
    unknown.lines[1].sku = "GHOST".into();
    let err = c.create_order(unknown.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(testing::bad_fields(&err), ["lines[1].sku"]);
    assert!(err.message().contains("GHOST"), "{}", err.message());
    c.create_order(order("amazon-us", "112-1234567-1234567", 1))
        .await
        .unwrap();

    let created = c
        .create_order(order("web", "W-1", 2))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    let o = created.order.unwrap();
    assert_eq!(o.total.unwrap().amount_minor, 2 * 1200 + 900);
    assert_eq!(o.status, OrderStatus::Accepted as i32);
    let again = c
        .create_order(order("web", "W-1", 2))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.order.unwrap().order_id, o.order_id);
    let err = c.create_order(order("web", "W-1", 3)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Allocate line 1 (one unit backordered), line 2 fully; ship; buckets add up.
    let l1 = o.lines[0].line_id.clone();
    let l2 = o.lines[1].line_id.clone();
    let allocated = c
        .record_allocation(RecordAllocationRequest {
            idempotency_key: "alloc".into(),
            order_id: o.order_id.clone(),
            allocations: vec![
                LineAllocation {
                    line_id: l1.clone(),
                    location: "east".into(),
                    allocated: 1,
                    backordered: 1,
                    promised_by: None,
                },
                LineAllocation {
                    line_id: l2,
                    location: "east".into(),
                    allocated: 1,
                    backordered: 0,
                    promised_by: None,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(allocated.status, OrderStatus::Backordered as i32);
    let over = c
        .record_allocation(RecordAllocationRequest {
            idempotency_key: "alloc-over".into(),
            order_id: o.order_id.clone(),
            allocations: vec![LineAllocation {
                line_id: l1.clone(),
                location: "east".into(),
                allocated: 3,
                backordered: 0,
                promised_by: None,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&over).as_deref(), Some("OVER_ALLOCATION"));
    // Cancelling an allocated line is only a request: its shipment is in progress, and the
    // fulfillment saga stops it (before its pivot) or ships it. Nothing changes here.
    let requested = c
        .cancel_order(CancelOrderRequest {
            idempotency_key: "c-l2".into(),
            order_id: o.order_id.clone(),
            line_ids: vec![o.lines[1].line_id.clone()],
            actor: None,
            include_allocated: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(requested.pending_line_ids, vec![o.lines[1].line_id.clone()]);
    let l2q = requested.order.unwrap().lines[1].quantities.unwrap();
    assert_eq!((l2q.allocated, l2q.cancelled), (1, 0));
    let shipped = c
        .mark_shipped(MarkShippedRequest {
            idempotency_key: "ship".into(),
            order_id: o.order_id.clone(),
            tracking_number: "T1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(shipped.status, OrderStatus::PartiallyShipped as i32);
    for line in &shipped.lines {
        let q = line.quantities.unwrap();
        assert_eq!(
            q.open + q.allocated + q.shipped + q.backordered + q.cancelled + q.returned,
            q.ordered
        );
    }
    // Cancelling the rest cancels only the backordered unit; after that nothing is left.
    let cancel = |key: &str| CancelOrderRequest {
        idempotency_key: key.into(),
        order_id: o.order_id.clone(),
        line_ids: vec![],
        actor: None,
        include_allocated: false,
    };
    let after = c
        .cancel_order(cancel("c1"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(after.lines[0].quantities.unwrap().cancelled, 1);
    assert_eq!(
        after.total.as_ref().unwrap().amount_minor,
        1200 + 900,
        "the total is what is not cancelled"
    );
    assert_eq!(after.status, OrderStatus::Shipped as i32);
    let err = c.cancel_order(cancel("c2")).await.unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("ALREADY_SHIPPED"));
    // The repeat of the first cancellation answers as before.
    let repeat = c
        .cancel_order(cancel("c1"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(repeat, after);

    // The orchestrator, once it stopped a shipment, cancels its allocated units too.
    let o2 = c
        .create_order(order("web", "W-2", 2))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    c.record_allocation(RecordAllocationRequest {
        idempotency_key: "alloc-2".into(),
        order_id: o2.order_id.clone(),
        allocations: vec![LineAllocation {
            line_id: o2.lines[0].line_id.clone(),
            location: "east".into(),
            allocated: 2,
            backordered: 0,
            promised_by: None,
        }],
    })
    .await
    .unwrap();
    let stopped = c
        .cancel_order(CancelOrderRequest {
            idempotency_key: "c-o2".into(),
            order_id: o2.order_id.clone(),
            line_ids: vec![o2.lines[0].line_id.clone()],
            actor: None,
            include_allocated: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stopped.pending_line_ids.is_empty());
    let q = stopped.order.unwrap().lines[0].quantities.unwrap();
    assert_eq!((q.allocated, q.cancelled), (0, 2));

    let listed = c
        .list_orders(ListOrdersRequest {
            channel: "web".into(),
            status: OrderStatus::Shipped as i32,
            page_size: 10,
            page_token: String::new(),
            external_order_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.orders.len(), 1);
    // The channel's own id finds the order; another finds nothing.
    for (external, found) in [
        (listed.orders[0].external_order_id.clone(), 1),
        ("nope".into(), 0),
    ] {
        let by_external = c
            .list_orders(ListOrdersRequest {
                channel: "web".into(),
                external_order_id: external,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_external.orders.len(), found);
    }
    let nothing = c
        .list_orders(ListOrdersRequest {
            channel: "web".into(),
            external_order_id: "W-unknown".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nothing.orders.is_empty());
    // A page token beyond any page (it once panicked inside the SQL driver): the field is named.
    for token in ["18446744073709551615", "9223372036854775808", "-1", "x"] {
        let err = c
            .list_orders(ListOrdersRequest {
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{token}: {err:?}");
        assert_eq!(testing::bad_fields(&err), ["page_token"], "{token}");
    }
    // With the catalog down, known items still sell; an item never seen cannot be checked,
    // so the order is refused as retryable (capture is idempotent), not accepted unchecked.
    inventory.stop().await;
    c.create_order(order("web", "W-3", 1)).await.unwrap();
    let err = c.create_order(unknown).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_lifecycle_on_every_backend() {
    for backend in testing::backends() {
        lifecycle(backend).await;
    }
}
