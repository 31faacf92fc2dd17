//! Shipment planning, as pure functions: given what each line still needs, the stock at each
//! warehouse, the warehouses' own view of their sites and the routing rules' decision, which
//! warehouse ships what now, and what waits. The route step fetches; this decides.

use std::collections::HashMap;

use erp_proto::{inventory, order, warehouse};

use crate::ctx::{LineSnapshot, Portion};

/// Whether a warehouse takes new work at `code` (a location it does not know: yes).
pub fn site_online(sites: &[warehouse::Site], code: &str) -> bool {
    sites
        .iter()
        .find(|s| s.code == code)
        .is_none_or(|s| s.status != warehouse::SiteStatus::Offline as i32)
}

/// What `loc` can promise of `sku` now.
pub fn available_at(a: &inventory::GetAvailabilityResponse, sku: &str, loc: &str) -> i64 {
    a.items
        .iter()
        .filter(|i| i.sku == sku)
        .flat_map(|i| i.locations.iter())
        .filter(|l| l.location == loc)
        .map(|l| l.available)
        .sum()
}

/// The stock this saga may ship from: usable warehouses (online, not excluded after a stock
/// exception) and what each has of each line's SKU.
pub struct Network {
    /// Usable warehouses holding any of the SKUs, by code.
    pub candidates: Vec<String>,
    /// Units available per (line, warehouse), never negative.
    available: HashMap<(String, String), i64>,
    /// Warehouses this saga may not use (excluded or offline).
    unusable: Vec<String>,
}

impl Network {
    pub fn new(
        lines: &[LineSnapshot],
        remaining: &[Portion],
        availability: &inventory::GetAvailabilityResponse,
        sites: &[warehouse::Site],
        excluded: &[String],
    ) -> Self {
        let sku = |line_id: &str| {
            lines
                .iter()
                .find(|l| l.line_id == line_id)
                .map(|l| l.sku.as_str())
                .unwrap_or_default()
        };
        let mut locations: Vec<String> = availability
            .items
            .iter()
            .flat_map(|i| i.locations.iter().map(|l| l.location.clone()))
            .collect();
        locations.sort();
        locations.dedup();
        let unusable: Vec<String> = locations
            .iter()
            .filter(|l| excluded.contains(l) || !site_online(sites, l))
            .cloned()
            .collect();
        let mut available = HashMap::new();
        for r in remaining {
            for l in &locations {
                let units = available_at(availability, sku(&r.line_id), l).max(0);
                available.insert((r.line_id.clone(), l.clone()), units);
            }
        }
        Self {
            candidates: locations
                .into_iter()
                .filter(|l| !unusable.contains(l))
                .collect(),
            available,
            unusable: unusable
                .into_iter()
                .chain(excluded.iter().cloned())
                .collect(),
        }
    }

    /// Whether this saga may ship from `site` (a site with no stock of these SKUs: yes).
    pub fn usable(&self, site: &str) -> bool {
        !self.unusable.iter().any(|u| u == site)
    }

    /// Units of `line_id` available at `site`.
    pub fn available(&self, line_id: &str, site: &str) -> i64 {
        self.available
            .get(&(line_id.to_owned(), site.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Units of `line_id` available over every usable warehouse.
    pub fn total(&self, line_id: &str) -> i64 {
        self.candidates
            .iter()
            .map(|c| self.available(line_id, c))
            .fold(0, i64::saturating_add)
    }

    /// What no usable warehouse has of what each line needs.
    pub fn deficit(&self, remaining: &[Portion]) -> Vec<Portion> {
        remaining
            .iter()
            .map(|r| Portion {
                line_id: r.line_id.clone(),
                quantity: (r.quantity - self.total(&r.line_id)).max(0),
            })
            .filter(|p| p.quantity > 0)
            .collect()
    }

    /// A fingerprint of the stock of what is needed: a backordered saga asks the rules again
    /// only when it changed.
    pub fn fingerprint(&self, remaining: &[Portion]) -> String {
        self.candidates
            .iter()
            .flat_map(|c| {
                remaining
                    .iter()
                    .map(move |r| format!("{c}:{}:{}", r.line_id, self.available(&r.line_id, c)))
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What ships now, or what waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One shipment from `site`; `short` is backordered.
    Ship {
        site: String,
        portions: Vec<Portion>,
        short: Vec<Portion>,
    },
    /// Nothing ships now; `short` is what is backordered.
    Wait { short: Vec<Portion> },
}

/// Plans the next shipment of what `remaining` still needs: the rules' decision, its first
/// warehouse this saga can use that still has what it was given; else (the rules chose a
/// warehouse this saga cannot use, or gave no decision) one usable warehouse that ships all of
/// it; else wait. A decision that allocates nothing (ship complete, nothing in stock) waits
/// with the rules' backorder.
pub fn plan(
    remaining: &[Portion],
    decision: Option<&order::RoutingDecision>,
    net: &Network,
) -> Plan {
    let need = |line_id: &str| {
        remaining
            .iter()
            .find(|r| r.line_id == line_id)
            .map_or(0, |r| r.quantity)
    };
    let deficit = net.deficit(remaining);
    let mut ship: Option<(String, Vec<Portion>)> = None;
    let mut short = deficit.clone();
    let rules_wait = decision.is_some_and(|d| d.allocations.iter().all(|a| a.allocated == 0));
    if let Some(d) = decision {
        let mut sites_in_order: Vec<&str> = Vec::new();
        for a in &d.allocations {
            if a.allocated > 0 && !sites_in_order.contains(&a.location.as_str()) {
                sites_in_order.push(&a.location);
            }
        }
        for site in sites_in_order {
            let portions: Vec<Portion> = d
                .allocations
                .iter()
                .filter(|a| a.location == site && a.allocated > 0)
                .map(|a| Portion {
                    line_id: a.line_id.clone(),
                    quantity: a.allocated.min(need(&a.line_id)),
                })
                .filter(|p| p.quantity > 0)
                .collect();
            if !portions.is_empty()
                && net.usable(site)
                && portions
                    .iter()
                    .all(|p| net.available(&p.line_id, site) >= p.quantity)
            {
                ship = Some((site.to_owned(), portions));
                break;
            }
        }
        if ship.is_some() || rules_wait {
            // The rules' plan, or their decision to wait.
            short = d
                .allocations
                .iter()
                .filter(|a| a.backordered > 0)
                .map(|a| Portion {
                    line_id: a.line_id.clone(),
                    quantity: a.backordered.min(need(&a.line_id)),
                })
                .collect();
        }
    }
    if ship.is_none() && !rules_wait {
        let covers = |c: &String| {
            remaining
                .iter()
                .all(|r| net.available(&r.line_id, c) >= r.quantity)
        };
        ship = net.candidates.iter().find(|c| covers(c)).map(|c| {
            let portions = remaining
                .iter()
                .map(|r| Portion {
                    line_id: r.line_id.clone(),
                    quantity: net.available(&r.line_id, c).min(r.quantity),
                })
                .filter(|p| p.quantity > 0)
                .collect();
            (c.clone(), portions)
        });
    }
    match ship {
        Some((site, portions)) => Plan::Ship {
            site,
            portions,
            short,
        },
        // Nothing ships now. What no warehouse has is backordered; a ship-complete order whose
        // lines are spread over warehouses waits whole.
        None => Plan::Wait {
            short: if rules_wait && !short.is_empty() {
                short
            } else if deficit.is_empty() {
                remaining.to_vec()
            } else {
                deficit
            },
        },
    }
}

/// A shipment the routing rules decided.
#[derive(Debug, Clone)]
pub struct RulesPlan {
    pub site: String,
    /// What each line still needs (the decision covers exactly that).
    pub remaining: Vec<Portion>,
    /// What ships from `site` now.
    pub batch: Vec<LineSnapshot>,
    /// What is backordered.
    pub short: Vec<Portion>,
}

/// The rules' decision as this saga's shipment when it may use the decision's first warehouse
/// (not excluded after a stock exception).
pub fn from_rules(
    d: &order::RoutingDecision,
    lines: &[LineSnapshot],
    excluded: &[String],
) -> Option<RulesPlan> {
    let site = d
        .allocations
        .iter()
        .find(|a| a.allocated > 0)
        .map(|a| a.location.clone())?;
    if excluded.contains(&site) {
        return None;
    }
    let mut remaining: Vec<Portion> = Vec::new();
    for a in &d.allocations {
        // A decision whose quantities overflow is no decision: the saga plans from stock.
        let units = a.allocated.checked_add(a.backordered)?;
        match remaining.iter_mut().find(|r| r.line_id == a.line_id) {
            Some(r) => r.quantity = r.quantity.checked_add(units)?,
            None => remaining.push(Portion {
                line_id: a.line_id.clone(),
                quantity: units,
            }),
        }
    }
    let batch: Vec<LineSnapshot> = d
        .allocations
        .iter()
        .filter(|a| a.location == site && a.allocated > 0)
        .filter_map(|a| {
            let l = lines.iter().find(|l| l.line_id == a.line_id)?;
            Some(LineSnapshot {
                quantity: a.allocated,
                ..l.clone()
            })
        })
        .collect();
    if batch.is_empty() {
        return None;
    }
    let short = d
        .allocations
        .iter()
        .filter(|a| a.backordered > 0)
        .map(|a| Portion {
            line_id: a.line_id.clone(),
            quantity: a.backordered,
        })
        .collect();
    Some(RulesPlan {
        site,
        remaining,
        batch,
        short,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, sku: &str) -> LineSnapshot {
        LineSnapshot {
            line_id: id.into(),
            sku: sku.into(),
            ..Default::default()
        }
    }

    fn need(id: &str, quantity: i64) -> Portion {
        Portion {
            line_id: id.into(),
            quantity,
        }
    }

    fn stock(rows: &[(&str, &str, i64)]) -> inventory::GetAvailabilityResponse {
        let mut items: Vec<inventory::SkuAvailability> = Vec::new();
        for (sku, site, units) in rows {
            let loc = inventory::LocationAvailability {
                location: (*site).into(),
                available: *units,
            };
            match items.iter_mut().find(|i| i.sku == *sku) {
                Some(i) => i.locations.push(loc),
                None => items.push(inventory::SkuAvailability {
                    sku: (*sku).into(),
                    locations: vec![loc],
                    ..Default::default()
                }),
            }
        }
        inventory::GetAvailabilityResponse { items }
    }

    fn site(code: &str, online: bool) -> warehouse::Site {
        warehouse::Site {
            code: code.into(),
            status: if online {
                warehouse::SiteStatus::Online
            } else {
                warehouse::SiteStatus::Offline
            } as i32,
            ..Default::default()
        }
    }

    fn decision(allocations: &[(&str, &str, i64, i64)]) -> order::RoutingDecision {
        order::RoutingDecision {
            allocations: allocations
                .iter()
                .map(|(l, s, a, b)| order::LineAllocation {
                    line_id: (*l).into(),
                    location: (*s).into(),
                    allocated: *a,
                    backordered: *b,
                    promised_by: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn net(rows: &[(&str, &str, i64)], sites: &[warehouse::Site], excluded: &[&str]) -> Network {
        let lines = [line("L1", "A"), line("L2", "B")];
        let remaining = [need("L1", 2), need("L2", 1)];
        let excluded: Vec<String> = excluded.iter().map(|s| (*s).to_owned()).collect();
        Network::new(&lines, &remaining, &stock(rows), sites, &excluded)
    }

    #[test]
    fn without_rules_one_warehouse_that_has_everything_ships_it() {
        let n = net(
            &[("A", "WH1", 1), ("A", "WH2", 5), ("B", "WH2", 3)],
            &[site("WH1", true), site("WH2", true)],
            &[],
        );
        let p = plan(&[need("L1", 2), need("L2", 1)], None, &n);
        assert_eq!(
            p,
            Plan::Ship {
                site: "WH2".into(),
                portions: vec![need("L1", 2), need("L2", 1)],
                short: vec![],
            }
        );
    }

    #[test]
    fn the_rules_split_is_followed_one_warehouse_at_a_time() {
        let n = net(
            &[("A", "WH1", 5), ("B", "WH2", 5)],
            &[site("WH1", true), site("WH2", true)],
            &[],
        );
        let d = decision(&[("L1", "WH1", 2, 0), ("L2", "WH2", 1, 0)]);
        let p = plan(&[need("L1", 2), need("L2", 1)], Some(&d), &n);
        assert_eq!(
            p,
            Plan::Ship {
                site: "WH1".into(),
                portions: vec![need("L1", 2)],
                short: vec![],
            }
        );
    }

    #[test]
    fn a_site_excluded_or_offline_is_skipped_even_when_the_rules_chose_it() {
        let rows = [
            ("A", "WH1", 5),
            ("B", "WH1", 5),
            ("A", "WH2", 5),
            ("B", "WH2", 5),
        ];
        let d = decision(&[("L1", "WH1", 2, 0), ("L2", "WH1", 1, 0)]);
        let remaining = [need("L1", 2), need("L2", 1)];
        for n in [
            net(&rows, &[site("WH1", true), site("WH2", true)], &["WH1"]),
            net(&rows, &[site("WH1", false), site("WH2", true)], &[]),
        ] {
            assert!(!n.usable("WH1"));
            match plan(&remaining, Some(&d), &n) {
                Plan::Ship { site, .. } => assert_eq!(site, "WH2"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn what_no_warehouse_has_is_backordered_and_spread_stock_waits_whole() {
        // Nothing of B anywhere: wait, B backordered.
        let n = net(&[("A", "WH1", 5)], &[site("WH1", true)], &[]);
        let remaining = [need("L1", 2), need("L2", 1)];
        assert_eq!(
            plan(&remaining, None, &n),
            Plan::Wait {
                short: vec![need("L2", 1)]
            }
        );
        assert_eq!(n.deficit(&remaining), vec![need("L2", 1)]);
        // Enough in the network, but no one warehouse has both and no rule splits: all waits.
        let n = net(
            &[("A", "WH1", 5), ("B", "WH2", 5)],
            &[site("WH1", true), site("WH2", true)],
            &[],
        );
        assert_eq!(
            plan(&remaining, None, &n),
            Plan::Wait {
                short: remaining.to_vec()
            }
        );
    }

    #[test]
    fn rules_that_allocate_nothing_wait_with_their_backorder() {
        let n = net(&[("A", "WH1", 5)], &[site("WH1", true)], &[]);
        let d = decision(&[("L1", "", 0, 2), ("L2", "", 0, 1)]);
        let remaining = [need("L1", 2), need("L2", 1)];
        assert_eq!(
            plan(&remaining, Some(&d), &n),
            Plan::Wait {
                short: vec![need("L1", 2), need("L2", 1)]
            }
        );
    }

    #[test]
    fn stock_taken_since_the_rules_decided_falls_back_to_what_is_there() {
        // The rules gave WH1 two units of A; one is left there. WH2 has everything.
        let n = net(
            &[("A", "WH1", 1), ("A", "WH2", 2), ("B", "WH2", 1)],
            &[site("WH1", true), site("WH2", true)],
            &[],
        );
        let d = decision(&[("L1", "WH1", 2, 0), ("L2", "WH2", 1, 0)]);
        match plan(&[need("L1", 2), need("L2", 1)], Some(&d), &n) {
            Plan::Ship { site, portions, .. } => {
                assert_eq!(site, "WH2");
                assert_eq!(portions, vec![need("L2", 1)], "the rules' next site");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_fingerprint_changes_with_the_stock_of_what_is_needed_only() {
        let a = net(
            &[("A", "WH1", 1), ("C", "WH1", 9)],
            &[site("WH1", true)],
            &[],
        );
        let b = net(
            &[("A", "WH1", 1), ("C", "WH1", 3)],
            &[site("WH1", true)],
            &[],
        );
        let c = net(&[("A", "WH1", 2)], &[site("WH1", true)], &[]);
        let remaining = [need("L1", 2)];
        assert_eq!(a.fingerprint(&remaining), b.fingerprint(&remaining));
        assert_ne!(a.fingerprint(&remaining), c.fingerprint(&remaining));
    }

    #[test]
    fn a_decision_becomes_the_batch_of_its_first_warehouse() {
        let lines = [line("L1", "A"), line("L2", "B")];
        let d = decision(&[("L1", "WH1", 2, 1), ("L2", "WH2", 1, 0)]);
        let RulesPlan {
            site,
            remaining,
            batch,
            short,
        } = from_rules(&d, &lines, &[]).unwrap();
        assert_eq!(site, "WH1");
        assert_eq!(remaining, vec![need("L1", 3), need("L2", 1)]);
        assert_eq!(batch.len(), 1);
        assert_eq!((batch[0].line_id.as_str(), batch[0].quantity), ("L1", 2));
        assert_eq!(short, vec![need("L1", 1)]);
        assert!(from_rules(&d, &lines, &["WH1".to_owned()]).is_none());
        // Quantities that overflow make no plan (and no panic, no wrap).
        let absurd = decision(&[("L1", "WH1", i64::MAX, 1)]);
        assert!(from_rules(&absurd, &lines, &[]).is_none());
    }
}
