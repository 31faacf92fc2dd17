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
    QueryOrder, QuerySelect, TransactionTrait,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::definition::{self, Step};
use crate::participants::{Carton, Ctx, OrderSnapshot, Participants, StepError, Writeoff};
use crate::store::{saga, signal, step};

/// How often a backordered saga tries to route again when nothing woke it: stock arriving
/// (`inventory.stock_changed`) wakes it at once; the recheck catches what no event announces
/// (a routing rule change, a warehouse back online).
const BACKORDER_RECHECK_MS: i64 = 30_000;

/// Statuses a worker drives.
pub const ACTIVE: [&str; 4] = ["pending", "running", "waiting", "compensating"];

pub struct Engine {
    pub db: DatabaseConnection,
    pub participants: Participants,
    pub replica: String,
    pub settings: OrchestratorSettings,
    pub wake: Arc<Notify>,
    running: Mutex<HashSet<String>>,
    permits: Arc<Semaphore>,
    /// Every saga run is tracked, so a stopped orchestrator has no call left in flight.
    tasks: TaskTracker,
    /// Runs stop between steps once this is cancelled; the next owner resumes from the log.
    shutdown: CancellationToken,
    last_report: std::sync::atomic::AtomicI64,
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
        Self {
            db,
            participants,
            replica: format!("replica-{}", uuid::Uuid::now_v7()),
            settings,
            wake,
            running: Mutex::new(HashSet::new()),
            permits: Arc::new(Semaphore::new(64)),
            tasks,
            shutdown,
            last_report: std::sync::atomic::AtomicI64::new(0),
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
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
        let db_now = erp_runtime::db::clock_ms(&self.db).await?;
        // Half the round trip is the best guess of when the database read its clock.
        let offset = db_now - (local + erp_runtime::time::now_ms()) / 2;
        self.clock_offset_ms
            .store(offset, std::sync::atomic::Ordering::Relaxed);
        self.report_statuses(db_now).await;
        let mut ids: Vec<String> = saga::Entity::find()
            .filter(crate::store::due_condition(&self.db, &self.replica))
            .order_by_asc(saga::Column::NextAttemptAtMs)
            .limit(64)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| m.saga_id)
            .collect();
        // A signal (shipment confirmed, cancel, pause) makes a saga due at once.
        let signalled: Vec<String> = signal::Entity::find()
            .filter(signal::Column::Consumed.eq(false))
            .order_by_asc(signal::Column::Seq)
            .limit(64)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|s| s.saga_id)
            .collect();
        ids.extend(signalled);
        ids.sort();
        ids.dedup();
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
            if !self.claim(&id).await? {
                continue;
            }
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                break;
            };
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
        for status in [
            "pending",
            "running",
            "waiting",
            "compensating",
            "completed",
            "compensated",
            "parked",
            "paused",
        ] {
            if let Ok(n) = sea_orm::PaginatorTrait::count(
                saga::Entity::find().filter(saga::Column::Status.eq(status)),
                &self.db,
            )
            .await
            {
                metrics::gauge!("sagas", "status" => status).set(n as f64);
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
        let r = saga::Entity::update_many()
            .col_expr(saga::Column::LeaseOwner, Expr::value(self.replica.clone()))
            .col_expr(saga::Column::LeaseUntilMs, self.clock_plus(self.lease_ms()))
            .filter(saga::Column::SagaId.eq(saga_id))
            .filter(self.lease_free())
            .exec(&self.db)
            .await?;
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
        let now = self.now();
        let txn = self.db.begin().await?;
        let m = &st.m;
        let r = saga::Entity::update_many()
            .col_expr(saga::Column::Status, Expr::value(m.status.clone()))
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
            .col_expr(
                saga::Column::Data,
                Expr::value(serde_json::to_string(&st.ctx)?),
            )
            .col_expr(
                saga::Column::WaitingSkus,
                Expr::value(m.waiting_skus.clone()),
            )
            .col_expr(saga::Column::UpdatedAtMs, crate::store::clock(&self.db))
            .col_expr(saga::Column::LeaseUntilMs, self.clock_plus(self.lease_ms()))
            .filter(saga::Column::SagaId.eq(m.saga_id.as_str()))
            .filter(saga::Column::LeaseOwner.eq(self.replica.as_str()))
            .exec(&txn)
            .await?;
        if r.rows_affected != 1 {
            tracing::warn!(saga_id = %m.saga_id, replica = %self.replica, "lease lost; another replica owns this saga now");
            return Ok(false);
        }
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
        for entry in entries {
            step::ActiveModel {
                saga_id: Set(m.saga_id.clone()),
                step: Set(entry.step.to_owned()),
                direction: Set(entry.direction.to_owned()),
                outcome: Set(entry.outcome.to_owned()),
                attempt: Set(m.attempts.max(1)),
                detail: Set(entry.detail),
                recorded_at_ms: Set(now),
                ..Default::default()
            }
            .insert(&txn)
            .await?;
        }
        if !consumed.is_empty() {
            signal::Entity::update_many()
                .col_expr(signal::Column::Consumed, Expr::value(true))
                .filter(signal::Column::Seq.is_in(consumed.iter().copied()))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        if !consumed.is_empty() {
            failpoint::hit(&["saga", "signal", "after_consume"]).await;
        } else if let Some((step, direction)) = point {
            failpoint::hit(&["saga", direction, step, "after_commit"]).await;
        }
        Ok(true)
    }

    /// A participant call, bounded by the step's timeout, between its two crash points.
    async fn call(
        &self,
        path: &'static str,
        step: &'static str,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<(), StepError>>,
    ) -> Result<(), StepError> {
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
            .col_expr(saga::Column::ResumeStatus, Expr::value(m.status.clone()))
            .col_expr(saga::Column::Status, Expr::value("parked"))
            .col_expr(saga::Column::ParkedReason, Expr::value(detail.clone()))
            .col_expr(
                saga::Column::SuggestedAction,
                Expr::value("repair the saga's data column from its timeline, then RetrySaga"),
            )
            .col_expr(saga::Column::UpdatedAtMs, crate::store::clock(&self.db))
            .filter(saga::Column::SagaId.eq(m.saga_id.as_str()))
            .filter(saga::Column::LeaseOwner.eq(self.replica.as_str()))
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

    fn park(st: &mut State, reason: &str, detail: &str, action: &str) -> Option<Log> {
        st.m.resume_status = st.m.status.clone();
        st.m.status = "parked".into();
        st.m.parked_reason = format!("{reason}: {detail}");
        st.m.suggested_action = action.to_owned();
        log(
            "saga",
            "forward",
            "rejected",
            format!("parked: {reason}: {detail}"),
        )
    }

    fn start_compensation(st: &mut State, from: i64, reason: &str, detail: &str) {
        if st.ctx.failure_reason.is_empty() {
            st.ctx.failure_reason = reason.to_owned();
            st.ctx.failure_detail = detail.to_owned();
        }
        st.m.status = "compensating".into();
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
                "UNKNOWN_DEFINITION",
                &detail,
                "run a replica that knows this definition version",
            );
            self.save(&mut st, entry, &[]).await?;
            return Ok(());
        };
        let pivot = definition::pivot(steps) as i32;
        loop {
            if self.shutdown.is_cancelled() {
                // Everything done so far is committed; another replica (or this one restarted)
                // continues from the log once the lease is released.
                return Ok(());
            }
            st.now = self.now();
            // Signals first: they may pause, cancel, or release the wait for shipment.
            let stored = signal::Entity::find()
                .filter(signal::Column::SagaId.eq(st.m.saga_id.as_str()))
                .filter(signal::Column::Consumed.eq(false))
                .order_by_asc(signal::Column::Seq)
                .all(&self.db)
                .await?;
            // Held signals come back once the saga knows its fulfillment.
            let replay = if st.ctx.fulfillment_id.is_empty() {
                Vec::new()
            } else {
                std::mem::take(&mut st.ctx.early_signals)
            };
            let pending: Vec<(String, String)> = replay
                .into_iter()
                .chain(stored.iter().map(|s| (s.signal.clone(), s.payload.clone())))
                .collect();
            if !pending.is_empty() {
                let consumed: Vec<i64> = stored.iter().map(|s| s.seq).collect();
                let mut notes = Vec::new();
                let mut pause = false;
                for (name, payload) in &pending {
                    if let Some(note) = hold_early(&mut st, name, payload) {
                        notes.push(note);
                        continue;
                    }
                    let s = Pending {
                        signal: name,
                        payload,
                    };
                    match s.signal {
                        "SHIPPED" => {
                            // A late or repeated confirmation of an earlier shipment (or of a
                            // fulfillment undone by a re-route) does not ship this one.
                            let p: serde_json::Value =
                                serde_json::from_str(s.payload).unwrap_or_default();
                            match p["fulfillment_id"].as_str() {
                                Some(f) if f != st.ctx.fulfillment_id || f.is_empty() => {
                                    notes.push(format!(
                                        "ship confirmation of fulfillment {f} ignored: not the current one"
                                    ));
                                }
                                None => notes.push(
                                    "ship confirmation naming no fulfillment ignored".to_owned(),
                                ),
                                Some(_) => {
                                    st.ctx.shipped = true;
                                    notes.push("shipment confirmed by the warehouse".to_owned());
                                }
                            }
                        }
                        "CANCEL" if st.ctx.parts && !cancelled_lines(s.payload).is_empty() => {
                            notes.push(self.on_line_cancel(&mut st, s.payload, pivot));
                        }
                        "CANCEL" => {
                            // A customer's cancel applies to a paused or parked saga too (the
                            // pause is operational; the cancel is a business fact).
                            if undoable(&st.m) && st.m.step_index < pivot {
                                let reason = if s.payload.contains("ORDER_CANCELLED") {
                                    "ORDER_CANCELLED"
                                } else {
                                    "CANCELLED_BY_OPERATOR"
                                };
                                // The step in flight may or may not have happened: undo it too.
                                let from = i64::from(st.m.step_index).min(i64::from(pivot) - 1);
                                Self::start_compensation(&mut st, from, reason, s.payload);
                                notes.push(format!("cancelled ({reason}), compensating"));
                            } else {
                                notes.push(
                                    "cancel ignored: past the pivot or already compensating"
                                        .to_owned(),
                                );
                            }
                        }
                        "PACKED" => {
                            let p: serde_json::Value =
                                serde_json::from_str(s.payload).unwrap_or_default();
                            let f = p["fulfillment_id"].as_str().unwrap_or_default();
                            if f == st.ctx.fulfillment_id && !st.ctx.rerouting {
                                let carton = Carton {
                                    weight_grams: p["weight_grams"].as_i64().unwrap_or(0),
                                    length_mm: p["length_mm"].as_i64().unwrap_or(0),
                                    width_mm: p["width_mm"].as_i64().unwrap_or(0),
                                    height_mm: p["height_mm"].as_i64().unwrap_or(0),
                                };
                                notes.push(format!(
                                    "packed: {} g, {}x{}x{} mm",
                                    carton.weight_grams,
                                    carton.length_mm,
                                    carton.width_mm,
                                    carton.height_mm
                                ));
                                st.ctx.packed = true;
                                st.ctx.parcel = Some(carton);
                            } else {
                                notes.push(format!(
                                    "pack of fulfillment {f} ignored: not the current one"
                                ));
                            }
                        }
                        "EXCEPTION" => {
                            notes.push(self.on_exception(&mut st, s.payload, pivot));
                        }
                        "SITE_OFFLINE" => {
                            notes.push(self.on_site_offline(&mut st, s.payload, pivot));
                        }
                        "REPLAN" => {
                            // New routing rules: a backordered saga asks them at once.
                            st.ctx.stock_seen.clear();
                            if st.m.status == "waiting" && st.ctx.backordered {
                                st.m.next_attempt_at_ms = st.now;
                            }
                            notes.push(format!("{}: planning again", s.payload));
                        }
                        "PAUSE" => pause = true,
                        other => notes.push(format!("unknown signal {other} ignored")),
                    }
                }
                // What the signals release commits with their consumption, in one transaction:
                // a wait they complete moves on, and an active saga is due at once, so no crash
                // between this commit and the next can leave a consumed signal without effect.
                let mut entries: Vec<Log> = log("signal", "forward", "signalled", notes.join("; "))
                    .into_iter()
                    .collect();
                if pause && ACTIVE.contains(&st.m.status.as_str()) {
                    st.m.resume_status = st.m.status.clone();
                    st.m.status = "paused".into();
                    entries[0].detail.push_str("; paused by an operator");
                } else {
                    entries.extend(finish_wait(&mut st, steps));
                }
                if ACTIVE.contains(&st.m.status.as_str()) && st.m.status != "waiting" {
                    st.m.next_attempt_at_ms = st.m.next_attempt_at_ms.min(st.now);
                }
                failpoint::hit(&["saga", "signal", "before_consume"]).await;
                if consumed.is_empty() {
                    // Only replayed signals: their effect commits like any other state.
                    if !self.save(&mut st, entries, &[]).await? {
                        return Ok(());
                    }
                } else if !self.save(&mut st, entries, &consumed).await? {
                    return Ok(());
                }
            }
            match st.m.status.as_str() {
                "pending" | "running" | "waiting" if st.ctx.rerouting => {
                    if !self.reroute_step(&mut st, steps).await? {
                        return Ok(());
                    }
                }
                "pending" | "running" | "waiting" => {
                    if !self.forward_step(&mut st, steps, pivot).await? {
                        return Ok(());
                    }
                }
                "compensating" => {
                    if !self.compensate_step(&mut st, steps).await? {
                        return Ok(());
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Schedules the next attempt of `step` after a backoff with jitter.
    async fn retry_later(
        &self,
        st: &mut State,
        step: Step,
        direction: &'static str,
        error: &str,
    ) -> anyhow::Result<bool> {
        let delay = definition::backoff(st.m.attempts - 1, rand::random::<f64>());
        st.m.next_attempt_at_ms = self.now() + i64::try_from(delay.as_millis()).unwrap_or(30_000);
        let detail = format!("{error}; retry in {} ms", delay.as_millis());
        self.save(
            st,
            log(step.name(), direction, "retryable_failure", detail),
            &[],
        )
        .await?;
        Ok(false)
    }

    /// Runs the next forward step. Returns whether to keep going now.
    async fn forward_step(
        &self,
        st: &mut State,
        steps: &[Step],
        pivot: i32,
    ) -> anyhow::Result<bool> {
        let i = st.m.step_index;
        let Some(&step) = usize::try_from(i).ok().and_then(|i| steps.get(i)) else {
            st.m.status = "completed".into();
            st.m.current_step = "done".into();
            self.save(st, log("saga", "forward", "succeeded", "completed"), &[])
                .await?;
            tracing::info!(saga_id = %st.m.saga_id, "saga completed");
            return Ok(false);
        };
        st.m.current_step = step.name().to_owned();
        let now = self.now();
        st.now = now;
        if step.is_wait() {
            // Normally the signal's commit completed the wait already; this catches what a
            // signal recorded before the saga reached the wait (its state says so).
            if let Some(entry) = finish_wait(st, steps) {
                return self.save(st, Some(entry), &[]).await;
            }
            let waiting_for = if step == Step::AwaitPack {
                "waiting for the packer's carton"
            } else {
                "waiting for the warehouse's ship confirmation"
            };
            // One deadline for the warehouse's whole job, packing and shipping.
            if st.ctx.ship_deadline_ms == 0 {
                st.ctx.ship_deadline_ms =
                    now + i64::try_from(self.settings.ship_deadline_ms).unwrap_or(i64::MAX / 4);
            }
            if now >= st.ctx.ship_deadline_ms {
                let entry = Self::park(
                    st,
                    "SHIP_DEADLINE_PASSED",
                    &format!("{waiting_for}: nothing before the deadline"),
                    if step == Step::AwaitPack {
                        "check the fulfillment at the warehouse (pick and pack it), then RetrySaga, or CancelSaga"
                    } else {
                        "check the fulfillment at the warehouse, then SignalSaga SHIPPED, or CancelSaga"
                    },
                );
                self.save(st, entry, &[]).await?;
                return Ok(false);
            }
            let newly = st.m.status != "waiting";
            st.m.status = "waiting".into();
            st.m.next_attempt_at_ms = st.ctx.ship_deadline_ms;
            let entry = if newly {
                log(step.name(), "forward", "started", waiting_for)
            } else {
                None
            };
            if self.save(st, entry, &[]).await? {
                failpoint::hit(&["saga", "forward", step.name(), "waiting"]).await;
            }
            return Ok(false);
        }
        let policy = step.policy();
        st.m.status = "running".into();
        st.m.attempts += 1;
        // A backordered saga routes again every few seconds: one timeline entry says so, not
        // one per check.
        let entry = if st.ctx.backordered {
            None
        } else {
            log(step.name(), "forward", "started", "")
        };
        if !self.save(st, entry, &[]).await? {
            return Ok(false);
        }
        let result = self
            .call(
                "forward",
                step.name(),
                policy.timeout,
                self.participants
                    .forward(step, &st.m.saga_id, &mut st.ctx, policy.timeout),
            )
            .await;
        match result {
            Ok(()) if step == Step::NextShipment && st.ctx.more_to_ship => {
                // Another shipment: plan it from the routing step with fresh keys.
                let route = steps
                    .iter()
                    .position(|s| *s == Step::Route)
                    .and_then(|i| i32::try_from(i).ok())
                    .unwrap_or(0);
                st.ctx.more_to_ship = false;
                st.ctx.round += 1;
                clear_shipment(&mut st.ctx);
                st.m.step_index = route;
                st.m.attempts = 0;
                st.m.last_error.clear();
                st.m.next_attempt_at_ms = st.now;
                let detail = format!(
                    "shipment {} done; planning shipment {} for what is left",
                    st.ctx.shipments.len(),
                    st.ctx.shipments.len() + 1
                );
                self.save(st, log(step.name(), "forward", "succeeded", detail), &[])
                    .await
            }
            Ok(()) => {
                st.m.step_index += 1;
                st.ctx.backordered = false;
                st.ctx.completed = st.ctx.completed.max(st.m.step_index);
                st.m.attempts = 0;
                st.m.last_error.clear();
                st.m.next_attempt_at_ms = st.now;
                let detail = summary(step, &st.ctx);
                self.save(st, log(step.name(), "forward", "succeeded", detail), &[])
                    .await
            }
            Err(StepError::Transient(e)) => {
                st.m.last_error = e.clone();
                if st.m.attempts >= policy.max_attempts {
                    if i < pivot {
                        // The last attempt may have happened: undo this step too.
                        Self::start_compensation(
                            st,
                            i64::from(i),
                            "RETRIES_EXHAUSTED",
                            &format!("{}: {e}", step.name()),
                        );
                        let detail =
                            format!("giving up after {} attempts: {e}", policy.max_attempts);
                        return self
                            .save(
                                st,
                                log(step.name(), "forward", "retryable_failure", detail),
                                &[],
                            )
                            .await;
                    }
                    let entry = Self::park(
                        st,
                        "RETRIES_EXHAUSTED",
                        &format!("{} after the pivot: {e}", step.name()),
                        "bring the participant back, then RetrySaga (the saga only moves forward from here)",
                    );
                    self.save(st, entry, &[]).await?;
                    return Ok(false);
                }
                self.retry_later(st, step, "forward", &e).await
            }
            Err(StepError::Rejected { reason, detail })
                if step == Step::Route
                    && reason == "INSUFFICIENT_STOCK"
                    && (st.ctx.round > 0 || st.ctx.parts) =>
            {
                self.backordered(st, &detail).await
            }
            Err(StepError::Rejected { reason, detail })
                if step == Step::ReserveStock
                    && reason == "INSUFFICIENT_STOCK"
                    && st.ctx.parts
                    && !st.ctx.rerouting =>
            {
                // Another order took the stock between routing and reserving: plan this
                // shipment again (v3) rather than give the order up.
                Self::begin_reroute(st, pivot);
                let text = format!("{reason}: {detail}; taken meanwhile, planning again");
                self.save(st, log(step.name(), "forward", "rejected", text), &[])
                    .await
            }
            Err(StepError::Rejected { reason, detail })
                if step == Step::Route && reason == "NOTHING_TO_SHIP" =>
            {
                st.ctx.backordered = false;
                if st.ctx.shipments.is_empty() {
                    // Every line was cancelled before anything shipped.
                    Self::start_compensation(
                        st,
                        i64::from(i) - 1,
                        "ORDER_CANCELLED",
                        "every line was cancelled",
                    );
                } else {
                    // The rest was cancelled after a shipment: close the order's payment.
                    st.m.step_index = i32::try_from(steps.len()).unwrap_or(i32::MAX) - 1;
                    st.m.attempts = 0;
                    st.m.next_attempt_at_ms = st.now;
                }
                self.save(st, log(step.name(), "forward", "succeeded", detail), &[])
                    .await
            }
            Err(StepError::Rejected { reason, detail }) => {
                st.m.last_error = format!("{reason}: {detail}");
                if i < pivot {
                    Self::start_compensation(st, i64::from(i) - 1, &reason, &detail);
                    let text = format!("{reason}: {detail}");
                    return self
                        .save(st, log(step.name(), "forward", "rejected", text), &[])
                        .await;
                }
                let entry = Self::park(
                    st,
                    &reason,
                    &detail,
                    "fix the cause at the participant, then RetrySaga (no compensation after the pivot)",
                );
                self.save(st, entry, &[]).await?;
                Ok(false)
            }
        }
    }

    /// A stock exception reported by the warehouse (could not locate, damaged, short pick).
    /// Before the pivot it starts a re-route: the warehouse's units are written off, the
    /// site-bound steps undone, and the order routed again without that site. Returns the note
    /// for the timeline.
    fn on_exception(&self, st: &mut State, payload: &str, pivot: i32) -> String {
        let p: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let text = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
        let (reason, site, sku) = (text("reason"), text("site"), text("sku"));
        let quantity = p["quantity"].as_i64().unwrap_or(0);
        let what = format!("{reason}: {quantity} x {sku} at {site}");
        if reason == "carton_problem" {
            return format!("{what}; waiting for the fulfillment to be packed again");
        }
        if text("fulfillment_id") != st.ctx.fulfillment_id {
            return format!(
                "{what} on fulfillment {} ignored: not the current one (count the site)",
                text("fulfillment_id")
            );
        }
        let forward = undoable(&st.m);
        if !forward || st.m.step_index >= pivot {
            return format!(
                "{what} ignored: the saga is {} at step {}",
                st.m.status, st.m.current_step
            );
        }
        st.ctx.writeoffs.push(Writeoff {
            site: site.clone(),
            sku,
            quantity,
            damaged: reason == "damaged",
            exception_id: text("exception_id"),
        });
        if !st.ctx.excluded_sites.contains(&site) {
            st.ctx.excluded_sites.push(site);
        }
        Self::begin_reroute(st, pivot);
        format!("{what}; re-routing without that site")
    }

    /// The warehouse of the shipment in progress went offline before picking it: undo the
    /// shipment and route again (routing skips offline sites). Nothing is written off: the
    /// stock is still there, only out of reach. Returns the note for the timeline.
    fn on_site_offline(&self, st: &mut State, payload: &str, pivot: i32) -> String {
        let p: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let site = p["site"].as_str().unwrap_or_default();
        let f = p["fulfillment_id"].as_str().unwrap_or_default();
        if f != st.ctx.fulfillment_id {
            return format!("site {site} offline: fulfillment {f} is not the current one");
        }
        if !undoable(&st.m) || st.m.step_index >= pivot {
            return format!(
                "site {site} offline ignored: the saga is {} at step {}",
                st.m.status, st.m.current_step
            );
        }
        Self::begin_reroute(st, pivot);
        format!("site {site} went offline before picking: re-routing")
    }

    /// Starts undoing the shipment in progress (its site-bound steps) to plan again.
    fn begin_reroute(st: &mut State, pivot: i32) {
        if st.ctx.rerouting {
            return;
        }
        st.ctx.rerouting = true;
        // Undo from the step the saga stands at (a wait, or a call that may have happened).
        st.m.step_index = st.m.step_index.min(pivot - 1);
        st.m.attempts = 0;
        if matches!(st.m.status.as_str(), "waiting" | "paused" | "parked") {
            st.m.status = "running".into();
        }
        st.m.next_attempt_at_ms = st.now;
    }

    /// v3: the customer cancelled some lines. Units no shipment held are cancelled by the
    /// order service already; a shipment in progress that holds a cancelled line is stopped
    /// before its pivot (undone, the lines cancelled, the rest planned again), and ships as is
    /// after it. Returns the note for the timeline.
    fn on_line_cancel(&self, st: &mut State, payload: &str, pivot: i32) -> String {
        let p: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let ids = |k: &str| -> Vec<String> {
            p[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let lines = ids("line_ids");
        let pending = ids("pending_line_ids");
        let held: Vec<String> = pending
            .into_iter()
            .filter(|l| st.ctx.batch.iter().any(|b| &b.line_id == l))
            .collect();
        let forward = undoable(&st.m);
        if held.is_empty() {
            // A backordered saga looks again now: what it waits for may be gone.
            if forward && st.m.status == "waiting" && st.ctx.backordered {
                st.m.next_attempt_at_ms = st.now;
            }
            return format!(
                "line(s) {} cancelled; the shipment in progress holds none of them",
                lines.join(", ")
            );
        }
        if !forward {
            return format!(
                "line(s) {} cancelled while the saga is {}: its compensation cancels what is left",
                held.join(", "),
                st.m.status
            );
        }
        if st.m.step_index >= pivot {
            return format!(
                "cancellation of line(s) {} refused: their shipment is past its pivot and ships",
                held.join(", ")
            );
        }
        for l in &held {
            if !st.ctx.cancel_lines.contains(l) {
                st.ctx.cancel_lines.push(l.clone());
            }
        }
        Self::begin_reroute(st, pivot);
        format!(
            "line(s) {} cancelled: stopping the shipment from {} to plan the rest again",
            held.join(", "),
            st.ctx.location
        )
    }

    /// One move of a re-route: undo the next site-bound step going down, and once at the
    /// route step, write the exception's units off and route again in a new round.
    async fn reroute_step(&self, st: &mut State, steps: &[Step]) -> anyhow::Result<bool> {
        let route = steps
            .iter()
            .position(|s| *s == Step::Route)
            .and_then(|i| i32::try_from(i).ok())
            .unwrap_or(0);
        let policy = Step::ReserveStock.policy();
        if st.m.step_index > route {
            let Some(&step) = usize::try_from(st.m.step_index)
                .ok()
                .and_then(|i| steps.get(i))
            else {
                st.m.step_index -= 1;
                return Ok(true);
            };
            if !step.site_bound() {
                st.m.step_index -= 1;
                return Ok(true);
            }
            st.m.current_step = step.name().to_owned();
            st.m.status = "running".into();
            st.m.attempts += 1;
            let result = self
                .call(
                    "reroute",
                    step.name(),
                    policy.timeout,
                    self.participants
                        .compensate(step, &st.m.saga_id, &st.ctx, policy.timeout),
                )
                .await;
            return match result {
                Ok(()) => {
                    st.m.step_index -= 1;
                    st.m.attempts = 0;
                    st.m.last_error.clear();
                    self.save(
                        st,
                        log(
                            step.name(),
                            "compensate",
                            "succeeded",
                            "undone for a re-route",
                        ),
                        &[],
                    )
                    .await
                }
                Err(StepError::Transient(e)) => {
                    st.m.last_error = e.clone();
                    self.retry_later(st, step, "compensate", &e).await
                }
                Err(StepError::Rejected { reason, detail }) => {
                    let entry = Self::park(
                        st,
                        "REROUTE_FAILED",
                        &format!("{}: {reason}: {detail}", step.name()),
                        "undo the step by hand at the participant, then RetrySaga",
                    );
                    self.save(st, entry, &[]).await?;
                    Ok(false)
                }
            };
        }
        // The hold on the units is released: write off what the warehouse could not ship.
        let mut notes = Vec::new();
        for (i, w) in st.ctx.writeoffs.clone().iter().enumerate() {
            match self
                .call(
                    "reroute",
                    "write_off",
                    policy.timeout,
                    self.participants
                        .write_off(&st.m.saga_id, st.ctx.round, i, w, policy.timeout),
                )
                .await
            {
                Ok(()) => notes.push(format!(
                    "{} x {} at {} {}",
                    w.quantity,
                    w.sku,
                    w.site,
                    if w.damaged {
                        "quarantined"
                    } else {
                        "written off"
                    }
                )),
                Err(StepError::Transient(e)) => {
                    st.m.attempts += 1;
                    st.m.last_error = e.clone();
                    return self.retry_later(st, Step::Route, "forward", &e).await;
                }
                // Stock already moved by someone else (a cycle count): nothing to write off.
                Err(StepError::Rejected { reason, detail }) => notes.push(format!(
                    "{} x {} at {} not written off ({reason}: {detail}); count the site",
                    w.quantity, w.sku, w.site
                )),
            }
        }
        if !st.ctx.cancel_lines.is_empty() {
            match self
                .call(
                    "reroute",
                    "cancel_lines",
                    policy.timeout,
                    self.participants
                        .cancel_lines(&st.m.saga_id, &st.ctx, policy.timeout),
                )
                .await
            {
                Ok(()) => notes.push(format!(
                    "line(s) {} cancelled on the order",
                    st.ctx.cancel_lines.join(", ")
                )),
                Err(StepError::Transient(e)) | Err(StepError::Rejected { detail: e, .. }) => {
                    st.m.attempts += 1;
                    st.m.last_error = e.clone();
                    return self.retry_later(st, Step::Route, "forward", &e).await;
                }
            }
        }
        let c = &mut st.ctx;
        c.round += 1;
        c.rerouting = false;
        c.writeoffs.clear();
        c.cancel_lines.clear();
        clear_shipment(c);
        let detail = format!(
            "re-route {}{}{}{}",
            c.round,
            if c.excluded_sites.is_empty() {
                String::new()
            } else {
                format!(" without {}", c.excluded_sites.join(", "))
            },
            if notes.is_empty() { "" } else { "; " },
            notes.join("; ")
        );
        st.m.step_index = route;
        st.m.status = "running".into();
        st.m.attempts = 0;
        st.m.next_attempt_at_ms = st.now;
        self.save(st, log("route", "forward", "started", detail), &[])
            .await
    }

    /// No other warehouse can ship the order after a stock exception: its lines are recorded
    /// as backordered and routing is tried again until stock arrives (or someone cancels).
    async fn backordered(&self, st: &mut State, detail: &str) -> anyhow::Result<bool> {
        let first = !st.ctx.backordered;
        if first {
            let policy = Step::RecordAllocation.policy();
            match self
                .call(
                    "backorder",
                    "record",
                    policy.timeout,
                    self.participants
                        .backorder(&st.m.saga_id, &st.ctx, policy.timeout),
                )
                .await
            {
                Ok(()) => st.ctx.backordered = true,
                Err(StepError::Transient(e)) => {
                    st.m.last_error = e.clone();
                    return self.retry_later(st, Step::Route, "forward", &e).await;
                }
                Err(StepError::Rejected { reason, detail }) => {
                    // The order was closed meanwhile (cancelled): undo the rest.
                    Self::start_compensation(st, i64::from(st.m.step_index), &reason, &detail);
                    return self
                        .save(
                            st,
                            log(
                                "route",
                                "forward",
                                "rejected",
                                format!("{reason}: {detail}"),
                            ),
                            &[],
                        )
                        .await;
                }
            }
        }
        st.m.status = "waiting".into();
        st.m.attempts = 0;
        st.m.last_error = format!("BACKORDERED: {detail}");
        // Stock events for these SKUs wake it (v3 knows what is still needed; else all lines).
        let order = st.ctx.order.as_ref();
        let mut skus: Vec<String> = order
            .map(|o| {
                o.lines
                    .iter()
                    .filter(|l| {
                        st.ctx.remaining.is_empty()
                            || st.ctx.remaining.iter().any(|r| r.line_id == l.line_id)
                    })
                    .map(|l| l.sku.clone())
                    .collect()
            })
            .unwrap_or_default();
        skus.sort();
        skus.dedup();
        st.m.waiting_skus = if skus.is_empty() {
            String::new()
        } else {
            format!("|{}|", skus.join("|"))
        };
        st.m.next_attempt_at_ms = st.now + BACKORDER_RECHECK_MS;
        let entry = if first {
            log(
                "route",
                "forward",
                "started",
                format!(
                    "backordered: {detail}; routing again when stock arrives (and every {} s)",
                    BACKORDER_RECHECK_MS / 1000
                ),
            )
        } else {
            None
        };
        if self.save(st, entry, &[]).await? && first {
            failpoint::hit(&["saga", "backorder", "record", "after_commit"]).await;
        }
        Ok(false)
    }

    /// Undoes the step at `step_index` and moves down. Returns whether to keep going now.
    async fn compensate_step(&self, st: &mut State, steps: &[Step]) -> anyhow::Result<bool> {
        let Some(&step) = usize::try_from(st.m.step_index)
            .ok()
            .and_then(|i| steps.get(i))
        else {
            st.m.status = "compensated".into();
            st.m.current_step = "done".into();
            // What the saga shows as its outcome: why it was undone.
            st.m.last_error = format!("{}: {}", st.ctx.failure_reason, st.ctx.failure_detail);
            let detail = format!(
                "compensated: {} {}",
                st.ctx.failure_reason, st.ctx.failure_detail
            );
            self.save(st, log("saga", "compensate", "succeeded", detail), &[])
                .await?;
            tracing::info!(saga_id = %st.m.saga_id, reason = %st.ctx.failure_reason, "saga compensated");
            return Ok(false);
        };
        if !step.compensable() {
            st.m.step_index -= 1;
            return Ok(true);
        }
        let policy = step.policy();
        st.m.current_step = step.name().to_owned();
        st.m.attempts += 1;
        if !self
            .save(st, log(step.name(), "compensate", "started", ""), &[])
            .await?
        {
            return Ok(false);
        }
        let result = self
            .call(
                "compensate",
                step.name(),
                policy.timeout,
                self.participants
                    .compensate(step, &st.m.saga_id, &st.ctx, policy.timeout),
            )
            .await;
        match result {
            Ok(()) => {
                st.m.step_index -= 1;
                st.m.attempts = 0;
                st.m.last_error.clear();
                self.save(st, log(step.name(), "compensate", "succeeded", ""), &[])
                    .await
            }
            Err(StepError::Transient(e)) => {
                st.m.last_error = e.clone();
                if st.m.attempts >= policy.max_attempts * 3 {
                    let entry = Self::park(
                        st,
                        "COMPENSATION_FAILED",
                        &format!("{}: {e}", step.name()),
                        "bring the participant back, then RetrySaga to finish compensating",
                    );
                    self.save(st, entry, &[]).await?;
                    return Ok(false);
                }
                self.retry_later(st, step, "compensate", &e).await
            }
            Err(StepError::Rejected { reason, detail }) => {
                let entry = Self::park(
                    st,
                    "COMPENSATION_REJECTED",
                    &format!("{}: {reason}: {detail}", step.name()),
                    "undo the step by hand at the participant, then RetrySaga",
                );
                self.save(st, entry, &[]).await?;
                Ok(false)
            }
        }
    }
}

/// Every crash point of the engine and of the orchestrator's event consumers that the saga paths
/// of the released fulfillment definition pass, by name (see [`erp_runtime::failpoint`]). The
/// crash-point test dies at each one; it fails when a run passes a point missing here, or when
/// a point listed here is never reached.
pub fn crash_points() -> Vec<String> {
    let mut out: Vec<String> = [
        "saga.claim.after_commit",
        "saga.signal.before_consume",
        "saga.signal.after_consume",
        // The saga's last commit, forward (completed) and undone (compensated).
        "saga.forward.saga.after_commit",
        "saga.compensate.saga.after_commit",
        // A re-route: the warehouse's units written off, then routing again.
        "saga.reroute.write_off.before_call",
        "saga.reroute.write_off.after_call",
        // A cancelled line: its shipment is undone, the line cancelled on the order.
        "saga.reroute.cancel_lines.before_call",
        "saga.reroute.cancel_lines.after_call",
        "saga.forward.route.after_commit",
        // Nothing left in stock: the lines are backordered and the saga waits.
        "saga.backorder.record.before_call",
        "saga.backorder.record.after_call",
        "saga.backorder.record.after_commit",
        "consumer.order_accepted.before_commit",
        "consumer.order_accepted.after_commit",
        "consumer.participant_event.before_commit",
        "consumer.participant_event.after_commit",
        "consumer.stock_changed.after_commit",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for step in definition::steps("fulfillment", crate::FULFILLMENT_VERSION).unwrap_or_default() {
        out.extend(step_crash_points(*step));
    }
    out.sort();
    out.dedup();
    out
}

/// The crash points of one step: around its participant call (or, for a wait, around the
/// commit that completes it), and around its compensation and re-route undo where it has them.
pub fn step_crash_points(step: Step) -> Vec<String> {
    let name = step.name();
    let mut out = Vec::new();
    if step.is_wait() {
        // A wait ends in the commit that consumes its signal.
        out.push(format!("saga.forward.{name}.waiting"));
        out.push("saga.signal.before_consume".to_owned());
        out.push("saga.signal.after_consume".to_owned());
    } else {
        for phase in ["before_call", "after_call", "after_commit"] {
            out.push(format!("saga.forward.{name}.{phase}"));
        }
    }
    if step.compensable() {
        for phase in ["before_call", "after_call", "after_commit"] {
            out.push(format!("saga.compensate.{name}.{phase}"));
        }
    }
    if step.site_bound() {
        for phase in ["before_call", "after_call"] {
            out.push(format!("saga.reroute.{name}.{phase}"));
        }
    }
    out
}

/// A signal being applied: its name and JSON payload.
struct Pending<'a> {
    signal: &'a str,
    payload: &'a str,
}

/// Holds a warehouse signal that names a fulfillment while the saga has recorded none for its
/// shipment yet (it is moving forward towards or at `create_fulfillment`): the fulfillment it
/// names may be the one the saga created just before its replica died. Returns the timeline
/// note when held.
fn hold_early(st: &mut State, name: &str, payload: &str) -> Option<String> {
    if !matches!(name, "PACKED" | "EXCEPTION" | "SITE_OFFLINE")
        || !st.ctx.fulfillment_id.is_empty()
        || st.ctx.rerouting
        || !matches!(st.m.status.as_str(), "pending" | "running")
    {
        return None;
    }
    let p: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
    let f = p["fulfillment_id"].as_str().unwrap_or_default();
    if f.is_empty() {
        return None;
    }
    st.ctx
        .early_signals
        .push((name.to_owned(), payload.to_owned()));
    Some(format!(
        "{name} of fulfillment {f} held until the saga records its fulfillment"
    ))
}

/// Completes the wait the saga stands at when what it waits for happened (the carton is packed,
/// the shipment confirmed): the next step is due at once. None while it still waits, or when the
/// saga is not moving forward at a wait.
fn finish_wait(st: &mut State, steps: &[Step]) -> Option<Log> {
    if !matches!(st.m.status.as_str(), "pending" | "running" | "waiting") || st.ctx.rerouting {
        return None;
    }
    let step = *usize::try_from(st.m.step_index)
        .ok()
        .and_then(|i| steps.get(i))?;
    let (done, detail) = match step {
        Step::AwaitPack => (st.ctx.packed, "packed".to_owned()),
        Step::AwaitShipment => (
            st.ctx.shipped,
            format!("shipped, tracking {}", st.ctx.tracking_number),
        ),
        _ => return None,
    };
    if !done {
        return None;
    }
    st.m.current_step = step.name().to_owned();
    st.m.status = "running".into();
    st.m.step_index += 1;
    st.m.attempts = 0;
    st.m.next_attempt_at_ms = st.now;
    // The next wait has a deadline of its own.
    st.ctx.ship_deadline_ms = 0;
    log(step.name(), "forward", "succeeded", detail)
}

/// A participant call that gives up (as a transient failure) after the step's timeout.
async fn bounded(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<(), StepError>>,
) -> Result<(), StepError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(StepError::Transient(format!(
                "no answer within {timeout:?}"
            )))
        })
}

/// What a step learned, for the timeline.
fn summary(step: Step, ctx: &Ctx) -> String {
    match step {
        Step::Route if ctx.parts => {
            let list = |p: &mut dyn Iterator<Item = (String, i64)>| {
                p.map(|(l, q)| format!("{l} x{q}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut text = format!(
                "shipment {} from {}: {}",
                ctx.shipments.len() + 1,
                ctx.location,
                list(&mut ctx.batch.iter().map(|l| (l.sku.clone(), l.quantity)))
            );
            if !ctx.short.is_empty() {
                text.push_str("; backordered: ");
                text.push_str(&list(
                    &mut ctx.short.iter().map(|p| (p.line_id.clone(), p.quantity)),
                ));
            }
            text
        }
        Step::Route => format!("ship from {}", ctx.location),
        Step::ReserveStock => format!("{} reservation(s)", ctx.reservation_ids.len()),
        Step::AuthorizePayment if !ctx.replaced_payment.is_empty() => format!(
            "payment {}: re-authorized before the authorization expired (payment {} released)",
            ctx.payment_id, ctx.replaced_payment
        ),
        Step::AuthorizePayment => format!("payment {}", ctx.payment_id),
        Step::CreateFulfillment => format!("fulfillment {}", ctx.fulfillment_id),
        Step::QuoteLabel => format!("{} {}", ctx.carrier, ctx.service),
        Step::BuyLabel => format!(
            "tracking {} cost {}",
            ctx.tracking_number, ctx.label_cost_minor
        ),
        Step::PostJournal => format!("journal entry {}", ctx.journal_entry_id),
        _ => String::new(),
    }
}

/// Forgets the warehouse-bound facts of the shipment in progress (after a re-route, or once it
/// shipped), so that the next plan starts clean.
fn clear_shipment(c: &mut Ctx) {
    c.location.clear();
    // Held signals name a fulfillment of the shipment being forgotten.
    c.early_signals.clear();
    c.origin_postal.clear();
    c.reservation_ids.clear();
    c.fulfillment_id.clear();
    c.carrier.clear();
    c.service.clear();
    c.shipment_id.clear();
    c.tracking_number.clear();
    c.label_cost_minor = 0;
    c.packed = false;
    c.parcel = None;
    c.shipped = false;
    c.ship_deadline_ms = 0;
    c.journal_entry_id.clear();
    c.batch.clear();
    c.short.clear();
}

/// The line ids a CANCEL signal names (empty: the whole order, or an operator's cancel).
fn cancelled_lines(payload: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|p| {
            p["line_ids"].as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Whether a cancellation or a stock exception can still undo the saga's work: it moves
/// forward, or an operator paused or parked it while it moved forward (not while compensating).
fn undoable(m: &saga::Model) -> bool {
    match m.status.as_str() {
        "pending" | "running" | "waiting" => true,
        "paused" | "parked" => m.resume_status != "compensating",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_of_every_released_definition_has_crash_points() {
        let points = crash_points();
        for version in 1..=crate::FULFILLMENT_VERSION {
            for step in definition::steps("fulfillment", version).unwrap_or_default() {
                let own = step_crash_points(*step);
                assert!(
                    own.len() >= 3,
                    "{} has {} crash points",
                    step.name(),
                    own.len()
                );
                if version == crate::FULFILLMENT_VERSION {
                    for p in &own {
                        assert!(points.contains(p), "{p} missing from crash_points()");
                    }
                }
            }
        }
        assert!(points.len() > 60, "{} crash points", points.len());
    }
}
