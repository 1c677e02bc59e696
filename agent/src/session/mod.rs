//! Sessions on this machine: the ACP child runner, the translation of ACP
//! messages to the contract, the session directory, and the manager.

pub mod acp;
pub mod launch;
pub mod manager;
pub mod translate;
pub mod workspace;
