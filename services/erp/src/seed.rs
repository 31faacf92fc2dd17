//! Seeds a small catalog over gRPC, exactly as a client would: items, three warehouses with
//! stock, a carrier with a rate card, three channels, a supplier. Idempotent: running it twice
//! changes nothing the second time.

use erp_proto::carrier::{
    Carrier, PickupCutoff, RateBand, ServiceLevel, ServiceOffering, UpsertCarrierRequest,
};
use erp_proto::common::{Address, Money};
use erp_proto::inventory::{
    CreateItemRequest, CreateLocationRequest, Item, Location, ReceiveStockRequest,
};
use erp_proto::order::{
    Channel, ChannelKind, CreateOrderRequest, OrderLineInput, UpsertChannelRequest,
};
use erp_proto::procurement::{CreateSupplierRequest, SetSupplierTermRequest, SupplierTerm};
use erp_proto::warehouse::{Site, UpsertSiteRequest};

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

/// (sku, name, cost, weight grams)
pub const CATALOG: [(&str, &str, i64, i64); 3] = [
    ("MUG-BLUE", "Blue mug", 450, 350),
    ("TEE-M", "T-shirt, medium", 700, 200),
    ("LAMP-01", "Desk lamp", 2100, 1800),
];

/// Sales tax of the `standard` class: (jurisdiction, basis points).
pub const TAX_RATES: [(&str, i32); 2] = [("US-NJ", 663), ("US", 500)];

/// (code, region, postal code, cost index)
pub const WAREHOUSES: [(&str, &str, &str, i32); 3] = [
    ("east", "US-NJ", "07001", 2),
    ("central", "US-IL", "60601", 1),
    ("west", "US-CA", "94105", 3),
];

/// Seeds the catalog against a running suite.
pub async fn seed(suite: &crate::Suite) -> anyhow::Result<()> {
    seed_with(&crate::testkit::Clients::for_suite(suite)).await
}

/// Seeds the catalog against services wherever they run, as the principal of `clients`.
pub async fn seed_with(clients: &crate::testkit::Clients) -> anyhow::Result<()> {
    let mut inventory = clients.inventory.clone();
    let mut warehouse = clients.warehouse.clone();
    for (sku, name, cost, weight) in CATALOG {
        inventory
            .create_item(CreateItemRequest {
                item: Some(Item {
                    sku: sku.into(),
                    name: name.into(),
                    unit_cost: usd(cost),
                    weight_grams: weight,
                    tax_class: "standard".into(),
                    low_stock_threshold: 10,
                    created_at: None,
                }),
            })
            .await?;
    }
    for (i, (code, region, postal_code, cost_index)) in WAREHOUSES.into_iter().enumerate() {
        inventory
            .create_location(CreateLocationRequest {
                location: Some(Location {
                    code: code.into(),
                    name: format!("{code} distribution center"),
                    region: region.into(),
                    status: 0,
                    status_reason: String::new(),
                }),
            })
            .await?;
        warehouse
            .upsert_site(UpsertSiteRequest {
                reason: "setup".into(),
                site: Some(Site {
                    code: code.into(),
                    name: format!("{code} distribution center"),
                    region: region.into(),
                    daily_capacity: 5000,
                    cutoff_minute_of_day: 17 * 60,
                    utc_offset_minutes: 0,
                    status: 0,
                    status_reason: String::new(),
                    cost_index,
                    postal_code: postal_code.into(),
                }),
            })
            .await?;
        for (j, (sku, ..)) in CATALOG.into_iter().enumerate() {
            let quantity = [40, 25, 10][(i + j) % 3];
            inventory
                .receive_stock(ReceiveStockRequest {
                    idempotency_key: format!("seed-{code}-{sku}"),
                    sku: sku.into(),
                    location: code.into(),
                    quantity,
                    source: None,
                    from_inbound: false,
                    unit_cost: None,
                })
                .await?;
        }
    }
    // Sales tax: New Jersey's rate for the sample orders, a default for the rest of the US.
    let mut finance = clients.finance.clone();
    for (jurisdiction, rate_bps) in TAX_RATES {
        finance
            .set_tax_rate(erp_proto::finance::SetTaxRateRequest {
                reason: "setup".into(),
                rate: Some(erp_proto::finance::TaxRate {
                    jurisdiction: jurisdiction.into(),
                    tax_class: "standard".into(),
                    rate_bps,
                }),
            })
            .await?;
    }
    let mut carrier = clients.carrier.clone();
    let bands = |base: i64| -> Vec<RateBand> {
        (1..=10)
            .flat_map(|zone| {
                [(1000, 0), (5000, 400), (20_000, 1500)].map(|(max, extra)| RateBand {
                    zone,
                    max_weight_grams: max,
                    price: usd(base + i64::from(zone) * 60 + extra),
                })
            })
            .collect()
    };
    carrier
        .upsert_carrier(UpsertCarrierRequest {
            reason: "setup".into(),
            carrier: Some(Carrier {
                code: "parcelco".into(),
                name: "ParcelCo".into(),
                services: vec![
                    ServiceOffering {
                        code: "ground".into(),
                        level: ServiceLevel::Ground as i32,
                        transit_days: 5,
                        rates: bands(500),
                        surcharge: usd(35),
                    },
                    ServiceOffering {
                        code: "express".into(),
                        level: ServiceLevel::TwoDay as i32,
                        transit_days: 2,
                        rates: bands(1400),
                        surcharge: usd(35),
                    },
                ],
                cutoffs: WAREHOUSES
                    .iter()
                    .map(|(code, ..)| PickupCutoff {
                        site: (*code).into(),
                        cutoff_minute_of_day: 18 * 60,
                    })
                    .collect(),
                active: true,
            }),
        })
        .await?;
    // A cheaper two-day carrier whose API times out once per label (the simulated adapter).
    carrier
        .upsert_carrier(UpsertCarrierRequest {
            reason: "setup".into(),
            carrier: Some(Carrier {
                code: "flakyship".into(),
                name: "FlakyShip".into(),
                services: vec![ServiceOffering {
                    code: "twoday".into(),
                    level: ServiceLevel::TwoDay as i32,
                    transit_days: 2,
                    rates: bands(1100),
                    surcharge: usd(0),
                }],
                cutoffs: vec![],
                active: true,
            }),
        })
        .await?;
    let mut order = clients.order.clone();
    for (code, kind, commission, pattern, ship_complete) in [
        ("web", ChannelKind::WebStore, 0, "", false),
        (
            "amazon-us",
            ChannelKind::Marketplace,
            1500,
            r"^\d{3}-\d{7}-\d{7}$",
            false,
        ),
        ("wholesale", ChannelKind::Wholesale, 0, "", true),
    ] {
        order
            .upsert_channel(UpsertChannelRequest {
                reason: "setup".into(),
                channel: Some(Channel {
                    code: code.into(),
                    name: code.into(),
                    kind: kind as i32,
                    currency: "USD".into(),
                    service_levels: vec!["standard".into(), "express".into()],
                    commission_bps: commission,
                    fixed_fee_minor: if commission > 0 { 99 } else { 0 },
                    external_id_pattern: pattern.into(),
                    ship_complete,
                    net_terms_days: if ship_complete { 30 } else { 0 },
                }),
            })
            .await?;
    }
    let mut procurement = clients.procurement.clone();
    let acme = procurement
        .create_supplier(CreateSupplierRequest {
            code: "acme".into(),
            name: "Acme Homewares".into(),
            currency: "USD".into(),
            contact_email: "orders@acme.example".into(),
        })
        .await?
        .into_inner()
        .supplier
        .map(|s| s.supplier_id)
        .unwrap_or_default();
    // Acme supplies the whole catalog at its catalog cost, in a week.
    for (sku, _, cost, _) in CATALOG {
        procurement
            .set_supplier_term(SetSupplierTermRequest {
                term: Some(SupplierTerm {
                    supplier_id: acme.clone(),
                    sku: sku.into(),
                    unit_cost: usd(cost),
                    lead_time_days: 7,
                    minimum_order_quantity: 1,
                    pack_multiple: 1,
                }),
            })
            .await?;
    }
    Ok(())
}

/// A web-store order for the seeded catalog.
pub fn sample_order(external_id: &str, sku: &str, quantity: i64) -> CreateOrderRequest {
    CreateOrderRequest {
        channel: "web".into(),
        external_order_id: external_id.into(),
        customer_id: "cust-1".into(),
        ship_to: Some(Address {
            name: "Ada Lovelace".into(),
            line1: "1 Analytical Way".into(),
            line2: String::new(),
            city: "Newark".into(),
            region: "NJ".into(),
            postal_code: "07102".into(),
            country_code: "US".into(),
            phone: String::new(),
            email: "ada@example.com".into(),
        }),
        service_level: "standard".into(),
        currency: "USD".into(),
        lines: vec![OrderLineInput {
            line_number: 1,
            sku: sku.into(),
            quantity,
            unit_price: usd(1299),
        }],
        payment_method_token: "tok_visa".into(),
    }
}
