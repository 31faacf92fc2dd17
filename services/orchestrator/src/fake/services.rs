//! The five services as the fake world plays them.

use std::time::Duration;

use erp_proto::{carrier, finance, inventory, order, warehouse};
use tonic::Status;

use super::{FakePayment, FakeReservation, FakeWorld, World, money, payment_message, refused};
use crate::ports::{CarrierPort, FinancePort, InventoryPort, OrderPort, WarehousePort};

/// Runs `$body` under the world's lock after logging `$method` and answering its fault.
macro_rules! call {
    ($self:ident, $method:literal, |$w:ident| $body:expr) => {{
        let mut guard = $self.world();
        guard.enter($method)?;
        let $w: &mut World = &mut guard;
        $body
    }};
}

#[async_trait::async_trait]
impl OrderPort for FakeWorld {
    async fn get_order(
        &self,
        r: order::GetOrderRequest,
        _: Duration,
    ) -> Result<order::GetOrderResponse, Status> {
        call!(self, "order.get_order", |w| {
            let order = w.order_mut(&r.order_id)?.clone();
            Ok(order::GetOrderResponse { order: Some(order) })
        })
    }

    async fn list_channels(
        &self,
        _: order::ListChannelsRequest,
        _: Duration,
    ) -> Result<order::ListChannelsResponse, Status> {
        call!(self, "order.list_channels", |w| Ok(
            order::ListChannelsResponse {
                channels: w.channels.clone(),
            }
        ))
    }

    async fn record_tax(
        &self,
        r: order::RecordTaxRequest,
        _: Duration,
    ) -> Result<order::RecordTaxResponse, Status> {
        call!(self, "order.record_tax", |w| {
            let o = w.order_mut(&r.order_id)?;
            for t in &r.lines {
                if let Some(l) = o.lines.iter_mut().find(|l| l.line_id == t.line_id) {
                    l.tax.clone_from(&t.tax);
                }
            }
            Ok(order::RecordTaxResponse {
                order: Some(o.clone()),
            })
        })
    }

    /// With [`World::routing_rules`], each line to the first site that has all of it.
    async fn route_order(
        &self,
        r: order::RouteOrderRequest,
        _: Duration,
    ) -> Result<order::RouteOrderResponse, Status> {
        call!(self, "order.route_order", |w| {
            if !w.routing_rules {
                return Err(refused("NO_ROUTING_RULES", "no routing rules are defined"));
            }
            let o = w.order_mut(&r.order_id)?.clone();
            let mut allocations = Vec::new();
            for l in &o.lines {
                let Some(q) = l.quantities else { continue };
                let need = q.ordered - q.shipped - q.cancelled - q.returned;
                if need <= 0 {
                    continue;
                }
                let site = w
                    .sites
                    .iter()
                    .filter(|s| !r.exclude_sites.contains(&s.code))
                    .map(|s| s.code.clone())
                    .find(|site| w.stock(&l.sku, site) >= need);
                allocations.push(order::LineAllocation {
                    line_id: l.line_id.clone(),
                    allocated: if site.is_some() { need } else { 0 },
                    backordered: if site.is_some() { 0 } else { need },
                    location: site.unwrap_or_default(),
                    promised_by: None,
                });
            }
            Ok(order::RouteOrderResponse {
                decision: Some(order::RoutingDecision {
                    allocations,
                    ..Default::default()
                }),
            })
        })
    }

    async fn record_allocation(
        &self,
        r: order::RecordAllocationRequest,
        _: Duration,
    ) -> Result<order::RecordAllocationResponse, Status> {
        call!(self, "order.record_allocation", |w| {
            let o = w.order_mut(&r.order_id)?;
            for a in &r.allocations {
                if let Some(l) = o.lines.iter_mut().find(|l| l.line_id == a.line_id)
                    && let Some(q) = l.quantities.as_mut()
                {
                    q.allocated = a.allocated;
                    q.backordered = a.backordered;
                    l.location.clone_from(&a.location);
                }
            }
            Ok(order::RecordAllocationResponse {
                order: Some(o.clone()),
            })
        })
    }

    /// What is allocated ships.
    async fn mark_shipped(
        &self,
        r: order::MarkShippedRequest,
        _: Duration,
    ) -> Result<order::MarkShippedResponse, Status> {
        call!(self, "order.mark_shipped", |w| {
            let first = !w.keys.contains_key(&r.idempotency_key);
            w.keys.insert(r.idempotency_key.clone(), r.order_id.clone());
            let o = w.order_mut(&r.order_id)?;
            if first {
                for q in o.lines.iter_mut().filter_map(|l| l.quantities.as_mut()) {
                    q.shipped += q.allocated;
                    q.allocated = 0;
                }
                let done = o.lines.iter().all(|l| {
                    l.quantities
                        .is_some_and(|q| q.shipped + q.cancelled >= q.ordered)
                });
                o.status = if done {
                    order::OrderStatus::Shipped
                } else {
                    order::OrderStatus::PartiallyShipped
                } as i32;
                o.tracking_number.clone_from(&r.tracking_number);
            }
            Ok(order::MarkShippedResponse {
                order: Some(o.clone()),
            })
        })
    }

    async fn mark_failed(
        &self,
        r: order::MarkFailedRequest,
        _: Duration,
    ) -> Result<order::MarkFailedResponse, Status> {
        call!(self, "order.mark_failed", |w| {
            let o = w.order_mut(&r.order_id)?;
            o.status = order::OrderStatus::Failed as i32;
            o.status_reason = format!("{}: {}", r.reason, r.detail);
            Ok(order::MarkFailedResponse {
                order: Some(o.clone()),
            })
        })
    }

    /// Cancels what did not ship of `line_ids` (all lines when empty).
    async fn cancel_order(
        &self,
        r: order::CancelOrderRequest,
        _: Duration,
    ) -> Result<order::CancelOrderResponse, Status> {
        call!(self, "order.cancel_order", |w| {
            let o = w.order_mut(&r.order_id)?;
            let mut cancelled = 0;
            for l in &mut o.lines {
                if !r.line_ids.is_empty() && !r.line_ids.contains(&l.line_id) {
                    continue;
                }
                if let Some(q) = l.quantities.as_mut() {
                    let left = q.ordered - q.shipped - q.cancelled;
                    q.cancelled += left;
                    q.allocated = 0;
                    q.backordered = 0;
                    cancelled += left;
                }
            }
            if cancelled == 0 {
                return Err(refused("NOTHING_TO_CANCEL", "nothing is left to cancel"));
            }
            let shipped: i64 = o
                .lines
                .iter()
                .filter_map(|l| l.quantities)
                .map(|q| q.shipped)
                .sum();
            if shipped == 0 && r.line_ids.is_empty() {
                o.status = order::OrderStatus::Cancelled as i32;
            }
            Ok(order::CancelOrderResponse {
                order: Some(o.clone()),
                pending_line_ids: Vec::new(),
            })
        })
    }
}

#[async_trait::async_trait]
impl InventoryPort for FakeWorld {
    async fn get_item(
        &self,
        r: inventory::GetItemRequest,
        _: Duration,
    ) -> Result<inventory::GetItemResponse, Status> {
        call!(self, "inventory.get_item", |w| {
            let item = w
                .items
                .get(&r.sku)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("item {}", r.sku)))?;
            Ok(inventory::GetItemResponse { item: Some(item) })
        })
    }

    async fn get_availability(
        &self,
        r: inventory::GetAvailabilityRequest,
        _: Duration,
    ) -> Result<inventory::GetAvailabilityResponse, Status> {
        call!(self, "inventory.get_availability", |w| {
            let items = r
                .skus
                .iter()
                .map(|sku| {
                    let locations: Vec<inventory::LocationAvailability> = w
                        .available
                        .iter()
                        .filter(|((s, _), _)| s == sku)
                        .map(|((_, site), units)| inventory::LocationAvailability {
                            location: site.clone(),
                            available: *units,
                        })
                        .collect();
                    inventory::SkuAvailability {
                        sku: sku.clone(),
                        network_available: locations.iter().map(|l| l.available).sum(),
                        locations,
                        inbound: Vec::new(),
                    }
                })
                .collect();
            Ok(inventory::GetAvailabilityResponse { items })
        })
    }

    /// All or nothing at the requested sites; a repeated key answers the first result.
    async fn reserve_stock(
        &self,
        r: inventory::ReserveStockRequest,
        _: Duration,
    ) -> Result<inventory::ReserveStockResponse, Status> {
        call!(self, "inventory.reserve_stock", |w| {
            let held = |w: &World| -> Vec<inventory::Reservation> {
                w.reservations
                    .iter()
                    .filter(|x| w.keys.get(&x.reservation_id) == Some(&r.idempotency_key))
                    .map(|x| inventory::Reservation {
                        reservation_id: x.reservation_id.clone(),
                        order_id: x.order_id.clone(),
                        sku: x.sku.clone(),
                        location: x.site.clone(),
                        quantity: x.quantity,
                        ..Default::default()
                    })
                    .collect()
            };
            if w.keys.contains_key(&r.idempotency_key) {
                return Ok(inventory::ReserveStockResponse {
                    reservations: held(w),
                    short_lines: Vec::new(),
                });
            }
            let short: Vec<String> = r
                .lines
                .iter()
                .filter(|l| w.stock(&l.sku, &l.location) < l.quantity)
                .map(|l| l.order_line_id.clone())
                .collect();
            if !short.is_empty() {
                return Err(refused(
                    "INSUFFICIENT_STOCK",
                    format!("short: {}", short.join(", ")),
                ));
            }
            w.keys.insert(r.idempotency_key.clone(), r.order_id.clone());
            for l in &r.lines {
                *w.available
                    .entry((l.sku.clone(), l.location.clone()))
                    .or_default() -= l.quantity;
                let id = w.id("res");
                w.keys.insert(id.clone(), r.idempotency_key.clone());
                w.reservations.push(FakeReservation {
                    reservation_id: id,
                    order_id: r.order_id.clone(),
                    sku: l.sku.clone(),
                    site: l.location.clone(),
                    quantity: l.quantity,
                    committed: false,
                    released: false,
                });
            }
            Ok(inventory::ReserveStockResponse {
                reservations: held(w),
                short_lines: Vec::new(),
            })
        })
    }

    async fn commit_reservations(
        &self,
        r: inventory::CommitReservationsRequest,
        _: Duration,
    ) -> Result<inventory::CommitReservationsResponse, Status> {
        call!(self, "inventory.commit_reservations", |w| {
            for x in w.reservations.iter_mut().filter(|x| {
                x.order_id == r.order_id
                    && !x.released
                    && (r.reservation_ids.is_empty()
                        || r.reservation_ids.contains(&x.reservation_id))
            }) {
                x.committed = true;
            }
            Ok(inventory::CommitReservationsResponse::default())
        })
    }

    /// Releases what the order still holds (committed units stay gone).
    async fn release_reservations(
        &self,
        r: inventory::ReleaseReservationsRequest,
        _: Duration,
    ) -> Result<inventory::ReleaseReservationsResponse, Status> {
        call!(self, "inventory.release_reservations", |w| {
            let mut back = Vec::new();
            for x in w.reservations.iter_mut().filter(|x| {
                x.order_id == r.order_id
                    && !x.released
                    && !x.committed
                    && (r.reservation_ids.is_empty()
                        || r.reservation_ids.contains(&x.reservation_id))
            }) {
                x.released = true;
                back.push((x.sku.clone(), x.site.clone(), x.quantity));
            }
            for (sku, site, units) in back {
                *w.available.entry((sku, site)).or_default() += units;
            }
            Ok(inventory::ReleaseReservationsResponse::default())
        })
    }

    async fn adjust_stock(
        &self,
        r: inventory::AdjustStockRequest,
        _: Duration,
    ) -> Result<inventory::AdjustStockResponse, Status> {
        call!(self, "inventory.adjust_stock", |w| {
            if w.keys
                .insert(r.idempotency_key.clone(), r.sku.clone())
                .is_none()
                && r.bucket == inventory::Bucket::OnHand as i32
            {
                *w.available
                    .entry((r.sku.clone(), r.location.clone()))
                    .or_default() += r.delta;
            }
            Ok(inventory::AdjustStockResponse::default())
        })
    }
}

#[async_trait::async_trait]
impl WarehousePort for FakeWorld {
    async fn list_sites(
        &self,
        _: warehouse::ListSitesRequest,
        _: Duration,
    ) -> Result<warehouse::ListSitesResponse, Status> {
        call!(self, "warehouse.list_sites", |w| Ok(
            warehouse::ListSitesResponse {
                sites: w.sites.clone(),
                released_today: Vec::new(),
            }
        ))
    }

    async fn create_fulfillment(
        &self,
        r: warehouse::CreateFulfillmentRequest,
        _: Duration,
    ) -> Result<warehouse::CreateFulfillmentResponse, Status> {
        call!(self, "warehouse.create_fulfillment", |w| {
            let id = match w.keys.get(&r.idempotency_key) {
                Some(id) => id.clone(),
                None => {
                    let id = w.id("ful");
                    w.keys.insert(r.idempotency_key.clone(), id.clone());
                    w.fulfillments
                        .push((id.clone(), r.order_id.clone(), r.site.clone(), false));
                    id
                }
            };
            Ok(warehouse::CreateFulfillmentResponse {
                fulfillment: Some(warehouse::Fulfillment {
                    fulfillment_id: id,
                    order_id: r.order_id.clone(),
                    site: r.site.clone(),
                    saga_id: r.saga_id.clone(),
                    ..Default::default()
                }),
            })
        })
    }

    async fn cancel_fulfillment(
        &self,
        r: warehouse::CancelFulfillmentRequest,
        _: Duration,
    ) -> Result<warehouse::CancelFulfillmentResponse, Status> {
        call!(self, "warehouse.cancel_fulfillment", |w| {
            for f in w.fulfillments.iter_mut().filter(|f| {
                f.1 == r.order_id && (r.fulfillment_id.is_empty() || f.0 == r.fulfillment_id)
            }) {
                f.3 = true;
            }
            Ok(warehouse::CancelFulfillmentResponse::default())
        })
    }
}

#[async_trait::async_trait]
impl CarrierPort for FakeWorld {
    /// A ground service and a faster, dearer one, cheapest first.
    async fn quote_rates(
        &self,
        _: carrier::QuoteRatesRequest,
        _: Duration,
    ) -> Result<carrier::QuoteRatesResponse, Status> {
        call!(self, "carrier.quote_rates", |_w| Ok(
            carrier::QuoteRatesResponse {
                options: vec![
                    carrier::RateOption {
                        carrier: "FAKE".into(),
                        service: "ground".into(),
                        level: carrier::ServiceLevel::Ground as i32,
                        price: money(500, "USD"),
                        ..Default::default()
                    },
                    carrier::RateOption {
                        carrier: "FAKE".into(),
                        service: "2day".into(),
                        level: carrier::ServiceLevel::TwoDay as i32,
                        price: money(1500, "USD"),
                        ..Default::default()
                    },
                ],
                excluded: Vec::new(),
            }
        ))
    }

    async fn buy_label(
        &self,
        r: carrier::BuyLabelRequest,
        _: Duration,
    ) -> Result<carrier::BuyLabelResponse, Status> {
        call!(self, "carrier.buy_label", |w| {
            let id = match w.keys.get(&r.idempotency_key) {
                Some(id) => id.clone(),
                None => {
                    let id = w.id("shp");
                    w.keys.insert(r.idempotency_key.clone(), id.clone());
                    w.labels.push((id.clone(), r.order_id.clone(), false));
                    id
                }
            };
            Ok(carrier::BuyLabelResponse {
                shipment: Some(carrier::Shipment {
                    tracking_number: format!("TRK{id}"),
                    shipment_id: id,
                    order_id: r.order_id.clone(),
                    carrier: r.carrier.clone(),
                    service: r.service.clone(),
                    cost: money(500, "USD"),
                    ..Default::default()
                }),
            })
        })
    }

    async fn void_label(
        &self,
        r: carrier::VoidLabelRequest,
        _: Duration,
    ) -> Result<carrier::VoidLabelResponse, Status> {
        call!(self, "carrier.void_label", |w| {
            for l in w
                .labels
                .iter_mut()
                .filter(|l| l.1 == r.order_id && (r.shipment_id.is_empty() || l.0 == r.shipment_id))
            {
                l.2 = true;
            }
            Ok(carrier::VoidLabelResponse::default())
        })
    }
}

#[async_trait::async_trait]
impl FinancePort for FakeWorld {
    /// No tax anywhere.
    async fn calculate_tax(
        &self,
        r: finance::CalculateTaxRequest,
        _: Duration,
    ) -> Result<finance::CalculateTaxResponse, Status> {
        call!(self, "finance.calculate_tax", |_w| Ok(
            finance::CalculateTaxResponse {
                lines: r
                    .lines
                    .iter()
                    .map(|l| finance::LineTax {
                        line_id: l.line_id.clone(),
                        rate_bps: 0,
                        tax: money(0, "USD"),
                    })
                    .collect(),
                total_tax: money(0, "USD"),
            }
        ))
    }

    async fn authorize_payment(
        &self,
        r: finance::AuthorizePaymentRequest,
        _: Duration,
    ) -> Result<finance::AuthorizePaymentResponse, Status> {
        call!(self, "finance.authorize_payment", |w| {
            if let Some(id) = w.keys.get(&r.idempotency_key).cloned() {
                let p = w.payment_of(&id, "").cloned().unwrap_or_default();
                return Ok(finance::AuthorizePaymentResponse {
                    payment: Some(payment_message(&p)),
                });
            }
            if w.declined_tokens.contains(&r.payment_method_token) {
                return Err(refused("PAYMENT_DECLINED", "the card was declined"));
            }
            let id = w.id("pay");
            w.keys.insert(r.idempotency_key.clone(), id.clone());
            let p = FakePayment {
                payment_id: id,
                order_id: r.order_id.clone(),
                authorized: r.amount.map_or(0, |m| m.amount_minor),
                captured: 0,
                voided: false,
            };
            w.payments.push(p.clone());
            Ok(finance::AuthorizePaymentResponse {
                payment: Some(payment_message(&p)),
            })
        })
    }

    /// Captures `amount` (all that is left when none); never more than was authorized.
    async fn capture_payment(
        &self,
        r: finance::CapturePaymentRequest,
        _: Duration,
    ) -> Result<finance::CapturePaymentResponse, Status> {
        call!(self, "finance.capture_payment", |w| {
            let repeat = w
                .keys
                .insert(r.idempotency_key.clone(), r.payment_id.clone())
                .is_some();
            let p = w
                .payment_of(&r.payment_id, "")
                .ok_or_else(|| Status::not_found(format!("payment {}", r.payment_id)))?;
            if !repeat {
                let amount = r
                    .amount
                    .map_or(p.authorized - p.captured, |m| m.amount_minor);
                if p.voided
                    || p.captured
                        .checked_add(amount)
                        .is_none_or(|total| total > p.authorized)
                {
                    return Err(refused(
                        "CAPTURE_EXCEEDS_AUTHORIZATION",
                        "not that much left",
                    ));
                }
                p.captured += amount;
            }
            Ok(finance::CapturePaymentResponse {
                payment: Some(payment_message(p)),
            })
        })
    }

    /// Releases what the authorization still holds.
    async fn void_payment(
        &self,
        r: finance::VoidPaymentRequest,
        _: Duration,
    ) -> Result<finance::VoidPaymentResponse, Status> {
        call!(self, "finance.void_payment", |w| {
            let p = w
                .payment_of(&r.payment_id, &r.order_id)
                .ok_or_else(|| Status::not_found("no payment"))?;
            if p.voided {
                return Ok(finance::VoidPaymentResponse {
                    payment: Some(payment_message(p)),
                });
            }
            if p.captured >= p.authorized {
                return Err(refused("NOTHING_TO_VOID", "fully captured"));
            }
            p.voided = true;
            Ok(finance::VoidPaymentResponse {
                payment: Some(payment_message(p)),
            })
        })
    }

    /// Balanced entries only; a repeated key answers the first entry.
    async fn post_journal(
        &self,
        r: finance::PostJournalRequest,
        _: Duration,
    ) -> Result<finance::PostJournalResponse, Status> {
        call!(self, "finance.post_journal", |w| {
            if let Some(id) = w.keys.get(&r.idempotency_key).cloned() {
                let entry = w.journal.iter().find(|e| e.entry_id == id).cloned();
                return Ok(finance::PostJournalResponse { entry });
            }
            let debit: i64 = r.lines.iter().map(|l| l.debit_minor).sum();
            let credit: i64 = r.lines.iter().map(|l| l.credit_minor).sum();
            if debit != credit {
                return Err(Status::invalid_argument(format!(
                    "unbalanced entry: {debit} debit, {credit} credit"
                )));
            }
            let id = w.id("je");
            w.keys.insert(r.idempotency_key.clone(), id.clone());
            let entry = finance::JournalEntry {
                entry_id: id,
                memo: r.memo.clone(),
                source: r.source.clone(),
                lines: r.lines.clone(),
                ..Default::default()
            };
            w.journal.push(entry.clone());
            Ok(finance::PostJournalResponse { entry: Some(entry) })
        })
    }
}
