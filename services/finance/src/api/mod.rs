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
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, TransactionTrait,
};
use tonic::{Request, Response, Status};

use crate::domain::{self, ProviderAnswer};
use crate::error::FinanceError;
use crate::store::{self, account, entry, jline, payment};

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
    load_entries(c, &[id.to_owned()])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("journal entry {id}")))
}

/// Journal entries with their lines, in the order of `ids`, in two queries whatever their
/// number (ids that name no entry are left out).
async fn load_entries<C: ConnectionTrait>(c: &C, ids: &[String]) -> ApiResult<Vec<JournalEntry>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let (entries, mut lines) = store::entries_with_lines(c, ids).await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(e) = entries.iter().find(|e| &e.entry_id == id).cloned() else {
            continue;
        };
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut lines)
            .into_iter()
            .partition(|l| &l.entry_id == id);
        lines = rest;
        out.push(JournalEntry {
            entry_id: e.entry_id,
            memo: e.memo,
            source: Some(SourceDocument {
                kind: e.source_kind,
                id: e.source_id,
            }),
            lines: mine
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
        });
    }
    Ok(out)
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
        if store::account(c, &l.account_code).await?.is_none() {
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
    FinanceError::Declined {
        order: order_id.to_owned(),
        reason,
    }
    .into()
}

#[tonic::async_trait]
impl FinanceService for FinanceApi {
    async fn list_accounts(
        &self,
        _r: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        respond(
            async {
                let rows = store::accounts(&self.db).await?;
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
                if let Some(existing) = store::account(&txn, &a.code).await? {
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
                    store::entry_ids_page(&self.db, offset, size).await?
                } else {
                    // Each entry once, in the order of its first line.
                    store::entry_ids_of_order(&self.db, &req.order_id)
                        .await?
                        .into_iter()
                        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                        .take(usize::try_from(size).unwrap_or(50))
                        .collect()
                };
                let entries = load_entries(&self.db, &ids).await?;
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
                let p = store::payment_for_update(&self.db, &req.payment_id, &req.order_id).await?;
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

// The handlers, by room (after the macros they use).
mod journal;
mod payments;
