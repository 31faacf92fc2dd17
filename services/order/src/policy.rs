//! Who may call each method of this service (see `erp_runtime::auth`). A method missing here
//! is denied to everyone; `admin` may call every listed method.

use erp_runtime::auth::Policy;
#[allow(clippy::wildcard_imports)]
use erp_runtime::auth::roles::*;

pub const POLICY: Policy = Policy {
    service: erp_proto::service_names::ORDER,
    rules: &[
        ("UpsertChannel", &[OPERATOR]),
        (
            "ListChannels",
            &[
                OPERATOR,
                CUSTOMER_SERVICE,
                FINANCE,
                FINANCE_SERVICE,
                ORCHESTRATOR,
            ],
        ),
        ("CreateOrder", &[CUSTOMER_SERVICE, INTEGRATION, OPERATOR]),
        (
            "GetOrder",
            &[
                OPERATOR,
                CUSTOMER_SERVICE,
                FINANCE,
                WAREHOUSE,
                ORCHESTRATOR,
                FINANCE_SERVICE,
                WAREHOUSE_SERVICE,
            ],
        ),
        (
            "ListOrders",
            &[
                OPERATOR,
                CUSTOMER_SERVICE,
                FINANCE,
                FINANCE_SERVICE,
                ORCHESTRATOR,
            ],
        ),
        ("CancelOrder", &[CUSTOMER_SERVICE, OPERATOR, ORCHESTRATOR]),
        ("RecordAllocation", &[ORCHESTRATOR]),
        ("MarkShipped", &[ORCHESTRATOR]),
        ("MarkFailed", &[ORCHESTRATOR]),
        ("RecordTax", &[ORCHESTRATOR]),
        ("PutRoutingRules", &[OPERATOR]),
        ("GetRoutingRules", &[OPERATOR, CUSTOMER_SERVICE]),
        ("RouteOrder", &[ORCHESTRATOR, OPERATOR]),
    ],
};
