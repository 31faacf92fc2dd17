//! Who may call each method of this service (see `erp_runtime::auth`). A method missing here
//! is denied to everyone; `admin` may call every listed method.

use erp_runtime::auth::Policy;
#[allow(clippy::wildcard_imports)]
use erp_runtime::auth::roles::*;

pub const POLICY: Policy = Policy {
    service: erp_proto::service_names::CARRIER,
    rules: &[
        ("UpsertCarrier", &[OPERATOR]),
        (
            "ListCarriers",
            &[OPERATOR, CUSTOMER_SERVICE, WAREHOUSE, ORDER, ORCHESTRATOR],
        ),
        (
            "QuoteRates",
            &[OPERATOR, CUSTOMER_SERVICE, ORDER, ORCHESTRATOR],
        ),
        ("BuyLabel", &[ORCHESTRATOR, WAREHOUSE, OPERATOR]),
        ("VoidLabel", &[ORCHESTRATOR, WAREHOUSE, OPERATOR]),
        ("RecordTrackingEvent", &[INTEGRATION, OPERATOR, WAREHOUSE]),
        (
            "GetShipment",
            &[CUSTOMER_SERVICE, OPERATOR, WAREHOUSE, ORDER, ORCHESTRATOR],
        ),
        (
            "ListShipments",
            &[CUSTOMER_SERVICE, OPERATOR, WAREHOUSE, ORDER, ORCHESTRATOR],
        ),
    ],
};
