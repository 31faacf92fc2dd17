//! Money rules shared by services that must agree to the cent, and the arithmetic every sum of
//! money or quantity goes through: no sum wraps or panics; one out of range is refused.

use crate::error::{ApiError, ApiResult};
use crate::validate::MAX_AMOUNT_MINOR;

/// The refusal of a sum or product out of range.
pub fn out_of_range(what: &str) -> ApiError {
    ApiError::precondition(
        "AMOUNT_OUT_OF_RANGE",
        format!("{what} is out of range (at most {MAX_AMOUNT_MINOR} minor units)"),
    )
}

/// `a + b`, or AMOUNT_OUT_OF_RANGE naming `what`.
pub fn add(a: i64, b: i64, what: &str) -> ApiResult<i64> {
    a.checked_add(b).ok_or_else(|| out_of_range(what))
}

/// `quantity x unit` (computed exactly), or AMOUNT_OUT_OF_RANGE when above the largest amount
/// accepted anywhere: the value of a receipt, a line, a parcel.
pub fn value_of(quantity: i64, unit: i64, what: &str) -> ApiResult<i64> {
    let v = i128::from(quantity) * i128::from(unit);
    if v.abs() > i128::from(MAX_AMOUNT_MINOR) {
        return Err(out_of_range(what));
    }
    i64::try_from(v).map_err(|_| out_of_range(what))
}

/// An exact sum of many amounts (a report's totals), or AMOUNT_OUT_OF_RANGE.
pub fn sum(amounts: impl IntoIterator<Item = i64>, what: &str) -> ApiResult<i64> {
    let total: i128 = amounts.into_iter().map(i128::from).sum();
    i64::try_from(total).map_err(|_| out_of_range(what))
}

/// The share of `amount` (spread over `of` units) that the first `units` carry: pro rata,
/// rounded down, and the whole amount once every unit is counted, so that the parts of an
/// amount taken in pieces (a line shipped in parts, a line partly cancelled) add up to it.
pub fn pro_rata(amount: i64, of: i64, units: i64) -> i64 {
    if of <= 0 || units >= of {
        amount
    } else {
        // Exact: the result is at most `amount`, so it always fits.
        let share = i128::from(amount) * i128::from(units.max(0)) / i128::from(of);
        i64::try_from(share).unwrap_or(amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_up_to_the_whole() {
        // 4.97 of tax over 3 units, shipped 1 then 2: 1.65 + 3.32.
        let first = pro_rata(497, 3, 1);
        let rest = pro_rata(497, 3, 3) - first;
        assert_eq!((first, rest), (165, 332));
        assert_eq!(first + rest, 497);
        assert_eq!(pro_rata(497, 3, 0), 0);
        assert_eq!(pro_rata(497, 3, 5), 497);
        assert_eq!(pro_rata(497, 0, 1), 497);
        // 10^11 of tax over 10^9 units, all but one: no saturation on the way.
        assert_eq!(
            pro_rata(100_000_000_000, 1_000_000_000, 999_999_999),
            99_999_999_900
        );
    }

    #[test]
    fn sums_and_products_are_refused_not_wrapped() {
        assert_eq!(
            value_of(1_000_000_000, 1_000, "v").unwrap(),
            1_000_000_000_000
        );
        assert!(value_of(1_000_000_000, 10_000_000_000, "v").is_err());
        assert!(add(i64::MAX, 1, "a").is_err());
        assert!(
            sum([i64::MAX, 1, -1], "s").is_ok(),
            "exact: intermediate overflow is fine"
        );
        assert!(sum([i64::MAX, 1], "s").is_err());
    }
}
