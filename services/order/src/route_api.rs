//! The routing RPCs: rule sets held as data and versioned, and decisions recorded on the order
//! with the rule version that made them and why every warehouse was chosen or rejected.

use erp_proto::order::*;
use erp_proto::{inventory, warehouse};
use erp_runtime::time::{from_timestamp, now_ms, to_timestamp};
use erp_runtime::validate::Violations;
use erp_runtime::{ApiError, ApiResult, idempotency};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, TransactionTrait};
use serde::{Deserialize, Serialize};

use crate::api::OrderApi;
use crate::promise::{Promiser, SiteClock, covering_lot};
use crate::routing::{self, Rule, Strategy};
use crate::store::{self, decision, rule_set};

/// A decision as stored.
#[derive(Serialize, Deserialize)]
struct StoredDecision {
    rule_version: i32,
    rule: String,
    /// (line id, location, allocated, backordered)
    allocations: Vec<(String, String, i64, i64)>,
    explanation: Vec<String>,
    decided_at_ms: i64,
    /// Delivery estimate per allocation (same order), and for the whole order.
    #[serde(default)]
    promises: Vec<Option<i64>>,
    #[serde(default)]
    promised_by_ms: Option<i64>,
}

impl StoredDecision {
    fn to_wire(&self) -> RoutingDecision {
        RoutingDecision {
            rule_version: self.rule_version,
            matched_rules: vec![self.rule.clone()],
            allocations: self
                .allocations
                .iter()
                .enumerate()
                .map(
                    |(i, (line_id, location, allocated, backordered))| LineAllocation {
                        line_id: line_id.clone(),
                        location: location.clone(),
                        allocated: *allocated,
                        backordered: *backordered,
                        promised_by: self.promises.get(i).copied().flatten().map(to_timestamp),
                    },
                )
                .collect(),
            explanation: self.explanation.clone(),
            decided_at: Some(to_timestamp(self.decided_at_ms)),
            promised_by: self.promised_by_ms.map(to_timestamp),
        }
    }
}

fn rule_to_wire(r: &Rule) -> RoutingRule {
    RoutingRule {
        name: r.name.clone(),
        priority: r.priority,
        service_levels: r.service_levels.clone(),
        regions: r.regions.clone(),
        strategy: r.strategy.as_str().to_owned(),
        allow_split: r.allow_split,
        locations: r.locations.clone(),
    }
}

fn set_to_wire(m: &rule_set::Model) -> ApiResult<RoutingRuleSet> {
    let rules: Vec<Rule> =
        serde_json::from_str(&m.rules).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(RoutingRuleSet {
        version: m.version,
        rules: rules.iter().map(rule_to_wire).collect(),
        created_at: Some(to_timestamp(m.created_at_ms)),
        created_by: m.created_by.clone(),
    })
}

/// Stored decisions (see [`store::decisions_of`]) as the wire shows them.
pub(crate) fn decisions_to_wire(rows: &[decision::Model]) -> ApiResult<Vec<RoutingDecision>> {
    rows.iter()
        .map(|r| {
            serde_json::from_str::<StoredDecision>(&r.decision)
                .map(|d| d.to_wire())
                .map_err(|e| ApiError::Internal(e.to_string()))
        })
        .collect()
}

impl OrderApi {
    /// Stores a new version of the rules; decisions keep naming the version that made them.
    pub(crate) async fn put_rules(
        &self,
        caller: &erp_runtime::auth::Caller,
        req: PutRoutingRulesRequest,
    ) -> ApiResult<PutRoutingRulesResponse> {
        let mut v = Violations::new();
        let actor = req.actor.clone().unwrap_or_default();
        v.optional_text("actor.id", &actor.id, 100);
        v.text("actor.reason", &actor.reason, 500);
        let mut rules = Vec::with_capacity(req.rules.len());
        let mut names = std::collections::HashSet::new();
        for (i, r) in req.rules.iter().enumerate() {
            v.text(&format!("rules[{i}].name"), &r.name, 100);
            v.check(
                names.insert(r.name.clone()),
                format!("rules[{i}].name"),
                "is repeated",
            );
            let strategy = Strategy::parse(&r.strategy);
            v.check(
                strategy.is_some(),
                format!("rules[{i}].strategy"),
                "must be PREFER_REGION, LOWEST_COST or MUST_MEET_CUTOFF",
            );
            for (j, l) in r.locations.iter().enumerate() {
                v.code(&format!("rules[{i}].locations[{j}]"), l);
            }
            for (j, l) in r.service_levels.iter().enumerate() {
                v.code(&format!("rules[{i}].service_levels[{j}]"), l);
            }
            for (j, l) in r.regions.iter().enumerate() {
                v.code(&format!("rules[{i}].regions[{j}]"), l);
            }
            if let Some(strategy) = strategy {
                rules.push(Rule {
                    name: r.name.clone(),
                    priority: r.priority,
                    service_levels: r.service_levels.clone(),
                    regions: r.regions.clone(),
                    strategy,
                    allow_split: r.allow_split,
                    locations: r.locations.clone(),
                });
            }
        }
        v.finish()?;
        let txn = self.db.begin().await?;
        // Two changes racing both try version n+1: the primary key lets one in and the other
        // is told to retry (ABORTED), not given an internal error.
        let previous = store::latest_rules(&txn).await?;
        let latest = previous.as_ref().map_or(0, |m| m.version);
        let m = rule_set::ActiveModel {
            version: Set(latest + 1),
            rules: Set(
                serde_json::to_string(&rules).map_err(|e| ApiError::Internal(e.to_string()))?
            ),
            created_at_ms: Set(now_ms()),
            created_by: Set(format!("{}: {}", caller.subject, actor.reason)),
        }
        .insert(&txn)
        .await
        .map_err(|e| {
            if matches!(
                e.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) {
                ApiError::Aborted("the routing rules changed concurrently; retry".into())
            } else {
                e.into()
            }
        })?;
        erp_runtime::audit::record(
            &txn,
            erp_runtime::audit::Change {
                caller,
                target: "routing_rules".into(),
                reason: &actor.reason,
                before: previous
                    .map(|p| serde_json::json!({ "version": p.version, "rules": p.rules })),
                after: Some(serde_json::json!({ "version": m.version, "rules": m.rules })),
            },
        )
        .await?;
        // Orders waiting for stock are planned again under the new rules.
        erp_runtime::outbox::enqueue(
            &txn,
            "order.routing_rules_changed",
            &m.version.to_string(),
            &serde_json::json!({ "version": m.version, "by": actor.id }),
        )
        .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(PutRoutingRulesResponse {
            rule_set: Some(set_to_wire(&m)?),
        })
    }

    pub(crate) async fn get_rules(
        &self,
        req: GetRoutingRulesRequest,
    ) -> ApiResult<GetRoutingRulesResponse> {
        if req.version < 0 {
            return Err(ApiError::invalid("version", "must not be negative"));
        }
        let m = if req.version == 0 {
            store::latest_rules(&self.db).await?
        } else {
            store::rules_version(&self.db, req.version).await?
        };
        let Some(m) = m else {
            return Err(ApiError::not_found(if req.version == 0 {
                "routing rules: none stored yet; the default applies (LOWEST_COST, ship complete)"
                    .to_owned()
            } else {
                format!("routing rules version {}", req.version)
            }));
        };
        Ok(GetRoutingRulesResponse {
            rule_set: Some(set_to_wire(&m)?),
        })
    }

    /// Decides where the order ships from under the current rules, from live availability
    /// and warehouse status, and records the decision on the order.
    pub(crate) async fn route(&self, req: RouteOrderRequest) -> ApiResult<RouteOrderResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("order_id", &req.order_id);
        for (i, site) in req.exclude_sites.iter().enumerate() {
            v.code(&format!("exclude_sites[{i}]"), site);
        }
        v.finish()?;
        let hash = idempotency::fingerprint(&req);
        if let Some(replay) = idempotency::lookup::<_, RouteOrderResponse>(
            &self.db,
            "order.RouteOrder",
            &req.idempotency_key,
            &hash,
        )
        .await?
        {
            return Ok(replay);
        }
        let (o, lines) = store::order_with_lines(&self.db, &req.order_id).await?;
        let ship_to: crate::api::StoredAddress =
            serde_json::from_str(&o.ship_to).unwrap_or_default();
        let region = if ship_to.region.is_empty() {
            ship_to.country_code.to_uppercase()
        } else {
            format!(
                "{}-{}",
                ship_to.country_code.to_uppercase(),
                ship_to.region.to_uppercase()
            )
        };
        let ship_complete = store::channel(&self.db, &o.channel, false)
            .await?
            .is_some_and(|c| c.ship_complete);
        let (version, rules) = match store::latest_rules(&self.db).await? {
            Some(m) => (
                m.version,
                serde_json::from_str::<Vec<Rule>>(&m.rules)
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            ),
            None => (0, vec![]),
        };
        // The warehouse's view of its sites, and what each can still pick today.
        let mut wh = self.warehouse.clone();
        let listed = wh
            .list_sites(warehouse::ListSitesRequest {})
            .await
            .map_err(ApiError::Upstream)?
            .into_inner();
        let clocks: std::collections::HashMap<String, SiteClock> = listed
            .sites
            .iter()
            .map(|s| {
                (
                    s.code.clone(),
                    SiteClock {
                        postal_code: s.postal_code.clone(),
                        cutoff_minute_of_day: s.cutoff_minute_of_day,
                        utc_offset_minutes: s.utc_offset_minutes,
                    },
                )
            })
            .collect();
        // Capacity left today comes with the list (one call, not one per site).
        let sites: Vec<routing::Site> = listed
            .sites
            .into_iter()
            .enumerate()
            .map(|(i, s)| routing::Site {
                online: s.status != warehouse::SiteStatus::Offline as i32,
                excluded: req.exclude_sites.contains(&s.code),
                capacity_left: s.daily_capacity
                    - listed.released_today.get(i).copied().unwrap_or(0),
                code: s.code,
                region: s.region,
                cost_index: s.cost_index,
                cutoff_minute_of_day: s.cutoff_minute_of_day,
                utc_offset_minutes: s.utc_offset_minutes,
            })
            .collect();
        let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
        let availability = self
            .inventory
            .clone()
            .get_availability(inventory::GetAvailabilityRequest {
                skus,
                as_of: None,
                include_inbound: true,
            })
            .await
            .map_err(ApiError::Upstream)?
            .into_inner();
        let available = |sku: &str, site: &str| -> i64 {
            availability
                .items
                .iter()
                .filter(|i| i.sku == sku)
                .flat_map(|i| i.locations.iter())
                .filter(|l| l.location == site)
                .map(|l| l.available)
                .sum()
        };
        let order = routing::Order {
            service_level: o.service_level.clone(),
            region,
            ship_complete,
            lines: lines
                .iter()
                .map(|l| routing::Line {
                    line_id: l.line_id.clone(),
                    sku: l.sku.clone(),
                    quantity: l.ordered - l.cancelled - l.shipped,
                })
                .filter(|l| l.quantity > 0)
                .collect(),
        };
        let now = now_ms();
        let mut d = routing::route(&rules, &order, &sites, &available, now);
        // Promise dates: from when the order reached routing, through each warehouse's cutoff
        // and the carrier's transit; backordered units from the inbound stock that covers them.
        let destination = erp_proto::common::Address {
            postal_code: ship_to.postal_code.clone(),
            country_code: ship_to.country_code.clone(),
            ..Default::default()
        };
        let mut promiser =
            Promiser::new(self.carrier.clone(), &clocks, destination, &o.service_level);
        let from = now.max(o.created_at_ms);
        let mut promises = Vec::with_capacity(d.allocations.len());
        for a in &d.allocations {
            let mut parts = Vec::new();
            if a.allocated > 0 {
                parts.push(promiser.delivery(&a.location, from).await);
            }
            if a.backordered > 0 {
                let sku = lines
                    .iter()
                    .find(|l| l.line_id == a.line_id)
                    .map(|l| l.sku.as_str())
                    .unwrap_or_default();
                let lots: Vec<inventory::InboundLot> = availability
                    .items
                    .iter()
                    .filter(|i| i.sku == sku)
                    .flat_map(|i| i.inbound.iter().cloned())
                    .collect();
                let covered = covering_lot(&lots, a.backordered).map(|lot| {
                    (
                        lot.location.clone(),
                        lot.expected_at
                            .as_ref()
                            .map_or(from, from_timestamp)
                            .max(from),
                    )
                });
                parts.push(match covered {
                    Some((site, ready)) => promiser.delivery(&site, ready).await,
                    None => {
                        d.explanation.push(format!(
                            "{sku}: {} backordered with no inbound stock expected: no promise",
                            a.backordered
                        ));
                        None
                    }
                });
            }
            promises.push(
                parts
                    .iter()
                    .copied()
                    .collect::<Option<Vec<i64>>>()
                    .and_then(|p| p.into_iter().max()),
            );
        }
        let promised_by_ms = promises
            .iter()
            .copied()
            .collect::<Option<Vec<i64>>>()
            .and_then(|p| p.into_iter().max());
        if let Some(p) = promised_by_ms {
            d.explanation.push(format!(
                "promised by {} (cutoffs, inbound stock and {} carrier transit)",
                to_timestamp(p),
                o.service_level
            ));
        }
        let stored = StoredDecision {
            rule_version: version,
            rule: d.rule.clone(),
            allocations: d
                .allocations
                .iter()
                .map(|a| {
                    (
                        a.line_id.clone(),
                        a.location.clone(),
                        a.allocated,
                        a.backordered,
                    )
                })
                .collect(),
            explanation: d.explanation.clone(),
            decided_at_ms: now,
            promises,
            promised_by_ms,
        };
        let response = RouteOrderResponse {
            decision: Some(stored.to_wire()),
        };
        let txn = self.db.begin().await?;
        decision::ActiveModel {
            order_id: Set(o.order_id.clone()),
            rule_version: Set(version),
            decision: Set(
                serde_json::to_string(&stored).map_err(|e| ApiError::Internal(e.to_string()))?
            ),
            decided_at_ms: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        // The first promise is the one the customer was given; later decisions carry their
        // own estimate, which GetOrder shows beside it.
        if let Some(p) = promised_by_ms {
            store::promise_once(&txn, &o.order_id, p).await?;
        }
        idempotency::record(
            &txn,
            "order.RouteOrder",
            &req.idempotency_key,
            &hash,
            &response,
        )
        .await?;
        txn.commit().await?;
        Ok(response)
    }
}
