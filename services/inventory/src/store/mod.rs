//! Persistence of inventory. Every stock change is one conditional UPDATE (so the check and the
//! change cannot be separated by a concurrent writer on either engine) followed by one ledger
//! entry per bucket touched, in the same transaction as the caller's idempotency key and outbox
//! event.

pub mod entities;
pub mod migration;
mod reservations;
pub mod valuation;

use std::collections::BTreeMap;

use erp_runtime::outbox::{self, OutboxWaker};
use erp_runtime::time::now_ms;
use erp_runtime::{ApiError, ApiResult};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;

use crate::domain::{Bucket, InventoryError, Levels, Reason, ReservationState};
use entities::{cycle_count, inbound, item, ledger, location, reservation, stock_level, transfer};

/// Where a change came from, recorded on its ledger entries.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub kind: String,
    pub id: String,
    pub actor: String,
}

/// The most units one bucket of one item at one location may hold (each movement is at most
/// `MAX_QUANTITY`; a thousand times that per bucket keeps every sum of buckets far from i64).
pub const MAX_STOCK: i64 = 1_000_000_000_000;

#[derive(Clone)]
pub struct Store {
    pub db: DatabaseConnection,
    pub outbox: OutboxWaker,
    pub cache: crate::cache::AtpCache,
}

#[derive(Serialize)]
pub(crate) struct StockChanged<'a> {
    pub sku: &'a str,
    pub location: &'a str,
    pub on_hand: i64,
    pub reserved: i64,
    pub inbound: i64,
    pub available: i64,
    pub reason: &'a str,
    /// The change of on hand (negative for a shipment): what demand signals count.
    pub on_hand_delta: i64,
    /// The change of inventory value (moving average) this movement made, for finance to post.
    pub value_delta_minor: i64,
    pub currency: &'a str,
    /// The document behind it: an order for a shipment, a purchase order for a receipt.
    pub source_kind: &'a str,
    pub source_id: &'a str,
}

#[derive(Serialize)]
struct LowStock<'a> {
    sku: &'a str,
    network_available: i64,
    threshold: i64,
}

fn column(bucket: Bucket) -> stock_level::Column {
    match bucket {
        Bucket::OnHand => stock_level::Column::OnHand,
        Bucket::Reserved => stock_level::Column::Reserved,
        Bucket::Inbound => stock_level::Column::Inbound,
        Bucket::ReturnsPending => stock_level::Column::ReturnsPending,
        Bucket::Quarantined => stock_level::Column::Quarantined,
    }
}

pub fn levels(row: &stock_level::Model) -> Levels {
    Levels {
        on_hand: row.on_hand,
        reserved: row.reserved,
        inbound: row.inbound,
        returns_pending: row.returns_pending,
        quarantined: row.quarantined,
    }
}

impl Store {
    pub fn new(db: DatabaseConnection, outbox: OutboxWaker, cache: crate::cache::AtpCache) -> Self {
        Self { db, outbox, cache }
    }

    pub async fn item<C: ConnectionTrait>(&self, c: &C, sku: &str) -> ApiResult<item::Model> {
        item::Entity::find_by_id(sku.to_owned())
            .one(c)
            .await?
            .ok_or_else(|| InventoryError::UnknownSku(sku.to_owned()).into())
    }

    pub async fn location<C: ConnectionTrait>(
        &self,
        c: &C,
        code: &str,
    ) -> ApiResult<location::Model> {
        location::Entity::find_by_id(code.to_owned())
            .one(c)
            .await?
            .ok_or_else(|| InventoryError::UnknownLocation(code.to_owned()).into())
    }

    /// Makes sure the stock row of (sku, location) exists, after checking both are known.
    pub(crate) async fn ensure_row<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        loc: &str,
    ) -> ApiResult<()> {
        self.item(c, sku).await?;
        self.location(c, loc).await?;
        stock_level::Entity::insert(stock_level::ActiveModel {
            sku: Set(sku.to_owned()),
            location: Set(loc.to_owned()),
            on_hand: Set(0),
            reserved: Set(0),
            inbound: Set(0),
            returns_pending: Set(0),
            quarantined: Set(0),
        })
        .on_conflict(
            OnConflict::columns([stock_level::Column::Sku, stock_level::Column::Location])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(c)
        .await?;
        Ok(())
    }

    pub async fn levels_of<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        loc: &str,
    ) -> ApiResult<Option<stock_level::Model>> {
        Ok(
            stock_level::Entity::find_by_id((sku.to_owned(), loc.to_owned()))
                .one(c)
                .await?,
        )
    }

    /// Applies signed `changes` to the buckets of (sku, location) as one conditional UPDATE:
    /// no bucket may go negative and reserved may not exceed on hand. Writes a ledger entry per
    /// bucket and a stock-changed event. Fails without effect when the condition does not hold.
    pub async fn change<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        loc: &str,
        changes: &[(Bucket, i64)],
        reason: Reason,
        source: &Source,
    ) -> ApiResult<stock_level::Model> {
        self.change_valued(c, sku, loc, changes, reason, source, None)
            .await
    }

    /// [`Store::change`], with the unit cost of units received (a purchase order's price); the
    /// change of owned stock is valued (see [`valuation`]) and its value rides on the event.
    #[allow(clippy::too_many_arguments)]
    pub async fn change_valued<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        loc: &str,
        changes: &[(Bucket, i64)],
        reason: Reason,
        source: &Source,
        unit_cost: Option<i64>,
    ) -> ApiResult<stock_level::Model> {
        self.ensure_row(c, sku, loc).await?;
        let mut update = stock_level::Entity::update_many()
            .filter(stock_level::Column::Sku.eq(sku))
            .filter(stock_level::Column::Location.eq(loc));
        let mut d_on_hand = 0;
        let mut d_reserved = 0;
        for &(bucket, delta) in changes {
            let col = column(bucket);
            update = update.col_expr(col, Expr::col(col).add(delta));
            if delta < 0 {
                update = update.filter(Expr::col(col).add(delta).gte(0));
            } else {
                // Bounded above too, in the same statement: no bucket grows past MAX_STOCK
                // (SQLite would turn an overflowing sum into a REAL, PostgreSQL into an error).
                update = update.filter(Expr::col(col).lte(MAX_STOCK - delta));
            }
            match bucket {
                Bucket::OnHand => d_on_hand += delta,
                Bucket::Reserved => d_reserved += delta,
                _ => {}
            }
        }
        if d_on_hand - d_reserved < 0 {
            // Available (on hand - reserved) shrinks: it must stay >= 0.
            update = update.filter(
                Expr::col(stock_level::Column::OnHand)
                    .sub(Expr::col(stock_level::Column::Reserved))
                    .add(d_on_hand - d_reserved)
                    .gte(0),
            );
        }
        let result = update.exec(c).await?;
        let after = self
            .levels_of(c, sku, loc)
            .await?
            .ok_or_else(|| ApiError::Internal(format!("stock row {sku}@{loc} vanished")))?;
        if result.rows_affected == 0 {
            let current = levels(&after);
            if let Some(&(bucket, _)) = changes
                .iter()
                .find(|&&(b, d)| d > 0 && current.get(b).saturating_add(d) > MAX_STOCK)
            {
                return Err(ApiError::precondition(
                    "STOCK_OUT_OF_RANGE",
                    format!(
                        "{} of {sku} at {loc} would exceed {MAX_STOCK} units",
                        bucket.as_str()
                    ),
                ));
            }
            if d_reserved > 0 || d_on_hand < 0 {
                return Err(InventoryError::InsufficientStock {
                    sku: sku.to_owned(),
                    location: loc.to_owned(),
                    requested: std::cmp::max(d_reserved, -d_on_hand),
                    available: current.available(),
                }
                .into());
            }
            let (bucket, delta) = changes
                .iter()
                .copied()
                .find(|&(b, d)| current.get(b).saturating_add(d) < 0)
                .unwrap_or((Bucket::OnHand, 0));
            return Err(InventoryError::NegativeBucket {
                sku: sku.to_owned(),
                location: loc.to_owned(),
                bucket: bucket.as_str(),
                current: current.get(bucket),
                delta,
            }
            .into());
        }
        self.cache.invalidate(sku).await;
        let now = now_ms();
        let after_levels = levels(&after);
        for &(bucket, delta) in changes {
            if delta == 0 {
                continue;
            }
            ledger::ActiveModel {
                sku: Set(sku.to_owned()),
                location: Set(loc.to_owned()),
                bucket: Set(bucket.as_str().to_owned()),
                delta: Set(delta),
                balance_after: Set(after_levels.get(bucket)),
                reason: Set(reason.as_str().to_owned()),
                source_kind: Set(source.kind.clone()),
                source_id: Set(source.id.clone()),
                actor: Set(source.actor.clone()),
                recorded_at_ms: Set(now),
                ..Default::default()
            }
            .insert(c)
            .await?;
        }
        // Owned stock (on hand and quarantined) changes value; a transfer only moves it.
        let owned: i64 = changes
            .iter()
            .filter(|(b, _)| matches!(b, Bucket::OnHand | Bucket::Quarantined))
            .map(|(_, d)| d)
            .sum();
        let valued = if owned != 0 && !matches!(reason, Reason::TransferOut | Reason::TransferIn) {
            self.revalue(c, sku, owned, unit_cost).await?
        } else {
            valuation::Valued::default()
        };
        outbox::enqueue(
            c,
            "inventory.stock_changed",
            &format!("{sku}@{loc}"),
            &StockChanged {
                sku,
                location: loc,
                on_hand: after.on_hand,
                reserved: after.reserved,
                inbound: after.inbound,
                available: after_levels.available(),
                reason: reason.as_str(),
                on_hand_delta: d_on_hand,
                value_delta_minor: valued.value_delta,
                currency: &valued.currency,
                source_kind: &source.kind,
                source_id: &source.id,
            },
        )
        .await?;
        if d_on_hand - d_reserved < 0 {
            self.check_low_stock(c, sku).await?;
        }
        Ok(after)
    }

    pub(crate) async fn check_low_stock<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
    ) -> ApiResult<()> {
        let item = self.item(c, sku).await?;
        if item.low_stock_threshold <= 0 {
            return Ok(());
        }
        let network = self.network_available(c, sku).await?;
        if network <= item.low_stock_threshold {
            outbox::enqueue(
                c,
                "inventory.low_stock",
                sku,
                &LowStock {
                    sku,
                    network_available: network,
                    threshold: item.low_stock_threshold,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Available to promise now across every online location.
    pub async fn network_available<C: ConnectionTrait>(&self, c: &C, sku: &str) -> ApiResult<i64> {
        let online: Vec<String> = location::Entity::find()
            .filter(location::Column::Online.eq(true))
            .all(c)
            .await?
            .into_iter()
            .map(|l| l.code)
            .collect();
        Ok(stock_level::Entity::find()
            .filter(stock_level::Column::Sku.eq(sku))
            .filter(stock_level::Column::Location.is_in(online))
            .all(c)
            .await?
            .iter()
            .map(|r| levels(r).available())
            .sum())
    }

    /// Availability of `skus` per online location, with inbound expected by `as_of_ms` counted.
    pub async fn availability<C: ConnectionTrait>(
        &self,
        c: &C,
        skus: &[String],
        as_of_ms: Option<i64>,
    ) -> ApiResult<BTreeMap<String, BTreeMap<String, i64>>> {
        let online: Vec<String> = location::Entity::find()
            .filter(location::Column::Online.eq(true))
            .all(c)
            .await?
            .into_iter()
            .map(|l| l.code)
            .collect();
        let mut out: BTreeMap<String, BTreeMap<String, i64>> =
            skus.iter().map(|s| (s.clone(), BTreeMap::new())).collect();
        let rows = stock_level::Entity::find()
            .filter(stock_level::Column::Sku.is_in(skus.iter().cloned()))
            .filter(stock_level::Column::Location.is_in(online.iter().cloned()))
            .all(c)
            .await?;
        for row in rows {
            out.entry(row.sku.clone())
                .or_default()
                .insert(row.location.clone(), levels(&row).available());
        }
        if let Some(as_of) = as_of_ms {
            let expected = inbound::Entity::find()
                .filter(inbound::Column::Sku.is_in(skus.iter().cloned()))
                .filter(inbound::Column::Location.is_in(online))
                .filter(inbound::Column::ExpectedAtMs.lte(as_of))
                .all(c)
                .await?;
            for e in expected {
                *out.entry(e.sku).or_default().entry(e.location).or_default() += e.quantity;
            }
        }
        Ok(out)
    }

    /// Inbound stock still expected for `skus` at online locations, earliest first.
    pub async fn inbound_lots<C: ConnectionTrait>(
        &self,
        c: &C,
        skus: &[String],
    ) -> ApiResult<Vec<inbound::Model>> {
        let online: Vec<String> = location::Entity::find()
            .filter(location::Column::Online.eq(true))
            .all(c)
            .await?
            .into_iter()
            .map(|l| l.code)
            .collect();
        Ok(inbound::Entity::find()
            .filter(inbound::Column::Sku.is_in(skus.iter().cloned()))
            .filter(inbound::Column::Location.is_in(online))
            .filter(inbound::Column::Quantity.gt(0))
            .order_by_asc(inbound::Column::ExpectedAtMs)
            .all(c)
            .await?)
    }

    /// Records inbound stock with its expected date.
    pub async fn record_inbound<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        loc: &str,
        quantity: i64,
        expected_at_ms: i64,
        source: &Source,
    ) -> ApiResult<stock_level::Model> {
        let level = self
            .change(
                c,
                sku,
                loc,
                &[(Bucket::Inbound, quantity)],
                Reason::Inbound,
                source,
            )
            .await?;
        inbound::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            sku: Set(sku.to_owned()),
            location: Set(loc.to_owned()),
            quantity: Set(quantity),
            expected_at_ms: Set(expected_at_ms),
        }
        .insert(c)
        .await?;
        Ok(level)
    }

    /// Consumes inbound expectations oldest first when a receipt clears inbound stock.
    pub async fn consume_inbound<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        loc: &str,
        mut quantity: i64,
    ) -> ApiResult<()> {
        let rows = inbound::Entity::find()
            .filter(inbound::Column::Sku.eq(sku))
            .filter(inbound::Column::Location.eq(loc))
            .order_by_asc(inbound::Column::ExpectedAtMs)
            .all(c)
            .await?;
        for row in rows {
            if quantity == 0 {
                break;
            }
            let take = std::cmp::min(row.quantity, quantity);
            quantity -= take;
            if take == row.quantity {
                inbound::Entity::delete_by_id(row.id).exec(c).await?;
            } else {
                let mut am: inbound::ActiveModel = row.into();
                let left = am.quantity.clone().unwrap() - take;
                am.quantity = Set(left);
                am.update(c).await?;
            }
        }
        Ok(())
    }

    /// Ships stock from one location towards another: out of on hand at the origin, into
    /// inbound (with its expected date) at the destination.
    pub async fn transfer<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        from: &str,
        to: &str,
        quantity: i64,
        expected_at_ms: i64,
    ) -> ApiResult<(transfer::Model, stock_level::Model, stock_level::Model)> {
        let id = uuid::Uuid::now_v7().to_string();
        let source = Source {
            kind: "transfer".into(),
            id: id.clone(),
            actor: "transfer".into(),
        };
        let from_level = self
            .change(
                c,
                sku,
                from,
                &[(Bucket::OnHand, -quantity)],
                Reason::TransferOut,
                &source,
            )
            .await?;
        let to_level = self
            .record_inbound(c, sku, to, quantity, expected_at_ms, &source)
            .await?;
        let t = transfer::ActiveModel {
            transfer_id: Set(id),
            sku: Set(sku.to_owned()),
            from_location: Set(from.to_owned()),
            to_location: Set(to.to_owned()),
            quantity: Set(quantity),
            state: Set("in_transit".into()),
            expected_at_ms: Set(expected_at_ms),
            created_at_ms: Set(now_ms()),
        }
        .insert(c)
        .await?;
        Ok((t, from_level, to_level))
    }

    /// Checks that a receipt matches an in-transit transfer and marks it received.
    pub async fn receive_transfer<C: ConnectionTrait>(
        &self,
        c: &C,
        transfer_id: &str,
        sku: &str,
        loc: &str,
        quantity: i64,
    ) -> ApiResult<()> {
        let t = transfer::Entity::find_by_id(transfer_id.to_owned())
            .one(c)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("transfer {transfer_id}")))?;
        let problem = if t.state != "in_transit" {
            Some(format!("is {}", t.state))
        } else if t.sku != sku || t.to_location != loc {
            Some(format!(
                "carries {} to {}, not {sku} to {loc}",
                t.sku, t.to_location
            ))
        } else if t.quantity != quantity {
            Some(format!("carries {} units, not {quantity}", t.quantity))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(InventoryError::Transfer(transfer_id.to_owned(), p).into());
        }
        let mut am: transfer::ActiveModel = t.into();
        am.state = Set("received".into());
        am.update(c).await?;
        Ok(())
    }

    /// Records a count: the variance adjusts on hand (reason cycle_count), and the count feeds
    /// the location's accuracy. Returns (expected, level, accuracy in basis points).
    pub async fn cycle_count<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        loc: &str,
        counted: i64,
        actor: &str,
        reason: &str,
    ) -> ApiResult<(i64, stock_level::Model, i32)> {
        self.ensure_row(c, sku, loc).await?;
        let current = self
            .levels_of(c, sku, loc)
            .await?
            .ok_or_else(|| ApiError::Internal(format!("stock row {sku}@{loc} vanished")))?;
        if counted < current.reserved {
            return Err(InventoryError::CountBelowReserved {
                sku: sku.to_owned(),
                location: loc.to_owned(),
                counted,
                reserved: current.reserved,
            }
            .into());
        }
        let variance = counted - current.on_hand;
        let level = if variance == 0 {
            current.clone()
        } else {
            let source = Source {
                kind: "cycle_count".into(),
                id: reason.to_owned(),
                actor: actor.to_owned(),
            };
            self.change(
                c,
                sku,
                loc,
                &[(Bucket::OnHand, variance)],
                Reason::CycleCount,
                &source,
            )
            .await?
        };
        cycle_count::ActiveModel {
            sku: Set(sku.to_owned()),
            location: Set(loc.to_owned()),
            expected_quantity: Set(current.on_hand),
            counted_quantity: Set(counted),
            variance: Set(variance),
            actor: Set(actor.to_owned()),
            reason: Set(reason.to_owned()),
            counted_at_ms: Set(now_ms()),
            ..Default::default()
        }
        .insert(c)
        .await?;
        let counts = cycle_count::Entity::find()
            .filter(cycle_count::Column::Location.eq(loc))
            .all(c)
            .await?;
        let exact = counts.iter().filter(|x| x.variance == 0).count();
        let accuracy = i32::try_from(exact * 10_000 / counts.len().max(1)).unwrap_or(0);
        Ok((current.on_hand, level, accuracy))
    }

    /// Replays the ledger from zero and compares with the buckets.
    pub async fn verify_ledger<C: ConnectionTrait>(
        &self,
        c: &C,
    ) -> ApiResult<(u64, Vec<(String, String, Bucket, i64, i64)>)> {
        let mut replay: BTreeMap<(String, String, Bucket), i64> = BTreeMap::new();
        let mut entries = 0u64;
        let mut pages = ledger::Entity::find()
            .order_by_asc(ledger::Column::Seq)
            .paginate(c, 5000);
        while let Some(page) = pages.fetch_and_next().await? {
            for e in page {
                entries += 1;
                let bucket = Bucket::parse(&e.bucket).ok_or_else(|| {
                    ApiError::Internal(format!("ledger entry {} has bucket {:?}", e.seq, e.bucket))
                })?;
                *replay.entry((e.sku, e.location, bucket)).or_default() += e.delta;
            }
        }
        let mut mismatches = Vec::new();
        let rows = stock_level::Entity::find().all(c).await?;
        let mut seen = std::collections::BTreeSet::new();
        for row in rows {
            let l = levels(&row);
            for b in Bucket::ALL {
                let key = (row.sku.clone(), row.location.clone(), b);
                let from_ledger = replay.get(&key).copied().unwrap_or(0);
                seen.insert(key);
                if from_ledger != l.get(b) {
                    mismatches.push((
                        row.sku.clone(),
                        row.location.clone(),
                        b,
                        from_ledger,
                        l.get(b),
                    ));
                }
            }
        }
        for ((sku, loc, b), v) in replay {
            if !seen.contains(&(sku.clone(), loc.clone(), b)) && v != 0 {
                mismatches.push((sku, loc, b, v, 0));
            }
        }
        Ok((entries, mismatches))
    }
}
