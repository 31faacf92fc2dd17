//! The saga engine. Each replica polls for due sagas, claims one with a lease (a conditional
//! UPDATE, so two replicas never run the same saga), and drives it step by step. Every
//! transition is committed with its timeline entry before the next call, and only while the
//! lease is still ours (fencing), so a replica that lost its lease cannot overwrite the one that
//! took over. A killed replica's sagas are taken over when their lease expires: a saga whose
//! lease is held by nobody alive is due at once, whatever its wait's deadline says (the lease,
//! not the deadline, is what holds a running saga). Leases and due times are judged by the
//! database's clock, one clock for every replica.
//!
//! Every commit and every participant call passes named crash points
//! ([`erp_runtime::failpoint`], listed by [`crash_points`]); the crash-point test dies at each
//! of them and checks that the saga still ends exactly once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use erp_runtime::config::OrchestratorSettings;
use erp_runtime::failpoint;
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, TransactionTrait,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::ctx::{Ctx, OrderSnapshot};
use crate::definition;
use crate::outcome::{Reason, StepError};
use crate::participants::Participants;
use crate::store::{SagaState, saga, signal, step};

mod commit;
mod crash_points;
mod moves;
mod reroute;
pub(crate) mod signals;

pub use crash_points::{crash_points, step_crash_points};

pub struct Engine {
    pub db: DatabaseConnection,
    pub participants: Participants,
    pub replica: String,
    pub settings: OrchestratorSettings,
    pub wake: Arc<Notify>,
    /// Told of every committed change, for `WatchSaga` streams.
    pub changes: crate::watch::Changes,
    running: Mutex<HashSet<String>>,
    /// Running sagas with a signal recorded since their run last looked (seen by `tick`):
    /// a run reads its signals at its start and then only when flagged here, not before every
    /// step.
    signalled: Mutex<HashSet<String>>,
    /// Saves of many sagas share a transaction (see `commit`).
    committer: commit::Committer,
    permits: Arc<Semaphore>,
    /// A poll stopped for want of a permit: the next run to end wakes the poller.
    starved: std::sync::atomic::AtomicBool,
    /// Every saga run is tracked, so a stopped orchestrator has no call left in flight.
    tasks: TaskTracker,
    /// Runs stop between steps once this is cancelled; the next owner resumes from the log.
    shutdown: CancellationToken,
    last_report: std::sync::atomic::AtomicI64,
    /// This machine's clock when the database's clock was last read.
    clock_read_at: std::sync::atomic::AtomicI64,
    /// The database's clock minus this machine's, measured at every poll: due times written by
    /// this replica are on the database's clock, like the leases compared in SQL.
    clock_offset_ms: std::sync::atomic::AtomicI64,
}

/// One timeline entry.
struct Log {
    step: &'static str,
    direction: &'static str,
    outcome: &'static str,
    detail: String,
}

fn log(
    step: &'static str,
    direction: &'static str,
    outcome: &'static str,
    detail: impl Into<String>,
) -> Option<Log> {
    Some(Log {
        step,
        direction,
        outcome,
        detail: detail.into(),
    })
}

struct State {
    m: saga::Model,
    ctx: Ctx,
    /// The database's clock when the current move began (see [`Engine::now`]).
    now: i64,
    /// The last commit also started the step the saga stands at (its attempt is counted and
    /// its "started" entry written): the step is called without a commit of its own. Cleared
    /// by every other commit.
    started: bool,
}

impl Engine {
    pub fn new(
        db: DatabaseConnection,
        participants: Participants,
        settings: OrchestratorSettings,
        wake: Arc<Notify>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let running = settings.max_running_sagas.clamp(1, 4096);
        Self {
            committer: commit::Committer::new(db.clone()),
            db,
            participants,
            replica: format!("replica-{}", uuid::Uuid::now_v7()),
            settings,
            wake,
            changes: crate::watch::Changes::default(),
            running: Mutex::new(HashSet::new()),
            signalled: Mutex::new(HashSet::new()),
            permits: Arc::new(Semaphore::new(running as usize)),
            starved: std::sync::atomic::AtomicBool::new(false),
            tasks,
            shutdown,
            last_report: std::sync::atomic::AtomicI64::new(0),
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
            clock_read_at: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Polls until `shutdown`; woken early by new sagas and signals.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        let shutdown = self.shutdown.clone();
        self.tasks.clone().spawn(async move {
            let poll = Duration::from_millis(self.settings.poll_interval_ms);
            loop {
                if let Err(e) = self.tick(&shutdown).await {
                    tracing::warn!(replica = %self.replica, error = %format!("{e:#}"), "saga poll failed");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
        })
    }

    /// The database's clock plus `ms`, as an SQL expression.
    fn clock_plus(&self, ms: i64) -> Expr {
        Expr::cust(format!(
            "({} + {ms})",
            erp_runtime::db::clock_ms_sql(self.db.get_database_backend())
        ))
    }

    /// This replica's estimate of the database's clock (its own clock plus the offset measured
    /// at the last poll), for due times and deadlines written into the saga.
    fn now(&self) -> i64 {
        erp_runtime::time::now_ms()
            + self
                .clock_offset_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.lease_ms).unwrap_or(i64::MAX / 4)
    }

    /// Nobody alive holds the lease (it expired), or we hold it.
    fn lease_free(&self) -> Condition {
        crate::store::lease_free(&self.db, &self.replica)
    }

    async fn tick(self: &Arc<Self>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let local = erp_runtime::time::now_ms();
        // The database's clock, read at most once a second (clocks do not drift faster).
        let db_now = if local
            - self
                .clock_read_at
                .load(std::sync::atomic::Ordering::Relaxed)
            >= 1_000
        {
            let db_now = erp_runtime::db::clock_ms(&self.db).await?;
            // Half the round trip is the best guess of when the database read its clock.
            let offset = db_now - (local + erp_runtime::time::now_ms()) / 2;
            self.clock_offset_ms
                .store(offset, std::sync::atomic::Ordering::Relaxed);
            self.clock_read_at
                .store(local, std::sync::atomic::Ordering::Relaxed);
            db_now
        } else {
            self.now()
        };
        self.report_statuses(db_now).await;
        let limit = u64::from(self.settings.max_running_sagas.clamp(1, 4096));
        let mut ids = crate::store::due_sagas(&self.db, &self.replica, limit).await?;
        // A signal (shipment confirmed, cancel, pause) makes a saga due at once.
        let signalled: Vec<String> = signal::Entity::find()
            .select_only()
            .column(signal::Column::SagaId)
            .filter(signal::Column::Consumed.eq(false))
            .order_by_asc(signal::Column::Seq)
            .limit(limit)
            .into_tuple::<String>()
            .all(&self.db)
            .await?;
        {
            // A saga running here now reads its new signals before its next step.
            let running = self
                .running
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            let mut flagged = self
                .signalled
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            for id in signalled.iter().filter(|id| running.contains(*id)) {
                flagged.insert(id.clone());
            }
        }
        // Due order kept (earliest due first, then the signalled): when permits run out the
        // poll stops, and the next one starts again from the most overdue.
        ids.extend(signalled);
        let mut seen = HashSet::with_capacity(ids.len());
        ids.retain(|id| seen.insert(id.clone()));
        for id in ids {
            if shutdown.is_cancelled() {
                break;
            }
            {
                let running = self
                    .running
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                if running.contains(&id) {
                    continue;
                }
            }
            // A permit first, without waiting for one: a poll that waited here for runs to
            // end (with a saga claimed and not running) would stop claiming anything while
            // they last. A run that ends wakes the next poll when this one went without.
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.starved
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            };
            if !self.claim(&id).await? {
                continue;
            }
            self.running
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(id.clone());
            let engine = self.clone();
            self.tasks.spawn(async move {
                engine.run(&id).await;
                if let Ok(mut running) = engine.running.lock() {
                    running.remove(&id);
                }
                drop(permit);
                if engine
                    .starved
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    engine.wake.notify_one();
                }
            });
        }
        Ok(())
    }

    /// Sagas per status as a gauge, at most every five seconds.
    async fn report_statuses(&self, now: i64) {
        let last = self.last_report.load(std::sync::atomic::Ordering::Relaxed);
        if now - last < 5_000 {
            return;
        }
        self.last_report
            .store(now, std::sync::atomic::Ordering::Relaxed);
        for status in <SagaState as sea_orm::Iterable>::iter() {
            if let Ok(n) = sea_orm::PaginatorTrait::count(
                saga::Entity::find().filter(saga::Column::Status.eq(status)),
                &self.db,
            )
            .await
            {
                metrics::gauge!("sagas", "status" => status.name()).set(n as f64);
            }
        }
        if let Ok(n) = sea_orm::PaginatorTrait::count(
            saga::Entity::find().filter(crate::store::stalled_condition(
                &self.db,
                crate::api::STALLED_AFTER_MS,
            )),
            &self.db,
        )
        .await
        {
            metrics::gauge!("sagas_stalled").set(n as f64);
        }
    }

    /// Takes the lease of a saga that nobody holds (or that we hold). Any status: a paused,
    /// parked or finished saga is claimed only for its signals, which `drive` consumes (a
    /// customer's cancel applies to a paused saga; a late repeat of an event to a finished one
    /// is noted and dropped instead of staying in the signal queue for ever).
    async fn claim(&self, saga_id: &str) -> anyhow::Result<bool> {
        let mut update = saga::Entity::update_many()
            .col_expr(saga::Column::LeaseOwner, Expr::value(self.replica.clone()))
            .col_expr(saga::Column::LeaseUntilMs, self.clock_plus(self.lease_ms()))
            .filter(self.lease_free());
        if self.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            // A row being written right now (a save, a wake, an operator) is skipped, not
            // waited for: the poll goes on to the next saga and comes back to this one.
            let free = saga::Entity::find()
                .select_only()
                .column(saga::Column::SagaId)
                .filter(saga::Column::SagaId.eq(saga_id))
                // NO KEY UPDATE: does not conflict with the key-share locks that timeline and
                // signal inserts take through their foreign keys.
                .lock_with_behavior(
                    sea_orm::sea_query::LockType::NoKeyUpdate,
                    sea_orm::sea_query::LockBehavior::SkipLocked,
                )
                .as_query()
                .to_owned();
            update = update.filter(saga::Column::SagaId.in_subquery(free));
        } else {
            update = update.filter(saga::Column::SagaId.eq(saga_id));
        }
        let r = update.exec(&self.db).await?;
        if r.rows_affected == 1 {
            failpoint::hit(&["saga", "claim", "after_commit"]).await;
        }
        Ok(r.rows_affected == 1)
    }

    async fn release(&self, saga_id: &str) {
        let r = saga::Entity::update_many()
            .col_expr(saga::Column::LeaseOwner, Expr::value(""))
            .col_expr(saga::Column::LeaseUntilMs, Expr::value(0))
            .filter(saga::Column::SagaId.eq(saga_id))
            .filter(saga::Column::LeaseOwner.eq(self.replica.as_str()))
            .exec(&self.db)
            .await;
        if let Err(e) = r {
            tracing::warn!(saga_id, error = %e, "releasing the lease failed; it will expire");
        }
    }

    /// Commits the saga's new state and a timeline entry, only if we still hold the lease.
    async fn save(
        &self,
        st: &mut State,
        entries: impl IntoIterator<Item = Log>,
        consumed: &[i64],
    ) -> anyhow::Result<bool> {
        let entries: Vec<Log> = entries.into_iter().collect();
        st.started = false;
        let now = self.now();
        let m = &st.m;
        let update = commit::state_update(
            m,
            serde_json::to_string(&st.ctx)?,
            &self.replica,
            self.clock_plus(self.lease_ms()),
            self.db.get_database_backend(),
        );
        let steps = entries
            .iter()
            .map(|entry| step::ActiveModel {
                saga_id: Set(m.saga_id.clone()),
                step: Set(entry.step.to_owned()),
                direction: Set(entry.direction.to_owned()),
                outcome: Set(entry.outcome.to_owned()),
                attempt: Set(m.attempts.max(1)),
                detail: Set(entry.detail.clone()),
                recorded_at_ms: Set(now),
                ..Default::default()
            })
            .collect();
        let held = self
            .committer
            .commit(commit::Write {
                update,
                steps,
                consumed: consumed.to_vec(),
            })
            .await?;
        if !held {
            tracing::warn!(saga_id = %m.saga_id, replica = %self.replica, version = m.version, "saga not saved: another replica owns it now, or it changed since this run read it; the next run continues from what is stored");
            return Ok(false);
        }
        st.m.version += 1;
        // What this commit is, for its crash point: the first entry that is not a "started".
        let point = entries
            .iter()
            .find(|e| e.outcome != "started")
            .map(|e| (e.step, e.direction));
        for entry in &entries {
            metrics::counter!(
                "saga_steps_total",
                "step" => entry.step,
                "direction" => entry.direction,
                "outcome" => entry.outcome
            )
            .increment(1);
        }
        // Watchers get the row as committed (the clock the database wrote is estimated).
        st.m.updated_at_ms = now;
        self.changes.announce(&st.m);
        if !consumed.is_empty() {
            failpoint::hit(&["saga", "signal", "after_consume"]).await;
        } else if let Some((step, direction)) = point {
            failpoint::hit(&["saga", direction, step, "after_commit"]).await;
        }
        Ok(true)
    }

    /// A participant call, bounded by the step's timeout, between its two crash points.
    async fn call<T>(
        &self,
        path: &'static str,
        step: &'static str,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<T, StepError>>,
    ) -> Result<T, StepError> {
        failpoint::hit(&["saga", path, step, "before_call"]).await;
        let result = bounded(timeout, call).await;
        failpoint::hit(&["saga", path, step, "after_call"]).await;
        result
    }

    async fn run(&self, saga_id: &str) {
        let Ok(Some(m)) = saga::Entity::find_by_id(saga_id.to_owned())
            .one(&self.db)
            .await
        else {
            self.release(saga_id).await;
            return;
        };
        let span = tracing::info_span!("saga", saga_id = %m.saga_id, order_id = %m.order_id);
        erp_runtime::telemetry::adopt_traceparent(&span, &m.traceparent);
        if let Err(e) = self.drive(m).instrument(span).await {
            tracing::warn!(saga_id, error = %format!("{e:#}"), "saga run interrupted; it resumes on the next poll");
        }
        self.release(saga_id).await;
    }

    /// A saga whose stored context cannot be read is parked as it is, the context untouched for
    /// whoever investigates: starting again from an empty one would repeat its steps.
    async fn park_unreadable(&self, m: &saga::Model, error: &str) -> anyhow::Result<()> {
        let detail = format!("CORRUPT_CONTEXT: the saga's stored context cannot be read: {error}");
        let txn = self.db.begin().await?;
        let parked = saga::Entity::update_many()
            .col_expr(saga::Column::ResumeStatus, Expr::value(m.status))
            .col_expr(saga::Column::Status, Expr::value(SagaState::Parked))
            .col_expr(saga::Column::ParkedReason, Expr::value(detail.clone()))
            .col_expr(
                saga::Column::SuggestedAction,
                Expr::value("repair the saga's data column from its timeline, then RetrySaga"),
            )
            .col_expr(saga::Column::UpdatedAtMs, crate::store::clock(&self.db))
            .col_expr(saga::Column::Version, crate::store::next_version())
            .filter(saga::Column::SagaId.eq(m.saga_id.as_str()))
            .filter(saga::Column::LeaseOwner.eq(self.replica.as_str()))
            .filter(saga::Column::Version.eq(m.version))
            .exec(&txn)
            .await?;
        if parked.rows_affected == 1 {
            step::ActiveModel {
                saga_id: Set(m.saga_id.clone()),
                step: Set("saga".into()),
                direction: Set("forward".into()),
                outcome: Set("rejected".into()),
                attempt: Set(m.attempts.max(1)),
                detail: Set(format!("parked: {detail}")),
                recorded_at_ms: Set(self.now()),
                ..Default::default()
            }
            .insert(&txn)
            .await?;
        }
        txn.commit().await?;
        tracing::error!(saga_id = %m.saga_id, error, "saga context unreadable; parked");
        Ok(())
    }

    fn park(st: &mut State, reason: &Reason, detail: &str, action: &str) -> Option<Log> {
        st.m.resume_status = st.m.status.name().to_owned();
        st.m.status = SagaState::Parked;
        st.m.parked_reason = format!("{reason}: {detail}");
        st.m.suggested_action = action.to_owned();
        log(
            "saga",
            "forward",
            "rejected",
            format!("parked: {reason}: {detail}"),
        )
    }

    fn start_compensation(st: &mut State, from: i64, reason: Reason, detail: &str) {
        if st.ctx.failure_reason.is_empty() {
            st.ctx.failure_reason = reason.as_str().to_owned();
            st.ctx.failure_detail = detail.to_owned();
        }
        st.m.status = SagaState::Compensating;
        // After a re-route the saga stands before steps it completed in an earlier round (the
        // payment authorization): undo from the highest one ever completed.
        let from = from.max(i64::from(st.ctx.completed) - 1);
        st.ctx.rerouting = false;
        st.m.step_index = i32::try_from(from).unwrap_or(-1);
        st.m.attempts = 0;
        st.m.next_attempt_at_ms = st.now;
    }

    async fn drive(&self, m: saga::Model) -> anyhow::Result<()> {
        let mut ctx: Ctx = match serde_json::from_str(&m.data) {
            Ok(ctx) => ctx,
            Err(e) => return self.park_unreadable(&m, &e.to_string()).await,
        };
        ctx.parts = m.definition_version >= 3;
        let mut st = State {
            m,
            ctx,
            now: self.now(),
            started: false,
        };
        if st.ctx.order.is_none() {
            st.ctx.order = Some(OrderSnapshot {
                order_id: st.m.order_id.clone(),
                ..Default::default()
            });
        }
        let Some(steps) = definition::steps(&st.m.definition, st.m.definition_version) else {
            let detail = format!(
                "{} v{} is not known to this build",
                st.m.definition, st.m.definition_version
            );
            let entry = Self::park(
                &mut st,
                &Reason::UnknownDefinition,
                &detail,
                "run a replica that knows this definition version",
            );
            self.save(&mut st, entry, &[]).await?;
            return Ok(());
        };
        let pivot = definition::pivot(steps) as i32;
        let mut first = true;
        loop {
            if self.shutdown.is_cancelled() {
                // Everything done so far is committed; another replica (or this one restarted)
                // continues from the log once the lease is released.
                return Ok(());
            }
            st.now = self.now();
            // Signals first: they may pause, cancel, or release the wait for shipment. Read at
            // the run's start, when `tick` saw a new one, or to replay held ones.
            let flagged = self
                .signalled
                .lock()
                .map(|mut s| s.remove(&st.m.saga_id))
                .unwrap_or(true);
            let held = !st.ctx.early_signals.is_empty() && !st.ctx.fulfillment_id.is_empty();
            if (std::mem::take(&mut first) || flagged || held)
                && !self.apply_signals(&mut st, steps, pivot).await?
            {
                return Ok(());
            }
            match st.m.status {
                s if s.is_forward() && st.ctx.rerouting => {
                    if !self.reroute_step(&mut st, steps).await? {
                        return Ok(());
                    }
                }
                s if s.is_forward() => {
                    if !self.forward_step(&mut st, steps, pivot).await? {
                        return Ok(());
                    }
                }
                SagaState::Compensating => {
                    if !self.compensate_step(&mut st, steps).await? {
                        return Ok(());
                    }
                }
                _ => return Ok(()),
            }
        }
    }
}

/// A participant call that gives up (as a transient failure) after the step's timeout.
async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(StepError::Transient(format!(
                "no answer within {timeout:?}"
            )))
        })
}
