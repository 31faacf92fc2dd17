//! What a saga knows: the order it ships, the shipment in progress, the payment, the
//! shipments made, and why it fails when it does. Persisted with the saga as JSON (every field
//! has a default, so a context written by an older build still reads).

use serde::{Deserialize, Serialize};

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
    pub(crate) fn shipped_before(&self, line_id: &str) -> i64 {
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
    pub(crate) fn open_value(&self) -> i64 {
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

    /// Forgets the warehouse-bound facts of the shipment in progress (after a re-route, or once it
    /// shipped), so that the next plan starts clean.
    pub fn clear_shipment(&mut self) {
        let c = self;
        c.location.clear();
        // Held signals name a fulfillment of the shipment being forgotten.
        c.early_signals.clear();
        c.origin_postal.clear();
        c.reservation_ids.clear();
        c.fulfillment_id.clear();
        c.carrier.clear();
        c.service.clear();
        c.shipment_id.clear();
        c.tracking_number.clear();
        c.label_cost_minor = 0;
        c.packed = false;
        c.parcel = None;
        c.shipped = false;
        c.ship_deadline_ms = 0;
        c.journal_entry_id.clear();
        c.batch.clear();
        c.short.clear();
    }

    /// The order's id (empty before the saga knew its order).
    pub fn order_id(&self) -> String {
        self.order
            .as_ref()
            .map(|o| o.order_id.clone())
            .unwrap_or_default()
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
