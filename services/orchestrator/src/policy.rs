//! Who may call each method of this service (see `erp_runtime::auth`). A method missing here
//! is denied to everyone; `admin` may call every listed method.

use erp_runtime::auth::Policy;
#[allow(clippy::wildcard_imports)]
use erp_runtime::auth::roles::*;

pub const POLICY: Policy = Policy {
    service: erp_proto::service_names::ORCHESTRATOR,
    rules: &[
        ("StartFulfillment", &[OPERATOR, ORDER]),
        ("StartSaga", &[OPERATOR]),
        ("GetSaga", &[OPERATOR, CUSTOMER_SERVICE, WAREHOUSE]),
        ("WatchSaga", &[OPERATOR, CUSTOMER_SERVICE, WAREHOUSE]),
        ("ListSagas", &[OPERATOR, CUSTOMER_SERVICE]),
        ("SignalSaga", &[WAREHOUSE, OPERATOR, WAREHOUSE_SERVICE]),
        ("RetrySaga", &[OPERATOR]),
        ("PauseSaga", &[OPERATOR]),
        ("ResumeSaga", &[OPERATOR]),
        ("CancelSaga", &[OPERATOR]),
        ("ListExceptions", &[OPERATOR, CUSTOMER_SERVICE]),
    ],
};
