//! The audit trail, tried from outside on SQLite and PostgreSQL: each governed method appends
//! exactly one record naming the verified caller (never the name in the request body), refused
//! changes record nothing, maker-checker and approval limits hold for refunds, purchase orders
//! and write-offs, and the chain of every service verifies until someone edits a stored record.

#![allow(clippy::unwrap_used)]

use erp::testkit::Clients;
use erp_integration_tests::{FAST, T, settings, suite};
use erp_proto::audit::{AuditEvent, ListAuditEventsRequest, VerifyAuditChainRequest};
use erp_proto::common::{Actor, Money};
use erp_proto::orchestrator::{OperatorAction, SagaStatus};
use erp_proto::{carrier, finance, inventory, order, procurement, warehouse};
use erp_runtime::auth::roles;
use erp_runtime::bus::Bus;
use erp_runtime::config::SERVICES;
use erp_runtime::testing::{self, Backend};
use sea_orm::ConnectionTrait;
use tonic::Code;

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

fn why(reason: &str) -> Option<Actor> {
    Some(Actor {
        id: "body-says-mallory".into(),
        reason: reason.into(),
    })
}

/// Every record of one service's trail (read as an auditor).
async fn events(c: &Clients, service: &str) -> Vec<AuditEvent> {
    let mut audit = c
        .as_principal("trail-reader", &[roles::AUDITOR], None)
        .audit_of(service);
    let mut out = Vec::new();
    let mut after_seq = 0;
    loop {
        let page = audit
            .list_audit_events(ListAuditEventsRequest {
                after_seq,
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.events);
        if page.next_after_seq == 0 {
            return out;
        }
        after_seq = page.next_after_seq;
    }
}

/// The records `principal` added to `service`'s trail since `before` records.
async fn added_by(c: &Clients, service: &str, before: usize, principal: &str) -> Vec<AuditEvent> {
    events(c, service).await[before..]
        .iter()
        .filter(|e| e.principal == principal)
        .cloned()
        .collect()
}

/// Runs one governed call made as `principal` (a name no other call uses) and checks that it
/// added exactly one record to `service`'s trail, of `method`, with a request id and a digest
/// of the state after; returns the answer and the record.
async fn audited<T>(
    c: &Clients,
    service: &str,
    method: &str,
    principal: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> (T, AuditEvent) {
    let before = events(c, service).await.len();
    let out = call.await.unwrap().into_inner();
    let added = added_by(c, service, before, principal).await;
    assert_eq!(added.len(), 1, "{service} {method}: {added:?}");
    let record = added.into_iter().next().unwrap();
    assert!(record.method.ends_with(&format!("/{method}")), "{record:?}");
    assert_eq!(record.request_id.len(), 36, "a request id is recorded");
    assert!(!record.after_digest.is_empty());
    (out, record)
}

/// A refused call: its status code, and nothing added to `service`'s trail by `principal`.
async fn refused<T: std::fmt::Debug>(
    c: &Clients,
    service: &str,
    principal: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> tonic::Status {
    let before = events(c, service).await.len();
    let status = call.await.unwrap_err();
    assert!(added_by(c, service, before, principal).await.is_empty());
    status
}

async fn governed_changes_are_audited(backend: Backend) {
    let mut extra = FAST.to_vec();
    extra.push(("ERP__FINANCE__REFUND_APPROVAL_THRESHOLD_MINOR", "500"));
    extra.push(("ERP__INVENTORY__WRITE_OFF_APPROVAL_MINOR", "10000"));
    let s = suite(
        settings(&backend, &extra),
        Bus::InProcess(Default::default()),
    )
    .await;
    erp::seed::seed(&s).await.unwrap();
    let mut admin = Clients::for_suite(&s);
    let base = admin.clone();
    let who = |name: &str, role: &str, limit: Option<i64>| base.as_principal(name, &[role], limit);

    // A shipped order: a captured payment to refund and charge back.
    let shipped = admin
        .clone()
        .place("AUD-1", "MUG-BLUE", 2, "tok_visa", "standard")
        .await;
    admin.ship(&shipped).await;
    admin.wait_saga(&shipped, &[SagaStatus::Completed], T).await;
    let pid = admin.payment(&shipped).await.unwrap().payment_id;

    // --- finance ---
    let c = who("fin-account", roles::FINANCE, None);
    let (_, r) = audited(
        &c,
        "finance",
        "CreateAccount",
        "fin-account",
        c.finance
            .clone()
            .create_account(finance::CreateAccountRequest {
                account: Some(finance::Account {
                    code: "6100".into(),
                    name: "Shrinkage".into(),
                    r#type: finance::AccountType::Expense as i32,
                }),
            }),
    )
    .await;
    assert_eq!(r.target, "account:6100");
    assert!(r.before_digest.is_empty(), "a creation has no before");
    let c = who("fin-tax", roles::FINANCE, None);
    let (_, r) = audited(
        &c,
        "finance",
        "SetTaxRate",
        "fin-tax",
        c.finance.clone().set_tax_rate(finance::SetTaxRateRequest {
            rate: Some(finance::TaxRate {
                jurisdiction: "US-NY".into(),
                tax_class: "standard".into(),
                rate_bps: 400,
            }),
            reason: "new nexus".into(),
        }),
    )
    .await;
    assert_eq!(
        (r.target.as_str(), r.reason.as_str()),
        ("tax_rate:US-NY/standard", "new nexus")
    );
    let line = |account: &str, debit: i64, credit: i64| finance::JournalLine {
        account_code: account.into(),
        debit_minor: debit,
        credit_minor: credit,
        currency: "USD".into(),
        ..Default::default()
    };
    let c = who("fin-post", roles::FINANCE, None);
    let (posted, r) = audited(
        &c,
        "finance",
        "PostJournal",
        "fin-post",
        c.finance.clone().post_journal(finance::PostJournalRequest {
            idempotency_key: "aud-manual-1".into(),
            memo: "stock count shrinkage".into(),
            source: None,
            lines: vec![line("6100", 700, 0), line("1000", 0, 700)],
        }),
    )
    .await;
    let entry_id = posted.entry.unwrap().entry_id;
    assert_eq!(r.target, format!("journal_entry:{entry_id}"));
    let c = who("fin-reverse", roles::FINANCE, None);
    let (_, r) = audited(
        &c,
        "finance",
        "ReverseJournal",
        "fin-reverse",
        c.finance
            .clone()
            .reverse_journal(finance::ReverseJournalRequest {
                idempotency_key: "aud-rev-1".into(),
                entry_id: entry_id.clone(),
                actor: why("posted to the wrong period"),
            }),
    )
    .await;
    assert_eq!(r.target, format!("journal_entry:{entry_id}"));
    assert!(!r.before_digest.is_empty() && r.before_digest != r.after_digest);

    // A small refund is paid at once.
    let c = who("cs-small", roles::CUSTOMER_SERVICE, None);
    let (small, r) = audited(
        &c,
        "finance",
        "RefundPayment",
        "cs-small",
        c.finance
            .clone()
            .refund_payment(finance::RefundPaymentRequest {
                idempotency_key: "aud-refund-small".into(),
                payment_id: pid.clone(),
                amount: usd(300),
                reason: "late delivery".into(),
            }),
    )
    .await;
    assert!(small.pending_approval.is_none());
    assert_eq!(small.payment.unwrap().refunded.unwrap().amount_minor, 300);
    assert_eq!(r.target, format!("payment:{pid}"));

    // A large one waits for somebody else's approval, within their limit.
    let c = who("cs-big", roles::CUSTOMER_SERVICE, None);
    let (big, r) = audited(
        &c,
        "finance",
        "RefundPayment",
        "cs-big",
        c.finance
            .clone()
            .refund_payment(finance::RefundPaymentRequest {
                idempotency_key: "aud-refund-big".into(),
                payment_id: pid.clone(),
                amount: usd(900),
                reason: "item damaged".into(),
            }),
    )
    .await;
    let pending = big.pending_approval.unwrap();
    assert_eq!(
        big.payment.unwrap().refunded.unwrap().amount_minor,
        300,
        "nothing paid yet"
    );
    assert_eq!(r.target, format!("refund_approval:{}", pending.approval_id));
    assert_eq!(pending.requested_by, "cs-big");
    let approve = finance::ApproveRefundRequest {
        approval_id: pending.approval_id.clone(),
        reason: "photos checked".into(),
    };
    // The requester, even holding the approver role, cannot approve their own request.
    let c = admin.as_principal("cs-big", &[roles::APPROVER], Some(1_000_000));
    let e = refused(
        &c,
        "finance",
        "cs-big",
        c.finance.clone().approve_refund(approve.clone()),
    )
    .await;
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("maker-checker"), "{}", e.message());
    // An approver whose limit is below the amount cannot either.
    let c = who("appr-low", roles::APPROVER, Some(500));
    let e = refused(
        &c,
        "finance",
        "appr-low",
        c.finance.clone().approve_refund(approve.clone()),
    )
    .await;
    assert_eq!(e.code(), Code::PermissionDenied);
    // Customer service may not approve at all (the table).
    let c = who("cs-other", roles::CUSTOMER_SERVICE, None);
    let e = refused(
        &c,
        "finance",
        "cs-other",
        c.finance.clone().approve_refund(approve.clone()),
    )
    .await;
    assert_eq!(e.code(), Code::PermissionDenied);
    let c = who("appr-1", roles::APPROVER, Some(100_000));
    // Two records: the payment's refund, and the approval's decision.
    let before = events(&c, "finance").await.len();
    let approved = c
        .finance
        .clone()
        .approve_refund(approve.clone())
        .await
        .unwrap()
        .into_inner();
    let added = added_by(&c, "finance", before, "appr-1").await;
    assert!(
        added.iter().all(|r| r.method.ends_with("/ApproveRefund")),
        "{added:?}"
    );
    assert_eq!(
        added.iter().map(|r| r.target.clone()).collect::<Vec<_>>(),
        [
            format!("payment:{pid}"),
            format!("refund_approval:{}", pending.approval_id)
        ]
    );
    assert_eq!(added[1].reason, "photos checked");
    assert_eq!(
        approved.payment.unwrap().refunded.unwrap().amount_minor,
        1200
    );
    assert_eq!(approved.approval.unwrap().decided_by, "appr-1");
    // Twice is not twice the money.
    let e = refused(
        &c,
        "finance",
        "appr-1",
        c.finance.clone().approve_refund(approve),
    )
    .await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Another large one, rejected.
    let c = who("cs-big2", roles::CUSTOMER_SERVICE, None);
    let (big2, _) = audited(
        &c,
        "finance",
        "RefundPayment",
        "cs-big2",
        c.finance
            .clone()
            .refund_payment(finance::RefundPaymentRequest {
                idempotency_key: "aud-refund-big-2".into(),
                payment_id: pid.clone(),
                amount: usd(800),
                reason: "changed mind".into(),
            }),
    )
    .await;
    let c = who("appr-2", roles::APPROVER, Some(100_000));
    let (rejected, _) = audited(
        &c,
        "finance",
        "RejectRefund",
        "appr-2",
        c.finance
            .clone()
            .reject_refund(finance::RejectRefundRequest {
                approval_id: big2.pending_approval.unwrap().approval_id,
                reason: "outside the return window".into(),
            }),
    )
    .await;
    assert_eq!(
        rejected.approval.unwrap().status,
        finance::RefundApprovalStatus::Rejected as i32
    );
    let c = who("psp", roles::INTEGRATION, None);
    let (_, r) = audited(
        &c,
        "finance",
        "RecordChargeback",
        "psp",
        c.finance
            .clone()
            .record_chargeback(finance::RecordChargebackRequest {
                idempotency_key: "dispute-1".into(),
                payment_id: pid.clone(),
                amount: usd(100),
                reason: "fraudulent".into(),
            }),
    )
    .await;
    assert_eq!(r.target, format!("payment:{pid}"));

    // --- inventory ---
    let c = who("wh-adjust", roles::WAREHOUSE, None);
    let (_, r) = audited(
        &c,
        "inventory",
        "AdjustStock",
        "wh-adjust",
        c.inventory
            .clone()
            .adjust_stock(inventory::AdjustStockRequest {
                idempotency_key: "aud-adj-1".into(),
                sku: "MUG-BLUE".into(),
                location: "east".into(),
                bucket: inventory::Bucket::OnHand as i32,
                delta: -1,
                actor: why("dropped"),
            }),
    )
    .await;
    assert_eq!(
        (r.target.as_str(), r.reason.as_str()),
        ("stock:MUG-BLUE@east", "dropped")
    );
    // A write-off worth more than the threshold (100.00 here) needs approval authority:
    // 8 lamps at 21.00.
    let big_writeoff = |key: &str| inventory::AdjustStockRequest {
        idempotency_key: key.into(),
        sku: "LAMP-01".into(),
        location: "east".into(),
        bucket: inventory::Bucket::OnHand as i32,
        delta: -8,
        actor: why("water damage"),
    };
    let c = who("wh-writeoff", roles::WAREHOUSE, None);
    let e = refused(
        &c,
        "inventory",
        "wh-writeoff",
        c.inventory.clone().adjust_stock(big_writeoff("aud-wo-1")),
    )
    .await;
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("exceeds the threshold"),
        "{}",
        e.message()
    );
    let c = admin.as_principal(
        "wh-lead",
        &[roles::WAREHOUSE, roles::APPROVER],
        Some(1_000_000),
    );
    audited(
        &c,
        "inventory",
        "AdjustStock",
        "wh-lead",
        c.inventory.clone().adjust_stock(big_writeoff("aud-wo-2")),
    )
    .await;
    let c = who("wh-count", roles::WAREHOUSE, None);
    audited(
        &c,
        "inventory",
        "RecordCycleCount",
        "wh-count",
        c.inventory
            .clone()
            .record_cycle_count(inventory::RecordCycleCountRequest {
                idempotency_key: "aud-count-1".into(),
                sku: "TEE-M".into(),
                location: "west".into(),
                counted_quantity: 3,
                actor: why("quarterly count"),
            }),
    )
    .await;
    let c = who("ops-location", roles::OPERATOR, None);
    let (_, r) = audited(
        &c,
        "inventory",
        "SetLocationStatus",
        "ops-location",
        c.inventory
            .clone()
            .set_location_status(inventory::SetLocationStatusRequest {
                code: "west".into(),
                status: inventory::LocationStatus::Online as i32,
                actor: why("confirmed open"),
            }),
    )
    .await;
    assert_eq!(r.target, "location:west");

    // --- order ---
    let channel = admin
        .order
        .list_channels(order::ListChannelsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .channels
        .into_iter()
        .find(|c| c.code == "web")
        .unwrap();
    let c = who("ops-channel", roles::OPERATOR, None);
    let (_, r) = audited(
        &c,
        "order",
        "UpsertChannel",
        "ops-channel",
        c.order.clone().upsert_channel(order::UpsertChannelRequest {
            channel: Some(order::Channel {
                commission_bps: 150,
                ..channel
            }),
            reason: "renegotiated fee".into(),
        }),
    )
    .await;
    assert_eq!(r.target, "channel:web");
    let cancel_me = admin
        .clone()
        .place("AUD-2", "TEE-M", 1, "tok_visa", "standard")
        .await;
    let c = who("cs-cancel", roles::CUSTOMER_SERVICE, None);
    let (_, r) = audited(
        &c,
        "order",
        "CancelOrder",
        "cs-cancel",
        c.order.clone().cancel_order(order::CancelOrderRequest {
            idempotency_key: "aud-cancel-1".into(),
            order_id: cancel_me.clone(),
            actor: why("customer called"),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(r.target, format!("order:{cancel_me}"));

    // --- warehouse, carrier ---
    let site = admin
        .warehouse
        .get_site(warehouse::GetSiteRequest {
            code: "west".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .site
        .unwrap();
    let c = who("ops-site", roles::OPERATOR, None);
    let (_, r) = audited(
        &c,
        "warehouse",
        "UpsertSite",
        "ops-site",
        c.warehouse
            .clone()
            .upsert_site(warehouse::UpsertSiteRequest {
                site: Some(warehouse::Site {
                    daily_capacity: site.daily_capacity + 100,
                    ..site
                }),
                reason: "second shift".into(),
            }),
    )
    .await;
    assert_eq!(r.target, "site:west");
    let c = who("ops-site-status", roles::OPERATOR, None);
    audited(
        &c,
        "warehouse",
        "SetSiteStatus",
        "ops-site-status",
        c.warehouse
            .clone()
            .set_site_status(warehouse::SetSiteStatusRequest {
                code: "west".into(),
                status: warehouse::SiteStatus::Online as i32,
                actor: why("confirmed open"),
            }),
    )
    .await;
    let parcelco = admin
        .carrier
        .list_carriers(carrier::ListCarriersRequest {})
        .await
        .unwrap()
        .into_inner()
        .carriers
        .into_iter()
        .next()
        .unwrap();
    let c = who("ops-carrier", roles::OPERATOR, None);
    let (_, r) = audited(
        &c,
        "carrier",
        "UpsertCarrier",
        "ops-carrier",
        c.carrier
            .clone()
            .upsert_carrier(carrier::UpsertCarrierRequest {
                carrier: Some(parcelco.clone()),
                reason: "new rate card".into(),
            }),
    )
    .await;
    assert_eq!(r.target, format!("carrier:{}", parcelco.code));

    // --- procurement ---
    let supplier = admin
        .procurement
        .list_suppliers(procurement::ListSuppliersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .suppliers
        .remove(0);
    let c = who("buyer-make", roles::BUYER, None);
    let (po, _) = audited(
        &c,
        "procurement",
        "CreatePurchaseOrder",
        "buyer-make",
        c.procurement
            .clone()
            .create_purchase_order(procurement::CreatePurchaseOrderRequest {
                idempotency_key: "aud-po-1".into(),
                supplier_id: supplier.supplier_id.clone(),
                location: "central".into(),
                lines: vec![procurement::PurchaseOrderLine {
                    sku: "MUG-BLUE".into(),
                    quantity: 48,
                    unit_cost: None,
                    received_quantity: 0,
                }],
            }),
    )
    .await;
    let po_id = po.purchase_order.unwrap().purchase_order_id;
    let approve_po = procurement::ApprovePurchaseOrderRequest {
        purchase_order_id: po_id.clone(),
        approver: why("weekly buy"),
    };
    let c = admin.as_principal("buyer-make", &[roles::APPROVER], Some(10_000_000));
    let e = refused(
        &c,
        "procurement",
        "buyer-make",
        c.procurement
            .clone()
            .approve_purchase_order(approve_po.clone()),
    )
    .await;
    assert!(e.message().contains("maker-checker"), "{}", e.message());
    let c = who("buyer-check", roles::BUYER, None);
    let (approved, r) = audited(
        &c,
        "procurement",
        "ApprovePurchaseOrder",
        "buyer-check",
        c.procurement.clone().approve_purchase_order(approve_po),
    )
    .await;
    assert_eq!(approved.purchase_order.unwrap().approved_by, "buyer-check");
    assert_eq!(r.target, format!("purchase_order:{po_id}"));
    let c = who("buyer-cancel", roles::BUYER, None);
    audited(
        &c,
        "procurement",
        "CancelPurchaseOrder",
        "buyer-cancel",
        c.procurement
            .clone()
            .cancel_purchase_order(procurement::CancelPurchaseOrderRequest {
                purchase_order_id: po_id.clone(),
                actor: why("supplier cannot deliver"),
            }),
    )
    .await;

    // --- orchestrator: pause, resume, cancel a saga waiting for its packer ---
    let waiting = admin
        .clone()
        .place("AUD-3", "MUG-BLUE", 1, "tok_visa", "standard")
        .await;
    let saga = admin.wait_step(&waiting, "await_pack").await;
    let action = |reason: &str| {
        Some(OperatorAction {
            operator: "body-says-mallory".into(),
            reason: reason.into(),
        })
    };
    let c = who("ops-pause", roles::OPERATOR, None);
    audited(
        &c,
        "orchestrator",
        "PauseSaga",
        "ops-pause",
        c.orchestrator
            .clone()
            .pause_saga(erp_proto::orchestrator::PauseSagaRequest {
                saga_id: saga.saga_id.clone(),
                action: action("address check"),
            }),
    )
    .await;
    admin.wait_saga(&waiting, &[SagaStatus::Paused], T).await;
    let c = who("ops-resume", roles::OPERATOR, None);
    audited(
        &c,
        "orchestrator",
        "ResumeSaga",
        "ops-resume",
        c.orchestrator
            .clone()
            .resume_saga(erp_proto::orchestrator::ResumeSagaRequest {
                saga_id: saga.saga_id.clone(),
                action: action("address fine"),
            }),
    )
    .await;
    let c = who("ops-cancel", roles::OPERATOR, None);
    let (_, r) = audited(
        &c,
        "orchestrator",
        "CancelSaga",
        "ops-cancel",
        c.orchestrator
            .clone()
            .cancel_saga(erp_proto::orchestrator::CancelSagaRequest {
                saga_id: saga.saga_id.clone(),
                action: action("customer withdrew"),
            }),
    )
    .await;
    assert_eq!(r.target, format!("saga:{}", saga.saga_id));
    assert_eq!(r.principal, "ops-cancel", "never the body's operator");
    admin
        .wait_saga(&waiting, &[SagaStatus::Compensated], T)
        .await;

    // Every service's chain verifies, and an auditor (only) may read it.
    let auditor = who("auditor-1", roles::AUDITOR, None);
    for service in SERVICES {
        let v = auditor
            .audit_of(service)
            .verify_audit_chain(VerifyAuditChainRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(v.intact, "{service}: {v:?}");
        assert!(v.records > 0, "{service} recorded nothing");
    }
    let e = who("ops-peek", roles::OPERATOR, None)
        .audit_of("finance")
        .verify_audit_chain(VerifyAuditChainRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // The table refuses edits; someone who drops that guard breaks the chain, and it shows.
    let db = &s.services.iter().find(|r| r.name == "finance").unwrap().db;
    let edit = "UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 2";
    assert!(
        db.execute_unprepared(edit).await.is_err(),
        "audit_log is append-only"
    );
    let unguard = match db.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => {
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"
        }
        _ => "DROP TRIGGER audit_log_no_update",
    };
    db.execute_unprepared(unguard).await.unwrap();
    db.execute_unprepared(edit).await.unwrap();
    let v = auditor
        .audit_of("finance")
        .verify_audit_chain(VerifyAuditChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!v.intact);
    assert_eq!(v.first_broken_seq, 2, "{v:?}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governed_changes_are_audited_on_every_backend() {
    let _watchdog = testing::watchdog(
        "governed_changes_are_audited_on_every_backend",
        std::time::Duration::from_secs(300),
    );
    for backend in testing::backends() {
        governed_changes_are_audited(backend).await;
    }
}
