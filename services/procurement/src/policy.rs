//! Who may call each method of this service (see `erp_runtime::auth`). A method missing here
//! is denied to everyone; `admin` may call every listed method.

use erp_runtime::auth::Policy;
#[allow(clippy::wildcard_imports)]
use erp_runtime::auth::roles::*;

pub const POLICY: Policy = Policy {
    service: erp_proto::service_names::PROCUREMENT,
    rules: &[
        ("CreateSupplier", &[BUYER]),
        ("GetSupplier", &[BUYER, APPROVER, FINANCE, OPERATOR]),
        ("ListSuppliers", &[BUYER, APPROVER, FINANCE, OPERATOR]),
        ("SetSupplierTerm", &[BUYER]),
        ("SetReorderPolicy", &[BUYER]),
        ("RecordDemand", &[BUYER, OPERATOR, ORDER, ORCHESTRATOR]),
        ("SuggestReplenishment", &[BUYER, OPERATOR]),
        ("CreatePurchaseOrder", &[BUYER]),
        (
            "GetPurchaseOrder",
            &[BUYER, APPROVER, FINANCE, WAREHOUSE, OPERATOR],
        ),
        (
            "ListPurchaseOrders",
            &[BUYER, APPROVER, FINANCE, WAREHOUSE, OPERATOR],
        ),
        ("ApprovePurchaseOrder", &[APPROVER, BUYER]),
        ("SendPurchaseOrder", &[BUYER]),
        ("ReceivePurchaseOrder", &[WAREHOUSE, BUYER]),
        ("CancelPurchaseOrder", &[BUYER, APPROVER]),
        (
            "GetSupplierScorecard",
            &[BUYER, APPROVER, FINANCE, OPERATOR],
        ),
    ],
};
