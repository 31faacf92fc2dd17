//! The probe participant as the fake world plays it: one effect per idempotency key, declines
//! as scripted in [`super::World::probe_declines`].

use std::time::Duration;

use erp_proto::probe;
use erp_runtime::error::ApiError;
use tonic::Status;

use super::FakeWorld;
use crate::ports::ProbePort;

impl FakeWorld {
    fn probe_record(
        &self,
        method: &str,
        key: String,
        business_key: String,
        step: i32,
        forward: bool,
    ) -> Result<bool, Status> {
        let mut w = self.world();
        w.enter(method)?;
        if forward && w.probe_declines.contains(&(business_key.clone(), step)) {
            return Err(ApiError::precondition(
                "PROBE_DECLINED",
                format!("step {step} of {business_key} is declined"),
            )
            .into());
        }
        if w.probe_effects.contains_key(&key) {
            return Ok(false);
        }
        w.probe_effects.insert(key, (business_key, step));
        Ok(true)
    }
}

#[async_trait::async_trait]
impl ProbePort for FakeWorld {
    async fn apply(
        &self,
        r: probe::ApplyRequest,
        _: Duration,
    ) -> Result<probe::ApplyResponse, Status> {
        let recorded = self.probe_record(
            "probe.apply",
            r.idempotency_key,
            r.business_key,
            r.step,
            true,
        )?;
        Ok(probe::ApplyResponse { recorded })
    }

    async fn revert(
        &self,
        r: probe::RevertRequest,
        _: Duration,
    ) -> Result<probe::RevertResponse, Status> {
        let recorded = self.probe_record(
            "probe.revert",
            r.idempotency_key,
            r.business_key,
            r.step,
            false,
        )?;
        Ok(probe::RevertResponse { recorded })
    }
}
