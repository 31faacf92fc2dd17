//! Rust types, clients and servers generated from `proto/erp/**`: one set shared by every service.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Packages as declared in the protos (`erp.<service>.v1`).
pub mod erp {
    pub mod audit {
        pub mod v1 {
            tonic::include_proto!("erp.audit.v1");
        }
    }
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("erp.common.v1");
        }
    }
    pub mod order {
        pub mod v1 {
            tonic::include_proto!("erp.order.v1");
        }
    }
    pub mod inventory {
        pub mod v1 {
            tonic::include_proto!("erp.inventory.v1");
        }
    }
    pub mod warehouse {
        pub mod v1 {
            tonic::include_proto!("erp.warehouse.v1");
        }
    }
    pub mod carrier {
        pub mod v1 {
            tonic::include_proto!("erp.carrier.v1");
        }
    }
    pub mod procurement {
        pub mod v1 {
            tonic::include_proto!("erp.procurement.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("erp.events.v1");
        }
    }
    pub mod finance {
        pub mod v1 {
            tonic::include_proto!("erp.finance.v1");
        }
    }
    pub mod orchestrator {
        pub mod v1 {
            tonic::include_proto!("erp.orchestrator.v1");
        }
    }
    pub mod probe {
        pub mod v1 {
            tonic::include_proto!("erp.probe.v1");
        }
    }
}

pub use erp::audit::v1 as audit;
pub use erp::carrier::v1 as carrier;
pub use erp::common::v1 as common;
pub use erp::events::v1 as events;
pub use erp::finance::v1 as finance;
pub use erp::inventory::v1 as inventory;
pub use erp::orchestrator::v1 as orchestrator;
pub use erp::order::v1 as order;
pub use erp::probe::v1 as probe;
pub use erp::procurement::v1 as procurement;
pub use erp::warehouse::v1 as warehouse;

/// Encoded `FileDescriptorSet` of every erp proto and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/erp_descriptor.bin"));

/// Fully qualified gRPC service names, e.g. `erp.order.v1.OrderService`.
pub mod service_names {
    pub const ORDER: &str = "erp.order.v1.OrderService";
    pub const INVENTORY: &str = "erp.inventory.v1.InventoryService";
    pub const WAREHOUSE: &str = "erp.warehouse.v1.WarehouseService";
    pub const CARRIER: &str = "erp.carrier.v1.CarrierService";
    pub const PROCUREMENT: &str = "erp.procurement.v1.ProcurementService";
    pub const FINANCE: &str = "erp.finance.v1.FinanceService";
    pub const ORCHESTRATOR: &str = "erp.orchestrator.v1.OrchestratorService";
    pub const AUDIT: &str = "erp.audit.v1.AuditService";
    pub const EVENTS: &str = "erp.events.v1.EventsService";
    pub const PROBE: &str = "erp.probe.v1.ProbeService";
}
