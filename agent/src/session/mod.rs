//! Sessions on this machine: the ACP child runner, the translation of ACP
//! messages to the contract, the session directory, and the manager with
//! its per-session actors.

pub mod acp;
mod actor;
mod checkout;
mod frames;
pub mod launch;
pub mod manager;
mod orphans;
pub mod private_dir;
mod state;
pub mod translate;
