//! What fulfillment records on an order: tax, allocation, shipment, failure.

use super::*;
use crate::error::OrderError;

impl OrderApi {
    pub(super) async fn record_allocation(
        &self,
        req: RecordAllocationRequest,
    ) -> ApiResult<RecordAllocationResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.check(
            !req.allocations.is_empty(),
            "allocations",
            "must not be empty",
        );
        for (i, a) in req.allocations.iter().enumerate() {
            v.id(&format!("allocations[{i}].line_id"), &a.line_id);
            v.non_negative(&format!("allocations[{i}].allocated"), a.allocated);
            v.non_negative(&format!("allocations[{i}].backordered"), a.backordered);
            if a.allocated > 0 {
                v.code(&format!("allocations[{i}].location"), &a.location);
            } else {
                v.optional_text(&format!("allocations[{i}].location"), &a.location, 64);
            }
        }
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.RecordAllocation", req);
        let (o, lines) = store::order_for_update(&txn, &req.order_id).await?;
        if matches!(
            OrderState::parse(&o.status),
            Some(OrderState::Cancelled | OrderState::Failed)
        ) {
            return Err(OrderError::Closed {
                order: o.order_id,
                status: o.status,
            }
            .into());
        }
        let mut changed = Vec::new();
        for l in lines {
            let mut q = qty(&l);
            let mut l = l;
            if let Some(a) = req.allocations.iter().find(|a| a.line_id == l.line_id) {
                q.allocate(a.allocated, a.backordered)
                    .map_err(|e| OrderError::OverAllocation {
                        line: l.line_id.clone(),
                        why: e.to_string(),
                    })?;
                l.location = a.location.clone();
                let mut am: line::ActiveModel = l.clone().into();
                am.location = Set(a.location.clone());
                l = am.update(&txn).await?;
            }
            changed.push((l, q));
        }
        let (o, saved) = store::save_quantities(&txn, o, changed, None).await?;
        let response = RecordAllocationResponse {
            order: Some(order_to_wire(o, saved)),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    pub(super) async fn mark_shipped(
        &self,
        req: MarkShippedRequest,
    ) -> ApiResult<MarkShippedResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.text("tracking_number", &req.tracking_number, 100);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.MarkShipped", req);
        let (o, lines) = store::order_for_update(&txn, &req.order_id).await?;
        if lines.iter().all(|l| l.allocated == 0) {
            return Err(OrderError::NothingAllocated(req.order_id.clone()).into());
        }
        let changed = lines
            .into_iter()
            .map(|l| {
                let mut q = qty(&l);
                q.ship_allocated();
                (l, q)
            })
            .collect();
        let mut am: order::ActiveModel = o.clone().into();
        am.tracking_number = Set(req.tracking_number.clone());
        let o = am.update(&txn).await?;
        let (o, saved) = store::save_quantities(&txn, o, changed, None).await?;
        let order = order_to_wire(o, saved);
        outbox::enqueue(
            &txn,
            "order.shipped",
            &req.order_id,
            &serde_json::json!({ "order_id": req.order_id, "tracking_number": req.tracking_number }),
        )
        .await?;
        let response = MarkShippedResponse { order: Some(order) };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    pub(super) async fn record_tax(&self, req: RecordTaxRequest) -> ApiResult<RecordTaxResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.text("jurisdiction", &req.jurisdiction, 16);
        v.check(!req.lines.is_empty(), "lines", "must not be empty");
        for (i, l) in req.lines.iter().enumerate() {
            v.id(&format!("lines[{i}].line_id"), &l.line_id);
            v.check(
                (0..=10_000).contains(&l.rate_bps),
                format!("lines[{i}].rate_bps"),
                "must be 0..=10000",
            );
            v.non_negative(
                &format!("lines[{i}].tax.amount_minor"),
                l.tax.as_ref().map_or(-1, |t| t.amount_minor),
            );
        }
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.RecordTax", req);
        let (o, lines) = store::order_for_update(&txn, &req.order_id).await?;
        if matches!(
            OrderState::parse(&o.status),
            Some(
                OrderState::Shipped
                    | OrderState::PartiallyShipped
                    | OrderState::Cancelled
                    | OrderState::Failed
                    | OrderState::Returned
            )
        ) {
            return Err(OrderError::TaxLocked {
                order: o.order_id,
                status: o.status,
            }
            .into());
        }
        let mut v = Violations::new();
        for (i, l) in req.lines.iter().enumerate() {
            let t = l.tax.clone().unwrap_or_default();
            v.check(
                lines.iter().any(|x| x.line_id == l.line_id),
                format!("lines[{i}].line_id"),
                "is not a line of the order",
            );
            v.check(
                t.currency == o.currency,
                format!("lines[{i}].tax.currency"),
                format!("the order is in {}", o.currency),
            );
        }
        v.finish()?;
        let mut saved = Vec::with_capacity(lines.len());
        for l in lines {
            let given = req.lines.iter().find(|x| x.line_id == l.line_id);
            let mut am: line::ActiveModel = l.clone().into();
            am.tax_minor = Set(given
                .and_then(|g| g.tax.as_ref())
                .map_or(0, |t| t.amount_minor));
            am.tax_rate_bps = Set(given.map_or(0, |g| g.rate_bps));
            saved.push(am.update(&txn).await?);
        }
        // The total is the kept lines plus the tax now recorded (replacing any earlier figure).
        let (total, tax) = store::header_totals(&saved);
        let mut am: order::ActiveModel = o.into();
        am.tax_minor = Set(tax);
        am.tax_jurisdiction = Set(req.jurisdiction.clone());
        am.total_minor = Set(total);
        am.updated_at_ms = Set(now_ms());
        let o = am.update(&txn).await?;
        let response = RecordTaxResponse {
            order: Some(order_to_wire(o, saved)),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    pub(super) async fn mark_failed(
        &self,
        req: MarkFailedRequest,
    ) -> ApiResult<MarkFailedResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.code("reason", &req.reason);
        v.optional_text("detail", &req.detail, 500);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.MarkFailed", req);
        let (o, lines) = store::order_for_update(&txn, &req.order_id).await?;
        if lines.iter().any(|l| l.shipped > 0) {
            return Err(OrderError::ShippedCannotFail(req.order_id.clone()).into());
        }
        let changed = lines
            .into_iter()
            .map(|l| {
                let mut q = qty(&l);
                q.cancel_unshipped();
                (l, q)
            })
            .collect();
        let reason = if req.detail.is_empty() {
            req.reason.clone()
        } else {
            format!("{}: {}", req.reason, req.detail)
        };
        let (o, saved) =
            store::save_quantities(&txn, o, changed, Some((OrderState::Failed, reason))).await?;
        let order = order_to_wire(o, saved);
        outbox::enqueue(
            &txn,
            "order.failed",
            &req.order_id,
            &serde_json::json!({ "order_id": req.order_id, "reason": req.reason }),
        )
        .await?;
        let response = MarkFailedResponse { order: Some(order) };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }
}
