//! Group commit of saga state. Every move of every saga ends in a commit of its new state and
//! timeline; on SQLite each commit is an fsync on the service's one connection, which capped
//! the whole suite at the orchestrator's commit rate however many sagas were in flight. Saves
//! that arrive while a commit is in flight now go into the next transaction together: one
//! fsync for all of them, and the rate of saves grows with the load instead of queueing.
//!
//! Each save is still judged alone: its UPDATE is conditional on the saga's lease, and when the
//! lease was lost that UPDATE changed nothing and the save's other rows are not written (so
//! there is nothing to undo inside the shared transaction). A batch that fails as a whole is
//! retried save by save, so one bad save cannot fail the others.

use std::sync::Arc;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, TransactionTrait,
    UpdateMany,
};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::store::{saga, signal, step};

/// At most this many saves per transaction.
const MAX_BATCH: usize = 128;

/// One saga's save: its conditional state update, then (when it applied) its timeline
/// entries and the signals it consumed.
pub(super) struct Write {
    pub update: UpdateMany<saga::Entity>,
    pub steps: Vec<step::ActiveModel>,
    pub consumed: Vec<i64>,
}

type Reply = oneshot::Sender<Result<bool, String>>;

pub(super) struct Committer {
    tx: mpsc::UnboundedSender<(Write, Reply)>,
    /// Taken by the committer tasks when the first save arrives (tests build engines outside
    /// a runtime's spawn point; the tasks start where the saves are).
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<(Write, Reply)>>>,
    db: DatabaseConnection,
}

impl Committer {
    pub fn new(db: DatabaseConnection) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            db,
        }
    }

    /// Commits `w` (with whatever other saves are waiting). True when the saga's lease held
    /// and the save was written; false when another replica owns the saga now.
    pub async fn commit(&self, w: Write) -> anyhow::Result<bool> {
        self.start();
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((w, reply))
            .map_err(|_| anyhow::anyhow!("the saga committer stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the saga committer stopped"))?
            .map_err(|e| anyhow::anyhow!("saving the saga: {e}"))
    }

    fn start(&self) {
        let Some(rx) = self.rx.lock().ok().and_then(|mut rx| rx.take()) else {
            return;
        };
        // SQLite has one writer: one committer. PostgreSQL takes several transactions at once
        // (and flushes their commits together): a few committers share the queue.
        let committers = match self.db.get_database_backend() {
            DbBackend::Sqlite => 1,
            _ => 4,
        };
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..committers {
            // Not tracked: each task ends when the engine (the last sender) is dropped.
            tokio::spawn(run(self.db.clone(), rx.clone()));
        }
    }
}

async fn run(db: DatabaseConnection, rx: Arc<Mutex<mpsc::UnboundedReceiver<(Write, Reply)>>>) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        metrics::histogram!("saga_commit_batch_size").record(batch.len() as f64);
        let (writes, replies): (Vec<Write>, Vec<Reply>) = batch.into_iter().unzip();
        if writes.len() == 1 {
            for (reply, w) in replies.into_iter().zip(writes) {
                let _ = reply.send(apply_one(&db, w).await);
            }
            continue;
        }
        // Kept for the retry one by one should the whole batch fail.
        let retry: Vec<Write> = writes.iter().map(Write::duplicate).collect();
        match apply(&db, writes).await {
            Ok(outs) => {
                for (reply, out) in replies.into_iter().zip(outs) {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, saves = retry.len(), "group commit failed; saving one by one");
                for (reply, w) in replies.into_iter().zip(retry) {
                    let _ = reply.send(apply_one(&db, w).await);
                }
            }
        }
    }
}

/// One save in a transaction of its own.
async fn apply_one(db: &DatabaseConnection, w: Write) -> Result<bool, String> {
    apply(db, vec![w])
        .await
        .map(|outs| outs.first().copied().unwrap_or(false))
        .map_err(|e| e.to_string())
}

impl Write {
    fn duplicate(&self) -> Self {
        Self {
            update: self.update.clone(),
            steps: self.steps.clone(),
            consumed: self.consumed.clone(),
        }
    }
}

async fn apply(db: &DatabaseConnection, writes: Vec<Write>) -> Result<Vec<bool>, DbErr> {
    let txn = db.begin().await?;
    let mut outs = Vec::with_capacity(writes.len());
    for w in writes {
        let held = w.update.exec(&txn).await?.rows_affected == 1;
        if held {
            if !w.steps.is_empty() {
                step::Entity::insert_many(w.steps).exec(&txn).await?;
            }
            if !w.consumed.is_empty() {
                signal::Entity::update_many()
                    .col_expr(signal::Column::Consumed, Expr::value(true))
                    .filter(signal::Column::Seq.is_in(w.consumed))
                    .exec(&txn)
                    .await?;
            }
        }
        outs.push(held);
    }
    txn.commit().await?;
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SagaState;
    use erp_runtime::testing;
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, PaginatorTrait};

    async fn saga_held_by(db: &DatabaseConnection, id: &str, owner: &str) {
        saga::ActiveModel {
            saga_id: Set(id.into()),
            definition: Set("fulfillment".into()),
            definition_version: Set(3),
            order_id: Set(format!("order-{id}")),
            status: Set(SagaState::Running),
            current_step: Set("route".into()),
            attempts: Set(1),
            last_error: Set(String::new()),
            traceparent: Set(String::new()),
            lease_owner: Set(owner.into()),
            lease_until_ms: Set(i64::MAX / 2),
            next_attempt_at_ms: Set(0),
            created_at_ms: Set(0),
            updated_at_ms: Set(0),
            data: Set("{}".into()),
            step_index: Set(2),
            resume_status: Set(String::new()),
            parked_reason: Set(String::new()),
            suggested_action: Set(String::new()),
            waiting_skus: Set(String::new()),
        }
        .insert(db)
        .await
        .unwrap();
    }

    fn completes(id: &str, entries: usize) -> Write {
        Write {
            update: saga::Entity::update_many()
                .col_expr(saga::Column::Status, Expr::value(SagaState::Completed))
                .filter(saga::Column::SagaId.eq(id))
                .filter(saga::Column::LeaseOwner.eq("me")),
            steps: (0..entries)
                .map(|i| step::ActiveModel {
                    saga_id: Set(id.into()),
                    step: Set(format!("s{i}")),
                    direction: Set("forward".into()),
                    outcome: Set("succeeded".into()),
                    attempt: Set(1),
                    detail: Set(String::new()),
                    recorded_at_ms: Set(0),
                    ..Default::default()
                })
                .collect(),
            consumed: Vec::new(),
        }
    }

    /// 60 sagas saved at once through one committer, on a real SQLite file and PostgreSQL:
    /// the 50 whose lease is ours are written with their timeline, the 10 another replica
    /// holds write nothing, and a save that cannot be written fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saves_share_transactions_and_each_is_judged_alone() {
        for backend in testing::backends() {
            let (settings, _dir) = testing::settings(&backend, &[]);
            let db = erp_runtime::db::connect_and_migrate::<crate::store::Migrator>(
                &settings,
                "orchestrator",
            )
            .await
            .unwrap();
            for i in 0..60 {
                let owner = if i < 50 { "me" } else { "other" };
                saga_held_by(&db, &format!("g{i}"), owner).await;
            }
            let committer = Arc::new(Committer::new(db.clone()));
            let mut tasks = Vec::new();
            for i in 0..60 {
                let committer = committer.clone();
                tasks.push(tokio::spawn(async move {
                    committer.commit(completes(&format!("g{i}"), 2)).await
                }));
            }
            // A timeline entry without its saga id violates NOT NULL: its batch fails, and
            // the saves that shared it are written one by one.
            let mut bad = completes("g0", 1);
            bad.steps[0].saga_id = sea_orm::ActiveValue::NotSet;
            let bad = {
                let committer = committer.clone();
                tokio::spawn(async move { committer.commit(bad).await })
            };
            let mut held = 0;
            for (i, t) in tasks.into_iter().enumerate() {
                let out = t.await.unwrap().unwrap();
                assert_eq!(out, i < 50, "{} g{i}", backend.name());
                held += usize::from(out);
            }
            assert!(bad.await.unwrap().is_err(), "{}", backend.name());
            assert_eq!(held, 50);
            let completed = saga::Entity::find()
                .filter(saga::Column::Status.eq(SagaState::Completed))
                .count(&db)
                .await
                .unwrap();
            assert_eq!(completed, 50, "{}", backend.name());
            assert_eq!(step::Entity::find().count(&db).await.unwrap(), 100);
            db.close().await.unwrap();
        }
    }
}
