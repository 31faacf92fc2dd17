//! In-memory participants (feature `fakes`, and in this crate's unit tests): one [`FakeWorld`]
//! plays the order, inventory, warehouse, carrier and finance services as the saga sees them,
//! with their rules — idempotency keys answered with the first result, all-or-nothing
//! reservations against per-site stock, declines for a blocked card, `NOT_FOUND` for what was
//! never done, `FAILED_PRECONDITION` with the services' reason codes — and scripted faults
//! (a participant down, a refusal) per method. Every call is logged, so a test can check what
//! was called, in what order, and that nothing was charged twice.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use erp_proto::common::Money;
use erp_proto::{finance, inventory, order, warehouse};
use erp_runtime::error::ApiError;
use tonic::Status;

use crate::ports::Ports;

/// A payment as the fake provider holds it.
#[derive(Debug, Clone, Default)]
pub struct FakePayment {
    pub payment_id: String,
    pub order_id: String,
    pub authorized: i64,
    pub captured: i64,
    pub voided: bool,
}

/// A reservation held (or committed, or released) at a site.
#[derive(Debug, Clone, Default)]
pub struct FakeReservation {
    pub reservation_id: String,
    pub order_id: String,
    pub sku: String,
    pub site: String,
    pub quantity: i64,
    pub committed: bool,
    pub released: bool,
}

/// What the fake services hold. Public so that a test can set the scene and read the outcome.
#[derive(Default)]
pub struct World {
    pub orders: BTreeMap<String, order::Order>,
    pub channels: Vec<order::Channel>,
    pub items: HashMap<String, inventory::Item>,
    /// Units available to reserve, by (sku, site).
    pub available: BTreeMap<(String, String), i64>,
    pub reservations: Vec<FakeReservation>,
    pub sites: Vec<warehouse::Site>,
    /// (fulfillment id, order id, site, cancelled).
    pub fulfillments: Vec<(String, String, String, bool)>,
    /// (shipment id, order id, voided).
    pub labels: Vec<(String, String, bool)>,
    pub payments: Vec<FakePayment>,
    pub journal: Vec<finance::JournalEntry>,
    /// Payment method tokens the provider declines.
    pub declined_tokens: HashSet<String>,
    /// Routing rules on: each line goes to the first site (by code) that has all of it, or is
    /// backordered (a split where the lines' stock is spread). Off: RouteOrder refuses, and the
    /// saga plans from stock and sites itself.
    pub routing_rules: bool,
    /// What the probe participant recorded: idempotency key → (business key, step).
    pub probe_effects: BTreeMap<String, (String, i32)>,
    /// (business key, step) the probe participant declines.
    pub probe_declines: HashSet<(String, i32)>,
    /// Every call, as `service.method`, in order.
    pub calls: Vec<String>,
    /// Scripted answers: the next calls of `service.method` fail with these, in turn.
    pub faults: HashMap<String, VecDeque<Status>>,
    /// Idempotency: the id each key's first call produced.
    pub(super) keys: HashMap<String, String>,
    next_id: u64,
}

impl World {
    pub(super) fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    /// Logs the call and answers a scripted fault if one is queued.
    pub(super) fn enter(&mut self, method: &str) -> Result<(), Status> {
        self.calls.push(method.to_owned());
        match self.faults.get_mut(method).and_then(VecDeque::pop_front) {
            Some(fault) => Err(fault),
            None => Ok(()),
        }
    }

    /// How often `method` was called.
    pub fn count(&self, method: &str) -> usize {
        self.calls.iter().filter(|c| *c == method).count()
    }

    pub(super) fn order_mut(&mut self, order_id: &str) -> Result<&mut order::Order, Status> {
        self.orders
            .get_mut(order_id)
            .ok_or_else(|| Status::not_found(format!("order {order_id}")))
    }

    pub(super) fn payment_of(
        &mut self,
        payment_id: &str,
        order_id: &str,
    ) -> Option<&mut FakePayment> {
        self.payments.iter_mut().rev().find(|p| {
            p.payment_id == payment_id || (payment_id.is_empty() && p.order_id == order_id)
        })
    }

    /// Units of `sku` available at `site`.
    pub fn stock(&self, sku: &str, site: &str) -> i64 {
        self.available
            .get(&(sku.to_owned(), site.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

pub(super) fn refused(reason: &str, message: impl Into<String>) -> Status {
    ApiError::precondition(reason, message).into()
}

pub(super) fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: currency.to_owned(),
    })
}

pub(super) fn payment_message(p: &FakePayment) -> finance::Payment {
    finance::Payment {
        payment_id: p.payment_id.clone(),
        order_id: p.order_id.clone(),
        authorized: money(p.authorized, "USD"),
        captured: money(p.captured, "USD"),
        expires_at: Some(erp_runtime::time::to_timestamp(
            erp_runtime::time::now_ms() + 7 * 86_400_000,
        )),
        ..Default::default()
    }
}

/// The fake services, shared by the five ports.
#[derive(Clone, Default)]
pub struct FakeWorld(Arc<Mutex<World>>);

impl FakeWorld {
    pub fn new() -> Self {
        Self::default()
    }

    /// The world, to set the scene or read what happened.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The five participants, all played by this world.
    pub fn ports(&self) -> Ports {
        Ports {
            order: Arc::new(self.clone()),
            inventory: Arc::new(self.clone()),
            warehouse: Arc::new(self.clone()),
            carrier: Arc::new(self.clone()),
            finance: Arc::new(self.clone()),
            probe: Some(Arc::new(self.clone())),
        }
    }

    /// The next `times` calls of `method` (`service.method`) fail with `status`.
    pub fn fail(&self, method: &str, status: Status, times: usize) {
        let mut w = self.world();
        let queue = w.faults.entry(method.to_owned()).or_default();
        queue.extend(std::iter::repeat_n(status, times));
    }

    /// An online site with a postal code.
    pub fn add_site(&self, code: &str) {
        self.world().sites.push(warehouse::Site {
            code: code.to_owned(),
            name: code.to_owned(),
            status: warehouse::SiteStatus::Online as i32,
            postal_code: "10001".into(),
            ..Default::default()
        });
    }

    pub fn set_stock(&self, sku: &str, site: &str, units: i64) {
        self.world()
            .available
            .insert((sku.to_owned(), site.to_owned()), units);
    }

    /// An accepted order on the `web` channel, shipping to New York, paid with `token`:
    /// `(line id, sku, units, unit price)` per line.
    pub fn add_order(&self, order_id: &str, token: &str, lines: &[(&str, &str, i64, i64)]) {
        let mut w = self.world();
        if w.channels.is_empty() {
            w.channels.push(order::Channel {
                code: "web".into(),
                currency: "USD".into(),
                ..Default::default()
            });
        }
        let total: i64 = lines.iter().map(|(_, _, q, p)| q * p).sum();
        let order = order::Order {
            order_id: order_id.to_owned(),
            channel: "web".into(),
            currency: "USD".into(),
            service_level: "standard".into(),
            status: order::OrderStatus::Accepted as i32,
            payment_method_token: token.to_owned(),
            total: money(total, "USD"),
            ship_to: Some(erp_proto::common::Address {
                country_code: "US".into(),
                postal_code: "10001".into(),
                ..Default::default()
            }),
            lines: lines
                .iter()
                .map(|(line_id, sku, units, price)| order::OrderLine {
                    line_id: (*line_id).to_owned(),
                    sku: (*sku).to_owned(),
                    unit_price: money(*price, "USD"),
                    quantities: Some(order::LineQuantities {
                        ordered: *units,
                        open: *units,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        for (_, sku, _, _) in lines {
            w.items
                .entry((*sku).to_owned())
                .or_insert_with(|| inventory::Item {
                    sku: (*sku).to_owned(),
                    unit_cost: money(400, "USD"),
                    weight_grams: 300,
                    ..Default::default()
                });
        }
        w.orders.insert(order_id.to_owned(), order);
    }
}

mod probe;
mod services;
