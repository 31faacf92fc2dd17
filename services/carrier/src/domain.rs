//! Rating rules, free of I/O.

use serde::{Deserialize, Serialize};

/// A service offering as stored (JSON in the carrier row).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Offering {
    pub code: String,
    pub level: i32,
    pub transit_days: i32,
    pub surcharge_minor: i64,
    pub currency: String,
    /// (zone, max weight grams, price minor), any order.
    pub bands: Vec<(i32, i64, i64)>,
}

/// Zone between two postal codes: 1 + the distance between their first digits (the national
/// area of a US ZIP code), as carriers zone by distance. Non-numeric codes are zone 1.
pub fn zone(origin_postal: &str, destination_postal: &str) -> i32 {
    let area = |s: &str| {
        s.chars()
            .next()
            .and_then(|c| c.to_digit(10))
            .map(|d| d as i32)
    };
    match (area(origin_postal), area(destination_postal)) {
        (Some(a), Some(b)) => 1 + (a - b).abs(),
        _ => 1,
    }
}

/// Price of a parcel: the cheapest band of the zone that takes its weight, plus the surcharge.
pub fn price(offering: &Offering, zone: i32, weight_grams: i64) -> Option<i64> {
    offering
        .bands
        .iter()
        .filter(|(z, max, _)| *z == zone && weight_grams <= *max)
        .map(|(_, _, p)| *p)
        .min()
        .map(|p| p + offering.surcharge_minor)
}

/// Milestones in the order a parcel moves through them; exceptions and returns are terminal-ish
/// and may follow any milestone before delivery.
pub fn rank(status: i32) -> i32 {
    match status {
        1 => 1, // label created
        2 => 2, // picked up
        3 => 3, // in transit
        4 => 4, // out for delivery
        6 => 4, // exception: at the same stage as out for delivery at the latest
        5 => 5, // delivered
        7 => 6, // returned to sender
        8 => 7, // voided
        _ => 0,
    }
}

/// Whether an event moves the shipment forward.
pub fn advances(current: i32, incoming: i32) -> bool {
    rank(incoming) > rank(current) || (incoming == 6 && current != 6 && rank(current) < 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ground() -> Offering {
        Offering {
            code: "ground".into(),
            level: 1,
            transit_days: 5,
            surcharge_minor: 50,
            currency: "USD".into(),
            bands: vec![(1, 1000, 700), (1, 5000, 1200), (2, 1000, 900)],
        }
    }

    #[test]
    fn picks_the_band_that_takes_the_weight() {
        assert_eq!(price(&ground(), 1, 800), Some(750));
        assert_eq!(price(&ground(), 1, 3000), Some(1250));
        assert_eq!(price(&ground(), 1, 6000), None);
        assert_eq!(price(&ground(), 3, 100), None);
    }

    #[test]
    fn zones_by_distance() {
        assert_eq!(zone("10001", "10301"), 1);
        assert_eq!(zone("10001", "94105"), 9);
        assert_eq!(zone("SW1A", "10001"), 1);
    }

    #[test]
    fn never_backwards() {
        assert!(advances(1, 3));
        assert!(!advances(3, 2));
        assert!(!advances(5, 3));
        assert!(advances(3, 6));
        assert!(!advances(5, 6));
    }
}
