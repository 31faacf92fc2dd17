//! Chooses where the shipment ships from. v1/v2: the routing rules' site when it can ship the
//! whole order now, else the first online warehouse that can. v3 plans one shipment of what can
//! ship now (see [`crate::plan`]); the rest is backordered or left for the next shipment. When
//! nothing can ship, the saga waits for stock ([`Outcome::Backordered`]) instead of failing
//! (v3, or after a re-route). Nothing to undo: routing changes nothing a participant keeps.

use std::time::Duration;

use erp_proto::{order, warehouse};

use crate::ctx::{Ctx, LineSnapshot};
use crate::outcome::{Outcome, Reason, StepError, StepResult};
use crate::participants::Participants;
use crate::plan::{self, available_at, site_online};
use crate::steps::{Call, Handlers};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: None,
    summary,
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let Call {
        p, key, timeout: t, ..
    } = c;
    let routed = if ctx.parts {
        route_part(p, &key, ctx, t).await
    } else {
        route(p, &key, ctx, t).await
    };
    match routed {
        Ok(()) => Ok(Outcome::Next),
        Err(StepError::Rejected {
            reason: Reason::InsufficientStock,
            detail,
        }) if ctx.round > 0 || ctx.parts => Ok(Outcome::Backordered(detail)),
        Err(StepError::Rejected {
            reason: Reason::NothingToShip,
            detail,
        }) => Ok(Outcome::NothingToShip(detail)),
        Err(e) => Err(e),
    }
}

fn summary(ctx: &Ctx) -> String {
    if !ctx.parts {
        return format!("ship from {}", ctx.location);
    }
    let list = |p: &mut dyn Iterator<Item = (String, i64)>| {
        p.map(|(l, q)| format!("{l} x{q}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "shipment {} from {}: {}",
        ctx.shipments.len() + 1,
        ctx.location,
        list(&mut ctx.batch.iter().map(|l| (l.sku.clone(), l.quantity)))
    );
    if !ctx.short.is_empty() {
        text.push_str("; backordered: ");
        text.push_str(&list(
            &mut ctx.short.iter().map(|p| (p.line_id.clone(), p.quantity)),
        ));
    }
    text
}

/// The first warehouse (by code) that can ship every line now; routing rules come with the
/// order orchestration work.
async fn route(p: &Participants, key: &str, ctx: &mut Ctx, t: Duration) -> Result<(), StepError> {
    let o = ctx
        .order
        .as_ref()
        .ok_or_else(|| StepError::missing("order"))?;
    // The order service's routing rules decide first (and record why on the order); a
    // decision this saga cannot ship as one shipment (a split, a backorder) or that names a
    // site it must avoid falls back to the first online site that has every line.
    let ruled = match p
        .ports
        .order
        .route_order(
            order::RouteOrderRequest {
                idempotency_key: key.to_owned(),
                order_id: o.order_id.clone(),
                exclude_sites: ctx.excluded_sites.clone(),
            },
            t,
        )
        .await
    {
        Ok(r) => r.decision.and_then(|d| {
            let first = d.allocations.first()?.location.clone();
            d.allocations
                .iter()
                .all(|a| a.backordered == 0 && a.allocated > 0 && a.location == first)
                .then_some(first)
        }),
        Err(s) => match StepError::from(s) {
            transient @ StepError::Transient(_) => return Err(transient),
            StepError::Rejected { .. } => None,
        },
    };
    let skus: Vec<String> = o.lines.iter().map(|l| l.sku.clone()).collect();
    // The warehouse's own view too: a site marked offline (outage, labor) takes no new work.
    let (availability, sites) = p.network_view(skus, t).await?;
    let mut candidates: Vec<String> = availability
        .items
        .iter()
        .flat_map(|i| i.locations.iter().map(|l| l.location.clone()))
        .collect();
    candidates.sort();
    candidates.dedup();
    let available = |sku: &str, loc: &str| available_at(&availability, sku, loc);
    let site = |code: &str| sites.iter().find(|s| s.code == code);
    let online = |code: &str| site_online(&sites, code);
    let usable = |loc: &String| {
        !ctx.excluded_sites.contains(loc)
            && online(loc)
            && o.lines.iter().all(|l| available(&l.sku, loc) >= l.quantity)
    };
    let chosen = ruled
        .filter(|loc| usable(loc))
        .or_else(|| candidates.into_iter().find(|loc| usable(loc)));
    match chosen {
        Some(loc) => {
            ctx.origin_postal = site(&loc)
                .map(|s| s.postal_code.clone())
                .unwrap_or_default();
            ctx.location = loc;
            Ok(())
        }
        None => Err(StepError::rejected(
            Reason::InsufficientStock,
            format!(
                "no warehouse can ship {} now",
                o.lines
                    .iter()
                    .map(|l| format!("{} x{}", l.sku, l.quantity))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// v3: plans the next shipment: the routing rules' decision (the first of its sites this
/// saga can use), else the online warehouse that ships all of what is needed (see
/// [`plan::plan`]). What no warehouse has is backordered; with nothing to ship now the step
/// answers INSUFFICIENT_STOCK and the saga waits for stock.
async fn route_part(
    p: &Participants,
    key: &str,
    ctx: &mut Ctx,
    t: Duration,
) -> Result<(), StepError> {
    let o = ctx
        .order
        .clone()
        .ok_or_else(|| StepError::missing("order"))?;
    // The usual case asks the rules first and ships their plan: RouteOrder has just checked
    // stock, site status and capacity, and routes what each line still needs. A backordered
    // saga looks at stock first (below), so that it asks only when stock changed.
    let asked = if ctx.backordered {
        None
    } else {
        let d = p.ask_rules(key, ctx, t).await?;
        if let Some(d) = &d
            && let Some(ruled) = plan::from_rules(d, &o.lines, &ctx.excluded_sites)
        {
            // Where parcels leave from: carriers zone rates by the site's postal code.
            let sites = p
                .ports
                .warehouse
                .list_sites(warehouse::ListSitesRequest {}, t)
                .await?
                .sites;
            ctx.origin_postal = postal_code(&sites, &ruled.site);
            ctx.remaining = ruled.remaining;
            ctx.batch = ruled.batch;
            ctx.short = ruled.short;
            ctx.location = ruled.site;
            return Ok(());
        }
        Some(d)
    };
    let remaining = p.still_needed(&o.order_id, t).await?;
    ctx.remaining = remaining.clone();
    ctx.batch.clear();
    if !ctx.backordered {
        ctx.short.clear();
    }
    if remaining.is_empty() {
        return Err(StepError::rejected(
            Reason::NothingToShip,
            "every line is shipped or cancelled",
        ));
    }
    let sku = |line_id: &str| {
        o.lines
            .iter()
            .find(|l| l.line_id == line_id)
            .map(|l| l.sku.clone())
            .unwrap_or_default()
    };
    let mut skus: Vec<String> = remaining.iter().map(|r| sku(&r.line_id)).collect();
    skus.sort();
    skus.dedup();
    let (availability, sites) = p.network_view(skus, t).await?;
    let net = plan::Network::new(
        &o.lines,
        &remaining,
        &availability,
        &sites,
        &ctx.excluded_sites,
    );
    let what = || {
        remaining
            .iter()
            .map(|r| format!("{} x{}", sku(&r.line_id), r.quantity))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // A backordered saga asks the rules again only once stock of what it waits for is
    // there and has changed since it last asked (each decision is recorded on the order).
    let seen = net.fingerprint(&remaining);
    if ctx.backordered
        && (remaining.iter().all(|r| net.total(&r.line_id) == 0) || seen == ctx.stock_seen)
    {
        if ctx.short.is_empty() {
            ctx.short = remaining.clone();
        }
        return Err(StepError::rejected(
            Reason::InsufficientStock,
            format!("no warehouse can ship {} yet", what()),
        ));
    }
    ctx.stock_seen = seen;
    let decision = match asked {
        Some(d) => d,
        None => p.ask_rules(key, ctx, t).await?,
    };
    match plan::plan(&remaining, decision.as_ref(), &net) {
        plan::Plan::Ship {
            site,
            portions,
            short,
        } => {
            ctx.batch = portions
                .iter()
                .filter_map(|p| {
                    let l = o.lines.iter().find(|l| l.line_id == p.line_id)?;
                    Some(LineSnapshot {
                        quantity: p.quantity,
                        ..l.clone()
                    })
                })
                .collect();
            ctx.short = short;
            ctx.origin_postal = postal_code(&sites, &site);
            ctx.location = site;
            Ok(())
        }
        plan::Plan::Wait { short } => {
            ctx.short = short;
            Err(StepError::rejected(
                Reason::InsufficientStock,
                format!("no warehouse can ship {} now", what()),
            ))
        }
    }
}

fn postal_code(sites: &[warehouse::Site], code: &str) -> String {
    sites
        .iter()
        .find(|s| s.code == code)
        .map(|s| s.postal_code.clone())
        .unwrap_or_default()
}
