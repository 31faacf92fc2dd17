//! The probe participant (`erp.probe.v1.ProbeService`): the other end of the orchestrator's
//! synthetic `probe` saga. Every call inserts one row in its own database (a SQLite file or a
//! PostgreSQL database), once per idempotency key; it declines step [`DECLINED_STEP`] for one
//! business key in `decline_every` (by a hash of the key, so the caller can count on it), which
//! makes those sagas compensate. `erp bench --mode synthetic-*` runs it beside the suite.

use std::net::SocketAddr;

use erp_proto::probe::probe_service_server::{ProbeService, ProbeServiceServer};
use erp_proto::probe::{ApplyRequest, ApplyResponse, RevertRequest, RevertResponse};
use erp_runtime::error::ApiError;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The step a declined saga is refused at (then steps 3, 2 and 1 are undone).
pub const DECLINED_STEP: i32 = 4;

const DDL: &str = "CREATE TABLE IF NOT EXISTS probe_effect (
    idempotency_key TEXT PRIMARY KEY,
    business_key TEXT NOT NULL,
    step INTEGER NOT NULL,
    direction TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL
)";

/// Whether the participant declines step [`DECLINED_STEP`] of the saga keyed `key`, declining
/// one key in `every` (never when `every` is 0). FNV-1a: stable across builds and processes.
pub fn declines(key: &str, every: u64) -> bool {
    if every == 0 {
        return false;
    }
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % every == 0
}

#[derive(Clone)]
pub struct Probe {
    db: DatabaseConnection,
    decline_every: u64,
}

impl Probe {
    /// Opens (creating when missing) the participant's database at `url`.
    pub async fn open(url: &str, decline_every: u64) -> anyhow::Result<Self> {
        let db = erp_runtime::db::connect_url(url, 16, true).await?;
        db.execute_unprepared(DDL).await?;
        Ok(Self { db, decline_every })
    }

    async fn record(
        &self,
        key: String,
        business_key: String,
        step: i32,
        direction: &str,
    ) -> Result<bool, ApiError> {
        let mut v = erp_runtime::validate::Violations::new();
        v.idempotency_key(&key);
        v.text("business_key", &business_key, 128);
        if !(1..=i32::from(erp_orchestrator::definition::PROBE_STEPS)).contains(&step) {
            v.add("step", "must be between 1 and 8");
        }
        v.finish()?;
        if direction == "forward"
            && step == DECLINED_STEP
            && declines(&business_key, self.decline_every)
        {
            return Err(ApiError::precondition(
                "PROBE_DECLINED",
                format!(
                    "step {step} of {business_key} is declined (one key in {})",
                    self.decline_every
                ),
            ));
        }
        let backend = self.db.get_database_backend();
        let r = self
            .db
            .execute_raw(Statement::from_sql_and_values(
                backend,
                "INSERT INTO probe_effect (idempotency_key, business_key, step, direction, recorded_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING",
                [
                    key.into(),
                    business_key.into(),
                    step.into(),
                    direction.into(),
                    erp_runtime::time::now_ms().into(),
                ],
            ))
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Rows recorded so far, per direction: `(forward, compensate)`.
    pub async fn counts(&self) -> anyhow::Result<(i64, i64)> {
        let mut out = [0i64; 2];
        for (slot, direction) in out.iter_mut().zip(["forward", "compensate"]) {
            let row = self
                .db
                .query_one_raw(Statement::from_sql_and_values(
                    self.db.get_database_backend(),
                    "SELECT COUNT(*) AS n FROM probe_effect WHERE direction = $1",
                    [direction.into()],
                ))
                .await?;
            *slot = row.map_or(Ok(0), |r| r.try_get::<i64>("", "n"))?;
        }
        Ok((out[0], out[1]))
    }

    /// Serves the participant on `listener` until `stop`.
    pub fn serve(
        self,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let addr = listener.local_addr()?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(ProbeServiceServer::new(self))
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "the probe participant stopped");
            }
        });
        Ok((addr, task))
    }
}

#[tonic::async_trait]
impl ProbeService for Probe {
    async fn apply(&self, r: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let r = r.into_inner();
        let recorded = self
            .record(r.idempotency_key, r.business_key, r.step, "forward")
            .await?;
        Ok(Response::new(ApplyResponse { recorded }))
    }

    async fn revert(&self, r: Request<RevertRequest>) -> Result<Response<RevertResponse>, Status> {
        let r = r.into_inner();
        let recorded = self
            .record(r.idempotency_key, r.business_key, r.step, "compensate")
            .await?;
        Ok(Response::new(RevertResponse { recorded }))
    }
}

#[cfg(test)]
mod tests {
    use super::declines;

    #[test]
    fn about_one_key_in_every_is_declined() {
        assert!(!declines("anything", 0));
        let n = (0..10_000)
            .filter(|i| declines(&format!("PROBE-x-{i}"), 20))
            .count();
        assert!((400..600).contains(&n), "{n} of 10,000 declined");
        assert_eq!(declines("PROBE-x-7", 20), declines("PROBE-x-7", 20));
    }
}
