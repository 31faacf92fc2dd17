//! Orders as channels place them: created once per external id, listed, cancelled.

use super::*;
use crate::error::OrderError;

impl OrderApi {
    pub(super) async fn create_order(
        &self,
        req: CreateOrderRequest,
    ) -> ApiResult<CreateOrderResponse> {
        let mut v = Violations::new();
        v.code("channel", &req.channel);
        v.text("external_order_id", &req.external_order_id, 100);
        v.text("customer_id", &req.customer_id, 100);
        v.code("service_level", &req.service_level);
        v.currency("currency", &req.currency);
        v.optional_text("payment_method_token", &req.payment_method_token, 200);
        validate_address(&mut v, req.ship_to.as_ref());
        v.check(
            !req.lines.is_empty(),
            "lines",
            "must hold at least one line",
        );
        v.check(req.lines.len() <= 500, "lines", "at most 500 lines");
        let mut numbers = std::collections::HashSet::new();
        for (i, l) in req.lines.iter().enumerate() {
            v.check(
                l.line_number > 0,
                format!("lines[{i}].line_number"),
                "must be positive",
            );
            v.check(
                numbers.insert(l.line_number),
                format!("lines[{i}].line_number"),
                "is repeated",
            );
            v.code(&format!("lines[{i}].sku"), &l.sku);
            v.positive(&format!("lines[{i}].quantity"), l.quantity);
            match &l.unit_price {
                None => v.add(format!("lines[{i}].unit_price"), "is required"),
                Some(p) => {
                    v.non_negative(
                        &format!("lines[{i}].unit_price.amount_minor"),
                        p.amount_minor,
                    );
                    v.check(
                        p.currency == req.currency || !is_currency(&req.currency),
                        format!("lines[{i}].unit_price.currency"),
                        "must equal the order currency (one currency per order)",
                    );
                }
            }
        }
        v.finish()?;
        let total = req
            .lines
            .iter()
            .try_fold(0i64, |acc, l| {
                l.unit_price
                    .as_ref()
                    .and_then(|p| p.amount_minor.checked_mul(l.quantity))
                    .and_then(|x| acc.checked_add(x))
            })
            .filter(|t| *t <= erp_runtime::validate::MAX_AMOUNT_MINOR)
            .ok_or_else(|| {
                ApiError::invalid(
                    "lines",
                    format!(
                        "the order's total exceeds the largest amount accepted ({} minor units)",
                        erp_runtime::validate::MAX_AMOUNT_MINOR
                    ),
                )
            })?;
        let hash = idempotency::fingerprint(&req);
        self.check_items(&req.lines).await?;

        let txn = self.db.begin().await?;
        let ch = store::channel(&txn, &req.channel, false)
            .await?
            .ok_or_else(|| {
                ApiError::invalid("channel", format!("unknown channel {:?}", req.channel))
            })?;
        let mut v = Violations::new();
        v.check(
            ch.currency == req.currency,
            "currency",
            format!("channel {} sells in {}", ch.code, ch.currency),
        );
        v.check(
            ch.service_levels.split(',').any(|s| s == req.service_level),
            "service_level",
            format!("channel {} offers {}", ch.code, ch.service_levels),
        );
        if !ch.external_id_pattern.is_empty() {
            let ok = regex::Regex::new(&ch.external_id_pattern)
                .map(|r| r.is_match(&req.external_order_id))
                .unwrap_or(false);
            v.check(
                ok,
                "external_order_id",
                format!("must match the channel's format {}", ch.external_id_pattern),
            );
        }
        v.finish()?;

        if let Some(existing) =
            store::order_by_external_id(&txn, &req.channel, &req.external_order_id).await?
        {
            if existing.content_hash != hash {
                return Err(ApiError::AlreadyExists(format!(
                    "order {} from channel {} was already submitted with different content (order {})",
                    req.external_order_id, req.channel, existing.order_id
                )));
            }
            let (o, lines) = store::order_with_lines(&txn, &existing.order_id).await?;
            return Ok(CreateOrderResponse {
                order: Some(order_to_wire(o, lines)),
                created: false,
            });
        }
        let now = now_ms();
        let order_id = uuid::Uuid::now_v7().to_string();
        let address = StoredAddress::from(req.ship_to.as_ref().unwrap_or(&Address::default()));
        let o = order::ActiveModel {
            order_id: Set(order_id.clone()),
            channel: Set(req.channel.clone()),
            external_order_id: Set(req.external_order_id.clone()),
            content_hash: Set(hash),
            customer_id: Set(req.customer_id.clone()),
            ship_to: Set(
                serde_json::to_string(&address).map_err(|e| ApiError::Internal(e.to_string()))?
            ),
            service_level: Set(req.service_level.clone()),
            currency: Set(req.currency.clone()),
            total_minor: Set(total),
            status: Set(OrderState::Accepted.as_str().to_owned()),
            status_reason: Set(String::new()),
            tracking_number: Set(String::new()),
            payment_method_token: Set(req.payment_method_token.clone()),
            tax_minor: Set(0),
            tax_jurisdiction: Set(String::new()),
            promised_by_ms: Set(0),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
        }
        .insert(&txn)
        .await?;
        let mut lines = Vec::new();
        for l in &req.lines {
            lines.push(
                line::ActiveModel {
                    line_id: Set(uuid::Uuid::now_v7().to_string()),
                    order_id: Set(order_id.clone()),
                    line_number: Set(l.line_number),
                    sku: Set(l.sku.clone()),
                    unit_price_minor: Set(l.unit_price.as_ref().map_or(0, |p| p.amount_minor)),
                    ordered: Set(l.quantity),
                    allocated: Set(0),
                    shipped: Set(0),
                    backordered: Set(0),
                    cancelled: Set(0),
                    returned: Set(0),
                    location: Set(String::new()),
                    tax_minor: Set(0),
                    tax_rate_bps: Set(0),
                }
                .insert(&txn)
                .await?,
            );
        }
        outbox::enqueue(
            &txn,
            "order.accepted",
            &order_id,
            &OrderAccepted {
                order_id: order_id.clone(),
                channel: req.channel.clone(),
                external_order_id: req.external_order_id.clone(),
                currency: req.currency.clone(),
                total_minor: total,
            },
        )
        .await?;
        txn.commit().await?;
        self.outbox.wake();
        tracing::info!(order_id = %order_id, channel = %req.channel, "order accepted");
        Ok(CreateOrderResponse {
            order: Some(order_to_wire(o, lines)),
            created: true,
        })
    }

    pub(super) async fn list_orders(
        &self,
        req: ListOrdersRequest,
    ) -> ApiResult<ListOrdersResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let status = erp_runtime::validate::status_filter(
            OrderStatus::try_from(req.status).map(|s| s.as_str_name()),
            "ORDER_STATUS_",
        )?;
        let rows = store::orders_page(
            &self.db,
            &req.channel,
            &req.external_order_id,
            status,
            offset,
            size,
        )
        .await?;
        let next = next_page_token(offset, rows.len(), size);
        // The lines of the whole page in one query.
        let orders = store::with_lines(&self.db, rows).await?;
        Ok(ListOrdersResponse {
            orders: orders
                .into_iter()
                .map(|(o, lines)| order_to_wire(o, lines))
                .collect(),
            next_page_token: next,
        })
    }

    pub(super) async fn cancel_order(
        &self,
        caller: &Caller,
        req: CancelOrderRequest,
    ) -> ApiResult<CancelOrderResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        v.actor("actor", req.actor.as_ref());
        v.check(req.line_ids.len() <= 500, "line_ids", "at most 500 lines");
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "order.CancelOrder", req);
        let (o, lines) = store::order_for_update(&txn, &req.order_id).await?;
        let before = lines_state(&lines);
        for id in &req.line_ids {
            if !lines.iter().any(|l| &l.line_id == id) {
                return Err(ApiError::invalid(
                    "line_ids",
                    format!("order has no line {id}"),
                ));
            }
        }
        let mut changed = Vec::new();
        let mut cancelled_any = false;
        // Allocated units belong to a shipment in progress: only the fulfillment saga can stop
        // it (before its pivot) and then cancel them with `include_allocated`.
        let mut pending = Vec::new();
        for l in lines {
            let mut q = qty(&l);
            if req.line_ids.is_empty() || req.line_ids.contains(&l.line_id) {
                if req.include_allocated {
                    let before = q.cancelled;
                    q.cancel_unshipped();
                    cancelled_any |= q.cancelled > before;
                } else {
                    cancelled_any |= q.cancel_unallocated() > 0;
                    if q.allocated > 0 {
                        pending.push(l.line_id.clone());
                    }
                }
            }
            changed.push((l, q));
        }
        if !cancelled_any && pending.is_empty() {
            return Err(OrderError::NothingToCancel(req.order_id.clone()).into());
        }
        let reason = req
            .actor
            .as_ref()
            .map(|a| a.reason.clone())
            .unwrap_or_default();
        let (o, saved) = store::save_quantities(&txn, o, changed, None).await?;
        let mut order = order_to_wire(o, saved);
        if order.status == OrderStatus::Cancelled as i32 {
            order.status_reason = format!("cancelled: {reason}");
            store::set_status_reason(&txn, &req.order_id, order.status_reason.clone()).await?;
        }
        outbox::enqueue(
            &txn,
            "order.cancelled",
            &req.order_id,
            &serde_json::json!({
                "order_id": req.order_id,
                "line_ids": req.line_ids,
                "pending_line_ids": pending,
                "include_allocated": req.include_allocated,
                "reason": reason,
            }),
        )
        .await?;
        let after: Vec<_> = order
            .lines
            .iter()
            .map(|l| {
                let q = l.quantities.unwrap_or_default();
                (l.line_id.clone(), q.ordered, q.cancelled, q.allocated)
            })
            .collect();
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("order:{}", req.order_id),
                reason: &reason,
                before: Some(before),
                after: Some(serde_json::json!(after)),
            },
        )
        .await?;
        let response = CancelOrderResponse {
            order: Some(order),
            pending_line_ids: pending,
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }
}
