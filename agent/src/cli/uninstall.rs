//! `oma-agent uninstall`: removes the service, credentials and sessions, and deregisters the machine.

use anyhow::bail;
use oma_agent::connection::endpoint;
use oma_agent::credentials;
use oma_agent::paths::Paths;
use oma_agent::service_unit::{self, ServiceManager};
use oma_proto::pb;

/// Removes the service, tells the control plane to forget this machine
/// (when it can be reached: its runtime and token are deleted there), and
/// removes the credentials and the data dir.
pub(crate) async fn uninstall(paths: &Paths) -> anyhow::Result<i32> {
    if let Ok(manager) = ServiceManager::current() {
        match service_unit::uninstall(manager, false) {
            Ok(report) => {
                for warning in report.warnings {
                    println!("note: {warning}");
                }
            }
            Err(e) => println!("note: {e}"),
        }
    }
    if let Some(creds) = credentials::load(paths)? {
        let hello = pb::Hello {
            machine_id: credentials::machine_id(paths)?,
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            manifest: None,
            sessions: Vec::new(),
        };
        let deregistered = match endpoint(&creds.server_url, creds.ca_file.as_deref(), creds.insecure) {
            Ok(endpoint) => oma_agent::connection::deregister(endpoint, &creds.machine_token, hello).await,
            Err(e) => Err(e),
        };
        match deregistered {
            Ok(()) => println!(
                "the control plane at {} forgot runtime {} (its token no longer works)",
                creds.server_url, creds.runtime_id
            ),
            Err(why) => println!(
                "note: could not reach the control plane to remove runtime {} ({why}); delete it there with \
                 `omactl runtimes delete {}`",
                creds.runtime_id, creds.runtime_id
            ),
        }
    }
    if credentials::remove(paths)? {
        println!("removed credentials {}", paths.credentials_file().display());
    }
    match std::fs::remove_dir_all(&paths.data_dir) {
        Ok(()) => println!("removed {}", paths.data_dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot remove {}: {e}", paths.data_dir.display()),
    }
    println!(
        "the machine id in {} is kept, so pairing again keeps this machine's identity",
        paths.config_dir.display()
    );
    Ok(0)
}
