//! The synthetic saga, measured: `probe` sagas started and watched to their end, and the probe
//! participant's rows checked against what the sagas say.

use std::sync::Arc;
use std::time::Instant;

use erp_proto::orchestrator::{SagaStatus, StartSagaRequest};
use tokio::sync::Semaphore;

use super::{Cost, Figures, SYNTHETIC_DECLINE_EVERY};
use crate::testkit::Clients;

/// Starts `sagas` synthetic sagas, at most `concurrency` in flight, each watched to its end
/// (`WatchSaga`); then checks what the probe participant recorded against what the sagas say:
/// eight effects for each completed saga, three effects and three compensations for each
/// declined one, and exactly the declined keys compensated. A mismatch is an error.
pub async fn run_synthetic<F, Fut>(
    c: &Clients,
    probe: &crate::probe::Probe,
    sagas: usize,
    concurrency: usize,
    cost: F,
) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Cost>>,
{
    let (forward_before, compensate_before) = probe.counts().await?;
    let before = cost().await;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let run = uuid::Uuid::now_v7().simple().to_string();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(sagas);
    let mut declined = 0usize;
    for i in 0..sagas {
        let permit = permits.clone().acquire_owned().await?;
        let mut c = c.clone();
        let key = format!("PROBE-{}-{i}", &run[20..]);
        if crate::probe::declines(&key, SYNTHETIC_DECLINE_EVERY) {
            declined += 1;
        }
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let saga = c
                .orchestrator
                .start_saga(StartSagaRequest {
                    definition: "probe".into(),
                    business_key: key,
                })
                .await
                .map_err(|e| format!("StartSaga: {e}"))?
                .into_inner()
                .saga
                .ok_or("StartSaga answered no saga")?;
            super::watch_until(&mut c, saga.saga_id, String::new(), |saga| {
                match SagaStatus::try_from(saga.status).unwrap_or(SagaStatus::Unspecified) {
                    SagaStatus::Completed => Some(Ok((true, t0.elapsed()))),
                    SagaStatus::Compensated => Some(Ok((false, t0.elapsed()))),
                    SagaStatus::Parked => Some(Err(format!("parked: {}", saga.last_error))),
                    _ => None,
                }
            })
            .await
        }));
    }
    let mut figures = Figures {
        latencies: Vec::with_capacity(sagas),
        ..Figures::default()
    };
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok((completed, latency)) => {
                if completed {
                    figures.completed += 1;
                } else {
                    figures.compensated += 1;
                }
                figures.latencies.push(latency);
            }
            Err(e) => {
                figures.failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!(
            "synthetic    {} sagas failed; the first: {e}",
            figures.failed
        );
    }
    figures.elapsed = started.elapsed();
    figures.cost = match (before, cost().await) {
        (Some(before), Some(after)) => Some(after.minus(&before)),
        _ => None,
    };
    let (forward, compensate) = probe.counts().await?;
    let (forward, compensate) = (forward - forward_before, compensate - compensate_before);
    let step = i64::from(crate::probe::DECLINED_STEP) - 1;
    let (done, undone) = (figures.completed as i64, figures.compensated as i64);
    anyhow::ensure!(
        figures.failed == 0
            && figures.compensated == declined
            && forward == 8 * done + step * undone
            && compensate == step * undone,
        "the probe participant disagrees with the sagas: {} completed, {} compensated ({declined} declined), \
         {} failed; {forward} effects and {compensate} compensations recorded",
        figures.completed,
        figures.compensated,
        figures.failed
    );
    println!(
        "synthetic    checked: {forward} effects and {compensate} compensations recorded, each once, as the {} sagas say",
        sagas
    );
    Ok(figures)
}
