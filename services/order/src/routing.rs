//! The routing engine: rules held as data decide which warehouse ships what. Pure: the caller
//! brings the order, the sites (status, cutoff, cost, capacity left today) and what each site
//! can promise now; the decision says which rule matched, what each line gets where, and why
//! every site considered was chosen or rejected.

use serde::{Deserialize, Serialize};

/// One rule, as stored (the wire `RoutingRule`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    pub priority: i32,
    /// Empty: every service level.
    pub service_levels: Vec<String>,
    /// Customer regions (`US-NJ`, or a country `US`); empty: everywhere.
    pub regions: Vec<String>,
    pub strategy: Strategy,
    pub allow_split: bool,
    /// Sites in preference order; empty: every site.
    pub locations: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Sites in the customer's region first, then the listed order.
    PreferRegion,
    /// The cheapest site that can do it (consolidates economy orders).
    LowestCost,
    /// Only sites whose carrier cutoff today has not passed (premium, same day).
    MustMeetCutoff,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PREFER_REGION" => Some(Self::PreferRegion),
            "LOWEST_COST" => Some(Self::LowestCost),
            "MUST_MEET_CUTOFF" => Some(Self::MustMeetCutoff),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreferRegion => "PREFER_REGION",
            Self::LowestCost => "LOWEST_COST",
            Self::MustMeetCutoff => "MUST_MEET_CUTOFF",
        }
    }
}

/// The rule that applies when none of the configured ones does.
pub fn default_rule() -> Rule {
    Rule {
        name: "default".into(),
        priority: i32::MAX,
        service_levels: vec![],
        regions: vec![],
        strategy: Strategy::LowestCost,
        allow_split: false,
        locations: vec![],
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub code: String,
    /// Region the site serves best, in the customer-region format (`US-NJ`).
    pub region: String,
    pub online: bool,
    /// Not to be used for this order (it reported a stock exception for it).
    pub excluded: bool,
    pub cost_index: i32,
    /// Units it can still pick today.
    pub capacity_left: i64,
    /// Carrier pickup cutoff, minutes after local midnight, and the site's UTC offset.
    pub cutoff_minute_of_day: i32,
    pub utc_offset_minutes: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub line_id: String,
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub service_level: String,
    /// `US-NJ`.
    pub region: String,
    pub lines: Vec<Line>,
    /// Wholesale channels ship complete whatever the rule says.
    pub ship_complete: bool,
}

/// What one line gets: units from a site, and what waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub line_id: String,
    pub location: String,
    pub allocated: i64,
    pub backordered: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub rule: String,
    /// One entry per line and site it ships from (a line split across sites has several).
    pub allocations: Vec<Allocation>,
    pub explanation: Vec<String>,
}

impl Decision {
    /// The single site shipping everything, if the decision is one shipment.
    pub fn single_site(&self) -> Option<&str> {
        let first = self.allocations.first()?;
        self.allocations
            .iter()
            .all(|a| a.backordered == 0 && a.location == first.location && a.allocated > 0)
            .then_some(first.location.as_str())
    }
}

fn matches(rule: &Rule, order: &Order) -> bool {
    let level_ok =
        rule.service_levels.is_empty() || rule.service_levels.contains(&order.service_level);
    let country = order.region.split('-').next().unwrap_or_default();
    let region_ok = rule.regions.is_empty()
        || rule
            .regions
            .iter()
            .any(|r| r == &order.region || r == country);
    level_ok && region_ok
}

/// Minutes after local midnight at the site, for `now_ms` (UTC).
fn local_minute(now_ms: i64, utc_offset_minutes: i32) -> i32 {
    let minutes = now_ms.div_euclid(60_000) + i64::from(utc_offset_minutes);
    i32::try_from(minutes.rem_euclid(24 * 60)).unwrap_or(0)
}

/// Decides. `available(sku, site)` is what the site can promise now.
pub fn route(
    rules: &[Rule],
    order: &Order,
    sites: &[Site],
    available: &dyn Fn(&str, &str) -> i64,
    now_ms: i64,
) -> Decision {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.priority);
    let fallback = default_rule();
    let rule = sorted
        .into_iter()
        .find(|r| matches(r, order))
        .unwrap_or(&fallback);
    let split = rule.allow_split && !order.ship_complete;
    let mut why = vec![format!(
        "rule {:?} ({}, {})",
        rule.name,
        rule.strategy.as_str(),
        if split {
            "split allowed"
        } else if order.ship_complete {
            "ship complete: the channel's terms"
        } else {
            "ship complete"
        }
    )];
    let units: i64 = order.lines.iter().map(|l| l.quantity).sum();
    // The sites the rule may use, in its order of preference.
    let mut candidates: Vec<&Site> = if rule.locations.is_empty() {
        sites.iter().collect()
    } else {
        rule.locations
            .iter()
            .filter_map(|code| sites.iter().find(|s| &s.code == code))
            .collect()
    };
    match rule.strategy {
        Strategy::LowestCost => candidates.sort_by_key(|s| (s.cost_index, s.code.clone())),
        Strategy::PreferRegion | Strategy::MustMeetCutoff => {
            // Stable: the listed (or site) order within each group.
            candidates.sort_by_key(|s| s.region != order.region);
        }
    }
    let mut usable = Vec::new();
    for s in candidates {
        let reason = if s.excluded {
            Some("excluded for this order: it reported a stock exception".to_owned())
        } else if !s.online {
            Some("offline".to_owned())
        } else if rule.strategy == Strategy::MustMeetCutoff
            && local_minute(now_ms, s.utc_offset_minutes) >= s.cutoff_minute_of_day
        {
            Some(format!(
                "today's carrier cutoff ({:02}:{:02}) has passed",
                s.cutoff_minute_of_day / 60,
                s.cutoff_minute_of_day % 60
            ))
        } else if s.capacity_left <= 0 {
            Some("no picking capacity left today".to_owned())
        } else {
            None
        };
        match reason {
            Some(r) => why.push(format!("{}: rejected, {r}", s.code)),
            None => usable.push(s),
        }
    }
    // One site for everything, the first that can.
    for s in &usable {
        let short: Vec<String> = order
            .lines
            .iter()
            .filter(|l| available(&l.sku, &s.code) < l.quantity)
            .map(|l| {
                format!(
                    "{} {} of {}",
                    l.sku,
                    available(&l.sku, &s.code).max(0),
                    l.quantity
                )
            })
            .collect();
        if short.is_empty() && s.capacity_left >= units {
            why.push(format!("{}: chosen, ships every line", s.code));
            return Decision {
                rule: rule.name.clone(),
                allocations: order
                    .lines
                    .iter()
                    .map(|l| Allocation {
                        line_id: l.line_id.clone(),
                        location: s.code.clone(),
                        allocated: l.quantity,
                        backordered: 0,
                    })
                    .collect(),
                explanation: why,
            };
        }
        if short.is_empty() {
            why.push(format!(
                "{}: cannot ship all {units} units today ({} left of its capacity)",
                s.code, s.capacity_left
            ));
        } else {
            why.push(format!("{}: short of {}", s.code, short.join(", ")));
        }
    }
    let mut allocations = Vec::new();
    if split {
        // Line by line, from the preferred sites first, within each site's capacity.
        let mut capacity: Vec<i64> = usable.iter().map(|s| s.capacity_left).collect();
        for l in &order.lines {
            let mut left = l.quantity;
            for (i, s) in usable.iter().enumerate() {
                if left == 0 {
                    break;
                }
                let take = left.min(available(&l.sku, &s.code).max(0)).min(capacity[i]);
                if take > 0 {
                    capacity[i] -= take;
                    left -= take;
                    allocations.push(Allocation {
                        line_id: l.line_id.clone(),
                        location: s.code.clone(),
                        allocated: take,
                        backordered: 0,
                    });
                }
            }
            if left > 0 {
                allocations.push(Allocation {
                    line_id: l.line_id.clone(),
                    location: String::new(),
                    allocated: 0,
                    backordered: left,
                });
            }
        }
        why.push("split across sites; what no site has is backordered".to_owned());
    } else {
        allocations = order
            .lines
            .iter()
            .map(|l| Allocation {
                line_id: l.line_id.clone(),
                location: String::new(),
                allocated: 0,
                backordered: l.quantity,
            })
            .collect();
        why.push("no single site can ship it complete: backordered until one can".to_owned());
    }
    Decision {
        rule: rule.name.clone(),
        allocations,
        explanation: why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    /// 2026-11-27 00:00 UTC.
    const DAY: i64 = 1_795_737_600_000;

    fn site(code: &str, region: &str, cost: i32) -> Site {
        Site {
            code: code.into(),
            region: region.into(),
            online: true,
            excluded: false,
            cost_index: cost,
            capacity_left: 1_000,
            cutoff_minute_of_day: 17 * 60,
            utc_offset_minutes: 0,
        }
    }

    fn sites() -> Vec<Site> {
        vec![
            site("east", "US-NJ", 3),
            site("central", "US-IL", 1),
            site("west", "US-CA", 2),
        ]
    }

    fn order(level: &str, region: &str, lines: &[(&str, i64)]) -> Order {
        Order {
            service_level: level.into(),
            region: region.into(),
            lines: lines
                .iter()
                .enumerate()
                .map(|(i, (sku, q))| Line {
                    line_id: format!("l{i}"),
                    sku: (*sku).into(),
                    quantity: *q,
                })
                .collect(),
            ship_complete: false,
        }
    }

    fn rules() -> Vec<Rule> {
        vec![
            Rule {
                name: "premium same day".into(),
                priority: 1,
                service_levels: vec!["express".into()],
                regions: vec![],
                strategy: Strategy::MustMeetCutoff,
                allow_split: false,
                locations: vec![],
            },
            Rule {
                name: "economy consolidated".into(),
                priority: 2,
                service_levels: vec!["standard".into()],
                regions: vec![],
                strategy: Strategy::LowestCost,
                allow_split: true,
                locations: vec![],
            },
        ]
    }

    /// Everything everywhere, except what `short` removes.
    fn stock(short: &'static [(&'static str, &'static str, i64)]) -> impl Fn(&str, &str) -> i64 {
        move |sku, site| {
            short
                .iter()
                .find(|(k, s, _)| *k == sku && *s == site)
                .map_or(100, |x| x.2)
        }
    }

    fn placed(d: &Decision) -> Vec<(String, String, i64, i64)> {
        d.allocations
            .iter()
            .map(|a| {
                (
                    a.line_id.clone(),
                    a.location.clone(),
                    a.allocated,
                    a.backordered,
                )
            })
            .collect()
    }

    fn at(location: &str, lines: &[(&str, i64)]) -> Vec<(String, String, i64, i64)> {
        lines
            .iter()
            .map(|(l, q)| ((*l).into(), location.into(), *q, 0))
            .collect()
    }

    #[test]
    fn routing_table() {
        struct Case {
            name: &'static str,
            order: Order,
            sites: Vec<Site>,
            short: &'static [(&'static str, &'static str, i64)],
            now: i64,
            rule: &'static str,
            expect: Vec<(String, String, i64, i64)>,
            because: &'static str,
        }
        let mut offline_central = sites();
        offline_central[1].online = false;
        let mut excluded_central = sites();
        excluded_central[1].excluded = true;
        let mut central_full = sites();
        central_full[1].capacity_left = 1;
        let mut wholesale = order("standard", "US-IL", &[("MUG", 5), ("TEE", 3)]);
        wholesale.ship_complete = true;
        let cases = vec![
            Case {
                name: "premium near its regional warehouse before the cutoff",
                order: order("express", "US-NJ", &[("MUG", 1)]),
                sites: sites(),
                short: &[],
                now: DAY + 10 * HOUR,
                rule: "premium same day",
                expect: at("east", &[("l0", 1)]),
                because: "east: chosen",
            },
            Case {
                name: "premium after every cutoff: nothing ships today, it waits",
                order: order("express", "US-NJ", &[("MUG", 1)]),
                sites: sites(),
                short: &[],
                now: DAY + 18 * HOUR,
                rule: "premium same day",
                expect: vec![("l0".into(), String::new(), 0, 1)],
                because: "cutoff (17:00) has passed",
            },
            Case {
                name: "premium, the regional site out of stock: the next site before its cutoff",
                order: order("express", "US-NJ", &[("MUG", 1)]),
                sites: sites(),
                short: &[("MUG", "east", 0)],
                now: DAY + 10 * HOUR,
                rule: "premium same day",
                expect: at("central", &[("l0", 1)]),
                because: "east: short of MUG 0 of 1",
            },
            Case {
                name: "economy consolidated at the cheapest site",
                order: order("standard", "US-NJ", &[("MUG", 2), ("TEE", 1)]),
                sites: sites(),
                short: &[],
                now: DAY + 10 * HOUR,
                rule: "economy consolidated",
                expect: at("central", &[("l0", 2), ("l1", 1)]),
                because: "central: chosen",
            },
            Case {
                name: "no single site has every line: split when allowed",
                order: order("standard", "US-NJ", &[("MUG", 2), ("TEE", 1)]),
                sites: sites(),
                short: &[
                    ("TEE", "central", 0),
                    ("MUG", "west", 0),
                    ("MUG", "east", 0),
                ],
                now: DAY,
                rule: "economy consolidated",
                expect: vec![
                    ("l0".into(), "central".into(), 2, 0),
                    ("l1".into(), "west".into(), 1, 0),
                ],
                because: "split across sites",
            },
            Case {
                name: "one site offline",
                order: order("standard", "US-NJ", &[("MUG", 1)]),
                sites: offline_central,
                short: &[],
                now: DAY,
                rule: "economy consolidated",
                expect: at("west", &[("l0", 1)]),
                because: "central: rejected, offline",
            },
            Case {
                name: "the cheapest site reported a stock exception for this order",
                order: order("standard", "US-NJ", &[("MUG", 1)]),
                sites: excluded_central,
                short: &[],
                now: DAY,
                rule: "economy consolidated",
                expect: at("west", &[("l0", 1)]),
                because: "central: rejected, excluded for this order",
            },
            Case {
                name: "capacity exhausted at the cheapest site",
                order: order("standard", "US-NJ", &[("MUG", 2)]),
                sites: central_full,
                short: &[],
                now: DAY,
                rule: "economy consolidated",
                expect: at("west", &[("l0", 2)]),
                because: "central: cannot ship all 2 units today (1 left",
            },
            Case {
                name: "B2B ship complete with one line short everywhere: all of it waits",
                order: wholesale,
                sites: sites(),
                short: &[
                    ("TEE", "central", 1),
                    ("TEE", "west", 0),
                    ("TEE", "east", 2),
                ],
                now: DAY,
                rule: "economy consolidated",
                expect: vec![
                    ("l0".into(), String::new(), 0, 5),
                    ("l1".into(), String::new(), 0, 3),
                ],
                because: "ship complete: the channel's terms",
            },
        ];
        for c in cases {
            let available = stock(c.short);
            let d = route(&rules(), &c.order, &c.sites, &available, c.now);
            assert_eq!(d.rule, c.rule, "{}", c.name);
            assert_eq!(placed(&d), c.expect, "{}: {:#?}", c.name, d.explanation);
            assert!(
                d.explanation.iter().any(|e| e.contains(c.because)),
                "{}: {:#?}",
                c.name,
                d.explanation
            );
        }
    }

    #[test]
    fn no_rule_matches_the_default_consolidates_at_the_cheapest_site() {
        let d = route(
            &[],
            &order("overnight", "DE", &[("MUG", 1)]),
            &sites(),
            &stock(&[]),
            DAY,
        );
        assert_eq!(d.rule, "default");
        assert_eq!(d.single_site(), Some("central"));
    }
}
