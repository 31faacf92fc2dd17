//! gRPC handlers of the finance service.

use erp_proto::common::{Money, SourceDocument};
use erp_proto::finance::finance_service_server::FinanceService;
use erp_proto::finance::*;
use erp_runtime::audit;
use erp_runtime::auth::Caller;
use erp_runtime::error::respond;
use erp_runtime::idempotency::{self, Begun};
use erp_runtime::outbox::{self, OutboxWaker};
use erp_runtime::time::{now_ms, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use tonic::{Request, Response, Status};

use crate::domain::{self, ProviderAnswer};
use crate::store::{account, entry, jline, payment};

type Orders =
    erp_proto::order::order_service_client::OrderServiceClient<erp_runtime::auth::PeerChannel>;

pub struct FinanceApi {
    pub(crate) db: DatabaseConnection,
    outbox: OutboxWaker,
    /// Resolves marketplace order ids in settlement reports.
    pub(crate) orders: Orders,
    /// Authorizations the fake provider has let time out once (`tok_timeout*` tokens).
    timed_out: std::sync::Mutex<std::collections::HashSet<String>>,
    /// How long an authorization is honoured.
    authorization_ttl_ms: i64,
    /// Refunds above this wait for a second person's approval.
    pub(crate) refund_approval_threshold_minor: i64,
}

impl FinanceApi {
    pub fn new(
        db: DatabaseConnection,
        outbox: OutboxWaker,
        orders: Orders,
        settings: &erp_runtime::config::FinanceSettings,
    ) -> Self {
        Self {
            db,
            outbox,
            orders,
            timed_out: Default::default(),
            authorization_ttl_ms: i64::try_from(settings.authorization_ttl_ms)
                .unwrap_or(i64::MAX / 4),
            refund_approval_threshold_minor: settings.refund_approval_threshold_minor,
        }
    }

    /// The fake provider's slow days: a `tok_timeout*` card gets no answer on the first attempt
    /// of each request (nothing is recorded); the retry with the same key goes through.
    fn provider_timeout(&self, token: &str, key: &str) -> ApiResult<()> {
        if !token.starts_with("tok_timeout") {
            return Ok(());
        }
        let first = self
            .timed_out
            .lock()
            .map(|mut seen| seen.insert(key.to_owned()))
            .unwrap_or(false);
        if first {
            return Err(ApiError::Unavailable(
                "payment provider did not answer in time (simulated); retry with the same key"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn type_name(t: AccountType) -> Option<&'static str> {
    Some(match t {
        AccountType::Asset => "asset",
        AccountType::Liability => "liability",
        AccountType::Equity => "equity",
        AccountType::Revenue => "revenue",
        AccountType::Expense => "expense",
        AccountType::Unspecified => return None,
    })
}

fn account_to_wire(m: account::Model) -> Account {
    let t = match m.account_type.as_str() {
        "asset" => AccountType::Asset,
        "liability" => AccountType::Liability,
        "equity" => AccountType::Equity,
        "revenue" => AccountType::Revenue,
        "expense" => AccountType::Expense,
        _ => AccountType::Unspecified,
    };
    Account {
        code: m.code,
        name: m.name,
        r#type: t as i32,
    }
}

pub(crate) fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: currency.to_owned(),
    })
}

pub(crate) fn payment_to_wire(m: payment::Model) -> Payment {
    let status = match m.status.as_str() {
        "authorized" => PaymentStatus::Authorized,
        "captured" => PaymentStatus::Captured,
        "partially_captured" => PaymentStatus::PartiallyCaptured,
        "partially_refunded" => PaymentStatus::PartiallyRefunded,
        "refunded" => PaymentStatus::Refunded,
        "voided" => PaymentStatus::Voided,
        "declined" => PaymentStatus::Declined,
        "charged_back" => PaymentStatus::ChargedBack,
        _ => PaymentStatus::Unspecified,
    };
    Payment {
        payment_id: m.payment_id,
        order_id: m.order_id,
        channel: m.channel,
        authorized: money(m.authorized_minor, &m.currency),
        captured: money(m.captured_minor, &m.currency),
        refunded: money(m.refunded_minor, &m.currency),
        status: status as i32,
        provider_reference: m.provider_reference,
        decline_reason: m.decline_reason,
        created_at: Some(to_timestamp(m.created_at_ms)),
        expires_at: (m.expires_at_ms > 0).then(|| to_timestamp(m.expires_at_ms)),
    }
}

async fn load_entry<C: ConnectionTrait>(c: &C, id: &str) -> ApiResult<JournalEntry> {
    let e = entry::Entity::find_by_id(id.to_owned())
        .one(c)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("journal entry {id}")))?;
    let lines = jline::Entity::find()
        .filter(jline::Column::EntryId.eq(id))
        .order_by_asc(jline::Column::Seq)
        .all(c)
        .await?;
    Ok(JournalEntry {
        entry_id: e.entry_id,
        memo: e.memo,
        source: Some(SourceDocument {
            kind: e.source_kind,
            id: e.source_id,
        }),
        lines: lines
            .into_iter()
            .map(|l| JournalLine {
                account_code: l.account_code,
                debit_minor: l.debit_minor,
                credit_minor: l.credit_minor,
                currency: l.currency,
                channel: l.channel,
                order_id: l.order_id,
                memo: l.memo,
            })
            .collect(),
        posted_at: Some(to_timestamp(e.posted_at_ms)),
        reverses_entry_id: e.reverses_entry_id,
    })
}

/// Writes a balanced entry (checked again here: nothing unbalanced ever reaches the table).
/// Money leaving the provider clearing account for one payment's order and channel: debits
/// `account` (refunds, chargeback losses), credits clearing.
pub(crate) async fn post_against_clearing<C: ConnectionTrait>(
    c: &C,
    p: &payment::Model,
    account: &str,
    amount_minor: i64,
    kind: &str,
    key: &str,
    reason: &str,
) -> ApiResult<String> {
    let line = |account: &str, debit: i64, credit: i64| JournalLine {
        account_code: account.into(),
        debit_minor: debit,
        credit_minor: credit,
        currency: p.currency.clone(),
        channel: p.channel.clone(),
        order_id: p.order_id.clone(),
        memo: format!("{kind}: {reason}"),
    };
    insert_entry(
        c,
        &format!("{kind} on order {}", p.order_id),
        Some(&SourceDocument {
            kind: kind.into(),
            id: key.to_owned(),
        }),
        &[
            line(account, amount_minor, 0),
            line("1200", 0, amount_minor),
        ],
        "",
    )
    .await
}

pub(crate) async fn insert_entry<C: ConnectionTrait>(
    c: &C,
    memo: &str,
    source: Option<&SourceDocument>,
    lines: &[JournalLine],
    reverses: &str,
) -> ApiResult<String> {
    let domain_lines: Vec<domain::Line> = lines
        .iter()
        .map(|l| domain::Line {
            account: l.account_code.clone(),
            debit: l.debit_minor,
            credit: l.credit_minor,
            currency: l.currency.clone(),
        })
        .collect();
    domain::check_balanced(&domain_lines).map_err(|e| ApiError::invalid("lines", e))?;
    for (i, l) in lines.iter().enumerate() {
        if account::Entity::find_by_id(l.account_code.clone())
            .one(c)
            .await?
            .is_none()
        {
            return Err(ApiError::invalid(
                format!("lines[{i}].account_code"),
                format!("unknown account {}", l.account_code),
            ));
        }
    }
    let entry_id = uuid::Uuid::now_v7().to_string();
    entry::ActiveModel {
        entry_id: Set(entry_id.clone()),
        memo: Set(memo.to_owned()),
        source_kind: Set(source.map(|s| s.kind.clone()).unwrap_or_default()),
        source_id: Set(source.map(|s| s.id.clone()).unwrap_or_default()),
        reverses_entry_id: Set(reverses.to_owned()),
        posted_at_ms: Set(now_ms()),
    }
    .insert(c)
    .await?;
    for l in lines {
        jline::ActiveModel {
            entry_id: Set(entry_id.clone()),
            account_code: Set(l.account_code.clone()),
            debit_minor: Set(l.debit_minor),
            credit_minor: Set(l.credit_minor),
            currency: Set(l.currency.clone()),
            channel: Set(l.channel.clone()),
            order_id: Set(l.order_id.clone()),
            memo: Set(l.memo.clone()),
            ..Default::default()
        }
        .insert(c)
        .await?;
    }
    Ok(entry_id)
}

impl FinanceApi {
    async fn post_journal(
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

    async fn reverse_journal(
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
        entry::Entity::find_by_id(req.entry_id.clone())
            .lock_exclusive()
            .one(&txn)
            .await?;
        let original = load_entry(&txn, &req.entry_id).await?;
        if entry::Entity::find()
            .filter(entry::Column::ReversesEntryId.eq(&req.entry_id))
            .one(&txn)
            .await?
            .is_some()
        {
            return Err(ApiError::precondition(
                "ALREADY_REVERSED",
                format!("entry {} was already reversed", req.entry_id),
            ));
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

    async fn trial_balance(&self) -> ApiResult<GetTrialBalanceResponse> {
        let lines = jline::Entity::find().all(&self.db).await?;
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

    async fn authorize(&self, req: AuthorizePaymentRequest) -> ApiResult<AuthorizePaymentResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.code("channel", &req.channel);
        let amount = req.amount.clone().unwrap_or_default();
        v.positive("amount.amount_minor", amount.amount_minor);
        v.currency("amount.currency", &amount.currency);
        v.text("payment_method_token", &req.payment_method_token, 200);
        v.finish()?;
        let (txn, guard) = match idempotency::begin::<_, AuthorizePaymentResponse>(
            &self.db,
            "finance.AuthorizePayment",
            &req.idempotency_key,
            &req,
        )
        .await?
        {
            // A repeat of a declined authorization is the same decline.
            Begun::Replay(previous) => {
                return match previous.payment {
                    Some(p) if p.status == PaymentStatus::Declined as i32 => {
                        Err(declined(&req.order_id, p.decline_reason))
                    }
                    _ => Ok(previous),
                };
            }
            Begun::New(txn, guard) => (txn, guard),
        };
        self.provider_timeout(&req.payment_method_token, &req.idempotency_key)?;
        let answer = domain::fake_authorize(
            &req.payment_method_token,
            amount.amount_minor,
            &req.idempotency_key,
        );
        let (status, reference, reason) = match &answer {
            ProviderAnswer::Approved { reference } => {
                ("authorized", reference.clone(), String::new())
            }
            ProviderAnswer::Declined { reason } => ("declined", String::new(), reason.clone()),
        };
        let authorized_at = now_ms();
        let model = payment::ActiveModel {
            payment_id: Set(uuid::Uuid::now_v7().to_string()),
            order_id: Set(req.order_id.clone()),
            channel: Set(req.channel.clone()),
            currency: Set(amount.currency.clone()),
            authorized_minor: Set(if status == "authorized" {
                amount.amount_minor
            } else {
                0
            }),
            captured_minor: Set(0),
            refunded_minor: Set(0),
            charged_back_minor: Set(0),
            status: Set(status.to_owned()),
            provider_reference: Set(reference),
            decline_reason: Set(reason.clone()),
            created_at_ms: Set(authorized_at),
            expires_at_ms: Set(authorized_at.saturating_add(self.authorization_ttl_ms)),
        }
        .insert(&txn)
        .await?;
        let response = AuthorizePaymentResponse {
            payment: Some(payment_to_wire(model)),
        };
        // A decline is an answer too: the same key gets the same decline.
        guard.commit(txn, &response).await?;
        if let ProviderAnswer::Declined { reason } = answer {
            return Err(declined(&req.order_id, reason));
        }
        Ok(response)
    }

    pub(crate) async fn find_payment<C: ConnectionTrait>(
        &self,
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

    async fn capture(&self, req: CapturePaymentRequest) -> ApiResult<CapturePaymentResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("payment_id", &req.payment_id);
        if let Some(a) = &req.amount {
            v.positive("amount.amount_minor", a.amount_minor);
        }
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "finance.CapturePayment", req);
        let p = self.find_payment(&txn, &req.payment_id, "").await?;
        if !matches!(p.status.as_str(), "authorized" | "partially_captured") {
            return Err(ApiError::precondition(
                "PAYMENT_NOT_AUTHORIZED",
                format!("payment {} is {}", p.payment_id, p.status),
            ));
        }
        if p.expires_at_ms > 0 && now_ms() >= p.expires_at_ms {
            return Err(ApiError::precondition(
                "AUTHORIZATION_EXPIRED",
                format!(
                    "payment {}: the provider no longer honours the authorization; authorize again",
                    p.payment_id
                ),
            ));
        }
        let left = p.authorized_minor - p.captured_minor;
        let amount = req.amount.as_ref().map_or(left, |a| a.amount_minor);
        if let Some(a) = &req.amount
            && a.currency != p.currency
        {
            return Err(ApiError::invalid(
                "amount.currency",
                format!("payment is in {}", p.currency),
            ));
        }
        if amount > left {
            return Err(ApiError::precondition(
                "OVER_CAPTURE",
                format!(
                    "cannot capture {amount}: {} authorized, {} captured already",
                    p.authorized_minor, p.captured_minor
                ),
            ));
        }
        let captured = checked(p.captured_minor.checked_add(amount))?;
        let mut am: payment::ActiveModel = p.into();
        am.captured_minor = Set(captured);
        am.status = Set(if req.more_to_follow && amount < left {
            "partially_captured"
        } else {
            "captured"
        }
        .into());
        let p = am.update(&txn).await?;
        let response = CapturePaymentResponse {
            payment: Some(payment_to_wire(p)),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    async fn void(&self, req: VoidPaymentRequest) -> ApiResult<VoidPaymentResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.check(
            !(req.payment_id.is_empty() && req.order_id.is_empty()),
            "payment_id",
            "give payment_id or order_id",
        );
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "finance.VoidPayment", req);
        idempotency::tombstone_forward(&txn, "finance.AuthorizePayment", &req.idempotency_key)
            .await?;
        let p = self
            .find_payment(&txn, &req.payment_id, &req.order_id)
            .await?;
        let p = match p.status.as_str() {
            "authorized" => {
                let mut am: payment::ActiveModel = p.into();
                am.status = Set("voided".into());
                am.update(&txn).await?
            }
            // Part was captured for what shipped: the rest of the authorization is released.
            "partially_captured" => {
                let mut am: payment::ActiveModel = p.into();
                am.status = Set("captured".into());
                am.update(&txn).await?
            }
            "voided" => p,
            other => {
                return Err(ApiError::precondition(
                    "PAYMENT_NOT_VOIDABLE",
                    format!(
                        "payment {} is {other}; only an authorization can be voided",
                        p.payment_id
                    ),
                ));
            }
        };
        let response = VoidPaymentResponse {
            payment: Some(payment_to_wire(p)),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }
}

/// What the audit trail digests of a journal entry.
fn entry_state(e: &JournalEntry) -> serde_json::Value {
    serde_json::json!({
        "entry_id": e.entry_id,
        "memo": e.memo,
        "reverses": e.reverses_entry_id,
        "lines": e.lines.iter().map(|l| (l.account_code.clone(), l.debit_minor, l.credit_minor, l.currency.clone())).collect::<Vec<_>>(),
    })
}

/// A sum of amounts that cannot overflow once inputs are capped; if one ever does, the request
/// fails instead of wrapping.
pub(crate) fn checked(sum: Option<i64>) -> ApiResult<i64> {
    sum.ok_or_else(|| erp_runtime::money::out_of_range("the amount"))
}

fn declined(order_id: &str, reason: String) -> ApiError {
    let mut err = ApiError::precondition(
        "PAYMENT_DECLINED",
        format!("payment for order {order_id} declined: {reason}"),
    );
    if let ApiError::FailedPrecondition { metadata, .. } = &mut err {
        metadata.insert("decline_reason".into(), reason);
    }
    err
}

#[tonic::async_trait]
impl FinanceService for FinanceApi {
    async fn list_accounts(
        &self,
        _r: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        respond(
            async {
                let rows = account::Entity::find()
                    .order_by_asc(account::Column::Code)
                    .all(&self.db)
                    .await?;
                Ok(ListAccountsResponse {
                    accounts: rows.into_iter().map(account_to_wire).collect(),
                })
            }
            .await,
        )
    }

    async fn create_account(
        &self,
        r: Request<CreateAccountRequest>,
    ) -> Result<Response<CreateAccountResponse>, Status> {
        let caller = Caller::of(&r)?;
        let req = r.into_inner();
        respond(
            async {
                let Some(a) = req.account else {
                    return Err(ApiError::invalid("account", "is required"));
                };
                let mut v = Violations::new();
                v.code("account.code", &a.code);
                v.text("account.name", &a.name, 200);
                let t = AccountType::try_from(a.r#type).ok().and_then(type_name);
                v.check(t.is_some(), "account.type", "must be set");
                v.finish()?;
                let txn = self.db.begin().await?;
                if let Some(existing) = account::Entity::find_by_id(a.code.clone())
                    .one(&txn)
                    .await?
                {
                    if existing.name != a.name || Some(existing.account_type.as_str()) != t {
                        return Err(ApiError::AlreadyExists(format!(
                            "account {} exists with other attributes",
                            a.code
                        )));
                    }
                    return Ok(CreateAccountResponse {
                        account: Some(account_to_wire(existing)),
                        created: false,
                    });
                }
                let m = account::ActiveModel {
                    code: Set(a.code.clone()),
                    name: Set(a.name.clone()),
                    account_type: Set(t.unwrap_or_default().to_owned()),
                }
                .insert(&txn)
                .await?;
                audit::record(
                    &txn,
                    audit::Change {
                        caller: &caller,
                        target: format!("account:{}", m.code),
                        reason: "created",
                        before: None,
                        after: Some(serde_json::json!({
                            "code": m.code, "name": m.name, "type": m.account_type,
                        })),
                    },
                )
                .await?;
                txn.commit().await?;
                Ok(CreateAccountResponse {
                    account: Some(account_to_wire(m)),
                    created: true,
                })
            }
            .await,
        )
    }

    async fn post_journal(
        &self,
        r: Request<PostJournalRequest>,
    ) -> Result<Response<PostJournalResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.post_journal(&caller, r.into_inner()).await)
    }

    async fn reverse_journal(
        &self,
        r: Request<ReverseJournalRequest>,
    ) -> Result<Response<ReverseJournalResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.reverse_journal(&caller, r.into_inner()).await)
    }

    async fn get_journal_entry(
        &self,
        r: Request<GetJournalEntryRequest>,
    ) -> Result<Response<GetJournalEntryResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let mut v = Violations::new();
                v.id("entry_id", &req.entry_id);
                v.finish()?;
                Ok(GetJournalEntryResponse {
                    entry: Some(load_entry(&self.db, &req.entry_id).await?),
                })
            }
            .await,
        )
    }

    async fn list_journal_entries(
        &self,
        r: Request<ListJournalEntriesRequest>,
    ) -> Result<Response<ListJournalEntriesResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let size = page_size(req.page_size)?;
                let offset = page_offset(&req.page_token)?;
                let ids: Vec<String> = if req.order_id.is_empty() {
                    entry::Entity::find()
                        .order_by_asc(entry::Column::PostedAtMs)
                        .offset(offset)
                        .limit(size)
                        .all(&self.db)
                        .await?
                        .into_iter()
                        .map(|e| e.entry_id)
                        .collect()
                } else {
                    // Each entry once, in the order of its first line. Lines of entries posted
                    // at the same moment interleave by sequence on PostgreSQL, so removing
                    // only adjacent repeats listed an entry once per run of its lines.
                    let mut seen = std::collections::HashSet::new();
                    let ids: Vec<String> = jline::Entity::find()
                        .filter(jline::Column::OrderId.eq(&req.order_id))
                        .order_by_asc(jline::Column::Seq)
                        .all(&self.db)
                        .await?
                        .into_iter()
                        .map(|l| l.entry_id)
                        .filter(|id| seen.insert(id.clone()))
                        .collect();
                    ids.into_iter()
                        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                        .take(usize::try_from(size).unwrap_or(50))
                        .collect()
                };
                let mut entries = Vec::with_capacity(ids.len());
                for id in &ids {
                    entries.push(load_entry(&self.db, id).await?);
                }
                let next = next_page_token(offset, entries.len(), size);
                Ok(ListJournalEntriesResponse {
                    entries,
                    next_page_token: next,
                })
            }
            .await,
        )
    }

    async fn get_trial_balance(
        &self,
        _r: Request<GetTrialBalanceRequest>,
    ) -> Result<Response<GetTrialBalanceResponse>, Status> {
        respond(self.trial_balance().await)
    }

    async fn authorize_payment(
        &self,
        r: Request<AuthorizePaymentRequest>,
    ) -> Result<Response<AuthorizePaymentResponse>, Status> {
        respond(self.authorize(r.into_inner()).await)
    }

    async fn capture_payment(
        &self,
        r: Request<CapturePaymentRequest>,
    ) -> Result<Response<CapturePaymentResponse>, Status> {
        respond(self.capture(r.into_inner()).await)
    }

    async fn void_payment(
        &self,
        r: Request<VoidPaymentRequest>,
    ) -> Result<Response<VoidPaymentResponse>, Status> {
        respond(self.void(r.into_inner()).await)
    }

    async fn refund_payment(
        &self,
        r: Request<RefundPaymentRequest>,
    ) -> Result<Response<RefundPaymentResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.refund(&caller, r.into_inner()).await)
    }

    async fn approve_refund(
        &self,
        r: Request<ApproveRefundRequest>,
    ) -> Result<Response<ApproveRefundResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(FinanceApi::approve_refund(self, &caller, r.into_inner()).await)
    }

    async fn reject_refund(
        &self,
        r: Request<RejectRefundRequest>,
    ) -> Result<Response<RejectRefundResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(FinanceApi::reject_refund(self, &caller, r.into_inner()).await)
    }

    async fn list_refund_approvals(
        &self,
        r: Request<ListRefundApprovalsRequest>,
    ) -> Result<Response<ListRefundApprovalsResponse>, Status> {
        respond(FinanceApi::list_refund_approvals(self, r.into_inner()).await)
    }

    async fn record_chargeback(
        &self,
        r: Request<RecordChargebackRequest>,
    ) -> Result<Response<RecordChargebackResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.chargeback(&caller, r.into_inner()).await)
    }

    async fn get_payment(
        &self,
        r: Request<GetPaymentRequest>,
    ) -> Result<Response<GetPaymentResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let mut v = Violations::new();
                v.check(
                    !(req.payment_id.is_empty() && req.order_id.is_empty()),
                    "payment_id",
                    "give payment_id or order_id",
                );
                v.finish()?;
                let p = self
                    .find_payment(&self.db, &req.payment_id, &req.order_id)
                    .await?;
                Ok(GetPaymentResponse {
                    payment: Some(payment_to_wire(p)),
                })
            }
            .await,
        )
    }

    async fn set_tax_rate(
        &self,
        r: Request<SetTaxRateRequest>,
    ) -> Result<Response<SetTaxRateResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(FinanceApi::set_tax_rate(self, &caller, r.into_inner()).await)
    }

    async fn calculate_tax(
        &self,
        r: Request<CalculateTaxRequest>,
    ) -> Result<Response<CalculateTaxResponse>, Status> {
        respond(FinanceApi::calculate_tax(self, r.into_inner()).await)
    }

    async fn channel_profitability(
        &self,
        r: Request<ChannelProfitabilityRequest>,
    ) -> Result<Response<ChannelProfitabilityResponse>, Status> {
        respond(self.profitability(r.into_inner()).await)
    }

    async fn reconcile_settlement(
        &self,
        r: Request<ReconcileSettlementRequest>,
    ) -> Result<Response<ReconcileSettlementResponse>, Status> {
        respond(self.reconcile(r.into_inner()).await)
    }
}
