//! Money rules shared by services that must agree to the cent.

/// The share of `amount` (spread over `of` units) that the first `units` carry: pro rata,
/// rounded down, and the whole amount once every unit is counted, so that the parts of an
/// amount taken in pieces (a line shipped in parts, a line partly cancelled) add up to it.
pub fn pro_rata(amount: i64, of: i64, units: i64) -> i64 {
    if of <= 0 || units >= of {
        amount
    } else {
        amount.saturating_mul(units.max(0)) / of
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
    }
}
