//! Who may call each method of this service (see `erp_runtime::auth`). A method missing here
//! is denied to everyone; `admin` may call every listed method.

use erp_runtime::auth::Policy;
#[allow(clippy::wildcard_imports)]
use erp_runtime::auth::roles::*;

pub const POLICY: Policy = Policy {
    service: erp_proto::service_names::FINANCE,
    rules: &[
        ("ListAccounts", &[FINANCE, AUDITOR, OPERATOR]),
        ("CreateAccount", &[FINANCE]),
        ("PostJournal", &[FINANCE, ORCHESTRATOR]),
        ("ReverseJournal", &[FINANCE]),
        ("GetJournalEntry", &[FINANCE, AUDITOR, OPERATOR]),
        ("ListJournalEntries", &[FINANCE, AUDITOR, OPERATOR]),
        ("GetTrialBalance", &[FINANCE, AUDITOR, OPERATOR]),
        ("AuthorizePayment", &[ORCHESTRATOR]),
        ("CapturePayment", &[ORCHESTRATOR]),
        ("VoidPayment", &[ORCHESTRATOR, FINANCE]),
        ("RefundPayment", &[FINANCE, CUSTOMER_SERVICE, ORCHESTRATOR]),
        ("ApproveRefund", &[APPROVER]),
        ("RejectRefund", &[APPROVER]),
        (
            "ListRefundApprovals",
            &[FINANCE, APPROVER, CUSTOMER_SERVICE, AUDITOR],
        ),
        ("RecordChargeback", &[FINANCE, INTEGRATION]),
        (
            "GetPayment",
            &[FINANCE, CUSTOMER_SERVICE, OPERATOR, AUDITOR, ORCHESTRATOR],
        ),
        ("SetTaxRate", &[FINANCE]),
        (
            "CalculateTax",
            &[FINANCE, CUSTOMER_SERVICE, ORDER, ORCHESTRATOR],
        ),
        ("ChannelProfitability", &[FINANCE, OPERATOR]),
        ("ReconcileSettlement", &[FINANCE, INTEGRATION]),
    ],
};
