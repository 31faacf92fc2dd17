//! Group commit for reservations. A flash sale sends thousands of reservations for one item at
//! once; one transaction each would serialize every order on the hot row's lock and on a commit
//! (fsync) each. Instead, requests queue here and a worker takes up to
//! `inventory.reservation_batch` of them into one transaction: single-line requests for the
//! same (sku, location) are decided together from one read, in arrival order, and applied with
//! one conditional UPDATE (which still refuses to go below zero, so a concurrent writer makes
//! the group fall back to one-by-one) and bulk inserts; other requests run one by one in
//! savepoints. No answer is sent before the commit that makes it true.

use std::collections::{BTreeMap, HashMap};

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use erp_proto::inventory::{ReserveMode, ReserveStockRequest, ReserveStockResponse};
use erp_runtime::outbox;
use erp_runtime::time::{from_timestamp, now_ms};
use erp_runtime::{ApiError, ApiResult, idempotency};

use crate::domain::{Bucket, InventoryError, Reason, ReservationState};
use crate::store::entities::{ledger, reservation, stock_level};
use crate::store::{StockChanged, Store};

const SCOPE: &str = "inventory.ReserveStock";

struct Job {
    request: ReserveStockRequest,
    reply: oneshot::Sender<ApiResult<ReserveStockResponse>>,
}

#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the worker; `max_batch` requests at most per transaction.
    pub fn spawn(store: Store, max_batch: usize, ctx: &erp_runtime::ServiceContext) -> Self {
        let (queue, mut jobs) = mpsc::channel::<Job>(8192);
        let shutdown = ctx.shutdown.clone();
        ctx.spawn(async move {
            loop {
                let first = tokio::select! {
                    () = shutdown.cancelled() => break,
                    job = jobs.recv() => match job {
                        Some(job) => job,
                        None => break,
                    },
                };
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                store.cache.tracked(apply(&store, batch)).await;
            }
        });
        Self { queue }
    }

    /// Reserves as part of the next batch; answers after its commit.
    pub async fn reserve(&self, request: ReserveStockRequest) -> ApiResult<ReserveStockResponse> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { request, reply })
            .await
            .map_err(|_| ApiError::Unavailable("inventory is shutting down".into()))?;
        answer
            .await
            .map_err(|_| ApiError::Unavailable("the reservation batch was dropped; retry".into()))?
    }
}

async fn apply(store: &Store, batch: Vec<Job>) {
    let txn = match store.db.begin().await {
        Ok(t) => t,
        Err(e) => {
            let e = ApiError::from(e);
            for job in batch {
                let _ = job.reply.send(Err(ApiError::Unavailable(e.to_string())));
            }
            return;
        }
    };
    let requests: Vec<&ReserveStockRequest> = batch.iter().map(|j| &j.request).collect();
    let answers = match decide(store, &txn, &requests).await {
        Ok(answers) => answers,
        Err(e) => {
            let _ = txn.rollback().await;
            for job in batch {
                let _ = job.reply.send(Err(ApiError::Aborted(format!(
                    "reservation batch failed: {e}"
                ))));
            }
            return;
        }
    };
    match txn.commit().await {
        Ok(()) => {
            store.outbox.wake();
            let refused = answers
                .iter()
                .filter(|a| matches!(a, Err(e) if e.reason() == Some("INSUFFICIENT_STOCK")))
                .count();
            metrics::counter!("inventory_reservation_decisions_total", "outcome" => "refused")
                .increment(refused as u64);
            metrics::counter!("inventory_reservation_decisions_total", "outcome" => "answered")
                .increment((answers.len() - refused) as u64);
            metrics::histogram!("inventory_reservation_batch_size").record(answers.len() as f64);
            for (job, result) in batch.into_iter().zip(answers) {
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            // Nothing of the batch happened: every caller may retry with its key.
            let e = ApiError::from(e);
            for job in batch {
                let _ = job.reply.send(Err(ApiError::Aborted(format!(
                    "reservation batch not committed: {e}"
                ))));
            }
        }
    }
}

/// Decides every request of a batch inside `txn`. Single-line requests are coalesced per
/// (sku, location): one read, decisions in arrival order, one conditional UPDATE for all the
/// accepted units, bulk inserts. Anything else (several lines) goes one by one in a savepoint.
/// The error case is a database failure that spoils the transaction.
async fn decide(
    store: &Store,
    txn: &sea_orm::DatabaseTransaction,
    requests: &[&ReserveStockRequest],
) -> ApiResult<Vec<ApiResult<ReserveStockResponse>>> {
    let n = requests.len();
    let mut answers: Vec<Option<ApiResult<ReserveStockResponse>>> = (0..n).map(|_| None).collect();
    let hashes: Vec<String> = requests
        .iter()
        .map(|r| idempotency::fingerprint(*r))
        .collect();
    // Repeats of a key already in this batch are answered like the first one, after it.
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let mut copies = Vec::new();
    // Keys answered before this batch.
    let keys: Vec<String> = requests.iter().map(|r| r.idempotency_key.clone()).collect();
    let stored: HashMap<String, idempotency::entity::Model> = idempotency::entity::Entity::find()
        .filter(idempotency::entity::Column::Scope.eq(SCOPE))
        .filter(idempotency::entity::Column::IdemKey.is_in(keys))
        .all(txn)
        .await?
        .into_iter()
        .map(|row| (row.idem_key.clone(), row))
        .collect();
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut slow = Vec::new();
    for (i, req) in requests.iter().enumerate() {
        if let Some(&first) = first_of.get(req.idempotency_key.as_str()) {
            copies.push((i, first));
            continue;
        }
        first_of.insert(&req.idempotency_key, i);
        if let Some(row) = stored.get(&req.idempotency_key) {
            answers[i] = Some(idempotency::judge(
                row,
                SCOPE,
                &req.idempotency_key,
                &hashes[i],
            ));
        } else if let [line] = req.lines.as_slice() {
            groups
                .entry((line.sku.clone(), line.location.clone()))
                .or_default()
                .push(i);
        } else {
            slow.push(i);
        }
    }
    for ((sku, loc), idxs) in groups {
        let savepoint = txn.begin().await?;
        match coalesce(store, &savepoint, &sku, &loc, &idxs, requests, &hashes).await {
            Ok(Some(results)) => {
                savepoint.commit().await?;
                for (i, r) in idxs.into_iter().zip(results) {
                    answers[i] = Some(r);
                }
            }
            Ok(None) => {
                // Someone else changed the row between our read and our update: one by one.
                savepoint.rollback().await?;
                slow.extend(idxs);
            }
            Err(e) => {
                savepoint.rollback().await?;
                for i in idxs {
                    answers[i] = Some(Err(ApiError::Aborted(e.to_string())));
                }
            }
        }
    }
    for i in slow {
        let savepoint = txn.begin().await?;
        let result = reserve_one(store, &savepoint, requests[i]).await;
        if result.is_ok() {
            savepoint.commit().await?;
        } else {
            savepoint.rollback().await?;
        }
        answers[i] = Some(result);
    }
    for (i, first) in copies {
        answers[i] = Some(match &answers[first] {
            Some(Ok(response)) if hashes[i] == hashes[first] => Ok(response.clone()),
            Some(Ok(_)) => Err(ApiError::AlreadyExists(format!(
                "idempotency key {:?} was already used for a different reservation",
                requests[i].idempotency_key
            ))),
            // The first was refused: decide the repeat again, on its own.
            _ => {
                let savepoint = txn.begin().await?;
                let result = reserve_one(store, &savepoint, requests[i]).await;
                if result.is_ok() {
                    savepoint.commit().await?;
                } else {
                    savepoint.rollback().await?;
                }
                result
            }
        });
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(ApiError::Internal("reservation left undecided".into()))))
        .collect())
}

/// One (sku, location) of a batch. `None` when the row changed under us (fall back).
async fn coalesce<C: ConnectionTrait>(
    store: &Store,
    c: &C,
    sku: &str,
    loc: &str,
    idxs: &[usize],
    requests: &[&ReserveStockRequest],
    hashes: &[String],
) -> ApiResult<Option<Vec<ApiResult<ReserveStockResponse>>>> {
    let refuse_all = |e: ApiError| -> ApiResult<Option<Vec<ApiResult<ReserveStockResponse>>>> {
        let message = e.to_string();
        Ok(Some(
            idxs.iter()
                .map(|_| Err(clone_error(&e, &message)))
                .collect(),
        ))
    };
    let location = match store.location(c, loc).await {
        Ok(l) => l,
        Err(e) => return refuse_all(e),
    };
    if !location.online {
        return refuse_all(InventoryError::LocationOffline(loc.to_owned()).into());
    }
    if let Err(e) = store.ensure_row(c, sku, loc).await {
        return refuse_all(e);
    }
    let before = store
        .levels_of(c, sku, loc)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("stock row {sku}@{loc} vanished")))?;
    let mut available = before.on_hand - before.reserved;
    let mut results = Vec::with_capacity(idxs.len());
    let mut takes = Vec::with_capacity(idxs.len());
    for &i in idxs {
        let req = requests[i];
        let line = &req.lines[0];
        let partial = ReserveMode::try_from(req.mode) == Ok(ReserveMode::Partial);
        let take = if partial {
            std::cmp::min(line.quantity, available)
        } else {
            line.quantity
        };
        if take > available {
            results.push(Some(Err(InventoryError::InsufficientStock {
                sku: sku.to_owned(),
                location: loc.to_owned(),
                requested: line.quantity,
                available,
            }
            .into())));
            takes.push(0);
            continue;
        }
        available -= take;
        takes.push(take);
        results.push(None);
    }
    let total: i64 = takes.iter().sum();
    if total > 0 {
        store.cache.invalidate(sku).await;
        let updated = stock_level::Entity::update_many()
            .col_expr(
                stock_level::Column::Reserved,
                Expr::col(stock_level::Column::Reserved).add(total),
            )
            .filter(stock_level::Column::Sku.eq(sku))
            .filter(stock_level::Column::Location.eq(loc))
            .filter(
                Expr::col(stock_level::Column::OnHand)
                    .sub(Expr::col(stock_level::Column::Reserved))
                    .gte(total),
            )
            .exec(c)
            .await?;
        if updated.rows_affected != 1 {
            return Ok(None);
        }
    }
    let now = now_ms();
    let mut balance = before.reserved;
    let mut ledger_rows = Vec::new();
    let mut reservation_rows = Vec::new();
    let mut key_rows = Vec::new();
    let mut out = Vec::with_capacity(idxs.len());
    for ((&i, take), refused) in idxs.iter().zip(takes).zip(results) {
        if let Some(err) = refused {
            out.push(err);
            continue;
        }
        let req = requests[i];
        let line = &req.lines[0];
        let mut made = Vec::new();
        if take > 0 {
            balance += take;
            ledger_rows.push(ledger::ActiveModel {
                sku: Set(sku.to_owned()),
                location: Set(loc.to_owned()),
                bucket: Set(Bucket::Reserved.as_str().to_owned()),
                delta: Set(take),
                balance_after: Set(balance),
                reason: Set(Reason::Reservation.as_str().to_owned()),
                source_kind: Set("order".into()),
                source_id: Set(req.order_id.clone()),
                actor: Set("inventory".into()),
                recorded_at_ms: Set(now),
                ..Default::default()
            });
            let model = reservation::Model {
                reservation_id: uuid::Uuid::now_v7().to_string(),
                order_id: req.order_id.clone(),
                order_line_id: line.order_line_id.clone(),
                sku: sku.to_owned(),
                location: loc.to_owned(),
                quantity: take,
                state: ReservationState::Active.as_str().to_owned(),
                expires_at_ms: req.expires_at.as_ref().map(from_timestamp),
                created_at_ms: now,
            };
            reservation_rows.push(reservation::ActiveModel::from(model.clone()));
            made.push(model);
        }
        let response = ReserveStockResponse {
            reservations: made
                .into_iter()
                .map(crate::api::reservation_to_wire)
                .collect(),
            short_lines: if take < line.quantity {
                vec![line.order_line_id.clone()]
            } else {
                vec![]
            },
        };
        key_rows.push(idempotency::row(
            SCOPE,
            &req.idempotency_key,
            &hashes[i],
            &response,
        ));
        out.push(Ok(response));
    }
    if !ledger_rows.is_empty() {
        ledger::Entity::insert_many(ledger_rows).exec(c).await?;
        reservation::Entity::insert_many(reservation_rows)
            .exec(c)
            .await?;
    }
    if !key_rows.is_empty() {
        idempotency::entity::Entity::insert_many(key_rows)
            .exec(c)
            .await?;
    }
    if total > 0 {
        let after = crate::store::levels(&before);
        outbox::enqueue(
            c,
            "inventory.stock_changed",
            &format!("{sku}@{loc}"),
            &StockChanged {
                sku,
                location: loc,
                on_hand: after.on_hand,
                reserved: after.reserved + total,
                inbound: after.inbound,
                available: after.on_hand - after.reserved - total,
                reason: Reason::Reservation.as_str(),
                on_hand_delta: 0,
                value_delta_minor: 0,
                currency: "",
                source_kind: "",
                source_id: "",
            },
        )
        .await?;
        store.check_low_stock(c, sku).await?;
    }
    Ok(Some(out))
}

/// Errors are not `Clone`; a refusal shared by a whole group is rebuilt for each request.
fn clone_error(e: &ApiError, message: &str) -> ApiError {
    match e {
        ApiError::FailedPrecondition {
            reason, metadata, ..
        } => ApiError::FailedPrecondition {
            reason: reason.clone(),
            message: message.to_owned(),
            metadata: metadata.clone(),
        },
        ApiError::NotFound(_) => ApiError::NotFound(message.to_owned()),
        ApiError::PermissionDenied(_) => ApiError::PermissionDenied(message.to_owned()),
        ApiError::InvalidArgument(v) => ApiError::InvalidArgument(v.clone()),
        ApiError::AlreadyExists(_) => ApiError::AlreadyExists(message.to_owned()),
        ApiError::Unavailable(_) => ApiError::Unavailable(message.to_owned()),
        ApiError::Aborted(_) => ApiError::Aborted(message.to_owned()),
        ApiError::Internal(_) => ApiError::Internal(message.to_owned()),
        ApiError::Upstream(s) => ApiError::Upstream(s.clone()),
    }
}

/// One reservation request inside the batch transaction, idempotent on its key.
async fn reserve_one<C: ConnectionTrait>(
    store: &Store,
    c: &C,
    req: &ReserveStockRequest,
) -> ApiResult<ReserveStockResponse> {
    let hash = idempotency::fingerprint(req);
    if let Some(previous) = idempotency::lookup(c, SCOPE, &req.idempotency_key, &hash).await? {
        return Ok(previous);
    }
    let lines: Vec<_> = req
        .lines
        .iter()
        .map(|l| {
            (
                l.order_line_id.clone(),
                l.sku.clone(),
                l.location.clone(),
                l.quantity,
            )
        })
        .collect();
    let partial = ReserveMode::try_from(req.mode) == Ok(ReserveMode::Partial);
    let expires = req.expires_at.as_ref().map(from_timestamp);
    let (made, short) = store
        .reserve(c, &req.order_id, &lines, partial, expires)
        .await?;
    let response = ReserveStockResponse {
        reservations: made
            .into_iter()
            .map(crate::api::reservation_to_wire)
            .collect(),
        short_lines: short,
    };
    idempotency::record(c, SCOPE, &req.idempotency_key, &hash, &response).await?;
    Ok(response)
}
