//! The OMA runtime contract: the generated `oma.v1` gRPC types ([`pb`]) and
//! the validated domain types ([`model`]) the three binaries share, so ids,
//! validation rules and limits are defined once.

pub mod duration;
pub mod ids;
pub mod masking;
pub mod mcp_url;
pub mod model;
pub mod net;
pub mod secret;
pub mod session_options;
pub mod validate;
pub mod workspace;

/// The generated protobuf messages, clients and servers of package `oma.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("oma.v1");
}

/// The encoded `FileDescriptorSet` of every `oma.v1` file, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/oma_descriptor.bin"));

/// The metadata key carrying `Bearer <token>`.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// Prefix of API tokens (people and services).
pub const API_TOKEN_PREFIX: &str = "oma_";

/// Prefix of machine tokens (paired runtimes).
pub const MACHINE_TOKEN_PREFIX: &str = "sk_machine_";

/// Largest gRPC message either side accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
