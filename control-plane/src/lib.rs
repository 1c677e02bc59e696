//! `oma-control-plane`: the gRPC API over a service layer over a store.

pub mod service;
pub mod store;
