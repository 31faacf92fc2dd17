//! Replenishment arithmetic and supplier scorecards, free of I/O.

/// How a reorder policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min_quantity: i64,
    pub max_quantity: i64,
    /// 0: min/max mode. Otherwise reorder-point mode with this many days of safety stock.
    pub safety_stock_days: i32,
}

/// The supplier's terms that shape an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub lead_time_days: i32,
    pub minimum_order_quantity: i64,
    pub pack_multiple: i64,
}

/// What to order and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    pub quantity: i64,
    pub rationale: String,
}

/// Units per day over the demand window, rounded up to a whole unit per thousand days so that a
/// trickle of demand is not rounded to none.
pub fn daily_rate_milli(units_in_window: i64, window_days: i64) -> i64 {
    if window_days <= 0 {
        return 0;
    }
    narrow(
        (i128::from(units_in_window) * 1000 + i128::from(window_days) - 1)
            / i128::from(window_days),
    )
}

/// The longest lead time or safety cover accepted, in days (ten years).
pub const MAX_DAYS: i32 = 3650;

/// An exact intermediate brought back to i64, saturating: these are suggestions, and a
/// suggested quantity beyond the largest accepted is refused when it becomes an order.
fn narrow(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// `ceil(rate_milli * days / 1000)`: units needed to cover `days` of demand.
fn cover(rate_milli: i64, days: i64) -> i64 {
    narrow((i128::from(rate_milli) * i128::from(days) + 999) / 1000)
}

/// Rounds `raw` up to at least the minimum order quantity, then up to the pack multiple.
pub fn order_quantity(raw: i64, terms: &Terms) -> i64 {
    let at_least = i128::from(raw.max(terms.minimum_order_quantity).max(1));
    let pack = i128::from(terms.pack_multiple.max(1));
    narrow((at_least + pack - 1) / pack * pack)
}

/// The replenishment decision for one item at one location.
///
/// `position` is what is available now plus what is already coming (inbound, and purchase
/// orders not sent yet). Min/max mode orders up to `max` once the position is at or below
/// `min`. Reorder-point mode orders when the position no longer covers the demand of the lead
/// time plus the safety days (the reorder point), up to the reorder point plus one lead time of
/// demand, so that the next order is not due the day this one arrives.
pub fn suggest(
    policy: &Policy,
    terms: &Terms,
    position: i64,
    rate_milli: i64,
) -> Option<Suggestion> {
    let lead = i64::from(terms.lead_time_days);
    let (trigger, target, why) = if policy.safety_stock_days > 0 {
        let rop = cover(rate_milli, lead + i64::from(policy.safety_stock_days));
        let target = rop.saturating_add(cover(rate_milli, lead));
        (
            rop,
            target,
            format!(
                "demand {}.{:03}/day, lead time {lead} d, safety {} d: reorder point {rop}, order up to {target}",
                rate_milli / 1000,
                rate_milli % 1000,
                policy.safety_stock_days
            ),
        )
    } else {
        (
            policy.min_quantity,
            policy.max_quantity,
            format!("min {} / max {}", policy.min_quantity, policy.max_quantity),
        )
    };
    if position > trigger || target <= position {
        return None;
    }
    let raw = target.saturating_sub(position);
    let quantity = order_quantity(raw, terms);
    Some(Suggestion {
        quantity,
        rationale: format!(
            "position {position} <= {trigger}; {why}; need {raw}, ordering {quantity} (minimum {}, pack of {})",
            terms.minimum_order_quantity, terms.pack_multiple
        ),
    })
}

/// One purchase order's history, for the scorecard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub ordered: i64,
    pub received: i64,
    pub sent_at_ms: i64,
    pub expected_at_ms: i64,
    /// When the last receipt arrived (the order counts as arrived then).
    pub received_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scorecard {
    pub on_time_rate_bps: i32,
    pub fill_rate_bps: i32,
    pub lead_time_variance_hours: i64,
    pub deliveries: i64,
}

/// On-time rate (arrived by the expected date), fill rate (units received of units ordered),
/// and mean absolute lead-time variance (actual against promised) in hours.
pub fn scorecard(deliveries: &[Delivery]) -> Scorecard {
    if deliveries.is_empty() {
        return Scorecard::default();
    }
    let n = deliveries.len() as i64;
    let on_time = deliveries
        .iter()
        .filter(|d| d.received_at_ms <= d.expected_at_ms)
        .count() as i64;
    // Exact sums: many orders of 10^9 units, or times far apart, add up past i64.
    let ordered: i128 = deliveries.iter().map(|d| i128::from(d.ordered)).sum();
    let received: i128 = deliveries
        .iter()
        .map(|d| i128::from(d.received.min(d.ordered)))
        .sum();
    let variance_ms: i128 = deliveries
        .iter()
        .map(|d| (i128::from(d.received_at_ms) - i128::from(d.expected_at_ms)).abs())
        .sum();
    let bps = |part: i128, whole: i128| {
        if whole == 0 {
            0
        } else {
            i32::try_from(part * 10_000 / whole).unwrap_or(i32::MAX)
        }
    };
    Scorecard {
        on_time_rate_bps: bps(i128::from(on_time), i128::from(n)),
        fill_rate_bps: bps(received, ordered),
        lead_time_variance_hours: narrow(variance_ms / i128::from(n) / 3_600_000),
        deliveries: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERMS: Terms = Terms {
        lead_time_days: 7,
        minimum_order_quantity: 50,
        pack_multiple: 12,
    };

    #[test]
    fn reorder_point_by_hand() {
        // 84 units over 28 days = 3/day. Lead 7 d + safety 3 d: reorder point 30, order up to
        // 30 + 21 = 51. Position 20: need 31, at least 50, packs of 12: 60.
        let rate = daily_rate_milli(84, 28);
        assert_eq!(rate, 3000);
        let policy = Policy {
            min_quantity: 0,
            max_quantity: 0,
            safety_stock_days: 3,
        };
        let s = suggest(&policy, &TERMS, 20, rate).unwrap();
        assert_eq!(s.quantity, 60);
        assert!(s.rationale.contains("reorder point 30"), "{}", s.rationale);
        // At 31 the position still covers the reorder point: nothing.
        assert_eq!(suggest(&policy, &TERMS, 31, rate), None);
        assert!(suggest(&policy, &TERMS, 30, rate).is_some());
    }

    #[test]
    fn min_max_by_hand() {
        let policy = Policy {
            min_quantity: 10,
            max_quantity: 100,
            safety_stock_days: 0,
        };
        // 100 - 4 = 96, already a multiple of 12 and above 50.
        assert_eq!(suggest(&policy, &TERMS, 4, 0).unwrap().quantity, 96);
        // 100 - 10 = 90 -> 96.
        assert_eq!(suggest(&policy, &TERMS, 10, 0).unwrap().quantity, 96);
        assert_eq!(suggest(&policy, &TERMS, 11, 0), None);
    }

    #[test]
    fn rounding_respects_minimum_and_pack() {
        assert_eq!(order_quantity(1, &TERMS), 60);
        assert_eq!(order_quantity(61, &TERMS), 72);
        let loose = Terms {
            lead_time_days: 1,
            minimum_order_quantity: 0,
            pack_multiple: 0,
        };
        assert_eq!(order_quantity(7, &loose), 7);
    }

    #[test]
    fn a_trickle_of_demand_still_counts() {
        assert_eq!(daily_rate_milli(1, 28), 36);
        assert_eq!(daily_rate_milli(0, 28), 0);
        assert_eq!(daily_rate_milli(5, 0), 0);
    }

    #[test]
    fn scorecard_by_hand() {
        const H: i64 = 3_600_000;
        let d = |ordered, received, expected_h, received_h| Delivery {
            ordered,
            received,
            sent_at_ms: 0,
            expected_at_ms: expected_h * H,
            received_at_ms: received_h * H,
        };
        // On time with everything; 24 h late with 90 of 100.
        let s = scorecard(&[d(100, 100, 168, 160), d(100, 90, 168, 192)]);
        assert_eq!(s.on_time_rate_bps, 5_000);
        assert_eq!(s.fill_rate_bps, 9_500);
        // |160-168| = 8, |192-168| = 24: mean 16 h.
        assert_eq!(s.lead_time_variance_hours, 16);
        assert_eq!(s.deliveries, 2);
        assert_eq!(scorecard(&[]), Scorecard::default());
    }
}
