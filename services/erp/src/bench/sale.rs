//! The flash sale end to end: `orders` customers each order one unit of an item that has
//! `units` in stock over the three warehouses, through `CreateOrder`, `concurrency` at a time.
//! An order is settled when its saga has allocated it (reserved at a warehouse, waiting for the
//! packer) or backordered it (waiting for stock). Measured: the time until the last order is
//! settled, and per order from placed to settled; checked: nothing oversold, and no unit left
//! unsold while an order waits for stock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use erp_proto::inventory::{CreateItemRequest, GetAvailabilityRequest, Item, ReceiveStockRequest};
use erp_proto::orchestrator::SagaStatus;
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::testkit::Clients;

/// Streams watching sagas at once (under HTTP/2's usual 200 streams per connection).
const WATCHERS: usize = 128;

/// Figures of one end-to-end flash sale.
pub struct Sale {
    pub orders: usize,
    pub units: i64,
    pub allocated: usize,
    pub backordered: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// Until the last `CreateOrder` was answered.
    pub placed_in: Duration,
    /// Until the last order was settled.
    pub settled_in: Duration,
    /// Per order, placed to settled.
    pub latencies: Vec<Duration>,
    /// What the three warehouses have left to promise after the sale.
    pub available_after: i64,
}

impl Sale {
    pub fn oversold(&self) -> i64 {
        (self.allocated as i64 - self.units).max(0)
    }

    /// Units still available while orders wait for stock.
    pub fn unsold(&self) -> i64 {
        if self.backordered > 0 {
            self.available_after
        } else {
            0
        }
    }
}

enum Settled {
    Allocated,
    Backordered,
}

/// Watches the saga of `order_id` until it is settled.
async fn settle(c: &mut Clients, order_id: &str) -> Result<Settled, String> {
    super::watch_until(
        c,
        String::new(),
        order_id.into(),
        |s| match SagaStatus::try_from(s.status).unwrap_or(SagaStatus::Unspecified) {
            SagaStatus::Waiting if s.current_step == "await_pack" => Some(Ok(Settled::Allocated)),
            SagaStatus::Waiting if s.current_step == "route" => Some(Ok(Settled::Backordered)),
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Parked => Some(Err(
                format!("saga ended {}: {}", s.current_step, s.last_error),
            )),
            _ => None,
        },
    )
    .await
}

/// Runs the sale on a seeded suite (the three warehouses of [`crate::seed::WAREHOUSES`]).
pub async fn flash_orders(
    c: &Clients,
    orders: usize,
    units: i64,
    concurrency: usize,
) -> anyhow::Result<Sale> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let sku = format!("FLASH-{}", &run[20..]);
    let mut inventory = c.inventory.clone();
    inventory
        .create_item(CreateItemRequest {
            item: Some(Item {
                sku: sku.clone(),
                name: "Flash sale console".into(),
                unit_cost: Some(erp_proto::common::Money {
                    amount_minor: 800,
                    currency: "USD".into(),
                }),
                weight_grams: 500,
                tax_class: "standard".into(),
                low_stock_threshold: 0,
                created_at: None,
            }),
        })
        .await?;
    let sites = crate::seed::WAREHOUSES.len() as i64;
    for (i, (code, ..)) in crate::seed::WAREHOUSES.into_iter().enumerate() {
        // Spread as evenly as it goes: 167, 167, 166 of 500.
        let share = units / sites + i64::from((i as i64) < units % sites);
        inventory
            .receive_stock(ReceiveStockRequest {
                idempotency_key: format!("{sku}-{code}"),
                sku: sku.clone(),
                location: code.into(),
                quantity: share,
                source: None,
                from_inbound: false,
                unit_cost: None,
            })
            .await?;
    }

    let started = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let rx = rx.clone();
        let mut c = c.clone();
        watchers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((order_id, placed)) = next else {
                    return out;
                };
                let result = settle(&mut c, &order_id).await;
                out.push((result, placed.elapsed(), started.elapsed()));
            }
        }));
    }
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut placing = Vec::with_capacity(orders);
    for i in 0..orders {
        let permit = permits.clone().acquire_owned().await?;
        let mut c = c.clone();
        let tx = tx.clone();
        let req = crate::seed::sample_order(&format!("{sku}-{i}"), &sku, 1);
        placing.push(tokio::spawn(async move {
            let _permit = permit;
            let placed = Instant::now();
            let order = c
                .order
                .create_order(req)
                .await
                .map_err(|e| format!("CreateOrder: {e}"))?
                .into_inner()
                .order
                .ok_or("CreateOrder answered no order")?;
            let _ = tx.send((order.order_id, placed));
            Ok::<_, String>(())
        }));
    }
    drop(tx);
    let mut sale = Sale {
        orders,
        units,
        allocated: 0,
        backordered: 0,
        failed: 0,
        first_error: None,
        placed_in: Duration::ZERO,
        settled_in: Duration::ZERO,
        latencies: Vec::with_capacity(orders),
        available_after: 0,
    };
    for p in placing {
        if let Err(e) = p.await? {
            sale.failed += 1;
            sale.first_error.get_or_insert(e);
        }
    }
    sale.placed_in = started.elapsed();
    for w in watchers {
        for (result, latency, at) in w.await? {
            match result {
                Ok(Settled::Allocated) => sale.allocated += 1,
                Ok(Settled::Backordered) => sale.backordered += 1,
                Err(e) => {
                    sale.failed += 1;
                    sale.first_error.get_or_insert(e);
                    continue;
                }
            }
            sale.latencies.push(latency);
            sale.settled_in = sale.settled_in.max(at);
        }
    }
    sale.available_after = inventory
        .get_availability(GetAvailabilityRequest {
            skus: vec![sku],
            as_of: None,
            include_inbound: false,
        })
        .await?
        .into_inner()
        .items
        .first()
        .map_or(0, |a| a.network_available);
    Ok(sale)
}

pub fn print_sale(s: &Sale) {
    println!(
        "flash-orders {} orders for {} units over 3 warehouses: {} allocated, {} backordered, {} failed; \
         all placed in {:.2} s, all settled in {:.2} s ({:.0} orders/s); placed to settled p50 {:.0} ms, p99 {:.0} ms",
        s.orders,
        s.units,
        s.allocated,
        s.backordered,
        s.failed,
        s.placed_in.as_secs_f64(),
        s.settled_in.as_secs_f64(),
        (s.allocated + s.backordered) as f64 / s.settled_in.as_secs_f64().max(1e-9),
        super::percentile(&s.latencies, 0.5).as_secs_f64() * 1000.0,
        super::percentile(&s.latencies, 0.99).as_secs_f64() * 1000.0,
    );
    println!(
        "flash-orders oversold {} units; {} units left to promise ({} unsold while orders wait for stock)",
        s.oversold(),
        s.available_after,
        s.unsold()
    );
    if let Some(e) = &s.first_error {
        println!("flash-orders first failure: {e}");
    }
}
