//! `oma-agent run`: the daemon that holds the stream to the control plane and runs the sessions.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use oma_agent::connection::{Backoff, Daemon, DaemonExit, endpoint};
use oma_agent::credentials;
use oma_agent::paths::Paths;
use oma_agent::policy::Policy;
use oma_agent::session::manager::{Manager, ManagerConfig};
use oma_agent::status_file::{self, DaemonState};
use oma_agent::workspaces::Workspaces;
use oma_proto::pb;
use tokio_util::sync::CancellationToken;

use super::detected::{detect_agents, warn_problems};
use super::manifest::{ManifestState, manifest, or_last_good, skill_source};
use crate::RunArgs;

pub(crate) async fn daemon(paths: &Paths, args: RunArgs) -> anyhow::Result<i32> {
    let creds = credentials::load(paths)?.context(
        "this machine is not paired: run `oma-agent setup --server URL --code CODE` (a code comes from `omactl runtimes connect`)",
    )?;
    let machine_id = credentials::machine_id(paths)?;
    // Start bundles, transcripts and logs live here: owner only.
    for path in paths
        .secure_data_dir()
        .with_context(|| format!("cannot create the data dir {}", paths.data_dir.display()))?
    {
        tracing::warn!(path = %path.display(), "was readable by others; now owner only");
    }
    let report = detect_agents(paths)?;
    for missing in &report.missing {
        tracing::info!("{missing}");
    }
    tracing::info!(agents = ?report.agents.iter().map(|a| &a.id).collect::<Vec<_>>(), "detected ACP agents");
    warn_problems(&report);
    // A broken policy stops the daemon here, with `file:line: why`.
    let policy = Policy::load_with_process_path(&paths.policy_file())?;
    tracing::info!(
        file = %policy.file.display(),
        local_mcp_servers = ?policy.mcp_servers.iter().map(|s| &s.id).collect::<Vec<_>>(),
        mcp_urls = policy.mcp_url_allow_list.len(),
        "local policy"
    );
    // A broken workspaces file stops the daemon here too, with `file:line: why`.
    let workspaces = Workspaces::load(&paths.workspaces_file())?;
    tracing::info!(
        file = %workspaces.file.display(),
        workspaces = ?workspaces.list.iter().map(|w| &w.id).collect::<Vec<_>>(),
        "local workspaces"
    );
    let reported_workspaces = workspaces.manifest();
    let source = skill_source();
    let (initial_manifest, fingerprint) = manifest(
        &report,
        source.as_ref(),
        &policy,
        reported_workspaces.clone(),
        &Default::default(),
    );
    let hello = pb::Hello {
        machine_id,
        instance_id: uuid::Uuid::new_v4().simple().to_string(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        manifest: Some(initial_manifest),
        sessions: Vec::new(),
    };
    let refresh_source = source.clone();
    let refresh_paths = paths.clone();
    let manager = Manager::load(ManagerConfig {
        paths: paths.clone(),
        agents: report.clone(),
        skill_source: source.clone(),
        idle_timeout: args.idle_timeout,
        startup_timeout: args.startup_timeout,
        shutdown_grace: Duration::from_secs(5),
        max_sessions: args.max_sessions as usize,
    });
    let refresh_agents = manager.clone();
    let policy_file = paths.policy_file();
    let workspaces_file = paths.workspaces_file();
    let last = std::sync::Mutex::new(ManifestState {
        skills: fingerprint,
        policy,
        policy_error: None,
        workspaces: reported_workspaces,
        workspaces_error: None,
        reported: Default::default(),
        agents: report,
        agents_error: None,
    });
    let refresh_manifest: oma_agent::connection::ManifestSource = std::sync::Arc::new(move || {
        let mut last = last.lock().expect("manifest state lock");
        let last = &mut *last;
        let policy = or_last_good(
            Policy::load_with_process_path(&policy_file),
            &last.policy,
            &mut last.policy_error,
            "the local policy is broken (sessions fail to start until it is fixed)",
        );
        let workspaces = or_last_good(
            Workspaces::load(&workspaces_file).map(|w| w.manifest()),
            &last.workspaces,
            &mut last.workspaces_error,
            "the workspaces file is broken (the last good one is reported)",
        );
        // PATH and agents.toml again: a newly installed agent, or one the
        // owner added, is offered without a restart.
        let report = or_last_good(
            detect_agents(&refresh_paths),
            &last.agents,
            &mut last.agents_error,
            "agents.toml is broken (the last good agent table stays)",
        );
        if report != last.agents {
            tracing::info!(agents = ?report.agents.iter().map(|a| &a.id).collect::<Vec<_>>(), "the ACP agents changed");
            warn_problems(&report);
            refresh_agents.set_agents(report.clone());
        }
        let reported = refresh_agents.reported_agents();
        let (manifest, fingerprint) =
            manifest(&report, refresh_source.as_ref(), &policy, workspaces.clone(), &reported);
        let changed = last.skills != fingerprint
            || last.policy.manifest_parts() != policy.manifest_parts()
            || last.workspaces != workspaces
            || last.reported != reported
            || last.agents != report;
        last.agents = report;
        last.skills = fingerprint;
        last.policy = policy;
        last.workspaces = workspaces;
        last.reported = reported;
        changed.then_some(manifest)
    });
    let state_file = paths.state_file();
    let status_state = Arc::new(Mutex::new(DaemonState {
        pid: std::process::id(),
        status: "connecting".into(),
        since_unix: status_file::now_unix(),
        ..DaemonState::default()
    }));
    let backlog_writer = tokio::spawn(write_backlog(manager.clone(), status_state.clone(), state_file.clone()));
    let insecure = args.insecure || creds.insecure;
    let endpoints = std::iter::once(&creds.server_url)
        .chain(&creds.other_server_urls)
        .map(|url| endpoint(url, creds.ca_file.as_deref(), insecure))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let daemon = Daemon {
        endpoints,
        machine_token: creds.machine_token.clone(),
        hello,
        manager: manager.clone(),
        backoff: Backoff {
            cap: args.reconnect_max,
            ..Backoff::default()
        },
        refresh_manifest,
        on_status: Box::new(move |status| {
            let mut state = status_state.lock().expect("status lock");
            state.connected = status.is_connected();
            state.status = status.to_string();
            state.since_unix = status_file::now_unix();
            if let Some(error) = status.error() {
                state.last_error = Some(status_file::LastError {
                    message: error.to_owned(),
                    at_unix: state.since_unix,
                });
            }
            let _ = status_file::write(&state_file, &state);
        }),
    };
    let shutdown = CancellationToken::new();
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            shutdown.cancel();
        })
    };
    println!(
        "oma-agent {} running as runtime {}",
        env!("CARGO_PKG_VERSION"),
        creds.runtime_id
    );
    let exit = daemon.run(shutdown).await;
    signals.abort();
    backlog_writer.abort();
    manager.shutdown().await;
    let _ = std::fs::remove_file(paths.state_file());
    Ok(match exit {
        DaemonExit::Shutdown => {
            tracing::info!("stopped");
            0
        }
        DaemonExit::Superseded => {
            println!("another oma-agent with these credentials took over; exiting");
            0
        }
        DaemonExit::Refused(why) => {
            eprintln!(
                "error: the control plane refused this machine's credentials ({why}); pair it again with \
                 `oma-agent setup --server {} --code CODE --force` (a code comes from `omactl runtimes connect`)",
                creds.server_url
            );
            refused_exit_code(std::env::var("XPC_SERVICE_NAME").ok().as_deref())
        }
    })
}

/// Keeps the backlog in the status file current: every second, rewritten
/// when it changed (a file write per second at most, none when idle).
async fn write_backlog(manager: Arc<Manager>, state: Arc<Mutex<DaemonState>>, state_file: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let backlog = manager.backlog();
        let mut state = state.lock().expect("status lock");
        if state.backlog != backlog {
            state.backlog = backlog;
            let _ = status_file::write(&state_file, &state);
        }
    }
}

/// The exit code when the control plane refuses the credentials: 3, which
/// the systemd unit does not restart (`RestartPreventExitStatus=3`). launchd
/// cannot spare one exit code from `KeepAlive`, so under its job (whose
/// label it passes as `XPC_SERVICE_NAME`) the daemon exits 0 instead:
/// restarting every few seconds cannot help until the machine is paired again.
fn refused_exit_code(launchd_job: Option<&str>) -> i32 {
    match launchd_job {
        Some(label) if label == oma_agent::service_unit::launchd::LABEL => 0,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_stop_the_service_under_both_managers() {
        assert_eq!(refused_exit_code(None), 3);
        assert_eq!(refused_exit_code(Some("com.apple.Terminal")), 3);
        assert_eq!(refused_exit_code(Some("dev.oma.agent")), 0);
    }
}
