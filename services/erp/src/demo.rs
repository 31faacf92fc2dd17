//! `erp demo`: the suite doing real fulfillment work on the embedded default. Seeds a catalog,
//! pushes a mix of orders from three channels (some for more than exists, some with cards that
//! decline, express ones through a carrier that times out once), plays the warehouse (picks,
//! packs and ships what is waiting; finds a damaged unit now and then, which re-routes the order
//! to another warehouse), plays the carriers (tracking webhooks, repeated and out of order, up
//! to delivery), and prints what happened, with stock and ledger totals that must
//! reconcile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use erp_proto::orchestrator::{ListSagasRequest, SagaStatus, StepOutcome};
use erp_proto::{carrier, finance, inventory, warehouse};

use crate::testkit::Clients;

/// What the demo saw.
#[derive(Debug, Default)]
pub struct Report {
    pub orders: usize,
    pub shipped: usize,
    pub units_shipped: i64,
    pub revenue_minor: i64,
    pub tax_minor: i64,
    pub compensated: BTreeMap<String, usize>,
    pub parked: usize,
    pub carrier_retries: usize,
    pub payment_retries: usize,
    /// Orders re-routed after the warehouse reported a damaged unit.
    pub rerouted: usize,
    /// Units the warehouses reported damaged (moved from on hand to quarantine).
    pub quarantined: i64,
    /// Orders that waited for stock (backordered), and the purchase order the demo's buyer
    /// placed and received for them.
    pub backordered: usize,
    pub purchased_units: i64,
    /// Tracking webhooks the simulated carriers sent (with repeats and reordering), how many
    /// moved a shipment forward, and how many shipments ended delivered.
    pub tracking_events: usize,
    pub tracking_applied: usize,
    pub delivered: usize,
    pub on_hand_before: i64,
    pub on_hand_after: i64,
    pub reserved_after: i64,
    pub ledger_consistent: bool,
    pub journal_balanced: bool,
    pub revenue_in_ledger_minor: i64,
    /// Inventory at moving-average cost, and the inventory asset account.
    pub stock_value_minor: i64,
    pub stock_in_ledger_minor: i64,
    pub elapsed: Duration,
}

impl Report {
    /// Whether stock and money reconcile with the orders' outcomes.
    pub fn reconciles(&self) -> bool {
        self.stock_adds_up()
            && self.reserved_after == 0
            && self.ledger_consistent
            && self.journal_balanced
            && self.revenue_in_ledger_minor == self.revenue_minor
            && self.stock_value_minor == self.stock_in_ledger_minor
    }
}

impl Report {
    /// Stock before, plus what was bought, less what is left, is what shipped or broke.
    fn stock_adds_up(&self) -> bool {
        self.on_hand_before + self.purchased_units - self.on_hand_after
            == self.units_shipped + self.quarantined
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ok = |b: bool| if b { "ok" } else { "MISMATCH" };
        writeln!(
            f,
            "demo: {} orders in {:.1} s",
            self.orders,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  shipped            {:>4}  ({} units, revenue {:.2} USD, sales tax {:.2} USD)",
            self.shipped,
            self.units_shipped,
            self.revenue_minor as f64 / 100.0,
            self.tax_minor as f64 / 100.0
        )?;
        for (reason, n) in &self.compensated {
            writeln!(f, "  compensated        {n:>4}  {reason}")?;
        }
        writeln!(f, "  parked             {:>4}", self.parked)?;
        writeln!(
            f,
            "  timeouts retried with the same key: carrier {}, payment provider {}",
            self.carrier_retries, self.payment_retries
        )?;
        writeln!(
            f,
            "  re-routed          {:>4}  (damaged unit found at the first warehouse)",
            self.rerouted
        )?;
        writeln!(
            f,
            "  backordered        {:>4}  (waited for stock; released by a purchase order of {} units)",
            self.backordered, self.purchased_units
        )?;
        writeln!(
            f,
            "  delivered          {:>4}  ({} tracking events, {} applied, the rest repeats or late)",
            self.delivered, self.tracking_events, self.tracking_applied
        )?;
        writeln!(
            f,
            "  stock on hand      {} + {} bought -> {} (shipped {}, quarantined {}): {}",
            self.on_hand_before,
            self.purchased_units,
            self.on_hand_after,
            self.units_shipped,
            self.quarantined,
            ok(self.stock_adds_up())
        )?;
        writeln!(
            f,
            "  stock reserved     {}: {}",
            self.reserved_after,
            ok(self.reserved_after == 0)
        )?;
        writeln!(f, "  stock ledger replay: {}", ok(self.ledger_consistent))?;
        writeln!(f, "  journal balanced:    {}", ok(self.journal_balanced))?;
        writeln!(
            f,
            "  revenue in ledger  +{:.2} USD: {}",
            self.revenue_in_ledger_minor as f64 / 100.0,
            ok(self.revenue_in_ledger_minor == self.revenue_minor)
        )?;
        write!(
            f,
            "  inventory asset    {:.2} USD, stock valued {:.2} USD: {}",
            self.stock_in_ledger_minor as f64 / 100.0,
            self.stock_value_minor as f64 / 100.0,
            ok(self.stock_value_minor == self.stock_in_ledger_minor)
        )
    }
}

/// Runs the demo against a seeded suite.
pub async fn run(suite: &crate::Suite, orders: usize) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut c = Clients::for_suite(suite);
    let mut report = Report {
        orders,
        ..Report::default()
    };
    report.on_hand_before = c.stock_totals().await.0;
    let revenue_before = ledger_revenue(&mut c).await?;
    let mut placed = Vec::with_capacity(orders);
    // Distinct external ids per run, so a second demo on the same data places new orders.
    let run = erp_runtime::time::now_ms() / 1000 % 10_000_000;
    for i in 0..orders {
        let (sku, ..) = crate::seed::CATALOG[i % 3];
        // Every 9th order wants more than any warehouse holds: it waits, backordered, until the
        // demo's buyer receives a purchase order.
        let qty = if i % 9 == 8 { 60 } else { 1 + (i % 2) as i64 };
        // Every 7th card declines (unless the order is wholesale, on net terms: no card is
        // charged); every 11th meets a payment provider that times out once.
        let token = if i % 7 == 6 {
            "tok_decline_insufficient_funds"
        } else if i % 11 == 10 {
            "tok_timeout_visa"
        } else {
            "tok_visa"
        };
        let level = if i % 4 == 3 { "express" } else { "standard" };
        let mut req = crate::seed::sample_order(&format!("DEMO-{run}-{i:04}"), sku, qty);
        match i % 3 {
            1 => {
                req.channel = "amazon-us".into();
                req.external_order_id = format!("113-{run:07}-{i:07}");
            }
            2 => req.channel = "wholesale".into(),
            _ => {}
        }
        req.payment_method_token = token.into();
        req.service_level = level.into();
        let order = c.order.create_order(req).await?.into_inner().order;
        if let Some(o) = order {
            placed.push(o.order_id);
        }
    }
    // Play the warehouse until every saga is finished: pick and pack what waits for packing
    // (every 10th order's first pick finds a damaged unit instead), ship what has its label.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut packed = std::collections::HashSet::new();
    let mut shipped = std::collections::HashSet::new();
    let mut damaged = std::collections::HashSet::new();
    let mut bought = false;
    loop {
        let mut open = 0;
        let mut waiting_for_stock = Vec::new();
        for (i, id) in placed.iter().enumerate() {
            let Some(saga) = c.saga(id).await else {
                open += 1;
                continue;
            };
            match SagaStatus::try_from(saga.status).unwrap_or(SagaStatus::Unspecified) {
                SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Parked => continue,
                SagaStatus::Waiting if saga.current_step == "route" => {
                    waiting_for_stock.push(id.clone());
                }
                SagaStatus::Waiting if saga.current_step == "await_pack" => {
                    let fulfillments = c.open_fulfillments(id).await;
                    match fulfillments.first() {
                        Some(f) if i % 10 == 4 && damaged.insert(id.clone()) => {
                            let task = &f.tasks[0];
                            c.warehouse
                                .report_exception(warehouse::ReportExceptionRequest {
                                    idempotency_key: format!("damaged-{}", task.task_id),
                                    task_id: task.task_id.clone(),
                                    reason: warehouse::ExceptionReason::Damaged as i32,
                                    quantity: 1,
                                    note: "crushed box".into(),
                                    reporter: "picker-1".into(),
                                })
                                .await?;
                            report.quarantined += 1;
                        }
                        Some(f) if packed.insert(f.fulfillment_id.clone()) => {
                            c.pick_and_pack(id).await;
                        }
                        _ => {}
                    }
                }
                SagaStatus::Waiting
                    if saga.current_step == "await_shipment" && shipped.insert(id.clone()) =>
                {
                    let tracking = c.wait_label(id).await;
                    for f in c.open_fulfillments(id).await {
                        c.warehouse
                            .confirm_ship(warehouse::ConfirmShipRequest {
                                idempotency_key: format!("ship-{}", f.fulfillment_id),
                                fulfillment_id: f.fulfillment_id,
                                tracking_number: tracking.clone(),
                            })
                            .await?;
                    }
                }
                _ => {}
            }
            open += 1;
        }
        if open == 0 {
            break;
        }
        // Everything else is done and some orders wait for stock: the buyer orders it.
        if !bought && open == waiting_for_stock.len() {
            bought = true;
            report.purchased_units = buy(&mut c, run, &waiting_for_stock).await?;
        }
        if Instant::now() > deadline {
            anyhow::bail!("{open} sagas still open after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sagas = c
        .orchestrator
        .list_sagas(ListSagasRequest {
            page_size: 500,
            ..Default::default()
        })
        .await?
        .into_inner()
        .sagas;
    for saga in sagas.iter().filter(|s| placed.contains(&s.order_id)) {
        report.carrier_retries += saga
            .timeline
            .iter()
            .filter(|e| e.step == "buy_label" && e.outcome == StepOutcome::RetryableFailure as i32)
            .count();
        report.payment_retries += saga
            .timeline
            .iter()
            .filter(|e| {
                e.step == "authorize_payment" && e.outcome == StepOutcome::RetryableFailure as i32
            })
            .count();
        report.backordered += usize::from(
            saga.timeline
                .iter()
                .any(|e| e.detail.starts_with("backordered")),
        );
        report.rerouted += usize::from(
            saga.timeline
                .iter()
                .any(|e| e.detail.starts_with("re-route")),
        );
        match SagaStatus::try_from(saga.status).unwrap_or(SagaStatus::Unspecified) {
            SagaStatus::Completed => {
                let o = c.order(&saga.order_id).await;
                report.shipped += 1;
                report.units_shipped += o
                    .lines
                    .iter()
                    .map(|l| l.quantities.map_or(0, |q| q.shipped))
                    .sum::<i64>();
                // Revenue is what was sold; the tax collected with it is owed, not earned.
                report.revenue_minor += o.total.map_or(0, |t| t.amount_minor)
                    - o.tax_total.as_ref().map_or(0, |t| t.amount_minor);
                report.tax_minor += o.tax_total.map_or(0, |t| t.amount_minor);
            }
            SagaStatus::Compensated => {
                let reason = saga.last_error.split(':').next().unwrap_or("").to_owned();
                *report.compensated.entry(reason).or_default() += 1;
            }
            _ => report.parked += 1,
        }
    }
    // Play the carriers: each shipped parcel's tracking feed, repeats and reordering included.
    for saga in sagas
        .iter()
        .filter(|s| placed.contains(&s.order_id) && s.status == SagaStatus::Completed as i32)
    {
        let shipments = c
            .carrier
            .list_shipments(carrier::ListShipmentsRequest {
                order_id: saga.order_id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .shipments;
        for s in shipments
            .iter()
            .filter(|s| s.status == carrier::ShipmentStatus::LabelCreated as i32)
        {
            let created = s
                .created_at
                .as_ref()
                .map_or(0, erp_runtime::time::from_timestamp);
            let due = s
                .estimated_delivery
                .as_ref()
                .map_or(created, erp_runtime::time::from_timestamp);
            for event in
                erp_carrier::adapter::simulated_feed(&s.tracking_number, created, due - created)
            {
                let r = c
                    .carrier
                    .record_tracking_event(carrier::RecordTrackingEventRequest {
                        tracking_number: s.tracking_number.clone(),
                        event: Some(event),
                    })
                    .await?
                    .into_inner();
                report.tracking_events += 1;
                report.tracking_applied += usize::from(r.applied);
                if r.applied
                    && r.shipment
                        .is_some_and(|s| s.status == carrier::ShipmentStatus::Delivered as i32)
                {
                    report.delivered += 1;
                }
            }
        }
    }
    let (on_hand, reserved) = c.stock_totals().await;
    report.on_hand_after = on_hand;
    report.reserved_after = reserved;
    report.ledger_consistent = c
        .inventory
        .verify_ledger(inventory::VerifyLedgerRequest {})
        .await?
        .into_inner()
        .consistent;
    let tb = c
        .finance
        .get_trial_balance(finance::GetTrialBalanceRequest {})
        .await?
        .into_inner();
    report.journal_balanced = tb.balanced;
    report.revenue_in_ledger_minor = ledger_revenue(&mut c).await? - revenue_before;
    // The cost of what shipped reaches the books through inventory's events: give them a moment.
    for _ in 0..100 {
        let valued: i64 = c
            .inventory
            .get_valuation(inventory::GetValuationRequest { skus: vec![] })
            .await?
            .into_inner()
            .totals
            .iter()
            .map(|m| m.amount_minor)
            .sum();
        let asset: i64 = c
            .finance
            .get_trial_balance(finance::GetTrialBalanceRequest {})
            .await?
            .into_inner()
            .rows
            .iter()
            .filter(|r| r.account_code == "1300")
            .map(|r| r.balance_minor)
            .sum();
        report.stock_value_minor = valued;
        report.stock_in_ledger_minor = asset;
        if valued == asset {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The buyer: one purchase order to the seeded supplier for every backordered unit of the
/// waiting orders, approved, sent and received at the central warehouse. Returns the units.
async fn buy(c: &mut Clients, run: i64, waiting: &[String]) -> anyhow::Result<i64> {
    use erp_proto::procurement as p;
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for id in waiting {
        for l in c.order(id).await.lines {
            let short = l.quantities.map_or(0, |q| q.backordered);
            if short > 0 {
                *wanted.entry(l.sku).or_default() += short;
            }
        }
    }
    if wanted.is_empty() {
        return Ok(0);
    }
    let supplier = c
        .procurement
        .list_suppliers(p::ListSuppliersRequest::default())
        .await?
        .into_inner()
        .suppliers
        .into_iter()
        .find(|s| s.code == "acme")
        .ok_or_else(|| anyhow::anyhow!("the seeded supplier acme is missing"))?;
    let lines: Vec<p::PurchaseOrderLine> = wanted
        .iter()
        .map(|(sku, quantity)| p::PurchaseOrderLine {
            sku: sku.clone(),
            quantity: *quantity,
            unit_cost: None,
            received_quantity: 0,
        })
        .collect();
    let po = c
        .procurement
        .create_purchase_order(p::CreatePurchaseOrderRequest {
            idempotency_key: format!("demo-{run}-po"),
            supplier_id: supplier.supplier_id,
            location: "central".into(),
            lines: lines.clone(),
        })
        .await?
        .into_inner()
        .purchase_order
        .ok_or_else(|| anyhow::anyhow!("no purchase order"))?;
    // Maker-checker: someone other than the buyer who raised it approves it.
    c.as_principal(
        "demo-approver",
        &[erp_runtime::auth::roles::APPROVER],
        Some(10_000_000),
    )
    .procurement
    .approve_purchase_order(p::ApprovePurchaseOrderRequest {
        purchase_order_id: po.purchase_order_id.clone(),
        approver: Some(erp_proto::common::Actor {
            id: String::new(),
            reason: "backordered customer orders".into(),
        }),
    })
    .await?;
    c.procurement
        .send_purchase_order(p::SendPurchaseOrderRequest {
            purchase_order_id: po.purchase_order_id.clone(),
        })
        .await?;
    c.procurement
        .receive_purchase_order(p::ReceivePurchaseOrderRequest {
            idempotency_key: format!("demo-{run}-receipt"),
            purchase_order_id: po.purchase_order_id,
            lines: lines
                .iter()
                .map(|l| p::ReceivedLine {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                })
                .collect(),
            received_at: None,
        })
        .await?;
    Ok(wanted.values().sum())
}

/// Credit balance of the sales revenue account.
async fn ledger_revenue(c: &mut Clients) -> anyhow::Result<i64> {
    let tb = c
        .finance
        .get_trial_balance(finance::GetTrialBalanceRequest {})
        .await?
        .into_inner();
    Ok(tb
        .rows
        .iter()
        .filter(|r| r.account_code == "4000")
        .map(|r| r.credit_minor - r.debit_minor)
        .sum())
}
