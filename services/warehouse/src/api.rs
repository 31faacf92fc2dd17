//! gRPC handlers of the warehouse service.

use erp_proto::warehouse::warehouse_service_server::WarehouseService;
use erp_proto::warehouse::*;
use erp_runtime::audit;
use erp_runtime::auth::Caller;
use erp_runtime::error::respond;
use erp_runtime::idempotency::{self, Forward};
use erp_runtime::outbox::{self, OutboxWaker};
use erp_runtime::time::{now_ms, opt_timestamp, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use tonic::{Request, Response, Status};

use crate::store::{exception, fulfillment, receipt, site, task, wave};

type Inventory = erp_proto::inventory::inventory_service_client::InventoryServiceClient<
    erp_runtime::auth::PeerChannel,
>;

pub struct WarehouseApi {
    db: DatabaseConnection,
    outbox: OutboxWaker,
    /// Receipts move stock in the inventory service.
    inventory: Inventory,
}

impl WarehouseApi {
    pub fn new(db: DatabaseConnection, outbox: OutboxWaker, inventory: Inventory) -> Self {
        Self {
            db,
            outbox,
            inventory,
        }
    }
}

/// The packer's carton as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct Carton {
    weight_grams: i64,
    length_mm: i64,
    width_mm: i64,
    height_mm: i64,
}

fn parcel_of(json: &str) -> Option<erp_proto::common::Parcel> {
    let c: Carton = serde_json::from_str(json).ok()?;
    Some(erp_proto::common::Parcel {
        weight_grams: c.weight_grams,
        length_mm: c.length_mm,
        width_mm: c.width_mm,
        height_mm: c.height_mm,
    })
}

fn reason_code(r: ExceptionReason) -> &'static str {
    match r {
        ExceptionReason::CouldNotLocate => "could_not_locate",
        ExceptionReason::Damaged => "damaged",
        ExceptionReason::ShortPick => "short_pick",
        ExceptionReason::CartonProblem => "carton_problem",
        ExceptionReason::Unspecified => "unspecified",
    }
}

fn reason_of(s: &str) -> ExceptionReason {
    match s {
        "could_not_locate" => ExceptionReason::CouldNotLocate,
        "damaged" => ExceptionReason::Damaged,
        "short_pick" => ExceptionReason::ShortPick,
        "carton_problem" => ExceptionReason::CartonProblem,
        _ => ExceptionReason::Unspecified,
    }
}

fn exception_to_wire(e: exception::Model) -> WarehouseException {
    WarehouseException {
        exception_id: e.exception_id,
        task_id: e.task_id,
        fulfillment_id: e.fulfillment_id,
        reason: reason_of(&e.reason) as i32,
        quantity: e.quantity,
        note: e.note,
        reported_at: Some(to_timestamp(e.reported_at_ms)),
    }
}

/// What the audit trail digests of a site.
fn site_state(s: &Site) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "region": s.region,
        "status": s.status,
        "status_reason": s.status_reason,
        "daily_capacity": s.daily_capacity,
        "cutoff_minute_of_day": s.cutoff_minute_of_day,
        "utc_offset_minutes": s.utc_offset_minutes,
        "cost_index": s.cost_index,
        "postal_code": s.postal_code,
    })
}

fn site_to_wire(m: site::Model) -> Site {
    Site {
        code: m.code,
        name: m.name,
        region: m.region,
        daily_capacity: m.daily_capacity,
        cutoff_minute_of_day: m.cutoff_minute_of_day,
        utc_offset_minutes: m.utc_offset_minutes,
        status: if m.online {
            SiteStatus::Online
        } else {
            SiteStatus::Offline
        } as i32,
        status_reason: m.status_reason,
        cost_index: m.cost_index,
        postal_code: m.postal_code,
    }
}

fn fstatus(s: &str) -> FulfillmentStatus {
    match s {
        "open" => FulfillmentStatus::Open,
        "released" => FulfillmentStatus::Released,
        "picked" => FulfillmentStatus::Picked,
        "packed" => FulfillmentStatus::Packed,
        "shipped" => FulfillmentStatus::Shipped,
        "cancelled" => FulfillmentStatus::Cancelled,
        "exception" => FulfillmentStatus::Exception,
        _ => FulfillmentStatus::Unspecified,
    }
}

fn tstatus(s: &str) -> TaskStatus {
    match s {
        "open" => TaskStatus::Open,
        "released" => TaskStatus::Released,
        "picked" => TaskStatus::Picked,
        "short" => TaskStatus::Short,
        "cancelled" => TaskStatus::Cancelled,
        _ => TaskStatus::Unspecified,
    }
}

fn task_to_wire(t: task::Model) -> PickTask {
    PickTask {
        task_id: t.task_id,
        fulfillment_id: t.fulfillment_id,
        order_line_id: t.order_line_id,
        sku: t.sku,
        quantity: t.quantity,
        picked_quantity: t.picked_quantity,
        status: tstatus(&t.status) as i32,
        wave_id: t.wave_id,
    }
}

async fn load<C: ConnectionTrait>(c: &C, id: &str) -> ApiResult<Fulfillment> {
    let f = fulfillment::Entity::find_by_id(id.to_owned())
        .one(c)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("fulfillment {id}")))?;
    let tasks = task::Entity::find()
        .filter(task::Column::FulfillmentId.eq(id))
        .order_by_asc(task::Column::TaskId)
        .all(c)
        .await?;
    Ok(Fulfillment {
        fulfillment_id: f.fulfillment_id,
        order_id: f.order_id,
        site: f.site,
        status: fstatus(&f.status) as i32,
        priority: f.priority,
        service_level: f.service_level,
        tasks: tasks.into_iter().map(task_to_wire).collect(),
        parcel: parcel_of(&f.parcel),
        tracking_number: f.tracking_number,
        saga_id: f.saga_id,
        created_at: Some(to_timestamp(f.created_at_ms)),
        shipped_at: opt_timestamp(f.shipped_at_ms),
        status_reason: f.status_reason,
    })
}

async fn set_fulfillment_status<C: ConnectionTrait>(
    c: &C,
    id: &str,
    status: &str,
    reason: &str,
) -> ApiResult<()> {
    fulfillment::Entity::update_many()
        .col_expr(
            fulfillment::Column::Status,
            sea_orm::sea_query::Expr::value(status),
        )
        .col_expr(
            fulfillment::Column::StatusReason,
            sea_orm::sea_query::Expr::value(reason),
        )
        .filter(fulfillment::Column::FulfillmentId.eq(id))
        .exec(c)
        .await?;
    Ok(())
}

/// The site's local calendar day of `ms`, which daily capacity counts against.
fn site_day(ms: i64, utc_offset_minutes: i32) -> String {
    let local = ms + i64::from(utc_offset_minutes) * 60_000;
    chrono::DateTime::from_timestamp_millis(local)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Units already released at a site on a day.
async fn released_on<C: ConnectionTrait>(c: &C, site: &str, day: &str) -> ApiResult<i64> {
    Ok(wave::Entity::find()
        .filter(wave::Column::Site.eq(site))
        .filter(wave::Column::SiteDay.eq(day))
        .all(c)
        .await?
        .iter()
        .map(|w| w.units)
        .sum())
}

impl WarehouseApi {
    /// Releases open pick tasks, most urgent first, whole tasks only, never beyond what is
    /// left of the site's daily capacity. The site row is locked (PostgreSQL) or the single
    /// SQLite writer serializes, so concurrent releases cannot both spend the same capacity.
    async fn release_wave(&self, req: ReleaseWaveRequest) -> ApiResult<ReleaseWaveResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.code("site", &req.site);
        v.non_negative("max_units", req.max_units);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.ReleaseWave", req);
        let s = site::Entity::find_by_id(req.site.clone())
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("site {}", req.site)))?;
        if !s.online {
            return Err(ApiError::precondition(
                "SITE_OFFLINE",
                format!("site {} is offline", s.code),
            ));
        }
        let now = now_ms();
        let day = site_day(now, s.utc_offset_minutes);
        let remaining = s.daily_capacity - released_on(&txn, &s.code, &day).await?;
        let limit = if req.max_units > 0 {
            remaining.min(req.max_units)
        } else {
            remaining
        };
        let open: Vec<fulfillment::Model> = fulfillment::Entity::find()
            .filter(fulfillment::Column::Site.eq(&s.code))
            .filter(fulfillment::Column::Status.eq("open"))
            .order_by_asc(fulfillment::Column::Priority)
            .order_by_asc(fulfillment::Column::CreatedAtMs)
            .all(&txn)
            .await?;
        let has_open = !open.is_empty();
        let wave_id = uuid::Uuid::now_v7().to_string();
        let mut units = 0;
        let mut task_ids = Vec::new();
        for f in open {
            let tasks = task::Entity::find()
                .filter(task::Column::FulfillmentId.eq(&f.fulfillment_id))
                .filter(task::Column::Status.eq("open"))
                .all(&txn)
                .await?;
            let need: i64 = tasks.iter().map(|t| t.quantity).sum();
            // A fulfillment is released whole, so a parcel is never split across days.
            if need == 0 || units + need > limit {
                continue;
            }
            units += need;
            task::Entity::update_many()
                .col_expr(
                    task::Column::Status,
                    sea_orm::sea_query::Expr::value("released"),
                )
                .col_expr(
                    task::Column::WaveId,
                    sea_orm::sea_query::Expr::value(wave_id.clone()),
                )
                .filter(task::Column::FulfillmentId.eq(&f.fulfillment_id))
                .filter(task::Column::Status.eq("open"))
                .exec(&txn)
                .await?;
            set_fulfillment_status(&txn, &f.fulfillment_id, "released", "").await?;
            task_ids.extend(tasks.into_iter().map(|t| t.task_id));
        }
        if units == 0 && task_ids.is_empty() && !has_open {
            return Err(ApiError::precondition(
                "NOTHING_TO_RELEASE",
                format!("site {} has no open fulfillment", s.code),
            ));
        }
        if units == 0 {
            return Err(ApiError::precondition(
                "CAPACITY_EXHAUSTED",
                format!(
                    "site {}: {remaining} of {} units left today and no open fulfillment fits",
                    s.code, s.daily_capacity
                ),
            ));
        }
        wave::ActiveModel {
            wave_id: Set(wave_id.clone()),
            site: Set(s.code.clone()),
            site_day: Set(day),
            units: Set(units),
            released_at_ms: Set(now),
        }
        .insert(&txn)
        .await?;
        let response = ReleaseWaveResponse {
            wave: Some(Wave {
                wave_id,
                site: s.code,
                task_ids,
                units,
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

    async fn upsert_site(
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

    async fn unpicked(
        &self,
        c: &impl ConnectionTrait,
        site_code: &str,
    ) -> ApiResult<Vec<Fulfillment>> {
        let rows = fulfillment::Entity::find()
            .filter(fulfillment::Column::Site.eq(site_code))
            .filter(fulfillment::Column::Status.is_in(["open", "released"]))
            .order_by_asc(fulfillment::Column::CreatedAtMs)
            .all(c)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for f in rows {
            out.push(load(c, &f.fulfillment_id).await?);
        }
        Ok(out)
    }

    async fn set_site_status(
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
        let s = site::Entity::find_by_id(req.code.clone())
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("site {}", req.code)))?;
        let before = site_state(&site_to_wire(s.clone()));
        let mut am: site::ActiveModel = s.into();
        am.online = Set(status == SiteStatus::Online);
        am.status_reason = Set(req
            .actor
            .as_ref()
            .map(|a| a.reason.clone())
            .unwrap_or_default());
        let m = am.update(&txn).await?;
        let unpicked = self.unpicked(&txn, &req.code).await?;
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

    async fn create_fulfillment(
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
            .ok_or_else(|| ApiError::invalid("site", format!("unknown site {}", req.site)))?;
        if !s.online {
            return Err(ApiError::precondition(
                "SITE_OFFLINE",
                format!("site {} is offline: {}", s.code, s.status_reason),
            ));
        }
        let id = uuid::Uuid::now_v7().to_string();
        fulfillment::ActiveModel {
            fulfillment_id: Set(id.clone()),
            order_id: Set(req.order_id.clone()),
            site: Set(req.site.clone()),
            status: Set("open".into()),
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
        for l in &req.lines {
            task::ActiveModel {
                task_id: Set(uuid::Uuid::now_v7().to_string()),
                fulfillment_id: Set(id.clone()),
                order_line_id: Set(l.order_line_id.clone()),
                sku: Set(l.sku.clone()),
                quantity: Set(l.quantity),
                picked_quantity: Set(0),
                status: Set("open".into()),
                wave_id: Set(String::new()),
            }
            .insert(&txn)
            .await?;
        }
        let response = CreateFulfillmentResponse {
            fulfillment: Some(load(&txn, &id).await?),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    async fn cancel_fulfillment(
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
            vec![
                fulfillment::Entity::find_by_id(req.fulfillment_id.clone())
                    .lock_exclusive()
                    .one(&txn)
                    .await?
                    .ok_or_else(|| {
                        ApiError::not_found(format!("fulfillment {}", req.fulfillment_id))
                    })?,
            ]
        };
        let mut out = Vec::new();
        for f in rows {
            match f.status.as_str() {
                "shipped" => {
                    return Err(ApiError::precondition(
                        "ALREADY_SHIPPED",
                        format!(
                            "fulfillment {} shipped and cannot be cancelled",
                            f.fulfillment_id
                        ),
                    ));
                }
                "cancelled" => {}
                _ => {
                    set_fulfillment_status(&txn, &f.fulfillment_id, "cancelled", &req.reason)
                        .await?;
                    task::Entity::update_many()
                        .col_expr(
                            task::Column::Status,
                            sea_orm::sea_query::Expr::value("cancelled"),
                        )
                        .filter(task::Column::FulfillmentId.eq(&f.fulfillment_id))
                        .exec(&txn)
                        .await?;
                }
            }
            out.push(load(&txn, &f.fulfillment_id).await?);
        }
        let response = CancelFulfillmentResponse { fulfillments: out };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    async fn confirm_pick(&self, req: ConfirmPickRequest) -> ApiResult<ConfirmPickResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("task_id", &req.task_id);
        v.non_negative("picked_quantity", req.picked_quantity);
        v.optional_text("picker", &req.picker, 100);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.ConfirmPick", req);
        let t = locked_task(&txn, &req.task_id).await?;
        if !matches!(t.status.as_str(), "open" | "released") {
            return Err(ApiError::precondition(
                "TASK_CLOSED",
                format!("task {} is {}", t.task_id, t.status),
            ));
        }
        if req.picked_quantity > t.quantity {
            return Err(ApiError::invalid(
                "picked_quantity",
                format!("task asks for {}", t.quantity),
            ));
        }
        let short = req.picked_quantity < t.quantity;
        let fulfillment_id = t.fulfillment_id.clone();
        let mut am: task::ActiveModel = t.into();
        am.picked_quantity = Set(req.picked_quantity);
        am.status = Set(if short { "short" } else { "picked" }.into());
        let t = am.update(&txn).await?;
        let open = task::Entity::find()
            .filter(task::Column::FulfillmentId.eq(&fulfillment_id))
            .filter(task::Column::Status.is_in(["open", "released"]))
            .count(&txn)
            .await?;
        if short {
            // Fewer units on the shelf than the task asked for: a short pick, as if reported.
            let missing = t.quantity - req.picked_quantity;
            record_exception(
                &txn,
                &t,
                ExceptionReason::ShortPick,
                missing,
                "picked fewer than asked",
                &req.picker,
            )
            .await?;
        } else if open == 0 {
            set_fulfillment_status(&txn, &fulfillment_id, "picked", "").await?;
        }
        let response = ConfirmPickResponse {
            task: Some(task_to_wire(t)),
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    async fn confirm_ship(&self, req: ConfirmShipRequest) -> ApiResult<ConfirmShipResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("fulfillment_id", &req.fulfillment_id);
        v.text("tracking_number", &req.tracking_number, 100);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.ConfirmShip", req);
        // Every change of a fulfillment and its tasks holds the fulfillment's row lock, so a
        // shipment racing a cancellation (or two packers) cannot both pass their checks.
        let f = fulfillment::Entity::find_by_id(req.fulfillment_id.clone())
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("fulfillment {}", req.fulfillment_id)))?;
        match f.status.as_str() {
            "packed" => {}
            "shipped" if f.tracking_number == req.tracking_number => {}
            other => {
                return Err(ApiError::precondition(
                    "NOT_READY_TO_SHIP",
                    format!(
                        "fulfillment {} is {other}; it ships once packed",
                        f.fulfillment_id
                    ),
                ));
            }
        }
        let (order_id, saga_id) = (f.order_id.clone(), f.saga_id.clone());
        let mut am: fulfillment::ActiveModel = f.into();
        am.status = Set("shipped".into());
        am.tracking_number = Set(req.tracking_number.clone());
        am.shipped_at_ms = Set(Some(now_ms()));
        am.update(&txn).await?;
        outbox::enqueue(
            &txn,
            "warehouse.shipped",
            &req.fulfillment_id,
            &serde_json::json!({ "fulfillment_id": req.fulfillment_id, "order_id": order_id, "saga_id": saga_id, "tracking_number": req.tracking_number }),
        )
        .await?;
        let response = ConfirmShipResponse {
            fulfillment: Some(load(&txn, &req.fulfillment_id).await?),
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }
    /// Records the packer's carton. Scanning twice is harmless: packing an already packed
    /// fulfillment with the same carton answers it unchanged.
    async fn confirm_pack(&self, req: ConfirmPackRequest) -> ApiResult<ConfirmPackResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("fulfillment_id", &req.fulfillment_id);
        v.text("packer", &req.packer, 100);
        match &req.parcel {
            None => v.add("parcel", "is required"),
            Some(p) => {
                v.positive("parcel.weight_grams", p.weight_grams);
                v.positive("parcel.length_mm", p.length_mm);
                v.positive("parcel.width_mm", p.width_mm);
                v.positive("parcel.height_mm", p.height_mm);
            }
        }
        v.finish()?;
        let p = req.parcel.unwrap_or_default();
        let carton = serde_json::to_string(&Carton {
            weight_grams: p.weight_grams,
            length_mm: p.length_mm,
            width_mm: p.width_mm,
            height_mm: p.height_mm,
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.ConfirmPack", req);
        let f = fulfillment::Entity::find_by_id(req.fulfillment_id.clone())
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("fulfillment {}", req.fulfillment_id)))?;
        match f.status.as_str() {
            "picked" => {}
            "packed" if f.parcel == carton => {
                let response = ConfirmPackResponse {
                    fulfillment: Some(load(&txn, &f.fulfillment_id).await?),
                };
                guard.commit(txn, &response).await?;
                return Ok(response);
            }
            "packed" => {
                return Err(ApiError::precondition(
                    "ALREADY_PACKED",
                    format!(
                        "fulfillment {} is packed in another carton; a label may be bought for it",
                        f.fulfillment_id
                    ),
                ));
            }
            other => {
                return Err(ApiError::precondition(
                    "NOT_READY_TO_PACK",
                    format!(
                        "fulfillment {} is {other}; it packs once every task is picked",
                        f.fulfillment_id
                    ),
                ));
            }
        }
        let (order_id, saga_id, site) = (f.order_id.clone(), f.saga_id.clone(), f.site.clone());
        let mut am: fulfillment::ActiveModel = f.into();
        am.status = Set("packed".into());
        am.parcel = Set(carton);
        am.packer = Set(req.packer.clone());
        am.update(&txn).await?;
        outbox::enqueue(
            &txn,
            "warehouse.packed",
            &req.fulfillment_id,
            &serde_json::json!({
                "fulfillment_id": req.fulfillment_id, "order_id": order_id, "saga_id": saga_id,
                "site": site, "weight_grams": p.weight_grams, "length_mm": p.length_mm,
                "width_mm": p.width_mm, "height_mm": p.height_mm,
            }),
        )
        .await?;
        let response = ConfirmPackResponse {
            fulfillment: Some(load(&txn, &req.fulfillment_id).await?),
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    /// A problem at the shelf or the packing bench. Could-not-locate, damaged and short picks
    /// close the task short and put the fulfillment in exception: the saga re-routes the order
    /// (or backorders it) and writes the missing or damaged units off at this site. A carton
    /// problem is recorded and leaves the fulfillment as it is, to be packed again.
    async fn report_exception(
        &self,
        req: ReportExceptionRequest,
    ) -> ApiResult<ReportExceptionResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("task_id", &req.task_id);
        let reason = ExceptionReason::try_from(req.reason).unwrap_or_default();
        v.check(
            reason != ExceptionReason::Unspecified,
            "reason",
            "must be COULD_NOT_LOCATE, DAMAGED, SHORT_PICK or CARTON_PROBLEM",
        );
        v.non_negative("quantity", req.quantity);
        if reason != ExceptionReason::CartonProblem {
            v.positive("quantity", req.quantity);
        }
        v.check(req.note.len() <= 500, "note", "must be at most 500 bytes");
        v.text("reporter", &req.reporter, 100);
        v.finish()?;
        let (txn, guard) =
            erp_runtime::begin_idempotent!(&self.db, "warehouse.ReportException", req);
        let t = locked_task(&txn, &req.task_id).await?;
        let f = fulfillment::Entity::find_by_id(t.fulfillment_id.clone())
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("fulfillment {}", t.fulfillment_id)))?;
        if matches!(f.status.as_str(), "shipped" | "cancelled") {
            return Err(ApiError::precondition(
                "FULFILLMENT_CLOSED",
                format!("fulfillment {} is {}", f.fulfillment_id, f.status),
            ));
        }
        let e = if reason == ExceptionReason::CartonProblem {
            let e = new_exception(&t, reason, req.quantity, &req.note, &req.reporter)
                .insert(&txn)
                .await?;
            outbox::enqueue(
                &txn,
                "warehouse.exception",
                &f.fulfillment_id,
                &exception_event(&f, &t, &e),
            )
            .await?;
            e
        } else {
            if !matches!(t.status.as_str(), "open" | "released" | "picked") {
                return Err(ApiError::precondition(
                    "TASK_CLOSED",
                    format!("task {} is {}", t.task_id, t.status),
                ));
            }
            if req.quantity > t.quantity {
                return Err(ApiError::invalid(
                    "quantity",
                    format!("the task is for {} units", t.quantity),
                ));
            }
            let e =
                record_exception(&txn, &t, reason, req.quantity, &req.note, &req.reporter).await?;
            let mut am: task::ActiveModel = t.clone().into();
            am.picked_quantity = Set(t.quantity - req.quantity);
            am.status = Set("short".into());
            am.update(&txn).await?;
            e
        };
        let response = ReportExceptionResponse {
            exception: Some(exception_to_wire(e)),
            fulfillment: Some(load(&txn, &f.fulfillment_id).await?),
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    /// Goods arriving at a site: a purchase order's delivery (inbound becomes on hand) or a
    /// customer return (pending inspection). Damaged units go to quarantine. The stock moves in
    /// the inventory service under keys derived from this request's key, so a retry after a
    /// failure part-way finishes the job without moving anything twice; the receipt is
    /// recorded, and announced to procurement and finance, once every move succeeded.
    async fn record_receipt(&self, req: RecordReceiptRequest) -> ApiResult<RecordReceiptResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.code("site", &req.site);
        let kind = ReceiptKind::try_from(req.kind).unwrap_or_default();
        v.check(
            kind != ReceiptKind::Unspecified,
            "kind",
            "must be PURCHASE_ORDER or CUSTOMER_RETURN",
        );
        // A purchase order id or an RMA number, as the supplier or customer quotes it.
        v.text("document_id", &req.document_id, 100);
        v.check(!req.lines.is_empty(), "lines", "must not be empty");
        for (i, l) in req.lines.iter().enumerate() {
            v.code(&format!("lines[{i}].sku"), &l.sku);
            v.positive(&format!("lines[{i}].quantity"), l.quantity);
            v.non_negative(&format!("lines[{i}].damaged_quantity"), l.damaged_quantity);
            v.check(
                l.damaged_quantity <= l.quantity,
                format!("lines[{i}].damaged_quantity"),
                "cannot exceed the quantity received",
            );
        }
        v.finish()?;
        if let Some(replay) = idempotency::lookup::<_, RecordReceiptResponse>(
            &self.db,
            "warehouse.RecordReceipt",
            &req.idempotency_key,
            &idempotency::fingerprint(&req),
        )
        .await?
        {
            return Ok(replay);
        }
        let s = site::Entity::find_by_id(req.site.clone())
            .one(&self.db)
            .await?
            .ok_or_else(|| ApiError::invalid("site", format!("unknown site {}", req.site)))?;
        let source = Some(erp_proto::common::SourceDocument {
            kind: match kind {
                ReceiptKind::PurchaseOrder => "purchase_order",
                _ => "return",
            }
            .into(),
            id: req.document_id.clone(),
        });
        for (i, l) in req.lines.iter().enumerate() {
            self.move_received(&req.idempotency_key, i, &s.code, kind, l, source.clone())
                .await?;
        }
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.RecordReceipt", req);
        let receipt_id = uuid::Uuid::now_v7().to_string();
        let lines: Vec<serde_json::Value> = req
            .lines
            .iter()
            .map(|l| serde_json::json!({ "sku": l.sku, "quantity": l.quantity, "damaged_quantity": l.damaged_quantity }))
            .collect();
        let kind_name = source.as_ref().map(|s| s.kind.clone()).unwrap_or_default();
        receipt::ActiveModel {
            receipt_id: Set(receipt_id.clone()),
            site: Set(s.code.clone()),
            kind: Set(kind_name.clone()),
            document_id: Set(req.document_id.clone()),
            lines: Set(serde_json::Value::Array(lines.clone()).to_string()),
            recorded_at_ms: Set(now_ms()),
        }
        .insert(&txn)
        .await?;
        outbox::enqueue(
            &txn,
            "warehouse.receipt_recorded",
            &req.document_id,
            &serde_json::json!({
                "receipt_id": receipt_id, "site": s.code, "kind": kind_name,
                "document_id": req.document_id, "lines": lines,
            }),
        )
        .await?;
        let response = RecordReceiptResponse { receipt_id };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    /// The inventory moves of one received line.
    async fn move_received(
        &self,
        key: &str,
        line: usize,
        site: &str,
        kind: ReceiptKind,
        l: &ReceiptLine,
        source: Option<erp_proto::common::SourceDocument>,
    ) -> ApiResult<()> {
        use erp_proto::inventory as inv;
        let mut client = self.inventory.clone();
        let k = |op: &str| format!("{key}:receipt:{line}:{op}");
        let good = l.quantity - l.damaged_quantity;
        match kind {
            ReceiptKind::PurchaseOrder => {
                client
                    .receive_stock(inv::ReceiveStockRequest {
                        idempotency_key: k("receive"),
                        sku: l.sku.clone(),
                        location: site.to_owned(),
                        quantity: l.quantity,
                        source: source.clone(),
                        from_inbound: true,
                        unit_cost: l.unit_cost.clone(),
                    })
                    .await
                    .map_err(forward)?;
                if l.damaged_quantity > 0 {
                    for (op, bucket, delta) in [
                        ("damaged-out", inv::Bucket::OnHand, -l.damaged_quantity),
                        ("damaged-in", inv::Bucket::Quarantined, l.damaged_quantity),
                    ] {
                        client
                            .adjust_stock(inv::AdjustStockRequest {
                                idempotency_key: k(op),
                                sku: l.sku.clone(),
                                location: site.to_owned(),
                                bucket: bucket as i32,
                                delta,
                                actor: Some(erp_proto::common::Actor {
                                    id: "warehouse".into(),
                                    reason: format!("damaged on receipt of {key}"),
                                }),
                            })
                            .await
                            .map_err(forward)?;
                    }
                }
            }
            _ => {
                if good > 0 {
                    client
                        .record_return(inv::RecordReturnRequest {
                            idempotency_key: k("return"),
                            sku: l.sku.clone(),
                            location: site.to_owned(),
                            quantity: good,
                            source: source.clone(),
                        })
                        .await
                        .map_err(forward)?;
                }
                if l.damaged_quantity > 0 {
                    client
                        .adjust_stock(inv::AdjustStockRequest {
                            idempotency_key: k("damaged-in"),
                            sku: l.sku.clone(),
                            location: site.to_owned(),
                            bucket: inv::Bucket::Quarantined as i32,
                            delta: l.damaged_quantity,
                            actor: Some(erp_proto::common::Actor {
                                id: "warehouse".into(),
                                reason: format!("returned damaged ({key})"),
                            }),
                        })
                        .await
                        .map_err(forward)?;
                }
            }
        }
        Ok(())
    }
}

/// A refusal of the inventory service, passed on to the caller with its code and message.
fn forward(s: Status) -> ApiError {
    ApiError::Upstream(s)
}

fn new_exception(
    t: &task::Model,
    reason: ExceptionReason,
    quantity: i64,
    note: &str,
    reporter: &str,
) -> exception::ActiveModel {
    exception::ActiveModel {
        exception_id: Set(uuid::Uuid::now_v7().to_string()),
        task_id: Set(t.task_id.clone()),
        fulfillment_id: Set(t.fulfillment_id.clone()),
        reason: Set(reason_code(reason).into()),
        quantity: Set(quantity),
        note: Set(note.to_owned()),
        reporter: Set(reporter.to_owned()),
        reported_at_ms: Set(now_ms()),
    }
}

fn exception_event(
    f: &fulfillment::Model,
    t: &task::Model,
    e: &exception::Model,
) -> serde_json::Value {
    serde_json::json!({
        "exception_id": e.exception_id, "fulfillment_id": f.fulfillment_id,
        "order_id": f.order_id, "saga_id": f.saga_id, "site": f.site, "task_id": t.task_id,
        "order_line_id": t.order_line_id, "sku": t.sku, "reason": e.reason,
        "quantity": e.quantity,
    })
}

/// Records a stock exception on a task, puts its fulfillment in exception, and tells the saga.
async fn record_exception<C: ConnectionTrait>(
    c: &C,
    t: &task::Model,
    reason: ExceptionReason,
    quantity: i64,
    note: &str,
    reporter: &str,
) -> ApiResult<exception::Model> {
    let e = new_exception(t, reason, quantity, note, reporter)
        .insert(c)
        .await?;
    let f = fulfillment::Entity::find_by_id(t.fulfillment_id.clone())
        .one(c)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("fulfillment {}", t.fulfillment_id)))?;
    let why = format!("{}: {quantity} x {} ({note})", e.reason, t.sku);
    set_fulfillment_status(c, &f.fulfillment_id, "exception", &why).await?;
    outbox::enqueue(
        c,
        "warehouse.exception",
        &f.fulfillment_id,
        &exception_event(&f, t, &e),
    )
    .await?;
    Ok(e)
}

#[tonic::async_trait]
impl WarehouseService for WarehouseApi {
    async fn upsert_site(
        &self,
        r: Request<UpsertSiteRequest>,
    ) -> Result<Response<UpsertSiteResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.upsert_site(&caller, r.into_inner()).await)
    }

    async fn get_site(
        &self,
        r: Request<GetSiteRequest>,
    ) -> Result<Response<GetSiteResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let mut v = Violations::new();
                v.code("code", &req.code);
                v.finish()?;
                let s = site::Entity::find_by_id(req.code.clone())
                    .one(&self.db)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("site {}", req.code)))?;
                let today = site_day(now_ms(), s.utc_offset_minutes);
                let released_today = released_on(&self.db, &s.code, &today).await?;
                Ok(GetSiteResponse {
                    site: Some(site_to_wire(s)),
                    released_today,
                })
            }
            .await,
        )
    }

    async fn list_sites(
        &self,
        _r: Request<ListSitesRequest>,
    ) -> Result<Response<ListSitesResponse>, Status> {
        respond(
            async {
                let rows = site::Entity::find()
                    .order_by_asc(site::Column::Code)
                    .all(&self.db)
                    .await?;
                let mut released_today = Vec::with_capacity(rows.len());
                for s in &rows {
                    let today = site_day(now_ms(), s.utc_offset_minutes);
                    released_today.push(released_on(&self.db, &s.code, &today).await?);
                }
                Ok(ListSitesResponse {
                    sites: rows.into_iter().map(site_to_wire).collect(),
                    released_today,
                })
            }
            .await,
        )
    }

    async fn set_site_status(
        &self,
        r: Request<SetSiteStatusRequest>,
    ) -> Result<Response<SetSiteStatusResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.set_site_status(&caller, r.into_inner()).await)
    }

    async fn create_fulfillment(
        &self,
        r: Request<CreateFulfillmentRequest>,
    ) -> Result<Response<CreateFulfillmentResponse>, Status> {
        respond(self.create_fulfillment(r.into_inner()).await)
    }

    async fn get_fulfillment(
        &self,
        r: Request<GetFulfillmentRequest>,
    ) -> Result<Response<GetFulfillmentResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let mut v = Violations::new();
                v.id("fulfillment_id", &req.fulfillment_id);
                v.finish()?;
                Ok(GetFulfillmentResponse {
                    fulfillment: Some(load(&self.db, &req.fulfillment_id).await?),
                })
            }
            .await,
        )
    }

    async fn list_fulfillments(
        &self,
        r: Request<ListFulfillmentsRequest>,
    ) -> Result<Response<ListFulfillmentsResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let size = page_size(req.page_size)?;
                let offset = page_offset(&req.page_token)?;
                let mut q =
                    fulfillment::Entity::find().order_by_asc(fulfillment::Column::CreatedAtMs);
                if !req.site.is_empty() {
                    q = q.filter(fulfillment::Column::Site.eq(&req.site));
                }
                if !req.order_id.is_empty() {
                    q = q.filter(fulfillment::Column::OrderId.eq(&req.order_id));
                }
                match FulfillmentStatus::try_from(req.status) {
                    Ok(FulfillmentStatus::Unspecified) => {}
                    Ok(s) => {
                        let name = s
                            .as_str_name()
                            .trim_start_matches("FULFILLMENT_STATUS_")
                            .to_lowercase();
                        q = q.filter(fulfillment::Column::Status.eq(name));
                    }
                    Err(_) => {
                        return Err(ApiError::invalid("status", "unknown fulfillment status"));
                    }
                }
                let rows = q.offset(offset).limit(size).all(&self.db).await?;
                let next = next_page_token(offset, rows.len(), size);
                let mut fulfillments = Vec::with_capacity(rows.len());
                for f in rows {
                    fulfillments.push(load(&self.db, &f.fulfillment_id).await?);
                }
                Ok(ListFulfillmentsResponse {
                    fulfillments,
                    next_page_token: next,
                })
            }
            .await,
        )
    }

    async fn cancel_fulfillment(
        &self,
        r: Request<CancelFulfillmentRequest>,
    ) -> Result<Response<CancelFulfillmentResponse>, Status> {
        respond(self.cancel_fulfillment(r.into_inner()).await)
    }

    async fn release_wave(
        &self,
        r: Request<ReleaseWaveRequest>,
    ) -> Result<Response<ReleaseWaveResponse>, Status> {
        respond(self.release_wave(r.into_inner()).await)
    }

    async fn confirm_pick(
        &self,
        r: Request<ConfirmPickRequest>,
    ) -> Result<Response<ConfirmPickResponse>, Status> {
        respond(self.confirm_pick(r.into_inner()).await)
    }

    async fn confirm_pack(
        &self,
        r: Request<ConfirmPackRequest>,
    ) -> Result<Response<ConfirmPackResponse>, Status> {
        respond(self.confirm_pack(r.into_inner()).await)
    }

    async fn confirm_ship(
        &self,
        r: Request<ConfirmShipRequest>,
    ) -> Result<Response<ConfirmShipResponse>, Status> {
        respond(self.confirm_ship(r.into_inner()).await)
    }

    async fn report_exception(
        &self,
        r: Request<ReportExceptionRequest>,
    ) -> Result<Response<ReportExceptionResponse>, Status> {
        respond(self.report_exception(r.into_inner()).await)
    }

    async fn record_receipt(
        &self,
        r: Request<RecordReceiptRequest>,
    ) -> Result<Response<RecordReceiptResponse>, Status> {
        respond(self.record_receipt(r.into_inner()).await)
    }
}

/// A pick task read under its fulfillment's row lock (taken first: every writer of a
/// fulfillment's tasks holds it, so the two last picks of a fulfillment cannot each still see
/// the other open, and a pick cannot overwrite a cancellation).
async fn locked_task<C: ConnectionTrait>(c: &C, task_id: &str) -> ApiResult<task::Model> {
    let missing = || ApiError::not_found(format!("pick task {task_id}"));
    let t = task::Entity::find_by_id(task_id.to_owned())
        .one(c)
        .await?
        .ok_or_else(missing)?;
    fulfillment::Entity::find_by_id(t.fulfillment_id.clone())
        .lock_exclusive()
        .one(c)
        .await?;
    task::Entity::find_by_id(task_id.to_owned())
        .one(c)
        .await?
        .ok_or_else(missing)
}
