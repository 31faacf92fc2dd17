//! Group commit for reservations. A flash sale sends thousands of reservations for one item at
//! once; one transaction each would serialize every order on the hot row's lock and on a commit
//! (fsync) each. Instead, requests queue here and a worker applies up to `inventory.reservation_batch` of them in
//! one transaction, each inside its own savepoint (a refused request rolls back alone), and
//! answers them all after the single commit. Each decision still goes through the same
//! conditional UPDATE, so the no-oversell guarantee does not depend on the batching; and no
//! answer is sent before the commit that makes it true.

use sea_orm::{ConnectionTrait, TransactionTrait};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use erp_proto::inventory::{ReserveMode, ReserveStockRequest, ReserveStockResponse};
use erp_runtime::time::from_timestamp;
use erp_runtime::{ApiError, ApiResult, idempotency};

use crate::store::Store;

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
    pub fn spawn(store: Store, max_batch: usize, shutdown: CancellationToken) -> Self {
        let (queue, mut jobs) = mpsc::channel::<Job>(8192);
        tokio::spawn(async move {
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
                apply(&store, batch).await;
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
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        let result = match txn.begin().await {
            Ok(savepoint) => match reserve_one(store, &savepoint, &job.request).await {
                Ok(response) => match savepoint.commit().await {
                    Ok(()) => Ok(response),
                    Err(e) => Err(e.into()),
                },
                Err(e) => {
                    let _ = savepoint.rollback().await;
                    Err(e)
                }
            },
            Err(e) => Err(e.into()),
        };
        answers.push((job.reply, result));
    }
    match txn.commit().await {
        Ok(()) => {
            store.outbox.wake();
            for (reply, result) in answers {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            // Nothing of the batch happened: every caller may retry with its key.
            let e = ApiError::from(e);
            for (reply, _) in answers {
                let _ = reply.send(Err(ApiError::Aborted(format!(
                    "reservation batch not committed: {e}"
                ))));
            }
        }
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
