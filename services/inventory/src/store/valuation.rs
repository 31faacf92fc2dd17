//! Perpetual moving-average valuation. Every change of owned stock (on hand plus quarantined,
//! network-wide) is valued here in the transaction that makes it, and the value travels on the
//! stock-changed event for finance to post: receipts at their cost (or the current average),
//! removals at the current average, landed costs onto the units in stock.

use erp_runtime::{ApiError, ApiResult};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait, QuerySelect};

use super::entities::{item, item_value, receipt_cost};
use super::{Source, StockChanged, Store};

/// The value of removing `quantity` of `held` units worth `value`: the exact remainder when
/// everything leaves, so the valuation returns to zero with the stock.
pub fn removal_value(held: i64, value: i64, quantity: i64) -> i64 {
    if quantity >= held || held <= 0 {
        return value;
    }
    let v = (i128::from(value) * i128::from(quantity) + i128::from(held) / 2) / i128::from(held);
    i64::try_from(v).unwrap_or(value)
}

/// Splits `total` across `weights` in proportion, largest remainder first, so the parts add up
/// to the total exactly.
pub fn allocate(total: i64, weights: &[i128]) -> Vec<i64> {
    let sum: i128 = weights.iter().sum();
    if sum <= 0 {
        return vec![0; weights.len()];
    }
    let mut parts: Vec<(usize, i64, i128)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let exact = i128::from(total) * *w;
            (i, i64::try_from(exact / sum).unwrap_or(0), exact % sum)
        })
        .collect();
    let mut left = total - parts.iter().map(|p| p.1).sum::<i64>();
    parts.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    for p in parts.iter_mut() {
        if left <= 0 {
            break;
        }
        p.1 += 1;
        left -= 1;
    }
    parts.sort_by_key(|p| p.0);
    parts.into_iter().map(|p| p.1).collect()
}

/// A change of value, in the item's currency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Valued {
    pub value_delta: i64,
    pub currency: String,
}

impl Store {
    /// The item's valuation row, locked for this transaction (PostgreSQL) and created at zero
    /// when the item has none yet.
    async fn valuation<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
    ) -> ApiResult<item_value::Model> {
        let locked = || {
            item_value::Entity::find_by_id(sku.to_owned())
                .lock_exclusive()
                .one(c)
        };
        // The usual case, one statement: the row exists.
        if let Some(v) = locked().await? {
            return Ok(v);
        }
        let it = item::Entity::find_by_id(sku.to_owned())
            .one(c)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("item {sku}")))?;
        item_value::Entity::insert(item_value::ActiveModel {
            sku: Set(sku.to_owned()),
            quantity: Set(0),
            value_minor: Set(0),
            currency: Set(it.currency),
        })
        .on_conflict(
            OnConflict::column(item_value::Column::Sku)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(c)
        .await?;
        locked()
            .await?
            .ok_or_else(|| ApiError::Internal(format!("valuation of {sku} vanished")))
    }

    /// Values a change of `owned` units: added ones at `unit_cost` (a receipt's cost) or else at
    /// the current average (the catalog cost when none is held), removed ones at the average.
    pub(crate) async fn revalue<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        owned: i64,
        unit_cost: Option<i64>,
    ) -> ApiResult<Valued> {
        let v = self.valuation(c, sku).await?;
        let delta = if owned > 0 {
            let unit = match unit_cost {
                Some(u) => u,
                None if v.quantity > 0 => v.value_minor / v.quantity,
                None => item::Entity::find_by_id(sku.to_owned())
                    .one(c)
                    .await?
                    .map_or(0, |i| i.unit_cost_minor),
            };
            erp_runtime::money::value_of(owned, unit, "the value of the units received")?
        } else {
            -removal_value(v.quantity, v.value_minor, -owned)
        };
        let currency = v.currency.clone();
        // The stock of one item is worth at most the largest amount accepted anywhere, so that
        // every total of it (valuation, journal, margins) stays in range.
        let value = erp_runtime::money::add(v.value_minor, delta, "the item's stock value")?;
        if value > erp_runtime::validate::MAX_AMOUNT_MINOR {
            return Err(erp_runtime::money::out_of_range("the item's stock value"));
        }
        let mut am: item_value::ActiveModel = v.clone().into();
        am.quantity =
            Set(erp_runtime::money::add(v.quantity, owned, "the item's quantity")?.max(0));
        am.value_minor = Set(value.max(0));
        am.update(c).await?;
        Ok(Valued {
            value_delta: delta,
            currency,
        })
    }

    /// Adds `amount` (a landed cost) to the value of the units in stock. Returns false when
    /// none are held: the cost belongs to goods already sold.
    pub(crate) async fn capitalize<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        amount: i64,
    ) -> ApiResult<(bool, String)> {
        let v = self.valuation(c, sku).await?;
        let currency = v.currency.clone();
        if v.quantity == 0 {
            return Ok((false, currency));
        }
        let value = erp_runtime::money::add(v.value_minor, amount, "the item's stock value")?;
        if value > erp_runtime::validate::MAX_AMOUNT_MINOR {
            return Err(erp_runtime::money::out_of_range("the item's stock value"));
        }
        let mut am: item_value::ActiveModel = v.clone().into();
        am.value_minor = Set(value);
        am.update(c).await?;
        Ok((true, currency))
    }
}

impl Store {
    /// Remembers what a receipt's units cost, for a landed cost that arrives later.
    pub(crate) async fn record_receipt_cost<C: ConnectionTrait>(
        &self,
        c: &C,
        source: &Source,
        sku: &str,
        quantity: i64,
        unit_cost: Option<i64>,
    ) -> ApiResult<()> {
        let unit = match unit_cost {
            Some(u) => u,
            None => {
                let v = self.valuation(c, sku).await?;
                if v.quantity > 0 {
                    v.value_minor / v.quantity
                } else {
                    0
                }
            }
        };
        let key = (source.kind.clone(), source.id.clone(), sku.to_owned());
        match receipt_cost::Entity::find_by_id(key).one(c).await? {
            Some(r) => {
                let mut am: receipt_cost::ActiveModel = r.clone().into();
                am.quantity = Set(erp_runtime::money::add(
                    r.quantity,
                    quantity,
                    "the receipt's quantity",
                )?);
                am.unit_cost_minor = Set(unit);
                am.update(c).await?;
            }
            None => {
                receipt_cost::ActiveModel {
                    source_kind: Set(source.kind.clone()),
                    source_id: Set(source.id.clone()),
                    sku: Set(sku.to_owned()),
                    quantity: Set(quantity),
                    unit_cost_minor: Set(unit),
                }
                .insert(c)
                .await?;
            }
        }
        Ok(())
    }

    /// Tells finance about a landed cost: capitalized into stock, or a cost of goods sold.
    pub(crate) async fn landed_cost_event<C: ConnectionTrait>(
        &self,
        c: &C,
        sku: &str,
        amount: i64,
        currency: &str,
        capitalized: bool,
        receipt: &erp_proto::common::SourceDocument,
    ) -> ApiResult<()> {
        erp_runtime::outbox::enqueue(
            c,
            "inventory.stock_changed",
            sku,
            &StockChanged {
                sku,
                location: "",
                on_hand: 0,
                reserved: 0,
                inbound: 0,
                available: 0,
                reason: if capitalized {
                    "landed_cost"
                } else {
                    "landed_cost_expensed"
                },
                on_hand_delta: 0,
                value_delta_minor: amount,
                currency,
                source_kind: &receipt.kind,
                source_id: &receipt.id,
            },
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_everything_takes_the_exact_value() {
        // 3 units worth 10.00: 3.33 each, the last one takes what is left.
        assert_eq!(removal_value(3, 1000, 1), 333);
        assert_eq!(removal_value(2, 667, 1), 334);
        assert_eq!(removal_value(1, 333, 1), 333);
        assert_eq!(removal_value(5, 500, 7), 500);
    }

    #[test]
    fn allocation_adds_up_exactly() {
        // 22.00 of freight by value 50.00 : 60.00 -> 10.00 and 12.00.
        assert_eq!(allocate(2200, &[5000, 6000]), [1000, 1200]);
        // By quantity 10 : 30 -> 5.50 and 16.50.
        assert_eq!(allocate(2200, &[10, 30]), [550, 1650]);
        // By weight 10 kg : 15 kg -> 8.80 and 13.20.
        assert_eq!(allocate(2200, &[10_000, 15_000]), [880, 1320]);
        // 1.00 in three: the remainder goes to the largest fractions, first line first.
        assert_eq!(allocate(100, &[1, 1, 1]), [34, 33, 33]);
        assert_eq!(allocate(100, &[0, 0]), [0, 0]);
        // Weights beyond i64 (10^9 units at 10^12 each) still split exactly.
        assert_eq!(
            allocate(
                300,
                &[1_000_000_000_000_000_000_000, 2_000_000_000_000_000_000_000]
            ),
            [100, 200]
        );
    }
}
