//! `oma-agent setup`: pairs this machine with a control plane using a connect code.

use anyhow::{Context as _, bail};
use oma_agent::connection::endpoint;
use oma_agent::credentials::{self, Credentials};
use oma_agent::paths::Paths;
use oma_proto::pb;

use super::detected::detect_agents;
use crate::{SetupArgs, SetupOutput};

pub(crate) async fn setup(paths: &Paths, args: SetupArgs) -> anyhow::Result<i32> {
    let SetupArgs {
        server,
        code,
        name,
        ca_file,
        force,
        insecure,
        output,
        also_server,
    } = args;
    // Refuse before spending the single-use code.
    if let Some(existing) = credentials::load(paths)?
        && existing.server_url != server
        && !force
    {
        bail!(
            "this machine is already paired with {}; pass --force to pair it with {server} instead",
            existing.server_url
        );
    }
    let ca_file = ca_file
        .map(|p| std::fs::canonicalize(&p).with_context(|| format!("cannot find --ca-file {}", p.display())))
        .transpose()?;
    // The other replicas are checked now, not at the first failover.
    for other in &also_server {
        endpoint(other, ca_file.as_deref(), insecure).map_err(|e| anyhow::anyhow!("--also-server: {e}"))?;
    }
    let endpoint = endpoint(&server, ca_file.as_deref(), insecure).map_err(anyhow::Error::msg)?;
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {server}"))?;
    let machine_id = credentials::machine_id(paths)?;
    let mut client = pb::runtime_service_client::RuntimeServiceClient::new(channel);
    let response = client
        .exchange_connect_code(pb::ExchangeConnectCodeRequest {
            code,
            machine_id,
            name: name.unwrap_or_else(credentials::default_runtime_name),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the control plane refused the code: {}", s.message()))?
        .into_inner();
    let runtime = response.runtime.context("the control plane returned no runtime")?;
    let creds = Credentials {
        server_url: server,
        other_server_urls: also_server,
        runtime_id: runtime.id.clone(),
        machine_token: response.machine_token,
        ca_file,
        insecure,
        tenant_id: Some(runtime.tenant_id.clone()),
        paired_at: credentials::paired_at_now(),
    };
    credentials::save(paths, &creds, true)?;
    if output == SetupOutput::Json {
        // The pairing is done: a broken agents.toml is reported, not fatal.
        let (agents, missing, agents_error) = match detect_agents(paths) {
            Ok(report) => (
                report
                    .agents
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "id": a.id,
                            "name": a.name,
                            "command": a.command,
                            "package": a.package.as_ref().map(|p| &p.name),
                            "version": a.package.as_ref().map(|p| &p.version),
                            "problems": a.problems,
                        })
                    })
                    .collect(),
                report.missing.iter().map(|m| m.to_string()).collect(),
                None,
            ),
            Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
        };
        let value = serde_json::json!({
            "runtime_id": runtime.id,
            "runtime_name": runtime.name,
            "tenant_id": runtime.tenant_id,
            "server": creds.server_url,
            "config_dir": paths.config_dir,
            "data_dir": paths.data_dir,
            "credentials_file": paths.credentials_file(),
            "agents_file": paths.agents_config_file(),
            "policy_file": paths.policy_file(),
            "agents": agents,
            "missing_agents": missing,
            "agents_error": agents_error,
        });
        println!("{value}");
        return Ok(0);
    }
    println!("paired as runtime {} ({})", runtime.id, runtime.name);
    println!("credentials: {}", paths.credentials_file().display());
    println!("start the daemon with `oma-agent run`, or install it as a service with `oma-agent service install`");
    Ok(0)
}
