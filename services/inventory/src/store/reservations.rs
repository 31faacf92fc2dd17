//! Reservations: held per order line at a location, released or committed by the saga,
//! expired when their hold lapses.

use super::*;

impl Store {
    /// Reserves each line; all-or-nothing fails the whole call at the first short line (the
    /// caller's transaction is then rolled back), partial takes what is available.
    pub async fn reserve<C: ConnectionTrait>(
        &self,
        c: &C,
        order_id: &str,
        lines: &[(String, String, String, i64)],
        partial: bool,
        expires_at_ms: Option<i64>,
    ) -> ApiResult<(Vec<reservation::Model>, Vec<String>)> {
        let source = Source {
            kind: "order".into(),
            id: order_id.to_owned(),
            actor: "inventory".into(),
        };
        let mut made = Vec::new();
        let mut short = Vec::new();
        for (line_id, sku, loc, quantity) in lines {
            let loc_row = self.location(c, loc).await?;
            if !loc_row.online {
                return Err(InventoryError::LocationOffline(loc.clone()).into());
            }
            let mut take = *quantity;
            if partial {
                let available = self
                    .levels_of(c, sku, loc)
                    .await?
                    .map(|r| levels(&r).available())
                    .unwrap_or(0);
                take = std::cmp::min(take, available);
                if take < *quantity {
                    short.push(line_id.clone());
                }
                if take == 0 {
                    continue;
                }
            }
            self.change(
                c,
                sku,
                loc,
                &[(Bucket::Reserved, take)],
                Reason::Reservation,
                &source,
            )
            .await?;
            let row = reservation::ActiveModel {
                reservation_id: Set(uuid::Uuid::now_v7().to_string()),
                order_id: Set(order_id.to_owned()),
                order_line_id: Set(line_id.clone()),
                sku: Set(sku.clone()),
                location: Set(loc.clone()),
                quantity: Set(take),
                state: Set(ReservationState::Active.as_str().to_owned()),
                expires_at_ms: Set(expires_at_ms),
                created_at_ms: Set(now_ms()),
            }
            .insert(c)
            .await?;
            made.push(row);
        }
        Ok((made, short))
    }

    /// Active reservations of an order, optionally only the listed ones.
    async fn active_reservations<C: ConnectionTrait>(
        &self,
        c: &C,
        order_id: &str,
        ids: &[String],
    ) -> ApiResult<Vec<reservation::Model>> {
        let mut query = reservation::Entity::find()
            .filter(reservation::Column::OrderId.eq(order_id))
            .order_by_asc(reservation::Column::CreatedAtMs);
        if !ids.is_empty() {
            query = query.filter(reservation::Column::ReservationId.is_in(ids.iter().cloned()));
        }
        // Locked until the caller commits: a release racing a commit (or another release, or
        // the expiry sweep) waits, then sees the reservation no longer active, instead of both
        // taking its units out of the reserved bucket.
        let rows = query.lock_exclusive().all(c).await?;
        for row in &rows {
            if !ids.is_empty() && row.state != ReservationState::Active.as_str() {
                return Err(InventoryError::ReservationNotActive {
                    id: row.reservation_id.clone(),
                    state: ReservationState::parse(&row.state)
                        .map_or("unknown", ReservationState::as_str),
                }
                .into());
            }
        }
        Ok(rows
            .into_iter()
            .filter(|r| r.state == ReservationState::Active.as_str())
            .collect())
    }

    /// Releases active reservations back to available stock.
    pub async fn release<C: ConnectionTrait>(
        &self,
        c: &C,
        order_id: &str,
        ids: &[String],
        new_state: ReservationState,
    ) -> ApiResult<Vec<reservation::Model>> {
        let source = Source {
            kind: "order".into(),
            id: order_id.to_owned(),
            actor: "inventory".into(),
        };
        let mut out = Vec::new();
        for row in self.active_reservations(c, order_id, ids).await? {
            self.change(
                c,
                &row.sku,
                &row.location,
                &[(Bucket::Reserved, -row.quantity)],
                Reason::Release,
                &source,
            )
            .await?;
            out.push(self.set_state(c, row, new_state).await?);
        }
        Ok(out)
    }

    /// Commits active reservations at shipment: the units leave on hand.
    pub async fn commit<C: ConnectionTrait>(
        &self,
        c: &C,
        order_id: &str,
        ids: &[String],
    ) -> ApiResult<Vec<reservation::Model>> {
        let rows = self.active_reservations(c, order_id, ids).await?;
        if rows.is_empty() {
            return Err(InventoryError::NoReservations(order_id.to_owned()).into());
        }
        let source = Source {
            kind: "order".into(),
            id: order_id.to_owned(),
            actor: "inventory".into(),
        };
        let mut out = Vec::new();
        for row in rows {
            self.change(
                c,
                &row.sku,
                &row.location,
                &[
                    (Bucket::Reserved, -row.quantity),
                    (Bucket::OnHand, -row.quantity),
                ],
                Reason::Shipment,
                &source,
            )
            .await?;
            out.push(self.set_state(c, row, ReservationState::Committed).await?);
        }
        Ok(out)
    }

    async fn set_state<C: ConnectionTrait>(
        &self,
        c: &C,
        row: reservation::Model,
        state: ReservationState,
    ) -> ApiResult<reservation::Model> {
        let mut am: reservation::ActiveModel = row.into();
        am.state = Set(state.as_str().to_owned());
        Ok(am.update(c).await?)
    }

    /// Releases active reservations whose expiry passed; returns how many.
    pub async fn expire_due(&self, now: i64) -> ApiResult<usize> {
        let due = reservation::Entity::find()
            .filter(reservation::Column::State.eq(ReservationState::Active.as_str()))
            .filter(reservation::Column::ExpiresAtMs.lte(now))
            .limit(100)
            .all(&self.db)
            .await?;
        let mut count = 0;
        for row in due {
            let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
            match self
                .release(
                    &txn,
                    &row.order_id,
                    std::slice::from_ref(&row.reservation_id),
                    ReservationState::Expired,
                )
                .await
            {
                Ok(released) => {
                    count += released.len();
                    txn.commit().await?;
                }
                // Committed or released since the sweep read it: nothing to expire.
                Err(e) if e.reason() == Some("RESERVATION_NOT_ACTIVE") => {}
                Err(e) => return Err(e),
            }
        }
        if count > 0 {
            self.outbox.wake();
        }
        Ok(count)
    }
}
