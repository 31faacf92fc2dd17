//! The journal: balanced postings, reversals, the trial balance.

use super::*;
use crate::error::FinanceError;

impl FinanceApi {
    pub(super) async fn post_journal(
        &self,
        caller: &Caller,
        req: PostJournalRequest,
    ) -> ApiResult<PostJournalResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("memo", &req.memo, 500);
        v.source("source", req.source.as_ref());
        for (i, l) in req.lines.iter().enumerate() {
            v.code(&format!("lines[{i}].account_code"), &l.account_code);
            v.currency(&format!("lines[{i}].currency"), &l.currency);
            // Bounded amounts: a balanced entry of i64::MAX would overflow every sum after it.
            v.non_negative(&format!("lines[{i}].debit_minor"), l.debit_minor);
            v.non_negative(&format!("lines[{i}].credit_minor"), l.credit_minor);
            v.optional_text(&format!("lines[{i}].memo"), &l.memo, 500);
            v.optional_text(&format!("lines[{i}].channel"), &l.channel, 64);
            v.optional_text(&format!("lines[{i}].order_id"), &l.order_id, 100);
        }
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "finance.PostJournal", req);
        let id = insert_entry(&txn, &req.memo, req.source.as_ref(), &req.lines, "").await?;
        outbox::enqueue(
            &txn,
            "finance.journal_posted",
            &id,
            &serde_json::json!({ "entry_id": id }),
        )
        .await?;
        let entry = load_entry(&txn, &id).await?;
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("journal_entry:{id}"),
                reason: &req.memo,
                before: None,
                after: Some(entry_state(&entry)),
            },
        )
        .await?;
        let response = PostJournalResponse { entry: Some(entry) };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    pub(super) async fn reverse_journal(
        &self,
        caller: &Caller,
        req: ReverseJournalRequest,
    ) -> ApiResult<ReverseJournalResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("entry_id", &req.entry_id);
        v.check(
            req.actor
                .as_ref()
                .is_some_and(|a| !a.id.is_empty() && !a.reason.is_empty()),
            "actor",
            "a reversal needs an actor id and a reason",
        );
        v.actor("actor", req.actor.as_ref());
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "finance.ReverseJournal", req);
        // The original's row lock makes two reversals of one entry queue: the second sees the
        // first and is refused.
        store::lock_entry(&txn, &req.entry_id).await?;
        let original = load_entry(&txn, &req.entry_id).await?;
        if store::reversal_of(&txn, &req.entry_id).await?.is_some() {
            return Err(FinanceError::AlreadyReversed(req.entry_id.clone()).into());
        }
        let lines: Vec<JournalLine> = original
            .lines
            .iter()
            .map(|l| JournalLine {
                debit_minor: l.credit_minor,
                credit_minor: l.debit_minor,
                ..l.clone()
            })
            .collect();
        let reason = req
            .actor
            .as_ref()
            .map(|a| a.reason.clone())
            .unwrap_or_default();
        let id = insert_entry(
            &txn,
            &format!("reversal: {reason}"),
            original.source.as_ref(),
            &lines,
            &req.entry_id,
        )
        .await?;
        let entry = load_entry(&txn, &id).await?;
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("journal_entry:{}", req.entry_id),
                reason: &reason,
                before: Some(entry_state(&original)),
                after: Some(entry_state(&entry)),
            },
        )
        .await?;
        let response = ReverseJournalResponse { entry: Some(entry) };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    pub(super) async fn trial_balance(&self) -> ApiResult<GetTrialBalanceResponse> {
        let lines = store::all_lines(&self.db).await?;
        // Exact sums (i128), refused if a total does not fit the wire's i64.
        let mut wide: std::collections::BTreeMap<(String, String), (i128, i128)> =
            Default::default();
        let mut wide_totals: std::collections::BTreeMap<String, (i128, i128)> = Default::default();
        for l in lines {
            let r = wide
                .entry((l.account_code, l.currency.clone()))
                .or_default();
            r.0 += i128::from(l.debit_minor);
            r.1 += i128::from(l.credit_minor);
            let t = wide_totals.entry(l.currency).or_default();
            t.0 += i128::from(l.debit_minor);
            t.1 += i128::from(l.credit_minor);
        }
        let narrow = |(d, c): (i128, i128)| -> ApiResult<(i64, i64)> {
            let f = |v: i128| {
                i64::try_from(v)
                    .map_err(|_| erp_runtime::money::out_of_range("a trial balance total"))
            };
            Ok((f(d)?, f(c)?))
        };
        let mut rows = std::collections::BTreeMap::new();
        for (k, v) in wide {
            rows.insert(k, narrow(v)?);
        }
        let mut totals = std::collections::BTreeMap::new();
        for (k, v) in wide_totals {
            totals.insert(k, narrow(v)?);
        }
        let balanced = totals.values().all(|(d, c)| d == c);
        Ok(GetTrialBalanceResponse {
            rows: rows
                .into_iter()
                .map(|((account_code, currency), (d, c))| TrialBalanceRow {
                    account_code,
                    currency,
                    debit_minor: d,
                    credit_minor: c,
                    balance_minor: d - c,
                })
                .collect(),
            totals: totals
                .into_iter()
                .map(|(currency, (d, c))| CurrencyTotal {
                    currency,
                    debit_minor: d,
                    credit_minor: c,
                })
                .collect(),
            balanced,
        })
    }
}
