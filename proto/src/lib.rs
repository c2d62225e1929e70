//! The gRPC contract between Warren gateways and bridges: the generated
//! `proto::warren::v1::*`, and the [`rules`] both sides apply to its fields.

/// Generated code, one module per protobuf package.
pub mod warren {
    /// Version 1 of the gateway-bridge contract.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("warren.v1");
    }
}

/// Rules of the contract's fields that both sides apply, written once.
pub mod rules;
