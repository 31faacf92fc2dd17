//! Fulfillments: created by the saga at the chosen site, cancelled by its compensation, released
//! to pickers in waves within the site's daily capacity.

use erp_proto::warehouse::*;
use erp_runtime::idempotency::{self, Forward};
use erp_runtime::time::{now_ms, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::WarehouseApi;
use crate::domain::{self, FulfillmentState, TaskState, WaveCandidate};
use crate::error::WarehouseError;
use crate::store::{self, fulfillment, site, task, wave};
use crate::wire::fulfillment_to_wire;

impl WarehouseApi {
    pub(super) async fn create_fulfillment(
        &self,
        req: CreateFulfillmentRequest,
    ) -> ApiResult<CreateFulfillmentResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.optional_text("saga_id", &req.saga_id, 100);
        v.code("site", &req.site);
        v.check(
            !req.lines.is_empty(),
            "lines",
            "must hold at least one line",
        );
        for (i, l) in req.lines.iter().enumerate() {
            v.text(&format!("lines[{i}].order_line_id"), &l.order_line_id, 100);
            v.code(&format!("lines[{i}].sku"), &l.sku);
            v.positive(&format!("lines[{i}].quantity"), l.quantity);
        }
        v.code("service_level", &req.service_level);
        v.finish()?;
        let (txn, guard) =
            erp_runtime::begin_idempotent!(&self.db, "warehouse.CreateFulfillment", req);
        let s = site::Entity::find_by_id(req.site.clone())
            .one(&txn)
            .await?
            .ok_or_else(|| WarehouseError::UnknownSite(req.site.clone()))?;
        if !s.online {
            return Err(WarehouseError::SiteOffline {
                site: s.code,
                reason: s.status_reason,
            }
            .into());
        }
        let id = uuid::Uuid::now_v7().to_string();
        let f = fulfillment::ActiveModel {
            fulfillment_id: Set(id.clone()),
            order_id: Set(req.order_id.clone()),
            site: Set(req.site.clone()),
            status: Set(FulfillmentState::Open.as_str().into()),
            priority: Set(req.priority),
            service_level: Set(req.service_level.clone()),
            tracking_number: Set(String::new()),
            saga_id: Set(req.saga_id.clone()),
            status_reason: Set(String::new()),
            created_at_ms: Set(now_ms()),
            shipped_at_ms: Set(None),
            parcel: Set(String::new()),
            packer: Set(String::new()),
        }
        .insert(&txn)
        .await?;
        let tasks: Vec<task::ActiveModel> = req
            .lines
            .iter()
            .map(|l| task::ActiveModel {
                task_id: Set(uuid::Uuid::now_v7().to_string()),
                fulfillment_id: Set(id.clone()),
                order_line_id: Set(l.order_line_id.clone()),
                sku: Set(l.sku.clone()),
                quantity: Set(l.quantity),
                picked_quantity: Set(0),
                status: Set(TaskState::Open.as_str().into()),
                wave_id: Set(String::new()),
            })
            .collect();
        // 8 parameters a row: chunks stay far below the databases' parameter limits.
        for chunk in tasks.chunks(store::IN_CHUNK / 8) {
            task::Entity::insert_many(chunk.to_vec()).exec(&txn).await?;
        }
        let (f, tasks) = store::with_tasks(&txn, vec![f], None)
            .await?
            .pop()
            .ok_or_else(|| WarehouseError::FulfillmentNotFound(id.clone()))?;
        let response = CreateFulfillmentResponse {
            fulfillment: Some(fulfillment_to_wire(f, tasks)),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    pub(super) async fn cancel_fulfillment(
        &self,
        req: CancelFulfillmentRequest,
    ) -> ApiResult<CancelFulfillmentResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.check(
            req.fulfillment_id.is_empty() != req.order_id.is_empty(),
            "fulfillment_id",
            "give exactly one of fulfillment_id and order_id",
        );
        v.optional_text("reason", &req.reason, 500);
        v.finish()?;
        let (txn, guard) =
            erp_runtime::begin_idempotent!(&self.db, "warehouse.CancelFulfillment", req);
        // A saga's compensation cancels exactly the fulfillment its forward step created: an
        // order shipped in parts has others that are not this step's to cancel.
        let created = match idempotency::forward_outcome::<_, CreateFulfillmentResponse>(
            &txn,
            "warehouse.CreateFulfillment",
            &req.idempotency_key,
        )
        .await?
        {
            Forward::Unrelated => None,
            Forward::Never => Some(Vec::new()),
            Forward::Did(r) => Some(
                r.fulfillment
                    .map(|f| f.fulfillment_id)
                    .into_iter()
                    .collect::<Vec<_>>(),
            ),
        };
        idempotency::tombstone_forward(&txn, "warehouse.CreateFulfillment", &req.idempotency_key)
            .await?;
        let rows = if let (false, Some(ids)) = (req.order_id.is_empty(), created) {
            fulfillment::Entity::find()
                .filter(fulfillment::Column::FulfillmentId.is_in(ids))
                .order_by_asc(fulfillment::Column::FulfillmentId)
                .lock_exclusive()
                .all(&txn)
                .await?
        } else if req.fulfillment_id.is_empty() {
            fulfillment::Entity::find()
                .filter(fulfillment::Column::OrderId.eq(&req.order_id))
                .order_by_asc(fulfillment::Column::FulfillmentId)
                .lock_exclusive()
                .all(&txn)
                .await?
        } else {
            vec![store::fulfillment(&txn, &req.fulfillment_id, true).await?]
        };
        let mut cancel = Vec::new();
        for f in &rows {
            if domain::cancel(&f.fulfillment_id, domain::fulfillment_state(&f.status))? {
                cancel.push(f.fulfillment_id.clone());
            }
        }
        if !cancel.is_empty() {
            store::cancel(&txn, &cancel, &req.reason).await?;
        }
        let ids: Vec<String> = rows.iter().map(|f| f.fulfillment_id.clone()).collect();
        let rows = fulfillment::Entity::find()
            .filter(fulfillment::Column::FulfillmentId.is_in(ids))
            .order_by_asc(fulfillment::Column::FulfillmentId)
            .all(&txn)
            .await?;
        let response = CancelFulfillmentResponse {
            fulfillments: store::with_tasks(&txn, rows, None)
                .await?
                .into_iter()
                .map(|(f, t)| fulfillment_to_wire(f, t))
                .collect(),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    pub(super) async fn get_fulfillment(
        &self,
        req: GetFulfillmentRequest,
    ) -> ApiResult<GetFulfillmentResponse> {
        let mut v = Violations::new();
        v.id("fulfillment_id", &req.fulfillment_id);
        v.finish()?;
        let (f, tasks) = store::load(&self.db, &req.fulfillment_id).await?;
        Ok(GetFulfillmentResponse {
            fulfillment: Some(fulfillment_to_wire(f, tasks)),
        })
    }

    pub(super) async fn list_fulfillments(
        &self,
        req: ListFulfillmentsRequest,
    ) -> ApiResult<ListFulfillmentsResponse> {
        let size = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let mut q = fulfillment::Entity::find().order_by_asc(fulfillment::Column::CreatedAtMs);
        if !req.site.is_empty() {
            q = q.filter(fulfillment::Column::Site.eq(&req.site));
        }
        if !req.order_id.is_empty() {
            q = q.filter(fulfillment::Column::OrderId.eq(&req.order_id));
        }
        match FulfillmentStatus::try_from(req.status) {
            Ok(FulfillmentStatus::Unspecified) => {}
            Ok(s) => {
                let state = FulfillmentState::from_wire(s)
                    .ok_or_else(|| ApiError::invalid("status", "unknown fulfillment status"))?;
                q = q.filter(fulfillment::Column::Status.eq(state.as_str()));
            }
            Err(_) => return Err(ApiError::invalid("status", "unknown fulfillment status")),
        }
        let rows = q.offset(offset).limit(size).all(&self.db).await?;
        let next = next_page_token(offset, rows.len(), size);
        Ok(ListFulfillmentsResponse {
            fulfillments: store::with_tasks(&self.db, rows, None)
                .await?
                .into_iter()
                .map(|(f, t)| fulfillment_to_wire(f, t))
                .collect(),
            next_page_token: next,
        })
    }

    /// Releases open pick tasks, most urgent first, whole fulfillments only, never beyond what
    /// is left of the site's daily capacity ([`domain::plan_wave`]). The site row is locked
    /// (PostgreSQL) or the single SQLite writer serializes, so concurrent releases cannot both
    /// spend the same capacity.
    pub(super) async fn release_wave(
        &self,
        req: ReleaseWaveRequest,
    ) -> ApiResult<ReleaseWaveResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.code("site", &req.site);
        v.non_negative("max_units", req.max_units);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.ReleaseWave", req);
        let s = store::site(&txn, &req.site, true).await?;
        if !s.online {
            return Err(WarehouseError::SiteOffline {
                site: s.code,
                reason: String::new(),
            }
            .into());
        }
        let now = now_ms();
        let released = store::released_today(&txn, std::slice::from_ref(&s), now)
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        let open = store::open_for_wave(&txn, &s.code).await?;
        let candidates: Vec<WaveCandidate> = open
            .iter()
            .map(|(f, tasks)| WaveCandidate {
                fulfillment_id: f.fulfillment_id.clone(),
                units: tasks
                    .iter()
                    .map(|t| t.quantity)
                    .fold(0, i64::saturating_add),
            })
            .collect();
        let plan = domain::plan_wave(
            &s.code,
            &candidates,
            s.daily_capacity,
            released,
            req.max_units,
        )?;
        let wave_id = uuid::Uuid::now_v7().to_string();
        store::release(&txn, &plan.fulfillments, &wave_id).await?;
        let chosen: std::collections::HashSet<&String> = plan.fulfillments.iter().collect();
        let task_ids = open
            .into_iter()
            .filter(|(f, _)| chosen.contains(&f.fulfillment_id))
            .flat_map(|(_, tasks)| tasks.into_iter().map(|t| t.task_id))
            .collect();
        wave::ActiveModel {
            wave_id: Set(wave_id.clone()),
            site: Set(s.code.clone()),
            site_day: Set(domain::site_day(now, s.utc_offset_minutes)),
            units: Set(plan.units),
            released_at_ms: Set(now),
        }
        .insert(&txn)
        .await?;
        let response = ReleaseWaveResponse {
            wave: Some(Wave {
                wave_id,
                site: s.code,
                task_ids,
                units: plan.units,
                released_at: Some(to_timestamp(now)),
            }),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    /// The scheduled release: one wave per online site and time slot (the slot is the wave's
    /// idempotency key, so replicas of the service releasing at once release it once).
    pub async fn release_scheduled_waves(&self, slot: i64) {
        let sites = match site::Entity::find()
            .filter(site::Column::Online.eq(true))
            .all(&self.db)
            .await
        {
            Ok(sites) => sites,
            Err(e) => {
                tracing::warn!(error = %e, "scheduled waves: cannot list sites");
                return;
            }
        };
        for s in sites {
            let released = self
                .release_wave(ReleaseWaveRequest {
                    idempotency_key: format!("auto:{}:{slot}", s.code),
                    site: s.code.clone(),
                    max_units: 0,
                })
                .await;
            match released {
                Ok(r) => {
                    let w = r.wave.unwrap_or_default();
                    tracing::info!(site = %s.code, wave = %w.wave_id, units = w.units, "scheduled wave released");
                }
                Err(e)
                    if matches!(
                        e.reason(),
                        Some("NOTHING_TO_RELEASE" | "CAPACITY_EXHAUSTED" | "SITE_OFFLINE")
                    ) => {}
                Err(e) => tracing::warn!(site = %s.code, error = %e, "scheduled wave failed"),
            }
        }
    }
}
