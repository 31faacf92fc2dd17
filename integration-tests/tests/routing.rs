//! Routing rules as data over gRPC: versioned rule sets, decisions that name the rule version
//! and explain every warehouse considered, recorded on the order.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use erp_integration_tests::seeded;
use erp_proto::common::Actor;
use erp_proto::order::*;
use erp_runtime::testing::{self, Backend};
use tonic::Code;

fn rule(name: &str, priority: i32, levels: &[&str], strategy: &str) -> RoutingRule {
    RoutingRule {
        name: name.into(),
        priority,
        service_levels: levels.iter().map(|l| (*l).to_owned()).collect(),
        regions: vec![],
        strategy: strategy.into(),
        allow_split: false,
        locations: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_are_versioned_data_and_decisions_explain_themselves() {
    let _watchdog = erp_runtime::testing::watchdog(
        "routing_rules_are_versioned_data_and_decisions_explain_themselves",
        Duration::from_secs(300),
    );
    let (s, mut c) = seeded(&Backend::Sqlite).await;
    let actor = Some(Actor {
        id: "ops-7".into(),
        reason: "peak season".into(),
    });
    // Nothing stored yet: the default applies, and says so.
    let err = c
        .order
        .get_routing_rules(GetRoutingRulesRequest { version: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Bad rules name their fields and store nothing.
    let err = c
        .order
        .put_routing_rules(PutRoutingRulesRequest {
            rules: vec![rule("", 1, &[], "FASTEST"), rule("", 2, &[], "LOWEST_COST")],
            actor: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        testing::bad_fields(&err),
        [
            "actor.reason",
            "rules[0].name",
            "rules[0].strategy",
            "rules[1].name",
            "rules[1].name"
        ]
    );
    // Who changed the rules is the token's subject, whatever the body's actor says.
    let ops7 = c.as_principal("ops-7", &[erp_runtime::auth::roles::OPERATOR], None);
    let v1 = ops7
        .order
        .clone()
        .put_routing_rules(PutRoutingRulesRequest {
            rules: vec![rule("everything cheapest", 1, &[], "LOWEST_COST")],
            actor: actor.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    let v2 = c
        .order
        .put_routing_rules(PutRoutingRulesRequest {
            rules: vec![
                rule(
                    "express near the customer",
                    1,
                    &["express"],
                    "PREFER_REGION",
                ),
                rule("economy consolidated", 2, &["standard"], "LOWEST_COST"),
            ],
            actor: actor.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    let old = c
        .order
        .get_routing_rules(GetRoutingRulesRequest { version: 1 })
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    assert_eq!(old.rules[0].name, "everything cheapest");
    assert_eq!(old.created_by, "ops-7: peak season");

    // A New Jersey customer: express goes to the New Jersey warehouse, standard to the
    // cheapest one (central), each decision naming version 2.
    let express = c.place("R-1", "TEE-M", 1, "tok_visa", "express").await;
    let standard = c.place("R-2", "TEE-M", 1, "tok_visa", "standard").await;
    let route = |key: &str, order_id: &str| RouteOrderRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
        exclude_sites: vec![],
    };
    let d = c
        .order
        .route_order(route("route-1", &express))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(d.rule_version, 2);
    assert_eq!(d.matched_rules, ["express near the customer"]);
    assert_eq!(d.allocations[0].location, "east", "{:#?}", d.explanation);
    let again = c
        .order
        .route_order(route("route-1", &express))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(d, again, "a repeated request is the same decision");
    let d = c
        .order
        .route_order(route("route-2", &standard))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(d.allocations[0].location, "central", "{:#?}", d.explanation);

    // The fulfillment saga routes by the rules too: an express order from New Jersey ships from
    // east (the first site with the stock, central, is what it would pick without rules).
    let shipped_by_rule = c.place("R-3", "TEE-M", 1, "tok_visa", "express").await;
    c.wait_step(&shipped_by_rule, "await_pack").await;
    let f = c.open_fulfillments(&shipped_by_rule).await.remove(0);
    assert_eq!(f.site, "east");
    let o = c.order(&shipped_by_rule).await;
    assert!(
        o.routing_decisions
            .iter()
            .any(|d| d.matched_rules == ["express near the customer"] && d.rule_version == 2),
        "{:#?}",
        o.routing_decisions
    );

    // Central goes offline: the next cheapest ships, and the decision says why central did not.
    c.warehouse
        .set_site_status(erp_proto::warehouse::SetSiteStatusRequest {
            code: "central".into(),
            status: erp_proto::warehouse::SiteStatus::Offline as i32,
            actor: actor.clone(),
        })
        .await
        .unwrap();
    let d = c
        .order
        .route_order(route("route-3", &standard))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(d.allocations[0].location, "east", "{:#?}", d.explanation);
    assert!(
        d.explanation
            .iter()
            .any(|e| e == "central: rejected, offline"),
        "{:#?}",
        d.explanation
    );
    // The order carries every decision made for it (ours, and its saga's).
    let o = c.order(&standard).await;
    assert!(o.routing_decisions.len() >= 2);
    assert!(o.routing_decisions.iter().any(|d| {
        d.allocations[0].location == "east"
            && d.explanation
                .iter()
                .any(|e| e == "central: rejected, offline")
    }));
    s.stop().await.unwrap();
}
