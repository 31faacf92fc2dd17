//! Signals: what the warehouse, the customer and operators tell a running saga (packed,
//! shipped, a stock exception, a site offline, cancel, pause, replan), and how each changes it.
//! A signal's effect commits with its consumption, in one transaction.

use erp_runtime::failpoint;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{Engine, Log, State, log};
use crate::ctx::{Carton, Writeoff};
use crate::definition::{Signal, Step};
use crate::outcome::Reason;
use crate::store::{SagaState, saga, signal};

impl Engine {
    /// Applies the saga's unconsumed signals (and those held until it knew its fulfillment),
    /// committing their effect with their consumption. Returns false when the lease was lost.
    pub(super) async fn apply_signals(
        &self,
        st: &mut State,
        steps: &[Step],
        pivot: i32,
    ) -> anyhow::Result<bool> {
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
                if let Some(note) = hold_early(st, name, payload) {
                    notes.push(note);
                    continue;
                }
                let s = Pending {
                    signal: name,
                    payload,
                };
                let Some(signal) = Signal::parse(s.signal) else {
                    notes.push(format!("unknown signal {} ignored", s.signal));
                    continue;
                };
                match signal {
                    Signal::Shipped => {
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
                            None => notes
                                .push("ship confirmation naming no fulfillment ignored".to_owned()),
                            Some(_) => {
                                st.ctx.shipped = true;
                                notes.push("shipment confirmed by the warehouse".to_owned());
                            }
                        }
                    }
                    Signal::Cancel if st.ctx.parts && !cancelled_lines(s.payload).is_empty() => {
                        notes.push(self.on_line_cancel(st, s.payload, pivot));
                    }
                    Signal::Cancel => {
                        // A customer's cancel applies to a paused or parked saga too (the
                        // pause is operational; the cancel is a business fact).
                        if undoable(&st.m) && st.m.step_index < pivot {
                            let reason = if s.payload.contains(Reason::OrderCancelled.as_str()) {
                                Reason::OrderCancelled
                            } else {
                                Reason::CancelledByOperator
                            };
                            // The step in flight may or may not have happened: undo it too.
                            let from = i64::from(st.m.step_index).min(i64::from(pivot) - 1);
                            notes.push(format!("cancelled ({reason}), compensating"));
                            Self::start_compensation(st, from, reason, s.payload);
                        } else {
                            notes.push(
                                "cancel ignored: past the pivot or already compensating".to_owned(),
                            );
                        }
                    }
                    Signal::Packed => {
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
                    Signal::Exception => {
                        notes.push(self.on_exception(st, s.payload, pivot));
                    }
                    Signal::SiteOffline => {
                        notes.push(self.on_site_offline(st, s.payload, pivot));
                    }
                    Signal::Replan => {
                        // New routing rules: a backordered saga asks them at once.
                        st.ctx.stock_seen.clear();
                        if st.m.status == SagaState::Waiting && st.ctx.backordered {
                            st.m.next_attempt_at_ms = st.now;
                        }
                        notes.push(format!("{}: planning again", s.payload));
                    }
                    Signal::Pause => pause = true,
                }
            }
            // What the signals release commits with their consumption, in one transaction:
            // a wait they complete moves on, and an active saga is due at once, so no crash
            // between this commit and the next can leave a consumed signal without effect.
            let mut entries: Vec<Log> = log("signal", "forward", "signalled", notes.join("; "))
                .into_iter()
                .collect();
            if pause && st.m.status.is_active() {
                st.m.resume_status = st.m.status.name().to_owned();
                st.m.status = SagaState::Paused;
                entries[0].detail.push_str("; paused by an operator");
            } else {
                entries.extend(finish_wait(st, steps));
            }
            if st.m.status.is_active() && st.m.status != SagaState::Waiting {
                st.m.next_attempt_at_ms = st.m.next_attempt_at_ms.min(st.now);
            }
            failpoint::hit(&["saga", "signal", "before_consume"]).await;
            if consumed.is_empty() {
                // Only replayed signals: their effect commits like any other state.
                if !self.save(st, entries, &[]).await? {
                    return Ok(false);
                }
            } else if !self.save(st, entries, &consumed).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A stock exception reported by the warehouse (could not locate, damaged, short pick).
    /// Before the pivot it starts a re-route: the warehouse's units are written off, the
    /// site-bound steps undone, and the order routed again without that site. Returns the note
    /// for the timeline.
    pub(super) fn on_exception(&self, st: &mut State, payload: &str, pivot: i32) -> String {
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
    pub(super) fn on_site_offline(&self, st: &mut State, payload: &str, pivot: i32) -> String {
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
    pub(super) fn begin_reroute(st: &mut State, pivot: i32) {
        if st.ctx.rerouting {
            return;
        }
        st.ctx.rerouting = true;
        // Undo from the step the saga stands at (a wait, or a call that may have happened).
        st.m.step_index = st.m.step_index.min(pivot - 1);
        st.m.attempts = 0;
        if st.m.status == SagaState::Waiting || st.m.status.is_stopped() {
            st.m.status = SagaState::Running;
        }
        st.m.next_attempt_at_ms = st.now;
    }

    /// v3: the customer cancelled some lines. Units no shipment held are cancelled by the
    /// order service already; a shipment in progress that holds a cancelled line is stopped
    /// before its pivot (undone, the lines cancelled, the rest planned again), and ships as is
    /// after it. Returns the note for the timeline.
    pub(super) fn on_line_cancel(&self, st: &mut State, payload: &str, pivot: i32) -> String {
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
            if forward && st.m.status == SagaState::Waiting && st.ctx.backordered {
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
pub(super) fn hold_early(st: &mut State, name: &str, payload: &str) -> Option<String> {
    if !Signal::parse(name).is_some_and(Signal::names_fulfillment)
        || !st.ctx.fulfillment_id.is_empty()
        || st.ctx.rerouting
        || !matches!(st.m.status, SagaState::Pending | SagaState::Running)
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
pub(super) fn finish_wait(st: &mut State, steps: &[Step]) -> Option<Log> {
    if !st.m.status.is_forward() || st.ctx.rerouting {
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
    st.m.status = SagaState::Running;
    st.m.step_index += 1;
    st.m.attempts = 0;
    st.m.next_attempt_at_ms = st.now;
    // The next wait has a deadline of its own.
    st.ctx.ship_deadline_ms = 0;
    log(step.name(), "forward", "succeeded", detail)
}

/// The line ids a CANCEL signal names (empty: the whole order, or an operator's cancel).
pub(super) fn cancelled_lines(payload: &str) -> Vec<String> {
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
pub(crate) fn undoable(m: &saga::Model) -> bool {
    if m.status.is_stopped() {
        m.resume_state() != Some(SagaState::Compensating)
    } else {
        m.status.is_forward()
    }
}
