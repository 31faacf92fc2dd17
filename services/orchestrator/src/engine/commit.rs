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

/// The conditional UPDATE that saves `m` (its context serialized as `data`): applied only
/// while `replica` holds the lease and the row is still at the version `m` was read at; it
/// moves the version on and extends the lease to `lease_until`. A save that lands twice (its
/// batch committed, then failed to say so and was retried) or late (after a newer one) thus
/// changes nothing, and its timeline entries are not written.
pub(super) fn state_update(
    m: &saga::Model,
    data: String,
    replica: &str,
    lease_until: Expr,
    backend: DbBackend,
) -> UpdateMany<saga::Entity> {
    saga::Entity::update_many()
        .col_expr(saga::Column::Status, Expr::value(m.status))
        .col_expr(
            saga::Column::CurrentStep,
            Expr::value(m.current_step.clone()),
        )
        .col_expr(saga::Column::Attempts, Expr::value(m.attempts))
        .col_expr(saga::Column::LastError, Expr::value(m.last_error.clone()))
        .col_expr(
            saga::Column::NextAttemptAtMs,
            Expr::value(m.next_attempt_at_ms),
        )
        .col_expr(saga::Column::StepIndex, Expr::value(m.step_index))
        .col_expr(
            saga::Column::ResumeStatus,
            Expr::value(m.resume_status.clone()),
        )
        .col_expr(
            saga::Column::ParkedReason,
            Expr::value(m.parked_reason.clone()),
        )
        .col_expr(
            saga::Column::SuggestedAction,
            Expr::value(m.suggested_action.clone()),
        )
        .col_expr(saga::Column::Data, Expr::value(data))
        .col_expr(
            saga::Column::WaitingSkus,
            Expr::value(m.waiting_skus.clone()),
        )
        .col_expr(
            saga::Column::UpdatedAtMs,
            Expr::cust(erp_runtime::db::clock_ms_sql(backend)),
        )
        .col_expr(saga::Column::LeaseUntilMs, lease_until)
        .col_expr(saga::Column::Version, crate::store::next_version())
        .filter(saga::Column::SagaId.eq(m.saga_id.as_str()))
        .filter(saga::Column::LeaseOwner.eq(replica))
        .filter(saga::Column::Version.eq(m.version))
}

/// How long a run waits for its save to be committed before giving the saga up.
const SAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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
        // A run never waits for ever on its save: past this, it gives the saga up (it is run
        // again from what is stored). Should the save land later after all, the version
        // fence makes whichever of it and the next run's save comes second change nothing.
        tokio::time::timeout(SAVE_TIMEOUT, answer)
            .await
            .map_err(|_| anyhow::anyhow!("no answer from the database within {SAVE_TIMEOUT:?}"))?
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
            version: Set(0),
        }
        .insert(db)
        .await
        .unwrap();
    }

    /// A timeline entry: `step` of saga `id` succeeded.
    fn succeeded(id: &str, step: &str) -> step::ActiveModel {
        step::ActiveModel {
            saga_id: Set(id.into()),
            step: Set(step.into()),
            direction: Set("forward".into()),
            outcome: Set("succeeded".into()),
            attempt: Set(1),
            detail: Set(String::new()),
            recorded_at_ms: Set(0),
            ..Default::default()
        }
    }

    fn completes(id: &str, entries: usize) -> Write {
        Write {
            update: saga::Entity::update_many()
                .col_expr(saga::Column::Status, Expr::value(SagaState::Completed))
                .filter(saga::Column::SagaId.eq(id))
                .filter(saga::Column::LeaseOwner.eq("me")),
            steps: (0..entries)
                .map(|i| succeeded(id, &format!("s{i}")))
                .collect(),
            consumed: Vec::new(),
        }
    }

    /// The orchestrator's database on `backend`, migrated (and the test's data directory).
    async fn orchestrator_db(
        backend: &testing::Backend,
    ) -> (DatabaseConnection, std::path::PathBuf) {
        let (settings, dir) = testing::settings(backend, &[]);
        let db = erp_runtime::db::connect_and_migrate::<crate::store::Migrator>(
            &settings,
            "orchestrator",
        )
        .await
        .unwrap();
        (db, dir)
    }

    /// A save that lands twice (its batch committed but reported a failure, and was saved
    /// again one by one) or after a newer save changes nothing, on a real SQLite file and
    /// PostgreSQL: the row keeps the newest state and each timeline entry is written once.
    /// Without the version fence, the older save would put the saga back at a wait it had
    /// passed, its signal consumed: stranded until the wait's deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_save_repeated_or_overtaken_changes_nothing() {
        for backend in testing::backends() {
            let (db, _dir) = orchestrator_db(&backend).await;
            saga_held_by(&db, "v1", "me").await;
            let mut m = saga::Entity::find_by_id("v1")
                .one(&db)
                .await
                .unwrap()
                .unwrap();
            let backend_kind = db.get_database_backend();
            let save = |m: &saga::Model, done: &str| Write {
                update: state_update(
                    m,
                    "{}".into(),
                    "me",
                    Expr::value(i64::MAX / 2),
                    backend_kind,
                ),
                steps: vec![succeeded(&m.saga_id, done)],
                consumed: Vec::new(),
            };
            let committer = Committer::new(db.clone());
            m.current_step = "await_shipment".into();
            m.status = SagaState::Waiting;
            let waiting = save(&m, "buy_label");
            assert!(committer.commit(waiting.duplicate()).await.unwrap());
            m.version += 1;
            m.current_step = "commit_stock".into();
            m.status = SagaState::Running;
            let shipped = save(&m, "await_shipment");
            assert!(committer.commit(shipped.duplicate()).await.unwrap());
            assert!(
                !committer.commit(waiting).await.unwrap(),
                "{}: an older save applied over a newer one",
                backend.name()
            );
            assert!(
                !committer.commit(shipped).await.unwrap(),
                "{}: a save applied twice",
                backend.name()
            );
            let row = saga::Entity::find_by_id("v1")
                .one(&db)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (row.current_step.as_str(), row.status, row.version),
                ("commit_stock", SagaState::Running, 2),
                "{}",
                backend.name()
            );
            assert_eq!(step::Entity::find().count(&db).await.unwrap(), 2);
            db.close().await.unwrap();
        }
    }

    /// 60 sagas saved at once through one committer, on a real SQLite file and PostgreSQL:
    /// the 50 whose lease is ours are written with their timeline, the 10 another replica
    /// holds write nothing, and a save that cannot be written fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saves_share_transactions_and_each_is_judged_alone() {
        for backend in testing::backends() {
            let (db, _dir) = orchestrator_db(&backend).await;
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
