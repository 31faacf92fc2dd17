//! Sites: their calendar and capacity, online or offline (what goes offline unpicked is
//! re-routed by the saga), and what each has released today.

use erp_proto::warehouse::*;
use erp_runtime::audit;
use erp_runtime::auth::Caller;
use erp_runtime::outbox;
use erp_runtime::time::now_ms;
use erp_runtime::validate::Violations;
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, EntityTrait, QueryOrder, QuerySelect, TransactionTrait,
};

use super::WarehouseApi;
use crate::domain::FulfillmentState;
use crate::store::{self, site};
use crate::wire::{fulfillment_to_wire, site_state, site_to_wire};

impl WarehouseApi {
    pub(super) async fn upsert_site(
        &self,
        caller: &Caller,
        req: UpsertSiteRequest,
    ) -> ApiResult<UpsertSiteResponse> {
        let Some(s) = req.site else {
            return Err(ApiError::invalid("site", "is required"));
        };
        let mut v = Violations::new();
        v.code("site.code", &s.code);
        v.text("site.name", &s.name, 200);
        v.code("site.region", &s.region);
        v.positive("site.daily_capacity", s.daily_capacity);
        v.check(
            (0..1440).contains(&s.cutoff_minute_of_day),
            "site.cutoff_minute_of_day",
            "must be 0..1440",
        );
        v.check(
            (-840..=840).contains(&s.utc_offset_minutes),
            "site.utc_offset_minutes",
            "must be -840..=840",
        );
        v.check(s.cost_index >= 0, "site.cost_index", "must not be negative");
        v.check(
            s.postal_code.len() <= 20,
            "site.postal_code",
            "must be at most 20 bytes",
        );
        v.optional_text("reason", &req.reason, 500);
        v.finish()?;
        let txn = self.db.begin().await?;
        let existing = site::Entity::find_by_id(s.code.clone())
            .lock_exclusive()
            .one(&txn)
            .await?;
        let before = existing.clone().map(|e| site_state(&site_to_wire(e)));
        let am = site::ActiveModel {
            code: Set(s.code.clone()),
            name: Set(s.name.clone()),
            region: Set(s.region.clone()),
            daily_capacity: Set(s.daily_capacity),
            cutoff_minute_of_day: Set(s.cutoff_minute_of_day),
            utc_offset_minutes: Set(s.utc_offset_minutes),
            online: Set(existing.as_ref().is_none_or(|e| e.online)),
            status_reason: Set(existing
                .as_ref()
                .map(|e| e.status_reason.clone())
                .unwrap_or_default()),
            cost_index: Set(s.cost_index),
            postal_code: Set(s.postal_code.trim().to_owned()),
        };
        let m = if existing.is_some() {
            am.update(&txn).await?
        } else {
            am.insert(&txn).await?
        };
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("site:{}", m.code),
                reason: &req.reason,
                before,
                after: Some(site_state(&site_to_wire(m.clone()))),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(UpsertSiteResponse {
            site: Some(site_to_wire(m)),
        })
    }

    pub(super) async fn set_site_status(
        &self,
        caller: &Caller,
        req: SetSiteStatusRequest,
    ) -> ApiResult<SetSiteStatusResponse> {
        let mut v = Violations::new();
        v.code("code", &req.code);
        let status = SiteStatus::try_from(req.status).unwrap_or(SiteStatus::Unspecified);
        v.check(
            status != SiteStatus::Unspecified,
            "status",
            "must be ONLINE or OFFLINE",
        );
        v.actor("actor", req.actor.as_ref());
        v.finish()?;
        let txn = self.db.begin().await?;
        let s = store::site(&txn, &req.code, true).await?;
        let before = site_state(&site_to_wire(s.clone()));
        let mut am: site::ActiveModel = s.into();
        am.online = Set(status == SiteStatus::Online);
        am.status_reason = Set(req
            .actor
            .as_ref()
            .map(|a| a.reason.clone())
            .unwrap_or_default());
        let m = am.update(&txn).await?;
        let unpicked: Vec<Fulfillment> = store::at_site(
            &txn,
            &req.code,
            &[FulfillmentState::Open, FulfillmentState::Released],
        )
        .await?
        .into_iter()
        .map(|(f, t)| fulfillment_to_wire(f, t))
        .collect();
        outbox::enqueue(
            &txn,
            "warehouse.site_status_changed",
            &req.code,
            &serde_json::json!({
                "site": req.code,
                "online": m.online,
                "unpicked": unpicked.iter().map(|f| f.fulfillment_id.clone()).collect::<Vec<_>>(),
                // What the orchestrator re-routes when the site goes offline.
                "affected": unpicked
                    .iter()
                    .map(|f| serde_json::json!({ "fulfillment_id": f.fulfillment_id, "order_id": f.order_id }))
                    .collect::<Vec<_>>(),
            }),
        )
        .await?;
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("site:{}", req.code),
                reason: &m.status_reason,
                before: Some(before),
                after: Some(site_state(&site_to_wire(m.clone()))),
            },
        )
        .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(SetSiteStatusResponse {
            site: Some(site_to_wire(m)),
            unpicked_fulfillments: unpicked,
        })
    }

    pub(super) async fn get_site(&self, req: GetSiteRequest) -> ApiResult<GetSiteResponse> {
        let mut v = Violations::new();
        v.code("code", &req.code);
        v.finish()?;
        let s = store::site(&self.db, &req.code, false).await?;
        let released_today = store::released_today(&self.db, std::slice::from_ref(&s), now_ms())
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        Ok(GetSiteResponse {
            site: Some(site_to_wire(s)),
            released_today,
        })
    }

    pub(super) async fn list_sites(&self) -> ApiResult<ListSitesResponse> {
        let rows = site::Entity::find()
            .order_by_asc(site::Column::Code)
            .all(&self.db)
            .await?;
        let released_today = store::released_today(&self.db, &rows, now_ms()).await?;
        Ok(ListSitesResponse {
            sites: rows.into_iter().map(site_to_wire).collect(),
            released_today,
        })
    }
}
