//! gRPC handlers of the orchestrator.

use erp_proto::orchestrator::orchestrator_service_server::OrchestratorService;
use erp_proto::orchestrator::*;
use erp_runtime::time::{now_ms, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use tonic::{Request, Response, Status};

use crate::store::{saga, step};

pub struct OrchestratorApi {
    db: DatabaseConnection,
}

impl OrchestratorApi {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

fn respond<T>(result: ApiResult<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

fn status_from(s: &str) -> SagaStatus {
    match s {
        "pending" => SagaStatus::Pending,
        "running" => SagaStatus::Running,
        "waiting" => SagaStatus::Waiting,
        "compensating" => SagaStatus::Compensating,
        "completed" => SagaStatus::Completed,
        "compensated" => SagaStatus::Compensated,
        "parked" => SagaStatus::Parked,
        "paused" => SagaStatus::Paused,
        _ => SagaStatus::Unspecified,
    }
}

fn status_name(s: SagaStatus) -> Option<&'static str> {
    Some(match s {
        SagaStatus::Pending => "pending",
        SagaStatus::Running => "running",
        SagaStatus::Waiting => "waiting",
        SagaStatus::Compensating => "compensating",
        SagaStatus::Completed => "completed",
        SagaStatus::Compensated => "compensated",
        SagaStatus::Parked => "parked",
        SagaStatus::Paused => "paused",
        SagaStatus::Unspecified => return None,
    })
}

fn to_wire(m: saga::Model, steps: Vec<step::Model>) -> Saga {
    Saga {
        saga_id: m.saga_id,
        definition: m.definition,
        definition_version: m.definition_version,
        order_id: m.order_id,
        status: status_from(&m.status) as i32,
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

impl OrchestratorApi {
    async fn timeline(&self, saga_id: &str) -> ApiResult<Vec<step::Model>> {
        Ok(step::Entity::find()
            .filter(step::Column::SagaId.eq(saga_id))
            .order_by_asc(step::Column::Seq)
            .all(&self.db)
            .await?)
    }

    async fn get_saga(&self, req: GetSagaRequest) -> ApiResult<GetSagaResponse> {
        let mut v = Violations::new();
        v.check(
            req.saga_id.is_empty() != req.order_id.is_empty(),
            "saga_id",
            "give exactly one of saga_id and order_id",
        );
        if !req.saga_id.is_empty() {
            v.id("saga_id", &req.saga_id);
        }
        if !req.order_id.is_empty() {
            v.id("order_id", &req.order_id);
        }
        v.finish()?;
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
        if let Some(name) = status_name(status) {
            query = query.filter(saga::Column::Status.eq(name));
        }
        if req.min_age_seconds > 0 {
            let cutoff = now_ms() - req.min_age_seconds.saturating_mul(1000);
            query = query.filter(saga::Column::UpdatedAtMs.lte(cutoff));
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
        let txn = self.db.begin().await?;
        let (m, created) = crate::store::start_fulfillment(
            &txn,
            &req.order_id,
            &erp_runtime::telemetry::current_traceparent().unwrap_or_default(),
            "started over gRPC",
        )
        .await?;
        txn.commit().await?;
        let steps = self.timeline(&m.saga_id).await?;
        Ok(StartFulfillmentResponse {
            saga: Some(to_wire(m, steps)),
            created,
        })
    }
}

fn planned<T>(what: &str) -> Result<Response<T>, Status> {
    Err(ApiError::Unimplemented(format!(
        "{what} is planned with the durable saga issue (#3)"
    ))
    .into())
}

#[tonic::async_trait]
impl OrchestratorService for OrchestratorApi {
    async fn start_fulfillment(
        &self,
        r: Request<StartFulfillmentRequest>,
    ) -> Result<Response<StartFulfillmentResponse>, Status> {
        respond(self.start(r.into_inner()).await)
    }

    async fn get_saga(
        &self,
        r: Request<GetSagaRequest>,
    ) -> Result<Response<GetSagaResponse>, Status> {
        respond(self.get_saga(r.into_inner()).await)
    }

    async fn list_sagas(
        &self,
        r: Request<ListSagasRequest>,
    ) -> Result<Response<ListSagasResponse>, Status> {
        respond(self.list_sagas(r.into_inner()).await)
    }

    async fn signal_saga(
        &self,
        _r: Request<SignalSagaRequest>,
    ) -> Result<Response<SignalSagaResponse>, Status> {
        planned("SignalSaga")
    }

    async fn retry_saga(
        &self,
        _r: Request<RetrySagaRequest>,
    ) -> Result<Response<RetrySagaResponse>, Status> {
        planned("RetrySaga")
    }

    async fn pause_saga(
        &self,
        _r: Request<PauseSagaRequest>,
    ) -> Result<Response<PauseSagaResponse>, Status> {
        planned("PauseSaga")
    }

    async fn resume_saga(
        &self,
        _r: Request<ResumeSagaRequest>,
    ) -> Result<Response<ResumeSagaResponse>, Status> {
        planned("ResumeSaga")
    }

    async fn cancel_saga(
        &self,
        _r: Request<CancelSagaRequest>,
    ) -> Result<Response<CancelSagaResponse>, Status> {
        planned("CancelSaga")
    }

    async fn list_exceptions(
        &self,
        _r: Request<ListExceptionsRequest>,
    ) -> Result<Response<ListExceptionsResponse>, Status> {
        planned("ListExceptions")
    }
}
