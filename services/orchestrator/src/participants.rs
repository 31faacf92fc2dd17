//! The participants of the fulfillment saga, called over gRPC. Every command carries the
//! idempotency key `<saga>:<step>:<forward|compensate>`, so a retry after a timeout is answered
//! with the first result, and a compensation that overtakes its action leaves a tombstone.

use std::time::Duration;

use erp_proto::{finance, inventory, order, warehouse};
use erp_runtime::app::PeerAccess;
use erp_runtime::config::Peers;
use tonic::Code;

use crate::ctx::{Ctx, Portion, Writeoff};
use crate::outcome::StepError;
use crate::ports::Ports;

#[derive(Clone)]
pub struct Participants {
    /// A later shipment re-authorizes when the authorization expires within this long.
    pub(crate) reauthorize_within_ms: i64,
    pub(crate) ports: Ports,
}

impl Participants {
    /// The saga's view of its participants.
    pub fn new(ports: Ports) -> Self {
        Self {
            reauthorize_within_ms: 86_400_000,
            ports,
        }
    }

    /// Clients that connect on first use and reconnect after a participant restarts (the probe
    /// participant's only when `probe_url` is set).
    pub fn connect_lazy(peers: &Peers, peer: &PeerAccess, probe_url: &str) -> anyhow::Result<Self> {
        Ok(Self::new(Ports::grpc(peers, peer, probe_url)?))
    }

    /// Sets how long before its expiry an authorization is renewed for a later shipment.
    pub fn with_reauthorize_within(mut self, ms: u64) -> Self {
        self.reauthorize_within_ms = i64::try_from(ms).unwrap_or(i64::MAX / 4);
        self
    }

    /// Writes off units a warehouse reported missing (out of on hand) or damaged (on hand to
    /// quarantine), once the saga's hold on them is released. Keys make it safe to repeat.
    pub async fn write_off(
        &self,
        saga_id: &str,
        round: u32,
        index: usize,
        w: &Writeoff,
        t: Duration,
    ) -> Result<(), StepError> {
        let mut moves = vec![("out", inventory::Bucket::OnHand, -w.quantity)];
        if w.damaged {
            moves.push(("quarantine", inventory::Bucket::Quarantined, w.quantity));
        }
        for (op, bucket, delta) in moves {
            self.ports
                .inventory
                .adjust_stock(
                    inventory::AdjustStockRequest {
                        idempotency_key: format!("{saga_id}:r{round}:writeoff:{index}:{op}"),
                        sku: w.sku.clone(),
                        location: w.site.clone(),
                        bucket: bucket as i32,
                        delta,
                        actor: Some(erp_proto::common::Actor {
                            id: "orchestrator".into(),
                            reason: format!(
                                "{} at {} (warehouse exception {})",
                                if w.damaged { "damaged" } else { "not found" },
                                w.site,
                                w.exception_id
                            ),
                        }),
                    },
                    t,
                )
                .await?;
        }
        Ok(())
    }

    /// What each line of the order still needs: not shipped, cancelled or returned, read from
    /// the order service (a line may have been cancelled since the saga read the order).
    pub(crate) async fn still_needed(
        &self,
        order_id: &str,
        t: Duration,
    ) -> Result<Vec<Portion>, StepError> {
        let o = self
            .ports
            .order
            .get_order(
                order::GetOrderRequest {
                    order_id: order_id.to_owned(),
                },
                t,
            )
            .await?
            .order
            .ok_or_else(|| StepError::Transient("GetOrder answered no order".into()))?;
        Ok(o.lines
            .iter()
            .filter_map(|l| {
                let q = l.quantities?;
                let n = q.ordered - q.shipped - q.cancelled - q.returned;
                (n > 0).then(|| Portion {
                    line_id: l.line_id.clone(),
                    quantity: n,
                })
            })
            .collect())
    }

    /// Stock available now per SKU and warehouse, and the warehouses' own view of their sites.
    pub(crate) async fn network_view(
        &self,
        skus: Vec<String>,
        t: Duration,
    ) -> Result<(inventory::GetAvailabilityResponse, Vec<warehouse::Site>), StepError> {
        let availability = self
            .ports
            .inventory
            .get_availability(
                inventory::GetAvailabilityRequest {
                    skus,
                    as_of: None,
                    include_inbound: false,
                },
                t,
            )
            .await?;
        let sites = self
            .ports
            .warehouse
            .list_sites(warehouse::ListSitesRequest {}, t)
            .await?
            .sites;
        Ok((availability, sites))
    }

    /// Asks the routing rules for a decision, under a key of its own per ask.
    pub(crate) async fn ask_rules(
        &self,
        key: &str,
        ctx: &mut Ctx,
        t: Duration,
    ) -> Result<Option<order::RoutingDecision>, StepError> {
        let order_id = ctx
            .order
            .as_ref()
            .map(|o| o.order_id.clone())
            .ok_or_else(|| StepError::missing("order"))?;
        let rk = if ctx.route_checks == 0 {
            key.to_owned()
        } else {
            format!("{key}:{}", ctx.route_checks)
        };
        ctx.route_checks += 1;
        match self
            .ports
            .order
            .route_order(
                order::RouteOrderRequest {
                    idempotency_key: rk,
                    order_id,
                    exclude_sites: ctx.excluded_sites.clone(),
                },
                t,
            )
            .await
        {
            Ok(r) => Ok(r.decision),
            Err(s) => match StepError::from(s) {
                transient @ StepError::Transient(_) => Err(transient),
                StepError::Rejected { .. } => Ok(None),
            },
        }
    }

    /// v3: cancels lines on the order once the shipment that held them is undone.
    pub async fn cancel_lines(
        &self,
        saga_id: &str,
        ctx: &Ctx,
        t: Duration,
    ) -> Result<(), StepError> {
        let order_id = ctx
            .order
            .as_ref()
            .map(|o| o.order_id.clone())
            .ok_or_else(|| StepError::missing("order"))?;
        self.cancel_on_order(
            format!("{saga_id}:r{}:cancel_lines", ctx.round),
            order_id,
            ctx.cancel_lines.clone(),
            "lines cancelled; their shipment was stopped".into(),
            t,
        )
        .await
    }

    /// Cancels `line_ids` (empty: every line) on the order, the units a stopped shipment held
    /// included. Nothing left to cancel (all shipped or cancelled already) is fine.
    pub(crate) async fn cancel_on_order(
        &self,
        key: String,
        order_id: String,
        line_ids: Vec<String>,
        reason: String,
        t: Duration,
    ) -> Result<(), StepError> {
        match self
            .ports
            .order
            .cancel_order(
                order::CancelOrderRequest {
                    idempotency_key: key,
                    order_id,
                    line_ids,
                    actor: Some(erp_proto::common::Actor {
                        id: "orchestrator".into(),
                        reason,
                    }),
                    include_allocated: true,
                },
                t,
            )
            .await
        {
            Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
            other => other.map(|_| ()).map_err(StepError::from),
        }
    }

    /// Releases what an authorization still holds (its captures stay). Nothing held (fully
    /// captured or voided already) is fine.
    pub(crate) async fn release_rest(
        &self,
        key: String,
        payment_id: String,
        t: Duration,
    ) -> Result<(), StepError> {
        match self
            .ports
            .finance
            .void_payment(
                finance::VoidPaymentRequest {
                    idempotency_key: key,
                    payment_id,
                    order_id: String::new(),
                },
                t,
            )
            .await
        {
            Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
            other => other.map(|_| ()).map_err(StepError::from),
        }
    }
}
