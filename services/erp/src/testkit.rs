//! Clients for every service and the operations tests and demos drive: place an order, wait
//! for its saga, ship it as a warehouse would, and check that stock, payments and the journal
//! reconcile.

use std::time::{Duration, Instant};

use erp_proto::carrier::carrier_service_client::CarrierServiceClient;
use erp_proto::finance::finance_service_client::FinanceServiceClient;
use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
use erp_proto::orchestrator::orchestrator_service_client::OrchestratorServiceClient;
use erp_proto::order::order_service_client::OrderServiceClient;
use erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient;
use erp_proto::{carrier, finance, inventory, orchestrator, order, warehouse};
use erp_runtime::app::PeerAccess;
use erp_runtime::auth::{Authenticator, Credentials, PeerChannel};
use erp_runtime::config::{AuthMode, Peers, Settings};

/// A client for every service the tests drive, all presenting one principal's token (and,
/// with TLS, the tools' certificate: `{service}` = `client` in the TLS file names).
#[derive(Clone)]
pub struct Clients {
    pub order: OrderServiceClient<PeerChannel>,
    pub inventory: InventoryServiceClient<PeerChannel>,
    pub warehouse: WarehouseServiceClient<PeerChannel>,
    pub carrier: CarrierServiceClient<PeerChannel>,
    pub finance: FinanceServiceClient<PeerChannel>,
    pub orchestrator: OrchestratorServiceClient<PeerChannel>,
    pub procurement:
        erp_proto::procurement::procurement_service_client::ProcurementServiceClient<PeerChannel>,
    peers: Peers,
    access: PeerAccess,
    auth: Option<std::sync::Arc<Authenticator>>,
}

fn lazy(url: &str, access: &PeerAccess) -> PeerChannel {
    access.intercept(
        access
            .endpoint(url)
            .expect("a valid peer url and TLS setup"),
    )
}

/// How tools and tests reach the suite of `settings`: the tools' TLS certificate when TLS is
/// on, and `credentials`.
pub fn tool_access(settings: &Settings, credentials: Credentials) -> PeerAccess {
    PeerAccess {
        credentials,
        tls: erp_runtime::tls::client_config(&settings.tls.for_service("client"))
            .expect("the tools' certificate"),
    }
}

fn minted(settings: &Settings, subject: &str, roles: &[&str]) -> Credentials {
    match settings.auth.mode {
        AuthMode::Jwt => Credentials::minted(
            Authenticator::from_settings(settings).expect("the suite's key set"),
            subject,
            roles,
            Duration::from_secs(24 * 3600),
            None,
        ),
        AuthMode::Off => Credentials::none(),
    }
}

/// A channel to `service` (by short name) of the services `settings.peers` names, presenting
/// a token for `subject` with `roles` minted from the settings' key set.
pub fn channel_as(
    settings: &Settings,
    service: &str,
    subject: &str,
    roles: &[&str],
) -> PeerChannel {
    lazy(
        settings.peers.get(service).expect("a service name"),
        &tool_access(settings, minted(settings, subject, roles)),
    )
}

/// The subject of the tokens tests and tools mint for themselves.
pub const TOOL_SUBJECT: &str = "erp-admin";

impl Clients {
    /// Lazily connected clients: a service that is down now can come back later.
    pub fn for_suite(suite: &crate::Suite) -> Self {
        Self::for_settings(&suite.settings)
    }

    /// Clients of the services `settings.peers` names, as an admin minted from the settings'
    /// key set (no token when auth is off).
    pub fn for_settings(settings: &Settings) -> Self {
        let auth = (settings.auth.mode == AuthMode::Jwt)
            .then(|| Authenticator::from_settings(settings).expect("the suite's key set"));
        let mut c = Self::with_access(&settings.peers, tool_access(settings, Credentials::none()));
        c.auth = auth;
        c.as_principal(TOOL_SUBJECT, &[erp_runtime::auth::roles::ADMIN], None)
    }

    /// The same services, called as `subject` holding `roles` (and an approval limit).
    pub fn as_principal(&self, subject: &str, roles: &[&str], approval_limit: Option<i64>) -> Self {
        let credentials = match &self.auth {
            Some(auth) => Credentials::minted(
                auth.clone(),
                subject,
                roles,
                Duration::from_secs(24 * 3600),
                approval_limit,
            ),
            None => Credentials::none(),
        };
        let access = PeerAccess {
            credentials,
            tls: self.access.tls.clone(),
        };
        let mut c = Self::with_access(&self.peers, access);
        c.auth = self.auth.clone();
        c
    }

    /// Clients reaching `peers` with `access`.
    pub fn with_access(peers: &Peers, access: PeerAccess) -> Self {
        let a = &access;
        Self {
            order: OrderServiceClient::new(lazy(&peers.order, a)),
            inventory: InventoryServiceClient::new(lazy(&peers.inventory, a)),
            warehouse: WarehouseServiceClient::new(lazy(&peers.warehouse, a)),
            carrier: CarrierServiceClient::new(lazy(&peers.carrier, a)),
            finance: FinanceServiceClient::new(lazy(&peers.finance, a)),
            orchestrator: OrchestratorServiceClient::new(lazy(&peers.orchestrator, a)),
            procurement:
                erp_proto::procurement::procurement_service_client::ProcurementServiceClient::new(
                    lazy(&peers.procurement, a),
                ),
            peers: peers.clone(),
            access: access.clone(),
            auth: None,
        }
    }

    /// An audit client of one service (`finance`, `procurement`...).
    pub fn audit_of(
        &self,
        service: &str,
    ) -> erp_proto::audit::audit_service_client::AuditServiceClient<PeerChannel> {
        erp_proto::audit::audit_service_client::AuditServiceClient::new(lazy(
            self.peers.get(service).expect("a service name"),
            &self.access,
        ))
    }

    /// Adds an item to the catalog (USD, `standard` tax class).
    pub async fn create_item(&mut self, sku: &str, cost_minor: i64, grams: i64, low_stock: i64) {
        self.inventory
            .create_item(inventory::CreateItemRequest {
                item: Some(inventory::Item {
                    sku: sku.into(),
                    name: sku.into(),
                    unit_cost: Some(erp_proto::common::Money {
                        amount_minor: cost_minor,
                        currency: "USD".into(),
                    }),
                    weight_grams: grams,
                    tax_class: "standard".into(),
                    low_stock_threshold: low_stock,
                    created_at: None,
                }),
            })
            .await
            .expect("item created");
    }

    /// Receives `quantity` of `sku` at `location` (no purchase order: the catalog cost).
    pub async fn receive(&mut self, key: &str, sku: &str, location: &str, quantity: i64) {
        self.inventory
            .receive_stock(inventory::ReceiveStockRequest {
                idempotency_key: key.into(),
                sku: sku.into(),
                location: location.into(),
                quantity,
                source: None,
                from_inbound: false,
                unit_cost: None,
            })
            .await
            .expect("stock received");
    }

    /// Places a web order and returns its id.
    pub async fn place(
        &mut self,
        external: &str,
        sku: &str,
        qty: i64,
        token: &str,
        level: &str,
    ) -> String {
        let mut req = crate::seed::sample_order(external, sku, qty);
        req.payment_method_token = token.into();
        req.service_level = level.into();
        self.order
            .create_order(req)
            .await
            .expect("order accepted")
            .into_inner()
            .order
            .expect("order")
            .order_id
    }

    /// The saga of an order, once it exists.
    pub async fn saga(&mut self, order_id: &str) -> Option<orchestrator::Saga> {
        self.orchestrator
            .get_saga(orchestrator::GetSagaRequest {
                saga_id: String::new(),
                order_id: order_id.into(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().saga)
    }

    /// Waits until the order's saga reaches one of `statuses`.
    pub async fn wait_saga(
        &mut self,
        order_id: &str,
        statuses: &[orchestrator::SagaStatus],
        within: Duration,
    ) -> orchestrator::Saga {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.saga(order_id).await {
                if statuses.iter().any(|x| *x as i32 == s.status) {
                    return s;
                }
                last = Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("saga of {order_id} did not reach {statuses:?} within {within:?}; last: {last:#?}");
    }

    /// The order's fulfillments the floor can work on (not shipped, cancelled or in exception).
    pub async fn open_fulfillments(&mut self, order_id: &str) -> Vec<warehouse::Fulfillment> {
        self.warehouse
            .list_fulfillments(warehouse::ListFulfillmentsRequest {
                order_id: order_id.into(),
                ..Default::default()
            })
            .await
            .expect("list fulfillments")
            .into_inner()
            .fulfillments
            .into_iter()
            .filter(|f| {
                use warehouse::FulfillmentStatus as S;
                [S::Open, S::Released, S::Picked, S::Packed]
                    .iter()
                    .any(|s| *s as i32 == f.status)
            })
            .collect()
    }

    /// Picks every task of the order's open fulfillment and packs it in a carton, as the
    /// warehouse floor would. Returns the fulfillment id.
    pub async fn pick_and_pack(&mut self, order_id: &str) -> String {
        let mut open = Vec::new();
        for _ in 0..200 {
            open = self.open_fulfillments(order_id).await;
            if !open.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let f = open.into_iter().next().expect("an open fulfillment");
        self.pick_and_pack_fulfillment(&f).await;
        f.fulfillment_id
    }

    /// Picks every task of `f` and packs it in one carton (idempotent: keyed by task and
    /// fulfillment).
    pub async fn pick_and_pack_fulfillment(&mut self, f: &warehouse::Fulfillment) {
        self.try_pick_and_pack(f).await.expect("pick and pack");
    }

    /// [`Self::pick_and_pack_fulfillment`], handing back the warehouse's refusal (or its
    /// absence, when it is down) instead of failing.
    pub async fn try_pick_and_pack(
        &mut self,
        f: &warehouse::Fulfillment,
    ) -> Result<(), tonic::Status> {
        for t in &f.tasks {
            self.warehouse
                .confirm_pick(warehouse::ConfirmPickRequest {
                    idempotency_key: format!("pick-{}", t.task_id),
                    task_id: t.task_id.clone(),
                    picked_quantity: t.quantity,
                    picker: "picker-1".into(),
                })
                .await?;
        }
        self.warehouse
            .confirm_pack(warehouse::ConfirmPackRequest {
                idempotency_key: format!("pack-{}", f.fulfillment_id),
                fulfillment_id: f.fulfillment_id.clone(),
                parcel: Some(erp_proto::common::Parcel {
                    weight_grams: 1_200,
                    length_mm: 300,
                    width_mm: 200,
                    height_mm: 150,
                }),
                packer: "packer-1".into(),
            })
            .await?;
        Ok(())
    }

    /// Routing rules that split an order across warehouses and ship what is in stock now (the
    /// rest waits backordered).
    pub async fn allow_splits(&mut self, reason: &str) -> Result<(), tonic::Status> {
        self.order
            .put_routing_rules(order::PutRoutingRulesRequest {
                rules: vec![order::RoutingRule {
                    name: "ship what is in stock".into(),
                    priority: 1,
                    strategy: "LOWEST_COST".into(),
                    allow_split: true,
                    ..Default::default()
                }],
                actor: Some(erp_proto::common::Actor {
                    id: "ops".into(),
                    reason: reason.into(),
                }),
            })
            .await
            .map(drop)
    }

    /// The tracking number of the order's live label, once the saga bought it.
    pub async fn wait_label(&mut self, order_id: &str) -> String {
        for _ in 0..400 {
            let shipments = self
                .carrier
                .list_shipments(carrier::ListShipmentsRequest {
                    order_id: order_id.into(),
                    ..Default::default()
                })
                .await
                .expect("list shipments")
                .into_inner()
                .shipments;
            if let Some(s) = shipments
                .iter()
                .find(|s| s.status == carrier::ShipmentStatus::LabelCreated as i32)
            {
                return s.tracking_number.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no label was bought for order {order_id} within 20 s");
    }

    /// Confirms the shipment of the order's packed fulfillment with its label's tracking number.
    pub async fn confirm_ship(&mut self, order_id: &str) {
        let tracking = self.wait_label(order_id).await;
        let packed: Vec<_> = self
            .open_fulfillments(order_id)
            .await
            .into_iter()
            .filter(|f| f.status == warehouse::FulfillmentStatus::Packed as i32)
            .collect();
        assert!(
            !packed.is_empty(),
            "order {order_id} has no packed fulfillment"
        );
        for f in packed {
            self.warehouse
                .confirm_ship(warehouse::ConfirmShipRequest {
                    idempotency_key: format!("ship-{}", f.fulfillment_id),
                    fulfillment_id: f.fulfillment_id,
                    tracking_number: tracking.clone(),
                })
                .await
                .expect("ship");
        }
    }

    /// Picks, packs and ships the order as a warehouse would: the saga buys the label for the
    /// packed carton, and the shipment is confirmed with its tracking number.
    pub async fn ship(&mut self, order_id: &str) {
        self.pick_and_pack(order_id).await;
        self.confirm_ship(order_id).await;
    }

    /// Waits until the order's saga waits at `step` (`await_pack`, `await_shipment`).
    pub async fn wait_step(&mut self, order_id: &str, step: &str) -> orchestrator::Saga {
        let mut last = None;
        for _ in 0..400 {
            if let Some(s) = self.saga(order_id).await {
                if s.status == orchestrator::SagaStatus::Waiting as i32 && s.current_step == step {
                    return s;
                }
                last = Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("saga of {order_id} did not wait at {step} within 20 s; last: {last:#?}");
    }

    pub async fn order(&mut self, order_id: &str) -> order::Order {
        self.order
            .get_order(order::GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
            .expect("get order")
            .into_inner()
            .order
            .expect("order")
    }

    pub async fn reservations(&mut self, order_id: &str) -> Vec<inventory::Reservation> {
        self.inventory
            .list_reservations(inventory::ListReservationsRequest {
                order_id: order_id.into(),
                ..Default::default()
            })
            .await
            .expect("reservations")
            .into_inner()
            .reservations
    }

    /// Every label bought for the order (voided ones too).
    pub async fn labels(&mut self, order_id: &str) -> Vec<carrier::Shipment> {
        self.carrier
            .list_shipments(carrier::ListShipmentsRequest {
                order_id: order_id.into(),
                ..Default::default()
            })
            .await
            .expect("list shipments")
            .into_inner()
            .shipments
    }

    /// Every fulfillment of the order, whatever its status.
    pub async fn fulfillments(&mut self, order_id: &str) -> Vec<warehouse::Fulfillment> {
        self.warehouse
            .list_fulfillments(warehouse::ListFulfillmentsRequest {
                order_id: order_id.into(),
                ..Default::default()
            })
            .await
            .expect("list fulfillments")
            .into_inner()
            .fulfillments
    }

    /// The journal entries posted for the order.
    pub async fn journal_entries(&mut self, order_id: &str) -> Vec<finance::JournalEntry> {
        self.finance
            .list_journal_entries(finance::ListJournalEntriesRequest {
                order_id: order_id.into(),
                ..Default::default()
            })
            .await
            .expect("journal entries")
            .into_inner()
            .entries
    }

    pub async fn payment(&mut self, order_id: &str) -> Option<finance::Payment> {
        self.finance
            .get_payment(finance::GetPaymentRequest {
                payment_id: String::new(),
                order_id: order_id.into(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().payment)
    }

    /// Totals of every stock bucket across the catalog and warehouses.
    pub async fn stock_totals(&mut self) -> (i64, i64) {
        let mut on_hand = 0;
        let mut reserved = 0;
        for (sku, ..) in crate::seed::CATALOG {
            let levels = self
                .inventory
                .get_stock(inventory::GetStockRequest {
                    sku: sku.into(),
                    location: String::new(),
                })
                .await
                .expect("stock")
                .into_inner()
                .levels;
            on_hand += levels.iter().map(|l| l.on_hand).sum::<i64>();
            reserved += levels.iter().map(|l| l.reserved).sum::<i64>();
        }
        (on_hand, reserved)
    }

    /// Waits until the books have caught up with the stock (finance posts inventory's value
    /// changes from its events), then checks that the inventory asset account equals the
    /// valued stock and that the valued quantities are the owned ones (on hand and quarantined)
    /// of every item. Returns the asset balance.
    pub async fn assert_inventory_in_books(&mut self) -> i64 {
        let mut last = String::new();
        for _ in 0..200 {
            let valuation = self
                .inventory
                .get_valuation(inventory::GetValuationRequest { skus: vec![] })
                .await
                .expect("valuation")
                .into_inner();
            let valued: i64 = valuation.totals.iter().map(|m| m.amount_minor).sum();
            let asset: i64 = self
                .finance
                .get_trial_balance(finance::GetTrialBalanceRequest {})
                .await
                .expect("trial balance")
                .into_inner()
                .rows
                .iter()
                .filter(|r| r.account_code == "1300")
                .map(|r| r.balance_minor)
                .sum();
            let mut quantities_agree = true;
            for item in &valuation.items {
                let owned: i64 = self
                    .inventory
                    .get_stock(inventory::GetStockRequest {
                        sku: item.sku.clone(),
                        location: String::new(),
                    })
                    .await
                    .expect("stock")
                    .into_inner()
                    .levels
                    .iter()
                    .map(|l| l.on_hand + l.quarantined)
                    .sum();
                if owned != item.quantity {
                    quantities_agree = false;
                    last = format!(
                        "{}: valued {} units, owned {owned}",
                        item.sku, item.quantity
                    );
                }
            }
            if asset == valued && quantities_agree {
                return asset;
            }
            if asset != valued {
                last = format!("inventory asset {asset} in the ledger, valued stock {valued}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the books do not agree with the stock after 10 s: {last}");
    }

    /// The invariants that must hold after any scenario: the stock ledger replays to the
    /// buckets, the journal balances, reserved stock equals the active reservations, the
    /// inventory asset equals the valued stock.
    pub async fn assert_reconciled(&mut self) {
        self.assert_inventory_in_books().await;
        let verify = self
            .inventory
            .verify_ledger(inventory::VerifyLedgerRequest {})
            .await
            .expect("verify")
            .into_inner();
        assert!(
            verify.consistent,
            "stock ledger mismatches: {:?}",
            verify.mismatches
        );
        let tb = self
            .finance
            .get_trial_balance(finance::GetTrialBalanceRequest {})
            .await
            .expect("trial balance")
            .into_inner();
        assert!(tb.balanced, "journal unbalanced: {:?}", tb.totals);
        let active: i64 = self
            .inventory
            .list_reservations(inventory::ListReservationsRequest {
                state: inventory::ReservationState::Active as i32,
                page_size: 500,
                ..Default::default()
            })
            .await
            .expect("reservations")
            .into_inner()
            .reservations
            .iter()
            .map(|r| r.quantity)
            .sum();
        let (_, reserved) = self.stock_totals().await;
        assert_eq!(
            active, reserved,
            "reserved stock differs from active reservations"
        );
    }
}
