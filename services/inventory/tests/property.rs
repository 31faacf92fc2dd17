//! Property test against the real service: random sequences of receipts, reservations,
//! releases, commits, transfers, counts, returns and adjustments, checked after every step
//! against a model of the buckets, with the ledger replayed at the end. Seeds are fixed, so a
//! failure names the seed that reproduces it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use erp_proto::common::{Actor, Money, SourceDocument};
use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
use erp_proto::inventory::*;
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

const LOCS: [&str; 2] = ["east", "west"];

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct B {
    on_hand: i64,
    reserved: i64,
    inbound: i64,
    returns_pending: i64,
    quarantined: i64,
}

#[derive(Default)]
struct Model {
    b: BTreeMap<&'static str, B>,
    /// order -> (location, quantity, active)
    holds: BTreeMap<String, (&'static str, i64, bool)>,
    /// transfer id -> (to, quantity, in transit)
    transfers: Vec<(String, &'static str, i64, bool)>,
}

fn actor() -> Option<Actor> {
    Some(Actor {
        id: "prop".into(),
        reason: "property test".into(),
    })
}

async fn setup(c: &mut InventoryServiceClient<Channel>) {
    c.create_item(CreateItemRequest {
        item: Some(Item {
            sku: "P".into(),
            name: "prop".into(),
            unit_cost: Some(Money {
                amount_minor: 1,
                currency: "USD".into(),
            }),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    for loc in LOCS {
        c.create_location(CreateLocationRequest {
            location: Some(Location {
                code: loc.into(),
                name: loc.into(),
                region: loc.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }
}

fn refused(result: Result<(), tonic::Status>, reason: &str, what: &str) {
    match result {
        Err(s) => assert_eq!(status_reason(&s).as_deref(), Some(reason), "{what}: {s:?}"),
        Ok(()) => panic!("{what}: expected {reason}, it was accepted"),
    }
}

async fn run_sequence(c: &mut InventoryServiceClient<Channel>, seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = Model::default();
    for loc in LOCS {
        m.b.insert(loc, B::default());
    }
    for step in 0..steps {
        let key = format!("s{seed}-{step}");
        let loc = LOCS[rng.random_range(0..2)];
        let q = rng.random_range(1..=6i64);
        let what = format!("seed {seed} step {step}");
        match rng.random_range(0..10) {
            0 | 1 => {
                c.receive_stock(ReceiveStockRequest {
                    idempotency_key: key,
                    sku: "P".into(),
                    location: loc.into(),
                    quantity: q,
                    source: None,
                    from_inbound: false,
                    unit_cost: None,
                })
                .await
                .unwrap();
                m.b.get_mut(loc).unwrap().on_hand += q;
            }
            2 | 3 => {
                let order = format!("o{seed}-{step}");
                let r = c
                    .reserve_stock(ReserveStockRequest {
                        idempotency_key: key,
                        order_id: order.clone(),
                        lines: vec![ReserveLine {
                            order_line_id: "l".into(),
                            sku: "P".into(),
                            location: loc.into(),
                            quantity: q,
                        }],
                        mode: 0,
                        expires_at: None,
                    })
                    .await
                    .map(|_| ());
                let b = m.b.get_mut(loc).unwrap();
                if b.on_hand - b.reserved >= q {
                    r.unwrap();
                    b.reserved += q;
                    m.holds.insert(order, (loc, q, true));
                } else {
                    refused(r, "INSUFFICIENT_STOCK", &what);
                }
            }
            4 => {
                let active: Vec<String> = m
                    .holds
                    .iter()
                    .filter(|(_, h)| h.2)
                    .map(|(o, _)| o.clone())
                    .collect();
                if active.is_empty() {
                    continue;
                }
                let order = active[rng.random_range(0..active.len())].clone();
                let commit = rng.random_bool(0.5);
                let (hl, hq, _) = m.holds[&order];
                if commit {
                    c.commit_reservations(CommitReservationsRequest {
                        idempotency_key: key,
                        order_id: order.clone(),
                        reservation_ids: vec![],
                    })
                    .await
                    .unwrap();
                    let b = m.b.get_mut(hl).unwrap();
                    b.on_hand -= hq;
                    b.reserved -= hq;
                } else {
                    c.release_reservations(ReleaseReservationsRequest {
                        idempotency_key: key,
                        order_id: order.clone(),
                        reservation_ids: vec![],
                    })
                    .await
                    .unwrap();
                    m.b.get_mut(hl).unwrap().reserved -= hq;
                }
                m.holds.get_mut(&order).unwrap().2 = false;
            }
            5 => {
                let to = if loc == "east" { "west" } else { "east" };
                let r = c
                    .transfer_stock(TransferStockRequest {
                        idempotency_key: key,
                        sku: "P".into(),
                        from_location: loc.into(),
                        to_location: to.into(),
                        quantity: q,
                        expected_at: Some(erp_runtime::time::to_timestamp(
                            erp_runtime::time::now_ms() + 3_600_000,
                        )),
                    })
                    .await;
                let b = m.b[loc];
                if b.on_hand - b.reserved >= q {
                    let id = r.unwrap().into_inner().transfer_id;
                    m.b.get_mut(loc).unwrap().on_hand -= q;
                    m.b.get_mut(to).unwrap().inbound += q;
                    m.transfers.push((id, to, q, true));
                } else {
                    refused(r.map(|_| ()), "INSUFFICIENT_STOCK", &what);
                }
            }
            6 => {
                let Some(t) = m.transfers.iter_mut().find(|t| t.3) else {
                    continue;
                };
                c.receive_stock(ReceiveStockRequest {
                    idempotency_key: key,
                    sku: "P".into(),
                    location: t.1.into(),
                    quantity: t.2,
                    source: Some(SourceDocument {
                        kind: "transfer".into(),
                        id: t.0.clone(),
                    }),
                    from_inbound: true,
                    unit_cost: None,
                })
                .await
                .unwrap();
                t.3 = false;
                let b = m.b.get_mut(t.1).unwrap();
                b.inbound -= t.2;
                b.on_hand += t.2;
            }
            7 => {
                let b = m.b[loc];
                let counted = (b.on_hand + rng.random_range(-3..=3i64)).max(0);
                let r = c
                    .record_cycle_count(RecordCycleCountRequest {
                        idempotency_key: key,
                        sku: "P".into(),
                        location: loc.into(),
                        counted_quantity: counted,
                        actor: actor(),
                    })
                    .await
                    .map(|_| ());
                if counted >= b.reserved {
                    r.unwrap();
                    m.b.get_mut(loc).unwrap().on_hand = counted;
                } else {
                    refused(r, "COUNT_BELOW_RESERVED", &what);
                }
            }
            8 => {
                c.record_return(RecordReturnRequest {
                    idempotency_key: key,
                    sku: "P".into(),
                    location: loc.into(),
                    quantity: q,
                    source: None,
                })
                .await
                .unwrap();
                m.b.get_mut(loc).unwrap().returns_pending += q;
            }
            _ => {
                let restock = rng.random_bool(0.5);
                let r = c
                    .inspect_return(InspectReturnRequest {
                        idempotency_key: key,
                        sku: "P".into(),
                        location: loc.into(),
                        quantity: q,
                        disposition: if restock {
                            ReturnDisposition::Restock
                        } else {
                            ReturnDisposition::Quarantine
                        } as i32,
                        actor: actor(),
                    })
                    .await
                    .map(|_| ());
                let b = m.b.get_mut(loc).unwrap();
                if b.returns_pending >= q {
                    r.unwrap();
                    b.returns_pending -= q;
                    if restock {
                        b.on_hand += q;
                    } else {
                        b.quarantined += q;
                    }
                } else {
                    refused(r, "NEGATIVE_STOCK", &what);
                }
            }
        }
        // After every step: the service's buckets equal the model and satisfy the invariants.
        let levels = c
            .get_stock(GetStockRequest {
                sku: "P".into(),
                location: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .levels;
        for l in levels {
            let got = B {
                on_hand: l.on_hand,
                reserved: l.reserved,
                inbound: l.inbound,
                returns_pending: l.returns_pending,
                quarantined: l.quarantined,
            };
            let want = m.b[l.location.as_str()];
            assert_eq!(got, want, "{what}: {} differs from the model", l.location);
            assert!(l.reserved <= l.on_hand && l.available >= 0, "{what}: {l:?}");
        }
    }
    let verify = c
        .verify_ledger(VerifyLedgerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        verify.consistent,
        "seed {seed}: ledger replay differs: {:?}",
        verify.mismatches
    );
}

async fn property(backend: Backend, seeds: std::ops::Range<u64>, steps: usize) {
    for seed in seeds {
        let svc = testing::spawn::<erp_inventory::Service>(&backend).await;
        let mut c = InventoryServiceClient::new(svc.channel().await);
        setup(&mut c).await;
        run_sequence(&mut c, seed, steps).await;
        svc.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_keep_every_invariant() {
    for backend in testing::backends() {
        let seeds = if matches!(backend, Backend::Sqlite) {
            0..8
        } else {
            100..103
        };
        property(backend, seeds, 120).await;
    }
}
