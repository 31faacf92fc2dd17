//! The named crash points the saga paths pass (see [`erp_runtime::failpoint`]).

use crate::definition::{self, Step};

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
