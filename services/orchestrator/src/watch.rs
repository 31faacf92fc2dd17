//! Who is told when a saga changes: the engine announces each commit of a saga, with the row it
//! committed, by the saga's id and its order's id, and the `WatchSaga` streams waiting on
//! either key wake at once and send that row without reading it back. Only the watchers of
//! that saga wake (no broadcast to every stream), so a thousand open watches cost nothing to
//! sagas nobody watches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use erp_proto::orchestrator::WatchSagaResponse;
use erp_runtime::ApiError;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::store::{SagaState, saga, step};

/// How often a watch re-reads the saga when nothing was announced: the changes other
/// replicas commit reach its watchers within this.
const REREAD: Duration = Duration::from_secs(1);

/// The registry of open watches, shared by the engine and the API of one replica.
#[derive(Clone, Default)]
pub struct Changes {
    watchers: Arc<Mutex<HashMap<String, Vec<Weak<Slot>>>>>,
}

/// What one watcher is told: that something changed, and the newest row committed.
#[derive(Default)]
struct Slot {
    notify: Notify,
    latest: Mutex<Option<saga::Model>>,
}

/// One open watch of a key; unregistered when dropped.
pub struct Subscription {
    changes: Changes,
    key: String,
    notify: Arc<Slot>,
}

impl Subscription {
    /// Resolves at the next change announced for the key (or at once when one was announced
    /// since the last wait).
    pub async fn changed(&self) {
        self.notify.notify.notified().await;
    }

    /// The newest row announced since the last call, if any.
    pub fn latest(&self) -> Option<saga::Model> {
        self.notify.latest.lock().ok().and_then(|mut l| l.take())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut map) = self.changes.watchers.lock()
            && let Some(list) = map.get_mut(&self.key)
        {
            list.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), &*self.notify));
            if list.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

impl Changes {
    /// Watches `key` (a saga id or an order id).
    pub fn subscribe(&self, key: &str) -> Subscription {
        let notify = Arc::new(Slot::default());
        if let Ok(mut map) = self.watchers.lock() {
            map.entry(key.to_owned())
                .or_default()
                .push(Arc::downgrade(&notify));
        }
        Subscription {
            changes: self.clone(),
            key: key.to_owned(),
            notify,
        }
    }

    /// Tells the watchers of the saga (by its id and by its order's) that it committed `m`.
    pub fn announce(&self, m: &saga::Model) {
        let Ok(map) = self.watchers.lock() else {
            return;
        };
        if map.is_empty() {
            return;
        }
        for key in [&m.saga_id, &m.order_id] {
            for slot in map.get(key.as_str()).into_iter().flatten() {
                if let Some(slot) = slot.upgrade() {
                    if let Ok(mut latest) = slot.latest.lock() {
                        *latest = Some(m.clone());
                    }
                    slot.notify.notify_one();
                }
            }
        }
    }

    /// Open watches, for tests.
    pub fn watched_keys(&self) -> usize {
        self.watchers.lock().map_or(0, |m| m.len())
    }
}

/// What a watch is given: exactly one of the two ids.
pub struct Watch {
    pub saga_id: String,
    pub order_id: String,
    pub with_timeline: bool,
}

/// Feeds `tx` with the saga's state at once and after every change until it ends, the caller
/// hangs up, or the service stops.
pub async fn stream(
    db: DatabaseConnection,
    changes: Changes,
    shutdown: CancellationToken,
    watch: Watch,
    tx: mpsc::Sender<Result<WatchSagaResponse, tonic::Status>>,
) {
    let by_saga = !watch.saga_id.is_empty();
    let sub = changes.subscribe(if by_saga {
        &watch.saga_id
    } else {
        &watch.order_id
    });
    let mut last: Option<(SagaState, i32, String, i32, i64)> = None;
    let mut announced = None;
    loop {
        // The row this replica just committed, or the database's (first, and after a quiet
        // second for what other replicas did).
        let found = match announced.take() {
            Some(m) => Ok(Some(m)),
            None if by_saga => {
                saga::Entity::find()
                    .filter(saga::Column::SagaId.eq(&watch.saga_id))
                    .one(&db)
                    .await
            }
            None => {
                saga::Entity::find()
                    .filter(saga::Column::OrderId.eq(&watch.order_id))
                    .one(&db)
                    .await
            }
        };
        match found {
            Err(e) => {
                let _ = tx.send(Err(ApiError::from(e).into())).await;
                return;
            }
            Ok(None) if by_saga => {
                let _ = tx
                    .send(Err(
                        ApiError::not_found(format!("saga {}", watch.saga_id)).into()
                    ))
                    .await;
                return;
            }
            // The order's saga is not created yet: its first commit is announced.
            Ok(None) => {}
            Ok(Some(m)) => {
                let seen = (
                    m.status,
                    m.step_index,
                    m.current_step.clone(),
                    m.attempts,
                    m.updated_at_ms,
                );
                let finished = m.status.is_final();
                if last.as_ref() != Some(&seen) {
                    let steps = if watch.with_timeline {
                        match step::Entity::find()
                            .filter(step::Column::SagaId.eq(&m.saga_id))
                            .order_by_asc(step::Column::Seq)
                            .all(&db)
                            .await
                        {
                            Ok(steps) => steps,
                            Err(e) => {
                                let _ = tx.send(Err(ApiError::from(e).into())).await;
                                return;
                            }
                        }
                    } else {
                        Vec::new()
                    };
                    let saga = crate::api::to_wire(m, steps);
                    if tx
                        .send(Ok(WatchSagaResponse { saga: Some(saga) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last = Some(seen);
                }
                if finished {
                    return;
                }
            }
        }
        tokio::select! {
            () = sub.changed() => announced = sub.latest(),
            () = tokio::time::sleep(REREAD) => {}
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_watchers_of_a_saga_wake_and_dropped_watches_leave_nothing() {
        let changes = Changes::default();
        let a = changes.subscribe("saga-a");
        let by_order = changes.subscribe("order-a");
        let b = changes.subscribe("saga-b");
        changes.announce(&saga::Model {
            saga_id: "saga-a".into(),
            order_id: "order-a".into(),
            definition: String::new(),
            definition_version: 3,
            status: SagaState::Running,
            current_step: "route".into(),
            attempts: 1,
            last_error: String::new(),
            traceparent: String::new(),
            lease_owner: String::new(),
            lease_until_ms: 0,
            next_attempt_at_ms: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            data: String::new(),
            step_index: 2,
            resume_status: String::new(),
            parked_reason: String::new(),
            suggested_action: String::new(),
            waiting_skus: String::new(),
            version: 0,
        });
        // Both keys of saga a hold a wake-up; b's does not.
        tokio::time::timeout(std::time::Duration::from_millis(100), a.changed())
            .await
            .unwrap();
        assert_eq!(a.latest().unwrap().current_step, "route");
        assert!(a.latest().is_none(), "taken once");
        tokio::time::timeout(std::time::Duration::from_millis(100), by_order.changed())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b.changed())
                .await
                .is_err()
        );
        assert_eq!(changes.watched_keys(), 3);
        drop((a, by_order, b));
        assert_eq!(changes.watched_keys(), 0);
    }
}
