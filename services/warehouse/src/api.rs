//! gRPC handlers of the warehouse service.

use erp_proto::warehouse::warehouse_service_server::WarehouseService;
use erp_proto::warehouse::*;
use erp_runtime::error::{planned, respond};
use erp_runtime::idempotency::{self};
use erp_runtime::outbox::{self, OutboxWaker};
use erp_runtime::time::{now_ms, opt_timestamp, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use tonic::{Request, Response, Status};

use crate::store::{fulfillment, site, task, wave};

pub struct WarehouseApi {
    db: DatabaseConnection,
    outbox: OutboxWaker,
}

impl WarehouseApi {
    pub fn new(db: DatabaseConnection, outbox: OutboxWaker) -> Self {
        Self { db, outbox }
    }
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
        parcel: None,
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

    async fn upsert_site(&self, req: UpsertSiteRequest) -> ApiResult<UpsertSiteResponse> {
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
        v.finish()?;
        let txn = self.db.begin().await?;
        let existing = site::Entity::find_by_id(s.code.clone()).one(&txn).await?;
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
        };
        let m = if existing.is_some() {
            am.update(&txn).await?
        } else {
            am.insert(&txn).await?
        };
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

    async fn set_site_status(&self, req: SetSiteStatusRequest) -> ApiResult<SetSiteStatusResponse> {
        let mut v = Violations::new();
        v.code("code", &req.code);
        let status = SiteStatus::try_from(req.status).unwrap_or(SiteStatus::Unspecified);
        v.check(
            status != SiteStatus::Unspecified,
            "status",
            "must be ONLINE or OFFLINE",
        );
        v.finish()?;
        let txn = self.db.begin().await?;
        let s = site::Entity::find_by_id(req.code.clone())
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("site {}", req.code)))?;
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
            &serde_json::json!({ "site": req.code, "online": m.online, "unpicked": unpicked.iter().map(|f| f.fulfillment_id.clone()).collect::<Vec<_>>() }),
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
        v.finish()?;
        let (txn, guard) =
            erp_runtime::begin_idempotent!(&self.db, "warehouse.CancelFulfillment", req);
        idempotency::tombstone_forward(&txn, "warehouse.CreateFulfillment", &req.idempotency_key)
            .await?;
        let rows = if req.fulfillment_id.is_empty() {
            fulfillment::Entity::find()
                .filter(fulfillment::Column::OrderId.eq(&req.order_id))
                .all(&txn)
                .await?
        } else {
            vec![
                fulfillment::Entity::find_by_id(req.fulfillment_id.clone())
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
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.ConfirmPick", req);
        let t = task::Entity::find_by_id(req.task_id.clone())
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("pick task {}", req.task_id)))?;
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
            set_fulfillment_status(&txn, &fulfillment_id, "exception", "short pick").await?;
            outbox::enqueue(
                &txn,
                "warehouse.short_pick",
                &fulfillment_id,
                &serde_json::json!({ "fulfillment_id": fulfillment_id, "task_id": t.task_id }),
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
        let f = fulfillment::Entity::find_by_id(req.fulfillment_id.clone())
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("fulfillment {}", req.fulfillment_id)))?;
        match f.status.as_str() {
            "picked" | "packed" => {}
            "shipped" if f.tracking_number == req.tracking_number => {}
            other => {
                return Err(ApiError::precondition(
                    "NOT_READY_TO_SHIP",
                    format!(
                        "fulfillment {} is {other}; it ships once picked",
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
}

/// Where the RPCs this service does not serve yet are planned.
const PLANNED: &str = "the warehouse and carrier execution issue (#6)";

#[tonic::async_trait]
impl WarehouseService for WarehouseApi {
    async fn upsert_site(
        &self,
        r: Request<UpsertSiteRequest>,
    ) -> Result<Response<UpsertSiteResponse>, Status> {
        respond(self.upsert_site(r.into_inner()).await)
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
                Ok(ListSitesResponse {
                    sites: rows.into_iter().map(site_to_wire).collect(),
                })
            }
            .await,
        )
    }

    async fn set_site_status(
        &self,
        r: Request<SetSiteStatusRequest>,
    ) -> Result<Response<SetSiteStatusResponse>, Status> {
        respond(self.set_site_status(r.into_inner()).await)
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
        _r: Request<ConfirmPackRequest>,
    ) -> Result<Response<ConfirmPackResponse>, Status> {
        planned("ConfirmPack", PLANNED)
    }

    async fn confirm_ship(
        &self,
        r: Request<ConfirmShipRequest>,
    ) -> Result<Response<ConfirmShipResponse>, Status> {
        respond(self.confirm_ship(r.into_inner()).await)
    }

    async fn report_exception(
        &self,
        _r: Request<ReportExceptionRequest>,
    ) -> Result<Response<ReportExceptionResponse>, Status> {
        planned("ReportException", PLANNED)
    }

    async fn record_receipt(
        &self,
        _r: Request<RecordReceiptRequest>,
    ) -> Result<Response<RecordReceiptResponse>, Status> {
        planned("RecordReceipt", PLANNED)
    }
}
