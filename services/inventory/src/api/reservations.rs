//! Reservations: held for an order, released or committed by its saga.

use super::*;

impl InventoryApi {
    pub(super) async fn reserve_stock(
        &self,
        req: ReserveStockRequest,
    ) -> ApiResult<ReserveStockResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.check(
            !req.lines.is_empty(),
            "lines",
            "must hold at least one line",
        );
        v.check(req.lines.len() <= 200, "lines", "at most 200 lines");
        for (i, line) in req.lines.iter().enumerate() {
            v.text(
                &format!("lines[{i}].order_line_id"),
                &line.order_line_id,
                100,
            );
            v.code(&format!("lines[{i}].sku"), &line.sku);
            v.code(&format!("lines[{i}].location"), &line.location);
            v.positive(&format!("lines[{i}].quantity"), line.quantity);
        }
        v.check(
            ReserveMode::try_from(req.mode).is_ok(),
            "mode",
            "must be ALL_OR_NOTHING or PARTIAL",
        );
        if let Some(expires) = &req.expires_at {
            v.check(
                from_timestamp(expires) > now_ms(),
                "expires_at",
                "must be in the future",
            );
        }
        v.finish()?;
        self.batcher.reserve(req).await
    }

    pub(super) async fn release_reservations(
        &self,
        req: ReleaseReservationsRequest,
    ) -> ApiResult<ReleaseReservationsResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.check(
            req.reservation_ids.len() <= 500,
            "reservation_ids",
            "at most 500 per call",
        );
        v.finish()?;
        idempotent!(self, "inventory.ReleaseReservations", req, |txn| {
            idempotency::tombstone_forward(&txn, "inventory.ReserveStock", &req.idempotency_key)
                .await?;
            let released = self
                .store
                .release(
                    &txn,
                    &req.order_id,
                    &req.reservation_ids,
                    DomainState::Released,
                )
                .await?;
            ReleaseReservationsResponse {
                reservations: released.into_iter().map(reservation_to_wire).collect(),
            }
        })
    }

    pub(super) async fn commit_reservations(
        &self,
        req: CommitReservationsRequest,
    ) -> ApiResult<CommitReservationsResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.check(
            req.reservation_ids.len() <= 500,
            "reservation_ids",
            "at most 500 per call",
        );
        v.finish()?;
        idempotent!(self, "inventory.CommitReservations", req, |txn| {
            let committed = self
                .store
                .commit(&txn, &req.order_id, &req.reservation_ids)
                .await?;
            CommitReservationsResponse {
                reservations: committed.into_iter().map(reservation_to_wire).collect(),
            }
        })
    }

    pub(super) async fn list_reservations(
        &self,
        req: ListReservationsRequest,
    ) -> ApiResult<ListReservationsResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let mut query = reservation::Entity::find().order_by_asc(reservation::Column::CreatedAtMs);
        if !req.order_id.is_empty() {
            query = query.filter(reservation::Column::OrderId.eq(&req.order_id));
        }
        let state = match ReservationState::try_from(req.state) {
            Ok(ReservationState::Active) => Some(DomainState::Active),
            Ok(ReservationState::Committed) => Some(DomainState::Committed),
            Ok(ReservationState::Released) => Some(DomainState::Released),
            Ok(ReservationState::Expired) => Some(DomainState::Expired),
            Ok(ReservationState::Unspecified) => None,
            Err(_) => return Err(ApiError::invalid("state", "unknown reservation state")),
        };
        if let Some(state) = state {
            query = query.filter(reservation::Column::State.eq(state.as_str()));
        }
        let rows = query.offset(offset).limit(size).all(&self.store.db).await?;
        let next = next_page_token(offset, rows.len(), size);
        Ok(ListReservationsResponse {
            reservations: rows.into_iter().map(reservation_to_wire).collect(),
            next_page_token: next,
        })
    }
}
