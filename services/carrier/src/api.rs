//! gRPC handlers of the carrier service.

use erp_proto::carrier::carrier_service_server::CarrierService;
use erp_proto::carrier::*;
use erp_proto::common::Money;
use erp_runtime::audit;
use erp_runtime::auth::Caller;
use erp_runtime::error::respond;
use erp_runtime::idempotency::{self, Forward};
use erp_runtime::outbox::{self, OutboxWaker};
use erp_runtime::time::{from_timestamp, now_ms, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, TransactionTrait,
};
use tonic::{Request, Response, Status};

use crate::adapter::{CarrierPort, LabelOrder};
use crate::domain::{self, Offering};
use crate::error::CarrierError;
use crate::store::{self, ShipmentFilter, ShipmentKey, carrier, shipment, tracking};

const DAY_MS: i64 = 86_400_000;

pub struct CarrierApi {
    db: DatabaseConnection,
    outbox: OutboxWaker,
    /// The carriers' own systems.
    port: std::sync::Arc<dyn CarrierPort>,
}

impl CarrierApi {
    pub fn new(
        db: DatabaseConnection,
        outbox: OutboxWaker,
        port: std::sync::Arc<dyn CarrierPort>,
    ) -> Self {
        Self { db, outbox, port }
    }
}

fn decode_offerings(m: &carrier::Model) -> ApiResult<Vec<Offering>> {
    serde_json::from_str(&m.offerings)
        .map_err(|e| ApiError::Internal(format!("carrier {} offerings: {e}", m.code)))
}

fn carrier_to_wire(m: carrier::Model) -> ApiResult<Carrier> {
    let offerings = decode_offerings(&m)?;
    let cutoffs: Vec<(String, i32)> = serde_json::from_str(&m.cutoffs).unwrap_or_default();
    Ok(Carrier {
        code: m.code,
        name: m.name,
        services: offerings
            .into_iter()
            .map(|o| ServiceOffering {
                code: o.code,
                level: o.level,
                transit_days: o.transit_days,
                rates: o
                    .bands
                    .iter()
                    .map(|(zone, max, price)| RateBand {
                        zone: *zone,
                        max_weight_grams: *max,
                        price: Some(Money {
                            amount_minor: *price,
                            currency: o.currency.clone(),
                        }),
                    })
                    .collect(),
                surcharge: Some(Money {
                    amount_minor: o.surcharge_minor,
                    currency: o.currency.clone(),
                }),
            })
            .collect(),
        cutoffs: cutoffs
            .into_iter()
            .map(|(site, cutoff_minute_of_day)| PickupCutoff {
                site,
                cutoff_minute_of_day,
            })
            .collect(),
        active: m.active,
    })
}

async fn shipment_to_wire<C: ConnectionTrait>(c: &C, s: shipment::Model) -> ApiResult<Shipment> {
    Ok(shipments_to_wire(c, vec![s])
        .await?
        .pop()
        .unwrap_or_default())
}

/// Shipments with their tracking events, read for the whole set in one query.
async fn shipments_to_wire<C: ConnectionTrait>(
    c: &C,
    rows: Vec<shipment::Model>,
) -> ApiResult<Vec<Shipment>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut events = store::events_of(c, rows.iter().map(|s| s.shipment_id.clone())).await?;
    Ok(rows
        .into_iter()
        .map(|s| {
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut events)
                .into_iter()
                .partition(|e| e.shipment_id == s.shipment_id);
            events = rest;
            Shipment {
                shipment_id: s.shipment_id,
                order_id: s.order_id,
                fulfillment_id: s.fulfillment_id,
                carrier: s.carrier,
                service: s.service,
                tracking_number: s.tracking_number,
                cost: Some(Money {
                    amount_minor: s.cost_minor,
                    currency: s.currency,
                }),
                status: s.status,
                events: mine
                    .into_iter()
                    .map(|e| TrackingEvent {
                        event_id: e.event_id,
                        milestone: e.milestone,
                        occurred_at: Some(to_timestamp(e.occurred_at_ms)),
                        detail: e.detail,
                    })
                    .collect(),
                created_at: Some(to_timestamp(s.created_at_ms)),
                estimated_delivery: Some(to_timestamp(s.estimated_delivery_ms)),
            }
        })
        .collect())
}

impl CarrierApi {
    async fn upsert(
        &self,
        caller: &Caller,
        req: UpsertCarrierRequest,
    ) -> ApiResult<UpsertCarrierResponse> {
        let Some(c) = req.carrier else {
            return Err(ApiError::invalid("carrier", "is required"));
        };
        let mut v = Violations::new();
        v.code("carrier.code", &c.code);
        v.text("carrier.name", &c.name, 200);
        v.check(
            !c.services.is_empty(),
            "carrier.services",
            "must list at least one service",
        );
        let mut offerings = Vec::new();
        for (i, s) in c.services.iter().enumerate() {
            let f = |x: &str| format!("carrier.services[{i}].{x}");
            v.code(&f("code"), &s.code);
            v.check(
                ServiceLevel::try_from(s.level).is_ok_and(|l| l != ServiceLevel::Unspecified),
                f("level"),
                "must be set",
            );
            v.check(
                s.transit_days >= 0,
                f("transit_days"),
                "must not be negative",
            );
            v.check(
                !s.rates.is_empty(),
                f("rates"),
                "must hold at least one band",
            );
            let currency = s
                .rates
                .first()
                .and_then(|r| r.price.as_ref())
                .map(|p| p.currency.clone())
                .unwrap_or_default();
            v.currency(&f("rates[0].price.currency"), &currency);
            let mut bands = Vec::new();
            for (j, r) in s.rates.iter().enumerate() {
                v.check(
                    r.zone > 0,
                    f(&format!("rates[{j}].zone")),
                    "must be positive",
                );
                v.positive(
                    &f(&format!("rates[{j}].max_weight_grams")),
                    r.max_weight_grams,
                );
                let p = r.price.clone().unwrap_or_default();
                v.non_negative(
                    &f(&format!("rates[{j}].price.amount_minor")),
                    p.amount_minor,
                );
                v.check(
                    p.currency == currency,
                    f(&format!("rates[{j}].price.currency")),
                    "one currency per service",
                );
                bands.push((r.zone, r.max_weight_grams, p.amount_minor));
            }
            if let Some(surcharge) = &s.surcharge {
                v.non_negative(&f("surcharge.amount_minor"), surcharge.amount_minor);
                v.check(
                    surcharge.currency == currency || surcharge.amount_minor == 0,
                    f("surcharge.currency"),
                    "must be the rates' currency",
                );
            }
            offerings.push(Offering {
                code: s.code.clone(),
                level: s.level,
                transit_days: s.transit_days,
                surcharge_minor: s.surcharge.as_ref().map_or(0, |m| m.amount_minor),
                currency,
                bands,
            });
        }
        for (i, cut) in c.cutoffs.iter().enumerate() {
            v.code(&format!("carrier.cutoffs[{i}].site"), &cut.site);
            v.check(
                (0..1440).contains(&cut.cutoff_minute_of_day),
                format!("carrier.cutoffs[{i}].cutoff_minute_of_day"),
                "must be 0..1440",
            );
        }
        v.optional_text("reason", &req.reason, 500);
        v.finish()?;
        let cutoffs: Vec<(String, i32)> = c
            .cutoffs
            .iter()
            .map(|x| (x.site.clone(), x.cutoff_minute_of_day))
            .collect();
        let txn = self.db.begin().await?;
        let existing = store::carrier(&txn, &c.code, true).await?;
        let before = existing
            .as_ref()
            .map(|e| serde_json::json!({ "name": e.name, "offerings": e.offerings, "cutoffs": e.cutoffs, "active": e.active }));
        let am = carrier::ActiveModel {
            code: Set(c.code.clone()),
            name: Set(c.name.clone()),
            offerings: Set(to_json(&offerings)?),
            cutoffs: Set(to_json(&cutoffs)?),
            active: Set(true),
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
                target: format!("carrier:{}", m.code),
                reason: &req.reason,
                before,
                after: Some(serde_json::json!({ "name": m.name, "offerings": m.offerings, "cutoffs": m.cutoffs, "active": m.active })),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(UpsertCarrierResponse {
            carrier: Some(carrier_to_wire(m)?),
        })
    }

    async fn quote(&self, req: QuoteRatesRequest) -> ApiResult<QuoteRatesResponse> {
        let mut v = Violations::new();
        v.code("origin_site", &req.origin_site);
        v.text("origin_region", &req.origin_region, 20);
        let dest = req.destination.clone().unwrap_or_default();
        v.text("destination.postal_code", &dest.postal_code, 20);
        let parcel = req.parcel.unwrap_or_default();
        v.positive("parcel.weight_grams", parcel.weight_grams);
        v.finish()?;
        let ship_at = req.ship_at.as_ref().map_or_else(now_ms, from_timestamp);
        let promised = req.promised_by.as_ref().map(from_timestamp);
        let zone = domain::zone(&req.origin_region, &dest.postal_code);
        let mut options = Vec::new();
        let mut excluded = Vec::new();
        for c in store::carriers(&self.db, true).await? {
            let cutoffs: Vec<(String, i32)> = serde_json::from_str(&c.cutoffs).unwrap_or_default();
            // After the carrier's pickup cutoff at this site, the parcel leaves tomorrow.
            let minute_of_day = i32::try_from((ship_at.rem_euclid(DAY_MS)) / 60_000).unwrap_or(0);
            let late = cutoffs
                .iter()
                .find(|(site, _)| site == &req.origin_site)
                .is_some_and(|(_, cut)| minute_of_day > *cut);
            for o in decode_offerings(&c)? {
                let Some(price) = domain::price(&o, zone, parcel.weight_grams) else {
                    excluded.push(ExcludedOption {
                        carrier: c.code.clone(),
                        service: o.code.clone(),
                        reason: format!("no rate for zone {zone} at {} g", parcel.weight_grams),
                    });
                    continue;
                };
                let depart = ship_at + if late { DAY_MS } else { 0 };
                let delivery = depart + i64::from(o.transit_days) * DAY_MS;
                if let Some(p) = promised
                    && delivery > p
                {
                    excluded.push(ExcludedOption {
                        carrier: c.code.clone(),
                        service: o.code.clone(),
                        reason: format!(
                            "delivers {} after the promised date{}",
                            chrono_days(delivery - p),
                            if late { " (pickup cutoff passed)" } else { "" }
                        ),
                    });
                    continue;
                }
                options.push(RateOption {
                    carrier: c.code.clone(),
                    service: o.code.clone(),
                    level: o.level,
                    price: Some(Money {
                        amount_minor: price,
                        currency: o.currency.clone(),
                    }),
                    estimated_delivery: Some(to_timestamp(delivery)),
                    zone,
                });
            }
        }
        options.sort_by_key(|o| {
            (
                o.price.as_ref().map_or(i64::MAX, |p| p.amount_minor),
                o.carrier.clone(),
                o.service.clone(),
            )
        });
        Ok(QuoteRatesResponse { options, excluded })
    }

    async fn buy(&self, req: BuyLabelRequest) -> ApiResult<BuyLabelResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.code("carrier", &req.carrier);
        v.code("service", &req.service);
        v.text("origin_region", &req.origin_region, 20);
        let dest = req.destination.clone().unwrap_or_default();
        v.text("destination.postal_code", &dest.postal_code, 20);
        let weight = req.parcel.as_ref().map_or(0, |p| p.weight_grams);
        v.positive("parcel.weight_grams", weight);
        v.optional_text("fulfillment_id", &req.fulfillment_id, 100);
        v.finish()?;
        // A repeat is answered from the record, without asking the carrier again.
        if let Some(replay) = idempotency::lookup::<_, BuyLabelResponse>(
            &self.db,
            "carrier.BuyLabel",
            &req.idempotency_key,
            &idempotency::fingerprint(&req),
        )
        .await?
        {
            return Ok(replay);
        }
        let c = store::carrier(&self.db, &req.carrier, false)
            .await?
            .ok_or_else(|| {
                ApiError::invalid("carrier", format!("unknown carrier {}", req.carrier))
            })?;
        let o = decode_offerings(&c)?
            .into_iter()
            .find(|o| o.code == req.service)
            .ok_or_else(|| {
                ApiError::invalid(
                    "service",
                    format!("carrier {} has no service {}", c.code, req.service),
                )
            })?;
        let zone = domain::zone(&req.origin_region, &dest.postal_code);
        let price = domain::price(&o, zone, weight).ok_or_else(|| CarrierError::NoRate {
            carrier: c.code.clone(),
            service: o.code.clone(),
            zone,
            weight,
        })?;
        // The carrier books the label outside any transaction: a slow carrier holds no lock.
        let label = self
            .port
            .create_label(&LabelOrder {
                carrier: c.code.clone(),
                service: o.code.clone(),
                request_key: req.idempotency_key.clone(),
                destination_postal_code: dest.postal_code.clone(),
                weight_grams: weight,
            })
            .await
            .map_err(CarrierError::from)?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "carrier.BuyLabel", req);
        let now = now_ms();
        let shipment_id = uuid::Uuid::now_v7();
        let tracking_number = label.tracking_number;
        let s = shipment::ActiveModel {
            shipment_id: Set(shipment_id.to_string()),
            order_id: Set(req.order_id.clone()),
            fulfillment_id: Set(req.fulfillment_id.clone()),
            carrier: Set(c.code.clone()),
            service: Set(o.code.clone()),
            tracking_number: Set(tracking_number),
            cost_minor: Set(price),
            currency: Set(o.currency.clone()),
            status: Set(ShipmentStatus::LabelCreated as i32),
            created_at_ms: Set(now),
            estimated_delivery_ms: Set(now + i64::from(o.transit_days) * DAY_MS),
        }
        .insert(&txn)
        .await?;
        let response = BuyLabelResponse {
            shipment: Some(shipment_to_wire(&txn, s).await?),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    async fn void(&self, req: VoidLabelRequest) -> ApiResult<VoidLabelResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.check(
            req.shipment_id.is_empty() != req.order_id.is_empty(),
            "shipment_id",
            "give exactly one of shipment_id and order_id",
        );
        if !req.shipment_id.is_empty() {
            v.id("shipment_id", &req.shipment_id);
        }
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "carrier.VoidLabel", req);
        // A saga's compensation voids exactly the label its purchase bought: an order shipped
        // in parts has other labels that are not this step's to void.
        let bought = match idempotency::forward_outcome::<_, BuyLabelResponse>(
            &txn,
            "carrier.BuyLabel",
            &req.idempotency_key,
        )
        .await?
        {
            Forward::Unrelated => None,
            Forward::Never => Some(Vec::new()),
            Forward::Did(r) => Some(r.shipment.map(|s| s.shipment_id).into_iter().collect()),
        };
        idempotency::tombstone_forward(&txn, "carrier.BuyLabel", &req.idempotency_key).await?;
        let rows = if let (false, Some(ids)) = (req.order_id.is_empty(), bought) {
            store::shipments_for_update(&txn, ids).await?
        } else if req.order_id.is_empty() {
            vec![
                store::shipment(&txn, ShipmentKey::Id(&req.shipment_id), true)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("shipment {}", req.shipment_id)))?,
            ]
        } else {
            store::order_shipments_for_update(&txn, &req.order_id).await?
        };
        let mut voided_rows = Vec::with_capacity(rows.len());
        for s in rows {
            let s = if s.status == ShipmentStatus::LabelCreated as i32 {
                let mut am: shipment::ActiveModel = s.into();
                am.status = Set(ShipmentStatus::Voided as i32);
                am.update(&txn).await?
            } else if s.status == ShipmentStatus::Voided as i32 {
                s
            } else {
                return Err(CarrierError::AlreadyPickedUp(s.tracking_number).into());
            };
            voided_rows.push(s);
        }
        let voided = shipments_to_wire(&txn, voided_rows).await?;
        let response = VoidLabelResponse {
            shipment: if req.order_id.is_empty() {
                voided.first().cloned()
            } else {
                None
            },
            shipments: voided,
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    async fn track(
        &self,
        req: RecordTrackingEventRequest,
    ) -> ApiResult<RecordTrackingEventResponse> {
        let mut v = Violations::new();
        v.text("tracking_number", &req.tracking_number, 100);
        let ev = req.event.clone().unwrap_or_default();
        v.text("event.event_id", &ev.event_id, 100);
        v.optional_text("event.detail", &ev.detail, 500);
        v.check(
            ShipmentStatus::try_from(ev.milestone)
                .is_ok_and(|m| !matches!(m, ShipmentStatus::Unspecified | ShipmentStatus::Voided)),
            "event.milestone",
            "must be a tracking milestone",
        );
        v.check(ev.occurred_at.is_some(), "event.occurred_at", "is required");
        v.finish()?;
        let txn = self.db.begin().await?;
        // Locked: tracking events and a void of one label apply one after the other, so the
        // status never moves backwards or revives a voided label.
        let s = store::shipment(&txn, ShipmentKey::Tracking(&req.tracking_number), true)
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!("tracking number {}", req.tracking_number))
            })?;
        if store::event_recorded(&txn, &ev.event_id).await? {
            return Ok(RecordTrackingEventResponse {
                shipment: Some(shipment_to_wire(&txn, s).await?),
                applied: false,
            });
        }
        let applies =
            s.status != ShipmentStatus::Voided as i32 && domain::advances(s.status, ev.milestone);
        tracking::ActiveModel {
            event_id: Set(ev.event_id.clone()),
            shipment_id: Set(s.shipment_id.clone()),
            milestone: Set(ev.milestone),
            occurred_at_ms: Set(ev
                .occurred_at
                .as_ref()
                .map(from_timestamp)
                .unwrap_or_default()),
            detail: Set(ev.detail.clone()),
            applied: Set(applies),
        }
        .insert(&txn)
        .await?;
        let s = if applies {
            let mut am: shipment::ActiveModel = s.into();
            am.status = Set(ev.milestone);
            let s = am.update(&txn).await?;
            outbox::enqueue(
                &txn,
                "carrier.tracking",
                &s.order_id,
                &serde_json::json!({ "order_id": s.order_id, "tracking_number": s.tracking_number, "milestone": ev.milestone }),
            )
            .await?;
            s
        } else {
            s
        };
        let response = RecordTrackingEventResponse {
            shipment: Some(shipment_to_wire(&txn, s).await?),
            applied: applies,
        };
        txn.commit().await?;
        self.outbox.wake();
        Ok(response)
    }
}

fn chrono_days(ms: i64) -> String {
    let days = (ms + DAY_MS - 1) / DAY_MS;
    if days == 1 {
        "1 day".into()
    } else {
        format!("{days} days")
    }
}

/// Serializes a document stored as JSON in a column.
fn to_json<T: serde::Serialize>(value: &T) -> ApiResult<String> {
    serde_json::to_string(value).map_err(|e| ApiError::Internal(e.to_string()))
}

#[tonic::async_trait]
impl CarrierService for CarrierApi {
    async fn upsert_carrier(
        &self,
        r: Request<UpsertCarrierRequest>,
    ) -> Result<Response<UpsertCarrierResponse>, Status> {
        let caller = Caller::of(&r)?;
        respond(self.upsert(&caller, r.into_inner()).await)
    }

    async fn list_carriers(
        &self,
        _r: Request<ListCarriersRequest>,
    ) -> Result<Response<ListCarriersResponse>, Status> {
        respond(
            async {
                let rows = store::carriers(&self.db, false).await?;
                Ok(ListCarriersResponse {
                    carriers: rows
                        .into_iter()
                        .map(carrier_to_wire)
                        .collect::<ApiResult<_>>()?,
                })
            }
            .await,
        )
    }

    async fn quote_rates(
        &self,
        r: Request<QuoteRatesRequest>,
    ) -> Result<Response<QuoteRatesResponse>, Status> {
        respond(self.quote(r.into_inner()).await)
    }

    async fn buy_label(
        &self,
        r: Request<BuyLabelRequest>,
    ) -> Result<Response<BuyLabelResponse>, Status> {
        respond(self.buy(r.into_inner()).await)
    }

    async fn void_label(
        &self,
        r: Request<VoidLabelRequest>,
    ) -> Result<Response<VoidLabelResponse>, Status> {
        respond(self.void(r.into_inner()).await)
    }

    async fn record_tracking_event(
        &self,
        r: Request<RecordTrackingEventRequest>,
    ) -> Result<Response<RecordTrackingEventResponse>, Status> {
        respond(self.track(r.into_inner()).await)
    }

    async fn get_shipment(
        &self,
        r: Request<GetShipmentRequest>,
    ) -> Result<Response<GetShipmentResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let mut v = Violations::new();
                v.check(
                    req.shipment_id.is_empty() != req.tracking_number.is_empty(),
                    "shipment_id",
                    "give exactly one of shipment_id and tracking_number",
                );
                v.finish()?;
                let key = if req.shipment_id.is_empty() {
                    ShipmentKey::Tracking(&req.tracking_number)
                } else {
                    ShipmentKey::Id(&req.shipment_id)
                };
                let s = store::shipment(&self.db, key, false)
                    .await?
                    .ok_or_else(|| ApiError::not_found("no such shipment"))?;
                Ok(GetShipmentResponse {
                    shipment: Some(shipment_to_wire(&self.db, s).await?),
                })
            }
            .await,
        )
    }

    async fn list_shipments(
        &self,
        r: Request<ListShipmentsRequest>,
    ) -> Result<Response<ListShipmentsResponse>, Status> {
        let req = r.into_inner();
        respond(
            async {
                let size = page_size(req.page_size)?;
                let offset = page_offset(&req.page_token)?;
                let filter = ShipmentFilter {
                    order_id: &req.order_id,
                    status: req.status,
                    overdue_at_ms: req
                        .overdue
                        .then(|| req.as_of.as_ref().map_or_else(now_ms, from_timestamp)),
                };
                let rows = store::list_shipments(&self.db, &filter, offset, size).await?;
                let next = next_page_token(offset, rows.len(), size);
                Ok(ListShipmentsResponse {
                    shipments: shipments_to_wire(&self.db, rows).await?,
                    next_page_token: next,
                })
            }
            .await,
        )
    }
}
