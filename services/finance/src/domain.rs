//! Journal and payment rules, free of I/O.

use std::collections::BTreeMap;

/// One side of a journal line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub account: String,
    pub debit: i64,
    pub credit: i64,
    pub currency: String,
}

/// Why a set of lines is not a valid journal entry.
pub fn check_balanced(lines: &[Line]) -> Result<(), String> {
    if lines.len() < 2 {
        return Err("an entry needs at least two lines".into());
    }
    let mut per_currency: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if l.debit < 0 || l.credit < 0 || (l.debit > 0) == (l.credit > 0) {
            return Err(format!(
                "lines[{i}]: exactly one of debit and credit must be positive"
            ));
        }
        let e = per_currency.entry(&l.currency).or_default();
        e.0 = e.0.checked_add(l.debit).ok_or("debits overflow")?;
        e.1 = e.1.checked_add(l.credit).ok_or("credits overflow")?;
    }
    for (currency, (d, c)) in per_currency {
        if d != c {
            return Err(format!("{currency}: debits {d} != credits {c}"));
        }
    }
    Ok(())
}

/// The reversal of an entry: every debit becomes a credit and back.
pub fn reverse(lines: &[Line]) -> Vec<Line> {
    lines
        .iter()
        .map(|l| Line {
            account: l.account.clone(),
            debit: l.credit,
            credit: l.debit,
            currency: l.currency.clone(),
        })
        .collect()
}

/// What the payment provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderAnswer {
    Approved { reference: String },
    Declined { reason: String },
}

/// The built-in fake provider's authorization rules, as a real one would apply them: tokens
/// starting `tok_decline` are declined, amounts above the card limit are declined.
pub fn fake_authorize(token: &str, amount_minor: i64, idempotency_key: &str) -> ProviderAnswer {
    const CARD_LIMIT_MINOR: i64 = 50_000_000; // 500,000.00
    if token.starts_with("tok_decline") {
        ProviderAnswer::Declined {
            reason: "card_declined".into(),
        }
    } else if amount_minor > CARD_LIMIT_MINOR {
        ProviderAnswer::Declined {
            reason: "over_limit".into(),
        }
    } else {
        // Deterministic per request, like a provider that deduplicates on the idempotency key.
        let digest = idempotency_key
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        ProviderAnswer::Approved {
            reference: format!("fakepay_{digest:016x}"),
        }
    }
}

/// Tax on an amount at a rate in basis points, rounded half up to the minor unit (per line, as
/// invoices show it).
pub fn tax_minor(amount_minor: i64, rate_bps: i32) -> i64 {
    let t = i128::from(amount_minor) * i128::from(rate_bps);
    let rounded = if t >= 0 {
        (t + 5_000) / 10_000
    } else {
        (t - 5_000) / 10_000
    };
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

/// The jurisdictions a rate is looked up in, most specific first: `US-NJ`, then `US`.
pub fn jurisdictions(jurisdiction: &str) -> Vec<String> {
    let mut out = vec![jurisdiction.to_owned()];
    if let Some((country, _)) = jurisdiction.split_once('-') {
        out.push(country.to_owned());
    }
    out
}

/// `CC` or `CC-R`: an ISO country code, optionally with a region code of 1 to 3 letters or
/// digits.
pub fn valid_jurisdiction(j: &str) -> bool {
    let (country, region) = match j.split_once('-') {
        Some((c, r)) => (c, Some(r)),
        None => (j, None),
    };
    country.len() == 2
        && country.chars().all(|c| c.is_ascii_uppercase())
        && region.is_none_or(|r| {
            (1..=3).contains(&r.len())
                && r.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tax_rounds_half_up_per_line() {
        // 25.98 at 6.63% = 1.722474 -> 1.72; 0.75 at 10% = 0.075 -> 0.08.
        assert_eq!(tax_minor(2598, 663), 172);
        assert_eq!(tax_minor(75, 1000), 8);
        assert_eq!(tax_minor(0, 700), 0);
        assert_eq!(tax_minor(-75, 1000), -8, "a refund line mirrors its sale");
    }

    #[test]
    fn jurisdictions_fall_back_to_the_country() {
        assert_eq!(jurisdictions("US-NJ"), ["US-NJ", "US"]);
        assert_eq!(jurisdictions("DE"), ["DE"]);
        assert!(
            valid_jurisdiction("US-NJ") && valid_jurisdiction("DE") && valid_jurisdiction("GB-ENG")
        );
        assert!(
            !valid_jurisdiction("us") && !valid_jurisdiction("USA") && !valid_jurisdiction("US-")
        );
    }

    fn l(a: &str, d: i64, c: i64, cur: &str) -> Line {
        Line {
            account: a.into(),
            debit: d,
            credit: c,
            currency: cur.into(),
        }
    }

    #[test]
    fn balance_is_per_currency() {
        assert!(check_balanced(&[l("1100", 100, 0, "USD"), l("4000", 0, 100, "USD")]).is_ok());
        let err =
            check_balanced(&[l("1100", 100, 0, "USD"), l("4000", 0, 100, "EUR")]).unwrap_err();
        assert!(err.contains("EUR: debits 0 != credits 100"), "{err}");
        assert!(check_balanced(&[l("1100", 100, 100, "USD"), l("4000", 0, 0, "USD")]).is_err());
        assert!(check_balanced(&[l("1100", 0, 0, "USD")]).is_err());
    }

    #[test]
    fn reversal_balances_and_cancels() {
        let entry = vec![
            l("1100", 250, 0, "USD"),
            l("4000", 0, 200, "USD"),
            l("2200", 0, 50, "USD"),
        ];
        let rev = reverse(&entry);
        assert!(check_balanced(&rev).is_ok());
        for (a, b) in entry.iter().zip(&rev) {
            assert_eq!(a.debit - a.credit, -(b.debit - b.credit));
        }
    }

    #[test]
    fn fake_provider_declines_by_rule_and_is_deterministic() {
        assert!(matches!(
            fake_authorize("tok_decline_insufficient", 100, "k"),
            ProviderAnswer::Declined { .. }
        ));
        assert!(matches!(
            fake_authorize("tok_visa", 60_000_000, "k"),
            ProviderAnswer::Declined { .. }
        ));
        assert_eq!(
            fake_authorize("tok_visa", 100, "k"),
            fake_authorize("tok_visa", 100, "k")
        );
    }
}
