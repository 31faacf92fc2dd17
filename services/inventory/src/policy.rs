//! Who may call each method of this service (see `erp_runtime::auth`). A method missing here
//! is denied to everyone; `admin` may call every listed method.

use erp_runtime::auth::Policy;
#[allow(clippy::wildcard_imports)]
use erp_runtime::auth::roles::*;

pub const POLICY: Policy = Policy {
    service: erp_proto::service_names::INVENTORY,
    rules: &[
        ("CreateItem", &[OPERATOR, BUYER]),
        (
            "GetItem",
            &[
                OPERATOR,
                CUSTOMER_SERVICE,
                BUYER,
                WAREHOUSE,
                FINANCE,
                ORDER,
                ORCHESTRATOR,
                PROCUREMENT,
                WAREHOUSE_SERVICE,
                FINANCE_SERVICE,
            ],
        ),
        (
            "ListItems",
            &[
                OPERATOR,
                CUSTOMER_SERVICE,
                BUYER,
                WAREHOUSE,
                FINANCE,
                INTEGRATION,
                ORDER,
                ORCHESTRATOR,
                PROCUREMENT,
            ],
        ),
        ("CreateLocation", &[OPERATOR]),
        (
            "ListLocations",
            &[
                OPERATOR,
                WAREHOUSE,
                BUYER,
                ORDER,
                ORCHESTRATOR,
                PROCUREMENT,
                WAREHOUSE_SERVICE,
            ],
        ),
        ("SetLocationStatus", &[OPERATOR, WAREHOUSE_SERVICE]),
        (
            "GetStock",
            &[
                OPERATOR,
                WAREHOUSE,
                BUYER,
                CUSTOMER_SERVICE,
                FINANCE,
                ORDER,
                ORCHESTRATOR,
                PROCUREMENT,
                WAREHOUSE_SERVICE,
            ],
        ),
        (
            "GetAvailability",
            &[
                OPERATOR,
                WAREHOUSE,
                BUYER,
                CUSTOMER_SERVICE,
                INTEGRATION,
                ORDER,
                ORCHESTRATOR,
                PROCUREMENT,
                WAREHOUSE_SERVICE,
            ],
        ),
        (
            "ReceiveStock",
            &[WAREHOUSE, OPERATOR, WAREHOUSE_SERVICE, PROCUREMENT],
        ),
        (
            "AdjustStock",
            &[WAREHOUSE, OPERATOR, WAREHOUSE_SERVICE, ORCHESTRATOR],
        ),
        ("RecordInbound", &[BUYER, PROCUREMENT]),
        ("CancelInbound", &[BUYER, PROCUREMENT]),
        ("TransferStock", &[WAREHOUSE, OPERATOR]),
        ("RecordCycleCount", &[WAREHOUSE, OPERATOR]),
        (
            "RecordReturn",
            &[WAREHOUSE, CUSTOMER_SERVICE, WAREHOUSE_SERVICE],
        ),
        ("InspectReturn", &[WAREHOUSE]),
        ("ReserveStock", &[ORCHESTRATOR, ORDER]),
        ("ReleaseReservations", &[ORCHESTRATOR, ORDER, OPERATOR]),
        ("CommitReservations", &[ORCHESTRATOR]),
        ("ListReservations", &[OPERATOR, ORCHESTRATOR]),
        (
            "ListLedgerEntries",
            &[OPERATOR, FINANCE, AUDITOR, WAREHOUSE],
        ),
        ("VerifyLedger", &[OPERATOR, FINANCE, AUDITOR]),
        ("GetValuation", &[FINANCE, OPERATOR, BUYER, FINANCE_SERVICE]),
        (
            "AllocateLandedCost",
            &[FINANCE, BUYER, PROCUREMENT, FINANCE_SERVICE],
        ),
    ],
};
