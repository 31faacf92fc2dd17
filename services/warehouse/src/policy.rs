//! Who may call each method of this service (see `erp_runtime::auth`). A method missing here
//! is denied to everyone; `admin` may call every listed method.

use erp_runtime::auth::Policy;
#[allow(clippy::wildcard_imports)]
use erp_runtime::auth::roles::*;

pub const POLICY: Policy = Policy {
    service: erp_proto::service_names::WAREHOUSE,
    rules: &[
        ("UpsertSite", &[OPERATOR]),
        (
            "GetSite",
            &[OPERATOR, WAREHOUSE, BUYER, ORDER, ORCHESTRATOR, PROCUREMENT],
        ),
        (
            "ListSites",
            &[
                OPERATOR,
                WAREHOUSE,
                BUYER,
                CUSTOMER_SERVICE,
                ORDER,
                ORCHESTRATOR,
                PROCUREMENT,
            ],
        ),
        ("SetSiteStatus", &[OPERATOR]),
        ("CreateFulfillment", &[ORCHESTRATOR]),
        (
            "GetFulfillment",
            &[WAREHOUSE, OPERATOR, CUSTOMER_SERVICE, ORCHESTRATOR],
        ),
        (
            "ListFulfillments",
            &[WAREHOUSE, OPERATOR, CUSTOMER_SERVICE, ORCHESTRATOR],
        ),
        ("CancelFulfillment", &[ORCHESTRATOR, OPERATOR]),
        ("ReleaseWave", &[WAREHOUSE, OPERATOR]),
        ("ConfirmPick", &[WAREHOUSE]),
        ("ConfirmPack", &[WAREHOUSE]),
        ("ConfirmShip", &[WAREHOUSE]),
        ("ReportException", &[WAREHOUSE, OPERATOR]),
        ("RecordReceipt", &[WAREHOUSE, PROCUREMENT]),
    ],
};
