//! One move of a saga: the next forward step, or the next compensation going down, with its
//! retries, and what its outcome does to the saga.

use erp_runtime::failpoint;

use super::signals::finish_wait;
use super::{Engine, State, log};
use crate::definition::{self, Step};
use crate::outcome::{Outcome, Reason, StepError};
use crate::store::SagaState;

impl Engine {
    /// Schedules the next attempt of `step` after a backoff with jitter.
    pub(super) async fn retry_later(
        &self,
        st: &mut State,
        step: Step,
        direction: &'static str,
        error: &str,
    ) -> anyhow::Result<bool> {
        let delay = definition::backoff(
            st.m.attempts - 1,
            rand::random::<f64>(),
            step.policy().max_backoff,
        );
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
    pub(super) async fn forward_step(
        &self,
        st: &mut State,
        steps: &[Step],
        pivot: i32,
    ) -> anyhow::Result<bool> {
        let i = st.m.step_index;
        let Some(&step) = usize::try_from(i).ok().and_then(|i| steps.get(i)) else {
            st.m.status = SagaState::Completed;
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
            let fresh_deadline = st.ctx.ship_deadline_ms == 0;
            if fresh_deadline {
                st.ctx.ship_deadline_ms =
                    now + i64::try_from(self.settings.ship_deadline_ms).unwrap_or(i64::MAX / 4);
            }
            if now >= st.ctx.ship_deadline_ms {
                let entry = Self::park(
                    st,
                    &Reason::ShipDeadlinePassed,
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
            let newly = st.m.status != SagaState::Waiting;
            if !newly && !fresh_deadline && st.m.next_attempt_at_ms == st.ctx.ship_deadline_ms {
                // Already waiting, as stored (a run started for a signal that another run
                // consumed meanwhile): nothing to write, and nothing for watchers, who would
                // otherwise see the wait start a second time.
                return Ok(false);
            }
            st.m.status = SagaState::Waiting;
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
        if !(st.started && st.m.status == SagaState::Running && st.m.current_step == step.name()) {
            st.m.status = SagaState::Running;
            st.m.attempts += 1;
            // A backordered saga routes again every few seconds: one timeline entry says so,
            // not one per check.
            let entry = if st.ctx.backordered {
                None
            } else {
                log(step.name(), "forward", "started", "")
            };
            if !self.save(st, entry, &[]).await? {
                return Ok(false);
            }
        }
        let result = self
            .call(
                "forward",
                step.name(),
                policy.timeout,
                crate::steps::forward(
                    step,
                    &self.participants,
                    &st.m.saga_id,
                    &mut st.ctx,
                    policy.timeout,
                ),
            )
            .await;
        match result {
            Ok(Outcome::AnotherShipment) => {
                // Another shipment: plan it from the routing step with fresh keys.
                let route = steps
                    .iter()
                    .position(|s| *s == Step::Route)
                    .and_then(|i| i32::try_from(i).ok())
                    .unwrap_or(0);
                st.ctx.more_to_ship = false;
                st.ctx.round += 1;
                st.ctx.clear_shipment();
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
            Ok(Outcome::Next) => {
                st.m.step_index += 1;
                st.ctx.backordered = false;
                // No longer waiting for stock: stock events leave it alone.
                st.m.waiting_skus.clear();
                st.ctx.completed = st.ctx.completed.max(st.m.step_index);
                st.m.attempts = 0;
                st.m.last_error.clear();
                st.m.next_attempt_at_ms = st.now;
                let detail = crate::steps::summary(step, &st.ctx);
                let mut entries: Vec<_> = log(step.name(), "forward", "succeeded", detail)
                    .into_iter()
                    .collect();
                // The next step, when it is a call made at once, starts in this same commit:
                // one commit per step instead of two.
                let next = usize::try_from(st.m.step_index)
                    .ok()
                    .and_then(|n| steps.get(n))
                    .filter(|n| !n.is_wait());
                if let Some(next) = next {
                    st.m.current_step = next.name().to_owned();
                    st.m.attempts = 1;
                    entries.extend(log(next.name(), "forward", "started", ""));
                }
                let saved = self.save(st, entries, &[]).await?;
                st.started = saved && next.is_some();
                Ok(saved)
            }
            Ok(Outcome::Backordered(detail)) => self.backordered(st, &detail).await,
            Ok(Outcome::TakenMeanwhile(detail)) => {
                Self::begin_reroute(st, pivot);
                self.save(st, log(step.name(), "forward", "rejected", detail), &[])
                    .await
            }
            Ok(Outcome::NothingToShip(detail)) => {
                st.ctx.backordered = false;
                if st.ctx.shipments.is_empty() {
                    // Every line was cancelled before anything shipped.
                    Self::start_compensation(
                        st,
                        i64::from(i) - 1,
                        Reason::OrderCancelled,
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
            Err(StepError::Transient(e)) => {
                st.m.last_error = e.clone();
                if st.m.attempts >= policy.max_attempts {
                    if i < pivot {
                        // The last attempt may have happened: undo this step too.
                        Self::start_compensation(
                            st,
                            i64::from(i),
                            Reason::RetriesExhausted,
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
                        &Reason::RetriesExhausted,
                        &format!("{} after the pivot: {e}", step.name()),
                        "bring the participant back, then RetrySaga (the saga only moves forward from here)",
                    );
                    self.save(st, entry, &[]).await?;
                    return Ok(false);
                }
                self.retry_later(st, step, "forward", &e).await
            }
            Err(StepError::Rejected { reason, detail }) => {
                st.m.last_error = format!("{reason}: {detail}");
                if i < pivot {
                    let text = format!("{reason}: {detail}");
                    Self::start_compensation(st, i64::from(i) - 1, reason, &detail);
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

    /// Undoes the step at `step_index` and moves down. Returns whether to keep going now.
    pub(super) async fn compensate_step(
        &self,
        st: &mut State,
        steps: &[Step],
    ) -> anyhow::Result<bool> {
        let Some(&step) = usize::try_from(st.m.step_index)
            .ok()
            .and_then(|i| steps.get(i))
        else {
            st.m.status = SagaState::Compensated;
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
                crate::steps::compensate(
                    step,
                    &self.participants,
                    &st.m.saga_id,
                    &st.ctx,
                    policy.timeout,
                ),
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
                        &Reason::CompensationFailed,
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
                    &Reason::CompensationRejected,
                    &format!("{}: {reason}: {detail}", step.name()),
                    "undo the step by hand at the participant, then RetrySaga",
                );
                self.save(st, entry, &[]).await?;
                Ok(false)
            }
        }
    }
}
