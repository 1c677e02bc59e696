//! The `oma-agent` subcommands, one module each, and the helpers they share.

pub(crate) mod agents;
pub(crate) mod daemon;
pub(crate) mod detected;
pub(crate) mod manifest;
pub(crate) mod policy;
pub(crate) mod service;
pub(crate) mod setup;
pub(crate) mod status;
pub(crate) mod uninstall;
