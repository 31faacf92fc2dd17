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

#[cfg(test)]
mod tests {
    use super::*;

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
