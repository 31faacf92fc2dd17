//! What the saga needs from each participant, one trait per service: the gRPC implementation
//! calls the service over the network; [`crate::fake`] (feature `fakes`, and in unit tests)
//! keeps a participant in memory, so that saga rules are tested without sockets.
//!
//! The ports speak the services' own messages: a step builds the request it would send over
//! the wire, and a fake answers it as the service would (idempotency keys, rejections with
//! their reason codes, `NOT_FOUND` for what was never done).

use std::sync::Arc;
use std::time::Duration;

use erp_proto::carrier::carrier_service_client::CarrierServiceClient;
use erp_proto::finance::finance_service_client::FinanceServiceClient;
use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
use erp_proto::order::order_service_client::OrderServiceClient;
use erp_proto::probe::probe_service_client::ProbeServiceClient;
use erp_proto::warehouse::warehouse_service_client::WarehouseServiceClient;
use erp_proto::{carrier, finance, inventory, order, probe, warehouse};
use erp_runtime::app::PeerAccess;
use erp_runtime::auth::PeerChannel;
use erp_runtime::config::Peers;
use tonic::Status;

/// A request carrying the caller's trace context and a deadline.
fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    if let Some(tp) = erp_runtime::telemetry::current_traceparent()
        && let Ok(value) = tp.parse()
    {
        request.metadata_mut().insert("traceparent", value);
    }
    request
}

/// Declares a port trait and its gRPC implementation, one method per RPC the saga calls.
macro_rules! port {
    (
        $(#[$doc:meta])*
        $port:ident, $grpc:ident($client:ty) {
            $($method:ident($req:ty) -> $resp:ty;)*
        }
    ) => {
        $(#[$doc])*
        #[async_trait::async_trait]
        pub trait $port: Send + Sync {
            $(async fn $method(&self, request: $req, timeout: Duration) -> Result<$resp, Status>;)*
        }

        /// The participant over gRPC.
        #[derive(Clone)]
        pub struct $grpc(pub $client);

        #[async_trait::async_trait]
        impl $port for $grpc {
            $(async fn $method(&self, message: $req, timeout: Duration) -> Result<$resp, Status> {
                self.0
                    .clone()
                    .$method(request(message, timeout))
                    .await
                    .map(tonic::Response::into_inner)
            })*
        }
    };
}

port! {
    /// The order service: the order, its channel, tax, routing, allocation and its end.
    OrderPort, GrpcOrder(OrderServiceClient<PeerChannel>) {
        get_order(order::GetOrderRequest) -> order::GetOrderResponse;
        list_channels(order::ListChannelsRequest) -> order::ListChannelsResponse;
        record_tax(order::RecordTaxRequest) -> order::RecordTaxResponse;
        route_order(order::RouteOrderRequest) -> order::RouteOrderResponse;
        record_allocation(order::RecordAllocationRequest) -> order::RecordAllocationResponse;
        mark_shipped(order::MarkShippedRequest) -> order::MarkShippedResponse;
        mark_failed(order::MarkFailedRequest) -> order::MarkFailedResponse;
        cancel_order(order::CancelOrderRequest) -> order::CancelOrderResponse;
    }
}

port! {
    /// The inventory service: items, availability, reservations, stock movements.
    InventoryPort, GrpcInventory(InventoryServiceClient<PeerChannel>) {
        get_item(inventory::GetItemRequest) -> inventory::GetItemResponse;
        get_availability(inventory::GetAvailabilityRequest) -> inventory::GetAvailabilityResponse;
        reserve_stock(inventory::ReserveStockRequest) -> inventory::ReserveStockResponse;
        commit_reservations(inventory::CommitReservationsRequest) -> inventory::CommitReservationsResponse;
        release_reservations(inventory::ReleaseReservationsRequest) -> inventory::ReleaseReservationsResponse;
        adjust_stock(inventory::AdjustStockRequest) -> inventory::AdjustStockResponse;
    }
}

port! {
    /// The warehouse service: its sites and the fulfillments it picks, packs and ships.
    WarehousePort, GrpcWarehouse(WarehouseServiceClient<PeerChannel>) {
        list_sites(warehouse::ListSitesRequest) -> warehouse::ListSitesResponse;
        create_fulfillment(warehouse::CreateFulfillmentRequest) -> warehouse::CreateFulfillmentResponse;
        cancel_fulfillment(warehouse::CancelFulfillmentRequest) -> warehouse::CancelFulfillmentResponse;
    }
}

port! {
    /// The carrier service: rates and labels.
    CarrierPort, GrpcCarrier(CarrierServiceClient<PeerChannel>) {
        quote_rates(carrier::QuoteRatesRequest) -> carrier::QuoteRatesResponse;
        buy_label(carrier::BuyLabelRequest) -> carrier::BuyLabelResponse;
        void_label(carrier::VoidLabelRequest) -> carrier::VoidLabelResponse;
    }
}

port! {
    /// The finance service: tax, payments and the journal.
    FinancePort, GrpcFinance(FinanceServiceClient<PeerChannel>) {
        calculate_tax(finance::CalculateTaxRequest) -> finance::CalculateTaxResponse;
        authorize_payment(finance::AuthorizePaymentRequest) -> finance::AuthorizePaymentResponse;
        capture_payment(finance::CapturePaymentRequest) -> finance::CapturePaymentResponse;
        void_payment(finance::VoidPaymentRequest) -> finance::VoidPaymentResponse;
        post_journal(finance::PostJournalRequest) -> finance::PostJournalResponse;
    }
}

port! {
    /// The probe participant of the synthetic saga (see `proto/erp/probe`).
    ProbePort, GrpcProbe(ProbeServiceClient<PeerChannel>) {
        apply(probe::ApplyRequest) -> probe::ApplyResponse;
        revert(probe::RevertRequest) -> probe::RevertResponse;
    }
}

/// The saga's participants.
#[derive(Clone)]
pub struct Ports {
    pub order: Arc<dyn OrderPort>,
    pub inventory: Arc<dyn InventoryPort>,
    pub warehouse: Arc<dyn WarehousePort>,
    pub carrier: Arc<dyn CarrierPort>,
    pub finance: Arc<dyn FinancePort>,
    /// Only where `orchestrator.probe_url` is set: probe sagas are refused otherwise.
    pub probe: Option<Arc<dyn ProbePort>>,
}

fn lazy(peer: &PeerAccess, url: &str) -> anyhow::Result<PeerChannel> {
    Ok(peer.intercept(peer.endpoint(url)?.tcp_nodelay(true)))
}

impl Ports {
    /// The participants over gRPC, connected on first use and again after a restart; the probe
    /// participant at `probe_url` when it is not empty.
    pub fn grpc(peers: &Peers, peer: &PeerAccess, probe_url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            order: Arc::new(GrpcOrder(OrderServiceClient::new(lazy(
                peer,
                &peers.order,
            )?))),
            inventory: Arc::new(GrpcInventory(InventoryServiceClient::new(lazy(
                peer,
                &peers.inventory,
            )?))),
            warehouse: Arc::new(GrpcWarehouse(WarehouseServiceClient::new(lazy(
                peer,
                &peers.warehouse,
            )?))),
            carrier: Arc::new(GrpcCarrier(CarrierServiceClient::new(lazy(
                peer,
                &peers.carrier,
            )?))),
            finance: Arc::new(GrpcFinance(FinanceServiceClient::new(lazy(
                peer,
                &peers.finance,
            )?))),
            probe: if probe_url.is_empty() {
                None
            } else {
                Some(Arc::new(GrpcProbe(ProbeServiceClient::new(lazy(
                    peer, probe_url,
                )?))))
            },
        })
    }
}
