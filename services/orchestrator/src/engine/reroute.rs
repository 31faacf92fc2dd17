//! Re-routing and backorders: undoing a shipment's site-bound steps to plan it again (after a
//! stock exception, a site going offline, a cancelled line), and waiting for stock when no
//! warehouse can ship.

use erp_runtime::failpoint;

use super::{Engine, State, log};
use crate::definition::Step;
use crate::outcome::{Reason, StepError};
use crate::store::SagaState;

/// How soon a backordered saga first tries to route again when nothing woke it: stock arriving
/// (`inventory.stock_changed`, the oldest waiting first), a site back online and new routing
/// rules wake it at once; the recheck catches what no event announces (stock arriving while
/// more orders wait than units arrived, an event lost). See [`backorder_recheck_ms`].
const BACKORDER_RECHECK_MS: i64 = 120_000;

/// The longest a backordered saga goes without routing again.
const BACKORDER_RECHECK_MAX_MS: i64 = 30 * 60_000;

/// The delay before the recheck after `checks` routings found nothing: doubling from 2 to
/// 30 minutes, spread by ±25% (`jitter` in 0..1), so that thousands of orders backordered in
/// one flash sale neither recheck together nor keep the engine busy rechecking what events
/// would announce anyway.
pub(super) fn backorder_recheck_ms(checks: u32, jitter: f64) -> i64 {
    let base = BACKORDER_RECHECK_MS
        .saturating_mul(1i64 << checks.min(10))
        .min(BACKORDER_RECHECK_MAX_MS) as f64;
    (base * (0.75 + 0.5 * jitter.clamp(0.0, 1.0))) as i64
}

impl Engine {
    /// One move of a re-route: undo the next site-bound step going down, and once at the
    /// route step, write the exception's units off and route again in a new round.
    pub(super) async fn reroute_step(
        &self,
        st: &mut State,
        steps: &[Step],
    ) -> anyhow::Result<bool> {
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
            st.m.status = SagaState::Running;
            st.m.attempts += 1;
            let result = self
                .call(
                    "reroute",
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
                        &Reason::RerouteFailed,
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
        c.clear_shipment();
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
        st.m.status = SagaState::Running;
        st.m.attempts = 0;
        st.m.next_attempt_at_ms = st.now;
        self.save(st, log("route", "forward", "started", detail), &[])
            .await
    }

    /// No other warehouse can ship the order after a stock exception: its lines are recorded
    /// as backordered and routing is tried again until stock arrives (or someone cancels).
    pub(super) async fn backordered(&self, st: &mut State, detail: &str) -> anyhow::Result<bool> {
        let first = !st.ctx.backordered;
        if first {
            let policy = Step::RecordAllocation.policy();
            match self
                .call(
                    "backorder",
                    "record",
                    policy.timeout,
                    crate::steps::record_allocation::backorder(
                        &self.participants,
                        &st.m.saga_id,
                        &st.ctx,
                        policy.timeout,
                    ),
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
                    let text = format!("{reason}: {detail}");
                    Self::start_compensation(st, i64::from(st.m.step_index), reason, &detail);
                    return self
                        .save(st, log("route", "forward", "rejected", text), &[])
                        .await;
                }
            }
        }
        st.m.status = SagaState::Waiting;
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
        st.m.next_attempt_at_ms = st.now
            + backorder_recheck_ms(st.ctx.route_checks.saturating_sub(1), rand::random::<f64>());
        let entry = if first {
            log(
                "route",
                "forward",
                "started",
                format!(
                    "backordered: {detail}; routing again when stock arrives (and after {} s, then less often)",
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
}

#[cfg(test)]
mod tests {
    use super::backorder_recheck_ms;

    #[test]
    fn rechecks_back_off_and_spread() {
        assert_eq!(backorder_recheck_ms(0, 0.5), 120_000);
        assert_eq!(backorder_recheck_ms(1, 0.5), 240_000);
        assert_eq!(backorder_recheck_ms(40, 0.5), 30 * 60_000);
        assert_eq!(backorder_recheck_ms(0, 0.0), 90_000);
        assert_eq!(backorder_recheck_ms(0, 1.0), 150_000);
    }
}
