//! The floor: picks, packs, shipments and the exceptions pickers and packers report. Every
//! change holds the fulfillment's row lock; each announces itself to the saga through the
//! outbox in the same transaction.

use erp_proto::warehouse::*;
use erp_runtime::outbox;
use erp_runtime::time::now_ms;
use erp_runtime::validate::Violations;
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait};

use super::WarehouseApi;
use crate::domain::{self, FulfillmentState, Pack, TaskState, fulfillment_state, task_state};
use crate::error::WarehouseError;
use crate::store::{self, exception, fulfillment, task};
use crate::wire::{Carton, exception_to_wire, fulfillment_to_wire, task_to_wire};

impl WarehouseApi {
    pub(super) async fn confirm_pick(
        &self,
        req: ConfirmPickRequest,
    ) -> ApiResult<ConfirmPickResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("task_id", &req.task_id);
        v.non_negative("picked_quantity", req.picked_quantity);
        v.optional_text("picker", &req.picker, 100);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.ConfirmPick", req);
        let t = store::locked_task(&txn, &req.task_id).await?;
        let state = task_state(&t.status);
        if !state.pickable() {
            return Err(WarehouseError::TaskClosed(t.task_id, state).into());
        }
        if req.picked_quantity > t.quantity {
            return Err(WarehouseError::MoreThanTheTask {
                field: "picked_quantity",
                task_units: t.quantity,
            }
            .into());
        }
        let short = req.picked_quantity < t.quantity;
        let fulfillment_id = t.fulfillment_id.clone();
        let mut am: task::ActiveModel = t.into();
        am.picked_quantity = Set(req.picked_quantity);
        am.status = Set(if short {
            TaskState::Short
        } else {
            TaskState::Picked
        }
        .as_str()
        .into());
        let t = am.update(&txn).await?;
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
        } else if store::unpicked_tasks(&txn, &fulfillment_id).await? == 0 {
            store::set_status(
                &txn,
                std::slice::from_ref(&fulfillment_id),
                FulfillmentState::Picked,
                "",
            )
            .await?;
        }
        let response = ConfirmPickResponse {
            task: Some(task_to_wire(t)),
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    /// Records the packer's carton. Scanning twice is harmless: packing an already packed
    /// fulfillment with the same carton answers it unchanged.
    pub(super) async fn confirm_pack(
        &self,
        req: ConfirmPackRequest,
    ) -> ApiResult<ConfirmPackResponse> {
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
        let f = store::fulfillment(&txn, &req.fulfillment_id, true).await?;
        let decision = domain::pack(
            &f.fulfillment_id,
            fulfillment_state(&f.status),
            f.parcel == carton,
        )?;
        if decision == Pack::Pack {
            let (order_id, saga_id, site) = (f.order_id.clone(), f.saga_id.clone(), f.site.clone());
            let mut am: fulfillment::ActiveModel = f.into();
            am.status = Set(FulfillmentState::Packed.as_str().into());
            am.parcel = Set(carton);
            am.packer = Set(req.packer.clone());
            am.update(&txn).await?;
            outbox::enqueue(
                &txn,
                "warehouse.packed",
                &req.fulfillment_id,
                &serde_json::json!({
                    "fulfillment_id": req.fulfillment_id, "order_id": order_id,
                    "saga_id": saga_id, "site": site, "weight_grams": p.weight_grams,
                    "length_mm": p.length_mm, "width_mm": p.width_mm,
                    "height_mm": p.height_mm,
                }),
            )
            .await?;
        }
        let (f, tasks) = store::load(&txn, &req.fulfillment_id).await?;
        let response = ConfirmPackResponse {
            fulfillment: Some(fulfillment_to_wire(f, tasks)),
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    pub(super) async fn confirm_ship(
        &self,
        req: ConfirmShipRequest,
    ) -> ApiResult<ConfirmShipResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("fulfillment_id", &req.fulfillment_id);
        v.text("tracking_number", &req.tracking_number, 100);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "warehouse.ConfirmShip", req);
        let f = store::fulfillment(&txn, &req.fulfillment_id, true).await?;
        domain::ship(
            &f.fulfillment_id,
            fulfillment_state(&f.status),
            f.tracking_number == req.tracking_number,
        )?;
        let (order_id, saga_id) = (f.order_id.clone(), f.saga_id.clone());
        let mut am: fulfillment::ActiveModel = f.into();
        am.status = Set(FulfillmentState::Shipped.as_str().into());
        am.tracking_number = Set(req.tracking_number.clone());
        am.shipped_at_ms = Set(Some(now_ms()));
        am.update(&txn).await?;
        outbox::enqueue(
            &txn,
            "warehouse.shipped",
            &req.fulfillment_id,
            &serde_json::json!({
                "fulfillment_id": req.fulfillment_id, "order_id": order_id,
                "saga_id": saga_id, "tracking_number": req.tracking_number,
            }),
        )
        .await?;
        let (f, tasks) = store::load(&txn, &req.fulfillment_id).await?;
        let response = ConfirmShipResponse {
            fulfillment: Some(fulfillment_to_wire(f, tasks)),
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }

    /// A problem at the shelf or the packing bench. Could-not-locate, damaged and short picks
    /// close the task short and put the fulfillment in exception: the saga re-routes the order
    /// (or backorders it) and writes the missing or damaged units off at this site. A carton
    /// problem is recorded and leaves the fulfillment as it is, to be packed again.
    pub(super) async fn report_exception(
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
        let t = store::locked_task(&txn, &req.task_id).await?;
        let f = store::fulfillment(&txn, &t.fulfillment_id, false).await?;
        let state = fulfillment_state(&f.status);
        if state.closed() {
            return Err(WarehouseError::FulfillmentClosed(f.fulfillment_id, state).into());
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
            let task = task_state(&t.status);
            if !(task.pickable() || task == TaskState::Picked) {
                return Err(WarehouseError::TaskClosed(t.task_id, task).into());
            }
            if req.quantity > t.quantity {
                return Err(WarehouseError::MoreThanTheTask {
                    field: "quantity",
                    task_units: t.quantity,
                }
                .into());
            }
            let e =
                record_exception(&txn, &t, reason, req.quantity, &req.note, &req.reporter).await?;
            let mut am: task::ActiveModel = t.clone().into();
            am.picked_quantity = Set(t.quantity - req.quantity);
            am.status = Set(TaskState::Short.as_str().into());
            am.update(&txn).await?;
            e
        };
        let (f, tasks) = store::load(&txn, &f.fulfillment_id).await?;
        let response = ReportExceptionResponse {
            exception: Some(exception_to_wire(e)),
            fulfillment: Some(fulfillment_to_wire(f, tasks)),
        };
        guard.commit(txn, &response).await?;
        self.outbox.wake();
        Ok(response)
    }
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
        reason: Set(domain::exception_code(reason).into()),
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
    let f = store::fulfillment(c, &t.fulfillment_id, false).await?;
    let why = format!("{}: {quantity} x {} ({note})", e.reason, t.sku);
    store::set_status(
        c,
        std::slice::from_ref(&f.fulfillment_id),
        FulfillmentState::Exception,
        &why,
    )
    .await?;
    outbox::enqueue(
        c,
        "warehouse.exception",
        &f.fulfillment_id,
        &exception_event(&f, t, &e),
    )
    .await?;
    Ok(e)
}
