//! The gRPC contract between Warren gateways and bridges.
//!
//! Consumers use `proto::warren::v1::*`; nothing else lives here.

/// Generated code, one module per protobuf package.
pub mod warren {
    /// Version 1 of the gateway-bridge contract.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("warren.v1");
    }
}
