//! The participants of the fulfillment saga, called over gRPC. Every command carries the
//! idempotency key `<saga>:<step>:<forward|compensate>`, so a retry after a timeout is answered
//! with the first result, and a compensation that overtakes its action leaves a tombstone.

use std::time::Duration;

use erp_proto::carrier::carrier_service_client::CarrierServiceClient;
use erp_proto::common::{Address, Money, Parcel};
use erp_proto::finance::finance_service_client::FinanceServiceClient;
use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
use erp_proto::order::order_service_client::OrderServiceClient;
use erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient;
use erp_proto::{carrier, finance, inventory, order, warehouse};
use erp_runtime::app::PeerAccess;
use erp_runtime::auth::PeerChannel;
use erp_runtime::config::Peers;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use crate::definition::Step;

/// What a step learned, persisted with the saga.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Ctx {
    pub order: Option<OrderSnapshot>,
    pub location: String,
    /// Postal code of the chosen warehouse, which carriers zone from.
    pub origin_postal: String,
    pub reservation_ids: Vec<String>,
    pub payment_id: String,
    pub fulfillment_id: String,
    /// Warehouse signals (PACKED, EXCEPTION, SITE_OFFLINE) naming a fulfillment before the saga
    /// recorded its own: a replica died between creating the fulfillment and committing it, and
    /// the floor was quicker. Replayed once the fulfillment is recorded (as `(signal, payload)`).
    pub early_signals: Vec<(String, String)>,
    pub carrier: String,
    pub service: String,
    pub shipment_id: String,
    pub tracking_number: String,
    pub label_cost_minor: i64,
    pub shipped: bool,
    pub ship_deadline_ms: i64,
    pub journal_entry_id: String,
    /// Why the saga compensates (machine-readable) and the detail.
    pub failure_reason: String,
    pub failure_detail: String,
    /// Re-routes so far: each one uses fresh idempotency keys for the site-bound steps.
    pub round: u32,
    /// Sites that reported a stock exception for this order; routing skips them.
    pub excluded_sites: Vec<String>,
    /// Undoing the site-bound steps after a stock exception, before routing again.
    pub rerouting: bool,
    /// Units to write off where they were found missing or damaged, once the hold on them
    /// is released.
    pub writeoffs: Vec<Writeoff>,
    /// The order's lines are recorded as backordered (no warehouse can ship them yet).
    pub backordered: bool,
    /// The packer's carton, once packed (v2).
    pub packed: bool,
    pub parcel: Option<Carton>,
    /// How many steps ever succeeded (the highest index + 1): a compensation starts there even
    /// when a re-route moved the saga back, so that a kept payment authorization is voided too.
    pub completed: i32,
    /// Definition v3 ships an order in parts: one shipment per round, each from one warehouse,
    /// for what can ship now; the rest waits (backordered) or goes in the next shipment.
    /// Set by the engine from the instance's definition version.
    #[serde(skip)]
    pub parts: bool,
    /// v3: the lines and quantities of the shipment in progress (empty before v3: the order).
    pub batch: Vec<LineSnapshot>,
    /// v3: what each line still needs (not shipped, cancelled or returned) when last routed.
    pub remaining: Vec<Portion>,
    /// v3: units no warehouse can ship now (backordered on the order).
    pub short: Vec<Portion>,
    /// v3: the shipments made so far.
    pub shipments: Vec<ShipmentDone>,
    /// v3: what was authorized and what the shipments captured of it.
    pub authorized_minor: i64,
    pub captured_minor: i64,
    /// v3: set by the last step when lines are left for another shipment.
    pub more_to_ship: bool,
    /// v3: lines whose cancellation stops the shipment in progress; cancelled on the order
    /// once the shipment is undone.
    pub cancel_lines: Vec<String>,
    /// How many times a backordered saga looked for stock again (each RouteOrder call needs a
    /// key of its own).
    pub route_checks: u32,
    /// v3: the stock a backordered saga last asked the rules about.
    pub stock_seen: String,
    /// When the provider stops honouring the current authorization (0: unknown).
    pub authorization_expires_ms: i64,
    /// The authorization a later shipment replaced because it was about to expire.
    pub replaced_payment: String,
}

/// A quantity of one order line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Portion {
    pub line_id: String,
    pub quantity: i64,
}

/// One shipment of an order shipped in parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShipmentDone {
    pub site: String,
    pub fulfillment_id: String,
    pub tracking_number: String,
    pub lines: Vec<Portion>,
    pub captured_minor: i64,
}

impl Ctx {
    /// Units of `line_id` shipped by earlier shipments.
    fn shipped_before(&self, line_id: &str) -> i64 {
        self.shipments
            .iter()
            .flat_map(|s| s.lines.iter())
            .filter(|p| p.line_id == line_id)
            .map(|p| p.quantity)
            .sum()
    }

    /// What the current step ships and charges: the shipment in progress (v3), else the order.
    /// A part carries its lines' prices and its share of their tax (the last unit of a line
    /// takes the rounding remainder), and the channel's fixed fee only in the first shipment.
    pub fn shipping(&self) -> Option<OrderSnapshot> {
        let o = self.order.as_ref()?;
        if !self.parts || self.batch.is_empty() {
            return Some(o.clone());
        }
        let mut part = o.clone();
        let mut subtotal = 0i64;
        let mut tax = 0i64;
        for l in &self.batch {
            let before = self.shipped_before(&l.line_id);
            subtotal += l.unit_price_minor * l.quantity;
            tax += tax_share(l.tax_minor, l.ordered, before + l.quantity)
                - tax_share(l.tax_minor, l.ordered, before);
        }
        part.lines = self.batch.clone();
        part.subtotal_minor = subtotal;
        part.tax_minor = tax;
        part.total_minor = subtotal + tax;
        if !self.shipments.is_empty() {
            part.fixed_fee_minor = 0;
        }
        Some(part)
    }

    /// v3: the value of what the order still needs, with its tax: what is authorized.
    fn open_value(&self) -> i64 {
        let Some(o) = self.order.as_ref() else {
            return 0;
        };
        o.lines
            .iter()
            .map(|l| {
                let before = self.shipped_before(&l.line_id);
                let left = (l.quantity - before).max(0);
                l.unit_price_minor * left + tax_share(l.tax_minor, l.ordered, before + left)
                    - tax_share(l.tax_minor, l.ordered, before)
            })
            .sum()
    }

    /// What carriers zone from: the warehouse's postal code, or its code when it has none
    /// (zone 1 everywhere).
    pub fn origin_zone(&self) -> String {
        if self.origin_postal.is_empty() {
            self.location.clone()
        } else {
            self.origin_postal.clone()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Writeoff {
    pub site: String,
    pub sku: String,
    pub quantity: i64,
    /// Damaged units go to quarantine; units that could not be found leave on hand.
    pub damaged: bool,
    /// Reported by (an id for the audit trail).
    pub exception_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Carton {
    pub weight_grams: i64,
    pub length_mm: i64,
    pub width_mm: i64,
    pub height_mm: i64,
}

/// The tax on the first `units` of a line whose `ordered` units carry `tax` in all (the order
/// service computes its header the same way).
use erp_runtime::money::pro_rata as tax_share;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderSnapshot {
    pub order_id: String,
    pub channel: String,
    pub currency: String,
    pub total_minor: i64,
    pub service_level: String,
    pub payment_method_token: String,
    pub postal_code: String,
    pub country_code: String,
    /// Where sales tax applies: `US-NJ` (country and region of the ship-to address).
    pub jurisdiction: String,
    /// Total before tax, and the tax applied; `total_minor` includes it.
    pub subtotal_minor: i64,
    pub tax_minor: i64,
    pub commission_bps: i32,
    pub fixed_fee_minor: i64,
    /// The channel ships complete orders only (wholesale).
    pub ship_complete: bool,
    /// Wholesale on account: the customer pays an invoice this many days after shipment, so
    /// no card is authorized or captured and the sale is a receivable (1100).
    pub net_terms_days: i32,
    pub lines: Vec<LineSnapshot>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LineSnapshot {
    pub line_id: String,
    pub sku: String,
    /// Units to ship: of the order when read (ordered less cancelled), or of this shipment.
    pub quantity: i64,
    /// Units ordered, and the tax on all of them (what a shipment's share is taken from).
    pub ordered: i64,
    pub tax_minor: i64,
    pub unit_price_minor: i64,
    pub unit_cost_minor: i64,
    pub weight_grams: i64,
    pub tax_class: String,
}

/// How a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// May succeed if tried again (the participant is down, slow, overloaded, conflicting).
    Transient(String),
    /// The participant said no; retrying the same request would get the same answer.
    Rejected { reason: String, detail: String },
}

impl StepError {
    pub fn rejected(reason: &str, detail: impl Into<String>) -> Self {
        Self::Rejected {
            reason: reason.to_owned(),
            detail: detail.into(),
        }
    }
}

impl From<Status> for StepError {
    fn from(s: Status) -> Self {
        match s.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal => Self::Transient(format!("{:?}: {}", s.code(), s.message())),
            code => Self::Rejected {
                reason: erp_runtime::error::status_reason(&s)
                    .unwrap_or_else(|| format!("{code:?}").to_uppercase()),
                detail: s.message().to_owned(),
            },
        }
    }
}

#[derive(Clone)]
pub struct Participants {
    /// A later shipment re-authorizes when the authorization expires within this long.
    reauthorize_within_ms: i64,
    order: OrderServiceClient<PeerChannel>,
    inventory: InventoryServiceClient<PeerChannel>,
    warehouse: WarehouseServiceClient<PeerChannel>,
    carrier: CarrierServiceClient<PeerChannel>,
    finance: FinanceServiceClient<PeerChannel>,
}

fn lazy(peer: &PeerAccess, url: &str) -> anyhow::Result<PeerChannel> {
    Ok(peer.intercept(peer.endpoint(url)?.tcp_nodelay(true)))
}

/// A request carrying the caller's trace context and a deadline.
fn req<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    if let Some(tp) = erp_runtime::telemetry::current_traceparent()
        && let Ok(value) = tp.parse()
    {
        request.metadata_mut().insert("traceparent", value);
    }
    request
}

/// `<saga>:<step>:<direction>`; after a re-route `<saga>:r<round>:<step>:<direction>`, so the
/// new warehouse's reservation, fulfillment and label are new requests, not replays.
fn key(saga_id: &str, round: u32, step: Step, forward: bool) -> String {
    let direction = if forward { "forward" } else { "compensate" };
    if round == 0 {
        format!("{saga_id}:{}:{direction}", step.name())
    } else {
        format!("{saga_id}:r{round}:{}:{direction}", step.name())
    }
}

fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: currency.to_owned(),
    })
}

fn missing(what: &str) -> StepError {
    StepError::rejected(
        "SAGA_STATE",
        format!("{what} is missing from the saga context"),
    )
}

impl Participants {
    /// Clients that connect on first use and reconnect after a participant restarts.
    pub fn connect_lazy(peers: &Peers, peer: &PeerAccess) -> anyhow::Result<Self> {
        Ok(Self {
            reauthorize_within_ms: 86_400_000,
            order: OrderServiceClient::new(lazy(peer, &peers.order)?),
            inventory: InventoryServiceClient::new(lazy(peer, &peers.inventory)?),
            warehouse: WarehouseServiceClient::new(lazy(peer, &peers.warehouse)?),
            carrier: CarrierServiceClient::new(lazy(peer, &peers.carrier)?),
            finance: FinanceServiceClient::new(lazy(peer, &peers.finance)?),
        })
    }

    /// Sets how long before its expiry an authorization is renewed for a later shipment.
    pub fn with_reauthorize_within(mut self, ms: u64) -> Self {
        self.reauthorize_within_ms = i64::try_from(ms).unwrap_or(i64::MAX / 4);
        self
    }

    /// Runs the forward action of `step`.
    pub async fn forward(
        &self,
        step: Step,
        saga_id: &str,
        ctx: &mut Ctx,
        t: Duration,
    ) -> Result<(), StepError> {
        let k = key(saga_id, ctx.round, step, true);
        match step {
            Step::LoadOrder => self.load_order(ctx, t).await,
            Step::ApplyTax => self.apply_tax(&k, ctx, t).await,
            Step::Route if ctx.parts => self.route_part(&k, ctx, t).await,
            Step::Route => self.route(&k, ctx, t).await,
            Step::ReserveStock => {
                let o = &ctx.shipping().ok_or_else(|| missing("order"))?;
                let r = self
                    .inventory
                    .clone()
                    .reserve_stock(req(
                        inventory::ReserveStockRequest {
                            idempotency_key: k,
                            order_id: o.order_id.clone(),
                            lines: o
                                .lines
                                .iter()
                                .map(|l| inventory::ReserveLine {
                                    order_line_id: l.line_id.clone(),
                                    sku: l.sku.clone(),
                                    location: ctx.location.clone(),
                                    quantity: l.quantity,
                                })
                                .collect(),
                            mode: inventory::ReserveMode::AllOrNothing as i32,
                            expires_at: None,
                        },
                        t,
                    ))
                    .await?
                    .into_inner();
                ctx.reservation_ids = r
                    .reservations
                    .into_iter()
                    .map(|r| r.reservation_id)
                    .collect();
                Ok(())
            }
            Step::RecordAllocation => self.allocate(k, ctx, false, t).await,
            Step::AuthorizePayment if !ctx.payment_id.is_empty() => {
                // A re-route or a later shipment keeps the authorization, unless it would
                // expire before this shipment is captured (a long backorder): then it is
                // renewed for what the order still needs.
                ctx.replaced_payment.clear();
                let expiring = ctx.parts
                    && ctx.authorization_expires_ms > 0
                    && ctx.authorization_expires_ms - erp_runtime::time::now_ms()
                        < self.reauthorize_within_ms;
                if expiring {
                    self.reauthorize(&k, ctx, t).await
                } else {
                    Ok(())
                }
            }
            // On account: nothing to authorize; the shipment is invoiced.
            Step::AuthorizePayment | Step::CapturePayment
                if ctx.order.as_ref().is_some_and(|o| o.net_terms_days > 0) =>
            {
                Ok(())
            }
            Step::AuthorizePayment => {
                let o = ctx.order.as_ref().ok_or_else(|| missing("order"))?;
                // v3 authorizes what the order still needs (less any cancelled lines); each
                // shipment captures its part.
                let amount = if ctx.parts {
                    ctx.open_value()
                } else {
                    o.total_minor
                };
                let p = self
                    .finance
                    .clone()
                    .authorize_payment(req(
                        finance::AuthorizePaymentRequest {
                            idempotency_key: k,
                            order_id: o.order_id.clone(),
                            channel: o.channel.clone(),
                            amount: money(amount, &o.currency),
                            payment_method_token: o.payment_method_token.clone(),
                        },
                        t,
                    ))
                    .await?
                    .into_inner();
                let p = p.payment.unwrap_or_default();
                ctx.payment_id = p.payment_id;
                ctx.authorization_expires_ms = p
                    .expires_at
                    .as_ref()
                    .map_or(0, erp_runtime::time::from_timestamp);
                ctx.authorized_minor = amount;
                Ok(())
            }
            Step::CreateFulfillment => {
                let o = &ctx.shipping().ok_or_else(|| missing("order"))?;
                let f = self
                    .warehouse
                    .clone()
                    .create_fulfillment(req(
                        warehouse::CreateFulfillmentRequest {
                            idempotency_key: k,
                            order_id: o.order_id.clone(),
                            site: ctx.location.clone(),
                            lines: o
                                .lines
                                .iter()
                                .map(|l| warehouse::FulfillmentLine {
                                    order_line_id: l.line_id.clone(),
                                    sku: l.sku.clone(),
                                    quantity: l.quantity,
                                })
                                .collect(),
                            service_level: o.service_level.clone(),
                            priority: if o.service_level == "express" { 1 } else { 5 },
                            saga_id: saga_id.to_owned(),
                        },
                        t,
                    ))
                    .await?
                    .into_inner();
                ctx.fulfillment_id = f.fulfillment.map(|f| f.fulfillment_id).unwrap_or_default();
                Ok(())
            }
            Step::QuoteLabel => self.quote(ctx, t).await,
            Step::BuyLabel => {
                let o = &ctx.shipping().ok_or_else(|| missing("order"))?;
                let s = self
                    .carrier
                    .clone()
                    .buy_label(req(
                        carrier::BuyLabelRequest {
                            idempotency_key: k,
                            order_id: o.order_id.clone(),
                            fulfillment_id: ctx.fulfillment_id.clone(),
                            carrier: ctx.carrier.clone(),
                            service: ctx.service.clone(),
                            origin_site: ctx.location.clone(),
                            origin_region: ctx.origin_zone(),
                            destination: Some(destination(o)),
                            parcel: Some(parcel(o, ctx.parcel.as_ref())),
                        },
                        t,
                    ))
                    .await?
                    .into_inner()
                    .shipment
                    .ok_or_else(|| StepError::Transient("BuyLabel answered no shipment".into()))?;
                ctx.shipment_id = s.shipment_id;
                ctx.tracking_number = s.tracking_number;
                ctx.label_cost_minor = s.cost.map_or(0, |c| c.amount_minor);
                Ok(())
            }
            Step::AwaitPack | Step::AwaitShipment => Ok(()),
            Step::CommitStock => {
                let o = ctx.order.as_ref().ok_or_else(|| missing("order"))?;
                self.inventory
                    .clone()
                    .commit_reservations(req(
                        inventory::CommitReservationsRequest {
                            idempotency_key: k,
                            order_id: o.order_id.clone(),
                            reservation_ids: ctx.reservation_ids.clone(),
                        },
                        t,
                    ))
                    .await?;
                Ok(())
            }
            Step::CapturePayment => {
                // v3: this shipment's part; the authorization stays open for the next ones.
                let part = if ctx.parts {
                    let o = ctx.shipping().ok_or_else(|| missing("order"))?;
                    Some((o.total_minor, o.currency))
                } else {
                    None
                };
                if part.as_ref().is_some_and(|(amount, _)| *amount == 0) {
                    return Ok(());
                }
                self.finance
                    .clone()
                    .capture_payment(req(
                        finance::CapturePaymentRequest {
                            idempotency_key: k,
                            payment_id: ctx.payment_id.clone(),
                            amount: part.as_ref().and_then(|(a, c)| money(*a, c)),
                            more_to_follow: part.is_some(),
                        },
                        t,
                    ))
                    .await?;
                if let Some((amount, _)) = part {
                    ctx.captured_minor += amount;
                }
                Ok(())
            }
            Step::PostJournal => {
                let o = &ctx.shipping().ok_or_else(|| missing("order"))?;
                let e = self
                    .finance
                    .clone()
                    .post_journal(req(
                        finance::PostJournalRequest {
                            idempotency_key: k,
                            memo: if ctx.parts {
                                format!(
                                    "shipment {} of order {}",
                                    ctx.shipments.len() + 1,
                                    o.order_id
                                )
                            } else {
                                format!("shipment of order {}", o.order_id)
                            },
                            source: Some(erp_proto::common::SourceDocument {
                                kind: "saga".into(),
                                id: saga_id.to_owned(),
                            }),
                            lines: journal_lines(o, ctx.label_cost_minor),
                        },
                        t,
                    ))
                    .await?
                    .into_inner();
                ctx.journal_entry_id = e.entry.map(|e| e.entry_id).unwrap_or_default();
                Ok(())
            }
            Step::MarkShipped => {
                let o = ctx.order.as_ref().ok_or_else(|| missing("order"))?;
                self.order
                    .clone()
                    .mark_shipped(req(
                        order::MarkShippedRequest {
                            idempotency_key: k,
                            order_id: o.order_id.clone(),
                            tracking_number: ctx.tracking_number.clone(),
                        },
                        t,
                    ))
                    .await?;
                if ctx.parts {
                    let lines = ctx
                        .batch
                        .iter()
                        .map(|l| Portion {
                            line_id: l.line_id.clone(),
                            quantity: l.quantity,
                        })
                        .collect();
                    let captured = ctx.shipping().map_or(0, |o| o.total_minor);
                    ctx.shipments.push(ShipmentDone {
                        site: ctx.location.clone(),
                        fulfillment_id: ctx.fulfillment_id.clone(),
                        tracking_number: ctx.tracking_number.clone(),
                        lines,
                        captured_minor: captured,
                    });
                    ctx.batch.clear();
                }
                Ok(())
            }
            Step::NextShipment => self.next_shipment(&k, ctx, t).await,
        }
    }

    /// Undoes `step`. Safe to call when the forward action never happened.
    pub async fn compensate(
        &self,
        step: Step,
        saga_id: &str,
        ctx: &Ctx,
        t: Duration,
    ) -> Result<(), StepError> {
        let k = key(saga_id, ctx.round, step, false);
        let order_id = ctx
            .order
            .as_ref()
            .map(|o| o.order_id.clone())
            .unwrap_or_default();
        match step {
            Step::ReserveStock => {
                self.inventory
                    .clone()
                    .release_reservations(req(
                        inventory::ReleaseReservationsRequest {
                            idempotency_key: k,
                            order_id,
                            reservation_ids: vec![],
                        },
                        t,
                    ))
                    .await?;
            }
            Step::AuthorizePayment => {
                match self
                    .finance
                    .clone()
                    .void_payment(req(
                        finance::VoidPaymentRequest {
                            idempotency_key: k,
                            payment_id: String::new(),
                            order_id,
                        },
                        t,
                    ))
                    .await
                {
                    // Nothing was authorized: nothing to void.
                    Err(s) if s.code() == Code::NotFound => {}
                    // Shipments captured all of it: nothing is left to release.
                    Err(s) if s.code() == Code::FailedPrecondition && ctx.captured_minor > 0 => {}
                    other => {
                        other?;
                    }
                }
            }
            Step::CreateFulfillment => {
                self.warehouse
                    .clone()
                    .cancel_fulfillment(req(
                        warehouse::CancelFulfillmentRequest {
                            idempotency_key: k,
                            fulfillment_id: String::new(),
                            order_id,
                            reason: ctx.failure_reason.clone(),
                        },
                        t,
                    ))
                    .await?;
            }
            Step::BuyLabel => {
                self.carrier
                    .clone()
                    .void_label(req(
                        carrier::VoidLabelRequest {
                            idempotency_key: k,
                            shipment_id: String::new(),
                            order_id,
                        },
                        t,
                    ))
                    .await?;
            }
            Step::LoadOrder => {
                if order_id.is_empty() {
                    // The order was never read.
                    return Ok(());
                }
                // A cancelled order, or one with shipped parts, cancels what did not ship (the
                // units its stopped shipment held too); otherwise the order failed.
                let cancel = ctx.failure_reason == "ORDER_CANCELLED"
                    || ctx.failure_reason == "CANCELLED_BY_OPERATOR"
                    || !ctx.shipments.is_empty();
                if cancel {
                    let reason = format!("{}: {}", ctx.failure_reason, ctx.failure_detail);
                    return self.cancel_on_order(k, order_id, vec![], reason, t).await;
                }
                self.order
                    .clone()
                    .mark_failed(req(
                        order::MarkFailedRequest {
                            idempotency_key: k,
                            order_id,
                            reason: ctx.failure_reason.clone(),
                            detail: ctx.failure_detail.clone(),
                        },
                        t,
                    ))
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes off units a warehouse reported missing (out of on hand) or damaged (on hand to
    /// quarantine), once the saga's hold on them is released. Keys make it safe to repeat.
    pub async fn write_off(
        &self,
        saga_id: &str,
        round: u32,
        index: usize,
        w: &Writeoff,
        t: Duration,
    ) -> Result<(), StepError> {
        let mut moves = vec![("out", inventory::Bucket::OnHand, -w.quantity)];
        if w.damaged {
            moves.push(("quarantine", inventory::Bucket::Quarantined, w.quantity));
        }
        for (op, bucket, delta) in moves {
            self.inventory
                .clone()
                .adjust_stock(req(
                    inventory::AdjustStockRequest {
                        idempotency_key: format!("{saga_id}:r{round}:writeoff:{index}:{op}"),
                        sku: w.sku.clone(),
                        location: w.site.clone(),
                        bucket: bucket as i32,
                        delta,
                        actor: Some(erp_proto::common::Actor {
                            id: "orchestrator".into(),
                            reason: format!(
                                "{} at {} (warehouse exception {})",
                                if w.damaged { "damaged" } else { "not found" },
                                w.site,
                                w.exception_id
                            ),
                        }),
                    },
                    t,
                ))
                .await?;
        }
        Ok(())
    }

    /// Records every line of the order as backordered: no warehouse can ship it now.
    pub async fn backorder(&self, saga_id: &str, ctx: &Ctx, t: Duration) -> Result<(), StepError> {
        let k = format!("{saga_id}:r{}:backorder", ctx.round);
        self.allocate(k, ctx, true, t).await
    }

    /// Tells the order service where every line ships from, or that it is backordered.
    async fn allocate(
        &self,
        key: String,
        ctx: &Ctx,
        backorder: bool,
        t: Duration,
    ) -> Result<(), StepError> {
        let o = ctx.order.as_ref().ok_or_else(|| missing("order"))?;
        let allocations = if ctx.parts {
            // This shipment's units are allocated where it ships from; units no warehouse has
            // are backordered; the rest stays open for a later shipment.
            ctx.remaining
                .iter()
                .map(|r| {
                    let batch = ctx.batch.iter().find(|b| b.line_id == r.line_id);
                    let allocated = if backorder {
                        0
                    } else {
                        batch.map_or(0, |b| b.quantity)
                    };
                    let short = ctx
                        .short
                        .iter()
                        .find(|s| s.line_id == r.line_id)
                        .map_or(0, |s| s.quantity)
                        .min(r.quantity - allocated);
                    order::LineAllocation {
                        line_id: r.line_id.clone(),
                        location: if allocated > 0 {
                            ctx.location.clone()
                        } else {
                            String::new()
                        },
                        allocated,
                        backordered: short.max(0),
                        promised_by: None,
                    }
                })
                .collect()
        } else {
            o.lines
                .iter()
                .map(|l| order::LineAllocation {
                    line_id: l.line_id.clone(),
                    location: if backorder {
                        String::new()
                    } else {
                        ctx.location.clone()
                    },
                    allocated: if backorder { 0 } else { l.quantity },
                    backordered: if backorder { l.quantity } else { 0 },
                    promised_by: None,
                })
                .collect()
        };
        self.order
            .clone()
            .record_allocation(req(
                order::RecordAllocationRequest {
                    idempotency_key: key,
                    order_id: o.order_id.clone(),
                    allocations,
                },
                t,
            ))
            .await?;
        Ok(())
    }

    async fn load_order(&self, ctx: &mut Ctx, t: Duration) -> Result<(), StepError> {
        // The order id was put in the context when the saga was created.
        let order_id = ctx
            .order
            .as_ref()
            .map(|o| o.order_id.clone())
            .ok_or_else(|| missing("order id"))?;
        let o = self
            .order
            .clone()
            .get_order(req(order::GetOrderRequest { order_id }, t))
            .await?
            .into_inner()
            .order
            .ok_or_else(|| StepError::Transient("GetOrder answered no order".into()))?;
        if o.status == order::OrderStatus::Cancelled as i32 {
            return Err(StepError::rejected(
                "ORDER_CANCELLED",
                "the order was cancelled before fulfillment",
            ));
        }
        let channels = self
            .order
            .clone()
            .list_channels(req(order::ListChannelsRequest {}, t))
            .await?
            .into_inner()
            .channels;
        let channel = channels.iter().find(|c| c.code == o.channel);
        let mut lines = Vec::with_capacity(o.lines.len());
        for l in &o.lines {
            let item = self
                .inventory
                .clone()
                .get_item(req(inventory::GetItemRequest { sku: l.sku.clone() }, t))
                .await?
                .into_inner()
                .item
                .unwrap_or_default();
            lines.push(LineSnapshot {
                line_id: l.line_id.clone(),
                sku: l.sku.clone(),
                quantity: l.quantities.map_or(0, |q| q.ordered - q.cancelled),
                ordered: l.quantities.map_or(0, |q| q.ordered),
                tax_minor: l.tax.as_ref().map_or(0, |m| m.amount_minor),
                unit_price_minor: l.unit_price.as_ref().map_or(0, |p| p.amount_minor),
                unit_cost_minor: item.unit_cost.map_or(0, |c| c.amount_minor),
                weight_grams: item.weight_grams,
                tax_class: item.tax_class,
            });
        }
        let ship_to = o.ship_to.unwrap_or_default();
        let total_minor = o.total.map_or(0, |m| m.amount_minor);
        let tax_minor = o.tax_total.map_or(0, |m| m.amount_minor);
        let jurisdiction = match (ship_to.country_code.trim(), ship_to.region.trim()) {
            ("", _) => String::new(),
            (country, "") => country.to_uppercase(),
            (country, region) => format!("{}-{}", country.to_uppercase(), region.to_uppercase()),
        };
        ctx.order = Some(OrderSnapshot {
            order_id: o.order_id,
            channel: o.channel,
            currency: o.currency,
            total_minor,
            subtotal_minor: total_minor - tax_minor,
            tax_minor,
            jurisdiction,
            service_level: o.service_level,
            payment_method_token: o.payment_method_token,
            postal_code: ship_to.postal_code,
            country_code: ship_to.country_code,
            commission_bps: channel.map_or(0, |c| c.commission_bps),
            fixed_fee_minor: channel.map_or(0, |c| c.fixed_fee_minor),
            ship_complete: channel.is_some_and(|c| c.ship_complete),
            net_terms_days: channel.map_or(0, |c| c.net_terms_days),
            lines,
        });
        Ok(())
    }

    /// Asks finance for each line's tax where the order ships to, records it on the order, and
    /// makes it part of what is authorized and captured.
    async fn apply_tax(&self, key: &str, ctx: &mut Ctx, t: Duration) -> Result<(), StepError> {
        let o = ctx.order.as_ref().ok_or_else(|| missing("order"))?;
        if o.jurisdiction.is_empty() || o.lines.is_empty() {
            return Ok(());
        }
        let calc = self
            .finance
            .clone()
            .calculate_tax(req(
                finance::CalculateTaxRequest {
                    jurisdiction: o.jurisdiction.clone(),
                    lines: o
                        .lines
                        .iter()
                        .map(|l| finance::TaxableLine {
                            line_id: l.line_id.clone(),
                            tax_class: if l.tax_class.is_empty() {
                                "standard".into()
                            } else {
                                l.tax_class.clone()
                            },
                            amount: money(l.unit_price_minor * l.quantity, &o.currency),
                        })
                        .collect(),
                },
                t,
            ))
            .await?
            .into_inner();
        self.order
            .clone()
            .record_tax(req(
                order::RecordTaxRequest {
                    idempotency_key: key.to_owned(),
                    order_id: o.order_id.clone(),
                    jurisdiction: o.jurisdiction.clone(),
                    lines: calc
                        .lines
                        .iter()
                        .map(|l| order::LineTaxAmount {
                            line_id: l.line_id.clone(),
                            rate_bps: l.rate_bps,
                            tax: l.tax.clone(),
                        })
                        .collect(),
                },
                t,
            ))
            .await?;
        let tax = calc.total_tax.map_or(0, |m| m.amount_minor);
        if let Some(o) = ctx.order.as_mut() {
            o.tax_minor = tax;
            o.total_minor = o.subtotal_minor + tax;
            for l in &mut o.lines {
                l.tax_minor = calc
                    .lines
                    .iter()
                    .find(|c| c.line_id == l.line_id)
                    .and_then(|c| c.tax.as_ref())
                    .map_or(0, |m| m.amount_minor);
            }
        }
        Ok(())
    }

    /// The first warehouse (by code) that can ship every line now; routing rules come with the
    /// order orchestration work.
    async fn route(&self, key: &str, ctx: &mut Ctx, t: Duration) -> Result<(), StepError> {
        let o = ctx.order.as_ref().ok_or_else(|| missing("order"))?;
        // The order service's routing rules decide first (and record why on the order); a
        // decision this saga cannot ship as one shipment (a split, a backorder) or that names a
        // site it must avoid falls back to the first online site that has every line.
        let ruled = match self
            .order
            .clone()
            .route_order(req(
                order::RouteOrderRequest {
                    idempotency_key: key.to_owned(),
                    order_id: o.order_id.clone(),
                    exclude_sites: ctx.excluded_sites.clone(),
                },
                t,
            ))
            .await
        {
            Ok(r) => r.into_inner().decision.and_then(|d| {
                let first = d.allocations.first()?.location.clone();
                d.allocations
                    .iter()
                    .all(|a| a.backordered == 0 && a.allocated > 0 && a.location == first)
                    .then_some(first)
            }),
            Err(s) => match StepError::from(s) {
                transient @ StepError::Transient(_) => return Err(transient),
                StepError::Rejected { .. } => None,
            },
        };
        let skus: Vec<String> = o.lines.iter().map(|l| l.sku.clone()).collect();
        // The warehouse's own view too: a site marked offline (outage, labor) takes no new work.
        let (availability, sites) = self.network_view(skus, t).await?;
        let mut candidates: Vec<String> = availability
            .items
            .iter()
            .flat_map(|i| i.locations.iter().map(|l| l.location.clone()))
            .collect();
        candidates.sort();
        candidates.dedup();
        let available = |sku: &str, loc: &str| available_at(&availability, sku, loc);
        let site = |code: &str| sites.iter().find(|s| s.code == code);
        let online = |code: &str| site_online(&sites, code);
        let usable = |loc: &String| {
            !ctx.excluded_sites.contains(loc)
                && online(loc)
                && o.lines.iter().all(|l| available(&l.sku, loc) >= l.quantity)
        };
        let chosen = ruled
            .filter(|loc| usable(loc))
            .or_else(|| candidates.into_iter().find(|loc| usable(loc)));
        match chosen {
            Some(loc) => {
                ctx.origin_postal = site(&loc)
                    .map(|s| s.postal_code.clone())
                    .unwrap_or_default();
                ctx.location = loc;
                Ok(())
            }
            None => Err(StepError::rejected(
                "INSUFFICIENT_STOCK",
                format!(
                    "no warehouse can ship {} now",
                    o.lines
                        .iter()
                        .map(|l| format!("{} x{}", l.sku, l.quantity))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// What each line of the order still needs: not shipped, cancelled or returned, read from
    /// the order service (a line may have been cancelled since the saga read the order).
    async fn still_needed(&self, order_id: &str, t: Duration) -> Result<Vec<Portion>, StepError> {
        let o = self
            .order
            .clone()
            .get_order(req(
                order::GetOrderRequest {
                    order_id: order_id.to_owned(),
                },
                t,
            ))
            .await?
            .into_inner()
            .order
            .ok_or_else(|| StepError::Transient("GetOrder answered no order".into()))?;
        Ok(o.lines
            .iter()
            .filter_map(|l| {
                let q = l.quantities?;
                let n = q.ordered - q.shipped - q.cancelled - q.returned;
                (n > 0).then(|| Portion {
                    line_id: l.line_id.clone(),
                    quantity: n,
                })
            })
            .collect())
    }

    /// v3: plans the next shipment: the routing rules' decision (the first of its sites this
    /// saga can use), else the online warehouse that ships the most of what is needed (all of
    /// it for a ship-complete channel). What no warehouse has is backordered; with nothing to
    /// ship now the step answers INSUFFICIENT_STOCK and the saga waits for stock.
    async fn route_part(&self, key: &str, ctx: &mut Ctx, t: Duration) -> Result<(), StepError> {
        let o = ctx.order.clone().ok_or_else(|| missing("order"))?;
        // The usual case asks the rules first and ships their plan: RouteOrder has just checked
        // stock, site status and capacity, and routes what each line still needs. A backordered
        // saga looks at stock first (below), so that it asks only when stock changed.
        let asked = if ctx.backordered {
            None
        } else {
            let d = self.ask_rules(key, ctx, t).await?;
            if let Some(d) = &d
                && self.plan_from_rules(d, &o, ctx, t).await?
            {
                return Ok(());
            }
            Some(d)
        };
        let remaining = self.still_needed(&o.order_id, t).await?;
        ctx.remaining = remaining.clone();
        ctx.batch.clear();
        if !ctx.backordered {
            ctx.short.clear();
        }
        if remaining.is_empty() {
            return Err(StepError::rejected(
                "NOTHING_TO_SHIP",
                "every line is shipped or cancelled",
            ));
        }
        let sku = |line_id: &str| {
            o.lines
                .iter()
                .find(|l| l.line_id == line_id)
                .map(|l| l.sku.clone())
                .unwrap_or_default()
        };
        let mut skus: Vec<String> = remaining.iter().map(|r| sku(&r.line_id)).collect();
        skus.sort();
        skus.dedup();
        let (availability, sites) = self.network_view(skus, t).await?;
        let excluded = ctx.excluded_sites.clone();
        let usable = |code: &str| !excluded.iter().any(|x| x == code) && site_online(&sites, code);
        let available = |line_id: &str, loc: &str| -> i64 {
            available_at(&availability, &sku(line_id), loc).max(0)
        };
        let mut candidates: Vec<String> = availability
            .items
            .iter()
            .flat_map(|i| i.locations.iter().map(|l| l.location.clone()))
            .filter(|l| usable(l))
            .collect();
        candidates.sort();
        candidates.dedup();
        let network =
            |line_id: &str| -> i64 { candidates.iter().map(|c| available(line_id, c)).sum() };
        let deficit: Vec<Portion> = remaining
            .iter()
            .map(|r| Portion {
                line_id: r.line_id.clone(),
                quantity: (r.quantity - network(&r.line_id)).max(0),
            })
            .filter(|p| p.quantity > 0)
            .collect();
        let what = || {
            remaining
                .iter()
                .map(|r| format!("{} x{}", sku(&r.line_id), r.quantity))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // A backordered saga asks the rules again only once stock of what it waits for is
        // there and has changed since it last asked (each decision is recorded on the order).
        let seen = candidates
            .iter()
            .flat_map(|c| {
                remaining
                    .iter()
                    .map(move |r| format!("{c}:{}:{}", r.line_id, available(&r.line_id, c)))
            })
            .collect::<Vec<_>>()
            .join(",");
        if ctx.backordered
            && (remaining.iter().all(|r| network(&r.line_id) == 0) || seen == ctx.stock_seen)
        {
            if ctx.short.is_empty() {
                ctx.short = remaining.clone();
            }
            return Err(StepError::rejected(
                "INSUFFICIENT_STOCK",
                format!("no warehouse can ship {} yet", what()),
            ));
        }
        ctx.stock_seen = seen;
        let decision = match asked {
            Some(d) => d,
            None => self.ask_rules(key, ctx, t).await?,
        };
        let need = |line_id: &str| {
            remaining
                .iter()
                .find(|r| r.line_id == line_id)
                .map_or(0, |r| r.quantity)
        };
        // The rules' plan: its first site that is usable and still has what it was given.
        let mut plan: Option<(String, Vec<Portion>)> = None;
        let mut short = deficit.clone();
        if let Some(d) = &decision {
            let mut sites_in_order: Vec<&str> = Vec::new();
            for a in &d.allocations {
                if a.allocated > 0 && !sites_in_order.contains(&a.location.as_str()) {
                    sites_in_order.push(&a.location);
                }
            }
            for site in sites_in_order {
                let portions: Vec<Portion> = d
                    .allocations
                    .iter()
                    .filter(|a| a.location == site && a.allocated > 0)
                    .map(|a| Portion {
                        line_id: a.line_id.clone(),
                        quantity: a.allocated.min(need(&a.line_id)),
                    })
                    .filter(|p| p.quantity > 0)
                    .collect();
                if !portions.is_empty()
                    && usable(site)
                    && portions
                        .iter()
                        .all(|p| available(&p.line_id, site) >= p.quantity)
                {
                    plan = Some((site.to_owned(), portions));
                    break;
                }
            }
            let decided_short: Vec<Portion> = d
                .allocations
                .iter()
                .filter(|a| a.backordered > 0)
                .map(|a| Portion {
                    line_id: a.line_id.clone(),
                    quantity: a.backordered.min(need(&a.line_id)),
                })
                .collect();
            let nothing_allocated = d.allocations.iter().all(|a| a.allocated == 0);
            if plan.is_some() || nothing_allocated {
                // The rules' plan, or their decision to wait (ship complete, nothing in stock).
                short = decided_short;
            }
        }
        // The rules chose a warehouse this saga cannot use (excluded after a stock exception,
        // offline or emptied since), or gave no decision: one online warehouse that ships all
        // of it, else wait and ask the rules again when stock changes.
        let rules_wait = decision
            .as_ref()
            .is_some_and(|d| d.allocations.iter().all(|a| a.allocated == 0));
        if plan.is_none() && !rules_wait {
            let covers = |c: &String| {
                remaining
                    .iter()
                    .all(|r| available(&r.line_id, c) >= r.quantity)
            };
            plan = candidates.iter().find(|c| covers(c)).map(|c| {
                let portions = remaining
                    .iter()
                    .map(|r| Portion {
                        line_id: r.line_id.clone(),
                        quantity: available(&r.line_id, c).min(r.quantity),
                    })
                    .filter(|p| p.quantity > 0)
                    .collect();
                (c.clone(), portions)
            });
        }
        let Some((site, portions)) = plan else {
            // Nothing ships now. What no warehouse has is backordered; a ship-complete order
            // whose lines are spread over warehouses waits whole.
            ctx.short = if rules_wait && !short.is_empty() {
                short
            } else if deficit.is_empty() {
                remaining.clone()
            } else {
                deficit
            };
            return Err(StepError::rejected(
                "INSUFFICIENT_STOCK",
                format!("no warehouse can ship {} now", what()),
            ));
        };
        ctx.batch = portions
            .iter()
            .filter_map(|p| {
                let l = o.lines.iter().find(|l| l.line_id == p.line_id)?;
                Some(LineSnapshot {
                    quantity: p.quantity,
                    ..l.clone()
                })
            })
            .collect();
        ctx.short = short;
        ctx.origin_postal = sites
            .iter()
            .find(|s| s.code == site)
            .map(|s| s.postal_code.clone())
            .unwrap_or_default();
        ctx.location = site;
        Ok(())
    }

    /// Authorizes what the order still needs anew, then releases what the old authorization
    /// still held (its captures stay). Safe to repeat: both calls carry keys of this round.
    async fn reauthorize(&self, key: &str, ctx: &mut Ctx, t: Duration) -> Result<(), StepError> {
        let o = ctx.order.as_ref().ok_or_else(|| missing("order"))?;
        let amount = ctx.open_value();
        let p = self
            .finance
            .clone()
            .authorize_payment(req(
                finance::AuthorizePaymentRequest {
                    idempotency_key: key.to_owned(),
                    order_id: o.order_id.clone(),
                    channel: o.channel.clone(),
                    amount: money(amount, &o.currency),
                    payment_method_token: o.payment_method_token.clone(),
                },
                t,
            ))
            .await?
            .into_inner()
            .payment
            .unwrap_or_default();
        let old = ctx.payment_id.clone();
        self.release_rest(format!("{key}:release-previous"), old.clone(), t)
            .await?;
        ctx.replaced_payment = old;
        ctx.payment_id = p.payment_id;
        ctx.authorization_expires_ms = p
            .expires_at
            .as_ref()
            .map_or(0, erp_runtime::time::from_timestamp);
        ctx.authorized_minor = amount;
        ctx.captured_minor = 0;
        Ok(())
    }

    /// Stock available now per SKU and warehouse, and the warehouses' own view of their sites.
    async fn network_view(
        &self,
        skus: Vec<String>,
        t: Duration,
    ) -> Result<(inventory::GetAvailabilityResponse, Vec<warehouse::Site>), StepError> {
        let availability = self
            .inventory
            .clone()
            .get_availability(req(
                inventory::GetAvailabilityRequest {
                    skus,
                    as_of: None,
                    include_inbound: false,
                },
                t,
            ))
            .await?
            .into_inner();
        let sites = self
            .warehouse
            .clone()
            .list_sites(req(warehouse::ListSitesRequest {}, t))
            .await?
            .into_inner()
            .sites;
        Ok((availability, sites))
    }

    /// Asks the routing rules for a decision, under a key of its own per ask.
    async fn ask_rules(
        &self,
        key: &str,
        ctx: &mut Ctx,
        t: Duration,
    ) -> Result<Option<order::RoutingDecision>, StepError> {
        let order_id = ctx
            .order
            .as_ref()
            .map(|o| o.order_id.clone())
            .ok_or_else(|| missing("order"))?;
        let rk = if ctx.route_checks == 0 {
            key.to_owned()
        } else {
            format!("{key}:{}", ctx.route_checks)
        };
        ctx.route_checks += 1;
        match self
            .order
            .clone()
            .route_order(req(
                order::RouteOrderRequest {
                    idempotency_key: rk,
                    order_id,
                    exclude_sites: ctx.excluded_sites.clone(),
                },
                t,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().decision),
            Err(s) => match StepError::from(s) {
                transient @ StepError::Transient(_) => Err(transient),
                StepError::Rejected { .. } => Ok(None),
            },
        }
    }

    /// Takes the decision's first warehouse as this shipment when this saga may use it (not
    /// excluded after a stock exception). The decision covers exactly what each line still
    /// needs (allocated somewhere or backordered). Returns whether it planned the shipment.
    async fn plan_from_rules(
        &self,
        d: &order::RoutingDecision,
        o: &OrderSnapshot,
        ctx: &mut Ctx,
        t: Duration,
    ) -> Result<bool, StepError> {
        let Some(site) = d
            .allocations
            .iter()
            .find(|a| a.allocated > 0)
            .map(|a| a.location.clone())
        else {
            return Ok(false);
        };
        if ctx.excluded_sites.contains(&site) {
            return Ok(false);
        }
        let mut remaining: Vec<Portion> = Vec::new();
        for a in &d.allocations {
            match remaining.iter_mut().find(|r| r.line_id == a.line_id) {
                Some(r) => r.quantity += a.allocated + a.backordered,
                None => remaining.push(Portion {
                    line_id: a.line_id.clone(),
                    quantity: a.allocated + a.backordered,
                }),
            }
        }
        let batch: Vec<LineSnapshot> = d
            .allocations
            .iter()
            .filter(|a| a.location == site && a.allocated > 0)
            .filter_map(|a| {
                let l = o.lines.iter().find(|l| l.line_id == a.line_id)?;
                Some(LineSnapshot {
                    quantity: a.allocated,
                    ..l.clone()
                })
            })
            .collect();
        if batch.is_empty() {
            return Ok(false);
        }
        // Where parcels leave from: carriers zone rates by the site's postal code.
        let postal = self
            .warehouse
            .clone()
            .list_sites(req(warehouse::ListSitesRequest {}, t))
            .await?
            .into_inner()
            .sites
            .into_iter()
            .find(|s| s.code == site)
            .map(|s| s.postal_code)
            .unwrap_or_default();
        ctx.remaining = remaining;
        ctx.short = d
            .allocations
            .iter()
            .filter(|a| a.backordered > 0)
            .map(|a| Portion {
                line_id: a.line_id.clone(),
                quantity: a.backordered,
            })
            .collect();
        ctx.batch = batch;
        ctx.origin_postal = postal;
        ctx.location = site;
        Ok(true)
    }

    /// v3, the last step of a shipment: another round when lines are left; else the part of the
    /// authorization no shipment captured (cancelled lines) is released.
    async fn next_shipment(&self, key: &str, ctx: &mut Ctx, t: Duration) -> Result<(), StepError> {
        let order_id = ctx
            .order
            .as_ref()
            .map(|o| o.order_id.clone())
            .ok_or_else(|| missing("order"))?;
        // A shipment that took everything the order still needed leaves nothing (a cancel can
        // only take more away); otherwise ask the order what is left.
        let covered = ctx.remaining.iter().all(|r| {
            ctx.shipments.last().is_some_and(|s| {
                s.lines
                    .iter()
                    .any(|p| p.line_id == r.line_id && p.quantity >= r.quantity)
            })
        });
        ctx.more_to_ship = !covered && !self.still_needed(&order_id, t).await?.is_empty();
        if ctx.more_to_ship
            || ctx.payment_id.is_empty()
            || ctx.captured_minor >= ctx.authorized_minor
        {
            return Ok(());
        }
        self.release_rest(key.to_owned(), ctx.payment_id.clone(), t)
            .await
    }

    /// v3: cancels lines on the order once the shipment that held them is undone.
    pub async fn cancel_lines(
        &self,
        saga_id: &str,
        ctx: &Ctx,
        t: Duration,
    ) -> Result<(), StepError> {
        let order_id = ctx
            .order
            .as_ref()
            .map(|o| o.order_id.clone())
            .ok_or_else(|| missing("order"))?;
        self.cancel_on_order(
            format!("{saga_id}:r{}:cancel_lines", ctx.round),
            order_id,
            ctx.cancel_lines.clone(),
            "lines cancelled; their shipment was stopped".into(),
            t,
        )
        .await
    }

    /// Cancels `line_ids` (empty: every line) on the order, the units a stopped shipment held
    /// included. Nothing left to cancel (all shipped or cancelled already) is fine.
    async fn cancel_on_order(
        &self,
        key: String,
        order_id: String,
        line_ids: Vec<String>,
        reason: String,
        t: Duration,
    ) -> Result<(), StepError> {
        match self
            .order
            .clone()
            .cancel_order(req(
                order::CancelOrderRequest {
                    idempotency_key: key,
                    order_id,
                    line_ids,
                    actor: Some(erp_proto::common::Actor {
                        id: "orchestrator".into(),
                        reason,
                    }),
                    include_allocated: true,
                },
                t,
            ))
            .await
        {
            Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
            other => other.map(|_| ()).map_err(StepError::from),
        }
    }

    /// Releases what an authorization still holds (its captures stay). Nothing held (fully
    /// captured or voided already) is fine.
    async fn release_rest(
        &self,
        key: String,
        payment_id: String,
        t: Duration,
    ) -> Result<(), StepError> {
        match self
            .finance
            .clone()
            .void_payment(req(
                finance::VoidPaymentRequest {
                    idempotency_key: key,
                    payment_id,
                    order_id: String::new(),
                },
                t,
            ))
            .await
        {
            Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
            other => other.map(|_| ()).map_err(StepError::from),
        }
    }

    async fn quote(&self, ctx: &mut Ctx, t: Duration) -> Result<(), StepError> {
        let o = ctx.order.as_ref().ok_or_else(|| missing("order"))?;
        let q = self
            .carrier
            .clone()
            .quote_rates(req(
                carrier::QuoteRatesRequest {
                    origin_site: ctx.location.clone(),
                    origin_region: ctx.origin_zone(),
                    destination: Some(destination(o)),
                    parcel: Some(parcel(o, ctx.parcel.as_ref())),
                    promised_by: None,
                    ship_at: None,
                },
                t,
            ))
            .await?
            .into_inner();
        let fast_enough = |level: i32| {
            o.service_level != "express" || level >= carrier::ServiceLevel::TwoDay as i32
        };
        // Options come cheapest first.
        let Some(option) = q.options.into_iter().find(|x| fast_enough(x.level)) else {
            return Err(StepError::rejected(
                "NO_CARRIER",
                format!(
                    "no carrier service meets the {} service level",
                    o.service_level
                ),
            ));
        };
        ctx.carrier = option.carrier;
        ctx.service = option.service;
        Ok(())
    }
}

/// What `loc` can promise of `sku` now.
fn available_at(a: &inventory::GetAvailabilityResponse, sku: &str, loc: &str) -> i64 {
    a.items
        .iter()
        .filter(|i| i.sku == sku)
        .flat_map(|i| i.locations.iter())
        .filter(|l| l.location == loc)
        .map(|l| l.available)
        .sum()
}

/// Whether the warehouse takes new work at `code` (a location it does not know: yes).
fn site_online(sites: &[warehouse::Site], code: &str) -> bool {
    sites
        .iter()
        .find(|s| s.code == code)
        .is_none_or(|s| s.status != warehouse::SiteStatus::Offline as i32)
}

fn destination(o: &OrderSnapshot) -> Address {
    Address {
        postal_code: o.postal_code.clone(),
        country_code: o.country_code.clone(),
        ..Default::default()
    }
}

/// The packer's carton when there is one; else an estimate from the catalog weights.
fn parcel(o: &OrderSnapshot, packed: Option<&Carton>) -> Parcel {
    if let Some(c) = packed {
        return Parcel {
            weight_grams: c.weight_grams,
            length_mm: c.length_mm,
            width_mm: c.width_mm,
            height_mm: c.height_mm,
        };
    }
    Parcel {
        weight_grams: o
            .lines
            .iter()
            // A figure for quoting: saturating (a carrier finds no band for an absurd weight
            // and the saga compensates) rather than a panic in the step.
            .fold(0i64, |sum, l| {
                sum.saturating_add(l.weight_grams.saturating_mul(l.quantity))
            })
            .max(100),
        ..Default::default()
    }
}

/// The balanced entry of a shipment: the sale (payment clearing against revenue), cost of goods
/// against inventory, the channel's fees, and the label against carrier payables.
pub fn journal_lines(o: &OrderSnapshot, label_cost_minor: i64) -> Vec<finance::JournalLine> {
    let line = |account: &str, debit: i64, credit: i64, memo: &str| finance::JournalLine {
        account_code: account.into(),
        debit_minor: debit,
        credit_minor: credit,
        currency: o.currency.clone(),
        channel: o.channel.clone(),
        order_id: o.order_id.clone(),
        memo: memo.into(),
    };
    // The customer paid the total (or owes it, on account); the tax in it is owed to the tax
    // authority, not earned.
    let on_account = o.net_terms_days > 0;
    let due = format!("invoiced, due in {} days", o.net_terms_days);
    let mut lines = vec![
        if on_account {
            line("1100", o.total_minor, 0, &due)
        } else {
            line("1200", o.total_minor, 0, "payment captured")
        },
        line("4000", 0, o.total_minor - o.tax_minor, "sales revenue"),
    ];
    if o.tax_minor > 0 {
        lines.push(line("2200", 0, o.tax_minor, "sales tax collected"));
    }
    // The cost of the goods is posted by finance from inventory's shipment, at the moving
    // average that the inventory valuation holds.
    // Exact, then bounded: the order's total is at most 10^12 and the rate at most 100%.
    let commission = (i128::from(o.total_minor) - i128::from(o.tax_minor))
        * i128::from(o.commission_bps)
        / 10_000;
    let fees = i64::try_from(commission)
        .unwrap_or(i64::MAX)
        .saturating_add(o.fixed_fee_minor);
    if fees > 0 {
        lines.push(line("5100", fees, 0, "channel commission and fees"));
        if on_account {
            lines.push(line("2100", 0, fees, "fees owed to the channel"));
        } else {
            lines.push(line("1200", 0, fees, "fees withheld from payout"));
        }
    }
    if label_cost_minor > 0 {
        lines.push(line("5200", label_cost_minor, 0, "shipping label"));
        lines.push(line("2100", 0, label_cost_minor, "owed to the carrier"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipment_entry_balances() {
        let o = OrderSnapshot {
            order_id: "o".into(),
            channel: "amazon-us".into(),
            currency: "USD".into(),
            total_minor: 2599,
            commission_bps: 1500,
            fixed_fee_minor: 99,
            lines: vec![LineSnapshot {
                quantity: 2,
                unit_cost_minor: 450,
                ..Default::default()
            }],
            ..Default::default()
        };
        let lines = journal_lines(&o, 735);
        let d: i64 = lines.iter().map(|l| l.debit_minor).sum();
        let c: i64 = lines.iter().map(|l| l.credit_minor).sum();
        assert_eq!(d, c);
        // Sale, fees, label; the cost of goods comes from the inventory valuation.
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn tax_is_owed_not_earned() {
        let o = OrderSnapshot {
            order_id: "o".into(),
            channel: "web".into(),
            currency: "USD".into(),
            subtotal_minor: 2598,
            tax_minor: 172,
            total_minor: 2770,
            ..Default::default()
        };
        let lines = journal_lines(&o, 0);
        let amount = |account: &str| -> i64 {
            lines
                .iter()
                .filter(|l| l.account_code == account)
                .map(|l| l.credit_minor - l.debit_minor)
                .sum()
        };
        assert_eq!(amount("1200"), -2770, "the customer paid the total");
        assert_eq!(amount("4000"), 2598, "revenue is the subtotal");
        assert_eq!(amount("2200"), 172, "the tax is owed");
    }

    #[test]
    fn a_sale_on_account_is_a_receivable() {
        let o = OrderSnapshot {
            order_id: "o".into(),
            channel: "wholesale".into(),
            currency: "USD".into(),
            subtotal_minor: 10_000,
            tax_minor: 663,
            total_minor: 10_663,
            net_terms_days: 30,
            commission_bps: 100,
            ..Default::default()
        };
        let lines = journal_lines(&o, 900);
        let amount = |account: &str| -> i64 {
            lines
                .iter()
                .filter(|l| l.account_code == account)
                .map(|l| l.debit_minor - l.credit_minor)
                .sum()
        };
        assert_eq!(amount("1100"), 10_663, "the customer owes the invoice");
        assert_eq!(amount("1200"), 0, "no card was charged");
        assert_eq!(
            amount("2100"),
            -(100 + 900),
            "the channel's fee and the label"
        );
        assert_eq!(
            lines
                .iter()
                .map(|l| l.debit_minor - l.credit_minor)
                .sum::<i64>(),
            0
        );
        assert!(lines[0].memo.contains("due in 30 days"));
    }

    #[test]
    fn status_classification() {
        assert!(matches!(
            StepError::from(Status::unavailable("down")),
            StepError::Transient(_)
        ));
        assert!(matches!(
            StepError::from(Status::failed_precondition("no")),
            StepError::Rejected { .. }
        ));
    }
}
