//! Items and locations.

use super::*;

impl InventoryApi {
    pub(super) async fn create_item(
        &self,
        req: CreateItemRequest,
    ) -> ApiResult<CreateItemResponse> {
        let Some(item) = req.item else {
            return Err(ApiError::invalid("item", "is required"));
        };
        let mut v = Violations::new();
        v.code("item.sku", &item.sku);
        v.text("item.name", &item.name, 200);
        let cost = item.unit_cost.clone().unwrap_or_default();
        v.non_negative("item.unit_cost.amount_minor", cost.amount_minor);
        v.currency("item.unit_cost.currency", &cost.currency);
        v.non_negative("item.weight_grams", item.weight_grams);
        v.non_negative("item.low_stock_threshold", item.low_stock_threshold);
        v.check(
            matches!(
                item.tax_class.as_str(),
                "" | "standard" | "reduced" | "zero"
            ),
            "item.tax_class",
            "must be standard, reduced or zero",
        );
        v.finish()?;
        let tax_class = if item.tax_class.is_empty() {
            "standard".to_owned()
        } else {
            item.tax_class.clone()
        };
        let txn = self.store.db.begin().await?;
        if let Some(existing) = item::Entity::find_by_id(item.sku.clone()).one(&txn).await? {
            let same = existing.name == item.name
                && existing.unit_cost_minor == cost.amount_minor
                && existing.currency == cost.currency
                && existing.weight_grams == item.weight_grams
                && existing.tax_class == tax_class
                && existing.low_stock_threshold == item.low_stock_threshold;
            if !same {
                return Err(ApiError::AlreadyExists(format!(
                    "item {} exists with different attributes",
                    item.sku
                )));
            }
            return Ok(CreateItemResponse {
                item: Some(item_to_wire(existing)),
                created: false,
            });
        }
        let model = item::ActiveModel {
            sku: Set(item.sku.clone()),
            name: Set(item.name.clone()),
            unit_cost_minor: Set(cost.amount_minor),
            currency: Set(cost.currency.clone()),
            weight_grams: Set(item.weight_grams),
            tax_class: Set(tax_class),
            low_stock_threshold: Set(item.low_stock_threshold),
            created_at_ms: Set(now_ms()),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(CreateItemResponse {
            item: Some(item_to_wire(model)),
            created: true,
        })
    }

    pub(super) async fn list_items(&self, req: ListItemsRequest) -> ApiResult<ListItemsResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let mut v = Violations::new();
        v.optional_text("sku_prefix", &req.sku_prefix, 64);
        v.finish()?;
        let mut query = item::Entity::find().order_by_asc(item::Column::Sku);
        if !req.sku_prefix.is_empty() {
            // A prefix, not a pattern: `_` (allowed in SKUs) and `%` match only themselves.
            let escaped = req
                .sku_prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            query = query.filter(sea_orm::sea_query::ExprTrait::like(
                sea_orm::sea_query::Expr::col(item::Column::Sku),
                sea_orm::sea_query::LikeExpr::new(format!("{escaped}%")).escape('\\'),
            ));
        }
        let rows = query.offset(offset).limit(size).all(&self.store.db).await?;
        let next = next_page_token(offset, rows.len(), size);
        Ok(ListItemsResponse {
            items: rows.into_iter().map(item_to_wire).collect(),
            next_page_token: next,
        })
    }

    pub(super) async fn create_location(
        &self,
        req: CreateLocationRequest,
    ) -> ApiResult<CreateLocationResponse> {
        let Some(loc) = req.location else {
            return Err(ApiError::invalid("location", "is required"));
        };
        let mut v = Violations::new();
        v.code("location.code", &loc.code);
        v.text("location.name", &loc.name, 200);
        v.code("location.region", &loc.region);
        v.finish()?;
        let txn = self.store.db.begin().await?;
        if let Some(existing) = location::Entity::find_by_id(loc.code.clone())
            .one(&txn)
            .await?
        {
            if existing.name != loc.name || existing.region != loc.region {
                return Err(ApiError::AlreadyExists(format!(
                    "location {} exists with different attributes",
                    loc.code
                )));
            }
            return Ok(CreateLocationResponse {
                location: Some(location_to_wire(existing)),
                created: false,
            });
        }
        let model = location::ActiveModel {
            code: Set(loc.code.clone()),
            name: Set(loc.name.clone()),
            region: Set(loc.region.clone()),
            online: Set(true),
            status_reason: Set(String::new()),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(CreateLocationResponse {
            location: Some(location_to_wire(model)),
            created: true,
        })
    }

    pub(super) async fn set_location_status(
        &self,
        caller: &Caller,
        req: SetLocationStatusRequest,
    ) -> ApiResult<SetLocationStatusResponse> {
        let mut v = Violations::new();
        v.code("code", &req.code);
        let status = LocationStatus::try_from(req.status).unwrap_or(LocationStatus::Unspecified);
        v.check(
            status != LocationStatus::Unspecified,
            "status",
            "must be ONLINE or OFFLINE",
        );
        v.actor("actor", req.actor.as_ref());
        v.finish()?;
        let txn = self.store.db.begin().await?;
        let row = self.store.location(&txn, &req.code).await?;
        let before = serde_json::json!({ "online": row.online, "reason": row.status_reason });
        let mut am: location::ActiveModel = row.into();
        am.online = Set(status == LocationStatus::Online);
        am.status_reason = Set(req
            .actor
            .as_ref()
            .map(|a| a.reason.clone())
            .unwrap_or_default());
        let model = am.update(&txn).await?;
        erp_runtime::outbox::enqueue(
            &txn,
            "inventory.location_status_changed",
            &req.code,
            &serde_json::json!({ "location": req.code, "online": model.online, "by": caller.subject }),
        )
        .await?;
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("location:{}", req.code),
                reason: &model.status_reason,
                before: Some(before),
                after: Some(
                    serde_json::json!({ "online": model.online, "reason": model.status_reason }),
                ),
            },
        )
        .await?;
        txn.commit().await?;
        self.store.cache.invalidate_all().await;
        self.store.outbox.wake();
        Ok(SetLocationStatusResponse {
            location: Some(location_to_wire(model)),
        })
    }
}
