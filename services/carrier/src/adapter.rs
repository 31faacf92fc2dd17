//! The port to carriers' own systems, and the simulated carriers behind it.
//!
//! The service owns rating, idempotency and the shipment record; an adapter only talks to the
//! carrier: it books a label and cancels one. A real integration (a carrier's REST API)
//! implements [`CarrierPort`]; the built-in [`Simulated`] adapter behaves like one, warts
//! included: the `flaky*` carriers time out on the first attempt of each request, an
//! undeliverable address is refused, and its tracking feed repeats and reorders events.

use std::collections::HashSet;
use std::sync::Mutex;

use erp_proto::carrier::{ShipmentStatus, TrackingEvent};

/// What the service asks a carrier to book.
#[derive(Debug, Clone)]
pub struct LabelOrder {
    pub carrier: String,
    pub service: String,
    /// The caller's idempotency key: carriers that accept one get it, so a retry after a
    /// timeout books the same label.
    pub request_key: String,
    pub destination_postal_code: String,
    pub weight_grams: i64,
}

/// The carrier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub tracking_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// No answer in time: the label may or may not exist at the carrier; retry with the key.
    #[error("carrier did not answer in time: {0}")]
    Timeout(String),
    /// The carrier said no (an address it does not serve, a parcel it does not take).
    #[error("{reason}: {message}")]
    Refused { reason: String, message: String },
}

/// A carrier's system, as the service sees it.
#[tonic::async_trait]
pub trait CarrierPort: Send + Sync {
    async fn create_label(&self, order: &LabelOrder) -> Result<Label, AdapterError>;
}

/// The built-in carriers.
#[derive(Default)]
pub struct Simulated {
    /// Requests the flaky carriers have already timed out once.
    timed_out: Mutex<HashSet<String>>,
}

#[tonic::async_trait]
impl CarrierPort for Simulated {
    async fn create_label(&self, order: &LabelOrder) -> Result<Label, AdapterError> {
        if order.carrier.starts_with("flaky") {
            let first = self
                .timed_out
                .lock()
                .map(|mut seen| seen.insert(order.request_key.clone()))
                .unwrap_or(false);
            if first {
                return Err(AdapterError::Timeout(format!(
                    "{} (simulated); retry with the same key",
                    order.carrier
                )));
            }
        }
        if order.destination_postal_code.chars().all(|c| c == '0') {
            return Err(AdapterError::Refused {
                reason: "ADDRESS_UNDELIVERABLE".into(),
                message: format!(
                    "{} does not deliver to postal code {}",
                    order.carrier, order.destination_postal_code
                ),
            });
        }
        // Deterministic per request, as a carrier's own idempotency would make it.
        let digest = fnv48(&order.request_key);
        Ok(Label {
            tracking_number: format!("{}{digest:012X}", order.carrier.to_uppercase()),
        })
    }
}

/// A 48-bit FNV-1a digest: stable across runs and platforms.
fn fnv48(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & 0xffff_ffff_ffff
}

/// The tracking feed a simulated carrier pushes for a label created at `created_ms` and due
/// `transit_ms` later, as a real webhook stream arrives: every milestone to delivery, one of
/// them sent twice, and two of them out of order.
pub fn simulated_feed(
    tracking_number: &str,
    created_ms: i64,
    transit_ms: i64,
) -> Vec<TrackingEvent> {
    let at = |fraction: f64| {
        Some(erp_runtime::time::to_timestamp(
            created_ms + (transit_ms as f64 * fraction) as i64,
        ))
    };
    let event = |n: usize, milestone: ShipmentStatus, fraction: f64, detail: &str| TrackingEvent {
        event_id: format!("{tracking_number}-{n}"),
        milestone: milestone as i32,
        occurred_at: at(fraction),
        detail: detail.to_owned(),
    };
    let picked_up = event(1, ShipmentStatus::PickedUp, 0.05, "picked up at the dock");
    let in_transit = event(2, ShipmentStatus::InTransit, 0.3, "departed origin hub");
    let out = event(3, ShipmentStatus::OutForDelivery, 0.9, "out for delivery");
    let delivered = event(4, ShipmentStatus::Delivered, 1.0, "delivered, front door");
    vec![
        in_transit.clone(),
        // Arrives after the later scan: must not move the shipment back.
        picked_up,
        // The carrier's retry of a webhook it thinks was lost.
        in_transit,
        out,
        delivered.clone(),
        delivered,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(carrier: &str, key: &str, postal: &str) -> LabelOrder {
        LabelOrder {
            carrier: carrier.into(),
            service: "ground".into(),
            request_key: key.into(),
            destination_postal_code: postal.into(),
            weight_grams: 500,
        }
    }

    #[tokio::test]
    async fn flaky_carriers_time_out_once_per_request() {
        let sim = Simulated::default();
        let o = order("flakyship", "k1", "10001");
        assert!(matches!(
            sim.create_label(&o).await,
            Err(AdapterError::Timeout(_))
        ));
        let label = sim.create_label(&o).await.unwrap();
        assert_eq!(
            sim.create_label(&o).await.unwrap(),
            label,
            "same key, same label"
        );
        assert!(
            sim.create_label(&order("parcelco", "k1", "10001"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn undeliverable_addresses_are_refused() {
        let sim = Simulated::default();
        let err = sim
            .create_label(&order("parcelco", "k2", "00000"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, AdapterError::Refused { ref reason, .. } if reason == "ADDRESS_UNDELIVERABLE")
        );
    }

    #[test]
    fn the_feed_repeats_and_reorders_but_ends_delivered() {
        let feed = simulated_feed("T1", 0, 1000);
        let ids: HashSet<_> = feed.iter().map(|e| e.event_id.clone()).collect();
        assert!(ids.len() < feed.len(), "has duplicates");
        assert!(
            feed.windows(2)
                .any(|w| crate::domain::rank(w[1].milestone) < crate::domain::rank(w[0].milestone)),
            "has an event older than the one before it"
        );
        assert_eq!(
            feed.last().unwrap().milestone,
            ShipmentStatus::Delivered as i32
        );
    }
}
