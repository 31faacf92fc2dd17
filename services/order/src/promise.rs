//! Promise dates: when a routed order should reach the customer. A warehouse ships today when
//! the order reaches it before its local cutoff, else the next morning; the carrier's quote for
//! that ship time (its own cutoff and transit for the order's service level) gives the
//! delivery. Backordered units ship once the inbound stock that covers them is expected.

use std::collections::HashMap;

use erp_proto::carrier::carrier_service_client::CarrierServiceClient;
use erp_proto::carrier::{QuoteRatesRequest, ServiceLevel};
use erp_proto::common::{Address, Parcel};
use erp_proto::inventory::InboundLot;
use erp_runtime::time::{from_timestamp, to_timestamp};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
/// Local time a warehouse hands the next day's first parcels to carriers.
const MORNING_MINUTE: i64 = 9 * 60;

/// A warehouse's clock: its local cutoff and its offset from UTC.
#[derive(Debug, Clone)]
pub struct SiteClock {
    pub postal_code: String,
    pub cutoff_minute_of_day: i32,
    pub utc_offset_minutes: i32,
}

/// When a parcel for an order reaching `site` at `at_ms` leaves the warehouse: at once before
/// the local cutoff, else the next local morning.
pub fn ship_moment(site: &SiteClock, at_ms: i64) -> i64 {
    let offset = i64::from(site.utc_offset_minutes) * MINUTE_MS;
    let local = at_ms + offset;
    let minute = local.rem_euclid(DAY_MS) / MINUTE_MS;
    if minute < i64::from(site.cutoff_minute_of_day) {
        return at_ms;
    }
    let next_midnight_local = local - local.rem_euclid(DAY_MS) + DAY_MS;
    next_midnight_local + MORNING_MINUTE * MINUTE_MS - offset
}

/// The inbound lot whose arrival covers `need` units (earliest first, counting the lots
/// before it), if the expected inbound covers them at all.
pub fn covering_lot(lots: &[InboundLot], need: i64) -> Option<&InboundLot> {
    let mut sorted: Vec<&InboundLot> = lots.iter().collect();
    sorted.sort_by_key(|l| l.expected_at.as_ref().map_or(i64::MAX, from_timestamp));
    let mut total = 0;
    sorted.into_iter().find(|l| {
        total += l.quantity;
        total >= need
    })
}

/// Asks carriers for delivery estimates, one quote per warehouse and ship time.
pub struct Promiser<'a> {
    pub carrier: CarrierServiceClient<erp_runtime::auth::PeerChannel>,
    pub sites: &'a HashMap<String, SiteClock>,
    pub destination: Address,
    pub service_level: &'a str,
    quotes: HashMap<(String, i64), Option<i64>>,
}

impl<'a> Promiser<'a> {
    pub fn new(
        carrier: CarrierServiceClient<erp_runtime::auth::PeerChannel>,
        sites: &'a HashMap<String, SiteClock>,
        destination: Address,
        service_level: &'a str,
    ) -> Self {
        Self {
            carrier,
            sites,
            destination,
            service_level,
            quotes: HashMap::new(),
        }
    }

    /// When units at `site` from `ready_ms` on should be delivered, or None when no carrier
    /// serves the order's level from there (or carriers cannot be reached: routing never
    /// waits for a promise).
    pub async fn delivery(&mut self, site: &str, ready_ms: i64) -> Option<i64> {
        let clock = self.sites.get(site)?;
        let ship_at = ship_moment(clock, ready_ms);
        if let Some(known) = self.quotes.get(&(site.to_owned(), ship_at)) {
            return *known;
        }
        let mut request = tonic::Request::new(QuoteRatesRequest {
            origin_site: site.to_owned(),
            origin_region: clock.postal_code.clone(),
            destination: Some(self.destination.clone()),
            parcel: Some(Parcel {
                weight_grams: 1_000,
                ..Default::default()
            }),
            promised_by: None,
            ship_at: Some(to_timestamp(ship_at)),
        });
        request.set_timeout(std::time::Duration::from_secs(2));
        let fast_enough =
            |level: i32| self.service_level != "express" || level >= ServiceLevel::TwoDay as i32;
        let estimate = match self.carrier.quote_rates(request).await {
            Ok(r) => r
                .into_inner()
                .options
                .into_iter()
                .find(|o| fast_enough(o.level))
                .and_then(|o| o.estimated_delivery.as_ref().map(from_timestamp)),
            Err(e) => {
                tracing::warn!(site, error = %e, "no carrier quote: no promise date");
                None
            }
        };
        self.quotes.insert((site.to_owned(), ship_at), estimate);
        estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn east() -> SiteClock {
        // New Jersey in winter: UTC-5, cutoff 17:00 local.
        SiteClock {
            postal_code: "07001".into(),
            cutoff_minute_of_day: 17 * 60,
            utc_offset_minutes: -300,
        }
    }

    // 2026-11-30 00:00 UTC, a Monday.
    const MONDAY: i64 = 1_764_460_800_000;

    #[test]
    fn before_the_cutoff_ships_now_after_it_the_next_morning() {
        let at = |h: i64, m: i64| MONDAY + (h * 60 + m) * MINUTE_MS;
        // 16:59 local = 21:59 UTC: ships at once.
        assert_eq!(ship_moment(&east(), at(21, 59)), at(21, 59));
        // 17:00 local = 22:00 UTC: the next local morning, 09:00 local = 14:00 UTC.
        assert_eq!(ship_moment(&east(), at(22, 0)), at(24 + 14, 0));
        // 02:00 UTC Monday is 21:00 Sunday local: past Sunday's cutoff, ships Monday 09:00.
        assert_eq!(ship_moment(&east(), at(2, 0)), at(14, 0));
        // 13:00 UTC Monday is 08:00 local: before the cutoff, ships at once.
        assert_eq!(ship_moment(&east(), at(13, 0)), at(13, 0));
    }

    #[test]
    fn the_lot_that_covers_the_need_is_found_in_date_order() {
        let lot = |loc: &str, q: i64, day: i64| InboundLot {
            location: loc.into(),
            quantity: q,
            expected_at: Some(to_timestamp(MONDAY + day * DAY_MS)),
        };
        let lots = [lot("west", 5, 9), lot("east", 2, 3), lot("central", 4, 5)];
        assert_eq!(covering_lot(&lots, 2).unwrap().location, "east");
        assert_eq!(covering_lot(&lots, 3).unwrap().location, "central");
        assert_eq!(covering_lot(&lots, 6).unwrap().location, "central");
        assert_eq!(covering_lot(&lots, 11).unwrap().location, "west");
        assert!(covering_lot(&lots, 12).is_none());
        assert!(covering_lot(&[], 1).is_none());
    }
}
