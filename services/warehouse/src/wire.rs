//! The warehouse's rows as its API shows them.

use erp_proto::warehouse::*;
use erp_runtime::time::{opt_timestamp, to_timestamp};

use crate::domain::{exception_reason, fulfillment_state, task_state};
use crate::store::{exception, fulfillment, site, task};

/// The packer's carton as stored.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Carton {
    pub weight_grams: i64,
    pub length_mm: i64,
    pub width_mm: i64,
    pub height_mm: i64,
}

pub fn parcel_of(json: &str) -> Option<erp_proto::common::Parcel> {
    let c: Carton = serde_json::from_str(json).ok()?;
    Some(erp_proto::common::Parcel {
        weight_grams: c.weight_grams,
        length_mm: c.length_mm,
        width_mm: c.width_mm,
        height_mm: c.height_mm,
    })
}

pub fn exception_to_wire(e: exception::Model) -> WarehouseException {
    WarehouseException {
        exception_id: e.exception_id,
        task_id: e.task_id,
        fulfillment_id: e.fulfillment_id,
        reason: exception_reason(&e.reason) as i32,
        quantity: e.quantity,
        note: e.note,
        reported_at: Some(to_timestamp(e.reported_at_ms)),
    }
}

/// What the audit trail digests of a site.
pub fn site_state(s: &Site) -> serde_json::Value {
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

pub fn site_to_wire(m: site::Model) -> Site {
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

pub fn task_to_wire(t: task::Model) -> PickTask {
    PickTask {
        task_id: t.task_id,
        fulfillment_id: t.fulfillment_id,
        order_line_id: t.order_line_id,
        sku: t.sku,
        quantity: t.quantity,
        picked_quantity: t.picked_quantity,
        status: task_state(&t.status).to_wire() as i32,
        wave_id: t.wave_id,
    }
}

/// A fulfillment with its tasks.
pub fn fulfillment_to_wire(f: fulfillment::Model, tasks: Vec<task::Model>) -> Fulfillment {
    Fulfillment {
        fulfillment_id: f.fulfillment_id,
        order_id: f.order_id,
        site: f.site,
        status: fulfillment_state(&f.status).to_wire() as i32,
        priority: f.priority,
        service_level: f.service_level,
        tasks: tasks.into_iter().map(task_to_wire).collect(),
        parcel: parcel_of(&f.parcel),
        tracking_number: f.tracking_number,
        saga_id: f.saga_id,
        created_at: Some(to_timestamp(f.created_at_ms)),
        shipped_at: opt_timestamp(f.shipped_at_ms),
        status_reason: f.status_reason,
    }
}
