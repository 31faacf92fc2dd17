//! Tables of the finance service, and the queries its handlers run. The chart of accounts is
//! seeded by the first migration.

use erp_runtime::db::DdlMigration;
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sea_orm_migration::prelude::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            erp_runtime::db::runtime_tables(),
            Box::new(DdlMigration {
                name: "m20261128_000001_finance",
                up: r"
CREATE TABLE accounts (
    code TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    account_type TEXT NOT NULL
);
INSERT INTO accounts (code, name, account_type) VALUES
    ('1000', 'Cash', 'asset'),
    ('1100', 'Accounts receivable', 'asset'),
    ('1200', 'Payment provider clearing', 'asset'),
    ('1300', 'Inventory', 'asset'),
    ('2100', 'Accounts payable', 'liability'),
    ('2200', 'Sales tax payable', 'liability'),
    ('2300', 'Customer refunds payable', 'liability'),
    ('3000', 'Owner equity', 'equity'),
    ('4000', 'Sales revenue', 'revenue'),
    ('4100', 'Shipping revenue', 'revenue'),
    ('5000', 'Cost of goods sold', 'expense'),
    ('5100', 'Marketplace fees', 'expense'),
    ('5200', 'Shipping expense', 'expense'),
    ('5300', 'Chargeback losses', 'expense'),
    ('5400', 'Inventory adjustments', 'expense');
CREATE TABLE journal_entries (
    entry_id TEXT PRIMARY KEY,
    memo TEXT NOT NULL,
    source_kind TEXT NOT NULL,
    source_id TEXT NOT NULL,
    reverses_entry_id TEXT NOT NULL,
    posted_at_ms BIGINT NOT NULL
);
CREATE TABLE journal_lines (
    seq {SERIAL},
    entry_id TEXT NOT NULL REFERENCES journal_entries (entry_id),
    account_code TEXT NOT NULL REFERENCES accounts (code),
    debit_minor BIGINT NOT NULL CHECK (debit_minor >= 0),
    credit_minor BIGINT NOT NULL CHECK (credit_minor >= 0),
    currency TEXT NOT NULL,
    channel TEXT NOT NULL,
    order_id TEXT NOT NULL,
    memo TEXT NOT NULL
);
CREATE INDEX journal_lines_entry ON journal_lines (entry_id);
CREATE INDEX journal_lines_order ON journal_lines (order_id);
CREATE TABLE payments (
    payment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    currency TEXT NOT NULL,
    authorized_minor BIGINT NOT NULL,
    captured_minor BIGINT NOT NULL,
    refunded_minor BIGINT NOT NULL,
    status TEXT NOT NULL,
    provider_reference TEXT NOT NULL,
    decline_reason TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    CHECK (captured_minor <= authorized_minor),
    CHECK (refunded_minor <= captured_minor)
);
CREATE INDEX payments_order ON payments (order_id)",
                drops: &["payments", "journal_lines", "journal_entries", "accounts"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000002_refunds_chargebacks",
                up: r"
INSERT INTO accounts (code, name, account_type) VALUES
    ('4200', 'Sales refunds', 'revenue');
ALTER TABLE payments ADD COLUMN charged_back_minor BIGINT NOT NULL DEFAULT 0;
CREATE INDEX journal_lines_channel ON journal_lines (channel);
CREATE TABLE tax_rates (
    jurisdiction TEXT NOT NULL,
    tax_class TEXT NOT NULL,
    rate_bps INTEGER NOT NULL CHECK (rate_bps >= 0 AND rate_bps <= 10000),
    PRIMARY KEY (jurisdiction, tax_class)
)",
                drops: &["tax_rates"],
            }),
            Box::new(DdlMigration {
                name: "m20261128_000003_authorization_expiry",
                up: "ALTER TABLE payments ADD COLUMN expires_at_ms BIGINT NOT NULL DEFAULT 0",
                drops: &[],
            }),
            // Money can neither go negative nor be refunded and charged back beyond what was
            // captured, whatever a handler gets wrong (concurrent refunds once paid out 3.6 times
            // the capture).
            Box::new(erp_runtime::db::CheckConstraint {
                migration: "m20261129_000004_payment_amounts",
                table: "payments",
                constraint: "payments_amounts_in_range",
                condition: "NEW.authorized_minor >= 0 AND NEW.captured_minor >= 0 \
                    AND NEW.refunded_minor >= 0 AND NEW.charged_back_minor >= 0 \
                    AND NEW.captured_minor <= NEW.authorized_minor \
                    AND NEW.refunded_minor + NEW.charged_back_minor <= NEW.captured_minor",
            }),
            erp_runtime::audit::migration(),
            Box::new(DdlMigration {
                name: "m20261130_000001_refund_approvals",
                up: r"
CREATE TABLE refund_approvals (
    approval_id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL REFERENCES payments (payment_id),
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    decision_reason TEXT NOT NULL,
    requested_at_ms BIGINT NOT NULL,
    decided_at_ms BIGINT
);
CREATE INDEX refund_approvals_status ON refund_approvals (status, requested_at_ms)",
                drops: &["refund_approvals"],
            }),
            Box::new(DdlMigration {
                name: "m20261130_000002_one_payout_per_settlement",
                // A settlement's payout is posted once, whatever idempotency key the report
                // carries: a second writer's insert fails here and its retry finds the first.
                up: "CREATE UNIQUE INDEX journal_entries_payout ON journal_entries (source_kind, source_id) \
                     WHERE source_kind = 'settlement_payout'",
                drops: &[],
            }),
            erp_runtime::db::events_tables(),
            Box::new(DdlMigration {
                // Reversals, settlements and journal pages by index, not by reading every entry.
                name: "m20261207_000001_lookup_indexes",
                up: "CREATE INDEX journal_entries_reverses ON journal_entries (reverses_entry_id);
                     CREATE INDEX journal_entries_posted ON journal_entries (posted_at_ms, entry_id);
                     CREATE INDEX payments_channel ON payments (channel, currency)",
                drops: &[],
            }),
            erp_runtime::db::events_tables_v2(),
        ]
    }
}

use erp_runtime::entity;

entity!(account, "accounts", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub code: String,
    pub name: String,
    pub account_type: String,
});

entity!(entry, "journal_entries", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub entry_id: String,
    pub memo: String,
    pub source_kind: String,
    pub source_id: String,
    pub reverses_entry_id: String,
    pub posted_at_ms: i64,
});

entity!(jline, "journal_lines", {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub entry_id: String,
    pub account_code: String,
    pub debit_minor: i64,
    pub credit_minor: i64,
    pub currency: String,
    pub channel: String,
    pub order_id: String,
    pub memo: String,
});

entity!(payment, "payments", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub payment_id: String,
    pub order_id: String,
    pub channel: String,
    pub currency: String,
    pub authorized_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub charged_back_minor: i64,
    pub status: String,
    pub provider_reference: String,
    pub decline_reason: String,
    pub created_at_ms: i64,
    /// When the provider stops honouring the authorization (0: never recorded).
    pub expires_at_ms: i64,
});

entity!(tax_rate, "tax_rates", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub jurisdiction: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub tax_class: String,
    pub rate_bps: i32,
});

entity!(refund_approval, "refund_approvals", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub approval_id: String,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub requested_by: String,
    /// pending, approved, rejected
    pub status: String,
    pub decided_by: String,
    pub decision_reason: String,
    pub requested_at_ms: i64,
    pub decided_at_ms: Option<i64>,
});

// ---- Queries the handlers share. Every read a check of a change depends on takes the row lock
// (FOR UPDATE on PostgreSQL; SQLite serializes writers).

/// The chart of accounts, by code.
pub async fn accounts<C: ConnectionTrait>(c: &C) -> ApiResult<Vec<account::Model>> {
    Ok(account::Entity::find()
        .order_by_asc(account::Column::Code)
        .all(c)
        .await?)
}

/// The account `code`, if the chart has it.
pub async fn account<C: ConnectionTrait>(c: &C, code: &str) -> ApiResult<Option<account::Model>> {
    Ok(account::Entity::find_by_id(code.to_owned()).one(c).await?)
}

/// The entries named by `ids` (in no particular order) and all their lines in posting order:
/// two queries whatever the number of ids.
pub async fn entries_with_lines<C: ConnectionTrait>(
    c: &C,
    ids: &[String],
) -> ApiResult<(Vec<entry::Model>, Vec<jline::Model>)> {
    let entries = entry::Entity::find()
        .filter(entry::Column::EntryId.is_in(ids.iter().cloned()))
        .all(c)
        .await?;
    let lines = jline::Entity::find()
        .filter(jline::Column::EntryId.is_in(ids.iter().cloned()))
        .order_by_asc(jline::Column::Seq)
        .all(c)
        .await?;
    Ok((entries, lines))
}

/// One page of the journal's entry ids, in posting order.
pub async fn entry_ids_page<C: ConnectionTrait>(
    c: &C,
    offset: u64,
    limit: u64,
) -> ApiResult<Vec<String>> {
    Ok(entry::Entity::find()
        .order_by_asc(entry::Column::PostedAtMs)
        .offset(offset)
        .limit(limit)
        .all(c)
        .await?
        .into_iter()
        .map(|e| e.entry_id)
        .collect())
}

/// The entries with a line on `order_id`, each once, in the order of its first line.
pub async fn entry_ids_of_order<C: ConnectionTrait>(
    c: &C,
    order_id: &str,
) -> ApiResult<Vec<String>> {
    // Lines of entries posted at the same moment interleave by sequence on PostgreSQL, so
    // removing only adjacent repeats listed an entry once per run of its lines.
    let mut seen = std::collections::HashSet::new();
    Ok(jline::Entity::find()
        .filter(jline::Column::OrderId.eq(order_id))
        .order_by_asc(jline::Column::Seq)
        .all(c)
        .await?
        .into_iter()
        .map(|l| l.entry_id)
        .filter(|id| seen.insert(id.clone()))
        .collect())
}

/// Takes the row lock of journal entry `id` for the transaction (nothing when there is none).
pub async fn lock_entry<C: ConnectionTrait>(c: &C, id: &str) -> ApiResult<()> {
    entry::Entity::find_by_id(id.to_owned())
        .lock_exclusive()
        .one(c)
        .await?;
    Ok(())
}

/// The entry that reverses entry `id`, if one was posted.
pub async fn reversal_of<C: ConnectionTrait>(c: &C, id: &str) -> ApiResult<Option<entry::Model>> {
    Ok(entry::Entity::find()
        .filter(entry::Column::ReversesEntryId.eq(id))
        .one(c)
        .await?)
}

/// Every journal line ever posted.
pub async fn all_lines<C: ConnectionTrait>(c: &C) -> ApiResult<Vec<jline::Model>> {
    Ok(jline::Entity::find().all(c).await?)
}

/// The journal entries posted in `[from, to)`.
pub async fn entries_between<C: ConnectionTrait>(
    c: &C,
    from: i64,
    to: i64,
) -> ApiResult<Vec<entry::Model>> {
    Ok(entry::Entity::find()
        .filter(entry::Column::PostedAtMs.gte(from))
        .filter(entry::Column::PostedAtMs.lt(to))
        .all(c)
        .await?)
}

/// The journal lines in `currency`, of every entry.
pub async fn lines_in_currency<C: ConnectionTrait>(
    c: &C,
    currency: &str,
) -> ApiResult<Vec<jline::Model>> {
    Ok(jline::Entity::find()
        .filter(jline::Column::Currency.eq(currency))
        .all(c)
        .await?)
}

/// The fee (5100), refund (4200) and chargeback (5300) lines of `channel` in `currency`: what
/// a settlement's fees and adjustments are matched against.
pub async fn fee_and_return_lines<C: ConnectionTrait>(
    c: &C,
    channel: &str,
    currency: &str,
) -> ApiResult<Vec<jline::Model>> {
    Ok(jline::Entity::find()
        .filter(jline::Column::Channel.eq(channel))
        .filter(jline::Column::AccountCode.is_in(["5100", "4200", "5300"]))
        .filter(jline::Column::Currency.eq(currency))
        .all(c)
        .await?)
}

/// The payment `payment_id` or, when that is empty, the latest not-declined payment of
/// `order_id`, locked until the transaction ends.
pub async fn payment_for_update<C: ConnectionTrait>(
    c: &C,
    payment_id: &str,
    order_id: &str,
) -> ApiResult<payment::Model> {
    let query = if payment_id.is_empty() {
        payment::Entity::find()
            .filter(payment::Column::OrderId.eq(order_id))
            .filter(payment::Column::Status.ne("declined"))
            .order_by_desc(payment::Column::CreatedAtMs)
    } else {
        payment::Entity::find().filter(payment::Column::PaymentId.eq(payment_id))
    };
    // Every change of a payment reads it here inside its transaction: the row lock
    // (FOR UPDATE on PostgreSQL; SQLite serializes writers) makes the checks that follow
    // (left to capture, left to refund) hold until the commit, so concurrent refunds cannot
    // each pass them and pay out the same money twice.
    query
        .lock_exclusive()
        .one(c)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("payment {payment_id}{order_id}")))
}

/// The payments of `channel` in `currency` that captured money: what a settlement pays for.
pub async fn captured_payments<C: ConnectionTrait>(
    c: &C,
    channel: &str,
    currency: &str,
) -> ApiResult<Vec<payment::Model>> {
    Ok(payment::Entity::find()
        .filter(payment::Column::Channel.eq(channel))
        .filter(payment::Column::Currency.eq(currency))
        .filter(payment::Column::CapturedMinor.gt(0))
        .all(c)
        .await?)
}

/// The refund approval `id`, locked until the transaction ends (two approvers racing: the
/// second sees the first's decision).
pub async fn approval_for_update<C: ConnectionTrait>(
    c: &C,
    id: &str,
) -> ApiResult<refund_approval::Model> {
    refund_approval::Entity::find_by_id(id.to_owned())
        .lock_exclusive()
        .one(c)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("refund approval {id}")))
}

/// One page of refund approvals, oldest request first, only those in `status` if given.
pub async fn approvals_page<C: ConnectionTrait>(
    c: &C,
    status: Option<&str>,
    offset: u64,
    limit: u64,
) -> ApiResult<Vec<refund_approval::Model>> {
    let mut q = refund_approval::Entity::find()
        .order_by_asc(refund_approval::Column::RequestedAtMs)
        .order_by_asc(refund_approval::Column::ApprovalId);
    if let Some(s) = status {
        q = q.filter(refund_approval::Column::Status.eq(s));
    }
    Ok(q.offset(offset).limit(limit).all(c).await?)
}

/// Whether the payout of settlement `source_id` (channel:settlement) was posted already.
pub async fn payout_posted<C: ConnectionTrait>(c: &C, source_id: &str) -> ApiResult<bool> {
    Ok(entry::Entity::find()
        .filter(entry::Column::SourceKind.eq(PAYOUT_KIND))
        .filter(entry::Column::SourceId.eq(source_id))
        .one(c)
        .await?
        .is_some())
}

/// The source-document kind of a settlement's payout entry.
pub const PAYOUT_KIND: &str = "settlement_payout";
