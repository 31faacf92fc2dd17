//! gRPC handlers of the orchestrator.

use erp_proto::orchestrator::orchestrator_service_server::OrchestratorService;
use erp_proto::orchestrator::*;
use erp_runtime::audit;
use erp_runtime::auth::Caller;
use erp_runtime::error::respond;
use erp_runtime::time::{now_ms, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use tokio::sync::Notify;

use crate::definition::Signal;
use crate::error::OrchestratorError;
use crate::store::{SagaState, saga, step};

/// How long a saga may be due without a replica taking it before it counts as stalled.
pub const STALLED_AFTER_MS: i64 = 10_000;

pub struct OrchestratorApi {
    db: DatabaseConnection,
    wake: Arc<Notify>,
    /// Asked whether a shipment an operator signals really happened.
    warehouse: erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient<
        erp_runtime::auth::PeerChannel,
    >,
    /// The replica's open watches, told of the engine's commits.
    changes: crate::watch::Changes,
    shutdown: tokio_util::sync::CancellationToken,
}

impl OrchestratorApi {
    pub fn new(
        db: DatabaseConnection,
        wake: Arc<Notify>,
        warehouse: erp_runtime::auth::PeerChannel,
    ) -> Self {
        Self {
            db,
            wake,
            warehouse: erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient::new(
                warehouse,
            ),
            changes: crate::watch::Changes::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Serves `WatchSaga` from `changes` (the engine's), its streams ending at `shutdown`.
    pub fn with_watches(
        mut self,
        changes: crate::watch::Changes,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        self.changes = changes;
        self.shutdown = shutdown;
        self
    }

    /// A SHIPPED signal from outside is a claim, not a fact: it must name a fulfillment of the
    /// saga's order that the warehouse has confirmed as shipped (the warehouse's own event is
    /// the normal path; this one is an operator's, after a missed deadline).
    async fn verify_shipped(&self, m: &saga::Model, payload_json: &str) -> ApiResult<()> {
        let payload: serde_json::Value = serde_json::from_str(payload_json).map_err(|_| {
            ApiError::invalid(
                "payload_json",
                "must be a JSON object naming fulfillment_id",
            )
        })?;
        let fulfillment_id = payload["fulfillment_id"].as_str().unwrap_or_default();
        if fulfillment_id.is_empty() {
            return Err(ApiError::invalid(
                "payload_json.fulfillment_id",
                "a ship confirmation names the fulfillment that shipped",
            ));
        }
        let f = self
            .warehouse
            .clone()
            .get_fulfillment(erp_proto::warehouse::GetFulfillmentRequest {
                fulfillment_id: fulfillment_id.to_owned(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound | tonic::Code::InvalidArgument => {
                    OrchestratorError::NotShipped(format!(
                        "the warehouse knows no fulfillment {fulfillment_id}"
                    ))
                    .into()
                }
                _ => ApiError::Upstream(status),
            })?
            .into_inner()
            .fulfillment
            .unwrap_or_default();
        if f.order_id != m.order_id {
            return Err(OrchestratorError::NotThisOrder {
                fulfillment: fulfillment_id.to_owned(),
                belongs_to: f.order_id,
                order: m.order_id.clone(),
            }
            .into());
        }
        if f.status != erp_proto::warehouse::FulfillmentStatus::Shipped as i32 {
            return Err(OrchestratorError::NotShipped(format!(
                "the warehouse has not confirmed the shipment of fulfillment {fulfillment_id}: it is {}",
                erp_proto::warehouse::FulfillmentStatus::try_from(f.status)
                    .map_or("unknown", |s| s.as_str_name())
            ))
            .into());
        }
        Ok(())
    }
}

fn status_to_wire(s: SagaState) -> SagaStatus {
    match s {
        SagaState::Pending => SagaStatus::Pending,
        SagaState::Running => SagaStatus::Running,
        SagaState::Waiting => SagaStatus::Waiting,
        SagaState::Compensating => SagaStatus::Compensating,
        SagaState::Completed => SagaStatus::Completed,
        SagaState::Compensated => SagaStatus::Compensated,
        SagaState::Parked => SagaStatus::Parked,
        SagaState::Paused => SagaStatus::Paused,
    }
}

fn status_from_wire(s: SagaStatus) -> Option<SagaState> {
    Some(match s {
        SagaStatus::Pending => SagaState::Pending,
        SagaStatus::Running => SagaState::Running,
        SagaStatus::Waiting => SagaState::Waiting,
        SagaStatus::Compensating => SagaState::Compensating,
        SagaStatus::Completed => SagaState::Completed,
        SagaStatus::Compensated => SagaState::Compensated,
        SagaStatus::Parked => SagaState::Parked,
        SagaStatus::Paused => SagaState::Paused,
        SagaStatus::Unspecified => return None,
    })
}

/// A request naming one saga: by its id or by its order's, not both.
fn one_saga(saga_id: &str, order_id: &str) -> ApiResult<()> {
    let mut v = Violations::new();
    v.check(
        saga_id.is_empty() != order_id.is_empty(),
        "saga_id",
        "give exactly one of saga_id and order_id",
    );
    if !saga_id.is_empty() {
        v.id("saga_id", saga_id);
    }
    if !order_id.is_empty() {
        v.id("order_id", order_id);
    }
    v.finish()
}

pub(crate) fn to_wire(m: saga::Model, steps: Vec<step::Model>) -> Saga {
    Saga {
        saga_id: m.saga_id,
        definition: m.definition,
        definition_version: m.definition_version,
        order_id: m.order_id,
        status: status_to_wire(m.status) as i32,
        current_step: m.current_step,
        attempts: m.attempts,
        last_error: m.last_error,
        timeline: steps
            .into_iter()
            .map(|s| SagaEvent {
                sequence: s.seq,
                step: s.step,
                direction: match s.direction.as_str() {
                    "forward" => StepDirection::Forward,
                    "compensate" => StepDirection::Compensate,
                    _ => StepDirection::Unspecified,
                } as i32,
                outcome: match s.outcome.as_str() {
                    "started" => StepOutcome::Started,
                    "succeeded" => StepOutcome::Succeeded,
                    "retryable_failure" => StepOutcome::RetryableFailure,
                    "rejected" => StepOutcome::Rejected,
                    "signalled" => StepOutcome::Signalled,
                    "operator" => StepOutcome::Operator,
                    _ => StepOutcome::Unspecified,
                } as i32,
                attempt: s.attempt,
                detail: s.detail,
                recorded_at: Some(to_timestamp(s.recorded_at_ms)),
            })
            .collect(),
        created_at: Some(to_timestamp(m.created_at_ms)),
        updated_at: Some(to_timestamp(m.updated_at_ms)),
        next_attempt_at: Some(to_timestamp(m.next_attempt_at_ms)),
        traceparent: m.traceparent,
    }
}

/// Who acted (the verified caller, never `action.operator`) and why (required on every
/// operator control).
fn operator(caller: &Caller, action: Option<&OperatorAction>) -> ApiResult<(String, String)> {
    let mut v = Violations::new();
    let a = action.cloned().unwrap_or_default();
    v.optional_text("action.operator", &a.operator, 100);
    v.text("action.reason", &a.reason, 500);
    v.finish()?;
    Ok((caller.subject.clone(), a.reason))
}

/// What the audit trail digests of a saga.
fn saga_state(m: &saga::Model) -> serde_json::Value {
    serde_json::json!({
        "status": m.status.name(),
        "current_step": m.current_step,
        "step_index": m.step_index,
        "attempts": m.attempts,
        "parked_reason": m.parked_reason,
    })
}

/// Appends the audit record of an operator action on saga `saga_id` inside `txn`, with the
/// saga's state before and as it is now in `txn`.
async fn audit_saga<C: sea_orm::ConnectionTrait>(
    txn: &C,
    caller: &Caller,
    before: &saga::Model,
    reason: &str,
) -> ApiResult<()> {
    let after = saga::Entity::find_by_id(before.saga_id.clone())
        .one(txn)
        .await?
        .map(|m| saga_state(&m));
    audit::record(
        txn,
        audit::Change {
            caller,
            target: format!("saga:{}", before.saga_id),
            reason,
            before: Some(saga_state(before)),
            after,
        },
    )
    .await?;
    Ok(())
}

impl OrchestratorApi {
    async fn saga_by_id(&self, saga_id: &str) -> ApiResult<saga::Model> {
        let mut v = Violations::new();
        v.id("saga_id", saga_id);
        v.finish()?;
        saga::Entity::find_by_id(saga_id.to_owned())
            .one(&self.db)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("saga {saga_id}")))
    }

    async fn wire(&self, saga_id: &str) -> ApiResult<Saga> {
        let m = self.saga_by_id(saga_id).await?;
        let steps = self.timeline(saga_id).await?;
        Ok(to_wire(m, steps))
    }

    async fn note<C: sea_orm::ConnectionTrait>(
        c: &C,
        saga_id: &str,
        detail: String,
    ) -> ApiResult<()> {
        step::ActiveModel {
            saga_id: Set(saga_id.to_owned()),
            step: Set("operator".into()),
            direction: Set("forward".into()),
            outcome: Set("operator".into()),
            attempt: Set(0),
            detail: Set(detail),
            recorded_at_ms: Set(now_ms()),
            ..Default::default()
        }
        .insert(c)
        .await?;
        Ok(())
    }

    async fn signal(
        &self,
        caller: &Caller,
        req: SignalSagaRequest,
    ) -> ApiResult<SignalSagaResponse> {
        let mut v = Violations::new();
        v.id("saga_id", &req.saga_id);
        v.check(
            Signal::parse(&req.signal) == Some(Signal::Shipped),
            "signal",
            "must be SHIPPED (cancel and pause have their own RPCs)",
        );
        v.idempotency_key(&req.idempotency_key);
        v.optional_text("payload_json", &req.payload_json, 4096);
        v.finish()?;
        let m = self.saga_by_id(&req.saga_id).await?;
        if m.status.is_final() {
            return Err(OrchestratorError::Finished {
                saga: m.saga_id,
                status: m.status,
            }
            .into());
        }
        self.verify_shipped(&m, &req.payload_json).await?;
        let txn = self.db.begin().await?;
        let inserted = crate::store::insert_signal(
            &txn,
            &req.saga_id,
            &req.signal,
            &req.payload_json,
            &format!("rpc:{}", req.idempotency_key),
        )
        .await?;
        // A repeated delivery (same key) adds nothing, and records nothing.
        if inserted {
            audit_saga(&txn, caller, &m, &format!("signal {}", req.signal)).await?;
        }
        txn.commit().await?;
        self.wake.notify_one();
        Ok(SignalSagaResponse {
            saga: Some(self.wire(&req.saga_id).await?),
        })
    }

    async fn pause(&self, caller: &Caller, req: PauseSagaRequest) -> ApiResult<PauseSagaResponse> {
        let (who, why) = operator(caller, req.action.as_ref())?;
        let m = self.saga_by_id(&req.saga_id).await?;
        if !m.status.is_active() {
            return Err(OrchestratorError::NotRunning {
                saga: m.saga_id,
                status: m.status,
            }
            .into());
        }
        let txn = self.db.begin().await?;
        let key = format!("pause:{}:{}", m.saga_id, now_ms());
        crate::store::insert_signal(&txn, &m.saga_id, Signal::Pause.as_str(), &why, &key).await?;
        Self::note(&txn, &m.saga_id, format!("pause requested by {who}: {why}")).await?;
        audit_saga(&txn, caller, &m, &why).await?;
        txn.commit().await?;
        self.wake.notify_one();
        Ok(PauseSagaResponse {
            saga: Some(self.wire(&req.saga_id).await?),
        })
    }

    /// Moves a saga from `from` back to the status it had, due now.
    async fn reactivate(
        &self,
        caller: &Caller,
        saga_id: &str,
        from: SagaState,
        why: &str,
        verb: &str,
    ) -> ApiResult<()> {
        let who = caller.subject.as_str();
        let m = self.saga_by_id(saga_id).await?;
        if m.status != from {
            return Err(OrchestratorError::NotIn {
                saga: saga_id.to_owned(),
                status: m.status,
                expected: from,
            }
            .into());
        }
        let back = m.resume_state().unwrap_or(SagaState::Running);
        let mut data: serde_json::Value = serde_json::from_str(&m.data).unwrap_or_default();
        if matches!(m.current_step.as_str(), "await_pack" | "await_shipment")
            && let Some(obj) = data.as_object_mut()
        {
            // A new deadline for the wait that expired.
            obj.insert("ship_deadline_ms".into(), 0.into());
        }
        let txn = self.db.begin().await?;
        let r = saga::Entity::update_many()
            .col_expr(saga::Column::Status, Expr::value(back))
            .col_expr(saga::Column::Attempts, Expr::value(0))
            .col_expr(saga::Column::NextAttemptAtMs, crate::store::clock(&txn))
            .col_expr(saga::Column::ParkedReason, Expr::value(""))
            .col_expr(saga::Column::SuggestedAction, Expr::value(""))
            .col_expr(saga::Column::Data, Expr::value(data.to_string()))
            .col_expr(saga::Column::UpdatedAtMs, Expr::value(now_ms()))
            .col_expr(saga::Column::Version, crate::store::next_version())
            .filter(saga::Column::SagaId.eq(saga_id))
            .filter(saga::Column::Status.eq(from))
            .exec(&txn)
            .await?;
        if r.rows_affected != 1 {
            return Err(ApiError::Aborted(format!(
                "saga {saga_id} changed meanwhile; try again"
            )));
        }
        Self::note(
            &txn,
            saga_id,
            format!("{verb} by {who}: {why} (back to {back})"),
        )
        .await?;
        audit_saga(&txn, caller, &m, why).await?;
        txn.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    async fn retry(&self, caller: &Caller, req: RetrySagaRequest) -> ApiResult<RetrySagaResponse> {
        let (_, why) = operator(caller, req.action.as_ref())?;
        self.reactivate(caller, &req.saga_id, SagaState::Parked, &why, "retried")
            .await?;
        Ok(RetrySagaResponse {
            saga: Some(self.wire(&req.saga_id).await?),
        })
    }

    async fn resume(
        &self,
        caller: &Caller,
        req: ResumeSagaRequest,
    ) -> ApiResult<ResumeSagaResponse> {
        let (_, why) = operator(caller, req.action.as_ref())?;
        self.reactivate(caller, &req.saga_id, SagaState::Paused, &why, "resumed")
            .await?;
        Ok(ResumeSagaResponse {
            saga: Some(self.wire(&req.saga_id).await?),
        })
    }

    async fn cancel(
        &self,
        caller: &Caller,
        req: CancelSagaRequest,
    ) -> ApiResult<CancelSagaResponse> {
        let (who, why) = operator(caller, req.action.as_ref())?;
        let m = self.saga_by_id(&req.saga_id).await?;
        let steps =
            crate::definition::steps(&m.definition, m.definition_version).unwrap_or_default();
        let pivot = i32::try_from(crate::definition::pivot(steps)).unwrap_or(i32::MAX);
        let forward = crate::engine::signals::undoable(&m);
        if !forward || m.step_index >= pivot {
            return Err(OrchestratorError::PastPivot {
                saga: m.saga_id,
                status: m.status,
                step: m.current_step,
            }
            .into());
        }
        let txn = self.db.begin().await?;
        if m.status.is_stopped() {
            // Nobody drives it now: make it runnable so the cancel signal is applied.
            saga::Entity::update_many()
                .col_expr(saga::Column::Status, Expr::value(SagaState::Running))
                .col_expr(saga::Column::NextAttemptAtMs, crate::store::clock(&txn))
                .col_expr(saga::Column::Version, crate::store::next_version())
                .filter(saga::Column::SagaId.eq(m.saga_id.as_str()))
                .filter(saga::Column::Status.eq(m.status))
                .exec(&txn)
                .await?;
        }
        let key = format!("cancel:{}", m.saga_id);
        crate::store::insert_signal(
            &txn,
            &m.saga_id,
            Signal::Cancel.as_str(),
            &format!("{who}: {why}"),
            &key,
        )
        .await?;
        Self::note(
            &txn,
            &m.saga_id,
            format!("cancel requested by {who}: {why}"),
        )
        .await?;
        audit_saga(&txn, caller, &m, &why).await?;
        txn.commit().await?;
        self.wake.notify_one();
        Ok(CancelSagaResponse {
            saga: Some(self.wire(&req.saga_id).await?),
        })
    }

    async fn exceptions(&self, req: ListExceptionsRequest) -> ApiResult<ListExceptionsResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let rows = saga::Entity::find()
            .filter(saga::Column::Status.eq(SagaState::Parked))
            .order_by_asc(saga::Column::UpdatedAtMs)
            .offset(offset)
            .limit(size)
            .all(&self.db)
            .await?;
        let next = next_page_token(offset, rows.len(), size);
        let mut exceptions = Vec::with_capacity(rows.len());
        for m in rows {
            let steps = self.timeline(&m.saga_id).await?;
            exceptions.push(SagaException {
                reason: m.parked_reason.clone(),
                suggested_action: m.suggested_action.clone(),
                parked_at: Some(to_timestamp(m.updated_at_ms)),
                saga: Some(to_wire(m, steps)),
            });
        }
        Ok(ListExceptionsResponse {
            exceptions,
            next_page_token: next,
        })
    }

    async fn timeline(&self, saga_id: &str) -> ApiResult<Vec<step::Model>> {
        Ok(step::Entity::find()
            .filter(step::Column::SagaId.eq(saga_id))
            .order_by_asc(step::Column::Seq)
            .all(&self.db)
            .await?)
    }

    async fn get_saga(&self, req: GetSagaRequest) -> ApiResult<GetSagaResponse> {
        one_saga(&req.saga_id, &req.order_id)?;
        let query = if req.saga_id.is_empty() {
            saga::Entity::find().filter(saga::Column::OrderId.eq(&req.order_id))
        } else {
            saga::Entity::find().filter(saga::Column::SagaId.eq(&req.saga_id))
        };
        let m = query
            .one(&self.db)
            .await?
            .ok_or_else(|| ApiError::not_found("no such saga"))?;
        let steps = self.timeline(&m.saga_id).await?;
        Ok(GetSagaResponse {
            saga: Some(to_wire(m, steps)),
        })
    }

    async fn list_sagas(&self, req: ListSagasRequest) -> ApiResult<ListSagasResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        if req.min_age_seconds < 0 {
            return Err(ApiError::invalid("min_age_seconds", "must not be negative"));
        }
        let status = SagaStatus::try_from(req.status)
            .map_err(|_| ApiError::invalid("status", "unknown saga status"))?;
        let mut query = saga::Entity::find().order_by_asc(saga::Column::CreatedAtMs);
        if let Some(state) = status_from_wire(status) {
            query = query.filter(saga::Column::Status.eq(state));
        }
        if req.stalled {
            let grace = if req.min_age_seconds > 0 {
                req.min_age_seconds.saturating_mul(1000)
            } else {
                STALLED_AFTER_MS
            };
            query = query.filter(crate::store::stalled_condition(&self.db, grace));
        } else if req.min_age_seconds > 0 {
            // On the database's clock, like every time the engine writes.
            let cutoff = Expr::cust(format!(
                "({} - {})",
                erp_runtime::db::clock_ms_sql(self.db.get_database_backend()),
                req.min_age_seconds.saturating_mul(1000)
            ));
            query = query.filter(sea_orm::sea_query::ExprTrait::lte(
                Expr::col(saga::Column::UpdatedAtMs),
                cutoff,
            ));
        }
        let rows = query.offset(offset).limit(size).all(&self.db).await?;
        let next = next_page_token(offset, rows.len(), size);
        let mut sagas = Vec::with_capacity(rows.len());
        for m in rows {
            let steps = self.timeline(&m.saga_id).await?;
            sagas.push(to_wire(m, steps));
        }
        Ok(ListSagasResponse {
            sagas,
            next_page_token: next,
        })
    }

    async fn start(&self, req: StartFulfillmentRequest) -> ApiResult<StartFulfillmentResponse> {
        let mut v = Violations::new();
        v.id("order_id", &req.order_id);
        v.finish()?;
        let (saga, created) = self.start_saga("fulfillment", &req.order_id).await?;
        Ok(StartFulfillmentResponse {
            saga: Some(saga),
            created,
        })
    }

    async fn start_any(&self, req: StartSagaRequest) -> ApiResult<StartSagaResponse> {
        let mut v = Violations::new();
        if crate::definition::latest(&req.definition).is_none() {
            v.add(
                "definition",
                format!(
                    "{:?} is not a saga definition (\"fulfillment\" or \"probe\")",
                    req.definition
                ),
            );
        }
        if req.definition == "fulfillment" {
            // The key is the order's id.
            v.id("business_key", &req.business_key);
        } else {
            v.text("business_key", &req.business_key, 128);
        }
        v.finish()?;
        let (saga, created) = self.start_saga(&req.definition, &req.business_key).await?;
        Ok(StartSagaResponse {
            saga: Some(saga),
            created,
        })
    }

    async fn start_saga(&self, definition: &str, key: &str) -> ApiResult<(Saga, bool)> {
        let txn = self.db.begin().await?;
        let started = crate::store::start_saga(
            &txn,
            definition,
            key,
            &erp_runtime::telemetry::current_traceparent().unwrap_or_default(),
            "started over gRPC",
        )
        .await?;
        txn.commit().await?;
        let (m, created) = started;
        if created {
            self.wake.notify_one();
        }
        let steps = self.timeline(&m.saga_id).await?;
        Ok((to_wire(m, steps), created))
    }
}

#[tonic::async_trait]
impl OrchestratorService for OrchestratorApi {
    async fn start_fulfillment(
        &self,
        r: Request<StartFulfillmentRequest>,
    ) -> Result<Response<StartFulfillmentResponse>, Status> {
        respond(self.start(r.into_inner()).await)
    }

    async fn start_saga(
        &self,
        r: Request<StartSagaRequest>,
    ) -> Result<Response<StartSagaResponse>, Status> {
        respond(self.start_any(r.into_inner()).await)
    }

    async fn get_saga(
        &self,
        r: Request<GetSagaRequest>,
    ) -> Result<Response<GetSagaResponse>, Status> {
        respond(self.get_saga(r.into_inner()).await)
    }

    type WatchSagaStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<WatchSagaResponse, Status>> + Send + 'static>,
    >;

    async fn watch_saga(
        &self,
        r: Request<WatchSagaRequest>,
    ) -> Result<Response<Self::WatchSagaStream>, Status> {
        let req = r.into_inner();
        one_saga(&req.saga_id, &req.order_id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(crate::watch::stream(
            self.db.clone(),
            self.changes.clone(),
            self.shutdown.clone(),
            crate::watch::Watch {
                saga_id: req.saga_id,
                order_id: req.order_id,
                with_timeline: req.with_timeline,
            },
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_sagas(
        &self,
        r: Request<ListSagasRequest>,
    ) -> Result<Response<ListSagasResponse>, Status> {
        respond(self.list_sagas(r.into_inner()).await)
    }

    async fn signal_saga(
        &self,
        r: Request<SignalSagaRequest>,
    ) -> Result<Response<SignalSagaResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.signal(&caller, r.into_inner()).await)
    }

    async fn retry_saga(
        &self,
        r: Request<RetrySagaRequest>,
    ) -> Result<Response<RetrySagaResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.retry(&caller, r.into_inner()).await)
    }

    async fn pause_saga(
        &self,
        r: Request<PauseSagaRequest>,
    ) -> Result<Response<PauseSagaResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.pause(&caller, r.into_inner()).await)
    }

    async fn resume_saga(
        &self,
        r: Request<ResumeSagaRequest>,
    ) -> Result<Response<ResumeSagaResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.resume(&caller, r.into_inner()).await)
    }

    async fn cancel_saga(
        &self,
        r: Request<CancelSagaRequest>,
    ) -> Result<Response<CancelSagaResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.cancel(&caller, r.into_inner()).await)
    }

    async fn list_exceptions(
        &self,
        r: Request<ListExceptionsRequest>,
    ) -> Result<Response<ListExceptionsResponse>, Status> {
        respond(self.exceptions(r.into_inner()).await)
    }
}
