//! Customer returns: received pending inspection, then graded into stock or quarantine.

use super::*;

impl InventoryApi {
    pub(super) async fn record_return(
        &self,
        req: RecordReturnRequest,
    ) -> ApiResult<RecordReturnResponse> {
        let mut v = movement(&req.idempotency_key, &req.sku, &req.location, req.quantity);
        v.source("source", req.source.as_ref());
        v.finish()?;
        idempotent!(self, "inventory.RecordReturn", req, |txn| {
            let source = source_of(req.source.as_ref(), "return", "receiving");
            let level = self
                .store
                .change(
                    &txn,
                    &req.sku,
                    &req.location,
                    &[(domain::Bucket::ReturnsPending, req.quantity)],
                    domain::Reason::Return,
                    &source,
                )
                .await?;
            RecordReturnResponse {
                level: Some(level_to_wire(&level)),
            }
        })
    }

    pub(super) async fn inspect_return(
        &self,
        caller: &Caller,
        req: InspectReturnRequest,
    ) -> ApiResult<InspectReturnResponse> {
        let mut v = movement(&req.idempotency_key, &req.sku, &req.location, req.quantity);
        let disposition =
            ReturnDisposition::try_from(req.disposition).unwrap_or(ReturnDisposition::Unspecified);
        v.check(
            disposition != ReturnDisposition::Unspecified,
            "disposition",
            "must be RESTOCK or QUARANTINE",
        );
        v.actor("actor", req.actor.as_ref());
        v.finish()?;
        let (to, reason) = if disposition == ReturnDisposition::Restock {
            (domain::Bucket::OnHand, domain::Reason::Return)
        } else {
            (domain::Bucket::Quarantined, domain::Reason::Quarantine)
        };
        idempotent!(self, "inventory.InspectReturn", req, |txn| {
            let source = Source {
                kind: "inspection".into(),
                id: req
                    .actor
                    .as_ref()
                    .map(|a| a.reason.clone())
                    .unwrap_or_default(),
                actor: caller.subject.clone(),
            };
            let level = self
                .store
                .change(
                    &txn,
                    &req.sku,
                    &req.location,
                    &[
                        (domain::Bucket::ReturnsPending, -req.quantity),
                        (to, req.quantity),
                    ],
                    reason,
                    &source,
                )
                .await?;
            InspectReturnResponse {
                level: Some(level_to_wire(&level)),
            }
        })
    }
}
