//! `oma-agent`: pairs a machine with the control plane, holds one stream to
//! it, and runs one ACP agent child process per session.

pub mod config_file;
pub mod connection;
pub mod credentials;
pub mod detect;
pub mod fsutil;
pub mod git;
pub mod logging;
pub mod outbox;
pub mod paths;
pub mod policy;
pub mod process;
pub mod service_unit;
pub mod session;
pub mod skills;
pub mod status_file;
pub mod workspaces;
